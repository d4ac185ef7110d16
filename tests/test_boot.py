"""boot_test(): real deployments onto sparse disks and real QEMU boots (TCG here).

One deployable Debian image is bootstrapped once per machine from this machine's
own mirror (see fixtures.BOOT_PACKAGES), built into a TGZ with mc.build once per
session, and booted twice at once; the broken images are variants of it whose
failures show early (a panic, a missing init) or before any boot.
"""

from __future__ import annotations

import gzip
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures import (
    BOOT_PACKAGES,
    CACHE,
    REPO,
    build_minbase,
    processes_naming,
    qemu_processes,
    scratch_files,
)
from servers.maas import serve

import maas_chroot as mc
from maas_chroot import rootfs
from maas_chroot.boot import console, deploy, guest, qemu, scratch
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


GOOD_ID = "0123456789abcdef0123456789abcdef"


def guest_report(seed: Seed, **changes: object) -> dict[str, object]:
    """What the reporter of a good first boot sends for ``seed``, with ``changes``."""
    good: dict[str, object] = {
        "state": "running", "failed_units": [], "cloud_init": {"status": "done", "errors": []},
        "cloud_init_rc": 0, "ipv4": ["2: eth0    inet 10.0.2.15/24 brd 10.0.2.255"],
        "ssh_host_keys": [f"256 SHA256:{seed.instance_id}ed25519 root@{seed.hostname} (ED25519)"],
        "hostname": seed.hostname, "machine_id": GOOD_ID, "user": guest.USER,
        "user_keys": seed.ssh_key, "runcmd": "2026-12-01T00:00:00Z"}
    return {**good, **changes}


def boot_run(seed: Seed, index: int = 1, *, disk_id: str = GOOD_ID,
             **changes: object) -> BootRun:
    return BootRun(index=index, seed=seed, console_log=Path(f"/nonexistent/boot-{index}.log"),
                   milestones={}, guest=guest_report(seed, **changes), disk_machine_id=disk_id,
                   disk_host_keys=("ssh_host_ed25519_key",), returncode=0)


def test_a_good_guest_report_has_no_problem() -> None:
    seed = Seed.fresh(1)
    assert boot_run(seed).problems() == []
    # cloud-init sets the FQDN on distributions that prefer it: the short name is the seed's
    assert boot_run(seed, hostname=f"{seed.hostname}.maas-chroot.invalid").problems() == []


@pytest.mark.parametrize(("changes", "disk_id", "reasons"), [
    ({"state": "degraded", "failed_units": ["ssh.service"]}, GOOD_ID, ["failed-units"]),
    ({"cloud_init": {"status": "error", "errors": ["cc_locale failed"]}}, GOOD_ID,
     ["cloud-init"]),
    ({"cloud_init_rc": 2}, GOOD_ID, ["cloud-init"]),
    ({"cloud_init_result": {"v1": {"errors": ["ds failed"]}}}, GOOD_ID, ["cloud-init"]),
    ({"ipv4": []}, GOOD_ID, ["no-network"]),
    ({}, "uninitialized", ["not-unique"]),
    ({"ssh_host_keys": []}, GOOD_ID, ["not-unique"]),
    ({"hostname": "localhost"}, GOOD_ID, ["seed-not-applied"]),
    ({"user_keys": ""}, GOOD_ID, ["seed-not-applied"]),
    ({"runcmd": ""}, GOOD_ID, ["seed-not-applied"]),
    ({"state": "starting", "ipv4": [], "runcmd": ""}, GOOD_ID,
     ["failed-units", "no-network", "seed-not-applied"]),
])
def test_each_failed_first_boot_check_names_its_reason(changes: dict[str, object],
                                                       disk_id: str,
                                                       reasons: list[str]) -> None:
    problems = boot_run(Seed.fresh(1), disk_id=disk_id, **changes).problems()
    assert [p.reason for p in problems] == reasons
    assert all("boot 1 (console: /nonexistent/boot-1.log)" in p.message for p in problems)


def report_of(*runs: BootRun) -> mc.BootReport:
    return mc.BootReport(image=Path("/nonexistent/x.tgz"), image_size=1, accel="tcg",
                         os_name="Debian", kernel="6.1", kernel_source="the image's own",
                         tree_bytes=1, deploy_times={}, late_commands=(), runs=runs)


def test_two_deployments_with_one_identity_are_not_unique() -> None:
    one, two = Seed.fresh(1), Seed.fresh(2)
    key = "256 SHA256:AAAAsameKeyMaterial root@{} (ED25519)"
    fresh = report_of(boot_run(one), boot_run(two, 2, machine_id="f" * 32,
                                              ssh_host_keys=["256 SHA256:other x (ED25519)"]))
    assert fresh.ok, fresh
    same_id = report_of(boot_run(one), boot_run(two, 2, ssh_host_keys=["256 SHA256:b x"]))
    assert [p.reason for p in same_id.problems] == ["not-unique"]
    assert GOOD_ID in same_id.problems[0].message
    # the same key material with another comment (the hostname at keygen) is the same key
    same_key = report_of(boot_run(one, ssh_host_keys=[key.format(one.hostname)]),
                         boot_run(two, 2, machine_id="f" * 32,
                                  ssh_host_keys=[key.format(two.hostname)]))
    assert [p.reason for p in same_key.problems] == ["not-unique"]
    assert not same_key.ok and "FAILED (not-unique)" in same_key.table()


def test_the_guest_has_one_nic_on_restricted_user_networking(tmp_path: Path) -> None:
    files = [scratch.Scratch(tmp_path) for _ in range(4)]
    try:
        disk, seed_file, port, kernel = files
        machine = qemu.Machine(disk=disk, seed=seed_file, report=port, kernel=kernel,
                               initrd=None, append="console=ttyS0", mac="52:54:00:00:00:01")
        argv = machine.argv("tcg")
    finally:
        for f in files:
            f.close()
    netdevs = [argv[i + 1] for i, a in enumerate(argv) if a == "-netdev"]
    assert netdevs == ["user,id=net0,restrict=on"]  # no hostfwd, no guestfwd, no host access
    assert "-nic" not in argv and "-net" not in argv and "-nodefaults" in argv
    assert [a for a in argv if "virtio-net" in a] == \
        ["virtio-net-pci,netdev=net0,mac=52:54:00:00:00:01,romfile="]
    assert "-initrd" not in argv and argv[argv.index("-machine") + 1] == "q35,accel=tcg"


def test_a_console_prompt_without_newline_and_a_flood() -> None:
    c = console.Console()
    c.feed(b"Begin: Running /scripts/local-block ... done.\n(initramfs) ", 30.0)
    assert c.failure is not None and c.failure.reason == "initramfs-shell"
    c.feed(b"\n", 31.0)
    assert c.failure_line == "(initramfs)" and c.quote(around=c.failure_line)[-1] == \
        "(initramfs)"
    split = console.Console()  # a panic line that arrives in two reads is read whole
    split.feed(b"[    1.88] Kernel panic - not syncing: VFS: Unab", 4.8)
    assert split.failure is None
    split.feed(b"le to mount root fs on unknown-block(0,0)\n", 4.9)
    assert split.failure is not None and split.failure.reason == "no-root-fs"
    login = console.Console()
    login.feed(b"Debian GNU/Linux 12 debian ttyS0\n\ndebian login: ", 70.0)
    assert login.milestones == {"login": 70.0}  # a prompt is seen when it comes, not later
    flood = console.Console()
    for i in range(3 * console.Console.HEAD):
        flood.feed(f"line {i}\n".encode(), float(i))
    flood.feed(b"x" * (console.MAX_LINE + 1), 1e6)  # never a newline: a line anyway
    assert len(flood.lines) == console.Console.HEAD + console.Console.TAIL
    assert flood.lines[0][1] == "line 0" and flood.lines[-1][1] == "x" * (console.MAX_LINE + 1)
    assert f"{flood.dropped} console lines dropped" in flood.text()


@pytest.mark.parametrize(("options", "words"), [
    ({"accel": "bogus"}, "accel must be one of auto, kvm, tcg"),
    ({"memory": -5}, "memory must be a whole number of MiB"),
    ({"timeout": 0}, "timeout must be a number of seconds above 0"),
    ({"boots": True}, "boots must be a whole number"),
    ({"boots": 0}, "boots must be a whole number"),
    ({"kernel": "--purge"}, "kernel must name one package"),
    ({"workdir": "/nonexistent/dir"}, "workdir /nonexistent/dir is not a directory"),
    ({"log_dir": "/nonexistent/logs"}, "log_dir /nonexistent/logs is not a directory"),
])
def test_bad_boot_options_are_refused_before_anything_is_unpacked(
        options: dict[str, object], words: str) -> None:
    with pytest.raises(mc.ArgumentError, match=words):
        mc.boot_test("/nonexistent/image.tgz", **options)  # type: ignore[arg-type]


def test_compressed_data_that_holds_no_tar_is_refused(tmp_path: Path) -> None:
    disk = tmp_path / "disk.img.gz"
    with gzip.open(disk, "wb") as f:
        f.write(os.urandom(4096))
    with pytest.raises(mc.ArchiveError, match="gzip data that holds no tar") as err:
        mc.boot_test(disk)
    assert err.value.path == str(disk) and "tgz, tbz, txz" in (err.value.hint or "")


@pytest.mark.parametrize(("os_id", "checked"), [
    ("ubuntu", ["cloud-init", "netplan"]), ("debian", ["cloud-init", "netplan"]),
    ("", ["cloud-init", "netplan"]), ("centos", ["cloud-init"]), ("rhel", ["cloud-init"]),
    ("rocky", ["cloud-init"]), ("ol", ["cloud-init"]), ("sles", ["cloud-init"]),
])
def test_maas_late_commands_follow_the_base_os(os_id: str, checked: list[str]) -> None:
    commands = deploy.late_commands({"ID": os_id} if os_id else {})
    assert [c.split()[0] for c in commands] == checked
    for cmd in commands:  # as preseed.get_custom_image_dependency_validation writes them
        name = cmd.split()[0]
        assert cmd.endswith(f' || (echo "{name} not detected, MAAS will not be able to '
                            'configure this machine properly" && exit 1)')


def tiny_image(tmp_path: Path, name: str, *, shell: bytes | None = None,
               root_mode: int = 0o755) -> Path:
    """A few files that look like a rootfs to curtin's tar: a kernel file, no bash, no
    initramfs tool; /bin/sh is the host's dash (or ``shell``'s bytes)."""
    tree = tmp_path / name
    for d in ("etc", "usr/bin", "usr/sbin", "bin", "boot"):
        (tree / d).mkdir(parents=True)
    (tree / "etc/os-release").write_text('ID=debian\nPRETTY_NAME="Tiny test image"\n')
    (tree / "boot/vmlinuz-6.1.0-9-amd64").write_bytes(b"not really a kernel")
    if shell is None:
        shutil.copy2("/bin/dash", tree / "bin/sh")
    else:
        (tree / "bin/sh").write_bytes(shell)
    tree.chmod(root_mode)
    out = tmp_path / f"{name}.tgz"
    subprocess.run(["tar", "--numeric-owner", "-czf", str(out), "-C", str(tree), "."],
                   check=True)
    return out


@pytest.mark.root
def test_a_deployment_curtin_or_maas_would_fail_is_not_booted(tmp_path: Path) -> None:
    image = tiny_image(tmp_path, "tiny", root_mode=0o700)
    work = tmp_path / "work"
    work.mkdir()
    report = mc.boot_test(image, workdir=work, log_dir=tmp_path, check=False, progress=False)
    assert report.runs == () and not report.ok and report.kernel == "6.1.0-9-amd64"
    assert [p.reason for p in report.problems] == ["curtin", "curtin", "maas-late-command",
                                                  "maas-late-command"]
    no_tool, root_mode, *late = report.problems
    assert "neither update-initramfs nor dracut" in no_tool.message
    assert "mode 0700" in root_mode.message and "chmod 0755" in root_mode.advice
    assert "`cloud-init --version` fails" in late[0].message  # no bash: MAAS's bash -c fails
    assert [c.returncode != 0 for c in report.late_commands] == [True, True]
    assert os.listdir(work) == []
    with pytest.raises(mc.BootTestError) as err:
        mc.boot_test(image, workdir=work, progress=False)
    assert err.value.reason == "curtin" and "cannot update the initramfs" in err.value.message
    assert "(and 3 more problem(s); see the report)" in err.value.message
    assert err.value.report is not None and err.value.hint


@pytest.mark.root
def test_a_foreign_image_is_refused_before_anything_runs_in_it(tmp_path: Path) -> None:
    arm64 = bytearray(64)
    arm64[:7] = b"\x7fELF\x02\x01\x01"
    struct.pack_into("<HHI", arm64, 16, 3, 183, 1)  # ET_DYN, EM_AARCH64
    image = tiny_image(tmp_path, "arm64", shell=bytes(arm64))
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(mc.BootTestError) as err:
        mc.boot_test(image, workdir=work, progress=False)
    assert err.value.reason == "arch" and "arm64 image" in err.value.message
    assert os.listdir(work) == []


def test_a_fifo_or_a_device_at_bin_sh_is_never_opened(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    (fifo / "bin").mkdir(parents=True)
    os.mkfifo(fifo / "bin/sh")  # opening it for reading would block for ever
    assert rootfs.image_arch(fifo) is None
    assert rootfs.read_regular_head(fifo, "/bin/sh", 64) is None
    link = tmp_path / "link"
    (link / "bin").mkdir(parents=True)
    (link / "bin/sh").symlink_to("/dev/null")  # resolves in the root: the image's /dev/null
    assert rootfs.read_regular_head(link, "/bin/sh", 64) is None


# --- real deployments and boots ---------------------------------------------------------------

LOCALE = "locale: C.UTF-8\n"  # cloud-init 22.4's cc_locale fails on bookworm (cloud-init#4195)


class Listener:
    """A TCP port on the host's 127.0.0.1 that records every connection made to it."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections: list[tuple[str, int]] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            self.connections.append(peer)
            conn.close()

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(5)


#: A unit in the good image that tries to leave QEMU once the NIC has its address: the
#: host's 127.0.0.1 through slirp's 10.0.2.2, an outside address (TEST-NET-1) and the
#: metadata address cloud-init probes on clouds. With
#: restrict=on, slirp's DHCP offers no router (libslirp bootp.c), so there is no default route.
EGRESS_UNIT = """[Unit]
Description=maas-chroot test: try to reach the host and the outside from the guest
Wants=network-online.target
After=network-online.target
[Service]
Type=oneshot
TimeoutStartSec=120
StandardOutput=journal+console
ExecStart=/usr/bin/python3 /usr/local/sbin/egress-probe
[Install]
WantedBy=multi-user.target
"""
EGRESS_PROBE = """import socket, time
for _ in range(60):  # until the NIC has its address (the route to its subnet)
    routes = [line.split() for line in open("/proc/net/route").readlines()[1:]]
    if any(r[0] != "lo" for r in routes):
        break
    time.sleep(1)
else:
    print("egress-probe: no network", flush=True)
gateway = any(r[1] == "00000000" for r in routes)
print(f"egress-probe: default route {'yes' if gateway else 'no'}", flush=True)
for host, port in (("10.0.2.2", PORT), ("192.0.2.1", 80), ("169.254.169.254", 80)):
    try:
        socket.create_connection((host, port), timeout=5).close()
        what = "connected"
    except OSError as e:
        what = f"blocked ({e.strerror or type(e).__name__})"
    print(f"egress-probe {host}:{port}: {what}", flush=True)
"""


@pytest.fixture(scope="session")
def host_listener() -> Iterator[Listener]:
    listener = Listener()
    try:
        yield listener
    finally:
        listener.close()


@pytest.fixture(scope="session")
def booted_build(tmp_path_factory: pytest.TempPathFactory,
                 host_listener: Listener) -> mc.BuildResult:
    """A deployable Debian image built with mc.build from a bootstrapped tree, and boot-tested
    by the build itself, twice at once (once per session). It carries a unit that tries to
    reach the host's 127.0.0.1 (``host_listener``) and the outside from the guest."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    base = build_minbase(CACHE, include=BOOT_PACKAGES)
    out = tmp_path_factory.mktemp("boot") / "debian-boot.tgz"
    cfg = out.parent / "locale.cfg"
    cfg.write_text(LOCALE)
    unit, probe = out.parent / "egress-probe.service", out.parent / "egress-probe"
    unit.write_text(EGRESS_UNIT)
    probe.write_text(EGRESS_PROBE.replace("PORT", str(host_listener.port)))
    logs = out.parent / "logs"
    logs.mkdir()
    return mc.build(base, out, files={"/etc/cloud/cloud.cfg.d/99-locale.cfg": cfg,
                                      "/etc/systemd/system/egress-probe.service": unit,
                                      "/usr/local/sbin/egress-probe": probe},
                    commands=["systemctl enable egress-probe.service"],
                    progress=False, workdir=out.parent,
                    boot_test={"boots": 2, "log_dir": logs})


@pytest.fixture(scope="session")
def boot_image(booted_build: mc.BuildResult) -> Path:
    return booted_build.output


def variant(good: Path, name: str, *, drop: tuple[str, ...] = (),
            add: dict[str, str] | None = None) -> Path:
    """``good`` with members dropped (GNU tar --delete) and files added; gzip -1 (made once
    per session: the variants live beside the session's image)."""
    out = good.with_name(f"{name}.tgz")
    if out.exists():
        return out
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
    plain.with_suffix(".tar.gz").rename(out)
    return out


@pytest.mark.root
@pytest.mark.network
@pytest.mark.slow
@pytest.mark.vm
def test_a_good_image_boots_twice_with_two_identities(booted_build: mc.BuildResult,
                                                      host_listener: Listener) -> None:
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
    # nothing the guest sends leaves QEMU: not to the host's 127.0.0.1, not outside
    for run in report.runs:
        log = run.console_log.read_text()
        assert "egress-probe: no network" not in log
        assert "egress-probe: default route no" in log  # restrict=on: DHCP gives no router
        assert f"egress-probe 10.0.2.2:{host_listener.port}: blocked" in log, log[-3000:]
        assert "egress-probe 192.0.2.1:80: blocked" in log
        assert "egress-probe 169.254.169.254:80: blocked" in log  # the metadata address
    assert host_listener.connections == []
    assert "NoCloud seed stands in for MAAS's datasource" in repr(report)
    # only the logs are left: no disk, no staging tree in the work dir
    logs = one.console_log.parent
    assert sorted(p.name for p in logs.iterdir()) == [
        f"debian-boot.tgz.boot-{i}.{ext}" for i in (1, 2) for ext in ("json", "log")]
    # nor in the build's work dir: no staging tree, no build tree
    assert [p.name for p in booted_build.output.parent.iterdir()
            if p.name.startswith("maas-chroot-")] == []


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
    # the quickest deployment that boots: no initramfs tool, so nothing to rebuild
    image = variant(boot_image, "no-initramfs",
                    drop=("./usr/sbin/update-initramfs", "./boot/initrd.img"))
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


@pytest.mark.root
@pytest.mark.network
@pytest.mark.slow
@pytest.mark.vm
def test_a_qemu_that_crashes_before_the_guests_init_boots_again(boot_image: Path,
                                                                 tmp_path: Path) -> None:
    # QEMU 7.2's TCG has been seen to segfault while a guest probes PCI: QEMU's fault, not
    # the image's. Here the first QEMU gets a SIGSEGV as soon as it runs.
    image = variant(boot_image, "no-initramfs",
                    drop=("./usr/sbin/update-initramfs", "./boot/initrd.img"))
    crashed: list[int] = []
    started = threading.Event()

    def crash_the_first_qemu() -> None:
        while not started.is_set():
            for pid in qemu_processes(using=os.getpid()):
                os.kill(pid, signal.SIGSEGV)
                crashed.append(pid)
                started.set()
            time.sleep(0.02)

    killer = threading.Thread(target=crash_the_first_qemu, daemon=True)
    killer.start()
    try:
        report = mc.boot_test(image, workdir=tmp_path, log_dir=tmp_path, progress=False,
                              check=False, fail_fast=False, accel="tcg", timeout=240)
    finally:
        started.set()
        killer.join()
    assert len(crashed) == 1
    [run] = report.runs
    assert run.crashes == (tmp_path / "no-initramfs.tgz.boot-1.crash-1.log",)
    assert run.crashes[0].is_file()
    # the second QEMU booted the same disk to the end: the kernel's own verdict
    assert run.failure is not None and run.failure.reason == "no-root-fs"
    assert "Linux version" in run.console_log.read_text()
    assert "booted again: QEMU crashed before the guest's init" in str(report)
    assert qemu_processes(using=os.getpid()) == []


@pytest.mark.root
@pytest.mark.network
@pytest.mark.slow
def test_sigkill_during_deployment_kills_its_tools_and_the_next_run_sweeps(
        boot_image: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    code = ("import maas_chroot as mc, sys; mc.boot_test(sys.argv[1], workdir=sys.argv[2], "
            "log_dir=sys.argv[2], progress=False, check=False)")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", code, str(boot_image), str(work)], env=env,
                            stdin=subprocess.DEVNULL)
    staging: list[Path] = []
    tools: list[int] = []  # curtin's tar, or the chroot commands of the deployment after it
    start = time.monotonic()
    try:
        while not tools and time.monotonic() < start + 300:
            assert proc.poll() is None, "boot_test ended before its deployment was caught"
            staging = [p for p in work.iterdir() if p.name.startswith("maas-chroot-boot-")]
            tools = processes_naming(str(staging[0])) if staging else []
            time.sleep(0.02)
        # killed the moment a tool of the deployment is seen at work in the staging tree
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert tools, f"no deployment tool seen in {time.monotonic() - start:.0f} s ({staging})"
    deadline = time.monotonic() + 10
    while processes_naming(str(staging[0])) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_naming(str(staging[0])) == []  # tar died with its caller
    assert [p.name for p in work.iterdir()] == [staging[0].name]  # a partial deployment
    # the next boot test in the same workdir removes what the killed one left
    mc.boot_test(tiny_image(tmp_path, "tiny"), workdir=work, check=False, progress=False)
    assert os.listdir(work) == []
