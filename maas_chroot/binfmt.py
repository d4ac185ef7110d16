"""Foreign architectures: can this host run an image's binaries, natively or through qemu-user?

An arm64 image runs on an amd64 host through the kernel's binfmt_misc: a handler
whose magic and mask match arm64 ELF headers hands each such binary to qemu-user.
Only a handler with the ``F`` (fix-binary) flag works inside a chroot without copying
the emulator into the image: the kernel opened the interpreter when the handler was
registered. Debian's ``qemu-user-static`` ships such handlers (``qemu-aarch64`` ...),
which ``binfmt-support`` (``update-binfmts``) or ``systemd-binfmt`` registers.

:func:`status` reads ``/proc/sys/fs/binfmt_misc`` and never changes anything;
:func:`require` raises :class:`~maas_chroot.errors.EmulationError`, saying what is
missing and how to get it, before anything runs. :func:`enable_binfmt` is the explicit
opt-in that changes the host's kernel state (mounts binfmt_misc, enables the handler),
and :func:`enabled` does the same for a ``with`` block only.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass

from . import arches, run
from .arches import Arch
from .errors import EmulationError, PrivilegeError

log = logging.getLogger(__name__)

#: Where binfmt_misc is mounted (tests point it elsewhere).
BINFMT_DIR = "/proc/sys/fs/binfmt_misc"
#: binfmt-support's database of formats that ``update-binfmts --enable`` knows.
BINFMTS_DB = "/var/lib/binfmts"
PACKAGES = "qemu-user-static binfmt-support"
_PER_LINUX32 = 0x0008


@dataclass(frozen=True)
class Handler:
    """One binfmt_misc entry (a magic-number one; ``mask`` None means all ones)."""

    name: str
    enabled: bool
    interpreter: str
    flags: str
    offset: int
    magic: bytes
    mask: bytes | None = None

    def matches(self, header: bytes) -> bool:
        """Whether the kernel would hand a file starting with ``header`` to this handler."""
        end = self.offset + len(self.magic)
        if not self.magic or len(header) < end:
            return False
        mask = self.mask or b"\xff" * len(self.magic)
        return all(h & m == g & m for h, g, m in
                   zip(header[self.offset:end], self.magic, mask, strict=False))


def parse_handler(name: str, text: str) -> Handler | None:
    """A ``/proc/sys/fs/binfmt_misc/NAME`` entry, or None for an extension-based one."""
    fields: dict[str, str] = {}
    lines = text.splitlines()
    for line in lines[1:]:
        key, _, value = line.partition(" ")
        fields[key.rstrip(":")] = value.strip()
    if "magic" not in fields:
        return None
    return Handler(name, bool(lines) and lines[0].strip() == "enabled",
                   fields.get("interpreter", ""), fields.get("flags", ""),
                   int(fields.get("offset", "0")), bytes.fromhex(fields["magic"]),
                   bytes.fromhex(fields["mask"]) if "mask" in fields else None)


def mounted() -> bool:
    """Whether binfmt_misc is mounted at :data:`BINFMT_DIR`."""
    return os.path.exists(os.path.join(BINFMT_DIR, "register"))


def handlers() -> tuple[Handler, ...]:
    """Every magic-number handler registered (none when binfmt_misc is not mounted)."""
    if not mounted():
        return ()
    found = []
    for name in sorted(os.listdir(BINFMT_DIR)):
        if name in ("register", "status"):
            continue
        try:
            with open(os.path.join(BINFMT_DIR, name), encoding="utf-8",
                      errors="replace") as f:
                handler = parse_handler(name, f.read())
        except OSError:  # unregistered meanwhile
            continue
        if handler is not None:
            found.append(handler)
    return tuple(found)


@dataclass(frozen=True)
class Emulation:
    """How this host runs binaries of ``arch``: natively, through ``handler``, or not.

    ``problem`` says why it cannot (None when it can) and ``hint`` how to fix it.
    """

    arch: str
    host: str
    handler: str | None = None
    interpreter: str | None = None
    native: bool = False
    problem: str | None = None
    hint: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None

    def __str__(self) -> str:
        if self.native:
            return f"{self.arch}: native on this {self.host} host"
        if self.ok:
            return f"{self.arch}: emulated by {self.handler} ({self.interpreter})"
        return f"{self.arch}: cannot run on this {self.host} host: {self.problem}"


def status(arch: str | Arch, *, machine: str | None = None) -> Emulation:
    """Whether binaries of ``arch`` run here (``machine``: the host's ``uname -m``)."""
    a = arches.get(arch) if isinstance(arch, str) else arch
    h = arches.host(machine)
    host = h.name if h is not None else machine or os.uname().machine
    if h is not None and (a == h or (h.name in a.hosts and _compat(a, h))):
        return Emulation(a.name, host, native=True)
    fix = _recipe(a)
    if not mounted():
        return Emulation(a.name, host, problem=f"binfmt_misc is not mounted at {BINFMT_DIR}, "
                                                 f"so no {a.name} binary can run", hint=fix)
    state = _read(os.path.join(BINFMT_DIR, "status")).strip()
    if state == "disabled":
        return Emulation(a.name, host, problem=f"binfmt_misc is disabled ({BINFMT_DIR}/status)",
                         hint=f"echo 1 > {BINFMT_DIR}/status")
    header = a.elf_header()
    matching = [x for x in handlers() if x.matches(header)]
    fixed = [x for x in matching if x.enabled and "F" in x.flags]
    if fixed:
        for other in (x for x in matching if x.enabled and "F" not in x.flags):
            log.warning("binfmt_misc handler %s also matches %s binaries, without the F flag: "
                        "if the kernel picks it, commands fail in the image", other.name, a.name)
        return Emulation(a.name, host, handler=fixed[0].name, interpreter=fixed[0].interpreter)
    loose = [x for x in matching if x.enabled]
    if loose:
        x = loose[0]
        return Emulation(
            a.name, host, problem=f"the binfmt_misc handler {x.name} runs {a.name} binaries "
            f"with {x.interpreter} without the F (fix-binary) flag, so the kernel would look "
            "for the emulator inside the image",
            hint=f"disable it (update-binfmts --disable {x.name}, or echo -1 > {BINFMT_DIR}/"
                 f"{x.name}) and enable Debian's qemu-user-static handler, which has the F "
                 f"flag: {fix}")
    if matching:
        x = matching[0]
        return Emulation(a.name, host, problem=f"the binfmt_misc handler {x.name} for {a.name} "
                         "binaries is registered but disabled",
                         hint=f"echo 1 > {BINFMT_DIR}/{x.name}")
    return Emulation(a.name, host, problem=f"no binfmt_misc handler for {a.name} ELF binaries "
                                             f"is registered in {BINFMT_DIR}", hint=fix)


def require(arch: str | Arch, *, root: str | os.PathLike[str], what: str | None = None
            ) -> Emulation:
    """:func:`status`, or :class:`EmulationError` when it cannot run: naming the image
    ``root``, or ``what`` (a source) when there is no rootfs yet."""
    st = status(arch)
    if not st.ok:
        raise EmulationError(f"{what or os.fspath(root)}: {st.arch} binaries cannot run on this "
                             f"{st.host} host: {st.problem}", root=root, arch=st.arch,
                             hint=st.hint)
    return st


def enable_binfmt(arch: str | Arch) -> Emulation:
    """Make this host run ``arch`` binaries in a chroot: the explicit opt-in.

    Mounts binfmt_misc if needed and enables Debian's qemu-user-static handler with
    ``update-binfmts``. It changes the host's kernel state and keeps it (until reboot,
    or ``update-binfmts --disable``); it never happens implicitly. A failure half-way
    undoes what this call did. Returns the new :class:`Emulation` (unchanged if the
    architecture already runs).
    """
    with contextlib.ExitStack() as stack:
        st = _enable(arch, stack)
        stack.pop_all()  # success: the changes stay
    return st


@contextlib.contextmanager
def enabled(arch: str | Arch) -> Iterator[Emulation]:
    """:func:`enable_binfmt` for a ``with`` block: on exit, undo only what it did."""
    with contextlib.ExitStack() as stack:
        yield _enable(arch, stack)


def _enable(arch: str | Arch, stack: contextlib.ExitStack) -> Emulation:
    a = arches.get(arch) if isinstance(arch, str) else arch
    st = status(a)
    if st.ok:
        log.info("%s", st)
        return st
    if os.geteuid() != 0:
        raise PrivilegeError(f"enabling {a.name} emulation changes the kernel's binfmt_misc "
                             "handlers, which needs root", hint="run it as root, e.g. with sudo")
    if shutil.which("update-binfmts", path=run.DEFAULT_PATH) is None or \
            not os.path.exists(os.path.join(BINFMTS_DB, a.handler)):
        raise EmulationError(f"cannot enable {a.name} emulation: Debian's {a.handler} handler "
                             f"is not installed ({BINFMTS_DB}/{a.handler})", root="",
                             arch=a.name, hint=f"apt install {PACKAGES}")
    if not mounted():
        run.run(["mount", "-t", "binfmt_misc", "binfmt_misc", BINFMT_DIR])
        stack.callback(run.run, ["umount", BINFMT_DIR])
        log.info("mounted binfmt_misc on %s", BINFMT_DIR)
    switch = os.path.join(BINFMT_DIR, "status")
    if _read(switch).strip() == "disabled":  # binfmt_misc as a whole is switched off
        _write(switch, "1")
        stack.callback(_write, switch, "0")
        log.info("switched binfmt_misc on (%s)", switch)
    entry = os.path.join(BINFMT_DIR, a.handler)
    if not os.path.exists(entry):
        run.run(["update-binfmts", "--enable", a.handler])
        stack.callback(run.run, ["update-binfmts", "--disable", a.handler])
        log.info("enabled the binfmt_misc handler %s", a.handler)
    elif _read(entry).startswith("disabled"):  # registered, switched off: switch it on
        _write(entry, "1")
        stack.callback(_write, entry, "0")
        log.info("switched the binfmt_misc handler %s on", a.handler)
    st = status(a)
    if not st.ok:
        raise EmulationError(f"{a.name} binaries still cannot run after enabling {a.handler}: "
                             f"{st.problem}", root="", arch=a.name, hint=st.hint)
    return st


def _recipe(a: Arch) -> str:
    """The commands that make ``a`` run here, from what is missing."""
    steps = []
    if shutil.which("update-binfmts", path=run.DEFAULT_PATH) is None or \
            not os.path.exists(os.path.join(BINFMTS_DB, a.handler)):
        steps.append(f"apt install {PACKAGES}")
    if not mounted():
        steps.append(f"mount -t binfmt_misc binfmt_misc {BINFMT_DIR}")
    steps.append(f"update-binfmts --enable {a.handler}")
    return (f"{'; '.join(steps)} (or all at once: maas-chroot binfmt --enable {a.name}, "
            f"or mc.enable_binfmt({a.name!r}))")


def _compat(a: Arch, h: Arch) -> bool:
    """Whether an ``h`` kernel runs ``a``'s binaries here (32-bit ARM on arm64: AArch32)."""
    if h.name != "arm64":
        return True
    libc = ctypes.CDLL(None, use_errno=True)
    old = libc.personality(0xFFFFFFFF)
    ok = libc.personality(_PER_LINUX32) != -1  # EINVAL where the CPU has no AArch32 EL0
    libc.personality(old)
    return bool(ok)


def _write(path: str, value: str) -> None:
    """Write a binfmt_misc control value ("1" on, "0" off) to an entry or the status file."""
    with open(path, "w", encoding="ascii") as f:
        f.write(value)


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""
