"""``boot_test()``: deploy an image the way curtin would, boot it in QEMU, report first boot.

    image ─check─▶ staging tree (curtin's tar, fstab, kernel, initramfs, MAAS's checks)
          ─mke2fs -d─▶ one sparse disk per boot ─QEMU─▶ console + report port ─▶ BootReport

Each boot is a fresh deployment: its own disk (a new root UUID), its own seed
(hostname, instance id, NIC MAC, SSH key). Disks, kernel copies, seeds and
report ports are unnamed scratch files, and QEMU dies with the caller, so not
even a SIGKILL leaves one behind; the staging tree is gone before the first boot.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from .. import progress as _progress
from .. import rootfs, run
from ..errors import BootTestError, PrivilegeError
from . import deploy, options, qemu, scratch
from .console import Console
from .guest import REPORT_TAG
from .report import DATASOURCE_NOTE, SKIPPED_NOTE, TCG_NOTE, BootReport, BootRun, Problem
from .seed import Seed, write

log = logging.getLogger(__name__)

DEFAULT_WORKDIR = Path("/var/tmp")
#: Times a boot is tried again when QEMU itself crashes (killed by a signal it was not sent)
#: before the guest's init starts. QEMU 7.2's TCG was seen here to segfault while the guest
#: kernel probed PCI (once in a full test run); the guest cannot have written to its disk
#: by then (the kernel mounts the root read-only), so the same disk boots again, and the
#: report keeps the crashed console.
CRASH_RETRIES = 1
TOOLS = {"mke2fs": "e2fsprogs", "debugfs": "e2fsprogs", "sfdisk": "fdisk",
         "tar": "tar", qemu.QEMU: "qemu-system-x86"}


def boot_test(image: str | os.PathLike[str], *, kernel: str | None = None,
              timeout: float | None = None, memory: int = 1024, accel: str = "auto",
              boots: int = 1, check: bool = True, fail_fast: bool = True,
              workdir: str | os.PathLike[str] | None = None,
              log_dir: str | os.PathLike[str] | None = None,
              progress: bool | None = None) -> BootReport:
    """Deploy ``image`` (a TGZ, TBZ or TXZ) as curtin would and boot it ``boots`` times.

    ``kernel``: the package to install into the deployed copy when the image has no
    kernel (default ``linux-generic`` on Ubuntu, as curtin; else ``linux-image-amd64``).
    ``accel``: ``"auto"`` (KVM when a guest really boots with it, else TCG), ``"kvm"``
    or ``"tcg"``. ``timeout``: seconds each boot has to report (default 180 with KVM,
    900 with TCG). Console logs go to ``log_dir`` (default: beside the image) as
    ``IMAGE.boot-N.log`` (the guest's own report beside it, ``IMAGE.boot-N.json``);
    scratch space comes from ``workdir`` (default /var/tmp). ``fail_fast``: when the
    deployment already fails (MAAS's late_commands, curtin, a baked machine-id), report
    that without booting; ``fail_fast=False`` boots anyway.

    Returns the :class:`BootReport`; with ``check`` (the default) a failed check raises
    :class:`~maas_chroot.errors.BootTestError` with the reason and the report.
    """
    options.check(kernel=kernel, timeout=timeout, memory=memory, accel=accel, boots=boots,
                  fail_fast=fail_fast, workdir=workdir, log_dir=log_dir)
    path = Path(os.fspath(image)).absolute()
    deploy.check_image(path)
    if os.geteuid() != 0:
        raise PrivilegeError("a boot test needs root (it deploys the image with its owners "
                             "and device nodes, and chroots into it)",
                             hint="run it as root, e.g. with sudo")
    _check_tools()
    work = Path(os.fspath(workdir)) if workdir is not None else DEFAULT_WORKDIR
    logs = Path(os.fspath(log_dir)) if log_dir is not None else path.parent
    seeds = [Seed.fresh(i + 1) for i in range(boots)]
    with contextlib.ExitStack() as stack:

        def files() -> scratch.Scratch:
            return stack.enter_context(scratch.scratch(work))

        kernel_file, initrd_file = files(), files()
        disks = [files() for _ in seeds]
        uuids = [str(uuid.uuid4()) for _ in seeds]
        with scratch.staging(work) as root, \
                _progress.bar(progress, total=None, desc=f"deploy {path.name}", unit="step"):
            staged = deploy.stage(path, root, kernel=kernel, progress=progress)
            extra = _deploy_problems(staged)
            booting = not (fail_fast and extra)
            initrd = None
            if booting:
                initrd, errors = deploy.finish(staged)
                extra += [Problem("curtin", e, hint="see update-initramfs's error: a hook or "
                                                    "the kernel's modules are broken")
                          for e in errors]
                booting = not (fail_fast and errors)
            if booting:
                _copy_out(root, staged.kernel, kernel_file)
                if initrd is not None:
                    _copy_out(root, initrd, initrd_file)
                start = time.monotonic()
                for disk, root_uuid in zip(disks, uuids, strict=True):
                    deploy.make_disk(staged, disk, uuid=root_uuid,
                                     size=deploy.disk_size(staged))
                staged.times["disk"] = (time.monotonic() - start) / len(disks)
        runs: tuple[BootRun, ...] = ()
        used = "none"
        if booting:
            used, runs = _boot_all(path, staged, seeds=seeds, disks=disks, uuids=uuids,
                                   files=files, kernel_file=kernel_file,
                                   initrd_file=initrd_file if initrd else None, accel=accel,
                                   timeout=timeout,
                                   memory=memory, logs=logs, progress=progress)
    report = BootReport(image=path, image_size=path.stat().st_size, accel=used,
                        os_name=staged.os_name, kernel=staged.kernel_version,
                        kernel_source=staged.kernel_source, tree_bytes=staged.tree_bytes,
                        deploy_times={k: round(v, 2) for k, v in staged.times.items()},
                        late_commands=staged.late_commands, runs=runs,
                        extra_problems=tuple(extra),
                        notes=(DATASOURCE_NOTE, *((TCG_NOTE,) if used == "tcg" else ()),
                               *((SKIPPED_NOTE,) if not runs else ())))
    log.info("boot test of %s: %s", path.name, "OK" if report.ok else
             f"FAILED ({report.problems[0].reason})")
    log.debug("%s", report)
    if check and not report.ok:
        raise failure(report)
    return report


def _deploy_problems(staged: deploy.Staged) -> list[Problem]:
    """What fails before the first boot: curtin's own errors, a baked machine-id, MAAS's
    late_commands."""
    extra = [Problem("curtin", e) for e in staged.curtin_errors]
    if staged.root_mode != 0o755 or staged.root_owner != (0, 0):
        uid, gid = staged.root_owner
        extra.append(Problem("curtin", f"curtin's tar -p would deploy / with mode "
                             f"{staged.root_mode:04o} and owner {uid}:{gid}, not 0755 0:0: "
                             "daemons that drop root (dbus, systemd-networkd, sshd) cannot "
                             "reach their files",
                             hint="pack the image from a root directory that is chmod 0755 "
                                  "and chown 0:0"))
    if staged.baked_machine_id:
        extra.append(Problem("not-unique", f"the image ships /etc/machine-id "
                             f"{staged.baked_machine_id}: systemd keeps it, so every machine "
                             "deployed from this image has the same id (run sysprep, or "
                             "empty /etc/machine-id)"))
    extra += [Problem("maas-late-command", c.verdict) for c in staged.late_commands
              if c.verdict is not None]
    return extra


def _boot_all(path: Path, staged: deploy.Staged, *, seeds: list[Seed],
              disks: list[scratch.Scratch], uuids: list[str],
              files: Callable[[], scratch.Scratch], kernel_file: scratch.Scratch,
              initrd_file: scratch.Scratch | None, accel: str, timeout: float | None, memory: int,
              logs: Path, progress: bool | None) -> tuple[str, tuple[BootRun, ...]]:
    machines = []
    for seed, disk, root_uuid in zip(seeds, disks, uuids, strict=True):
        seed_file, port = files(), files()
        write(seed, seed_file)
        machines.append(qemu.Machine(disk=disk, seed=seed_file, report=port,
                                     kernel=kernel_file, initrd=initrd_file,
                                     append=f"root=UUID={root_uuid} ro console=ttyS0 "
                                            "panic=-1", mac=seed.mac, memory=memory))
    used = qemu.accelerator(accel, kernel_file)
    limit = timeout if timeout is not None else qemu.TIMEOUTS[used]
    log.info("booting %s: %d boot(s) with %s, %.0f s each at most", path.name, len(seeds),
             used.upper(), limit)
    with _progress.bar(progress, total=None, desc=f"boot {path.name} ({used})",
                       unit="s") as bar:
        outcomes = qemu.boot(machines, used, timeout=limit,
                             on_milestone=lambda name, at: bar.set_postfix_str(
                                 f"{name} {at:.0f} s"))
        crashes: list[list[Path]] = [[] for _ in machines]
        for i, machine in enumerate(machines):
            while _crashed_early(outcomes[i]) and len(crashes[i]) < CRASH_RETRIES:
                crashed = logs / f"{path.name}.boot-{i + 1}.crash-{len(crashes[i]) + 1}.log"
                _save(crashed, outcomes[i].console.text())
                crashes[i].append(crashed)
                log.warning("boot %d: QEMU crashed (exit %s) before the guest's init started "
                            "(console: %s); booting it again", i + 1, outcomes[i].returncode,
                            crashed)
                [outcomes[i]] = qemu.boot([machine], used, timeout=limit)
    return used, tuple(_run(i + 1, o, m, s, logs / f"{path.name}.boot-{i + 1}",
                            crashes=tuple(c))
                       for i, (o, m, s, c) in enumerate(zip(outcomes, machines, seeds, crashes,
                                                            strict=True)))


def _crashed_early(outcome: qemu.Outcome) -> bool:
    """QEMU ended by a signal with no fatal console line and no report, before the guest's
    init started: QEMU's own fault. (The boot test only kills a QEMU whose console showed
    a fatal line, or at the timeout, when it is still running.)"""
    return (outcome.returncode is not None and outcome.returncode < 0
            and outcome.console.failure is None and not outcome.report
            and "userspace" not in outcome.console.milestones)


def failure(report: BootReport) -> BootTestError:
    """The error for a failed report: its first problem, the console lines it quotes."""
    first = report.problems[0]
    run = next((r for r in report.runs if any(p == first for p in r.problems())), None)
    others = len(report.problems) - 1
    return BootTestError(
        f"boot test of {report.image} failed: {first.message}"
        + (f"\n(and {others} more problem(s); see the report)" if others else ""),
        reason=first.reason, report=report,
        console=os.fspath(run.console_log) if run is not None else None,
        lines=run.failure_lines if run is not None else (), hint=first.advice)


def _check_tools() -> None:
    missing = sorted({pkg for tool, pkg in TOOLS.items()
                      if shutil.which(tool, path=run.DEFAULT_PATH) is None})
    if missing:
        raise BootTestError("the boot test needs tools that are not installed",
                            reason="no-tools", hint=f"apt-get install {' '.join(missing)}")


def _copy_out(root: Path, path: str, out: scratch.Scratch) -> None:
    fd = rootfs.open_in_root(root, path, os.O_RDONLY)
    with os.fdopen(fd, "rb") as src, os.fdopen(os.dup(out.fd), "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)


def _run(index: int, outcome: qemu.Outcome, machine: qemu.Machine, seed: Seed,
         stem: Path, *, crashes: tuple[Path, ...]) -> BootRun:
    console = outcome.console
    log_path = stem.with_name(stem.name + ".log")
    _save(log_path, console.text())
    report = _report(outcome.report)
    if report:
        _save(stem.with_name(stem.name + ".json"), json.dumps(report, indent=1) + "\n")
    milestones = _milestones(console, report)
    if outcome.returncode == 0:
        milestones["power-off"] = outcome.seconds
    quoted = console.quote(around=console.failure_line) if console.failure is not None \
        else console.quote()
    disk_id = deploy.read_disk(machine.disk, "/etc/machine-id")
    keys = tuple(n for n in deploy.list_disk(machine.disk, "/etc/ssh")
                 if n.startswith("ssh_host_") and n.endswith("_key"))
    return BootRun(index=index, seed=seed, console_log=log_path, milestones=milestones,
                   guest=report, failure=console.failure,
                   failure_lines=quoted, timed_out=outcome.timed_out,
                   returncode=outcome.returncode, crashes=crashes,
                   disk_machine_id=disk_id.decode("utf-8", "replace").strip()
                   if disk_id is not None else None, disk_host_keys=keys)


def _report(raw: bytes) -> dict[str, object]:
    for line in raw.decode("utf-8", "replace").splitlines():
        if line.startswith(REPORT_TAG):
            try:
                value = json.loads(line[len(REPORT_TAG):])
            except ValueError:
                continue
            if isinstance(value, dict):
                return value
    return {}


def _milestones(console: Console, report: dict[str, object]) -> dict[str, float]:
    """Seconds since QEMU started, from the console (host clock) and, for what the console
    does not show, from the guest's own clock shifted by when its kernel started."""
    found = dict(console.milestones)
    offset = found.get("kernel")
    units, steps = report.get("units"), report.get("steps")
    if offset is not None and isinstance(units, dict) and isinstance(steps, dict):
        guest_times = {"multi-user": units.get("multi-user.target"),
                       "cloud-init": units.get("cloud-final.service"),
                       "report": steps.get("collected")}
        for name, value in guest_times.items():
            if name not in found and isinstance(value, int | float):
                found[name] = round(offset + value, 2)
    return dict(sorted(found.items(), key=lambda kv: kv[1]))


def _save(path: Path, text: str) -> None:
    # Atomic, and a symlink planted at the name (log_dir is often /tmp) is replaced, never
    # written through: rootfs.write_file treats the log directory as a root.
    try:
        rootfs.write_file(path.parent, "/" + path.name, text, mode=0o644, mkdirs=False)
    except OSError as e:
        log.warning("cannot write %s: %s", path, e.strerror)
