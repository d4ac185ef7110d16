"""The version of maas_chroot (read by setup.cfg, the HTTP User-Agent and build records)."""

__version__ = "0.1.0"
