"""What ``build()`` returns: :class:`BuildResult`."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .. import maas
from ..boot import BootReport
from ..customise.scrubbing import SysprepReport
from ..progress import human_size


@dataclass(frozen=True)
class BuildResult:
    """What ``build()`` made: the packed image, its hash and architecture, the upload, and
    where time went; the manifest and the build record written beside the image.

    With ``if_changed``: ``up_to_date`` when nothing was built (the image and its record
    are those of the build of ``built``), else ``reasons`` says why it was built again.
    """

    output: Path
    size: int
    sha256: str
    source: str
    steps: tuple[tuple[str, float], ...] = ()
    uploaded: maas.BootResource | None = None
    sysprep: SysprepReport | None = field(default=None, repr=False)
    rootfs: Path | None = None
    boot: BootReport | None = field(default=None, repr=False)
    arch: str | None = None
    manifest: Path | None = None
    record: Path | None = None
    up_to_date: bool = False
    reasons: tuple[str, ...] = ()
    built: str | None = None

    @property
    def durations(self) -> dict[str, float]:
        """Seconds per step, in order (``fetch``, ``extract``, ``install``, ``pack`` ...)."""
        out: dict[str, float] = {}
        for name, secs in self.steps:
            out[str(name)] = out.get(str(name), 0.0) + secs
        return out

    @property
    def total(self) -> float:
        return sum(secs for _, secs in self.steps)

    def __repr__(self) -> str:
        lines = [f"BuildResult({os.fspath(self.output)!r}, {human_size(self.size)}, "
                 f"sha256={self.sha256[:16]}…)",
                 f"  source    {self.source}"]
        if self.arch is not None:
            lines.append(f"  arch      {self.arch}")
        if self.up_to_date:
            lines.append(f"  up to date: nothing changed since its build of {self.built}")
        for why in self.reasons:
            lines.append(f"  rebuilt   {why}")
        if self.manifest is not None:
            lines.append(f"  manifest  {os.fspath(self.manifest)}")
        if self.rootfs is not None:
            lines.append(f"  rootfs    {os.fspath(self.rootfs)} (kept)")
        if self.uploaded is not None:
            up = self.uploaded
            lines.append(f"  uploaded  {up.full_name} (id {up.id}, {up.architecture}"
                         + (f", base_image {up.base_image}" if up.base_image else "")
                         + ("" if up.complete else ", syncing to the other region controllers"
                            if up.complete is False else ", not read back") + ")")
        if self.boot is not None:
            lines.append(f"  boot test {'OK' if self.boot.ok else 'FAILED'}: "
                         f"{len(self.boot.runs)} boot(s), {self.boot.accel.upper()}, "
                         + ", ".join(f"{k} {v:.0f} s" for k, v in self.boot.milestones.items()
                                     if k in ("kernel", "cloud-init", "power-off")))
        if self.sysprep is not None:
            rep = self.sysprep
            lines.append(f"  sysprep   {len(rep.items)} items, {human_size(rep.freed)} freed"
                         + "".join(f"\n  warning   {w}" for w in rep.warnings))
        for name, secs in self.durations.items():
            lines.append(f"  {name:<9} {secs:7.1f} s")
        lines.append(f"  {'total':<9} {self.total:7.1f} s")
        return "\n".join(lines)
