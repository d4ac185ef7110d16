"""build(): the whole pipeline from the Python API, on a real minbase rootfs."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import pytest
from fixtures import tar_members, tar_read
from servers.maas import serve

import maas_chroot as mc
from maas_chroot import rootfs
from maas_chroot.errors import SpecError
from maas_chroot.pipeline import BuildResult
from maas_chroot.sources import bootstrap, hostapt


def test_result_repr_shows_every_step_and_the_total() -> None:
    res = BuildResult(output=Path("/srv/x.tgz"), size=3 * 1024 * 1024, sha256="ab" * 32,
                      source="archive /srv/root.tar", steps=(("extract", 1.25), ("pack", 2.5)))
    text = repr(res)
    assert text.splitlines()[0] == "BuildResult('/srv/x.tgz', 3.0 MiB, sha256=abababababababab…)"
    assert "extract       1.2 s" in text or "extract       1.3 s" in text
    assert "pack          2.5 s" in text
    assert text.splitlines()[-1].split() == ["total", "3.8", "s"]
    assert res.durations == {"extract": 1.25, "pack": 2.5}


@pytest.mark.skipif(any("noble" in s.suites for s in hostapt.sources()),
                    reason="this host's apt carries noble")
def test_apt_source_lines_parse_and_get_distinct_filetar_members() -> None:
    from maas_chroot.customise.customisation import parse_apt_source

    long = "https://artifactory.corp.example.com/artifactory/ubuntu-remote"
    upd = parse_apt_source(f"{long} noble-updates main universe", "/k.gpg")
    sec = parse_apt_source(f"deb [signed-by=/s.gpg] {long} noble-security")
    assert (upd.uri, upd.suite, upd.components, upd.key) == (
        long, "noble-updates", ("main", "universe"), "/k.gpg")
    assert (sec.suite, sec.components, sec.key) == ("noble-security", ("main",), "/s.gpg")
    assert upd.name != sec.name   # each gets its own .sources file and keyring
    assert all(len(r.name) <= 59 and r.name.startswith("artifactory-corp") for r in (upd, sec))
    with pytest.raises(SpecError, match="not an apt source line"):
        parse_apt_source("noble main")


def test_bootstrap_of_a_suite_the_host_lacks_asks_for_a_mirror() -> None:
    with pytest.raises(mc.SourceError) as exc:
        bootstrap.spec_for("noble")
    assert "--mirror" in (exc.value.hint or "")
    spec = bootstrap.spec_for("noble", mirror="http://127.0.0.1:9/ubuntu/", keyring="/k.gpg")
    assert (spec.uri, spec.components, spec.keyring) == ("http://127.0.0.1:9/ubuntu", ("main",),
                                                         "/k.gpg")
    argv = bootstrap.argv(spec, "/srv/root")
    assert argv[0] == "mmdebstrap" and "--mode=unshare" in argv
    assert "--dpkgopt=force-unsafe-io" in argv  # removed again by the customize hook:
    hook = next(a for a in argv if a.startswith("--customize-hook="))
    assert '"$1/etc/dpkg/dpkg.cfg.d/99mmdebstrap"' in hook
    assert bootstrap.argv(spec, "/srv/root.tar")[:-3] == argv[:-3]
    bare = bootstrap.argv(dataclasses.replace(spec, variant="extract"), "/srv/root.tar")
    assert not any(a.startswith(("--dpkgopt", "--customize-hook")) for a in bare)
    assert argv[-3:] == ["noble", "/srv/root", "http://127.0.0.1:9/ubuntu"]


@pytest.mark.root
def test_directory_source_with_files_commands_script_and_upload(minbase_root: Path,
                                                                tmp_path: Path) -> None:
    conf = tmp_path / "app.conf"
    conf.write_text("key = value\n")
    script = tmp_path / "setup.sh"
    script.write_text("#!/bin/sh\nset -e\necho \"script ran as $(id -u)\" > /root/script-ran\n")
    script.chmod(0o755)
    work, keep, out = tmp_path / "work", tmp_path / "keep", tmp_path / "out.tgz"
    work.mkdir()
    motd_before = (minbase_root / "etc/motd").read_bytes()
    with serve(tmp_path / "maas") as fake:
        client = mc.MaasClient(fake.url, fake.api_key)
        res = mc.build(minbase_root, out, workdir=work, keep_rootfs=keep, progress=False,
                       files={"/etc/motd": b"built by maas_chroot\n", "/etc/app.conf": conf},
                       commands=[["touch", "/root/argv-ran"], "echo $((40+2)) > /root/sh-ran",
                                 script],
                       upload={"client": client, "name": "custom/dir-build", "title": "Dir"})
        assert fake.path("custom/dir-build").read_bytes() == out.read_bytes()
    try:
        assert res.output == out
        assert res.size == out.stat().st_size
        assert res.sha256 == hashlib.sha256(out.read_bytes()).hexdigest()
        assert res.uploaded is not None and res.uploaded.name == "dir-build"
        assert res.rootfs == keep
        assert [s for s, _ in res.steps] == ["check", "copy", "chroot", "files", "commands",
                                             "manifest", "sysprep", "pack", "upload",
                                             "cleanup"]
        assert "copy" in repr(res) and "upload" in repr(res)
        members = tar_members(out)
        assert tar_read(out, "etc/motd") == b"built by maas_chroot\n"
        assert tar_read(out, "etc/app.conf") == b"key = value\n"
        assert tar_read(out, "root/sh-ran") == b"42\n"
        assert tar_read(out, "root/script-ran") == b"script ran as 0\n"
        assert "root/argv-ran" in members
        assert not [n for n in members if "maas-chroot-script" in n]
        assert "usr/sbin/policy-rc.d" not in members
        # the source directory was copied, not changed; the kept rootfs is the packed one
        assert (minbase_root / "etc/motd").read_bytes() == motd_before
        assert not (minbase_root / "root/sh-ran").exists()
        assert (keep / "root/sh-ran").read_bytes() == b"42\n"
        assert list(work.iterdir()) == []
    finally:
        rootfs.remove_tree(keep)


@pytest.mark.root
def test_in_place_customises_the_source_directory(minbase_root: Path, tmp_path: Path) -> None:
    (minbase_root / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    res = mc.build(minbase_root, tmp_path / "o.tgz", in_place=True, progress=False,
                   commands=["echo in-place > /etc/motd"], workdir=tmp_path)
    assert (minbase_root / "etc/motd").read_text() == "in-place\n"
    assert (minbase_root / "etc/machine-id").read_bytes() == b""  # sysprep ran on it
    assert res.rootfs is None and "copy" not in res.durations
    assert tar_read(res.output, "etc/motd") == b"in-place\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.tgz", "o.tgz.build.json",
                                                          "o.tgz.manifest", "root"]


@pytest.mark.root
def test_failure_names_the_step_removes_the_work_dir_and_keeps_the_rootfs(
        minbase_tar: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(mc.BuildError) as exc:
        mc.build(minbase_tar, tmp_path / "o.tgz", workdir=work, progress=False,
                 commands=["echo first > /root/first", "echo boom >&2; exit 3"])
    err = exc.value
    assert err.step == "commands"
    assert "build step 'commands' failed" in err.message and "boom" in err.message
    assert isinstance(err.__cause__, mc.CommandError) and err.__cause__.returncode == 3
    assert "--keep-rootfs" in (err.hint or "")
    assert list(work.iterdir()) == []
    assert not (tmp_path / "o.tgz").exists()

    keep = tmp_path / "keep"
    with pytest.raises(mc.BuildError) as exc:
        mc.build(minbase_tar, tmp_path / "o.tgz", workdir=work, keep_rootfs=keep,
                 progress=False, commands=["echo first > /root/first", "exit 3"])
    try:
        assert f"kept in {keep}" in exc.value.message and exc.value.rootfs == str(keep)
        assert (keep / "root/first").read_text() == "first\n"
        assert not (keep / rootfs.JOURNAL_NAME).exists()
        assert list(work.iterdir()) == []
    finally:
        rootfs.remove_tree(keep)


@pytest.mark.root
def test_bad_arguments_fail_in_the_check_step_before_any_work(minbase_tar: Path,
                                                              tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full/x").write_text("x")
    (tmp_path / "k").mkdir()
    cases = [
        ({"output": tmp_path / "o.zip"}, "output format"),
        ({"output": tmp_path / "no/dir/o.tgz"}, "does not exist"),
        ({"keep_rootfs": tmp_path / "full"}, "not empty"),
        ({"files": {"/etc/x": tmp_path / "missing"}}, "not found"),
        ({"commands": [tmp_path / "missing.sh"]}, "script not found"),
        ({"apt_sources": ["http://127.0.0.1:9/debian bookworm main"]}, "signing key"),
        ({"in_place": True}, "needs a rootfs directory"),
        ({"keep_rootfs": tmp_path / "k", "output": tmp_path / "k/o.tgz"}, "inside the rootfs"),
        ({"workdir": tmp_path / "missing"}, "does not exist"),
        ({"boot_test": {"accel": "kvmm"}}, "accel must be one of auto, kvm, tcg, not 'kvmm'"),
        ({"boot_test": {"boots": 0}}, "boots must be a whole number"),
        ({"boot_test": {"log_dir": tmp_path / "missing"}}, "is not a directory"),
        ({"boot_test": {"colour": True}}, "unknown boot_test option(s): colour"),
    ]
    for kwargs, needle in cases:
        args = {"output": tmp_path / "o.tgz", "workdir": tmp_path, **kwargs}
        with pytest.raises(mc.BuildError) as exc:
            mc.build(minbase_tar, **args)  # type: ignore[arg-type]
        assert exc.value.step == "check", kwargs
        assert needle in exc.value.message, (needle, exc.value.message)
        if "boot_test" in kwargs:
            assert isinstance(exc.value.__cause__, mc.SpecError)
            assert exc.value.__cause__.key == "boot_test"
    with pytest.raises(mc.BuildError, match="boots amd64 images only") as exc:
        mc.build("bootstrap:bookworm", tmp_path / "o.tgz", arch="arm64", boot_test=True)
    assert exc.value.step == "check"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full", "k"]
    assert list((tmp_path / "k").iterdir()) == []


@pytest.mark.root
@pytest.mark.network
@pytest.mark.slow
def test_bootstrap_source_from_the_hosts_mirror(tmp_path: Path) -> None:
    suite = hostapt.os_release().get("VERSION_CODENAME", "")
    try:
        hostapt.host_mirror(suite)
    except mc.SourceError:
        pytest.skip("the host's apt has no mirror for its own suite")
    out, cache = tmp_path / "boot.tgz", tmp_path / "cache"
    # the smallest bootstrap that can run a command: unpacked, no maintainer scripts
    options = dict(variant="extract", workdir=tmp_path, cache_dir=cache,
                   include=["base-files", "base-passwd", "libc6", "dash", "coreutils"],
                   commands=["echo bootstrapped > /etc/motd"], progress=False)
    res = mc.build(f"bootstrap:{suite}", out, **options)  # type: ignore[arg-type]
    assert res.source == f"bootstrap {suite}"
    assert [s for s, _ in res.steps][:4] == ["check", "fetch", "bootstrap", "extract"]
    members = tar_members(out)
    assert tar_read(out, "etc/motd") == b"bootstrapped\n"
    assert members["etc/debian_version"].uid == 0 and members["etc/debian_version"].gid == 0
    dash = members.get("usr/bin/dash") or members["bin/dash"]  # merged /usr or not
    assert dash.isfile() and dash.mode & 0o111
    assert "etc/dpkg/dpkg.cfg.d/99mmdebstrap" not in members  # build-time speed-ups only
    assert "etc/apt/apt.conf.d/99mmdebstrap" not in members
    assert sorted(p.name for p in tmp_path.iterdir()) == ["boot.tgz", "boot.tgz.build.json",
                                                          "boot.tgz.manifest", "cache"]
    # the bootstrap is cached as a tarball: a second build reuses it, byte for byte
    [tarball] = (cache / "bootstrap").glob("*.tar")
    made = tarball.stat().st_mtime_ns
    mc.build(f"bootstrap:{suite}", tmp_path / "again.tgz", **options)  # type: ignore[arg-type]
    assert tarball.stat().st_mtime_ns == made and list((cache / "bootstrap").glob("*.tar")) \
        == [tarball]
    assert tar_members(tmp_path / "again.tgz").keys() == members.keys()  # the same tree again
    assert os.stat(out).st_size == res.size
