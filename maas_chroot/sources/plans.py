"""The source plan: what a build's source is, decided once, before anything slow happens.

A source is one of:

- a cloud-image release, by codename or version (``"noble"``, ``"24.04"``), or an
  :class:`~maas_chroot.sources.ImageSource`: fetched (verified, cached), then extracted;
- an ``http(s)://`` or ``file://`` URL of a root tarball or squashfs: fetched, then extracted;
- a local archive (``.tar.*``, ``.squashfs``): extracted (verified first when a
  ``sha256=`` or ``sums_url=`` is given);
- an existing rootfs directory: copied (or customised in place on request);
- ``bootstrap:<suite>``: a fresh rootfs from a mirror with mmdebstrap.

:func:`plan` classifies the source and settles everything that can be settled
without the network (the cloud-image URL, how a download is verified, the
bootstrap mirror), so a bad source is refused before any slow step, and adding a
kind of source touches this module and the step that materialises it.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .. import arches, formats, releases, rootfs, run
from ..errors import SourceError
from ..rootfs import lock
from . import bootstrap
from .image import ImageSource, Verify, cloud_image, is_url, request, verify_mode

Kind = Literal["image", "url", "archive", "directory", "bootstrap"]

#: Prefix of a bootstrap source string: ``bootstrap:bookworm``.
BOOTSTRAP = "bootstrap:"

_FETCHABLE = re.compile(r"^(https?|file)://", re.IGNORECASE)
_SUITE = re.compile(r"^[a-z][a-z0-9.+-]*$")
_PATHLIKE = (*formats.ARCHIVE_SUFFIXES, ".img")


@dataclass(frozen=True)
class SourcePlan:
    """What a source is and how its rootfs is had.

    ``value`` is the URL, path or suite. ``image`` is what :func:`~maas_chroot.fetch`
    gets (and ``verify`` how it checks it), or None when nothing is fetched;
    ``bootstrap`` is the mmdebstrap spec of a ``bootstrap:`` source.
    """

    kind: Kind
    value: str
    image: ImageSource | None = None
    verify: Verify | None = None
    bootstrap: bootstrap.BootstrapSpec | None = None

    def describe(self) -> str:
        img = self.image
        if img is not None and img.release is not None:
            return f"cloud image {img.release} {img.arch} {img.fmt} ({img.url})"
        return f"{self.kind} {self.value}"

    @property
    def path(self) -> Path:
        """The local archive or directory (kinds ``archive`` and ``directory``)."""
        return Path(self.value)

    def arch(self) -> str | None:
        """The architecture of the rootfs this source gives, when known before it is had:
        a bootstrap's (default: the host's), a cloud image's; None for other sources."""
        if self.bootstrap is not None:
            host = arches.host()
            return self.bootstrap.arch or (host.name if host is not None else None)
        return self.image.arch if self.image is not None else None

    def base_image(self) -> str | None:
        """``ubuntu/<codename>`` for an Ubuntu cloud image or an Ubuntu bootstrap suite."""
        if self.bootstrap is not None:
            release: str | None = self.bootstrap.suite
        else:
            release = self.image.release if self.image is not None else None
        codename = releases.codename_of(release) if release is not None else None
        return f"ubuntu/{codename}" if codename is not None else None


@dataclass(frozen=True, kw_only=True)
class SourceOptions:
    """How a source is picked and verified (the source keys of a build spec).

    ``arch``, ``fmt``, ``stream`` and ``mirror`` pick a release's cloud image
    (``mirror`` is the distribution mirror for ``bootstrap:``, default the host's);
    ``keyring`` checks a signature (or the bootstrap archive); ``verify``,
    ``sha256`` and ``sums_url`` say how a download is verified; ``cache_dir`` is the
    download cache; ``variant`` and ``include`` shape an mmdebstrap bootstrap.
    """

    arch: str | None = None
    fmt: str = "squashfs"
    stream: str = "release"
    mirror: str | None = None
    variant: str = "minbase"
    keyring: Path | None = None
    verify: Verify | None = None
    sha256: str | None = None
    sums_url: str | None = None
    cache_dir: Path | None = None
    include: tuple[str, ...] = ()


def plan(source: str | os.PathLike[str] | ImageSource,
         options: SourceOptions = SourceOptions()) -> SourcePlan:
    """Classify ``source`` and settle it with ``options``, without touching the network.

    Raises :class:`SourceError` for a source that cannot work.
    """
    o = options
    sha256, sums_url, verify = o.sha256, o.sums_url, o.verify

    def fetched(kind: Kind, value: str, what: ImageSource | str | os.PathLike[str]) -> SourcePlan:
        image, local = request(what, sha256=sha256, sums_url=sums_url, verify=verify)
        mode = verify_mode(image, verify, local=local is not None)
        return SourcePlan(kind, value, image, mode)

    if isinstance(source, ImageSource):
        return fetched("image", source.url, source)
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if not isinstance(source, str) or not source.strip():
        raise SourceError(f"not an image source: {source!r}",
                          hint="give a release (noble, 24.04), a URL, an archive, a rootfs "
                               "directory or bootstrap:SUITE")
    if source.startswith(BOOTSTRAP):
        suite = source[len(BOOTSTRAP):].strip()
        if not _SUITE.match(suite):
            raise SourceError(f"not a valid bootstrap source: {source!r}",
                              hint="name a distribution suite, such as bootstrap:bookworm")
        spec = bootstrap.spec_for(suite, mirror=o.mirror, keyring=o.keyring, variant=o.variant,
                                  include=o.include, arch=o.arch)
        return SourcePlan("bootstrap", suite, bootstrap=spec)
    if _FETCHABLE.match(source):
        return fetched("url", source, source)
    if is_url(source):
        raise SourceError(f"unsupported URL scheme in {source!r}",
                          hint="use an http://, https:// or file:// URL")
    if names_a_path(source):
        local = _local(source)
        if local.kind == "archive" and (sha256 or sums_url):  # "fetched" only to be verified
            return fetched("archive", local.value, local.value)
        return local
    image = cloud_image(source, arch=o.arch or "amd64", fmt=o.fmt, stream=o.stream,
                        mirror=o.mirror)
    return fetched("image", image.url, image)


def names_a_path(source: str, where: str | os.PathLike[str] = ".") -> bool:
    """Whether the source string ``source`` names a local file or directory (relative to
    ``where``) rather than a release or a URL: it exists, has a ``/`` or an archive suffix."""
    if source.startswith(BOOTSTRAP) or is_url(source):
        return False
    return (os.path.lexists(os.path.join(where, source)) or "/" in source
            or source.lower().endswith(_PATHLIKE))


def _local(path: str) -> SourcePlan:
    if os.path.isdir(path):
        if os.path.realpath(path) == "/":
            raise SourceError("refusing to use the host's own root directory as a source",
                              hint="give a rootfs directory, an archive or a release")
        return SourcePlan("directory", os.path.abspath(path))
    if os.path.isfile(path):
        return SourcePlan("archive", os.path.abspath(path))
    raise SourceError(
        f"image source not found: {path} (no such file or directory)",
        hint="give an existing archive or rootfs directory, a URL, a release such as noble, "
             "or bootstrap:SUITE",
    )


def copy_tree(src: str | os.PathLike[str], dest: str | os.PathLike[str], *,
              locked: bool = True) -> Path:
    """Copy a rootfs directory with all its metadata (owners, modes, xattrs, hardlinks).

    ``locked=False`` for a tree no session ever uses (a cached base), which many builds
    may copy at once."""
    s, d = os.fspath(src), os.fspath(dest)
    mounted = rootfs.mounts_under(s)
    if mounted:
        raise SourceError(f"cannot copy {s}: something is mounted below it ({mounted[0]})",
                          hint=f"unmount it first (umount -R {mounted[-1]})")
    with lock.exclusive(s, "copy") if locked else contextlib.nullcontext():
        if os.path.isdir(d) and not os.listdir(d):
            os.rmdir(d)
        # --archive keeps owners, modes, times, xattrs, ACLs and hardlinks; -x stays on one
        # filesystem; -T copies the directory itself to ``dest``.
        run.run(["cp", "--archive", "--one-file-system", "--reflink=auto", "-T", s, d])
    return Path(d)
