"""A MAAS region's API 2.0 (boot resources) on 127.0.0.1 for tests: MAAS 3.4, 3.6 or 3.8,
one region controller or several, over http or https.

It behaves like canonical/maas on the points maas_chroot relies on (files and functions
named are canonical/maas's; `forms` = ``src/maasserver/forms/__init__.py``, `api` =
``src/maasserver/api/boot_resources.py``):

* OAuth (``maasserver/api/auth.py`` + piston3's oauth server): PLAINTEXT signature
  ``&<token_secret>`` with an empty consumer secret; a timestamp older than 300 s and a
  reused nonce are refused with 401 and MAAS's text. No Authorization header: 401
  ``Forbidden`` (piston's ``rc.FORBIDDEN``).
* ``POST boot-resources/`` (``BootResourcesHandler.create``, ``BootResourceForm``):
  multipart (parts in ``Content-Transfer-Encoding: base64`` decoded, as Django's
  ``MultiPartParser`` does for the maas CLI) or urlencoded; ``clean_name`` strips
  ``custom/`` up to 3.7 and keeps it on 3.8 (e7eb692ff); reserved names; the
  architecture and filetype choices; ``clean_base_image`` (``LINUX_OSYSTEMS``, the
  region's distro-info releases, the commissioning default of each version); ``save``
  reuses the resource of the same name and architecture, keeps its first base_image,
  replaces its title, makes a set ``YYYYmmdd[.N]`` and deletes the older sets' files.
  3.4 only: a file whose sha256 is stored complete is complete at once (LargeFile).
  Form errors: 400 JSON ``{field: [msg]}``; the sha256/size conflict 400 text/plain.
* ``PUT boot-resources/<id>/upload/<file>/`` (``BootResourceFileUploadHandler.update``):
  "Missing data.", "Content-Length doesn't equal size of received data.", "Cannot upload
  to a complete file.", "Too much data received.", "Saved content does not match given
  SHA256 value."; 200 "OK". 3.8 appends to ``image-storage/<filename_on_disk>``, which
  files of one sha256 share (``SyncLocalBootResourceFile.append_chunk``).
* progress and complete: 3.4 ``LargeFile.progress`` (``total_size / size``, sic) and the
  set's ``100 * size / total_size``; 3.5+ summed over the region controllers
  (``sync_progress`` in ``models/bootresourcefile.py``, ``bootresourceset.py``). The
  other regions copy a file once it is complete: over ``sync_seconds``, or when the
  test calls :meth:`FakeMaas.sync`.
* ``GET|DELETE boot-resources/<id>/`` (DELETE of a missing id: 500, it uses ``.get``),
  ``GET boot-resources/[?type=]``, ``GET version/``, ``GET regioncontrollers/``,
  ``GET users/?op=whoami`` and the unsigned ``GET describe/`` the maas CLI's ``login``
  needs (:mod:`.maas_http`).
* the deploy-time lookups: :meth:`FakeMaas.get_resource_for`
  (``BootResourceManager.get_resource_for``), :meth:`FakeMaas.base_osystem_series`
  (``preseed.get_base_osystem_series``) and :meth:`FakeMaas.deploy`.
* ``max_body``: a reverse proxy's body limit (nginx answers 413 with an HTML page);
  ``redirect_to``: what the region's nginx does on http once TLS is on (``return 301
  https://$host:5443$request_uri``, the template of ``maas config-tls``).

Content lives in files on disk (all-zero chunks are stored as holes), never in memory.
``faults`` injects failures per PUT (0-based index of the PUT request).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import re
import ssl
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from maas_chroot import releases

PREFIX = "/MAAS/api/2.0/"
TIMESTAMP_THRESHOLD = 300
#: What ``GET version/`` says for each ``version=`` knob.
VERSIONS = {"3.4": "3.4.10", "3.6": "3.6.5", "3.8": "3.8.0~beta6"}
FILETYPE_VALUES = {   # upload filetype -> BOOT_RESOURCE_FILE_TYPE value (maasserver/enum.py)
    "tgz": "root-tgz", "tbz": "root-tbz", "txz": "root-txz", "ddtgz": "root-dd",
    "ddtar": "root-dd.tar", "ddraw": "root-dd.raw", "ddtbz": "root-dd.tar.bz2",
    "ddtxz": "root-dd.tar.xz", "ddbz2": "root-dd.bz2", "ddgz": "root-dd.gz",
    "ddxz": "root-dd.xz",
}
UPLOAD_FILENAMES = {"tgz": "root.tgz", "tbz": "root.tbz", "txz": "root.txz"}  # 3.5+
#: The (os, release) pairs of the maas.io stable stream this fake has synced into its
#: BootSourceCache; bootloaders have their bootloader-type as the release
#: (src/tests/fixtures/test_data/simplestreams_bootloaders.json in canonical/maas).
STREAM = (*(("ubuntu", r) for r in ("trusty", "xenial", "bionic", "focal", "jammy", "noble",
                                    "oracular", "plucky", "questing")),
          ("centos", "centos70"), ("centos", "8"),
          ("grub-efi-signed", "uefi"), ("grub-efi", "uefi"), ("grub-ieee1275", "open-firmware"),
          ("pxelinux", "pxe"))
#: Fault modes for ``faults={put_index: mode}``.
FAULTS = ("drop_before_store", "drop_after_store", "error500_after_store", "die")
#: OperatingSystemRegistry order, as "Unsupport operating system" lists it.
_OS_34 = ["ubuntu", "ubuntu-core", "bootloader", "centos", "rhel", "custom", "windows",
          "suse", "caringo", "esxi"]
_OS_35 = [o for o in _OS_34 if o != "caringo"] + ["ol"]


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
    synced: list[int]              # bytes held per region; [0] is the one we talk to
    hasher: Any = field(default_factory=hashlib.sha256)
    completed_at: float | None = None

    @property
    def stored(self) -> int:
        return self.synced[0]

    @property
    def complete(self) -> bool:
        """Stored whole, and verified, on the region we talk to."""
        return self.stored == self.size


@dataclass
class _Resource:
    id: int
    name: str
    architecture: str
    title: str
    base_image: str
    sets: dict[str, list[int]] = field(default_factory=dict)   # version -> file ids
    last_deployed: dt.datetime | None = None
    rtype: str = "Uploaded"   # BOOT_RESOURCE_TYPE_CHOICES_DICT: "Synced", "Uploaded"


class Stop(Exception):
    """Close the connection without an answer."""


class FakeMaas:
    """State and rules of the fake MAAS; use :func:`serve`."""

    def __init__(self, workdir: Path, *, version: str, regions: int,
                 architectures: tuple[str, ...], commissioning: str | None,
                 distro_info: tuple[str, ...] | None, sync_seconds: float | None,
                 max_body: int | None, faults: Mapping[int, str]) -> None:
        if version not in VERSIONS:
            raise ValueError(f"version {version!r}: one of {sorted(VERSIONS)}")
        self.workdir = workdir
        self.version = version
        self.series = tuple(int(p) for p in version.split("."))
        self.regions = 1 if self.series < (3, 5) else regions   # 3.4: one PostgreSQL store
        self.architectures = architectures
        self.commissioning = commissioning or {"3.4": "ubuntu/focal"}.get(version,
                                                                          "ubuntu/noble")
        self.distro_info = (tuple(releases.ubuntu_releases()) if distro_info is None
                            else distro_info)
        self.sync_seconds = sync_seconds
        self.max_body = max_body
        self.redirect_to: str | None = None    # e.g. "https://127.0.0.1:5443"
        self.faults = dict(faults)
        self.consumer_key = os.urandom(9).hex()
        self.token_key = os.urandom(9).hex()
        self.token_secret = os.urandom(16).hex()
        self.log: list[Logged] = []
        self.nonces: set[tuple[str, str, str]] = set()
        self.resources: dict[int, _Resource] = {}
        self.files: dict[int, _File] = {}
        self.puts = 0
        self.lock = threading.RLock()
        self.url = ""
        self.clock = time.time              # tests may shift the server's clock
        self.server: Any = None
        self._ids = iter(range(1, 1 << 30))

    @property
    def api_key(self) -> str:
        return f"{self.consumer_key}:{self.token_key}:{self.token_secret}"

    @property
    def reserved_names(self) -> set[str]:
        """forms ``_get_reserved_names``: every os/release of the synced stream, each part
        of it, and the registry's OS names."""
        pairs = [f"{o}/{r}" for o, r in STREAM]
        return {*pairs, *(p for pair in pairs for p in pair.split("/")),
                *self.supported_osystems}

    @property
    def supported_osystems(self) -> list[str]:
        return _OS_34 if self.series < (3, 5) else \
            _OS_35 + (["onie"] if self.series >= (3, 8) else [])

    # --- test helpers ------------------------------------------------------------------

    def add_synced(self, name: str, architecture: str = "amd64/generic") -> int:
        """A resource imported from the stream (``ubuntu/noble``), as MAAS lists it."""
        with self.lock:
            rid = next(self._ids)
            self.resources[rid] = _Resource(rid, name, architecture, "", "", rtype="Synced")
            return rid

    def resource_by_name(self, name: str) -> _Resource:
        """The resource stored as ``name`` exactly, else the one named so without custom/."""
        found = [r for r in self.resources.values() if r.name == name] or \
            [r for r in self.resources.values() if r.name == name.removeprefix("custom/")]
        if not found:
            raise KeyError(name)
        return found[0]

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

    def sync(self) -> None:
        """Let every other region controller finish its copy of every complete file."""
        with self.lock:
            for f in self.files.values():
                if f.complete:
                    f.synced = [f.size] * self.regions

    def kill(self) -> None:
        """Die: stop serving and close the listening socket (connections are refused)."""
        with self.lock:
            server, self.server = self.server, None
        if server is not None:
            server.shutdown()
            server.socket.close()

    # --- deploy time ---------------------------------------------------------------------

    def get_resource_for(self, osystem: str, architecture: str, subarchitecture: str,
                         series: str) -> _Resource | None:
        """``BootResourceManager.get_resource_for`` (models/bootresource.py): a custom
        release is looked up by ``name == series``."""
        name = series if osystem == "custom" else f"{osystem}/{series}"
        for r in self.resources.values():
            if r.name == name and r.architecture.startswith(architecture) and \
                    r.architecture.split("/")[1] == subarchitecture:
                return r
        return None

    def base_osystem_series(self, release: str, arch: str) -> str | None:
        """``preseed.get_base_osystem_series`` for ``custom/<release>``: the base image of
        the one resource named ``release`` (None where MAAS only logs a warning)."""
        found = [r for r in self.resources.values() if r.name == release
                 and r.architecture.startswith(f"{arch}/") and r.base_image]
        return found[0].base_image if len(found) == 1 else None

    def deploy(self, release: str, architecture: str = "amd64/generic") -> _Resource:
        """Deploy ``custom/<release>`` as MAAS would pick it, or raise LookupError."""
        arch, subarch = architecture.split("/")
        with self.lock:
            r = self.get_resource_for("custom", arch, subarch, release)
            if r is None or not self._complete_sets(r):
                raise LookupError("No image could be found for the given selection: "
                                  f"os=custom, arch={arch}, subarch={subarch}, "
                                  f"series={release}")
            r.last_deployed = dt.datetime.now(dt.timezone.utc)
            return r

    def _complete_sets(self, r: _Resource) -> list[str]:
        return [v for v, ids in r.sets.items()   # get_latest_complete_set: every region
                if ids and all(self._copies(self.files[i]) == self.regions * self.files[i].size
                               for i in ids)]

    # --- OAuth ----------------------------------------------------------------------------

    def check_auth(self, header: str | None) -> str | None:
        """None if the request is authorised, else MAAS's 401 text."""
        if not header:
            return "Forbidden"
        if not header.startswith("OAuth "):
            return "Authorization Error: Invalid API key."
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
        expected = "&" + quote(self.token_secret, safe="~")  # escape("") & escape(secret)
        if params.get("oauth_signature") != expected:
            return "Authorization Error: 'Invalid signature.'"  # (piston adds the base string)
        return None

    # --- JSON (boot_resource_to_dict and friends) -------------------------------------------

    def _copies(self, f: _File) -> int:
        """Bytes held over all regions; the others copy a complete file over sync_seconds."""
        if f.completed_at is not None and self.sync_seconds is not None and self.regions > 1:
            share = min(1.0, (time.monotonic() - f.completed_at) / max(self.sync_seconds, 1e-9))
            f.synced = [f.size] + [max(s, int(f.size * share)) for s in f.synced[1:]]
        return sum(f.synced)

    def _stamp(self, when: dt.datetime | None) -> str | None:
        """Django's JSON of a datetime: UTC "Z" on 3.8 (USE_TZ), naive local time before."""
        if when is None:
            return None
        if self.series >= (3, 8):
            return when.astimezone(dt.timezone.utc).isoformat(timespec="milliseconds") \
                .replace("+00:00", "Z")
        return when.astimezone().replace(tzinfo=None).isoformat(timespec="milliseconds")

    def resource_json(self, r: _Resource, *, with_sets: bool,
                      created: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {
            "id": r.id, "type": r.rtype, "name": r.name, "architecture": r.architecture,
            "resource_uri": f"{PREFIX}boot-resources/{r.id}/",
            "last_deployed": None if created else self._stamp(r.last_deployed),
            "subarches": r.architecture.split("/")[1], "title": r.title,
        }
        if r.base_image and self.series >= (3, 5):
            d["base_image"] = r.base_image
        if with_sets:
            d["sets"] = {}
            for version in sorted(r.sets, key=_vkey, reverse=True):
                files = [self.files[i] for i in r.sets[version] if i in self.files]
                total = sum(f.size for f in files)
                if self.series < (3, 5):
                    have, whole = sum(f.stored for f in files), total
                else:
                    have, whole = sum(self._copies(f) for f in files), total * self.regions
                sd: dict[str, Any] = {"version": version, "label": "uploaded", "size": total,
                                      "complete": bool(files) and have == whole}
                if not sd["complete"]:
                    sd["progress"] = 100.0 * have / whole if whole and have else 0
                sd["files"] = {f.filename: self.file_json(f) for f in files}
                d["sets"][version] = sd
        return d

    def file_json(self, f: _File) -> dict[str, Any]:
        d: dict[str, Any] = {"filename": f.filename, "filetype": FILETYPE_VALUES[f.filetype],
                             "sha256": f.sha256, "size": f.size}
        if self.series < (3, 5):
            d["complete"] = f.complete
            progress = f.size / float(f.stored) if f.stored > 0 else 0   # LargeFile.progress
        else:
            d["filename_on_disk"] = f.sha256[:7]
            copies = self._copies(f)
            d["complete"] = copies == f.size * self.regions
            progress = 100.0 * copies / (f.size * self.regions) if copies else 0.0
        if not d["complete"]:
            d["progress"] = progress
            d["upload_uri"] = f"{PREFIX}boot-resources/{f.resource_id}/upload/{f.id}/"
        return d

    # --- create (BootResourceForm) ---------------------------------------------------------

    def _clean_name(self, name: str, errors: dict[str, list[str]]) -> str:
        if "/" in name:
            osystem, release = name.split("/")     # ValueError for a/b/c: a 500, as MAAS
            if osystem == "custom" and self.series < (3, 8):
                name = release
            elif osystem not in self.supported_osystems:
                errors["name"] = [f"Unsupport operating system {osystem}, supported "
                                  f"operating systems: {self.supported_osystems}"]
        if name in self.reserved_names or re.search(r"^centos\d\d?$", name):
            errors["name"] = [f"{name} is a reserved name"]
        return name

    def _clean_base_image(self, data: Mapping[str, str], errors: dict[str, list[str]]) -> str:
        split = data.get("name", "").split("/")
        if len(split) > 1 and split[0] != "custom":
            return ""
        base = data.get("base_image", "")
        if not base:
            return ""           # save() fills in the existing resource's, or the default
        parts = base.lower().split("/")
        linux = ("ubuntu", "centos", "rhel") + (("ol",) if self.series >= (3, 5) else ())
        if len(parts) != 2:
            errors["base_image"] = ["a base image must follow the format: <osystem>/<series>"]
        elif parts[0] not in linux:
            errors["base_image"] = ["custom images require a valid non-custom OS type base "
                                    "image"]
        elif parts[0] == "ubuntu" and parts[1] not in self.distro_info:
            errors["base_image"] = ["please select a valid base image OS and version"]
        return "/".join(parts)

    def create(self, data: Mapping[str, str]) -> tuple[int, Any]:
        data = dict(data)
        data.setdefault("filetype", "tgz")
        errors: dict[str, list[str]] = {}
        name = data.get("name", "")
        if not name:
            errors["name"] = ["This field is required."]
        else:
            name = self._clean_name(name, errors)
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
        base = self._clean_base_image(data, errors)
        if errors:
            return 400, errors
        with self.lock:
            if any(f.sha256 == sha256 and f.size != size for f in self.files.values()):
                return 400, "File already exists with sha256 that is of different size."
            res = next((r for r in self.resources.values()
                        if r.name == name and r.architecture == arch), None)
            if res is None:
                res = _Resource(next(self._ids), name, arch, "", "")
                self.resources[res.id] = res
            res.title = data.get("title", "")              # extra is replaced
            if not res.base_image:                         # the first base image wins
                split = name.split("/")
                res.base_image = base or ("" if len(split) > 1 and split[0] != "custom"
                                          else self.commissioning)
            now = time.gmtime if self.series >= (3, 8) else time.localtime   # USE_TZ
            version = time.strftime("%Y%m%d", now(self.clock()))
            same_day = [v for v in res.sets if v.split(".")[0] == version]
            if same_day:
                version += f".{max(int(v.partition('.')[2] or 0) for v in same_day) + 1}"
            rfile = self._new_file(res, version, data["filetype"], sha256, size)
            self.files[rfile.id] = rfile
            for old in [i for ids in res.sets.values() for i in ids]:   # keep_old=False
                self._forget(self.files.pop(old))
            res.sets = {v: [] for v in res.sets}
            res.sets[version] = [rfile.id]
            return 201, self.resource_json(res, with_sets=True, created=True)

    def _new_file(self, res: _Resource, version: str, filetype: str, sha256: str,
                  size: int) -> _File:
        fid = next(self._ids)
        filename = (FILETYPE_VALUES[filetype] if self.series < (3, 5) else
                    UPLOAD_FILENAMES.get(filetype, FILETYPE_VALUES[filetype]))
        # 3.8: image-storage/<filename_on_disk>, shared by the files of one sha256
        path = self.workdir / (sha256[:7] if self.series >= (3, 8) else f"file-{fid}")
        rfile = _File(fid, res.id, version, filename, filetype, sha256, size, path,
                      synced=[0] * self.regions)
        twin = next((f for f in self.files.values() if f.sha256 == sha256
                     and f.complete), None)
        if self.series < (3, 5) and twin is not None:   # the LargeFile is reused: complete
            _copy_sparse(twin.path, rfile.path)
            rfile.synced = [size]
        elif self.series < (3, 8):
            rfile.path.touch()
        return rfile

    def _forget(self, f: _File) -> None:
        """Delete a file row; its disk file goes unless another row shares it (3.8)."""
        if not any(o.path == f.path for o in self.files.values() if o is not f):
            f.path.unlink(missing_ok=True)

    def delete(self, rid: int) -> tuple[int, Any]:
        with self.lock:
            if rid not in self.resources:
                return 500, "BootResource matching query does not exist."
            res = self.resources.pop(rid)
            for ids in res.sets.values():
                for i in ids:
                    self._forget(self.files.pop(i))
        return 204, ""

    # --- PUT (BootResourceFileUploadHandler.update) ----------------------------------------

    def put_chunk(self, rid: int, fid: int, length: int | None, read: Any) -> tuple[int, Any]:
        with self.lock:
            index = self.puts
            self.puts += 1
        fault = self.faults.get(index)
        if fault in ("die", "drop_before_store"):
            if fault == "die":
                self.kill()
            raise Stop
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
            answer = self._store(f, data)
            if answer is not None:
                return 400, answer
        if fault == "drop_after_store":
            raise Stop
        if fault == "error500_after_store":
            return 500, "Internal server error."
        return 200, "OK"

    def _store(self, f: _File, data: bytes) -> str | None:
        """Append ``data`` as the version does; None, or the 400 message."""
        at = f.stored
        if self.series >= (3, 8):        # append_chunk: "ab" mode on the shared file
            at = f.path.stat().st_size if f.path.exists() else 0
            if at + len(data) > f.size:
                f.path.unlink(missing_ok=True)
                return "Too much data received."
        elif at + len(data) > f.size:
            return "Too much data received."
        hasher = f.hasher.copy()
        hasher.update(data)
        last = f.stored + len(data) == f.size
        if last and hasher.hexdigest() != f.sha256 and self.series < (3, 8):
            return "Saved content does not match given SHA256 value."   # rolled back
        with open(f.path, "r+b" if f.path.exists() else "wb") as fh:
            if data.count(0) == len(data):
                fh.truncate(max(at + len(data), os.fstat(fh.fileno()).st_size))
            else:
                fh.seek(at)
                fh.write(data)
        if last and hasher.hexdigest() != f.sha256:
            return "Saved content does not match given SHA256 value."   # 3.8: bytes stay
        f.synced[0] += len(data)
        f.hasher = hasher
        if last:
            f.completed_at = time.monotonic()
        return None


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


@contextlib.contextmanager
def serve(workdir: str | os.PathLike[str] | None = None, *, version: str = "3.6",
          regions: int = 1, sync_seconds: float | None = None,
          architectures: tuple[str, ...] = ("amd64/generic", "amd64/hwe-24.04",
                                            "arm64/generic"),
          commissioning: str | None = None, distro_info: tuple[str, ...] | None = None,
          max_body: int | None = None, tls: tuple[Path, Path] | None = None,
          faults: Mapping[int, str] | None = None) -> Iterator[FakeMaas]:
    """Run a fake MAAS ``version`` on 127.0.0.1; yields it with ``.url``
    (``http[s]://127.0.0.1:P/MAAS``), ``.api_key``, ``.content(name)``/``.path(name)``,
    ``.log``/``.requests(method)``. ``tls``: (certificate, key) to serve https.
    ``regions``: region controllers (3.5+), whose copies are made over ``sync_seconds``
    or, when that is None, when the test calls ``.sync()``."""
    from .maas_http import Handler, Server

    for mode in (faults or {}).values():
        if mode not in FAULTS:
            raise ValueError(f"unknown fault {mode!r}; one of {FAULTS}")
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="fake-maas-"))
        Path(workdir).mkdir(parents=True, exist_ok=True)
        fake = FakeMaas(Path(workdir), version=version, regions=regions,
                        architectures=architectures, commissioning=commissioning,
                        distro_info=distro_info, sync_seconds=sync_seconds, max_body=max_body,
                        faults=faults or {})
        server = Server(("127.0.0.1", 0), Handler)
        scheme = "http"
        if tls is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            server.socket = ctx.wrap_socket(server.socket, server_side=True,
                                            do_handshake_on_connect=False)
            scheme = "https"
        server.fake = fake
        fake.server = server
        stack.callback(server.server_close)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                  name="fake-maas", daemon=True)
        thread.start()
        try:
            fake.url = f"{scheme}://127.0.0.1:{server.server_address[1]}/MAAS"
            yield fake
        finally:
            server.shutdown()
            thread.join(timeout=10)
