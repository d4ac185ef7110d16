"""The customisation part of ``build()``: one Chroot session of apt, files and commands."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Union

from . import hostapt
from .chroot import Chroot
from .errors import SourceError

#: A build command: an argv list (run as is), a string (run with ``/bin/sh -c`` inside
#: the chroot) or a :class:`pathlib.Path` (a host script, copied in and run).
Command = Union[Sequence[str], str, "os.PathLike[str]"]

Steps = Callable[[str], AbstractContextManager[None]]

_SCRIPT_DIR = "/root"


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
        raise SourceError(f"not an apt source line: {line!r}",
                          hint="write it as 'URI SUITE COMPONENT...', e.g. "
                               "'http://ppa.example/ubuntu noble main'")
    return AptRepo(src.uri, src.suites[0], src.components or ("main",),
                   src.signed_by or default_key)


@dataclass(frozen=True)
class Customisation:
    """Everything build() does inside the chroot (see build()'s docstring for the order)."""

    packages: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()
    purge: bool = False
    upgrade: bool = False
    commands: tuple[Command, ...] = ()
    files: tuple[tuple[str, str | os.PathLike[str] | bytes], ...] = ()
    apt_sources: tuple[str, ...] = ()
    apt_key: str | os.PathLike[str] | None = None
    apt_proxy: str | None = None

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
                raise SourceError(f"apt source {repo.uri} {repo.suite} has no signing key",
                                  hint="give its key with --apt-key FILE (apt_key=), or "
                                       "[signed-by=FILE] in the line")
            if not os.path.isfile(repo.key):
                raise SourceError(f"apt key not found: {repo.key}",
                                  hint="give the path of a key file on this machine")
        for dest, src in self.files:
            if not dest.startswith("/"):
                raise SourceError(f"image path {dest!r} for a copied file is not absolute",
                                  hint="write it as SRC:/absolute/path/in/image")
            if not isinstance(src, bytes) and not os.path.exists(src):
                raise SourceError(f"file to copy into the image not found: {os.fspath(src)}",
                                  hint="check the SRC of --copy SRC:DEST")
        for cmd in self.commands:
            if isinstance(cmd, os.PathLike) and not os.path.isfile(cmd):
                raise SourceError(f"script not found: {os.fspath(cmd)}",
                                  hint="check the path given to --script")
            if not isinstance(cmd, (str, os.PathLike)) and not list(cmd):
                raise SourceError("an empty command was given", hint="give an argv list")


def customise(root: Path, c: Customisation, steps: Steps, *,
              network: Literal["host", "none"], progress: bool | None) -> None:
    """Run the customisation ``c`` on ``root`` in one chroot session."""
    with ExitStack() as stack:
        with steps("chroot"):
            ch = stack.enter_context(Chroot(root, network=network))
        apt = ch.apt
        if c.uses_apt():
            if c.apt_proxy:
                apt.set_proxy(c.apt_proxy, keep=False)
            for repo in c.repos():
                apt.add_source(repo.name, [repo.uri], [repo.suite], list(repo.components),
                               key=repo.key or "")
            with steps("update"):
                apt.update(progress=progress)
        if c.upgrade:
            with steps("upgrade"):
                apt.upgrade(dist=True, progress=progress)
        if c.packages:
            with steps("install"):
                apt.install(list(c.packages), progress=progress)
        if c.remove:
            with steps("remove"):
                apt.remove(list(c.remove), purge=c.purge, progress=progress)
                apt.autoremove(purge=c.purge, progress=progress)
        if c.files:
            with steps("files"):
                for dest, src in c.files:
                    if isinstance(src, bytes):
                        ch.write_file(dest, src)
                    else:
                        ch.copy_in(src, dest)
        if c.commands:
            with steps("commands"):
                for i, cmd in enumerate(c.commands):
                    _run_command(ch, cmd, i)
        if c.uses_apt():
            with steps("apt clean"):
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
