"""Reading the host's apt configuration (both formats), so nothing names a mirror."""

from __future__ import annotations

from pathlib import Path

import pytest

from maas_chroot.errors import SourceError
from maas_chroot.sources import hostapt


def _etc(tmp_path: Path, sources_list: str = "", **d: str) -> Path:
    etc = tmp_path / "apt"
    (etc / "sources.list.d").mkdir(parents=True)
    (etc / "sources.list").write_text(sources_list)
    for name, text in d.items():
        (etc / "sources.list.d" / name.replace("_", ".")).write_text(text)
    return etc


def test_one_line_format_with_options(tmp_path: Path) -> None:
    etc = _etc(tmp_path, "# comment\ndeb-src http://m.example/debian bookworm main\n"
               "deb [arch=amd64 signed-by=/k.gpg] http://m.example/debian/ bookworm main contrib\n")
    src = hostapt.host_mirror("bookworm", etc=str(etc))
    assert src == hostapt.AptSource("http://m.example/debian", ("bookworm",),
                                    ("main", "contrib"), "/k.gpg")


def test_deb822_format(tmp_path: Path) -> None:
    etc = _etc(tmp_path, debian_sources=(
        "Types: deb deb-src\nURIs: http://a.example/debian\nSuites: trixie trixie-updates\n"
        "Components: main\nSigned-By: /usr/share/keyrings/x.gpg\n\n"
        "Types: deb\nURIs: http://b.example/debian\nSuites: sid\nComponents: main\nEnabled: no\n"))
    src = hostapt.host_mirror("trixie", etc=str(etc))
    assert src.uri == "http://a.example/debian"
    assert src.signed_by == "/usr/share/keyrings/x.gpg"
    with pytest.raises(SourceError, match="sid"):
        hostapt.host_mirror("sid", etc=str(etc))


def test_this_host_has_a_mirror_for_its_own_release() -> None:
    src = hostapt.host_mirror()
    assert src.uri.startswith(("http://", "https://", "file:"))
    assert hostapt.os_release()["VERSION_CODENAME"] in src.suites
