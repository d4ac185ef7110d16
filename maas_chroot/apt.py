"""PLACEHOLDER (issue 5): Apt, reached as Chroot.apt."""
