"""Input checks of a chroot session, made before anything is touched.

A root must be a directory that looks like a Linux rootfs and is never the
host's ``/``, whose binaries this host can run (natively, or through a binfmt_misc
handler); in-image paths are absolute.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .. import binfmt, rootfs
from ..errors import ChrootError, UnsafePathError

log = logging.getLogger(__name__)


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


def check_arch(root: Path) -> binfmt.Emulation | None:
    """How this host runs the image's binaries; :class:`EmulationError` if it cannot.

    None when the image does not say its architecture (commands then fail, if they
    do, with the kernel's "Exec format error").
    """
    arch = rootfs.image_arch(root)
    if arch is None:
        log.debug("%s: the image's architecture is not known; not checking it", root)
        return None
    return binfmt.require(arch, root=root)


def _is_dir_in(root: str, path: str) -> bool:
    try:
        os.close(rootfs.open_in_root(root, path, os.O_PATH | os.O_DIRECTORY))
        return True
    except OSError:
        return False


def exists_in(root: str, path: str) -> bool:
    try:
        os.close(rootfs.open_in_root(root, path, os.O_PATH))
        return True
    except FileNotFoundError:
        return False
