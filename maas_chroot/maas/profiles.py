"""The maas CLI's saved logins (``maas login``), read the way the CLI writes them.

canonical/maas ``src/maascli/config.py`` (``ProfileConfig``) keeps them in sqlite:
``CREATE TABLE profiles (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, data BLOB)``,
``data`` the JSON of ``{"credentials": [consumer, token, secret] | null, "description":
<describe document>, "name", "url": "<url>/api/2.0/", "cacerts": "<PEM text>" | null}``
(``cmd_login`` in ``src/maascli/cli.py``; ``cacerts`` holds the text of the file given
to ``maas login --cacerts FILE``, the same in 3.4 and 3.8).
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import MaasApiError, MaasCredentialsError

#: Where ``maas login`` keeps its profiles (deb install, then snap).
PROFILE_DBS = ("~/.maascli.db", "~/snap/maas/current/.maascli.db")


@dataclass(frozen=True)
class Profile:
    """One ``maas login`` profile: its URL, API key and CA certificates (PEM text)."""

    name: str
    url: str
    api_key: str = field(repr=False)
    cacerts: str | None = field(default=None, repr=False)
    db: Path | None = None


def read_profile(name: str, *, path: str | os.PathLike[str] | None = None) -> Profile:
    """The maas CLI profile ``name`` from ``path``, else from :func:`profile_dbs`."""
    candidates = [Path(path)] if path is not None else profile_dbs()
    seen: list[str] = []
    for db in candidates:
        if not db.is_file():
            continue
        try:
            with contextlib.closing(_readonly(db)) as conn:
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
        cacerts = data.get("cacerts")
        return Profile(name=name, url=str(data["url"]), api_key=":".join(map(str, creds)),
                       cacerts=str(cacerts) if cacerts else None, db=db)
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


def _readonly(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(db.resolve().as_uri() + "?mode=ro", uri=True)
