"""Recipes: several images in one TOML file, the same BuildSpec the CLI and Python use,
every bad recipe refused before any work with its file, line, key and a hint; the CLI's
build -f (flags override the recipe) and check -f; every shipped example checks."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import textwrap
from pathlib import Path
from typing import Any

import pytest
from fixtures import assert_one_clear_error, run_cli

import maas_chroot as mc
from maas_chroot import cli
from maas_chroot.maas import Upload
from maas_chroot.pipeline import tomlpos

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((REPO / "docs/examples").glob("*.toml"))


def _recipe(tmp_path: Path, text: str, name: str = "images.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def _refused(path: Path) -> mc.RecipeError:
    with pytest.raises(mc.RecipeError) as exc:
        mc.Recipe.load(path)
    err = exc.value
    assert isinstance(err, mc.SpecError) and err.path == str(path)
    assert err.hint, err
    assert str(err).startswith(f"{path}:{err.line}: " if err.line else f"{path}: ")
    return err


MULTI = """
    source = "noble"             # shared by every image
    packages = ["jq"]
    level = 1
    files = {"/etc/motd" = "motd.txt"}

    [upload]                     # shared upload settings, for the images that upload
    profile = "admin"

    [image.web]
    packages = ["jq", "nginx"]
    files = {"/etc/app.conf" = {content = "x = 1\\n"}}
    commands = ["echo hi", ["touch", "/x"], {script = "setup.sh"}]

    [image.web.upload]
    name = "custom/web"
    title = "Web"

    [image.db]
    output = "out/db.tgz"
    source = "bootstrap:bookworm"
    mirror = "http://127.0.0.1:9/debian"
    upgrade = true
"""


def test_one_file_holds_several_images_sharing_settings(tmp_path: Path) -> None:
    (tmp_path / "motd.txt").write_text("hello\n")
    (tmp_path / "setup.sh").write_text("#!/bin/sh\n")
    (tmp_path / "out").mkdir()
    recipe = mc.Recipe.load(_recipe(tmp_path, MULTI))
    assert list(recipe.images) == ["web", "db"]
    web, db = recipe.images["web"], recipe.images["db"]
    assert isinstance(web, mc.BuildSpec)
    assert (web.source, web.output, web.level) == ("noble", tmp_path / "web.tgz", 1)
    assert web.packages == ("jq", "nginx")  # a list replaces the shared one
    assert dict(web.files) == {"/etc/motd": str(tmp_path / "motd.txt"),  # tables merge
                               "/etc/app.conf": b"x = 1\n"}
    assert web.commands == ("echo hi", ("touch", "/x"), tmp_path / "setup.sh")
    assert web.upload == Upload(client=None, name="custom/web", title="Web", profile="admin")
    assert (db.source, db.output, db.upgrade, db.packages) == (
        "bootstrap:bookworm", tmp_path / "out/db.tgz", True, ("jq",))
    assert db.upload is None  # the shared upload settings name no image
    with pytest.raises(dataclasses_frozen()):
        recipe.images["x"] = web  # type: ignore[index]
    assert repr(recipe) == f"Recipe({str(tmp_path / 'images.toml')!r}, images=['web', 'db'])"
    # the same value the Python API and the CLI build
    assert web == mc.BuildSpec.create("noble", tmp_path / "web.tgz", **{
        k: getattr(web, k) for k in ("packages", "level", "files", "commands", "upload")})


def dataclasses_frozen() -> type[Exception]:
    return TypeError  # a MappingProxyType refuses item assignment


def test_paths_are_relative_to_the_recipe_not_the_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "r").mkdir()
    (tmp_path / "r/root.tar").write_bytes(b"")
    (tmp_path / "r/key.asc").write_text("k")
    path = _recipe(tmp_path / "r", """
        source = "root.tar"
        [image.a]
        apt_sources = ["deb [signed-by=key.asc] http://127.0.0.1:9/x stable main"]
    """)
    monkeypatch.chdir("/")
    spec = mc.Recipe.load(path).images["a"]
    assert spec.source == str(tmp_path / "r/root.tar")
    assert spec.apt_sources == (f"deb [signed-by={tmp_path}/r/key.asc] http://127.0.0.1:9/x "
                                "stable main",)


@pytest.mark.parametrize(("text", "line", "key", "words", "hint"), [
    ("pakages = ['x']\n[image.a]\n", 2, "pakages", "unknown key 'pakages'", "'packages'"),
    ("[image.a]\noutptu = 'a.tgz'\n", 3, "outptu", "unknown key 'outptu'", "'output'"),
    ("[image.a]\npackages = 'nginx'\n", 3, "packages", 'list of strings, not the string "nginx"',
     'packages = ["nginx"]'),
    ("[image.a]\nupgrade = 'yes'\n", 3, "upgrade", "must be true or false", "upgrade = true"),
    ("[image.a]\nlevel = 6.5\n", 3, "level", "must be an integer", "level = 6"),
    ("[image.a]\nnetwork = 'bridge'\n", 3, "network", "one of 'host', 'none'",
     'network = "host"'),
    ("[image.a]\ncommands = [{run = 'x'}]\n", 3, "commands", "not a table ({'run': 'x'})",
     '{script = "setup.sh"}'),
    ("[image.a]\narch = 'x86_64'\n", 3, "arch", "unknown architecture 'x86_64'", "amd64"),
    ("[image.a]\n[image.a.upload]\nname = 'custom/noble'\n", 4, "upload.name",
     "noble is a reserved name", "noble-custom"),
    ("[image.a]\nupload = {name = 'centos8'}\n", 3, "upload.name", "reserved", None),
    ("[image.a]\nupload = {name = 'x', api_key = 'a:b:c'}\n", 3, "upload.api_key",
     "credentials never go in a recipe", "profile"),
    ("[image.a]\nupload = {nmae = 'x'}\n", 3, "upload.nmae", "unknown key upload.nmae",
     "'name'"),
    ("[image.a]\nupload = {title = 'x'}\n", 3, "upload", "the upload has no name", None),
    ("[image.a]\n\nfiles = {'/etc/motd' = 'nope.txt'}\n", 4, "files./etc/motd",
     "file to copy into the image not found", "relative to the recipe"),
    ("[image.a]\n[image.a.files]\n'/etc/x' = {content = 'x'}\n'/etc/motd' = 'nope.txt'\n", 5,
     "files./etc/motd", "nope.txt", None),
    ("[image.a]\noutput = 'a.zip'\n", 3, "output", "cannot tell the output format", ".tgz"),
    ("[image.a]\nboot_test = {boot = 2}\n", 3, "boot_test", "unknown boot_test option", "boots"),
    ("[image.a]\noutput = 'x.tgz'\n[image.b]\noutput = './x.tgz'\n", 5, "output",
     "as image 'a' does", "its own output"),
])
def test_a_bad_recipe_is_refused_with_its_line_key_and_a_hint(
        tmp_path: Path, text: str, line: int, key: str, words: str, hint: str | None) -> None:
    err = _refused(_recipe(tmp_path, "source = 'noble'\n" + text))
    assert (err.line, err.key) == (line, key), str(err)
    assert words in str(err)
    if hint is not None:
        assert hint in (err.hint or "")
    assert list(tmp_path.iterdir()) == [tmp_path / "images.toml"]  # nothing was made


def test_a_missing_source_names_the_image_and_both_places_to_put_one(tmp_path: Path) -> None:
    err = _refused(_recipe(tmp_path, "packages = ['jq']\n\n[image.web]\nupgrade = true\n"))
    assert (err.line, err.image) == (3, "web")
    assert "no source" in err.reason and "[image.web]" in (err.hint or "")


def test_toml_errors_and_files_without_images(tmp_path: Path) -> None:
    err = _refused(_recipe(tmp_path, "source = 'noble'\n[image.a]\npackages = [1,\n"))
    assert "not valid TOML" in str(err) and err.line is not None
    err = _refused(_recipe(tmp_path, "source = 'noble'\n", "none.toml"))
    assert "defines no images" in str(err) and "[image.NAME]" in (err.hint or "")
    err = _refused(tmp_path / "missing.toml")
    assert "cannot read the recipe" in str(err)


def test_lines_are_found_through_strings_arrays_and_inline_tables() -> None:
    text = textwrap.dedent('''
        note = """
        packages = "inside a string"
        """
        packages = [
          "a",  # packages = "in a comment"
          "b",
        ]
        [image.web]
        files = {"/etc/a.conf" = "a", "/etc/b" = {content = "x"}}
        [image]
        db.output = 'db.tgz'
        "my box".level = 1
    ''')
    found = tomlpos.locate(text)
    assert found[("note",)] == 2 and found[("packages",)] == 5
    assert found[("image", "web")] == 9
    assert found[("image", "web", "files", "/etc/a.conf")] == 10
    assert found[("image", "web", "files", "/etc/b", "content")] == 10
    assert found[("image", "db", "output")] == 12 and found[("image", "my box")] == 13
    assert tomlpos.locate("x = [\n") == {("x",): 1}  # never raises


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_every_shipped_example_checks(example: Path) -> None:
    recipe = mc.Recipe.load(example)
    assert recipe.images
    for spec in recipe.images.values():
        assert spec.output.parent == example.parent


def test_check_verb_lists_the_images_or_names_the_bad_line(tmp_path: Path) -> None:
    proc = run_cli("check", "-f", str(REPO / "docs/examples/images.toml"), "web")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].startswith("web: cloud image noble amd64 squashfs")
    assert proc.stdout.splitlines()[-1].endswith("images.toml: 1 image(s), OK")
    bad = _recipe(tmp_path, "source = 'noble'\n[image.a]\npackages = 'nginx'\n")
    assert_one_clear_error(run_cli("check", "-f", str(bad)), f"{bad}:3:", "packages")
    assert_one_clear_error(run_cli("check", "-f", str(REPO / "docs/examples/images.toml"),
                                   "wbe"), "no image 'wbe'", "'web'")


def test_flags_override_the_recipe(recorded_build: list[tuple[Any, ...]],
                                   tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "motd.txt").write_text("hello\n")
    (tmp_path / "setup.sh").write_text("#!/bin/sh\n")
    (tmp_path / "out").mkdir()
    path = _recipe(tmp_path, MULTI)
    monkeypatch.delenv("MAAS_PROFILE", raising=False)
    assert cli.main(["build", "-f", str(path), "--if-changed", "--level", "9",
                     "--format", "root.tar.xz", "--install", "htop", "--title", "Web 2"]) == 0
    web, db = (call[2] for call in recorded_build)
    assert [call[3] for call in recorded_build] == [True, True]  # --if-changed reached build
    assert (web.level, web.fmt, web.packages, db.packages) == (9, "root.tar.xz", ("htop",),
                                                              ("htop",))
    assert web.upload is not None and (web.upload.title, web.upload.profile) == ("Web 2", "admin")
    assert web.upload.client is None  # made by build(), from the profile or the environment
    assert db.upload is None and dict(web.files)["/etc/motd"] == str(tmp_path / "motd.txt")
    recorded_build.clear()
    out = tmp_path / "elsewhere.tgz"
    assert cli.main(["build", "-f", str(path), "db", "-o", str(out), "--no-sysprep",
                     "--boot-test", "--boots", "2", "--upload", "custom/db",
                     "--maas-url", "http://127.0.0.1:9/MAAS", "--api-key", "a:b:c"]) == 0
    [(_, _, db, _)] = recorded_build
    assert (db.output, db.sysprep, db.boot_test) == (out, False, {"boots": 2})
    assert db.upload is not None and db.upload.client is not None
    assert db.upload.client.url == "http://127.0.0.1:9/MAAS"
    assert cli.main(["build", "-f", str(path), "-o", str(out)]) == 1  # -o: which image?
    assert cli.main(["build", "-f", str(path), "nope"]) == 1
    assert len(recorded_build) == 1


def test_several_images_go_on_after_one_fails(tmp_path: Path) -> None:
    """A nightly job builds what it can, and says what failed (not root: both fail early)."""
    path = _recipe(tmp_path, "source = 'noble'\n[image.a]\n[image.b]\n")
    proc = run_cli("build", "-f", str(path), env={"PYTHONPATH": str(REPO), "HOME": "/"}
                   if os.geteuid() != 0 else None)
    if os.geteuid() == 0:
        proc = run_cli("build", "-f", str(path), "--mirror", "http://127.0.0.1:9",
                       "--cache-dir", str(tmp_path / "cache"), "--workdir", str(tmp_path))
        assert proc.returncode == 1
        assert "image a: " in proc.stderr and "image b: " in proc.stderr
        assert_one_clear_error(proc, "2 of 2 images failed: a, b")
    else:
        assert_one_clear_error(proc, "must run as root")


SMALL = [p for p in EXAMPLES if p.read_text().startswith("# small:")]


@pytest.mark.root
@pytest.mark.parametrize("example", SMALL, ids=lambda p: p.name)
def test_every_small_example_builds(example: Path, minbase_tar: Path, tmp_path: Path) -> None:
    """Built as shipped, but from the test cloud-images site (the minbase as noble)."""
    from servers.cloudimages import serve_cloud_images

    copy = tmp_path / "examples"
    shutil.copytree(example.parent, copy, ignore=shutil.ignore_patterns("*.ipynb"))
    with serve_cloud_images(tmp_path, rootfs_tar=minbase_tar, formats=("root.tar.xz",)) as site:
        proc = run_cli("build", "-f", str(copy / example.name), "--format", "root.tar.xz",
                       "--mirror", site.mirror, "--keyring", str(site.keyring), "--level", "1",
                       "--cache-dir", str(tmp_path / "cache"), "--workdir", str(tmp_path),
                       "--no-progress")
    assert proc.returncode == 0, proc.stderr
    for name, spec in mc.Recipe.load(copy / example.name).images.items():
        assert f"{name}:\nBuildResult('{spec.output}'" in proc.stdout
        assert Path(f"{spec.output}.manifest").read_text().startswith("adduser\t")
        record = json.loads(Path(f"{spec.output}.build.json").read_text())
        assert record["output"]["sha256"] == hashlib.sha256(spec.output.read_bytes()).hexdigest()
        with tarfile.open(spec.output) as tar:
            for dest, src in spec.files:
                member = tar.extractfile("." + dest)
                assert member is not None
                assert member.read() == (src if isinstance(src, bytes) else Path(src).read_bytes())
