"""The build record written beside an image (``OUT.build.json``), and what ``if_changed``
compares with it.

The record says what the image was made from and how: the source (URL, serial, sha256,
how it was verified; for a ``bootstrap:`` source the bootstrap inputs and the mirror's
Release file), the spec's normalised content and its hash, the maas_chroot version, the
packages asked for, the output's size and sha256, the step times, the upload (MAAS URL,
never the key; resource id, name) and the boot test's result. ``build(...,
if_changed=True)`` builds nothing when the previous record has the same source, the same
content hash and the same tool version, and the image beside it is the one it describes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import rootfs
from ..archive.archiving import PackResult, write_atomically
from ..boot import BootReport
from ..maas import BootResource
from ..sources import image as sources
from ..sources.verify import file_sha256
from ..version import __version__
from .spec import BuildSpec

log = logging.getLogger(__name__)

SUFFIX = ".build.json"
FORMAT = 1
#: Where an Ubuntu cloud image says its serial (``serial: 20240423``).
SERIAL_FILE = "/etc/cloud/build.info"
#: Fields that say where and how a build works, not what it makes: not in the content.
NOT_CONTENT = frozenset({"workdir", "cache_dir", "keep_rootfs", "base_cache"})
#: What of an upload target is content (the rest is how it is sent, and who sends it).
UPLOAD_CONTENT = ("name", "title", "architecture", "base_image", "filetype")


@dataclass(frozen=True)
class SourceState:
    """What a build's source is now. ``identity`` is what ``if_changed`` compares (None:
    it cannot be told cheaply, so the image is always rebuilt); ``sha256`` is the archive
    the rootfs came from, ``verified`` how it was checked."""

    describe: str
    url: str | None
    identity: str | None
    verified: str
    sha256: str | None = None
    serial: str | None = None
    release: Mapping[str, str | None] | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: dict(v) if isinstance(v, Mapping) else v
                for k, v in dataclasses.asdict(self).items()}


def path_for(image: str | os.PathLike[str]) -> Path:
    out = Path(os.fspath(image))
    return out.with_name(out.name + SUFFIX)


def content(spec: BuildSpec) -> dict[str, Any]:
    """The spec as plain JSON: every field that shapes the image, paths as text, and the
    sha256 of every host file it copies in or runs (so editing one is a change)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(spec):
        if f.name not in NOT_CONTENT:
            out[f.name] = _plain(f.name, getattr(spec, f.name))
    return out


def digest(data: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":"))
                          .encode()).hexdigest()


def _plain(key: str, value: Any) -> Any:
    if key == "upload" and value is not None:
        return {k: getattr(value, k) for k in UPLOAD_CONTENT if getattr(value, k) is not None}
    if key == "files":
        return {dest: ({"content_sha256": hashlib.sha256(src).hexdigest()}
                       if isinstance(src, bytes) else _input(src)) for dest, src in value}
    if key == "commands":
        return [_input(c) if isinstance(c, os.PathLike) else c if isinstance(c, str)
                else list(c) for c in value]
    if key in ("apt_key", "keyring") and value is not None:
        return _input(value)
    if key == "boot_test" and isinstance(value, Mapping):
        return {k: v for k, v in value.items() if k != "log_dir"}
    if isinstance(value, sources.ImageSource):
        return value.url
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, tuple):
        return [_plain("", v) for v in value]
    return value


def _input(path: str | os.PathLike[str]) -> dict[str, str | None]:
    """A host file or tree the build reads, and its sha256 (None if it is not there)."""
    p = os.fspath(path)
    return {"path": p, "sha256": _tree_sha256(Path(p)) if os.path.lexists(p) else None}


def _tree_sha256(top: Path) -> str:
    if not top.is_dir():
        return file_sha256(top)
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            p = Path(dirpath, name)
            st = os.lstat(p)
            h.update(f"{p.relative_to(top)}\0{st.st_mode:o}\0".encode())
            if stat.S_ISREG(st.st_mode):
                h.update(file_sha256(p).encode())
            elif stat.S_ISLNK(st.st_mode):
                h.update(os.readlink(p).encode())
    return h.hexdigest()


def serial_in(root: str | os.PathLike[str]) -> str | None:
    """The serial an Ubuntu cloud image carries in ``/etc/cloud/build.info``, if any."""
    try:
        text = rootfs.read_file(root, SERIAL_FILE).decode("utf-8", "replace")
    except OSError:
        return None
    return next((line.split(":", 1)[1].strip() for line in text.splitlines()
                 if line.startswith("serial:")), None)


def load(image: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The record beside ``image``, or None (none, or not one this version can read)."""
    path = path_for(image)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.warning("ignoring the build record %s: %s", path, e)
        return None
    return data if isinstance(data, dict) and data.get("format") == FORMAT else None


def changes(previous: Mapping[str, Any] | None, *, source: SourceState,
            spec_content: Mapping[str, Any], image: Path) -> list[str]:
    """Why ``image`` must be built again (nothing: it is up to date)."""
    if previous is None:
        return [f"there is no build record {path_for(image).name} (a first build)"]
    out = []
    made = previous.get("output") or {}
    try:
        st = image.stat()
    except FileNotFoundError:
        out.append(f"{image.name} is missing")
    else:
        if (st.st_size, st.st_mtime_ns) != (made.get("size"), made.get("mtime_ns")):
            out.append(f"{image.name} changed since it was built")
    if previous.get("maas_chroot") != __version__:
        out.append(f"a new tool version ({previous.get('maas_chroot')} → {__version__})")
    was = previous.get("source") or {}
    if source.identity is None:
        out.append(f"the source ({source.describe}) cannot be compared without reading it all")
    elif was.get("identity") != source.identity:
        out.append(_source_change(was, source))
    recipe = previous.get("recipe") or {}
    if recipe.get("sha256") != digest(spec_content):
        keys = changed_keys(recipe.get("content") or {}, spec_content)
        out.append(f"the recipe changed ({', '.join(keys) or 'its form'})")
    return out


def _source_change(was: Mapping[str, Any], now: SourceState) -> str:
    old, new = was.get("serial"), now.serial
    if old and new and old != new:
        return f"new serial {old} → {new}"
    if was.get("describe") != now.describe:
        return f"a new source ({was.get('describe')} → {now.describe})"
    release = was.get("release") or {}
    if now.release is not None and release.get("sha256") != now.release.get("sha256"):
        return (f"the mirror's Release file changed ({release.get('date')} → "
                f"{now.release.get('date')})")
    if was.get("sha256") and now.sha256:
        return f"the source changed (sha256 {was['sha256'][:12]}… → {now.sha256[:12]}…)"
    return "the source changed"


def changed_keys(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The keys whose values differ (one level into tables: ``upload.title``)."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if isinstance(a, Mapping) and isinstance(b, Mapping) and not prefix:
            out += changed_keys(a, b, prefix=f"{key}.")
        else:
            out.append(prefix + key)
    return out


def make(spec: BuildSpec, *, spec_content: Mapping[str, Any], source: SourceState,
         packed: PackResult, manifest: Path | None, steps: tuple[tuple[str, float], ...],
         uploaded: BootResource | None, maas_url: str | None,
         boot: BootReport | None) -> dict[str, Any]:
    """The record of a finished build."""
    st = packed.path.stat()
    return {
        "format": FORMAT,
        "maas_chroot": __version__,
        "built": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "source": source.to_json(),
        "recipe": {"sha256": digest(spec_content), "content": dict(spec_content)},
        "packages": list(spec.packages),
        "output": {"path": os.fspath(packed.path), "size": packed.size,
                   "sha256": packed.sha256, "mtime_ns": st.st_mtime_ns, "arch": packed.arch},
        "manifest": None if manifest is None else {
            "path": os.fspath(manifest), "sha256": file_sha256(manifest),
            "packages": len(manifest.read_text().splitlines())},
        "steps": [[str(name), round(secs, 3)] for name, secs in steps],
        "upload": None if uploaded is None else {
            "maas": maas_url, "id": uploaded.id, "name": uploaded.full_name,
            "architecture": uploaded.architecture, "base_image": uploaded.base_image,
            "complete": uploaded.complete},
        "boot_test": None if boot is None else {
            "ok": boot.ok, "accel": boot.accel, "boots": len(boot.runs),
            "milestones": dict(boot.milestones), "machine_ids": list(boot.machine_ids),
            "problems": [str(p) for p in boot.problems]},
    }


def write(image: Path, record: Mapping[str, Any]) -> Path:
    path = path_for(image)
    write_atomically(path, json.dumps(record, indent=1, ensure_ascii=False).encode() + b"\n")
    return path
