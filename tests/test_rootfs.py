"""Host-side file operations confined to a root (maas_chroot.rootfs), on real trees.

Every resolution test runs twice: with openat2(RESOLVE_IN_ROOT) and with the
component walk that replaces it on old kernels (forced by ``_have_openat2 = False``).
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures import deep_tree, open_fds, rm_deep

import maas_chroot as mc
from maas_chroot import MountedError, UnsafePathError, rootfs
from maas_chroot.rootfs import inroot, lock, walk


@pytest.fixture(params=["openat2", "walk"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "walk":
        monkeypatch.setattr(inroot, "_have_openat2", False)
    elif inroot._have_openat2 is False:
        pytest.skip("this kernel has no openat2")
    return str(request.param)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A root with hostile symlinks, and a host directory they point at (with a canary)."""
    host = tmp_path / "host"
    host.mkdir()
    (host / "canary").write_text("host canary\n")
    root = tmp_path / "root"
    for d in ("etc", "usr/lib", "run/systemd/resolve", "var"):
        (root / d).mkdir(parents=True)
    inside_host = root / str(host).lstrip("/")  # where host paths land inside the root
    inside_host.mkdir(parents=True)
    (inside_host / "canary").write_text("inside copy\n")
    (root / "run/systemd/resolve/stub-resolv.conf").write_text("nameserver 127.0.0.53\n")
    (root / "etc/resolv.conf").symlink_to("../run/systemd/resolve/stub-resolv.conf")
    (root / "etc/abs").symlink_to(str(host))            # absolute, pointing "out"
    (root / "etc/up").symlink_to("../" * 10 + str(host).lstrip("/"))  # .. climbing "out"
    (root / "etc/lib").symlink_to("/usr/lib")            # absolute, inside
    (root / "etc/loop").symlink_to("loop")
    (root / "var/run").symlink_to("../run")
    yield root, host
    assert (host / "canary").read_text() == "host canary\n"
    assert sorted(os.listdir(host)) == ["canary"]


@pytest.mark.parametrize("path", ["/etc/abs/canary", "/etc/up/canary", "etc/abs/../host/canary",
                                  "/../../etc/abs/canary"])
def test_reads_through_links_stay_inside(world: tuple[Path, Path], mode: str, path: str) -> None:
    root, _ = world
    assert rootfs.read_file(root, path) == b"inside copy\n"


def test_resolution_follows_links_inside_the_root(world: tuple[Path, Path], mode: str) -> None:
    root, _ = world
    assert rootfs.read_file(root, "/etc/resolv.conf") == b"nameserver 127.0.0.53\n"
    assert rootfs.read_file(root, "/var/run/systemd/resolve/stub-resolv.conf").startswith(b"name")
    fd = rootfs.open_in_root(root, "/etc/lib", os.O_PATH | os.O_DIRECTORY)
    try:
        assert os.fstat(fd).st_ino == os.stat(root / "usr/lib").st_ino
    finally:
        os.close(fd)
    with pytest.raises(OSError):  # ELOOP
        rootfs.read_file(root, "/etc/loop")
    with pytest.raises(OSError):  # a final symlink is refused when asked
        rootfs.read_file(root, "/etc/resolv.conf", follow=False)


def test_writes_through_links_stay_inside(world: tuple[Path, Path], mode: str) -> None:
    root, host = world
    rootfs.write_file(root, "/etc/abs/new", "a\n")
    rootfs.write_file(root, "/etc/up/new2", b"b\n", mode=0o600, uid=1, gid=2)
    rootfs.makedirs(root, "/etc/abs/d1/d2")
    inside = root / str(host).lstrip("/")
    assert (inside / "new").read_text() == "a\n"
    st = os.stat(inside / "new2")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o600, 1, 2)
    assert (inside / "d1/d2").is_dir()


def test_write_replaces_a_final_symlink_never_its_target(world: tuple[Path, Path],
                                                         mode: str) -> None:
    root, _ = world
    rootfs.write_file(root, "/etc/resolv.conf", "nameserver 192.0.2.1\n")
    assert not (root / "etc/resolv.conf").is_symlink()
    assert (root / "run/systemd/resolve/stub-resolv.conf").read_text() == "nameserver 127.0.0.53\n"
    rootfs.write_file(root, "/etc/abs", "replaced the link\n")
    assert (root / "etc/abs").read_text() == "replaced the link\n"
    assert rootfs.unlink(root, "/etc/up") is True  # removes the link itself
    assert rootfs.unlink(root, "/etc/up") is False


def test_snapshot_restore_round_trips_each_kind(world: tuple[Path, Path], mode: str) -> None:
    root, _ = world
    (root / "etc/file").write_bytes(b"\x00binary\xff")
    os.chmod(root / "etc/file", 0o4711)
    os.chown(root / "etc/file", 3, 4)
    for path, kind in (("/etc/resolv.conf", "symlink"), ("/etc/abs", "symlink"),
                       ("/etc/file", "file"), ("/etc/absent", "absent")):
        entry = rootfs.snapshot(root, path)
        assert entry.kind == kind
        assert rootfs.Entry.from_json(entry.to_json()) == entry
        rootfs.write_file(root, path, "swapped\n")
        rootfs.restore(root, entry)
        assert rootfs.snapshot(root, path) == entry
    assert rootfs.lstat(root, "/etc/absent") is None
    with pytest.raises(UnsafePathError):
        rootfs.snapshot(root, "/etc")  # a directory cannot be swapped


def test_bad_paths_are_refused(world: tuple[Path, Path], mode: str) -> None:
    root, _ = world
    for bad in ("/", "/etc/..", ""):
        with pytest.raises(UnsafePathError):
            rootfs.write_file(root, bad, "x")
    with pytest.raises(UnsafePathError):
        rootfs.write_file(root, "/missing/dir/file", "x", mkdirs=False)


# --- mounts and remove_tree -----------------------------------------------------------------


@pytest.mark.root
def test_remove_tree_refuses_while_something_is_mounted_below(tmp_path: Path) -> None:
    tree = tmp_path / "work dir"  # a space: mountinfo escapes it as \040
    point = tree / "a" / "mnt"
    point.mkdir(parents=True)
    (tree / "keep").write_text("x")
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(point)], check=True)
    try:
        (point / "on-tmpfs").write_text("y")
        assert rootfs.mounts_under(tree) == [str(point)]
        with pytest.raises(MountedError, match="mounted"):
            rootfs.remove_tree(tree)
        assert (tree / "keep").exists() and (point / "on-tmpfs").exists()
        fd = os.open(tree, os.O_RDONLY | os.O_DIRECTORY)
        try:
            with pytest.raises(MountedError, match="another filesystem"):
                rootfs.clear_dir_at(fd, str(tree))  # never crosses into the mount
        finally:
            os.close(fd)
        assert (point / "on-tmpfs").exists()
    finally:
        subprocess.run(["umount", str(point)], check=True)
    assert rootfs.mounts_under(tree) == []
    rootfs.remove_tree(tree)
    assert not tree.exists()


def test_remove_tree_never_follows_symlinks(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep me\n")
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "to-outside").symlink_to(outside)
    (tree / "to-file").symlink_to(outside / "precious")
    rootfs.remove_tree(tree)
    assert not tree.exists()
    assert (outside / "precious").read_text() == "keep me\n"
    rootfs.remove_tree(tree)  # missing_ok
    with pytest.raises(FileNotFoundError):
        rootfs.remove_tree(tree, missing_ok=False)


def test_remove_tree_deletes_a_tree_deeper_than_the_recursion_limit(tmp_path: Path) -> None:
    depth = 2000
    assert depth > sys.getrecursionlimit()
    top = deep_tree(tmp_path / "deep", depth)
    fds = open_fds()
    try:
        rootfs.remove_tree(top)
        assert not top.exists()
        assert open_fds() == fds
    finally:
        rm_deep(top)


@pytest.mark.parametrize("opened_before", [True, False],
                         ids=["after-a-successful-openat2", "as-the-first-call"])
def test_an_eperm_from_an_immutable_file_is_the_real_error_and_keeps_openat2(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, opened_before: bool) -> None:
    if inroot.SYS_OPENAT2 is None:
        pytest.skip("no openat2 on this architecture")
    monkeypatch.setattr(inroot, "_have_openat2", None)  # as in a fresh process
    if opened_before:
        (tmp_path / "etc").mkdir()
        (tmp_path / "etc" / "hostname").write_text("a\n")
        os.close(rootfs.open_in_root(tmp_path, "/etc/hostname", os.O_RDONLY))
        assert inroot._have_openat2 is True
    (tmp_path / "locked").write_text("b\n")
    subprocess.run(["chattr", "+i", str(tmp_path / "locked")], check=True)
    try:
        with pytest.raises(PermissionError):
            rootfs.open_in_root(tmp_path, "/locked", os.O_WRONLY)
        # The EPERM of an immutable file does not switch the process to the slow walk.
        assert inroot._have_openat2 is True
    finally:
        subprocess.run(["chattr", "-i", str(tmp_path / "locked")], check=True)


def test_remove_tree_of_a_symlink_with_a_trailing_slash_keeps_the_target(tmp_path: Path) -> None:
    (tmp_path / "target").mkdir()
    (tmp_path / "target" / "keep").write_text("k\n")
    (tmp_path / "link").symlink_to("target")
    rootfs.remove_tree(f"{tmp_path}/link/")
    assert not os.path.lexists(tmp_path / "link")
    assert (tmp_path / "target" / "keep").read_text() == "k\n"


def test_a_walk_stops_when_a_closed_ancestor_was_moved(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(walk, "KEEP", 1)  # only the deepest directory stays open
    (tmp_path / "a" / "b" / "c").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    top = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with walk.DirStack(top, str(tmp_path)) as dirs:
            for name in ("a", "b", "c"):
                dirs.push(name, os.stat(name, dir_fd=dirs.fd, follow_symlinks=False))
            assert dirs.where == f"{tmp_path}/a/b/c"
            os.rename(tmp_path / "a" / "b" / "c", tmp_path / "elsewhere" / "c")
            with pytest.raises(OSError) as err:
                dirs.pop()  # b's fd was closed; c's ".." is now "elsewhere"
            assert err.value.errno == errno.ESTALE
        # the walk closed what it opened, and never the caller's fd
        os.fstat(top)
    finally:
        os.close(top)


@pytest.mark.root
def test_lock_dir_is_created_root_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lockdir = tmp_path / "locks"
    monkeypatch.setattr(lock, "LOCK_DIRS", (str(lockdir),))
    root = tmp_path / "root"
    root.mkdir()
    with lock.locked(str(root)):
        st = os.lstat(lockdir)
        assert st.st_uid == 0 and (st.st_mode & 0o777) == 0o700
        assert len(os.listdir(lockdir)) == 1


@pytest.mark.root
def test_planted_symlink_lock_dir_is_refused(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "attacker"
    target.mkdir()
    lockdir = tmp_path / "locks"
    lockdir.symlink_to(target)
    monkeypatch.setattr(lock, "LOCK_DIRS", (str(lockdir),))
    root = tmp_path / "root"
    root.mkdir()
    with (pytest.raises(mc.ChrootError, match="unsafe session lock directory") as e,
          lock.locked(str(root))):
        pass
    assert str(lockdir) in str(e.value) and "remove" in str(e.value)
    assert os.listdir(target) == []


@pytest.mark.root
@pytest.mark.parametrize(("uid", "mode"), [(65534, 0o755), (0, 0o777), (0, 0o775)])
def test_planted_user_lock_dir_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          uid: int, mode: int) -> None:
    lockdir = tmp_path / "locks"
    lockdir.mkdir()
    os.chown(lockdir, uid, uid)
    os.chmod(lockdir, mode)
    monkeypatch.setattr(lock, "LOCK_DIRS", (str(lockdir),))
    root = tmp_path / "root"
    root.mkdir()
    with (pytest.raises(mc.ChrootError, match="unsafe session lock directory"),
          lock.locked(str(root))):
        pass
    assert os.listdir(lockdir) == []


@pytest.mark.root
def test_exclusive_refuses_a_stale_journal(tmp_path: Path) -> None:
    (tmp_path / rootfs.JOURNAL_NAME).write_text("{}")
    with (pytest.raises(mc.ChrootBusyError, match="cannot pack") as e,
          lock.exclusive(tmp_path, "pack")):
        pass
    assert "recover(" in str(e.value)


def test_kernels_are_regular_vmlinuz_files_newest_last(tmp_path: Path) -> None:
    assert rootfs.kernels(tmp_path) == []  # no /boot at all
    boot = tmp_path / "boot"
    boot.mkdir()
    for name in ("vmlinuz-6.1.0-10-amd64", "vmlinuz-6.1.0-9-amd64", "vmlinux-6.12.1",
                 "config-6.1.0-9-amd64", "vmlinuz-"):
        (boot / name).write_bytes(b"k")
    (boot / "vmlinuz").symlink_to("vmlinuz-6.1.0-10-amd64")  # Debian's link: not a version
    (boot / "vmlinuz-6.99-link").symlink_to("/etc/passwd")  # a link, never followed
    assert rootfs.kernels(tmp_path) == ["6.1.0-9-amd64", "6.1.0-10-amd64", "6.12.1"]


def test_os_release_falls_back_to_usr_lib_and_never_opens_a_fifo(tmp_path: Path) -> None:
    (tmp_path / "usr/lib").mkdir(parents=True)
    (tmp_path / "usr/lib/os-release").write_text('ID=debian\nVERSION_CODENAME="bookworm"\n')
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/os-release").symlink_to("../usr/lib/os-release")
    assert rootfs.os_release(tmp_path)["VERSION_CODENAME"] == "bookworm"
    (tmp_path / "etc/os-release").unlink()
    os.mkfifo(tmp_path / "etc/os-release")
    assert rootfs.os_release(tmp_path) == {"ID": "debian", "VERSION_CODENAME": "bookworm"}
