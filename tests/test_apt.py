"""ch.apt: Status-Fd parsing, the apt-get engine, and real apt in a real Chroot.

The first part needs neither root nor the network: the engine runs against a
stand-in chroot whose "apt-get" is a shell script on the host that prints what
apt would and writes Status-Fd lines to the fd it was given. The second part
(marked root + network) runs real apt against the mirror the minbase image's
own sources name, and a signed apt repository served on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
from fixtures import gnu_extract
from servers.aptrepo import DebSpec, make_deb, make_key, serve_proxy, serve_repo

from maas_chroot import Chroot, recover, rootfs, sysprep
from maas_chroot import run as _run
from maas_chroot.chroot import aptstatus as ap
from maas_chroot.chroot.apt import APT_ENV, PROXY_FILE, Apt, AptResult
from maas_chroot.errors import (
    AptError,
    ArgumentError,
    ChrootBusyError,
    CommandError,
    MaasChrootError,
)
from maas_chroot.sources import hostapt

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
    with pytest.raises(AptError, match="not a package name"):
        apt.install(["-o=APT::Foo=1"])
    with pytest.raises(ArgumentError):
        apt.install("jq")
    with pytest.raises(AptError, match="no packages"):
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
    with pytest.raises(AptError, match=r"no such \.deb"):
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

#
# Extracting a rootfs and `apt-get update` cost seconds each, so one updated image is
# shared by the module (`shared`); every test that changes it puts it back in `finally`.
# Tests that need a pristine image take a fresh one and borrow the shared package lists
# with a bind mount instead of running `apt-get update` again.


@pytest.fixture(scope="module")
def shared(minbase_tar: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A minbase rootfs after one real `apt-get update`, shared by the module."""
    root = tmp_path_factory.mktemp("shared") / "root"
    gnu_extract(minbase_tar, root)
    try:
        with Chroot(root) as ch:
            res = ch.apt.update(progress=False)
        assert any(line.startswith(("Get:", "Hit:")) for line in res.output)
        yield root
    finally:
        rootfs.remove_tree(root)


def _lists(shared: Path) -> dict[Path, str]:
    return {shared / "var/lib/apt/lists": "/var/lib/apt/lists"}


def _status(ch: Chroot, *pkgs: str) -> dict[str, str]:
    out = ch.run(["dpkg-query", "-W", "-f", "${Package} ${db:Status-Abbrev}\n", *pkgs],
                 check=False, capture=True).stdout
    return {line.split()[0]: line.split()[1] for line in out.splitlines() if line.strip()}


def _gone(status: dict[str, str], *pkgs: str) -> bool:
    return all(status.get(p, "un") in ("un", "pn") for p in pkgs)


def _restore(root: Path, *purge: str, files: Sequence[str] = ()) -> None:
    """Put the shared image back: purge packages (and what they pulled in), remove files."""
    with Chroot(root) as ch:
        if files:
            ch.run(["rm", "-f", "--", *files])
        installed = [p for p, s in _status(ch, *purge).items() if s == "ii"] if purge else []
        if installed:
            ch.apt.remove(installed, purge=True, progress=False)
        ch.apt.autoremove(purge=True, progress=False)
        ch.apt.clean()


def _rooted_in(root: Path) -> list[int]:
    found = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(p / "root").startswith(str(root)):
                    found.append(int(p.name))
    return found


def _listening(port: int) -> set[str]:
    socks = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                    socks.add(f"{table}:{local}")
    return socks


@pytest.mark.root
@pytest.mark.network
def test_image_sources_name_the_mirror_mmdebstrap_used(shared: Path) -> None:
    sources = (shared / "etc/apt/sources.list").read_text()
    assert hostapt.host_mirror().uri in sources


@pytest.mark.root
@pytest.mark.network
def test_update_install_remove_purge_autoremove(shared: Path) -> None:
    try:
        with Chroot(shared) as ch:
            up = ch.apt.update(progress=False)
            assert not [line for line in up.output if line.startswith(("E:", "W:"))]
            res = ch.apt.install(["jq", "tree"], progress=False)
            assert res.events > 0  # the Status-Fd reached us through the chroot helper
            assert any(" jq " in line for line in res.fetched)
            assert ch.run(["jq", "-n", "1+1"], capture=True).stdout == "2\n"
            assert ch.run(["tree", "--version"], capture=True).stdout.startswith("tree v")
            assert _status(ch, "jq", "tree", "libjq1") == {"jq": "ii", "tree": "ii",
                                                           "libjq1": "ii"}
            ch.apt.upgrade(dist=True, progress=False)
            ch.apt.hold(["jq"])
            assert ch.run(["apt-mark", "showhold"], capture=True).stdout == "jq\n"
            ch.apt.unhold(["jq"])
            assert ch.run(["apt-mark", "showhold"], capture=True).stdout == ""
            ch.apt.debconf_set(["tzdata tzdata/Areas select Etc"])
            config = (shared / "var/cache/debconf/config.dat").read_text()
            assert "Name: tzdata/Areas\nTemplate: tzdata/Areas\nValue: Etc\n" in config

            ch.apt.remove(["jq", "tree"], purge=True, progress=False)
            st = _status(ch, "jq", "tree", "libjq1", "libonig5")
            assert _gone(st, "jq", "tree")
            assert st["libjq1"] == "ii"  # pulled in automatically: there until autoremove

            ch.apt.autoremove(purge=True, progress=False)
            assert _gone(_status(ch, "libjq1", "libonig5"), "libjq1", "libonig5")
            ch.apt.clean()
        assert not list((shared / "var/cache/apt/archives").glob("*.deb"))
    finally:
        _restore(shared, "jq", "tree")


@pytest.mark.root
@pytest.mark.network
def test_unknown_package_is_a_clear_error(shared: Path) -> None:
    with Chroot(shared) as ch, pytest.raises(CommandError) as err:
        ch.apt.install(["jq", "no-such-package-mc"], progress=False)
    text = str(err.value)
    assert "E: Unable to locate package no-such-package-mc" in text
    assert str(shared) in text and "apt-get install failed" in text
    assert err.value.returncode == 100


@pytest.mark.root
@pytest.mark.network
def test_add_source_installs_from_a_signed_local_repository(shared: Path,
                                                            tmp_path: Path) -> None:
    hello = DebSpec("mc-hello", files={"/usr/bin/mc-hello": "#!/bin/sh\necho hello from mc\n"})
    wrong = make_key(tmp_path / "wrong")
    src, key = "/etc/apt/sources.list.d/mc-test.sources", "/etc/apt/keyrings/mc-test.gpg"
    try:
        with serve_repo(tmp_path / "site", [hello]) as repo, Chroot(shared) as ch:
            # signed by a key the image was not given: update fails and says why
            ch.apt.add_source("mc-test", repo.url, repo.suite, repo.component, key=wrong.asc)
            with pytest.raises(CommandError) as err:
                ch.apt.update(progress=False)
            assert f"NO_PUBKEY {repo.key.fingerprint[-16:]}" in str(err.value)
            assert f"The repository '{repo.url} {repo.suite} InRelease' is not signed" in \
                   str(err.value)
            assert err.value.hint and "key=" in err.value.hint

            assert ch.apt.add_source("mc-test", repo.url, repo.suite, repo.component,
                                     key=repo.key_asc) == src
            ch.apt.update(progress=False)
            ch.apt.install(["mc-hello"], progress=False)
            assert ch.run(["mc-hello"], capture=True).stdout == "hello from mc\n"
            assert (shared / key.lstrip("/")).read_bytes() == repo.key.gpg.read_bytes()
            text = (shared / src.lstrip("/")).read_text()
        assert f"URIs: {repo.url}\n" in text
        assert f"Signed-By: {key}\n" in text
        assert f"/dists/{repo.suite}/InRelease" in repo.log
        assert any(p.startswith("/pool/") and "mc-hello" in p for p in repo.log)
    finally:
        _restore(shared, "mc-hello", files=[src, key])


@pytest.mark.root
@pytest.mark.network
def test_install_a_local_deb_with_dependencies_from_the_archive(shared: Path,
                                                               tmp_path: Path) -> None:
    deb = make_deb(DebSpec("mc-local", depends="tree",
                           files={"/etc/mc-local.conf": "local=1\n"}), tmp_path)
    try:
        with Chroot(shared) as ch:
            ch.apt.install([deb], recommends=False, progress=False)
            assert _status(ch, "mc-local", "tree") == {"mc-local": "ii", "tree": "ii"}
        assert (shared / "etc/mc-local.conf").read_text() == "local=1\n"
        assert not list((shared / "var/tmp").glob("maas-chroot-debs.*"))  # the copy is gone
    finally:
        _restore(shared, "mc-local", "tree")


@pytest.mark.root
@pytest.mark.network
def test_build_proxy_is_used_then_gone(shared: Path, tmp_path: Path) -> None:
    proxy_file = shared / PROXY_FILE.lstrip("/")
    src, key = "/etc/apt/sources.list.d/mc-test.sources", "/etc/apt/keyrings/mc-test.gpg"
    try:
        with serve_repo(tmp_path / "site", [DebSpec("mc-hello")]) as repo, \
                serve_proxy() as proxy:
            with Chroot(shared) as ch:
                ch.apt.set_proxy(proxy.url)
                assert proxy.url in proxy_file.read_text()
                ch.apt.add_source("mc-test", repo.url, repo.suite, repo.component,
                                  key=repo.key_asc)
                ch.apt.update(progress=False)
            assert not os.path.lexists(proxy_file)  # gone with the session
            # every request apt made to the repository went through the proxy
            assert f"{repo.url}/dists/{repo.suite}/InRelease" in proxy.log
            assert {repo.url + p for p in repo.log} <= set(proxy.log)
    finally:
        _restore(shared, files=[src, key])


def _bare_root(tmp_path: Path) -> Path:
    root = tmp_path / "img"  # enough of a rootfs for a session that runs no command
    for d in ("usr/sbin", "etc/apt/apt.conf.d", "bin"):
        (root / d).mkdir(parents=True)
    (root / "bin/sh").touch()
    return root


@pytest.mark.root
def test_proxy_of_a_killed_session_is_removed_by_recover(tmp_path: Path) -> None:
    root = _bare_root(tmp_path)
    code = ("import os, signal, sys\nfrom maas_chroot import Chroot\n"
            "with Chroot(sys.argv[1]) as ch:\n"
            "    ch.apt.set_proxy('http://127.0.0.1:9')\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(root)], check=False,
                          cwd=Path(__file__).parent.parent)
    assert proc.returncode == -9
    assert (root / PROXY_FILE.lstrip("/")).exists()  # the killed session left it behind
    with pytest.raises(ChrootBusyError, match="recover"):
        sysprep(root, progress=False)  # sysprep will not scrub a root with a journal
    report = recover(root)
    assert report is not None
    assert not os.path.lexists(root / PROXY_FILE.lstrip("/"))
    assert sysprep(root, progress=False).paths("apt-proxy") == ()


@pytest.mark.root
def test_kept_proxy_stays_until_sysprep(tmp_path: Path) -> None:
    root = _bare_root(tmp_path)
    with Chroot(root) as ch:
        ch.apt.set_proxy("http://127.0.0.1:9", keep=True)
    assert 'Proxy "http://127.0.0.1:9"' in (root / PROXY_FILE.lstrip("/")).read_text()
    assert sysprep(root, progress=False).paths("apt-proxy") == (PROXY_FILE,)
    assert not os.path.lexists(root / PROXY_FILE.lstrip("/"))


@pytest.mark.root
@pytest.mark.network
def test_a_service_package_starts_no_daemon(minbase_root: Path, shared: Path) -> None:
    root = minbase_root
    ssh_before = _listening(22)
    with Chroot(root, binds=_lists(shared)) as ch:
        res = ch.apt.install(["openssh-server"], recommends=False, progress=False)
        assert _rooted_in(root) == []
    assert any("policy-rc.d denied execution of start" in line for line in res.output)
    assert _rooted_in(root) == []
    assert _listening(22) == ssh_before
    assert not (root / "run/sshd.pid").exists()
    keys = sorted(p.name for p in (root / "etc/ssh").glob("ssh_host_*"))
    assert keys  # the postinst made host keys: exactly what sysprep must remove

    report = sysprep(root, progress=False)
    print(f"ssh host keys before sysprep: {keys}\n{report}\n{report.details(limit=8)}")
    assert sorted(Path(p).name for p in report.paths("ssh-hostkeys")) == keys
    assert not list((root / "etc/ssh").glob("ssh_host_*"))
    again = sysprep(root, progress=False)
    print(f"second run:\n{again}")
    assert again.items == ()


@pytest.mark.root
@pytest.mark.network
def test_second_build_with_a_shared_cache_downloads_nothing(
        minbase_root: Path, shared: Path, tmp_path: Path) -> None:
    cache = tmp_path / "archives"
    cache.mkdir()
    binds = {cache: "/var/cache/apt/archives"}
    try:
        with Chroot(shared, binds=binds) as ch:  # build 1: the shared image
            first = ch.apt.install(["jq", "tree"], progress=False)
    finally:
        _restore(shared, "jq", "tree")
    with Chroot(minbase_root, binds={**binds, **_lists(shared)}) as ch:  # build 2: a fresh one
        second = ch.apt.install(["jq", "tree"], progress=False)
        assert _status(ch, "jq", "tree") == {"jq": "ii", "tree": "ii"}
    assert len(first.fetched) == 4
    assert sorted(p.name.split("_")[0] for p in cache.glob("*.deb")) == [
        "jq", "libjq1", "libonig5", "tree"]
    assert second.fetched == ()
    assert any(line.startswith("Need to get 0 B/") for line in second.output), second.output
    # the packages went to the bind, not into the image
    assert not list((minbase_root / "var/cache/apt/archives").glob("*.deb"))
