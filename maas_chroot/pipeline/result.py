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
    where time went."""

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
