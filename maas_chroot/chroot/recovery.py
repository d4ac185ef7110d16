"""Recovery: undo what a killed chroot session left in a root, from its journal."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import PrivilegeError
from ..rootfs import lock
from . import checks
from . import journal as _journal

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecoverReport:
    """What :func:`recover` put back in a root a killed session had left behind."""

    root: Path
    session_pid: int
    undone: tuple[str, ...]

    def __str__(self) -> str:
        lines = [f"recovered {self.root} (session pid {self.session_pid}):"]
        return "\n".join(lines + [f"  {line}" for line in self.undone])


def replay(root: str, journal: _journal.Journal) -> RecoverReport:
    done = [_journal.undo(root, action) for action in reversed(journal.actions)]
    journal.remove()
    return RecoverReport(Path(root), journal.pid, tuple(done))


def recover(root: str | os.PathLike[str]) -> RecoverReport | None:
    """Undo what a killed session left in ``root`` (from its journal); None if nothing to do.

    Refuses with :class:`ChrootBusyError` while a live session holds the root.
    """
    if os.geteuid() != 0:
        raise PrivilegeError("recover() needs root to restore files owned by root",
                             hint="run as root, e.g. with sudo")
    real = str(checks.check_root(root))
    with lock.locked(real, purpose="recovery"):
        journal = _journal.load(real)
        if journal is None:
            return None
        report = replay(real, journal)
    log.info("%s", report)
    return report
