"""The session journal of a root.

The journal (``root / rootfs.JOURNAL_NAME``) lists, in order, every change a
live :class:`~maas_chroot.Chroot` made to the rootfs that must be undone at
the end: file swaps (each with a :class:`~maas_chroot.rootfs.Entry` snapshot
of the original) and mount-point directories it had to create. It is
rewritten atomically *before* each change, so after a SIGKILL
:func:`replay` can put everything back.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import time
from dataclasses import dataclass, field

from .. import rootfs
from ..errors import ChrootError, UnsafePathError

log = logging.getLogger(__name__)

VERSION = 1


@dataclass
class Journal:
    """The in-memory state of a session's journal (mutable: it grows during the session)."""

    root: str
    pid: int = field(default_factory=os.getpid)
    started: float = field(default_factory=time.time)
    actions: list[dict[str, object]] = field(default_factory=list)

    def add_swap(self, entry: rootfs.Entry) -> dict[str, object]:
        """Record (and save) that ``entry.path`` is about to be replaced; returns the action."""
        return self._add({"op": "swap", "entry": entry.to_json()})

    def add_mkdir(self, path: str, *, file: bool = False) -> dict[str, object]:
        """Record (and save) that a mount point (a directory, or an empty ``file``) is about
        to be created at ``path``; returns the action."""
        return self._add({"op": "file" if file else "mkdir", "path": path})

    def _add(self, action: dict[str, object]) -> dict[str, object]:
        self.actions.append(action)
        self.save()
        return action

    def save(self) -> None:
        doc = {"version": VERSION, "pid": self.pid, "started": self.started,
               "actions": self.actions}
        rootfs.write_file(self.root, "/" + rootfs.JOURNAL_NAME,
                          json.dumps(doc, indent=1) + "\n", mode=0o600, mkdirs=False)

    def remove(self) -> None:
        rootfs.unlink(self.root, "/" + rootfs.JOURNAL_NAME)


def load(root: str) -> Journal | None:
    """The journal a session left in ``root``, or None."""
    try:
        raw = rootfs.read_file(root, "/" + rootfs.JOURNAL_NAME, follow=False)
    except FileNotFoundError:
        return None
    try:
        doc = json.loads(raw)
        if doc.get("version") != VERSION:
            raise ValueError(f"unknown journal version {doc.get('version')!r}")
        return Journal(root, pid=int(doc["pid"]), started=float(doc["started"]),
                       actions=list(doc["actions"]))
    except (ValueError, KeyError, TypeError) as e:
        raise ChrootError(
            f"the session journal {os.path.join(root, rootfs.JOURNAL_NAME)} is unreadable: {e}",
            root=root, hint="inspect it; restore etc/resolv.conf and usr/sbin/policy-rc.d by "
                            "hand, then delete it") from e


def undo(root: str, action: dict[str, object]) -> str:
    """Undo one journaled action; returns a one-line description of what was done."""
    if action["op"] == "swap":
        entry = rootfs.Entry.from_json(action["entry"])  # type: ignore[arg-type]
        rootfs.restore(root, entry)
        return f"restored {entry.path} ({entry.kind})"
    path = str(action["path"])
    try:
        with rootfs.parent_dir(root, path) as (dfd, name):
            if action["op"] == "file":  # an empty file made as a mount point for a file bind
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                if st.st_size or not stat.S_ISREG(st.st_mode):
                    return f"kept {path} (not an empty file)"
                os.unlink(name, dir_fd=dfd)
                return f"removed mount point {path}"
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode):  # never rmdir through a symlink
                log.warning("left %s in %s: it is no longer a directory", path, root)
                return f"kept {path} (not a directory)"
            os.rmdir(name, dir_fd=dfd)
    except (FileNotFoundError, UnsafePathError):
        return f"{path} already gone"
    except OSError as e:
        if e.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.EBUSY, errno.ENOTDIR):
            log.warning("left %s in %s: it is not empty (%s)", path, root, e.strerror)
            return f"kept {path} (not empty)"
        raise
    return f"removed mount point {path}"
