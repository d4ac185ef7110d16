"""Reading a guest's serial console: milestones, and the lines that mean a boot has failed.

Each console line is timestamped on the host as it arrives, so milestones are
seconds since QEMU started. A fatal line ends the boot at once with a reason
(no waiting for a timeout): a kernel panic, a root filesystem the kernel cannot
mount, no init, the initramfs's rescue shell, or systemd's emergency mode.
"""

from __future__ import annotations

import collections
import re
from dataclasses import dataclass

#: Milestone name -> the console line that marks it (first match wins).
MILESTONES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("kernel", re.compile(r"Linux version \d")),
    ("initramfs", re.compile(r"Run /init as init process")),
    ("userspace", re.compile(r"Welcome to .*!|systemd\[1\]: .*running in system mode")),
    ("multi-user", re.compile(r"Reached target .*(multi-user\.target|Multi-User System)")),
    ("cloud-init", re.compile(r"Cloud-init v\. \S+ finished at")),
    ("login", re.compile(r"\S login: ")),
)


@dataclass(frozen=True)
class Failure:
    """What a fatal console line means: a ``reason`` code and a sentence for people."""

    reason: str
    what: str
    hint: str


#: Patterns that end a boot, checked in this order (the more specific first).
FATAL: tuple[tuple[re.Pattern[str], Failure], ...] = (
    (re.compile(r"VFS: Unable to mount root fs"), Failure(
        "no-root-fs", "the kernel could not mount the root filesystem",
        "the kernel has no driver for the disk or filesystem built in: boot it with its "
        "initramfs (install initramfs-tools, so curtin's update-initramfs makes one)")),
    (re.compile(r"No working init found|Target filesystem doesn't have requested|"
                r"No init found|Failed to execute /init|init not found"), Failure(
        "no-init", "the root filesystem has no usable init (/sbin/init)",
        "install systemd-sysv (it provides /sbin/init), or fix the /sbin/init symlink")),
    (re.compile(r"Attempted to kill init"), Failure(
        "init-died", "init (PID 1) crashed", "look at the console log above the panic")),
    (re.compile(r"Kernel panic - not syncing"), Failure(
        "kernel-panic", "the kernel panicked", "look at the console log above the panic")),
    (re.compile(r"ALERT! .* does not exist|Dropping to a shell|^\(initramfs\) "), Failure(
        "initramfs-shell", "the initramfs could not find the root filesystem and dropped to "
        "its rescue shell", "check the root= device and that the initramfs has the disk "
        "driver (virtio_blk) and the filesystem (ext4)")),
    (re.compile(r"You are in emergency mode|Give root password for maintenance|"
                r"Cannot open access to console, the root account is locked"), Failure(
        "emergency", "systemd stopped in emergency mode",
        "a mount in /etc/fstab or a unit required for boot failed: see the console log")),
)


#: The failures a console shows as a prompt, with no newline after it: the only ones a
#: line still being written may end a boot with. Any other line is read whole, so that
#: "Kernel panic - not syncing: VFS: Unable to mount root fs" split between two reads is
#: not taken for a bare panic.
PROMPTS = frozenset({"initramfs-shell", "emergency"})


def fatal(line: str, *, partial: bool = False) -> Failure | None:
    """The failure ``line`` announces, or None (``partial``: only a prompt's)."""
    for pattern, failure in FATAL:
        if pattern.search(line) and (not partial or failure.reason in PROMPTS):
            return failure
    return None


#: Bytes of console output without a newline that make a line anyway.
MAX_LINE = 4096


class Console:
    """The lines of one guest's console, with their arrival times (seconds since start).

    It keeps the first :data:`HEAD` lines and the last :data:`TAIL`: a guest that floods
    its console for the whole timeout costs a bounded amount of memory.
    """

    HEAD = 5000
    TAIL = 5000

    def __init__(self) -> None:
        self.head: list[tuple[float, str]] = []
        self.tail: collections.deque[tuple[float, str]] = collections.deque(maxlen=self.TAIL)
        self.dropped = 0
        self.milestones: dict[str, float] = {}
        self.failure: Failure | None = None
        self.failure_line: str | None = None
        self.ended: float | None = None  # when the console closed (QEMU exited)
        self._pending = b""
        self._failure_partial = False

    @property
    def lines(self) -> list[tuple[float, str]]:
        return [*self.head, *self.tail]

    def feed(self, data: bytes, at: float) -> None:
        self._pending += data
        *complete, self._pending = self._pending.split(b"\n")
        for raw in complete:
            self.add(raw.decode("utf-8", "replace").rstrip("\r"), at)
        if len(self._pending) > MAX_LINE:  # no newline for too long: a line of its own
            self.flush(at)
        elif self._pending:  # a prompt ("login: ", "(initramfs) ") ends in no newline
            self._scan(_ANSI.sub("", self._pending.decode("utf-8", "replace")), at,
                       partial=True)

    def flush(self, at: float) -> None:
        if self._pending:
            self.add(self._pending.decode("utf-8", "replace").rstrip("\r"), at)
            self._pending = b""

    def add(self, line: str, at: float) -> None:
        clean = _ANSI.sub("", line)
        if len(self.head) < self.HEAD:
            self.head.append((at, clean))
        else:
            self.dropped += len(self.tail) == self.TAIL
            self.tail.append((at, clean))
        self._scan(clean, at, partial=False)

    def _scan(self, text: str, at: float, *, partial: bool) -> None:
        for name, pattern in MILESTONES:
            if name not in self.milestones and pattern.search(text):
                self.milestones[name] = round(at, 2)
        if self.failure is None:
            found = fatal(text, partial=partial)
            if found is not None:
                self.failure, self.failure_line = found, text.strip()
                self._failure_partial = partial
        elif self._failure_partial and not partial:  # the whole line of the prompt seen first
            self.failure_line, self._failure_partial = text.strip(), False

    def text(self) -> str:
        gap = f"[ ... {self.dropped} console lines dropped ... ]\n" if self.dropped else ""
        head = "".join(f"[{at:7.2f}] {line}\n" for at, line in self.head)
        return head + gap + "".join(f"[{at:7.2f}] {line}\n" for at, line in self.tail)

    def quote(self, *, around: str | None = None, count: int = 8) -> tuple[str, ...]:
        """Console lines to quote in an error: those around ``around``, else the last ones."""
        texts = [line.strip() for _, line in self.lines if line.strip()]
        if around is not None and around.strip() in texts:
            i = texts.index(around.strip())
            return tuple(texts[max(0, i - count + 2): i + 2])
        return tuple(texts[-count:])


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
