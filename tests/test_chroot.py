"""The Chroot session, on a real Debian minbase rootfs, as root, with real namespaces."""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures import ON_BOTH_ARCHES, tree_state

import maas_chroot as mc
from maas_chroot import rootfs
from maas_chroot.chroot import journal
from maas_chroot.rootfs import inroot
from maas_chroot.sources import hostapt

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[1]
HOST_RESOLV = Path("/etc/resolv.conf").read_bytes()


# --- helpers --------------------------------------------------------------------------------


def mounts_below(root: Path) -> list[str]:
    return rootfs.mounts_under(root)


def rooted_pids(root: Path) -> list[int]:
    found = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            with contextlib.suppress(OSError):
                r = os.readlink(p / "root")
                if r == str(root) or r.startswith(str(root) + "/"):
                    found.append(int(p.name))
    return found


def wait_for(cond: object, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def entry_of(root: Path, path: str) -> rootfs.Entry:
    return rootfs.snapshot(root, path)


@contextlib.contextmanager
def session_child(root: Path, body: str) -> Iterator[subprocess.Popen[str]]:
    """A python child that opens a session on ``root``, prints 'ready', then runs ``body``."""
    code = textwrap.dedent(f"""
        import sys
        import maas_chroot as mc
        with mc.Chroot(sys.argv[1]) as ch:
            print("ready", flush=True)
            {body}
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", code, str(root)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line == "ready\n", proc.stderr.read() if proc.stderr else line
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def sleeping_in(root: Path) -> bool:
    for pid in rooted_pids(root):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/comm").read_text().strip() == "sleep":
                return True
    return False


# --- inside the chroot ----------------------------------------------------------------------


@ON_BOTH_ARCHES["shared_root"]
def test_proc_sys_dev_run_inside(shared_root: Path) -> None:
    script = r"""
        echo "pid=$$"
        test -r /proc/self/status && echo proc-ok
        cat /proc/self/mountinfo
        touch /sys/kernel/x 2>/dev/null || echo sys-readonly
        for n in null zero full random urandom tty; do test -c /dev/$n && echo "dev-$n"; done
        exec 3<>/dev/ptmx && echo ptmx-ok
        readlink /dev/ptmx
        echo hi > /run/marker && echo run-writable
        head -c 4 /dev/zero | wc -c
    """
    with mc.Chroot(shared_root) as ch:
        out = ch.run(["sh", "-c", script], capture=True).stdout
        second = ch.run(["sh", "-c", "ls -A /run"], capture=True).stdout
    assert "pid=2" in out  # its own PID namespace, under the mini-init
    assert "proc-ok" in out
    mounts = {line.split()[4]: line for line in out.splitlines() if line.count(" - ") == 1}
    assert mounts["/proc"].split(" - ")[1].startswith("proc ")
    assert mounts["/sys"].split(" - ")[1].startswith("sysfs ")
    assert mounts["/sys"].split()[5].split(",")[0] == "ro"
    assert "sys-readonly" in out
    assert mounts["/dev"].split(" - ")[1].startswith("tmpfs ")
    pts = mounts["/dev/pts"].split(" - ")[1]
    assert pts.startswith("devpts ") and "ptmxmode=666" in pts  # its own instance
    assert mounts["/dev/shm"].split(" - ")[1].startswith("tmpfs ")
    assert mounts["/run"].split(" - ")[1].startswith("tmpfs ")
    for n in ("null", "zero", "full", "random", "urandom", "tty"):
        assert f"dev-{n}" in out
    assert "ptmx-ok" in out and "pts/ptmx" in out
    assert "run-writable" in out and out.rstrip().endswith("4")
    assert second.strip() == "lock"  # /run is fresh for every command
    assert not (shared_root / "run" / "marker").exists()


def test_environment_is_clean(shared_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MC_TEST_LEAK", "should-not-pass")
    with mc.Chroot(shared_root) as ch:
        out = ch.run(["env"], capture=True, env={"EXTRA": "yes"}).stdout
    env = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    assert env["DEBIAN_FRONTEND"] == "noninteractive"
    assert env["LANG"] == "C.UTF-8"
    assert env["PATH"] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert env["SYSTEMD_OFFLINE"] == "1"
    assert env["HOME"] == "/root"
    assert env["EXTRA"] == "yes"
    assert "MC_TEST_LEAK" not in env


@ON_BOTH_ARCHES["shared_root"]
def test_apt_has_a_pty_policy_rc_d_and_postinst_daemons_die(shared_root: Path) -> None:
    control = ("Package: mc-test\nVersion: 1.0\nArchitecture: all\n"
               "Maintainer: t <t@example.invalid>\nDescription: test\n")
    postinst = "#!/bin/sh\nsleep 300 >/dev/null 2>&1 &\necho postinst-started\n"
    with mc.Chroot(shared_root) as ch:
        assert ch.run(["/usr/sbin/policy-rc.d"], check=False).returncode == 101
        ch.write_file("/tmp/pkg/DEBIAN/control", control)
        ch.write_file("/tmp/pkg/DEBIAN/postinst", postinst, mode=0o755)
        ch.run(["dpkg-deb", "--build", "/tmp/pkg", "/tmp/mc-test.deb"])
        res = ch.run(["apt-get", "install", "-y", "/tmp/mc-test.deb"], capture=True)
        assert "postinst-started" in res.stdout
        assert "Is /dev/pts mounted?" not in res.stdout + res.stderr
        assert not sleeping_in(shared_root)  # the postinst's daemon died with apt-get
        status = ch.run(["dpkg-query", "-W", "-f=${Status}", "mc-test"], capture=True).stdout
        assert status == "install ok installed"
    assert not (shared_root / "usr/sbin/policy-rc.d").exists()


@pytest.mark.parametrize("script", ["sleep 300 & echo started",
                                    "setsid -f sleep 300; echo started",
                                    "nohup sleep 300 >/dev/null 2>&1 & echo started"])
def test_background_process_does_not_survive_its_command(shared_root: Path,
                                                         script: str) -> None:
    with mc.Chroot(shared_root) as ch:
        # capture waits for EOF on stdout, which the sleep holds unless it is killed
        out = ch.run(["sh", "-c", script], capture=True).stdout
        assert out.strip() == "started"
        assert rooted_pids(shared_root) == []


def test_exit_codes_signals_and_missing_commands(shared_root: Path) -> None:
    with mc.Chroot(shared_root) as ch:
        assert ch.run(["sh", "-c", "exit 7"], check=False).returncode == 7
        with pytest.raises(mc.CommandError) as err:
            ch.run(["sh", "-c", "echo oops >&2; exit 3"])
        assert err.value.returncode == 3 and "oops" in (err.value.stderr or "")
        assert ch.run(["sh", "-c", "kill -9 $$"], check=False).returncode == -9
        assert ch.run(["sh", "-c", "nosuchcmd"], check=False).returncode == 127
        with pytest.raises(mc.CommandError, match="not found in the image") as nf:
            ch.run(["no-such-command-here"])
        assert nf.value.returncode == 127
        assert ch.run(["no-such-command-here"], check=False).returncode == 127
        assert ch.run(["cat"], input="piped", capture=True).stdout == "piped"
        assert ch.shell(["sh", "-c", "exit 4"]) == 4
        with pytest.raises(mc.ArgumentError):
            ch.run("echo hi")  # type: ignore[arg-type]


def test_spawn_streams_and_keeps_fd_numbers(shared_root: Path) -> None:
    r, w = os.pipe()
    with mc.Chroot(shared_root) as ch:
        with ch.spawn(["bash", "-c", f"echo status >&{w}; echo out"], pass_fds=[w]) as proc:
            os.close(w)
            assert proc.stdout is not None
            assert proc.stdout.read() == b"out\n"
            mc.run.check_exit(proc)
        with os.fdopen(r, "rb") as f:
            assert f.read() == b"status\n"
        with ch.spawn(["sh", "-c", "exit 5"]) as proc, pytest.raises(mc.CommandError) as err:
            mc.run.check_exit(proc)
        assert err.value.argv == ["sh", "-c", "exit 5"]


def test_shell_runs_on_the_callers_terminal(shared_root: Path) -> None:
    import pty

    master, slave = pty.openpty()
    code = ("import sys, maas_chroot as mc\n"
            "with mc.Chroot(sys.argv[1]) as ch:\n"
            "    rc = ch.shell(['sh', '-c', 'tty; test -t 0 && exit 6'])\n"
            "print('rc', rc)\n")
    try:
        try:
            proc = subprocess.run([sys.executable, "-c", code, str(shared_root)], stdin=slave,
                                  stdout=slave, stderr=slave,
                                  env={**os.environ, "PYTHONPATH": str(REPO)},
                                  timeout=120, check=False)
        finally:
            os.close(slave)
        out = b""
        with contextlib.suppress(OSError):  # EIO once everything is read
            while chunk := os.read(master, 4096):
                out += chunk
    finally:
        os.close(master)
    assert proc.returncode == 0, out
    assert b"/dev/console" in out and b"rc 6" in out


# --- resolv.conf, policy-rc.d and host safety -----------------------------------------------


def _make_resolv(root: Path, kind: str, canary: Path) -> None:
    target = root / "etc/resolv.conf"
    if target.exists() or target.is_symlink():
        target.unlink()
    if kind == "ubuntu":
        target.symlink_to("../run/systemd/resolve/stub-resolv.conf")
    elif kind == "absolute":
        target.symlink_to(canary)
    elif kind == "dotdot":
        target.symlink_to("../" * 12 + str(canary).lstrip("/"))
    elif kind == "file":
        target.write_bytes(b"nameserver 192.0.2.1\n")
        os.chmod(target, 0o640)
        os.chown(target, 0, 4)


RESOLV_KINDS = {"ubuntu": "symlink", "absolute": "symlink", "dotdot": "symlink", "file": "file",
                "absent": "absent"}


@ON_BOTH_ARCHES["minbase_root"]
def test_resolv_conf_is_the_hosts_then_restored_exactly(minbase_root: Path,
                                                        tmp_path: Path) -> None:
    canary = tmp_path / "canary" / "resolv.conf"
    canary.parent.mkdir()
    canary.write_bytes(b"CANARY\n")
    canary_st = canary.stat()
    for kind, expected in RESOLV_KINDS.items():
        _make_resolv(minbase_root, kind, canary)
        before = entry_of(minbase_root, "/etc/resolv.conf")
        assert before.kind == expected
        with mc.Chroot(minbase_root) as ch:
            inside = ch.run(["cat", "/etc/resolv.conf"], capture=True).stdout
            assert inside.encode() == HOST_RESOLV, kind
        assert entry_of(minbase_root, "/etc/resolv.conf") == before, kind
        assert canary.read_bytes() == b"CANARY\n"
        assert canary.stat().st_mtime_ns == canary_st.st_mtime_ns
        assert sorted(os.listdir(canary.parent)) == ["resolv.conf"]
        assert not (minbase_root / rootfs.JOURNAL_NAME).exists()


def test_usr_sbin_symlink_pointing_out_never_writes_on_the_host(minbase_root: Path,
                                                                tmp_path: Path) -> None:
    hostside = tmp_path / "hostside"  # what a naive host-side write would hit
    hostside.mkdir()
    (hostside / "canary").write_text("host\n")
    inside = minbase_root / str(hostside).lstrip("/")  # where the link resolves in the root
    inside.parent.mkdir(parents=True)
    os.rename(minbase_root / "usr/sbin", inside)
    for target in (str(hostside), "../" * 12 + str(hostside).lstrip("/")):
        with contextlib.suppress(FileNotFoundError):
            (minbase_root / "usr/sbin").unlink()
        (minbase_root / "usr/sbin").symlink_to(target)
        before = tree_state(minbase_root)
        with mc.Chroot(minbase_root) as ch:
            assert ch.run(["/usr/sbin/policy-rc.d"], check=False).returncode == 101
            assert (inside / "policy-rc.d").exists()
        assert sorted(os.listdir(hostside)) == ["canary"], target
        assert (hostside / "canary").read_text() == "host\n"
        assert tree_state(minbase_root) == before


def test_existing_policy_rc_d_and_rootfs_are_byte_identical_afterwards(
        shared_root: Path) -> None:
    (shared_root / "usr/sbin/policy-rc.d").write_text("#!/bin/sh\nexit 0\n")
    os.chmod(shared_root / "usr/sbin/policy-rc.d", 0o700)
    (shared_root / "etc/resolv.conf").unlink()
    (shared_root / "etc/resolv.conf").symlink_to("../run/systemd/resolve/stub-resolv.conf")
    before = tree_state(shared_root)
    with mc.Chroot(shared_root) as ch:
        ch.run(["sh", "-c", "echo changed > /tmp/by-command; /usr/sbin/policy-rc.d"],
               check=False)
        ch.temporary_file("/etc/apt/apt.conf.d/99proxy", "Acquire::http::Proxy \"x\";\n")
        ch.temporary_file("/etc/apt/apt.conf.d/99proxy", "second swap, same original\n")
        assert (shared_root / rootfs.JOURNAL_NAME).exists()
    after = tree_state(shared_root)
    assert after.pop("tmp/by-command")
    assert after == before


def test_write_file_and_copy_in_stay_inside(shared_root: Path, tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    canary.write_text("host\n")
    (shared_root / "etc/motd").unlink(missing_ok=True)
    (shared_root / "etc/motd").symlink_to(canary)
    (shared_root / "opt/out").symlink_to("../" * 12 + str(tmp_path).lstrip("/"))
    (shared_root / "opt/dangling").symlink_to("/nonexistent-dir-for-test")
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.conf").write_text("a\n")
    (src / "sub" / "b").write_text("b\n")
    os.chmod(src / "sub" / "b", 0o600)
    (src / "link").symlink_to("/etc/passwd")
    with mc.Chroot(shared_root) as ch:
        ch.write_file("/etc/motd", "hello\n", mode=0o640, uid=0, gid=4)
        with pytest.raises(mc.UnsafePathError):  # its target is not inside the root yet
            ch.write_file("/opt/out/canary", "through a link\n")
        (shared_root / str(tmp_path).lstrip("/")).mkdir(parents=True)
        ch.write_file("/opt/out/canary", "through a link\n")
        with pytest.raises(mc.UnsafePathError):
            ch.write_file("/opt/dangling/x", "x")
        ch.copy_in(src / "a.conf", "/etc/app.conf", mode=0o600)
        ch.copy_in(src, "/srv/tree")
        assert ch.run(["cat", "/etc/motd", "/srv/tree/sub/b"], capture=True).stdout == "hello\nb\n"
        with pytest.raises(mc.UnsafePathError):
            ch.write_file("relative/path", "x")
    assert canary.read_text() == "host\n"
    st = os.lstat(shared_root / "etc/motd")
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640 and st.st_gid == 4
    assert (shared_root / str(canary).lstrip("/")).read_text() == "through a link\n"
    assert stat.S_IMODE(os.stat(shared_root / "etc/app.conf").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(shared_root / "srv/tree/sub/b").st_mode) == 0o600
    assert os.readlink(shared_root / "srv/tree/link") == "/etc/passwd"
    assert os.stat(shared_root / "srv/tree/a.conf").st_uid == 0


# --- unwinding: exception, signals, SIGKILL -------------------------------------------------


def _assert_clean(root: Path, before: dict[str, tuple[object, ...]]) -> None:
    assert mounts_below(root) == []
    wait_for(lambda: rooted_pids(root) == [], "processes in the root to die")
    assert tree_state(root) == before


def test_exception_unwinds_the_session(shared_root: Path) -> None:
    before = tree_state(shared_root)
    with pytest.raises(RuntimeError), mc.Chroot(shared_root) as ch:
        ch.run(["true"])
        raise RuntimeError("boom")
    _assert_clean(shared_root, before)


def test_sigint_and_sigterm_unwind_the_session(minbase_root: Path) -> None:
    before = tree_state(minbase_root)
    for sig, code in ((signal.SIGINT, -signal.SIGINT), (signal.SIGTERM, 128 + signal.SIGTERM)):
        with session_child(minbase_root, 'ch.run(["sleep", "30"])') as proc:
            wait_for(lambda: sleeping_in(minbase_root), "the sleep to start")
            proc.send_signal(sig)
            proc.wait(timeout=60)
            assert proc.returncode == code, proc.stderr.read() if proc.stderr else ""
        _assert_clean(minbase_root, before)


@ON_BOTH_ARCHES["minbase_root"]
def test_sigkill_leaves_no_mounts_and_recover_restores(minbase_root: Path) -> None:
    before = tree_state(minbase_root)
    before_resolv = entry_of(minbase_root, "/etc/resolv.conf")
    with session_child(minbase_root, 'ch.run(["sleep", "30"])') as proc:
        wait_for(lambda: sleeping_in(minbase_root), "the sleep to start")
        proc.kill()
        proc.wait()
    assert mounts_below(minbase_root) == []
    wait_for(lambda: rooted_pids(minbase_root) == [], "the namespace to die")
    assert (minbase_root / rootfs.JOURNAL_NAME).exists()
    assert (minbase_root / "usr/sbin/policy-rc.d").exists()
    assert (minbase_root / "etc/resolv.conf").read_bytes() == HOST_RESOLV
    with pytest.raises(mc.ChrootBusyError, match="recover"):
        mc.Chroot(minbase_root).__enter__()
    report = mc.recover(minbase_root)
    assert report is not None and report.session_pid == proc.pid
    assert any("policy-rc.d" in line for line in report.undone)
    assert any("resolv.conf" in line for line in report.undone)
    assert entry_of(minbase_root, "/etc/resolv.conf") == before_resolv
    assert tree_state(minbase_root) == before
    assert mc.recover(minbase_root) is None

    # Killed again: this time the next session recovers first.
    with session_child(minbase_root, 'ch.run(["sleep", "30"])') as proc:
        wait_for(lambda: sleeping_in(minbase_root), "the sleep to start")
        proc.kill()
    wait_for(lambda: rooted_pids(minbase_root) == [], "the namespace to die")
    assert (minbase_root / rootfs.JOURNAL_NAME).exists()
    with mc.Chroot(minbase_root, recover=True) as ch:
        assert ch.run(["cat", "/etc/resolv.conf"], capture=True).stdout.encode() == HOST_RESOLV
    _assert_clean(minbase_root, before)


def test_second_concurrent_session_is_refused(shared_root: Path) -> None:
    with mc.Chroot(shared_root) as ch:
        with pytest.raises(mc.ChrootBusyError, match="in use"):
            mc.Chroot(shared_root).__enter__()
        with pytest.raises(mc.ChrootBusyError):
            mc.recover(shared_root)
        code = ("import sys, maas_chroot as mc\n"
                "try:\n    mc.Chroot(sys.argv[1]).__enter__()\n"
                "except mc.ChrootBusyError as e:\n    print('busy:', e)\n")
        out = subprocess.run([sys.executable, "-c", code, str(shared_root)],
                             env={**os.environ, "PYTHONPATH": str(REPO)},
                             capture_output=True, text=True, check=True).stdout
        assert out.startswith("busy:") and str(os.getpid()) in out
        ch.run(["true"])  # the live session is unaffected
    with mc.Chroot(shared_root) as ch:  # and the root is free again afterwards
        ch.run(["true"])


def test_callbacks_run_at_exit_in_reverse(shared_root: Path) -> None:
    calls: list[int] = []
    handler = signal.getsignal(signal.SIGTERM)
    with mc.Chroot(shared_root) as ch:
        assert signal.getsignal(signal.SIGTERM) is not handler  # SIGTERM now unwinds
        ch.callback(calls.append, 1)
        ch.callback(calls.append, 2)
    assert calls == [2, 1]
    assert signal.getsignal(signal.SIGTERM) is handler
    with pytest.raises(mc.ChrootError, match="not active"):
        ch.run(["true"])


def test_missing_mount_points_are_made_for_the_session_only(shared_root: Path) -> None:
    os.rmdir(shared_root / "proc")
    os.rename(shared_root / "run", shared_root / "run.orig")
    try:
        before = tree_state(shared_root)
        with mc.Chroot(shared_root) as ch:
            assert ch.run(["cat", "/proc/self/comm"], capture=True).stdout == "cat\n"
            ch.run(["test", "-d", "/run/lock"])
        _assert_clean(shared_root, before)
        assert not (shared_root / "proc").exists() and not (shared_root / "run").exists()
    finally:
        (shared_root / "proc").mkdir(exist_ok=True)
        os.rename(shared_root / "run.orig", shared_root / "run")


def test_a_half_finished_enter_unwinds(shared_root: Path) -> None:
    os.rmdir(shared_root / "proc")  # so __enter__ makes a mount point before it fails
    os.rename(shared_root / "usr/sbin", shared_root / "usr/sbin.orig")
    (shared_root / "usr/sbin").symlink_to("/nonexistent")  # policy-rc.d cannot be placed
    try:
        before = tree_state(shared_root)
        for _ in range(2):  # the second attempt is refused the same way: lock released
            with pytest.raises(mc.UnsafePathError):
                mc.Chroot(shared_root).__enter__()
            assert tree_state(shared_root) == before
            assert not (shared_root / rootfs.JOURNAL_NAME).exists()
    finally:
        (shared_root / "usr/sbin").unlink()
        os.rename(shared_root / "usr/sbin.orig", shared_root / "usr/sbin")
        (shared_root / "proc").mkdir(exist_ok=True)


# --- binds and network ----------------------------------------------------------------------


@ON_BOTH_ARCHES["shared_root"]
def test_binds_rw_and_ro(shared_root: Path, tmp_path: Path) -> None:
    rw, ro, rw2 = tmp_path / "rw", tmp_path / "ro", tmp_path / "rw2"
    for d in (rw, ro, rw2):
        d.mkdir()
    (ro / "data").write_text("ro data\n")
    conf = tmp_path / "extra.conf"
    conf.write_text("file bind\n")
    before = tree_state(shared_root)
    binds = {rw: "/var/cache/apt/archives", ro: ("/mnt/ro/deep", "ro"),
             str(rw2): mc.Bind(str(rw2), "/srv/rw2"), conf: ("/etc/extra.conf", "ro")}
    with mc.Chroot(shared_root, binds=binds) as ch:
        ch.run(["sh", "-c", "echo written > /var/cache/apt/archives/x"])
        res = ch.run(["sh", "-c", "echo no > /mnt/ro/deep/y"], check=False)
        assert res.returncode != 0 and "Read-only" in res.stderr
        assert ch.run(["cat", "/mnt/ro/deep/data", "/etc/extra.conf"],
                      capture=True).stdout == "ro data\nfile bind\n"
        ch.run(["touch", "/srv/rw2/z"])
    assert (rw / "x").read_text() == "written\n"
    assert not (ro / "y").exists() and (rw2 / "z").exists()
    _assert_clean(shared_root, before)  # the mount points it had to create are gone
    with mc.Chroot(shared_root, binds=[mc.Bind(str(rw), "/mnt/list")]) as ch:
        assert ch.run(["cat", "/mnt/list/x"], capture=True).stdout == "written\n"


def _mirror_host_port() -> tuple[str, int]:
    url = urllib.parse.urlsplit(hostapt.host_mirror().uri)
    assert url.hostname
    return url.hostname, url.port or (443 if url.scheme == "https" else 80)


@ON_BOTH_ARCHES["shared_root"]
def test_network_none_has_only_lo_up_and_no_route_out(shared_root: Path) -> None:
    host, port = _mirror_host_port()
    with mc.Chroot(shared_root, network="none") as ch:
        assert ch.run(["ls", "/sys/class/net"], capture=True).stdout.split() == ["lo"]
        flags = int(ch.run(["cat", "/sys/class/net/lo/flags"], capture=True).stdout, 16)
        assert flags & 0x1  # IFF_UP
        res = ch.run(["bash", "-c", f"exec 3<>/dev/tcp/{host}/{port}"], check=False)
        assert res.returncode != 0
    assert mounts_below(shared_root) == []


@pytest.mark.network
@ON_BOTH_ARCHES["shared_root"]
def test_network_host_reaches_the_mirror(shared_root: Path) -> None:
    host, port = _mirror_host_port()
    with mc.Chroot(shared_root) as ch:
        ch.run(["getent", "hosts", host])  # names resolve as on the host
        ch.run(["bash", "-c", f"exec 3<>/dev/tcp/{host}/{port}"])
        assert len(ch.run(["ls", "/sys/class/net"], capture=True).stdout.split()) > 1


# --- bad input ------------------------------------------------------------------------------


def test_bad_input_is_refused_and_nothing_is_touched(shared_root: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    before = tree_state(shared_root)
    afile = tmp_path / "afile"
    afile.write_text("x")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(mc.ChrootError, match="not a directory"):
        mc.Chroot(afile)
    with pytest.raises(mc.ChrootError, match="does not exist"):
        mc.Chroot(tmp_path / "missing")
    for slash in ("/", "/usr/..", tmp_path / ("../" * 12)):
        with pytest.raises(mc.ChrootError, match="host's /"):
            mc.Chroot(slash)
    with pytest.raises(mc.ChrootError, match="does not look like a Linux root"):
        mc.Chroot(empty)
    with pytest.raises(mc.ChrootError, match="network"):
        mc.Chroot(shared_root, network="bridge")  # type: ignore[arg-type]
    with pytest.raises(mc.ChrootError, match="does not exist"):
        mc.Chroot(shared_root, binds={tmp_path / "nope": "/mnt"})
    with pytest.raises(mc.UnsafePathError):
        mc.Chroot(shared_root, binds={empty: "mnt/relative"})
    with pytest.raises(mc.UnsafePathError):
        mc.Chroot(shared_root, binds={empty: "/mnt/../../etc"})
    with pytest.raises(mc.ChrootError, match="managed by the session"):
        mc.Chroot(shared_root, binds={empty: "/proc/x"})
    with pytest.raises(mc.ChrootError, match="bad bind"):
        mc.Chroot(shared_root, binds={empty: ("/mnt", "rx")})  # type: ignore[dict-item]
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(mc.PrivilegeError):
        mc.Chroot(shared_root)
    with pytest.raises(mc.PrivilegeError):
        mc.recover(shared_root)
    monkeypatch.undo()
    assert tree_state(shared_root) == before
    assert sorted(os.listdir(empty)) == []


def test_recover_without_journal_and_on_bad_root(shared_root: Path, tmp_path: Path) -> None:
    assert mc.recover(shared_root) is None
    with pytest.raises(mc.ChrootError):
        mc.recover(tmp_path / "missing")


# --- the helper's own in-root resolution (openat2 and the fallback walk) ---------------------


@pytest.mark.parametrize("openat2", [True, False])
def test_helper_resolves_mount_points_inside_the_root(tmp_path: Path, openat2: bool,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    if not openat2:
        monkeypatch.setattr(inroot, "_have_openat2", False)
    root = tmp_path / "root"
    (root / "real/dir").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "abs").symlink_to("/real")
    (root / "rel").symlink_to("real/dir")
    (root / "up").symlink_to("../../../../../../../real")
    (root / "out").symlink_to(outside)
    rootfd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    try:
        expect = os.stat(root / "real/dir").st_ino
        for path in ("/abs/dir", "/rel", "/up/dir", "/../../real/dir", "abs/../real/dir"):
            fd = inroot.open_at(rootfd, path, os.O_PATH | os.O_DIRECTORY)
            try:
                assert os.fstat(fd).st_ino == expect, path
            finally:
                os.close(fd)
        with pytest.raises(FileNotFoundError):  # dangling inside the root: never followed out
            inroot.ensure(rootfd, "/out/new/point", directory=True)
        (root / str(outside).lstrip("/")).mkdir(parents=True)
        fd = inroot.ensure(rootfd, "/out/new/point", directory=True)
        os.close(fd)
        fd = inroot.ensure(rootfd, "/abs/file-point", directory=False)
        os.close(fd)
    finally:
        os.close(rootfd)
    assert os.listdir(outside) == []
    assert (root / str(outside).lstrip("/") / "new/point").is_dir()
    assert (root / "real/file-point").is_file()


@pytest.mark.parametrize(("link", "bind_dst"), [
    ("/nowhere", "/mnt/data"),       # dangling, on the path to the mount point
    ("/nowhere", "/mnt"),            # dangling leaf
    ("/etc/hostname", "/mnt/data"),  # resolves, but to a file where a directory is needed
    ("/mnt", "/mnt"),                # a loop
])
@pytest.mark.root
def test_unusable_symlink_at_a_mount_point_is_refused_untouched(
        minbase_root: Path, tmp_path: Path, link: str, bind_dst: str) -> None:
    (minbase_root / "mnt").rmdir()
    (minbase_root / "mnt").symlink_to(link)
    data = tmp_path / "data"
    data.mkdir()
    before = tree_state(minbase_root)
    with (pytest.raises(mc.ChrootError, match="cannot make the mount point") as e,
          mc.Chroot(minbase_root, binds={data: bind_dst})):
        pass
    assert "/mnt" in e.value.message and e.value.hint
    assert tree_state(minbase_root) == before
    assert not (minbase_root / rootfs.JOURNAL_NAME).exists()
    assert mc.recover(minbase_root) is None


@pytest.mark.root
def test_recover_completes_when_a_journaled_mkdir_is_no_longer_a_directory(
        minbase_root: Path) -> None:
    (minbase_root / "mnt").rmdir()
    (minbase_root / "mnt").symlink_to("/nowhere")          # became a dangling symlink
    (minbase_root / "srv").rmdir()
    (minbase_root / "srv").symlink_to("/etc")               # a symlink to a directory
    (minbase_root / "opt").rmdir()
    (minbase_root / "opt").write_text("a file\n")           # parent is now a file: ENOTDIR
    j = journal.Journal(str(minbase_root), pid=999999)
    for p in ("/mnt", "/srv", "/opt/x", "/gone"):
        j.add_mkdir(p)
    before = tree_state(minbase_root)
    del before[rootfs.JOURNAL_NAME]
    report = mc.recover(minbase_root)
    assert report is not None and len(report.undone) == 4
    assert not (minbase_root / rootfs.JOURNAL_NAME).exists()
    assert tree_state(minbase_root) == before
    assert (minbase_root / "etc" / "hostname").exists()


@pytest.mark.root
def test_copy_in_missing_source_and_into_directories(shared_root: Path, tmp_path: Path) -> None:
    f = tmp_path / "app.conf"
    f.write_text("app\n")
    tree_src = tmp_path / "tree"
    (tree_src / "sub").mkdir(parents=True)
    (tree_src / "sub" / "b").write_text("b\n")
    try:
        with mc.Chroot(shared_root) as ch:
            with pytest.raises(mc.ChrootError, match="cannot copy /missing") as e:
                ch.copy_in("/missing", "/etc/x")
            assert e.value.hint
            assert not (shared_root / "etc/x").exists()
            ch.copy_in(f, "/etc/")                      # an existing directory, with a slash
            ch.copy_in(f, "/srv")                       # an existing directory, no slash
            ch.copy_in(f, "/opt/newdir/")               # a new directory
            ch.copy_in(tree_src, "/opt/trees/")         # a tree into a new directory
            with pytest.raises(mc.ChrootError, match="not a directory"):
                ch.copy_in(tree_src, "/etc/app.conf")   # a tree onto a file
        assert (shared_root / "etc/app.conf").read_text() == "app\n"
        assert (shared_root / "srv/app.conf").read_text() == "app\n"
        assert (shared_root / "opt/newdir").is_dir()
        assert (shared_root / "opt/newdir/app.conf").read_text() == "app\n"
        assert (shared_root / "opt/trees/tree/sub/b").read_text() == "b\n"
    finally:
        for p in ("etc/app.conf", "srv/app.conf"):
            (shared_root / p).unlink(missing_ok=True)
        for p in ("opt/newdir", "opt/trees"):
            if (shared_root / p).is_dir():
                rootfs.remove_tree(shared_root / p)
            else:
                (shared_root / p).unlink(missing_ok=True)


@pytest.mark.root
def test_run_passes_bytes_input_through_in_binary_mode(shared_root: Path) -> None:
    data = bytes(range(256)) * 4
    with mc.Chroot(shared_root) as ch:
        out = ch.run(["cat"], input=data, capture=True)
        assert out.stdout == data and isinstance(out.stderr, bytes)
        text = ch.run(["cat"], input="héllo\n", capture=True)
        assert text.stdout == "héllo\n"
        with pytest.raises(mc.CommandError) as e:
            ch.run(["sh", "-c", "cat >&2; exit 3"], input=b"\xffbad\n")
        assert e.value.returncode == 3 and isinstance(e.value.stderr, str)
        assert "bad" in e.value.stderr


def _children(name: str) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = next(int(line.split()[1]) for line in status.splitlines()
                    if line.startswith("PPid:"))
        if ppid == os.getpid() and name.encode() in cmdline:
            out.append(int(entry))
    return out


def _blocked(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines()
                    if line.startswith("SigBlk:")), 16)


@pytest.mark.root
def test_netns_holder_does_not_block_sigterm_or_sigint(shared_root: Path) -> None:
    deaf = (1 << (signal.SIGTERM - 1)) | (1 << (signal.SIGINT - 1))
    with mc.Chroot(shared_root, network="none") as ch:
        holders = _children("netns")
        assert len(holders) == 1
        assert _blocked(holders[0]) & deaf == 0
        assert ch.run(["true"]).returncode == 0
    assert _children("netns") == []
