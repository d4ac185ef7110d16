"""Write a directory tree as a deterministic pax tar stream, through libarchive.

We walk the tree ourselves (directory fds, entries sorted by name bytes, never
leaving the root's filesystem) and let libarchive read each file's metadata
(``archive_read_disk_entry_from_file``: xattrs, POSIX ACLs, sparse map) and
write the pax headers. Then, per entry: no atime/ctime/birthtime, numeric
ids only (no user/group name lookups), mtime clamped to SOURCE_DATE_EPOCH,
hard links stored as links to the first name in sort order.

A non-trivial POSIX ACL is also stored as its raw ``system.posix_acl_*``
xattrs (``SCHILY.xattr.*``), because curtin extracts with ``--xattrs
--xattrs-include=*`` but without ``--acls``. GNU tar sets a regular file's
xattrs *before* its mode, so the header mode must be the stat mode (group bits
= the ACL mask) or the chmod would clobber the mask. libarchive derives both
the header mode and the ``group::`` entry of ``SCHILY.acl.access`` from one
field; when ``group::`` differs from the mask the two cannot both be right, so
we keep the stat mode and the xattrs and drop ``SCHILY.acl.*`` for that entry
(curtin, bsdtar and extract() restore it exactly; ``tar --acls`` resets it).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import stat
from collections.abc import Callable

from ..rootfs import walk
from . import ffi as la

log = logging.getLogger(__name__)

BLOCK = 1 << 20
# A name that is not valid UTF-8 is stored as raw bytes (pax hdrcharset=BINARY);
# libarchive warns about it, but nothing is lost.
_RAW_NAME_WARNING = b"to UTF-8"
_ACL_XATTRS = ("system.posix_acl_access", "system.posix_acl_default")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


class TarWriter:
    """A pax tar stream whose 1 MiB blocks go to ``sink``."""

    def __init__(self, sink: Callable[[bytes], object], *, where: str,
                 clamp: int | None = None, sort: bool = True,
                 on_bytes: Callable[[int], object] | None = None) -> None:
        self.where = where
        self.clamp = clamp
        self.sort = sort
        self._sink = sink
        self._on_bytes = on_bytes
        self._error: BaseException | None = None
        self._links: dict[tuple[int, int], bytes] = {}
        self._buf = bytearray(BLOCK)
        self._cbuf = (ctypes.c_char * BLOCK).from_buffer(self._buf)
        self._zeros = (ctypes.c_char * BLOCK)()
        self._cb = la.WRITE_CALLBACK(self._write_cb)
        self._aw = la.write_new()
        self._rd = la.read_disk_new()
        self._entry = la.entry_new()
        if not (self._aw and self._rd and self._entry):
            raise MemoryError("libarchive: out of memory")
        self._check(la.write_set_format_pax(self._aw), "setting pax format")
        # xattrs as SCHILY.xattr.* only (what GNU tar reads), not also as
        # LIBARCHIVE.xattr.*, which GNU tar reports as an unknown keyword per file.
        self._check(la.write_set_options(self._aw, b"pax:xattrheader=SCHILY"), "setting options")
        self._check(la.write_set_bytes_per_block(self._aw, BLOCK), "setting block size")
        self._check(la.write_set_bytes_in_last_block(self._aw, 10240), "setting record size")
        self._check(la.read_disk_set_behavior(self._rd, la.READDISK_NO_FFLAGS), "setup", self._rd)
        self._check(la.write_open(self._aw, None, None, self._cb, None), "opening the stream")

    # -- plumbing ------------------------------------------------------------------------
    def _write_cb(self, _a: int, _client: int, buf: int, length: int) -> int:
        try:
            self._sink(ctypes.string_at(buf, length))
            if self._on_bytes is not None:
                self._on_bytes(length)
        except BaseException as e:  # re-raised by _check
            self._error = e
            return -1
        return length

    def _check(self, rc: int, what: str, a: int | None = None, host: bytes = b"") -> None:
        if rc < la.OK:
            if self._error is not None:
                raise self._error
            la.check(a or self._aw, rc, what + os.fsdecode(host), self.where)

    def close(self) -> None:
        """Write the end-of-archive blocks and the final padding."""
        self._check(la.write_close(self._aw), "finishing the archive")

    def free(self, *, failed: bool = False) -> None:
        if failed:
            la.write_fail(self._aw)  # no end-of-archive blocks after an error
        la.entry_free(self._entry)
        la.read_free(self._rd)
        la.write_free(self._aw)

    # -- the walk ------------------------------------------------------------------------
    def add_tree(self, root: str) -> None:
        """Add ``root`` and everything below it, depth-first in name order (:func:`walk.walk`).

        A directory on another filesystem (a mount point) is stored, not descended into.
        """
        host = os.fsencode(root).rstrip(b"/") or b"/"
        top = os.open(root, _DIR_FLAGS)
        try:
            dev = os.fstat(top).st_dev
            self._add(b".", host, os.fstat(top), top)
            for node in walk.walk(top, os.fsdecode(host), sort=self.sort):
                if node.kind == walk.LEAVE:
                    continue
                rel = os.fsencode(node.rel)
                arc, path = b"./" + rel, host + b"/" + rel
                if node.kind == walk.ENTER:
                    self._add(arc, path, node.st, node.fd)
                else:
                    self._add_entry(node, arc, path, dev)
        finally:
            os.close(top)

    def _add_entry(self, node: walk.Node, arc: bytes, host: bytes, dev: int) -> None:
        """Add a non-directory, or a directory the walk does not enter (a mount point)."""
        st, mode = node.st, node.st.st_mode
        if st.st_dev != dev and not stat.S_ISDIR(mode):
            log.warning("pack: skipping %s: another filesystem is mounted on it",
                        os.fsdecode(host))
        elif stat.S_ISSOCK(mode):
            log.warning("pack: skipping socket %s (tar cannot store sockets)", os.fsdecode(host))
        elif stat.S_ISDIR(mode) or stat.S_ISREG(mode):
            if stat.S_ISDIR(mode):
                log.warning("pack: not descending into %s: it is a mount point",
                            os.fsdecode(host))
            fd = os.open(node.name, _DIR_FLAGS if stat.S_ISDIR(mode) else _FILE_FLAGS,
                         dir_fd=node.parent)
            try:
                self._add(arc, host, st, fd)
            finally:
                os.close(fd)
        else:
            self._add(arc, host, st, -1)

    def _add(self, arc: bytes, host: bytes, st: os.stat_result, fd: int) -> None:
        e, aw = self._entry, self._aw
        la.entry_clear(e)
        la.entry_copy_pathname(e, arc)
        la.entry_copy_sourcepath(e, host)
        self._check(la.read_disk_entry_from_file(self._rd, e, fd, None),
                    "reading metadata of ", self._rd, host)
        la.entry_unset_atime(e)
        la.entry_unset_ctime(e)
        la.entry_unset_birthtime(e)
        if self.clamp is not None and (la.entry_mtime(e), la.entry_mtime_nsec(e)) > (self.clamp, 0):
            la.entry_set_mtime(e, self.clamp, 0)
        if not stat.S_ISLNK(st.st_mode) and (la.entry_acl_count(e, la.ACL_TYPE_ACCESS)
                                            or la.entry_acl_count(e, la.ACL_TYPE_DEFAULT)):
            self._acl_as_xattrs(host, st.st_mode)
        if self.sort and la.entry_xattr_count(e) > 1:
            self._sort_xattrs()
        regular = stat.S_ISREG(st.st_mode)
        if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
            first = self._links.setdefault((st.st_dev, st.st_ino), arc)
            if first != arc:
                la.entry_copy_hardlink(e, first)
                la.entry_set_size(e, 0)
                la.entry_sparse_clear(e)
                regular = False
        rc = la.write_header(aw, e)
        if rc != la.WARN or _RAW_NAME_WARNING not in (la.error_string(aw) or b""):
            self._check(rc, "writing the header of ", host=host)
        if regular and st.st_size > 0:
            if la.entry_sparse_count(e) > 0:
                self._copy_sparse(fd, st.st_size, host)
            else:
                self._copy(fd, st.st_size, host)
        self._check(la.write_finish_entry(aw), "finishing ", host=host)

    def _sort_xattrs(self) -> None:
        """xattrs in name order: listxattr's order depends on the filesystem's history."""
        pairs = sorted(la.xattrs(self._entry))
        la.entry_xattr_clear(self._entry)
        for name, value in pairs:
            la.entry_xattr_add_entry(self._entry, name, value, len(value))

    def _acl_as_xattrs(self, host: bytes, mode: int) -> None:
        found = False
        for name in _ACL_XATTRS:
            try:
                value = os.getxattr(host, name, follow_symlinks=False)
            except OSError as err:
                if err.errno in (errno.ENODATA, errno.ENOTSUP):
                    continue
                raise
            la.entry_xattr_add_entry(self._entry, name.encode(), value, len(value))
            found = True
        if found and la.entry_perm(self._entry) != stat.S_IMODE(mode):
            la.entry_acl_clear(self._entry)
            la.entry_set_perm(self._entry, stat.S_IMODE(mode))

    def _put(self, addr: int, n: int, host: bytes) -> None:
        w = la.write_data(self._aw, addr, n)
        if w < 0:
            self._check(int(w), "writing the data of ", host=host)

    def _copy(self, fd: int, size: int, host: bytes) -> None:
        addr = ctypes.addressof(self._cbuf)
        left = size
        while left > 0:
            n = os.readv(fd, [self._buf])
            if n == 0:
                log.warning("pack: %s shrank while it was read", os.fsdecode(host))
                return  # libarchive pads the entry with NULs
            self._put(addr, min(n, left), host)
            left -= n

    def _copy_sparse(self, fd: int, size: int, host: bytes) -> None:
        """Feed data regions from the file and holes from a zero buffer (skipped by pax)."""
        addr, zeros = ctypes.addressof(self._cbuf), ctypes.addressof(self._zeros)
        view = memoryview(self._buf)
        pos = 0
        while pos < size:
            try:
                data = min(os.lseek(fd, pos, os.SEEK_DATA), size)
            except OSError as err:
                if err.errno != errno.ENXIO:
                    raise
                data = size
            while pos < data:
                n = min(data - pos, BLOCK)
                self._put(zeros, n, host)
                pos += n
            if pos >= size:
                break
            hole = min(os.lseek(fd, pos, os.SEEK_HOLE), size)
            while pos < hole:
                n = os.preadv(fd, [view[: min(hole - pos, BLOCK)]], pos)
                if n == 0:
                    return
                self._put(addr, n, host)
                pos += n


def write_tree(root: str, sink: Callable[[bytes], object], *, where: str,
               clamp: int | None, sort: bool,
               on_bytes: Callable[[int], object] | None = None) -> None:
    """Stream ``root`` as pax tar into ``sink`` (called with 1 MiB blocks)."""
    writer = TarWriter(sink, where=where, clamp=clamp, sort=sort, on_bytes=on_bytes)
    try:
        writer.add_tree(root)
        writer.close()
    except BaseException:
        writer.free(failed=True)
        raise
    writer.free()
