"""What MAAS accepts for a custom boot resource: name, architecture, base image, filetype.

Private helper of :mod:`maas_chroot.maas`. The rules follow MAAS's own form,
``BootResourceForm`` in canonical/maas ``src/maasserver/forms/__init__.py``:

* ``clean_name``: a name with one ``/`` is split in ``os/release``; any prefix but
  ``custom`` must be a supported OS (and the image would then not be a custom one).
  Up to 3.7 ``custom/`` is stripped; from 3.8 (commit e7eb692ff) it is stored as
  sent, ``custom/foo``, which deploy cannot find: ``BootResourceManager.get_resource_for``
  (``models/bootresource.py``) and ``preseed.get_base_osystem_series`` look a custom
  release up by ``name == "foo"``. So the bare name is what goes to MAAS, on every
  version (:func:`bare_name`), and ``custom/foo`` is what the user sees. The name is
  refused with "<name> is a reserved name" when it is an ``os/release`` offered by
  the image stream (so every Ubuntu release codename), one of those words, an OS name
  of ``OperatingSystemRegistry`` or matches ``^centos\\d\\d?$``. More than one ``/``
  makes MAAS's ``name.split("/")`` unpacking fail (a server error), so it is refused.
* ``clean_base_image``: ``<osystem>/<series>`` with osystem in ``LINUX_OSYSTEMS``
  (ubuntu, centos, rhel, ol; ``src/maasserver/models/bootresource.py``).
* ``BOOT_RESOURCE_FILE_TYPE_CHOICES_UPLOAD``: the filetype values.

Everything here is checked before any byte goes to the network.
"""

from __future__ import annotations

import logging
import lzma
import os
import re
import tarfile
import zlib
from collections.abc import Callable, Iterator
from typing import IO

from .. import arches, formats, releases
from ..errors import ArchiveError, ImageNameError

logger = logging.getLogger(__name__)

#: filetype values MAAS accepts for an upload (BOOT_RESOURCE_FILE_TYPE_CHOICES_UPLOAD).
FILETYPES = formats.MAAS_FILETYPES

#: LINUX_OSYSTEMS of maasserver.models.bootresource: allowed base image OSes.
BASE_IMAGE_OSYSTEMS: tuple[str, ...] = ("ubuntu", "centos", "rhel", "ol")

#: Names in MAAS's OperatingSystemRegistry (``src/provisioningserver/drivers/osystem`` up
#: to 3.7, ``src/maascommon/osystem`` from 3.8, which adds ``onie``; 3.4 still has
#: ``caringo``).
RESERVED_OS_NAMES: frozenset[str] = frozenset({
    "ubuntu", "ubuntu-core", "centos", "rhel", "ol", "custom", "windows", "suse",
    "caringo", "esxi", "bootloader", "onie",
})
#: The non-Ubuntu os and release names of the maas.io stream. ``_get_reserved_names``
#: reserves each part of every os/release in BootSourceCache: the CentOS bases
#: (``centos70``, ``8``) and the bootloaders, whose release is their ``bootloader-type``
#: (``import_images/download_descriptions.py``).
STREAM_NAMES: frozenset[str] = frozenset({
    "centos70", "8", "grub-efi", "grub-efi-signed", "grub-ieee1275", "pxelinux", "uefi",
    "pxe", "open-firmware",
})

_MAX_NAME = 255      # BootResource.name is CharField(max_length=255)
_CENTOS = re.compile(r"^centos\d\d?$")          # clean_name's CentOS reservation
_ARCH = re.compile(r"^[a-z0-9_]+/[a-z0-9_.+-]+$")
_SERIES = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


def validate_name(name: str) -> str:
    """Return ``custom/<name>`` (how the user sees it) for a name MAAS accepts for a
    custom image, or raise.

    Accepts ``custom/x`` or a bare ``x``. Raises :class:`ImageNameError` (with MAAS's
    own wording, e.g. "focal is a reserved name") for names MAAS refuses.
    """
    if not isinstance(name, str) or not name.strip():
        raise ImageNameError("a boot-resource name is required (e.g. 'custom/noble-custom')")
    if name != name.strip() or any(c.isspace() or not c.isprintable() for c in name):
        raise ImageNameError(f"boot-resource name {name!r} contains whitespace or control "
                             "characters", hint="use letters, digits, '-', '_' or '.'")
    if name.count("/") > 1:
        raise ImageNameError(
            f"boot-resource name {name!r} has more than one '/': MAAS splits it in "
            "exactly '<os>/<release>'", hint="use 'custom/<name>' or a bare name")
    bare = name
    if "/" in name:
        osystem, bare = name.split("/")
        if osystem != "custom":
            raise ImageNameError(
                f"boot-resource name {name!r}: only custom images can be uploaded "
                f"('{osystem}/...' names belong to MAAS's own {osystem} images)",
                hint=f"use 'custom/{bare}'")
        if not bare:
            raise ImageNameError(f"boot-resource name {name!r} has nothing after 'custom/'")
    if len(bare) > _MAX_NAME:
        raise ImageNameError(f"boot-resource name {name!r} is longer than {_MAX_NAME} "
                             "characters (MAAS's limit)")
    low = bare.lower()
    why = None
    if low in releases.ubuntu_releases():
        why = "an Ubuntu release codename"
    elif low in RESERVED_OS_NAMES:
        why = "an operating system name"
    elif low in STREAM_NAMES:
        why = "a name in MAAS's image stream"
    elif _CENTOS.search(low):
        why = "reserved by MAAS for CentOS versions"
    if why is not None:
        raise ImageNameError(
            f"boot-resource name {name!r} refused: {bare} is a reserved name ({why}; "
            "MAAS would answer 400 with the same words)",
            hint=f"pick a name that is not a release or OS name, e.g. 'custom/{bare}-custom'")
    return f"custom/{bare}"


def bare_name(name: str) -> str:
    """The name to send MAAS (and the release deploy uses): ``custom/foo`` -> ``foo``."""
    return validate_name(name).removeprefix("custom/")


def same_name(stored: str, wanted: str) -> bool:
    """Whether a name MAAS reports is the custom image ``wanted`` (either spelling):
    3.4-3.7 store ``foo`` for ``custom/foo``, 3.8 stores what it was sent."""
    return stored.removeprefix("custom/") == wanted.removeprefix("custom/")


def validate_architecture(architecture: str) -> str:
    """``<arch>/<subarch>`` such as ``amd64/generic`` (validate_architecture in MAAS)."""
    if not isinstance(architecture, str) or not _ARCH.match(architecture):
        raise ImageNameError(
            f"architecture {architecture!r} is not '<arch>/<subarch>'",
            hint="for example 'amd64/generic' or 'arm64/generic'")
    return architecture


def validate_base_image(base_image: str) -> str:
    """``<osystem>/<series>`` with osystem in ubuntu, centos, rhel, ol (clean_base_image)."""
    parts = base_image.split("/") if isinstance(base_image, str) else []
    if len(parts) != 2 or not _SERIES.match(parts[1].lower()):
        raise ImageNameError(
            f"base_image {base_image!r}: a base image must follow the format: "
            "<osystem>/<series>", hint="for example 'ubuntu/noble'")
    osystem, series = parts[0].lower(), parts[1].lower()
    if osystem not in BASE_IMAGE_OSYSTEMS:
        raise ImageNameError(
            f"base_image {base_image!r}: custom images require a valid non-custom OS type "
            f"base image ({', '.join(BASE_IMAGE_OSYSTEMS)})")
    if osystem == "ubuntu" and series not in releases.ubuntu_releases():
        versions = {v: k for k, v in releases.ubuntu_releases().items()}
        if series in versions:
            raise ImageNameError(f"base_image {base_image!r} names a version, MAAS wants the "
                                 "codename", hint=f"use 'ubuntu/{versions[series]}'")
        logger.warning("base_image %s: %r is not an Ubuntu codename known here", base_image,
                       series)
    return f"{osystem}/{series}"


def validate_filetype(filetype: str) -> str:
    if filetype not in FILETYPES:
        raise ImageNameError(
            f"filetype {filetype!r}: Select a valid choice. {filetype} is not one of the "
            "available choices.", hint=f"one of: {' '.join(FILETYPES)}")
    return filetype


# --- filetype from magic bytes -----------------------------------------------------------

def _is_disk(head: bytes) -> bool:
    """An MBR boot signature, or a GPT header in LBA 1 (512-byte sectors)."""
    return (len(head) >= 512 and head[510:512] == b"\x55\xaa") or head[512:520] == b"EFI PART"


def infer_filetype(path: str | os.PathLike[str]) -> str:
    """The MAAS filetype of ``path`` from its magic bytes.

    gzip/bzip2/xz holding a tar -> tgz/tbz/txz; holding a disk image (MBR or GPT)
    -> ddgz/ddbz2/ddxz; an uncompressed disk image -> ddraw. Everything else
    (zstd, which curtin cannot unpack, a plain tar, unknown data) needs an
    explicit ``filetype=``.
    """
    head = formats.read_head(path, 64 * 1024)
    kind = formats.compressed_by(head)
    if kind is not None and kind.maas_tar is not None and kind.maas_dd is not None:
        inner = formats.inflate_head(kind, head)
        if formats.is_tar(inner):
            return kind.maas_tar
        if _is_disk(inner):
            return kind.maas_dd
        raise ArchiveError(
            f"{os.fspath(path)}: {kind.name} data that is neither a tar nor a disk image",
            path=path, hint=f"pass filetype= explicitly (one of {' '.join(FILETYPES)})")
    if _is_disk(head):
        return "ddraw"
    what = (f"{kind.name} data: curtin cannot unpack {kind.name}, repack with gzip"
            if kind is not None else
            "an uncompressed tar (MAAS wants tgz/tbz/txz, or ddtar for a tar holding a disk "
            "image)" if formats.is_tar(head) else "unknown data")
    raise ArchiveError(f"{os.fspath(path)}: cannot tell the MAAS filetype: {what}", path=path,
                       hint=f"pass filetype= explicitly (one of {' '.join(FILETYPES)})")


# --- base image guess ------------------------------------------------------------------------

#: Compressed bytes read at most to find etc/lsb-release or a program: members come sorted,
#: and ``boot/`` (a kernel and an initrd of up to ~100 MB that do not compress) is first.
_SNIFF_BUDGET = 512 << 20


class _Budget:
    """A read-only file wrapper that stops (EOF) after ``limit`` bytes."""

    def __init__(self, f: IO[bytes], limit: int) -> None:
        self.f, self.left = f, limit
        self.spent = False  # the limit was reached before the end of the file

    def read(self, n: int = -1) -> bytes:
        if self.left <= 0:
            self.spent = self.spent or bool(self.f.read(1))
            return b""
        n = self.left if n < 0 else min(n, self.left)
        data = self.f.read(n)
        self.left -= len(data)
        return data


def _release_from_text(text: str) -> str | None:
    fields = releases.parse_os_release(text)
    dist = (fields.get("DISTRIB_ID") or fields.get("ID") or "").lower()
    code = (fields.get("DISTRIB_CODENAME") or fields.get("VERSION_CODENAME")
            or fields.get("UBUNTU_CODENAME") or "").lower()
    if dist == "ubuntu" and code in releases.ubuntu_releases():
        return code
    return None


def _sniff(path: str | os.PathLike[str], filetype: str,
           want: Callable[[str, tarfile.TarInfo], int],
           budget: list[_Budget] | None = None) -> Iterator[bytes]:
    """The first bytes of the regular members of a tgz/tbz/txz for which ``want(name,
    member)`` asks for some (how many), in order, reading at most 512 MiB of the file
    (``budget`` gets the reader, to tell whether it ran out)."""
    if filetype not in ("tgz", "tbz", "txz"):
        return
    try:
        with open(path, "rb") as raw:
            limited = _Budget(raw, _SNIFF_BUDGET)
            if budget is not None:
                budget.append(limited)
            with tarfile.open(fileobj=limited, mode="r|*") as tar:  # type: ignore[call-overload]
                for member in tar:
                    n = want(member.name.removeprefix("./").lstrip("/"), member) \
                        if member.isfile() else 0
                    f = tar.extractfile(member) if n else None
                    if f is not None:
                        yield f.read(n)
    except (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError):
        return


def sniff_ubuntu_release(path: str | os.PathLike[str], filetype: str) -> str | None:
    """The Ubuntu codename from ``etc/lsb-release`` (or a regular ``etc/os-release``)
    in a tgz/tbz/txz, reading at most 512 MiB of the file; None if not found."""
    wanted = {"etc/lsb-release", "etc/os-release"}
    for data in _sniff(path, filetype,
                       lambda name, m: m.size if name in wanted and m.size < 65536 else 0):
        found = _release_from_text(data.decode("utf-8", "replace"))
        if found:
            return found
    return None


_PROGRAMS = re.compile(r"^(usr/)?s?bin/[^/]+$")


def sniff_arch(path: str | os.PathLike[str], filetype: str, *,
               required: bool = False) -> str | None:
    """The architecture (Debian's name) of the first ELF program in ``bin/``, ``usr/bin/``
    (or ``sbin``) of a tgz/tbz/txz, reading at most 512 MiB of the file; None if none.

    ``required``: raise :class:`ImageNameError` rather than return None when the read
    stopped at the limit (the programs may be further on)."""
    budget: list[_Budget] = []
    for head in _sniff(path, filetype, lambda name, m: arches.HEADER_SIZE
                       if _PROGRAMS.match(name) and m.size >= 64 else 0, budget):
        found = arches.from_elf(head) if arches.is_program(head) else None
        if found is not None:
            return found.name
    if required and budget and budget[0].spent:
        raise ImageNameError(f"{os.fspath(path)}: no program found in the first "
                             f"{_SNIFF_BUDGET >> 20} MiB, so its architecture is not known",
                             hint="pass architecture= (--architecture), e.g. amd64/generic")
    return None
