"""extract() refuses archives whose members would land outside the destination.

Each malicious tar is crafted with Python's tarfile. The test checks the
error names the member, that nothing appeared outside the destination (a
sentinel directory next to it stays untouched), and that what was written
before the bad member is gone.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from maas_chroot import archive
from maas_chroot.errors import UnsafeArchiveError

pytestmark = pytest.mark.root


def _file(name: str, data: bytes = b"pwned\n") -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _dir(name: str) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    return info, None


def _symlink(name: str, target: str) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    return info, None


def _hardlink(name: str, target: str) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE
    info.linkname = target
    return info, None


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]],
         compression: str = "") -> Path:
    with tarfile.open(path, "w" + (":" + compression if compression else ""),
                      format=tarfile.PAX_FORMAT) as t:
        for info, data in members:
            t.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _snapshot(top: Path) -> list[tuple[str, bytes | str]]:
    out: list[tuple[str, bytes | str]] = []
    for dirpath, dirnames, filenames in os.walk(top):
        for n in sorted(dirnames + filenames):
            p = os.path.join(dirpath, n)
            out.append((p, os.readlink(p) if os.path.islink(p) else
                        (Path(p).read_bytes() if os.path.isfile(p) else b"")))
    return sorted(out)


@pytest.fixture
def arena(tmp_path: Path) -> Path:
    """tmp_path/outside holds a victim file; extraction goes to tmp_path/work/dest."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_bytes(b"original\n")
    (tmp_path / "work").mkdir()
    return tmp_path


CASES: dict[str, tuple[Callable[[Path], list[tuple[tarfile.TarInfo, bytes | None]]], str]] = {
    "absolute path": (lambda t: [_dir("./"), _file(f"{t}/outside/victim")],
                      "/outside/victim"),
    "dotdot path": (lambda t: [_dir("./"), _file("ok"), _file("../../outside/victim")],
                    "../../outside/victim"),
    "dotdot inside a path": (lambda t: [_dir("a"), _file("a/../../../outside/victim")],
                             "a/../../../outside/victim"),
    "write through a symlink": (lambda t: [_dir("./"), _symlink("evil", f"{t}/outside"),
                                           _file("evil/victim")], "evil/victim"),
    "write through a relative symlink": (
        lambda t: [_symlink("up", "../../outside"), _file("up/victim")], "up/victim"),
    "directory through a symlink": (
        lambda t: [_symlink("evil", f"{t}/outside"), _dir("evil/sub")], "evil/sub"),
    "symlink through a symlink": (
        lambda t: [_symlink("evil", f"{t}/outside"), _symlink("evil/victim", "/etc/shadow")],
        "evil/victim"),
    "hardlink to an absolute path": (
        lambda t: [_file("ok"), _hardlink("stolen", f"{t}/outside/victim")], "stolen"),
    "hardlink with dotdot": (
        lambda t: [_file("ok"), _hardlink("stolen", "../../outside/victim")], "stolen"),
    "hardlink through a symlink": (
        lambda t: [_symlink("evil", f"{t}/outside"), _hardlink("stolen", "evil/victim")],
        "stolen"),
    "hardlink to a symlink, then through it": (
        lambda t: [_symlink("evil", f"{t}/outside"), _hardlink("alias", "evil"),
                   _file("alias/victim")], "alias/victim"),
    "root replaced by a symlink": (lambda t: [_symlink(".", f"{t}/outside")], "."),
    "directory replaced by a symlink": (
        lambda t: [_dir("d"), _symlink("d", f"{t}/outside")], "d"),
    "directory replaced by a hardlink to a symlink": (
        lambda t: [_symlink("evil", f"{t}/outside"), _dir("d"), _hardlink("d", "evil")], "d"),
}


@pytest.mark.parametrize("kind", list(CASES))
@pytest.mark.parametrize("compression", ["", "gz"])
def test_unsafe_member_is_refused(arena: Path, kind: str, compression: str) -> None:
    make, member = CASES[kind]
    src = _tar(arena / "evil.tar", make(arena), compression)
    before = _snapshot(arena / "outside")
    dest = arena / "work" / "dest"
    with pytest.raises(UnsafeArchiveError) as err:
        archive.extract(src, dest)
    assert err.value.member.rstrip("/").endswith(member)
    assert member in str(err.value)
    assert err.value.path == os.fspath(src)
    assert _snapshot(arena / "outside") == before
    assert (arena / "outside" / "victim").read_bytes() == b"original\n"
    assert os.listdir(arena / "work") == []  # the partial extraction was removed


def test_safe_links_inside_are_fine(arena: Path) -> None:
    src = _tar(arena / "ok.tar", [
        _dir("./"), _dir("usr"), _dir("usr/bin"), _file("usr/bin/x", b"x"),
        _symlink("bin", "usr/bin"), _symlink("abs", "/etc/passwd"),
        _hardlink("usr/bin/y", "usr/bin/x"), _file("bin2", b"replaced by a file later"),
        _symlink("s", "/tmp"), _file("s", b"a file replaces the symlink, not through it"),
    ])
    dest = archive.extract(src, arena / "work" / "dest")
    assert os.readlink(dest / "bin") == "usr/bin"
    assert os.readlink(dest / "abs") == "/etc/passwd"
    assert os.path.samefile(dest / "usr/bin/x", dest / "usr/bin/y")
    assert not (dest / "s").is_symlink()
    assert (dest / "s").read_bytes() == b"a file replaces the symlink, not through it"


def test_members_replacing_symlinks_never_touch_their_targets(arena: Path) -> None:
    outside = arena / "outside"
    os.chmod(outside, 0o755)
    os.utime(outside / "victim", (1, 1))
    before = (_snapshot(outside), os.stat(outside).st_mode, os.stat(outside / "victim"))
    d = _dir("evil")
    d[0].mode, d[0].mtime = 0o777, 0
    f = _file("victim-link", b"new content\n")
    f[0].mode = 0o777
    src = _tar(arena / "ok.tar", [
        _symlink("evil", str(outside)), d,
        _symlink("victim-link", str(outside / "victim")), f,
    ])
    dest = archive.extract(src, arena / "work" / "dest")
    assert (dest / "evil").is_dir() and not (dest / "evil").is_symlink()
    assert oct((dest / "evil").stat().st_mode) == oct(0o40777)
    assert (dest / "victim-link").read_bytes() == b"new content\n"
    after = (_snapshot(outside), os.stat(outside).st_mode, os.stat(outside / "victim"))
    assert after == before


@pytest.mark.parametrize("compression", ["xz", "gz", "bz2"])
def test_unsafe_member_early_in_a_big_archive(arena: Path, compression: str) -> None:
    # The decompressor is still writing when extraction stops: the error must
    # still be the unsafe member, not the decompressor's broken pipe.
    src = _tar(arena / f"big.tar.{compression}",
               [_file("../escape"), _file("filler", os.urandom(4 << 20))], compression)
    with pytest.raises(UnsafeArchiveError) as err:
        archive.extract(src, arena / "work" / "dest")
    assert err.value.member == "../escape"
    assert os.listdir(arena / "work") == []
