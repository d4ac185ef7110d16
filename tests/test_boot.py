"""boot_test(): real deployments onto sparse disks and real QEMU boots (TCG here).

One deployable Debian image is bootstrapped once per machine from this machine's
own mirror (see fixtures.BOOT_PACKAGES), built into a TGZ with mc.build once per
session, and booted twice at once; the broken images are variants of it whose
failures show early (a panic, a missing init) or before any boot.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from fixtures import BOOT_PACKAGES, CACHE, REPO, build_minbase, qemu_processes, scratch_files
from servers.maas import serve

import maas_chroot as mc
from maas_chroot.boot import console, guest
from maas_chroot.boot.report import BootRun
from maas_chroot.boot.seed import Seed

# --- what needs no VM ------------------------------------------------------------------------


@pytest.mark.parametrize(("line", "reason"), [
    ("[    4.66] VFS: Unable to mount root fs on unknown-block(0,0)", "no-root-fs"),
    ("[    4.66] Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)",
     "no-root-fs"),
    ("Target filesystem doesn't have requested /sbin/init.", "no-init"),
    ("[    1.2] Kernel panic - not syncing: No working init found.", "no-init"),
    ("ALERT!  UUID=1234 does not exist.  Dropping to a shell!", "initramfs-shell"),
    ("You are in emergency mode. After logging in, type \"journalctl -xb\"", "emergency"),
    ("[   2.0] Kernel panic - not syncing: Fatal exception", "kernel-panic"),
])
def test_fatal_console_lines_give_their_reason(line: str, reason: str) -> None:
    found = console.fatal(line)
    assert found is not None and found.reason == reason
    assert found.what and found.hint


def test_console_timestamps_milestones_and_quotes() -> None:
    c = console.Console()
    c.feed(b"\x1b[0;32mLinux version 6.1.0-28-amd64\r\nRun /init as init pro", 1.5)
    c.feed(b"cess\nWelcome to \x1b[1mDebian GNU/Linux 12 (bookworm)\x1b[0m!\nok\n", 9.0)
    c.feed(b"[  12.1] VFS: Unable to mount root fs on unknown-block(0,0)\ntail", 12.5)
    c.flush(13.0)
    assert c.milestones == {"kernel": 1.5, "initramfs": 9.0, "userspace": 9.0}
    assert c.failure is not None and c.failure.reason == "no-root-fs"
    assert c.quote(around=c.failure_line)[-2].endswith("unknown-block(0,0)")
    assert c.lines[-1] == (13.0, "tail")
    assert "\x1b" not in c.text()


def test_images_curtin_cannot_deploy_are_refused_with_a_hint(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not an image\n")
    plain = tmp_path / "root.tar"
    with tarfile.open(plain, "w") as tar:
        tar.add(text, "etc/motd")
    zst = tmp_path / "root.tar.zst"
    subprocess.run(["zstd", "-q", "-o", str(zst), str(plain)], check=True)
    cases = {text: "not a tar", plain: "uncompressed tar", zst: "zstd tar, which curtin "
             "cannot unpack", tmp_path / "missing.tgz": "no such file"}
    for path, words in cases.items():
        with pytest.raises(mc.ArchiveError, match=words) as err:
            mc.boot_test(path)
        assert err.value.path == str(path) and err.value.hint


def test_the_seed_says_what_maas_would() -> None:
    a, b = Seed.fresh(1), Seed.fresh(2)
    assert a.mac != b.mac and a.instance_id != b.instance_id and a.ssh_key != b.ssh_key
    files = a.files()
    assert set(files) == {"meta-data", "user-data", "network-config"}
    assert files["user-data"].startswith(b"#cloud-config\n")
    assert a.ssh_key.encode() in files["user-data"] and guest.USER.encode() in files["user-data"]
    assert a.mac.encode() in files["network-config"] and b"dhcp4" in files["network-config"]


def test_a_run_without_a_new_identity_or_a_report_is_a_problem(tmp_path: Path) -> None:
    seed = Seed.fresh(1)
    silent = BootRun(index=1, seed=seed, console_log=tmp_path / "c.log", milestones={},
                     guest={}, disk_machine_id="", disk_host_keys=(), timed_out=True,
                     failure_lines=("[  30.0] Starting something...",))
    assert [p.reason for p in silent.problems()] == ["timeout"]
    assert "Starting something" in silent.problems()[0].message


# --- real deployments and boots ---------------------------------------------------------------

LOCALE = "locale: C.UTF-8\n"  # cloud-init 22.4's cc_locale fails on bookworm (cloud-init#4195)


@pytest.fixture(scope="session")
def booted_build(tmp_path_factory: pytest.TempPathFactory) -> mc.BuildResult:
    """A deployable Debian image built with mc.build from a bootstrapped tree, and boot-tested
    by the build itself, twice at once (once per session)."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    base = build_minbase(CACHE, include=BOOT_PACKAGES)
    out = tmp_path_factory.mktemp("boot") / "debian-boot.tgz"
    cfg = out.parent / "locale.cfg"
    cfg.write_text(LOCALE)
    logs = out.parent / "logs"
    logs.mkdir()
    return mc.build(base, out, files={"/etc/cloud/cloud.cfg.d/99-locale.cfg": cfg},
                    progress=False, workdir=out.parent,
                    boot_test={"boots": 2, "log_dir": logs})


@pytest.fixture(scope="session")
def boot_image(booted_build: mc.BuildResult) -> Path:
    return booted_build.output


def variant(good: Path, name: str, *, drop: tuple[str, ...] = (),
            add: dict[str, str] | None = None) -> Path:
    """``good`` with members dropped (GNU tar --delete) and files added; gzip -1."""
    plain = good.with_name(f"{name}.tar")
    with open(plain, "wb") as f:
        subprocess.run(["pigz", "-dc", str(good)], stdout=f, check=True)
    names = subprocess.run(["tar", "-tf", str(plain)], capture_output=True, text=True,
                           check=True).stdout.splitlines()
    gone = [n for n in names if any(n == d or n.startswith(d + "-") for d in drop)]
    if gone:
        subprocess.run(["tar", "--delete", "-f", str(plain), *gone], check=True)
    if add:
        extra = good.with_name(f"{name}.add")
        for rel, text in add.items():
            (extra / rel).parent.mkdir(parents=True, exist_ok=True)
            (extra / rel).write_text(text)
        subprocess.run(["tar", "--numeric-owner", "--owner=0", "--group=0", "-rf", str(plain),
                        "-C", str(extra), *(f"./{r}" for r in add)], check=True)
    subprocess.run(["pigz", "-1", "-f", str(plain)], check=True)
    out = good.with_name(f"{name}.tgz")
    plain.with_suffix(".tar.gz").rename(out)
    return out


@pytest.mark.root
@pytest.mark.network
@pytest.mark.slow
@pytest.mark.vm
def test_a_good_image_boots_twice_with_two_identities(booted_build: mc.BuildResult) -> None:
    report = booted_build.boot
    assert report is not None
    print(report)
    assert report.ok, report
    assert [s for s, _ in booted_build.steps][-3:] == ["pack", "boot-test", "cleanup"]
    assert "boot test OK: 2 boot(s)" in repr(booted_build)
    assert [c.verdict for c in report.late_commands] == [None, None]
    assert len(report.runs) == 2
    one, two = report.runs
    assert one.machine_id != two.machine_id and len(set(report.machine_ids)) == 2
    assert set(one.host_keys).isdisjoint(two.host_keys)
    for run in report.runs:
        assert run.guest["state"] == "running" and run.failed_units == ()
        assert run.cloud_init["status"] == "done" and run.cloud_init_errors == ()
        assert run.disk_machine_id == run.machine_id and len(run.machine_id or "") == 32
        assert run.address is not None and run.address.startswith("10.0.2.")
        assert run.guest["hostname"] == run.seed.hostname
        assert run.seed.ssh_key in str(run.guest["user_keys"]) and run.guest["runcmd"]
        assert "ssh_host_ed25519_key" in run.disk_host_keys
        ms = run.milestones
        assert 0 < ms["kernel"] < ms["userspace"] < ms["cloud-init"] < ms["power-off"]
        assert run.console_log.read_text().count("Linux version") == 1
    assert "every deployed machine is unique" in repr(report)
    assert "NoCloud seed stands in for MAAS's datasource" in repr(report)
    # only the logs are left: no disk, no staging tree in the work dir
    logs = one.console_log.parent
    assert sorted(p.name for p in logs.iterdir()) == [
        f"debian-boot.tgz.boot-{i}.{ext}" for i in (1, 2) for ext in ("json", "log")]
    assert sorted(p.name for p in booted_build.output.parent.iterdir()) == [
        "debian-boot.tgz", "debian-boot.tgz.build.json", "debian-boot.tgz.manifest",
        "locale.cfg", "logs"]


@pytest.mark.root
@pytest.mark.network
@pytest.mark.slow
@pytest.mark.vm
@pytest.mark.parametrize(("name", "drop", "add", "reason", "quoted"), [
    ("no-init", ("./usr/sbin/init", "./sbin/init"), None, "no-init",
     "doesn't have requested /sbin/init"),
    ("no-initramfs", ("./usr/sbin/update-initramfs", "./boot/initrd.img"), None, "curtin",
     "VFS: Unable to mount root fs"),
    ("baked-id", ("./etc/machine-id",), {"etc/machine-id": "5dd3ea6f87e94c3a8f7e2c1b0a9d8e7f\n"},
     "not-unique", None),
])
def test_broken_images_fail_with_the_reason(boot_image: Path, tmp_path: Path, name: str,
                                             drop: tuple[str, ...], add: dict[str, str] | None,
                                             reason: str, quoted: str | None) -> None:
    image = variant(boot_image, name, drop=drop, add=add)
    with pytest.raises(mc.BootTestError) as err:
        mc.boot_test(image, workdir=tmp_path, log_dir=tmp_path, progress=False,
                     fail_fast=name != "no-initramfs", timeout=240)
    e = err.value
    print(e)
    assert e.reason == reason, e
    report = e.report
    assert isinstance(report, mc.BootReport) and not report.ok
    if quoted is not None:
        text = "\n".join(r.console_log.read_text() for r in report.runs)
        assert quoted in text
        assert any(quoted in line for line in e.lines) or quoted in str(e.report)
    if name == "baked-id":
        assert report.runs == ()  # a baked id fails before the first boot
        assert "5dd3ea6f87e94c3a8f7e2c1b0a9d8e7f" in e.message
    if name == "no-initramfs":
        assert report.runs[0].failure is not None
        assert report.runs[0].failure.reason == "no-root-fs"


@pytest.mark.root
@pytest.mark.network
@pytest.mark.slow
def test_no_kernel_and_no_way_to_get_one_and_build_uploads_nothing(minbase_tar: Path,
                                                                    tmp_path: Path) -> None:
    out = tmp_path / "nokernel.tgz"
    with serve(tmp_path / "maas") as fake:
        client = mc.MaasClient(fake.url, fake.api_key)
        with pytest.raises(mc.BuildError) as failed:
            mc.build(minbase_tar, out, commands=["rm -f /usr/bin/apt-get"], progress=False,
                     workdir=tmp_path, boot_test=True,
                     upload={"client": client, "name": "custom/nokernel"})
        assert fake.log == []  # a failing image is never uploaded: not even a request
    assert failed.value.step == "boot-test"
    err = failed.value.__cause__
    assert isinstance(err, mc.BootTestError) and err.reason == "no-kernel"
    assert "no apt-get" in err.message and "linux-image-amd64" in (err.hint or "")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["maas", "nokernel.tgz"]


@pytest.mark.root
@pytest.mark.network
@pytest.mark.slow
@pytest.mark.vm
def test_sigkill_mid_boot_leaves_nothing(boot_image: Path, tmp_path: Path) -> None:
    image = variant(boot_image, "killed", drop=("./usr/sbin/update-initramfs",))
    work = tmp_path / "work"
    work.mkdir()
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True,
                           check=True).stdout
    code = ("import maas_chroot as mc, sys; mc.boot_test(sys.argv[1], workdir=sys.argv[2], "
            "log_dir=sys.argv[2], progress=False, check=False, fail_fast=False)")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", code, str(image), str(work)], env=env,
                            stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not qemu_processes(proc.pid) and time.monotonic() < deadline:
            assert proc.poll() is None, "boot_test ended before QEMU started"
            time.sleep(0.1)
        assert qemu_processes(proc.pid), "QEMU never started"
        time.sleep(0.5)  # mid-boot: QEMU runs the guest
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + 10
    while qemu_processes(using=proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert qemu_processes(using=proc.pid) == []  # QEMU died with its caller
    assert subprocess.run(["losetup", "-a"], capture_output=True, text=True,
                          check=True).stdout == loops
    assert [line for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if str(tmp_path) in line] == []
    assert os.listdir(work) == []  # no staging tree, no disk, no seed: all unnamed or gone
    assert scratch_files(work) == []  # and nothing holds one open
