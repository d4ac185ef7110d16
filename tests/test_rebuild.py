"""Rebuilds: the record beside each image, build(if_changed=True) skipping what did not
change and saying why it builds what did, and warm builds (a copy-on-write overlay of the
source extracted once) that equal cold ones, never changing the cached base."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest
from fixtures import curtin_extract, tree_state, tree_xattrs
from servers.aptrepo import DebSpec, serve_repo
from servers.cloudimages import SERIAL, serve_cloud_images

import maas_chroot as mc
from maas_chroot import cli, rootfs
from maas_chroot.chroot import manifest
from maas_chroot.pipeline import basecache, record
from maas_chroot.sources import bootstrap
from maas_chroot.version import __version__

pytestmark = pytest.mark.root


def _requests(site: object) -> list[str]:
    return [f"{e.path.rsplit('/', 1)[-1]} {e.status}" for e in site.log]  # type: ignore[attr-defined]


def test_if_changed_skips_an_unchanged_image_and_says_why_it_builds_a_changed_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "o.tgz"
    with serve_cloud_images(tmp_path) as site:
        kw = {"mirror": site.mirror, "keyring": site.keyring, "cache_dir": tmp_path / "cache",
              "workdir": tmp_path, "progress": False, "level": 1}
        first = mc.build("noble", out, if_changed=True, **kw)
        assert first.reasons == ("there is no build record o.tgz.build.json (a first build)",)
        rec = json.loads((tmp_path / "o.tgz.build.json").read_text())
        img = site.source("noble")
        assert rec["source"] == {
            "describe": first.source, "url": img.url, "identity": site.sha256(img.url),
            "sha256": site.sha256(img.url), "verified": "signature", "serial": SERIAL,
            "release": None}
        assert rec["maas_chroot"] == __version__ and rec["packages"] == []
        assert rec["output"]["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
        assert rec["output"]["size"] == out.stat().st_size == first.size
        assert rec["recipe"]["sha256"] == record.digest(rec["recipe"]["content"])
        content = rec["recipe"]["content"]
        assert content["level"] == 1 and "cache_dir" not in content
        assert [name for name, _ in rec["steps"]][:3] == ["check", "fetch", "extract"]
        assert rec["upload"] is None and rec["boot_test"] is None
        assert first.manifest is None  # the tiny image has no dpkg

        site.log.clear()
        mtime = out.stat().st_mtime_ns
        t = time.monotonic()
        same = mc.build("noble", out, if_changed=True, **kw)
        assert time.monotonic() - t < 5
        assert same.up_to_date and not same.reasons and same.sha256 == first.sha256
        assert "up to date" in repr(same)
        assert _requests(site) == ["SHA256SUMS 304"]  # one conditional GET, no image bytes
        assert out.stat().st_mtime_ns == mtime

        changed = mc.build("noble", out, if_changed=True, **{**kw, "level": 2})
        assert changed.reasons == ("the recipe changed (level)",)
        assert "extract" not in changed.durations  # a changed recipe: no time in extract

        site.publish("20260201")
        site.log.clear()
        new = mc.build("noble", out, if_changed=True, **{**kw, "level": 2})
        assert new.reasons == ("new serial 20260101 → 20260201",)
        assert "rebuilt   new serial 20260101 → 20260201" in repr(new)
        assert "extract" in new.durations  # a new source: a new base
        assert _requests(site) == ["SHA256SUMS 200", "SHA256SUMS.gpg 200",
                                   "ubuntu-24.04-server-cloudimg-amd64.squashfs 200"]
        assert json.loads((tmp_path / "o.tgz.build.json").read_text())["source"]["serial"] == \
            "20260201"

        monkeypatch.setattr(record, "__version__", "99.0")
        newer = mc.build("noble", out, if_changed=True, **{**kw, "level": 2})
        assert newer.reasons == (f"a new tool version ({__version__} → 99.0)",)
        out.unlink()
        assert mc.build("noble", out, if_changed=True, **{**kw, "level": 2}).reasons == (
            "o.tgz is missing",)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("maas-chroot")) == []


def test_a_recipe_of_unchanged_images_is_up_to_date_in_seconds(tmp_path: Path) -> None:
    with serve_cloud_images(tmp_path) as site:
        images = "".join(f"[image.i{n}]\nlevel = {n % 9 + 1}\n" for n in range(10))
        recipe = tmp_path / "images.toml"
        recipe.write_text(f"source = 'noble'\nmirror = '{site.mirror}'\nkeyring = "
                          f"'{site.keyring}'\ncache_dir = 'cache'\nworkdir = '.'\n{images}")
        assert cli.main(["build", "-f", str(recipe), "-q"]) == 0
        site.log.clear()
        t = time.monotonic()
        assert cli.main(["build", "-f", str(recipe), "--if-changed", "-q"]) == 0
        took = time.monotonic() - t
        assert took < 10, took
        assert _requests(site) == ["SHA256SUMS 304"] * 10


def _build(source: Path, out: Path, cache: Path, **options: object) -> mc.BuildResult:
    return mc.build(source, out, cache_dir=cache, workdir=out.parent, progress=False,
                    level=1, **options)


def test_a_warm_build_is_byte_identical_to_a_cold_one_and_leaves_the_base_as_it_was(
        minbase_tar: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    conf = tmp_path / "app.conf"
    conf.write_text("key = value\n")
    cache = tmp_path / "cache"
    steps = {"files": {"/etc/motd": b"warm or cold\n", "/etc/app.conf": conf},
             "commands": ["echo appended >> /etc/issue",          # an in-place write
                          "chmod 0600 /etc/debian_version",       # metadata only
                          "chown 1:1 /etc/hostname",
                          "ln /etc/hostname /etc/hostname.link",   # a new hard link
                          "rm /etc/issue.net", "mv /usr/games /usr/games-moved"]}
    cold = _build(minbase_tar, tmp_path / "cold.tgz", cache, base_cache=False, **steps)
    assert not (cache / basecache.DIR).exists()
    first = _build(minbase_tar, tmp_path / "first.tgz", cache, **steps)  # makes the base
    base = cache / basecache.DIR / basecache.key_of(first_sha(minbase_tar))
    before = tree_state(base), tree_xattrs(base)
    warm = _build(minbase_tar, tmp_path / "warm.tgz", cache, **steps)
    odd = tmp_path / "no,overlay"  # a work dir overlayfs cannot take: a copy of the base
    odd.mkdir()
    copied = _build(minbase_tar, odd / "copied.tgz", cache, **steps)
    assert "copy" in copied.durations and "extract" not in copied.durations
    assert cold.sha256 == first.sha256 == warm.sha256 == copied.sha256
    assert (tmp_path / "cold.tgz").read_bytes() == (tmp_path / "warm.tgz").read_bytes()
    assert "extract" in cold.durations and "extract" in first.durations
    assert "extract" not in warm.durations  # no time in extract
    assert (tree_state(base), tree_xattrs(base)) == before
    assert (base / "etc/issue.net").exists() and not (base / "usr/games-moved").exists()
    assert os.stat(base / "etc/hostname").st_nlink == 1
    assert sorted(p.name for p in odd.iterdir()) == ["copied.tgz", "copied.tgz.build.json",
                                                     "copied.tgz.manifest"]
    rootfs.remove_tree(odd)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "app.conf", "cache", "cold.tgz", "cold.tgz.build.json", "cold.tgz.manifest",
        "first.tgz", "first.tgz.build.json", "first.tgz.manifest", "warm.tgz",
        "warm.tgz.build.json", "warm.tgz.manifest"]


def first_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.network
def test_a_warm_build_with_apt_has_the_tree_of_a_cold_one_and_the_manifest_of_the_image(
        minbase_tar: Path, tmp_path: Path) -> None:
    hello = DebSpec("hello-mc", version="1.2", files={"/usr/bin/hello-mc": "#!/bin/sh\n"})
    cache = tmp_path / "cache"
    trees = {}
    with serve_repo(tmp_path / "repo", [hello]) as repo:
        apt = {"apt_sources": [f"deb {repo.url} {repo.suite} {repo.component}"],
               "apt_key": repo.key_asc, "packages": ["hello-mc"], "remove": ["nano"]}
        for name, warm in (("cold", False), ("seed", True), ("warm", True)):
            res = _build(minbase_tar, tmp_path / f"{name}.tgz", cache, base_cache=warm, **apt)
            if name != "seed":
                trees[name] = tmp_path / f"{name}-deployed"
                curtin_extract(res.output, trees[name])
    assert "extract" not in res.durations
    # the apt archive cache is shared: three builds, one download, nothing of it in an image
    assert [p for p in repo.log if p.endswith(".deb")] == ["/pool/main/hello-mc_1.2_all.deb"]
    assert list((cache / "debs").glob("hello-mc_*.deb"))
    try:
        cold, warm = trees["cold"], trees["warm"]
        assert tree_state(cold) == tree_state(warm)
        assert not (warm / "var/cache/apt/archives-maas-chroot").exists()
        assert tree_xattrs(cold) == tree_xattrs(warm)
        # the manifest is dpkg-query's, in the image
        with mc.Chroot(warm, network="none") as ch:
            listed = ch.run(["dpkg-query", "-W", "-f=${binary:Package}\t${Version}\n"],
                            capture=True).stdout
        text = manifest.path_for(tmp_path / "warm.tgz").read_text()
        assert text == listed and "hello-mc\t1.2\n" in text and "\nnano\t" not in text
        assert json.loads((tmp_path / "warm.tgz.build.json").read_text())["manifest"][
            "packages"] == len(text.splitlines())
    finally:
        for tree in trees.values():
            rootfs.remove_tree(tree)


def test_old_bases_go_and_a_base_in_use_stays(tmp_path: Path) -> None:
    top = tmp_path / basecache.DIR
    top.mkdir(mode=0o700)
    for key, age in (("old", 30), ("recent", 1)):
        (top / key / "etc").mkdir(parents=True)
        (top / f"{key}.json").write_text("{}")
        (top / f"{key}.lock").touch()
        when = time.time() - age * 86400
        os.utime(top / f"{key}.json", (when, when))
    (top / f"{basecache._PART}recent-1234").mkdir()  # a killed extract
    assert sorted(p.name for p in basecache.evict(tmp_path)) == [f"{basecache._PART}recent-1234",
                                                                 "old"]
    assert sorted(p.name for p in top.iterdir()) == ["recent", "recent.json", "recent.lock"]


def test_a_bootstrap_source_is_its_inputs_and_the_mirrors_release_file(tmp_path: Path) -> None:
    dists = tmp_path / "mirror/dists/stable"
    dists.mkdir(parents=True)
    (dists / "InRelease").write_text("Origin: test\nDate: Sat, 01 Nov 2026 10:00:00 UTC\n")
    spec = bootstrap.spec_for("stable", mirror=f"file://{tmp_path}/mirror", keyring="/k.gpg")
    found = bootstrap.release_of(spec)
    assert found is not None
    assert (found.url, found.date) == (f"file://{tmp_path}/mirror/dists/stable/InRelease",
                                       "Sat, 01 Nov 2026 10:00:00 UTC")
    was = record.SourceState("bootstrap stable", spec.uri, identity="a", verified="x",
                             release={"sha256": "1", "date": "Sat, 01 Nov 2026"})
    now = record.SourceState("bootstrap stable", spec.uri, identity="b", verified="x",
                             release={"sha256": "2", "date": "Sat, 08 Nov 2026"})
    previous = {"maas_chroot": __version__, "source": was.to_json(),
                "recipe": {"sha256": record.digest({})}}
    assert record.changes(previous, source=now, spec_content={}, image=tmp_path / "x.tgz") == [
        "x.tgz is missing",
        "the mirror's Release file changed (Sat, 01 Nov 2026 → Sat, 08 Nov 2026)"]
    (dists / "InRelease").unlink()
    (dists / "Release").write_text("Origin: test\n")
    assert bootstrap.release_of(spec).url.endswith("/Release")  # type: ignore[union-attr]


def test_a_recipes_upload_takes_its_credentials_from_the_profile_it_names(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fixtures import maas_login
    from servers.maas import serve

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name in ("MAAS_URL", "MAAS_API_KEY", "MAAS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    with serve_cloud_images(tmp_path) as site, serve(tmp_path / "maas") as fake:
        maas_login(tmp_path / "home/.maascli.db", "admin", fake.url, fake.api_key)
        path = tmp_path / "images.toml"
        path.write_text(f"source = 'noble'\nmirror = '{site.mirror}'\nkeyring = "
                        f"'{site.keyring}'\ncache_dir = 'cache'\nworkdir = '.'\n"
                        "[image.tiny]\n[image.tiny.upload]\nname = 'custom/tiny'\n"
                        "profile = 'admin'\n")
        res = mc.build(mc.Recipe.load(path).images["tiny"], progress=False)
        assert res.uploaded is not None and res.uploaded.full_name == "custom/tiny"
        assert fake.path("custom/tiny").read_bytes() == res.output.read_bytes()
    text = (tmp_path / "tiny.tgz.build.json").read_text()
    assert json.loads(text)["upload"] == {
        "maas": fake.url, "id": res.uploaded.id, "name": "custom/tiny",
        "architecture": res.uploaded.architecture, "base_image": res.uploaded.base_image,
        "complete": res.uploaded.complete}
    assert fake.api_key.split(":")[2] not in text  # the URL, never the key
