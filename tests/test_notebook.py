"""docs/examples/customise.ipynb runs headlessly, top to bottom, with nbclient."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "docs" / "examples" / "customise.ipynb"
KERNEL = "maas-chroot-test"


def _kernelspec(where: Path) -> Path:
    """A kernelspec running this very interpreter, so the test needs no installed one."""
    spec = where / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "maas-chroot tests", "language": "python"}))
    return where


@pytest.mark.root
@pytest.mark.notebook
def test_customise_notebook_runs(minbase_tar: Path, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("JUPYTER_PATH", str(_kernelspec(tmp_path / "jupyter")))
    monkeypatch.setenv("MAAS_CHROOT_DEMO_SOURCE", str(minbase_tar))
    monkeypatch.setenv("MAAS_CHROOT_DEMO_DIR", str(work))
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    for name in ("MAAS_URL", "MAAS_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(nb, kernel_name=KERNEL, timeout=300,
                            resources={"metadata": {"path": str(REPO)}})
    client.execute()

    def text(cell: nbformat.NotebookNode) -> str:
        out = []
        for o in cell.get("outputs", []):
            out.append(o.get("text", "") or o.get("data", {}).get("text/plain", ""))
        return "".join(out)

    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(o.get("output_type") != "error" for c in code for o in c.get("outputs", []))
    assert "BuildResult(" in text(code[1]) and "pack" in text(code[1])
    assert "Built from a notebook with maas_chroot" in text(code[3])
    assert "machine-id: b''" in text(code[3]) or "machine-id: absent" in text(code[3])
    assert "PackResult(" in text(code[4])
    assert "boot-resources create name=custom/notebook-demo" in text(code[5])
    assert text(code[6]).strip() == "[]"
    assert list(work.iterdir()) == []
