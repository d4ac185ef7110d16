"""PLACEHOLDER (issue 3): extract() and pack()."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PackResult:
    path: Path
    size: int
    sha256: str


def extract(archive: str | os.PathLike[str], dest: str | os.PathLike[str], *,
            progress: bool | None = None) -> Path:
    raise NotImplementedError


def pack(root: str | os.PathLike[str], out: str | os.PathLike[str], *,
         progress: bool | None = None) -> PackResult:
    raise NotImplementedError
