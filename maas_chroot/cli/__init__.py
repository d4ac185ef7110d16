"""The ``maas-chroot`` command line: :mod:`.args` parses it, :mod:`.verbs` runs each verb."""

from .verbs import main

__all__ = ["main"]
