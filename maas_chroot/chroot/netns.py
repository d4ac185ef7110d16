"""A loopback-only network namespace that lives as long as a session (``network="none"``).

A small holder process (``nsexec.py netns``) unshares a network namespace,
brings ``lo`` up with pyroute2 and waits for its stdin to close. The session
keeps an fd to that namespace and passes it to every command's helper, which
joins it with ``setns``; pyroute2's import cost is paid once per session, not
per command. The holder dies with the session (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator

from .. import run
from ..errors import ChrootError

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOTFS = os.path.join(os.path.dirname(_HERE), "rootfs")
# Import the helper (and the resolver it shares with the library, rootfs/inroot.py) as
# top-level modules: not as a script, which Python recompiles every time, nor through the
# package, whose __init__ is heavy; start-up is per-command overhead.
_BOOT = (f"import sys; sys.path += [{_HERE!r}, {_ROOTFS!r}]; import nsexec; "
         "sys.exit(nsexec.main(sys.argv))")


def helper_argv(*args: str) -> list[str]:
    """The argv that starts the namespace helper (``nsexec.py``) with ``args``."""
    return [sys.executable or "python3", "-I", "-S", "-c", _BOOT, *args]


def dying_with_us(argv: list[str]) -> list[str]:
    """``argv`` run on the host through the helper, so that it dies with this process (and
    with the thread that starts it), even on SIGKILL."""
    return helper_argv("exec", str(os.getpid()), "--", *argv)


def pyroute2_path(root: str) -> str:
    spec = importlib.util.find_spec("pyroute2")
    if spec is None or not spec.submodule_search_locations:
        raise ChrootError("network='none' needs pyroute2, which is not installed", root=root,
                          hint="pip install pyroute2")
    return os.path.dirname(os.path.abspath(next(iter(spec.submodule_search_locations))))


@contextlib.contextmanager
def loopback_namespace(root: str) -> Iterator[int]:
    """Yield an fd (non-inheritable) to a fresh network namespace where only ``lo`` is up."""
    argv = helper_argv("netns", str(os.getpid()), pyroute2_path(root))
    with run.spawn(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                   stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None and proc.stdin is not None and proc.stderr is not None
        line = proc.stdout.readline()
        if line != b"ready\n":
            proc.stdin.close()
            err = proc.stderr.read().decode(errors="replace").strip()
            proc.wait()
            raise ChrootError(f"cannot create a loopback-only network namespace: {err}",
                              root=root, hint="network='none' needs root and pyroute2")
        fd = os.open(f"/proc/{proc.pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            yield fd
        finally:
            os.close(fd)
            proc.stdin.close()
