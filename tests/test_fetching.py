"""fetch(): verified, cached, resumable downloads, against a real HTTP server and real gpg.

Every test serves a cloud-images-style tree (tests/cloudimages.py) on 127.0.0.1,
signed by a throwaway GPG key, and reads the server's request log as evidence.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers.cloudimages import CloudImageSite, serve_cloud_images
from servers.proxy import serve_proxy

import maas_chroot as mc
from maas_chroot.errors import FetchError, SourceError, VerificationError
from maas_chroot.sources import verify
from maas_chroot.sources.fetching import cache_path, fetch

REPO = Path(__file__).resolve().parent.parent
FAST = {"retries": 3, "backoff": 0.01}


@pytest.fixture
def site(tmp_path: Path) -> Iterator[CloudImageSite]:
    with serve_cloud_images(tmp_path) as s:
        yield s


@pytest.fixture(autouse=True)
def _no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The host's proxy settings must not reroute 127.0.0.1 traffic in these tests."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
                 "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.delenv("no_proxy", raising=False)


def _fetch(site: CloudImageSite, tmp_path: Path, src: mc.ImageSource | str | None = None,
           **kw: object) -> Path:
    kw.setdefault("keyring", site.keyring)
    kw.setdefault("cache_dir", tmp_path / "cache")
    for k, v in FAST.items():
        kw.setdefault(k, v)
    return mc.fetch(src if src is not None else site.source(), **kw)  # type: ignore[arg-type]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _leftovers(target: Path) -> list[str]:
    """Files beside the cached target other than the lock (a failed fetch leaves none)."""
    if not target.parent.exists():
        return []
    return sorted(p.name for p in target.parent.iterdir() if not p.name.endswith(".lock"))


def _publish_new_build(site: CloudImageSite, src: mc.ImageSource, *, offset: int) -> None:
    """The mirror publishes a new build: new bytes, and a SHA256SUMS line that matches them."""
    site.flip_byte(src.url, offset=offset)
    directory = src.url.rsplit("/", 1)[0]
    site.write_sums(directory, [
        f"{site.sha256(src.url)} *{src.filename}" if line.endswith(f"*{src.filename}") else line
        for line in site.sums_lines(directory)])


# ---------------------------------------------------------------- good images

def test_good_image_is_downloaded_verified_and_cached(site: CloudImageSite,
                                                      tmp_path: Path) -> None:
    src = site.source("noble")
    path = _fetch(site, tmp_path, src)
    assert path == cache_path(src.url, tmp_path / "cache")
    assert path.read_bytes() == site.path(src.url).read_bytes()
    assert [(e.path, e.status) for e in site.log] == [
        ("/releases/noble/release/SHA256SUMS", 200),
        ("/releases/noble/release/SHA256SUMS.gpg", 200),
        ("/releases/noble/release/ubuntu-24.04-server-cloudimg-amd64.squashfs", 200),
    ]
    record = json.loads(path.with_name(path.name + ".fetch.json").read_text())
    assert record["sha256"] == _sha(path) and record["verify"] == "signature"
    assert _leftovers(path) == [path.name, path.name + ".fetch.json"]  # no .part left


def test_daily_root_tar_xz_and_a_release_serial(site: CloudImageSite, tmp_path: Path) -> None:
    daily = site.source("24.04", stream="daily", fmt="root.tar.xz")
    assert daily.url.endswith("/noble/current/noble-server-cloudimg-amd64-root.tar.xz")
    path = _fetch(site, tmp_path, daily)
    assert path.read_bytes()[:6] == b"\xfd7zXZ\x00"
    pinned = site.source("noble", serial=site.serial)
    assert f"/releases/noble/release-{site.serial}/" in pinned.url
    assert _sha(_fetch(site, tmp_path, pinned)) == site.sha256(pinned.url)


def test_progress_bar_in_bytes(site: CloudImageSite, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    src = site.source("noble")
    _fetch(site, tmp_path, src, progress=True)
    err = capsys.readouterr().err
    assert src.filename in err
    assert "B/s" in err  # a byte rate


# ---------------------------------------------------------------- verification failures

def test_tampered_image_byte_is_deleted(site: CloudImageSite, tmp_path: Path) -> None:
    src = site.source("noble")
    site.flip_byte(src.url, offset=1000)
    with pytest.raises(VerificationError) as err:
        _fetch(site, tmp_path, src)
    assert src.url in str(err.value) and "deleted" in str(err.value)
    target = cache_path(src.url, tmp_path / "cache")
    assert not target.exists()
    assert _leftovers(target) == []


def test_tampered_sums_fails_the_signature(site: CloudImageSite, tmp_path: Path) -> None:
    src = site.source("noble")
    directory = src.sums_url.rsplit("/", 1)[0]  # type: ignore[union-attr]
    lines = site.sums_lines(directory)
    fake = hashlib.sha256(b"evil").hexdigest()
    site.write_sums(directory, [f"{fake} *{src.filename}" if line.endswith(src.filename)
                                else line for line in lines], sign=None)
    with pytest.raises(VerificationError, match="bad or untrusted signature") as err:
        _fetch(site, tmp_path, src)
    assert "BADSIG" in str(err.value)
    assert site.log.entries(src.url) == []  # the image itself was never requested
    assert not cache_path(src.url, tmp_path / "cache").exists()


def test_signature_by_another_key(site: CloudImageSite, tmp_path: Path) -> None:
    src = site.source("noble")
    site.sign(src.sums_url.rsplit("/", 1)[0], key="other")  # type: ignore[union-attr]
    with pytest.raises(VerificationError, match="untrusted signature") as err:
        _fetch(site, tmp_path, src)
    assert str(site.keyring) in str(err.value)
    assert site.log.entries(src.url) == []
    # the same signature is good for a keyring holding that other key
    assert _fetch(site, tmp_path, src, keyring=site.other_keyring).is_file()


@pytest.mark.parametrize("case", ["missing", "duplicated"])
def test_sums_entry_missing_or_duplicated(site: CloudImageSite, tmp_path: Path,
                                          case: str) -> None:
    src = site.source("noble")
    directory = src.sums_url.rsplit("/", 1)[0]  # type: ignore[union-attr]
    lines = site.sums_lines(directory)
    mine = [line for line in lines if line.endswith(f"*{src.filename}")]
    assert len(mine) == 1
    others = [line for line in lines if line not in mine]
    site.write_sums(directory, others if case == "missing" else lines + mine)  # validly signed
    with pytest.raises(VerificationError) as err:
        _fetch(site, tmp_path, src)
    assert src.filename in str(err.value)
    assert ("no entry" if case == "missing" else "2 times") in str(err.value)
    assert site.log.entries(src.url) == []


def test_missing_keyring_says_how_to_fix(site: CloudImageSite, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(verify, "DEFAULT_KEYRING", str(tmp_path / "absent.gpg"))
    with pytest.raises(VerificationError) as err:
        _fetch(site, tmp_path, keyring=None)
    assert "apt install ubuntu-cloudimage-keyring" in str(err.value)
    assert 'verify="checksum"' in str(err.value)
    assert len(site.log) == 0  # refused before any download
    # checksum mode works without a keyring, and never asks for the signature
    _fetch(site, tmp_path, keyring=None, verify="checksum")
    assert not any(e.path.endswith(".gpg") for e in site.log)


def test_pinned_hash_must_match_sums(site: CloudImageSite, tmp_path: Path) -> None:
    with pytest.raises(VerificationError, match="was expected"):
        _fetch(site, tmp_path, sha256="0" * 64)


# ---------------------------------------------------------------- HTTP errors and retries

def test_404_fails_at_once_with_the_url(site: CloudImageSite, tmp_path: Path) -> None:
    src = site.source("jammy")  # not on this mirror
    with pytest.raises(FetchError) as err:
        _fetch(site, tmp_path, src)
    assert err.value.status == 404
    assert src.sums_url in str(err.value)  # type: ignore[operator]
    assert [(e.path, e.status) for e in site.log] == [("/releases/jammy/release/SHA256SUMS", 404)]


def test_403_on_the_image_fails_at_once(site: CloudImageSite, tmp_path: Path) -> None:
    src = site.source("noble")
    site.fail(src.url, 403, times=None)
    with pytest.raises(FetchError) as err:
        _fetch(site, tmp_path, src)
    assert err.value.status == 403 and src.url in str(err.value)
    assert [e.status for e in site.log.entries(src.url)] == [403]


def test_5xx_is_retried_then_succeeds(site: CloudImageSite, tmp_path: Path) -> None:
    src = site.source("noble")
    site.fail(src.sums_url or "", 500, times=1)
    site.fail(src.url, 503, times=2)
    assert _sha(_fetch(site, tmp_path, src)) == site.sha256(src.url)
    assert [e.status for e in site.log.entries(src.sums_url or "")] == [500, 200]
    assert [e.status for e in site.log.entries(src.url)] == [503, 503, 200]


def test_persistent_5xx_gives_up_after_the_retries(site: CloudImageSite, tmp_path: Path) -> None:
    src = site.source("noble")
    site.fail(src.url, 502, times=None)
    with pytest.raises(FetchError) as err:
        _fetch(site, tmp_path, src, retries=2)
    assert err.value.status == 502 and src.url in str(err.value)
    assert [e.status for e in site.log.entries(src.url)] == [502, 502, 502]


# ---------------------------------------------------------------- resume

def test_cut_connection_resumes_with_a_range_request(site: CloudImageSite,
                                                     tmp_path: Path) -> None:
    src = site.source("noble")
    size = site.path(src.url).stat().st_size
    half = size // 2
    site.cut_after(src.url, half)
    path = _fetch(site, tmp_path, src)
    assert _sha(path) == site.sha256(src.url)
    first, second = site.log.entries(src.url)
    assert (first.status, first.sent, first.range) == (200, half, None)
    assert (second.status, second.sent, second.range) == (206, size - half, f"bytes={half}-")
    assert second.if_range is not None  # the ETag of the first answer
    print("\n".join(str(e) for e in site.log.entries(src.url)))


def test_interrupted_fetch_resumes_in_the_next_call(site: CloudImageSite,
                                                    tmp_path: Path) -> None:
    src = site.source("noble")
    size = site.path(src.url).stat().st_size
    site.cut_after(src.url, 100_000)
    with pytest.raises(FetchError):
        _fetch(site, tmp_path, src, retries=0)
    target = cache_path(src.url, tmp_path / "cache")
    part = target.with_name(target.name + ".part")
    assert part.stat().st_size == 100_000 and not target.exists()
    site.log.clear()
    assert _sha(_fetch(site, tmp_path, src)) == site.sha256(src.url)
    image = site.log.entries(src.url)
    assert [(e.status, e.range, e.sent) for e in image] == [(206, "bytes=100000-",
                                                            size - 100_000)]
    assert not part.exists()


def test_complete_part_refused_by_the_server_starts_over(site: CloudImageSite,
                                                         tmp_path: Path) -> None:
    """A process killed after the last byte but before the rename leaves a whole .part:
    the server answers its Range with 416, and the download starts over."""
    src = site.source("noble")
    data = site.path(src.url).read_bytes()
    site.cut_after(src.url, 1000)
    with pytest.raises(FetchError):
        _fetch(site, tmp_path, src, retries=0)
    target = cache_path(src.url, tmp_path / "cache")
    with open(target.with_name(target.name + ".part"), "ab") as part:
        part.write(data[1000:])
    site.log.clear()
    assert _fetch(site, tmp_path, src).read_bytes() == data
    assert [(e.status, e.range) for e in site.log.entries(src.url)] == [
        (416, f"bytes={len(data)}-"), (200, None)]


def test_server_ignoring_range_restarts_from_scratch(site: CloudImageSite,
                                                     tmp_path: Path) -> None:
    src = site.source("noble")
    size = site.path(src.url).stat().st_size
    site.cut_after(src.url, 150_000)
    site.ignore_range(src.url)
    path = _fetch(site, tmp_path, src)
    assert _sha(path) == site.sha256(src.url) and path.stat().st_size == size
    first, second = site.log.entries(src.url)
    assert (first.status, first.sent) == (200, 150_000)
    assert (second.range, second.status, second.sent) == ("bytes=150000-", 200, size)


def test_changed_file_is_not_spliced_onto_an_old_part(site: CloudImageSite,
                                                      tmp_path: Path) -> None:
    src = site.source("noble", stream="daily")
    site.cut_after(src.url, 100_000)
    with pytest.raises(FetchError):
        _fetch(site, tmp_path, src, retries=0)
    # the mirror publishes a new build (new bytes, new SHA256SUMS) before the resume
    _publish_new_build(site, src, offset=10)
    site.log.clear()
    assert _sha(_fetch(site, tmp_path, src)) == site.sha256(src.url)
    (entry,) = site.log.entries(src.url)
    assert entry.range == "bytes=100000-" and entry.status == 200  # If-Range did not match


# ---------------------------------------------------------------- cache

def test_second_fetch_moves_no_image_bytes(site: CloudImageSite, tmp_path: Path) -> None:
    src = site.source("noble")
    first = _fetch(site, tmp_path, src)
    site.log.clear()
    second = _fetch(site, tmp_path, src)
    assert second == first
    entries = site.log.entries()
    print("\n".join(str(e) for e in entries))
    assert [(e.path, e.status, e.sent) for e in entries] == [
        ("/releases/noble/release/SHA256SUMS", 304, 0)]
    assert entries[0].if_none_match is not None


def test_new_sums_with_the_same_hash_keeps_the_cached_image(site: CloudImageSite,
                                                            tmp_path: Path) -> None:
    src = site.source("noble")
    _fetch(site, tmp_path, src)
    directory = src.url.rsplit("/", 1)[0]
    site.write_sums(directory, [*site.sums_lines(directory), f"{'5' * 64} *new-file.img"])
    site.log.clear()
    _fetch(site, tmp_path, src)
    assert [(e.path.rsplit("/", 1)[1], e.status) for e in site.log] == [
        ("SHA256SUMS", 200), ("SHA256SUMS.gpg", 200)]


def test_new_build_is_downloaded(site: CloudImageSite, tmp_path: Path) -> None:
    src = site.source("noble")
    _fetch(site, tmp_path, src)
    _publish_new_build(site, src, offset=5)
    site.log.clear()
    assert _sha(_fetch(site, tmp_path, src)) == site.sha256(src.url)
    assert [e.status for e in site.log.entries(src.url)] == [200]


def test_offline_uses_the_verified_cached_copy(tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    with serve_cloud_images(tmp_path) as site:
        src = site.source("noble")
        path = _fetch(site, tmp_path, src)
        other = site.source("noble", fmt="root.tar.xz")
    # the server is gone now
    with caplog.at_level(logging.WARNING, logger="maas_chroot"):
        again = _fetch(site, tmp_path, src, retries=1)
    assert again == path and _sha(again) == _sha(path)
    assert any("cached copy" in r.getMessage() for r in caplog.records)
    with pytest.raises(FetchError, match="cannot download"):
        _fetch(site, tmp_path, other, retries=1)  # nothing cached for this one


_CHILD = """
import json, logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
from maas_chroot.sources.fetching import fetch
from maas_chroot.sources import cloud_image
a = json.loads(sys.argv[1])
path = fetch(cloud_image("noble", mirror=a["mirror"]), keyring=a["keyring"],
             cache_dir=a["cache"], progress=False)
print(path, flush=True)
"""


def test_two_processes_fetching_at_once_download_once(site: CloudImageSite,
                                                      tmp_path: Path) -> None:
    src = site.source("noble")
    hold = site.hold(src.url)  # keep the first download open until the second one waits
    args = json.dumps({"mirror": site.mirror, "keyring": str(site.keyring),
                       "cache": str(tmp_path / "cache")})
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs: list[subprocess.Popen[str]] = []
    try:
        for _ in range(2):
            procs.append(subprocess.Popen([sys.executable, "-c", _CHILD, args], env=env,
                                          cwd=REPO, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True))
            if len(procs) == 1:
                assert hold.arrived.wait(timeout=60), "first process never requested the image"
        second = procs[1]
        waited: list[str] = []
        release = threading.Timer(60, hold.release)  # a safety net only
        release.start()
        for line in second.stderr:  # type: ignore[union-attr]
            waited.append(line)
            if "waiting for another process" in line:
                break
        hold.release()
        release.cancel()
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        hold.release()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0, 0], outs
    assert any("waiting for another process" in line for line in waited), waited
    paths = {out.strip() for out, _ in outs}
    assert paths == {str(cache_path(src.url, tmp_path / "cache"))}
    assert _sha(Path(paths.pop())) == site.sha256(src.url)
    image = site.log.entries(src.url)
    assert [(e.status, e.sent) for e in image] == [(200, site.path(src.url).stat().st_size)]
    sums = [e.status for e in site.log.entries(src.sums_url or "")]
    assert sums == [200, 304]  # the second process only revalidated


# ---------------------------------------------------------------- proxies

def test_proxy_variables_are_honoured(site: CloudImageSite, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    src = site.source("noble")
    with serve_proxy() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        # requests skips proxies for hosts in NO_PROXY: 127.0.0.1 must not be there
        monkeypatch.delenv("NO_PROXY")
        path = _fetch(site, tmp_path, src)
        assert _sha(path) == site.sha256(src.url)
        assert ("GET", src.url, 200) in proxy.log
        assert [m for m, _, _ in proxy.log] == ["GET", "GET", "GET"]
        assert all(e.via == "1.1 maas-chroot-test-proxy" for e in site.log)
        # NO_PROXY is honoured too
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        proxy.log.clear()
        site.log.clear()
        _fetch(site, tmp_path, src)
        assert proxy.log == []
        assert [(e.status, e.via) for e in site.log] == [(304, None)]


# ---------------------------------------------------------------- other sources

def test_plain_url_needs_an_explicit_verification_choice(site: CloudImageSite,
                                                         tmp_path: Path) -> None:
    src = site.source("noble")
    with pytest.raises(SourceError, match="without a way to verify") as err:
        _fetch(site, tmp_path, src.url)
    assert 'verify="none"' in str(err.value)
    assert len(site.log) == 0
    digest = site.sha256(src.url)
    by_hash = _fetch(site, tmp_path, src.url, sha256=digest)
    assert _sha(by_hash) == digest
    site.log.clear()
    assert _fetch(site, tmp_path, src.url, sha256=digest) == by_hash
    assert len(site.log) == 0  # a pinned hash needs no network when cached
    with pytest.raises(VerificationError):
        _fetch(site, tmp_path, site.source("noble", fmt="root.tar.xz").url, sha256="1" * 64)
    assert _fetch(site, tmp_path, src.url, sums_url=src.sums_url, cache_dir=tmp_path / "c2")
    assert _fetch(site, tmp_path, src.url, sums_url=src.sums_url, verify="signature",
                  cache_dir=tmp_path / "c3")
    assert _fetch(site, tmp_path, src.url, verify="none", cache_dir=tmp_path / "c4")


def test_unverified_url_revalidates_with_a_conditional_get(site: CloudImageSite,
                                                           tmp_path: Path) -> None:
    url = site.source("noble").url
    _fetch(site, tmp_path, url, verify="none")
    site.log.clear()
    _fetch(site, tmp_path, url, verify="none")
    (entry,) = site.log.entries()
    assert (entry.path, entry.status, entry.sent) == (
        "/releases/noble/release/ubuntu-24.04-server-cloudimg-amd64.squashfs", 304, 0)
    assert entry.if_none_match is not None


def test_local_paths_are_returned_as_they_are(tmp_path: Path) -> None:
    f = tmp_path / "local.squashfs"
    f.write_bytes(b"local image")
    assert mc.fetch(f) == f
    assert mc.fetch(str(f)) == f
    assert mc.fetch(f.as_uri()) == f
    assert mc.fetch(tmp_path) == tmp_path  # a directory (an unpacked rootfs) too
    assert mc.fetch(f, sha256=hashlib.sha256(b"local image").hexdigest()) == f
    with pytest.raises(VerificationError, match="left in place"):
        mc.fetch(f, sha256="2" * 64)
    assert f.exists()
    with pytest.raises(FetchError, match="no such file"):
        mc.fetch(tmp_path / "absent.squashfs")


def test_file_mirror_is_verified_in_place(site: CloudImageSite, tmp_path: Path) -> None:
    src = mc.cloud_image("noble", mirror=site.root.as_uri())
    path = _fetch(site, tmp_path, src)
    assert path == site.path(site.source("noble").url)
    assert not (tmp_path / "cache").exists()  # nothing copied
    site.flip_byte(site.source("noble").url)
    with pytest.raises(VerificationError):
        _fetch(site, tmp_path, src)
    assert path.exists()  # the mirror's own file is never deleted


def test_mirror_from_the_environment(site: CloudImageSite, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAAS_CHROOT_MIRROR", site.mirror)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    path = mc.fetch(mc.cloud_image("noble"), keyring=site.keyring, progress=False)
    assert path.is_relative_to(tmp_path / "xdg" / "maas-chroot")
    assert _sha(path) == site.sha256(site.source("noble").url)


def test_unwritable_cache_is_a_fetch_error(site: CloudImageSite, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with pytest.raises(FetchError, match="cache_dir=") as err:
        _fetch(site, tmp_path, cache_dir=blocker)
    assert str(blocker) in str(err.value)


def test_site_serves_a_given_rootfs_tar(tmp_path: Path) -> None:
    """The helper other tests use: a caller's rootfs tarball becomes both image formats."""
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/marker").write_text("from the caller's tar\n")
    tar = tmp_path / "rootfs.tar"
    with tarfile.open(tar, "w") as t:
        t.add(tree, arcname=".")
    with serve_cloud_images(tmp_path, rootfs_tar=tar, releases=("jammy",),
                            arches=("arm64",)) as site:
        txz = _fetch(site, tmp_path, site.source("jammy", arch="arm64", fmt="root.tar.xz"))
        with tarfile.open(txz) as t:
            assert t.extractfile("./etc/marker").read() == b"from the caller's tar\n"  # type: ignore[union-attr]
        sqfs = _fetch(site, tmp_path, site.source("22.04", arch="arm64", stream="daily"))
        listing = subprocess.run(["unsquashfs", "-l", str(sqfs)], check=True,
                                 capture_output=True, text=True).stdout
        assert "squashfs-root/etc/marker" in listing


@pytest.mark.parametrize("url", ["http://../x/y.img", "http://./x/y.img", "http:///x/y.img",
                                 "http://..:8080/x/y.img"])
def test_cache_path_refuses_hosts_that_leave_the_cache(tmp_path: Path, url: str) -> None:
    cache = tmp_path / "a" / "cache"
    with pytest.raises(SourceError, match="host name") as err:
        cache_path(url, cache)
    assert url in str(err.value)
    with pytest.raises(SourceError):
        fetch(url, sha256="0" * 64, cache_dir=cache, retries=0)
    assert sorted(p.name for p in tmp_path.rglob("*")) == []
