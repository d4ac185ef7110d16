"""The package's shape: stage folders, imports only downwards, small modules, no shadowing."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import maas_chroot

PACKAGE = Path(maas_chroot.__file__).parent
#: The pipeline's stages, lowest first. A module may import its own stage and lower ones.
STAGES = ("ground", "rootfs", "sources", "archive", "chroot", "customise", "boot", "maas",
          "pipeline", "cli")
GROUND = {"errors", "run", "progress", "formats", "releases", "steps", "version", "arches",
          "binfmt", "__init__", "__main__"}
MAX_LINES = 400


def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out.append((".".join(("maas_chroot", *parts)), path))
    return out


def _stage(module: str) -> str:
    parts = module.split(".")[1:]
    if not parts or (len(parts) == 1 and parts[0] in GROUND and parts[0] not in STAGES):
        return "ground"
    return parts[0]


def _imports(module: str, path: Path) -> set[str]:
    """The maas_chroot modules ``module`` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("maas_chroot"):
                subs = {f"{target}.{a.name}" for a in node.names} & set(dict(_modules()))
                found |= subs or {target}  # `from .. import rootfs` imports the subpackage
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("maas_chroot"))
    return {t for t in found if t in dict(_modules()) or t == "maas_chroot"}


def test_a_lower_stage_never_imports_a_higher_one() -> None:
    wrong = []
    for module, path in _modules():
        if module in ("maas_chroot", "maas_chroot.__main__"):
            continue  # the package's front door re-exports every stage
        mine = STAGES.index(_stage(module))
        for target in _imports(module, path):
            if target == "maas_chroot":
                wrong.append(f"{module} imports the package __init__")
            elif STAGES.index(_stage(target)) > mine:
                wrong.append(f"{module} ({_stage(module)}) imports {target} ({_stage(target)})")
    assert not wrong, "\n".join(wrong)


def test_every_folder_is_a_stage() -> None:
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders <= set(STAGES), folders - set(STAGES)
    loose = {p.stem for p in PACKAGE.glob("*.py")} - GROUND - set(STAGES)
    assert not loose, f"top-level modules outside the ground and the stages: {loose}"


def test_no_module_is_over_400_lines() -> None:
    big = {m: n for m, p in _modules() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, big


def test_no_module_is_shadowed_by_what_its_package_exports() -> None:
    """``mc.sysprep`` is the function; no submodule may be named like an exported name."""
    shadowed = []
    for info in pkgutil.walk_packages(maas_chroot.__path__, "maas_chroot."):
        parent_name, _, leaf = info.name.rpartition(".")
        parent = importlib.import_module(parent_name)
        value = getattr(parent, leaf, None)
        if value is not None and not hasattr(value, "__path__") and \
                type(value).__name__ != "module":
            shadowed.append(f"{info.name} is hidden by {parent_name}.{leaf} = {value!r}")
    assert not shadowed, "\n".join(shadowed)


def test_the_chroot_helper_imports_only_the_standard_library_and_the_resolver() -> None:
    """nsexec.py runs as ``python -I -S`` for every command: no package, no heavy imports."""
    for name in ("chroot/nsexec.py", "rootfs/inroot.py"):
        tree = ast.parse((PACKAGE / name).read_text())
        top = {a.name.split(".")[0] for n in tree.body if isinstance(n, ast.Import)
               for a in n.names}
        top |= {n.module.split(".")[0] for n in tree.body
                if isinstance(n, ast.ImportFrom) and n.module and not n.level}
        assert top <= {"__future__", "ctypes", "errno", "os", "stat", "sys"}, (name, top)
