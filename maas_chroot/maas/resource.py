"""A boot resource as MAAS reports it (``boot_resource_to_dict`` in canonical/maas
``src/maasserver/api/boot_resources.py``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import api


@dataclass(frozen=True)
class BootResource:
    """A boot resource as MAAS reports it (``name`` is MAAS's, without ``custom/``)."""

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
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BootResource:
        version: str | None = None
        files: Mapping[str, Mapping[str, Any]] = {}
        sets = data.get("sets") or {}
        if sets:
            version = max(sets, key=api.version_key)
            files = sets[version].get("files") or {}
        one = next(iter(files.values())) if len(files) == 1 else {}
        return cls(
            id=int(data["id"]), name=str(data.get("name", "")),
            architecture=str(data.get("architecture", "")), type=str(data.get("type", "")),
            title=data.get("title"), base_image=data.get("base_image") or None,
            version=version,
            complete=all(f.get("complete") for f in files.values()) if files else None,
            size=one.get("size"), sha256=one.get("sha256"), raw=dict(data))

    @property
    def full_name(self) -> str:
        """``custom/<name>`` for an uploaded image (what ``osystem/distro_series`` deploys)."""
        return f"custom/{self.name}" if self.type == "Uploaded" else self.name
