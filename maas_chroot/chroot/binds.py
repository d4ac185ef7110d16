"""Extra bind mounts of a chroot session: :class:`Bind`, and the checks of what a caller gives.

Binds name existing host paths and absolute chroot paths outside the
session-managed /proc, /sys and /dev; they are mounted by the helper in each
command's private mount namespace, never on the host.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ..errors import ChrootError, UnsafePathError


@dataclass(frozen=True)
class Bind:
    """An extra bind mount for every command of a session: host ``src`` on chroot ``dst``."""

    src: str
    dst: str
    readonly: bool = False


BindValue = str | tuple[str, str] | Bind
Binds = Mapping[str | os.PathLike[str], BindValue] | Iterable[Bind] | None


def normalize(binds: Binds, root: str) -> tuple[Bind, ...]:
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
