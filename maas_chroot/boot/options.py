"""The boot test's options, checked before anything is unpacked (and at a build's CHECK step).

One place knows what ``boot_test()`` accepts: :func:`boot_test` calls :func:`check`
first, and ``build(boot_test={...})`` calls it while it checks the spec, so a
mistyped accelerator fails in a second, not after a whole build.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import ArgumentError
from .qemu import ACCELS

#: Below this a Ubuntu guest does not get through its initramfs.
MIN_MEMORY = 256
#: What ``build(boot_test={...})`` may set (workdir and progress come from the build).
BUILD_KEYS = frozenset({"kernel", "timeout", "memory", "accel", "boots", "fail_fast",
                        "log_dir"})
#: The architectures the boot test boots (qemu-system-x86_64, q35, direct kernel boot).
ARCHES = ("amd64",)


def check(*, kernel: str | None = None, timeout: float | None = None, memory: int = 1024,
          accel: str = "auto", boots: int = 1, fail_fast: bool = True,
          workdir: str | os.PathLike[str] | None = None,
          log_dir: str | os.PathLike[str] | None = None) -> None:
    """Raise :class:`~maas_chroot.errors.ArgumentError` naming the first bad option."""
    if kernel is not None and (not isinstance(kernel, str) or not kernel
                               or kernel.startswith("-") or any(c.isspace() for c in kernel)):
        raise ArgumentError(f"kernel must name one package (e.g. 'linux-generic'), not "
                            f"{kernel!r}")
    if timeout is not None and (isinstance(timeout, bool)
                                or not isinstance(timeout, int | float) or not timeout > 0):
        raise ArgumentError(f"timeout must be a number of seconds above 0 (or None for the "
                            f"accelerator's default), not {timeout!r}")
    if isinstance(memory, bool) or not isinstance(memory, int) or memory < MIN_MEMORY:
        raise ArgumentError(f"memory must be a whole number of MiB, at least {MIN_MEMORY}, "
                            f"not {memory!r}")
    if accel not in ACCELS:
        raise ArgumentError(f"accel must be one of {', '.join(ACCELS)}, not {accel!r}")
    if isinstance(boots, bool) or not isinstance(boots, int) or boots < 1:
        raise ArgumentError(f"boots must be a whole number of at least 1, not {boots!r}")
    if not isinstance(fail_fast, bool):
        raise ArgumentError(f"fail_fast must be True or False, not {fail_fast!r}")
    for name, value in (("workdir", workdir), ("log_dir", log_dir)):
        if value is not None and not Path(os.fspath(value)).is_dir():
            raise ArgumentError(f"{name} {os.fspath(value)} is not a directory",
                                hint=f"create it, or leave {name} out for the default")


def build_options(value: bool | Mapping[str, Any]) -> dict[str, Any]:
    """The ``boot_test()`` options a build's ``boot_test=`` asks for (True: the defaults)."""
    if isinstance(value, bool):
        return {}
    if not isinstance(value, Mapping):
        raise ArgumentError(f"boot_test must be True, False or a dict of boot_test() options, "
                            f"not {value!r}", hint='e.g. boot_test={"boots": 2}')
    unknown = sorted(set(value) - BUILD_KEYS)
    if unknown:
        raise ArgumentError(f"unknown boot_test option(s): {', '.join(map(str, unknown))}",
                            hint=f"use: {', '.join(sorted(BUILD_KEYS))}")
    check(**value)
    return dict(value)
