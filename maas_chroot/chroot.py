"""PLACEHOLDER (issue 2): Chroot, Bind, recover()."""
from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Bind:
    src: str
    dst: str
    readonly: bool = False


class Chroot:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        raise NotImplementedError


def recover(root: str | os.PathLike[str]) -> None:
    raise NotImplementedError
