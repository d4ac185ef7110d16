"""Regression tests for review findings in the chroot session, its journal and its lock."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import tree_state

import maas_chroot as mc
from maas_chroot import rootfs
from maas_chroot.archive import archiving
from maas_chroot.chroot import journal as _journal
from maas_chroot.rootfs import lock as _rootlock
from maas_chroot.sources import plans as _resolve

pytestmark = pytest.mark.root

from maas_chroot.customise import scrubbing as sysprep_mod  # noqa: E402

# --- H1: the lock directory is root-only and never followed through a planted path ----------


def test_lock_dir_is_created_root_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lockdir = tmp_path / "locks"
    monkeypatch.setattr(_rootlock, "LOCK_DIRS", (str(lockdir),))
    root = tmp_path / "root"
    root.mkdir()
    with _rootlock.locked(str(root)):
        st = os.lstat(lockdir)
        assert st.st_uid == 0 and (st.st_mode & 0o777) == 0o700
        assert len(os.listdir(lockdir)) == 1


def test_planted_symlink_lock_dir_is_refused(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "attacker"
    target.mkdir()
    lockdir = tmp_path / "locks"
    lockdir.symlink_to(target)
    monkeypatch.setattr(_rootlock, "LOCK_DIRS", (str(lockdir),))
    root = tmp_path / "root"
    root.mkdir()
    with (pytest.raises(mc.ChrootError, match="unsafe session lock directory") as e,
          _rootlock.locked(str(root))):
        pass
    assert str(lockdir) in str(e.value) and "remove" in str(e.value)
    assert os.listdir(target) == []


@pytest.mark.parametrize(("uid", "mode"), [(65534, 0o755), (0, 0o777), (0, 0o775)])
def test_planted_user_lock_dir_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          uid: int, mode: int) -> None:
    lockdir = tmp_path / "locks"
    lockdir.mkdir()
    os.chown(lockdir, uid, uid)
    os.chmod(lockdir, mode)
    monkeypatch.setattr(_rootlock, "LOCK_DIRS", (str(lockdir),))
    root = tmp_path / "root"
    root.mkdir()
    with (pytest.raises(mc.ChrootError, match="unsafe session lock directory"),
          _rootlock.locked(str(root))):
        pass
    assert os.listdir(lockdir) == []


# --- C1: a dangling symlink at a mount-point path --------------------------------------------


@pytest.mark.parametrize(("link", "bind_dst"), [
    ("/nowhere", "/mnt/data"),       # dangling, on the path to the mount point
    ("/nowhere", "/mnt"),            # dangling leaf
    ("/etc/hostname", "/mnt/data"),  # resolves, but to a file where a directory is needed
    ("/mnt", "/mnt"),                # a loop
])
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


def test_recover_completes_when_a_journaled_mkdir_is_no_longer_a_directory(
        minbase_root: Path) -> None:
    (minbase_root / "mnt").rmdir()
    (minbase_root / "mnt").symlink_to("/nowhere")          # became a dangling symlink
    (minbase_root / "srv").rmdir()
    (minbase_root / "srv").symlink_to("/etc")               # a symlink to a directory
    (minbase_root / "opt").rmdir()
    (minbase_root / "opt").write_text("a file\n")           # parent is now a file: ENOTDIR
    j = _journal.Journal(str(minbase_root), pid=999999)
    for p in ("/mnt", "/srv", "/opt/x", "/gone"):
        j.add_mkdir(p)
    before = tree_state(minbase_root)
    del before[rootfs.JOURNAL_NAME]
    report = mc.recover(minbase_root)
    assert report is not None and len(report.undone) == 4
    assert not (minbase_root / rootfs.JOURNAL_NAME).exists()
    assert tree_state(minbase_root) == before
    assert (minbase_root / "etc" / "hostname").exists()


# --- C2: sysprep and copies hold the session lock (no check-then-act on the journal) ---------


def test_sysprep_and_copy_refuse_a_live_session(minbase_root: Path, tmp_path: Path) -> None:
    with mc.Chroot(minbase_root):
        before = tree_state(minbase_root)
        with pytest.raises(mc.ChrootBusyError, match="cannot start sysprep") as e:
            mc.sysprep(minbase_root, progress=False)
        assert f"pid {os.getpid()} (a chroot session)" in str(e.value)
        with pytest.raises(mc.ChrootBusyError, match="cannot start copy"):
            _resolve.copy_tree(minbase_root, tmp_path / "copy")
        assert tree_state(minbase_root) == before
        assert not (tmp_path / "copy").exists()


@contextlib.contextmanager
def _paused_in_thread(monkeypatch: pytest.MonkeyPatch, target: Any, name: str,
                      work: Callable[[], object]) -> Iterator[list[object]]:
    """Run ``work()`` in a thread, held inside ``target[name]`` (or ``target.name``).

    The body runs while the thread is paused there (holding whatever lock it took);
    on exit the thread is released and joined, and the list holds what ``work`` returned.
    """
    started, release = threading.Event(), threading.Event()
    real = target[name] if isinstance(target, dict) else getattr(target, name)

    def slow(*args: Any, **kwargs: Any) -> Any:
        started.set()
        release.wait(60)
        return real(*args, **kwargs)

    if isinstance(target, dict):
        monkeypatch.setitem(target, name, slow)
    else:
        monkeypatch.setattr(target, name, slow)
    result: list[object] = []
    worker = threading.Thread(target=lambda: result.append(work()))
    worker.start()
    try:
        assert started.wait(60)
        yield result
    finally:
        release.set()
        worker.join(60)


def test_a_session_cannot_start_while_sysprep_runs(minbase_root: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    with (_paused_in_thread(monkeypatch, sysprep_mod._OPS, "machine-id",
                            lambda: mc.sysprep(minbase_root, progress=False)) as result,
          pytest.raises(mc.ChrootBusyError, match=r"in use by pid \d+ \(sysprep\)"),
          mc.Chroot(minbase_root)):
        pass
    assert isinstance(result[0], mc.SysprepReport)
    assert not (minbase_root / rootfs.JOURNAL_NAME).exists()
    assert not (minbase_root / "usr/sbin/policy-rc.d").exists()
    with mc.Chroot(minbase_root):  # the lock is free again
        pass


def test_pack_and_a_session_exclude_each_other(minbase_root: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from maas_chroot import archive

    busy = r"cannot start pack: .* in use by pid \d+ \(a chroot session\)"
    with mc.Chroot(minbase_root), pytest.raises(mc.ChrootBusyError, match=busy):
        archive.pack(minbase_root, tmp_path / "live.tgz", progress=False)
    assert not (tmp_path / "live.tgz").exists()

    out = tmp_path / "img.tgz"
    with (_paused_in_thread(monkeypatch, archiving._mktar, "write_tree",
                            lambda: archive.pack(minbase_root, out, progress=False)) as result,
          pytest.raises(mc.ChrootBusyError, match=r"in use by pid \d+ \(pack\)"),
          mc.Chroot(minbase_root)):
        pass
    assert isinstance(result[0], archive.PackResult)
    names = subprocess.run(["tar", "-tzf", str(out)], check=True,
                           capture_output=True, text=True).stdout.split()
    assert "./usr/sbin/policy-rc.d" not in names and f"./{rootfs.JOURNAL_NAME}" not in names


def test_exclusive_refuses_a_stale_journal(tmp_path: Path) -> None:
    (tmp_path / rootfs.JOURNAL_NAME).write_text("{}")
    with (pytest.raises(mc.ChrootBusyError, match="cannot pack") as e,
          _rootlock.exclusive(tmp_path, "pack")):
        pass
    assert "recover(" in str(e.value)


# --- C4: copy_in like cp, and binary input to run() ------------------------------------------


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


# --- C6: helpers started while the session defers signals do not inherit the blocked mask ---


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


def test_netns_holder_does_not_block_sigterm_or_sigint(shared_root: Path) -> None:
    deaf = (1 << (signal.SIGTERM - 1)) | (1 << (signal.SIGINT - 1))
    with mc.Chroot(shared_root, network="none") as ch:
        holders = _children("netns")
        assert len(holders) == 1
        assert _blocked(holders[0]) & deaf == 0
        assert ch.run(["true"]).returncode == 0
    assert _children("netns") == []
