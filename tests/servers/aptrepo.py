"""Test helpers: a tiny signed apt repository on 127.0.0.1, and a forwarding HTTP proxy.

    spec = DebSpec("hello-mc", files={"/usr/bin/hello-mc": "#!/bin/sh\\necho hi\\n"})
    with serve_repo(tmp_path, [spec]) as repo:
        ch.apt.add_source("mc-test", repo.url, repo.suite, repo.component, key=repo.key_asc)

The repository is built the way real ones are: ``dpkg-deb --build``, then
``apt-ftparchive packages`` and ``release``, then a throwaway GPG key
(generated in a temporary GNUPGHOME) signs ``InRelease`` (``--clearsign``)
and ``Release.gpg``. Servers bind 127.0.0.1 only and stop when the block ends.
"""

from __future__ import annotations

import contextlib
import gzip
import http.client
import shutil
import subprocess
import threading
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def _run(argv: Sequence[str], **kw: object) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(list(argv), check=True, stdin=subprocess.DEVNULL,
                          capture_output=True, **kw)  # type: ignore[call-overload,no-any-return]


@dataclass(frozen=True)
class DebSpec:
    """A package to build: files (absolute paths in the image) and maintainer scripts."""

    name: str
    version: str = "1.0"
    files: dict[str, str] = field(default_factory=dict)
    depends: str = ""
    postinst: str = ""
    architecture: str = "all"


def make_deb(spec: DebSpec, out_dir: Path) -> Path:
    """Build ``spec`` with ``dpkg-deb --build``; return the .deb path."""
    tree = out_dir / f"{spec.name}-tree"
    (tree / "DEBIAN").mkdir(parents=True)
    control = (f"Package: {spec.name}\nVersion: {spec.version}\n"
               f"Architecture: {spec.architecture}\nMaintainer: maas-chroot tests <t@invalid>\n"
               f"Description: test package {spec.name}\n")
    if spec.depends:
        control += f"Depends: {spec.depends}\n"
    (tree / "DEBIAN/control").write_text(control)
    if spec.postinst:
        script = tree / "DEBIAN/postinst"
        script.write_text(spec.postinst)
        script.chmod(0o755)
    for path, content in spec.files.items():
        dest = tree / path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(content)
        dest.chmod(0o755 if content.startswith("#!") else 0o644)
    deb = out_dir / f"{spec.name}_{spec.version}_{spec.architecture}.deb"
    _run(["dpkg-deb", "--root-owner-group", "--build", str(tree), str(deb)])
    shutil.rmtree(tree)
    return deb


@dataclass(frozen=True)
class GpgKey:
    """A throwaway signing key: its GNUPGHOME, fingerprint, and exported public key files."""

    home: Path
    fingerprint: str
    asc: Path  # ASCII-armoured public key
    gpg: Path  # binary public key (what apt wants in /etc/apt/keyrings)


def make_key(where: Path, uid: str = "maas-chroot test repo <repo@invalid>") -> GpgKey:
    home = where / "gnupg"
    home.mkdir(mode=0o700, parents=True)
    gpg = ["gpg", "--batch", "--homedir", str(home)]
    _run([*gpg, "--passphrase", "", "--quick-gen-key", uid, "ed25519", "sign", "never"])
    out = _run([*gpg, "--with-colons", "--list-keys"]).stdout.decode()
    fpr = next(line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:"))
    asc, binary = where / "key.asc", where / "key.gpg"
    asc.write_bytes(_run([*gpg, "--armor", "--export", fpr]).stdout)
    binary.write_bytes(_run([*gpg, "--export", fpr]).stdout)
    _stop_gpg_agent(home)  # keygen started one; a signature later starts it again
    return GpgKey(home, fpr, asc, binary)


def _stop_gpg_agent(home: Path) -> None:
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False,
                   stdin=subprocess.DEVNULL, capture_output=True)


def build_repo(where: Path, debs: Sequence[Path], key: GpgKey, *, suite: str = "stable",
               component: str = "main") -> Path:
    """Lay out pool/ and dists/<suite>/ for ``debs`` and sign the Release file."""
    arch = _run(["dpkg", "--print-architecture"]).stdout.decode().strip()
    repo = where / "repo"
    pool = repo / "pool" / component
    pool.mkdir(parents=True)
    for deb in debs:
        shutil.copy2(deb, pool / deb.name)
    bindir = repo / "dists" / suite / component / f"binary-{arch}"
    bindir.mkdir(parents=True)
    packages = _run(["apt-ftparchive", "packages", "pool"], cwd=repo).stdout
    (bindir / "Packages").write_bytes(packages)
    (bindir / "Packages.gz").write_bytes(gzip.compress(packages, mtime=0))
    dist = repo / "dists" / suite
    opts = []
    for k, v in (("Origin", "maas-chroot-tests"), ("Label", "maas-chroot-tests"),
                 ("Suite", suite), ("Codename", suite), ("Architectures", arch),
                 ("Components", component)):
        opts += ["-o", f"APT::FTPArchive::Release::{k}={v}"]
    release = _run(["apt-ftparchive", *opts, "release", str(dist)]).stdout
    (dist / "Release").write_bytes(release)
    gpg = ["gpg", "--batch", "--homedir", str(key.home), "--local-user", key.fingerprint]
    _run([*gpg, "--clearsign", "-o", str(dist / "InRelease"), str(dist / "Release")])
    _run([*gpg, "--armor", "--detach-sign", "-o", str(dist / "Release.gpg"),
          str(dist / "Release")])
    return repo


class _Quiet(SimpleHTTPRequestHandler):
    log: list[str]

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.log.append(self.path)
        super().do_GET()


@contextlib.contextmanager
def _serve(server: ThreadingHTTPServer) -> Iterator[str]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield f"http://{host!s}:{port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@dataclass(frozen=True)
class AptRepo:
    url: str
    suite: str
    component: str
    key: GpgKey
    debs: tuple[Path, ...]
    log: list[str]  # request paths, in order

    @property
    def key_asc(self) -> Path:
        return self.key.asc


@contextlib.contextmanager
def serve_repo(where: Path, specs: Sequence[DebSpec], *, suite: str = "stable",
               component: str = "main", key: GpgKey | None = None) -> Iterator[AptRepo]:
    """Build the packages, the signed repository, and serve it on 127.0.0.1."""
    where.mkdir(parents=True, exist_ok=True)
    key = key or make_key(where)
    try:
        debs = tuple(make_deb(s, where) for s in specs)
        repo = build_repo(where, debs, key, suite=suite, component=component)
    finally:
        _stop_gpg_agent(key.home)
    log: list[str] = []
    handler = type("Handler", (_Quiet,), {"log": log})
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(repo)))
    server.daemon_threads = True
    with _serve(server) as url:
        yield AptRepo(url, suite, component, key, debs, log)


# --- a forwarding proxy ------------------------------------------------------------------

_HOP = {"connection", "proxy-connection", "keep-alive", "transfer-encoding", "te", "trailer",
        "upgrade", "proxy-authorization", "proxy-authenticate"}


class _Proxy(BaseHTTPRequestHandler):
    log: list[str]

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.log.append(self.path)
        url = urllib.parse.urlsplit(self.path)
        if url.scheme != "http" or not url.hostname:
            self.send_error(400, "absolute http:// URL expected")
            return
        conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
            target = url.path + (f"?{url.query}" if url.query else "")
            conn.request("GET", target or "/", headers=headers)
            resp = conn.getresponse()
            body = resp.read()
        except OSError as e:
            self.send_error(502, str(e))
            return
        finally:
            conn.close()
        self.send_response(resp.status, resp.reason)
        for k, v in resp.getheaders():
            if k.lower() not in _HOP and k.lower() != "content-length":
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)


@dataclass(frozen=True)
class Proxy:
    url: str
    log: list[str]  # absolute URLs requested through it


@contextlib.contextmanager
def serve_proxy() -> Iterator[Proxy]:
    """A plain HTTP forward proxy on 127.0.0.1 that records every URL it fetched."""
    log: list[str] = []
    handler = type("Handler", (_Proxy,), {"log": log})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    with _serve(server) as url:
        yield Proxy(url, log)
