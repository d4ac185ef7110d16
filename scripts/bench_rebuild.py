"""The rebuild benchmark (``scripts/bench --only rebuild``): warm vs cold builds, and a
nightly ``--if-changed`` over ten unchanged images.

Against the test cloud-images server on 127.0.0.1 (tests/servers/cloudimages.py) serving
the minbase rootfs as a noble ``root.tar.xz`` (signed SHA256SUMS, as the real mirror):

- cold: ``build(..., base_cache=False)`` extracts the root.tar.xz into the work dir, as
  every build did before the base cache;
- warm: ``build(...)`` with the base already in the cache: an overlay, no extract;
- ten images of one recipe (each its own file and command), built once, then
  ``maas-chroot build -f images.toml --if-changed``, timed as a whole process.

Each build runs in its own process under /usr/bin/time (bench.measure): time is the
build() call, timed inside the child; best of N.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from bench import Run, best
from fixtures import CACHE, build_minbase
from servers.cloudimages import serve_cloud_images

from maas_chroot import rootfs

IMAGES = 10
BUILD = """
import sys, time
import maas_chroot as mc
spec = mc.Recipe.load(sys.argv[1]).images[sys.argv[2]]
t = time.perf_counter()
mc.build(spec, progress=False, base_cache=sys.argv[3] == "warm")
print(time.perf_counter() - t)
"""


def recipe(path: Path, site_mirror: str, keyring: Path, cache: Path) -> Path:
    images = "".join(
        f"[image.img{n}]\nfiles = {{\"/etc/motd\" = {{content = \"image {n}\\n\"}}}}\n"
        f"commands = [\"echo {n} > /etc/image-number\"]\n\n" for n in range(IMAGES))
    path.write_text(f'source = "noble"\nfmt = "root.tar.xz"\nmirror = "{site_mirror}"\n'
                    f'keyring = "{keyring}"\ncache_dir = "{cache}"\nworkdir = "{path.parent}"\n'
                    f"level = 1\n\n{images}")
    return path


def bench(work: Path, rounds: int) -> list[tuple[str, ...]]:
    tar = build_minbase(CACHE)
    mb = tar.stat().st_size / 1e6
    rows: list[tuple[str, ...]] = []
    top = Path(tempfile.mkdtemp(prefix="rebuild-", dir=work))
    try:
        with serve_cloud_images(top, rootfs_tar=tar, formats=("root.tar.xz",)) as site:
            path = recipe(top / "images.toml", site.mirror, site.keyring, top / "cache")

            def build(name: str, how: str) -> list[str]:
                return [sys.executable, "-c", BUILD, str(path), name, how]

            def row(case: str, tool: str, r: Run, ref: Run | None, note: str = "") -> None:
                ratio = f"{r.seconds / ref.seconds:.2f}x" if ref else "1.00x"
                cpu = f"{r.cpu / ref.cpu:.2f}x" if ref else "1.00x"
                rows.append((f"rebuild ({mb:.0f} MB)", case, tool, f"{r.seconds:.2f}", ratio,
                             f"{r.cpu:.2f}", cpu, note, f"{r.rss_mb:.0f}"))
                print("  ".join(rows[-1]), flush=True)

            best(1, build("img0", "warm"))  # fetch, and the base into the cache
            cold = best(rounds, build("img0", "cold"))
            warm = best(rounds, build("img0", "warm"))
            row("one image, no apt", "cold (extract root.tar.xz)", cold, None)
            steps = dict(json.loads((top / "img0.tgz.build.json").read_text())["steps"])
            row("one image, no apt", "warm (overlay of the cached base)", warm, cold,
                f"extract {steps.get('extract', 0.0):.2f} s")
            every = best(1, [sys.executable, "-m", "maas_chroot", "build", "-f", str(path),
                             "-q"])
            row(f"{IMAGES} images, first build", "maas-chroot build -f", every, None)
            site.log.clear()
            nightly = best(rounds, [sys.executable, "-m", "maas_chroot", "build", "-f",
                                    str(path), "--if-changed", "-q"])
            asked = sorted({f"{e.path.rsplit('/', 1)[-1]} {e.status}" for e in site.log})
            row(f"{IMAGES} images, unchanged", "build -f --if-changed", nightly, every,
                ", ".join(asked))
    finally:
        rootfs.remove_tree(top)
    return rows
