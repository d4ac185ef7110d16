"""chroot.overlay: a copy-on-write copy of a read-only tree, mounted in one thread's own
namespace: changes land in the upper tree, the lower one never changes, the host sees
nothing mounted, and an interrupt stops what the thread runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fixtures import tree_state

from maas_chroot import rootfs
from maas_chroot.chroot import overlay
from maas_chroot.errors import OverlayUnavailable

pytestmark = pytest.mark.root
REPO = Path(__file__).resolve().parent.parent


def _mounts(path: str) -> list[str]:
    with open(path) as f:
        return [line.split()[4] for line in f]


@pytest.fixture
def lower(tmp_path: Path) -> Path:
    low = tmp_path / "lower"
    (low / "etc").mkdir(parents=True)
    (low / "etc/motd").write_text("lower\n")
    os.link(low / "etc/motd", low / "etc/motd.alias")
    (low / "etc/conf").write_text("x\n")
    (low / "dir/sub").mkdir(parents=True)
    (low / "dir/sub/f").write_text("f\n")
    (low / "bin").symlink_to("usr/bin")
    os.setxattr(low / "etc/conf", "user.mark", b"1")
    os.chmod(low, 0o751)
    os.utime(low, (1_000_000, 1_000_000))
    return low


def test_changes_land_in_the_upper_tree_and_never_in_the_lower_one(lower: Path,
                                                                   tmp_path: Path) -> None:
    before = tree_state(lower)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    seen: dict[str, object] = {}

    def change(root: Path) -> str:
        seen["host"] = [p for p in _mounts("/proc/self/mountinfo") if p.startswith(str(root))]
        seen["mine"] = [p for p in _mounts("/proc/thread-self/mountinfo") if p == str(root)]
        st = os.stat(root)  # the root shows the lower root's metadata
        seen["root"] = (st.st_mode & 0o7777, int(st.st_mtime))
        with open(root / "etc/motd", "a") as f:  # an in-place write to a hard-linked file
            f.write("upper\n")
        os.chmod(root / "etc/conf", 0o600)
        os.chown(root / "etc/conf", 1234, 1234)
        os.setxattr(root / "etc/conf", "user.mark", b"2")
        os.rename(root / "dir", root / "moved")
        (root / "new").write_text("new\n")
        # what the thread starts sees the same tree
        return subprocess.run(["cat", str(root / "etc/motd.alias")], capture_output=True,
                              text=True, check=True).stdout

    assert overlay.call(lower, scratch, change) == "lower\nupper\n"
    assert seen["host"] == [] and seen["mine"] == [str(scratch / "rootfs")]
    assert seen["root"] == (0o751, 1_000_000)
    assert tree_state(lower) == before
    assert os.getxattr(lower / "etc/conf", "user.mark") == b"1"
    assert (scratch / "upper/etc/motd").read_text() == "lower\nupper\n"
    assert (scratch / "upper/new").read_text() == "new\n"
    assert list((scratch / "rootfs").iterdir()) == []  # the host only sees the mount point
    assert not [p for p in _mounts("/proc/self/mountinfo") if "scratch" in p]
    rootfs.remove_tree(scratch)


def test_an_error_in_the_thread_is_raised_and_nothing_stays_mounted(lower: Path,
                                                                    tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()

    def boom(root: Path) -> None:
        raise ValueError(f"failed in {root}")

    with pytest.raises(ValueError, match="failed in"):
        overlay.call(lower, scratch, boom)
    rootfs.remove_tree(scratch)
    assert not [t for t in threading.enumerate() if t.name.startswith("maas-chroot-overlay")]


def test_an_interrupt_stops_the_command_the_thread_runs(lower: Path, tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    stop = threading.Event()
    started = threading.Event()

    def slow(root: Path) -> None:
        with subprocess.Popen(["sleep", "60"]) as proc:
            started.set()
            proc.wait()
        assert stop.is_set()

    def interrupt() -> None:
        started.wait(10)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    t = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        overlay.call(lower, scratch, slow, stop=stop)
    assert time.monotonic() - t < 10
    assert stop.is_set()
    rootfs.remove_tree(scratch)


def test_a_path_overlayfs_cannot_take_is_refused(lower: Path, tmp_path: Path) -> None:
    scratch = tmp_path / "a,b"
    scratch.mkdir()
    with pytest.raises(OverlayUnavailable, match="cannot take the path"):
        overlay.call(lower, scratch, lambda root: None)
    assert list(scratch.iterdir()) == []


def test_a_sigkilled_process_leaves_its_overlay_mounted_nowhere(lower: Path,
                                                                  tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    code = ("import sys, time; from pathlib import Path; from maas_chroot.chroot import overlay;"
            "overlay.call(Path(sys.argv[1]), Path(sys.argv[2]), "
            "lambda root: (print('ready', flush=True), time.sleep(60)))")
    with subprocess.Popen([sys.executable, "-c", code, str(lower), str(scratch)],
                          stdout=subprocess.PIPE, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}) as proc:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        mine = [t for t in Path(f"/proc/{proc.pid}/task").iterdir()
                if str(scratch) in (t / "mountinfo").read_text()]
        assert len(mine) == 1  # one thread sees it: the overlay's own
        proc.kill()
    merged = str(scratch / "rootfs")
    seen = []
    for info in Path("/proc").glob("[0-9]*/mountinfo"):
        try:
            if merged in info.read_text():
                seen.append(info)
        except OSError:
            continue
    assert seen == []
    rootfs.remove_tree(scratch)
