"""PLACEHOLDER (issue 5): sysprep(), SysprepReport."""
from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class SysprepReport:
    root: str


def sysprep(root: str | os.PathLike[str]) -> SysprepReport:
    raise NotImplementedError
