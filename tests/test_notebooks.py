"""The notebooks run top to bottom on their defaults (toy models with planted pathways) and show what
they promise. Each gets a fresh kernel with one intra-op thread."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def run_notebook(name: str, tmp_path: Path, monkeypatch, env: dict[str, str] | None = None) -> str:
    """Execute in `tmp_path` with parameters `env` (others at their defaults); return all text output
    (stdout and text/plain results) joined."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("FAILCLOSED_OUT", str(tmp_path / "audit"))
    for var in ("FAILCLOSED_MODEL", "FAILCLOSED_ADAPTER", "FAILCLOSED_DIRECTIONS", "FAILCLOSED_SFT_MODEL",
                "FAILCLOSED_FC_MODEL", "FAILCLOSED_N", "FAILCLOSED_MODE", "FAILCLOSED_RESULTS", "FAILCLOSED_QUICK",
                "FAILCLOSED_FIGURES"):
        monkeypatch.delenv(var, raising=False)
    for var, value in (env or {}).items():
        monkeypatch.setenv(var, value)
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), "commit notebooks without outputs"
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    texts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            texts.append(output.get("text", "") or output.get("data", {}).get("text/plain", ""))
    return "\n".join(texts)


def test_01_explore_directions(tmp_path, monkeypatch):
    text = run_notebook("01_explore_directions", tmp_path, monkeypatch)
    assert "chosen: layer 1 of 4, position -1" in text
    assert "clean:   \"I won't" in text and "ablated: 'OOOO" in text  # ablation removes the toy's refusal
    assert "steered: \"I won't" in text  # and adding it makes a harmless prompt refused
    assert "'harmful, ablated': '0.00 [0.00, 0.32]'" in text  # Wilson interval of 0/8


def test_02_reproduce_mechanistic_figures(tmp_path, monkeypatch):
    """Its default builds a quick grid (sft and project, seed 0) and draws what that grid holds."""
    text = run_notebook("02_reproduce_mechanistic_figures", tmp_path, monkeypatch,
                        {"FAILCLOSED_FIGURES": str(tmp_path / "figures"), "FAILCLOSED_NO_PNG": "1"})
    assert "8 finished experiments in quick/grid" in text  # align, validation, audit, attacks per model
    assert "attacks: drawn for sft s0, project s0" in text and "adaptive: drawn for sft s0, project s0" in text
    # the tiny random model learns no refusal: the audit figures say why they are empty
    assert "joint: nothing to draw yet" in text and "audit-project-s0: no refusal to audit" in text
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == ["adaptive.html", "attacks.html"]


def test_03_audit_a_model(tmp_path, monkeypatch):
    text = run_notebook("03_audit_a_model", tmp_path, monkeypatch)
    assert "verdict: fail-closed, 3 pathways (KL budget 0.1)" in text and "redundancy number 3" in text
    saved = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert saved["redundancy_number"] == 3 and saved["independent_pathways"] == 3
    assert (tmp_path / "audit" / "report.html").is_file()


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.stem)
def test_notebooks_hold_no_logic_of_their_own(path):
    """Thin by construction: no function or class definitions; parameters only from the environment."""
    notebook = nbformat.read(path, as_version=4)
    code = "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "code")
    assert "def " not in code and "class " not in code
    assert "import failclosed_interp" in code or "from failclosed_interp" in code
    assert "os.environ" in code
