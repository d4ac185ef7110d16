"""``build()``: the whole pipeline in one call, driven by one value, :class:`BuildSpec`.

    source ─fetch─▶ archive ─extract─▶ rootfs ─Chroot(apt, files, commands, manifest)─▶
           sysprep ─pack─▶ .tgz (+ .manifest, .build.json) ─boot test─▶ ─upload─▶ MAAS

The CLI, a recipe and Python callers fill the same :class:`BuildSpec` (its fields are
``build()``'s keyword names). Every step is timed; the result's repr shows the split.

The rootfs of a build from an archive (a cloud image, a URL, a local archive, a
bootstrap tarball) is, by default, a copy-on-write overlay of the archive extracted once
into the cache (:mod:`.basecache`, :mod:`maas_chroot.chroot.overlay`): the second build
from a source extracts nothing. Where overlayfs cannot be mounted, the build copies the
cached tree (``cp --reflink=auto``: reflinks where the filesystem has them).
``keep_rootfs``, directory sources and ``base_cache=False`` extract (or copy) into the
work directory.

Work happens in a temporary directory (under ``workdir``, default ``/var/tmp``) that is
removed on success and on failure with :func:`maas_chroot.rootfs.remove_tree`, which
never descends through a mount. A failure raises :class:`BuildError` naming the step,
keeping the original error's text (apt's own error lines included) and, with
``keep_rootfs=DIR``, the half-customised rootfs for debugging.

``if_changed=True`` first compares the source, the spec and the tool version with the
record of the previous build (:mod:`.record`) and builds nothing when none changed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import binfmt, rootfs
from ..archive import archiving as archive
from ..archive.archiving import PackResult
from ..boot import BootReport, boot_test
from ..chroot import manifest, overlay
from ..customise.customisation import customise
from ..customise.scrubbing import SysprepReport
from ..customise.scrubbing import sysprep as _sysprep
from ..errors import BuildError, MaasChrootError, OverlayUnavailable, PrivilegeError, SpecError
from ..maas import BootResource, MaasClient, Upload
from ..sources import bootstrap, plans
from ..sources.fetching import default_cache_dir, verified_hash
from ..sources.fetching import fetch as _fetch
from ..sources.plans import SourcePlan
from ..sources.verify import file_sha256
from ..steps import Step, Steps
from . import basecache, record
from .record import SourceState
from .result import BuildResult
from .spec import DEFAULT_WORKDIR, BuildSpec, Checked, Source, boot_options, preflight

log = logging.getLogger(__name__)

#: The apt archive cache every build shares, under the cache directory.
DEBS_DIR = "debs"


def build(source: Source | BuildSpec, output: str | os.PathLike[str] | None = None, *,
          progress: bool | None = None, if_changed: bool = False,
          **options: Any) -> BuildResult:
    """Build a custom MAAS image from ``source`` into ``output`` (``.tgz``, ``.tar.xz``, ...).

    ``source``: a release (``"noble"``, ``"24.04"``; ``fmt``, ``arch``, ``stream``,
    ``mirror`` pick the cloud image; ``keyring`` verifies its SHA256SUMS.gpg), an
    :class:`ImageSource`, a URL (with ``sha256=`` or ``sums_url=``, or ``verify="none"``),
    a local archive, a rootfs directory (copied; customised in place with
    ``in_place=True``) or ``"bootstrap:SUITE"`` (mmdebstrap ``variant`` from ``mirror``,
    default the host's apt mirror; ``keyring`` for a foreign distribution; ``include``:
    extra packages for mmdebstrap itself); or a whole :class:`BuildSpec` (such as a
    recipe's ``recipe.images["web"]``), which ``options`` then override.

    ``options`` are the fields of :class:`BuildSpec` (customisation, sysprep, pack,
    work directories, ``upload=Upload(client, name, ...)``). An unknown option is a
    :class:`~maas_chroot.errors.SpecError` (with the closest valid name). Beside
    ``output`` go ``output.manifest`` (the image's packages) and ``output.build.json``
    (the build record); with ``if_changed``, an image whose source, spec and maas_chroot
    version are those of its record is not built again (``result.up_to_date``), and a
    rebuilt one says why (``result.reasons``).
    """
    if isinstance(source, BuildSpec):
        spec = source.replace(**options, **({} if output is None else {"output": output}))
    elif output is None:
        raise SpecError("build() needs an output file", key="output",
                        hint="pass it as the second argument, e.g. build('noble', 'out.tgz')")
    else:
        spec = BuildSpec.create(source, output, **options)
    return _Build(spec, progress, if_changed=if_changed).run()


@dataclass(frozen=True)
class _Source:
    """The source, had: the archive its rootfs comes from (None: a directory, or a
    bootstrap not made yet) and what it is now."""

    archive: Path | None
    state: SourceState
    release: bootstrap.Release | None = None


@dataclass(frozen=True)
class _Made:
    """What the steps on the rootfs made."""

    packed: PackResult
    sysprep: SysprepReport | None
    manifest: str | None


class _Build:
    """One run of the pipeline for a spec (the steps' shared state)."""

    def __init__(self, spec: BuildSpec, progress: bool | None, *, if_changed: bool) -> None:
        self.spec = spec
        self.progress = progress
        self.if_changed = if_changed
        self.steps = Steps()
        self.reasons: tuple[str, ...] = ()

    def run(self) -> BuildResult:
        if os.geteuid() != 0:
            raise PrivilegeError("building an image needs root (it extracts device nodes, "
                                 "chroots and runs apt)", hint="run it as root, e.g. with sudo")
        spec, steps = self.spec, self.steps
        with contextlib.ExitStack() as clients:
            checked = self._check(clients)
            previous = record.load(spec.output) if self.if_changed else None
            kept = spec.keep_rootfs if spec.keep_rootfs is not None else \
                (checked.plan.path if spec.in_place else None)
            with contextlib.ExitStack() as stack:
                try:
                    got = self._source(checked.plan)
                    content = record.content(spec)
                    if self.if_changed and not record.changes(
                            previous, source=got.state, spec_content=content, image=spec.output):
                        assert previous is not None
                        return self._up_to_date(previous, got.state)
                    work = Path(tempfile.mkdtemp(prefix="maas-chroot-build-",
                                                 dir=spec.workdir or DEFAULT_WORKDIR))
                    stack.callback(_remove_quietly, work)
                    made, state = self._rootfs(checked.plan, got, work, previous, content)
                    booted, uploaded = self._after(checked, made.packed)
                    written = manifest.write(spec.output, made.manifest)
                    up = checked.upload
                    kept_record = record.write(spec.output, record.make(
                        spec, spec_content=content, source=state, packed=made.packed,
                        manifest=written, steps=tuple(steps.times), uploaded=uploaded,
                        maas_url=up.client.url if up is not None and up.client else None,
                        boot=booted))
                    stack.pop_all()  # success: the work dir goes now, timed, not again on unwind
                    with steps(Step.CLEANUP):
                        _remove_quietly(work)
                except Exception as e:
                    raise _failed(steps.current, e, kept) from e
        packed = made.packed
        return BuildResult(output=packed.path, size=packed.size, sha256=packed.sha256,
                           source=checked.plan.describe(), steps=tuple(steps.times),
                           uploaded=uploaded, sysprep=made.sysprep, rootfs=spec.keep_rootfs,
                           boot=booted, arch=packed.arch, manifest=written, record=kept_record,
                           reasons=self.reasons)

    def _check(self, clients: contextlib.ExitStack) -> Checked:
        spec = self.spec
        try:
            with self.steps(Step.CHECK):
                checked = preflight(spec)
                plan = checked.plan
                arch = plan.arch()
                if arch is not None and (plan.bootstrap is not None or spec.wanted()):
                    binfmt.require(arch, root="", what=plan.describe())
                up = checked.upload
                if up is not None and up.client is None:
                    client = clients.enter_context(MaasClient.resolve(up.profile))
                    checked = dataclasses.replace(checked,
                                                  upload=dataclasses.replace(up, client=client))
        except Exception as e:
            raise _failed(Step.CHECK, e, None) from e
        return checked

    # --- the source ---------------------------------------------------------------------

    def _source(self, plan: SourcePlan) -> _Source:
        """Fetch the source (cached: a conditional GET of its SHA256SUMS), or read what
        it is now (a local archive's sha256, a mirror's Release file): the ``fetch`` step,
        which builds nothing."""
        spec, describe = self.spec, plan.describe()
        if plan.bootstrap is not None:
            with self.steps(Step.FETCH):  # the mirror's Release file: one small GET
                release = bootstrap.release_of(plan.bootstrap)
            inputs: dict[str, Any] = dataclasses.asdict(plan.bootstrap)
            if plan.bootstrap.keyring and os.path.isfile(plan.bootstrap.keyring):
                inputs["keyring_sha256"] = file_sha256(Path(plan.bootstrap.keyring))
            state = SourceState(
                describe, plan.bootstrap.uri, verified="the mirror's signed Release file",
                identity=record.digest({**inputs, "release": release.sha256})
                if release is not None else None,
                release=dataclasses.asdict(release) if release is not None else None)
            return _Source(None, state, release)
        if plan.kind == "directory":
            return _Source(None, SourceState(describe, plan.value, identity=None,
                                             verified="none (a directory)"))
        image = plan.image
        if image is None:  # a local archive, taken as it is
            with self.steps(Step.FETCH):
                sha = file_sha256(plan.path)
            return _Source(plan.path, SourceState(describe, plan.value, identity=sha,
                                                  verified="none (a local file)", sha256=sha))
        with self.steps(Step.FETCH):
            path = _fetch(image, cache_dir=spec.cache_dir, verify=plan.verify,
                          keyring=spec.keyring, progress=self.progress)
        known = verified_hash(path, image.url)
        sha, how = known if known is not None else (file_sha256(path), plan.verify or "none")
        serial = image.serial if image.serial not in (None, "current") else None
        return _Source(path, SourceState(describe, image.url, identity=sha, verified=how,
                                         sha256=sha, serial=serial))

    # --- the rootfs -----------------------------------------------------------------------

    def _rootfs(self, plan: SourcePlan, got: _Source, work: Path,
                previous: Mapping[str, Any] | None,
                content: Mapping[str, Any]) -> tuple[_Made, SourceState]:
        """Make the rootfs (an overlay of the cached base, or a tree of its own), run the
        steps on it; return what they made and the source's final state (its serial)."""
        spec, steps, progress = self.spec, self.steps, self.progress
        archive_path, state = got.archive, got.state
        if plan.bootstrap is not None:  # a bootstrap is cached as a tarball, then extracted
            with steps(Step.BOOTSTRAP):
                archive_path, _ = bootstrap.cached(plan.bootstrap, self._cache_dir(),
                                                   release=got.release, progress=progress)
            state = dataclasses.replace(state, sha256=file_sha256(archive_path))
        warm = (spec.base_cache and archive_path is not None and spec.keep_rootfs is None
                and not spec.in_place)
        if warm:
            assert archive_path is not None
            sha = state.sha256 or file_sha256(archive_path)
            with basecache.using(archive_path, sha, self._cache_dir(), steps,
                                 progress=progress) as base:
                state = self._say_why(previous, state, base, content)
                scratch = work / "overlay"
                scratch.mkdir()
                try:
                    return overlay.call(base, scratch, self._on_rootfs, stop=steps.stop), state
                except OverlayUnavailable as e:  # a full copy (reflinked where it can be)
                    log.warning("%s; copying the cached base instead", e.message)
                    with steps(Step.COPY):
                        root = plans.copy_tree(base, work / "rootfs", locked=False)
                    return self._on_rootfs(root), state
        root = self._materialise(plan, archive_path, work)
        state = self._say_why(previous, state, root, content)
        return self._on_rootfs(root), state

    def _say_why(self, previous: Mapping[str, Any] | None, state: SourceState, tree: Path,
                 content: Mapping[str, Any]) -> SourceState:
        """The state with the serial the tree carries; with ``if_changed``, log why the
        image is built again."""
        state = dataclasses.replace(state, serial=state.serial or record.serial_in(tree))
        if self.if_changed:
            self.reasons = tuple(record.changes(previous, source=state, spec_content=content,
                                                image=self.spec.output))
            log.info("building %s again: %s", self.spec.output.name, "; ".join(self.reasons))
        return state

    def _materialise(self, plan: SourcePlan, archive_path: Path | None, work: Path) -> Path:
        """Turn the source into a rootfs directory of its own; return it."""
        spec, steps, progress = self.spec, self.steps, self.progress
        if plan.kind == "directory" and spec.in_place:
            return plan.path
        root = spec.keep_rootfs if spec.keep_rootfs is not None else work / "rootfs"
        if root.is_dir() and not any(root.iterdir()):
            root.rmdir()  # checked empty (or made for an overlay): extract/cp create it
        if plan.kind == "directory":
            with steps(Step.COPY):
                plans.copy_tree(plan.path, root)
            return root
        assert archive_path is not None
        with steps(Step.EXTRACT):
            archive.extract(archive_path, root, progress=progress)
        return root

    def _on_rootfs(self, root: Path) -> _Made:
        """Customise (and read the manifest), sysprep and pack the rootfs ``root``."""
        spec, steps, progress = self.spec, self.steps, self.progress
        text = customise(root, spec, steps, progress=progress, manifest=True,
                         debs=self._cache_dir() / DEBS_DIR)
        report = None
        if spec.sysprep:
            with steps(Step.SYSPREP):
                report = _sysprep(root, keep=spec.sysprep_keep, progress=progress)
        with steps(Step.PACK):
            for stale in (manifest.path_for(spec.output), record.path_for(spec.output)):
                stale.unlink(missing_ok=True)  # they would describe another image
            compression, _ = archive.output_format(spec.output)
            packed = archive.pack(root, spec.output, compression=compression,
                                  level=spec.level, progress=progress)
        return _Made(packed, report, text)

    # --- after the pack -------------------------------------------------------------------

    def _after(self, checked: Checked, packed: PackResult
               ) -> tuple[BootReport | None, BootResource | None]:
        """The boot test, then the upload (a failing image is never uploaded)."""
        spec, steps = self.spec, self.steps
        booted = None
        if spec.boot_test is True or isinstance(spec.boot_test, Mapping):
            with steps(Step.BOOT_TEST):
                booted = boot_test(packed.path, progress=self.progress,
                                   workdir=spec.workdir or DEFAULT_WORKDIR,
                                   **boot_options(spec.boot_test))
        uploaded = None
        up: Upload | None = checked.upload
        if up is not None:
            with steps(Step.UPLOAD):
                uploaded = dataclasses.replace(up, filetype=up.filetype or checked.filetype
                                               ).send(packed, progress=self.progress)
        return booted, uploaded

    def _up_to_date(self, previous: Mapping[str, Any], state: SourceState) -> BuildResult:
        out = self.spec.output
        made = previous.get("output") or {}
        log.info("%s is up to date (same source, recipe and maas_chroot %s as its build "
                 "of %s)", out.name, previous.get("maas_chroot"), previous.get("built"))
        found = manifest.path_for(out)
        return BuildResult(output=out, size=int(made.get("size", 0)),
                           sha256=str(made.get("sha256", "")), source=state.describe,
                           steps=tuple(self.steps.times), arch=made.get("arch"),
                           manifest=found if found.exists() else None,
                           record=record.path_for(out), up_to_date=True,
                           built=str(previous.get("built")))

    def _cache_dir(self) -> Path:
        return self.spec.cache_dir or default_cache_dir()


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

