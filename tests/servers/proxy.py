"""A tiny HTTP forward proxy on 127.0.0.1 for tests, with a request log.

    with serve_proxy() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        ...
        assert proxy.log == [("GET", "http://127.0.0.1:PORT/x", 200)]

It forwards absolute-URI GET/HEAD requests (plain http) to 127.0.0.1 only and
refuses anything else (CONNECT, other hosts) with 403, so a test can never use
it to reach the outside.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

_HOP = {"connection", "keep-alive", "proxy-connection", "proxy-authorization",
        "proxy-authenticate", "te", "trailers", "transfer-encoding", "upgrade"}


@dataclass
class Proxy:
    url: str
    log: list[tuple[str, str, int]] = field(default_factory=list)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, proxy: Proxy) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.proxy = proxy
        self.lock = threading.Lock()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _log(self, status: int) -> None:
        with self.server.lock:
            self.server.proxy.log.append((self.command, self.path, status))

    def _refuse(self) -> None:
        self.send_response(403)
        self.send_header("Content-Length", "0")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        self._log(403)

    def do_CONNECT(self) -> None:
        self._refuse()

    def do_HEAD(self) -> None:
        self._forward()

    def do_GET(self) -> None:
        self._forward()

    def _forward(self) -> None:
        target = urllib.parse.urlsplit(self.path)
        if target.scheme != "http" or target.hostname != "127.0.0.1" or not target.port:
            self._refuse()
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
        headers["Via"] = "1.1 maas-chroot-test-proxy"
        conn = http.client.HTTPConnection("127.0.0.1", target.port, timeout=30)
        try:
            path = target.path + (f"?{target.query}" if target.query else "")
            conn.request(self.command, path or "/", headers=headers)
            resp = conn.getresponse()
            self.send_response(resp.status, resp.reason)
            for k, v in resp.getheaders():
                if k.lower() not in _HOP:
                    self.send_header(k, v)
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            if self.command != "HEAD":
                while chunk := resp.read(64 * 1024):
                    self.wfile.write(chunk)
            self._log(resp.status)
        finally:
            conn.close()


@contextlib.contextmanager
def serve_proxy() -> Iterator[Proxy]:
    """Run the proxy on an ephemeral port of 127.0.0.1 until the block ends."""
    proxy = Proxy(url="")
    server = _Server(proxy)
    host, port = server.server_address[:2]
    proxy.url = f"http://{host!s}:{port}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              name="test-proxy", daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
