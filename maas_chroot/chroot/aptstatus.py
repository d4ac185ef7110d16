"""apt's machine-readable progress (``APT::Status-Fd``) and its human output, read together.

apt writes one line per event to the Status-Fd::

    dlstatus:<item>:<percent>:<message>          while downloading
    pmstatus:<package>:<percent>:<message>       while dpkg unpacks and configures
    pmerror:<package>:<percent>:<message>        a package failed
    pmconffile:<file>:<percent>:<message>        a conffile prompt (never: --force-conf*)

``<package>`` may carry an architecture (``libc6:amd64``), so the percent is
found as the first numeric field after the kind. :class:`StatusParser` turns
bytes into :class:`StatusEvent` values; :class:`AptProgress` drives a tqdm bar
from them; :func:`pump` reads the status pipe and apt's output at once.
"""

from __future__ import annotations

import logging
import os
import re
import selectors
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from .. import progress as _progress

log = logging.getLogger(__name__)

KINDS = ("dlstatus", "pmstatus", "pmerror", "pmconffile", "media-change")
_NUMBER = re.compile(r"^\d+(?:\.\d+)?$")


@dataclass(frozen=True)
class StatusEvent:
    """One ``APT::Status-Fd`` line: ``kind`` is one of :data:`KINDS`."""

    kind: str
    item: str
    percent: float
    message: str


def parse_status_line(line: str) -> StatusEvent | None:
    """Parse one Status-Fd line; None for anything that is not a known event."""
    parts = line.rstrip("\r\n").split(":")
    if len(parts) < 4 or parts[0] not in KINDS:
        return None
    for i in range(2, len(parts)):
        if _NUMBER.match(parts[i].strip()):
            return StatusEvent(parts[0], ":".join(parts[1:i]), min(100.0, float(parts[i])),
                               ":".join(parts[i + 1:]))
    return None


class LineSplitter:
    """Bytes in, complete text lines out (a partial last line waits for more)."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> list[str]:
        self._buf += data
        *lines, self._buf = self._buf.split(b"\n")
        return [ln.decode("utf-8", "replace").rstrip("\r") for ln in lines]

    def flush(self) -> list[str]:
        rest, self._buf = self._buf, b""
        return [rest.decode("utf-8", "replace").rstrip("\r")] if rest else []


class StatusParser:
    """Incremental Status-Fd parser: ``feed(bytes)`` returns the events completed so far."""

    def __init__(self) -> None:
        self._lines = LineSplitter()

    def feed(self, data: bytes) -> list[StatusEvent]:
        return [e for e in map(parse_status_line, self._lines.feed(data)) if e is not None]

    def flush(self) -> list[StatusEvent]:
        return [e for e in map(parse_status_line, self._lines.flush()) if e is not None]


class AptProgress:
    """Drive one tqdm bar (percent) through apt's phases: downloading, then installing."""

    PHASES = {"dlstatus": "downloading", "pmstatus": "installing"}

    def __init__(self, bar: Any, desc: str) -> None:
        self.bar = bar
        self.desc = desc
        self.phase: str | None = None
        self.errors: list[str] = []

    def __call__(self, event: StatusEvent) -> None:
        if event.kind == "pmerror":
            self.errors.append(f"{event.item}: {event.message}")
            return
        phase = self.PHASES.get(event.kind)
        if phase is None:
            return
        if phase != self.phase:
            self.phase = phase
            self.bar.reset(total=100)
            self.bar.set_description_str(f"{self.desc}: {phase}", refresh=False)
        self.bar.update(max(0.0, event.percent - self.bar.n))
        self.bar.set_postfix_str(event.message[:60], refresh=False)


@dataclass
class Collected:
    """What :func:`pump` gathered: apt's output lines and the status events seen."""

    lines: list[str]
    events: list[StatusEvent]


def pump(proc: subprocess.Popen[bytes], status_fd: int,
         on_event: Callable[[StatusEvent], None],
         on_line: Callable[[str], None] = lambda line: log.debug("apt: %s", line)) -> Collected:
    """Read ``proc.stdout`` and the Status-Fd read end ``status_fd`` until both close.

    Returns when both reach EOF, or shortly after ``proc`` exits even if a
    stray child keeps a pipe open.
    """
    assert proc.stdout is not None
    out_fd = proc.stdout.fileno()
    got = Collected([], [])
    splitters = {out_fd: LineSplitter(), status_fd: LineSplitter()}
    sel = selectors.DefaultSelector()
    for fd in splitters:
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    exited_rounds = 0
    try:
        while sel.get_map():
            ready = sel.select(timeout=0.5)
            if not ready:
                if proc.poll() is not None:
                    exited_rounds += 1
                    if exited_rounds >= 4:  # ~2 s after exit: something else holds the pipe
                        break
                continue
            for key, _ in ready:
                fd = int(key.fd)
                try:
                    data = os.read(fd, 65536)
                except BlockingIOError:
                    continue
                if not data:
                    sel.unregister(fd)
                for text in _lines(splitters[fd], data):
                    if fd == status_fd:
                        event = parse_status_line(text)
                        if event is not None:
                            got.events.append(event)
                            on_event(event)
                    else:
                        got.lines.append(text)
                        on_line(text)
    finally:
        sel.close()
    return got


def _lines(splitter: LineSplitter, data: bytes) -> Iterator[str]:
    yield from (splitter.feed(data) if data else splitter.flush())


def bar(progress: bool | None, desc: str) -> Any:
    """A percent bar for one apt command."""
    return _progress.bar(progress, total=100, desc=desc, unit="%",
                         bar_format="{desc} {percentage:3.0f}%|{bar}| [{elapsed}{postfix}]")
