"""Depth-first walks by directory fd, without recursion and with a bounded fd budget.

A tree may be deeper than Python's recursion limit (a malicious archive, a
runaway build). :class:`DirStack` holds the directories from the walk's start
down to the current one. Only the :data:`KEEP` deepest stay open; an ancestor
whose fd was closed is re-opened through ``..`` of its child when the walk
climbs back, and must be the same directory (``st_dev``, ``st_ino``) as when
the walk went down, or the walk stops with ``ESTALE`` (the tree was moved
under it). Every open is ``O_NOFOLLOW | O_DIRECTORY``.
"""

from __future__ import annotations

import errno
import os
from types import TracebackType

#: directory fds kept open below the walk's start (the caller's fd is never closed)
KEEP = 32
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class DirStack:
    """The open directories of a depth-first walk that starts at the caller's ``fd``."""

    def __init__(self, fd: int, where: str) -> None:
        st = os.fstat(fd)
        self._fds = [fd]
        self._ids = [(st.st_dev, st.st_ino)]
        self._where = [where]

    def __enter__(self) -> DirStack:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    @property
    def fd(self) -> int:
        """The current (deepest) directory."""
        return self._fds[-1]

    @property
    def where(self) -> str:
        """The current directory's path, for messages."""
        return self._where[-1]

    def __len__(self) -> int:
        return len(self._fds)

    def push(self, name: str, st: os.stat_result) -> int:
        """Enter the directory ``name`` of the current one, which must still be ``st``."""
        where = f"{self.where}/{name}"
        fd = os.open(name, DIR_FLAGS, dir_fd=self.fd)
        got = os.fstat(fd)
        if (got.st_dev, got.st_ino) != (st.st_dev, st.st_ino):
            os.close(fd)
            raise OSError(errno.ESTALE, "directory replaced while the tree was walked", where)
        self._fds.append(fd)
        self._ids.append((st.st_dev, st.st_ino))
        self._where.append(where)
        old = len(self._fds) - 1 - KEEP
        if old >= 1 and self._fds[old] >= 0:
            os.close(self._fds[old])
            self._fds[old] = -1
        return fd

    def pop(self) -> None:
        """Leave the current directory (closed); its parent becomes current again."""
        if len(self._fds) < 2:
            raise ValueError("the walk's start cannot be left")
        fd = self._fds[-1]
        if self._fds[-2] < 0:
            parent = os.open("..", DIR_FLAGS, dir_fd=fd)
            got = os.fstat(parent)
            if (got.st_dev, got.st_ino) != self._ids[-2]:
                os.close(parent)
                raise OSError(errno.ESTALE, "directory moved while the tree was walked",
                              self._where[-2])
            self._fds[-2] = parent
        os.close(fd)
        del self._fds[-1], self._ids[-1], self._where[-1]

    def close(self) -> None:
        """Close every fd the walk opened (not the caller's)."""
        for fd in self._fds[1:]:
            if fd >= 0:
                os.close(fd)
        del self._fds[1:], self._ids[1:], self._where[1:]


__all__ = ["DIR_FLAGS", "KEEP", "DirStack"]
