"""maas_chroot.maas against a MAAS-like server on 127.0.0.1 (tests/servers/maas.py), as MAAS
3.4, 3.6 and 3.8, with one region controller or several, over http and https."""

from __future__ import annotations

import bz2
import datetime
import email.policy
import gzip
import hashlib
import io
import json
import logging
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
from email.encoders import encode_base64
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from pathlib import Path

import pytest
import requests
from fixtures import maas_login, make_tgz
from oauthlib.oauth1 import SIGNATURE_PLAINTEXT, Client
from requests_oauthlib import OAuth1
from servers.maas import FakeMaas, serve
from servers.tls import TestCA
from urllib3.exceptions import InsecureRequestWarning

from maas_chroot import maas as mm
from maas_chroot.errors import ArchiveError, ArgumentError, ImageNameError, MaasApiError
from maas_chroot.maas import api, names

MiB = 1 << 20


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeMaas]:
    with serve(tmp_path / "maas") as f:
        yield f


def client(fake: FakeMaas) -> mm.MaasClient:
    return mm.MaasClient(fake.url, fake.api_key, timeout=30)


def nonces(fake: FakeMaas) -> list[str]:
    return [re.search(r'oauth_nonce="([^"]+)"', e.authorization or "").group(1)  # type: ignore[union-attr]
            for e in fake.log]


def calls(fake: FakeMaas, since: int = 0) -> list[str]:
    """The requests MAAS saw, in short: list, POST, PUT, GET (a resource), DELETE,
    version, regions."""
    def kind(method: str, path: str) -> str:
        rel = path.removeprefix("/MAAS/api/2.0/")
        if rel.startswith("boot-resources/?") or rel == "boot-resources/":
            return "list" if method == "GET" else method
        if rel.startswith("boot-resources/"):
            return method
        return {"version/": "version", "regioncontrollers/": "regions"}.get(rel, rel)
    return [kind(e.method, e.path) for e in fake.log[since:]]


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
    assert calls(fake) == ["list", "POST", "PUT", "PUT", "PUT", "GET"]
    assert len(set(nonces(fake))) == len(fake.log)
    assert all(e.authorization and e.authorization.startswith('OAuth realm="OAuth", ')
               and 'oauth_signature_method="PLAINTEXT"' in e.authorization
               and f'oauth_signature="%26{fake.token_secret}"' in e.authorization
               for e in fake.log)


@pytest.mark.parametrize("version", ["3.4", "3.6", "3.8"])
def test_identical_content_is_sent_again_from_3_5(tmp_path: Path, version: str) -> None:
    """Only 3.4 completes a file at once when it stores that sha256 already (it reuses
    the LargeFile); 3.5+ make a file with no copy, and every byte goes again."""
    image = tmp_path / "img.bin"
    image.write_bytes(os.urandom(5 * MiB))
    with serve(tmp_path / "maas", version=version) as fake:
        c = client(fake)
        first = c.upload(image, name="custom/first", filetype="ddraw", progress=False)
        assert first.complete
        n = len(fake.log)
        second = c.upload(image, name="custom/second", filetype="ddraw", progress=False)
        sent = calls(fake, n)
        assert second.complete is True and second.name == "second"
        assert fake.content("custom/second") == image.read_bytes()
    if version == "3.4":
        assert sent == ["list", "POST", "GET"]           # MAAS said complete: no PUT
    elif version == "3.6":
        assert sent == ["list", "POST", "PUT", "PUT", "GET"]
    else:   # 3.8 drops the shared file on the first PUT ("Too much data received.")
        assert sent == ["list", "POST", "PUT", "PUT", "PUT", "GET"]
        assert [e.status for e in fake.requests("PUT")][-3:] == [400, 200, 200]


@pytest.mark.parametrize("version", ["3.6", "3.8"])
def test_a_rebuild_with_the_same_bytes_uploads_again(tmp_path: Path, version: str) -> None:
    """Deterministic packing makes identical re-uploads common: on 3.8 the new file
    shares the old one's disk file, whose first append finds it full."""
    image = tmp_path / "img.bin"
    image.write_bytes(os.urandom(5 * MiB))
    with serve(tmp_path / "maas", version=version) as fake:
        c = client(fake)
        first = c.upload(image, name="same", filetype="ddraw", progress=False)
        again = c.upload(image, name="same", filetype="ddraw", progress=False)
        assert again.id == first.id and again.version != first.version and again.complete
        assert fake.content("same") == image.read_bytes()
        fake.deploy("same")


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


@pytest.mark.parametrize("version", ["3.4", "3.6", "3.8"])
def test_every_name_maas_reserves_is_refused_before_sending(tmp_path: Path,
                                                            version: str) -> None:
    # the fake's reserved names come from its own stream and registry (servers/maas.py),
    # not from the client's tables: a name MAAS refuses must never reach MAAS
    with serve(tmp_path / "maas", version=version) as f:
        reserved = sorted(f.reserved_names)
    assert {"noble", "uefi", "pxe", "8", "centos70", "grub-efi-signed", "windows"} <= \
        set(reserved)
    for name in reserved:
        bare = name.split("/")[-1]
        with pytest.raises(ImageNameError, match="is a reserved name"):
            mm.validate_name(f"custom/{bare}")


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
    assert f"maas-chroot delete --id {rid}" in msg and f".delete({rid})" in msg
    assert "run the upload again" in msg


def test_a_chunk_lost_before_maas_stored_it_is_not_resent(tmp_path: Path) -> None:
    image = _three_chunks(tmp_path)
    with serve(tmp_path / "maas", faults={1: "drop_before_store"}) as fake:
        with pytest.raises(MaasApiError) as e:
            client(fake).upload(image, name="custom/lost", filetype="ddraw", progress=False)
        assert calls(fake) == ["list", "POST", "PUT", "PUT", "GET", "version", "regions"]
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
        assert calls(fake) == ["list", "POST", "PUT", "PUT", "GET", "version", "regions",
                               "PUT", "GET"]
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
        assert calls(fake) == (["list", "POST", "PUT", "GET", "version", "regions"]
                               + ["PUT", "GET"] * 3)       # version and regions asked once
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


def test_delete_by_id_never_deletes_a_synced_image(fake: FakeMaas) -> None:
    noble = fake.add_synced("ubuntu/noble")
    c = client(fake)
    with pytest.raises(MaasApiError, match=f"boot resource {noble} is ubuntu/noble "
                       r"amd64/generic \(Synced\), not a custom image"):
        c.delete(noble)
    assert noble in fake.resources
    assert [r.id for r in c.boot_resources(type="synced")] == [noble]
    assert c.images() == []  # custom images only
    assert not any(e.method == "DELETE" for e in fake.log)


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
    assert [e.method for e in log] == ["GET", "POST"] + ["PUT"] * (BIG // mm.CHUNK_SIZE) + ["GET"]
    assert grew_mib < 32, f"peak RSS grew by {grew_mib:.0f} MiB for a {BIG >> 30} GiB file"
    assert large["maxrss_kib"] / 1024 < 200


# --- TLS and the maas CLI's profiles ------------------------------------------------------

@pytest.fixture
def tls_fake(tmp_path: Path, maas_ca: TestCA) -> Iterator[FakeMaas]:
    with serve(tmp_path / "maas", tls=(maas_ca.cert, maas_ca.key)) as f:
        yield f


def test_a_maas_login_cacerts_profile_works_over_https(tls_fake: FakeMaas, tmp_path: Path,
                                                       maas_ca: TestCA) -> None:
    db = tmp_path / "home/.maascli.db"
    written = maas_login(db, "admin", tls_fake.url, tls_fake.api_key, cacerts=maas_ca.ca)
    assert sorted(written) == ["cacerts", "credentials", "description", "name", "url"]
    assert written["url"].startswith("https://") and written["url"].endswith("/MAAS/api/2.0/")
    assert written["cacerts"].startswith("-----BEGIN CERTIFICATE-----")
    image = make_tgz(tmp_path / "img.tgz", payload=5 * MiB)
    with mm.MaasClient.from_profile("admin", path=db) as c:
        res = c.upload(image, name="custom/over-tls", progress=False)
        held = Path(str(c._trust.verify))
        assert held.read_text() == maas_ca.ca.read_text() and held.stat().st_mode & 0o077 == 0
    assert res.complete and tls_fake.content("over-tls") == image.read_bytes()
    assert not held.exists()                 # the client's copy of the CA goes with it


def test_an_untrusted_certificate_is_a_clear_error(tls_fake: FakeMaas, tmp_path: Path,
                                                   maas_ca: TestCA, other_ca: TestCA,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    for kwargs in ({}, {"cacerts": other_ca.ca}):
        with pytest.raises(MaasApiError) as e:
            mm.MaasClient(tls_fake.url, tls_fake.api_key, **kwargs).images()  # type: ignore[arg-type]
        assert "TLS certificate is not trusted" in e.value.message
        assert e.value.url.startswith(tls_fake.url)
        assert "cacerts" in (e.value.hint or "") and "maas login --cacerts" in str(e.value)
    assert f"trusting cacerts {other_ca.ca}" in e.value.message     # says what it trusted
    # a profile whose cacerts are another CA's: the same, naming the profile
    db = tmp_path / "cli.db"
    maas_login(db, "wrong", tls_fake.url, tls_fake.api_key, cacerts=maas_ca.ca)
    with sqlite3.connect(db) as conn:
        data = json.loads(conn.execute("SELECT data FROM profiles").fetchone()[0])
        data["cacerts"] = other_ca.ca.read_text()
        conn.execute("UPDATE profiles SET data = ?", (json.dumps(data),))
    with pytest.raises(MaasApiError, match="maas CLI profile 'wrong'"):
        mm.MaasClient.from_profile("wrong", path=db).images()
    # REQUESTS_CA_BUNDLE never overrides the CA a caller gave
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(other_ca.ca))
    assert mm.MaasClient(tls_fake.url, tls_fake.api_key, cacerts=maas_ca.ca).images() == []
    # not PEM, or contradictory: refused before any request
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    n = len(tls_fake.log)
    with pytest.raises(MaasApiError, match=r"cannot use .*junk\.pem as CA certificates"):
        mm.MaasClient(tls_fake.url, tls_fake.api_key, cacerts=junk)
    with pytest.raises(ArgumentError):
        mm.MaasClient(tls_fake.url, tls_fake.api_key, cacerts=maas_ca.ca, verify_tls=False)
    assert len(tls_fake.log) == n
    # switching checks off is possible, but only when asked, and never quietly
    with pytest.warns(InsecureRequestWarning):
        assert mm.MaasClient(tls_fake.url, tls_fake.api_key, verify_tls=False).images() == []


def test_an_http_url_on_a_maas_with_tls_is_told_to_use_https(fake: FakeMaas,
                                                              tmp_path: Path) -> None:
    fake.redirect_to = "https://127.0.0.1:5443"
    image = make_tgz(tmp_path / "img.tgz", payload=1000)
    with pytest.raises(MaasApiError) as e:
        client(fake).upload(image, name="x", progress=False)
    assert e.value.status == 301
    assert "redirected to https://127.0.0.1:5443/MAAS/api/2.0/boot-resources/" in e.value.message
    assert "use the https URL" in (e.value.hint or "")
    assert calls(fake) == ["list"]                      # nothing followed, nothing posted


# --- names: what MAAS stores, and what deploy finds --------------------------------------------

def _raw_create(c: mm.MaasClient, name: str) -> dict[str, object]:
    """POST as another client (the maas CLI) would, name as given."""
    return c._json("POST", "boot-resources/", files={k: (None, v) for k, v in {  # type: ignore[no-any-return]
        "name": name, "architecture": "amd64/generic", "filetype": "ddraw", "size": "1",
        "sha256": hashlib.sha256(b"x").hexdigest(), "base_image": "ubuntu/jammy"}.items()})


@pytest.mark.parametrize("version", ["3.4", "3.6", "3.8"])
def test_custom_names_are_found_by_the_deploy_lookup(tmp_path: Path, version: str) -> None:
    image = make_tgz(tmp_path / "img.tgz", payload=1000)
    with serve(tmp_path / "maas", version=version) as fake:
        c = client(fake)
        res = c.upload(image, name="custom/foo", progress=False)
        post = next(e for e in fake.log if e.method == "POST")
        assert res.name == "foo" and res.full_name == "custom/foo" and res.release == "foo"
        assert fake.deploy("foo").id == res.id                  # get_resource_for(name == release)
        assert fake.base_osystem_series("foo", "amd64") == "ubuntu/jammy"
        assert post.status == 201
        # what another client sending the prefix gets: 3.8 keeps it, and deploy misses it
        _raw_create(c, "custom/bar")
        stored = fake.resource_by_name("custom/bar").name
        c._call("PUT", f"boot-resources/{fake.resource_by_name('custom/bar').id}/upload/"
                f"{fake.file_of('custom/bar').id}/", data=b"x")
        listed = {r.full_name: r for r in c.images()}
    assert sorted(listed) == ["custom/bar", "custom/foo"]      # never custom/custom/bar
    if version == "3.8":
        assert stored == "custom/bar"
        with pytest.raises(LookupError, match="No image could be found"):
            fake.deploy("bar")
    else:
        assert stored == "bar"


def test_both_spellings_name_one_image(fake: FakeMaas, tmp_path: Path) -> None:
    image = make_tgz(tmp_path / "img.tgz", payload=1000)
    c = client(fake)
    res = c.upload(image, name="mine", progress=False)
    assert [r.id for r in c.find("custom/mine")] == [r.id for r in c.find("mine")] == [res.id]
    assert mm.bare_name("custom/mine") == mm.bare_name("mine") == "mine"
    post = next(e for e in fake.log if e.method == "POST")
    assert post.status == 201 and fake.resource_by_name("mine").name == "mine"


# --- several region controllers (3.5+) ---------------------------------------------------------

def test_upload_does_not_claim_complete_before_the_regions_sync(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    image = _three_chunks(tmp_path)
    with serve(tmp_path / "maas", regions=2) as fake:
        c = client(fake)
        with caplog.at_level(logging.INFO, logger="maas_chroot"):
            res = c.upload(image, name="ha", filetype="ddraw", progress=False)
        assert res.complete is False and res.progress == 50.0
        assert "syncing to 2 region controllers: 50% of the copies" in caplog.text
        with pytest.raises(LookupError):
            fake.deploy("ha")                       # not every region has it yet
        with pytest.raises(MaasApiError, match=r"not complete after 0.2 s: MAAS has 50%") as e:
            c.wait(res, timeout=0.2, interval=0.05)
        assert "port 5240" in (e.value.hint or "")
        fake.sync()
        done = c.wait(res, timeout=5, interval=0.05)
        assert done.complete is True and done.progress == 100.0
        fake.deploy("ha")


def test_wait_polls_until_every_region_holds_a_copy(tmp_path: Path) -> None:
    image = _three_chunks(tmp_path)
    with serve(tmp_path / "maas", regions=3, sync_seconds=0.5) as fake:
        c = client(fake)
        c_wait = c.wait
        seen: list[float | None] = []

        def spy(resource: mm.BootResource | int, **kwargs: object) -> mm.BootResource:
            seen.append(resource.progress if isinstance(resource, mm.BootResource) else None)
            return c_wait(resource, **{**kwargs, "interval": 0.05})  # type: ignore[arg-type]

        c.wait = spy  # type: ignore[method-assign]
        t = time.monotonic()
        res = c.upload(image, name="ha3", filetype="ddraw", wait=True, progress=False)
        took = time.monotonic() - t
        gets = calls(fake).count("GET")
    assert res.complete is True and seen and seen[0] is not None and seen[0] < 100
    assert gets > 3 and took >= 0.3                     # polled while the copies were made


@pytest.mark.parametrize("version", ["3.4", "3.6", "3.8"])
def test_chunk_recovery_knows_how_maas_counts_copies(tmp_path: Path, version: str) -> None:
    """After a lost answer, what MAAS stored is read from the set's progress: 3.4's file
    progress is upside down, and from 3.5 progress is summed over the regions."""
    image = _three_chunks(tmp_path)
    with serve(tmp_path / "maas", version=version, regions=2,
               faults={1: "drop_after_store"}) as fake:
        res = client(fake).upload(image, name="flaky", filetype="ddraw", progress=False)
        assert fake.content("flaky") == image.read_bytes()
        assert fake.file_of("flaky").stored == 9 * MiB
        after = calls(fake)[calls(fake).index("GET"):][:3]
    assert after == (["GET", "version", "PUT"] if version == "3.4" else
                     ["GET", "version", "regions"])
    assert res.complete is (version == "3.4")           # 3.4 has one store; 3.6+ two copies


# --- a re-upload keeps the old base image on MAAS --------------------------------------------

@pytest.mark.parametrize("version", ["3.6", "3.8"])
def test_a_new_base_image_is_refused_or_replaced(tmp_path: Path, version: str) -> None:
    image = make_tgz(tmp_path / "img.tgz", payload=1000)
    with serve(tmp_path / "maas", version=version) as fake:
        c = client(fake)
        old = c.upload(image, name="custom/web", base_image="ubuntu/jammy", progress=False)
        n = len(fake.log)
        with pytest.raises(MaasApiError) as e:
            c.upload(image, name="web", base_image="ubuntu/noble", progress=False)
        assert calls(fake, n) == ["list"]                 # refused before MAAS changed it
        assert "exists with base_image ubuntu/jammy" in e.value.message
        assert "replace=True (--replace)" in (e.value.hint or "")
        assert fake.content("web") == image.read_bytes()
        same = c.upload(image, name="web", base_image="ubuntu/jammy", title="Web",
                        progress=False)                   # same base image: reused
        assert same.id == old.id and same.title == "Web"
        new = c.upload(image, name="web", base_image="ubuntu/noble", replace=True,
                       progress=False)
        assert new.id != old.id and new.base_image == "ubuntu/noble" and new.complete
        assert old.id not in fake.resources
        assert fake.base_osystem_series("web", "amd64") == "ubuntu/noble"


def test_maas_3_4_hides_the_base_image_so_the_client_says_so(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    image = make_tgz(tmp_path / "img.tgz", payload=1000)
    with serve(tmp_path / "maas", version="3.4") as fake:
        c = client(fake)
        c.upload(image, name="web", base_image="ubuntu/jammy", progress=False)
        with caplog.at_level(logging.WARNING, logger="maas_chroot"):
            kept = c.upload(image, name="web", base_image="ubuntu/noble", progress=False)
        assert "does not report its base_image: if it is not ubuntu/noble" in caplog.text
        assert fake.resources[kept.id].base_image == "ubuntu/jammy"   # what MAAS 3.4 did
        new = c.upload(image, name="web", base_image="ubuntu/noble", replace=True,
                       progress=False)
        assert fake.resources[new.id].base_image == "ubuntu/noble"


def test_a_prefixed_twin_from_3_8_is_reported_and_replaced(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    image = make_tgz(tmp_path / "img.tgz", payload=1000)
    with serve(tmp_path / "maas", version="3.8") as fake:
        c = client(fake)
        twin = _raw_create(c, "custom/app")["id"]
        with caplog.at_level(logging.WARNING, logger="maas_chroot"):
            c.upload(image, name="app", progress=False)
        assert "stored as 'custom/app'" in caplog.text and "cannot be deployed" in caplog.text
        with pytest.raises(MaasApiError, match="names 2 boot resources"):
            c.delete("custom/app")
        c.upload(image, name="app", replace=True, progress=False)
        assert twin not in fake.resources
        assert [r.name for r in c.find("app")] == ["app"]
        # 3.8 takes custom/jammy (this client would not send it); it can still be deleted
        jammy = _raw_create(c, "custom/jammy")["id"]
        assert c.delete("custom/jammy").id == jammy and jammy not in fake.resources


# --- base-image rules: MAAS's own words ----------------------------------------------------------

def test_maas_refusing_a_base_image_is_quoted(tmp_path: Path) -> None:
    image = make_tgz(tmp_path / "img.tgz", payload=1000)
    with serve(tmp_path / "maas", distro_info=("focal", "jammy")) as fake, \
            pytest.raises(MaasApiError) as e:
        client(fake).upload(image, name="new", base_image="ubuntu/noble", progress=False)
    assert e.value.status == 400
    assert "base_image: please select a valid base image OS and version" in e.value.message
    assert "distro-info-data" in (e.value.hint or "")
    with serve(tmp_path / "maas34", version="3.4") as fake, \
            pytest.raises(MaasApiError) as e:                  # ol is a base OS from 3.5
        client(fake).upload(image, name="el", base_image="ol/8", progress=False)
    assert "custom images require a valid non-custom OS type base image" in e.value.message
    with pytest.raises(ImageNameError, match="non-custom OS type"):   # the pre-flight check
        client(fake).upload(image, name="x", base_image="custom/other", progress=False)


# --- a proxy's body limit ---------------------------------------------------------------------

def test_a_proxy_413_names_client_max_body_size_and_smaller_chunks_work(
        tmp_path: Path) -> None:
    image = tmp_path / "img.bin"
    image.write_bytes(os.urandom(3 * MiB))
    with serve(tmp_path / "maas", max_body=MiB) as fake:
        c = client(fake)
        with pytest.raises(MaasApiError) as e:
            c.upload(image, name="big", filetype="ddraw", progress=False)
        assert e.value.status == 413 and "413 Request Entity Too Large" in e.value.message
        hint = e.value.hint or ""
        assert "client_max_body_size" in hint and "chunk_size=" in hint
        assert f"refused {4 * MiB} bytes" not in hint and f"refused {3 * MiB} bytes" in hint
        assert fake.file_of("big").stored == 0
        res = c.upload(image, name="big", filetype="ddraw", replace=True,
                       chunk_size=512 << 10, progress=False)
        assert res.complete and fake.content("big") == image.read_bytes()
        assert {p.content_length for p in fake.requests("PUT") if p.status == 200} == {
            512 << 10}
    for bad in (0, 11 * MiB):
        with pytest.raises(ArgumentError, match="chunk_size"):
            c.upload(image, name="big", filetype="ddraw", chunk_size=bad, progress=False)


# --- the image lifecycle -------------------------------------------------------------------

@pytest.mark.parametrize("version", ["3.4", "3.8"])
def test_images_and_delete(tmp_path: Path, version: str) -> None:
    image = make_tgz(tmp_path / "img.tgz", payload=2000)
    data = image.read_bytes()
    with serve(tmp_path / "maas", version=version) as fake:
        c = client(fake)
        one = c.upload(image, name="custom/one", base_image="ubuntu/jammy", progress=False)
        c.upload(image, name="two", progress=False)
        c.upload(image, name="two", architecture="arm64/generic", progress=False)
        fake.deploy("one")
        images = c.images()
        assert [(i.full_name, i.architecture) for i in images] == [
            ("custom/one", "amd64/generic"), ("custom/two", "amd64/generic"),
            ("custom/two", "arm64/generic")]
        first = images[0]
        assert (first.size, first.sha256, first.complete) == (
            len(data), hashlib.sha256(data).hexdigest(), True)
        assert first.uploaded == datetime.date.today()
        assert first.last_deployed is not None
        assert first.base_image == ("ubuntu/jammy" if version == "3.8" else None)
        shown = mm.table(images)
        assert shown.splitlines()[0].split()[:3] == ["ID", "NAME", "ARCHITECTURE"]
        assert "custom/one" in shown and hashlib.sha256(data).hexdigest()[:12] in shown
        assert [i.full_name for i in c.images(architecture="arm64/generic")] == ["custom/two"]
        with pytest.raises(MaasApiError, match="names 2 boot resources") as e:
            c.delete("two")
        assert "architecture=" in (e.value.hint or "")
        gone = c.delete("two", architecture="arm64/generic")
        assert gone.architecture == "arm64/generic" and gone.id not in fake.resources
        assert c.delete("custom/one").id == one.id
        with pytest.raises(MaasApiError, match="MAAS has no custom image custom/one") as e:
            c.delete("one")
        assert "maas-chroot images" in (e.value.hint or "")
        left = c.images()
        assert c.delete(left[0].id).full_name == "custom/two"
        assert c.images() == [] and mm.table([]) == "no custom images"
        with pytest.raises(MaasApiError) as e:
            c.delete(left[0].id)
        assert e.value.status == 404


# --- the server is one the maas CLI accepts -------------------------------------------------

@pytest.mark.parametrize("version", ["3.4", "3.6", "3.8"])
def test_server_answers_what_maas_login_and_the_cli_need(tmp_path: Path, version: str) -> None:
    with serve(tmp_path / "maas", version=version) as fake:
        api_url = fake.url + "/api/2.0/"
        described = requests.get(api_url + "describe/", timeout=10)      # unsigned
        assert described.status_code == 200
        assert described.headers["Content-Type"] == "application/json"
        assert described.headers["X-MAAS-API-Hash"] == described.json()["hash"]
        resources = {r["name"]: r for r in described.json()["resources"]}
        create = next(a for a in resources["BootResourcesHandler"]["auth"]["actions"]
                      if a["name"] == "create")
        assert (create["method"], create["op"]) == ("POST", None)
        assert ":param name:" in create["doc"]           # CLI 3.6+ needs it for key=value
        one = resources["BootResourceHandler"]["auth"]
        assert one["path"] == "/MAAS/api/2.0/boot-resources/{id}/" and one["params"] == ["id"]
        assert {a["name"] for a in one["actions"]} >= {"delete"}
        assert ("BootResourceFileUploadHandler" in resources) is (version == "3.8")
        assert requests.get(api_url + "users/?op=whoami", timeout=10).status_code == 401
        assert client(fake)._json("GET", "users/?op=whoami")["is_superuser"] is True
        assert client(fake).version() == {"3.4": "3.4.10", "3.6": "3.6.5",
                                          "3.8": "3.8.0~beta6"}[version]
        assert api.series(client(fake).version()) == tuple(map(int, version.split(".")))


def test_server_decodes_base64_parts_as_django_does(fake: FakeMaas) -> None:
    """The maas CLI sends every multipart part base64-encoded, with a quoted boundary."""
    fields = {"architecture": "amd64/generic", "filetype": "ddraw", "name": "custom/b64",
              "sha256": hashlib.sha256(b"abc").hexdigest(), "size": "3",
              "title": "Ünïcode title"}
    message = MIMEMultipart("form-data")
    for key, value in sorted(fields.items()):
        part = MIMEApplication(value.encode("utf-8"), "plain", _encoder=encode_base64,
                               charset="utf-8")
        part.add_header("Content-Disposition", "form-data", name=key)
        message.attach(part)
    body = message.as_bytes(policy=email.policy.HTTP)
    head, _, payload = body.partition(b"\r\n\r\n")
    assert b"Content-Transfer-Encoding: base64" in payload and b'boundary="' in head
    ctype = next(line for line in head.decode().split("\r\n")
                 if line.lower().startswith("content-type:")).split(":", 1)[1].strip()
    created = client(fake)._json("POST", "boot-resources/", data=payload,
                                 headers={"Content-Type": ctype})
    assert created["name"] == "b64" and created["title"] == "Ünïcode title"


def test_server_error_bodies_are_typed_as_maas_types_them(fake: FakeMaas) -> None:
    c = client(fake)
    sha = hashlib.sha256(b"abc").hexdigest()
    post = {"name": "typed", "architecture": "amd64/generic", "filetype": "ddraw",
            "size": "3", "sha256": sha}
    bad = c._session.post(c.api_url + "boot-resources/", data={**post, "architecture": "x"})
    assert bad.headers["Content-Type"] == "application/json; charset=utf-8"
    c._json("POST", "boot-resources/", data=post)
    clash = c._session.post(c.api_url + "boot-resources/", data={**post, "size": "4"})
    assert (clash.status_code, clash.headers["Content-Type"], clash.text) == (
        400, "text/plain; charset=utf-8",
        "File already exists with sha256 that is of different size.")
    rid = fake.resource_by_name("typed").id
    empty = c._session.put(f"{c.api_url}boot-resources/{rid}/upload/"
                           f"{fake.file_of('typed').id}/", data=b"")
    assert (empty.status_code, empty.headers["Content-Type"], empty.text) == (
        400, "text/plain; charset=utf-8", "Missing data.")
    gone = c._session.delete(f"{c.api_url}boot-resources/999/")
    assert (gone.status_code, gone.text) == (500, "BootResource matching query does not exist.")
