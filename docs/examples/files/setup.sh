#!/bin/sh
# Run inside the image (copied in, run, removed). Deterministic: same input, same output.
set -eu
mkdir -p /etc/maas-chroot
echo "recipe example" > /etc/maas-chroot/built-by
