"""``build()``: the whole pipeline in one call, driven by one value, :class:`BuildSpec`.

    source ─fetch─▶ archive ─extract─▶ rootfs ─Chroot(apt, files, commands)─▶ sysprep
           ─pack─▶ .tgz ─upload─▶ MAAS

The CLI and Python callers fill the same :class:`BuildSpec` (its fields are
``build()``'s keyword names). Every step is timed; the result's repr shows the
split. Work happens in a temporary directory (under ``workdir``, default
``/var/tmp``) that is removed on success and on failure with
:func:`maas_chroot.rootfs.remove_tree`, which never descends through a mount. A
failure raises :class:`BuildError` naming the step, keeping the original error's
text (apt's own error lines included) and, with ``keep_rootfs=DIR``, the
half-customised rootfs for debugging.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import arches, binfmt, maas, rootfs
from .archive import archiving as archive
from .boot import BootReport, boot_test
from .boot import options as boot_options
from .customise.customisation import Customisation, customise
from .customise.scrubbing import SysprepReport
from .customise.scrubbing import sysprep as _sysprep
from .errors import ArgumentError, BuildError, MaasChrootError, PrivilegeError, SpecError
from .maas import Upload
from .progress import human_size
from .sources import bootstrap, plans
from .sources import image as sources
from .sources.fetching import default_cache_dir
from .sources.fetching import fetch as _fetch
from .sources.plans import SourceOptions, SourcePlan
from .steps import Step, Steps

log = logging.getLogger(__name__)

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
    uploaded) and ``upload``.
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
_PATHS = ("output", "keyring", "cache_dir", "apt_key", "workdir", "keep_rootfs")


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
    if key in _PATHS and value is not None:
        return Path(os.fspath(value)).absolute()
    if key == "files":
        return tuple((value or {}).items()) if isinstance(value, Mapping | None) else tuple(value)
    if key == "upload" and isinstance(value, Mapping):
        return Upload(**dict(value))
    return value


@dataclass(frozen=True)
class BuildResult:
    """What ``build()`` made: the packed image, its hash and architecture, the upload, and
    where time went."""

    output: Path
    size: int
    sha256: str
    source: str
    steps: tuple[tuple[str, float], ...] = ()
    uploaded: maas.BootResource | None = None
    sysprep: SysprepReport | None = field(default=None, repr=False)
    rootfs: Path | None = None
    boot: BootReport | None = field(default=None, repr=False)
    arch: str | None = None

    @property
    def durations(self) -> dict[str, float]:
        """Seconds per step, in order (``fetch``, ``extract``, ``install``, ``pack`` ...)."""
        out: dict[str, float] = {}
        for name, secs in self.steps:
            out[str(name)] = out.get(str(name), 0.0) + secs
        return out

    @property
    def total(self) -> float:
        return sum(secs for _, secs in self.steps)

    def __repr__(self) -> str:
        lines = [f"BuildResult({os.fspath(self.output)!r}, {human_size(self.size)}, "
                 f"sha256={self.sha256[:16]}…)",
                 f"  source    {self.source}"]
        if self.arch is not None:
            lines.append(f"  arch      {self.arch}")
        if self.rootfs is not None:
            lines.append(f"  rootfs    {os.fspath(self.rootfs)} (kept)")
        if self.uploaded is not None:
            up = self.uploaded
            lines.append(f"  uploaded  {up.full_name} (id {up.id}, {up.architecture}"
                         + (f", base_image {up.base_image}" if up.base_image else "")
                         + ("" if up.complete else ", syncing to the other region controllers"
                            if up.complete is False else ", not read back") + ")")
        if self.boot is not None:
            lines.append(f"  boot test {'OK' if self.boot.ok else 'FAILED'}: "
                         f"{len(self.boot.runs)} boot(s), {self.boot.accel.upper()}, "
                         + ", ".join(f"{k} {v:.0f} s" for k, v in self.boot.milestones.items()
                                     if k in ("kernel", "cloud-init", "power-off")))
        if self.sysprep is not None:
            rep = self.sysprep
            lines.append(f"  sysprep   {len(rep.items)} items, {human_size(rep.freed)} freed"
                         + "".join(f"\n  warning   {w}" for w in rep.warnings))
        for name, secs in self.durations.items():
            lines.append(f"  {name:<9} {secs:7.1f} s")
        lines.append(f"  {'total':<9} {self.total:7.1f} s")
        return "\n".join(lines)


def build(source: Source | BuildSpec, output: str | os.PathLike[str] | None = None, *,
          progress: bool | None = None, **options: Any) -> BuildResult:
    """Build a custom MAAS image from ``source`` into ``output`` (``.tgz``, ``.tar.xz``, ...).

    ``source``: a release (``"noble"``, ``"24.04"``; ``fmt``, ``arch``, ``stream``,
    ``mirror`` pick the cloud image; ``keyring`` verifies its SHA256SUMS.gpg), an
    :class:`ImageSource`, a URL (with ``sha256=`` or ``sums_url=``, or ``verify="none"``),
    a local archive, a rootfs directory (copied; customised in place with
    ``in_place=True``) or ``"bootstrap:SUITE"`` (mmdebstrap ``variant`` from ``mirror``,
    default the host's apt mirror; ``keyring`` for a foreign distribution; ``include``:
    extra packages for mmdebstrap itself); or a whole :class:`BuildSpec`, which
    ``options`` then override.

    ``options`` are the fields of :class:`BuildSpec` (customisation, sysprep, pack,
    work directories, ``upload=Upload(client, name, ...)``). An unknown option is a
    :class:`~maas_chroot.errors.SpecError` (with the closest valid name).
    """
    if isinstance(source, BuildSpec):
        spec = source.replace(**options, **({} if output is None else {"output": output}))
    elif output is None:
        raise SpecError("build() needs an output file", key="output",
                        hint="pass it as the second argument, e.g. build('noble', 'out.tgz')")
    else:
        spec = BuildSpec.create(source, output, **options)
    return _Build(spec, progress).run()


class _Build:
    """One run of the pipeline for a spec (the steps' shared state)."""

    def __init__(self, spec: BuildSpec, progress: bool | None) -> None:
        self.spec = spec
        self.progress = progress
        self.steps = Steps()

    def run(self) -> BuildResult:
        if os.geteuid() != 0:
            raise PrivilegeError("building an image needs root (it extracts device nodes, "
                                 "chroots and runs apt)", hint="run it as root, e.g. with sudo")
        spec, steps = self.spec, self.steps
        try:
            with steps(Step.CHECK):
                plan = plans.plan(spec.source, spec.source_options())
                compression, filetype = archive.output_format(spec.output)
                up = _check_upload(spec.upload, plan)
                spec.check()
                arch = plan.arch()
                _boot_options(spec.boot_test, arch)
                _check_dirs(spec, plan)
                if arch is not None and (plan.bootstrap is not None or spec.wanted()):
                    binfmt.require(arch, root="", what=plan.describe())
        except Exception as e:
            raise _failed(Step.CHECK, e, None) from e
        kept = spec.keep_rootfs if spec.keep_rootfs is not None else \
            (plan.path if spec.in_place else None)
        with contextlib.ExitStack() as stack:
            try:
                work = Path(tempfile.mkdtemp(prefix="maas-chroot-build-",
                                             dir=spec.workdir or DEFAULT_WORKDIR))
                stack.callback(_remove_quietly, work)
                root = self._materialise(plan, work)
                if spec.wanted():
                    customise(root, spec, steps, progress=self.progress)
                report = None
                if spec.sysprep:
                    with steps(Step.SYSPREP):
                        report = _sysprep(root, keep=spec.sysprep_keep, progress=self.progress)
                with steps(Step.PACK):
                    packed = archive.pack(root, spec.output, compression=compression,
                                          level=spec.level, progress=self.progress)
                booted = None
                if spec.boot_test is True or isinstance(spec.boot_test, Mapping):
                    with steps(Step.BOOT_TEST):
                        booted = boot_test(packed.path, progress=self.progress,
                                           workdir=spec.workdir or DEFAULT_WORKDIR,
                                           **_boot_options(spec.boot_test))
                uploaded = None
                if up is not None:
                    with steps(Step.UPLOAD):
                        uploaded = dataclasses.replace(
                            up, filetype=up.filetype or filetype).send(packed,
                                                                       progress=self.progress)
                stack.pop_all()  # success: the work dir goes now, timed, not again on unwind
                with steps(Step.CLEANUP):
                    _remove_quietly(work)
            except Exception as e:
                raise _failed(steps.current, e, kept) from e
        return BuildResult(output=packed.path, size=packed.size, sha256=packed.sha256,
                           source=plan.describe(), steps=tuple(steps.times), uploaded=uploaded,
                           sysprep=report, rootfs=spec.keep_rootfs, boot=booted,
                           arch=packed.arch)

    def _materialise(self, plan: SourcePlan, work: Path) -> Path:
        """Turn the source into a rootfs directory; return it."""
        spec, steps, progress = self.spec, self.steps, self.progress
        if plan.kind == "directory" and spec.in_place:
            return plan.path
        root = spec.keep_rootfs if spec.keep_rootfs is not None else work / "rootfs"
        if root.is_dir():
            root.rmdir()  # checked empty: extract/bootstrap/cp want to create it
        if plan.bootstrap is not None:  # a bootstrap is cached as a tarball, then extracted
            with steps(Step.BOOTSTRAP):
                tarball, _ = bootstrap.cached(plan.bootstrap, spec.cache_dir
                                              or default_cache_dir(), progress=progress)
            with steps(Step.EXTRACT):
                archive.extract(tarball, root, progress=progress)
            return root
        if plan.kind == "directory":
            with steps(Step.COPY):
                plans.copy_tree(plan.path, root)
            return root
        archive_path = plan.path if plan.kind == "archive" else None
        if plan.image is not None:
            with steps(Step.FETCH):
                archive_path = _fetch(plan.image, cache_dir=spec.cache_dir, verify=plan.verify,
                                      keyring=spec.keyring, progress=progress)
        assert archive_path is not None
        with steps(Step.EXTRACT):
            archive.extract(archive_path, root, progress=progress)
        return root


def _boot_options(value: bool | Mapping[str, Any], arch: str | None = None) -> dict[str, Any]:
    """``boot_test=`` as boot_test() options; a :class:`SpecError` when it cannot work."""
    try:
        options = boot_options.build_options(value)
    except ArgumentError as e:
        raise SpecError(e.message, key="boot_test", hint=e.hint) from e
    if value is not False and arch is not None and arch not in boot_options.ARCHES:
        raise SpecError(f"the boot test boots {', '.join(boot_options.ARCHES)} images only, "
                        f"and this build makes an {arch} one", key="boot_test",
                        hint="leave boot_test (--boot-test) out for a foreign architecture")
    return options


def _check_upload(upload: Upload | None, plan: SourcePlan) -> Upload | None:
    if upload is None:
        return None
    name = maas.validate_name(upload.name)
    base = upload.base_image if upload.base_image is not None else plan.base_image()
    arch = plan.arch()
    if arch is not None:  # an architecture the source contradicts fails now, not after the build
        arches.maas_architecture(upload.architecture, arch, force=upload.force)
    return dataclasses.replace(upload, name=name, base_image=base)


def _check_dirs(spec: BuildSpec, plan: SourcePlan) -> None:
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
              if built is not None and _within(p, built)]
    if plan.kind == "directory" and _within(work, plan.path):
        inside.append(("work directory", work))
    if inside:
        what, path = inside[0]
        raise SpecError(f"the {what} {path} is inside the rootfs being built",
                        key="output" if what == "output" else "workdir",
                        hint="put it outside the image's directory tree")


def _within(path: Path, top: Path) -> bool:
    p, t = os.path.realpath(path), os.path.realpath(top)
    return p == t or p.startswith(t.rstrip("/") + "/")


def _remove_quietly(path: Path) -> None:
    try:
        rootfs.remove_tree(path)
    except (MaasChrootError, OSError) as e:
        log.warning("could not remove the work dir %s: %s", path, e)


def _failed(step: Step, err: Exception, kept: Path | None) -> BuildError:
    if isinstance(err, BuildError):
        return err
    text = err.message if isinstance(err, MaasChrootError) else f"{type(err).__name__}: {err}"
    hint = err.hint if isinstance(err, MaasChrootError) else None
    msg = text if step == Step.CHECK else f"build step {str(step)!r} failed: {text}"
    if kept is not None:
        msg += f"\nthe rootfs is kept in {kept} (inspect it: maas-chroot shell {kept})"
    elif step.in_rootfs:
        hint = (hint + "; " if hint else "") + "rerun with --keep-rootfs DIR to inspect the rootfs"
    return BuildError(msg, step=str(step), rootfs=os.fspath(kept) if kept else None, hint=hint)
