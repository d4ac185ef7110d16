"""PLACEHOLDER (issue 4): cloud_image(), ImageSource."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ImageSource:
    url: str


def cloud_image(release: str) -> ImageSource:
    raise NotImplementedError
