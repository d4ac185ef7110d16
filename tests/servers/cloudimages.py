"""A cloud-images.ubuntu.com look-alike for tests: a real tree, a real GPG key, a real HTTP server.

    from servers.cloudimages import serve_cloud_images

    with serve_cloud_images(tmp_path) as site:   # or rootfs_tar=<a rootfs .tar>
        src = site.source("noble")                # = cloud_image("noble", mirror=site.mirror)
        path = mc.fetch(src, keyring=site.keyring, cache_dir=tmp_path / "cache")
        print(site.log.lines())                   # GET /releases/noble/release/... -> 200 ...

The tree is laid out like the real mirror, for each release, architecture and format::

    releases/<codename>/release-<serial>/ubuntu-<version>-server-cloudimg-<arch>.squashfs
                                        /ubuntu-<version>-server-cloudimg-<arch>-root.tar.xz
                                        /SHA256SUMS, SHA256SUMS.gpg (+ .manifest decoys)
    releases/<codename>/release -> release-<serial>
    <codename>/<daily serial>/<codename>-server-cloudimg-<arch>.squashfs  (and -root.tar.xz)
    <codename>/current -> <daily serial>

SHA256SUMS is signed (armored detached signature) by a throwaway ed25519 key made
in a private GNUPGHOME; ``site.keyring`` is that key exported for gpgv, and
``site.other_keyring`` a second, unrelated key (``site.sign(dir, key="other")``).

The server (127.0.0.1, an ephemeral port, stopped on exit) serves files with
ETag/Last-Modified, honours If-None-Match/If-Modified-Since (304), Range and
If-Range (206/416), logs every request (method, path, Range, status, bytes
sent), publishes new release serials (``site.publish("20260201")``), and injects faults on
demand: ``site.fail(path, 500)``,
``site.cut_after(path, n)``, ``site.ignore_range(path)``, ``site.hold(path)``.
"""

from __future__ import annotations

import atexit
import contextlib
import email.utils
import hashlib
import http.server
import io
import lzma
import os
import random
import shutil
import socket
import subprocess
import tarfile
import tempfile
import threading
import urllib.parse
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock

from maas_chroot import releases as _releases
from maas_chroot import sources

GPG_UID_MAIN = "maas-chroot test signing key <signing@example.invalid>"
GPG_UID_OTHER = "maas-chroot unrelated key <other@example.invalid>"
SERIAL = "20260101"
DAILY_SERIAL = "20260102"
_CHUNK = 64 * 1024


# ---------------------------------------------------------------- request log

@dataclass(frozen=True)
class LogEntry:
    method: str
    path: str
    status: int
    sent: int  # body bytes actually written
    range: str | None = None
    if_range: str | None = None
    if_none_match: str | None = None
    if_modified_since: str | None = None
    via: str | None = None  # the Via/X-Forwarded-For hint of a proxy, if any

    def __str__(self) -> str:
        extra = ""
        if self.range:
            extra += f" Range: {self.range}"
        if self.if_range:
            extra += f" If-Range: {self.if_range}"
        if self.if_none_match:
            extra += f" If-None-Match: {self.if_none_match}"
        if self.if_modified_since:
            extra += f" If-Modified-Since: {self.if_modified_since}"
        return f"{self.method} {self.path} -> {self.status} ({self.sent} bytes){extra}"


class RequestLog:
    """Thread-safe list of :class:`LogEntry`, in the order responses finished.

    Reading it waits (up to 10 s) for requests still being answered, so a client
    that has its response never races the server thread writing the entry.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._entries: list[LogEntry] = []
        self._busy = 0

    def begin(self) -> None:
        with self._cond:
            self._busy += 1

    def end(self) -> None:
        with self._cond:
            self._busy -= 1
            self._cond.notify_all()

    def add(self, entry: LogEntry) -> None:
        with self._cond:
            self._entries.append(entry)

    def entries(self, path: str | None = None) -> list[LogEntry]:
        with self._cond:
            self._cond.wait_for(lambda: self._busy == 0, timeout=10)
            items = list(self._entries)
        if path is None:
            return items
        want = _path_of(path)
        return [e for e in items if e.path == want]

    def clear(self) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._busy == 0, timeout=10)
            self._entries.clear()

    def lines(self) -> str:
        return "\n".join(str(e) for e in self.entries())

    def __iter__(self) -> Iterator[LogEntry]:
        return iter(self.entries())

    def __len__(self) -> int:
        return len(self.entries())


def _path_of(path_or_url: str) -> str:
    parsed = urllib.parse.urlsplit(path_or_url)
    path = parsed.path if parsed.scheme else path_or_url.split("?", 1)[0]
    return "/" + path.lstrip("/")


# ---------------------------------------------------------------- faults

@dataclass
class _Fault:
    kind: str  # "fail" | "cut" | "ignore_range" | "hold"
    times: int | None  # None: forever
    status: int = 500
    nbytes: int = 0
    event: threading.Event = field(default_factory=threading.Event)
    arrived: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class Hold:
    """A held response: ``arrived`` is set when the request comes in; ``release()`` sends it."""

    arrived: threading.Event
    _go: threading.Event

    def release(self) -> None:
        self._go.set()


class _Faults:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_path: dict[str, list[_Fault]] = {}

    def add(self, path: str, fault: _Fault) -> None:
        with self._lock:
            self._by_path.setdefault(_path_of(path), []).append(fault)

    def take(self, path: str, kind: str) -> _Fault | None:
        with self._lock:
            for fault in self._by_path.get(path, []):
                if fault.kind == kind and (fault.times is None or fault.times > 0):
                    if fault.times is not None:
                        fault.times -= 1
                    return fault
        return None

    def clear(self) -> None:
        with self._lock:
            for faults in self._by_path.values():
                for f in faults:
                    f.event.set()
            self._by_path.clear()


# ---------------------------------------------------------------- server

class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, root: Path, log: RequestLog, faults: _Faults) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root = root.resolve()
        self.log = log
        self.faults = faults


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_HEAD(self) -> None:
        self.server.log.begin()
        try:
            self._serve(body=False)
        finally:
            self.server.log.end()

    def do_GET(self) -> None:
        self.server.log.begin()
        try:
            self._serve(body=True)
        finally:
            self.server.log.end()

    def _record(self, status: int, sent: int) -> None:
        h = self.headers
        self.server.log.add(LogEntry(
            method=self.command, path=_path_of(self.path), status=status, sent=sent,
            range=h.get("Range"), if_range=h.get("If-Range"),
            if_none_match=h.get("If-None-Match"), if_modified_since=h.get("If-Modified-Since"),
            via=h.get("Via")))

    def _simple(self, status: int, text: str = "") -> None:
        data = (text or f"{status}\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        self._record(status, len(data) if self.command != "HEAD" else 0)

    def _file(self, path: str) -> Path | None:
        rel = urllib.parse.unquote(path).lstrip("/")
        if any(p in ("..", ".") for p in rel.split("/")):
            return None
        target = (self.server.root / rel).resolve()
        if not target.is_relative_to(self.server.root) or not target.is_file():
            return None
        return target

    def _serve(self, *, body: bool) -> None:
        path = _path_of(self.path)
        faults = self.server.faults
        fail = faults.take(path, "fail")
        if fail is not None:
            self._simple(fail.status)
            return
        target = self._file(path)
        if target is None:
            self._simple(404, f"not found: {path}\n")
            return
        st = target.stat()
        size = st.st_size
        etag = f'"{size:x}-{st.st_mtime_ns:x}"'
        last_modified = email.utils.formatdate(st.st_mtime, usegmt=True)
        if self._not_modified(etag, int(st.st_mtime)):
            self.send_response(304)
            self.send_header("ETag", etag)
            self.send_header("Last-Modified", last_modified)
            self.end_headers()
            self._record(304, 0)
            return
        start, end = 0, size
        status = 200
        rng = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if rng and faults.take(path, "ignore_range") is None and (
                if_range is None or if_range in (etag, last_modified)):
            parsed = _parse_range(rng, size)
            if parsed is None:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                self._record(416, 0)
                return
            start, end = parsed
            status = 206
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start))
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", last_modified)
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        self.end_headers()
        sent = 0
        if body:
            hold = faults.take(path, "hold")
            if hold is not None:
                self.wfile.flush()
                hold.arrived.set()
                hold.event.wait(timeout=60)
            cut = faults.take(path, "cut")
            limit = end - start if cut is None else min(cut.nbytes, end - start)
            with open(target, "rb") as f:
                f.seek(start)
                while sent < limit:
                    chunk = f.read(min(_CHUNK, limit - sent))
                    if not chunk:
                        break
                    try:
                        self.wfile.write(chunk)
                    except OSError:
                        break
                    sent += len(chunk)
            if cut is not None:
                with contextlib.suppress(OSError):
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
        self._record(status, sent)

    def _not_modified(self, etag: str, mtime: int) -> bool:
        inm = self.headers.get("If-None-Match")
        if inm is not None:
            tags = [t.strip() for t in inm.split(",")]
            return "*" in tags or etag in tags
        ims = self.headers.get("If-Modified-Since")
        if ims:
            with contextlib.suppress(TypeError, ValueError, IndexError, OverflowError):
                when = email.utils.parsedate_to_datetime(ims).timestamp()
                return mtime <= when
        return False


def _parse_range(value: str, size: int) -> tuple[int, int] | None:
    unit, _, spec = value.partition("=")
    if unit.strip() != "bytes" or "," in spec:
        return None
    first, _, last = spec.strip().partition("-")
    if not first:  # suffix range: the last N bytes
        n = int(last)
        return (max(size - n, 0), size) if n > 0 and size else None
    start = int(first)
    end = min(int(last) + 1, size) if last else size
    if start >= size or start >= end:
        return None
    return start, end


# ---------------------------------------------------------------- GPG

class _Gpg:
    """A throwaway GNUPGHOME with two signing keys (the agent is killed on close)."""

    def __init__(self, out: Path) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="mc-gpg-"))  # short: agent socket paths
        self.home.chmod(0o700)
        self.fpr = {"main": self._gen(GPG_UID_MAIN), "other": self._gen(GPG_UID_OTHER)}
        self.keyrings = {name: self._export(fpr, out / f"{name}-keyring.gpg")
                         for name, fpr in self.fpr.items()}

    def _gpg(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(["gpg", "--homedir", str(self.home), "--batch", "--quiet", *args],
                              check=True, stdin=subprocess.DEVNULL, capture_output=True, **kw)

    def _gen(self, uid: str) -> str:
        self._gpg("--passphrase", "", "--quick-gen-key", uid, "ed25519", "sign", "never")
        out = self._gpg("--with-colons", "--list-secret-keys", uid).stdout.decode()
        return next(line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:"))

    def _export(self, fpr: str, dest: Path) -> Path:
        dest.write_bytes(self._gpg("--export", fpr).stdout)
        return dest

    def sign(self, data: Path, sig: Path, key: str = "main") -> None:
        sig.unlink(missing_ok=True)
        self._gpg("--yes", "--armor", "--local-user", self.fpr[key], "--detach-sign",
                  "--output", str(sig), str(data))

    def close(self) -> None:
        subprocess.run(["gpgconf", "--homedir", str(self.home), "--kill", "all"],
                       check=False, stdin=subprocess.DEVNULL, capture_output=True)
        shutil.rmtree(self.home, ignore_errors=True)


# ---------------------------------------------------------------- artefacts

def _small_tree(dest: Path, serial: str = SERIAL) -> None:
    """A tiny root filesystem: a few config files, ~384 KiB of incompressible data, and the
    serial in /etc/cloud/build.info, as Ubuntu's cloud images carry it."""
    rnd = random.Random(4)
    (dest / "etc/cloud").mkdir(parents=True)
    (dest / "etc/cloud/build.info").write_text(f"build_name: server\nserial: {serial}\n")
    (dest / "etc/os-release").write_text('NAME="Ubuntu"\nID=ubuntu\nVERSION_ID="24.04"\n')
    (dest / "etc/hostname").write_text("cloudimg\n")
    (dest / "usr/lib").mkdir(parents=True)
    (dest / "usr/lib/blob").write_bytes(rnd.randbytes(384 * 1024))
    (dest / "bin").symlink_to("usr/bin")
    (dest / "usr/bin").mkdir()
    (dest / "usr/bin/hello").write_text("#!/bin/sh\necho hello\n")
    (dest / "usr/bin/hello").chmod(0o755)


_SMALL: dict[str, dict[str, Path]] = {}  # the tiny tree's artefacts per serial, per process


def build_artefacts(rootfs_tar: Path | None = None,
                    formats: Iterable[str] = ("squashfs", "root.tar.xz"),
                    serial: str = SERIAL) -> dict[str, Path]:
    """Make ``{"squashfs": ..., "root.tar.xz": ...}`` from a rootfs tar (or a tiny tree).

    Only the ``formats`` asked for are made from a ``rootfs_tar``, once per tar: for
    the 170 MB minbase tar on 2 busy cores, sqfstar took 45 s and xz -0 24 s.

    The tiny tree's artefacts are built once per process; those of a ``rootfs_tar``
    are cached beside it (keyed on its size and mtime), since compressing a real
    rootfs takes a while. Sites hard-link them (copy across file systems).
    """
    if rootfs_tar is None:
        if serial in _SMALL:
            return dict(_SMALL[serial])
        work = Path(tempfile.mkdtemp(prefix="mc-cloudimages-"))
        atexit.register(shutil.rmtree, work, True)
        tree = work / "tree"
        _small_tree(tree, serial)
        sqfs = work / "image.squashfs"
        subprocess.run(["mksquashfs", str(tree), str(sqfs), "-noappend", "-quiet",
                        "-all-root", "-comp", "gzip"], check=True, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            tar.add(tree, arcname=".")
        txz = work / "image-root.tar.xz"
        txz.write_bytes(lzma.compress(buf.getvalue(), preset=1))
        shutil.rmtree(tree)
        _SMALL[serial] = {"squashfs": sqfs, "root.tar.xz": txz}
        return dict(_SMALL[serial])
    st = rootfs_tar.stat()
    key = hashlib.sha256(f"{rootfs_tar.resolve()} {st.st_size} {st.st_mtime_ns}".encode())
    cache = rootfs_tar.parent / f"cloudimages-{key.hexdigest()[:12]}"
    out = {"squashfs": cache / "image.squashfs", "root.tar.xz": cache / "image-root.tar.xz"}
    with FileLock(str(cache) + ".lock"):
        cache.mkdir(exist_ok=True)
        for fmt in formats:
            if out[fmt].exists():
                continue
            tmp = out[fmt].with_name(out[fmt].name + ".tmp")
            tmp.unlink(missing_ok=True)
            with open(rootfs_tar, "rb") as src:
                if fmt == "squashfs":
                    subprocess.run(["sqfstar", "-quiet", "-comp", "gzip", str(tmp)],
                                   stdin=src, check=True, stdout=subprocess.DEVNULL)
                else:
                    with open(tmp, "wb") as dst:
                        subprocess.run(["xz", "-T0", "-0", "-c"], stdin=src, stdout=dst,
                                       check=True)
            tmp.rename(out[fmt])
    return {fmt: out[fmt] for fmt in formats}


# ---------------------------------------------------------------- the site

@dataclass
class CloudImageSite:
    """A served cloud-images tree. ``mirror`` is its base URL (http://127.0.0.1:PORT)."""

    root: Path
    mirror: str
    keyring: Path
    other_keyring: Path
    log: RequestLog
    releases: tuple[str, ...]
    arches: tuple[str, ...]
    formats: tuple[str, ...]
    serial: str
    daily_serial: str
    _faults: _Faults
    _gpg: _Gpg
    rootfs_tar: Path | None = None

    # -- sources and paths
    def source(self, release: str = "noble", **kw: Any) -> sources.ImageSource:
        """``cloud_image(release, mirror=self.mirror, **kw)``."""
        return sources.cloud_image(release, mirror=self.mirror, **kw)

    def url(self, path: str) -> str:
        return f"{self.mirror}/{path.lstrip('/')}"

    def path(self, path_or_url: str) -> Path:
        """The served file behind a URL or path (directories resolve through symlinks)."""
        return self.root / _path_of(path_or_url).lstrip("/")

    def sha256(self, path_or_url: str) -> str:
        return hashlib.sha256(self.path(path_or_url).read_bytes()).hexdigest()

    # -- tampering
    def write(self, path_or_url: str, data: bytes) -> None:
        """Replace a served file (a new inode: hard links to it are not changed)."""
        target = self.path(path_or_url)
        tmp = target.with_name(target.name + ".new")
        tmp.write_bytes(data)
        os.replace(tmp, target)

    def flip_byte(self, path_or_url: str, offset: int = -1) -> None:
        data = bytearray(self.path(path_or_url).read_bytes())
        data[offset] ^= 0xFF
        self.write(path_or_url, bytes(data))

    def sums_lines(self, directory: str) -> list[str]:
        return (self.path(directory) / "SHA256SUMS").read_text().splitlines()

    def write_sums(self, directory: str, lines: Iterable[str], *,
                   sign: str | None = "main") -> None:
        """Rewrite ``<directory>/SHA256SUMS`` and, unless ``sign=None``, re-sign it."""
        self.write(f"{directory}/SHA256SUMS", "".join(f"{line}\n" for line in lines).encode())
        if sign:
            self.sign(directory, key=sign)

    def sign(self, directory: str, *, key: str = "main") -> None:
        """(Re)sign ``<directory>/SHA256SUMS`` with the "main" or the "other" key."""
        d = self.path(directory)
        self._gpg.sign(d / "SHA256SUMS", d / "SHA256SUMS.gpg", key)

    # -- new builds
    def publish(self, serial: str, *, release: str = "noble") -> None:
        """Publish release serial ``serial``, as the mirror does: a signed
        ``releases/<codename>/release-<serial>/`` (the tiny tree, whose build.info carries
        that serial) and ``release`` pointing at it. Sites of the tiny tree only."""
        if self.rootfs_tar is not None:
            raise ValueError("publish() makes tiny-tree images; this site serves a rootfs tar")
        codename, version = _releases.cloud_release(release)
        _populate_one(self.root / "releases" / codename / f"release-{serial}",
                      self.root / "releases" / codename / "release", f"ubuntu-{version}",
                      "release", codename, build_artefacts(None, self.formats, serial),
                      self._gpg, self.arches, self.formats)

    # -- faults (each applies to the request path; ``times=None`` means every time)
    def fail(self, path: str, status: int = 500, *, times: int | None = 1) -> None:
        self._faults.add(path, _Fault("fail", times, status=status))

    def cut_after(self, path: str, nbytes: int, *, times: int | None = 1) -> None:
        """Send the headers and ``nbytes`` of body, then drop the connection."""
        self._faults.add(path, _Fault("cut", times, nbytes=nbytes))

    def ignore_range(self, path: str, *, times: int | None = None) -> None:
        """Answer Range requests with the whole file (200), as some servers do."""
        self._faults.add(path, _Fault("ignore_range", times))

    def hold(self, path: str) -> Hold:
        """Hold the next response body for ``path`` (headers go out) until released
        (or 60 s pass, or the site closes)."""
        fault = _Fault("hold", 1)
        self._faults.add(path, fault)
        return Hold(fault.arrived, fault.event)

    def clear_faults(self) -> None:
        self._faults.clear()


def _populate(root: Path, art: dict[str, Path], gpg: _Gpg, releases: Iterable[str],
              arches: Iterable[str], formats: Iterable[str], serial: str,
              daily_serial: str) -> None:
    for release in releases:
        codename, version = _releases.cloud_release(release)
        _populate_one(root / "releases" / codename / f"release-{serial}",
                      root / "releases" / codename / "release", f"ubuntu-{version}", "release",
                      codename, art, gpg, arches, formats)
        _populate_one(root / codename / daily_serial, root / codename / "current", codename,
                      "daily", codename, art, gpg, arches, formats)


def _populate_one(directory: Path, link: Path, prefix: str, stream: str, codename: str,
                  art: dict[str, Path], gpg: _Gpg, arches: Iterable[str],
                  formats: Iterable[str]) -> None:
    """One build directory (images, decoys, signed SHA256SUMS), and ``link`` to it."""
    directory.mkdir(parents=True)
    names: list[str] = []
    for arch in arches:
        base = f"{prefix}-server-cloudimg-{arch}"
        for fmt in formats:
            name = base + sources.FORMATS[fmt]
            try:
                os.link(art[fmt], directory / name)
            except OSError:
                shutil.copyfile(art[fmt], directory / name)
            names.append(name)
        # decoys whose names contain the image names, as on the real mirror
        for decoy in (f"{base}.squashfs.manifest", f"{base}-root.manifest"):
            (directory / decoy).write_text(f"{stream} {codename} {arch}\n")
            names.append(decoy)
    lines = [f"{hashlib.sha256((directory / n).read_bytes()).hexdigest()} *{n}"
             for n in sorted(names)]
    (directory / "SHA256SUMS").write_text("".join(f"{x}\n" for x in lines))
    gpg.sign(directory / "SHA256SUMS", directory / "SHA256SUMS.gpg")
    tmp = link.with_name(link.name + ".new")
    tmp.symlink_to(directory.name)
    os.replace(tmp, link)


@contextlib.contextmanager
def serve_cloud_images(
    tmp_path: Path,
    *,
    rootfs_tar: Path | None = None,
    releases: Iterable[str] = ("noble",),
    arches: Iterable[str] = ("amd64",),
    formats: Iterable[str] = ("squashfs", "root.tar.xz"),
    serial: str = SERIAL,
    daily_serial: str = DAILY_SERIAL,
) -> Iterator[CloudImageSite]:
    """Build a signed cloud-images tree under ``tmp_path`` and serve it on 127.0.0.1."""
    base = Path(tempfile.mkdtemp(prefix="cloudimages-", dir=tmp_path))
    gpg = _Gpg(base)
    server: _Server | None = None
    thread: threading.Thread | None = None
    faults = _Faults()
    try:
        rel, arc, fmts = tuple(releases), tuple(arches), tuple(formats)
        art = build_artefacts(rootfs_tar, fmts)
        root = base / "mirror"
        _populate(root, art, gpg, rel, arc, fmts, serial, daily_serial)
        log = RequestLog()
        server = _Server(root, log, faults)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                  name="cloudimages-http", daemon=True)
        thread.start()
        host, port = server.server_address[:2]
        yield CloudImageSite(
            root=root, mirror=f"http://{host!s}:{port}", keyring=gpg.keyrings["main"],
            other_keyring=gpg.keyrings["other"], log=log, releases=rel, arches=arc,
            formats=fmts, serial=serial, daily_serial=daily_serial, _faults=faults, _gpg=gpg,
            rootfs_tar=rootfs_tar)
    finally:
        faults.clear()  # releases any held response
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=10)
        gpg.close()
