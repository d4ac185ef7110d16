"""A private overlay: a copy-on-write copy of a read-only tree that one thread alone sees.

:func:`call` runs ``fn(merged)`` in a new thread that first gives itself a mount
namespace of its own (``unshare(CLONE_NEWNS)`` changes only the calling thread), makes
every mount in it a slave of the host's (nothing mounted there propagates back), and
mounts an overlayfs on ``scratch/rootfs``: the ``lower`` tree read-only underneath,
``scratch/upper`` taking every change. The processes that thread starts (the chroot
helper, apt, dpkg) are born in its namespace and see the same tree; the host, and every
other thread of this process, see an empty directory. The thread unmounts the overlay
(lazily) before it ends, and the kernel drops the namespace with its last task, so even a
SIGKILLed process leaves nothing mounted anywhere. Nothing is mounted on the host, as
with every other mount the library makes.

Why it is safe for a shared cache: overlayfs never writes to the lower tree. A file is
copied up to ``upper`` before its first change (data, mode, owner, xattrs, times) and a
removed one becomes a whiteout in ``upper``, where a hard-linked copy of the tree would
let an in-place write, a ``chmod`` or a ``chown`` reach the shared inode. ``index=on``
keeps a copied-up file's hard links linked (a write through one name shows through the
others, as on a plain tree), ``redirect_dir=on`` lets a lower directory be renamed,
``xino=auto`` gives the whole tree one ``st_dev`` even when ``lower`` and ``upper`` are
on different filesystems (pack and the tree walks never cross a device). The root of the
merged tree shows the upper directory's own metadata, so that directory is given the
lower root's mode, owner, times and xattrs first.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from ..errors import ChrootError, OverlayUnavailable
from . import nsexec, signals

log = logging.getLogger(__name__)

T = TypeVar("T")

MS_SLAVE = 0x80000
MNT_DETACH = 2
OPTIONS = "index=on,redirect_dir=on,xino=auto"
#: What overlayfs's option parser would take for a separator in a directory name.
_UNSAFE = (",", ":", "\\")
_PRIVATE_XATTR = "trusted.overlay."

_libc = ctypes.CDLL(None, use_errno=True)
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def call(lower: Path, scratch: Path, fn: Callable[[Path], T], *,
         stop: threading.Event | None = None) -> T:
    """``fn(scratch / "rootfs")`` with ``lower`` overlaid there, in a thread of its own.

    ``scratch`` is an empty directory (on a filesystem overlayfs can write to); ``upper``,
    ``overlay-work`` and ``rootfs`` are made in it. ``fn``'s result is returned and its
    exception raised here. An interrupt (or SIGTERM, which raises
    :class:`~maas_chroot.chroot.signals.Terminated` while this waits) sets ``stop``, sends
    SIGTERM to the processes the thread is running, waits for ``fn`` to unwind and is
    raised. :class:`~maas_chroot.errors.OverlayUnavailable` says the overlay could not be
    mounted (before ``fn`` ran).
    """
    upper, work, merged = scratch / "upper", scratch / "overlay-work", scratch / "rootfs"
    bad = [p for p in (lower, scratch) if any(c in os.fspath(p) for c in _UNSAFE)]
    if bad:
        raise OverlayUnavailable(f"cannot overlay {lower}: overlayfs cannot take the path "
                                 f"{bad[0]} (a ',', ':' or '\\' in it)", root=merged,
                                 hint="use a work and cache directory without those characters")
    for d in (upper, work, merged):
        d.mkdir(mode=0o700)
    _copy_root_metadata(lower, upper)
    options = f"lowerdir={lower},upperdir={upper},workdir={work},{OPTIONS}"
    outcome: list[tuple[bool, object]] = []

    def worker() -> None:
        try:
            with contextlib.ExitStack() as stack:
                _own_namespace(merged)
                _mount(options, merged)
                stack.callback(_unmount, merged)
                outcome.append((True, fn(merged)))
        except BaseException as e:  # handed to the waiting thread
            outcome.append((False, e))

    thread = threading.Thread(target=worker, name=f"maas-chroot-overlay {merged}", daemon=True)
    with _sigterm_raises():
        thread.start()
        _wait(thread, stop)
    ok, value = outcome[0]
    if not ok:
        assert isinstance(value, BaseException)
        raise value
    return value  # type: ignore[return-value]


def _own_namespace(merged: Path) -> None:
    try:
        nsexec.unshare(nsexec.CLONE_NEWNS)
        nsexec.mount(None, "/", None, nsexec.MS_REC | MS_SLAVE, what="--make-rslave /")
    except OSError as e:
        raise OverlayUnavailable(f"cannot make a private mount namespace for {merged}: "
                                 f"{e.strerror or e}", root=merged,
                                 hint="run as root on Linux with mount namespaces") from e


def _mount(options: str, merged: Path) -> None:
    try:
        nsexec.mount("overlay", os.fspath(merged), "overlay", 0, options,
                     what=f"an overlay on {merged}")
    except OSError as e:
        raise OverlayUnavailable(f"cannot mount an overlay on {merged}: {e.strerror or e}",
                                 root=merged, hint="the kernel needs overlayfs (index, "
                                 "redirect_dir), and the work directory a filesystem it can "
                                 "write on (not an overlay itself)") from e


def _unmount(merged: Path) -> None:
    if _libc.umount2(os.fsencode(merged), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        raise ChrootError(f"cannot unmount the overlay on {merged}: {os.strerror(err)}",
                          root=merged, hint="it goes when this process ends")


def _copy_root_metadata(lower: Path, upper: Path) -> None:
    """Give ``upper`` the mode, owner, times and xattrs of ``lower`` (the merged root's)."""
    st = os.lstat(lower)
    for name in os.listxattr(lower, follow_symlinks=False):
        if not name.startswith(_PRIVATE_XATTR):
            os.setxattr(upper, name, os.getxattr(lower, name, follow_symlinks=False),
                        follow_symlinks=False)
    os.chown(upper, st.st_uid, st.st_gid, follow_symlinks=False)
    os.chmod(upper, st.st_mode & 0o7777)
    os.utime(upper, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """While waiting in the main thread, SIGTERM raises (so the build unwinds), as a chroot
    session's does; the session itself, in the worker thread, cannot install it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGTERM, signals.raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _wait(thread: threading.Thread, stop: threading.Event | None) -> None:
    try:
        thread.join()
    except BaseException:
        if stop is not None:
            stop.set()
        sig = signal.SIGTERM
        while thread.is_alive():
            _signal_children(thread, sig)
            try:
                thread.join()
            except BaseException:  # asked again: stop harder, and still wait
                sig = signal.SIGKILL
        raise


def _signal_children(thread: threading.Thread, sig: int) -> None:
    """Send ``sig`` to the processes ``thread`` started (``/proc/self/task/TID/children``)."""
    try:
        with open(f"/proc/self/task/{thread.native_id}/children") as f:
            pids = [int(p) for p in f.read().split()]
    except (OSError, ValueError):
        return
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
            log.debug("sent signal %d to process %d of %s", sig, pid, thread.name)

