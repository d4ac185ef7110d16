"""maas_chroot.maas with the real maas CLI as the oracle.

canonical/maas's own ``src/maascli`` (run from the checkout ``$MAAS_SOURCE`` names, with
its PyPI dependencies, the ``maascli`` extra) logs in to the test server (tests/servers/maas.py),
uploads and reads. maas_chroot shares its profiles and its boot resources both ways. The CLI
is on no package index (MAAS ships it in its snap and deb), so without ``MAAS_SOURCE`` these
tests skip, saying how to run them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from fixtures import RealMaasCli, make_tgz
from servers.maas import serve
from servers.tls import TestCA

from maas_chroot import maas as mm

pytestmark = pytest.mark.maascli
MiB = 1 << 20


@pytest.fixture
def cli(maascli_src: Path, tmp_path: Path) -> RealMaasCli:
    return RealMaasCli(maascli_src, tmp_path / "home")


def test_a_profile_the_real_maas_login_saved_uploads_over_https(
        cli: RealMaasCli, tmp_path: Path, maas_ca: TestCA) -> None:
    with serve(tmp_path / "maas", tls=(maas_ca.cert, maas_ca.key), version="3.6") as fake:
        cli("login", "admin", fake.url + "/api/2.0/", fake.api_key, "--cacerts", str(maas_ca.ca))
        image = make_tgz(tmp_path / "img.tgz", payload=9 * MiB)
        data = image.read_bytes()
        client = mm.MaasClient.from_profile("admin", path=cli.db, timeout=30)
        res = client.upload(image, name="custom/oracle", base_image="ubuntu/jammy", progress=False)
        assert fake.content("custom/oracle") == data

        # what the real CLI reads back is what maas_chroot asked for
        listed = cli.json("admin", "boot-resources", "read")
        assert [(r["id"], r["name"], r["architecture"], r["base_image"]) for r in listed] == \
            [(res.id, "oracle", "amd64/generic", "ubuntu/jammy")]
        one = cli.json("admin", "boot-resource", "read", str(res.id))
        files = list(one["sets"][res.version]["files"].values())
        assert [(f["sha256"], f["size"], f["complete"]) for f in files] == \
            [(hashlib.sha256(data).hexdigest(), len(data), True)]

        client.delete("custom/oracle")
        assert cli.json("admin", "boot-resources", "read") == []


@pytest.mark.parametrize("version", ["3.4", "3.6", "3.8"])
def test_what_the_real_cli_uploads_maas_chroot_lists_and_finds(
        cli: RealMaasCli, tmp_path: Path, version: str) -> None:
    with serve(tmp_path / "maas", version=version) as fake:
        cli("login", "admin", fake.url + "/api/2.0/", fake.api_key)
        image = make_tgz(tmp_path / "cli.tgz", payload=6 * MiB)  # two of the CLI's 4 MiB chunks
        data = image.read_bytes()
        # the CLI sends the name as given; every part of its multipart is base64
        cli("admin", "boot-resources", "create", "name=custom/from-cli",
            "architecture=amd64/generic", "filetype=tgz", "base_image=ubuntu/jammy",
            f"content@={image}")
        client = mm.MaasClient.from_profile("admin", path=cli.db, timeout=30)
        [img] = client.images()
        assert (img.size, img.sha256, img.complete) == \
            (len(data), hashlib.sha256(data).hexdigest(), True)
        assert img.full_name == "custom/from-cli" and img.architecture == "amd64/generic"

        # MAAS 3.8 stores custom/from-cli as sent, where deploy cannot find it
        # (BootResourceManager.get_resource_for looks a custom release up by name == release)
        stored = {"3.8": "custom/from-cli"}.get(version, "from-cli")
        assert [r.name for r in fake.resources.values()] == [stored]
        found = fake.get_resource_for("custom", "amd64", "generic", "from-cli")
        assert (found is None) == (version == "3.8")

        # maas_chroot's upload of the same name is found at deploy on every version
        ours = make_tgz(tmp_path / "ours.tgz", payload=MiB)
        client.upload(ours, name="custom/ours", base_image="ubuntu/jammy", progress=False)
        assert fake.get_resource_for("custom", "amd64", "generic", "ours") is not None
        names = {r["name"] for r in cli.json("admin", "boot-resources", "read")}
        assert names == {stored, "ours"}
