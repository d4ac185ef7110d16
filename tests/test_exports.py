"""The public API is a contract: code outside this repository imports exactly these names."""

from __future__ import annotations

from pathlib import Path

import maas_chroot as mc

API_DOC = Path(__file__).resolve().parent.parent / "docs" / "api.md"

#: DESIGN.md's public names, plus the documented additions (docs/api.md).
PUBLIC = {
    # the pipeline
    "cloud_image", "ImageSource", "fetch", "extract", "Chroot", "Bind", "recover",
    "sysprep", "SysprepReport", "pack", "PackResult", "MaasClient", "BootResource",
    "build", "BuildResult", "Upload",
    # errors
    "MaasChrootError", "PrivilegeError", "SourceError", "FetchError", "VerificationError",
    "ArchiveError", "UnsafeArchiveError", "CommandError", "ChrootError", "ChrootBusyError",
    "UnsafePathError", "MaasApiError", "ImageNameError", "BuildError",
    "__version__",
}


def test_every_public_name_is_exported() -> None:
    missing = sorted(n for n in PUBLIC if not hasattr(mc, n))
    assert not missing, f"public names missing from maas_chroot: {missing}"
    assert set(mc.__all__) >= PUBLIC


def test_all_lists_only_real_names() -> None:
    assert all(hasattr(mc, n) for n in mc.__all__)
    assert len(mc.__all__) == len(set(mc.__all__))


def test_errors_derive_from_the_base_class() -> None:
    for name in mc.__all__:
        obj = getattr(mc, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, mc.MaasChrootError), name


def test_functions_are_callables_not_modules() -> None:
    for name in ("fetch", "extract", "pack", "sysprep", "recover", "build", "cloud_image"):
        assert callable(getattr(mc, name)), name


def test_the_api_reference_documents_every_exported_name() -> None:
    text = API_DOC.read_text()
    undocumented = [n for n in mc.__all__ if n != "__version__" and f"`{n}" not in text]
    assert not undocumented, f"docs/api.md does not mention: {undocumented}"
