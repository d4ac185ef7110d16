"""``bootstrap:<suite>`` sources: a fresh rootfs built with mmdebstrap from a mirror.

This is the maas-image-builder route, for sites whose distribution mirror is
their only source of images::

    create(spec_for("bookworm"), "/srv/work/rootfs")        # the host's own mirror
    create(spec_for("noble", mirror=URL,
                    keyring="/usr/share/keyrings/ubuntu-archive-keyring.gpg"), "/srv/work/rootfs")

The mirror defaults to the one the machine's apt already uses for that suite
(:func:`maas_chroot.hostapt.host_mirror`); a suite the host's apt does not
carry (an Ubuntu suite on a Debian host, say) needs ``mirror=``.

mmdebstrap runs in ``unshare`` mode: as root that keeps the user namespace
but gives mmdebstrap its own mount and PID namespaces, so the mounts it makes
while installing packages can never be left behind on the host.

A foreign ``arch`` (arm64 on an amd64 host) needs a binfmt_misc handler with the F
flag (:mod:`maas_chroot.binfmt`), checked before mmdebstrap starts, and mmdebstrap's
own check of it, ``arch-test``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from .. import arches, binfmt, run
from .. import progress as _progress
from ..errors import CommandError, FetchError, SourceError, tail
from . import hostapt
from .http import Http, HttpOptions

log = logging.getLogger(__name__)

#: mmdebstrap variants accepted by :func:`bootstrap`.
VARIANTS = ("extract", "custom", "essential", "apt", "required", "minbase", "important",
            "standard")

#: Build-time speed-ups: dpkg without fsync (the disk is synced once, at pack time) and
#: no translation indexes. mmdebstrap writes them into these files of the image, which a
#: customize hook removes before the image is finished (directory or tarball alike);
#: mmdebstrap runs no hooks for the variants of _NO_HOOKS, which get neither.
_FAST_OPTS = ("--dpkgopt=force-unsafe-io", '--aptopt=Acquire::Languages "none"')
_FAST_FILES = ("/etc/dpkg/dpkg.cfg.d/99mmdebstrap", "/etc/apt/apt.conf.d/99mmdebstrap")
#: Variants mmdebstrap runs no hooks for (and whose packages are merely unpacked).
_NO_HOOKS = ("extract", "custom")
#: How long a cached bootstrap tarball is reused (the mirror moves on: security updates).
CACHE_HOURS = 24.0


@dataclass(frozen=True)
class BootstrapSpec:
    """What to bootstrap: a suite from a mirror (see :func:`spec_for`)."""

    suite: str
    uri: str
    components: tuple[str, ...] = ()
    keyring: str | None = None
    variant: str = "minbase"
    include: tuple[str, ...] = ()
    arch: str | None = None


def spec_for(suite: str, *, mirror: str | None = None,
             keyring: str | os.PathLike[str] | None = None,
             components: Iterable[str] | None = None, variant: str = "minbase",
             include: Iterable[str] = (), arch: str | None = None) -> BootstrapSpec:
    """What to bootstrap, with the defaults filled in: the host's mirror, its components
    and its keyring. Reads the host's apt configuration only."""
    if variant not in VARIANTS:
        raise SourceError(f"unknown mmdebstrap variant {variant!r}", key="variant",
                          hint=f"use one of: {', '.join(VARIANTS)}")
    comps = tuple(components) if components is not None else ()
    key = os.fspath(keyring) if keyring is not None else None
    arch = arches.get(arch).name if arch is not None else None
    if mirror is None:
        try:
            host = hostapt.host_mirror(suite)
        except SourceError as e:
            distro = hostapt.os_release().get("ID", "this host")
            raise SourceError(
                f"cannot bootstrap {suite!r}: this machine's apt ({distro}) has no mirror "
                f"carrying that suite", key="mirror",
                hint=f"give a mirror for it: --mirror URL (with --keyring FILE for a "
                     f"distribution other than {distro})",
            ) from e
        mirror = host.uri
        comps = comps or host.components
        key = key or host.signed_by
    return BootstrapSpec(suite=suite, uri=mirror.rstrip("/"), components=comps or ("main",),
                         keyring=key, variant=variant, include=tuple(include), arch=arch)


def argv(spec: BootstrapSpec, target: str | os.PathLike[str]) -> list[str]:
    """The mmdebstrap command line for ``spec`` writing ``target`` (a directory or a tarball)."""
    args = ["mmdebstrap", "--mode=unshare", f"--variant={spec.variant}",
            "--components=" + ",".join(spec.components)]
    if spec.keyring:
        args.append(f"--keyring={spec.keyring}")
    if spec.include:
        args.append("--include=" + ",".join(spec.include))
    if spec.arch:
        args.append(f"--architectures={spec.arch}")
    if spec.variant not in _NO_HOOKS:
        args += _FAST_OPTS
        args.append("--customize-hook=rm -f " + " ".join(f'"$1{p}"' for p in _FAST_FILES))
    return [*args, spec.suite, os.fspath(target), spec.uri]


def create(spec: BootstrapSpec, dest: str | os.PathLike[str], *,
           progress: bool | None = None) -> Path:
    """Run mmdebstrap for a spec from :func:`spec_for` into ``dest``; return its path.

    With progress on a terminal, mmdebstrap draws its own progress bars there;
    otherwise it runs quietly and its error output goes into the exception.
    """
    target = Path(os.fspath(dest))
    if target.is_dir() and any(target.iterdir()):
        raise SourceError(f"cannot bootstrap into {target}: the directory is not empty",
                          hint="give a new or empty directory")
    if shutil.which("mmdebstrap", path=run.DEFAULT_PATH) is None:
        raise SourceError("bootstrap sources need mmdebstrap, which is not installed",
                          hint="apt-get install mmdebstrap")
    if spec.arch is not None and not binfmt.require(spec.arch, root=target).native and \
            shutil.which("arch-test", path=run.DEFAULT_PATH) is None:
        raise SourceError(f"bootstrapping a foreign architecture ({spec.arch}) needs arch-test, "
                          "which mmdebstrap uses to check the emulation",
                          hint="apt-get install arch-test")
    log.info("bootstrapping %s (%s) from %s into %s", spec.suite, spec.variant, spec.uri, target)
    args = argv(spec, target)
    live = _progress.enabled(progress) and sys.stderr.isatty()
    try:
        if live:
            run.run(args, interactive=True)
        else:
            run.run([*args[:1], "--quiet", *args[1:]])
    except CommandError as e:
        detail = f":\n{tail(e.stderr, 8)}" if e.stderr else " (its output is above)"
        raise SourceError(
            f"mmdebstrap could not bootstrap {spec.suite!r} from {spec.uri}{detail}",
            hint="check the suite name and the mirror (and --keyring for a foreign "
                 "distribution); -v shows the full mmdebstrap output",
        ) from e
    return target


@dataclass(frozen=True)
class Release:
    """The mirror's ``InRelease`` (or ``Release``) file of a suite, as read just now: what
    a bootstrap of the suite installs from (it lists every package index, by hash)."""

    url: str
    sha256: str
    date: str | None


def release_of(spec: BootstrapSpec) -> Release | None:
    """The Release file of ``spec``'s suite on its mirror (one small GET); None for a mirror
    that is not an http(s) or file URL. A mirror that cannot be read raises FetchError."""
    if not spec.uri.startswith(("http://", "https://", "file://")):
        log.info("bootstrap %s: cannot read the Release file of the mirror %s", spec.suite,
                 spec.uri)
        return None
    with Http(HttpOptions(retries=2)) as http:
        for name in ("InRelease", "Release"):
            url = f"{spec.uri}/dists/{spec.suite}/{name}"
            try:
                data = http.get(url).content or b""
            except FetchError as e:
                if e.status == 404 and name == "InRelease":
                    continue
                raise
            date = next((line.split(":", 1)[1].strip() for line in
                         data.decode("utf-8", "replace").splitlines()
                         if line.startswith("Date:")), None)
            return Release(url, hashlib.sha256(data).hexdigest(), date)
    return None  # pragma: no cover - the loop returns or raises


def cached(spec: BootstrapSpec, cache_dir: str | os.PathLike[str], *,
           release: Release | None = None, progress: bool | None = None) -> tuple[Path, bool]:
    """A tarball of ``spec`` in ``cache_dir/bootstrap``, made with mmdebstrap unless one less
    than :data:`CACHE_HOURS` old is there; returns it and whether it came from the cache.
    With the mirror's ``release`` file, a tarball of an older one is never reused."""
    made_from = {**dataclasses.asdict(spec), **({"release": release.sha256} if release else {})}
    key = hashlib.sha256(json.dumps(made_from, sort_keys=True).encode())
    out = Path(os.fspath(cache_dir)) / "bootstrap" / f"{spec.suite}-{key.hexdigest()[:16]}.tar"
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(os.fspath(out) + ".lock"):
        with contextlib.suppress(FileNotFoundError):
            if time.time() - out.stat().st_mtime < CACHE_HOURS * 3600:
                log.info("bootstrap %s: using %s (made %.1f h ago)", spec.suite, out,
                         (time.time() - out.stat().st_mtime) / 3600)
                return out, True
        part = out.with_name(out.name.removesuffix(".tar") + ".part.tar")
        part.unlink(missing_ok=True)
        try:
            create(spec, part, progress=progress)
            os.replace(part, out)
        finally:
            part.unlink(missing_ok=True)
    return out, False
