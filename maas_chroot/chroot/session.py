"""The chroot session: :class:`Chroot` (binds in :mod:`.binds`, recovery in :mod:`.recovery`).

Nothing is ever mounted in the host's mount namespace. Each command starts a
small helper (``nsexec.py``) in its own mount and PID namespace (and, with
``network="none"``, a loopback-only network namespace shared by the session);
the helper mounts proc, a read-only sysfs, a minimal /dev with its own devpts,
a tmpfs on /run and the caller's binds, chroots and execs. When the command
ends, its namespaces die with every mount and every daemon it started.

The session itself holds only what must persist across commands, each as a
reversible step on an ExitStack whose undo is registered before the action
and recorded in a journal inside the root before the change is made:
``usr/sbin/policy-rc.d`` (exit 101), the ``etc/resolv.conf`` swap (the host's
file, so names resolve as on the host), files of :meth:`Chroot.temporary_file`
and any mount-point directory the image lacks. :func:`recover` replays that
journal after a session was SIGKILLed. A host-side lock keeps two sessions
off one root.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shlex
import signal
import stat
import subprocess
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal, overload

from .. import rootfs
from .. import run as _run
from ..errors import ChrootBusyError, ChrootError, CommandError, PrivilegeError
from ..rootfs import inroot, lock
from . import binds as binds_
from . import checks, copyin, netns, signals
from . import journal as _journal
from .apt import Apt
from .binds import Bind, Binds
from .recovery import replay

__all__ = ["Bind", "Chroot", "Network"]

log = logging.getLogger(__name__)

POLICY_RC_D = "/usr/sbin/policy-rc.d"
POLICY_SCRIPT = b"#!/bin/sh\n# maas-chroot session: never start services in the image\nexit 101\n"
RESOLV_CONF = "/etc/resolv.conf"
#: Directories the helper mounts on in every command.
MOUNT_POINTS = ("/proc", "/sys", "/dev", "/run")
#: The environment of every command (the caller's ``env`` and proxies are added).
CHROOT_ENV = {"DEBIAN_FRONTEND": "noninteractive", "LANG": "C.UTF-8", "PATH": _run.DEFAULT_PATH,
              "SYSTEMD_OFFLINE": "1", "HOME": "/root"}

Network = Literal["host", "none"]


class Chroot:
    """A session on an extracted rootfs. Use it as a context manager.

    ``network="none"`` gives commands their own network namespace with only
    ``lo`` (up). ``binds={host_dir: chroot_dir}`` (or ``(chroot_dir, "ro")`` or
    :class:`Bind` values) adds bind mounts to every command. ``recover=True``
    replays a journal a killed session left behind instead of refusing.
    """

    def __init__(self, root: str | os.PathLike[str], *, network: Network = "host",
                 binds: Binds = None, recover: bool = False) -> None:
        if os.geteuid() != 0:
            raise PrivilegeError("a chroot session needs root (namespaces, mounts, chroot)",
                                 hint="run as root, e.g. with sudo")
        self._root = checks.check_root(root)
        #: How this host runs the image's binaries (None: the image does not say).
        self.emulation = checks.check_arch(self._root)
        if network not in ("host", "none"):
            raise ChrootError(f"unknown network mode {network!r}", root=self._root,
                              hint='use network="host" or network="none"')
        self.network: Network = network
        if network == "none":
            netns.pyroute2_path(str(self._root))  # fail now, before touching the root
        self.binds = binds_.normalize(binds, str(self._root))
        self._recover = recover
        self._stack: contextlib.ExitStack | None = None
        self._journal: _journal.Journal | None = None
        self._swapped: set[str] = set()
        self._netfd: int | None = None
        self._undo_failed = False

    @property
    def root(self) -> Path:
        return self._root

    @property
    def arch(self) -> str | None:
        """The image's architecture (Debian's name, read from its ``/bin/sh``), if known."""
        return self.emulation.arch if self.emulation is not None else None

    def __repr__(self) -> str:
        state = "active" if self._stack is not None else "inactive"
        return f"Chroot({str(self._root)!r}, network={self.network!r}, binds={self.binds!r}) " \
               f"<{state}, {self.arch or 'unknown arch'}>"

    # --- session set-up and tear-down -----------------------------------------------------

    def __enter__(self) -> Chroot:
        if self._stack is not None:
            raise ChrootError("this session is already active", root=self._root)
        stack = contextlib.ExitStack()
        try:
            with signals.deferred():
                self._setup(stack)
        except BaseException:
            with signals.deferred():
                stack.close()
            raise
        self._stack = stack
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            with signals.deferred():
                stack.close()

    def _setup(self, stack: contextlib.ExitStack) -> None:
        root = str(self._root)
        stack.enter_context(lock.locked(root))
        stale = _journal.load(root)
        if stale is not None:
            if not self._recover:
                raise ChrootBusyError(
                    f"{root} has the journal of a session (pid {stale.pid}) that was killed "
                    "before it could clean up", root=root,
                    hint=f"run mc.recover({root!r}) or `maas-chroot recover {root}`, or pass "
                         "Chroot(..., recover=True)")
            log.warning("%s", replay(root, stale))
        journal = _journal.Journal(root)
        stack.callback(self._finish, journal)  # runs last: the journal goes once all is undone
        journal.save()
        self._journal, self._swapped, self._undo_failed = journal, set(), False
        self._stack = stack
        try:
            for point in (*MOUNT_POINTS, *(b.dst for b in self.binds)):
                self._ensure_mount_point(point, directory=point in MOUNT_POINTS
                                         or os.path.isdir(self._bind_src(point)))
            self.temporary_file(POLICY_RC_D, POLICY_SCRIPT, mode=0o755)
            try:
                with open("/etc/resolv.conf", "rb") as f:
                    resolv = f.read()
            except FileNotFoundError:
                log.warning("the host has no /etc/resolv.conf; names will not resolve in %s",
                            root)
            else:
                self.temporary_file(RESOLV_CONF, resolv, mode=0o644)
            if self.network == "none":
                self._netfd = stack.enter_context(netns.loopback_namespace(root))
                stack.callback(setattr, self, "_netfd", None)
            if threading.current_thread() is threading.main_thread():
                old = signal.getsignal(signal.SIGTERM)
                stack.callback(signal.signal, signal.SIGTERM, old)
                signal.signal(signal.SIGTERM, signals.raise_terminated)
        finally:
            self._stack = None

    def _bind_src(self, dst: str) -> str:
        return next(b.src for b in self.binds if b.dst == dst)

    def _ensure_mount_point(self, path: str, *, directory: bool) -> None:
        """Create a missing mount point inside the root (journaled, removed at the end).

        A dangling symlink (or a loop, or a file where a directory is needed) is an
        image problem: the mount point is then never created through it.
        """
        assert self._journal is not None and self._stack is not None
        journal, stack = self._journal, self._stack

        def journaled(sub: str, is_dir: bool) -> None:
            stack.callback(self._undo, journal.add_mkdir(sub, file=not is_dir))

        root = str(self._root)
        rootfd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.close(inroot.ensure(rootfd, path, directory=directory, before_create=journaled))
        except OSError as e:
            sub = e.filename if isinstance(e.filename, str) else path
            st = rootfs.lstat(root, sub)
            if st is not None and stat.S_ISLNK(st.st_mode):
                with rootfs.parent_dir(root, sub) as (dfd, name):
                    what = f"a symlink to {os.readlink(name, dir_fd=dfd)!r} that does not resolve"
            elif e.errno == errno.ENOTDIR:
                what = "not a directory (or a symlink to one)"
            else:
                what = f"not usable ({e.strerror})"
            raise ChrootError(
                f"cannot make the mount point {path} in {root}: {sub} is {what}", root=root,
                hint=f"fix or remove {sub} in the image (e.g. ch.run(['rm', '{sub}']) in a "
                     f"session without this bind), or bind onto another path than {path}"
            ) from None
        finally:
            os.close(rootfd)

    def _undo(self, action: dict[str, object]) -> None:
        try:
            log.debug("%s: %s", self._root, _journal.undo(str(self._root), action))
        except BaseException:
            self._undo_failed = True
            raise

    def _finish(self, journal: _journal.Journal) -> None:
        self._journal = None
        if self._undo_failed:
            log.error("%s: the session could not undo everything; the journal stays for "
                      "mc.recover()", self._root)
            return
        journal.remove()

    # --- commands ------------------------------------------------------------------------

    def _active(self) -> contextlib.ExitStack:
        if self._stack is None:
            raise ChrootError("the chroot session is not active", root=self._root,
                              hint="use it inside `with Chroot(root) as ch:`")
        return self._stack

    def _helper(self, argv: list[str], status_fd: int | None) -> list[str]:
        cmd = netns.helper_argv("run", str(os.getpid()), str(self._root),
                                 "-" if self._netfd is None else str(self._netfd),
                                 "-" if status_fd is None else str(status_fd),
                                 str(len(self.binds)))
        for b in self.binds:
            cmd += [b.src, b.dst, "d" if os.path.isdir(b.src) else "f",
                    "ro" if b.readonly else "rw"]
        log.debug("chroot %s: + %s", self._root, shlex.join(argv))
        return [*cmd, "--", *argv]

    def _fds(self, extra: Sequence[int] = ()) -> tuple[int, ...]:
        return (*extra, *(() if self._netfd is None else (self._netfd,)))

    @staticmethod
    def _env(env: Mapping[str, str] | None) -> dict[str, str]:
        return {**CHROOT_ENV, **(env or {})}

    @overload
    def run(self, argv: Sequence[str | os.PathLike[str]], *, check: bool = ...,
            capture: bool = ..., input: bytes, env: Mapping[str, str] | None = ...
            ) -> subprocess.CompletedProcess[bytes]: ...

    @overload
    def run(self, argv: Sequence[str | os.PathLike[str]], *, check: bool = ...,
            capture: bool = ..., input: str | None = ..., env: Mapping[str, str] | None = ...
            ) -> subprocess.CompletedProcess[str]: ...

    @overload
    def run(self, argv: Sequence[str | os.PathLike[str]], *, check: bool = ...,
            capture: bool = ..., input: str | bytes | None = ...,
            env: Mapping[str, str] | None = ...) -> subprocess.CompletedProcess[Any]: ...

    def run(self, argv: Sequence[str | os.PathLike[str]], *, check: bool = True,
            capture: bool = False, input: str | bytes | None = None,
            env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[Any]:
        """Run ``argv`` inside the chroot; raise :class:`CommandError` if it fails (``check``).

        stderr is always captured (and kept in the error); stdout only with ``capture``.
        With ``bytes`` input the command runs in binary mode: its input is passed
        through unchanged and the result's stdout/stderr are ``bytes``; otherwise they
        are ``str`` (undecodable bytes replaced).
        """
        self._active()
        args = _run.as_argv(argv)
        status_r, status_w = os.pipe()
        try:
            try:
                proc = _run.run(self._helper(args, status_w), check=False, capture=capture,
                                input=input, text=not isinstance(input, bytes),
                                env=self._env(env), pass_fds=self._fds([status_w]))
            finally:
                os.close(status_w)
            with os.fdopen(os.dup(status_r), "rb") as f:
                status = f.read().decode(errors="replace").strip()
        finally:
            os.close(status_r)
        return self._result(args, proc, status, check=check)

    def _result(self, args: list[str], proc: subprocess.CompletedProcess[Any], status: str, *,
                check: bool) -> subprocess.CompletedProcess[Any]:
        out, err = _text(proc.stdout), _text(proc.stderr)
        kind, _, value = status.partition(" ")
        if kind == "setup":
            raise ChrootError(f"cannot run {shlex.join(args)} in {self._root}: {value}",
                              root=self._root, hint="the file is not a program this host can "
                              "run (see `maas-chroot binfmt --status`)" if "Exec format" in value
                              else "run as root on Linux with namespaces")
        if kind == "notfound":
            if check:
                raise CommandError(args, 127, out, err,
                                   message=f"command {args[0]!r} was not found in the image "
                                           f"{self._root}",
                                   hint=f"install the package that provides {args[0]!r} "
                                        "(ch.apt.install), or give its full path")
            code = 127
        elif kind == "exit":
            code = int(value)
        elif kind == "signal":
            code = -int(value)
        else:
            code = proc.returncode
        if check and code != 0:
            raise CommandError(args, code, out, err)
        return subprocess.CompletedProcess(args, code, proc.stdout, proc.stderr)

    @contextlib.contextmanager
    def spawn(self, argv: Sequence[str | os.PathLike[str]], *,
              env: Mapping[str, str] | None = None,
              stdout: int | IO[Any] | None = subprocess.PIPE,
              stderr: int | IO[Any] | None = subprocess.PIPE,
              pass_fds: Sequence[int] = ()) -> Iterator[subprocess.Popen[bytes]]:
        """Start ``argv`` in the chroot for streaming; fds in ``pass_fds`` keep their numbers.

        The caller checks the exit with :func:`maas_chroot.run.check_exit` (127: not found).
        """
        self._active()
        args = _run.as_argv(argv)
        with _run.spawn(self._helper(args, None), env=self._env(env), stdout=stdout,
                        stderr=stderr, pass_fds=self._fds(pass_fds)) as proc:
            proc.args = args
            yield proc

    def shell(self, argv: Sequence[str] | None = None) -> int:
        """An interactive shell (or ``argv``) on the caller's terminal; returns its exit code."""
        self._active()
        if argv is None:
            bash = checks.exists_in(str(self._root), "/bin/bash")
            argv = ["/bin/bash", "--login"] if bash else ["/bin/sh", "-l"]
        args = _run.as_argv(argv)
        main = threading.current_thread() is threading.main_thread()
        old = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
        try:
            proc = _run.run(self._helper(args, None), check=False, interactive=True,
                            env=self._env(None), pass_fds=self._fds())
        finally:
            if main:
                signal.signal(signal.SIGINT, old)
        return proc.returncode

    # --- files ---------------------------------------------------------------------------

    def write_file(self, path: str | os.PathLike[str], data: str | bytes, *, mode: int = 0o644,
                   uid: int = 0, gid: int = 0) -> None:
        """Create or replace ``path`` in the image (resolved inside the root, atomically)."""
        self._active()
        rootfs.write_file(str(self._root), checks.inroot(path), data, mode=mode, uid=uid, gid=gid)

    def copy_in(self, host_src: str | os.PathLike[str], dest: str | os.PathLike[str], *,
                mode: int | None = None) -> None:
        """Copy a host file or directory tree to ``dest`` in the image (root-owned).

        Like ``cp``: a ``dest`` ending in ``/`` (created if missing) receives the
        source under its own name, and so does an existing directory ``dest`` for a
        file source; a directory source is merged into an existing directory ``dest``.
        """
        self._active()
        copyin.copy_in(str(self._root), os.fspath(host_src), checks.inroot(dest), mode)

    def temporary_file(self, path: str | os.PathLike[str], data: str | bytes, *,
                       mode: int = 0o644) -> None:
        """Put ``data`` at ``path`` for the session only; the original comes back at the end.

        The original (absent, file or symlink) is recorded in the journal first,
        so :func:`recover` restores it after a SIGKILL.
        """
        stack = self._active()
        assert self._journal is not None
        p = checks.inroot(path)
        root = str(self._root)
        if p not in self._swapped:
            entry = rootfs.snapshot(root, p)
            action = self._journal.add_swap(entry)
            self._swapped.add(p)
            stack.callback(self._undo, action)
        rootfs.write_file(root, p, data, mode=mode, mkdirs=False)

    def callback(self, fn: Callable[..., object], *args: object) -> None:
        """Call ``fn(*args)`` when the session ends (last registered, first called)."""
        self._active().callback(fn, *args)

    @property
    def apt(self) -> Apt:
        """apt and dpkg operations in this session (:class:`maas_chroot.apt.Apt`)."""
        return Apt(self)


def _text(data: str | bytes | None) -> str | None:
    return data.decode(errors="replace") if isinstance(data, bytes) else data
