"""The NoCloud seed: an ISO 9660 volume labelled ``cidata``, made without mounting anything.

cloud-init's NoCloud datasource reads ``meta-data``, ``user-data`` and
``network-config`` from a filesystem labelled ``cidata`` (ISO 9660 or vfat).
pycdlib writes the ISO in pure Python (Joliet and Rock Ridge carry the real
names), so the seed needs no mount, no loop device and no external tool.
"""

from __future__ import annotations

import base64
import io
import os
import secrets
import struct
from dataclasses import dataclass

import pycdlib

from . import guest
from .scratch import Scratch

LABEL = "cidata"


@dataclass(frozen=True)
class Seed:
    """What one boot's seed says: the hostname, instance id, NIC MAC and user key."""

    hostname: str
    instance_id: str
    mac: str
    ssh_key: str

    @classmethod
    def fresh(cls, index: int) -> Seed:
        """A new identity for boot ``index`` (every boot is a fresh deployment)."""
        token = secrets.token_hex(3)
        return cls(hostname=f"maas-chroot-test-{index}", instance_id=f"i-maas-chroot-{token}",
                   mac="52:54:00:" + ":".join(f"{b:02x}" for b in os.urandom(3)),
                   ssh_key=_ed25519_public_key(f"maas-chroot-boot-test-{token}"))

    def files(self) -> dict[str, bytes]:
        return {"meta-data": guest.meta_data(instance_id=self.instance_id,
                                             hostname=self.hostname).encode(),
                "user-data": guest.user_data(hostname=self.hostname,
                                             ssh_key=self.ssh_key).encode(),
                "network-config": guest.network_config(self.mac).encode()}


def write(seed: Seed, out: Scratch) -> None:
    """Write ``seed`` as a ``cidata`` ISO into the scratch file ``out``."""
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident=LABEL)
    for i, (name, data) in enumerate(sorted(seed.files().items())):
        iso.add_fp(io.BytesIO(data), len(data), f"/F{i}.;1", rr_name=name,
                   joliet_path=f"/{name}")
    buf = io.BytesIO()
    iso.write_fp(buf)
    iso.close()
    out.write(buf.getvalue())


def _ed25519_public_key(comment: str) -> str:
    """An ``ssh-ed25519`` authorized_keys line for a key nobody holds (32 random bytes):
    cloud-init installs it like any other; nothing ever logs in with it."""
    def field(b: bytes) -> bytes:
        return struct.pack(">I", len(b)) + b
    blob = field(b"ssh-ed25519") + field(os.urandom(32))
    return f"ssh-ed25519 {base64.b64encode(blob).decode()} {comment}"
