"""Review fixes: machine-independent pack bytes, deep trees, cache paths, stream teardown."""

from __future__ import annotations

import errno
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import gnu_extract

from maas_chroot import archive, rootfs
from maas_chroot.archive.compress import HashingFile, ProcessStream
from maas_chroot.customise.scrub import Scrub
from maas_chroot.errors import SourceError
from maas_chroot.rootfs import inroot
from maas_chroot.rootfs import walk as _fdwalk
from maas_chroot.sources.fetching import cache_path, fetch


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


def _deep_tree(top: Path, depth: int) -> Path:
    """``top/d/d/.../d`` ``depth`` levels deep, a file at each level, built with dir fds."""
    top.mkdir()
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(depth):
            with open(os.open("f", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "wb") as f:
                f.write(b"%d\n" % i)
            os.mkdir("d", dir_fd=fd)
            sub = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = sub
    finally:
        os.close(fd)
    return top


def _rm_deep(top: Path) -> None:
    """Remove a deep test tree even when the code under test failed (pytest's own
    cleanup of old temp dirs recurses, and other sessions share them)."""
    if top.exists():
        subprocess.run(["rm", "-rf", "--one-file-system", str(top)], check=True)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_remove_tree_deletes_a_tree_deeper_than_the_recursion_limit(tmp_path: Path) -> None:
    depth = 2000
    assert depth > sys.getrecursionlimit()
    top = _deep_tree(tmp_path / "deep", depth)
    fds = _open_fds()
    try:
        rootfs.remove_tree(top)
        assert not top.exists()
        assert _open_fds() == fds
    finally:
        _rm_deep(top)


def test_pack_round_trips_a_tree_deeper_than_the_recursion_limit(tmp_path: Path) -> None:
    depth = 1500  # ./d/d/.../f: 3,000 bytes, under PATH_MAX for GNU tar's extraction
    assert depth > sys.getrecursionlimit()
    top = _deep_tree(tmp_path / "deep", depth)
    back = tmp_path / "back"
    try:
        fds = _open_fds()
        out = archive.pack(top, tmp_path / "deep.tgz", progress=False).path
        assert _open_fds() == fds
        gnu_extract(out, back)
        level = os.open(back, os.O_RDONLY | os.O_DIRECTORY)
        for i in range(depth):
            assert sorted(os.listdir(level)) == ["d", "f"]
            with open(os.open("f", os.O_RDONLY, dir_fd=level), "rb") as f:
                assert f.read() == b"%d\n" % i
            sub = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=level)
            os.close(level)
            level = sub
        assert os.listdir(level) == []
        os.close(level)
    finally:
        _rm_deep(back)
        _rm_deep(top)


def test_sysprep_scrub_measures_and_removes_a_deep_tree(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "tmp").mkdir(parents=True)
    depth = 1500
    _deep_tree(root / "tmp" / "deep", depth)
    size = sum(len(b"%d\n" % i) for i in range(depth))
    rootfd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    try:
        scrub = Scrub(str(root), rootfd)
        scrub.remove("/tmp/deep")
    finally:
        os.close(rootfd)
        _rm_deep(root / "tmp" / "deep")
    assert [(i.path, i.action, i.freed) for i in scrub.items] == [("/tmp/deep", "removed", size)]
    assert os.listdir(root / "tmp") == []


@pytest.mark.parametrize("opened_before", [True, False],
                         ids=["after-a-successful-openat2", "as-the-first-call"])
def test_an_eperm_from_an_immutable_file_is_the_real_error_and_keeps_openat2(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, opened_before: bool) -> None:
    if inroot.SYS_OPENAT2 is None:
        pytest.skip("no openat2 on this architecture")
    monkeypatch.setattr(inroot, "_have_openat2", None)  # as in a fresh process
    if opened_before:
        (tmp_path / "etc").mkdir()
        (tmp_path / "etc" / "hostname").write_text("a\n")
        os.close(rootfs.open_in_root(tmp_path, "/etc/hostname", os.O_RDONLY))
        assert inroot._have_openat2 is True
    (tmp_path / "locked").write_text("b\n")
    subprocess.run(["chattr", "+i", str(tmp_path / "locked")], check=True)
    try:
        with pytest.raises(PermissionError):
            rootfs.open_in_root(tmp_path, "/locked", os.O_WRONLY)
        # The EPERM of an immutable file does not switch the process to the slow walk.
        assert inroot._have_openat2 is True
    finally:
        subprocess.run(["chattr", "-i", str(tmp_path / "locked")], check=True)


class _SlowFile(HashingFile):
    """A HashingFile whose writes take a while, so the pump thread is caught in one."""

    def __init__(self, fd: int) -> None:
        super().__init__(fd)
        self.started = threading.Event()

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self.started.set()
        time.sleep(0.3)
        return super().write(data)


def test_aborting_a_compressor_stream_stops_its_pump_before_returning(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        raw = _SlowFile(fd)
        stream = ProcessStream(["cat"], raw, str(tmp_path / "out"))
        stream.write(b"x" * (256 << 10))
        assert raw.started.wait(10)
        stream.abort()
        # Nothing may write to fd once abort() returned: the caller closes it next.
        assert not stream._pump.is_alive()
        assert stream.proc.returncode is not None
    finally:
        os.close(fd)


def test_remove_tree_of_a_symlink_with_a_trailing_slash_keeps_the_target(tmp_path: Path) -> None:
    (tmp_path / "target").mkdir()
    (tmp_path / "target" / "keep").write_text("k\n")
    (tmp_path / "link").symlink_to("target")
    rootfs.remove_tree(f"{tmp_path}/link/")
    assert not os.path.lexists(tmp_path / "link")
    assert (tmp_path / "target" / "keep").read_text() == "k\n"


def test_a_walk_stops_when_a_closed_ancestor_was_moved(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_fdwalk, "KEEP", 1)  # only the deepest directory stays open
    (tmp_path / "a" / "b" / "c").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    top = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with _fdwalk.DirStack(top, str(tmp_path)) as dirs:
            for name in ("a", "b", "c"):
                dirs.push(name, os.stat(name, dir_fd=dirs.fd, follow_symlinks=False))
            assert dirs.where == f"{tmp_path}/a/b/c"
            os.rename(tmp_path / "a" / "b" / "c", tmp_path / "elsewhere" / "c")
            with pytest.raises(OSError) as err:
                dirs.pop()  # b's fd was closed; c's ".." is now "elsewhere"
            assert err.value.errno == errno.ESTALE
        # the walk closed what it opened, and never the caller's fd
        os.fstat(top)
    finally:
        os.close(top)


@pytest.mark.root
def test_sysprep_truncates_logs_in_a_tree_deeper_than_the_recursion_limit(tmp_path: Path) -> None:
    from maas_chroot import sysprep

    root = tmp_path / "root"
    (root / "var/log").mkdir(parents=True)
    depth = 1500
    assert depth > sys.getrecursionlimit()
    _deep_tree(root / "var/log/deep", depth)
    try:
        fds = _open_fds()
        report = sysprep(root, progress=False)
        assert _open_fds() == fds
        assert len(report.paths("logs")) == depth
        level = os.open(root / "var/log/deep", os.O_RDONLY | os.O_DIRECTORY)
        for _ in range(depth):
            assert os.stat("f", dir_fd=level).st_size == 0
            sub = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=level)
            os.close(level)
            level = sub
        os.close(level)
    finally:
        _rm_deep(root / "var/log/deep")
