"""An image's architecture, read from the image itself, never by running anything in it.

The ELF header of the image's ``/bin/sh`` (resolved inside the root: ``/bin/sh ->
dash`` and a merged ``/bin -> usr/bin`` lead to ``usr/bin/dash`` in the image, never
to the host's) says it; a ``/bin/sh`` that is not a known ELF falls back to the
architecture of the image's own ``dpkg`` in ``var/lib/dpkg/status``.
"""

from __future__ import annotations

import logging
import os

from .. import arches
from ..arches import Arch
from . import files

log = logging.getLogger(__name__)

SHELL = "/bin/sh"
DPKG_STATUS = "/var/lib/dpkg/status"


def image_arch(root: str | os.PathLike[str]) -> Arch | None:
    """The architecture of the rootfs at ``root``, or None when the image does not tell."""
    header = files.read_regular_head(root, SHELL, arches.HEADER_SIZE) or b""
    found = arches.from_elf(header)
    if found is None:
        found = _dpkg_arch(root)
        log.debug("%s: %s is not a known ELF; dpkg says %s", os.fspath(root), SHELL, found)
    return found


def _dpkg_arch(root: str | os.PathLike[str]) -> Arch | None:
    status = files.read_regular_head(root, DPKG_STATUS, 64 << 20)
    if status is None:
        return None
    text = status.decode("utf-8", "replace")
    for stanza in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line)
        if fields.get("Package") == "dpkg" and fields.get("Architecture") in arches.BY_NAME:
            return arches.BY_NAME[fields["Architecture"]]
    return None
