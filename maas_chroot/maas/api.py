"""HTTP and JSON details of the MAAS API shared by :mod:`maas_chroot.maas` (private).

Response shapes follow canonical/maas ``src/maasserver/api/boot_resources.py``
(``boot_resource_to_dict``, ``boot_resource_set_to_dict``, ``boot_resource_file_to_dict``);
error bodies ``src/maasserver/exceptions.py`` and ``middleware.py``: form errors are JSON
``{field: [message]}``, everything else (chunk errors, the sha256/size conflict) text/plain.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Mapping
from typing import Any

import requests

from ..errors import MaasApiError

#: MAAS's own nginx refuses bodies over this (``client_max_body_size 10M`` in
#: ``debian/extras/nginx.conf`` and the snap's, 3.4 to 3.8).
MAAS_BODY_LIMIT = 10 << 20


def version_key(version: str) -> tuple[int, ...] | tuple[float]:
    """Sort set versions ``YYYYmmdd[.N]`` numerically ("20260101.10" > "20260101.9")."""
    try:
        return tuple(int(p) for p in version.split("."))
    except ValueError:
        return (float("-inf"),)


def series(version: str) -> tuple[int, int]:
    """``"3.6.2-16349-g..."`` -> ``(3, 6)``; an unknown version counts as new."""
    found = re.match(r"(\d+)\.(\d+)", version.strip())
    return (int(found.group(1)), int(found.group(2))) if found else (99, 0)


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


def set_of(data: Mapping[str, Any], upload_url: str) -> dict[str, Any]:
    """The set holding the file whose ``upload_uri`` is ``upload_url`` (else the newest)."""
    sets = data.get("sets") or {}
    for rset in sets.values():
        for rfile in (rset.get("files") or {}).values():
            uri = rfile.get("upload_uri")
            if uri and upload_url.endswith(str(uri)):
                return dict(rset)
    if not sets:   # complete files carry no upload_uri any more
        raise MaasApiError("MAAS reported no set for the boot resource", url=upload_url,
                           body=json.dumps(data))
    return dict(sets[max(sets, key=version_key)])


def stored_bytes(rset: Mapping[str, Any], *, regions: int) -> int | None:
    """Bytes the region we upload to has stored of a one-file set.

    The set's ``progress`` is used, not the file's: on 3.4 a file's progress is
    ``LargeFile.progress``, ``total_size / size``, which is neither a percentage nor the
    right way up (``models/largefile.py``), while the set's is ``100 * size / total_size``
    (``models/bootresourceset.py``). From 3.5 both are summed over the region
    controllers: ``100 * Sum(BootResourceFileSync.size) / (size * n_regions)``
    (``sync_progress`` in ``models/bootresourcefile.py`` and ``bootresourceset.py``).
    Before the file is complete only the region we upload to holds any of it (the
    others copy it once it is complete), so it holds ``progress * size * n_regions /
    100``. ``regions`` is 1 for 3.4, whose content is one PostgreSQL large object.
    """
    size = rset.get("size")
    if not isinstance(size, int):
        return None
    if rset.get("complete"):
        return size
    pct = rset.get("progress", 0.0)
    if not isinstance(pct, (int, float)):
        return None
    return round(pct * size * regions / 100)


def body(r: requests.Response) -> str:
    try:
        return r.text.strip()
    except Exception:  # an undecodable body still deserves a message
        return ""


def message(r: requests.Response) -> str:
    """MAAS's message: validation errors come as JSON {field: [messages]}; a proxy's
    HTML error page is reduced to its title."""
    text = body(r)
    try:
        data = json.loads(text)
    except ValueError:
        title = re.search(r"<title>(.*?)</title>", text, re.I | re.S)
        return html.unescape(title.group(1)).strip() if title else text
    if isinstance(data, dict):
        parts = []
        for key, value in data.items():
            msgs = value if isinstance(value, list) else [value]
            parts += [f"{key}: {m}" if key != "__all__" else str(m) for m in msgs]
        return "; ".join(parts)
    return text


_HINTS = {
    401: "check the API key (`maas apikey --username <user>` prints it); MAAS also "
         "refuses requests signed more than 300 s ago, so check this machine's clock",
    403: "uploading and deleting boot resources needs an administrator's API key (MAAS "
         "3.8: the can_edit_boot_entities permission)",
    404: "check the MAAS URL (it usually ends in /MAAS, e.g. http://maas:5240/MAAS) and "
         "the resource id",
}


def _field_hint(r: requests.Response) -> str | None:
    """A hint for MAAS's form errors that need one (``clean_base_image`` in
    ``src/maasserver/forms/__init__.py``)."""
    try:
        fields = json.loads(body(r))
    except ValueError:
        return None
    words = " ".join(str(m) for m in (fields.get("base_image") or [])) \
        if isinstance(fields, dict) else ""
    if "valid base image OS and version" in words:
        return ("MAAS checks the base image's release against the distro-info-data "
                "installed on the region controller: a release newer than that is refused. "
                "Update distro-info-data on the region, or pass an older base_image")
    if "non-custom OS type" in words:
        return "a base image is the OS the image is built on, e.g. ubuntu/noble or centos/8"
    return None


def too_large(size: int | None) -> str:
    """The hint for a 413: a proxy's body limit (nginx ``client_max_body_size``)."""
    sent = f"{size} bytes" if size else "this request's body"
    return (f"a reverse proxy in front of MAAS refused {sent}: raise its limit (nginx: "
            f"`client_max_body_size {MAAS_BODY_LIMIT >> 20}m;` in the server or location "
            "that proxies /MAAS/, as MAAS's own nginx has it), or upload in smaller chunks "
            "(chunk_size=1 << 19, --chunk-size 512K)")


def api_error(r: requests.Response, *, hint: str | None = None) -> MaasApiError:
    method = r.request.method if r.request is not None else "?"
    msg = message(r)
    if r.status_code == 413:
        length = r.request.headers.get("Content-Length") if r.request is not None else None
        extra: str | None = too_large(int(length) if length and length.isdigit() else None)
    elif r.is_redirect:
        where = r.headers.get("Location", "")
        msg = f"redirected to {where}" if where else msg
        extra = ("TLS is enabled on this MAAS (`maas config-tls`), and it redirects http to "
                 "https, which a POST or PUT cannot follow: use the https URL "
                 "(https://HOST:5443/MAAS) with cacerts")
    else:
        extra = _HINTS.get(r.status_code) or _field_hint(r) or (
            "MAAS had an internal error: see /var/snap/maas/common/log/regiond.log (deb: "
            "/var/log/maas/regiond.log)" if r.status_code >= 500 else None)
    return MaasApiError(
        f"MAAS refused {method} {r.url}: HTTP {r.status_code}: {msg}", url=r.url,
        status=r.status_code, body=body(r),
        hint="; ".join(h for h in (extra, hint) if h) or None)
