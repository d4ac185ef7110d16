"""HTTP for fetch: small conditional GETs, and resumable streaming downloads with retries.

requests keeps ``trust_env`` on, so ``HTTP_PROXY``/``HTTPS_PROXY``/``NO_PROXY``
(and netrc, and ``REQUESTS_CA_BUNDLE``) apply as they do for every requests user.
Transient failures (connection errors, timeouts, cut bodies, 408/429/5xx) are
retried with exponential backoff; other 4xx answers fail at once, naming the URL.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import requests
import urllib3

from .. import progress as progress_mod
from ..errors import FetchError, UnreachableError
from ..version import __version__
from .image import file_url_path
from .verify import file_sha256

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
_SMALL_LIMIT = 64 << 20
_RETRY_STATUS = frozenset({408, 425, 429})
_TRANSIENT = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)


@dataclass(frozen=True)
class HttpOptions:
    """Retry policy: ``retries`` more attempts after the first, sleeping
    ``backoff * 2**n`` seconds (at most ``max_backoff``) between them."""

    retries: int = 4
    backoff: float = 0.5
    max_backoff: float = 30.0
    timeout: float = 30.0


@dataclass(frozen=True)
class Validators:
    """The HTTP cache validators of a response."""

    etag: str | None = None
    last_modified: str | None = None

    @classmethod
    def of(cls, resp: requests.Response) -> Validators:
        return cls(resp.headers.get("ETag"), resp.headers.get("Last-Modified"))

    @classmethod
    def load(cls, data: Any) -> Validators:
        if not isinstance(data, dict):
            return cls()
        etag, lm = data.get("etag"), data.get("last_modified")
        return cls(etag if isinstance(etag, str) else None, lm if isinstance(lm, str) else None)

    def dump(self) -> dict[str, str | None]:
        return asdict(self)

    def conditional(self) -> dict[str, str]:
        headers = {}
        if self.etag:
            headers["If-None-Match"] = self.etag
        if self.last_modified:
            headers["If-Modified-Since"] = self.last_modified
        return headers

    def if_range(self) -> str | None:
        """A validator usable in If-Range (a strong ETag, else Last-Modified)."""
        if self.etag and not self.etag.startswith("W/"):
            return self.etag
        return self.last_modified


@dataclass(frozen=True)
class Small:
    """A small resource: ``content`` is None when the server answered 304 Not Modified."""

    content: bytes | None
    validators: Validators


@dataclass(frozen=True)
class Downloaded:
    sha256: str
    size: int
    validators: Validators


class _Retry(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class Http:
    """One requests session and a retry policy."""

    def __init__(self, options: HttpOptions | None = None) -> None:
        self.options = options or HttpOptions()
        self.session = requests.Session()
        self.session.headers["User-Agent"] = f"maas-chroot/{__version__}"

    def __enter__(self) -> Http:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.session.close()

    def get(self, url: str, *, conditional: Validators | None = None) -> Small:
        """GET a small file (SHA256SUMS, its signature); file:// URLs are read directly."""
        if urllib.parse.urlsplit(url).scheme == "file":
            return Small(_read_file_url(url), Validators())
        headers = conditional.conditional() if conditional else {}
        attempt = 0
        while True:
            try:
                with self.session.get(url, headers=headers, stream=True,
                                      timeout=self.options.timeout) as resp:
                    if resp.status_code == 304 and headers:
                        return Small(None, Validators.of(resp))
                    _check_status(resp, url)
                    body = bytearray()
                    for chunk in resp.iter_content(_CHUNK):
                        body += chunk
                        if len(body) > _SMALL_LIMIT:
                            raise FetchError(f"{url} is larger than {_SMALL_LIMIT} bytes",
                                             url=url, hint="is this really a SHA256SUMS file?")
                    return Small(bytes(body), Validators.of(resp))
            except (*_TRANSIENT, _Retry) as e:
                attempt = self._pause(url, attempt, e)

    def download(self, url: str, part: Path, *, progress: bool | None, desc: str,
                 conditional: Validators | None = None) -> Downloaded | None:
        """Stream ``url`` into ``part``, resuming what an earlier attempt left there.

        Resuming sends ``Range: bytes=<size of part>-`` with ``If-Range``; a 200
        answer (Range ignored, or the file changed) starts over. Returns None only
        when ``conditional`` validators are given, no part exists, and the server
        answers 304 Not Modified.
        """
        state_path = part.with_name(part.name + ".json")
        attempt = 0
        furthest = 0
        while True:
            state = _load_state(state_path, url) if part.exists() else None
            offset = part.stat().st_size if state is not None else 0
            headers = {"Accept-Encoding": "identity"}
            if offset and state is not None and state.if_range():
                headers["Range"] = f"bytes={offset}-"
                headers["If-Range"] = state.if_range() or ""
            else:
                offset = 0
                if conditional is not None:
                    headers.update(conditional.conditional())
            try:
                with self.session.get(url, headers=headers, stream=True,
                                      timeout=self.options.timeout) as resp:
                    if resp.status_code == 304 and conditional is not None and not offset:
                        return None
                    if resp.status_code == 416 and offset:
                        log.info("%s: server refused to resume at %d; starting over", url, offset)
                        _discard(part, state_path)
                        continue
                    _check_status(resp, url)
                    if resp.status_code == 206 and not _resumes(resp, offset):
                        log.info("%s: unusable partial answer (%s) at byte %d; starting over",
                                 url, resp.headers.get("Content-Range"), offset)
                        _discard(part, state_path)
                        raise _Retry(206)
                    result = self._stream(resp, url, part, state_path, offset,
                                          progress=progress, desc=desc)
                    state_path.unlink(missing_ok=True)
                    return result
            except (*_TRANSIENT, _Retry) as e:
                size = part.stat().st_size if part.exists() else 0
                saved = _load_state(state_path, url)
                if size > furthest and saved is not None and saved.if_range():
                    furthest = size  # resumable progress: a cut connection, not a dead server
                    attempt = 0
                attempt = self._pause(url, attempt, e)

    def _stream(self, resp: requests.Response, url: str, part: Path, state_path: Path,
                offset: int, *, progress: bool | None, desc: str) -> Downloaded:
        validators = Validators.of(resp)
        encoded = resp.headers.get("Content-Encoding", "identity").lower() != "identity"
        if resp.status_code == 206:  # checked by _resumes(): continues the part exactly
            mode = "ab"
            hasher = hashlib.sha256()
            file_sha256(part, hasher)
            log.info("resuming %s at byte %d", url, offset)
        else:
            if offset:
                log.info("%s: server did not resume at byte %d; starting over", url, offset)
            mode, offset, hasher = "wb", 0, hashlib.sha256()
        length = resp.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() and not encoded else None
        total = offset + expected if expected is not None else None
        part.parent.mkdir(parents=True, exist_ok=True)
        _save_state(state_path, url, Validators() if encoded else validators)
        received = 0
        with open(part, mode) as f, progress_mod.bar(progress, total=total, desc=desc,
                                                     initial=offset) as bar:
            for chunk in _chunks(resp):
                f.write(chunk)
                hasher.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
        if expected is not None and received != expected:
            raise requests.exceptions.ChunkedEncodingError(
                f"{url}: got {received} of {expected} bytes")
        return Downloaded(hasher.hexdigest(), offset + received, validators)

    def _pause(self, url: str, attempt: int, error: Exception) -> int:
        """Sleep before the next attempt, or raise when the retries are spent."""
        opts = self.options
        if attempt >= opts.retries:
            if isinstance(error, _Retry):
                raise FetchError(f"{url}: HTTP {error.status} after {attempt + 1} attempts",
                                 url=url, status=error.status,
                                 hint="the server keeps failing; try again later or use "
                                      "another mirror") from None
            raise UnreachableError(f"cannot download {url} ({attempt + 1} attempts): {error}",
                              url=url, hint="check the network, the proxy variables "
                                            "(HTTP_PROXY, HTTPS_PROXY, NO_PROXY), or the mirror"
                              ) from error
        delay = min(opts.backoff * 2 ** attempt, opts.max_backoff)
        log.warning("%s: %s; retrying in %.1fs (%d/%d)", url,
                    f"HTTP {error.status}" if isinstance(error, _Retry) else error,
                    delay, attempt + 1, opts.retries)
        time.sleep(delay)
        return attempt + 1


def _chunks(resp: requests.Response) -> Iterator[bytes]:
    """The body as it arrives. Unlike ``iter_content``, a cut connection loses
    nothing already received (urllib3's ``read1``), so a resume starts right there."""
    raw = resp.raw
    if not hasattr(raw, "read1"):  # urllib3 < 2
        yield from resp.iter_content(64 * 1024)
        return
    try:
        while chunk := raw.read1(_CHUNK, decode_content=True):
            yield chunk
    except urllib3.exceptions.ReadTimeoutError as e:
        raise requests.Timeout(e) from e
    except (urllib3.exceptions.ProtocolError, urllib3.exceptions.SSLError, OSError) as e:
        raise requests.exceptions.ChunkedEncodingError(e) from e


def _check_status(resp: requests.Response, url: str) -> None:
    status = resp.status_code
    if status in (200, 206):
        return
    if status >= 500 or status in _RETRY_STATUS:
        raise _Retry(status)
    reason = resp.reason or ""
    if status == 404:
        hint = ("the mirror does not have this file: check the release, architecture, format "
                "and serial, or the mirror URL")
    elif status in (401, 403):
        hint = "access was refused: check the mirror URL, its permissions, or the proxy"
    else:
        hint = None
    raise FetchError(f"{url}: HTTP {status} {reason}".rstrip(), url=url, status=status, hint=hint)


def _resumes(resp: requests.Response, offset: int) -> bool:
    """Whether a 206 answer continues a part of ``offset`` bytes up to the end of the file."""
    unit, _, spec = resp.headers.get("Content-Range", "").strip().partition(" ")
    span, _, total = spec.partition("/")
    first, _, last = span.partition("-")
    if unit.lower() != "bytes" or not first.isdigit() or not last.isdigit():
        return False
    complete = not total.isdigit() or int(last) + 1 == int(total)
    return offset > 0 and int(first) == offset and complete


def _load_state(path: Path, url: str) -> Validators | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("url") != url:
        return None
    return Validators.load(data)


def _save_state(path: Path, url: str, validators: Validators) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"url": url, **validators.dump()}))
    os.replace(tmp, path)


def _discard(part: Path, state: Path) -> None:
    for p in (part, state):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def discard_part(part: Path) -> None:
    """Delete a partial download and its resume state."""
    _discard(part, part.with_name(part.name + ".json"))


def _read_file_url(url: str) -> bytes:
    path = file_url_path(url)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise FetchError(f"{url}: no such file", url=url, status=404,
                         hint="check the local mirror path") from None
    except OSError as e:
        raise FetchError(f"{url}: {e.strerror}", url=url) from e
