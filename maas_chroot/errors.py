"""The error hierarchy: every failure the library reports is a MaasChrootError.

A message says what failed, on which path or URL, and what to do about it.
Structured fields let callers (and ``cli.py``) act on errors without parsing text.
"""

from __future__ import annotations

import contextlib
import os
import shlex
from collections.abc import Iterator, Sequence


class MaasChrootError(Exception):
    """Base class. ``hint`` is a one-line suggestion of what to do next.

    ``key`` names the build option at fault when it is known, as ``build()`` spells it (and
    a recipe), with a table option's entry after a dot: ``arch``, ``upload.name``,
    ``files./etc/motd``.
    """

    key: str | None = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\nhint: {self.hint}"
        return self.message


class ArgumentError(MaasChrootError, TypeError, ValueError):
    """The library was called with an argument of the wrong kind (a string where an argv
    list is needed, an empty list). Also a TypeError and a ValueError, as Python's own."""


class PathError(MaasChrootError):
    """Something is wrong with a host path (``path`` names it); see the subclasses."""

    def __init__(self, message: str, *, path: str | os.PathLike[str], hint: str | None = None):
        super().__init__(message, hint=hint)
        self.path = os.fspath(path)


class MountedError(PathError):
    """A tree cannot be removed or scrubbed safely: something is mounted at or below it,
    or it reaches into another filesystem. ``path`` names where."""


class PrivilegeError(MaasChrootError):
    """The operation needs root (mounts, namespaces, chroot, device nodes)."""


class SourceError(MaasChrootError):
    """An image source (release, architecture, format, URL, path) is not valid."""

    def __init__(self, message: str, *, key: str | None = None, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.key = key


class FetchError(MaasChrootError):
    """A download failed. ``url`` names it; ``status`` is the HTTP status if any."""

    def __init__(
        self, message: str, *, url: str, status: int | None = None, hint: str | None = None
    ) -> None:
        super().__init__(message, hint=hint)
        self.url = url
        self.status = status


class UnreachableError(FetchError):
    """The server could not be reached (connection errors or timeouts through every retry)."""


class VerificationError(FetchError):
    """A download did not match its checksum or signature; it has been deleted."""


class ArchiveError(PathError):
    """An archive could not be read or written. ``path`` names it."""


class UnsafeArchiveError(ArchiveError):
    """An archive entry would land outside the destination (``member`` names it)."""

    def __init__(
        self,
        message: str,
        *,
        path: str | os.PathLike[str],
        member: str,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, path=path, hint=hint)
        self.member = member


class CommandError(MaasChrootError):
    """A command exited non-zero (or could not be started)."""

    def __init__(
        self,
        argv: Sequence[str],
        returncode: int,
        stdout: str | None = None,
        stderr: str | None = None,
        *,
        message: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.argv = [str(a) for a in argv]
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        if message is None:
            message = (f"command {self.argv[0]!r} failed with exit code {returncode}: "
                       f"{shlex.join(self.argv)}")
            last = tail(stderr)
            if last:
                message += "\n" + last
        super().__init__(message, hint=hint)


class ChrootError(MaasChrootError):
    """A chroot session could not be set up, or the root is not usable. ``root`` names it."""

    def __init__(self, message: str, *, root: str | os.PathLike[str], hint: str | None = None):
        super().__init__(message, hint=hint)
        self.root = os.fspath(root)


class AptError(ChrootError):
    """An apt request that cannot work: a bad package name, .deb file, source, key or proxy."""


class ChrootBusyError(ChrootError):
    """Another session holds this root, or a killed session left a journal behind."""


class UnsafePathError(ChrootError):
    """A path would resolve outside the root (through ``..`` or a symlink)."""


class EmulationError(ChrootError):
    """The host cannot run the binaries of an image's architecture ``arch`` (no native
    support, no usable binfmt_misc handler), or enabling one failed. ``root`` names the
    image ("" when none is involved); the hint says what to install or enable."""

    def __init__(self, message: str, *, root: str | os.PathLike[str], arch: str,
                 hint: str | None = None) -> None:
        super().__init__(message, root=root, hint=hint)
        self.arch = arch


class OverlayUnavailable(ChrootError):
    """An overlay (a build's cheap copy of a cached base) cannot be mounted here: the build
    extracts the base instead. ``root`` names the mount point."""


class SysprepError(ChrootError):
    """sysprep() was given something it cannot scrub (``root`` names it)."""


class MaasApiError(MaasChrootError):
    """MAAS answered with an error. ``status`` and MAAS's own ``body`` are kept."""

    def __init__(
        self,
        message: str,
        *,
        url: str,
        status: int | None = None,
        body: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.url = url
        self.status = status
        self.body = body


class MaasCredentialsError(MaasApiError):
    """No usable MAAS credentials: no API key, no such ``maas login`` profile."""


class ImageNameError(MaasChrootError, ValueError):
    """A boot-resource name, architecture or base image that MAAS would refuse."""


class BootTestError(MaasChrootError):
    """A boot test failed, or could not run.

    ``reason`` is a short code ("no-kernel", "kernel-panic", "no-root-fs", "no-init",
    "initramfs-shell", "emergency", "timeout", "cloud-init", "failed-units",
    "not-unique", "maas-late-command", ...); ``console`` is the console log's path and
    ``lines`` the console lines quoted in the message; ``report`` is the
    :class:`~maas_chroot.boot.BootReport` when the image was booted.
    """

    def __init__(self, message: str, *, reason: str, console: str | None = None,
                 lines: tuple[str, ...] = (), report: object | None = None,
                 hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.reason = reason
        self.console = console
        self.lines = lines
        self.report = report


class SpecError(MaasChrootError):
    """A build option (a ``build()`` keyword, a CLI flag, a recipe key) that cannot work.

    ``key`` names the option, as ``build()`` spells it.
    """

    def __init__(self, message: str, *, key: str | None = None, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.key = key


class RecipeError(SpecError):
    """A recipe (a TOML file of build specs) that cannot work, refused before any work:
    ``path`` is the file, ``line`` the line at fault (1-based; None when it cannot be
    told), ``key`` the option at fault as ``build()`` spells it (``packages``,
    ``upload.name``) and ``image`` the ``[image.NAME]`` it is about (None: the file as a
    whole, or its shared settings)."""

    def __init__(self, message: str, *, path: str | os.PathLike[str], line: int | None,
                 key: str | None = None, image: str | None = None,
                 hint: str | None = None) -> None:
        where = f"{os.fspath(path)}:{line}" if line else os.fspath(path)
        super().__init__(f"{where}: {message}", key=key, hint=hint)
        self.path = os.fspath(path)
        self.line = line
        self.image = image
        self.reason = message


class BuildError(MaasChrootError):
    """A step of ``build()`` failed. ``step`` names it (a :class:`maas_chroot.steps.Step`);
    the original error is ``__cause__``; ``rootfs`` is the kept rootfs, if any."""

    def __init__(self, message: str, *, step: str, rootfs: str | None = None,
                 hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.step = step
        self.rootfs = rootfs


@contextlib.contextmanager
def keyed(key: str) -> Iterator[None]:
    """Name ``key`` as the option at fault in a MaasChrootError the block raises (unless it
    names one already)."""
    try:
        yield
    except MaasChrootError as e:
        if e.key is None:
            e.key = key
        raise


def tail(text: str | None, lines: int = 20) -> str:
    """The last ``lines`` non-blank lines of a tool's output, for an error message."""
    if not text:
        return ""
    kept = [line for line in text.strip().splitlines() if line.strip()]
    return "\n".join(kept[-lines:])
