"""Archives: extract a root tarball or squashfs, and pack a rootfs as the TGZ curtin deploys.

:mod:`.archiving` holds :func:`extract` and :func:`pack`; :mod:`.tarread` and
:mod:`.tarwrite` read and write tar streams through libarchive (:mod:`.ffi`);
:mod:`.compress` has the output streams (threaded gzip, xz, bzip2).
"""

from .archiving import PackResult, detect_format, extract, output_format, pack

__all__ = ["PackResult", "detect_format", "extract", "output_format", "pack"]
