"""Recipes: several images in one TOML file, refused before any work if one cannot build.

    source = "noble"                          # shared settings: build()'s keyword names
    packages = ["jq"]

    [image.web]                               # one image: its keys override the shared ones
    output = "web.tgz"                        # default: NAME.tgz beside the recipe
    packages = ["jq", "nginx"]
    files = {"/etc/motd" = "motd.txt"}        # image path = host path, or {content = "..."}
    commands = ["systemctl enable nginx", ["touch", "/x"], {script = "setup.sh"}]

    [image.web.upload]                        # the upload target (never credentials)
    name = "custom/web"
    title = "Web server"
    profile = "admin"                         # a `maas login` profile; else the environment

The keys are the fields of :class:`~maas_chroot.pipeline.BuildSpec`, so ``build()``'s
docs serve both; each image is one ``BuildSpec`` (``recipe.images["web"]``), the value the
CLI and Python callers use too. Paths are relative to the recipe's directory. A table
(``files``, ``upload``, ``boot_test``) merges key by key with the shared one; any other
key replaces it. :meth:`Recipe.load` parses with ``tomllib`` (``tomli`` before 3.11), then
checks every image as the build's ``check`` step does, and refuses the first problem with
a :class:`~maas_chroot.errors.RecipeError` naming the file, the line (from
:mod:`.tomlpos`) and the key, with a hint: an unknown key (and the closest valid one), a
wrong type, a missing source, a reserved MAAS name, two images writing one output, a
file to copy that is not there, and whatever else the check step refuses.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import sys
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..errors import MaasChrootError, RecipeError
from ..maas import upload as maas_upload
from ..sources import plans
from . import tomlpos
from .spec import PATHS, BuildSpec, preflight

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

FIELDS = typing.get_type_hints(BuildSpec)
UPLOAD_FIELDS = {k: v for k, v in typing.get_type_hints(
    maas_upload.Upload, localns={"MaasClient": object}).items() if k != "client"}
#: Upload keys that would be credentials: never in a file that lives in git.
CREDENTIALS = ("api_key", "key", "url", "maas_url", "token", "secret", "password",
               "credentials", "client", "cacerts")
TABLES = ("files", "upload", "boot_test")
_SPECIAL = ("source", "commands", "files", "upload")
_TOML_LINE = re.compile(r"at line (\d+)")
_SIGNED_BY = re.compile(r"(signed-by=)([^\s\]]+)")


@dataclass(frozen=True)
class Recipe:
    """A loaded recipe: ``images`` maps each image's name (in file order) to its spec."""

    path: Path
    images: Mapping[str, BuildSpec]

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Recipe:
        """Read and check the recipe at ``path``; :class:`RecipeError` if it cannot build."""
        file = Path(os.fspath(path)).absolute()
        try:
            text = file.read_text(encoding="utf-8")
            data = tomllib.loads(text)
        except OSError as e:
            raise RecipeError(f"cannot read the recipe: {e.strerror}", path=file, line=None,
                              hint="give the path of a TOML recipe, e.g. -f images.toml") from e
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            m = _TOML_LINE.search(str(e))
            end = "end of document" in str(e) and isinstance(e, tomllib.TOMLDecodeError)
            raise RecipeError(f"not valid TOML: {e}", path=file,
                              line=int(m.group(1)) if m else len(text.splitlines()) if end
                              else None,
                              hint="see https://toml.io for the syntax") from e
        return _Loader(file, text, data).load()

    def select(self, names: Iterable[str] = ()) -> dict[str, BuildSpec]:
        """The images named (all of them for none), in file order; a RecipeError names an
        unknown one."""
        wanted = list(names)
        for name in wanted:
            if name not in self.images:
                close = difflib.get_close_matches(name, list(self.images), n=1)
                raise RecipeError(f"no image {name!r} in the recipe", path=self.path, line=None,
                                  key=f"image.{name}",
                                  hint=f"did you mean {close[0]!r}?" if close else
                                  f"its images: {', '.join(self.images)}")
        return {n: s for n, s in self.images.items() if not wanted or n in wanted}

    def __repr__(self) -> str:
        return f"Recipe({os.fspath(self.path)!r}, images={list(self.images)})"


class _Wrong(Exception):
    """A value of the wrong type: ``expected`` says what it should be."""

    def __init__(self, expected: str, hint: str | None = None, *, got: Any = None) -> None:
        super().__init__(expected)
        self.expected, self.hint, self.got = expected, hint, got


class _Loader:
    def __init__(self, path: Path, text: str, data: dict[str, Any]) -> None:
        self.path, self.data, self.base = path, data, path.parent
        self.lines = tomlpos.locate(text)

    def fail(self, image: str | None, key: Sequence[str], message: str,
             hint: str | None) -> RecipeError:
        """A RecipeError at the line that defines ``key`` for ``image`` (or the nearest
        enclosing table), naming the key as the file spells it."""
        key = tuple(key)
        where: list[tuple[str, ...]] = []
        for n in range(len(key), 0, -1):
            where += [*([("image", image, *key[:n])] if image else []), key[:n]]
        where += [("image", image)] if image else []
        found = next((w for w in where if w in self.lines), None)
        about = f"image {image!r}: " if image else ""
        return RecipeError(f"{about}{message}", path=self.path,
                           line=self.lines.get(found) if found else None,
                           key=".".join(key) or None, image=image, hint=hint)

    def load(self) -> Recipe:
        shared = {k: v for k, v in self.data.items() if k != "image"}
        for key in shared:
            self.known(None, key)
        tables = self.data.get("image")
        if not isinstance(tables, dict) or not tables or \
                not all(isinstance(t, dict) for t in tables.values()):
            raise self.fail(None, ("image",), "the recipe defines no images"
                            if tables is None else "image must hold tables, one per image",
                            "add an [image.NAME] table for each image to build")
        images = {name: self.image(name, shared, table) for name, table in tables.items()}
        outputs: dict[str, str] = {}
        for name, spec in images.items():
            out = os.path.realpath(spec.output)
            if out in outputs:
                raise self.fail(name, ("output",), f"writes {spec.output}, as image "
                                f"{outputs[out]!r} does", "give each image its own output")
            outputs[out] = name
        return Recipe(self.path, types.MappingProxyType(images))

    def known(self, image: str | None, key: str) -> None:
        if key not in FIELDS:
            close = difflib.get_close_matches(key, [*FIELDS, "image"], n=1)
            raise self.fail(image, (key,), f"unknown key {key!r}",
                            f"did you mean {close[0]!r}?" if close else
                            "the keys are build()'s keyword names (see docs/api.md)")

    def image(self, name: str, shared: Mapping[str, Any], own: Mapping[str, Any]) -> BuildSpec:
        for key in own:
            self.known(name, key)
        merged = {**shared, **own}
        for key in TABLES:  # tables merge key by key (the image's win)
            if isinstance(shared.get(key), dict) and isinstance(own.get(key), dict):
                merged[key] = {**shared[key], **own[key]}
        up = merged.get("upload")
        if "upload" not in own and isinstance(up, dict) and "name" not in up:
            del merged["upload"]  # shared upload settings, for the images that upload
        options: dict[str, Any] = {}
        for key, value in merged.items():
            try:
                options[key] = self.value(name, key, value)
            except _Wrong as e:
                hint = e.hint or _fix(key, value, e.expected)
                got = _shown(value if e.got is None else e.got)
                raise self.fail(name, (key,), f"{key} must be {e.expected}, not {got}",
                                hint) from None
        if "source" not in options:
            raise self.fail(name, (), "no source", f"add source = \"noble\" (a release, URL, "
                            f"archive, directory or bootstrap:SUITE) to [image.{name}] or at "
                            "the top of the recipe")
        source = options.pop("source")
        output = options.pop("output", self.base / f"{name}.tgz")
        try:
            spec = BuildSpec.create(source, output, **options)
            preflight(spec)
        except MaasChrootError as e:
            raise self.fail(name, (e.key or "source").split(".", 1), e.message, e.hint) from e
        return spec

    # --- values ---------------------------------------------------------------------------

    def value(self, image: str, key: str, value: Any) -> Any:
        if key == "source":
            if not isinstance(value, str):
                raise _Wrong("a string (a release, URL, archive, directory or bootstrap:SUITE)")
            return self.path_of(value) if plans.names_a_path(value, self.base) else value
        if key == "commands":
            return [self.command(v) for v in _list(value, "a list of commands")]
        if key == "files":
            return {dest: self.file(image, dest, src) for dest, src in _table(value).items()}
        if key == "upload":
            return self.upload(image, _table(value))
        if key == "apt_sources":
            lines = _check(value, FIELDS[key])
            return [_SIGNED_BY.sub(lambda m: m.group(1) + self.path_of(m.group(2)), line)
                    for line in lines]
        if key == "boot_test" and isinstance(value, dict) and "log_dir" in value:
            value = {**value, "log_dir": self.path_of(str(value["log_dir"]))}
        checked = _check(value, FIELDS[key])
        return self.path_of(checked) if key in PATHS else checked

    def path_of(self, value: str) -> str:
        return os.fspath(self.base / os.path.expanduser(value))

    def command(self, value: Any) -> Any:
        if isinstance(value, str):
            return value
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            return tuple(value)
        if isinstance(value, dict) and set(value) == {"script"} and \
                isinstance(value["script"], str):
            return Path(self.path_of(value["script"]))
        raise _Wrong("a list of commands: each a string (run with /bin/sh -c), a list of "
                     "strings (an argv) or {script = \"FILE\"} (a host script, run)", got=value)

    def file(self, image: str, dest: str, src: Any) -> str | bytes:
        if isinstance(src, str):
            return self.path_of(src)
        if isinstance(src, dict) and set(src) == {"content"} and isinstance(src["content"], str):
            return src["content"].encode()
        raise self.fail(image, ("files", dest), f"files.{dest!r} must be a host path or "
                        f"{{content = \"...\"}}, not {_shown(src)}",
                        f'write "{dest}" = "path/on/this/host"')

    def upload(self, image: str, table: Mapping[str, Any]) -> maas_upload.Upload:
        fields: dict[str, Any] = {}
        for key, value in table.items():
            if key in CREDENTIALS:
                raise self.fail(image, ("upload", key), f"upload.{key}: credentials never go "
                                "in a recipe", "name a `maas login` profile (profile = "
                                "\"NAME\", or --profile NAME), or set MAAS_URL and MAAS_API_KEY")
            if key not in UPLOAD_FIELDS:
                close = difflib.get_close_matches(key, list(UPLOAD_FIELDS), n=1)
                raise self.fail(image, ("upload", key), f"unknown key upload.{key}",
                                f"did you mean {close[0]!r}?" if close else
                                f"the upload keys: {', '.join(UPLOAD_FIELDS)}")
            try:
                fields[key] = _check(value, UPLOAD_FIELDS[key])
            except _Wrong as e:
                raise self.fail(image, ("upload", key), f"upload.{key} must be {e.expected}, "
                                f"not {_shown(value)}", e.hint) from None
        if "name" not in fields:
            raise self.fail(image, ("upload",), "the upload has no name",
                            'add name = "custom/NAME" to the upload table')
        return maas_upload.Upload(client=None, **fields)


def _check(value: Any, hint: Any) -> Any:
    """``value`` (from TOML) as the type ``hint`` wants it, or :class:`_Wrong`."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        alts = [a for a in typing.get_args(hint) if a is not type(None)]
        wanted = []
        for alt in alts:
            try:
                return _check(value, alt)
            except _Wrong as e:
                wanted.append(e.expected)
        raise _Wrong(" or ".join(dict.fromkeys(wanted)))
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise _Wrong("true or false")
    if hint in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                (hint is int and not isinstance(value, int)):
            raise _Wrong("an integer" if hint is int else "a number")
        return value
    if hint in (str, Path) or origin is os.PathLike:
        if isinstance(value, str):
            return value
        raise _Wrong("a string")
    if origin is Literal:
        if value in typing.get_args(hint):
            return value
        raise _Wrong("one of " + ", ".join(repr(a) for a in typing.get_args(hint)))
    if origin is tuple:
        items = _list(value, "a list of strings")
        return [_check(v, typing.get_args(hint)[0]) for v in items]
    if origin is Mapping:
        return _table(value)
    raise _Wrong("something a recipe cannot spell")  # pragma: no cover - every field is above


def _list(value: Any, expected: str) -> list[Any]:
    if isinstance(value, list):
        return value
    raise _Wrong(expected)


def _fix(key: str, value: Any, expected: str) -> str:
    """How to write ``key`` right, from what it should be and its default."""
    default = next(f.default for f in dataclasses.fields(BuildSpec) if f.name == key)
    if isinstance(value, str) and expected.startswith("a list"):
        return f"write {key} = [{_toml(value)}]"
    if isinstance(default, bool):
        return f"write {key} = {str(not default).lower()} (true or false, without quotes)"
    if isinstance(default, int):
        return f"write a number without quotes, e.g. {key} = {default}"
    if expected.startswith("one of"):
        return f"write {key} = " + expected.removeprefix("one of ").split(",")[0].replace("'", '"')
    if key == "commands":
        return 'e.g. commands = ["echo hi > /etc/motd", ["touch", "/x"], {script = "setup.sh"}]'
    return f"see what {key} takes in docs/api.md (the build() options)"


def _toml(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _table(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    raise _Wrong("a table ({key = value, ...})")


def _shown(value: Any) -> str:
    """How a wrong value is named in a message: ``the string "nginx"``, ``an integer (6)``."""
    if isinstance(value, str):
        return f'the string "{value}"'
    kind = {bool: "a boolean", int: "an integer", float: "a number", list: "a list",
            dict: "a table"}.get(type(value), type(value).__name__)
    text = repr(value)
    return f"{kind} ({text if len(text) <= 40 else text[:39] + '…'})"

