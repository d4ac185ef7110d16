"""The one value a build is driven by: :class:`BuildSpec`, and the checks it must pass.

The CLI, a recipe and Python callers fill the same :class:`BuildSpec` (its fields are
``build()``'s keyword names). :func:`preflight` is the ``check`` step: everything that
can be refused before anything slow happens.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import arches, maas
from ..archive import archiving as archive
from ..boot import options as boot_opts
from ..customise.customisation import Customisation
from ..errors import ArgumentError, SpecError, keyed
from ..maas import Upload
from ..sources import image as sources
from ..sources import plans
from ..sources.plans import SourceOptions, SourcePlan

Source = str | os.PathLike[str] | sources.ImageSource
DEFAULT_WORKDIR = Path("/var/tmp")


@dataclass(frozen=True, kw_only=True)
class BuildSpec(SourceOptions, Customisation):
    """Everything one build is asked to do.

    The fields are ``build()``'s keyword names: the source and how it is verified
    (:class:`~maas_chroot.plans.SourceOptions`), the customisation
    (:class:`~maas_chroot._customise.Customisation`), and ``sysprep`` /
    ``sysprep_keep`` (operations to skip), ``level`` (compression), ``workdir``,
    ``keep_rootfs`` (customise in this new or empty directory and keep it),
    ``in_place`` (customise a directory ``source`` itself), ``boot_test`` (True, or a
    mapping of :func:`~maas_chroot.boot_test` options such as ``{"boots": 2}``: the packed
    image is deployed and booted before any upload, and a failing one is never
    uploaded), ``upload``, and ``base_cache`` (build on a copy-on-write overlay of the
    source extracted once into the cache, instead of extracting it every time).
    Build one with :meth:`create`, which normalises and checks every value.
    """

    source: Source
    output: Path
    sysprep: bool = True
    sysprep_keep: tuple[str, ...] = ()
    level: int = 6
    workdir: Path | None = None
    keep_rootfs: Path | None = None
    in_place: bool = False
    boot_test: bool | Mapping[str, Any] = False
    upload: Upload | None = None
    base_cache: bool = True

    @classmethod
    def create(cls, source: Source, output: str | os.PathLike[str], **options: Any) -> BuildSpec:
        """A spec from ``build()``-style arguments (lists, dicts and str paths accepted)."""
        return cls(**_normalise({"source": source, "output": output, **options}))

    def replace(self, **options: Any) -> BuildSpec:
        """This spec with some options changed (normalised like :meth:`create`)."""
        return dataclasses.replace(self, **_normalise(options))

    def source_options(self) -> SourceOptions:
        return SourceOptions(**{f.name: getattr(self, f.name)
                                for f in dataclasses.fields(SourceOptions)})


_TUPLES = ("packages", "remove", "commands", "apt_sources", "sysprep_keep", "include")
PATHS = ("output", "keyring", "cache_dir", "apt_key", "workdir", "keep_rootfs")


def _normalise(options: Mapping[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(BuildSpec)}
    out: dict[str, Any] = {}
    for key, value in options.items():
        if key not in names:
            close = difflib.get_close_matches(key, sorted(names), n=1)
            raise SpecError(f"unknown build option {key!r}", key=key,
                            hint=f"did you mean {close[0]!r}?" if close else
                            f"valid options: {', '.join(sorted(names))}")
        out[key] = _coerce(key, value)
    return out


def _coerce(key: str, value: Any) -> Any:
    """``value`` in the form a :class:`BuildSpec` field holds (lists -> tuples, str -> Path)."""
    if key in _TUPLES:
        if isinstance(value, str | bytes):
            raise SpecError(f"{key} must be a list, not a single string: {value!r}",
                            key=key, hint=f"write {key}=[{value!r}]")
        return tuple(value or ())
    if key in PATHS and value is not None:
        return Path(os.fspath(value)).absolute()
    if key == "files":
        return tuple((value or {}).items()) if isinstance(value, Mapping | None) else tuple(value)
    if key == "upload" and isinstance(value, Mapping):
        return Upload(**dict(value))
    return value


@dataclass(frozen=True)
class Checked:
    """What :func:`preflight` settled: the source plan, the output's compression and MAAS
    filetype, and the upload with its name checked and base image filled in."""

    plan: SourcePlan
    compression: str
    filetype: str
    upload: Upload | None


def preflight(spec: BuildSpec) -> Checked:
    """Refuse, before anything slow happens (and without the network), a spec bound to
    fail: the source, the output's name and directory, the upload name, the files and
    scripts, the apt keys, the boot test options, the work directories."""
    with keyed("source"):
        plan = plans.plan(spec.source, spec.source_options())
    with keyed("output"):
        compression, filetype = archive.output_format(spec.output)
    upload = check_upload(spec.upload, plan)
    spec.check()
    boot_options(spec.boot_test, plan.arch())
    check_dirs(spec, plan)
    return Checked(plan, compression, filetype, upload)


def boot_options(value: bool | Mapping[str, Any], arch: str | None = None) -> dict[str, Any]:
    """``boot_test=`` as boot_test() options; a :class:`SpecError` when it cannot work."""
    try:
        options = boot_opts.build_options(value)
    except ArgumentError as e:
        raise SpecError(e.message, key="boot_test", hint=e.hint) from e
    if value is not False and arch is not None and arch not in boot_opts.ARCHES:
        raise SpecError(f"the boot test boots {', '.join(boot_opts.ARCHES)} images only, "
                        f"and this build makes an {arch} one", key="boot_test",
                        hint="leave boot_test (--boot-test) out for a foreign architecture")
    return options


def check_upload(upload: Upload | None, plan: SourcePlan) -> Upload | None:
    if upload is None:
        return None
    with keyed("upload.name"):
        name = maas.validate_name(upload.name)
    base = upload.base_image if upload.base_image is not None else plan.base_image()
    arch = plan.arch()
    if arch is not None:  # an architecture the source contradicts fails now, not after the build
        with keyed("upload.architecture"):
            arches.maas_architecture(upload.architecture, arch, force=upload.force)
    return dataclasses.replace(upload, name=name, base_image=base)


def check_dirs(spec: BuildSpec, plan: SourcePlan) -> None:
    work, out, kept = spec.workdir or DEFAULT_WORKDIR, spec.output, spec.keep_rootfs
    if not work.is_dir():
        raise SpecError(f"the work directory {work} does not exist", key="workdir",
                        hint="create it, or give another workdir")
    if not out.parent.is_dir():
        raise SpecError(f"cannot write {out}: the directory {out.parent} does not exist",
                        key="output", hint="create it first, or give another -o path")
    if spec.in_place and plan.kind != "directory":
        raise SpecError("in_place=True needs a rootfs directory as the source", key="in_place",
                        hint=f"{plan.describe()} is not a directory")
    if spec.in_place and kept is not None:
        raise SpecError("in_place=True already keeps the rootfs: drop keep_rootfs",
                        key="keep_rootfs", hint=f"the rootfs is {plan.value}")
    if kept is not None and kept.exists() and (not kept.is_dir() or any(kept.iterdir())):
        raise SpecError(f"cannot keep the rootfs in {kept}: it exists and is not empty",
                        key="keep_rootfs", hint="give a new or empty directory for keep_rootfs")
    built = plan.path if spec.in_place else kept
    inside = [(what, p) for what, p in (("output", out), ("work directory", work))
              if built is not None and within(p, built)]
    if plan.kind == "directory" and within(work, plan.path):
        inside.append(("work directory", work))
    if inside:
        what, path = inside[0]
        raise SpecError(f"the {what} {path} is inside the rootfs being built",
                        key="output" if what == "output" else "workdir",
                        hint="put it outside the image's directory tree")


def within(path: Path, top: Path) -> bool:
    p, t = os.path.realpath(path), os.path.realpath(top)
    return p == t or p.startswith(t.rstrip("/") + "/")
