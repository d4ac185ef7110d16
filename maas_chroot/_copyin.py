"""``Chroot.copy_in``: copy host files and trees into an image, confined to the root.

Files are streamed to a temporary name in the resolved parent directory and
renamed over the leaf (never written through a symlink), root-owned; symlinks
are copied verbatim, never followed.
"""

from __future__ import annotations

import contextlib
import os
import stat

from . import rootfs
from .errors import ChrootError


def copy_file(root: str, src: str, dest: str, mode: int) -> None:
    with rootfs.parent_dir(root, dest, create=True) as (dfd, name):
        tmp = f".{name}.maas-chroot-{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=dfd)
        try:
            try:
                with open(src, "rb") as f:
                    while chunk := f.read(1 << 20):
                        view = memoryview(chunk)
                        while view:
                            view = view[os.write(fd, view):]
                os.fchown(fd, 0, 0)
                os.fchmod(fd, mode)
            finally:
                os.close(fd)
            os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
            raise


def copy_tree(root: str, src: str, dest: str) -> None:
    rootfs.makedirs(root, dest, mode=stat.S_IMODE(os.stat(src).st_mode))
    with os.scandir(src) as it:
        entries = sorted(it, key=lambda e: e.name)
    for e in entries:
        target = f"{dest.rstrip('/')}/{e.name}"
        if e.is_symlink():
            rootfs.symlink(root, target, os.readlink(e.path))
        elif e.is_dir(follow_symlinks=False):
            copy_tree(root, e.path, target)
        elif e.is_file(follow_symlinks=False):
            copy_file(root, e.path, target, stat.S_IMODE(e.stat(follow_symlinks=False).st_mode))
        else:
            raise ChrootError(f"cannot copy {e.path}: not a file, directory or symlink",
                              root=root)
