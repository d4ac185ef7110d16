"""pytest fixtures: a real Debian minbase rootfs (built once per machine), and host-safety guards.

The helpers they use (and that tests import) live in ``fixtures.py``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fixtures import (
    CACHE,
    IS_ROOT,
    binfmt_state,
    build_minbase,
    gnu_extract,
    maascli_source,
    processes_naming,
)
from servers.tls import TestCA, make_ca

from maas_chroot import binfmt, rootfs
from maas_chroot.cli import verbs
from maas_chroot.pipeline import BuildResult, BuildSpec


def pytest_configure(config: pytest.Config) -> None:
    # The library's own cache (bootstrap tarballs, extracted bases, apt's debs) lives beside
    # the test rootfs cache for the whole session (and the CLI subprocesses it starts):
    # builds that name no cache_dir never fill the user's ~/.cache/maas-chroot.
    os.environ["XDG_CACHE_HOME"] = str(CACHE / "xdg")


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
    """Fail any test that leaves a mount, a chrooted process, or a process working on its
    tmp_path (a gpg-agent of a test key) behind, and clean it up.

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
    workers = processes_naming(f"{tmp_path}/")
    for pid in [p for p, _ in stray] + workers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
    assert not leaked, f"test leaked mounts into the host namespace: {leaked}"
    assert not stray, f"test left processes chrooted under {basetemp}: {stray}"
    assert not workers, f"test left processes working in {tmp_path}: {workers}"


@pytest.fixture(autouse=True)
def logging_restored() -> Iterator[None]:
    """Undo what an in-process ``cli.main()`` does to the package's logger (its own
    handler, no propagation), so later tests' ``caplog`` sees the records again."""
    top = logging.getLogger("maas_chroot")
    saved = (list(top.handlers), top.level, top.propagate)
    yield
    top.handlers, top.level, top.propagate = saved[0], saved[1], saved[2]


@pytest.fixture(scope="session")
def minbase_tar() -> Path:
    """A real Debian minbase rootfs as an uncompressed tar (cached per machine)."""
    if not IS_ROOT:
        pytest.skip("building a rootfs needs root")
    if shutil.which("mmdebstrap") is None:
        pytest.skip("mmdebstrap is not installed (scripts/test installs it)")
    return build_minbase(CACHE)


@pytest.fixture(scope="session")
def arm64_emulation() -> Iterator[binfmt.Emulation]:
    """arm64 binaries run here, set up through the opt-in (``binfmt.enabled``); at the end
    of the session only what it added (a binfmt_misc mount, the handler) is undone."""
    if not IS_ROOT:
        pytest.skip("binfmt_misc needs root")
    if not binfmt.status("arm64").ok and shutil.which("update-binfmts") is None:
        pytest.skip("qemu-user-static and binfmt-support are not installed (scripts/test "
                    "installs them)")
    before = binfmt_state()
    with binfmt.enabled("arm64") as emulation:
        yield emulation
    assert binfmt_state() == before, "the session left binfmt_misc changed"


@pytest.fixture(scope="session")
def arm64_tar(minbase_tar: Path, arm64_emulation: binfmt.Emulation) -> Path:
    """An arm64 Debian minbase from the same mirror, as a tar (built once per machine)."""
    return build_minbase(CACHE, arch="arm64")


def _tar_for(request: pytest.FixtureRequest, native: Path) -> Path:
    """The native minbase, or the arm64 one for a test parametrized with "arm64"."""
    if getattr(request, "param", "native") == "arm64":
        return Path(request.getfixturevalue("arm64_tar"))
    return native


@pytest.fixture(scope="module")
def shared_root(request: pytest.FixtureRequest, minbase_tar: Path,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One minbase rootfs per test module, for tests that leave it as they found it."""
    root = tmp_path_factory.mktemp("shared") / "root"
    gnu_extract(_tar_for(request, minbase_tar), root)
    try:
        yield root
    finally:
        rootfs.remove_tree(root)


class Pristine:
    """Each rootfs tar extracted once per session (with GNU tar) under ``top``, never handed
    to a test: tests get copies of it."""

    def __init__(self, top: Path) -> None:
        self.top = top
        self.trees: dict[Path, Path] = {}

    def tree(self, tar: Path) -> Path:
        if tar not in self.trees:
            gnu_extract(tar, self.top / tar.stem)
            self.trees[tar] = self.top / tar.stem
        return self.trees[tar]


@pytest.fixture(scope="session")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pristine]:
    found = Pristine(tmp_path_factory.mktemp("pristine"))
    yield found
    for tree in found.trees.values():
        rootfs.remove_tree(tree)


@pytest.fixture
def minbase_root(request: pytest.FixtureRequest, minbase_tar: Path, pristine: Pristine,
                 tmp_path: Path) -> Iterator[Path]:
    """A fresh copy of the minbase rootfs for one test, removed safely afterwards.

    ``cp -a`` of the session's pristine extraction: the same tree GNU tar makes (owners,
    modes, times, hard links, xattrs, holes), in less time."""
    source = pristine.tree(_tar_for(request, minbase_tar))
    root = tmp_path / "root"
    subprocess.run(["cp", "-a", "--reflink=auto", str(source), str(root)],
                   check=True, stdin=subprocess.DEVNULL)
    try:
        yield root
    finally:
        rootfs.remove_tree(root)


@pytest.fixture(scope="session")
def maas_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    """A private CA and a certificate for 127.0.0.1 it signed (what MAAS's TLS uses)."""
    return make_ca(tmp_path_factory.mktemp("maas-ca"))


@pytest.fixture(scope="session")
def maascli_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real maas CLI's source (``$MAAS_SOURCE``); tests that need it skip without it."""
    found = maascli_source(tmp_path_factory.mktemp("maascli"))
    if isinstance(found, str):
        pytest.skip(found)
    return found


@pytest.fixture(scope="session")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    """Another CA, which did not sign the MAAS certificate."""
    return make_ca(tmp_path_factory.mktemp("other-ca"), name="some-other-ca")


@pytest.fixture
def recorded_build(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """Replace build() in the CLI by a recorder of ``(source, output, spec, if_changed)``,
    and pretend to be root."""
    calls: list[tuple[Any, ...]] = []

    def fake_build(spec: BuildSpec, *, progress: bool | None = None,
                   if_changed: bool = False) -> BuildResult:
        calls.append((spec.source, spec.output, spec, if_changed))
        return BuildResult(output=spec.output, size=1, sha256="0" * 64, source=str(spec.source))

    monkeypatch.setattr(verbs, "build", fake_build)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    return calls
