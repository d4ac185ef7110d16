"""Customise and scrub a rootfs: the build's chroot session, then sysprep for deployment.

:mod:`.customisation` runs a build's apt, files and commands in one session;
:mod:`.scrubbing` holds :func:`sysprep` and its :data:`OPERATIONS`, built on the
in-root primitives of :mod:`.scrub`, and reports with :mod:`.report`.
"""

from .customisation import Customisation, customise
from .report import SysprepItem, SysprepOperation, SysprepReport
from .scrubbing import FSTAB_HEADER, OPERATIONS, sysprep

__all__ = ["FSTAB_HEADER", "OPERATIONS", "Customisation", "SysprepItem", "SysprepOperation",
           "SysprepReport", "customise", "sysprep"]
