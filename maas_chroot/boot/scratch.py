"""Scratch files that cannot outlive the process: unnamed files reached through /proc.

A boot test's disks, kernel copies, seeds and report ports are ``O_TMPFILE``
files: they have no name in any directory, so a SIGKILLed caller leaves
nothing behind (the kernel frees them with the last fd, and QEMU, which also
holds them, dies with its parent). Tools open them as ``/proc/<pid>/fd/<n>``,
which reaches the same inode. The staging trees a deployment needs cannot be
unnamed; :func:`sweep` removes those a killed run left.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..rootfs import remove_tree

log = logging.getLogger(__name__)

#: Prefix of a staging directory: ``maas-chroot-boot-<pid>-<random>``.
STAGING_PREFIX = "maas-chroot-boot-"
_STAGING = re.compile(rf"^{re.escape(STAGING_PREFIX)}(\d+)-\w+$")


class Scratch:
    """An unnamed read-write file; ``path`` names it for other processes (while it is open)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        where = os.fspath(directory)
        try:
            self.fd = os.open(where, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise
            fd, name = tempfile.mkstemp(dir=where, prefix=".maas-chroot-scratch-")
            os.unlink(name)  # a filesystem without O_TMPFILE: unnamed at once all the same
            self.fd = fd

    @property
    def path(self) -> str:
        return f"/proc/{os.getpid()}/fd/{self.fd}"

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def read(self) -> bytes:
        return os.pread(self.fd, self.size(), 0)

    def write(self, data: bytes) -> None:
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@contextlib.contextmanager
def scratch(directory: str | os.PathLike[str]) -> Iterator[Scratch]:
    """A :class:`Scratch` file in ``directory``'s filesystem, closed (freed) at the end."""
    file = Scratch(directory)
    try:
        yield file
    finally:
        file.close()


@contextlib.contextmanager
def staging(directory: str | os.PathLike[str]) -> Iterator[Path]:
    """A new staging directory under ``directory``, removed at the end (and by :func:`sweep`
    after a killed run)."""
    sweep(directory)
    path = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=directory))
    try:
        yield path
    finally:
        remove_tree(path)


def sweep(directory: str | os.PathLike[str]) -> list[Path]:
    """Remove the staging directories of boot tests whose process is gone; return them."""
    gone = []
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(directory):
            m = _STAGING.match(entry.name)
            if m and entry.is_dir(follow_symlinks=False) and not _alive(int(m[1])):
                log.info("removing %s, left by a boot test that was killed", entry.path)
                remove_tree(entry.path)
                gone.append(Path(entry.path))
    return gone


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
