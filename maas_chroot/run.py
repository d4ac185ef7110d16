"""The one subprocess chokepoint.

Every external command the library starts goes through :func:`run` or
:func:`spawn`: argv lists only (never a shell), a clean explicit environment,
stdin from /dev/null unless input is given, ``+ cmd`` logged at debug level,
and failures raised as :class:`~maas_chroot.errors.CommandError` carrying argv,
exit code, stdout and stderr.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from typing import IO, Any

from .errors import ArgumentError, CommandError

log = logging.getLogger(__name__)

Arg = str | os.PathLike[str]

#: The PATH every command gets unless the caller overrides it.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

#: Variables passed through from the caller's environment when present:
#: proxies (requests and apt honour them), and the terminal type for shells.
PASSTHROUGH = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY",
               "NO_PROXY", "TERM", "SOURCE_DATE_EPOCH")


def clean_env(extra: Mapping[str, str] | None = None, *,
              passthrough: bool = True) -> dict[str, str]:
    """A minimal, explicit environment: PATH, LANG=C.UTF-8, proxies, plus ``extra``."""
    env = {"PATH": DEFAULT_PATH, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
    if passthrough:
        for name in PASSTHROUGH:
            if name in os.environ:
                env[name] = os.environ[name]
    if extra:
        env.update(extra)
    return env


def as_argv(argv: Sequence[Arg]) -> list[str]:
    """Check an argv list (never a shell string, never empty) and make every item a str."""
    if isinstance(argv, str | bytes):
        raise ArgumentError(f"argv must be a list of arguments, not a string: {argv!r}",
                            hint="split it yourself, e.g. ['ls', '-l'] (no shell is used)")
    if not argv:
        raise ArgumentError("argv must not be empty", hint="name the command to run")
    return [os.fspath(a) for a in argv]


def run(
    argv: Sequence[Arg],
    *,
    check: bool = True,
    capture: bool = False,
    input: str | bytes | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Arg | None = None,
    interactive: bool = False,
    text: bool = True,
    pass_fds: Sequence[int] = (),
    timeout: float | None = None,
) -> subprocess.CompletedProcess[Any]:
    """Run ``argv`` to completion.

    ``capture=True`` returns stdout; stderr is always captured (and kept in
    :class:`CommandError`) unless ``interactive`` hands the terminal to the
    command. ``env`` is added to :func:`clean_env`, never to ``os.environ``.
    """
    args = _announce(argv)
    stdin: int | None
    if interactive:
        stdin, stdout, stderr = None, None, None
    else:
        stdin = subprocess.DEVNULL if input is None else None
        stdout = subprocess.PIPE if capture else None
        stderr = subprocess.PIPE
    if isinstance(input, str) and not text:
        input = input.encode()
    try:
        with _found(args):
            proc = subprocess.run(  # noqa: S603 - argv list, no shell
                args, input=input, stdin=stdin, stdout=stdout, stderr=stderr, text=text,
                errors="replace" if text else None, timeout=timeout, check=False,
                **_process_options(env, cwd, pass_fds))
    except subprocess.TimeoutExpired as e:
        raise CommandError(args, -1, message=f"command timed out after {timeout}s: "
                                             f"{shlex.join(args)}") from e
    if proc.stderr:
        log.debug("%s stderr: %s", args[0], (_as_text(proc.stderr) or "").rstrip())
    if check and proc.returncode != 0:
        raise CommandError(args, proc.returncode, _as_text(proc.stdout), _as_text(proc.stderr))
    return proc


@contextlib.contextmanager
def spawn(
    argv: Sequence[Arg],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Arg | None = None,
    stdin: int | IO[Any] | None = subprocess.DEVNULL,
    stdout: int | IO[Any] | None = subprocess.PIPE,
    stderr: int | IO[Any] | None = subprocess.PIPE,
    pass_fds: Sequence[int] = (),
    text: bool = False,
) -> Iterator[subprocess.Popen[Any]]:
    """Start ``argv`` for streaming I/O; on exit the process is always reaped.

    If the body raises, the process is terminated (then killed) before the
    exception propagates. The caller checks ``returncode`` (see :func:`check_exit`).
    """
    args = _announce(argv)
    with _found(args):
        proc = subprocess.Popen(  # noqa: S603 - argv list, no shell
            args, stdin=stdin, stdout=stdout, stderr=stderr, text=text,
            **_process_options(env, cwd, pass_fds))
    try:
        yield proc
    except BaseException:
        _stop(proc)
        raise
    finally:
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        if proc.poll() is None:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                _stop(proc)


def _announce(argv: Sequence[Arg]) -> list[str]:
    """The checked argv, logged as ``+ cmd``."""
    args = as_argv(argv)
    log.debug("+ %s", shlex.join(args))
    return args


def _process_options(env: Mapping[str, str] | None, cwd: Arg | None,
                     pass_fds: Sequence[int]) -> dict[str, Any]:
    """What every process gets: the clean environment, a working directory, the fds."""
    return {"env": clean_env(env), "cwd": os.fspath(cwd) if cwd is not None else None,
            "pass_fds": tuple(pass_fds)}


@contextlib.contextmanager
def _found(args: list[str]) -> Iterator[None]:
    """A missing program is a :class:`CommandError` with exit code 127, as in a shell."""
    try:
        yield
    except FileNotFoundError as e:
        raise CommandError(args, 127, message=f"command not found: {args[0]!r}",
                           hint=f"install the package that provides {args[0]!r}") from e


def check_exit(proc: subprocess.Popen[Any], stderr: str | bytes | None = None,
               stdout: str | bytes | None = None) -> None:
    """Raise :class:`CommandError` if a spawned process exited non-zero."""
    code = proc.wait()
    if code != 0:
        raise CommandError([str(a) for a in proc.args], code,  # type: ignore[union-attr]
                           _as_text(stdout), _as_text(stderr))


def _stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _as_text(data: str | bytes | None) -> str | None:
    if data is None or isinstance(data, str):
        return data
    return data.decode("utf-8", "replace")
