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
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .. import binfmt, rootfs
from ..archive import archiving as archive
from ..boot import boot_test
from ..customise.customisation import customise
from ..customise.scrubbing import sysprep as _sysprep
from ..errors import BuildError, MaasChrootError, PrivilegeError, SpecError
from ..sources import bootstrap, plans
from ..sources.fetching import default_cache_dir
from ..sources.fetching import fetch as _fetch
from ..sources.plans import SourcePlan
from ..steps import Step, Steps
from .result import BuildResult
from .spec import DEFAULT_WORKDIR, BuildSpec, Source, boot_options, check_dirs, check_upload

log = logging.getLogger(__name__)


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
                up = check_upload(spec.upload, plan)
                spec.check()
                boot_options(spec.boot_test)
                check_dirs(spec, plan)
                arch = plan.arch()
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
                                           **boot_options(spec.boot_test))
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
