"""``build()``: the whole pipeline in one call.

    source ─fetch─▶ archive ─extract─▶ rootfs ─Chroot(apt, files, commands)─▶ sysprep
           ─pack─▶ .tgz ─upload─▶ MAAS

Every step is timed; the result's repr shows the split. Work happens in a
temporary directory (under ``workdir``, default ``/var/tmp``) that is removed
on success and on failure with :func:`maas_chroot.rootfs.remove_tree`, which
never descends through a mount. A failure raises :class:`BuildError` naming the
step, keeping the original error's text (apt's own error lines included) and,
with ``keep_rootfs=DIR``, the half-customised rootfs for debugging.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from . import _resolve, archive, bootstrap, maas, releases, rootfs, sources
from ._customise import Command, Customisation, customise
from .errors import ArchiveError, BuildError, MaasChrootError, PrivilegeError, SourceError
from .fetch import Verify
from .fetch import fetch as _fetch
from .progress import human_size
from .sysprep import SysprepReport
from .sysprep import sysprep as _sysprep

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Upload:
    """Where and how ``build()`` uploads its output (``MaasClient.upload`` arguments)."""

    client: maas.MaasClient
    name: str
    title: str | None = None
    architecture: str = "amd64/generic"
    base_image: str | None = None
    filetype: str | None = None


@dataclass(frozen=True)
class BuildResult:
    """What ``build()`` made: the packed image, its hash, the upload, and where time went."""

    output: Path
    size: int
    sha256: str
    source: str
    steps: tuple[tuple[str, float], ...] = ()
    uploaded: maas.BootResource | None = None
    sysprep: SysprepReport | None = field(default=None, repr=False)
    rootfs: Path | None = None

    @property
    def durations(self) -> dict[str, float]:
        """Seconds per step, in order (``fetch``, ``extract``, ``install``, ``pack`` ...)."""
        out: dict[str, float] = {}
        for name, secs in self.steps:
            out[name] = out.get(name, 0.0) + secs
        return out

    @property
    def total(self) -> float:
        return sum(secs for _, secs in self.steps)

    def __repr__(self) -> str:
        lines = [f"BuildResult({os.fspath(self.output)!r}, {human_size(self.size)}, "
                 f"sha256={self.sha256[:16]}…)",
                 f"  source    {self.source}"]
        if self.rootfs is not None:
            lines.append(f"  rootfs    {os.fspath(self.rootfs)} (kept)")
        if self.uploaded is not None:
            up = self.uploaded
            lines.append(f"  uploaded  {up.full_name} (id {up.id}, {up.architecture}"
                         + (f", base_image {up.base_image}" if up.base_image else "") + ")")
        if self.sysprep is not None:
            rep = self.sysprep
            lines.append(f"  sysprep   {len(rep.items)} items, {human_size(rep.freed)} freed"
                         + "".join(f"\n  warning   {w}" for w in rep.warnings))
        for name, secs in self.durations.items():
            lines.append(f"  {name:<9} {secs:7.1f} s")
        lines.append(f"  {'total':<9} {self.total:7.1f} s")
        return "\n".join(lines)


def build(
    source: str | os.PathLike[str] | sources.ImageSource,
    output: str | os.PathLike[str],
    *,
    packages: Iterable[str] = (),
    remove: Iterable[str] = (),
    purge: bool = False,
    upgrade: bool = False,
    commands: Iterable[Command] = (),
    files: Mapping[str, str | os.PathLike[str] | bytes] | None = None,
    apt_sources: Iterable[str] = (),
    apt_key: str | os.PathLike[str] | None = None,
    apt_proxy: str | None = None,
    sysprep: bool = True,
    sysprep_keep: Iterable[str] = (),
    network: Literal["host", "none"] = "host",
    workdir: str | os.PathLike[str] | None = None,
    keep_rootfs: str | os.PathLike[str] | None = None,
    in_place: bool = False,
    upload: Upload | Mapping[str, Any] | None = None,
    progress: bool | None = None,
    arch: str | None = None,
    fmt: str = "squashfs",
    stream: str = "release",
    mirror: str | None = None,
    keyring: str | os.PathLike[str] | None = None,
    verify: Verify | None = None,
    sha256: str | None = None,
    sums_url: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    variant: str = "minbase",
    include: Iterable[str] = (),
    level: int = 6,
) -> BuildResult:
    """Build a custom MAAS image from ``source`` into ``output`` (``.tgz``, ``.tar.xz``, ...).

    ``source``: a release (``"noble"``, ``"24.04"``; ``fmt``, ``arch``, ``stream``,
    ``mirror`` pick the cloud image; ``keyring`` verifies its SHA256SUMS.gpg), an
    :class:`ImageSource`, a URL (with ``sha256=`` or ``sums_url=``, or ``verify="none"``),
    a local archive, a rootfs directory (copied; customised in place with
    ``in_place=True``) or ``"bootstrap:SUITE"`` (mmdebstrap ``variant`` from ``mirror``,
    default the host's apt mirror; ``keyring`` for a foreign distribution; ``include``:
    extra packages for mmdebstrap itself).

    Customisation runs in one :class:`Chroot` session, in this order: apt sources
    (one-line ``"[deb] [signed-by=KEY] URI SUITE COMPONENT..."``, ``apt_key`` for those
    without one), ``apt-get update`` (when any apt work is asked for), ``upgrade``
    (dist-upgrade), ``packages``, ``remove`` (+ autoremove), ``files`` (image path ->
    host path, or bytes for content), ``commands`` (argv list run as is; a string
    run with ``/bin/sh -c`` inside the chroot; a :class:`pathlib.Path` is a host
    script copied in and run). ``apt_proxy`` is used for the build only: it is not
    left in the image. Then :func:`sysprep` (unless ``sysprep=False``), :func:`pack`
    and, with ``upload=Upload(client, name, ...)``, the upload to MAAS.
    """
    if os.geteuid() != 0:
        raise PrivilegeError("building an image needs root (it extracts device nodes, "
                             "chroots and runs apt)", hint="run it as root, e.g. with sudo")
    steps = _Steps()
    out = Path(os.fspath(output)).absolute()
    custom = Customisation(
        packages=tuple(packages), remove=tuple(remove), purge=purge, upgrade=upgrade,
        commands=tuple(commands), files=tuple((files or {}).items()),
        apt_sources=tuple(apt_sources), apt_key=apt_key, apt_proxy=apt_proxy,
    )
    kept = Path(os.fspath(keep_rootfs)).absolute() if keep_rootfs is not None else None
    try:
        with steps("check"):
            plan = _resolve.plan(source)
            if plan.kind == "release":
                image = sources.cloud_image(plan.value, arch=arch or "amd64", fmt=fmt,
                                            stream=stream, mirror=mirror)
                plan = _resolve.Plan("image", image.url, image)
            spec = None
            if plan.kind == "bootstrap":
                spec = bootstrap.resolve(plan.value, mirror=mirror, keyring=keyring,
                                         variant=variant, include=include, arch=arch)
            if plan.kind == "url" and not (sha256 or sums_url or verify):
                _unverifiable(plan.value)
            compression, filetype = archive.output_format(out)
            up = _check_upload(upload, plan)
            custom.check()
            _check_dirs(plan, out, kept, in_place,
                        Path(os.fspath(workdir) if workdir is not None else "/var/tmp"))
    except Exception as e:
        raise _failed("check", e, None) from e

    with contextlib.ExitStack() as stack:
        try:
            base = os.fspath(workdir) if workdir is not None else "/var/tmp"
            work = Path(tempfile.mkdtemp(prefix="maas-chroot-build-", dir=base))
            stack.callback(_remove_quietly, work)
            root = _materialise(plan, work, kept, steps, spec, in_place=in_place,
                                progress=progress, keyring=keyring, verify=verify,
                                sha256=sha256, sums_url=sums_url, cache_dir=cache_dir)
            if custom.wanted():
                customise(root, custom, steps, network=network, progress=progress)
            report = None
            if sysprep:
                with steps("sysprep"):
                    report = _sysprep(root, keep=tuple(sysprep_keep), progress=progress)
            with steps("pack"):
                packed = archive.pack(root, out, compression=compression, level=level,
                                      progress=progress)
            uploaded = None
            if up is not None:
                with steps("upload"):
                    uploaded = up.client.upload(
                        packed, name=up.name, title=up.title, architecture=up.architecture,
                        filetype=up.filetype or filetype, base_image=up.base_image,
                        progress=progress)
            stack.pop_all()  # success: the work dir goes now, timed, not again on unwind
            with steps("cleanup"):
                _remove_quietly(work)
        except Exception as e:
            raise _failed(steps.current, e, kept if kept is not None else
                          (root_of(plan) if in_place else None)) from e
    return BuildResult(output=packed.path, size=packed.size, sha256=packed.sha256,
                       source=plan.describe(), steps=tuple(steps.times), uploaded=uploaded,
                       sysprep=report, rootfs=kept)


def root_of(plan: _resolve.Plan) -> Path:
    return Path(plan.value)


class _Steps:
    """Times named steps; remembers the one running (for the error message)."""

    def __init__(self) -> None:
        self.times: list[tuple[str, float]] = []
        self.current = "check"

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self.current = name
        if name not in ("check", "cleanup"):
            log.info("%s ...", name)
        start = time.monotonic()
        try:
            yield
        finally:
            secs = time.monotonic() - start
            self.times.append((name, secs))
            log.debug("%s took %.1f s", name, secs)


def _materialise(plan: _resolve.Plan, work: Path, kept: Path | None, steps: _Steps,
                 spec: bootstrap.BootstrapSpec | None, *, in_place: bool,
                 progress: bool | None, keyring: str | os.PathLike[str] | None,
                 verify: Verify | None, sha256: str | None, sums_url: str | None,
                 cache_dir: str | os.PathLike[str] | None) -> Path:
    """Turn the source into a rootfs directory; return it."""
    if plan.kind == "directory" and in_place:
        return Path(plan.value)
    root = kept if kept is not None else work / "rootfs"
    if root.is_dir():
        root.rmdir()  # checked empty: extract/bootstrap/cp want to create it
    if spec is not None:
        with steps("bootstrap"):
            bootstrap.create(spec, root, progress=progress)
        return root
    if plan.kind == "directory":
        with steps("copy"):
            _resolve.copy_tree(plan.value, root)
        return root
    path: str | os.PathLike[str] = plan.value
    if plan.kind in ("image", "url") or sha256 or sums_url:
        # a local archive is only "fetched" to verify it against sha256= / sums_url=
        with steps("fetch"):
            src = plan.image if plan.image is not None else plan.value
            path = _fetch(src, cache_dir=cache_dir, verify=verify, keyring=keyring,
                          sha256=sha256, sums_url=sums_url, progress=progress)
    with steps("extract"):
        archive.extract(path, root, progress=progress)
    return root


def _unverifiable(url: str) -> None:
    if url.lower().startswith(("http://", "https://")):
        raise SourceError(f"refusing to download {url} without a way to verify it",
                          hint="pass sha256= (--sha256 HEX) or sums_url= (--sums-url URL), "
                               "or verify=\"none\" (--verify none) to accept it unverified")


def _check_upload(upload: Upload | Mapping[str, Any] | None,
                  plan: _resolve.Plan) -> Upload | None:
    if upload is None:
        return None
    up = upload if isinstance(upload, Upload) else Upload(**dict(upload))
    name = maas.validate_name(up.name)
    base = up.base_image
    if base is None:
        base = _ubuntu_base(plan)
    return Upload(up.client, name, up.title, up.architecture, base, up.filetype)


def _ubuntu_base(plan: _resolve.Plan) -> str | None:
    """``ubuntu/<codename>`` for an Ubuntu release or an Ubuntu bootstrap suite."""
    release = None
    if plan.kind == "bootstrap":
        release = plan.value
    elif plan.kind == "image" and plan.image is not None:
        release = getattr(plan.image, "release", None)
    codename = releases.codename_of(release) if release is not None else None
    return f"ubuntu/{codename}" if codename is not None else None


def _check_dirs(plan: _resolve.Plan, out: Path, kept: Path | None, in_place: bool,
                work: Path) -> None:
    if not work.is_dir():
        raise SourceError(f"the work directory {work} does not exist",
                          hint="create it, or give another workdir")
    if not out.parent.is_dir():
        raise ArchiveError(f"cannot write {out}: the directory {out.parent} does not exist",
                           path=out, hint="create it first, or give another -o path")
    if in_place and plan.kind != "directory":
        raise SourceError("in_place=True needs a rootfs directory as the source",
                          hint=f"{plan.describe()} is not a directory")
    if in_place and kept is not None:
        raise SourceError("in_place=True already keeps the rootfs: drop keep_rootfs",
                          hint=f"the rootfs is {plan.value}")
    if kept is not None and kept.exists() and (not kept.is_dir() or any(kept.iterdir())):
        raise SourceError(f"cannot keep the rootfs in {kept}: it exists and is not empty",
                          hint="give a new or empty directory for keep_rootfs")
    built = Path(plan.value) if in_place else kept
    inside = [(what, p) for what, p in (("output", out), ("work directory", work))
              if built is not None and _within(p, built)]
    if plan.kind == "directory" and _within(work, Path(plan.value)):
        inside.append(("work directory", work))
    if inside:
        what, path = inside[0]
        raise SourceError(f"the {what} {path} is inside the rootfs being built",
                          hint="put it outside the image's directory tree")


def _within(path: Path, top: Path) -> bool:
    p, t = os.path.realpath(path), os.path.realpath(top)
    return p == t or p.startswith(t.rstrip("/") + "/")


def _remove_quietly(path: Path) -> None:
    try:
        rootfs.remove_tree(path)
    except (MaasChrootError, OSError) as e:
        log.warning("could not remove the work dir %s: %s", path, e)


#: Steps that fail with a rootfs worth inspecting (--keep-rootfs keeps it).
_ROOTFS_STEPS = ("chroot", "update", "upgrade", "install", "remove", "files", "commands",
                 "apt clean", "sysprep")


def _failed(step: str, err: Exception, kept: Path | None) -> BuildError:
    if isinstance(err, BuildError):
        return err
    text = err.message if isinstance(err, MaasChrootError) else f"{type(err).__name__}: {err}"
    hint = err.hint if isinstance(err, MaasChrootError) else None
    msg = text if step == "check" else f"build step {step!r} failed: {text}"
    if kept is not None:
        msg += f"\nthe rootfs is kept in {kept} (inspect it: maas-chroot shell {kept})"
    elif step in _ROOTFS_STEPS:
        hint = (hint + "; " if hint else "") + "rerun with --keep-rootfs DIR to inspect the rootfs"
    error = BuildError(msg, step=step, workdir=os.fspath(kept) if kept else None, hint=hint)
    error.cause = err  # type: ignore[attr-defined]
    return error
