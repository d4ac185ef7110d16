"""Benchmark maas_chroot.extract() and pack() against GNU tar, pigz and unsquashfs.

Usage (as root; scripts/bench sets up the venv first):
    python scripts/bench.py [--rounds 3] [--only small|big|rebuild] [--work DIR]

Two real Debian rootfs trees, built once per machine with mmdebstrap (see
tests/fixtures.py): the minbase one, and a larger one with a few hundred MB of
packages. For each, in one run on this machine:

- extract() vs ``tar --xattrs --xattrs-include='*' --acls --numeric-owner -xpf`` (tar.xz input)
- extract() vs ``unsquashfs`` (squashfs input)
- pack() vs ``tar --xattrs --acls --numeric-owner -czf`` and vs ``tar ... -I pigz``
- rebuilds (scripts/bench_rebuild.py): a warm build (an overlay of the cached base) vs a
  cold one (extract), and ``build -f --if-changed`` over ten unchanged images

Every measurement runs in its own process under /usr/bin/time: time = best
wall time of N rounds (our own calls are timed inside the child, around the
call, without interpreter start-up); cpu = least user+system seconds of the
process and its children (including interpreter start-up: a load-independent
measure of work on a shared machine); peak RSS = the largest max RSS of the
process or any child (each process's own, not their sum).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

TOP = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TOP / "tests"))
sys.path.insert(0, str(TOP))

from fixtures import CACHE, build_minbase  # noqa: E402

from maas_chroot import rootfs  # noqa: E402

BIG = ("python3", "perl", "git", "vim", "gcc", "g++")
TAR_X = ["tar", "--xattrs", "--xattrs-include=*", "--acls", "--numeric-owner", "-xpf"]
TAR_C = ["tar", "--xattrs", "--acls", "--numeric-owner"]
OURS = """
import sys, time
from maas_chroot import archive
t = time.perf_counter()
if sys.argv[1] == "extract":
    archive.extract(sys.argv[2], sys.argv[3], progress=False)
else:
    archive.pack(sys.argv[2], sys.argv[3], progress=False)
print(time.perf_counter() - t)
"""


@dataclass(frozen=True)
class Run:
    seconds: float
    cpu: float  # user + system seconds of the process and its children
    rss_mb: float
    size: int | None


def measure(argv: list[str], *, timed_inside: bool, out: Path | None) -> Run:
    """Run argv under /usr/bin/time: a child forked from this (big) Python process
    would report our peak RSS as its own."""
    subprocess.run(["sync"], check=True)
    rss = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-rss-{os.getpid()}"
    t = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "%M %U %S", "-o", str(rss), *argv],
                          stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, check=False)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(argv)}")
    seconds = float(proc.stdout.split()[-1]) if timed_inside else wall
    size = out.stat().st_size if out is not None and out.is_file() else None
    peak_kb, user, system = rss.read_text().split()[-3:]
    rss.unlink()
    return Run(seconds, float(user) + float(system), int(peak_kb) / 1024, size)


def best(rounds: int, argv: list[str], *, timed_inside: bool = False,
         out: Path | None = None, clean: Path | None = None) -> Run:
    runs = []
    for _ in range(rounds):
        if clean is not None:
            rootfs.remove_tree(clean)
            if "-C" in argv:
                clean.mkdir(parents=True)
        if out is not None and out.exists():
            out.unlink()
        runs.append(measure(argv, timed_inside=timed_inside, out=out))
    if clean is not None:
        rootfs.remove_tree(clean)
    return Run(min(r.seconds for r in runs), min(r.cpu for r in runs),
               max(r.rss_mb for r in runs), runs[-1].size)


def ours(*args: str) -> list[str]:
    return [sys.executable, "-c", OURS, *args]


def prepare(tar: Path, work: Path) -> tuple[Path, Path, Path]:
    """The tree (GNU-extracted), a .tar.xz and a .squashfs of it, cached beside ``tar``."""
    xz = tar.with_suffix(".tar.xz")
    if not xz.exists():
        print(f"# making {xz.name} (xz -T0, once)", flush=True)
        with open(xz.with_suffix(".part"), "wb") as f:
            subprocess.run(["xz", "-T0", "-6", "-c", str(tar)], stdout=f, check=True)
        xz.with_suffix(".part").rename(xz)
    root = work / f"{tar.stem}-root"
    if not root.exists():
        root.mkdir(parents=True)
        subprocess.run([*TAR_X, str(tar), "-C", str(root)], check=True)
    sqfs = tar.with_suffix(".squashfs")
    if not sqfs.exists():
        print(f"# making {sqfs.name} (mksquashfs, once)", flush=True)
        subprocess.run(["mksquashfs", str(root), str(sqfs.with_suffix(".part")), "-noappend",
                        "-no-progress", "-quiet"], check=True)
        sqfs.with_suffix(".part").rename(sqfs)
    return root, xz, sqfs


def bench(name: str, tar: Path, work: Path, rounds: int) -> list[tuple[str, ...]]:
    root, xz, sqfs = prepare(tar, work)
    dest = work / "dest"
    tgz = work / "out.tgz"
    mb = tar.stat().st_size / 1e6
    rows: list[tuple[str, ...]] = []

    def row(case: str, tool: str, r: Run, ref: Run | None) -> None:
        ratio = f"{r.seconds / ref.seconds:.2f}x" if ref else "1.00x"
        size = f"{r.size / 1e6:.1f}" if r.size else "-"
        cpu = f"{r.cpu / ref.cpu:.2f}x" if ref else "1.00x"
        rows.append((f"{name} ({mb:.0f} MB)", case, tool, f"{r.seconds:.2f}", ratio,
                     f"{r.cpu:.2f}", cpu, size, f"{r.rss_mb:.0f}"))
        print("  ".join(rows[-1]), flush=True)

    a = best(rounds, ours("extract", str(xz), str(dest)), timed_inside=True, clean=dest)
    b = best(rounds, [*TAR_X, str(xz), "-C", str(dest)], clean=dest)
    row("extract tar.xz", "mc.extract", a, None)
    row("extract tar.xz", "GNU tar -xpf", b, a)
    a = best(rounds, ours("extract", str(sqfs), str(dest)), timed_inside=True, clean=dest)
    b = best(rounds, ["unsquashfs", "-no-progress", "-quiet", "-dest", str(dest), str(sqfs)],
             clean=dest)
    row("extract squashfs", "mc.extract", a, None)
    row("extract squashfs", "unsquashfs", b, a)
    a = best(rounds, ours("pack", str(root), str(tgz)), timed_inside=True, out=tgz)
    b = best(rounds, [*TAR_C, "-czf", str(tgz), "-C", str(root), "."], out=tgz)
    c = best(rounds, [*TAR_C, "-I", "pigz", "-cf", str(tgz), "-C", str(root), "."], out=tgz)
    row("pack tgz", "mc.pack", a, None)
    row("pack tgz", "tar -czf (gzip -6)", b, a)
    row("pack tgz", "tar -I pigz", c, a)
    assert a.size and b.size
    rows.append((f"{name} ({mb:.0f} MB)", "pack tgz", "mc.pack size / gzip -6 size",
                 "", "", "", "", f"{a.size / b.size:.3f}x", ""))
    if tgz.exists():
        tgz.unlink()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", choices=("small", "big", "rebuild"))
    ap.add_argument("--work", type=Path, default=Path("/var/tmp/maas-chroot-bench"))
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("scripts/bench must run as root (it extracts device nodes and owners)")
    for tool in ("tar", "xz", "pigz", "mksquashfs", "unsquashfs"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (scripts/bench installs it)")
    args.work.mkdir(parents=True, exist_ok=True)
    trees = {"small": lambda: build_minbase(CACHE),
             "big": lambda: build_minbase(CACHE, include=BIG)}
    rows: list[tuple[str, ...]] = []
    print(f"# {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}; "
          f"best of {args.rounds}", flush=True)
    for name, build in trees.items():
        if args.only in (None, name):
            rows += bench(name, build(), args.work, args.rounds)
    if args.only in (None, "rebuild"):
        import bench_rebuild

        rows += bench_rebuild.bench(args.work, args.rounds)
    head = ("rootfs", "case", "tool", "time s", "time vs mc", "cpu s", "cpu vs mc",
            "size MB or note", "peak RSS MB")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    print()
    for r in [head, tuple("-" * w for w in widths), *rows]:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")
    print(f"\n# load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
