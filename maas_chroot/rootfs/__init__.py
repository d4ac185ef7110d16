"""In-root file operations: the one resolver, the one tree walk, safe removal, the root lock.

Every host-side write the library makes into an image goes through
:mod:`.files`, which resolves paths inside the root with :mod:`.inroot`;
:mod:`.walk` is the one iterative tree walk; :mod:`.remove` the one ``rm -rf``;
:mod:`.lock` keeps sessions, sysprep, pack and copies of one root apart; :mod:`.imagearch`
reads an image's architecture from its own files.
"""

from .files import (
    JOURNAL_NAME,
    Entry,
    kernels,
    lstat,
    makedirs,
    open_at,
    open_in_root,
    os_release,
    parent_dir,
    read_file,
    read_regular_head,
    restore,
    snapshot,
    symlink,
    unlink,
    write_file,
)
from .imagearch import image_arch
from .remove import clear_dir_at, mounts_under, remove_tree

__all__ = ["JOURNAL_NAME", "Entry", "clear_dir_at", "image_arch", "kernels", "lstat", "makedirs",
           "mounts_under", "open_at", "open_in_root", "os_release", "parent_dir", "read_file",
           "read_regular_head", "remove_tree", "restore", "snapshot", "symlink", "unlink",
           "write_file"]
