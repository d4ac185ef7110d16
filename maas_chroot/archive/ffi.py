"""Raw ctypes bindings to the libarchive functions the archive stage needs.

python-libarchive-c locates the library; we bind our own handle so its
``errcheck`` hooks (which log ``ARCHIVE_WARN`` and carry on) never apply:
every status code comes back raw and :func:`check` turns warnings into errors.
ctypes releases the GIL during each call, so libarchive work overlaps the
compression threads.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from typing import Any

from libarchive import ffi

from ..errors import ArchiveError

lib = ctypes.CDLL(ffi.libarchive_path, use_errno=True)

OK = 0
EOF = 1
WARN = -20

# archive_entry file types
AE_IFLNK = 0o120000
AE_IFDIR = 0o040000

# archive_write_disk options
EXTRACT_OWNER = 0x0001
EXTRACT_PERM = 0x0002
EXTRACT_TIME = 0x0004
EXTRACT_ACL = 0x0020
EXTRACT_XATTR = 0x0080
EXTRACT_SECURE_NODOTDOT = 0x0200

# archive_read_disk behaviours
READDISK_NO_FFLAGS = 0x0040

ACL_TYPE_ACCESS = 0x100
ACL_TYPE_DEFAULT = 0x200

_p = ctypes.c_void_p
_i = ctypes.c_int
_s = ctypes.c_char_p
_ll = ctypes.c_longlong
_sz = ctypes.c_size_t

WRITE_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_ssize_t, _p, _p, _p, _sz)


def _bind(name: str, argtypes: list[Any], restype: Any) -> Callable[..., Any]:
    fn = getattr(lib, "archive_" + name)
    fn.argtypes = argtypes
    fn.restype = restype
    return fn  # type: ignore[no-any-return]


error_string = _bind("error_string", [_p], _s)

entry_new = _bind("entry_new", [], _p)
entry_free = _bind("entry_free", [_p], None)
entry_clear = _bind("entry_clear", [_p], _p)
entry_pathname = _bind("entry_pathname", [_p], _s)
entry_hardlink = _bind("entry_hardlink", [_p], _s)
entry_filetype = _bind("entry_filetype", [_p], ctypes.c_uint)
entry_mtime = _bind("entry_mtime", [_p], ctypes.c_int64)
entry_mtime_nsec = _bind("entry_mtime_nsec", [_p], ctypes.c_long)
entry_mtime_is_set = _bind("entry_mtime_is_set", [_p], _i)
entry_copy_pathname = _bind("entry_copy_pathname", [_p, _s], None)
entry_copy_hardlink = _bind("entry_copy_hardlink", [_p, _s], None)
entry_copy_sourcepath = _bind("entry_copy_sourcepath", [_p, _s], None)
entry_set_size = _bind("entry_set_size", [_p, _ll], None)
entry_set_mtime = _bind("entry_set_mtime", [_p, ctypes.c_int64, ctypes.c_long], None)
entry_unset_atime = _bind("entry_unset_atime", [_p], None)
entry_unset_ctime = _bind("entry_unset_ctime", [_p], None)
entry_unset_birthtime = _bind("entry_unset_birthtime", [_p], None)
entry_sparse_count = _bind("entry_sparse_count", [_p], _i)
entry_sparse_clear = _bind("entry_sparse_clear", [_p], None)
entry_acl_count = _bind("entry_acl_count", [_p, _i], _i)
entry_acl_clear = _bind("entry_acl_clear", [_p], None)
entry_perm = _bind("entry_perm", [_p], ctypes.c_uint)
entry_set_perm = _bind("entry_set_perm", [_p, ctypes.c_uint], None)
entry_xattr_clear = _bind("entry_xattr_clear", [_p], None)
entry_xattr_count = _bind("entry_xattr_count", [_p], _i)
entry_xattr_reset = _bind("entry_xattr_reset", [_p], _i)
entry_xattr_next = _bind("entry_xattr_next", [_p, ctypes.POINTER(_s), ctypes.POINTER(_p),
                                              ctypes.POINTER(_sz)], _i)
entry_xattr_add_entry = _bind("entry_xattr_add_entry", [_p, _s, _p, _sz], None)

read_new = _bind("read_new", [], _p)
read_support_format_tar = _bind("read_support_format_tar", [_p], _i)
read_support_filter_all = _bind("read_support_filter_all", [_p], _i)
read_open_fd = _bind("read_open_fd", [_p, _i, _sz], _i)
read_next_header2 = _bind("read_next_header2", [_p, _p], _i)
read_extract2 = _bind("read_extract2", [_p, _p, _p], _i)
read_free = _bind("read_free", [_p], _i)

read_disk_new = _bind("read_disk_new", [], _p)
read_disk_set_behavior = _bind("read_disk_set_behavior", [_p, _i], _i)
read_disk_entry_from_file = _bind("read_disk_entry_from_file", [_p, _p, _i, _p], _i)

write_new = _bind("write_new", [], _p)
write_set_format_pax = _bind("write_set_format_pax", [_p], _i)
write_set_options = _bind("write_set_options", [_p, _s], _i)
write_set_bytes_per_block = _bind("write_set_bytes_per_block", [_p, _i], _i)
write_set_bytes_in_last_block = _bind("write_set_bytes_in_last_block", [_p, _i], _i)
write_open = _bind("write_open", [_p, _p, _p, WRITE_CALLBACK, _p], _i)
write_header = _bind("write_header", [_p, _p], _i)
write_data = _bind("write_data", [_p, _p, _sz], ctypes.c_ssize_t)
write_finish_entry = _bind("write_finish_entry", [_p], _i)
write_close = _bind("write_close", [_p], _i)
write_free = _bind("write_free", [_p], _i)
write_fail = _bind("write_fail", [_p], _i)

write_disk_new = _bind("write_disk_new", [], _p)
write_disk_set_options = _bind("write_disk_set_options", [_p, _i], _i)


def xattrs(entry: int) -> list[tuple[bytes, bytes]]:
    """The (name, value) xattrs of ``entry``."""
    out = []
    name, value, size = _s(), _p(), _sz()
    entry_xattr_reset(entry)
    while entry_xattr_next(entry, ctypes.byref(name), ctypes.byref(value),
                           ctypes.byref(size)) == OK:
        if name.value is not None:
            out.append((name.value, ctypes.string_at(value.value or 0, size.value)
                        if size.value else b""))
    return out


def message(a: int | None) -> str:
    """libarchive's last error message on ``a``."""
    raw = error_string(a) if a else None
    if not raw:
        return "unknown libarchive error"
    return os.fsdecode(raw)


def check(a: int | None, rc: int, what: str, path: str | os.PathLike[str], *,
          hint: str | None = None) -> int:
    """Return ``rc`` if it is ARCHIVE_OK or ARCHIVE_EOF; raise ArchiveError otherwise.

    Warnings are errors: a warning from libarchive means metadata was lost.
    """
    if rc >= OK:
        return rc
    kind = "warning" if rc == WARN else "error"
    raise ArchiveError(f"{what}: libarchive {kind}: {message(a)}", path=path, hint=hint)
