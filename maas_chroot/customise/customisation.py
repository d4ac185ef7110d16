"""The customisation part of ``build()``: one Chroot session of apt, files and commands."""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from filelock import FileLock

from ..chroot import manifest as manifest_
from ..chroot.apt import Apt
from ..chroot.binds import Bind
from ..chroot.session import Chroot, Network
from ..errors import SpecError
from ..sources import hostapt
from ..steps import Step

#: A build command: an argv list (run as is), a string (run with ``/bin/sh -c`` inside
#: the chroot) or a :class:`pathlib.Path` (a host script, copied in and run).
Command = Union[Sequence[str], str, "os.PathLike[str]"]

log = logging.getLogger(__name__)

Steps = Callable[[Step], AbstractContextManager[None]]

_SCRIPT_DIR = "/root"
#: Where a build's shared apt archive cache is bound in the image (gone with the session).
DEBS = "/var/cache/apt/archives-maas-chroot"


@dataclass(frozen=True)
class AptRepo:
    """One extra apt source, parsed from ``"[deb] [signed-by=KEY] URI SUITE COMPONENT..."``."""

    uri: str
    suite: str
    components: tuple[str, ...]
    key: str | None

    @property
    def name(self) -> str:
        """A file name for this source: readable, and unique per (URI, suite)."""
        host = re.sub(r"^[a-z+]+://", "", self.uri)
        readable = re.sub(r"[^A-Za-z0-9]+", "-", f"{host}-{self.suite}").strip("-").lower()
        digest = hashlib.sha256(f"{self.uri} {self.suite}".encode()).hexdigest()[:8]
        return f"{readable[:50].rstrip('-')}-{digest}"


def parse_apt_source(line: str, default_key: str | None = None) -> AptRepo:
    text = line.strip()
    src = hostapt.parse_line(text if text.startswith("deb ") else f"deb {text}")
    if src is None or "://" not in src.uri:
        raise SpecError(f"not an apt source line: {line!r}", key="apt_sources",
                        hint="write it as 'URI SUITE COMPONENT...', e.g. "
                               "'http://ppa.example/ubuntu noble main'")
    return AptRepo(src.uri, src.suites[0], src.components or ("main",),
                   src.signed_by or default_key)


@dataclass(frozen=True, kw_only=True)
class Customisation:
    """Everything build() does inside the chroot (the customisation keys of a build spec).

    In this order, in one :class:`~maas_chroot.Chroot` session (``network``):
    ``apt_sources`` (one-line ``"[deb] [signed-by=KEY] URI SUITE COMPONENT..."``,
    ``apt_key`` for those without one), ``apt-get update`` (when any apt work is
    asked for), ``upgrade`` (dist-upgrade), ``packages``, ``remove`` (+ autoremove,
    ``purge``), ``files`` (image path -> host path, or bytes for content),
    ``commands`` (an argv list run as is; a string run with ``/bin/sh -c``; a
    :class:`pathlib.Path` is a host script copied in and run), then ``apt-get
    clean``. ``apt_proxy`` is used for the build only: it is not left in the image.
    """

    packages: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()
    purge: bool = False
    upgrade: bool = False
    commands: tuple[Command, ...] = ()
    files: tuple[tuple[str, str | os.PathLike[str] | bytes], ...] = ()
    apt_sources: tuple[str, ...] = ()
    apt_key: str | os.PathLike[str] | None = None
    apt_proxy: str | None = None
    network: Network = "host"

    def uses_apt(self) -> bool:
        return bool(self.packages or self.remove or self.upgrade or self.apt_sources)

    def wanted(self) -> bool:
        return self.uses_apt() or bool(self.commands or self.files)

    def repos(self) -> list[AptRepo]:
        key = os.fspath(self.apt_key) if self.apt_key is not None else None
        return [parse_apt_source(line, key) for line in self.apt_sources]

    def check(self) -> None:
        """Refuse, before any slow step, what is bound to fail later."""
        for repo in self.repos():
            if repo.key is None:
                raise SpecError(f"apt source {repo.uri} {repo.suite} has no signing key",
                                key="apt_sources", hint="give its key with --apt-key FILE "
                                "(apt_key=), or [signed-by=FILE] in the line")
            if not os.path.isfile(repo.key):
                raise SpecError(f"apt key not found: {repo.key}", key="apt_key",
                                hint="give the path of a key file on this machine")
        for dest, src in self.files:
            if not dest.startswith("/"):
                raise SpecError(f"image path {dest!r} for a copied file is not absolute",
                                key=f"files.{dest}", hint="write it as SRC:/absolute/path/in/image")
            if not isinstance(src, bytes) and not os.path.exists(src):
                raise SpecError(f"file to copy into the image not found: {os.fspath(src)}",
                                key=f"files.{dest}",
                                hint="check the host path: SRC of --copy SRC:DEST, or the "
                                     "value of a recipe's files entry (relative to the recipe)")
        for cmd in self.commands:
            if isinstance(cmd, os.PathLike) and not os.path.isfile(cmd):
                raise SpecError(f"script not found: {os.fspath(cmd)}", key="commands",
                                hint="check the path given to --script")
            if not isinstance(cmd, (str, os.PathLike)) and not list(cmd):
                raise SpecError("an empty command was given", key="commands",
                                hint="give an argv list")


def customise(root: Path, c: Customisation, steps: Steps, *, progress: bool | None,
              manifest: bool = False, debs: Path | None = None) -> str | None:
    """Run the customisation ``c`` on ``root`` in one chroot session.

    With ``manifest``, the session ends by reading the image's package manifest
    (:mod:`maas_chroot.chroot.manifest`), which is returned; None when it cannot be read
    (no dpkg in the image), or without ``manifest``. ``debs``: a host directory shared
    by builds as apt's archive cache (bound at :data:`DEBS` for the session; apt's
    downloads go there, never into the image, and one build at a time downloads).
    """
    unreadable = manifest_.why_not(root) if manifest else "not asked for"
    if manifest and unreadable is not None:
        log.warning("%s: no package manifest: %s", root, unreadable)
    if not c.wanted() and unreadable is not None:
        return None
    shared = debs if c.uses_apt() else None
    with ExitStack() as stack:
        if shared is not None:
            shared.mkdir(parents=True, exist_ok=True, mode=0o755)
        with steps(Step.CHROOT):
            ch = stack.enter_context(Chroot(root, network=c.network,
                                            binds=[Bind(os.fspath(shared), DEBS)] if shared
                                            else None))
        _steps(ch, c, steps, progress=progress,
               lock=FileLock(os.fspath(shared) + ".lock") if shared else None)
        if unreadable is None:
            with steps(Step.MANIFEST):
                return manifest_.query(ch)
    return None


def _steps(ch: Chroot, c: Customisation, steps: Steps, *, progress: bool | None,
           lock: FileLock | None) -> None:
    apt = Apt(ch, archives=DEBS if lock is not None else None)
    downloads = lock if lock is not None else nullcontext()
    if c.uses_apt():
        if c.apt_proxy:
            apt.set_proxy(c.apt_proxy, keep=False)
        for repo in c.repos():
            apt.add_source(repo.name, [repo.uri], [repo.suite], list(repo.components),
                           key=repo.key or "")
        with steps(Step.UPDATE):
            apt.update(progress=progress)
    if c.upgrade:
        with steps(Step.UPGRADE), downloads:
            apt.upgrade(dist=True, progress=progress)
    if c.packages:
        with steps(Step.INSTALL), downloads:
            apt.install(list(c.packages), progress=progress)
    if c.remove:
        with steps(Step.REMOVE):
            apt.remove(list(c.remove), purge=c.purge, progress=progress)
            apt.autoremove(purge=c.purge, progress=progress)
    if c.files:
        with steps(Step.FILES):
            for dest, src in c.files:
                if isinstance(src, bytes):
                    ch.write_file(dest, src)
                else:
                    ch.copy_in(src, dest)
    if c.commands:
        with steps(Step.COMMANDS):
            for i, cmd in enumerate(c.commands):
                _run_command(ch, cmd, i)
    if c.uses_apt():
        with steps(Step.APT_CLEAN):
            apt.clean()


def _run_command(ch: Chroot, cmd: Command, index: int) -> None:
    if isinstance(cmd, str):
        ch.run(["/bin/sh", "-c", cmd])
    elif isinstance(cmd, os.PathLike):
        with open(cmd, "rb") as f:
            data = f.read()
        path = f"{_SCRIPT_DIR}/.maas-chroot-script-{index}"
        ch.temporary_file(path, data, mode=0o755)
        ch.run([path])
    else:
        ch.run(list(cmd))
