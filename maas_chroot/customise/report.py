"""The values :func:`maas_chroot.sysprep` returns: what was scrubbed, and what MAAS will miss."""

from __future__ import annotations

from dataclasses import dataclass

from ..progress import human_size


@dataclass(frozen=True)
class SysprepItem:
    """One path scrubbed: ``action`` is "removed", "truncated", "rewritten", "created"
    or "linked -> TARGET"."""

    path: str
    action: str
    freed: int  # bytes (apparent size) the image no longer carries

    def __str__(self) -> str:
        return f"{self.action:<10} {human_size(self.freed):>10}  {self.path}"


@dataclass(frozen=True)
class SysprepOperation:
    """The outcome of one named operation (see :data:`maas_chroot.sysprep.OPERATIONS`)."""

    name: str
    items: tuple[SysprepItem, ...] = ()
    kept: bool = False

    @property
    def freed(self) -> int:
        return sum(i.freed for i in self.items)


@dataclass(frozen=True, repr=False)
class SysprepReport:
    """What :func:`~maas_chroot.sysprep` did to a root, and what a MAAS deployment will miss.

    ``warnings`` name things MAAS needs and the image lacks (a deployment would
    fail); ``notes`` are informational (kernel, symlinks left alone); ``arch`` is the
    image's architecture (Debian's name, None if the image does not say). ``str()``
    and ``repr()`` are a table; :meth:`details` lists every item.
    """

    root: str
    operations: tuple[SysprepOperation, ...]
    warnings: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    kernels: tuple[str, ...] = ()
    cloud_init: bool = False
    netplan: bool = False
    arch: str | None = None

    @property
    def items(self) -> tuple[SysprepItem, ...]:
        return tuple(i for op in self.operations for i in op.items)

    @property
    def freed(self) -> int:
        return sum(op.freed for op in self.operations)

    @property
    def kept(self) -> tuple[str, ...]:
        return tuple(op.name for op in self.operations if op.kept)

    def operation(self, name: str) -> SysprepOperation:
        for op in self.operations:
            if op.name == name:
                return op
        raise KeyError(name)

    def paths(self, operation: str | None = None) -> tuple[str, ...]:
        """In-root paths scrubbed (by one operation, or by all)."""
        ops = self.operations if operation is None else (self.operation(operation),)
        return tuple(i.path for op in ops for i in op.items)

    def table(self) -> str:
        lines = [f"SysprepReport({self.root}): {len(self.items)} items, "
                 f"{human_size(self.freed)} freed",
                 f"  {'operation':<14} {'items':>6} {'freed':>11}"]
        for op in self.operations:
            if op.kept:
                lines.append(f"  {op.name:<14} {'-':>6} {'-':>11}  (kept)")
            else:
                lines.append(f"  {op.name:<14} {len(op.items):>6} {human_size(op.freed):>11}")
        lines.append(f"  {'total':<14} {len(self.items):>6} {human_size(self.freed):>11}")
        kernel = ", ".join(self.kernels) if self.kernels else "none"
        lines.append(f"  arch: {self.arch or 'unknown'}   "
                     f"cloud-init: {'yes' if self.cloud_init else 'MISSING'}   "
                     f"netplan: {'yes' if self.netplan else 'MISSING'}   kernel: {kernel}")
        lines += [f"  warning: {w}" for w in self.warnings]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def details(self, *, limit: int | None = None) -> str:
        """Every scrubbed item, grouped by operation (``limit`` items per operation)."""
        lines = []
        for op in self.operations:
            if not op.items:
                continue
            lines.append(f"{op.name}:")
            shown = op.items if limit is None else op.items[:limit]
            lines += [f"  {item}" for item in shown]
            if len(shown) < len(op.items):
                lines.append(f"  ... and {len(op.items) - len(shown)} more")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def __repr__(self) -> str:
        return self.table()
