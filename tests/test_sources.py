"""cloud_image() and url_source(): real cloud-images names, mirrors, and clear refusals."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import maas_chroot as mc
from maas_chroot import releases, sources
from maas_chroot.errors import SourceError, VerificationError
from maas_chroot.sources.fetching import cache_path, default_cache_dir
from maas_chroot.sources.verify import sums_entry

CI = "https://cloud-images.ubuntu.com"


@pytest.fixture(autouse=True)
def _no_mirror_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(sources.MIRROR_ENV, raising=False)


# Real URLs as published on cloud-images.ubuntu.com (and used by packer/MAAS users).
@pytest.mark.parametrize(("kwargs", "url"), [
    ({"release": "noble"},
     f"{CI}/releases/noble/release/ubuntu-24.04-server-cloudimg-amd64.squashfs"),
    ({"release": "focal", "fmt": "root.tar.xz"},
     f"{CI}/releases/focal/release/ubuntu-20.04-server-cloudimg-amd64-root.tar.xz"),
    ({"release": "22.04", "fmt": "root.tar.xz"},
     f"{CI}/releases/jammy/release/ubuntu-22.04-server-cloudimg-amd64-root.tar.xz"),
    ({"release": "noble", "fmt": "root.tar.xz", "serial": "20251026"},
     f"{CI}/releases/noble/release-20251026/ubuntu-24.04-server-cloudimg-amd64-root.tar.xz"),
    ({"release": "focal", "serial": "20200423.1"},
     f"{CI}/releases/focal/release-20200423.1/ubuntu-20.04-server-cloudimg-amd64.squashfs"),
    ({"release": "noble", "stream": "daily"},
     f"{CI}/noble/current/noble-server-cloudimg-amd64.squashfs"),
    ({"release": "focal", "stream": "daily", "fmt": "root.tar.xz"},
     f"{CI}/focal/current/focal-server-cloudimg-amd64-root.tar.xz"),
    ({"release": "jammy", "stream": "daily", "arch": "arm64", "serial": "20240101"},
     f"{CI}/jammy/20240101/jammy-server-cloudimg-arm64.squashfs"),
    ({"release": "Noble", "arch": "s390x"},
     f"{CI}/releases/noble/release/ubuntu-24.04-server-cloudimg-s390x.squashfs"),
])
def test_cloud_image_urls_match_real_names(kwargs: dict[str, str], url: str) -> None:
    release = kwargs.pop("release")
    src = mc.cloud_image(release, **kwargs)  # type: ignore[arg-type]
    assert src.url == url
    directory = url.rsplit("/", 1)[0]
    assert src.sums_url == f"{directory}/SHA256SUMS"
    assert src.sig_url == f"{directory}/SHA256SUMS.gpg"
    assert src.filename == url.rsplit("/", 1)[1]
    assert src.default_verify == "signature"


def test_fields_and_repr() -> None:
    src = mc.cloud_image("24.04", arch="arm64", fmt="root.tar.xz")
    assert (src.release, src.version, src.arch, src.fmt, src.stream, src.serial, src.mirror) == (
        "noble", "24.04", "arm64", "root.tar.xz", "release", "current", CI)
    assert src.is_cloud_image
    text = repr(src)
    assert "'noble' 24.04" in text and "arm64" in text and src.url in text
    with pytest.raises(dataclasses.FrozenInstanceError):
        src.url = "x"  # type: ignore[misc]


def test_releases_table_is_codename_to_version() -> None:
    assert releases.CLOUD_RELEASES["focal"] == "20.04"
    assert releases.CLOUD_RELEASES["jammy"] == "22.04"
    assert releases.CLOUD_RELEASES["noble"] == "24.04"
    for codename, version in releases.CLOUD_RELEASES.items():
        assert releases.cloud_release(version) == (codename, version)
        assert releases.cloud_release(codename.upper()) == (codename, version)
    # one table: every cloud release is one MAAS reserves and accepts as a base image
    assert set(releases.CLOUD_RELEASES) <= set(releases.ubuntu_releases())


def test_mirror_per_call_and_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    src = mc.cloud_image("noble", mirror="http://mirror.example.invalid/ubuntu-cloud-images/")
    assert src.url == ("http://mirror.example.invalid/ubuntu-cloud-images/releases/noble/release/"
                       "ubuntu-24.04-server-cloudimg-amd64.squashfs")
    monkeypatch.setenv(sources.MIRROR_ENV, "http://airgap.example.invalid/ci")
    assert mc.cloud_image("jammy", stream="daily").url == (
        "http://airgap.example.invalid/ci/jammy/current/jammy-server-cloudimg-amd64.squashfs")
    # a per-call mirror wins over the environment
    assert mc.cloud_image("noble", mirror=CI).mirror == CI
    assert mc.cloud_image("noble", mirror="file:///srv/mirror").url.startswith(
        "file:///srv/mirror/releases/noble/")


@pytest.mark.parametrize(("kwargs", "listed"), [
    ({"release": "trusty"}, ["focal (20.04)", "jammy (22.04)", "noble (24.04)"]),
    ({"release": "99.04"}, ["noble (24.04)"]),
    ({"release": "noble", "arch": "x86_64"}, ["amd64", "arm64", "ppc64el", "s390x", "riscv64"]),
    ({"release": "noble", "fmt": "img"}, ["squashfs", "root.tar.xz"]),
    ({"release": "noble", "stream": "weekly"}, ["release", "daily"]),
    ({"release": "noble", "serial": "latest"}, ["current", "YYYYMMDD"]),
    ({"release": "noble", "mirror": "ftp://x.invalid/"}, ["http", "https", "file"]),
])
def test_unknown_values_list_the_valid_ones(kwargs: dict[str, str], listed: list[str]) -> None:
    release = kwargs.pop("release")
    with pytest.raises(SourceError) as err:
        mc.cloud_image(release, **kwargs)  # type: ignore[arg-type]
    for word in listed:
        assert word in str(err.value)


def test_url_source() -> None:
    digest = "ab" * 32
    src = sources.url_source("https://example.invalid/img/x%20y.tar.xz",
                             sha256="SHA256:" + digest.upper())
    assert src.filename == "x y.tar.xz"
    assert src.sha256 == digest
    assert src.default_verify == "checksum"
    assert not src.is_cloud_image
    assert "sha256=" in repr(src)
    signed = sources.url_source("https://example.invalid/a.squashfs",
                                sums_url="https://example.invalid/SHA256SUMS", signed=True)
    assert signed.sig_url == "https://example.invalid/SHA256SUMS.gpg"
    assert signed.default_verify == "signature"
    assert sources.url_source("https://example.invalid/a.squashfs").default_verify is None
    with pytest.raises(SourceError, match="64 hexadecimal"):
        sources.url_source("https://example.invalid/a", sha256="abc")
    with pytest.raises(SourceError, match="sums_url"):
        sources.url_source("https://example.invalid/a", signed=True)
    with pytest.raises(SourceError, match="does not name a file"):
        sources.url_source("https://example.invalid/dir/")
    with pytest.raises(SourceError, match="scheme"):
        sources.url_source("ftp://example.invalid/a")


def test_cache_paths_keep_mirrors_apart(tmp_path: Path) -> None:
    a = cache_path(mc.cloud_image("noble").url, tmp_path)
    b = cache_path(mc.cloud_image("noble", mirror="http://127.0.0.1:8080/m").url, tmp_path)
    assert a == tmp_path / ("cloud-images.ubuntu.com/releases/noble/release/"
                            "ubuntu-24.04-server-cloudimg-amd64.squashfs")
    assert b == tmp_path / ("127.0.0.1_8080/m/releases/noble/release/"
                            "ubuntu-24.04-server-cloudimg-amd64.squashfs")
    with pytest.raises(SourceError):
        cache_path("http://h.invalid/a/%2e%2e/b", tmp_path)
    with pytest.raises(SourceError):
        cache_path("http://h.invalid/a/%2Fetc", tmp_path)


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "maas-chroot"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "maas-chroot"


def test_sums_entry_matches_the_exact_name() -> None:
    h1, h2, h3 = "1" * 64, "2" * 64, "3" * 64
    name = "noble-server-cloudimg-amd64.squashfs"
    sums = (f"{h1} *{name}.manifest\n{h2} *{name}\n{h3}  other-{name}\n").encode()
    assert sums_entry(sums, name, url="u") == h2
    assert sums_entry(sums, f"other-{name}", url="u") == h3  # text-mode line
    with pytest.raises(VerificationError, match="no entry"):
        sums_entry(sums, "missing.squashfs", url="u")
    with pytest.raises(VerificationError, match="2 times"):
        sums_entry(sums + f"{h2} *{name}\n".encode(), name, url="u")
