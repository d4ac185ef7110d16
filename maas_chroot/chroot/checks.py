"""Input checks of a chroot session, made before anything is touched.

A root must be a directory that looks like a Linux rootfs and is never the
host's ``/``; binds name existing host paths and absolute chroot paths
outside the session-managed /proc, /sys and /dev; in-image paths are absolute.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .. import rootfs
from ..errors import ChrootError, UnsafePathError


@dataclass(frozen=True)
class Bind:
    """An extra bind mount for every command of a session: host ``src`` on chroot ``dst``."""

    src: str
    dst: str
    readonly: bool = False


BindValue = str | tuple[str, str] | Bind
Binds = Mapping[str | os.PathLike[str], BindValue] | Iterable[Bind] | None


def inroot(path: str | os.PathLike[str]) -> str:
    p = os.fspath(path)
    if not p.startswith("/"):
        raise UnsafePathError(f"paths inside the chroot must be absolute: {p!r}", root="/",
                              hint=f"write /{p}")
    return p


def check_root(root: str | os.PathLike[str]) -> Path:
    """Validate that ``root`` is a Linux rootfs directory (never ``/``); return its real path."""
    given = os.fspath(root)
    if not os.path.isdir(given):
        what = "does not exist" if not os.path.lexists(given) else "is not a directory"
        raise ChrootError(f"chroot root {given} {what}", root=given,
                          hint="extract an image there first (mc.extract)")
    real = os.path.realpath(given)
    if real == "/" or os.path.samefile(real, "/"):
        raise ChrootError(f"refusing to use the host's / ({given}) as a chroot root", root=given,
                          hint="extract the image into its own directory")
    problems = [p for p in ("/usr", "/etc") if not _is_dir_in(real, p)]
    try:
        os.close(rootfs.open_in_root(real, "/bin/sh", os.O_PATH))
    except OSError:
        problems.append("/bin/sh")
    if problems:
        raise ChrootError(f"{given} does not look like a Linux root filesystem "
                          f"(missing {', '.join(problems)})", root=given,
                          hint="point at the top of an extracted image (it has usr/, etc/, bin/sh)")
    return Path(real)


def _is_dir_in(root: str, path: str) -> bool:
    try:
        os.close(rootfs.open_in_root(root, path, os.O_PATH | os.O_DIRECTORY))
        return True
    except OSError:
        return False


def normalize_binds(binds: Binds, root: str) -> tuple[Bind, ...]:
    if binds is None:
        return ()
    items: list[Bind] = []
    if isinstance(binds, Mapping):
        for src, value in binds.items():
            if isinstance(value, Bind):
                items.append(value)
            elif isinstance(value, str):
                items.append(Bind(os.fspath(src), value))
            elif isinstance(value, tuple) and len(value) == 2 and value[1] in ("ro", "rw"):
                items.append(Bind(os.fspath(src), value[0], readonly=value[1] == "ro"))
            else:
                raise ChrootError(f"bad bind for {os.fspath(src)}: {value!r}", root=root,
                                  hint='use {src: dst}, {src: (dst, "ro")} or Bind(src, dst)')
    else:
        items = [b if isinstance(b, Bind) else _bad_bind(b, root) for b in binds]
    out = []
    for b in items:
        src = os.path.abspath(os.fspath(b.src))
        if not os.path.exists(src):
            raise ChrootError(f"bind source {src} does not exist", root=root,
                              hint="create it on the host first")
        dst = "/" + "/".join(c for c in os.fspath(b.dst).split("/") if c not in ("", "."))
        if not os.fspath(b.dst).startswith("/") or ".." in dst.split("/"):
            raise UnsafePathError(f"bind target must be an absolute path without '..': {b.dst!r}",
                                  root=root, hint="name the directory as seen inside the chroot")
        if dst == "/" or dst.split("/")[1] in ("proc", "sys", "dev"):
            raise ChrootError(f"cannot bind onto {dst} inside the chroot", root=root,
                              hint="/, /proc, /sys and /dev are managed by the session")
        out.append(Bind(src, dst, b.readonly))
    return tuple(out)


def _bad_bind(value: object, root: str) -> Bind:
    raise ChrootError(f"bad bind {value!r}", root=root, hint="pass Bind(src, dst) objects")


def exists_in(root: str, path: str) -> bool:
    try:
        os.close(rootfs.open_in_root(root, path, os.O_PATH))
        return True
    except FileNotFoundError:
        return False
