"""apt and dpkg inside a :class:`~maas_chroot.Chroot`: non-interactive, with progress.

Reached as ``ch.apt``::

    with mc.Chroot(root) as ch:
        ch.apt.set_proxy("http://127.0.0.1:3142")      # gone again when the session ends
        ch.apt.update()
        ch.apt.install(["jq", "tree", "./local_1.0_all.deb"], recommends=False)

Every apt-get call runs with ``DEBIAN_FRONTEND=noninteractive``,
``DEBCONF_NONINTERACTIVE_SEEN=true``, stdin from /dev/null, ``-y``,
dpkg ``--force-confdef --force-confold`` and (by default) ``--force-unsafe-io``,
all given on the command line so nothing of it ships in the image. apt's
``APT::Status-Fd`` feeds a tqdm bar; apt's and dpkg's own output goes to
logging at debug level, and into :class:`~maas_chroot.CommandError` (with apt's
``E:`` lines in the message) when the command fails.

A host directory shared as the archive cache makes repeated builds of the same
package set download nothing::

    with mc.Chroot(root, binds={"/var/cache/maas-chroot/debs": "/var/cache/apt/archives"}) as ch:

(apt inside makes its ``partial/`` owned by the image's ``_apt`` user: give the
cache its own host directory, not the host's own ``/var/cache/apt/archives``.)
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .. import run as _run
from ..errors import AptError, ArgumentError, CommandError
from . import aptstatus

log = logging.getLogger(__name__)

#: The environment of every apt/dpkg command: never a prompt, never a pager.
APT_ENV = dict(DEBIAN_FRONTEND="noninteractive", DEBCONF_NONINTERACTIVE_SEEN="true",
               APT_LISTCHANGES_FRONTEND="none", APT_LISTBUGS_FRONTEND="none",
               NEEDRESTART_SUSPEND="1")
#: Where :meth:`Apt.set_proxy` writes the build proxy inside the image.
PROXY_FILE = "/etc/apt/apt.conf.d/00maas-chroot-proxy"
KEYRING_DIR = "/etc/apt/keyrings"
SOURCES_DIR = "/etc/apt/sources.list.d"

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")  # what apt accepts in sources.list.d file names
_ERROR_LINE = re.compile(r"^(E: |W: GPG error|W: Failed to fetch|dpkg: error|"
                         r"dpkg: dependency problems|Errors were encountered)")


class ChrootLike(Protocol):
    """What :class:`Apt` needs from a :class:`~maas_chroot.Chroot` session."""

    @property
    def root(self) -> Path: ...

    def run(self, argv: Sequence[str], *, check: bool = ..., capture: bool = ...,
            input: str | bytes | None = ..., env: dict[str, str] | None = ...,
            ) -> subprocess.CompletedProcess[str]: ...

    def spawn(self, argv: Sequence[str], *, env: dict[str, str] | None = ..., stdout: Any = ...,
              stderr: Any = ..., pass_fds: Sequence[int] = ...,
              ) -> AbstractContextManager[subprocess.Popen[bytes]]: ...

    def write_file(self, path: str, data: str | bytes, *, mode: int = ...) -> None: ...

    def copy_in(self, host_src: str | os.PathLike[str], dest: str) -> None: ...

    def temporary_file(self, path: str, data: str | bytes, *, mode: int = ...) -> None: ...


@dataclass(frozen=True)
class AptResult:
    """One finished apt-get command: its argv, output lines, and what it downloaded."""

    argv: tuple[str, ...]
    output: tuple[str, ...] = field(repr=False)
    fetched: tuple[str, ...] = ()  # apt's "Get:N uri suite pkg ver [size]" lines
    events: int = 0  # Status-Fd events seen

    def __repr__(self) -> str:
        verb = next((a for a in self.argv[1:] if not a.startswith("-") and "=" not in a), "?")
        return (f"AptResult(apt-get {verb}: {len(self.fetched)} downloads, "
                f"{len(self.output)} output lines)")


class Apt:
    """apt/dpkg operations inside a live :class:`~maas_chroot.Chroot` session.

    ``unsafe_io`` (default True) passes dpkg ``--force-unsafe-io``: images are
    repacked afterwards, so per-file fsyncs buy nothing. ``progress`` is the
    default for every call (None: a bar when a person is watching). ``archives``: a
    directory inside the image (a bind of a shared host cache) where apt downloads
    packages instead of the image's own ``/var/cache/apt/archives``; :meth:`clean` never
    empties it.
    """

    def __init__(self, chroot: ChrootLike, *, unsafe_io: bool = True,
                 progress: bool | None = None, archives: str | None = None) -> None:
        self.chroot = chroot
        self.unsafe_io = unsafe_io
        self.progress = progress
        self.archives = archives

    def __repr__(self) -> str:
        return f"Apt({os.fspath(self.chroot.root)!r})"

    # --- apt-get ------------------------------------------------------------------------

    def update(self, *, progress: bool | None = None) -> AptResult:
        """``apt-get update``; fails on any index or signature error."""
        return self.apt_get(["update", "-o", "APT::Update::Error-Mode=any"], progress=progress)

    def upgrade(self, dist: bool = False, *, progress: bool | None = None) -> AptResult:
        """``apt-get upgrade``, or ``dist-upgrade`` with ``dist=True``."""
        return self.apt_get(["dist-upgrade" if dist else "upgrade"], progress=progress)

    def install(self, pkgs: Iterable[str | os.PathLike[str]], *, recommends: bool = True,
                progress: bool | None = None) -> AptResult:
        """Install names, ``name=version`` specs, or local ``.deb`` files from the host.

        Local files are copied into a temporary directory in the image, installed
        with apt (so their dependencies come from the archive), and removed.
        ``recommends=False`` adds ``--no-install-recommends``; the default follows
        the image's apt configuration (which installs them unless told otherwise).
        """
        names, debs = _split_packages(pkgs, self.chroot.root)
        if not names and not debs:
            raise AptError("apt install: no packages given", root=self.chroot.root,
                           hint='pass names, such as ["jq"], or paths to .deb files')
        opts = [] if recommends else ["--no-install-recommends"]
        if not debs:
            return self.apt_get(["install", *opts, "--", *names], progress=progress)
        with self._debs_in_image(debs) as paths:
            return self.apt_get(["install", *opts, "--", *names, *paths], progress=progress)

    def remove(self, pkgs: Iterable[str], *, purge: bool = False,
               progress: bool | None = None) -> AptResult:
        """``apt-get remove`` (``purge=True``: also their configuration files)."""
        names = _names(pkgs, self.chroot.root)
        return self.apt_get(["purge" if purge else "remove", "--", *names], progress=progress)

    def autoremove(self, purge: bool = False, *, progress: bool | None = None) -> AptResult:
        """``apt-get autoremove``: packages nothing depends on any more."""
        return self.apt_get(["autoremove", *(["--purge"] if purge else [])], progress=progress)

    def clean(self) -> AptResult:
        """``apt-get clean``: empty the image's archive cache (never a shared one)."""
        return Apt(self.chroot, unsafe_io=self.unsafe_io).apt_get(["clean"], progress=False)

    # --- other tools ----------------------------------------------------------------------

    def hold(self, pkgs: Iterable[str]) -> None:
        """``apt-mark hold``: upgrades leave these packages alone."""
        self.chroot.run(["apt-mark", "hold", *_names(pkgs, self.chroot.root)], capture=True,
                        env=dict(APT_ENV))

    def unhold(self, pkgs: Iterable[str]) -> None:
        """``apt-mark unhold``."""
        self.chroot.run(["apt-mark", "unhold", *_names(pkgs, self.chroot.root)], capture=True,
                        env=dict(APT_ENV))

    def debconf_set(self, selections: str | Iterable[str]) -> None:
        """Preseed debconf: lines of ``owner question type value`` (debconf-set-selections)."""
        text = selections if isinstance(selections, str) else "\n".join(selections)
        for line in text.splitlines():
            if line.strip() and not line.lstrip().startswith("#") and len(line.split(None, 3)) < 3:
                raise AptError(f"debconf selection is malformed: {line!r}",
                               root=self.chroot.root, hint="write 'owner question type value', "
                               "such as 'tzdata tzdata/Areas select Etc'")
        self.chroot.run(["debconf-set-selections"], input=text.rstrip("\n") + "\n",
                        capture=True, env=dict(APT_ENV))

    def add_source(self, name: str, uris: str | Sequence[str], suites: str | Sequence[str],
                   components: str | Sequence[str] = (), *,
                   key: str | os.PathLike[str] | bytes,
                   architectures: str | Sequence[str] = ()) -> str:
        """Add an apt repository as ``/etc/apt/sources.list.d/<name>.sources`` (deb822).

        ``key`` is the repository's signing key: a file on the host (ASCII-armoured
        or binary) or its bytes. It is stored, binary, as
        ``/etc/apt/keyrings/<name>.gpg`` and named in ``Signed-By``, so it
        vouches for this repository only. Returns the path of the sources file.
        """
        if not _NAME.match(name):
            raise AptError(f"apt source name {name!r} is not usable as a file name",
                           root=self.chroot.root, hint="use letters, digits, '_', '.' and '-' only")
        keyring = f"{KEYRING_DIR}/{name}.gpg"
        root = self.chroot.root
        stanza = {"Types": "deb", "URIs": _words(uris, "uris", root),
                  "Suites": _words(suites, "suites", root),
                  "Components": _words(components, "components", root, empty_ok=True),
                  "Architectures": _words(architectures, "architectures", root, empty_ok=True),
                  "Signed-By": keyring}
        text = "".join(f"{k}: {v}\n" for k, v in stanza.items() if v)
        self.chroot.write_file(keyring, _binary_key(key, root), mode=0o644)
        path = f"{SOURCES_DIR}/{name}.sources"
        self.chroot.write_file(path, text, mode=0o644)
        log.info("apt source %s added: %s", name, " ".join(text.splitlines()))
        return path

    def set_proxy(self, url: str, *, keep: bool = False) -> None:
        """Route apt's HTTP(S) downloads through ``url`` (e.g. ``http://10.0.0.1:3142``).

        By default the setting is a journaled temporary file: it is removed when
        the session ends, and by ``recover()`` after a crash, so a build proxy
        never ships. ``keep=True`` writes it as a normal file of the image.
        """
        if not re.match(r"^(https?|socks5h?)://[^\s\"';]+$", url):
            raise AptError(f"apt proxy URL {url!r} is not usable", root=self.chroot.root,
                           hint="pass a URL such as http://proxy.example:3128")
        text = f'Acquire::http::Proxy "{url}";\nAcquire::https::Proxy "{url}";\n'
        if keep:
            self.chroot.write_file(PROXY_FILE, text, mode=0o644)
        else:
            self.chroot.temporary_file(PROXY_FILE, text, mode=0o644)

    # --- the engine -----------------------------------------------------------------------

    def apt_get(self, args: Sequence[str], *, progress: bool | None = None) -> AptResult:
        """Run ``apt-get <args>`` with the options above; raise CommandError on failure."""
        if progress is None:
            progress = self.progress
        rfd, wfd = os.pipe()
        try:
            argv = ["apt-get", "-y", "-q", *self._options(wfd), *args]
            verb = next((a for a in args if not a.startswith("-")), "apt-get")
            with (aptstatus.bar(progress, f"apt-get {verb}") as tq,
                  self.chroot.spawn(argv, env=dict(APT_ENV), stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, pass_fds=(wfd,)) as proc):
                os.close(wfd)
                wfd = -1
                tracker = aptstatus.AptProgress(tq, f"apt-get {verb}")
                got = aptstatus.pump(proc, rfd, tracker)
                code = proc.wait()
        finally:
            os.close(rfd)
            if wfd >= 0:
                os.close(wfd)
        fetched = tuple(line for line in got.lines if line.startswith("Get:"))
        if code != 0:
            raise self._error(argv, code, got.lines, tracker.errors)
        for line in got.lines:
            if line.startswith("W: "):
                log.warning("apt-get %s in %s: %s", verb, self.chroot.root, line[3:])
        return AptResult(tuple(argv), tuple(got.lines), fetched, len(got.events))

    def _options(self, status_fd: int) -> list[str]:
        dpkg = ["--force-confdef", "--force-confold"]
        if self.unsafe_io:
            dpkg.append("--force-unsafe-io")
        opts = [f"APT::Status-Fd={status_fd}", "Dpkg::Use-Pty=0", "APT::Color=0",
                "Dpkg::Progress-Fancy=0", *(f"Dpkg::Options::={o}" for o in dpkg),
                *([f"Dir::Cache::Archives={self.archives}"] if self.archives else [])]
        return [arg for o in opts for arg in ("-o", o)]

    def _error(self, argv: list[str], code: int, lines: list[str],
               pm_errors: list[str]) -> CommandError:
        wanted = [ln for ln in lines if _ERROR_LINE.match(ln)]
        wanted += [f"dpkg: {e}" for e in pm_errors if not any(e in ln for ln in wanted)]
        if not wanted:
            wanted = [ln for ln in lines if ln.strip()][-15:]
        verb = next((a for a in argv[1:] if not a.startswith("-") and "=" not in a), "")
        message = (f"apt-get {verb} failed in {self.chroot.root} (exit code {code}):\n"
                   + "\n".join(wanted))
        hint = None
        text = "\n".join(lines)
        if "Unable to locate package" in text or "has no installation candidate" in text:
            hint = ("check the package name and the image's apt sources; "
                    "run ch.apt.update() first if its package lists are empty")
        elif "NO_PUBKEY" in text or "is not signed" in text:
            hint = ("the repository is signed by a key the image does not have for it: pass "
                    "its public key as add_source(..., key=)")
        elif "Could not get lock" in text:
            hint = "another apt or dpkg is running in this image; wait for it or kill it"
        elif "dpkg was interrupted" in text:
            hint = 'run ch.run(["dpkg", "--configure", "-a"]) to finish the interrupted install'
        return CommandError(argv, code, "\n".join(lines), None, message=message, hint=hint)

    @contextmanager
    def _debs_in_image(self, debs: list[Path]) -> Iterator[list[str]]:
        made = self.chroot.run(["mktemp", "-d", "/var/tmp/maas-chroot-debs.XXXXXX"],
                               capture=True).stdout.strip()
        try:
            self.chroot.run(["chmod", "0755", made])  # readable by apt's _apt sandbox user
            paths = []
            for deb in debs:
                dest = f"{made}/{deb.name}"
                self.chroot.copy_in(deb, dest)
                paths.append(dest)
            yield paths
        finally:
            self.chroot.run(["rm", "-rf", "--one-file-system", "--", made], check=False)


def _split_packages(pkgs: Iterable[str | os.PathLike[str]], root: Path,
                    ) -> tuple[list[str], list[Path]]:
    if isinstance(pkgs, str | os.PathLike):
        raise ArgumentError(f"pass a list of packages, not a single string: {pkgs!r}",
                            hint=f"write [{os.fspath(pkgs)!r}]")
    names: list[str] = []
    debs: list[Path] = []
    for p in pkgs:
        s = os.fspath(p)
        if isinstance(p, os.PathLike) or (s.endswith(".deb") and ("/" in s or os.path.isfile(s))):
            path = Path(s)
            if not path.is_file():
                raise AptError(f"apt install: no such .deb file on the host: {s}", root=root,
                               hint="pass the path of an existing .deb file")
            debs.append(path.resolve())
        else:
            names.extend(_names([s], root))
    return names, debs


def _names(pkgs: Iterable[str], root: Path) -> list[str]:
    if isinstance(pkgs, str):
        raise ArgumentError(f"pass a list of package names, not a single string: {pkgs!r}",
                            hint=f"write [{pkgs!r}]")
    out = list(pkgs)
    for name in out:
        if not name or name.startswith("-") or any(c.isspace() for c in name):
            raise AptError(f"not a package name: {name!r}", root=root,
                           hint="pass names such as 'jq' or 'jq=1.6-2.1'")
    return out


def _words(value: str | Sequence[str], what: str, root: Path, *,
           empty_ok: bool = False) -> str:
    words = value.split() if isinstance(value, str) else [str(v) for v in value]
    if not words and not empty_ok:
        raise AptError(f"apt source: {what} must not be empty", root=root)
    for w in words:
        if not w or any(c.isspace() or c in "\"'" for c in w):
            raise AptError(f"apt source: bad value in {what}: {w!r}", root=root)
    return " ".join(words)


def _binary_key(key: str | os.PathLike[str] | bytes, root: Path) -> bytes:
    """An OpenPGP key in binary form, from armoured or binary bytes, or a file holding either."""
    where = "the key bytes"
    if not isinstance(key, bytes):
        where = os.fspath(key)
        try:
            key = Path(where).read_bytes()
        except OSError as e:
            raise AptError(f"cannot read the apt signing key {where}: {e.strerror}", root=root,
                           hint="pass the path of the repository's public key") from e
    if key.lstrip().startswith(b"-----BEGIN PGP"):
        with tempfile.TemporaryDirectory(prefix="maas-chroot-gpg-") as home:
            done = _run.run(["gpg", "--batch", "--dearmor"], input=key, capture=True, text=False,
                            env={"GNUPGHOME": home})
        key = bytes(done.stdout)
    if not key or not key[0] & 0x80:
        raise AptError(f"{where} is not an OpenPGP public key", root=root,
                       hint="pass the repository's key, ASCII-armoured or binary "
                                   "(gpg --export KEYID)")
    log.debug("apt key from %s: %d bytes", where, len(key))
    return key
