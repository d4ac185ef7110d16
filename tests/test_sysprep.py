"""sysprep(): every operation scrubs its items, honours keep=, and never leaves the root."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures import deep_tree, open_fds, paused_in_thread, rm_deep, tree_state

import maas_chroot as mc
from maas_chroot import rootfs
from maas_chroot.customise import FSTAB_HEADER, OPERATIONS, SysprepReport, sysprep
from maas_chroot.customise import scrubbing as sysprep_mod
from maas_chroot.customise.scrub import Scrub
from maas_chroot.errors import ChrootBusyError
from maas_chroot.sources import plans

PROXY = 'Acquire::http::Proxy "http://10.9.9.9:3128";\n'


def _w(root: Path, rel: str, data: str | bytes = "x\n", mode: int = 0o644) -> Path:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data.encode() if isinstance(data, str) else data)
    p.chmod(mode)
    return p


def plant(root: Path) -> None:
    """A small image with one or more items for every operation, and things that must stay."""
    _w(root, "etc/machine-id", "0123456789abcdef0123456789abcdef\n", 0o444)
    _w(root, "var/lib/dbus/machine-id", "0123456789abcdef0123456789abcdef\n")
    _w(root, "var/lib/cloud/instances/i-1/obj.pkl", b"\0" * 100)
    os.symlink("/var/lib/cloud/instances/i-1", root / "var/lib/cloud/instance")
    _w(root, "var/lib/cloud/data/status.json", "{}\n")
    _w(root, "var/lib/cloud/sem/config_scripts_per_once.once", "1\n")
    _w(root, "var/lib/cloud/seed/nocloud/user-data", "#cloud-config\n")  # stays
    _w(root, "var/log/cloud-init.log", "ci\n" * 10)
    _w(root, "var/log/cloud-init-output.log", "out\n")
    _w(root, "etc/netplan/50-cloud-init.yaml", "network: {version: 2}\n")
    _w(root, "etc/netplan/01-netcfg.yaml", "network: {version: 2}\n")  # stays
    _w(root, "etc/fstab", "LABEL=cloudimg-rootfs\t/\text4\tdiscard,errors=remount-ro\t0 1\n")
    _w(root, "etc/ssh/ssh_host_ed25519_key", "k" * 400, 0o600)
    _w(root, "etc/ssh/ssh_host_ed25519_key.pub", "p" * 90)
    _w(root, "etc/ssh/sshd_config", "PermitRootLogin no\n")  # stays
    _w(root, "var/lib/systemd/random-seed", b"\1" * 512, 0o600)
    _w(root, "etc/apt/apt.conf.d/90build-proxy", PROXY)
    _w(root, "etc/apt/apt.conf.d/80mixed", 'APT::Install-Recommends "0";\n' + PROXY)
    _w(root, "etc/apt/apt.conf.d/01autoremove", 'APT::NeverAutoRemove { "^linux"; };\n')
    _w(root, "var/lib/apt/lists/mirror_dists_x_InRelease", "r" * 1000)
    _w(root, "var/lib/apt/lists/lock", "")
    _w(root, "var/lib/apt/lists/partial/half", "h" * 10)
    _w(root, "var/cache/apt/archives/jq_1.6_amd64.deb", "d" * 2000)
    _w(root, "var/cache/apt/archives/lock", "")
    _w(root, "var/cache/apt/archives/partial/tree_2.1_amd64.deb", "t" * 30)
    _w(root, "var/cache/apt/pkgcache.bin", "b" * 300)
    _w(root, "var/cache/apt/srcpkgcache.bin", "s" * 200)
    _w(root, "tmp/build.sh", "echo hi\n")
    _w(root, "tmp/work/deep/file", "z" * 50)
    _w(root, "var/tmp/cache", "c" * 20)
    (root / "tmp").chmod(0o1777)
    _w(root, "var/log/syslog", "log line\n" * 100, 0o640)
    _w(root, "var/log/apt/history.log", "Start-Date: today\n")
    _w(root, "var/log/wtmp", b"\0" * 384, 0o664)
    _w(root, "var/log/empty.log", "")
    _w(root, "root/.bash_history", "apt-get install jq\n")
    _w(root, "root/.cache/pip/wheel", "w" * 70)
    _w(root, "root/.ssh/authorized_keys", "ssh-ed25519 AAAA build\n", 0o600)
    _w(root, "root/.bashrc", "# stays\n")
    _w(root, "etc/hostname", "buildhost\n", 0o755)  # what mmdebstrap copies from the host
    _w(root, "etc/os-release", 'PRETTY_NAME="Debian GNU/Linux 12"\nID=debian\n')
    _w(root, "etc/resolv.conf", "nameserver 10.9.9.9\n")  # the build host's, copied
    (root / "boot").mkdir(exist_ok=True)


def tree(root: Path) -> dict[str, tuple[str, bytes | str]]:
    """Every path below ``root`` (symlinks not followed) with its type and content."""
    out: dict[str, tuple[str, bytes | str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = "/" + str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir", "")
            else:
                out[rel] = ("file", p.read_bytes())
    return out


@pytest.fixture
def planted(tmp_path: Path) -> Path:
    root = tmp_path / "img"
    root.mkdir()
    plant(root)
    return root


def test_every_operation_scrubs_its_items(planted: Path) -> None:
    before = tree(planted)
    report = sysprep(planted, progress=False)
    after = tree(planted)
    r = planted

    assert (r / "etc/machine-id").read_bytes() == b""
    assert (r / "etc/machine-id").stat().st_mode & 0o777 == 0o444  # the file is kept
    assert not (r / "var/lib/dbus/machine-id").exists()
    for gone in ("var/lib/cloud/instance", "var/lib/cloud/instances", "var/lib/cloud/data",
                 "var/lib/cloud/sem", "var/log/cloud-init.log", "var/log/cloud-init-output.log",
                 "etc/netplan/50-cloud-init.yaml", "etc/ssh/ssh_host_ed25519_key",
                 "etc/ssh/ssh_host_ed25519_key.pub", "var/lib/systemd/random-seed",
                 "etc/apt/apt.conf.d/90build-proxy",
                 "var/lib/apt/lists/mirror_dists_x_InRelease", "var/lib/apt/lists/partial/half",
                 "var/cache/apt/archives/jq_1.6_amd64.deb",
                 "var/cache/apt/archives/partial/tree_2.1_amd64.deb",
                 "var/cache/apt/pkgcache.bin", "var/cache/apt/srcpkgcache.bin",
                 "tmp/build.sh", "tmp/work", "var/tmp/cache", "root/.bash_history",
                 "root/.cache", "root/.ssh"):
        assert not os.path.lexists(r / gone), gone
    for kept in ("var/lib/cloud/seed/nocloud/user-data", "etc/netplan/01-netcfg.yaml",
                 "etc/ssh/sshd_config", "etc/apt/apt.conf.d/01autoremove", "root/.bashrc"):
        assert after["/" + kept] == before["/" + kept], kept
    # lock files and partial/ directories stay, so apt keeps working
    for sane in ("var/lib/apt/lists/lock", "var/lib/apt/lists/partial",
                 "var/cache/apt/archives/lock", "var/cache/apt/archives/partial"):
        assert os.path.lexists(r / sane), sane
    assert (r / "tmp").is_dir() and (r / "tmp").stat().st_mode & 0o7777 == 0o1777
    assert (r / "var/tmp").is_dir()
    assert (r / "etc/fstab").read_text() == FSTAB_HEADER
    # what the distribution's cloud images ship, not what the build host leaked
    assert (r / "etc/hostname").read_text() == "debian\n"
    assert (r / "etc/hostname").stat().st_mode & 0o777 == 0o644
    assert (r / "etc/hosts").read_text() == sysprep_mod.HOSTS
    assert not os.path.lexists(r / "etc/resolv.conf")  # nothing in this image manages it
    assert any("resolv.conf" in n and "systemd-resolved" in n for n in report.notes)
    assert (r / "etc/apt/apt.conf.d/80mixed").read_text() == 'APT::Install-Recommends "0";\n'
    # logs are truncated, never deleted; mode kept
    for log in ("var/log/syslog", "var/log/apt/history.log", "var/log/wtmp", "var/log/empty.log"):
        assert (r / log).is_file() and (r / log).stat().st_size == 0, log
    assert (r / "var/log/syslog").stat().st_mode & 0o777 == 0o640

    # the report: every item with what it freed
    by_path = {i.path: i for i in report.items}
    assert by_path["/etc/machine-id"].action == "truncated"
    assert by_path["/etc/machine-id"].freed == 33
    assert by_path["/var/cache/apt/archives/jq_1.6_amd64.deb"].freed == 2000
    assert by_path["/var/log/syslog"].action == "truncated"
    assert by_path["/var/log/syslog"].freed == 900
    assert by_path["/tmp/work"].freed == 50  # a tree: the sum of its files
    assert by_path["/root/.cache"].freed == 70
    assert by_path["/etc/fstab"].action == "rewritten"
    assert "/var/log/empty.log" not in by_path  # nothing to free
    assert report.paths("ssh-hostkeys") == ("/etc/ssh/ssh_host_ed25519_key",
                                            "/etc/ssh/ssh_host_ed25519_key.pub")
    assert report.operation("ssh-hostkeys").freed == 490
    assert report.freed == sum(i.freed for i in report.items)
    assert [op.name for op in report.operations] == list(OPERATIONS)
    assert all(op.items for op in report.operations), [
        op.name for op in report.operations if not op.items]
    assert report.kept == ()
    # what MAAS needs: neither cloud-init nor netplan nor a kernel here
    assert not report.cloud_init and not report.netplan and report.kernels == ()
    assert any("cloud-init --version" in w for w in report.warnings)
    assert any("netplan info" in w for w in report.warnings)
    assert any("curtin" in n and "kernel" in n for n in report.notes)

    # a second run finds nothing left to do
    again = sysprep(planted, progress=False)
    assert again.items == ()
    assert tree(planted) == after


@pytest.mark.parametrize("op", OPERATIONS)
def test_keep_skips_exactly_that_operation(tmp_path: Path, op: str) -> None:
    full_root, kept_root = tmp_path / "a", tmp_path / "b"
    for r in (full_root, kept_root):
        r.mkdir()
        plant(r)
    before = tree(kept_root)
    full = sysprep(full_root, progress=False)
    part = sysprep(kept_root, keep=[op], progress=False)
    after = tree(kept_root)

    assert part.kept == (op,)
    assert part.operation(op).items == ()
    assert full.paths(op), f"{op} scrubbed nothing in the planted tree"
    # with cloud-init kept, its logs stay but "logs" truncates them like any other log
    log_truncated = set(part.paths("logs")) if op == "cloud-init" else set()
    created = {i.path for i in full.operation(op).items if i.action == "created"}
    for path in created:
        assert path not in after, f"{op} kept, yet {path} was created"
    for path in set(full.paths(op)) - created:
        assert path in after, f"{op} kept, yet {path} was removed"
        if path not in log_truncated:
            assert after[path] == before[path], f"{op} kept, yet {path} changed"
    if op == "cloud-init":
        assert log_truncated - set(full.paths("logs")) == {"/var/log/cloud-init.log",
                                                           "/var/log/cloud-init-output.log"}
    for other in OPERATIONS:
        if other != op and not (op == "cloud-init" and other == "logs"):
            assert part.paths(other) == full.paths(other), other
    assert "(kept)" in str(part)


def test_symlinks_never_lead_out_of_the_root(tmp_path: Path) -> None:
    host = tmp_path / "host"  # stands for the host: nothing here may change
    _w(host, "log/syslog", "host log\n")
    _w(host, "etc/hostname", "buildhost\n")
    _w(host, "etc/fstab", "/dev/sda1 / ext4 defaults 0 1\n")
    _w(host, "apt/99proxy", PROXY)
    _w(host, "tmp/keep-me", "host tmp\n")
    _w(host, "home/.ssh/authorized_keys", "host key\n")
    _w(host, "dbus-machine-id", "hostid\n")

    _w(host, "etc/hosts", "10.0.0.1 host\n")
    host_before = tree(host)
    host_stat = {p: os.lstat(host / p.lstrip("/")) for p in host_before}

    root = tmp_path / "a" / "b" / "img"  # deep enough for ../../.. to point at tmp_path
    _w(root, "etc/motd", "image\n")
    os.symlink(str(host / "etc/hostname"), root / "etc/hostname")  # replaced, never written
    os.symlink(str(host / "etc/hosts"), root / "etc/hosts")  # an image's own choice: kept
    _w(root, "usr/bin/env", "#!\n")
    os.symlink(host / "log", root / "var-log-target")  # a decoy, removed by nothing
    (root / "var").mkdir()
    os.symlink(str(host / "log"), root / "var/log")  # absolute, out of the image
    os.symlink("../../..", root / "tmp")  # .. chain: the image root / the host
    os.symlink("../../../../host/tmp", root / "var/tmp")
    os.symlink(str(host / "etc/hostname"), root / "etc/machine-id")
    os.symlink("/etc/hostname", root / "etc/machine-id.orig")  # image-internal, untouched
    (root / "var/lib/dbus").mkdir(parents=True)
    os.symlink("../../../../../../dbus-machine-id", root / "var/lib/dbus/machine-id")
    os.symlink(str(host / "etc/fstab"), root / "etc/fstab")
    (root / "etc/apt/apt.conf.d").mkdir(parents=True)
    os.symlink(str(host / "apt/99proxy"), root / "etc/apt/apt.conf.d/99proxy")
    os.symlink("../../../../../..", root / "etc/ssh")
    (root / "root").mkdir()
    os.symlink(str(host / "home/.ssh"), root / "root/.ssh")
    os.symlink(str(host / "home"), root / "root/.cache")
    (root / "var/lib/apt").mkdir(parents=True)
    os.symlink(str(host), root / "var/lib/apt/lists")
    (root / "var/lib/cloud").mkdir(parents=True)
    os.symlink(str(host), root / "var/lib/cloud/instance")
    os.symlink(str(host / "etc"), root / "var/lib/cloud/data")

    report = sysprep(root, progress=False)

    assert tree(host) == host_before
    for p, st in host_stat.items():
        now = os.lstat(host / p.lstrip("/"))
        assert (now.st_ino, now.st_size, now.st_mtime_ns) == \
               (st.st_ino, st.st_size, st.st_mtime_ns), p
    # /tmp -> ../../.. names the image root itself: its contents must not be cleared
    assert (root / "etc/motd").read_text() == "image\n"
    assert (root / "usr/bin/env").exists()
    assert not (root / "etc/hostname").is_symlink()
    assert (root / "etc/hostname").read_text() == "localhost\n"  # no os-release here
    assert os.readlink(root / "etc/hosts") == str(host / "etc/hosts")
    assert (root / "var-log-target").is_symlink()
    assert any(n.startswith("/tmp is a symlink") for n in report.notes)
    assert any(n.startswith("/var/log is a symlink") for n in report.notes)
    assert any(n.startswith("/var/lib/apt/lists is a symlink") for n in report.notes)
    # links that are themselves the item are removed as links, never followed
    for link in ("root/.ssh", "root/.cache", "var/lib/cloud/instance", "var/lib/cloud/data"):
        assert not os.path.lexists(root / link), link
    # a symlinked machine-id becomes an empty file; the dbus link is left (only files go)
    assert not (root / "etc/machine-id").is_symlink()
    assert (root / "etc/machine-id").read_bytes() == b""
    assert (root / "var/lib/dbus/machine-id").is_symlink()
    assert (root / "etc/machine-id.orig").is_symlink()
    assert (root / "etc/fstab").is_symlink()  # not rewritten through the link


def test_refuses_a_root_with_a_session_journal(planted: Path) -> None:
    (planted / rootfs.JOURNAL_NAME).write_text("{}")
    before = tree(planted)
    with pytest.raises(ChrootBusyError) as err:
        sysprep(planted, progress=False)
    assert "recover(" in str(err.value)
    assert str(planted) in str(err.value)
    assert tree(planted) == before


def test_rejects_unknown_operation_names(planted: Path) -> None:
    before = tree(planted)
    with pytest.raises(mc.SysprepError, match="ssh-keys") as err:
        sysprep(planted, keep=["ssh-keys"], progress=False)
    assert "ssh-hostkeys" in str(err.value)  # the hint lists the real names
    assert tree(planted) == before


@pytest.mark.root
def test_refuses_a_root_with_a_mount_below(planted: Path) -> None:
    target = planted / "var/tmp"
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(target)], check=True)
    try:
        (target / "inside-mount").write_text("x")
        with pytest.raises(mc.MountedError, match="mounted"):
            sysprep(planted, progress=False)
        assert (target / "inside-mount").exists()
    finally:
        subprocess.run(["umount", str(target)], check=True)
    assert (planted / "etc/machine-id").stat().st_size > 0  # nothing was done


def test_report_is_a_frozen_readable_value(planted: Path) -> None:
    report = sysprep(planted, keep=("logs",), progress=False)
    text = repr(report)
    assert text == str(report)
    assert text.startswith(f"SysprepReport({planted}): {len(report.items)} items")
    for name in OPERATIONS:
        assert f"  {name} " in text
    assert "logs" in text and "(kept)" in text
    assert "cloud-init: MISSING" in text and "kernel: none" in text
    assert "warning: cloud-init is not installed" in text
    assert "/etc/machine-id" in report.details()
    assert "... and" in report.details(limit=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.root = "/"  # type: ignore[misc]
    assert isinstance(report, SysprepReport)


def test_finds_kernel_cloud_init_and_netplan(tmp_path: Path) -> None:
    root = tmp_path / "img"
    _w(root, "usr/bin/cloud-init", "#!/usr/bin/python3\n", 0o755)
    _w(root, "usr/share/netplan/netplan.script", "#!/usr/bin/python3\n", 0o755)
    (root / "usr/sbin").mkdir(parents=True)
    os.symlink("../share/netplan/netplan.script", root / "usr/sbin/netplan")
    _w(root, "boot/vmlinuz-6.8.0-31-generic", "k")
    (root / "usr/lib/modules/6.8.0-31-generic").mkdir(parents=True)
    (root / "usr/lib/modules/6.8.0-35-generic").mkdir(parents=True)
    os.symlink("usr/lib", root / "lib")
    report = sysprep(root, progress=False)
    assert report.cloud_init and report.netplan
    assert report.warnings == ()
    assert report.kernels == ("6.8.0-31-generic", "6.8.0-35-generic")
    assert "kernel: 6.8.0-31-generic, 6.8.0-35-generic" in str(report)
    assert not any("kernel" in n for n in report.notes)


@pytest.mark.root
@pytest.mark.network
def test_sysprep_on_a_real_minbase(minbase_root: Path) -> None:
    root = minbase_root
    plant_real = {
        "etc/machine-id": "fedcba9876543210fedcba9876543210\n",
        "var/lib/cloud/instances/iid-1/user-data.txt": "#cloud-config\n",
        "var/lib/cloud/data/instance-id": "iid-1\n",
        "etc/ssh/ssh_host_rsa_key": "secret\n",
        "etc/apt/apt.conf.d/95proxy": PROXY,
        "var/lib/apt/lists/x_Packages": "Package: jq\n",
        "var/cache/apt/archives/jq.deb": "deb\n",
        "tmp/junk": "j\n",
        "root/.bash_history": "ls\n",
        "var/log/dpkg.log": "install jq\n",
    }
    for rel, data in plant_real.items():
        _w(root, rel, data)
    os.symlink("/etc/machine-id", root / "var/lib/dbus-machine-id-link")
    untouched = ["/var/lib/dpkg/status", "/etc/apt/sources.list", "/etc/passwd", "/usr/bin/apt"]
    before = {p: (root / p.lstrip("/")).read_bytes() for p in untouched}
    usr_before = sum(len(files) for _, _, files in os.walk(root / "usr"))

    report = sysprep(root, progress=False)
    print(report)

    assert (root / "etc/machine-id").read_bytes() == b""
    assert (root / "var/log/dpkg.log").stat().st_size == 0
    for rel in plant_real:
        if rel not in ("etc/machine-id", "var/log/dpkg.log"):
            assert not (root / rel).exists(), rel
    assert {p: (root / p.lstrip("/")).read_bytes() for p in untouched} == before
    assert sum(len(files) for _, _, files in os.walk(root / "usr")) == usr_before
    # mmdebstrap copied this machine's hostname and resolv.conf (mode 0755) and made no hosts
    assert (root / "etc/hostname").read_text() == "debian\n"
    assert (root / "etc/hostname").stat().st_mode & 0o777 == 0o644
    assert not os.path.lexists(root / "etc/resolv.conf")  # no systemd-resolved in a minbase
    assert (root / "etc/hosts").read_text() == sysprep_mod.HOSTS
    assert (root / "var/lib/apt/lists/lock").exists()
    assert (root / "var/lib/apt/lists/partial").is_dir()
    assert not report.cloud_init and report.kernels == ()  # a Debian minbase has neither
    assert sysprep(root, progress=False).items == ()


def test_sysprep_scrub_measures_and_removes_a_deep_tree(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "tmp").mkdir(parents=True)
    depth = 1500
    deep_tree(root / "tmp" / "deep", depth)
    size = sum(len(b"%d\n" % i) for i in range(depth))
    rootfd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    try:
        scrub = Scrub(str(root), rootfd)
        scrub.remove("/tmp/deep")
    finally:
        os.close(rootfd)
        rm_deep(root / "tmp" / "deep")
    assert [(i.path, i.action, i.freed) for i in scrub.items] == [("/tmp/deep", "removed", size)]
    assert os.listdir(root / "tmp") == []


@pytest.mark.root
def test_sysprep_truncates_logs_in_a_tree_deeper_than_the_recursion_limit(tmp_path: Path) -> None:
    from maas_chroot import sysprep

    root = tmp_path / "root"
    (root / "var/log").mkdir(parents=True)
    depth = 1500
    assert depth > sys.getrecursionlimit()
    deep_tree(root / "var/log/deep", depth)
    try:
        fds = open_fds()
        report = sysprep(root, progress=False)
        assert open_fds() == fds
        assert len(report.paths("logs")) == depth
        level = os.open(root / "var/log/deep", os.O_RDONLY | os.O_DIRECTORY)
        for _ in range(depth):
            assert os.stat("f", dir_fd=level).st_size == 0
            sub = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=level)
            os.close(level)
            level = sub
        os.close(level)
    finally:
        rm_deep(root / "var/log/deep")


@pytest.mark.root
def test_sysprep_and_copy_refuse_a_live_session(minbase_root: Path, tmp_path: Path) -> None:
    with mc.Chroot(minbase_root):
        before = tree_state(minbase_root)
        with pytest.raises(mc.ChrootBusyError, match="cannot start sysprep") as e:
            mc.sysprep(minbase_root, progress=False)
        assert f"pid {os.getpid()} (a chroot session)" in str(e.value)
        with pytest.raises(mc.ChrootBusyError, match="cannot start copy"):
            plans.copy_tree(minbase_root, tmp_path / "copy")
        assert tree_state(minbase_root) == before
        assert not (tmp_path / "copy").exists()


@pytest.mark.root
def test_a_session_cannot_start_while_sysprep_runs(minbase_root: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    with (paused_in_thread(monkeypatch, sysprep_mod._OPS, "machine-id",
                            lambda: mc.sysprep(minbase_root, progress=False)) as result,
          pytest.raises(mc.ChrootBusyError, match=r"in use by pid \d+ \(sysprep\)"),
          mc.Chroot(minbase_root)):
        pass
    assert isinstance(result[0], mc.SysprepReport)
    assert not (minbase_root / rootfs.JOURNAL_NAME).exists()
    assert not (minbase_root / "usr/sbin/policy-rc.d").exists()
    with mc.Chroot(minbase_root):  # the lock is free again
        pass
