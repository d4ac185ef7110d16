"""maas_chroot.maas against a MAAS-like server on 127.0.0.1 (tests/maas_server.py)."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import lzma
import os
import re
import socket
import sqlite3
import subprocess
import sys
import tarfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from oauthlib.oauth1 import SIGNATURE_PLAINTEXT, Client
from requests_oauthlib import OAuth1
from servers.maas import FakeMaas, serve

from maas_chroot import maas as mm
from maas_chroot.errors import ArchiveError, ImageNameError, MaasApiError
from maas_chroot.maas import api, names

MiB = 1 << 20


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeMaas]:
    with serve(tmp_path / "maas") as f:
        yield f


def client(fake: FakeMaas) -> mm.MaasClient:
    return mm.MaasClient(fake.url, fake.api_key, timeout=30)


def make_tgz(path: Path, *, payload: int, codename: str | None = "jammy") -> Path:
    """A real tar.gz with an Ubuntu etc/lsb-release and ``payload`` random bytes."""
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if codename:
            add("etc/lsb-release", f"DISTRIB_ID=Ubuntu\nDISTRIB_CODENAME={codename}\n".encode())
        add("usr/lib/big", os.urandom(payload))
    return path


def nonces(fake: FakeMaas) -> list[str]:
    return [re.search(r'oauth_nonce="([^"]+)"', e.authorization or "").group(1)  # type: ignore[union-attr]
            for e in fake.log]


# --- upload -----------------------------------------------------------------------------------

def test_multi_chunk_upload_arrives_byte_exact(fake: FakeMaas, tmp_path: Path) -> None:
    image = make_tgz(tmp_path / "img.tgz", payload=10 * MiB + 12345)
    data = image.read_bytes()
    res = client(fake).upload(image, name="custom/my-image", progress=False)

    assert fake.content("custom/my-image") == data
    assert res.complete is True and res.name == "my-image" and res.type == "Uploaded"
    assert res.sha256 == hashlib.sha256(data).hexdigest() and res.size == len(data)
    assert res.full_name == "custom/my-image"
    # filetype from the magic bytes, base_image from the image's etc/lsb-release
    assert res.raw["sets"][res.version]["files"]["root.tgz"]["filetype"] == "root-tgz"
    assert res.base_image == "ubuntu/jammy"
    puts = fake.requests("PUT")
    assert [p.content_length for p in puts] == [4 * MiB, 4 * MiB, len(data) - 8 * MiB]
    assert all(p.status == 200 for p in puts)
    # every request (each chunk included) is signed anew: no nonce twice
    assert len(set(nonces(fake))) == len(fake.log) == 1 + 3 + 1      # POST, 3 PUTs, GET
    assert all(e.authorization and e.authorization.startswith('OAuth realm="OAuth", ')
               and 'oauth_signature_method="PLAINTEXT"' in e.authorization
               and f'oauth_signature="%26{fake.token_secret}"' in e.authorization
               for e in fake.log)


def test_complete_short_cut_sends_no_bytes(fake: FakeMaas, tmp_path: Path) -> None:
    image = tmp_path / "img.bin"
    image.write_bytes(os.urandom(5 * MiB))
    c = client(fake)
    first = c.upload(image, name="custom/first", filetype="ddraw", progress=False)
    assert first.complete
    n = len(fake.log)
    second = c.upload(image, name="custom/second", filetype="ddraw", progress=False)
    after = fake.log[n:]
    assert [e.method for e in after] == ["POST"]            # MAAS said complete: no PUT
    assert second.complete is True and second.name == "second"
    assert fake.content("custom/second") == image.read_bytes()


def test_pack_result_is_used_as_is_and_a_wrong_sha256_is_refused_by_maas(
        fake: FakeMaas, tmp_path: Path) -> None:
    @dataclass(frozen=True)
    class PackResult:
        path: Path
        size: int
        sha256: str

    image = tmp_path / "img.bin"
    image.write_bytes(os.urandom(MiB + 1))
    with pytest.raises(MaasApiError) as e:
        client(fake).upload(PackResult(image, MiB + 1, "0" * 64), name="custom/x",
                            filetype="ddraw", progress=False)
    assert e.value.status == 400
    assert "Saved content does not match given SHA256 value." in str(e.value)
    rid = fake.resource_by_name("x").id
    assert f"boot-resource delete {rid}" in str(e.value)
    assert not fake.file_of("custom/x").complete


def test_maas_validation_message_is_kept(fake: FakeMaas, tmp_path: Path) -> None:
    image = make_tgz(tmp_path / "img.tgz", payload=1000)
    with pytest.raises(MaasApiError) as e:
        client(fake).upload(image, name="custom/x", architecture="ppc64el/generic",
                            progress=False)
    assert e.value.status == 400
    assert "architecture: 'ppc64el/generic' is not a valid architecture" in str(e.value)
    assert json.loads(e.value.body or "")["architecture"]
    assert fake.requests("PUT") == []


def test_base_image_from_name_when_the_image_does_not_say(fake: FakeMaas,
                                                          tmp_path: Path) -> None:
    image = make_tgz(tmp_path / "img.tgz", payload=1000, codename=None)
    res = client(fake).upload(image, name="noble-custom", progress=False)
    assert res.base_image == "ubuntu/noble" and res.name == "noble-custom"
    res = client(fake).upload(image, name="custom/mine", base_image="ubuntu/focal",
                              progress=False)
    assert res.base_image == "ubuntu/focal"


# --- auth ------------------------------------------------------------------------------------

def test_wrong_key_is_a_clear_401(fake: FakeMaas, tmp_path: Path) -> None:
    bad = mm.MaasClient(fake.url, "aaaa:bbbb:cccc")
    with pytest.raises(MaasApiError) as e:
        bad.boot_resources()
    assert e.value.status == 401
    assert "Authorization Error: Invalid API key." in str(e.value)
    assert "maas apikey --username" in str(e.value)
    wrong_secret = mm.MaasClient(fake.url, f"{fake.consumer_key}:{fake.token_key}:nope")
    image = make_tgz(tmp_path / "img.tgz", payload=1000)
    with pytest.raises(MaasApiError) as e:
        wrong_secret.upload(image, name="custom/x", progress=False)
    assert e.value.status == 401 and "Invalid signature" in str(e.value)
    assert fake.resources == {}


def _signed_get(fake: FakeMaas, **oauth: str) -> requests.PreparedRequest:
    ck, tk, secret = fake.api_key.split(":")
    c = Client(ck, "", tk, secret, signature_method=SIGNATURE_PLAINTEXT, realm="OAuth",
               **oauth)
    url = fake.url + "/api/2.0/boot-resources/"
    _, headers, _ = c.sign(url, "GET")
    return requests.Request("GET", url, headers=headers).prepare()


def test_server_refuses_stale_timestamps_and_replays_like_maas(fake: FakeMaas) -> None:
    with requests.Session() as s:
        stale = _signed_get(fake, timestamp=str(int(time.time()) - 301))
        r = s.send(stale)
        assert r.status_code == 401
        assert re.fullmatch(r"Authorization Error: 'Expired timestamp: given \d+ and now \d+ "
                            r"has a greater difference than threshold 300'", r.text)
        fresh = _signed_get(fake)
        assert s.send(fresh).status_code == 200
        replay = s.send(fresh)                    # the very same signed request again
        assert replay.status_code == 401 and "Nonce already used" in replay.text
        # requests-oauthlib signs each request anew: the same auth object works twice
        ck, tk, secret = fake.api_key.split(":")
        auth = OAuth1(ck, "", tk, secret, signature_method=SIGNATURE_PLAINTEXT, realm="OAuth")
        for _ in range(2):
            assert s.get(fake.url + "/api/2.0/boot-resources/", auth=auth).status_code == 200
        # a header signed once, 301 s into a long upload, fails even with a fresh nonce
        fake.clock = lambda: time.time() + 301
        r = s.get(fake.url + "/api/2.0/boot-resources/",
                  headers={"Authorization": fresh.headers["Authorization"].replace(
                      "oauth_nonce=\"", "oauth_nonce=\"x")})
        assert r.status_code == 401 and "Expired timestamp" in r.text


def test_server_checks_content_length_and_appends_by_size(fake: FakeMaas) -> None:
    c = client(fake)
    data = os.urandom(100)
    created = c._json("POST", "boot-resources/", files={k: (None, v) for k, v in {
        "name": "custom/raw", "architecture": "amd64/generic", "filetype": "ddraw",
        "size": "100", "sha256": hashlib.sha256(data).hexdigest()}.items()})
    uri = api.the_file(created, c.api_url)["upload_uri"]
    url = fake.url.split("/MAAS")[0] + uri
    put = c._session.put
    hdr = {"Content-Type": "application/octet-stream"}
    # a body shorter than its Content-Length: MAAS's own message, nothing stored
    req = c._session.prepare_request(requests.Request("PUT", url, data=data[:10], headers=hdr))
    host, port = fake.url.split("//")[1].split("/")[0].split(":")
    authz = req.headers["Authorization"]
    authz = authz.decode() if isinstance(authz, bytes) else authz
    with socket.create_connection((host, int(port))) as sock:
        head = [f"PUT {uri} HTTP/1.1", f"Host: {host}", "Content-Length: 40",
                f"Authorization: {authz}", "Connection: close"]
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + data[:10])
        sock.shutdown(socket.SHUT_WR)
        answer = sock.makefile("rb").read().decode()
    assert " 400 " in answer.splitlines()[0]
    assert answer.endswith("Content-Length doesn't equal size of received data.")
    assert fake.file_of("raw").stored == 0
    assert put(url, data=data[:60], headers=hdr).status_code == 200
    r = put(url, data=data[:60], headers=hdr)         # 60 + 60 > 100
    assert (r.status_code, r.text) == (400, "Too much data received.")
    assert put(url, data=data[60:], headers=hdr).status_code == 200
    assert fake.content("raw") == data
    r = put(url, data=b"x", headers=hdr)
    assert (r.status_code, r.text) == (400, "Cannot upload to a complete file.")


# --- names -------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "normal"), [
    ("custom/noble-custom", "custom/noble-custom"), ("noble-custom", "custom/noble-custom"),
    ("custom/centos7-mine", "custom/centos7-mine"), ("custom/centos700", "custom/centos700"),
])
def test_validate_name_accepts(name: str, normal: str) -> None:
    assert mm.validate_name(name) == normal


@pytest.mark.parametrize(("name", "words"), [
    ("custom/focal", "focal is a reserved name"), ("jammy", "jammy is a reserved name"),
    ("custom/noble", "noble is a reserved name"), ("ubuntu", "ubuntu is a reserved name"),
    ("custom/windows", "windows is a reserved name"), ("centos7", "centos7 is a reserved"),
    ("custom/centos70", "centos70 is a reserved name"), ("custom/a/b", "more than one '/'"),
    ("ubuntu/mine", "only custom images"), ("", "name is required"), ("custom/", "nothing"),
    ("my image", "whitespace"),
])
def test_validate_name_refuses(name: str, words: str) -> None:
    with pytest.raises(ImageNameError, match=re.escape(words)):
        mm.validate_name(name)


def test_bad_names_are_refused_before_any_network_traffic(fake: FakeMaas,
                                                          tmp_path: Path) -> None:
    image = make_tgz(tmp_path / "img.tgz", payload=1000)
    c = client(fake)
    bad = [dict(name="custom/focal"), dict(name="custom/a/b"),
           dict(name="ok", architecture="amd64"), dict(name="ok", base_image="noble"),
           dict(name="ok", base_image="debian/bookworm"),
           dict(name="ok", base_image="ubuntu/24.04"), dict(name="ok", filetype="zip")]
    for kwargs in bad:
        with pytest.raises(ImageNameError):
            c.upload(image, progress=False, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ImageNameError, match="use 'ubuntu/noble'"):
        c.upload(image, name="ok", base_image="ubuntu/24.04", progress=False)
    for missing in (tmp_path / "nope.tgz", tmp_path):
        with pytest.raises(ArchiveError, match="not a file") as info:
            c.upload(missing, name="ok", progress=False)
        assert info.value.path == str(missing)
    assert fake.log == []


def test_server_refuses_reserved_names_with_maas_message(fake: FakeMaas) -> None:
    c = client(fake)
    with pytest.raises(MaasApiError) as e:
        c._json("POST", "boot-resources/", files={k: (None, v) for k, v in {
            "name": "custom/focal", "architecture": "amd64/generic", "size": "1",
            "sha256": "0" * 64}.items()})
    assert e.value.status == 400 and json.loads(e.value.body or "") == {
        "name": ["focal is a reserved name"]}
    assert "name: focal is a reserved name" in str(e.value)


def test_filetype_from_magic_bytes(tmp_path: Path) -> None:
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w") as t:
        t.addfile(tarfile.TarInfo("a"), io.BytesIO())
    disk = bytes(510) + b"\x55\xaa" + bytes(1024)
    cases = {"t.gz": (gzip.compress(tar.getvalue()), "tgz"),
             "t.bz2": (bz2.compress(tar.getvalue()), "tbz"),
             "t.xz": (lzma.compress(tar.getvalue()), "txz"),
             "d.gz": (gzip.compress(disk), "ddgz"), "d.xz": (lzma.compress(disk), "ddxz"),
             "d.raw": (disk, "ddraw")}
    for fname, (data, kind) in cases.items():
        (tmp_path / fname).write_bytes(data)
        assert names.infer_filetype(tmp_path / fname) == kind, fname
    (tmp_path / "z").write_bytes(b"\x28\xb5\x2f\xfd" + bytes(100))
    with pytest.raises(ArchiveError, match="zstd"):
        names.infer_filetype(tmp_path / "z")
    (tmp_path / "t").write_bytes(tar.getvalue())
    with pytest.raises(ArchiveError, match="filetype="):
        names.infer_filetype(tmp_path / "t")


def test_newest_set_is_the_greatest_version() -> None:
    versions = ["20260101", "20260101.9", "20260101.10", "20251231.99"]
    assert max(versions, key=api.version_key) == "20260101.10"


# --- failures mid-upload ------------------------------------------------------------------

def _three_chunks(tmp_path: Path) -> Path:
    image = tmp_path / "img.bin"
    image.write_bytes(os.urandom(9 * MiB))
    return image


def test_server_dying_mid_upload_is_never_a_success(tmp_path: Path) -> None:
    image = _three_chunks(tmp_path)
    with serve(tmp_path / "maas", faults={1: "die"}) as fake:
        with pytest.raises(MaasApiError) as e:
            client(fake).upload(image, name="custom/dies", filetype="ddraw", progress=False)
        rid = fake.resource_by_name("dies").id
        assert fake.file_of("dies").stored == 4 * MiB and not fake.file_of("dies").complete
    msg = str(e.value)
    assert "stopped at byte 4194304 of 9437184" in msg
    assert f"maas $PROFILE boot-resource delete {rid}" in msg and f".delete({rid})" in msg
    assert "run the upload again" in msg


def test_a_chunk_lost_before_maas_stored_it_is_not_resent(tmp_path: Path) -> None:
    image = _three_chunks(tmp_path)
    with serve(tmp_path / "maas", faults={1: "drop_before_store"}) as fake:
        with pytest.raises(MaasApiError) as e:
            client(fake).upload(image, name="custom/lost", filetype="ddraw", progress=False)
        assert [x.method for x in fake.log] == ["POST", "PUT", "PUT", "GET"]
        assert fake.file_of("lost").stored == 4 * MiB
    assert "MAAS reports 4194304 bytes stored" in str(e.value)
    assert "boot-resource delete" in str(e.value)


@pytest.mark.parametrize("fault", ["drop_after_store", "error500_after_store"])
def test_a_chunk_maas_stored_before_failing_is_not_sent_twice(tmp_path: Path,
                                                              fault: str) -> None:
    image = _three_chunks(tmp_path)
    with serve(tmp_path / "maas", faults={1: fault}) as fake:
        res = client(fake).upload(image, name="custom/flaky", filetype="ddraw",
                                  progress=False)
        assert [x.method for x in fake.log] == ["POST", "PUT", "PUT", "GET", "PUT", "GET"]
        assert fake.content("flaky") == image.read_bytes()
    assert res.complete


def test_last_chunk_lost_after_store_is_checked_complete(tmp_path: Path) -> None:
    image = _three_chunks(tmp_path)
    with serve(tmp_path / "maas", faults={2: "drop_after_store"}) as fake:
        res = client(fake).upload(image, name="custom/last", filetype="ddraw", progress=False)
        assert fake.content("last") == image.read_bytes()
    assert res.complete


def test_gives_up_after_repeated_failures_without_resending(tmp_path: Path) -> None:
    image = tmp_path / "img.bin"
    image.write_bytes(os.urandom(5 * 4 * MiB))
    faults = dict.fromkeys(range(4), "drop_after_store")
    with serve(tmp_path / "maas", faults=faults) as fake:
        with pytest.raises(MaasApiError, match="gave up after 4 failed chunks") as e:
            client(fake).upload(image, name="custom/flaky", filetype="ddraw", progress=False)
        assert [x.method for x in fake.log] == ["POST"] + ["PUT", "GET"] * 4
        assert fake.file_of("flaky").stored == 16 * MiB      # each chunk stored once
    assert "boot-resource delete" in str(e.value)


def test_pack_result_of_a_changed_file_is_refused(fake: FakeMaas, tmp_path: Path) -> None:
    @dataclass(frozen=True)
    class PackResult:
        path: Path
        size: int
        sha256: str

    image = make_tgz(tmp_path / "img.tgz", payload=1000)
    with pytest.raises(MaasApiError, match="changed since it was packed"):
        client(fake).upload(PackResult(image, 5, "0" * 64), name="custom/x", progress=False)
    assert fake.log == []


# --- profiles and environment ------------------------------------------------------------

def _profile_db(path: Path, name: str, url: str, credentials: object) -> Path:
    """A profiles DB as maascli.config.ProfileConfig writes it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE IF NOT EXISTS profiles (id INTEGER PRIMARY KEY,"
                   " name TEXT NOT NULL UNIQUE, data BLOB)")
        db.execute("INSERT OR REPLACE INTO profiles (name, data) VALUES (?, ?)",
                   (name, json.dumps({"name": name, "url": url, "credentials": credentials,
                                      "description": {"resources": []}})))
    return path


def test_from_profile_reads_the_maas_cli_db(fake: FakeMaas, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    creds = fake.api_key.split(":")
    db = _profile_db(tmp_path / "cli.db", "admin", fake.url + "/api/2.0/", creds)
    _profile_db(db, "anon", fake.url + "/api/2.0/", None)
    c = mm.MaasClient.from_profile("admin", path=db)
    assert c.url == fake.url and c.boot_resources() == []
    assert fake.token_secret not in repr(c)
    with pytest.raises(MaasApiError, match="profiles found: admin"):
        mm.MaasClient.from_profile("other", path=db)
    with pytest.raises(MaasApiError, match="anonymous"):
        mm.MaasClient.from_profile("anon", path=db)
    # without path=: ~/.maascli.db, then the snap's copy
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    _profile_db(tmp_path / "home/snap/maas/current/.maascli.db", "snappy", fake.url, creds)
    assert mm.MaasClient.from_profile("snappy").boot_resources() == []
    # under sudo (HOME=/root) the invoking user's `maas login` is found too
    monkeypatch.setenv("SUDO_USER", "root")
    with pytest.raises(MaasApiError) as e:
        mm.MaasClient.from_profile("nobody-has-this")
    assert f"{Path('~root').expanduser()}/.maascli.db" in str(e.value)


def test_from_env(fake: FakeMaas) -> None:
    c = mm.MaasClient.from_env(environ={"MAAS_URL": fake.url, "MAAS_API_KEY": fake.api_key})
    assert c.boot_resources() == []
    with pytest.raises(MaasApiError, match="MAAS_API_KEY not set"):
        mm.MaasClient.from_env(environ={"MAAS_URL": fake.url})


def test_list_get_delete(fake: FakeMaas, tmp_path: Path) -> None:
    c = client(fake)
    image = make_tgz(tmp_path / "img.tgz", payload=1000)
    res = c.upload(image, name="custom/one", progress=False)
    assert [r.id for r in c.boot_resources()] == [res.id]
    assert c.get(res.id).sha256 == res.sha256
    c.delete(res.id)
    assert c.boot_resources() == []
    with pytest.raises(MaasApiError) as e:
        c.get(res.id)
    assert e.value.status == 404 and "No BootResource matches the given query." in str(e.value)


# --- memory ------------------------------------------------------------------------------

_UPLOADER = textwrap.dedent("""
    import json, sys, time
    from maas_chroot.maas import MaasClient
    url, key, path, name = sys.argv[1:5]
    t = time.monotonic()
    res = MaasClient(url, key).upload(path, name=name, filetype="ddraw", progress=False)
    # VmHWM is this process image's own peak RSS. (getrusage's ru_maxrss is not: Linux
    # carries the parent's high-water mark across fork+exec, so it would show pytest's.)
    hwm = next(int(line.split()[1]) for line in open("/proc/self/status")
               if line.startswith("VmHWM:"))
    print(json.dumps({"seconds": time.monotonic() - t, "complete": res.complete,
                      "maxrss_kib": hwm}))
""")


def _upload_in_subprocess(fake: FakeMaas, path: Path, name: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", _UPLOADER, fake.url, fake.api_key,
                          str(path), name], check=True, capture_output=True, text=True,
                         timeout=300, cwd=Path(__file__).parent.parent)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


BIG = 2 << 30      # sparse: costs no disk, but every byte is read, hashed, sent and checked


@pytest.mark.slow
def test_multi_gb_upload_keeps_memory_flat(fake: FakeMaas, tmp_path: Path) -> None:
    small, big = tmp_path / "small.raw", tmp_path / "big.raw"
    for path, size in ((small, 8 * MiB), (big, BIG)):
        with open(path, "wb") as f:           # sparse: zeros, plus a marker at the end
            f.truncate(size - 4)
            f.seek(size - 4)
            f.write(b"end!")
    base = _upload_in_subprocess(fake, small, "custom/small")
    n = len(fake.log)
    large = _upload_in_subprocess(fake, big, "custom/big")
    assert base["complete"] and large["complete"]
    assert fake.file_of("big").stored == BIG
    with open(fake.path("big"), "rb") as f:
        f.seek(BIG - 8)
        assert f.read() == bytes(4) + b"end!"
    log = fake.log[n:]
    upload_s = log[-2].time - log[0].time         # POST .. last PUT (then one GET)
    grew_mib = (large["maxrss_kib"] - base["maxrss_kib"]) / 1024
    print(f"\nupload of {BIG >> 30} GiB: {large['seconds']:.1f} s in all (sha256 pass included), "
          f"upload phase {upload_s:.1f} s = {BIG / MiB / upload_s:.0f} MiB/s; "
          f"peak RSS {large['maxrss_kib'] / 1024:.0f} MiB vs {base['maxrss_kib'] / 1024:.0f} "
          "MiB for 8 MiB")
    assert [e.method for e in log] == ["POST"] + ["PUT"] * (BIG // mm.CHUNK_SIZE) + ["GET"]
    assert grew_mib < 32, f"peak RSS grew by {grew_mib:.0f} MiB for a {BIG >> 30} GiB file"
    assert large["maxrss_kib"] / 1024 < 200
