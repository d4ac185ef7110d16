"""The HTTP side of the fake MAAS (:mod:`.maas`): routing, bodies, and what the maas CLI
needs to log in (``cmd_login`` in canonical/maas ``src/maascli/cli.py``): a signed ``GET
users/?op=whoami`` and an unsigned ``GET describe/`` answered with a Content-Type of
exactly ``application/json`` (``src/maasserver/api/doc_handler.py``), whose resources
name the handlers and actions the CLI turns into commands (``src/maascli/api.py``).
"""

from __future__ import annotations

import contextlib
import email.parser
import email.policy
import hashlib
import json
import socket
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .maas import PREFIX, VERSIONS, FakeMaas, Logged, Stop

_NGINX_413 = ("<html>\r\n<head><title>413 Request Entity Too Large</title></head>\r\n<body>\r\n"
              "<center><h1>413 Request Entity Too Large</h1></center>\r\n<hr><center>nginx"
              "</center>\r\n</body>\r\n</html>\r\n")


def _action(name: str, method: str, op: str | None = None,
            params: Mapping[str, str] | None = None) -> dict[str, Any]:
    """An action as MAAS's describe shows it; ``:param`` lines as MAAS renders @param."""
    doc = f"{name}\n\n" + "".join(f":param {k}: {v}\n:type {k}: String\n\n"
                                  for k, v in (params or {}).items())
    return {"name": name, "method": method, "op": op, "doc": doc, "restful": op is None}


def describe(fake: FakeMaas, origin: str) -> dict[str, Any]:
    """The describe document: the handlers an upload and a delete go through."""
    resources = _resources(fake, origin)
    return {"doc": "MAAS API", "resources": resources,
            "handlers": [r["auth"] or r["anon"] for r in resources], "hash": api_hash(fake)}


def api_hash(fake: FakeMaas) -> str:
    """What ``X-MAAS-API-Hash`` says: a digest of the API, whatever the host."""
    return hashlib.sha1(json.dumps(_resources(fake, ""), sort_keys=True).encode()).hexdigest()


def _resources(fake: FakeMaas, origin: str) -> list[dict[str, Any]]:
    def handler(name: str, rel: str, params: list[str], actions: list[dict[str, Any]],
                *, anon: bool = False) -> dict[str, Any]:
        h = {"name": name, "doc": f"{name} (fake MAAS {fake.version})", "params": params,
             "actions": actions, "path": PREFIX + rel, "uri": origin + PREFIX + rel}
        return {"name": name, "anon": h if anon else None, "auth": None if anon else h}

    create = {"name": "Required. Name of the boot resource.",
              "architecture": "Required. Architecture the boot resource supports.",
              "sha256": "Required. The sha256 hash of the resource.",
              "size": "Required. The size of the resource in bytes.",
              "title": "Optional. Title for the boot resource.",
              "filetype": "Optional. Filetype for uploaded content.",
              "base_image": "Optional. The Base OS image a custom image is built on top of."}
    resources = [
        handler("BootResourcesHandler", "boot-resources/", [],
                [_action("read", "GET", params={"type": "Optional. Type of boot resources."}),
                 _action("create", "POST", params=create)]),
        handler("BootResourceHandler", "boot-resources/{id}/", ["id"],
                [_action("read", "GET"), _action("delete", "DELETE")]),
        handler("UsersHandler", "users/", [],
                [_action("read", "GET"), _action("whoami", "GET", "whoami")]),
        handler("RegionControllersHandler", "regioncontrollers/", [],
                [_action("read", "GET")]),
        handler("VersionHandler", "version/", [], [_action("read", "GET")], anon=True),
    ]
    if fake.series >= (3, 8):       # 3.8 no longer hides the upload handler
        resources.append(handler("BootResourceFileUploadHandler",
                                 "boot-resources/{resource_id}/upload/{id}/",
                                 ["resource_id", "id"], [_action("update", "PUT")]))
    return resources


def form(content_type: str, body: bytes) -> dict[str, str]:
    """A POST's fields. Multipart parts in ``Content-Transfer-Encoding: base64`` (as the
    maas CLI sends every part) are decoded, as Django's MultiPartParser does."""
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


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True      # headers and body go out in two writes
    server: Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self, status: int, payload: Any, *, ctype: str | None = None,
                extra: Mapping[str, str] = {}) -> None:
        if isinstance(payload, (dict, list)):
            body = json.dumps(payload).encode()
            ctype = ctype or "application/json; charset=utf-8"
        else:
            body, ctype = str(payload).encode(), ctype or "text/plain; charset=utf-8"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-MAAS-API-Hash", self.server.api_hash)
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
            if fake.max_body is not None and (length or 0) > fake.max_body:
                self._drain(length)        # a reverse proxy's client_max_body_size
                record(413)
                self.close_connection = True
                self._answer(413, _NGINX_413, ctype="text/html",
                             extra={"Connection": "close"})
                return
            if fake.redirect_to is not None:
                self._drain(length)
                record(301)
                self._answer(301, "", ctype="text/html",
                             extra={"Location": fake.redirect_to + self.path})
                return
            rel = url.path[len(PREFIX):] if url.path.startswith(PREFIX) else None
            if rel in ("describe/", "version/") and self.command == "GET":
                record(200)                # anonymous handlers: no signature needed
                if rel == "version/":
                    self._answer(200, {"capabilities": ["authenticate-api"],
                                       "version": VERSIONS[fake.version], "subversion": ""})
                else:
                    host = self.headers.get("Host", "127.0.0.1")
                    scheme = fake.url.split(":", 1)[0]
                    self._answer(200, describe(fake, f"{scheme}://{host}"),
                                 ctype="application/json")
                return
            denied = fake.check_auth(self.headers.get("Authorization"))
            if denied is not None:
                self._drain(length)
                record(401)
                self._answer(401, denied, extra={"WWW-Authenticate": 'OAuth realm="OAuth"'})
                return
            try:
                status, payload = self._route(fake, rel, parse_qs(url.query), length)
            except (Stop, OSError):
                raise
            except Exception as e:          # as MAAS's ExceptionMiddleware: 500, str(e)
                status, payload = 500, str(e)
            record(status)
            self._answer(status, payload)
        except Stop:
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

    def _route(self, fake: FakeMaas, rel: str | None, query: Mapping[str, list[str]],
               length: int | None) -> tuple[int, Any]:
        parts = (rel or "").strip("/").split("/")
        method = self.command
        if method == "PUT" and len(parts) == 4 and parts[0] == "boot-resources" \
                and parts[2] == "upload":
            return fake.put_chunk(int(parts[1]), int(parts[3]), length, self.rfile.read)
        body = self.rfile.read(length) if length else b""
        if rel == "users/" and method == "GET" and query.get("op") == ["whoami"]:
            return 200, {"is_superuser": True, "username": "admin", "is_local": True,
                         "email": "admin@example.com",
                         "resource_uri": f"{PREFIX}users/admin/"}
        if rel == "regioncontrollers/" and method == "GET":
            return 200, [{"system_id": f"region{i}", "hostname": f"region-{i}",
                          "node_type_name": "Region and rack controller",
                          "version": VERSIONS[fake.version],
                          "resource_uri": f"{PREFIX}regioncontrollers/region{i}/"}
                         for i in range(fake.regions)]
        if rel is None or parts[0] != "boot-resources":
            return 404, "Not Found"
        if len(parts) == 1:
            if method == "GET":
                rtype = query.get("type", ["all"])[-1]
                types = ["synced", "generated", "uploaded"] if fake.series < (3, 5) else \
                    ["synced", "uploaded"]
                if rtype != "all" and rtype not in types:
                    return 400, (f"'{rtype}' is not a valid boot resource type. Available "
                                 f"types: {types}")
                items = [r for r in fake.resources.values()
                         if rtype == "all" or r.rtype.lower() == rtype]
                return 200, [fake.resource_json(r, with_sets=False)
                             for r in sorted(items, key=lambda r: (r.name, r.architecture))]
            if method == "POST":
                return fake.create(form(self.headers.get("Content-Type", ""), body))
            return 405, "Method Not Allowed"
        try:
            rid = int(parts[1])
        except ValueError:
            return 404, "Not Found"
        if method == "DELETE":
            return fake.delete(rid)
        if rid not in fake.resources:
            return 404, "No BootResource matches the given query."
        if method == "GET":
            with fake.lock:
                return 200, fake.resource_json(fake.resources[rid], with_sets=True)
        return 405, "Method Not Allowed"

    do_GET = do_POST = do_PUT = do_DELETE = _handle


class Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeMaas

    @property
    def api_hash(self) -> str:
        return api_hash(self.fake)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass    # a client that refused our certificate, a connection cut by a fault
