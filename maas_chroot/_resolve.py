"""Turning a ``build()`` source into a rootfs directory (private to build.py and cli.py).

A source is one of:

- a cloud-image release, by codename or version (``"noble"``, ``"24.04"``), or an
  :class:`~maas_chroot.sources.ImageSource`: fetched (verified, cached), then extracted;
- an ``http(s)://`` or ``file://`` URL of a root tarball or squashfs: fetched, then extracted;
- a local archive (``.tar.*``, ``.squashfs``): extracted;
- an existing rootfs directory: copied (or customised in place on request);
- ``bootstrap:<suite>``: a fresh rootfs from a mirror with mmdebstrap.

:func:`plan` only classifies (no I/O beyond ``stat``), so build() can refuse a bad
source before it does anything slow.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from . import _journal, formats, rootfs, run
from . import bootstrap as _bootstrap
from .errors import SourceError
from .sources import ImageSource

Kind = Literal["image", "release", "url", "archive", "directory", "bootstrap"]

_URL = re.compile(r"^(https?|file)://", re.IGNORECASE)
_ARCHIVE_SUFFIXES = (*formats.ARCHIVE_SUFFIXES, ".img")


@dataclass(frozen=True)
class Plan:
    """What a source is, and the value to act on (release name, URL, path or suite)."""

    kind: Kind
    value: str
    image: ImageSource | None = None

    def describe(self) -> str:
        img = self.image
        if img is not None and img.release is not None:
            return f"cloud image {img.release} {img.arch} {img.fmt} ({img.url})"
        return f"{self.kind} {self.value}"


def plan(source: str | os.PathLike[str] | ImageSource) -> Plan:
    """Classify ``source`` without touching the network."""
    if isinstance(source, ImageSource):
        return Plan("image", source.url, source)
    if isinstance(source, os.PathLike):
        return _path_plan(os.fspath(source))
    if not isinstance(source, str) or not source.strip():
        raise SourceError(f"not an image source: {source!r}",
                          hint="give a release (noble, 24.04), a URL, an archive, a rootfs "
                               "directory or bootstrap:SUITE")
    suite = _bootstrap.parse(source)
    if suite is not None:
        return Plan("bootstrap", suite)
    if _URL.match(source):
        return Plan("url", source)
    if "://" in source:
        raise SourceError(f"unsupported URL scheme in {source!r}",
                          hint="use an http://, https:// or file:// URL")
    if os.path.lexists(source) or "/" in source or source.endswith(_ARCHIVE_SUFFIXES):
        return _path_plan(source)
    return Plan("release", source)


def _path_plan(path: str) -> Plan:
    if os.path.isdir(path):
        if os.path.realpath(path) == "/":
            raise SourceError("refusing to use the host's own root directory as a source",
                              hint="give a rootfs directory, an archive or a release")
        return Plan("directory", os.path.abspath(path))
    if os.path.isfile(path):
        return Plan("archive", os.path.abspath(path))
    raise SourceError(
        f"image source not found: {path} (no such file or directory)",
        hint="give an existing archive or rootfs directory, a URL, a release such as noble, "
             "or bootstrap:SUITE",
    )


def copy_tree(src: str | os.PathLike[str], dest: str | os.PathLike[str]) -> Path:
    """Copy a rootfs directory with all its metadata (owners, modes, xattrs, hardlinks)."""
    s, d = os.fspath(src), os.fspath(dest)
    mounted = rootfs.mounts_under(s)
    if mounted:
        raise SourceError(f"cannot copy {s}: something is mounted below it ({mounted[0]})",
                          hint=f"unmount it first (umount -R {mounted[-1]})")
    with _journal.exclusive(s, "copy"):  # no session may change it while it is copied
        if os.path.isdir(d) and not os.listdir(d):
            os.rmdir(d)
        # --archive keeps owners, modes, times, xattrs, ACLs and hardlinks; -x stays on one
        # filesystem; -T copies the directory itself to ``dest``.
        run.run(["cp", "--archive", "--one-file-system", "--reflink=auto", "-T", s, d])
    return Path(d)
