"""Every tutorial notebook runs, with the short settings of its parameter cell, and is committed as run.

A tutorial's first code cell reads ``SPATIALOT_TUTORIAL_QUICK``: set to ``"1"`` it picks short
settings (few training steps, fewer cells) so that CI runs every notebook in seconds; the
committed outputs come from the full settings (``jupyter nbconvert --execute``), and the docs
render them as committed.
"""

import json
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
import scanpy as sc
import torch

import spatialot as sot

TUTORIALS = sorted((Path(__file__).parents[1] / "tutorials").glob("*.ipynb"))
QUICK_SWITCH = 'os.environ.get("SPATIALOT_TUTORIAL_QUICK") == "1"'
# a committed notebook carries its figures, at a resolution that keeps the repository small
MAX_NOTEBOOK_BYTES = 2_000_000


def _code_cells(path: Path) -> list[dict]:
    return [cell for cell in json.loads(path.read_text())["cells"] if cell["cell_type"] == "code"]


def test_tutorials_found():
    assert len(TUTORIALS) >= 2


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_linked_from_readme(path):
    assert f"](tutorials/{path.name})" in (path.parents[1] / "README.md").read_text()


@pytest.fixture
def restored_settings():
    """The notebooks set threads, progress bars and verbosity: put them back for the other tests."""
    before = sot.settings.progress, sot.settings.n_threads, torch.get_num_threads(), sc.settings.verbosity
    yield
    sot.settings.progress, sot.settings.n_threads = before[:2]
    torch.set_num_threads(before[2])
    sc.settings.verbosity = before[3]
    plt.close("all")


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_runs(path, monkeypatch, restored_settings):
    monkeypatch.setenv("SPATIALOT_TUTORIAL_QUICK", "1")
    monkeypatch.setattr(plt, "show", lambda *args, **kwargs: None)
    namespace: dict = {"__name__": "__main__"}
    for number, cell in enumerate(_code_cells(path)):
        exec(compile("".join(cell["source"]), f"{path.name}, code cell {number}", "exec"), namespace)
        plt.close("all")
    assert namespace.get("QUICK") is True


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_committed_with_outputs(path):
    cells = _code_cells(path)
    assert QUICK_SWITCH in "".join(cells[0]["source"]), "the first code cell must read SPATIALOT_TUTORIAL_QUICK"
    # run top to bottom in one kernel, every cell once
    assert [cell["execution_count"] for cell in cells] == list(range(1, len(cells) + 1))
    outputs = [output for cell in cells for output in cell["outputs"]]
    assert not [output for output in outputs if output["output_type"] == "error"]
    assert any("image/png" in output.get("data", {}) for output in outputs), "no figure in the outputs"
    assert path.stat().st_size < MAX_NOTEBOOK_BYTES
