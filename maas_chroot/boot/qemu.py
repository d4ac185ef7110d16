"""QEMU for the boot test: the accelerator that really works here, and the machines it runs.

KVM is used only when a guest kernel really boots with it: a successful
``KVM_CREATE_VM`` proves nothing (nested or software virtualisation, such as
``kvm_pvm``, creates VMs whose guests hang before "Linux version"). So the probe
boots the kernel under test with KVM and waits a few seconds for that line on
the serial console; otherwise TCG runs, and the report says so.

A machine is direct-kernel-booted (``-kernel -initrd -append``) from a virtio
disk and a virtio NoCloud seed, with user networking ``restrict=on`` (nothing the
guest sends leaves QEMU; a booting cloud-init probes metadata addresses such as
169.254.169.254, and none of that reaches anything), the console on a pipe and
the report on a second serial port. QEMU is started through the chroot helper's
``exec`` mode, so it dies with the caller, even on SIGKILL.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import selectors
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from .. import run
from ..chroot.netns import dying_with_us
from ..errors import BootTestError
from .console import Console
from .scratch import Scratch

log = logging.getLogger(__name__)

QEMU = "qemu-system-x86_64"
ACCELS = ("auto", "kvm", "tcg")
#: Seconds the KVM probe waits for "Linux version" on the console.
KVM_PROBE_SECONDS = 8.0
#: Seconds a boot has to report, by accelerator (TCG emulates every instruction).
TIMEOUTS = {"kvm": 180.0, "tcg": 900.0}
#: The KVM probe's answer for this boot of the host (in the root-only session-lock dir).
PROBE_CACHE = "/run/maas-chroot/kvm-probe.json"
#: Seconds a "KVM does not work" answer is kept: a probe on a loaded host can miss its
#: 8 s, and a wrong "no" costs every later boot five times its time.
NEGATIVE_TTL = 3600.0
_probed: dict[str, tuple[bool, float]] = {}  # "kvm" -> (answer, when), in this process


@dataclass(frozen=True)
class Machine:
    """One guest to boot: its disk, seed, report port, kernel and command line."""

    disk: Scratch
    seed: Scratch
    report: Scratch
    kernel: Scratch
    initrd: Scratch | None
    append: str
    mac: str
    memory: int = 1024
    cpus: int = 2  # with TCG, two vCPUs (MTTCG) boot about 20 % faster than one

    def argv(self, accel: str) -> list[str]:
        drives = [f"file={self.disk.path},format=raw,if=virtio,cache=unsafe,discard=unmap",
                  f"file={self.seed.path},format=raw,if=virtio,readonly=on"]
        argv = [_binary(), "-machine", f"q35,accel={accel}", "-cpu", "max",
                "-smp", str(self.cpus), "-m", str(self.memory), "-nodefaults",
                "-no-user-config", "-display", "none", "-monitor", "none", "-no-reboot",
                "-kernel", self.kernel.path, "-append", self.append,
                *(a for d in drives for a in ("-drive", d)),
                "-netdev", "user,id=net0,restrict=on",
                "-device", f"virtio-net-pci,netdev=net0,mac={self.mac},romfile=",
                "-object", "rng-random,filename=/dev/urandom,id=rng0",
                "-device", "virtio-rng-pci,rng=rng0",
                "-serial", "stdio", "-serial", f"file:{self.report.path}"]
        if self.initrd is not None:
            argv[argv.index("-append"):argv.index("-append")] = ["-initrd", self.initrd.path]
        return argv


@dataclass(frozen=True)
class Outcome:
    """How one boot ended: the console, the report port's bytes, the exit, the times."""

    console: Console
    report: bytes
    returncode: int | None
    seconds: float
    timed_out: bool = False


def _binary() -> str:
    path = shutil.which(QEMU, path=run.DEFAULT_PATH)
    if path is None:
        raise BootTestError(f"the boot test needs {QEMU}, which is not installed",
                            reason="no-qemu", hint="apt-get install qemu-system-x86")
    return path


def accelerator(choice: str, kernel: Scratch) -> str:
    """``"kvm"`` when a guest kernel really boots with KVM here, else ``"tcg"``."""
    if choice not in ACCELS:
        raise BootTestError(f"unknown accelerator {choice!r}", reason="bad-accel",
                            hint=f"use one of: {', '.join(ACCELS)}")
    if choice != "auto":
        return choice
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg"
    works, when = _probed.get("kvm", (False, -NEGATIVE_TTL))
    if not works and time.time() - when >= NEGATIVE_TTL:
        known = _cached()
        if known is None:
            known = _kvm_boots(kernel)
            _cache(known)
        works = known
        _probed["kvm"] = (works, time.time())
        log.info("KVM %s", "boots a guest kernel: using it" if works else
                 "does not boot a guest kernel here (no 'Linux version' on the console "
                 f"within {KVM_PROBE_SECONDS:.0f} s): using TCG")
    return "kvm" if works else "tcg"


def _probe_key() -> dict[str, object]:
    """What the probe's answer depends on: this boot of the host, and the QEMU binary."""
    with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
        boot_id = f.read().strip()
    binary = _binary()
    return {"boot_id": boot_id, "qemu": binary, "qemu_mtime": os.stat(binary).st_mtime_ns}


def _cached() -> bool | None:
    """The KVM probe's answer on this boot of the host, if one was recorded."""
    try:
        with open(PROBE_CACHE, encoding="utf-8") as f:
            data = json.load(f)
        fresh = data["kvm_boots"] or time.time() - float(data["at"]) < NEGATIVE_TTL
        if fresh and {k: data.get(k) for k in _probe_key()} == _probe_key():
            return bool(data["kvm_boots"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def _cache(works: bool) -> None:
    with contextlib.suppress(OSError):
        if os.path.isdir(os.path.dirname(PROBE_CACHE)):  # the root-only /run/maas-chroot
            tmp = PROBE_CACHE + ".tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump({**_probe_key(), "kvm_boots": works, "at": time.time()}, f)
            os.replace(tmp, PROBE_CACHE)


def _kvm_boots(kernel: Scratch) -> bool:
    argv = [_binary(), "-machine", "q35,accel=kvm", "-cpu", "max", "-m", "256", "-nodefaults",
            "-no-user-config", "-display", "none", "-monitor", "none", "-no-reboot",
            "-kernel", kernel.path, "-append", "console=ttyS0 panic=-1", "-serial", "stdio"]
    with _started(argv) as proc:
        deadline = time.monotonic() + KVM_PROBE_SECONDS
        console = Console()
        _pump({proc: console}, deadline, stop=lambda c: "kernel" in c.milestones)
        return "kernel" in console.milestones


@contextlib.contextmanager
def _started(argv: Sequence[str]) -> Iterator[subprocess.Popen[bytes]]:
    """QEMU running, dying with us; killed (and reaped) when the block ends."""
    with run.spawn(dying_with_us(list(argv)), stdout=subprocess.PIPE,
                   stderr=subprocess.STDOUT) as proc:
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def boot(machines: Sequence[Machine], accel: str, *, timeout: float,
         on_milestone: Callable[[str, float], object] | None = None) -> list[Outcome]:
    """Boot ``machines`` at once; return how each ended (power-off, failure or timeout).

    A boot ends when QEMU exits (the reporter powers off), when the console shows
    a fatal line (after a moment, so the lines that explain it arrive too), or when
    ``timeout`` seconds pass.
    """
    start = time.monotonic()
    with contextlib.ExitStack() as stack:
        procs = {stack.enter_context(_started(m.argv(accel))): Console() for m in machines}
        _pump(procs, start + timeout, start=start, on_milestone=on_milestone)
        outcomes = []
        for (proc, console), machine in zip(procs.items(), machines, strict=True):
            code = proc.poll()
            if code is None and console.ended is not None:  # exiting: its console closed
                with contextlib.suppress(subprocess.TimeoutExpired):
                    code = proc.wait(timeout=10)
            timed_out = code is None and console.failure is None
            ended = console.ended if console.ended is not None else time.monotonic() - start
            outcomes.append(Outcome(console, machine.report.read(), code, round(ended, 2),
                                    timed_out))
        return outcomes


def _pump(procs: dict[subprocess.Popen[bytes], Console], deadline: float, *,
          stop: Callable[[Console], bool] | None = None, start: float | None = None,
          on_milestone: Callable[[str, float], object] | None = None) -> None:
    """Read every console until its QEMU exits, fails, ``stop(console)`` is true, or the
    deadline passes; a failed machine is killed a second after its fatal line."""
    t0 = time.monotonic() if start is None else start
    sel = selectors.DefaultSelector()
    live: dict[int, tuple[subprocess.Popen[bytes], Console]] = {}
    failed_at: dict[int, float] = {}
    for proc, console in procs.items():
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
        live[fd] = (proc, console)
    try:
        while live and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=0.25):
                fd = int(key.fd)
                proc, console = live[fd]
                with contextlib.suppress(BlockingIOError):
                    data = os.read(fd, 65536)
                    now = time.monotonic() - t0
                    if data:
                        known = len(console.milestones)
                        console.feed(data, now)
                        if on_milestone is not None and len(console.milestones) > known:
                            name = list(console.milestones)[-1]
                            on_milestone(name, console.milestones[name])
                    else:
                        console.flush(now)
                        console.ended = round(now, 2)
                        sel.unregister(fd)
                        del live[fd]
            now = time.monotonic()
            for fd, (proc, console) in list(live.items()):
                if console.failure is not None and fd not in failed_at:
                    failed_at[fd] = now
                done = stop is not None and stop(console)
                if done or (fd in failed_at and now - failed_at[fd] > 1.0):
                    console.flush(now - t0)
                    proc.kill()
                    sel.unregister(fd)
                    del live[fd]
        for _, console in live.values():  # the deadline: keep the last line, often a prompt
            console.flush(time.monotonic() - t0)
    finally:
        sel.close()
