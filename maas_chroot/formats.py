"""Archive formats: the one table of compressions, magic bytes, file suffixes and MAAS filetypes.

Every module that recognises an archive (extract, pack, the source plan,
bootstrap targets, the MAAS upload, the boot test) reads this table. curtin
unpacks a root tarball compressed with gzip, bzip2 or xz only
(``curtin/commands/extract.py``, ``extract_root_tgz_file``: ``tar -xpf`` with
the compression picked by GNU tar), never zstd.
"""

from __future__ import annotations

import bz2
import lzma
import os
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True)
class Compression:
    """A compression of tar archives."""

    name: str  # "gzip"
    fmt: str  # the archive format it makes of a tar: "tar.gz"
    magic: bytes
    aliases: tuple[str, ...]  # other names accepted for it: "gz", "tgz"
    suffixes: tuple[str, ...]  # file suffixes of a compressed tar, longest first
    levels: range  # valid compression levels
    decompressors: tuple[tuple[str, ...], ...]  # argv, stdin to stdout, by preference
    maas_tar: str | None  # MAAS upload filetype of a compressed root tar ("tgz")
    maas_dd: str | None  # MAAS upload filetype of a compressed disk image ("ddgz")

    @property
    def curtin(self) -> bool:
        """Whether curtin can deploy a root tarball of this compression."""
        return self.maas_tar is not None


COMPRESSIONS: tuple[Compression, ...] = (
    Compression("gzip", "tar.gz", b"\x1f\x8b", ("gz", "tgz"), (".tar.gz", ".tgz"),
                range(1, 10), (("pigz", "-dc"), ("gzip", "-dc")), "tgz", "ddgz"),
    Compression("xz", "tar.xz", b"\xfd7zXZ\x00", ("txz",), (".tar.xz", ".txz"),
                range(0, 10), (("xz", "-dc", "-T0"),), "txz", "ddxz"),
    Compression("bzip2", "tar.bz2", b"BZh", ("bz2", "tbz", "tbz2"), (".tar.bz2", ".tbz", ".tbz2"),
                range(1, 10), (("lbzip2", "-dc"), ("bzip2", "-dc")), "tbz", "ddbz2"),
    Compression("zstd", "tar.zst", b"\x28\xb5\x2f\xfd", ("zst",), (".tar.zst", ".tzst"),
                range(1, 20), (("zstd", "-dcq"),), None, None),
)
_BY_NAME: Mapping[str, Compression] = MappingProxyType(
    {n: c for c in COMPRESSIONS for n in (c.name, c.fmt, *c.aliases)})

SQUASHFS = "squashfs"
SQUASHFS_MAGIC = b"hsqs"
SQUASHFS_SUFFIXES = (".squashfs", ".sqfs")
TAR_SUFFIXES = (".tar",)
#: Every suffix that names a file this project reads or writes as an image.
ARCHIVE_SUFFIXES: tuple[str, ...] = tuple(sorted(
    {*TAR_SUFFIXES, *SQUASHFS_SUFFIXES, *(s for c in COMPRESSIONS for s in c.suffixes)},
    key=len, reverse=True))

#: What MAAS accepts as ``filetype`` for an upload (BOOT_RESOURCE_FILE_TYPE_CHOICES_UPLOAD
#: in canonical/maas ``src/maasserver/enum.py``).
MAAS_FILETYPES: tuple[str, ...] = (
    "tgz", "tbz", "txz", "ddtgz", "ddtbz", "ddtxz", "ddtar", "ddbz2", "ddgz", "ddxz", "ddraw",
)


def compression(name: str) -> Compression | None:
    """The compression called ``name`` ("gzip", "gz", "tar.gz", "tgz", ...), or None."""
    return _BY_NAME.get(name)


def compressed_by(head: bytes) -> Compression | None:
    """The compression whose magic bytes start ``head``, or None."""
    return next((c for c in COMPRESSIONS if head.startswith(c.magic)), None)


def is_tar(head: bytes) -> bool:
    """Whether ``head`` (the first 512 bytes or more) is a ustar/pax/GNU tar header."""
    return len(head) >= 263 and head[257:262] == b"ustar"


def detect(head: bytes) -> str | None:
    """The archive format of a file starting with ``head``: one of "tar.gz", "tar.xz",
    "tar.bz2", "tar.zst", "tar", "squashfs"; None when it is none of them."""
    found = compressed_by(head)
    if found is not None:
        return found.fmt
    if head.startswith(SQUASHFS_MAGIC):
        return SQUASHFS
    return "tar" if is_tar(head) else None


_Inflater = Callable[[], "zlib._Decompress | bz2.BZ2Decompressor | lzma.LZMADecompressor"]
_INFLATERS: Mapping[str, _Inflater] = MappingProxyType(
    {"gzip": lambda: zlib.decompressobj(31), "bzip2": bz2.BZ2Decompressor,
     "xz": lzma.LZMADecompressor})


def inflate_head(kind: Compression, data: bytes, limit: int = 1024) -> bytes:
    """The first ``limit`` bytes that ``data``, the head of a ``kind``-compressed file,
    inflates to; b"" for a damaged stream or a compression Python cannot read (zstd)."""
    make = _INFLATERS.get(kind.name)
    if make is None:
        return b""
    try:
        return bytes(make().decompress(data, limit))
    except (zlib.error, OSError, lzma.LZMAError, EOFError):
        return b""


def read_head(path: str | os.PathLike[str], size: int = 512) -> bytes:
    """The first ``size`` bytes of ``path`` (OSError as open(2) gives it)."""
    with open(path, "rb") as f:
        return f.read(size)


def tar_output(name: str) -> Compression | None:
    """The compression a (compressed) tar file name asks for: ``x.tgz`` -> gzip."""
    low = name.lower()
    for c in COMPRESSIONS:
        for suffix in c.suffixes:
            if low.endswith(suffix) and len(low) > len(suffix):
                return c
    return None


def strip_suffix(name: str) -> str:
    """``noble.tar.xz`` -> ``noble``: the name without its archive suffix."""
    low = name.lower()
    for suffix in ARCHIVE_SUFFIXES:
        if low.endswith(suffix) and len(low) > len(suffix):
            return name[: -len(suffix)]
    return name
