"""Resolve paths inside a root directory, as the kernel does for a process chrooted there.

The one resolver of the project. With ``openat2(RESOLVE_IN_ROOT)`` when the
kernel has it (5.6+), else with an equivalent component walk (``O_PATH |
O_NOFOLLOW`` per component, symlinks re-resolved against the root, ``..``
stopping at the root), so an image symlink such as ``etc/resolv.conf ->
/etc/hosts`` or ``usr/sbin -> ../../../../usr/sbin`` can never lead outside
the root. :func:`ensure` is the one ``mkdir -p`` inside a root.

Standard library only, and cheap to import: the chroot helper (run as
``python -I -S`` for every command) imports this file as a top-level module,
the way mkosi's ``sandbox.py`` is both a script and a module; the library
imports it as ``maas_chroot.inroot``. Errors are plain :class:`OSError`.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~10 ms per command
if TYPE_CHECKING:
    from collections.abc import Callable

RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10
#: openat2(2) has the same number on every architecture Linux added it for (5.6).
SYS_OPENAT2 = 437 if os.uname().machine in (
    "x86_64", "aarch64", "ppc64le", "s390x", "riscv64", "armv7l", "armv8l", "i686") else None
MAX_SYMLINKS = 40


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
#: None: not known yet; True once openat2 worked (an EPERM is then the file's own, such
#: as an immutable file); False when the kernel or a seccomp filter refuses it.
_have_openat2: bool | None = None if SYS_OPENAT2 is not None else False


def _syscall(dirfd: int, path: bytes, how: _OpenHow) -> int:
    return int(_libc.syscall(SYS_OPENAT2, dirfd, path, ctypes.byref(how), ctypes.sizeof(how)))


def _openat2(dirfd: int, path: str, flags: int, mode: int) -> int:
    global _have_openat2
    # openat2 rejects a non-zero mode unless a file may be created (EINVAL).
    creates = flags & os.O_CREAT or (flags & os.O_TMPFILE) == os.O_TMPFILE
    how = _OpenHow(flags | os.O_CLOEXEC, mode if creates else 0,
                   RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
    while True:
        fd = _syscall(dirfd, os.fsencode(path), how)
        if fd >= 0:
            _have_openat2 = True
            return fd
        err = ctypes.get_errno()
        if err in (errno.EINTR, errno.EAGAIN):
            continue
        if err in (errno.ENOSYS, errno.EPERM) and _have_openat2 is None:
            # ENOSYS: kernel < 5.6; EPERM: a seccomp filter (some container runtimes),
            # or the file's own EPERM: tell them apart by opening the directory itself.
            probe = _syscall(dirfd, b".", _OpenHow(os.O_PATH | os.O_CLOEXEC, 0, RESOLVE_IN_ROOT))
            if probe < 0:
                _have_openat2 = False
                raise NotImplementedError
            os.close(probe)
            _have_openat2 = True
        raise OSError(err, os.strerror(err), path)


def walk_open(rootfd: int, path: str, flags: int, mode: int = 0o644) -> int:
    """Resolve ``path`` inside ``rootfd`` one component at a time (RESOLVE_IN_ROOT emulation)."""
    todo = [c for c in path.split("/") if c not in ("", ".")]
    todo.reverse()  # a stack: the next component is at the end
    stack = [os.dup(rootfd)]  # fds of the directories walked so far; stack[0] is the root
    links = 0
    try:
        while todo:
            comp = todo.pop()
            if comp == "..":
                if len(stack) > 1:
                    os.close(stack.pop())
                continue
            if not todo:  # the final component
                try:
                    st = os.stat(comp, dir_fd=stack[-1], follow_symlinks=False)
                    is_link = stat.S_ISLNK(st.st_mode)
                except FileNotFoundError:
                    is_link = False
                if not is_link or flags & os.O_NOFOLLOW:
                    return os.open(comp, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode,
                                   dir_fd=stack[-1])
            else:
                fd = os.open(comp, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=stack[-1])
                st = os.fstat(fd)
                if not stat.S_ISLNK(st.st_mode):
                    if not stat.S_ISDIR(st.st_mode):
                        os.close(fd)
                        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
                    stack.append(fd)
                    continue
                os.close(fd)
            # comp is a symlink to follow: splice its target into the walk.
            links += 1
            if links > MAX_SYMLINKS:
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
            target = os.readlink(comp, dir_fd=stack[-1])
            if target.startswith("/"):
                while len(stack) > 1:
                    os.close(stack.pop())
            todo.extend(reversed([c for c in target.split("/") if c not in ("", ".")]))
            if not todo:  # a link to "/" (or to the current directory)
                return os.open(".", flags | os.O_CLOEXEC, mode, dir_fd=stack[-1])
        return os.open(".", flags | os.O_CLOEXEC, mode, dir_fd=stack[-1])
    finally:
        for fd in stack:
            os.close(fd)


def open_at(rootfd: int, path: str, flags: int, mode: int = 0o644) -> int:
    """``open(path, flags, mode)`` as seen by a process chrooted at the ``O_PATH`` fd ``rootfd``.

    Pass ``os.O_NOFOLLOW`` to refuse a final symlink (``ELOOP``), as with open(2).
    """
    if _have_openat2 is not False:
        try:
            return _openat2(rootfd, path, flags, mode)
        except NotImplementedError:
            pass
    return walk_open(rootfd, path, flags, mode)


def ensure(rootfd: int, path: str, *, directory: bool = True, mode: int = 0o755,
           before_create: Callable[[str, bool], object] | None = None) -> int:
    """``mkdir -p`` inside the root; return an ``O_PATH`` fd on ``path``.

    Every missing component is created (root-owned directories of ``mode``);
    with ``directory=False`` the last one is an empty regular file (a mount point
    for a file bind). ``before_create(subpath, is_dir)`` is called before each
    creation, so a caller can journal it first. A component that is a symlink
    not resolving inside the root, or a loop, is never created through: that is
    an ``OSError`` (ENOENT, ELOOP), as is a non-directory where a directory is needed
    (ENOTDIR).
    """
    parts = [c for c in path.split("/") if c not in ("", ".")]
    if ".." in parts:
        raise OSError(errno.EINVAL, "'..' is not allowed in a path to create", path)
    for i in range(len(parts)):
        sub = "/" + "/".join(parts[: i + 1])
        last = i == len(parts) - 1
        is_dir = directory or not last
        flags = os.O_PATH | (os.O_DIRECTORY if is_dir else 0)
        try:
            fd = open_at(rootfd, sub, flags)
        except FileNotFoundError:
            pass
        else:
            if last:
                return fd
            os.close(fd)
            continue
        parent = open_at(rootfd, "/" + "/".join(parts[:i]), os.O_PATH | os.O_DIRECTORY)
        try:
            try:
                os.stat(parts[i], dir_fd=parent, follow_symlinks=False)
            except FileNotFoundError:
                pass
            else:  # it exists, yet does not resolve: a dangling symlink
                raise OSError(errno.ENOENT, "a symlink that does not resolve inside the root",
                              sub)
            if before_create is not None:
                before_create(sub, is_dir)
            if is_dir:
                os.mkdir(parts[i], mode, dir_fd=parent)
            else:
                os.close(os.open(parts[i], os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                                 | os.O_CLOEXEC, 0o644, dir_fd=parent))
        finally:
            os.close(parent)
    return open_at(rootfd, "/" + "/".join(parts), os.O_PATH
                   | (os.O_DIRECTORY if directory else 0))
