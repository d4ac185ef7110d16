"""PLACEHOLDER (issue 6): MaasClient, BootResource."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BootResource:
    id: int


class MaasClient:
    pass
