"""An image's package manifest: ``package<TAB>version`` for every package dpkg knows.

It is what cloud-images publish beside each image (``*.manifest``), read the same way:
``dpkg-query -W -f='${binary:Package}\\t${Version}\\n'`` run inside the image, in a
:class:`~maas_chroot.Chroot` session, before the image is packed. So ``diff`` of two
manifests shows what a rebuild changed. It is written beside the image, atomically, as
``OUT.manifest``; MAAS has no place for it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .. import binfmt, rootfs
from ..archive.archiving import write_atomically
from .session import Chroot

log = logging.getLogger(__name__)

DPKG_QUERY = "/usr/bin/dpkg-query"
QUERY = (DPKG_QUERY, "-W", "-f=${binary:Package}\t${Version}\n")
SUFFIX = ".manifest"


def path_for(image: str | os.PathLike[str]) -> Path:
    """Where the manifest of ``image`` goes: ``OUT.manifest`` beside it."""
    out = Path(os.fspath(image))
    return out.with_name(out.name + SUFFIX)


def why_not(root: str | os.PathLike[str]) -> str | None:
    """Why no manifest can be read from ``root`` (no dpkg-query, or binaries this host
    cannot run), or None when it can."""
    try:
        os.close(rootfs.open_in_root(root, DPKG_QUERY, os.O_PATH))
    except OSError:
        return f"the image has no {DPKG_QUERY}"
    arch = rootfs.image_arch(root)
    if arch is not None and not (st := binfmt.status(arch)).ok:
        return f"its {arch.name} binaries cannot run here ({st.problem})"
    return None


def query(ch: Chroot) -> str:
    """The manifest of the image of the session ``ch`` (dpkg-query's output as it is)."""
    out: str = ch.run(list(QUERY), capture=True).stdout
    return out


def read(root: str | os.PathLike[str]) -> str | None:
    """The manifest of the rootfs ``root``, read in a session of its own; None (and a
    warning) when :func:`why_not` says it cannot be read."""
    reason = why_not(root)
    if reason is not None:
        log.warning("%s: no package manifest: %s", os.fspath(root), reason)
        return None
    with Chroot(root) as ch:
        return query(ch)


def write(image: str | os.PathLike[str], text: str | None) -> Path | None:
    """Write ``text`` as the manifest of ``image`` (atomically); with None, remove a stale
    one. Returns the manifest's path, or None."""
    path = path_for(image)
    if text is None:
        path.unlink(missing_ok=True)
        return None
    write_atomically(path, text.encode())
    return path
