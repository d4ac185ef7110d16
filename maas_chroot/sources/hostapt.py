"""The host's own apt configuration: which distribution mirror this machine uses.

``bootstrap:`` sources and the test suite build rootfs trees with mmdebstrap
from the mirror the machine's apt already uses, so nothing names a mirror host.
Both one-line (``sources.list``) and deb822 (``*.sources``) files are read.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass

from .. import releases
from ..errors import SourceError


@dataclass(frozen=True)
class AptSource:
    """One ``deb`` entry of the host's apt configuration."""

    uri: str
    suites: tuple[str, ...]
    components: tuple[str, ...]
    signed_by: str | None = None


def parse_line(line: str) -> AptSource | None:
    """One ``deb [opts] URI SUITE [COMPONENT...]`` line (``sources.list`` format), or None."""
    words = line.split("#", 1)[0].split()
    if not words or words[0] != "deb":
        return None
    words = words[1:]
    signed_by = None
    if words and words[0].startswith("["):
        opts = []
        while words:
            w = words.pop(0)
            opts.append(w.strip("[]"))
            if w.endswith("]"):
                break
        for o in opts:
            if o.startswith("signed-by="):
                signed_by = o.split("=", 1)[1]
    if len(words) < 2:
        return None
    return AptSource(words[0], (words[1],), tuple(words[2:]), signed_by)


def _one_line(text: str) -> list[AptSource]:
    return [src for line in text.splitlines() if (src := parse_line(line)) is not None]


def _deb822(text: str) -> list[AptSource]:
    out = []
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        key = None
        for raw in stanza.splitlines():
            if raw.startswith("#") or not raw.strip():
                continue
            if raw[0] in " \t" and key:
                fields[key] += " " + raw.strip()
                continue
            key, _, value = raw.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() == "no":
            continue
        signed = fields.get("signed-by")
        for uri in fields.get("uris", "").split():
            out.append(AptSource(uri, tuple(fields.get("suites", "").split()),
                                 tuple(fields.get("components", "").split()),
                                 signed if signed and not signed.startswith("-----") else None))
    return out


def sources(etc: str = "/etc/apt") -> list[AptSource]:
    """Every enabled ``deb`` source of the host, in apt's reading order."""
    found: list[AptSource] = []
    main = os.path.join(etc, "sources.list")
    if os.path.exists(main):
        with open(main, encoding="utf-8") as f:
            found += _one_line(f.read())
    for path in sorted(glob.glob(os.path.join(etc, "sources.list.d", "*"))):
        with open(path, encoding="utf-8") as f:
            if path.endswith(".list"):
                found += _one_line(f.read())
            elif path.endswith(".sources"):
                found += _deb822(f.read())
    return found


def os_release(path: str = "/etc/os-release") -> dict[str, str]:
    """The host's os-release fields (ID, VERSION_CODENAME, ...)."""
    with open(path, encoding="utf-8") as f:
        return releases.parse_os_release(f.read())


def host_mirror(suite: str | None = None, *, etc: str = "/etc/apt") -> AptSource:
    """The host's distribution mirror: the first source carrying ``suite`` with ``main``.

    ``suite`` defaults to the host's own codename. Raises :class:`SourceError`
    when the host has no such source.
    """
    if suite is None:
        suite = os_release().get("VERSION_CODENAME", "")
    candidates = sources(etc)
    for src in candidates:
        if suite in src.suites and "main" in src.components:
            return AptSource(src.uri.rstrip("/"), (suite,), src.components, src.signed_by)
    raise SourceError(
        f"no apt source in {etc} carries suite {suite!r} with component main",
        hint="pass a mirror explicitly (--mirror URL), or add the distribution to apt's sources",
    )
