"""The per-command helper of :class:`maas_chroot.Chroot` (a standalone, stdlib-only script).

Run as ``python -I -S nsexec.py MODE ...``; it never imports the package, so
its start-up time (the per-command overhead) stays small. Two modes:

``run PARENT ROOT NETFD STATUSFD NBINDS [SRC DST KIND MODE]... -- ARGV...``
    Unshare a mount and a PID namespace (after joining the network namespace
    open at NETFD, unless it is ``-``), make ``/`` recursively private, fork a
    PID-1 mini-init that mounts proc, a read-only sysfs, a minimal /dev (own
    devpts, shm), a tmpfs on /run and the binds (targets resolved *inside*
    ROOT), then forks the command, which chroots and execs ARGV with this
    process's environment. The init reaps orphans and exits with the
    command's status, so the kernel kills everything else in the namespace:
    no daemon outlives its command, and every mount dies with the namespace.
    A one-line status (``exit N``, ``signal N``, ``notfound NAME``,
    ``setup MESSAGE``) goes to STATUSFD unless it is ``-``.

``netns PARENT SYSPATH``
    Unshare a network namespace, bring ``lo`` up with pyroute2 (imported from
    SYSPATH), print ``ready`` and hold the namespace until stdin is closed.

``exec PARENT -- ARGV...``
    Exec ARGV on the host, set to die with PARENT (how a boot test starts QEMU).

Every mode dies with its parent (``PR_SET_PDEATHSIG``), so a SIGKILLed
caller leaves no process behind.
"""

from __future__ import annotations

import ctypes
import errno
import os
import sys

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~10 ms per command
if TYPE_CHECKING:
    import signal
    from collections.abc import Mapping, Sequence
else:  # the C module: ``signal`` imports enum, which costs milliseconds per command
    import _signal as signal
if TYPE_CHECKING or __package__:
    from ..rootfs import inroot
else:  # started by the session as a top-level module (see netns.helper_argv)
    import inroot

CLONE_NEWNS = 0x00020000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
PR_SET_PDEATHSIG = 1
SETUP_FAILED = 125
NOT_FOUND = 127

_FORWARDED = (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]


def _oserror(what: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}")


def unshare(flags: int) -> None:
    if hasattr(os, "unshare"):  # Python 3.12+
        os.unshare(flags)
    elif _libc.unshare(flags) != 0:
        raise _oserror("unshare")


def setns(fd: int, nstype: int) -> None:
    if hasattr(os, "setns"):  # Python 3.12+
        os.setns(fd, nstype)
    elif _libc.setns(fd, nstype) != 0:
        raise _oserror("setns")


def mount(source: str | None, target: str, fstype: str | None, flags: int,
          data: str | None = None, *, what: str = "") -> None:
    def enc(s: str | None) -> bytes | None:
        return None if s is None else os.fsencode(s)

    if _libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)) != 0:
        raise _oserror(f"mount {what or fstype or source}")


def die_with_parent(parent: int) -> None:
    """SIGKILL this process when its parent dies (and exit now if it already has)."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if parent and os.getppid() != parent:
        os._exit(SETUP_FAILED)


def _fd_path(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


# --- the mounts -----------------------------------------------------------------------------

_DEV_NODES = (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8),
              ("urandom", 1, 9), ("tty", 5, 0))
_DEV_LINKS = (("ptmx", "pts/ptmx"), ("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
              ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"),
              ("core", "/proc/kcore"))
_NOSUIDDEV = MS_NOSUID | MS_NODEV


def _mount_at(rootfd: int, path: str, source: str | None, fstype: str | None, *, flags: int,
              data: str | None = None, directory: bool = True) -> None:
    fd = inroot.ensure(rootfd, path, directory=directory)
    try:
        mount(source, _fd_path(fd), fstype, flags, data, what=f"{fstype or source} on {path}")
    finally:
        os.close(fd)


def _populate_dev(rootfd: int) -> None:
    dev = inroot.open_at(rootfd, "/dev", os.O_PATH | os.O_DIRECTORY)  # the fresh tmpfs
    try:
        for name, major, minor in _DEV_NODES:
            try:
                os.mknod(name, 0o666 | 0o020000, os.makedev(major, minor), dir_fd=dev)
            except PermissionError:  # no mknod here (a device cgroup): bind the host's node
                os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o666,
                                 dir_fd=dev))
                node = os.open(name, os.O_PATH | os.O_CLOEXEC, dir_fd=dev)
                try:
                    mount(f"/dev/{name}", _fd_path(node), None, MS_BIND, what=f"/dev/{name}")
                finally:
                    os.close(node)
        for name, target in _DEV_LINKS:
            os.symlink(target, name, dir_fd=dev)
        os.mkdir("pts", 0o755, dir_fd=dev)
        os.mkdir("shm", 0o1777, dir_fd=dev)
        if os.isatty(0):
            _console(dev)
    finally:
        os.close(dev)
    _mount_at(rootfd, "/dev/pts", "devpts", "devpts", flags=MS_NOSUID | MS_NOEXEC,
              data="newinstance,ptmxmode=0666,mode=0620,gid=5")
    _mount_at(rootfd, "/dev/shm", "tmpfs", "tmpfs", flags=_NOSUIDDEV, data="mode=1777")


def _console(dev: int) -> None:
    """An interactive command's terminal becomes /dev/console (ttyname() scans /dev)."""
    os.close(os.open("console", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600, dir_fd=dev))
    node = os.open("console", os.O_PATH | os.O_CLOEXEC, dir_fd=dev)
    try:
        mount(os.ttyname(0), _fd_path(node), None, MS_BIND, what="the terminal")
    except OSError:  # best effort: the command still has its terminal on fds 0-2
        os.unlink("console", dir_fd=dev)
    finally:
        os.close(node)


def mount_all(rootfd: int, binds: Sequence[tuple[str, str, str, str]]) -> None:
    """Mount everything a command needs under the root (in this private mount namespace)."""
    _mount_at(rootfd, "/proc", "proc", "proc", flags=_NOSUIDDEV | MS_NOEXEC)
    _mount_at(rootfd, "/sys", "sysfs", "sysfs", flags=_NOSUIDDEV | MS_NOEXEC | MS_RDONLY)
    _mount_at(rootfd, "/dev", "tmpfs", "tmpfs", flags=MS_NOSUID | MS_NOEXEC,
              data="mode=0755,size=65536k")
    _populate_dev(rootfd)
    _mount_at(rootfd, "/run", "tmpfs", "tmpfs", flags=_NOSUIDDEV, data="mode=0755")
    run = inroot.open_at(rootfd, "/run", os.O_PATH | os.O_DIRECTORY)
    try:
        os.mkdir("lock", 0o1777, dir_fd=run)
    finally:
        os.close(run)
    for src, dst, kind, mode in binds:
        directory = kind == "d"
        recursive = 0 if mode == "ro" else MS_REC
        _mount_at(rootfd, dst, src, None, flags=MS_BIND | recursive, directory=directory)
        if mode == "ro":  # remount the new mount (re-resolved: the old fd is the one below)
            _mount_at(rootfd, dst, None, None, flags=MS_REMOUNT | MS_BIND | MS_RDONLY,
                      directory=directory)


# --- run mode: outer process, PID-1 mini-init, command ----------------------------------


def _exec_command(rootfd: int, argv: list[str], umask: int, exec_w: int) -> None:
    """In the command's process: chroot, reset signals, exec. Never returns."""
    try:
        os.fchdir(rootfd)
        os.chroot(".")
        os.chdir("/")
        for sig in (*_FORWARDED, signal.SIGINT, signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, ())
        os.umask(umask)
        _execvp(argv, os.environ)
    except OSError as e:
        os.write(exec_w, f"{e.errno} {e.strerror}".encode())
    except BaseException as e:  # never unwind into the caller's code in a forked child
        os.write(exec_w, f"{errno.EIO} {e!r}".encode())
    os._exit(NOT_FOUND)


def _execvp(argv: list[str], env: Mapping[str, str]) -> None:
    """``execvpe`` without imports (os.execvpe imports ``warnings``, absent after chroot)."""
    name = argv[0]
    if "/" in name:
        os.execve(name, argv, env)
    first: OSError | None = None
    for directory in env.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin").split(":"):
        try:
            os.execve(f"{directory or '.'}/{name}", argv, env)
        except (FileNotFoundError, NotADirectoryError):
            pass
        except OSError as e:
            first = first or e
    raise first or FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), name)


def _init(root: str, binds: Sequence[tuple[str, str, str, str]], argv: list[str],
          report_w: int, lifeline_r: int) -> None:
    """PID 1 of the new namespace. Never returns."""
    die_with_parent(0)
    os.set_blocking(lifeline_r, False)
    try:
        os.read(lifeline_r, 1)  # EOF: the outer process died before prctl took effect
        os._exit(SETUP_FAILED)
    except BlockingIOError:
        pass
    child = 0

    def forward(signum: int, _frame: object) -> None:
        if child:
            os.kill(child, signum)

    for sig in _FORWARDED:
        signal.signal(sig, forward)
    try:
        umask = os.umask(0)
        rootfd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        mount_all(rootfd, binds)
    except OSError as e:
        os.write(report_w, f"setup {e.strerror or e}".encode())
        os._exit(SETUP_FAILED)
    exec_r, exec_w = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(exec_r)
        _exec_command(rootfd, argv, umask, exec_w)
    os.close(exec_w)
    failure = os.read(exec_r, 4096).decode(errors="replace")
    os.close(exec_r)
    if failure:
        os.waitpid(child, 0)
        code, _, msg = failure.partition(" ")
        if int(code) in (errno.ENOENT, errno.ENOTDIR):
            os.write(report_w, f"notfound {argv[0]}".encode())
            os._exit(NOT_FOUND)
        os.write(report_w, f"setup cannot execute {argv[0]!r}: {msg}".encode())
        os._exit(SETUP_FAILED)
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:  # cannot happen before the command is reaped
            os._exit(SETUP_FAILED)
        if pid == child:
            break
    if os.WIFSIGNALED(status):
        os.write(report_w, f"signal {os.WTERMSIG(status)}".encode())
        os._exit(128 + os.WTERMSIG(status))
    os.write(report_w, f"exit {os.waitstatus_to_exitcode(status)}".encode())
    # Exiting kills every other process of the namespace (daemons a postinst started).
    os._exit(os.waitstatus_to_exitcode(status))


def _report(status_fd: int, line: str) -> None:
    if status_fd >= 0:
        os.write(status_fd, (line + "\n").encode())


def main_run(args: list[str]) -> int:
    parent, root, netfd, statusfd, nbinds = args[:5]
    die_with_parent(int(parent))
    rest = args[5:]
    binds = [(rest[i], rest[i + 1], rest[i + 2], rest[i + 3]) for i in range(0, 4 * int(nbinds), 4)]
    rest = rest[4 * int(nbinds):]
    if not rest or rest[0] != "--" or len(rest) < 2:
        sys.stderr.write("maas-chroot: usage error in the namespace helper\n")
        return SETUP_FAILED
    argv = rest[1:]
    status_fd = -1 if statusfd == "-" else int(statusfd)
    if status_fd >= 0:
        os.set_inheritable(status_fd, False)
    try:
        if netfd != "-":
            setns(int(netfd), CLONE_NEWNET)
            os.close(int(netfd))
        unshare(CLONE_NEWNS | CLONE_NEWPID)
        mount(None, "/", None, MS_REC | MS_PRIVATE, what="--make-rprivate /")
    except OSError as e:
        msg = f"cannot create namespaces: {e.strerror or e}"
        _report(status_fd, "setup " + msg)
        sys.stderr.write(f"maas-chroot: {msg}\n")
        return SETUP_FAILED
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the terminal sends it to the command too
    report_r, report_w = os.pipe()
    lifeline_r, lifeline_w = os.pipe()
    init = os.fork()
    if init == 0:
        os.close(report_r)
        os.close(lifeline_w)
        _init(root, binds, argv, report_w, lifeline_r)
    os.close(report_w)
    os.close(lifeline_r)

    def forward(signum: int, _frame: object) -> None:
        os.kill(init, signum)

    for sig in _FORWARDED:
        signal.signal(sig, forward)
    chunks = []
    while chunk := os.read(report_r, 4096):
        chunks.append(chunk)
    _, status = os.waitpid(init, 0)
    line = b"".join(chunks).decode(errors="replace")
    kind, _, value = line.partition(" ")
    if not kind:  # init was killed before it could report
        kind, value = "signal", str(os.WTERMSIG(status) if os.WIFSIGNALED(status) else 9)
    _report(status_fd, f"{kind} {value}")
    if kind == "exit":
        return int(value)
    if kind == "notfound":
        sys.stderr.write(f"maas-chroot: {value}: command not found in the image\n")
        return NOT_FOUND
    if kind == "setup":
        sys.stderr.write(f"maas-chroot: cannot set up the chroot: {value}\n")
        return SETUP_FAILED
    signum = int(value)
    for forwarded in _FORWARDED:
        signal.signal(forwarded, signal.SIG_DFL)
    if signum not in (signal.SIGKILL, signal.SIGSTOP):
        signal.signal(signum, signal.SIG_DFL)
    import resource  # noqa: PLC0415 - rare path

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # the command dumped core, not us
    os.kill(os.getpid(), signum)  # die the way the command died
    return 128 + signum


# --- netns mode -----------------------------------------------------------------------------


def main_netns(args: list[str]) -> int:
    parent, syspath = args[:2]
    die_with_parent(int(parent))
    unshare(CLONE_NEWNET)
    sys.path.append(syspath)
    from pyroute2 import IPRoute  # noqa: PLC0415 - heavy, and only needed here

    with IPRoute() as ipr:
        index = ipr.link_lookup(ifname="lo")[0]
        ipr.link("set", index=index, state="up")
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    sys.stdin.read()  # hold the namespace until the session closes our stdin
    return 0


def main_exec(args: list[str]) -> int:
    """``exec PARENT -- ARGV...``: run ARGV (on the host) so that it dies with PARENT."""
    die_with_parent(int(args[0]))
    try:
        _execvp(args[2:], os.environ)
    except (OSError, IndexError) as e:
        sys.stderr.write(f"maas-chroot: exec helper: cannot execute {args[2:]}: {e}\n")
    return NOT_FOUND


def main(argv: list[str]) -> int:
    # The session starts helpers while it holds SIGINT/SIGTERM blocked (set-up, tear-down);
    # a blocked mask is inherited, and would make the helpers deaf to terminate().
    signal.pthread_sigmask(signal.SIG_SETMASK, ())
    modes = {"run": main_run, "netns": main_netns, "exec": main_exec}
    if len(argv) >= 2 and argv[1] in modes:
        return modes[argv[1]](argv[2:])
    sys.stderr.write("usage: nsexec.py run|netns|exec ...\n")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
