"""MAAS API 2.0 client for custom boot resources: OAuth1 signing, chunked upload, name rules.

Follows what MAAS itself does (canonical/maas):

* auth: ``src/maascli/api.py`` / ``apiclient``: OAuth 1.0 PLAINTEXT with the API key
  ``consumer_key:token_key:token_secret`` and an empty consumer secret, header realm
  ``"OAuth"``. requests-oauthlib signs every prepared request, so each chunk gets a
  fresh ``oauth_nonce`` and ``oauth_timestamp`` (MAAS/piston refuses timestamps
  older than 300 s and any reused nonce).
* upload: ``src/maascli/actions/boot_resources_create.py``: POST the metadata
  (name, title, architecture, filetype, size, sha256[, base_image]) as multipart, take
  the newest set of the answer, which must hold exactly one file; if it is already
  ``complete`` there is nothing to send; else PUT the bytes to its ``upload_uri`` in
  4 MiB chunks (``CHUNK_SIZE = 1 << 22``), ``Content-Type: application/octet-stream``.
* server side: ``src/maasserver/api/boot_resources.py``: the PUT handler appends a
  chunk at the stored size (no offset header), refuses a body shorter than
  Content-Length, and checks the sha256 when the last byte arrives. An incomplete
  file reports ``progress`` (percent of ``size`` stored), which is how a failed
  chunk is checked: it is never re-sent blindly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast
from urllib.parse import urljoin

import requests
from oauthlib.oauth1 import SIGNATURE_PLAINTEXT
from requests_oauthlib import OAuth1

from .. import arches, progress, releases
from ..errors import ArchiveError, MaasApiError, MaasCredentialsError
from . import api, names
from .api import read_profile
from .names import (
    FILETYPES,
    infer_filetype,
    validate_architecture,
    validate_base_image,
    validate_filetype,
    validate_name,
)
from .resource import BootResource

__all__ = ["CHUNK_SIZE", "FILETYPES", "BootResource", "MaasClient", "Upload", "validate_name"]

logger = logging.getLogger(__name__)

#: Bytes per PUT, as the maas CLI and python-libmaas send them.
CHUNK_SIZE = 1 << 22
_MAX_RECOVERIES = 3


class _Sized(Protocol):          # maas_chroot.archive.PackResult, duck-typed (and its .arch)
    @property
    def path(self) -> Path: ...
    @property
    def size(self) -> int: ...
    @property
    def sha256(self) -> str: ...


@dataclass(frozen=True)
class Upload:
    """Where and how ``build()`` uploads its output (:meth:`MaasClient.upload` arguments)."""

    client: MaasClient
    name: str
    title: str | None = None
    architecture: str | None = None
    """MAAS's architecture; None: the image's (``arm64/generic``). ``force`` uploads one
    that contradicts the image."""
    base_image: str | None = None
    filetype: str | None = None
    force: bool = False


class MaasClient:
    """A MAAS API 2.0 client (boot resources).

    ``url`` is the MAAS URL as given to ``maas login`` (``http://maas:5240/MAAS``);
    ``api_key`` is ``consumer_key:token_key:token_secret`` (``maas apikey --username U``).
    """

    def __init__(self, url: str, api_key: str, *, timeout: float = 120.0,
                 verify_tls: bool = True) -> None:
        base = url.strip().rstrip("/")
        if not re.match(r"^https?://[^/]+", base):
            raise MaasApiError(f"MAAS URL {url!r} is not an http(s) URL", url=url,
                               hint="for example http://maas.example:5240/MAAS")
        base = re.sub(r"/api/2\.0$", "", base)
        self.url = base
        self.api_url = base + "/api/2.0/"
        parts = api_key.strip().split(":") if isinstance(api_key, str) else []
        if len(parts) != 3 or not all(parts):
            raise MaasCredentialsError(
                "the MAAS API key must have three parts 'consumer:token:secret'",
                url=self.api_url, hint="print it on the region with `maas apikey --username "
                "<user>` or copy it from the UI (user preferences, API keys)")
        self.timeout = timeout
        self._session = requests.Session()
        self._session.verify = verify_tls
        # requests' default adapter never re-sends a request (max_retries=0): a chunk
        # that may have been applied must not go out twice.
        self._session.auth = OAuth1(parts[0], "", parts[1], parts[2],
                                    signature_method=SIGNATURE_PLAINTEXT, realm="OAuth")
        self._session.headers["User-Agent"] = "maas-chroot"

    def __repr__(self) -> str:
        return f"MaasClient(url={self.url!r})"

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> MaasClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- constructors ---------------------------------------------------------------------

    @classmethod
    def from_env(cls, *, environ: Mapping[str, str] | None = None, **kwargs: Any) -> MaasClient:
        """From ``MAAS_URL`` and ``MAAS_API_KEY``."""
        env = os.environ if environ is None else environ
        url, key = env.get("MAAS_URL"), env.get("MAAS_API_KEY")
        if not url or not key:
            missing = " and ".join(n for n, v in (("MAAS_URL", url), ("MAAS_API_KEY", key))
                                   if not v)
            raise MaasCredentialsError(f"{missing} not set in the environment", url=url or "",
                               hint="export MAAS_URL=http://maas:5240/MAAS MAAS_API_KEY=$(maas "
                               "apikey --username <user>), or use MaasClient.from_profile()")
        return cls(url, key, **kwargs)

    @classmethod
    def from_profile(cls, name: str, *, path: str | os.PathLike[str] | None = None,
                     **kwargs: Any) -> MaasClient:
        """From a profile saved by ``maas login NAME URL KEY``.

        The maas CLI keeps profiles in sqlite (``src/maascli/config.py``): table
        ``profiles(id, name UNIQUE, data)`` with ``data`` the JSON of
        ``{"name", "url", "credentials": [consumer, token, secret], ...}``. Looked up in
        ``path``, else ``~/.maascli.db`` then ``~/snap/maas/current/.maascli.db``, and
        under sudo the same files in ``$SUDO_USER``'s home (the user who ran ``maas login``).
        """
        url, key = read_profile(name, path=path)
        return cls(url, key, **kwargs)

    # --- plain API ------------------------------------------------------------------------

    def boot_resources(self, *, type: str | None = None) -> list[BootResource]:
        """All boot resources (``type``: "uploaded", "synced" or None for all)."""
        params = {"type": type} if type else None
        data = self._json("GET", "boot-resources/", params=params)
        return [BootResource.from_json(d) for d in data]

    def get(self, id: int) -> BootResource:
        return BootResource.from_json(self._json("GET", f"boot-resources/{int(id)}/"))

    def delete(self, id: int) -> None:
        self._call("DELETE", f"boot-resources/{int(id)}/")

    # --- upload -----------------------------------------------------------------------------

    def upload(self, path: str | os.PathLike[str] | _Sized, *, name: str,
               title: str | None = None, architecture: str | None = None,
               filetype: str | None = None, base_image: str | None = None,
               force: bool = False, progress: bool | None = None) -> BootResource:
        """Upload an image file (or a ``PackResult``) as custom boot resource ``name``.

        ``filetype`` defaults to what the magic bytes say (tgz/tbz/txz, ddgz/ddbz2/ddxz,
        ddraw). ``base_image`` (MAAS 3.1+ uses it to pick the installer kernel of a custom
        Ubuntu image) defaults to ``ubuntu/<codename>`` read from the image's
        ``etc/lsb-release`` (first 64 MiB of a tgz/tbz/txz only), else from a single
        Ubuntu codename or version in ``name``/``title`` (``noble-custom``); if neither
        tells, it is not sent and MAAS uses its commissioning release.
        ``architecture`` defaults to the image's (``arm64/generic``: a ``PackResult``'s
        ``arch``, else the ELF programs of a tgz/tbz/txz); one that contradicts the
        image raises :class:`ImageNameError` before anything is sent, unless ``force``.

        Returns the resource once MAAS verified the sha256 of the whole file. A failed
        chunk is never re-sent blindly: the resource is read back, and the upload goes
        on only when MAAS's stored size proves the chunk arrived; otherwise
        :class:`MaasApiError` says how to resume.
        """
        full = validate_name(name)
        if architecture is not None:
            validate_architecture(architecture)
        if filetype is not None:
            validate_filetype(filetype)
        if base_image is not None:
            base_image = validate_base_image(base_image)
        file = Path(path) if isinstance(path, (str, os.PathLike)) else Path(path.path)
        if not file.is_file():
            raise ArchiveError(f"cannot upload {file}: it is not a file (or does not exist)",
                               path=file, hint="give the path of a packed image, e.g. the "
                                               "output of maas-chroot build -o FILE")
        filetype = filetype or infer_filetype(file)       # cheap checks before the long read
        architecture = arches.maas_architecture(
            architecture, getattr(path, "arch", None) or names.sniff_arch(file, filetype),
            force=force)
        if base_image is None:
            found = (names.sniff_ubuntu_release(file, filetype)
                     or releases.named_in([full, title or ""]))
            if found:
                base_image = f"ubuntu/{found}"
            else:
                logger.warning("%s: base_image not given and not Ubuntu-recognisable; MAAS "
                               "will use its commissioning release", full)
        if isinstance(path, (str, os.PathLike)):
            size, sha256 = _size_and_sha256(file, progress=progress)
        else:
            size, sha256 = int(path.size), str(path.sha256)
            if file.stat().st_size != size:
                raise MaasApiError(f"{file} is {file.stat().st_size} bytes but its PackResult "
                                   f"says {size}: the file changed since it was packed",
                                   url=self.api_url, hint="pack it again")
        if size == 0:
            raise MaasApiError(f"{file} is empty", url=self.api_url)
        fields = {"name": full, "title": title or full.split("/", 1)[1],
                  "architecture": architecture, "filetype": filetype, "size": str(size),
                  "sha256": sha256}
        if base_image:
            fields["base_image"] = base_image
        logger.info("creating boot resource %s (%s, %d bytes, sha256 %s)", full, filetype,
                    size, sha256)
        created = self._json("POST", "boot-resources/",
                             files={k: (None, v) for k, v in fields.items()})
        resource = BootResource.from_json(created)
        rfile = api.the_file(created, self.api_url)
        if rfile.get("complete"):
            logger.info("MAAS already has %s (same sha256): nothing to upload", full)
            return resource
        upload_url = urljoin(self.api_url, str(rfile["upload_uri"]))
        self._send(file, upload_url, resource, size, progress=progress)
        try:
            return self.get(resource.id)
        except MaasApiError as e:       # the last PUT's 200 already proved the sha256
            logger.warning("uploaded %s, but reading it back failed: %s", full, e.message)
            return dataclasses.replace(resource, complete=True)

    def _send(self, file: Path, upload_url: str, resource: BootResource, size: int, *,
              progress: bool | None) -> None:
        buf = bytearray(CHUNK_SIZE)
        view = memoryview(buf)
        offset, recoveries = 0, 0
        with open(file, "rb") as f, _progress_bar(progress, size, resource) as bar:
            while offset < size:
                n = f.readinto(view)
                if not n:
                    raise MaasApiError(f"{file} shrank while uploading (at byte {offset} of "
                                       f"{size})", url=upload_url, hint=_resume(resource))
                # The reused buffer goes out as is (urllib3 sends any buffer object).
                body = cast(bytes, buf if n == CHUNK_SIZE else buf[:n])
                failure: requests.Response | Exception | None
                try:
                    r = self._session.put(upload_url, data=body, timeout=self.timeout,
                                          headers={"Content-Type": "application/octet-stream",
                                                   "Content-Length": str(n)})
                    failure = None if r.status_code == 200 else r
                except requests.RequestException as e:
                    failure = e
                if failure is not None:
                    if isinstance(failure, requests.Response) and failure.status_code < 500:
                        raise api.api_error(failure, hint=_resume(resource))
                    if self._recover(failure, resource=resource, upload_url=upload_url,
                                     offset=offset, n=n, size=size):
                        bar.update(size - offset)
                        return
                    recoveries += 1
                    if recoveries > _MAX_RECOVERIES:
                        raise MaasApiError(
                            f"upload of {resource.full_name} (boot resource {resource.id}) "
                            f"gave up after {recoveries} failed chunks; MAAS has "
                            f"{offset + n} of {size} bytes", url=upload_url,
                            hint="check the network to MAAS; " + _resume(resource))
                offset += n
                bar.update(n)

    def _recover(self, failure: requests.Response | Exception, *, resource: BootResource,
                 upload_url: str, offset: int, n: int, size: int) -> bool:
        """A chunk [offset, offset+n) failed: go on only if MAAS proves it stored it.

        Returns True when MAAS has the whole file (verified), False to send the next chunk.
        """
        what = (f"HTTP {failure.status_code}: {api.body(failure)}"
                if isinstance(failure, requests.Response) else f"{type(failure).__name__}: "
                f"{failure}")
        logger.warning("chunk at byte %d of %s failed (%s); reading the resource back",
                       offset, resource.name, what)
        try:
            data = self._json("GET", f"boot-resources/{resource.id}/")
            rfile = api.file_by_upload_uri(data, upload_url)
        except MaasApiError as e:
            raise MaasApiError(
                f"upload of {resource.full_name} (boot resource {resource.id}) stopped at byte "
                f"{offset} of {size}: the chunk failed ({what}) and MAAS could not be asked "
                f"what it stored ({e.message})", url=upload_url, hint=_resume(resource)) from e
        stored = api.stored_bytes(rfile)
        if rfile.get("complete"):
            return True                 # MAAS verified the sha256 of the whole file
        if stored == offset + n:
            logger.info("MAAS stored the chunk at byte %d: going on", offset)
            return False
        seen = "unknown" if stored is None else str(stored)
        raise MaasApiError(
            f"upload of {resource.full_name} (boot resource {resource.id}) stopped: the chunk "
            f"at byte {offset} (+{n}) of {size} failed ({what}); MAAS reports {seen} bytes "
            "stored, so it cannot safely go on (MAAS appends each chunk without an offset, a "
            "re-sent chunk could be stored twice)", url=upload_url, hint=_resume(resource))

    # --- HTTP plumbing ------------------------------------------------------------------

    def _call(self, method: str, rel: str, **kwargs: Any) -> requests.Response:
        url = urljoin(self.api_url, rel)
        try:
            r = self._session.request(method, url, timeout=self.timeout, **kwargs)
        except requests.RequestException as e:
            raise MaasApiError(f"{method} {url} failed: {e}", url=url,
                               hint="is MAAS running and reachable at this URL?") from e
        if r.status_code >= 400:
            raise api.api_error(r)
        return r

    def _json(self, method: str, rel: str, **kwargs: Any) -> Any:
        r = self._call(method, rel, **kwargs)
        try:
            return r.json()
        except ValueError as e:
            text = api.body(r)
            raise MaasApiError(f"{method} {r.url}: MAAS answered HTTP {r.status_code} with "
                               f"something that is not JSON: {text[:200]!r}", url=r.url,
                               status=r.status_code, body=text,
                               hint="check the MAAS URL (it usually ends in /MAAS)") from e


def _size_and_sha256(file: Path, *, progress: bool | None) -> tuple[int, str]:
    h, size = hashlib.sha256(), 0
    buf = bytearray(CHUNK_SIZE)
    view = memoryview(buf)
    total = file.stat().st_size
    with open(file, "rb") as f, _bar(progress, total, f"sha256 {file.name}") as bar:
        while n := f.readinto(view):
            h.update(view[:n])
            size += n
            bar.update(n)
    return size, h.hexdigest()


def _bar(progress_flag: bool | None, total: int, desc: str) -> Any:
    return progress.bar(progress_flag, total=total, desc=desc)


def _progress_bar(progress_flag: bool | None, total: int, resource: BootResource) -> Any:
    return _bar(progress_flag, total, f"upload {resource.full_name}")


def _resume(resource: BootResource) -> str:
    return (f"MAAS keeps the incomplete boot resource {resource.id} ({resource.full_name}); "
            f"delete it with `maas $PROFILE boot-resource delete {resource.id}` (or "
            f"MaasClient(...).delete({resource.id})) and run the upload again")


