"""The lock of a root: one session, sysprep, pack or copy of a rootfs at a time.

The lock is an ``flock`` on a host file named after the root's device and
inode (under the root-only ``/run/maas-chroot``, never inside the image, so it
cannot ship in a packed image). The kernel drops it when the holder dies.
:func:`locked` holds it for a chroot session; :func:`exclusive` holds it for
an operation that reads or scrubs the whole tree, and also refuses the journal
a killed session left behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import stat
from collections.abc import Iterator

from ..errors import ChrootBusyError, ChrootError
from .files import JOURNAL_NAME

log = logging.getLogger(__name__)

#: Root-only (0700) directory of the session locks; never world-writable /run/lock.
LOCK_DIRS = ("/run/maas-chroot",)


def _lock_dir(root: str) -> int:
    """An fd to the root-only directory of the session locks (created 0700 if missing).

    Refuses a directory it did not make safe: a symlink, a non-directory, or one
    that is not owned by root or is writable by group/others (a local user could
    have planted it to make root create files where they choose).
    """
    for d in LOCK_DIRS:
        if not os.path.isdir(os.path.dirname(d)):
            continue
        with contextlib.suppress(FileExistsError):
            os.mkdir(d, 0o700)
        hint = (f"remove {d} (it must be a directory owned by root, mode 0700); "
                "maas-chroot recreates it")
        try:
            fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as e:
            raise ChrootError(f"unsafe session lock directory {d}: {e.strerror} (a symlink or "
                              "not a directory)", root=root, hint=hint) from e
        st = os.fstat(fd)
        if st.st_uid != 0 or st.st_mode & 0o022:
            os.close(fd)
            raise ChrootError(f"unsafe session lock directory {d}: owned by uid {st.st_uid}, "
                              f"mode {stat.S_IMODE(st.st_mode):o}", root=root, hint=hint)
        return fd
    raise ChrootError(f"no directory for the session lock ({', '.join(LOCK_DIRS)})", root=root,
                      hint="mount a tmpfs on /run")


def _open_lock(root: str) -> int:
    st = os.stat(root)
    dfd = _lock_dir(root)
    try:
        return os.open(f"{st.st_dev}-{st.st_ino}.lock",
                       os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600, dir_fd=dfd)
    finally:
        os.close(dfd)


@contextlib.contextmanager
def locked(root: str, *, purpose: str = "a chroot session") -> Iterator[None]:
    """Hold the exclusive session lock of ``root``; refuse at once if someone else has it."""
    fd = _open_lock(root)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 256, 0).decode(errors="replace").strip() or "another process"
            raise ChrootBusyError(
                f"cannot start {purpose}: {root} is in use by {holder}",
                root=root, hint="wait for it to end; a session, sysprep, pack or copy of a "
                                "root must never overlap another") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} ({purpose})\n".encode(), 0)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def exclusive(root: str | os.PathLike[str], purpose: str) -> Iterator[None]:
    """Keep chroot sessions off ``root`` while ``purpose`` (e.g. ``"pack"``) reads or scrubs it.

    Takes the session lock without waiting (:class:`ChrootBusyError` naming the holder
    if a session has it) and refuses a journal a killed session left behind, whose
    temporary files (policy-rc.d, the host's resolv.conf) are still in the tree.
    Without root the lock cannot be taken (its directory is root-only; sessions need
    root anyway), so only the journal is checked.
    """
    top = os.fspath(root)
    with contextlib.ExitStack() as stack:
        if os.geteuid() == 0:
            stack.enter_context(locked(top, purpose=purpose))
        else:
            log.debug("%s: not root, so %s does not take the session lock", top, purpose)
        if os.path.lexists(os.path.join(top, JOURNAL_NAME)):
            raise ChrootBusyError(
                f"cannot {purpose} {top}: it has the journal ({JOURNAL_NAME}) of a "
                "chroot session that was killed before it could clean up", root=top,
                hint=f"run maas_chroot.recover({top!r}) (or `maas-chroot recover {top}`) first")
        yield
