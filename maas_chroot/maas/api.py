"""HTTP and JSON details of the MAAS API shared by :mod:`maas_chroot.maas` (private).

Response shapes follow canonical/maas ``src/maasserver/api/boot_resources.py``
(``boot_resource_to_dict``, ``boot_resource_set_to_dict``, ``boot_resource_file_to_dict``);
profiles follow ``src/maascli/config.py`` (``ProfileConfig``).
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import requests

from ..errors import MaasApiError, MaasCredentialsError

#: Where ``maas login`` keeps its profiles (deb install, then snap).
PROFILE_DBS = ("~/.maascli.db", "~/snap/maas/current/.maascli.db")


def read_profile(name: str, *, path: str | os.PathLike[str] | None = None) -> tuple[str, str]:
    """(url, api_key) of the maas CLI profile ``name``."""
    candidates = [Path(path)] if path is not None else profile_dbs()
    seen: list[str] = []
    for db in candidates:
        if not db.is_file():
            continue
        try:
            with contextlib.closing(readonly(db)) as conn:
                rows = dict(conn.execute("SELECT name, data FROM profiles").fetchall())
        except sqlite3.Error as e:
            raise MaasApiError(f"cannot read maas CLI profiles from {db}: {e}",
                               url=db.as_uri()) from e
        seen += [f"{n} ({db})" for n in rows]
        if name not in rows:
            continue
        raw = rows[name]
        data = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        creds = data.get("credentials")
        if isinstance(creds, str):
            creds = creds.split(":")
        if not creds or len(creds) != 3:
            raise MaasCredentialsError(
                f"maas CLI profile {name!r} in {db} has no API key (anonymous login)",
                url=str(data.get("url", "")),
                hint=f"log in again with a key: maas login {name} <url> <api-key>")
        return str(data["url"]), ":".join(str(c) for c in creds)
    where = ", ".join(str(p) for p in candidates)
    raise MaasCredentialsError(
        f"no maas CLI profile {name!r} in {where}"
        + (f"; profiles found: {', '.join(seen)}" if seen else ""),
        url="", hint=f"run `maas login {name} http://<maas>:5240/MAAS <api-key>` first, "
        "or use MaasClient(url, api_key) / MaasClient.from_env()")


def profile_dbs() -> list[Path]:
    """The profile DBs to look in: the user's, then (under sudo) the invoking user's."""
    homes = [Path.home()]
    sudo_user = os.environ.get("SUDO_USER")
    if sudo_user:
        with contextlib.suppress(KeyError):
            homes.append(Path(pwd.getpwnam(sudo_user).pw_dir))
    out: list[Path] = []
    for home in homes:
        for rel in PROFILE_DBS:
            db = home / rel.removeprefix("~/")
            if db not in out:
                out.append(db)
    return out


def readonly(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(db.resolve().as_uri() + "?mode=ro", uri=True)


def version_key(version: str) -> tuple[int, ...] | tuple[float]:
    """Sort set versions ``YYYYmmdd[.N]`` numerically ("20260101.10" > "20260101.9")."""
    try:
        return tuple(int(p) for p in version.split("."))
    except ValueError:
        return (float("-inf"),)


def the_file(created: Mapping[str, Any], url: str) -> dict[str, Any]:
    """The one file of the newest set (as the maas CLI's get_resource_file picks it)."""
    sets = created.get("sets") or {}
    if not sets:
        raise MaasApiError("MAAS created the boot resource but reported no set to upload to",
                           url=url, body=json.dumps(created))
    files = sets[max(sets, key=version_key)].get("files") or {}
    if len(files) != 1:
        raise MaasApiError(f"MAAS reported {len(files)} files in the new set, expected 1",
                           url=url, body=json.dumps(created))
    return dict(next(iter(files.values())))


def file_by_upload_uri(data: Mapping[str, Any], upload_url: str) -> dict[str, Any]:
    for rset in (data.get("sets") or {}).values():
        for rfile in (rset.get("files") or {}).values():
            uri = rfile.get("upload_uri")
            if uri and upload_url.endswith(str(uri)):
                return dict(rfile)
    return the_file(data, upload_url)   # complete files carry no upload_uri any more


def stored_bytes(rfile: Mapping[str, Any]) -> int | None:
    """Bytes MAAS stored: ``progress`` is 100 * stored / size (one region controller)."""
    size = rfile.get("size")
    if rfile.get("complete") and isinstance(size, int):
        return size
    pct = rfile.get("progress")
    if not isinstance(size, int) or not isinstance(pct, (int, float)):
        return None
    return round(pct * size / 100)


def body(r: requests.Response) -> str:
    try:
        return r.text.strip()
    except Exception:  # an undecodable body still deserves a message
        return ""


def message(r: requests.Response) -> str:
    """MAAS's message: validation errors come as JSON {field: [messages]}."""
    text = body(r)
    try:
        data = json.loads(text)
    except ValueError:
        return text
    if isinstance(data, dict):
        parts = []
        for key, value in data.items():
            msgs = value if isinstance(value, list) else [value]
            parts += [f"{key}: {m}" if key != "__all__" else str(m) for m in msgs]
        return "; ".join(parts)
    return text


def api_error(r: requests.Response, *, hint: str | None = None) -> MaasApiError:
    method = r.request.method if r.request is not None else "?"
    msg = message(r)
    hints = {
        401: "check the API key (`maas apikey --username <user>` prints it); MAAS also "
             "refuses requests signed more than 300 s ago, so check this machine's clock",
        403: "uploading and deleting boot resources needs an administrator's API key",
        404: "check the MAAS URL (it usually ends in /MAAS, e.g. http://maas:5240/MAAS) and "
             "the resource id",
    }
    extra = hints.get(r.status_code) or ("MAAS had an internal error: see "
                                         "/var/snap/maas/common/log/regiond.log"
                                         if r.status_code >= 500 else None)
    return MaasApiError(
        f"MAAS refused {method} {r.url}: HTTP {r.status_code}: {msg}", url=r.url,
        status=r.status_code, body=body(r),
        hint="; ".join(h for h in (extra, hint) if h) or None)

