"""A boot resource as MAAS reports it (``boot_resource_to_dict`` in canonical/maas
``src/maasserver/api/boot_resources.py``), and a readable table of them."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..progress import human_size
from . import api


@dataclass(frozen=True)
class BootResource:
    """A boot resource as MAAS reports it.

    ``name`` is MAAS's own: ``foo`` for a custom image (maas_chroot always sends the bare
    name), or ``custom/foo`` when MAAS 3.8 was sent the prefix by another client.
    ``version`` is the newest set (``YYYYmmdd[.N]``, the day of the upload); ``complete``
    is MAAS's word that every region controller holds the newest set's file(s), verified;
    ``progress`` the percentage of those copies MAAS has (100.0 when complete).
    ``last_deployed`` is when MAAS last deployed it, where MAAS says (3.4.8+: from its
    events; 3.7+: a field of the resource).
    """

    id: int
    name: str
    architecture: str
    type: str
    title: str | None = None
    base_image: str | None = None
    version: str | None = None          # newest set
    complete: bool | None = None        # newest set's file(s) all stored and verified
    size: int | None = None
    sha256: str | None = None
    progress: float | None = None
    last_deployed: dt.datetime | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BootResource:
        version: str | None = None
        newest: Mapping[str, Any] = {}
        sets = data.get("sets") or {}
        if sets:
            version = max(sets, key=api.version_key)
            newest = sets[version]
        files: Mapping[str, Mapping[str, Any]] = newest.get("files") or {}
        one = next(iter(files.values())) if len(files) == 1 else {}
        complete = bool(newest.get("complete")) and bool(files) if sets else None
        progress = newest.get("progress", 100.0 if complete else 0.0) if sets else None
        return cls(
            id=int(data["id"]), name=str(data.get("name", "")),
            architecture=str(data.get("architecture", "")), type=str(data.get("type", "")),
            title=data.get("title"), base_image=data.get("base_image") or None,
            version=version, complete=complete, size=one.get("size"),
            sha256=one.get("sha256"),
            progress=float(progress) if isinstance(progress, (int, float)) else None,
            last_deployed=_when(data.get("last_deployed")), raw=dict(data))

    @property
    def release(self) -> str:
        """The release a machine deploys (``distro_series``): the name without ``custom/``."""
        return self.name.removeprefix("custom/")

    @property
    def full_name(self) -> str:
        """``custom/<name>`` for an uploaded image (what ``osystem/distro_series`` deploys)."""
        return f"custom/{self.release}" if self.type == "Uploaded" else self.name

    @property
    def uploaded(self) -> dt.date | None:
        """The day the newest set was made (its version; MAAS keeps no time of day)."""
        try:
            return dt.datetime.strptime((self.version or "").split(".")[0], "%Y%m%d").date()
        except ValueError:
            return None


def _when(value: object) -> dt.datetime | None:
    """A Django-JSON datetime ("2026-01-20T10:11:12.345Z", naive before 3.8)."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def table(resources: Iterable[BootResource]) -> str:
    """A readable table of boot resources (what ``maas-chroot images`` prints)."""
    head = ("ID", "NAME", "ARCHITECTURE", "BASE IMAGE", "SIZE", "SHA256", "STATE", "UPLOADED",
            "LAST DEPLOYED")
    rows = [head]
    for r in resources:
        state = ("complete" if r.complete else
                 "no file" if r.complete is None or r.size is None else
                 f"incomplete ({r.progress or 0:.0f}%)")
        rows.append((str(r.id), r.full_name, r.architecture, r.base_image or "-",
                     human_size(r.size) if r.size is not None else "-",
                     (r.sha256 or "-")[:12], state,
                     r.uploaded.isoformat() if r.uploaded else "-",
                     r.last_deployed.strftime("%Y-%m-%d %H:%M") if r.last_deployed else "-"))
    if len(rows) == 1:
        return "no custom images"
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in rows)
