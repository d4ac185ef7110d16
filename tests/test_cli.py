"""The maas-chroot CLI: argument parsing into build(), errors as one line + exit 1, and
end-to-end builds through ``python -m maas_chroot`` as a subprocess, checked with GNU tar."""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
from fixtures import REPO, assert_one_clear_error, curtin_extract, maas_login, run_cli, write_tgz
from servers.aptrepo import DebSpec, serve_proxy, serve_repo
from servers.maas import serve
from servers.tls import TestCA

from maas_chroot import chroot, cli, rootfs
from maas_chroot.chroot import manifest
from maas_chroot.maas import Upload

SEED = ("build focal --format root.tar.xz --upgrade --install emacs-nox --install jq "
        "--install tree -o focal-custom.tgz --upload custom/focal-custom "
        "--title 'Ubuntu 20.04 Custom Image'")


# --- parsing --------------------------------------------------------------------------------


def test_seed_one_liner_becomes_one_build_call(recorded_build: list[tuple[Any, ...]],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAAS_URL", "http://127.0.0.1:9/MAAS")
    monkeypatch.setenv("MAAS_API_KEY", "a:b:c")
    assert cli.main(shlex.split(SEED)) == 0
    [(source, output, spec, _)] = recorded_build
    assert (source, output) == ("focal", Path("focal-custom.tgz").absolute())
    assert spec.fmt == "root.tar.xz"
    assert spec.upgrade is True
    assert spec.packages == ("emacs-nox", "jq", "tree")
    assert spec.sysprep is True
    up = spec.upload
    assert isinstance(up, Upload)
    assert (up.name, up.title, up.architecture, up.force) == (
        "custom/focal-custom", "Ubuntu 20.04 Custom Image", None, False)  # arch: the image's
    assert up.client.url == "http://127.0.0.1:9/MAAS"


def test_customisation_flags_keep_their_order(recorded_build: list[tuple[Any, ...]],
                                              tmp_path: Path) -> None:
    script = tmp_path / "s.sh"
    script.write_text("#!/bin/sh\n")
    argv = ["build", "bootstrap:bookworm", "-o", str(tmp_path / "o.tgz"), "--run", "echo 1",
            "--script", str(script), "--run", "echo 2", "--install", "jq,tree curl",
            "--copy", f"{script}:/etc/x.sh", "--network", "none", "--no-sysprep",
            "--keep-rootfs", str(tmp_path / "keep"), "--apt-proxy", "http://127.0.0.1:3128"]
    assert cli.main(argv) == 0
    [(_, _, spec, _)] = recorded_build
    assert spec.commands == ("echo 1", script, "echo 2")
    assert spec.packages == ("jq", "tree", "curl")
    assert spec.files == (("/etc/x.sh", str(script)),)
    assert (spec.network, spec.sysprep, spec.upload) == ("none", False, None)
    assert spec.keep_rootfs == tmp_path / "keep"
    assert spec.apt_proxy == "http://127.0.0.1:3128"


def test_upload_without_credentials_fails_before_building(
        recorded_build: list[tuple[Any, ...]], capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MAAS_URL", "MAAS_API_KEY", "MAAS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    assert cli.main(["build", "noble", "-o", "x.tgz", "--upload", "custom/x"]) == 1
    err = capsys.readouterr().err
    assert "needs MAAS credentials" in err and "hint: " in err
    assert recorded_build == []


def test_upload_flags_reach_the_upload(recorded_build: list[tuple[Any, ...]],
                                       maas_ca: TestCA) -> None:
    argv = ["build", "noble", "-o", "x.tgz", "--upload", "custom/x", "--replace", "--wait",
            "--wait-timeout", "60", "--chunk-size", "512K", "--base-image", "ubuntu/noble",
            "--maas-url", "https://127.0.0.1:9/MAAS", "--api-key", "a:b:c",
            "--cacerts", str(maas_ca.ca)]
    assert cli.main(argv) == 0
    [(_, _, spec, _)] = recorded_build
    up = spec.upload
    assert isinstance(up, Upload)
    assert (up.name, up.replace, up.wait, up.wait_timeout, up.chunk_size, up.base_image) == (
        "custom/x", True, True, 60.0, 512 << 10, "ubuntu/noble")
    assert up.client._trust.verify == str(maas_ca.ca)
    assert cli.main(["build", "noble", "-o", "x.tgz", "--upload", "x", "--chunk-size",
                     "lots", "--maas-url", "http://127.0.0.1:9/MAAS", "--api-key", "a:b:c"]) == 1


def _image(path: Path) -> Path:
    return write_tgz(path, [("etc/lsb-release", b"DISTRIB_ID=Ubuntu\nDISTRIB_CODENAME=noble\n")])


def test_images_upload_and_delete_verbs_with_a_profile_and_with_url_and_key(
        tmp_path: Path, maas_ca: TestCA, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    image = _image(tmp_path / "img.tgz")
    with serve(tmp_path / "maas", tls=(maas_ca.cert, maas_ca.key), regions=2,
               sync_seconds=1.0) as fake:
        maas_login(tmp_path / "home/.maascli.db", "admin", fake.url, fake.api_key,
                   cacerts=maas_ca.ca)
        url_key = ["--maas-url", fake.url, "--api-key", fake.api_key,
                   "--cacerts", str(maas_ca.ca)]
        assert cli.main(["images", "--profile", "admin"]) == 0
        assert capsys.readouterr().out.strip() == "no custom images"
        assert cli.main(["upload", str(image), "--name", "custom/one", "--profile", "admin",
                         "--no-progress"]) == 0
        err = capsys.readouterr().err
        assert "syncing to 2 region controllers" in err
        assert "custom/one is uploaded and MAAS is copying it" in err and "--wait" in err
        assert cli.main(["upload", str(image), "--name", "two", *url_key, "--no-progress",
                         "--architecture", "arm64/generic", "--wait"]) == 0
        assert "is uploaded and MAAS is copying" not in capsys.readouterr().err
        assert cli.main(["images", *url_key]) == 0
        table = capsys.readouterr().out.splitlines()
        assert table[0].split()[:4] == ["ID", "NAME", "ARCHITECTURE", "BASE"]
        rows = [line.split() for line in table[1:]]
        assert [(r[1], r[2], r[3]) for r in rows] == [
            ("custom/one", "amd64/generic", "ubuntu/noble"),
            ("custom/two", "arm64/generic", "ubuntu/noble")]
        assert all("complete" in r for r in rows)
        assert cli.main(["delete", "custom/one", "--profile", "admin"]) == 0
        assert capsys.readouterr().out.startswith("deleted custom/one amd64/generic")
        rid = fake.resource_by_name("two").id
        assert cli.main(["delete", "--id", str(rid), *url_key]) == 0
        assert f"(boot resource {rid})" in capsys.readouterr().out
        assert fake.resources == {}
        assert cli.main(["delete", "custom/one", "--profile", "admin"]) == 1
        assert "MAAS has no custom image custom/one" in capsys.readouterr().err
        assert cli.main(["delete", "--profile", "admin"]) == 1
        assert "delete needs NAME or --id" in capsys.readouterr().err


def test_an_untrusted_maas_is_one_clear_cli_error(tmp_path: Path, maas_ca: TestCA) -> None:
    with serve(tmp_path / "maas", tls=(maas_ca.cert, maas_ca.key)) as fake:
        proc = run_cli("images", "--maas-url", fake.url, "--api-key", fake.api_key)
    line = assert_one_clear_error(proc, "TLS certificate is not trusted", "--cacerts FILE")
    assert fake.url in line


@pytest.mark.parametrize("verb", ["build", "fetch", "extract", "shell", "pack", "boot-test",
                                  "upload", "images", "delete", "recover"])
def test_every_verb_has_help_with_examples(verb: str, capsys: pytest.CaptureFixture[str]
                                           ) -> None:
    assert cli.main([verb, "--help"]) == 0
    out = capsys.readouterr().out
    assert "examples:" in out
    assert f"maas-chroot {verb} " in out.split("examples:", 1)[1]


def test_usage_error_is_one_line_and_exit_1() -> None:
    proc = run_cli("build", "noble")  # no -o
    assert_one_clear_error(proc, "-o/--output")


# --- bad input through the real CLI -----------------------------------------------------


@pytest.mark.root
def test_boot_test_flags_reach_build(recorded_build: list[tuple[Any, ...]],
                                     tmp_path: Path) -> None:
    argv = ["build", "noble", "-o", str(tmp_path / "o.tgz"), "--boot-test", "--boots", "2",
            "--kernel", "linux-generic", "--accel", "tcg", "--boot-timeout", "600"]
    assert cli.main(argv) == 0
    [(_, _, spec, _)] = recorded_build
    assert spec.boot_test == {"boots": 2, "kernel": "linux-generic", "accel": "tcg",
                              "timeout": 600.0}
    assert cli.main(["build", "noble", "-o", str(tmp_path / "o.tgz"), "--boot-test"]) == 0
    assert recorded_build[-1][2].boot_test == {}  # on, with boot_test()'s defaults
    assert cli.main(["build", "noble", "-o", str(tmp_path / "o.tgz")]) == 0
    assert recorded_build[-1][2].boot_test is False


@pytest.mark.root
def test_boot_test_of_something_curtin_cannot_deploy_is_one_clear_line(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tgz"
    junk.write_text("not an image\n")
    proc = run_cli("boot-test", str(junk))
    assert_one_clear_error(proc, "cannot boot-test", "not a tar archive", "junk.tgz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.tgz"]


def test_bad_source_is_one_clear_line(tmp_path: Path) -> None:
    proc = run_cli("build", str(tmp_path / "missing.tar.xz"), "-o", str(tmp_path / "o.tgz"))
    assert_one_clear_error(proc, "image source not found", "missing.tar.xz")
    proc = run_cli("build", "no-such-release", "-o", str(tmp_path / "o.tgz"))
    assert_one_clear_error(proc, "no-such-release")
    proc = run_cli("build", "http://127.0.0.1:9/x.tar.xz", "-o", str(tmp_path / "o.tgz"))
    assert_one_clear_error(proc, "without a way to verify it", "--sha256")
    proc = run_cli("build", "bootstrap:No-Such", "-o", str(tmp_path / "o.tgz"))
    assert_one_clear_error(proc, "not a valid bootstrap source")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.root
def test_reserved_upload_name_fails_before_any_network(tmp_path: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        port = listener.getsockname()[1]
        proc = run_cli("build", "noble", "-o", str(tmp_path / "o.tgz"), "--upload",
                       "ubuntu/noble", "--maas-url", f"http://127.0.0.1:{port}/MAAS",
                       "--api-key", "a:b:c")
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody called MAAS
    assert_one_clear_error(proc, "ubuntu/noble")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.root
def test_not_root_gets_a_clear_message(tmp_path: Path) -> None:
    # The interpreter's site-packages live under /root (mode 0700), so the child imports
    # everything first and only then drops to nobody, before main() runs.
    code = ("import os, sys; import maas_chroot, maas_chroot.cli as c; "
            "os.setgroups([]); os.setgid(65534); os.setuid(65534); "
            "sys.exit(c.main(sys.argv[1:]))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAAS_")}
    env["PYTHONPATH"] = str(REPO)
    for verb in (["build", "noble", "-o", "/tmp/x.tgz"], ["shell", str(tmp_path)],
                 ["extract", "x.tar", str(tmp_path / "d")]):
        proc = subprocess.run([sys.executable, "-c", code, *verb], capture_output=True,
                              text=True, env=env, cwd="/", check=False)
        line = assert_one_clear_error(proc, "must run as root", "sudo")
        assert line.startswith(f"maas-chroot: error: `maas-chroot {verb[0]}`")


# --- end to end ---------------------------------------------------------------------------


def _member(tar_path: Path, name: str) -> tarfile.TarInfo:
    with tarfile.open(tar_path) as tar:
        return tar.getmember(name)


@pytest.mark.root
@pytest.mark.network
@pytest.mark.slow
def test_build_local_archive_install_upload_end_to_end(minbase_tar: Path,
                                                       tmp_path: Path) -> None:
    out = tmp_path / "custom.tgz"
    unpacked = tmp_path / "deployed"
    hello = DebSpec("hello-mc", files={"/usr/bin/hello-mc": "#!/bin/sh\necho hi\n"})
    with serve(tmp_path / "maas") as fake, serve_proxy() as proxy, \
            serve_repo(tmp_path / "repo", [hello]) as repo:
        proc = run_cli("build", str(minbase_tar), "--install", "jq", "-o", str(out),
                       "--apt-source", f"deb {repo.url} {repo.suite} {repo.component}",
                       "--apt-key", str(repo.key_asc), "--install", "hello-mc",
                       "--run", "echo 0123456789abcdef0123456789abcdef > /etc/machine-id",
                       "--run", "mkdir -p /etc/ssh && echo k > /etc/ssh/ssh_host_ed25519_key",
                       "--apt-proxy", proxy.url, "--workdir", str(tmp_path),
                       "--cache-dir", str(tmp_path / "cache"),  # no debs from another run
                       "--upload", "custom/bookworm-jq", "--title", "Bookworm with jq",
                       env={"MAAS_URL": fake.url, "MAAS_API_KEY": fake.api_key})
        assert proc.returncode == 0, proc.stderr
        print(proc.stdout)  # the BuildResult: time per step (pytest -s shows it)
        assert any(p.endswith(".deb") and "/jq_" in p for p in proxy.log), proxy.log
        assert any("hello-mc" in p for p in repo.log), repo.log
        stored = fake.path("custom/bookworm-jq")
        assert stored.read_bytes() == out.read_bytes()
        posts = fake.requests("POST")
        assert posts, fake.log
    rootfs.remove_tree(tmp_path / "repo")
    # the work dir is gone (only our output, the MAAS store and the unpack target remain)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "cache", "custom.tgz", "custom.tgz.build.json", "custom.tgz.manifest", "maas"]
    assert "install" in proc.stdout and "pack" in proc.stdout and "upload" in proc.stdout
    try:
        curtin_extract(stored, unpacked)
        assert os.access(unpacked / "usr/bin/jq", os.X_OK)
        assert (unpacked / "usr/bin/hello-mc").read_text() == "#!/bin/sh\necho hi\n"
        assert list((unpacked / "etc/apt/sources.list.d").glob("*.sources"))
        assert (unpacked / "etc/machine-id").read_bytes() == b""
        assert (unpacked / "etc/ssh").is_dir()
        assert list((unpacked / "etc/ssh").glob("ssh_host_*")) == []
        # the minbase carries this machine's resolv.conf (mmdebstrap copies it); the session
        # put it back as it was, then sysprep removed it: nothing in a minbase manages it
        assert _member(minbase_tar, "./etc/resolv.conf").isfile()
        assert not os.path.lexists(unpacked / "etc/resolv.conf")
        assert (unpacked / "etc/hostname").read_text() == "debian\n"
        port = proxy.url.rsplit(":", 1)[1].strip("/")
        for conf in (unpacked / "etc/apt").rglob("*"):
            if conf.is_file():
                text = conf.read_text(errors="replace")
                assert port not in text and "::Proxy" not in text, conf
        assert not (unpacked / "usr/sbin/policy-rc.d").exists()
        assert not (unpacked / rootfs.JOURNAL_NAME).exists()
    finally:
        rootfs.remove_tree(unpacked)


@pytest.mark.root
@pytest.mark.network
def test_missing_package_fails_naming_the_step_with_apts_error(minbase_tar: Path,
                                                               tmp_path: Path) -> None:
    keep = tmp_path / "keep"
    proc = run_cli("build", str(minbase_tar), "--install", "no-such-package-zzz", "-o",
                   str(tmp_path / "o.tgz"), "--workdir", str(tmp_path), "--keep-rootfs",
                   str(keep), "--no-progress")
    try:
        line = assert_one_clear_error(proc, "no-such-package-zzz", "Unable to locate package",
                                      f"kept in {keep}")
        assert "'install'" in line
        assert not (tmp_path / "o.tgz").exists()
        # the kept rootfs is left clean: resolv.conf and policy-rc.d restored, no journal
        assert (keep / "usr/bin/apt-get").exists()
        assert not (keep / rootfs.JOURNAL_NAME).exists()
        assert not (keep / "usr/sbin/policy-rc.d").exists()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["keep"]
    finally:
        rootfs.remove_tree(keep)


@pytest.mark.root
@pytest.mark.network
@pytest.mark.slow
def test_seed_procedure_against_a_local_cloud_images_site(minbase_tar: Path,
                                                          tmp_path: Path) -> None:
    """The seed one-liner, verbatim but for emacs-nox (large) and the site's mirror and key:
    release -> signed SHA256SUMS -> root.tar.xz -> upgrade + install -> TGZ -> MAAS."""
    from servers.cloudimages import serve_cloud_images

    argv = shlex.split(SEED.replace("--install emacs-nox ", ""))
    with serve_cloud_images(tmp_path, rootfs_tar=minbase_tar, releases=("focal",),
                            formats=("root.tar.xz",)) as site, serve(tmp_path / "maas") as fake:
        proc = run_cli(*argv, "--mirror", site.mirror, "--keyring", str(site.keyring),
                       "--cache-dir", str(tmp_path / "cache"), "--workdir", str(tmp_path),
                       "--no-progress", cwd=tmp_path,
                       env={"MAAS_URL": fake.url, "MAAS_API_KEY": fake.api_key})
        assert proc.returncode == 0, proc.stderr
        print(proc.stdout)
        fetched = [e.path for e in site.log if e.status == 200]
        assert any(p.endswith("/SHA256SUMS.gpg") for p in fetched), site.log.lines()
        assert any(p.endswith("-root.tar.xz") for p in fetched), site.log.lines()
        out = tmp_path / "focal-custom.tgz"
        assert fake.path("custom/focal-custom").read_bytes() == out.read_bytes()
        [res] = [r for r in fake.resources.values() if r.name == "focal-custom"]
        assert res.title == "Ubuntu 20.04 Custom Image"
        assert res.base_image == "ubuntu/focal"
    steps = proc.stdout
    for step in ("fetch", "extract", "update", "upgrade", "install", "sysprep", "pack",
                 "upload"):
        assert f"\n  {step} " in steps, steps
    with tarfile.open(out) as tar:
        names = set(tar.getnames())
    assert {"./usr/bin/jq", "./usr/bin/tree"} <= names


@pytest.mark.root
def test_verbs_extract_shell_pack_upload_recover_fetch(minbase_tar: Path, tmp_path: Path) -> None:
    from servers.cloudimages import serve_cloud_images

    root, out = tmp_path / "root", tmp_path / "img.tgz"
    proc = run_cli("extract", str(minbase_tar), str(root), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    try:
        assert proc.stdout.strip() == str(root)
        proc = run_cli("shell", str(root), "--network", "none", "--", "sh", "-c",
                       "echo from-shell > /etc/motd; exit 7")
        assert proc.returncode == 7, proc.stderr  # the command's own exit code
        assert (root / "etc/motd").read_text() == "from-shell\n"
        (root / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
        proc = run_cli("pack", str(root), str(out), "--sysprep", "--level", "1", "-q")
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split()[0] == str(out)
        with chroot.Chroot(root) as ch:  # pack wrote the manifest: dpkg-query's, in the image
            listed = ch.run(list(manifest.QUERY), capture=True).stdout
        assert manifest.path_for(out).read_text() == listed and "\ndpkg\t" in listed
        assert proc.stdout.splitlines()[1].startswith(f"{out}.manifest  ")
        assert (root / "etc/machine-id").read_bytes() == b""
        proc = run_cli("recover", str(root))
        assert (proc.returncode, proc.stdout.strip()) == (0, f"{root}: nothing to recover")
        with serve(tmp_path / "maas") as fake:
            proc = run_cli("upload", str(out), "--name", "verbs", "--maas-url", fake.url,
                           "--api-key", fake.api_key, "--title", "Verbs")
            assert proc.returncode == 0, proc.stderr
            assert fake.path("custom/verbs").read_bytes() == out.read_bytes()
        assert "name='verbs'" in proc.stdout
    finally:
        rootfs.remove_tree(root)
    with serve_cloud_images(tmp_path) as site:
        proc = run_cli("fetch", "noble", "--mirror", site.mirror, "--keyring",
                       str(site.keyring), "--cache-dir", str(tmp_path / "cache"))
        assert proc.returncode == 0, proc.stderr
        path = Path(proc.stdout.strip())
        assert path.name == "ubuntu-24.04-server-cloudimg-amd64.squashfs"
        assert path.is_relative_to(tmp_path / "cache")
        proc = run_cli("fetch", "noble", "--mirror", site.mirror, "--keyring",
                       str(site.other_keyring), "--cache-dir", str(tmp_path / "cache2"))
        assert_one_clear_error(proc, "signature")
