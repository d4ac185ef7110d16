"""What an image is and where it lives.

:func:`cloud_image` turns an Ubuntu release (codename or version), an
architecture, a format and a stream into an :class:`ImageSource` that knows the
image URL on cloud-images.ubuntu.com (or a mirror of it) and the URLs of the
``SHA256SUMS`` file and its detached signature ``SHA256SUMS.gpg`` beside it.
:func:`url_source` does the same for any URL, with the expected hash given by
the caller. Nothing here touches the network; :func:`maas_chroot.fetch` does.

File names follow cloud-images exactly::

    release: <mirror>/releases/<codename>/release[-<serial>]/
                 ubuntu-<version>-server-cloudimg-<arch>.squashfs
                 ubuntu-<version>-server-cloudimg-<arch>-root.tar.xz
    daily:   <mirror>/<codename>/<serial>/
                 <codename>-server-cloudimg-<arch>.squashfs
                 <codename>-server-cloudimg-<arch>-root.tar.xz
"""

from __future__ import annotations

import os
import re
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Literal, cast

from .. import releases
from ..errors import SourceError

#: The documented home of Ubuntu cloud images; override per call or with ``MAAS_CHROOT_MIRROR``.
DEFAULT_MIRROR = "https://cloud-images.ubuntu.com"
MIRROR_ENV = "MAAS_CHROOT_MIRROR"

#: Architectures cloud-images publishes (not every release has every one).
ARCHITECTURES: tuple[str, ...] = ("amd64", "arm64", "armhf", "ppc64el", "riscv64", "s390x")

#: Image formats usable as a rootfs, and the suffix each adds to the file name.
FORMATS: Mapping[str, str] = MappingProxyType({
    "squashfs": ".squashfs",
    "root.tar.xz": "-root.tar.xz",
})

STREAMS: tuple[str, ...] = ("release", "daily")
#: How an image is verified (see :func:`maas_chroot.fetch`).
Verify = Literal["signature", "checksum", "none"]
VERIFY_MODES: tuple[str, ...] = ("signature", "checksum", "none")
SUMS_NAME = "SHA256SUMS"
SIG_NAME = "SHA256SUMS.gpg"

_SERIAL = re.compile(r"^[0-9]{8}(\.[0-9]+)?$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SCHEMES = ("http", "https", "file")


@dataclass(frozen=True)
class ImageSource:
    """A downloadable image and how to verify it.

    ``url`` is the image; ``sums_url`` a SHA256SUMS file listing it (or None);
    ``sig_url`` the detached signature of that file (or None); ``sha256`` an
    expected hash pinned by the caller (or None). The cloud-image fields
    (``release``, ``version``, ``arch``, ``fmt``, ``stream``, ``serial``,
    ``mirror``) are None for a plain URL.
    """

    url: str
    filename: str
    sums_url: str | None = None
    sig_url: str | None = None
    sha256: str | None = None
    release: str | None = None
    version: str | None = None
    arch: str | None = None
    fmt: str | None = None
    stream: str | None = None
    serial: str | None = None
    mirror: str | None = None

    @property
    def is_cloud_image(self) -> bool:
        return self.release is not None

    @property
    def default_verify(self) -> str | None:
        """The verification :func:`~maas_chroot.fetch` applies when the caller names none.

        ``"signature"`` when a signature URL is known, ``"checksum"`` when a hash or
        a SHA256SUMS URL is, else None (the caller must choose, possibly ``"none"``).
        """
        if self.sig_url:
            return "signature"
        if self.sums_url or self.sha256:
            return "checksum"
        return None

    def __repr__(self) -> str:
        if self.is_cloud_image:
            return (f"ImageSource({self.release!r} {self.version}, arch={self.arch!r}, "
                    f"fmt={self.fmt!r}, stream={self.stream!r}, serial={self.serial!r}, "
                    f"url={self.url!r})")
        extra = f", sha256={self.sha256!r}" if self.sha256 else ""
        extra += f", sums_url={self.sums_url!r}" if self.sums_url else ""
        return f"ImageSource(url={self.url!r}{extra})"


def default_mirror() -> str:
    """``$MAAS_CHROOT_MIRROR`` if set, else :data:`DEFAULT_MIRROR`."""
    return os.environ.get(MIRROR_ENV) or DEFAULT_MIRROR


def cloud_image(release: str, *, arch: str = "amd64", fmt: str = "squashfs",
                stream: str = "release", serial: str = "current",
                mirror: str | None = None) -> ImageSource:
    """Describe an Ubuntu cloud image, by release codename or version.

    ``serial`` is ``"current"`` (the latest) or a build serial such as
    ``"20240423"`` / ``"20240423.1"``. ``mirror`` defaults to
    ``$MAAS_CHROOT_MIRROR``, else https://cloud-images.ubuntu.com; an http(s) or
    file:// URL of a tree laid out like cloud-images.
    """
    codename, version = releases.cloud_release(release)
    if arch not in ARCHITECTURES:
        raise SourceError(f"unknown architecture {arch!r}; valid: {', '.join(ARCHITECTURES)}",
                          key="arch",
                          hint="use Debian architecture names, e.g. amd64 rather than x86_64")
    if fmt not in FORMATS:
        raise SourceError(f"unknown image format {fmt!r}; valid: {', '.join(FORMATS)}", key="fmt",
                          hint="squashfs is available for every release")
    if stream not in STREAMS:
        raise SourceError(f"unknown stream {stream!r}; valid: {', '.join(STREAMS)}", key="stream")
    if serial != "current" and not _SERIAL.match(serial):
        raise SourceError(f"invalid serial {serial!r}; valid: 'current' or YYYYMMDD[.N]",
                          hint="serials are the dated directory names on the mirror")
    base = _check_mirror(mirror if mirror is not None else default_mirror())
    suffix = FORMATS[fmt]
    if stream == "release":
        subdir = "release" if serial == "current" else f"release-{serial}"
        directory = f"{base}/releases/{codename}/{subdir}"
        filename = f"ubuntu-{version}-server-cloudimg-{arch}{suffix}"
    else:
        directory = f"{base}/{codename}/{serial}"
        filename = f"{codename}-server-cloudimg-{arch}{suffix}"
    return ImageSource(
        url=f"{directory}/{filename}", filename=filename,
        sums_url=f"{directory}/{SUMS_NAME}", sig_url=f"{directory}/{SIG_NAME}",
        release=codename, version=version, arch=arch, fmt=fmt, stream=stream,
        serial=serial, mirror=base,
    )


def url_source(url: str, *, sha256: str | None = None, sums_url: str | None = None,
               signed: bool = False) -> ImageSource:
    """Describe an image at any http(s) or file URL.

    ``sha256`` pins its hash; ``sums_url`` names a SHA256SUMS file listing it by
    its file name. ``signed=True`` also expects ``<sums_url>.gpg`` (a detached
    signature, as cloud-images publishes).
    """
    parsed = _check_url(url)
    filename = urllib.parse.unquote(parsed.path.rsplit("/", 1)[-1])
    if not filename:
        raise SourceError(f"URL {url!r} does not name a file",
                          hint="give the URL of the image file itself")
    digest = None
    if sha256 is not None:
        digest = sha256.strip().lower().removeprefix("sha256:")
        if not _SHA256.match(digest):
            raise SourceError(f"invalid sha256 {sha256!r} for {url}", key="sha256",
                              hint="give 64 hexadecimal digits")
    if sums_url is not None:
        _check_url(sums_url)
    if signed and sums_url is None:
        raise SourceError(f"a signature check of {url} needs sums_url=", key="sums_url",
                          hint="give the SHA256SUMS URL; its signature is <sums_url>.gpg")
    return ImageSource(url=url, filename=filename, sums_url=sums_url,
                       sig_url=f"{sums_url}.gpg" if signed else None, sha256=digest)


def request(source: ImageSource | str | os.PathLike[str], *, sha256: str | None = None,
            sums_url: str | None = None, verify: str | None = None,
            ) -> tuple[ImageSource, Path | None]:
    """What :func:`~maas_chroot.fetch` is asked for: the image (with any pinned hash or
    SHA256SUMS URL added), and its local path when it needs no download (a path or a
    ``file://`` URL)."""
    if isinstance(source, ImageSource):
        src = source
        if sha256 is not None:
            src = replace(src, sha256=url_source(src.url, sha256=sha256).sha256)
        if sums_url is not None:
            url_source(src.url, sums_url=sums_url)  # validates the URL
            signed = src.sig_url is not None or verify == "signature"
            src = replace(src, sums_url=sums_url,
                                      sig_url=f"{sums_url}.gpg" if signed else None)
    elif isinstance(source, str) and is_url(source):
        src = url_source(source, sha256=sha256, sums_url=sums_url, signed=verify == "signature")
    else:
        path = Path(os.fspath(source)).absolute()
        src = url_source(path.as_uri(), sha256=sha256, sums_url=sums_url,
                         signed=verify == "signature")
        return src, path
    if urllib.parse.urlsplit(src.url).scheme == "file":
        return src, file_url_path(src.url)
    return src, None


def verify_mode(src: ImageSource, verify: str | None, *, local: bool) -> Verify:
    """How ``src`` is verified when the caller asks for ``verify`` (None: the strongest
    known). Refuses, before anything is downloaded, an http(s) image with no way to
    verify it (unless ``verify="none"``), and a mode the source cannot satisfy."""
    if verify is not None and verify not in VERIFY_MODES:
        raise SourceError(f"unknown verify mode {verify!r}; valid: {', '.join(VERIFY_MODES)}",
                          key="verify")
    mode = cast("Verify | None", verify or src.default_verify or ("none" if local else None))
    if mode is None:
        raise SourceError(
            f"refusing to download {src.url} without a way to verify it",
            hint="pass sha256=HEX (--sha256) or sums_url=URL of a SHA256SUMS (--sums-url), "
                 "or verify=\"none\" (--verify none) to accept it unverified")
    if mode == "signature" and not src.sig_url:
        raise SourceError(f"no signature is known for {src.url}", key="verify",
                          hint="pass sums_url= (its signature is <sums_url>.gpg), or choose "
                               "verify=\"checksum\"")
    if mode == "checksum" and not (src.sums_url or src.sha256):
        raise SourceError(f"no checksum is known for {src.url}", key="verify",
                          hint="pass sha256= or sums_url=, or choose verify=\"none\"")
    return mode


def file_url_path(url: str) -> Path:
    """The local path of a file:// URL."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.netloc not in ("", "localhost"):
        raise SourceError(f"{url}: file URLs must name a local file",
                          hint="write file:///absolute/path (or file://localhost/...)")
    return Path(urllib.request.url2pathname(parsed.path))


def is_url(value: str) -> bool:
    """True for ``scheme://...`` strings (as opposed to local paths)."""
    return re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", value) is not None


def _check_url(url: str) -> urllib.parse.SplitResult:
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in _SCHEMES:
        raise SourceError(f"unsupported URL scheme in {url!r}; valid: {', '.join(_SCHEMES)}")
    if parsed.scheme != "file" and not parsed.hostname:
        raise SourceError(f"URL {url!r} has no host name")
    return parsed


def _check_mirror(mirror: str) -> str:
    _check_url(mirror)
    return mirror.rstrip("/")
