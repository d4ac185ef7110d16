"""Safe removal of directory trees: :func:`remove_tree`, the library's only ``rm -rf``.

It refuses to run while anything is mounted at or below the tree, never follows
a symlink and never crosses into another filesystem, so deleting a work
directory can never reach the host's /dev, /proc or a bind mount.
"""

from __future__ import annotations

import errno
import os
import stat

from ..errors import MountedError
from . import walk


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) + 1 and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounts_under(path: str | os.PathLike[str], *, below: bool = False) -> list[str]:
    """Mount points at or below ``path`` (strictly below it with ``below``) in the calling
    thread's mount namespace, deepest first.

    The thread's own (``/proc/thread-self``): a thread may have a namespace of its own
    (:mod:`maas_chroot.chroot.overlay`), and ``/proc/self`` shows the main thread's.
    """
    top = os.path.realpath(os.fspath(path))
    found = []
    info = "/proc/thread-self/mountinfo"
    if not os.path.exists(info):  # Linux before 3.17
        info = "/proc/self/mountinfo"
    with open(info, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            point = _unescape(line.split()[4])
            if (point == top and not below) or point.startswith(top.rstrip("/") + "/"):
                found.append(point)
    return sorted(set(found), key=lambda p: (-p.count("/"), p))


def remove_tree(path: str | os.PathLike[str], *, missing_ok: bool = True) -> None:
    """Delete a directory tree, safely.

    Refuses (with :class:`~maas_chroot.errors.MountedError`) while anything is mounted at or
    below ``path``, never follows symlinks, and never descends into a
    directory on another filesystem. This is the only ``rm -rf`` in the library.
    A symlink is removed itself, even when named with a trailing slash.
    """
    # "link/" would make lstat() and open(O_NOFOLLOW) follow the link.
    p = os.fspath(path).rstrip("/") or "/"
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        if missing_ok:
            return
        raise
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(p)
        return
    mounted = mounts_under(p)
    if mounted:
        raise MountedError(
            f"refusing to delete {p}: something is mounted below it ({', '.join(mounted[:3])})",
            path=p, hint=f"unmount it first (umount -R {mounted[-1]}), then retry")
    fd = os.open(p, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        _clear_dir(fd, st.st_dev, p)
    finally:
        os.close(fd)
    os.rmdir(p)


def clear_dir_at(dirfd: int, where: str) -> None:
    """Delete everything inside the open directory ``dirfd`` (same filesystem only)."""
    _clear_dir(dirfd, os.fstat(dirfd).st_dev, where)


def _clear_dir(dirfd: int, dev: int, where: str) -> None:
    """Empty ``dirfd`` depth-first (never leaving the filesystem ``dev``)."""
    for node in walk.walk(dirfd, where, descend=walk.same_filesystem(dev)):
        if node.kind == walk.ENTER:
            continue
        if node.kind == walk.ENTRY:
            if stat.S_ISDIR(node.st.st_mode):
                raise MountedError(
                    f"refusing to delete {node.where}: it is on another filesystem (a mount?)",
                    path=node.where, hint=f"unmount {node.where} first")
            os.unlink(node.name, dir_fd=node.parent)
            continue
        try:
            os.rmdir(node.name, dir_fd=node.parent)
        except OSError as e:
            if e.errno == errno.EBUSY:
                raise MountedError(f"refusing to delete {node.where}: it is busy (mounted)",
                                   path=node.where, hint=f"umount -R {node.where}") from e
            raise
