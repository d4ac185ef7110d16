"""Extract a tar stream into a directory with libarchive, refusing unsafe entries.

Every member name is checked before libarchive sees it: no absolute paths, no
``..``, no hard link to a name outside the destination, and no path through a
symlink that an earlier entry created (the destination starts empty, so those
are the only symlinks there can be). Then the name is rewritten to an
absolute path under the destination, so ``archive_write_disk`` never depends
on (or changes) the process's working directory. A member that replaces a
symlink is preceded by unlinking that symlink ourselves, so libarchive never
meets a symlink in the destination other than as a final component it made.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from ..errors import ArchiveError, UnsafeArchiveError
from . import ffi as la

# No EXTRACT_SECURE_SYMLINKS: it re-walks every component of every absolute
# path (openat + fstatat + close each, ~10 per member: 5x GNU tar's system
# time). The guard below gives the same protection from what it tracks.
FLAGS = (la.EXTRACT_OWNER | la.EXTRACT_PERM | la.EXTRACT_TIME | la.EXTRACT_ACL
         | la.EXTRACT_XATTR | la.EXTRACT_SECURE_NODOTDOT)

_HINT = "the archive is malicious or broken; do not use it"
# GNU tar stores a name that is not valid UTF-8 as raw bytes in the pax header;
# libarchive warns that it cannot convert it but keeps the bytes, as GNU tar does.
_RAW_NAME_WARNING = b"can't be converted from UTF-8 to current locale"


class _Guard:
    """Validates member names against the symlinks extracted so far."""

    def __init__(self, archive: str) -> None:
        self.archive = archive
        self.links: set[bytes] = set()
        self.dirs: set[bytes] = set()

    def _refuse(self, raw: bytes, why: str) -> UnsafeArchiveError:
        member = os.fsdecode(raw)
        return UnsafeArchiveError(f"unsafe member {member!r} in {self.archive}: {why}",
                                  path=self.archive, member=member, hint=_HINT)

    def relative(self, raw: bytes, *, member: bytes, what: str = "path") -> bytes:
        """``raw`` normalised to a relative path inside the destination, or refuse."""
        if raw.startswith(b"/"):
            raise self._refuse(member, f"absolute {what} {os.fsdecode(raw)!r}")
        parts = [c for c in raw.split(b"/") if c not in (b"", b".")]
        if b".." in parts:
            raise self._refuse(member, f"{what} {os.fsdecode(raw)!r} contains '..'")
        if self.links:
            for i in range(1, len(parts)):
                prefix = b"/".join(parts[:i])
                if prefix in self.links:
                    raise self._refuse(member, f"{what} {os.fsdecode(raw)!r} goes through the "
                                               f"symlink {os.fsdecode(prefix)!r}")
        return b"/".join(parts)

    def note(self, raw: bytes, rel: bytes, *, symlink: bool, directory: bool) -> None:
        if symlink:
            if rel in self.dirs:
                # libarchive fixes up directory modes and times at the end, by name:
                # through a symlink put there since, they would land outside.
                raise self._refuse(raw, f"symlink replaces the directory {os.fsdecode(rel)!r}")
            self.links.add(rel)
        else:
            self.links.discard(rel)
            if directory:
                self.dirs.add(rel)


def _acl_xattrs(entry: int, path: bytes, raw: bytes, archive: str) -> None:
    """Restore ACLs stored as ``SCHILY.xattr.system.posix_acl_*``: libarchive skips them.

    (pack() stores an ACL that way when libarchive's ``SCHILY.acl`` cannot carry
    it; see _mktar.) The header mode's group bits are the ACL mask, so the
    chmod libarchive already did (or defers, for a directory) agrees with it.
    """
    for name, value in la.xattrs(entry):
        if name.startswith(b"system.posix_acl_"):
            try:
                os.setxattr(path, name, value, follow_symlinks=False)
            except OSError as e:
                raise ArchiveError(f"cannot restore the ACL {name.decode()} of "
                                   f"{os.fsdecode(raw)!r} from {archive}: {e.strerror}",
                                   path=archive, hint="extract onto a filesystem with "
                                                      "POSIX ACL support") from e


def untar(fd: int, dest: str, *, archive: str, filters: bool,
          tick: Callable[[], object] | None = None) -> None:
    """Extract the tar stream read from ``fd`` into the existing directory ``dest``.

    ``filters``: let libarchive decompress (when no external decompressor runs).
    """
    base = os.fsencode(dest).rstrip(b"/")
    guard = _Guard(archive)
    root_mtime: int | None = None
    a = la.read_new()
    ad = la.write_disk_new()
    entry = la.entry_new()
    try:
        la.check(a, la.read_support_format_tar(a), "setup", archive)
        if filters:
            la.check(a, la.read_support_filter_all(a), "setup", archive)
        la.check(ad, la.write_disk_set_options(ad, FLAGS), "setup", archive)
        la.check(a, la.read_open_fd(a, fd, 1 << 20), f"opening {archive}", archive)
        while True:
            rc = la.read_next_header2(a, entry)
            if rc == la.EOF:
                break
            if rc != la.WARN or _RAW_NAME_WARNING not in (la.error_string(a) or b""):
                la.check(a, rc, f"reading {archive}", archive)
            raw = la.entry_pathname(entry)
            if raw is None:
                raise UnsafeArchiveError(f"a member of {archive} has no usable name",
                                         path=archive, member="", hint=_HINT)
            rel = guard.relative(raw, member=raw)
            was_link = rel in guard.links
            kind = la.entry_filetype(entry)
            if not rel and kind != la.AE_IFDIR:
                raise guard._refuse(raw, "only a directory may name the destination itself")
            if not rel and la.entry_mtime_is_set(entry):
                root_mtime = la.entry_mtime(entry) * 10**9 + la.entry_mtime_nsec(entry)
            link = la.entry_hardlink(entry)
            if link is not None:
                target = guard.relative(link, member=raw, what="hard link target")
                if not target:
                    raise guard._refuse(raw, "hard link to the destination directory")
                la.entry_copy_hardlink(entry, base + b"/" + target)
                guard.note(raw, rel, symlink=target in guard.links, directory=False)
            else:
                guard.note(raw, rel, symlink=kind == la.AE_IFLNK, directory=kind == la.AE_IFDIR)
            path = base + b"/" + rel if rel else base
            if was_link:
                os.unlink(path)  # replace the symlink itself, never what it points to
            la.entry_copy_pathname(entry, path)
            la.check(a, la.read_extract2(a, entry, ad),
                     f"extracting {os.fsdecode(raw)!r} from {archive}", archive)
            if link is None and la.entry_xattr_count(entry):
                _acl_xattrs(entry, path, raw, archive)
            if tick is not None:
                tick()
        # Directory modes and times are set at close, after their contents.
        la.check(ad, la.write_close(ad), f"finishing {archive}", archive)
        if root_mtime is not None:
            # libarchive defers the times of directories it creates, not of the
            # existing destination, whose mtime the members then changed.
            os.utime(dest, ns=(os.stat(dest).st_atime_ns, root_mtime))
    finally:
        la.entry_free(entry)
        la.write_free(ad)
        la.read_free(a)
