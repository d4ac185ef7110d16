"""The one tree walk: depth-first by directory fd, without recursion, with a bounded fd budget.

:func:`walk` is used by every recursive operation of the library (``remove_tree``,
``pack``, sysprep's truncation and size count). A tree may be deeper than Python's
recursion limit (a malicious archive, a runaway build), so nothing here recurses.
:class:`DirStack` holds the directories from the walk's start down to the current
one. Only the :data:`KEEP` deepest stay open; an ancestor whose fd was closed is
re-opened through ``..`` of its child when the walk climbs back, and must be the
same directory (``st_dev``, ``st_ino``) as when the walk went down, or the walk
stops with ``ESTALE`` (the tree was moved under it). Every open is
``O_NOFOLLOW | O_DIRECTORY``.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
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


#: :attr:`Node.kind` values: a non-directory (or a directory not descended into), a
#: directory about to be walked (before its entries), and one whose entries are done.
ENTRY, ENTER, LEAVE = "entry", "enter", "leave"


@dataclass(frozen=True)
class Node:
    """One step of :func:`walk`. The fds are valid until the walk takes its next step."""

    kind: str
    name: str  # the entry's name in its parent directory
    rel: str  # its path below the walk's start ("etc/passwd")
    where: str  # its path for messages (the start's ``where`` + ``rel``)
    st: os.stat_result  # lstat, taken when the walk reached it
    parent: int  # fd of the directory holding it
    fd: int = -1  # ENTER: fd of the directory itself (O_RDONLY | O_DIRECTORY | O_NOFOLLOW)


def same_filesystem(dev: int) -> Callable[[Node], bool]:
    """A ``descend`` predicate: only directories on the filesystem ``dev``."""
    return lambda node: node.st.st_dev == dev


def walk(fd: int, where: str, *, descend: Callable[[Node], bool] | None = None,
         sort: bool = False) -> Iterator[Node]:
    """Walk the tree below the open directory ``fd``, depth-first, iteratively.

    Yields every entry below ``fd`` (not ``fd`` itself): a directory as ``ENTER``,
    then its entries, then ``LEAVE``; everything else as ``ENTRY``. ``descend(node)``
    decides for each directory (default: only on ``fd``'s own filesystem); a
    directory not descended into is an ``ENTRY``. ``sort`` walks entries in the
    byte order of their names (deterministic output). Symlinks are never followed.
    The caller may change the current directory (e.g. unlink what it was given).
    """
    if descend is None:
        descend = same_filesystem(os.fstat(fd).st_dev)
    with DirStack(fd, where) as dirs:
        todo = [_names(fd, sort)]  # per open level: names still to visit, the next one last
        rels = [""]
        while True:
            if not todo[-1]:
                if len(dirs) == 1:
                    return
                todo.pop()
                rel, here = rels.pop(), dirs.where
                st, name = os.fstat(dirs.fd), rel.rpartition("/")[2]
                dirs.pop()
                yield Node(LEAVE, name, rel, here, st, dirs.fd)
                continue
            name = todo[-1].pop()
            rel = f"{rels[-1]}/{name}" if rels[-1] else name
            st = os.stat(name, dir_fd=dirs.fd, follow_symlinks=False)
            node = Node(ENTRY, name, rel, f"{dirs.where}/{name}", st, dirs.fd)
            if not stat.S_ISDIR(st.st_mode) or not descend(node):
                yield node
                continue
            parent = dirs.fd
            sub = dirs.push(name, st)
            yield Node(ENTER, name, rel, dirs.where, st, parent, sub)
            todo.append(_names(sub, sort))
            rels.append(rel)


def _names(fd: int, sort: bool) -> list[str]:
    names = os.listdir(fd)
    if sort:
        names.sort(key=os.fsencode, reverse=True)
    return names


__all__ = ["DIR_FLAGS", "ENTER", "ENTRY", "KEEP", "LEAVE", "DirStack", "Node",
           "same_filesystem", "walk"]
