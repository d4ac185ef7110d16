"""The build specs of a ``maas-chroot build`` command line (private to the CLI).

One image from its flags (``build SOURCE -o OUT ...``), or the images of a recipe with
the flags given over them (``build -f images.toml [NAME...] ...``). The build verb's
flags have no defaults (argparse leaves out what is not given), so a flag given
overrides the recipe and one not given leaves it alone; :class:`BuildSpec`'s own defaults
fill the rest.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from typing import Any

from .. import maas
from ..maas import Upload
from ..pipeline import BuildSpec, Recipe
from .args import PROG, UsageError

#: The build flags that are BuildSpec fields as they are (``--copy`` gives ``files``).
FIELDS = frozenset(f.name for f in dataclasses.fields(BuildSpec)) - {"source", "output",
                                                                     "upload", "boot_test"}
#: The upload flags that are Upload fields (``--upload NAME`` gives ``name``).
UPLOAD = ("name", "title", "architecture", "force", "base_image", "replace", "wait",
          "wait_timeout", "chunk_size")
LOGIN = ("profile", "maas_url", "api_key", "cacerts")
#: boot-test flag -> boot_test() option.
BOOT = {"kernel": "kernel", "boots": "boots", "accel": "accel", "boot_timeout": "timeout",
        "memory": "memory", "fail_fast": "fail_fast"}


def client(args: argparse.Namespace) -> maas.MaasClient:
    """The MAAS client the command line's credentials name (:meth:`MaasClient.resolve`)."""
    given = vars(args)
    opts = {"cacerts": given["cacerts"]} if given.get("cacerts") else {}
    return maas.MaasClient.resolve(given.get("profile"), url=given.get("maas_url"),
                                   api_key=given.get("api_key"),
                                   needed_by=f"`{PROG} {args.verb}`", **opts)


def one(args: argparse.Namespace) -> BuildSpec:
    """The spec of ``build SOURCE -o OUT [flags]``."""
    if len(args.targets) != 1 or "output" not in vars(args):
        raise UsageError("build needs one SOURCE and -o/--output OUT (or -f RECIPE for the "
                         "images of a recipe)", PROG + " build")
    return BuildSpec.create(args.targets[0], args.output, **_options(args),
                            upload=_upload(None, args, connect=True),
                            boot_test=_boot_test(False, args))


def from_recipe(args: argparse.Namespace) -> dict[str, BuildSpec]:
    """The specs of ``build -f RECIPE [NAME...] [flags]``: the images named (all by
    default), each with the flags given over its recipe settings."""
    chosen = Recipe.load(args.file).select(args.targets)
    given = vars(args)
    if len(chosen) > 1 and ("output" in given or "name" in given):
        flag = "-o/--output" if "output" in given else "--upload"
        raise UsageError(f"{flag} names one image's file, and {len(chosen)} images are chosen: "
                         "name the image (build -f RECIPE NAME)", PROG + " build")
    options = _options(args)
    connect = any(k in given for k in LOGIN)
    out = {}
    for name, spec in chosen.items():
        if "output" in given:
            options["output"] = args.output
        out[name] = spec.replace(**options, upload=_upload(spec.upload, args, connect=connect),
                                 boot_test=_boot_test(spec.boot_test, args))
    return out


def _options(args: argparse.Namespace) -> dict[str, Any]:
    given = {k: v for k, v in vars(args).items() if k in FIELDS}
    if "files" in given:
        given["files"] = dict(given["files"])
    return given


def _upload(upload: Upload | None, args: argparse.Namespace, *,
            connect: bool) -> Upload | None:
    """``upload`` (a recipe's, or None) with the upload flags over it; with ``connect``
    (credential flags given, or no recipe), its client made now."""
    given = vars(args)
    fields = {k: given[k] for k in UPLOAD if k in given}
    if "name" in fields:  # checked before anything touches the network or the disk
        fields["name"] = maas.validate_name(fields["name"])
    if upload is None:
        if "name" not in fields:
            return None
        upload = Upload(client=None, name=fields["name"])
    if connect:
        fields["client"] = client(args)
    return dataclasses.replace(upload, **fields)


def boot_options(args: argparse.Namespace) -> dict[str, Any]:
    """The boot_test() options the boot-test flags give (only those given)."""
    given = vars(args)
    return {opt: given[flag] for flag, opt in BOOT.items() if given.get(flag) is not None}


def _boot_test(value: bool | Mapping[str, Any], args: argparse.Namespace
               ) -> bool | Mapping[str, Any]:
    """``value`` (a recipe's boot_test) with the boot-test flags over it: ``--boot-test``
    turns it on (an empty dict: boot_test()'s defaults); the option flags apply when on."""
    if not (vars(args).get("boot_test") or value):
        return False
    return {**(dict(value) if isinstance(value, Mapping) else {}), **boot_options(args)}

