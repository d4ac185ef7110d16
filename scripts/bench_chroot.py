#!/usr/bin/env python3
"""Per-command overhead of ``Chroot.run(["true"])`` against a plain ``chroot ROOT true``.

Usage (as root):  scripts/bench_chroot.py [ROOT] [-n N]

Without ROOT it extracts the cached Debian minbase rootfs of the test suite
(built once with mmdebstrap from the host's apt mirror) into a temporary
directory and removes it afterwards. Runs are interleaved (one plain chroot,
one session command, ...) so machine load hits both sides alike; the table
gives per-command wall time and the ratio/overhead against plain chroot.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import maas_chroot as mc  # noqa: E402
from maas_chroot import rootfs  # noqa: E402


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1000


def bench(root: Path, n: int, network: mc.chroot.Network) -> tuple[list[float], list[float]]:
    plain: list[float] = []
    session: list[float] = []
    with mc.Chroot(root, network=network) as ch:
        for _ in range(3):  # warm caches
            subprocess.run(["chroot", str(root), "true"], check=True)
            ch.run(["true"])
        for _ in range(n):
            plain.append(timed(lambda: subprocess.run(["chroot", str(root), "true"], check=True)))
            session.append(timed(lambda: ch.run(["true"])))
    return plain, session


def row(name: str, times: list[float], base: float) -> str:
    med = statistics.median(times)
    return (f"{name:<34} {med:8.1f} {statistics.mean(times):8.1f} {min(times):8.1f} "
            f"{med - base:+9.1f} {med / base:7.1f}x")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", nargs="?", type=Path)
    ap.add_argument("-n", type=int, default=50)
    args = ap.parse_args()
    tmp = None
    root = args.root
    if root is None:
        sys.path.insert(0, str(REPO / "tests"))
        from fixtures import CACHE, build_minbase, gnu_extract

        tmp = tempfile.mkdtemp(prefix="mc-bench-")
        root = Path(tmp) / "root"
        gnu_extract(build_minbase(CACHE), root)
    try:
        print(f"root: {root}   N={args.n} per row (interleaved with plain chroot)\n")
        print(f"{'command':<34} {'median':>8} {'mean':>8} {'min':>8} {'overhead':>9} "
              f"{'ratio':>8}   (ms)")
        for network in ("host", "none"):
            plain, session = bench(root, args.n, network)  # type: ignore[arg-type]
            base = statistics.median(plain)
            print(row("chroot ROOT true", plain, base))
            print(row(f'ch.run(["true"])  network="{network}"', session, base))
    finally:
        if tmp is not None:
            rootfs.remove_tree(tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
