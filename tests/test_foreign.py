"""Foreign-architecture images, end to end, as root: an arm64 Debian minbase from this
machine's mirror, customised on this host through qemu-user (binfmt_misc, F flag), packed
without the emulator and uploaded as arm64/generic; and the clear error, before anything
is touched, when this host has no way to run an image's binaries.

The chroot features (network none, binds, resolv.conf, policy-rc.d, journal and recover)
run on the arm64 image too: see ``ON_BOTH_ARCHES`` in test_chroot.py.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fixtures import (
    assert_one_clear_error,
    gnu_extract,
    run_cli,
    tar_members,
    tar_read,
    tree_state,
)
from servers.maas import serve

import maas_chroot as mc
from maas_chroot import arches, binfmt, rootfs

pytestmark = pytest.mark.root
S390X = arches.BY_NAME["s390x"]


def assert_arm64_jq_and_no_emulator(tgz: Path) -> None:
    members = tar_members(tgz)
    assert members["usr/bin/jq"].isfile()
    jq = tar_read(tgz, "usr/bin/jq", arches.HEADER_SIZE)
    assert arches.from_elf(jq) == arches.BY_NAME["arm64"] and arches.is_program(jq)
    emulator = [n for n in members if os.path.basename(n).startswith("qemu-")
                or "qemu-binfmt" in n]
    assert emulator == []


# --- without a handler: refused before anything is touched ---------------------------------


@pytest.fixture
def s390x_root(tmp_path: Path) -> Path:
    """The smallest rootfs a session accepts, whose /bin/sh is an s390x ELF."""
    if binfmt.status(S390X).ok:
        pytest.skip("this host runs s390x binaries (a handler is registered)")
    root = tmp_path / "root"
    for d in ("usr/bin", "etc", "var/tmp"):
        (root / d).mkdir(parents=True)
    (root / "bin").symlink_to("usr/bin")
    (root / "usr/bin/dash").write_bytes(S390X.elf_header() + b"\0" * 256)
    (root / "usr/bin/sh").symlink_to("dash")
    return root


def test_a_session_on_an_image_this_host_cannot_run_is_refused_untouched(
        s390x_root: Path) -> None:
    before = tree_state(s390x_root)
    with pytest.raises(mc.EmulationError) as exc, mc.Chroot(s390x_root) as ch:
        ch.run(["true"])
    err = exc.value
    assert (err.root, err.arch) == (str(s390x_root), "s390x")
    assert f"s390x binaries cannot run on this {binfmt.status(S390X).host} host" in err.message
    assert err.hint is not None and "update-binfmts --enable qemu-s390x" in err.hint
    assert "maas-chroot binfmt --enable s390x" in err.hint
    assert tree_state(s390x_root) == before  # no journal, no policy-rc.d, no resolv.conf


def test_bootstrapping_an_arch_this_host_cannot_run_fails_at_the_check(tmp_path: Path) -> None:
    if binfmt.status(S390X).ok:
        pytest.skip("this host runs s390x binaries")
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(mc.BuildError) as exc:
        mc.build("bootstrap:bookworm", tmp_path / "s390x.tgz", arch="s390x", packages=["jq"],
                 workdir=work, progress=False)
    assert exc.value.step == "check"
    assert isinstance(exc.value.__cause__, mc.EmulationError)
    assert "bootstrap bookworm: s390x binaries cannot run" in exc.value.message
    assert list(work.iterdir()) == [] and not (tmp_path / "s390x.tgz").exists()
    proc = run_cli("build", "bootstrap:bookworm", "--arch", "s390x", "-o",
                   str(tmp_path / "s390x.tgz"), "--workdir", str(work))
    assert_one_clear_error(proc, "s390x binaries cannot run", "qemu-s390x")
    proc = run_cli("binfmt", "--status", "s390x")
    assert proc.returncode == 1 and "hint: " in proc.stdout and "qemu-s390x" in proc.stdout


def test_an_upload_architecture_the_source_contradicts_fails_before_the_build(
        tmp_path: Path) -> None:
    with serve(tmp_path / "maas") as fake:
        client = mc.MaasClient(fake.url, fake.api_key)
        with pytest.raises(mc.BuildError) as exc:
            mc.build("bootstrap:bookworm", tmp_path / "a.tgz", arch="arm64", progress=False,
                     upload={"client": client, "name": "custom/a",
                             "architecture": "amd64/generic"})
        assert exc.value.step == "check" and isinstance(exc.value.__cause__, mc.ImageNameError)
        assert "contradicts the image, whose binaries are arm64" in exc.value.message
        assert fake.log == []


@pytest.mark.root
def test_a_registered_but_switched_off_handler_is_switched_back_on(
        arm64_emulation: binfmt.Emulation) -> None:
    if arm64_emulation.native:
        pytest.skip("arm64 runs natively here")
    entry = Path(binfmt.BINFMT_DIR) / arm64_emulation.handler
    entry.write_text("0")  # the kernel's own switch: the handler stays registered
    try:
        assert "registered but disabled" in (binfmt.status("arm64").problem or "")
        with binfmt.enabled("arm64") as st:
            assert st.ok and st.handler == arm64_emulation.handler
            assert entry.read_text().startswith("enabled")
        # undone: only what enabled() did, so the handler is off again
        assert entry.read_text().startswith("disabled")
    finally:
        entry.write_text("1")
    assert binfmt.status("arm64").ok


# --- an arm64 image, emulated ---------------------------------------------------------------


@dataclass(frozen=True)
class Customised:
    root: Path
    uname: str
    jq: str
    session: str | None
    report: mc.SysprepReport
    packed: mc.PackResult


@pytest.fixture(scope="module")
def arm64_jq(arm64_tar: Path, arm64_emulation: binfmt.Emulation,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Customised]:
    """The arm64 minbase with jq installed by ch.apt (emulated), scrubbed and packed."""
    top = tmp_path_factory.mktemp("arm64")
    root = top / "root"
    gnu_extract(arm64_tar, root)
    try:
        with mc.Chroot(root) as ch:
            uname = ch.run(["uname", "-m"], capture=True).stdout.strip()
            ch.apt.update(progress=False)
            ch.apt.install(["jq"], progress=False)
            jq = ch.run(["jq", "-n", "[1, 2] | add"], capture=True).stdout.strip()
            arch = ch.arch
        report = mc.sysprep(root, progress=False)
        packed = mc.pack(root, top / "arm64-jq.tgz", progress=False)
        yield Customised(root, uname, jq, arch, report, packed)
    finally:
        rootfs.remove_tree(root)


@pytest.mark.network
@pytest.mark.slow
def test_commands_run_emulated_and_apt_installs_jq(arm64_jq: Customised,
                                                   arm64_emulation: binfmt.Emulation) -> None:
    assert arm64_jq.uname == "aarch64"
    assert arm64_jq.jq == "3"
    assert arm64_jq.session == "arm64"
    [handler] = [h for h in binfmt.handlers() if h.name == arm64_emulation.handler]
    assert handler.enabled and "F" in handler.flags  # the emulator is not in the image
    assert not (arm64_jq.root / "usr/sbin/policy-rc.d").exists()
    assert not (arm64_jq.root / rootfs.JOURNAL_NAME).exists()


@pytest.mark.network
@pytest.mark.slow
def test_the_tgz_holds_an_aarch64_jq_and_nothing_of_the_emulator(arm64_jq: Customised) -> None:
    assert_arm64_jq_and_no_emulator(arm64_jq.packed.path)
    assert arm64_jq.packed.arch == "arm64" and arm64_jq.report.arch == "arm64"
    assert "arch: arm64" in arm64_jq.report.table()


@pytest.mark.network
@pytest.mark.slow
def test_the_upload_architecture_follows_the_image(arm64_jq: Customised,
                                                   tmp_path: Path) -> None:
    packed = arm64_jq.packed
    with serve(tmp_path / "maas") as fake:
        client = mc.MaasClient(fake.url, fake.api_key)
        assert client.upload(packed, name="custom/arm64-jq").architecture == "arm64/generic"
        # a bare file: its architecture is read from its programs
        assert client.upload(packed.path, name="custom/arm64-file").architecture == \
            "arm64/generic"
        posts = len(fake.requests("POST"))
        for given in (packed, packed.path):
            with pytest.raises(mc.ImageNameError, match="contradicts the image"):
                client.upload(given, name="custom/wrong", architecture="amd64/generic")
        assert len(fake.requests("POST")) == posts  # refused before anything was sent
        forced = client.upload(packed, name="custom/forced", architecture="amd64/generic",
                               force=True)
        assert forced.architecture == "amd64/generic"


@pytest.mark.network
@pytest.mark.slow
def test_the_whole_arm64_build_through_the_cli(arm64_emulation: binfmt.Emulation,
                                                tmp_path: Path) -> None:
    out = tmp_path / "arm64.tgz"
    with serve(tmp_path / "maas") as fake:
        proc = run_cli("build", "bootstrap:bookworm", "--arch", "arm64", "--install", "jq",
                       "-o", str(out), "--workdir", str(tmp_path), "--no-progress",
                       "--upload", "custom/bookworm-arm64",
                       env={"MAAS_URL": fake.url, "MAAS_API_KEY": fake.api_key})
        assert proc.returncode == 0, proc.stderr
        print(proc.stdout)  # the BuildResult: time per step (pytest -s shows it)
        [res] = fake.resources.values()
        assert res.architecture == "arm64/generic"
        assert fake.path("custom/bookworm-arm64").read_bytes() == out.read_bytes()
    assert "  arch      arm64\n" in proc.stdout and "arm64/generic" in proc.stdout
    assert_arm64_jq_and_no_emulator(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["arm64.tgz", "arm64.tgz.build.json",
                                                          "arm64.tgz.manifest", "maas"]


def test_binfmt_status_through_the_cli(arm64_emulation: binfmt.Emulation) -> None:
    proc = run_cli("binfmt", "--status", "arm64")
    assert proc.returncode == 0 and "arm64: emulated by qemu-aarch64" in proc.stdout
    host = arches.host()
    assert host is not None
    assert f"{host.name}: native on this {host.name} host" in run_cli("binfmt").stdout
    proc = run_cli("binfmt", "--enable", "arm64")  # already there: nothing changes
    assert proc.returncode == 0 and "emulated by qemu-aarch64" in proc.stdout
