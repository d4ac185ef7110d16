#!/usr/bin/env python3
"""The boot test's costs: deployment against image size, and a boot's milestones.

Usage (as root; run scripts/test or scripts/demo once first for the venv):
    .venv/bin/python scripts/bench_boot.py [--boot] [--work DIR]

Two deployable Debian images (built once per machine with mmdebstrap from this
machine's apt mirror, then with mc.build): the boot test's own (kernel, systemd,
cloud-init, netplan, sshd, resolved) and a bigger one (the same plus python3,
perl, git, vim, gcc, g++). For each, the deployment the boot test does before a
boot, step by step: curtin's tar into a staging tree, update-initramfs, and
mke2fs -d onto a sparse disk. With --boot, each image is also booted once
(KVM when it really works here, else TCG) and its milestones printed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

TOP = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TOP / "tests"))
sys.path.insert(0, str(TOP))

from fixtures import BOOT_PACKAGES, CACHE, build_minbase  # noqa: E402

import maas_chroot as mc  # noqa: E402
from maas_chroot.boot import deploy, scratch  # noqa: E402

BIG = ("python3", "perl", "git", "vim", "gcc", "g++")
LOCALE = "locale: C.UTF-8\n"


def image(work: Path, name: str, include: tuple[str, ...]) -> Path:
    out = work / f"{name}.tgz"
    if not out.exists():
        base = build_minbase(CACHE, include=include)
        cfg = work / "locale.cfg"
        cfg.write_text(LOCALE)
        mc.build(base, out, files={"/etc/cloud/cloud.cfg.d/99-locale.cfg": cfg},
                 progress=False, workdir=work)
    return out


def deploy_once(path: Path, work: Path) -> dict[str, float]:
    times: dict[str, float] = {}
    with scratch.staging(work) as root, scratch.scratch(work) as disk:
        staged = deploy.stage(path, root, kernel=None, progress=False)
        deploy.finish(staged)
        start = time.monotonic()
        deploy.make_disk(staged, disk, uuid="12345678-1234-1234-1234-123456789abc",
                         size=deploy.disk_size(staged))
        times.update(staged.times)
        times["disk"] = time.monotonic() - start
        times["tree MiB"] = staged.tree_bytes / (1 << 20)
        times["disk MiB used"] = os.fstat(disk.fd).st_blocks * 512 / (1 << 20)
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--boot", action="store_true", help="also boot each image once")
    ap.add_argument("--work", type=Path, default=Path("/var/tmp/maas-chroot-bench-boot"))
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench_boot.py must run as root")
    args.work.mkdir(parents=True, exist_ok=True)
    images = {"boot": image(args.work, "boot", BOOT_PACKAGES),
              "big": image(args.work, "big", (*BOOT_PACKAGES, *BIG))}
    print(f"# {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}")
    head = ("image", "tgz MiB", "tree MiB", "extract s", "initramfs s", "disk s",
            "disk MiB used")
    rows = []
    for name, path in images.items():
        t = deploy_once(path, args.work)
        rows.append((name, f"{path.stat().st_size / (1 << 20):.0f}", f"{t['tree MiB']:.0f}",
                     f"{t['extract']:.1f}", f"{t.get('initramfs', 0):.1f}", f"{t['disk']:.1f}",
                     f"{t['disk MiB used']:.0f}"))
        print("  ".join(rows[-1]), flush=True)
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, tuple("-" * w for w in widths), *rows]:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")
    if args.boot:
        for name, path in images.items():
            report = mc.boot_test(path, workdir=args.work, log_dir=args.work, progress=False,
                                  check=False)
            ms = ", ".join(f"{k} {v:.1f} s" for k, v in report.milestones.items())
            print(f"{name}: {'OK' if report.ok else 'FAILED'} with {report.accel}: {ms}")
    print(f"# load average at the end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
