"""What a boot test found: one :class:`BootRun` per boot, gathered in a :class:`BootReport`.

Everything here is read from the guest's own output (its console and the JSON
its reporter wrote on the second serial port) and from the disk after power-off;
each check that fails becomes a :class:`Problem` with a reason code and a
sentence saying what a MAAS deployment of the image would suffer.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..progress import human_size
from . import guest
from .console import Failure
from .deploy import LateCommand
from .seed import Seed

DATASOURCE_NOTE = ("the NoCloud seed stands in for MAAS's datasource: this proves cloud-init's "
                   "first boot, not MAAS's metadata service")
SKIPPED_NOTE = ("not booted: the deployment already fails (boot_test(..., fail_fast=False) "
                "boots it anyway)")
TCG_NOTE = "TCG: no working KVM here, so the guest is emulated (slow, mostly cloud-init)"
_MACHINE_ID = re.compile(r"^[0-9a-f]{32}$")


#: What to do about a problem, by reason (a console failure brings its own hint).
HINTS = {
    "curtin": "install initramfs-tools in the image (--install initramfs-tools)",
    "not-unique": "scrub the image (mc.sysprep, on by default in build): it empties "
                  "/etc/machine-id and removes the SSH host keys",
    "maas-late-command": "install cloud-init and netplan.io in the image",
    "cloud-init": "read the cloud-init errors in the console log (on bookworm, cloud-init "
                  "22.4 needs `locale: C.UTF-8` in /etc/cloud/cloud.cfg.d/)",
    "failed-units": "see why the units failed in the console log",
    "no-network": "the image needs netplan.io and systemd-networkd (or another renderer) "
                  "for the network config MAAS sends",
    "seed-not-applied": "cloud-init did not apply the user-data: see the console log",
    "timeout": "see the console log; a slow TCG boot may need a longer timeout=",
    "no-report": "see the console log",
}


@dataclass(frozen=True)
class Problem:
    """A failed check: ``reason`` is a short code, ``message`` says what it means."""

    reason: str
    message: str
    hint: str | None = None

    @property
    def advice(self) -> str:
        """What to do about it."""
        return self.hint or HINTS.get(self.reason, "see the report")

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class BootRun:
    """One boot of a fresh deployment of the image."""

    index: int
    seed: Seed
    console_log: Path
    milestones: Mapping[str, float]
    guest: Mapping[str, Any]
    disk_machine_id: str | None
    disk_host_keys: tuple[str, ...]
    failure: Failure | None = None
    failure_lines: tuple[str, ...] = ()
    timed_out: bool = False
    returncode: int | None = None
    #: Console logs of earlier tries of this boot, each ended by QEMU itself crashing
    #: before the guest's init started (a QEMU fault, not the image's: see the runner).
    crashes: tuple[Path, ...] = ()

    @property
    def machine_id(self) -> str | None:
        value = self.guest.get("machine_id") or self.disk_machine_id
        return str(value) if value else None

    @property
    def host_keys(self) -> tuple[str, ...]:
        """The SSH host key fingerprints the guest generated: the ``SHA256:...`` field of its
        ``ssh-keygen -l`` lines (the comment, ``root@<hostname>``, is no part of the key)."""
        fields = (str(line).split() for line in self.guest.get("ssh_host_keys") or ())
        return tuple(f[1] if len(f) > 1 else f[0] for f in fields if f)

    @property
    def address(self) -> str | None:
        for line in self.guest.get("ipv4") or ():
            m = re.search(r"\binet (\S+)", str(line))
            if m:
                return m.group(1)
        return None

    @property
    def failed_units(self) -> tuple[str, ...]:
        return tuple(str(u) for u in self.guest.get("failed_units") or ())

    @property
    def cloud_init(self) -> Mapping[str, Any]:
        value = self.guest.get("cloud_init")
        return value if isinstance(value, Mapping) else {}

    @property
    def cloud_init_errors(self) -> tuple[str, ...]:
        errors = [str(e) for e in self.cloud_init.get("errors") or ()]
        result = self.guest.get("cloud_init_result")
        if isinstance(result, Mapping):
            errors += [str(e) for e in (result.get("v1") or {}).get("errors") or ()
                       if str(e) not in errors]
        return tuple(errors)

    def problems(self) -> list[Problem]:
        out: list[Problem] = []
        where = f"boot {self.index} (console: {self.console_log})"
        if self.failure is not None:
            quoted = "\n    ".join(self.failure_lines)
            out.append(Problem(self.failure.reason, f"{where}: {self.failure.what}:\n    "
                                                    f"{quoted}", self.failure.hint))
            return out
        if not self.guest:
            what = "no report within the timeout" if self.timed_out else \
                f"QEMU exited (status {self.returncode}) without a report"
            out.append(Problem("timeout" if self.timed_out else "no-report",
                               f"{where}: {what}; last console lines:\n    "
                               + "\n    ".join(self.failure_lines)))
            return out
        state = self.guest.get("state")
        if state != "running":
            out.append(Problem("failed-units", f"{where}: systemd is {state!r}, not 'running'"
                               + (f"; failed units: {', '.join(self.failed_units)}"
                                  if self.failed_units else "")))
        status = self.cloud_init.get("status")
        if status != "done" or self.cloud_init_errors or self.guest.get("cloud_init_rc"):
            errors = "; ".join(self.cloud_init_errors) or self.guest.get("cloud_init_long")
            out.append(Problem("cloud-init", f"{where}: cloud-init is {status!r}, not 'done' "
                               f"without errors: {errors}"))
        if self.address is None:
            out.append(Problem("no-network", f"{where}: the NIC got no IPv4 address"))
        if not _MACHINE_ID.match(self.disk_machine_id or ""):
            out.append(Problem("not-unique", f"{where}: /etc/machine-id on the disk after "
                               f"power-off is {self.disk_machine_id!r}, not a new id"))
        if not self.host_keys or not self.disk_host_keys:
            out.append(Problem("not-unique", f"{where}: no SSH host keys were generated"))
        # the short name: cloud-init sets the FQDN instead on distros that prefer it
        if str(self.guest.get("hostname") or "").split(".")[0] != self.seed.hostname:
            out.append(Problem("seed-not-applied", f"{where}: the hostname is "
                               f"{self.guest.get('hostname')!r}, not the seed's "
                               f"{self.seed.hostname!r}"))
        if guest.USER not in str(self.guest.get("user") or "") or \
                self.seed.ssh_key not in str(self.guest.get("user_keys") or ""):
            out.append(Problem("seed-not-applied", f"{where}: the seed's user {guest.USER} "
                               "with its SSH key was not created"))
        if not self.guest.get("runcmd"):
            out.append(Problem("seed-not-applied", f"{where}: the seed's runcmd did not run"))
        return out

    def summary(self) -> list[str]:
        times = ", ".join(f"{k} {v:.1f} s" for k, v in self.milestones.items())
        lines = [f"  boot {self.index}    {times or 'no milestone reached'}"]
        if self.guest:
            ci = self.cloud_init.get("status", "?")
            errors = f"{len(self.cloud_init_errors)} errors" if self.cloud_init_errors \
                else "no errors"
            lines.append(f"            systemd {self.guest.get('state')}, "
                         f"{len(self.failed_units)} failed units, cloud-init {ci} ({errors}), "
                         f"NIC {self.address or 'no address'}")
            mid = self.machine_id or "none"
            lines.append(f"            machine-id {mid}, {len(self.host_keys)} SSH host keys, "
                         f"user {guest.USER}, hostname {self.guest.get('hostname')}")
        lines.append(f"            console {self.console_log}")
        lines += [f"            booted again: QEMU crashed before the guest's init, console "
                  f"{c}" for c in self.crashes]
        return lines


@dataclass(frozen=True, repr=False)
class BootReport:
    """The boot test of one image: deployment, MAAS's own checks, and every boot.

    ``ok`` is True when no check failed (``problems`` is empty).
    """

    image: Path
    image_size: int
    accel: str
    os_name: str
    kernel: str
    kernel_source: str
    tree_bytes: int
    deploy_times: Mapping[str, float]
    late_commands: tuple[LateCommand, ...]
    runs: tuple[BootRun, ...]
    extra_problems: tuple[Problem, ...] = ()
    notes: tuple[str, ...] = field(default=(DATASOURCE_NOTE,))

    @property
    def problems(self) -> tuple[Problem, ...]:
        out = list(self.extra_problems)
        for run in self.runs:
            out += run.problems()
        ids = [r.machine_id for r in self.runs if r.machine_id]
        keys = [frozenset(r.host_keys) for r in self.runs if r.host_keys]
        if len(self.runs) > 1 and (len(set(ids)) < len(ids) or len(set(keys)) < len(keys)):
            out.append(Problem("not-unique", f"{len(self.runs)} fresh deployments share a "
                               f"machine-id or SSH host keys: {', '.join(sorted(set(ids)))}"))
        return tuple(out)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def machine_ids(self) -> tuple[str | None, ...]:
        return tuple(r.machine_id for r in self.runs)

    @property
    def milestones(self) -> Mapping[str, float]:
        """The first boot's milestones (seconds since QEMU started)."""
        return self.runs[0].milestones if self.runs else {}

    def table(self) -> str:
        verdict = "OK" if self.ok else f"FAILED ({self.problems[0].reason})"
        how = f", {self.accel.upper()}" if self.runs else ""
        lines = [f"BootReport({os.fspath(self.image)!r}): {verdict}, {len(self.runs)} "
                 f"boot(s){how}",
                 f"  image     {human_size(self.image_size)}, {self.os_name}, kernel "
                 f"{self.kernel} ({self.kernel_source})",
                 "  deploy    " + ", ".join(f"{k} {v:.1f} s" for k, v in
                                             self.deploy_times.items())
                 + f" (tree {human_size(self.tree_bytes)})"]
        checks = "   ".join(f"`{' '.join(c.argv)}`: " + ("ok" if c.verdict is None else
                                                          f"FAILS (exit {c.returncode})")
                            for c in self.late_commands)
        lines.append(f"  MAAS      {checks}")
        for run in self.runs:
            lines += run.summary()
        if len(self.runs) > 1 and not any(p.reason == "not-unique" for p in self.problems):
            lines.append(f"  identity  {len(self.runs)} deployments, {len(set(self.machine_ids))}"
                         " machine-ids and host key sets: every deployed machine is unique")
        lines += [f"  problem   {p}" for p in self.problems]
        lines += [f"  note      {n}" for n in self.notes]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def __repr__(self) -> str:
        return self.table()
