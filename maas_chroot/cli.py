"""PLACEHOLDER (issue 7): the maas-chroot CLI."""
from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    raise NotImplementedError
