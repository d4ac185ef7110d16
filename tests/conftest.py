"""Shared fixtures: a real Debian minbase rootfs, built once per machine, and host-safety guards.

The rootfs tarball is built with mmdebstrap from the mirror the machine's apt
already uses (read from /etc/apt, never named here) and cached under the
user's cache dir, so it is built once per machine.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from filelock import FileLock

from maas_chroot import rootfs
from maas_chroot.sources import hostapt

CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "maas-chroot-tests"
IS_ROOT = os.geteuid() == 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if IS_ROOT:
        return
    skip = pytest.mark.skip(reason="needs root (mounts, namespaces, chroot)")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


def _host_mounts() -> set[str]:
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        return {line.split()[4] for line in f}


def _rooted_pids(prefix: str) -> list[tuple[int, str]]:
    found = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            r = os.readlink(p / "root")
        except OSError:
            continue
        if r != "/" and r.startswith(prefix):
            found.append((int(p.name), r))
    return found


def _ours(point: str, basetemp: str) -> bool:
    """A mount this test session (or the library's own work dirs) could have made."""
    return point.startswith(basetemp + "/") or "maas-chroot" in point


@pytest.fixture(autouse=True)
def host_stays_clean(tmp_path: Path) -> Iterator[None]:
    """Fail any test that leaves a mount or a chrooted process behind (and clean it up).

    Only this session's own base temp dir (and the library's ``maas-chroot`` work
    dirs) count, so concurrent pytest or mmdebstrap runs on the machine are left alone.
    """
    basetemp = str(tmp_path.parent)
    before = _host_mounts()
    yield
    leaked = sorted((p for p in _host_mounts() - before if _ours(p, basetemp)),
                    key=lambda p: -p.count("/"))
    for point in leaked:
        subprocess.run(["umount", "-R", "-l", point], check=False)
    stray = _rooted_pids(basetemp + "/")
    for pid, _ in stray:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
    assert not leaked, f"test leaked mounts into the host namespace: {leaked}"
    assert not stray, f"test left processes chrooted under {basetemp}: {stray}"


def _mirror() -> hostapt.AptSource:
    return hostapt.host_mirror()


def build_minbase(dest: Path, *, include: tuple[str, ...] = (), suite: str | None = None) -> Path:
    """Build (once, under a lock) a minbase rootfs tarball with mmdebstrap; return its path."""
    src = hostapt.host_mirror(suite)
    suite = src.suites[0]
    key = hashlib.sha256(f"{src.uri} {suite} {sorted(include)}".encode()).hexdigest()[:12]
    out = dest / f"minbase-{suite}-{key}.tar"
    dest.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if out.exists():
            return out
        tmp = out.with_suffix(".tar.part")
        argv = ["mmdebstrap", "--variant=minbase", "--mode=root", "--format=tar", "--quiet"]
        if include:
            argv.append("--include=" + ",".join(include))
        if src.signed_by:
            argv.append(f"--keyring={src.signed_by}")
        argv += [suite, str(tmp), src.uri]
        subprocess.run(argv, check=True, stdin=subprocess.DEVNULL)
        tmp.rename(out)
    return out


@pytest.fixture(scope="session")
def minbase_tar() -> Path:
    """A real Debian minbase rootfs as an uncompressed tar (cached per machine)."""
    if not IS_ROOT:
        pytest.skip("building a rootfs needs root")
    if shutil.which("mmdebstrap") is None:
        pytest.skip("mmdebstrap is not installed (scripts/test installs it)")
    return build_minbase(CACHE)


def gnu_extract(tarball: Path, dest: Path) -> None:
    """Extract with GNU tar and curtin's flags: the independent oracle."""
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "--xattrs", "--xattrs-include=*", "--acls", "--numeric-owner",
                    "-Sxpf", str(tarball), "-C", str(dest)], check=True)


def tree_state(root: Path) -> dict[str, tuple[object, ...]]:
    """Everything about a tree except times: type, mode, owner, content/target/device."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            meta: tuple[object, ...] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode),
                                        st.st_uid, st.st_gid)
            if stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    meta += (hashlib.sha256(f.read()).hexdigest(),)
            elif stat.S_ISLNK(st.st_mode):
                meta += (os.readlink(p),)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                meta += (st.st_rdev,)
            out[os.path.relpath(p, root)] = meta
    return out


@pytest.fixture(scope="module")
def shared_root(minbase_tar: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One minbase rootfs per test module, for tests that leave it as they found it."""
    root = tmp_path_factory.mktemp("shared") / "root"
    gnu_extract(minbase_tar, root)
    try:
        yield root
    finally:
        rootfs.remove_tree(root)


@pytest.fixture
def minbase_root(minbase_tar: Path, tmp_path: Path) -> Iterator[Path]:
    """A fresh copy of the minbase rootfs for one test, removed safely afterwards."""
    root = tmp_path / "root"
    gnu_extract(minbase_tar, root)
    try:
        yield root
    finally:
        rootfs.remove_tree(root)
