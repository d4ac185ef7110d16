"""MAAS API 2.0 client for custom boot resources: OAuth1 signing, TLS, the image lifecycle.

Follows what MAAS itself does (canonical/maas):

* auth: ``src/maascli/api.py`` / ``apiclient``: OAuth 1.0 PLAINTEXT with the API key
  ``consumer_key:token_key:token_secret`` and an empty consumer secret, header realm
  ``"OAuth"``. requests-oauthlib signs every prepared request, so each chunk gets a
  fresh ``oauth_nonce`` and ``oauth_timestamp`` (MAAS/piston refuses timestamps
  older than 300 s and any reused nonce).
* TLS: :mod:`.tls` (a CA file, or the PEM text ``maas login --cacerts`` keeps).
* the upload: :mod:`.upload` (create, chunks, re-upload rules) and :mod:`.chunks`.
* the lifecycle: ``GET boot-resources/?type=uploaded`` lists custom images without their
  sets, so :meth:`MaasClient.images` reads each one; ``DELETE boot-resources/<id>/``
  (``BootResourceHandler.delete`` in ``src/maasserver/api/boot_resources.py``) answers
  204, and for an id that does not exist a 500 (it uses ``.get``, not
  ``get_object_or_404``), so :meth:`MaasClient.delete` looks the resource up first.
* ``GET version/`` (``VersionHandler``, anonymous) and ``GET regioncontrollers/`` tell
  which MAAS this is and how many region controllers must hold a copy.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urljoin

import requests
from oauthlib.oauth1 import SIGNATURE_PLAINTEXT
from requests_oauthlib import OAuth1

from .. import progress as _progress
from ..errors import ArgumentError, ImageNameError, MaasApiError, MaasCredentialsError
from . import api, names, tls, upload
from .profiles import read_profile
from .resource import BootResource

__all__ = ["MaasClient"]

logger = logging.getLogger(__name__)

#: Seconds :meth:`MaasClient.wait` waits by default for every region to hold a copy.
WAIT_TIMEOUT = upload.WAIT_TIMEOUT


class MaasClient:
    """A MAAS API 2.0 client (boot resources).

    ``url`` is the MAAS URL as given to ``maas login`` (``http://maas:5240/MAAS``,
    ``https://maas:5443/MAAS``); ``api_key`` is ``consumer_key:token_key:token_secret``
    (``maas apikey --username U``). ``cacerts``: a PEM file of the CA(s) to trust for
    https, instead of requests' default bundle. ``verify_tls=False`` turns certificate
    checks off (say so explicitly; it is logged). ``timeout``: seconds per HTTP request.
    """

    def __init__(self, url: str, api_key: str, *, cacerts: str | os.PathLike[str] | None = None,
                 verify_tls: bool = True, timeout: float = 120.0) -> None:
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
        if cacerts is not None and not verify_tls:
            raise ArgumentError("cacerts= and verify_tls=False contradict each other",
                                hint="give the CA to trust, or (not advised) verify_tls=False")
        self.timeout = timeout
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._trust = (tls.from_file(cacerts, url=self.api_url) if cacerts is not None else
                       tls.Trust(verify=verify_tls, origin="requests' default CA bundle"))
        if not verify_tls:
            logger.warning("TLS certificate checks are OFF for %s (verify_tls=False)", self.url)
        self._session = requests.Session()
        # requests' default adapter never re-sends a request (max_retries=0): a chunk
        # that may have been applied must not go out twice.
        self._session.auth = OAuth1(parts[0], "", parts[1], parts[2],
                                    signature_method=SIGNATURE_PLAINTEXT, realm="OAuth")
        self._session.headers["User-Agent"] = "maas-chroot"
        self._version: str | None = None
        self._regions: int | None = None

    def __repr__(self) -> str:
        return f"MaasClient(url={self.url!r})"

    def close(self) -> None:
        self._session.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

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
    def resolve(cls, profile: str | None = None, *, url: str | None = None,
                api_key: str | None = None, environ: Mapping[str, str] | None = None,
                needed_by: str = "the upload", **kwargs: Any) -> MaasClient:
        """The client the caller's credentials name, in this order: the ``maas login``
        ``profile``; ``url`` and ``api_key`` (else ``MAAS_URL`` and ``MAAS_API_KEY``); the
        ``MAAS_PROFILE`` profile. :class:`MaasCredentialsError` (saying what ``needed_by``
        them) when none is given."""
        env = os.environ if environ is None else environ
        if profile:
            return cls.from_profile(profile, **kwargs)
        url, api_key = url or env.get("MAAS_URL"), api_key or env.get("MAAS_API_KEY")
        if url and api_key:
            return cls(url, api_key, **kwargs)
        if env.get("MAAS_PROFILE"):
            return cls.from_profile(env["MAAS_PROFILE"], **kwargs)
        raise MaasCredentialsError(
            f"{needed_by} needs MAAS credentials, and none were given", url=url or "",
            hint="name a `maas login` profile (--profile NAME, or profile = \"NAME\" in a "
                 "recipe's upload table), or give --maas-url URL --api-key KEY, or set "
                 "MAAS_URL and MAAS_API_KEY (or MAAS_PROFILE)")

    @classmethod
    def from_profile(cls, name: str, *, path: str | os.PathLike[str] | None = None,
                     **kwargs: Any) -> MaasClient:
        """From a profile saved by ``maas login NAME URL KEY [--cacerts FILE]``.

        Looked up in ``path``, else ``~/.maascli.db`` then ``~/snap/maas/current/.maascli.db``,
        and under sudo the same files in ``$SUDO_USER``'s home (the user who ran ``maas
        login``); see :mod:`.profiles`. The profile's ``cacerts`` are trusted unless
        ``cacerts=`` (or ``verify_tls=False``) is given here.
        """
        profile = read_profile(name, path=path)
        client = cls(profile.url, profile.api_key, **kwargs)
        if profile.cacerts and "cacerts" not in kwargs and kwargs.get("verify_tls", True):
            client._tmp = tempfile.TemporaryDirectory(prefix="maas-chroot-ca-")
            client._trust = tls.from_text(profile.cacerts, url=client.api_url,
                                          origin=f"maas CLI profile {name!r} ({profile.db})",
                                          workdir=client._tmp)
        return client

    # --- what MAAS this is ---------------------------------------------------------------

    def version(self) -> str:
        """MAAS's version, e.g. ``"3.6.2"`` (``GET version/``; asked once)."""
        if self._version is None:
            self._version = str(self._json("GET", "version/").get("version", ""))
        return self._version

    def regions(self) -> int:
        """How many region controllers MAAS has (each must hold a copy of an image)."""
        if self._regions is None:
            self._regions = max(1, len(self._json("GET", "regioncontrollers/")))
        return self._regions

    # --- boot resources --------------------------------------------------------------------

    def boot_resources(self, *, type: str | None = None) -> list[BootResource]:
        """All boot resources (``type``: "uploaded", "synced" or None for all), without
        their sets (MAAS lists none: ``size``, ``sha256`` and ``complete`` are None)."""
        params = {"type": type} if type else None
        data = self._json("GET", "boot-resources/", params=params)
        return [BootResource.from_json(d) for d in data]

    def get(self, id: int) -> BootResource:
        return BootResource.from_json(self._json("GET", f"boot-resources/{int(id)}/"))

    def images(self, *, architecture: str | None = None) -> list[BootResource]:
        """The custom images, each with its newest set (size, sha256, complete, day)."""
        listed = self.boot_resources(type="uploaded")
        return [self.get(r.id) for r in listed
                if architecture is None or r.architecture == architecture]

    def find(self, name: str, *, architecture: str | None = None) -> list[BootResource]:
        """The custom images named ``name`` (``custom/foo`` or ``foo``, stored either way).

        Not checked against the naming rules: MAAS 3.8 accepts ``custom/jammy``, which
        this client would refuse to upload, and it must still be found to be deleted.
        """
        wanted = _release(name)
        return [r for r in self.boot_resources(type="uploaded")
                if names.same_name(r.name, wanted)
                and (architecture is None or r.architecture == architecture)]

    def delete(self, name_or_id: int | str, *, architecture: str | None = None) -> BootResource:
        """Delete a custom image by id, or by name (and ``architecture`` when MAAS has the
        name for several); return what was deleted."""
        if isinstance(name_or_id, int):
            found = [self.get(name_or_id)]
            if found[0].type != "Uploaded":   # a synced image: machines deploy it
                raise MaasApiError(f"boot resource {name_or_id} is {found[0].full_name} "
                                   f"{found[0].architecture} ({found[0].type}), not a custom "
                                   "image", url=self.api_url,
                                   hint="maas-chroot deletes only uploaded images; MAAS's "
                                        "own are managed with `maas admin boot-resources`")
        else:
            found = self.find(name_or_id, architecture=architecture)
        shown = (f"boot resource {name_or_id}" if isinstance(name_or_id, int) else
                 f"custom/{_release(name_or_id)}"
                 + (f" for {architecture}" if architecture else ""))
        if not found:
            raise MaasApiError(f"MAAS has no custom image {shown}", url=self.api_url,
                               hint="list them with `maas-chroot images` (MaasClient.images())")
        if len(found) > 1:
            which = ", ".join(f"{r.full_name} {r.architecture} (id {r.id}, stored as "
                              f"{r.name!r})" for r in found)
            raise MaasApiError(f"{shown} names {len(found)} boot resources: {which}",
                               url=self.api_url, hint="pass architecture= (--architecture) "
                               "or the id (--id) of the one to delete")
        self._call("DELETE", f"boot-resources/{found[0].id}/")
        logger.info("deleted %s %s (boot resource %d)", found[0].full_name,
                    found[0].architecture, found[0].id)
        return found[0]

    def upload(self, path: str | os.PathLike[str] | upload.Sized, *, name: str,
               title: str | None = None, architecture: str | None = None,
               filetype: str | None = None, base_image: str | None = None,
               force: bool = False, replace: bool = False, wait: bool = False,
               wait_timeout: float = WAIT_TIMEOUT, chunk_size: int = upload.CHUNK_SIZE,
               progress: bool | None = None) -> BootResource:
        """Upload an image file (or a ``PackResult``) as custom image ``name``.

        ``name``: ``custom/foo`` or ``foo``; MAAS is sent ``foo`` on every version.
        ``filetype`` defaults to what the magic bytes say; ``base_image`` to
        ``ubuntu/<codename>`` read from the image (or its name). An existing image of
        that name and architecture with another ``base_image`` is refused (MAAS would
        keep the old one), unless ``replace=True``, which deletes it first.
        ``chunk_size``: bytes per PUT (4 MiB; at most 10 MiB, MAAS's nginx limit).
        ``architecture`` defaults to the image's (``arm64/generic``: a ``PackResult``'s
        ``arch``, else the ELF programs of a tgz/tbz/txz); one that contradicts the
        image raises :class:`ImageNameError` before anything is sent, unless ``force``.

        Returns once MAAS verified the sha256 of the whole file. With several region
        controllers (3.5+) MAAS then copies it to the others, and ``complete`` is False
        until they all have it: ``wait=True`` waits for that (:meth:`wait`).
        """
        return upload.Upload(self, name, title=title, architecture=architecture,
                             filetype=filetype, base_image=base_image, force=force,
                             replace=replace,
                             wait=wait, wait_timeout=wait_timeout,
                             chunk_size=chunk_size).send(path, progress=progress)

    def wait(self, resource: BootResource | int, *, timeout: float = WAIT_TIMEOUT,
             interval: float = 5.0, progress: bool | None = None) -> BootResource:
        """Poll until MAAS says every region controller holds the newest set, verified.

        Polls soon at first, then less often, ``interval`` seconds apart at most.
        """
        rid = resource.id if isinstance(resource, BootResource) else int(resource)
        deadline = time.monotonic() + timeout
        delay = min(0.2, interval)
        current = self.get(rid)
        if current.complete is None:
            raise MaasApiError(f"{current.full_name} (boot resource {rid}) has no file to "
                               "wait for", url=urljoin(self.api_url, f"boot-resources/{rid}/"))
        with _progress.bar(progress, total=100.0, desc=f"sync {current.full_name}",
                           unit="%") as bar:
            while not current.complete:
                bar.update(max(0.0, (current.progress or 0.0) - bar.n))
                if time.monotonic() >= deadline:
                    raise MaasApiError(
                        f"{current.full_name} (boot resource {rid}) is not complete after "
                        f"{timeout:g} s: MAAS has {current.progress or 0:.0f}% of the copies "
                        "its region controllers need", url=urljoin(
                            self.api_url, f"boot-resources/{rid}/"),
                        hint="MAAS goes on copying in the background: wait longer "
                        "(timeout=, --wait-timeout), and check that each region controller "
                        "reaches the others on port 5240 (the copies go through "
                        "/MAAS/boot-resources/)")
                time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
                delay = min(delay * 1.5, interval)
                current = self.get(rid)
            bar.update(100.0 - bar.n)
        logger.info("%s is complete on every region controller", current.full_name)
        return current

    # --- HTTP plumbing ------------------------------------------------------------------

    def _request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        """One HTTP request, with this client's trust (given on every request: a session's
        ``verify`` loses to ``REQUESTS_CA_BUNDLE``). A TLS failure is a MaasApiError; other
        transport errors are raised as requests raises them."""
        try:
            return self._session.request(method, url, timeout=self.timeout,
                                         verify=self._trust.verify, allow_redirects=False,
                                         **kwargs)
        except requests.exceptions.SSLError as e:
            raise tls.failure(e, method=method, url=url, trust=self._trust) from e

    def _call(self, method: str, rel: str, **kwargs: Any) -> requests.Response:
        url = urljoin(self.api_url, rel)
        try:
            r = self._request(method, url, **kwargs)
        except requests.RequestException as e:
            raise MaasApiError(f"{method} {url} failed: {e}", url=url,
                               hint="is MAAS running and reachable at this URL?") from e
        if r.status_code >= 400 or r.is_redirect:
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


def _release(name: str) -> str:
    """``custom/foo`` or ``foo`` -> ``foo`` (refusing only what cannot be a name)."""
    bare = name.strip().removeprefix("custom/") if isinstance(name, str) else ""
    if not bare or "/" in bare:
        raise ImageNameError(f"{name!r} is not a custom image name",
                             hint="give custom/NAME or NAME (or the boot resource's id)")
    return bare
