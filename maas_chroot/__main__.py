"""``python -m maas_chroot`` is the ``maas-chroot`` CLI."""

from .cli import main

raise SystemExit(main())
