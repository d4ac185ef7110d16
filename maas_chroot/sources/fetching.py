"""fetch(): download an image into the cache, verified, resumable, and only once.

Verification modes (``verify=``):

* ``"signature"``: the default for cloud images. ``SHA256SUMS.gpg`` is checked
  with gpgv against ``keyring`` (default
  /usr/share/keyrings/ubuntu-cloudimage-keyring.gpg), then exactly one
  ``SHA256SUMS`` line must name the file, and its hash must match.
* ``"checksum"``: the hash from ``SHA256SUMS`` (or a ``sha256=`` given by the
  caller), with no signature. The default for a plain URL given ``sha256=`` or
  ``sums_url=``.
* ``"none"``: no verification; must be asked for explicitly for a URL. A plain
  URL with neither ``sha256=`` nor ``sums_url=`` and no ``verify=`` is refused
  with :class:`~maas_chroot.errors.SourceError` before anything is downloaded.

Local paths (and file:// URLs given as strings) are the caller's own files:
returned as they are after an existence check, verified only if ``sha256=``
or ``sums_url=`` is given, and never deleted. A cloud image on a file:// mirror
is verified in place (signature and checksum) and its path returned.

The cache lives in ``$XDG_CACHE_HOME/maas-chroot`` (else ``~/.cache/maas-chroot``),
one directory per host and URL path, so mirrors never collide. A download goes
to ``<file>.part`` (resumed with a Range request after a cut), is verified and
only then renamed into place; a failed verification deletes it. Beside each
cached file, ``<file>.fetch.json`` records its hash and the validators (ETag,
Last-Modified) of the SHA256SUMS it was checked against, so a second fetch
costs one conditional GET of SHA256SUMS (304: no image bytes move). When the
server cannot be reached, the verified cached copy is used with a warning. A
file lock (``<file>.lock``) serialises fetches of the same file across processes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import tempfile
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from ..errors import FetchError, SourceError, UnreachableError, VerificationError
from .http import Http, HttpOptions, Validators, discard_part
from .image import ImageSource, Verify, request, verify_mode
from .verify import check_signature, file_sha256, keyring_path, sums_entry

log = logging.getLogger(__name__)

_RANK = {"none": 0, "checksum": 1, "signature": 2}
CACHE_NAME = "maas-chroot"


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/maas-chroot``, else ``~/.cache/maas-chroot``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / CACHE_NAME


def cache_path(url: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where ``url`` is cached: ``<cache>/<host>[_<port>]/<url path>``."""
    parsed = urllib.parse.urlsplit(url)
    hostname = parsed.hostname or ""
    try:
        port = parsed.port
    except ValueError:
        port = None
        hostname = ""
    if hostname in ("", ".", "..") or "/" in hostname or "\0" in hostname:
        raise SourceError(f"URL {url!r} has no usable host name",
                          hint="give a URL of the form http://HOST[:PORT]/path/to/image")
    host = hostname + (f"_{port}" if port else "")
    parts = [urllib.parse.unquote(p) for p in parsed.path.split("/") if p]
    if not parts or any(p in (".", "..") or "/" in p or "\0" in p for p in parts):
        raise SourceError(f"URL {url!r} has no usable file path",
                          hint="give the URL of the image file itself")
    if parsed.query:
        parts[-1] += "_" + urllib.parse.quote(parsed.query, safe="")[:100]
    base = Path(os.fspath(cache_dir)) if cache_dir is not None else default_cache_dir()
    path = base.joinpath(host, *parts)
    top = os.path.normpath(os.path.abspath(base))
    if os.path.commonpath([top, os.path.normpath(os.path.abspath(path))]) != top \
            or len(path.parts) != len(base.parts) + 1 + len(parts):
        raise SourceError(f"URL {url!r} would be cached outside {base}",
                          hint="give a URL of the form http://HOST[:PORT]/path/to/image")
    return path


@dataclass(frozen=True)
class _Record:
    """What the cache knows about a verified file (stored as ``<file>.fetch.json``)."""

    url: str
    sha256: str
    size: int
    mtime_ns: int
    verify: str
    sums_url: str | None
    sums: Validators
    image: Validators

    @staticmethod
    def path(target: Path) -> Path:
        return target.with_name(target.name + ".fetch.json")

    @classmethod
    def load(cls, target: Path, url: str) -> _Record | None:
        """The record of ``target`` if it describes ``url`` and the file is unchanged."""
        try:
            data: Any = json.loads(cls.path(target).read_text())
            st = target.stat()
            record = cls(url=str(data["url"]), sha256=str(data["sha256"]), size=int(data["size"]),
                         mtime_ns=int(data["mtime_ns"]), verify=str(data["verify"]),
                         sums_url=data.get("sums_url"), sums=Validators.load(data.get("sums")),
                         image=Validators.load(data.get("image")))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if (record.url != url or record.size != st.st_size or record.mtime_ns != st.st_mtime_ns
                or record.verify not in _RANK):
            return None
        return record

    def save(self, target: Path) -> None:
        data = dataclasses.asdict(self)
        path = self.path(target)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        os.replace(tmp, path)


def verified_hash(target: Path, url: str) -> tuple[str, str] | None:
    """``(sha256, verify mode)`` of ``target`` as the cache recorded it when it fetched ``url``
    (None when it has no record of that file as it is now)."""
    record = _Record.load(target, url)
    return None if record is None else (record.sha256, record.verify)


def fetch(
    source: ImageSource | str | os.PathLike[str],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    verify: Verify | None = None,
    keyring: str | os.PathLike[str] | None = None,
    sha256: str | None = None,
    sums_url: str | None = None,
    progress: bool | None = None,
    retries: int = 4,
    backoff: float = 0.5,
    timeout: float = 30.0,
) -> Path:
    """Download (or find in the cache) a verified image; return its local path.

    ``source`` is an :class:`~maas_chroot.sources.ImageSource` (see
    :func:`~maas_chroot.sources.cloud_image`), an http(s)/file URL, or a local
    path. ``sha256=`` pins the expected hash; ``sums_url=`` names a SHA256SUMS
    file listing the image (its signature is ``<sums_url>.gpg`` with
    ``verify="signature"``). ``retries``/``backoff``/``timeout`` tune the retry
    policy for connection errors and 5xx answers (backoff doubles each time).
    Raises FetchError (with the URL and HTTP status), VerificationError (the
    download was deleted), or SourceError for an unusable request.
    """
    src, local = request(source, sha256=sha256, sums_url=sums_url, verify=verify)
    mode = verify_mode(src, verify, local=local is not None)
    ring = keyring_path(keyring, url=src.sig_url or src.url) if mode == "signature" else None
    with Http(HttpOptions(retries=retries, backoff=backoff, timeout=timeout)) as http:
        if local is not None:
            return _check_local(local, src, mode, http, ring)
        target = cache_path(src.url, cache_dir)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with _locked(target):
                return _fetch_locked(src, mode, target, http, ring=ring, progress=progress)
        except OSError as e:
            raise FetchError(f"cannot write {e.filename or target} while fetching {src.url}: "
                             f"{e.strerror or e}", url=src.url,
                             hint="free some space, or choose another cache_dir= "
                                  "(or XDG_CACHE_HOME); a partial download resumes") from e


@contextlib.contextmanager
def _locked(target: Path) -> Iterator[None]:
    lock = FileLock(os.fspath(target) + ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("waiting for another process fetching %s", target)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _expected(src: ImageSource, mode: str, http: Http, ring: Path | None,
              known: _Record | None) -> tuple[str | None, Validators]:
    """The verified sha256 the image must have (None for mode "none"), and the
    validators of the SHA256SUMS it came from. With ``known``, SHA256SUMS is
    fetched conditionally; 304 means ``known.sha256`` still holds."""
    if mode == "none":
        return None, Validators()
    if src.sums_url is None:
        return src.sha256, Validators()
    reply = http.get(src.sums_url, conditional=known.sums if known else None)
    if reply.content is None and known is not None:
        log.debug("%s not modified", src.sums_url)
        validators = reply.validators if (reply.validators.etag
                                          or reply.validators.last_modified) else known.sums
        expected = known.sha256
    else:
        sums = reply.content or b""
        if mode == "signature" and src.sig_url and ring is not None:
            sig = http.get(src.sig_url).content or b""
            with tempfile.TemporaryDirectory(prefix="maas-chroot-sums-") as tmp:
                sums_file, sig_file = Path(tmp, "SHA256SUMS"), Path(tmp, "SHA256SUMS.gpg")
                sums_file.write_bytes(sums)
                sig_file.write_bytes(sig)
                check_signature(sums_file, sig_file, ring, url=src.sums_url)
        expected = sums_entry(sums, src.filename, url=src.sums_url)
        validators = reply.validators
    if src.sha256 and expected != src.sha256:
        raise VerificationError(f"{src.sums_url} lists {src.filename} as {expected}, but "
                                f"sha256={src.sha256} was expected", url=src.sums_url,
                                hint="the pinned hash is for another build; update it")
    return expected, validators


def _fetch_locked(src: ImageSource, mode: str, target: Path, http: Http, *,
                  ring: Path | None, progress: bool | None) -> Path:
    cached = _Record.load(target, src.url)
    trusted = (cached if cached is not None and _RANK[cached.verify] >= _RANK[mode]
               and cached.sums_url == src.sums_url else None)
    try:
        expected, sums_validators = _expected(src, mode, http, ring, trusted)
    except UnreachableError as e:
        if trusted is not None and (src.sha256 is None or trusted.sha256 == src.sha256):
            log.warning("%s; using the cached copy %s, verified (%s) when it was fetched",
                        e.message, target, trusted.verify)
            return target
        raise
    if cached is not None and expected is not None and cached.sha256 == expected:
        log.info("%s: cached copy is current (%s)", src.url, target)
        # A SHA256SUMS re-read now was checked as strongly as `mode`; an unchanged one
        # (304) keeps the strength it was checked with.
        strength = (max(cached.verify, mode, key=_RANK.__getitem__)
                    if trusted is not None and sums_validators == cached.sums else mode)
        dataclasses.replace(cached, sums=sums_validators, sums_url=src.sums_url,
                            verify=strength).save(target)
        return target
    part = target.with_name(target.name + ".part")
    conditional = cached.image if cached is not None and mode == "none" else None
    try:
        got = http.download(src.url, part, progress=progress, desc=src.filename,
                            conditional=conditional)
    except UnreachableError as e:
        if cached is not None and mode == "none":
            log.warning("%s; using the cached copy %s", e.message, target)
            return target
        raise
    if got is None:
        log.info("%s not modified; using %s", src.url, target)
        return target
    if expected is not None and got.sha256 != expected:
        discard_part(part)
        raise VerificationError(
            f"{src.url} has sha256 {got.sha256}, but {src.sums_url or 'sha256='} says "
            f"{expected}; the download was deleted", url=src.url,
            hint="retry; if it fails again the mirror is corrupt or the file was tampered with")
    os.replace(part, target)
    st = target.stat()
    _Record(url=src.url, sha256=got.sha256, size=st.st_size, mtime_ns=st.st_mtime_ns,
            verify=mode, sums_url=src.sums_url, sums=sums_validators,
            image=got.validators).save(target)
    log.info("fetched %s (%d bytes, verify=%s) to %s", src.url, got.size, mode, target)
    return target


def _check_local(path: Path, src: ImageSource, mode: str, http: Http,
                 ring: Path | None) -> Path:
    if not path.exists():
        raise FetchError(f"{path}: no such file or directory", url=os.fspath(path),
                         hint="check the path, or give an http(s) URL or a cloud_image()")
    if mode == "none":
        return path
    if not path.is_file():
        raise SourceError(f"{path} is not a file; only files can be verified",
                          hint="drop sha256=/sums_url= for a directory")
    expected, _ = _expected(src, mode, http, ring, None)
    actual = file_sha256(path)
    if actual != expected:
        raise VerificationError(f"{path} has sha256 {actual}, but {src.sums_url or 'sha256='} "
                                f"says {expected}", url=src.url,
                                hint="the local file is corrupt or not the expected one "
                                     "(it was left in place)")
    return path
