"""The steps of a build: their one definition, and the timer that records them.

``build()`` and its customisation session report progress and failures in
these terms: :attr:`BuildError.step <maas_chroot.errors.BuildError.step>` is
a :class:`Step` value, and :class:`BuildResult.steps
<maas_chroot.build.BuildResult>` lists ``(step, seconds)`` in order.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import threading
import time
from collections.abc import Iterator

log = logging.getLogger(__name__)


class Step(str, enum.Enum):
    """A build step. Its value is the name users see (``"apt clean"``)."""

    CHECK = "check"
    FETCH = "fetch"
    EXTRACT = "extract"
    BOOTSTRAP = "bootstrap"
    COPY = "copy"
    CHROOT = "chroot"
    UPDATE = "update"
    UPGRADE = "upgrade"
    INSTALL = "install"
    REMOVE = "remove"
    FILES = "files"
    COMMANDS = "commands"
    APT_CLEAN = "apt clean"
    MANIFEST = "manifest"
    SYSPREP = "sysprep"
    PACK = "pack"
    BOOT_TEST = "boot-test"
    UPLOAD = "upload"
    CLEANUP = "cleanup"

    def __str__(self) -> str:
        return self.value

    @property
    def in_rootfs(self) -> bool:
        """Whether a failure here leaves a rootfs worth inspecting (``keep_rootfs``)."""
        return self in _IN_ROOTFS


_IN_ROOTFS = frozenset({Step.CHROOT, Step.UPDATE, Step.UPGRADE, Step.INSTALL, Step.REMOVE,
                        Step.FILES, Step.COMMANDS, Step.APT_CLEAN, Step.MANIFEST,
                        Step.SYSPREP})
_QUIET = frozenset({Step.CHECK, Step.CLEANUP})


class Steps:
    """Times steps in order, and remembers the one running (for the error message).

    Once ``stop`` is set (the caller was interrupted while another thread runs the
    steps), the next step raises KeyboardInterrupt instead of starting.
    """

    def __init__(self) -> None:
        self.times: list[tuple[Step, float]] = []
        self.current = Step.CHECK
        self.stop = threading.Event()

    @contextlib.contextmanager
    def __call__(self, step: Step) -> Iterator[None]:
        if self.stop.is_set():
            raise KeyboardInterrupt(f"stopped before the step {step!s}")
        self.current = step
        if step not in _QUIET:
            log.info("%s ...", step)
        start = time.monotonic()
        try:
            yield
        finally:
            secs = time.monotonic() - start
            self.times.append((step, secs))
            log.debug("%s took %.1f s", step, secs)
