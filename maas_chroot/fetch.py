"""PLACEHOLDER (issue 4): fetch()."""
from __future__ import annotations

from pathlib import Path
from typing import Any


def fetch(source: Any) -> Path:
    raise NotImplementedError
