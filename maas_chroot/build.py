"""PLACEHOLDER (issue 7): build(), BuildResult."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class BuildResult:
    output: str


def build(source: Any, output: Any) -> BuildResult:
    raise NotImplementedError
