"""The boot test: prove an image deploys before it goes to MAAS.

:mod:`.runner` holds :func:`boot_test`: :mod:`.deploy` deploys the image as curtin
would (staging tree, then sparse disks filled with ``mke2fs -d``), :mod:`.seed`
makes the NoCloud seed that stands in for MAAS's metadata, :mod:`.guest` is what
goes into the deployed copy (the reporter), :mod:`.qemu` boots it (KVM when it
really works, else TCG), :mod:`.console` reads the console, :mod:`.report` holds
the :class:`BootReport`; :mod:`.scratch` keeps every scratch file unnamed.
"""

from .report import BootReport, BootRun, Problem
from .runner import boot_test

__all__ = ["BootReport", "BootRun", "Problem", "boot_test"]
