"""Architectures: the one table of Debian names, ELF machines, kernel names and qemu-user names.

Every module that names or recognises an architecture reads it: the image's own
architecture comes from the ELF header of its ``/bin/sh``
(:func:`maas_chroot.rootfs.image_arch`), the host's from ``uname -m``, binfmt_misc
handlers are matched against :meth:`Arch.elf_header` (:mod:`maas_chroot.binfmt`), and
MAAS's architecture of an upload is ``<Debian name>/generic`` (:func:`maas_architecture`).
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from .errors import ImageNameError, SourceError

log = logging.getLogger(__name__)

#: ELF identification: class (EI_CLASS), data encoding (EI_DATA), and object types.
ELF_MAGIC = b"\x7fELF"
_CLASS = {1: 32, 2: 64}
_DATA = {1: "little", 2: "big"}
ET_EXEC, ET_DYN = 2, 3
#: EF_ARM_ABI_FLOAT_HARD: armhf binaries set it in e_flags, armel ones do not.
EF_ARM_ABI_FLOAT_HARD = 0x400
#: The bytes of an ELF file the kernel shows binfmt_misc (BINPRM_BUF_SIZE).
HEADER_SIZE = 128


@dataclass(frozen=True)
class Arch:
    """One architecture. ``name`` is Debian's (and MAAS's) name for it.

    ``machine``, ``bits``, ``endian`` and ``hard_float`` are what its ELF binaries say;
    ``uname`` the ``uname -m`` values of a kernel running it natively; ``qemu`` the
    qemu-user name (``qemu-<qemu>`` is the binfmt_misc handler of Debian's
    qemu-user-static); ``hosts`` the other architectures whose kernels can run its
    binaries natively (i386 on amd64; 32-bit ARM on arm64 where the CPU has AArch32).
    """

    name: str
    machine: int
    bits: int
    endian: str
    uname: tuple[str, ...]
    qemu: str
    hosts: tuple[str, ...] = ()
    hard_float: bool | None = None

    @property
    def handler(self) -> str:
        """The binfmt_misc handler name Debian's qemu-user-static registers for it."""
        return f"qemu-{self.qemu}"

    @property
    def maas(self) -> str:
        """MAAS's architecture for a custom image of this architecture."""
        return f"{self.name}/generic"

    def elf_header(self) -> bytes:
        """A minimal ELF header of an executable of this architecture (for matching)."""
        ident = ELF_MAGIC + bytes([2 if self.bits == 64 else 1,
                                   1 if self.endian == "little" else 2, 1])
        order = "<" if self.endian == "little" else ">"
        flags = 0
        if self.hard_float is not None:  # an ARM EABI version 5 binary, hard- or soft-float
            flags = 0x05000000 | (EF_ARM_ABI_FLOAT_HARD if self.hard_float else 0)
        head = ident.ljust(16, b"\0") + struct.pack(order + "HHI", ET_EXEC, self.machine, 1)
        at = 48 if self.bits == 64 else 36
        head = head.ljust(at, b"\0") + struct.pack(order + "I", flags)
        return head.ljust(64 if self.bits == 64 else 52, b"\0")


ARCHES: tuple[Arch, ...] = (
    Arch("amd64", 62, 64, "little", ("x86_64",), "x86_64"),
    Arch("arm64", 183, 64, "little", ("aarch64",), "aarch64"),
    Arch("armhf", 40, 32, "little", ("armv7l", "armv8l"), "arm", ("arm64",), hard_float=True),
    Arch("armel", 40, 32, "little", ("armv5tel", "armv6l"), "arm", ("armhf", "arm64"),
         hard_float=False),
    Arch("i386", 3, 32, "little", ("i686", "i586", "i486", "i386"), "i386", ("amd64",)),
    Arch("ppc64el", 21, 64, "little", ("ppc64le",), "ppc64le"),
    Arch("riscv64", 243, 64, "little", ("riscv64",), "riscv64"),
    Arch("s390x", 22, 64, "big", ("s390x",), "s390x"),
)
BY_NAME: Mapping[str, Arch] = MappingProxyType({a.name: a for a in ARCHES})
#: Other spellings accepted for a Debian name: the kernel's and qemu's.
_ALIASES: Mapping[str, Arch] = MappingProxyType(
    {n: a for a in ARCHES for n in (a.uname[0], a.qemu) if n not in BY_NAME and n != "arm"})


def get(name: str) -> Arch:
    """The architecture called ``name`` (Debian's name, or the kernel's: ``aarch64``)."""
    found = BY_NAME.get(name) or _ALIASES.get(name)
    if found is None:
        raise SourceError(f"unknown architecture {name!r}",
                          hint=f"use a Debian architecture name: {', '.join(BY_NAME)}")
    return found


def from_elf(header: bytes) -> Arch | None:
    """The architecture of an ELF executable or library from its first bytes, or None."""
    if len(header) < 52 or not header.startswith(ELF_MAGIC):
        return None
    bits, endian = _CLASS.get(header[4]), _DATA.get(header[5])
    if bits is None or endian is None or (bits == 64 and len(header) < 64):
        return None
    order = "<" if endian == "little" else ">"
    machine = struct.unpack_from(order + "H", header, 18)[0]
    flags = struct.unpack_from(order + "I", header, 48 if bits == 64 else 36)[0]
    for arch in ARCHES:
        if (arch.machine, arch.bits, arch.endian) == (machine, bits, endian) and (
                arch.hard_float is None or arch.hard_float == bool(flags & EF_ARM_ABI_FLOAT_HARD)):
            return arch
    return None


def is_program(header: bytes) -> bool:
    """Whether an ELF header is an executable or a shared object (not a kernel module)."""
    if from_elf(header) is None:
        return False
    order = "<" if header[5] == 1 else ">"
    return struct.unpack_from(order + "H", header, 16)[0] in (ET_EXEC, ET_DYN)


def host(machine: str | None = None) -> Arch | None:
    """The host's architecture, from ``uname -m`` (or ``machine``); None for one not in
    the table (its images then always need a binfmt_misc handler)."""
    m = machine or os.uname().machine
    return next((arch for arch in ARCHES if m in arch.uname), None)


def maas_architecture(requested: str | None, image: str | None, *, force: bool = False) -> str:
    """MAAS's architecture for an upload of an ``image`` architecture (Debian name or None).

    ``requested`` None follows the image (``arm64/generic``; ``amd64/generic`` when the
    image's architecture is not known). A requested architecture that contradicts the
    image raises :class:`ImageNameError` unless ``force``.
    """
    if requested is None:
        if image is None:
            log.warning("the image's architecture is not known: uploading it as amd64/generic")
            return BY_NAME["amd64"].maas
        return get(image).maas
    wanted = requested.split("/", 1)[0]
    if image is not None and wanted != image:
        if force:
            log.warning("uploading a %s image as %s, as forced", image, requested)
            return requested
        raise ImageNameError(
            f"architecture {requested!r} contradicts the image, whose binaries are {image}: "
            f"MAAS would deploy it to {wanted} machines",
            hint=f"drop the architecture to upload it as {get(image).maas}, or force it "
                 "(force=True, --force-architecture) if the image really is for that")
    return requested
