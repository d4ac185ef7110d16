"""In-root removal and truncation primitives for :mod:`maas_chroot.sysprep`.

Every path is resolved inside the root (``openat2(RESOLVE_IN_ROOT)`` via
:mod:`maas_chroot.rootfs`); the item acted on is never followed (a symlink is
removed as a link, never truncated through); a directory whose contents are
cleared is left alone when it is itself a symlink; no other filesystem is entered.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import logging
import os
import stat
from collections.abc import Iterable, Iterator

from .. import rootfs
from ..errors import MountedError
from ..progress import human_size
from ..rootfs import walk
from .report import SysprepItem

log = logging.getLogger(__name__)


class Scrub:
    """One sysprep run: an ``O_PATH`` fd on the root and the items and notes collected."""

    def __init__(self, root: str, rootfd: int) -> None:
        self.root = root
        self.rootfd = rootfd
        self.items: list[SysprepItem] = []
        self.notes: list[str] = []

    def _add(self, path: str, action: str, freed: int) -> None:
        log.debug("sysprep: %s %s (%s)", action, path, human_size(freed))
        self.items.append(SysprepItem(path, action, freed))

    @contextlib.contextmanager
    def parent(self, path: str) -> Iterator[tuple[int, str] | None]:
        """``(dirfd, leaf)`` of ``path`` resolved in the root, or None if the parent is absent."""
        parent, _, name = ("/" + path.strip("/")).rpartition("/")
        try:
            fd = rootfs.open_at(self.rootfd, parent or "/", os.O_PATH | os.O_DIRECTORY, 0)
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                raise
            if e.errno == errno.ELOOP:
                self.notes.append(f"{parent}: too many levels of symlinks, left alone")
            yield None
            return
        try:
            yield fd, name
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def directory(self, path: str) -> Iterator[int | None]:
        """An fd on the real directory ``path`` (never a symlink to one), or None."""
        with self.parent(path) as p:
            if p is None:
                yield None
                return
            pfd, name = p
            try:
                st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
            except FileNotFoundError:
                yield None
                return
            if stat.S_ISLNK(st.st_mode):
                target = os.readlink(name, dir_fd=pfd)
                self.notes.append(f"{path} is a symlink (-> {target}): not followed, left alone")
                yield None
                return
            if not stat.S_ISDIR(st.st_mode):
                yield None
                return
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                         dir_fd=pfd)
            try:
                yield fd
            finally:
                os.close(fd)

    def remove_at(self, dfd: int, name: str, path: str) -> None:
        """Remove the entry ``name`` of ``dfd`` (a file, a link, or a whole tree); record it."""
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                         dir_fd=dfd)
            try:
                if os.fstat(fd).st_dev != os.fstat(dfd).st_dev:
                    raise MountedError(f"refusing to remove {path} in {self.root}: it is on "
                                       "another filesystem (a mount?)", path=self.root + path,
                                       hint=f"unmount {self.root}{path} first")
                freed = _du(fd)
                rootfs.clear_dir_at(fd, self.root + path)
            finally:
                os.close(fd)
            os.rmdir(name, dir_fd=dfd)
        else:
            freed = st.st_size if stat.S_ISREG(st.st_mode) else 0
            os.unlink(name, dir_fd=dfd)
        self._add(path, "removed", freed)

    def remove(self, path: str) -> None:
        with self.parent(path) as p:
            if p is not None:
                self.remove_at(p[0], p[1], path)

    def remove_glob(self, dirpath: str, pattern: str = "*", *, exclude: Iterable[str] = ()) -> None:
        """Remove the entries of the directory ``dirpath`` that match ``pattern``."""
        skip = set(exclude)
        with self.directory(dirpath) as dfd:
            if dfd is None:
                return
            for name in sorted(os.listdir(dfd)):
                if name not in skip and fnmatch.fnmatchcase(name, pattern):
                    self.remove_at(dfd, name, f"{dirpath.rstrip('/')}/{name}")

    def truncate_at(self, dfd: int, name: str, path: str) -> None:
        """Empty the regular file ``name`` of ``dfd`` (keeping it, its owner and mode)."""
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode) or st.st_size == 0:
            return
        fd = os.open(name, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     dir_fd=dfd)
        try:
            now = os.fstat(fd)
            if not stat.S_ISREG(now.st_mode) or now.st_ino != st.st_ino:
                return  # replaced under us: leave it
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)
        self._add(path, "truncated", now.st_size)

    def truncate(self, path: str) -> None:
        with self.parent(path) as p:
            if p is not None:
                with contextlib.suppress(FileNotFoundError):
                    self.truncate_at(p[0], p[1], path)

    def truncate_tree(self, dirpath: str) -> None:
        """Truncate every regular file below ``dirpath``; symlinks and other mounts are skipped."""
        with self.directory(dirpath) as dfd:
            if dfd is None:
                return
            top = dirpath.rstrip("/")
            for node in walk.walk(dfd, self.root + top, sort=True):
                if node.kind != walk.ENTRY:
                    continue
                path = f"{top}/{node.rel}"
                if stat.S_ISREG(node.st.st_mode):
                    self.truncate_at(node.parent, node.name, path)
                elif stat.S_ISDIR(node.st.st_mode):
                    self.notes.append(f"{path} is another filesystem: left alone")

    def read_regular(self, path: str) -> tuple[bytes, os.stat_result] | None:
        """The bytes of ``path`` if it is a regular file (a symlink is not followed), else None."""
        with self.parent(path) as p:
            if p is None:
                return None
            try:
                fd = os.open(p[1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                             dir_fd=p[0])
            except OSError as e:
                if e.errno in (errno.ENOENT, errno.ELOOP, errno.ENXIO):
                    return None
                raise
            with os.fdopen(fd, "rb") as f:
                st = os.fstat(f.fileno())
                return (f.read(), st) if stat.S_ISREG(st.st_mode) else None

    def rewrite(self, path: str, data: str, st: os.stat_result, *, mode: int | None = None) -> None:
        """Atomically replace ``path`` (a file or a link, never followed) with a regular file."""
        new = data.encode()
        rootfs.write_file(self.root, path, new, uid=st.st_uid, gid=st.st_gid, mkdirs=False,
                          mode=stat.S_IMODE(st.st_mode) if mode is None else mode)
        freed = st.st_size if stat.S_ISREG(st.st_mode) else 0
        self._add(path, "rewritten", max(0, freed - len(new)))

    def write(self, path: str, data: str, *, mode: int = 0o644) -> None:
        """Create the missing regular file ``path`` (root-owned)."""
        rootfs.write_file(self.root, path, data, mode=mode, mkdirs=False)
        self._add(path, "created", 0)

    def link(self, path: str, target: str) -> None:
        """Make ``path`` the symlink ``-> target``, replacing a file there (never followed)."""
        st = rootfs.lstat(self.root, path)
        rootfs.symlink(self.root, path, target)
        freed = st.st_size if st is not None and stat.S_ISREG(st.st_mode) else 0
        self._add(path, f"linked -> {target}", freed)

    def exists(self, path: str) -> bool:
        """Whether ``path`` exists, symlinks resolved inside the root (as the image sees it)."""
        try:
            os.close(rootfs.open_at(self.rootfd, path, os.O_PATH, 0))
        except OSError:
            return False
        return True

    def is_dir(self, path: str) -> bool:
        """Whether ``path`` is a directory, symlinks resolved inside the root."""
        try:
            os.close(rootfs.open_at(self.rootfd, path, os.O_PATH | os.O_DIRECTORY, 0))
        except OSError:
            return False
        return True

    def listdir(self, path: str) -> list[str]:
        try:
            fd = rootfs.open_at(self.rootfd, path, os.O_RDONLY | os.O_DIRECTORY, 0)
        except OSError:
            return []
        try:
            return sorted(os.listdir(fd))
        finally:
            os.close(fd)


def _du(dfd: int) -> int:
    """Apparent size of the regular files below the open directory ``dfd`` (no symlinks)."""
    return sum(node.st.st_size for node in walk.walk(dfd, ".")
               if node.kind == walk.ENTRY and stat.S_ISREG(node.st.st_mode))
