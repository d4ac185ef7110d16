"""``Chroot.copy_in``: copy host files and trees into an image, confined to the root.

Files are streamed to a temporary name in the resolved parent directory and
renamed over the leaf (never written through a symlink), root-owned; symlinks
are copied verbatim, never followed.
"""

from __future__ import annotations

import os
import stat

from .. import rootfs
from ..errors import ChrootError


def copy_file(root: str, src: str, dest: str, mode: int) -> None:
    with open(src, "rb") as f:
        rootfs.write_file(root, dest, f, mode=mode)


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
