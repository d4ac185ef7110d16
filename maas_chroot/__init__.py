"""maas_chroot: turn an Ubuntu cloud image into a custom MAAS image without a VM.

    import maas_chroot as mc
    path = mc.fetch(mc.cloud_image("noble"))
    root = mc.extract(path, "/srv/work/noble")
    with mc.Chroot(root) as ch:
        ch.apt.update()
        ch.apt.install(["jq"])
    mc.sysprep(root)
    res = mc.pack(root, "noble-custom.tgz")
    mc.MaasClient.from_profile("admin").upload(res.path, name="custom/noble-custom")
"""

from __future__ import annotations

import logging

from .archive import PackResult, extract, pack
from .binfmt import Emulation, enable_binfmt
from .boot import BootReport, boot_test
from .chroot import Bind, Chroot, recover
from .customise import SysprepReport, sysprep
from .errors import (
    AptError,
    ArchiveError,
    ArgumentError,
    BootTestError,
    BuildError,
    ChrootBusyError,
    ChrootError,
    CommandError,
    EmulationError,
    FetchError,
    ImageNameError,
    MaasApiError,
    MaasChrootError,
    MaasCredentialsError,
    MountedError,
    PathError,
    PrivilegeError,
    RecipeError,
    SourceError,
    SpecError,
    SysprepError,
    UnreachableError,
    UnsafeArchiveError,
    UnsafePathError,
    VerificationError,
)
from .maas import BootResource, MaasClient, Upload
from .pipeline import BuildResult, BuildSpec, Recipe, build
from .sources import ImageSource, cloud_image, fetch
from .version import __version__

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "AptError",
    "ArchiveError",
    "ArgumentError",
    "Bind",
    "BootReport",
    "BootResource",
    "BootTestError",
    "BuildError",
    "BuildResult",
    "BuildSpec",
    "Chroot",
    "ChrootBusyError",
    "ChrootError",
    "CommandError",
    "Emulation",
    "EmulationError",
    "FetchError",
    "ImageNameError",
    "ImageSource",
    "MaasApiError",
    "MaasChrootError",
    "MaasClient",
    "MaasCredentialsError",
    "MountedError",
    "PackResult",
    "PathError",
    "PrivilegeError",
    "Recipe",
    "RecipeError",
    "SourceError",
    "SpecError",
    "SysprepError",
    "SysprepReport",
    "UnreachableError",
    "UnsafeArchiveError",
    "UnsafePathError",
    "Upload",
    "VerificationError",
    "__version__",
    "boot_test",
    "build",
    "cloud_image",
    "enable_binfmt",
    "extract",
    "fetch",
    "pack",
    "recover",
    "sysprep",
]
