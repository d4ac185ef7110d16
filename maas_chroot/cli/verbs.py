"""The ``maas-chroot`` command line (also ``python -m maas_chroot``).

The only place that configures logging and turns errors into exit codes: an
error is one ``maas-chroot: error: ...`` line (plus the tool's own output, such
as apt's error lines, when there is some) and a ``hint:`` line, exit code 1;
the traceback only with ``--debug``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from .. import arches, binfmt, chroot, maas
from ..archive import archiving as archive
from ..boot import boot_test
from ..boot.runner import failure as boot_failure
from ..chroot import manifest
from ..customise.scrubbing import sysprep
from ..errors import BuildError, MaasChrootError, PrivilegeError, SourceError
from ..maas import Upload
from ..pipeline import BuildResult, Recipe, build
from ..pipeline.spec import preflight
from ..sources import plans
from ..sources.fetching import fetch
from . import specs
from .args import PROG, UsageError, parse

log = logging.getLogger(__name__)

#: Verbs that need root: extracting device nodes and owners, chroot, reading every file.
ROOT_VERBS = {
    "build": "extracts device nodes, chroots and runs apt",
    "extract": "restores device nodes, owners and xattrs",
    "shell": "mounts and chroots",
    "pack": "reads every file of the image, whoever owns it",
    "recover": "restores files owned by root inside the image",
    "boot-test": "deploys the image with its owners and device nodes, and chroots into it",
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit code (never calls sys.exit)."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args_list
    try:
        try:
            args = parse(args_list)
        except SystemExit as e:  # --help / --version
            return int(e.code or 0)
        _setup_logging(args)
        return _dispatch(args)
    except UsageError as e:
        _say_error(str(e), f"see `{e.prog} --help`")
        return 1
    except MaasChrootError as e:
        if debug:
            traceback.print_exc()
        _say_error(e.message, e.hint)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if debug:
            traceback.print_exc()
        _say_error(f"{type(e).__name__}: {e}", "rerun with --debug for the traceback, "
                   "and report it if it looks like a bug")
        return 1


def _say_error(message: str, hint: str | None) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    if hint:
        print(f"hint: {hint}", file=sys.stderr)
    sys.stderr.flush()


def _setup_logging(args: argparse.Namespace) -> None:
    if args.debug or args.verbose >= 2:
        level = logging.DEBUG
    elif args.quiet:
        level = logging.WARNING
    else:
        level = logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    fmt = "%(name)s: %(message)s" if level == logging.DEBUG else f"{PROG}: %(message)s"
    handler.setFormatter(logging.Formatter(fmt))
    top = logging.getLogger("maas_chroot")
    top.handlers = [h for h in top.handlers if isinstance(h, logging.NullHandler)]
    top.addHandler(handler)
    top.setLevel(level)
    top.propagate = False
    quiet_detail = args.verbose == 0 and not args.debug
    for name in ("maas_chroot.run", "maas_chroot.chroot"):
        # one line per step; the modules' own detail only with -v
        logging.getLogger(name).setLevel(logging.WARNING if quiet_detail else logging.NOTSET)
    if args.quiet and args.progress is None:
        args.progress = False


def _dispatch(args: argparse.Namespace) -> int:
    verb = str(args.verb)
    if verb in ROOT_VERBS and os.geteuid() != 0:
        raise PrivilegeError(f"`{PROG} {verb}` must run as root: it {ROOT_VERBS[verb]}",
                             hint=f"run it with sudo: sudo {PROG} {verb} ...")
    handler = {"build": _build, "check": _check, "fetch": _fetch_verb, "extract": _extract,
               "shell": _shell, "pack": _pack, "upload": _upload, "images": _images,
               "delete": _delete, "recover": _recover, "boot-test": _boot_test,
               "binfmt": _binfmt}[verb]
    return handler(args)


def _upload_spec(args: argparse.Namespace) -> Upload:
    # the name is checked before anything touches the network or the disk
    return Upload(client=specs.client(args), name=maas.validate_name(args.name),
                  title=args.title, architecture=args.architecture, base_image=args.base_image,
                  filetype=getattr(args, "filetype", None), force=args.force,
                  replace=args.replace,
                  wait=args.wait, wait_timeout=args.wait_timeout, chunk_size=args.chunk_size)


def _build(args: argparse.Namespace) -> int:
    given = vars(args)
    if_changed = bool(given.get("if_changed"))
    if "file" not in given:
        _report(build(specs.one(args), progress=args.progress, if_changed=if_changed))
        return 0
    chosen = specs.from_recipe(args)
    failed: list[tuple[str, MaasChrootError]] = []
    for name, spec in chosen.items():
        try:
            result = build(spec, progress=args.progress, if_changed=if_changed)
        except MaasChrootError as e:
            if len(chosen) == 1:
                raise
            log.error("image %s: %s", name, e)
            failed.append((name, e))
            continue
        print(f"{name}:", flush=True)
        _report(result)
    if failed:
        first = failed[0][1]
        raise BuildError(f"{len(failed)} of {len(chosen)} images failed: "
                         + ", ".join(name for name, _ in failed),
                         step=first.step if isinstance(first, BuildError) else "check",
                         hint="each one's error is above; the others were built")
    return 0


def _report(result: BuildResult) -> None:
    if result.boot is not None:
        print(result.boot)
    print(repr(result), flush=True)


def _check(args: argparse.Namespace) -> int:
    recipe = Recipe.load(args.file)
    chosen = recipe.select(args.names)
    for name, spec in chosen.items():
        up = f", upload {spec.upload.name}" if spec.upload is not None else ""
        print(f"{name}: {preflight(spec).plan.describe()} -> {os.fspath(spec.output)}"
              f" ({len(spec.packages)} packages{up})")
    print(f"{os.fspath(recipe.path)}: {len(chosen)} image(s), OK")
    return 0


def _fetch_verb(args: argparse.Namespace) -> int:
    plan = plans.plan(args.source, plans.SourceOptions(
        arch=args.arch, fmt=args.fmt, stream=args.stream, mirror=args.mirror,
        keyring=args.keyring, verify=args.verify, sha256=args.sha256, sums_url=args.sums_url))
    if plan.image is None:
        raise SourceError(f"nothing to fetch for {plan.describe()}",
                          hint="fetch takes a release, a URL or a local file")
    path = fetch(plan.image, cache_dir=args.cache_dir, verify=plan.verify, keyring=args.keyring,
                 progress=args.progress)
    print(os.fspath(path))
    return 0


def _extract(args: argparse.Namespace) -> int:
    root = archive.extract(args.archive, args.dest, progress=args.progress)
    print(os.fspath(root))
    return 0


def _shell(args: argparse.Namespace) -> int:
    cmd = list(args.cmd)
    binds = []
    for spec in args.bind:
        src, sep, dst = spec.partition(":")
        binds.append(chroot.Bind(src, dst if sep else src))
    with chroot.Chroot(Path(args.root), network=args.network, binds=binds) as ch:
        return ch.shell(cmd or None)


def _pack(args: argparse.Namespace) -> int:
    compression, _ = archive.output_format(args.output)
    packages = manifest.read(args.root)  # in the image, before sysprep and the pack
    if args.sysprep:
        print(repr(sysprep(args.root, progress=args.progress)), file=sys.stderr)
    res = archive.pack(args.root, args.output, compression=compression, level=args.level,
                       threads=args.threads, progress=args.progress)
    written = manifest.write(res.path, packages)
    print(f"{os.fspath(res.path)}  {res.size} bytes  sha256 {res.sha256}"
          + (f"\n{os.fspath(written)}  {len(packages.splitlines())} packages"
             if written is not None and packages is not None else ""))
    return 0


def _upload(args: argparse.Namespace) -> int:
    if not args.name:
        raise UsageError("upload needs --name (e.g. --name custom/noble-custom)", PROG + " upload")
    res = _upload_spec(args).send(args.file, progress=args.progress)
    print(repr(res))
    if res.complete is False:
        print(f"{res.full_name} is uploaded and MAAS is copying it to its other region "
              f"controllers ({res.progress or 0:.0f}% of the copies): `{PROG} images` shows "
              "when it is complete; --wait waits for it", file=sys.stderr)
    return 0


def _images(args: argparse.Namespace) -> int:
    with specs.client(args) as client:
        print(maas.table(client.images(architecture=args.architecture)))
    return 0


def _delete(args: argparse.Namespace) -> int:
    if (args.name is None) == (args.id is None):
        raise UsageError("delete needs NAME or --id ID (one of them)", PROG + " delete")
    with specs.client(args) as client:
        gone = client.delete(args.id if args.id is not None else args.name,
                             architecture=args.architecture)
    print(f"deleted {gone.full_name} {gone.architecture} (boot resource {gone.id})")
    return 0


def _boot_test(args: argparse.Namespace) -> int:
    report = boot_test(args.image, workdir=args.workdir, log_dir=args.log_dir, check=False,
                       progress=args.progress, **specs.boot_options(args))
    print(report)
    if not report.ok:
        raise boot_failure(report)
    return 0


def _recover(args: argparse.Namespace) -> int:
    report = chroot.recover(args.root)
    print(f"{args.root}: nothing to recover" if report is None else repr(report))
    return 0


def _binfmt(args: argparse.Namespace) -> int:
    if args.enable:
        print(binfmt.enable_binfmt(args.enable))
        return 0
    if args.status:  # one architecture: exit 1 when it cannot run, with the fix
        st = binfmt.status(args.status)
        print(st if st.ok else f"{st}\nhint: {st.hint}")
        return 0 if st.ok else 1
    for arch in arches.ARCHES:
        print(binfmt.status(arch))
    return 0
