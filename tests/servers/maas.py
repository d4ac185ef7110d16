"""A MAAS 3.x API 2.0 boot-resources server on 127.0.0.1 for tests.

It behaves like MAAS on the points maas_chroot relies on (canonical/maas):

* OAuth (``maasserver/api/auth.py`` + piston3's oauth server): PLAINTEXT signature
  ``&<token_secret>`` with an empty consumer secret; a timestamp older than 300 s and
  a reused nonce are refused with 401 and MAAS's text, e.g. ``Authorization Error:
  'Expired timestamp: given 1 and now 2 has a greater difference than threshold 300'``.
  Timestamp and nonce are checked (and the nonce recorded) before the signature.
* ``POST boot-resources/`` (``BootResourcesHandler.create`` + ``BootResourceForm``):
  multipart or urlencoded fields; name rules and messages ("focal is a reserved
  name"), architecture choice, filetype choice, sha256 length, base_image rules; an
  existing (name, architecture) resource gets a new set ``YYYYmmdd[.N]`` and loses its
  old files; a file whose sha256 is already stored complete is complete at once.
  201 with ``boot_resource_to_dict(with_sets=True)``.
* ``GET boot-resources/[?type=]``, ``GET|DELETE boot-resources/<id>/``.
* ``PUT boot-resources/<id>/upload/<file>/`` (``BootResourceFileUploadHandler.update``):
  "Missing data.", "Content-Length doesn't equal size of received data.", "Cannot
  upload to a complete file.", "Too much data received.", the chunk is appended at the
  stored size, and the sha256 is checked when the last byte arrives ("Saved content
  does not match given SHA256 value."). 200 "OK". Incomplete files report ``progress``.

Content lives in temp files on disk (all-zero chunks are stored as holes), never in
memory. ``faults`` injects failures per PUT (0-based index of the PUT request).
"""

from __future__ import annotations

import contextlib
import email.parser
import email.policy
import hashlib
import json
import os
import re
import socket
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from maas_chroot import releases
from maas_chroot.maas import names as _maasnames

PREFIX = "/MAAS/api/2.0/"
TIMESTAMP_THRESHOLD = 300
FILETYPE_VALUES = {   # upload filetype -> BOOT_RESOURCE_FILE_TYPE value (maasserver/enum.py)
    "tgz": "root-tgz", "tbz": "root-tbz", "txz": "root-txz", "ddtgz": "root-dd",
    "ddtar": "root-dd.tar", "ddraw": "root-dd.raw", "ddtbz": "root-dd.tar.bz2",
    "ddtxz": "root-dd.tar.xz", "ddbz2": "root-dd.bz2", "ddgz": "root-dd.gz",
    "ddxz": "root-dd.xz",
}
UPLOAD_FILENAMES = {"tgz": "root.tgz", "tbz": "root.tbz", "txz": "root.txz"}
#: Fault modes for ``faults={put_index: mode}``.
FAULTS = ("drop_before_store", "drop_after_store", "error500_after_store", "die")


@dataclass
class Logged:
    method: str
    path: str
    status: int
    content_length: int
    authorization: str | None
    time: float


@dataclass
class _File:
    id: int
    resource_id: int
    version: str
    filename: str
    filetype: str
    sha256: str
    size: int
    path: Path
    stored: int = 0
    hasher: Any = field(default_factory=hashlib.sha256)

    @property
    def complete(self) -> bool:
        return self.stored == self.size


@dataclass
class _Resource:
    id: int
    name: str
    architecture: str
    title: str
    base_image: str
    sets: dict[str, list[int]] = field(default_factory=dict)   # version -> file ids


class _Stop(Exception):
    """Close the connection without an answer."""


class FakeMaas:
    """State of the fake MAAS; use :func:`serve`."""

    def __init__(self, workdir: Path, *, architectures: tuple[str, ...],
                 commissioning: str, faults: Mapping[int, str]) -> None:
        self.workdir = workdir
        self.architectures = architectures
        self.commissioning = commissioning
        self.faults = dict(faults)
        self.consumer_key = os.urandom(9).hex()
        self.token_key = os.urandom(9).hex()
        self.token_secret = os.urandom(16).hex()
        self.log: list[Logged] = []
        self.nonces: set[tuple[str, str, str]] = set()
        self.resources: dict[int, _Resource] = {}
        self.files: dict[int, _File] = {}
        self.puts = 0
        self.lock = threading.Lock()
        self.url = ""
        self.clock = time.time              # tests may shift the server's clock
        self._server: ThreadingHTTPServer | None = None
        self._ids = iter(range(1, 1 << 30))

    @property
    def api_key(self) -> str:
        return f"{self.consumer_key}:{self.token_key}:{self.token_secret}"

    # --- test helpers ------------------------------------------------------------------

    def resource_by_name(self, name: str) -> _Resource:
        bare = name.removeprefix("custom/")
        for r in self.resources.values():
            if r.name == bare:
                return r
        raise KeyError(name)

    def file_of(self, name: str) -> _File:
        r = self.resource_by_name(name)
        return self.files[r.sets[max(r.sets, key=_vkey)][0]]

    def path(self, name: str) -> Path:
        """The stored bytes of the newest file of resource ``name``."""
        return self.file_of(name).path

    def content(self, name: str) -> bytes:
        f = self.file_of(name)
        with open(f.path, "rb") as fh:
            return fh.read(f.stored)

    def requests(self, method: str | None = None) -> list[Logged]:
        return [e for e in self.log if method is None or e.method == method]

    def kill(self) -> None:
        """Die: stop serving and close the listening socket (connections are refused)."""
        with self.lock:
            server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.socket.close()

    # --- OAuth ----------------------------------------------------------------------------

    def check_auth(self, header: str | None) -> str | None:
        """None if the request is authorised, else MAAS's 401 text."""
        if not header or not header.startswith("OAuth "):
            return "Authorization Error: Invalid API key."   # no/other auth: not MAAS's key
        params = {k: unquote(v) for k, v in re.findall(r'(\w+)="([^"]*)"', header)}
        if params.get("oauth_version", "1.0") != "1.0":
            return f"Authorization Error: 'OAuth version {params['oauth_version']} not supported.'"
        if params.get("oauth_consumer_key") != self.consumer_key:
            return "Authorization Error: Invalid API key."
        token = params.get("oauth_token", "")
        if token != self.token_key:
            return f"Authorization Error: 'Invalid access token: {token}'"
        try:
            timestamp = int(params.get("oauth_timestamp", ""))
        except ValueError:
            return "Authorization Error: 'Missing OAuth parameter: oauth_timestamp'"
        now = int(self.clock())
        if now - timestamp > TIMESTAMP_THRESHOLD:
            return (f"Authorization Error: 'Expired timestamp: given {timestamp} and now {now} "
                    f"has a greater difference than threshold {TIMESTAMP_THRESHOLD}'")
        nonce = params.get("oauth_nonce", "")
        key = (self.consumer_key, token, nonce)
        with self.lock:
            if not nonce or key in self.nonces:
                return f"Authorization Error: 'Nonce already used: {nonce}'"
            self.nonces.add(key)
        if params.get("oauth_signature_method") != "PLAINTEXT":
            return (f"Authorization Error: 'Signature method "
                    f"{params.get('oauth_signature_method')} not supported try one of the "
                    "following: PLAINTEXT'")
        expected = "&" + _escape(self.token_secret)    # escape("") & escape(token_secret)
        if params.get("oauth_signature") != expected:
            return "Authorization Error: 'Invalid signature.'"  # (piston adds the base string)
        return None

    # --- API --------------------------------------------------------------------------

    def resource_json(self, r: _Resource, *, with_sets: bool) -> dict[str, Any]:
        d: dict[str, Any] = {
            "id": r.id, "type": "Uploaded", "name": r.name, "architecture": r.architecture,
            "resource_uri": f"{PREFIX}boot-resources/{r.id}/", "last_deployed": None,
            "subarches": r.architecture.split("/")[1], "title": r.title,
        }
        if r.base_image:
            d["base_image"] = r.base_image
        if with_sets:
            d["sets"] = {}
            for version in sorted(r.sets, key=_vkey, reverse=True):
                files = [self.files[i] for i in r.sets[version] if i in self.files]
                total = sum(f.size for f in files)
                stored = sum(f.stored for f in files)
                sd: dict[str, Any] = {"version": version, "label": "uploaded", "size": total,
                                      "complete": total == stored}
                if not sd["complete"]:
                    sd["progress"] = 100.0 * stored / total
                sd["files"] = {f.filename: self.file_json(f) for f in files}
                d["sets"][version] = sd
        return d

    def file_json(self, f: _File) -> dict[str, Any]:
        d: dict[str, Any] = {"filename": f.filename, "filetype": FILETYPE_VALUES[f.filetype],
                             "sha256": f.sha256, "filename_on_disk": f.sha256[:7],
                             "size": f.size, "complete": f.complete}
        if not f.complete:
            d["progress"] = 100.0 * f.stored / f.size
            d["upload_uri"] = f"{PREFIX}boot-resources/{f.resource_id}/upload/{f.id}/"
        return d

    def create(self, data: Mapping[str, str]) -> tuple[int, Any]:
        data = dict(data)
        data.setdefault("filetype", "tgz")
        errors: dict[str, list[str]] = {}
        name = data.get("name", "")
        if not name:
            errors["name"] = ["This field is required."]
        elif name.count("/") > 1:
            # MAAS: `osystem, release = name.split("/")` raises ValueError -> HTTP 500
            return 500, "ValueError: too many values to unpack (expected 2)"
        else:
            if "/" in name:
                osystem, release = name.split("/")
                if osystem == "custom":
                    name = release
                elif osystem not in _maasnames.RESERVED_OS_NAMES:
                    errors["name"] = [
                        f"Unsupport operating system {osystem}, supported operating "
                        f"systems: {sorted(_maasnames.RESERVED_OS_NAMES)}"]
            if (name in releases.ubuntu_releases() or name in _maasnames.RESERVED_OS_NAMES
                    or re.search(r"^centos\d\d?$", name)):
                errors["name"] = [f"{name} is a reserved name"]
        arch = data.get("architecture", "")
        if arch not in self.architectures:
            errors["architecture"] = [
                f"'{arch}' is not a valid architecture.  It should be one of: "
                + ", ".join(f"'{a}'" for a in self.architectures) + "."]
        if data["filetype"] not in FILETYPE_VALUES:
            errors["filetype"] = [f"Select a valid choice. {data['filetype']} is not one of "
                                  "the available choices."]
        sha256 = data.get("sha256", "")
        if len(sha256) != 64:
            errors["sha256"] = ["This field is required." if not sha256 else
                                f"Ensure this value has at least 64 characters "
                                f"(it has {len(sha256)})."]
        try:
            size = int(data.get("size", ""))
        except ValueError:
            errors["size"] = ["Enter a whole number."]
            size = 0
        base = data.get("base_image", "")
        if base:
            parts = base.lower().split("/")
            if len(parts) != 2:
                errors["base_image"] = ["a base image must follow the format: "
                                        "<osystem>/<series>"]
            elif parts[0] not in _maasnames.BASE_IMAGE_OSYSTEMS:
                errors["base_image"] = ["custom images require a valid non-custom OS type "
                                        "base image"]
            else:
                base = "/".join(parts)
        else:
            base = self.commissioning
        if errors:
            return 400, errors
        with self.lock:
            if any(f.sha256 == sha256 and f.size != size for f in self.files.values()):
                return 400, {"__all__": ["File already exists with sha256 that is of "
                                         "different size."]}
            res = next((r for r in self.resources.values()
                        if r.name == name and r.architecture == arch), None)
            if res is None:
                res = _Resource(next(self._ids), name, arch, data.get("title", ""), base)
                self.resources[res.id] = res
            else:
                res.title = data.get("title", res.title)
            version = time.strftime("%Y%m%d", time.gmtime(self.clock()))
            same_day = [v for v in res.sets if v.split(".")[0] == version]
            if same_day:
                version += f".{max(int(v.partition('.')[2] or 0) for v in same_day) + 1}"
            fid = next(self._ids)
            rfile = _File(fid, res.id, version,
                          UPLOAD_FILENAMES.get(data["filetype"],
                                               FILETYPE_VALUES[data["filetype"]]),
                          data["filetype"], sha256, size, self.workdir / f"file-{fid}")
            rfile.path.touch()
            twin = next((f for f in self.files.values() if f.sha256 == sha256 and f.complete),
                        None)
            if twin is not None:          # the content is stored already: complete at once
                _copy_sparse(twin.path, rfile.path)
                rfile.stored = size
            for old in [i for ids in res.sets.values() for i in ids]:   # keep_old=False
                self.files.pop(old).path.unlink(missing_ok=True)
            res.sets = {v: [] for v in res.sets}
            res.sets[version] = [fid]
            self.files[fid] = rfile
            return 201, self.resource_json(res, with_sets=True)

    def put_chunk(self, rid: int, fid: int, length: int | None, read: Any) -> tuple[int, Any]:
        with self.lock:
            index = self.puts
            self.puts += 1
        fault = self.faults.get(index)
        if fault in ("die", "drop_before_store"):
            if fault == "die":
                self.kill()
            raise _Stop
        if not length:
            return 400, "Missing data."
        data = read(length)
        if length != len(data):
            return 400, "Content-Length doesn't equal size of received data."
        with self.lock:
            if rid not in self.resources or fid not in self.files:
                return 404, "No BootResourceFile matches the given query."
            f = self.files[fid]
            if f.complete:
                return 400, "Cannot upload to a complete file."
            if f.stored + length > f.size:
                return 400, "Too much data received."
            hasher = f.hasher.copy()
            hasher.update(data)
            if f.stored + length == f.size and hasher.hexdigest() != f.sha256:
                return 400, "Saved content does not match given SHA256 value."
            with open(f.path, "r+b") as fh:
                if data.count(0) == len(data):
                    fh.truncate(max(f.stored + length, os.fstat(fh.fileno()).st_size))
                else:
                    fh.seek(f.stored)
                    fh.write(data)
            f.stored += length
            f.hasher = hasher
        if fault == "drop_after_store":
            raise _Stop
        if fault == "error500_after_store":
            return 500, "Internal server error."
        return 200, "OK"


def _escape(s: str) -> str:
    return quote(s, safe="~")


def _vkey(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


def _copy_sparse(src: Path, dst: Path) -> None:
    with open(src, "rb") as a, open(dst, "wb") as b:
        while chunk := a.read(1 << 22):
            if chunk.count(0) == len(chunk):
                b.seek(len(chunk), os.SEEK_CUR)
            else:
                b.write(chunk)
        b.truncate()


def _form(content_type: str, body: bytes) -> dict[str, str]:
    if content_type.startswith("multipart/form-data"):
        msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
        out = {}
        for part in msg.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if isinstance(name, str):
                payload = part.get_payload(decode=True)
                out[name] = payload.decode() if isinstance(payload, bytes) else ""
        return out
    return {k: v[-1] for k, v in parse_qs(body.decode()).items()}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True      # headers and body go out in two writes
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self, status: int, payload: Any, *, extra: Mapping[str, str] = {}) -> None:
        if isinstance(payload, (dict, list)):
            body, ctype = json.dumps(payload).encode(), "application/json; charset=utf-8"
        else:
            body, ctype = str(payload).encode(), "text/plain; charset=utf-8"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in extra.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _handle(self) -> None:
        fake = self.server.fake
        url = urlsplit(self.path)
        length_header = self.headers.get("Content-Length")
        length = int(length_header) if length_header and length_header.isdigit() else None

        def record(status: int) -> None:   # logged before the client can see the answer
            fake.log.append(Logged(self.command, self.path, status, length or 0,
                                   self.headers.get("Authorization"), time.time()))

        try:
            denied = fake.check_auth(self.headers.get("Authorization"))
            if denied is not None:
                self._drain(length)
                record(401)
                self._answer(401, denied, extra={"WWW-Authenticate": 'OAuth realm="OAuth"'})
                return
            try:
                status, payload = self._route(fake, url.path, parse_qs(url.query), length)
            except (_Stop, OSError):
                raise
            except Exception as e:          # a bug here shows as MAAS shows its own: 500
                status, payload = 500, f"{type(e).__name__}: {e}"
            record(status)
            self._answer(status, payload)
        except _Stop:
            record(-1)
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

    def _drain(self, length: int | None) -> None:
        left = length or 0
        while left > 0:
            got = self.rfile.read(min(left, 1 << 20))
            if not got:
                break
            left -= len(got)

    def _route(self, fake: FakeMaas, path: str, query: Mapping[str, list[str]],
               length: int | None) -> tuple[int, Any]:
        if not path.startswith(PREFIX):
            self._drain(length)
            return 404, "Not Found"
        parts = path[len(PREFIX):].strip("/").split("/")
        method = self.command
        if parts[0] != "boot-resources":
            self._drain(length)
            return 404, "Not Found"
        if method == "PUT" and len(parts) == 4 and parts[2] == "upload":
            return fake.put_chunk(int(parts[1]), int(parts[3]), length, self.rfile.read)
        body = self.rfile.read(length) if length else b""
        if len(parts) == 1:
            if method == "GET":
                rtype = query.get("type", ["all"])[-1]
                if rtype not in ("all", "uploaded", "synced"):
                    return 400, (f"'{rtype}' is not a valid boot resource type. Available "
                                 "types: ['synced', 'uploaded']")
                items = [] if rtype == "synced" else list(fake.resources.values())
                return 200, [fake.resource_json(r, with_sets=False)
                             for r in sorted(items, key=lambda r: (r.name, r.architecture))]
            if method == "POST":
                return fake.create(_form(self.headers.get("Content-Type", ""), body))
            return 405, "Method Not Allowed"
        try:
            rid = int(parts[1])
        except ValueError:
            return 404, "Not Found"
        if rid not in fake.resources:
            return 404, "No BootResource matches the given query."
        if method == "GET":
            return 200, fake.resource_json(fake.resources[rid], with_sets=True)
        if method == "DELETE":
            with fake.lock:
                res = fake.resources.pop(rid)
                for ids in res.sets.values():
                    for i in ids:
                        fake.files.pop(i).path.unlink(missing_ok=True)
            return 204, ""
        return 405, "Method Not Allowed"

    do_GET = do_POST = do_PUT = do_DELETE = _handle


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeMaas


@contextlib.contextmanager
def serve(workdir: str | os.PathLike[str] | None = None, *,
          architectures: tuple[str, ...] = ("amd64/generic", "amd64/hwe-24.04",
                                            "arm64/generic"),
          commissioning: str = "ubuntu/noble",
          faults: Mapping[int, str] | None = None) -> Iterator[FakeMaas]:
    """Run a fake MAAS on 127.0.0.1; yields it with ``.url`` (``http://127.0.0.1:P/MAAS``),
    ``.api_key``, ``.content(name)``/``.path(name)``, ``.log``/``.requests(method)``."""
    for mode in (faults or {}).values():
        if mode not in FAULTS:
            raise ValueError(f"unknown fault {mode!r}; one of {FAULTS}")
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="fake-maas-"))
        Path(workdir).mkdir(parents=True, exist_ok=True)
        fake = FakeMaas(Path(workdir), architectures=architectures,
                        commissioning=commissioning, faults=faults or {})
        server = _Server(("127.0.0.1", 0), _Handler)
        server.fake = fake
        fake._server = server
        stack.callback(server.server_close)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                  name="fake-maas", daemon=True)
        thread.start()
        try:
            fake.url = f"http://127.0.0.1:{server.server_address[1]}/MAAS"
            yield fake
        finally:
            server.shutdown()
            thread.join(timeout=10)
