"""ch.apt: Status-Fd parsing, the apt-get engine, and real apt in a real Chroot.

The first part needs neither root nor the network: the engine runs against a
stand-in chroot whose "apt-get" is a shell script on the host that prints what
apt would and writes Status-Fd lines to the fd it was given. The second part
(marked root + network) runs real apt against the mirror the minbase image's
own sources name, and a signed apt repository served on 127.0.0.1.
"""

from __future__ import annotations

import io
import os
import subprocess
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
from aptrepo import DebSpec, make_deb, make_key

from maas_chroot import _aptprogress as ap
from maas_chroot import run as _run
from maas_chroot.apt import APT_ENV, PROXY_FILE, Apt, AptResult
from maas_chroot.errors import CommandError, MaasChrootError

# --- Status-Fd parsing -------------------------------------------------------------------


def test_parse_status_lines() -> None:
    p = ap.parse_status_line
    assert p("dlstatus:1:0.0000:Retrieving file 1 of 3") == ap.StatusEvent(
        "dlstatus", "1", 0.0, "Retrieving file 1 of 3")
    assert p("pmstatus:jq:42.8571:Installing jq (amd64)") == ap.StatusEvent(
        "pmstatus", "jq", 42.8571, "Installing jq (amd64)")
    # an architecture-qualified package and a message with colons
    assert p("pmstatus:libc6:amd64:20:Configuring libc6:amd64 (x: y)\n") == ap.StatusEvent(
        "pmstatus", "libc6:amd64", 20.0, "Configuring libc6:amd64 (x: y)")
    assert p("pmerror:foo:50:subprocess installed post-installation script returned error "
             "exit status 1").kind == "pmerror"  # type: ignore[union-attr]
    assert p("pmstatus:dpkg-exec:100:Running dpkg").percent == 100.0  # type: ignore[union-attr]
    for junk in ("", "Get:1 http://x bookworm/main amd64 jq 1.6", "pmstatus:jq", "foo:1:2:3",
                 "pmstatus:jq:abc:msg"):
        assert p(junk) is None, junk


def test_status_parser_joins_lines_split_across_reads() -> None:
    parser = ap.StatusParser()
    data = b"dlstatus:1:10.5:Retrieving\npmstatus:jq:50:Unpack"
    events = []
    for i in range(0, len(data), 7):
        events += parser.feed(data[i:i + 7])
    assert [e.kind for e in events] == ["dlstatus"]
    events += parser.feed(b"ing jq\n") + parser.flush()
    assert [(e.kind, e.item, e.percent, e.message) for e in events] == [
        ("dlstatus", "1", 10.5, "Retrieving"), ("pmstatus", "jq", 50.0, "Unpacking jq")]


def test_progress_bar_follows_download_then_install_phases() -> None:
    out = io.StringIO()
    bar = ap._progress.bar(True, total=100, desc="apt-get install", unit="%", file=out)
    tracker = ap.AptProgress(bar, "apt-get install")
    for line in ("dlstatus:1:0:Retrieving file 1 of 2", "dlstatus:2:60:Retrieving file 2 of 2",
                 "dlstatus:2:100:Retrieving file 2 of 2"):
        tracker(ap.parse_status_line(line))  # type: ignore[arg-type]
    assert tracker.phase == "downloading" and bar.n == 100
    tracker(ap.parse_status_line("pmstatus:jq:25:Installing jq"))  # type: ignore[arg-type]
    assert tracker.phase == "installing" and bar.n == 25  # a new phase starts from zero
    tracker(ap.parse_status_line("pmerror:jq:30:postinst failed"))  # type: ignore[arg-type]
    tracker(ap.parse_status_line("pmstatus:jq:100:Installed jq"))  # type: ignore[arg-type]
    assert bar.n == 100 and tracker.errors == ["jq: postinst failed"]
    assert bar.desc == "apt-get install: installing"
    bar.close()
    assert "apt-get install" in out.getvalue()


# --- the engine, against a stand-in chroot ------------------------------------------------


class FakeChroot:
    """Runs commands on the host (no chroot): "apt-get" is replaced by ``script``."""

    def __init__(self, root: Path, script: str = "exit 0") -> None:
        self.root = root
        self.script = script
        self.argv: list[list[str]] = []
        self.files: dict[str, tuple[str, bytes]] = {}  # path -> (how, data)

    def run(self, argv: Sequence[str], *, check: bool = True, capture: bool = False,
            input: str | bytes | None = None, env: dict[str, str] | None = None,
            ) -> subprocess.CompletedProcess[str]:
        self.argv.append(list(argv))
        out = argv[-1].replace("XXXXXX", "Ab12Cd") + "\n" if argv[0] == "mktemp" else ""
        return subprocess.CompletedProcess(list(argv), 0, out, "")

    def spawn(self, argv: Sequence[str], *, env: dict[str, str] | None = None,
              stdout: Any = subprocess.PIPE, stderr: Any = subprocess.PIPE,
              pass_fds: Sequence[int] = ()) -> AbstractContextManager[subprocess.Popen[bytes]]:
        self.argv.append(list(argv))
        return _run.spawn(["bash", "-c", self.script, *argv], env=env, stdout=stdout,
                          stderr=stderr, pass_fds=pass_fds)

    def write_file(self, path: str, data: str | bytes, *, mode: int = 0o644) -> None:
        self.files[path] = ("file", data.encode() if isinstance(data, str) else data)

    def copy_in(self, host_src: str | os.PathLike[str], dest: str) -> None:
        self.files[dest] = ("copy", Path(host_src).read_bytes())

    def temporary_file(self, path: str, data: str | bytes, *, mode: int = 0o644) -> None:
        self.files[path] = ("temporary", data.encode() if isinstance(data, str) else data)


# $0 is "apt-get"; "$@" is the apt-get argv. The status fd number is in APT::Status-Fd=N.
FAKE_APT = r"""
fd=$(printf '%s\n' "$@" | sed -n 's/^APT::Status-Fd=//p')
printf 'argv:%s\n' "$*"
printf 'env:%s=%s\n' DEBIAN_FRONTEND "$DEBIAN_FRONTEND" DEBCONF_NONINTERACTIVE_SEEN \
  "$DEBCONF_NONINTERACTIVE_SEEN"
if read -r line; then echo "stdin:data"; else echo "stdin:eof"; fi
echo "Get:1 http://127.0.0.1/debian bookworm/main amd64 jq amd64 1.6-2.1 [135 kB]"
printf 'dlstatus:1:100:Retrieving file 1 of 1\npmstatus:jq:50:Unpacking jq\n' >&$fd
echo "W: a warning" >&2
echo 'pmstatus:jq:100:Installed jq' >&$fd
"""

FAIL_APT = r"""
fd=$(printf '%s\n' "$@" | sed -n 's/^APT::Status-Fd=//p')
echo "Reading package lists..."
echo "pmerror:foo:10:dependency problems - leaving unconfigured" >&$fd
echo "E: Unable to locate package nosuchpkg" >&2
exit 100
"""


def test_apt_get_options_environment_stdin_and_progress(tmp_path: Path) -> None:
    fake = FakeChroot(tmp_path, FAKE_APT)
    res = Apt(fake).install(["jq", "tree=2.1.0-1"], recommends=False, progress=False)
    argv = fake.argv[-1]
    assert argv[:3] == ["apt-get", "-y", "-q"]
    assert argv[-5:] == ["install", "--no-install-recommends", "--", "jq", "tree=2.1.0-1"]
    opts = {argv[i + 1] for i, a in enumerate(argv) if a == "-o"}
    assert {"Dpkg::Options::=--force-confdef", "Dpkg::Options::=--force-confold",
            "Dpkg::Options::=--force-unsafe-io", "Dpkg::Use-Pty=0"} <= opts
    assert any(o.startswith("APT::Status-Fd=") for o in opts)
    assert "env:DEBIAN_FRONTEND=noninteractive" in res.output
    assert "env:DEBCONF_NONINTERACTIVE_SEEN=true" in res.output
    assert "stdin:eof" in res.output
    assert "W: a warning" in res.output  # stderr is merged into the output
    assert res.fetched == ("Get:1 http://127.0.0.1/debian bookworm/main amd64 jq amd64 "
                           "1.6-2.1 [135 kB]",)
    assert res.events == 3
    assert isinstance(res, AptResult) and "1 downloads" in repr(res)
    assert APT_ENV["DEBIAN_FRONTEND"] == "noninteractive"


def test_safe_io_when_asked(tmp_path: Path) -> None:
    fake = FakeChroot(tmp_path, FAKE_APT)
    Apt(fake, unsafe_io=False).update(progress=False)
    assert "Dpkg::Options::=--force-unsafe-io" not in fake.argv[-1]
    assert fake.argv[-1][-3:] == ["update", "-o", "APT::Update::Error-Mode=any"]


def test_failure_raises_command_error_with_apts_own_lines(tmp_path: Path) -> None:
    fake = FakeChroot(tmp_path, FAIL_APT)
    with pytest.raises(CommandError) as err:
        Apt(fake).install(["nosuchpkg"], progress=False)
    e = err.value
    assert e.returncode == 100
    assert "E: Unable to locate package nosuchpkg" in e.message
    assert "dependency problems - leaving unconfigured" in e.message  # a pmerror line
    assert f"apt-get install failed in {tmp_path}" in e.message
    assert "Reading package lists..." in (e.stdout or "")  # the whole output is kept
    assert e.hint and "update()" in e.hint


def test_rejects_option_injection_and_single_strings(tmp_path: Path) -> None:
    apt = Apt(FakeChroot(tmp_path))
    with pytest.raises(MaasChrootError, match="not a package name"):
        apt.install(["-o=APT::Foo=1"])
    with pytest.raises(TypeError):
        apt.install("jq")
    with pytest.raises(MaasChrootError, match="no packages"):
        apt.install([])


def test_local_debs_are_copied_in_and_installed_by_path(tmp_path: Path) -> None:
    deb = make_deb(DebSpec("mc-local"), tmp_path)
    fake = FakeChroot(tmp_path, FAKE_APT)
    Apt(fake).install(["jq", deb], progress=False)
    mktemp, chmod, apt_get, rm = (fake.argv[0], fake.argv[1], fake.argv[2], fake.argv[3])
    assert mktemp[:2] == ["mktemp", "-d"]
    copied = [p for p, (how, _) in fake.files.items() if how == "copy"]
    assert copied == ["/var/tmp/maas-chroot-debs.Ab12Cd/mc-local_1.0_all.deb"]
    assert fake.files[copied[0]][1] == deb.read_bytes()
    assert apt_get[-3:] == ["--", "jq", copied[0]]
    assert chmod == ["chmod", "0755", "/var/tmp/maas-chroot-debs.Ab12Cd"]
    assert rm[:2] == ["rm", "-rf"] and rm[-1] == "/var/tmp/maas-chroot-debs.Ab12Cd"
    with pytest.raises(MaasChrootError, match=r"no such \.deb"):
        Apt(fake).install([tmp_path / "missing.deb"])


def test_add_source_writes_deb822_and_a_binary_key(tmp_path: Path) -> None:
    key = make_key(tmp_path)
    fake = FakeChroot(tmp_path)
    path = Apt(fake).add_source("mc-test", "http://127.0.0.1:9/repo", ["stable"], "main contrib",
                                key=key.asc)
    assert path == "/etc/apt/sources.list.d/mc-test.sources"
    assert fake.files[path][1].decode() == (
        "Types: deb\nURIs: http://127.0.0.1:9/repo\nSuites: stable\nComponents: main contrib\n"
        "Signed-By: /etc/apt/keyrings/mc-test.gpg\n")
    # the armoured key was dearmoured into exactly what `gpg --export` gives
    assert fake.files["/etc/apt/keyrings/mc-test.gpg"][1] == key.gpg.read_bytes()
    Apt(fake).add_source("bin", ["http://a/"], "./", key=key.gpg.read_bytes())
    assert fake.files["/etc/apt/keyrings/bin.gpg"][1] == key.gpg.read_bytes()
    with pytest.raises(MaasChrootError, match="not an OpenPGP"):
        Apt(fake).add_source("bad", "http://a/", "x", "main", key=b"hello")
    with pytest.raises(MaasChrootError, match="file name"):
        Apt(fake).add_source("../evil", "http://a/", "x", "main", key=key.gpg)


def test_set_proxy_is_temporary_unless_kept(tmp_path: Path) -> None:
    fake = FakeChroot(tmp_path)
    Apt(fake).set_proxy("http://127.0.0.1:3128")
    how, data = fake.files[PROXY_FILE]
    assert how == "temporary"
    assert data == (b'Acquire::http::Proxy "http://127.0.0.1:3128";\n'
                    b'Acquire::https::Proxy "http://127.0.0.1:3128";\n')
    Apt(fake).set_proxy("http://127.0.0.1:3128", keep=True)
    assert fake.files[PROXY_FILE][0] == "file"
    with pytest.raises(MaasChrootError, match="proxy URL"):
        Apt(fake).set_proxy('http://x";\nAPT::Evil "1')


def test_debconf_set_and_hold(tmp_path: Path) -> None:
    fake = FakeChroot(tmp_path)
    apt = Apt(fake)
    apt.debconf_set(["tzdata tzdata/Areas select Etc", "# a comment"])
    apt.hold(["jq"])
    assert fake.argv == [["debconf-set-selections"], ["apt-mark", "hold", "jq"]]
    with pytest.raises(MaasChrootError, match="malformed"):
        apt.debconf_set("tzdata tzdata/Areas")


# --- real apt in a real Chroot (root + network) --------------------------------------------
