"""The session journal and the session lock of a root.

The journal (``root / rootfs.JOURNAL_NAME``) lists, in order, every change a
live :class:`~maas_chroot.Chroot` made to the rootfs that must be undone at
the end: file swaps (each with a :class:`~maas_chroot.rootfs.Entry` snapshot
of the original) and mount-point directories it had to create. It is
rewritten atomically *before* each change, so after a SIGKILL
:func:`replay` can put everything back.

The lock is an ``flock`` on a host file named after the root's device and
inode (under the root-only ``/run/maas-chroot``, never inside the image, so it
cannot ship in a packed image). The kernel drops it when the holder dies.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from . import rootfs
from .errors import ChrootBusyError, ChrootError, UnsafePathError

log = logging.getLogger(__name__)

#: Root-only (0700) directory of the session locks; never world-writable /run/lock.
LOCK_DIRS = ("/run/maas-chroot",)
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


def _lock_dir(root: str) -> int:
    """An fd to the root-only directory of the session locks (created 0700 if missing).

    Refuses a directory it did not make safe: a symlink, a non-directory, or one
    that is not owned by root or is writable by group/others (a local user could
    have planted it to make root create files where they choose).
    """
    for d in LOCK_DIRS:
        if not os.path.isdir(os.path.dirname(d)):
            continue
        with contextlib.suppress(FileExistsError):
            os.mkdir(d, 0o700)
        hint = (f"remove {d} (it must be a directory owned by root, mode 0700); "
                "maas-chroot recreates it")
        try:
            fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as e:
            raise ChrootError(f"unsafe session lock directory {d}: {e.strerror} (a symlink or "
                              "not a directory)", root=root, hint=hint) from e
        st = os.fstat(fd)
        if st.st_uid != 0 or st.st_mode & 0o022:
            os.close(fd)
            raise ChrootError(f"unsafe session lock directory {d}: owned by uid {st.st_uid}, "
                              f"mode {stat.S_IMODE(st.st_mode):o}", root=root, hint=hint)
        return fd
    raise ChrootError(f"no directory for the session lock ({', '.join(LOCK_DIRS)})", root=root,
                      hint="mount a tmpfs on /run")


def _open_lock(root: str) -> int:
    st = os.stat(root)
    dfd = _lock_dir(root)
    try:
        return os.open(f"{st.st_dev}-{st.st_ino}.lock",
                       os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600, dir_fd=dfd)
    finally:
        os.close(dfd)


@contextlib.contextmanager
def locked(root: str, *, purpose: str = "a chroot session") -> Iterator[None]:
    """Hold the exclusive session lock of ``root``; refuse at once if someone else has it."""
    fd = _open_lock(root)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 256, 0).decode(errors="replace").strip() or "another process"
            raise ChrootBusyError(
                f"cannot start {purpose}: {root} is in use by {holder}",
                root=root, hint="wait for it to end; a session, sysprep, pack or copy of a "
                                "root must never overlap another") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} ({purpose})\n".encode(), 0)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def exclusive(root: str | os.PathLike[str], purpose: str) -> Iterator[None]:
    """Keep chroot sessions off ``root`` while ``purpose`` (e.g. ``"pack"``) reads or scrubs it.

    Takes the session lock without waiting (:class:`ChrootBusyError` naming the holder
    if a session has it) and refuses a journal a killed session left behind, whose
    temporary files (policy-rc.d, the host's resolv.conf) are still in the tree.
    Without root the lock cannot be taken (its directory is root-only; sessions need
    root anyway), so only the journal is checked.
    """
    top = os.fspath(root)
    with contextlib.ExitStack() as stack:
        if os.geteuid() == 0:
            stack.enter_context(locked(top, purpose=purpose))
        else:
            log.debug("%s: not root, so %s does not take the session lock", top, purpose)
        if os.path.lexists(os.path.join(top, rootfs.JOURNAL_NAME)):
            raise ChrootBusyError(
                f"cannot {purpose} {top}: it has the journal ({rootfs.JOURNAL_NAME}) of a "
                "chroot session that was killed before it could clean up", root=top,
                hint=f"run maas_chroot.recover({top!r}) (or `maas-chroot recover {top}`) first")
        yield
