"""Review fixes: machine-independent pack bytes, deep trees, cache paths, stream teardown."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from maas_chroot import archive
from maas_chroot.errors import SourceError
from maas_chroot.fetch import cache_path, fetch


def _text_tree(root: Path) -> Path:
    """~12 MB of compressible, non-repeating text: many gzip blocks, several xz blocks."""
    rng = random.Random(7)
    words = [bytes(rng.choices(b"abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 9)))
             for _ in range(5000)]
    root.mkdir()
    for i in range(3):
        data = b" ".join(rng.choices(words, k=700_000))
        (root / f"f{i}.txt").write_bytes(data)
        os.utime(root / f"f{i}.txt", (0, 0))
    os.utime(root, (0, 0))
    return root


@pytest.mark.parametrize("compression", ["gzip", "xz"])
def test_pack_bytes_do_not_depend_on_the_thread_count(tmp_path: Path, compression: str) -> None:
    root = _text_tree(tmp_path / "root")
    digests = {
        n: archive.pack(root, tmp_path / f"out.{n}", compression=compression, level=1,
                        threads=n, progress=False).sha256
        for n in (1, 2, 4)}
    assert len(set(digests.values())) == 1, digests


@pytest.mark.parametrize("url", ["http://../x/y.img", "http://./x/y.img", "http:///x/y.img",
                                 "http://..:8080/x/y.img"])
def test_cache_path_refuses_hosts_that_leave_the_cache(tmp_path: Path, url: str) -> None:
    cache = tmp_path / "a" / "cache"
    with pytest.raises(SourceError, match="host name") as err:
        cache_path(url, cache)
    assert url in str(err.value)
    with pytest.raises(SourceError):
        fetch(url, sha256="0" * 64, cache_dir=cache, retries=0)
    assert sorted(p.name for p in tmp_path.rglob("*")) == []
