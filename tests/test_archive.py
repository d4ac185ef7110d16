"""extract() and pack(): metadata fidelity, reproducibility, atomicity, refusals.

The oracle is independent of libarchive: GNU tar (with curtin's exact flags)
and squashfs-tools for the archives, and a tree walk (lstat, xattrs, content
hashes, hard-link identity, holes) for the result.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import random
import signal
import stat
import struct
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from fixtures import deep_tree, gnu_extract, open_fds, paused_in_thread, rm_deep

import maas_chroot as mc
from maas_chroot import archive, rootfs
from maas_chroot.archive import archiving
from maas_chroot.archive.compress import HashingFile, ProcessStream
from maas_chroot.errors import ArchiveError, ChrootBusyError

pytestmark = pytest.mark.root

CURTIN = ["tar", "--xattrs", "--xattrs-include=*", "-Sxpf"]  # FILE --numeric-owner -C TARGET
SPARSE_SIZE = 64 << 20
LATIN1 = b"caf\xe9-na\xefve"


# --- the oracle -------------------------------------------------------------------------


def tree(root: Path) -> dict[bytes, dict[str, object]]:
    """Everything about a tree that an archive must carry, keyed by relative path bytes."""
    out: dict[bytes, dict[str, object]] = {}
    first_name: dict[int, bytes] = {}
    base = os.fsencode(root)

    def visit(rel: bytes) -> None:
        p = base + b"/" + rel if rel else base
        st = os.lstat(p)
        rec: dict[str, object] = {"mode": oct(st.st_mode), "uid": st.st_uid, "gid": st.st_gid,
                                  "mtime": st.st_mtime_ns}
        names = sorted(os.listxattr(p, follow_symlinks=False))
        rec["xattrs"] = {n: os.getxattr(p, n, follow_symlinks=False) for n in names}
        if stat.S_ISREG(st.st_mode):
            h = hashlib.sha256()
            with open(p, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
            rec.update(size=st.st_size, sha256=h.hexdigest(),
                       holes=st.st_blocks * 512 < st.st_size,
                       link=first_name.setdefault(st.st_ino, rel) if st.st_nlink > 1 else None)
        elif stat.S_ISLNK(st.st_mode):
            rec["target"] = os.readlink(p)
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            rec["rdev"] = (os.major(st.st_rdev), os.minor(st.st_rdev))
        out[rel] = rec
        if stat.S_ISDIR(st.st_mode):
            for name in sorted(os.listdir(p)):
                visit(rel + b"/" + name if rel else name)

    visit(b"")
    return out


def assert_same(got: dict[bytes, dict[str, object]], want: dict[bytes, dict[str, object]]) -> None:
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    assert not missing, f"missing: {missing[:10]}"
    assert not extra, f"unexpected: {extra[:10]}"
    diffs = [(k, {f: (got[k].get(f), v) for f, v in want[k].items() if got[k].get(f) != v})
             for k in want if got[k] != want[k]]
    assert not diffs, f"{len(diffs)} entries differ, first: {diffs[:5]}"


# --- the fixture tree -------------------------------------------------------------------


def _run(*argv: str | Path) -> None:
    subprocess.run([str(a) for a in argv], check=True)


def build_hard_tree(top: Path) -> Path:
    """A tree holding every kind of entry a rootfs archive must carry."""
    root = top / "tree"
    root.mkdir()
    b = os.fsencode(root)
    (root / "bin").mkdir()
    ping = root / "bin" / "ping"
    ping.write_bytes(b"\x7fELF pretend ping\n" * 100)
    ping.chmod(0o755)
    _run("setcap", "cap_net_raw+ep", ping)
    os.setxattr(root / "bin", "trusted.note", b"kept")
    os.setxattr(ping, "user.comment", b"\x00binary\xffvalue")
    # POSIX ACLs: an access ACL on a file, access + default ACLs on a directory.
    acl_file = root / "acl-file"
    acl_file.write_text("acl\n")
    _run("setfacl", "-m", "u:1234:rwx,g:5678:r", acl_file)  # mask rwx != group::r--
    acl_file2 = root / "acl-file2"
    acl_file2.write_text("acl\n")
    _run("setfacl", "-m", "u:1234:r,g:5678:r", acl_file2)  # mask r-- == group::r--
    (root / "acl-dir").mkdir()
    _run("setfacl", "-m", "u:1234:rx", "-d", "-m", "g:5678:rwx", root / "acl-dir")
    # devices and a FIFO
    (root / "dev").mkdir()
    os.mknod(root / "dev" / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(root / "dev" / "loop0", 0o660 | stat.S_IFBLK, os.makedev(7, 0))
    os.chown(root / "dev" / "loop0", 0, 6)
    os.mkfifo(root / "dev" / "fifo", 0o620)
    # a 64 MB sparse file with data at both ends
    with open(root / "sparse", "wb") as f:
        f.write(b"head" * 1024)
        f.seek(SPARSE_SIZE - 4)
        f.write(b"tail")
    # non-UTF-8 name, a path over 255 bytes
    with open(b + b"/" + LATIN1, "wb") as f:
        f.write(b"latin-1 name\n")
    deep = root / "deep" / ("d" * 60) / ("e" * 60) / ("f" * 60) / ("g" * 60)
    deep.mkdir(parents=True)
    (deep / ("long-name-" + "x" * 200)).write_text("far away\n")
    assert len(os.fsencode(deep / ("long-name-" + "x" * 200))) - len(b) > 255
    # hard links (also across directories), symlinks (relative, dangling, absolute)
    (root / "h1").write_text("linked\n")
    os.link(root / "h1", root / "h2")
    os.link(root / "h1", root / "bin" / "h3")
    os.symlink("h1", root / "rel-link")
    os.symlink("does/not/exist", root / "dangling")
    os.symlink("/etc/passwd", root / "abs-link")
    os.lchown(root / "abs-link", 4321, 8765)
    # setuid, setgid, sticky; odd owners without passwd entries
    suid = root / "bin" / "suid"
    suid.write_text("#!/bin/sh\n")
    os.chown(suid, 0, 0)
    os.chmod(suid, 0o4755)
    (root / "sgid").mkdir()
    os.chown(root / "sgid", 1234, 5678)
    os.chmod(root / "sgid", 0o2775)
    (root / "tmp").mkdir()
    os.chmod(root / "tmp", 0o1777)
    owned = root / "owned"
    owned.write_text("owned by nobody known\n")
    os.chown(owned, 1234, 5678)
    os.chmod(owned, 0o640)
    (root / "empty-dir").mkdir()
    (root / "empty-file").touch()
    # mtimes with nanoseconds, on files, symlinks and directories (deepest first)
    t = 1_600_000_000_123_456_789
    for i, (dirpath, dirnames, filenames) in enumerate(sorted(os.walk(b), reverse=True)):
        for name in filenames + dirnames:
            os.utime(os.path.join(dirpath, name), ns=(t + i, t + 1000 * i),
                     follow_symlinks=False)
        os.utime(dirpath, ns=(t, t - 7 * i))
    return root


@pytest.fixture(scope="module")
def hard_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    top = tmp_path_factory.mktemp("hard")
    return build_hard_tree(top)


@pytest.fixture(scope="module")
def hard_tree_snapshot(hard_tree: Path) -> dict[bytes, dict[str, object]]:
    snap = tree(hard_tree)
    assert snap[b"bin/ping"]["xattrs"]["security.capability"]  # type: ignore[index]
    assert "system.posix_acl_access" in snap[b"acl-file"]["xattrs"]  # type: ignore[operator]
    assert "system.posix_acl_default" in snap[b"acl-dir"]["xattrs"]  # type: ignore[operator]
    assert snap[b"sparse"]["holes"]
    return snap


def gnu_create(root: Path, out: Path, compress: str | None) -> Path:
    argv = ["tar", "--format=posix", "--xattrs", "--xattrs-include=*", "--acls",
            "--numeric-owner", "-S", "-cf", str(out)]
    if compress:
        argv.insert(1, f"--use-compress-program={compress}")
    subprocess.run([*argv, "-C", str(root), "."], check=True)
    return out


# --- extract ----------------------------------------------------------------------------


@pytest.mark.parametrize(("compress", "fmt"), [(None, "tar"), ("gzip", "tar.gz"),
                                               ("xz -T0", "tar.xz"), ("bzip2", "tar.bz2"),
                                               ("zstd", "tar.zst")])
def test_extract_gnu_tar_archive_restores_everything(
        hard_tree: Path, hard_tree_snapshot: dict[bytes, dict[str, object]], tmp_path: Path,
        compress: str | None, fmt: str) -> None:
    # The name lies about the format: detection is by content.
    src = gnu_create(hard_tree, tmp_path / "image.bin", compress)
    assert archive.detect_format(src) == fmt
    cwd = os.getcwd()
    dest = archive.extract(src, tmp_path / "out")
    assert os.getcwd() == cwd
    assert dest == tmp_path / "out"
    assert_same(tree(dest), hard_tree_snapshot)


def test_extract_squashfs_matches_unsquashfs(
        hard_tree: Path, hard_tree_snapshot: dict[bytes, dict[str, object]],
        tmp_path: Path) -> None:
    img = tmp_path / "root.squashfs"
    _run("mksquashfs", hard_tree, img, "-noappend", "-no-progress", "-quiet", "-comp", "gzip")
    assert archive.detect_format(img) == "squashfs"
    ours = archive.extract(img, tmp_path / "ours")
    _run("unsquashfs", "-no-progress", "-quiet", "-dest", tmp_path / "theirs", img)
    assert_same(tree(ours), tree(tmp_path / "theirs"))
    # squashfs keeps whole-second mtimes, and mksquashfs 4.5 drops system.* xattrs
    # ("Unrecognised xattr prefix"), i.e. ACLs: everything else must be there.
    want = {k: dict(v, mtime=int(v["mtime"]) // 10**9 * 10**9,  # type: ignore[call-overload]
                    xattrs={n: x for n, x in v["xattrs"].items()  # type: ignore[attr-defined]
                            if not n.startswith("system.")})
            for k, v in hard_tree_snapshot.items()}
    assert want[b"bin/ping"]["xattrs"]
    assert_same(tree(ours), want)


def test_extract_squashfs_progress_and_errors(hard_tree: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    img = tmp_path / "root.squashfs"
    _run("mksquashfs", hard_tree, img, "-noappend", "-no-progress", "-quiet", "-comp", "gzip")
    bars: list[Any] = []
    real_bar = archiving._progress.bar

    def keep(show: bool | None, **kwargs: Any) -> Any:
        bars.append(real_bar(True, file=io.StringIO(), **kwargs))
        return bars[-1]

    monkeypatch.setattr(archiving._progress, "bar", keep)
    archive.extract(img, tmp_path / "ours", progress=True)
    # unsquashfs's own bar drives ours, and it ends at the image's size
    assert [(b.desc, b.total, b.n) for b in bars] == [
        ("extract root.squashfs", img.stat().st_size, img.stat().st_size)]
    bad = tmp_path / "bad.squashfs"
    bad.write_bytes(b"hsqs" + bytes(8192))
    with pytest.raises(ArchiveError, match="valid SQUASHFS superblock") as info:
        archive.extract(bad, tmp_path / "bad")
    assert info.value.path == str(bad)
    assert not (tmp_path / "bad").exists()


def test_extract_into_existing_empty_dir_and_refuses_non_empty(
        hard_tree: Path, tmp_path: Path) -> None:
    src = gnu_create(hard_tree, tmp_path / "a.tar", None)
    (tmp_path / "empty").mkdir()
    archive.extract(src, tmp_path / "empty")
    assert (tmp_path / "empty" / "bin" / "ping").is_file()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep").write_text("mine")
    with pytest.raises(ArchiveError, match="not empty"):
        archive.extract(src, tmp_path / "full")
    assert os.listdir(tmp_path / "full") == ["keep"]


@pytest.mark.parametrize("existing", [False, True])
def test_failed_extract_removes_what_it_wrote(hard_tree: Path, tmp_path: Path,
                                              existing: bool) -> None:
    full = gnu_create(hard_tree, tmp_path / "a.tar.gz", "gzip").read_bytes()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(full[: len(full) * 3 // 4])  # truncated: the sparse file is cut off
    dest = tmp_path / "out"
    if existing:
        dest.mkdir()
    with pytest.raises(ArchiveError, match=r"cut\.tar\.gz"):
        archive.extract(cut, dest)
    if existing:
        assert os.listdir(dest) == []
    else:
        assert not dest.exists()


def test_extract_reports_a_corrupt_compressed_stream(hard_tree: Path, tmp_path: Path) -> None:
    data = bytearray(gnu_create(hard_tree, tmp_path / "a.tar.xz", "xz").read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad = tmp_path / "bad.tar.xz"
    bad.write_bytes(bytes(data))
    with pytest.raises(ArchiveError, match=r"bad\.tar\.xz"):
        archive.extract(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_libarchive_warnings_are_errors(tmp_path: Path) -> None:
    # An xattr outside any namespace cannot be restored: libarchive warns, we fail.
    src = tmp_path / "w.tar"
    info = tarfile.TarInfo("file")
    info.size = 2
    info.pax_headers = {"SCHILY.xattr.bogus": "x"}
    with tarfile.open(src, "w", format=tarfile.PAX_FORMAT) as t:
        t.addfile(info, __import__("io").BytesIO(b"hi"))
    with pytest.raises(ArchiveError, match="warning"):
        archive.extract(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_progress_bars_and_result_repr(hard_tree: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    res = archive.pack(hard_tree, tmp_path / "p.tgz", progress=True)
    archive.extract(res.path, tmp_path / "out", progress=True)
    err = capsys.readouterr().err
    assert "pack p.tgz" in err and "extract p.tgz" in err
    assert repr(res).startswith(f"PackResult(path={os.fspath(res.path)!r}, size={res.size} ")
    assert res.sha256 in repr(res)


def test_detect_format_refuses_other_files(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"PK\x03\x04 not a tarball" * 40)
    with pytest.raises(ArchiveError, match="not a tar archive"):
        archive.detect_format(junk)
    with pytest.raises(ArchiveError, match="not a tar archive"):
        archive.extract(junk, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --- pack -------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["gzip", "xz", "bzip2"])
def test_pack_survives_curtins_extract_command(
        hard_tree: Path, hard_tree_snapshot: dict[bytes, dict[str, object]], tmp_path: Path,
        compression: str) -> None:
    res = archive.pack(hard_tree, tmp_path / "image.tgz", compression=compression, level=1,
                       progress=False)
    assert res.path == tmp_path / "image.tgz"
    data = res.path.read_bytes()
    assert res.size == len(data)
    assert res.sha256 == hashlib.sha256(data).hexdigest()
    assert archive.detect_format(res.path) == {"gzip": "tar.gz", "xz": "tar.xz",
                                               "bzip2": "tar.bz2"}[compression]
    # curtin's exact command (no --acls): ACLs must come back through the xattrs.
    target = tmp_path / "target"
    target.mkdir()
    z = ["-z"] if compression == "gzip" else []  # curtin: tar -Sxpzf FILE, or smtar for URLs
    done = subprocess.run(["tar", "-C", str(target), "--xattrs", "--xattrs-include=*", *z,
                           "-Sxpf", str(res.path), "--numeric-owner"], check=True,
                          capture_output=True, text=True)
    assert_same(tree(target), hard_tree_snapshot)
    # GNU tar's only remark: the raw (non-UTF-8) name's hdrcharset, which it ignores.
    assert set(done.stderr.splitlines()) <= {
        "tar: Ignoring unknown extended header keyword 'hdrcharset'"}, done.stderr
    # With --acls as well, every ACL whose group:: entry equals its mask survives; the
    # other kind cannot be written for both commands at once (see maas_chroot/_mktar.py).
    other = tmp_path / "acls"
    gnu_extract(res.path, other)
    want = dict(hard_tree_snapshot)
    want[b"acl-file"] = dict(want[b"acl-file"], xattrs={})
    assert_same(tree(other), want)


def test_pack_stores_hardlinks_sparse_files_numeric_ids_and_no_atime(
        hard_tree: Path, tmp_path: Path) -> None:
    res = archive.pack(hard_tree, tmp_path / "image.tgz", progress=False)
    with tarfile.open(res.path) as t:
        members = t.getmembers()
    names = [m.name for m in members]
    assert names[0] == "."
    by = {m.name: m for m in members}
    assert by["./h2"].islnk() and by["./h2"].linkname == "./bin/h3"
    assert by["./h1"].islnk() and by["./h1"].linkname == "./bin/h3"
    assert by["./bin/h3"].isreg()
    assert by["./sparse"].pax_headers.get("GNU.sparse.major") == "1"
    assert res.size < 2 << 20  # the 64 MB hole is not stored
    for m in members:
        assert m.uname == "" and m.gname == ""
        assert "atime" not in m.pax_headers and "ctime" not in m.pax_headers
    assert "SCHILY.xattr.security.capability" in by["./bin/ping"].pax_headers
    assert "SCHILY.xattr.system.posix_acl_access" in by["./acl-file"].pax_headers
    assert by["./acl-file"].mode == 0o674  # group bits = the ACL mask, as stat says
    assert "SCHILY.acl.access" in by["./acl-file2"].pax_headers
    assert "SCHILY.acl.default" in by["./acl-dir"].pax_headers
    assert "SCHILY.xattr.system.posix_acl_default" in by["./acl-dir"].pax_headers


def test_pack_extract_round_trip(hard_tree: Path,
                                 hard_tree_snapshot: dict[bytes, dict[str, object]],
                                 tmp_path: Path) -> None:
    res = archive.pack(hard_tree, tmp_path / "image.tar.xz", compression="xz", progress=False)
    assert_same(tree(archive.extract(res.path, tmp_path / "out")), hard_tree_snapshot)


def test_pack_is_reproducible(hard_tree: Path, tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    one = archive.pack(hard_tree, tmp_path / "one.tgz", progress=False)
    # A copy of the tree (new inodes, ctimes and atimes) packs to the very same bytes,
    # whatever the number of compression threads.
    copy = archive.extract(one.path, tmp_path / "copy")
    two = archive.pack(copy, tmp_path / "two.tgz", threads=1, progress=False)
    assert one.sha256 == two.sha256
    assert one.path.read_bytes() == two.path.read_bytes()
    # gzip header: no name, mtime 0
    head = one.path.read_bytes()[:10]
    assert head[:3] == b"\x1f\x8b\x08" and head[3] & 0x08 == 0
    assert struct.unpack("<I", head[4:8])[0] == 0
    subprocess.run(["gzip", "-t", str(one.path)], check=True)
    # SOURCE_DATE_EPOCH clamps newer mtimes only.
    epoch = 1_650_000_000
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(epoch))
    os.utime(copy / "owned", ns=(epoch * 10**9 + 5, 1_700_000_000 * 10**9))
    three = archive.pack(copy, tmp_path / "three.tgz", progress=False)
    four = archive.pack(copy, tmp_path / "four.tgz", progress=False)
    assert three.sha256 == four.sha256 != one.sha256
    with tarfile.open(three.path) as t:
        assert max(m.mtime for m in t.getmembers()) == epoch
        assert t.getmember("./owned").mtime == epoch
        assert t.getmember("./h1").mtime < epoch


def test_pack_falls_back_to_zlib_gzip(hard_tree: Path, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from maas_chroot.archive import compress as _compress
    fast = archive.pack(hard_tree, tmp_path / "fast.tgz", progress=False)
    monkeypatch.setattr(_compress, "_gzip_ng", None)
    assert _compress.gzip_backend() == "zlib"
    slow = archive.pack(hard_tree, tmp_path / "slow.tgz", progress=False)
    head = slow.path.read_bytes()[:10]
    assert head[3] & 0x08 == 0 and struct.unpack("<I", head[4:8])[0] == 0  # no name, mtime 0
    with gzip.open(fast.path) as a, gzip.open(slow.path) as b:
        assert a.read() == b.read()  # the same tar inside


def test_pack_refuses_a_root_with_a_session_journal(hard_tree: Path, tmp_path: Path) -> None:
    root = archive.extract(archive.pack(hard_tree, tmp_path / "a.tgz", progress=False).path,
                           tmp_path / "root")
    (root / rootfs.JOURNAL_NAME).write_text("{}")
    with pytest.raises(ChrootBusyError, match="journal") as err:
        archive.pack(root, tmp_path / "b.tgz")
    assert "recover" in str(err.value)
    assert not (tmp_path / "b.tgz").exists()


def test_pack_refuses_zstd_bad_levels_and_output_inside_the_root(
        hard_tree: Path, tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match="zstd") as err:
        archive.pack(hard_tree, tmp_path / "a.tar.zst", compression="zstd")
    assert "curtin" in str(err.value)
    with pytest.raises(ArchiveError, match="level"):
        archive.pack(hard_tree, tmp_path / "a.tgz", level=12)
    with pytest.raises(ArchiveError, match="inside the tree"):
        archive.pack(hard_tree, hard_tree / "bin" / "self.tgz")
    assert not list(tmp_path.iterdir())
    assert not (hard_tree / "bin" / "self.tgz").exists()


def test_pack_does_not_cross_into_mounts(hard_tree: Path, tmp_path: Path) -> None:
    root = archive.extract(archive.pack(hard_tree, tmp_path / "a.tgz", progress=False).path,
                           tmp_path / "root")
    (root / "proc").mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "none", str(root / "proc")],
                   check=True)
    try:
        (root / "proc" / "host-secret").write_text("x")
        res = archive.pack(root, tmp_path / "b.tgz", progress=False)
    finally:
        subprocess.run(["umount", str(root / "proc")], check=True)
    with tarfile.open(res.path) as t:
        names = t.getnames()
    assert "./proc" in names
    assert not [n for n in names if n.startswith("./proc/")]


def test_failed_pack_leaves_nothing(minbase_root: Path, tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "none", str(small)], check=True)
    try:
        with pytest.raises(ArchiveError, match="No space"):
            archive.pack(minbase_root, small / "image.tgz", progress=False)
        assert os.listdir(small) == []
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_killed_pack_leaves_nothing_at_out(minbase_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "image.tgz"
    out.parent.mkdir()
    code = ("import sys; from maas_chroot import archive; "
            "archive.pack(sys.argv[1], sys.argv[2], threads=1, progress=False)")
    child = subprocess.Popen([sys.executable, "-c", code, str(minbase_root), str(out)])
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and child.poll() is None:
            parts = [p for p in out.parent.iterdir() if p.name.endswith(".part")]
            if parts and parts[0].stat().st_size > 4 << 20:
                break
            time.sleep(0.01)
        assert child.poll() is None, "pack finished before it could be killed"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert not out.exists()
    leftovers = [p.name for p in out.parent.iterdir()]
    assert all(n.startswith(".image.tgz.") and n.endswith(".part") for n in leftovers)


def test_minbase_round_trip(minbase_tar: Path, tmp_path: Path) -> None:
    """A real Debian rootfs: extract == GNU tar, and pack -> GNU tar gives it back."""
    ours = archive.extract(minbase_tar, tmp_path / "ours")
    gnu_extract(minbase_tar, tmp_path / "gnu")
    want = tree(tmp_path / "gnu")
    assert_same(tree(ours), want)
    res = archive.pack(ours, tmp_path / "mb.tgz", progress=False)
    with gzip.open(res.path) as g:
        assert g.read(512)[257:262] == b"ustar"
    back = tmp_path / "back"
    back.mkdir()
    subprocess.run([*CURTIN, str(res.path), "--numeric-owner", "-C", str(back)], check=True)
    assert_same(tree(back), want)
    for d in (ours, tmp_path / "gnu", back):
        rootfs.remove_tree(d)


def _text_tree(root: Path) -> Path:
    """~12 MB of compressible, non-repeating text: many gzip blocks, several xz blocks."""
    rng = random.Random(7)
    words = [bytes(rng.choices(b"abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 9)))
             for _ in range(5000)]
    root.mkdir()
    for i in range(3):
        data = b" ".join(rng.choices(words, k=700_000))
        (root / f"f{i}.txt").write_bytes(data)
        os.utime(root / f"f{i}.txt", (0, 0))
    os.utime(root, (0, 0))
    return root


@pytest.mark.parametrize("compression", ["gzip", "xz"])
def test_pack_bytes_do_not_depend_on_the_thread_count(tmp_path: Path, compression: str) -> None:
    root = _text_tree(tmp_path / "root")
    digests = {
        n: archive.pack(root, tmp_path / f"out.{n}", compression=compression, level=1,
                        threads=n, progress=False).sha256
        for n in (1, 2, 4)}
    assert len(set(digests.values())) == 1, digests


def test_pack_round_trips_a_tree_deeper_than_the_recursion_limit(tmp_path: Path) -> None:
    depth = 1500  # ./d/d/.../f: 3,000 bytes, under PATH_MAX for GNU tar's extraction
    assert depth > sys.getrecursionlimit()
    top = deep_tree(tmp_path / "deep", depth)
    back = tmp_path / "back"
    try:
        fds = open_fds()
        out = archive.pack(top, tmp_path / "deep.tgz", progress=False).path
        assert open_fds() == fds
        gnu_extract(out, back)
        level = os.open(back, os.O_RDONLY | os.O_DIRECTORY)
        for i in range(depth):
            assert sorted(os.listdir(level)) == ["d", "f"]
            with open(os.open("f", os.O_RDONLY, dir_fd=level), "rb") as f:
                assert f.read() == b"%d\n" % i
            sub = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=level)
            os.close(level)
            level = sub
        assert os.listdir(level) == []
        os.close(level)
    finally:
        rm_deep(back)
        rm_deep(top)


class _SlowFile(HashingFile):
    """A HashingFile whose writes take a while, so the pump thread is caught in one."""

    def __init__(self, fd: int) -> None:
        super().__init__(fd)
        self.started = threading.Event()

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self.started.set()
        time.sleep(0.3)
        return super().write(data)


def test_aborting_a_compressor_stream_stops_its_pump_before_returning(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        raw = _SlowFile(fd)
        stream = ProcessStream(["cat"], raw, str(tmp_path / "out"))
        stream.write(b"x" * (256 << 10))
        assert raw.started.wait(10)
        stream.abort()
        # Nothing may write to fd once abort() returned: the caller closes it next.
        assert not stream._pump.is_alive()
        assert stream.proc.returncode is not None
    finally:
        os.close(fd)


@pytest.mark.root
def test_pack_and_a_session_exclude_each_other(minbase_root: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from maas_chroot import archive

    busy = r"cannot start pack: .* in use by pid \d+ \(a chroot session\)"
    with mc.Chroot(minbase_root), pytest.raises(mc.ChrootBusyError, match=busy):
        archive.pack(minbase_root, tmp_path / "live.tgz", progress=False)
    assert not (tmp_path / "live.tgz").exists()

    out = tmp_path / "img.tgz"
    with (paused_in_thread(monkeypatch, archiving.tarwrite, "write_tree",
                            lambda: archive.pack(minbase_root, out, progress=False)) as result,
          pytest.raises(mc.ChrootBusyError, match=r"in use by pid \d+ \(pack\)"),
          mc.Chroot(minbase_root)):
        pass
    assert isinstance(result[0], archive.PackResult)
    names = subprocess.run(["tar", "-tzf", str(out)], check=True,
                           capture_output=True, text=True).stdout.split()
    assert "./usr/sbin/policy-rc.d" not in names and f"./{rootfs.JOURNAL_NAME}" not in names
