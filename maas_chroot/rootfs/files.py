"""Host-side file operations confined to a root directory.

Every write the library makes into an image goes through here. Paths are
resolved *inside* the root, the way the kernel would resolve them for a process
chrooted there: with ``openat2(RESOLVE_IN_ROOT)`` when the kernel has it (5.6+),
else with an equivalent component walk (``O_PATH|O_NOFOLLOW`` per component,
symlinks re-resolved against the root). So an image symlink such as
``etc/resolv.conf -> /etc/hosts`` or ``usr/sbin -> ../../../../usr/sbin`` can
never redirect a write onto the host. The final component is never followed by
writes and removals: replacing ``etc/resolv.conf`` replaces the link itself.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from .. import releases
from ..errors import UnsafePathError
from . import inroot

log = logging.getLogger(__name__)

#: The session journal a live or killed :class:`~maas_chroot.Chroot` keeps in the root.
#: ``pack()`` refuses a root that has one; ``recover()`` replays it.
JOURNAL_NAME = ".maas-chroot-session.json"

def open_in_root(root: str | os.PathLike[str], path: str, flags: int, mode: int = 0o644) -> int:
    """``open(path)`` as seen by a process chrooted at ``root``; returns an fd.

    Pass ``os.O_NOFOLLOW`` to refuse a final symlink (``ELOOP``), as with open(2).
    """
    rootfd = os.open(os.fspath(root), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return inroot.open_at(rootfd, path, flags, mode)
    finally:
        os.close(rootfd)


#: Like :func:`open_in_root`, with the root given as an ``O_PATH`` directory fd.
open_at = inroot.open_at


def _split(path: str) -> tuple[str, str]:
    norm = "/" + path.strip("/")
    parent, _, name = norm.rpartition("/")
    if name in ("", ".", ".."):
        raise UnsafePathError(f"not a file path inside the root: {path!r}", root="/",
                              hint="name a file, such as /etc/motd")
    return parent or "/", name


@contextlib.contextmanager
def parent_dir(root: str | os.PathLike[str], path: str, *, create: bool = False,
               mode: int = 0o755) -> Iterator[tuple[int, str]]:
    """Yield ``(dirfd, name)``: the parent of ``path`` resolved in the root, and the leaf name.

    The leaf is not resolved, so callers act on it with ``dir_fd=`` calls and
    never follow it. ``create`` makes missing parents (root-owned, ``mode``).
    """
    parent, name = _split(path)
    try:
        if create:
            makedirs(root, parent, mode=mode)
        fd = open_in_root(root, parent, os.O_PATH | os.O_DIRECTORY)
    except OSError as e:
        raise UnsafePathError(f"cannot open {parent!r} inside {os.fspath(root)}: {e.strerror}",
                              root=root) from e
    try:
        yield fd, name
    finally:
        os.close(fd)


def makedirs(root: str | os.PathLike[str], path: str, *, mode: int = 0o755) -> None:
    """``mkdir -p`` inside the root, resolving every component inside it."""
    rootfd = os.open(os.fspath(root), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.close(inroot.ensure(rootfd, path, directory=True, mode=mode))
    finally:
        os.close(rootfd)


def write_file(root: str | os.PathLike[str], path: str, data: str | bytes | BinaryIO, *,
               mode: int = 0o644, uid: int = 0, gid: int = 0, mkdirs: bool = True) -> None:
    """Atomically create or replace the file ``path`` inside the root.

    ``data`` is the content, or a binary file object streamed in 1 MiB chunks.
    Written to a temporary name in the same directory, then renamed over the
    leaf, so an existing symlink at ``path`` is replaced, never written through.
    """
    if isinstance(data, str | bytes):
        chunks: Iterable[bytes] = [data.encode() if isinstance(data, str) else data]
    else:
        chunks = iter(lambda: data.read(1 << 20), b"")
    with parent_dir(root, path, create=mkdirs) as (dfd, name):
        tmp = f".{name}.maas-chroot-{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=dfd)
        try:
            try:
                for chunk in chunks:
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view):]
                os.fchown(fd, uid, gid)
                os.fchmod(fd, mode)
            finally:
                os.close(fd)
            os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
            raise


def symlink(root: str | os.PathLike[str], path: str, target: str) -> None:
    """Create or replace the symlink ``path -> target`` inside the root (target verbatim)."""
    with parent_dir(root, path) as (dfd, name):
        tmp = f".{name}.maas-chroot-{os.getpid()}.tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dfd)
        os.symlink(target, tmp, dir_fd=dfd)
        try:
            os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
            raise


def read_file(root: str | os.PathLike[str], path: str, *, follow: bool = True) -> bytes:
    """Read ``path`` inside the root (symlinks resolved inside the root unless ``follow=False``)."""
    flags = os.O_RDONLY | (0 if follow else os.O_NOFOLLOW)
    fd = open_in_root(root, path, flags)
    with os.fdopen(fd, "rb") as f:
        return f.read()


def read_regular_head(root: str | os.PathLike[str], path: str, size: int) -> bytes | None:
    """The first ``size`` bytes of ``path`` inside the root if it resolves to a regular file,
    else None. Never opens anything else for reading: a FIFO would block, and a device
    node's driver would run on the host."""
    try:
        fd = open_in_root(root, path, os.O_PATH)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        data = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        chunks, left = [], size
        while left > 0:
            chunk = os.read(data, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(data)


def os_release(root: str | os.PathLike[str]) -> dict[str, str]:
    """The image's os-release fields (``/etc/os-release``, else ``/usr/lib/os-release``)."""
    for path in ("/etc/os-release", "/usr/lib/os-release"):
        text = read_regular_head(root, path, 65536)
        if text is not None:
            return releases.parse_os_release(text.decode("utf-8", "replace"))
    return {}


def kernels(root: str | os.PathLike[str]) -> list[str]:
    """The versions of the kernels in the image's ``/boot`` (regular ``vmlinuz-VERSION`` or
    ``vmlinux-VERSION`` files, the names curtin's ``paths.get_kernel_list`` globs), oldest
    first."""
    try:
        fd = open_in_root(root, "/boot", os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return []
    try:
        found = {n.split("-", 1)[1] for n in os.listdir(fd)
                 if n.startswith(("vmlinuz-", "vmlinux-")) and len(n) > 8
                 and stat.S_ISREG(os.stat(n, dir_fd=fd, follow_symlinks=False).st_mode)}
    finally:
        os.close(fd)
    return sorted(found, key=_version_key)


def _version_key(version: str) -> list[tuple[int, str]]:
    parts = version.replace("-", ".").split(".")
    return [(int(p), "") if p.isdigit() else (-1, p) for p in parts]


def lstat(root: str | os.PathLike[str], path: str) -> os.stat_result | None:
    """``lstat`` of ``path`` inside the root, or None if it does not exist."""
    try:
        with parent_dir(root, path) as (dfd, name):
            return os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except (FileNotFoundError, UnsafePathError):
        return None


def unlink(root: str | os.PathLike[str], path: str, *, missing_ok: bool = True) -> bool:
    """Remove a file or symlink inside the root (never what it points to). True if removed."""
    try:
        with parent_dir(root, path) as (dfd, name):
            os.unlink(name, dir_fd=dfd)
            return True
    except (FileNotFoundError, UnsafePathError):
        if missing_ok:
            return False
        raise


@dataclass(frozen=True)
class Entry:
    """What a path inside a root was: enough to put it back exactly (see :func:`snapshot`)."""

    path: str
    kind: str  # "absent" | "file" | "symlink"
    data: bytes = b""
    target: str = ""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0

    def to_json(self) -> dict[str, object]:
        return {"path": self.path, "kind": self.kind, "data": self.data.hex(),
                "target": self.target, "mode": self.mode, "uid": self.uid, "gid": self.gid}

    @classmethod
    def from_json(cls, obj: dict[str, object]) -> Entry:
        return cls(path=str(obj["path"]), kind=str(obj["kind"]),
                   data=bytes.fromhex(str(obj.get("data", ""))), target=str(obj.get("target", "")),
                   mode=int(obj.get("mode", 0o644)), uid=int(obj.get("uid", 0)),  # type: ignore[call-overload]
                   gid=int(obj.get("gid", 0)))  # type: ignore[call-overload]


def snapshot(root: str | os.PathLike[str], path: str) -> Entry:
    """Record what ``path`` is (absent, a regular file with its bytes, or a symlink)."""
    with parent_dir(root, path) as (dfd, name):
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            return Entry(path, "absent")
        mode, uid, gid = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid
        if stat.S_ISLNK(st.st_mode):
            return Entry(path, "symlink", target=os.readlink(name, dir_fd=dfd), mode=mode,
                         uid=uid, gid=gid)
        if stat.S_ISREG(st.st_mode):
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
            with os.fdopen(fd, "rb") as f:
                return Entry(path, "file", data=f.read(), mode=mode, uid=uid, gid=gid)
    raise UnsafePathError(f"{path} in {os.fspath(root)} is neither a file nor a symlink",
                          root=root, hint="remove or fix it in the image")


def restore(root: str | os.PathLike[str], entry: Entry) -> None:
    """Put ``entry.path`` back to exactly what :func:`snapshot` recorded."""
    if entry.kind == "absent":
        unlink(root, entry.path)
    elif entry.kind == "symlink":
        symlink(root, entry.path, entry.target)
        with parent_dir(root, entry.path) as (dfd, name):
            os.chown(name, entry.uid, entry.gid, dir_fd=dfd, follow_symlinks=False)
    else:
        write_file(root, entry.path, entry.data, mode=entry.mode, uid=entry.uid, gid=entry.gid,
                   mkdirs=False)
