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


def copy_in(root: str, src: str, dst: str, mode: int | None) -> None:
    """Copy the host file or tree ``src`` to ``dst`` in the image, with ``cp``'s rules.

    A ``dst`` ending in ``/`` (created if missing) receives the source under its own
    name, and so does an existing directory ``dst`` for a file source; a directory
    source is merged into an existing directory ``dst``.
    """
    try:
        st = os.stat(src)
    except OSError as e:
        raise ChrootError(f"cannot copy {src} into {root}: {e.strerror}", root=root,
                          hint="give an existing host file or directory") from None
    there = _stat_in(root, dst)
    if stat.S_ISDIR(st.st_mode) and there and not stat.S_ISDIR(there):
        raise ChrootError(f"cannot copy the directory {src} onto {dst} in {root}: it "
                          "exists and is not a directory", root=root,
                          hint=f"remove {dst} in the image first, or copy into {dst}/...")
    if dst.endswith("/") or (stat.S_ISREG(st.st_mode) and stat.S_ISDIR(there)):
        dst = f"{dst.rstrip('/')}/{os.path.basename(src.rstrip('/'))}"
    if stat.S_ISDIR(st.st_mode):
        copy_tree(root, src, dst)
    elif stat.S_ISREG(st.st_mode):
        copy_file(root, src, dst, stat.S_IMODE(st.st_mode) if mode is None else mode)
    else:
        raise ChrootError(f"cannot copy {src}: not a regular file or directory", root=root)


def _stat_in(root: str, path: str) -> int:
    """The file type bits of ``path`` resolved inside the root (symlinks followed), 0 if none."""
    try:
        fd = rootfs.open_in_root(root, path.rstrip("/") or "/", os.O_PATH)
    except OSError:
        return 0
    try:
        return os.fstat(fd).st_mode
    finally:
        os.close(fd)


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
