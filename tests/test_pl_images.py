"""Every ``sot.pl`` function drawn at low dpi and compared with its baseline in ``tests/_images``.

The inputs are what the ``tl`` functions write, built here from fixed numbers on the first 300
cells of the BDTNP embryo, so a figure changes only when the plotting code does. A changed figure
fails with the new image beside the baseline. After an intended change, look at the new images
and write the baselines again with ``python tests/test_pl_images.py``; a missing baseline is a
failure, never written by a test.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.testing.compare import compare_images  # noqa: E402

import spatialot as sot  # noqa: E402

BASELINES = Path(__file__).parent / "_images"
DPI = 40
TOLERANCE = 5  # RMS difference of the pixels, on a 0–255 scale


def embryo():
    adata = sot.datasets.bdtnp()[:300].copy()
    sot.pp.niches(adata, k=6)
    # a categorical column with a palette of its own in .uns, as scanpy stores it
    band = pd.cut(adata.obsm["spatial"][:, 0], 3, labels=["anterior", "middle", "posterior"])
    adata.obs["band"] = pd.Categorical(band)
    adata.uns["band_colors"] = ["#8c564b", "#17becf", "#bcbd22"]
    rng = np.random.default_rng(0)
    coordinates = adata.obsm["spatial"]
    adata.obsm["X_wormhole"] = np.column_stack([coordinates[:, 0], coordinates[:, 2], rng.normal(size=(300, 2))])
    adata.uns["wormhole"] = {
        "params": {"niche_key": "niche"},
        "loss": 2.0 * np.exp(-np.arange(300) / 80) + 0.1 * rng.random(300),
    }
    # an ASOT result: anchors and the weights of every niche on them
    adata.obsm["X_asot"] = rng.dirichlet(np.full(8, 0.3), size=300).astype(np.float32)
    adata.uns["asot"] = {"params": {"niche_key": "niche"}, "anchors": rng.normal(size=(8, 84)).astype(np.float32)}
    # a HOTET result: 16 anchors of a reference and their images under each niche's inverse map
    anchors = rng.normal(size=(16, 84))
    images = anchors[None] * 0.5 + np.asarray(adata.X.mean(0))[None, None] + 0.05 * rng.normal(size=(300, 16, 84))
    adata.obsm["X_hotet"] = (images / 4.0).reshape(300, -1)  # the representation is divided by sqrt(n_anchors)
    adata.uns["hotet"] = {
        "params": {"niche_key": "niche"},
        "anchors": anchors,
        "reference_mean": np.zeros(84),
        "reference_cov": np.diag(np.linspace(2.0, 0.5, 84)),
    }
    # generated niches of three conditions
    centre = np.asarray(adata.X[:6].mean(0))
    adata.uns["wfm_generated"] = {
        "params": {"niche_key": "niche", "condition_key": "band"},
        "points": centre + 0.1 * rng.normal(size=(9, 6, 84)),
        "mask": np.ones((9, 6), dtype=bool),
        "conditions": np.repeat(["anterior", "middle", "posterior"], 3),
    }
    return adata


FIGURES = {
    "niches_categorical": lambda adata: sot.pl.niches(adata, cells=[5, 150], color="band", show=False),
    "niches_gene": lambda adata: sot.pl.niches(adata, cells=[5, 150], color="eve", show=False),
    "embedding_grid": lambda adata: sot.pl.embedding(
        adata, color=["band", "eve"], projection="none", size=40, show=False
    )[0],
    "distance_fidelity": lambda adata: sot.pl.distance_fidelity(adata, basis="wormhole", n_pairs=60, show=False),
    "loss": lambda adata: sot.pl.loss(adata, "wormhole", window=20, show=False),
    "asot": lambda adata: sot.pl.asot(adata, cells=[3, 100], show=False),
    "hotet": lambda adata: sot.pl.hotet(adata, cells=[3], show=False),
    "generated_niches": lambda adata: sot.pl.generated_niches(
        adata, cell_type_key="band", ncols=2, n_real=3, show=False
    )[0, 0],
    "generated_niches_ax": lambda adata: sot.pl.generated_niches(
        adata, conditions=["middle"], n_real=3, ax=plt.subplots(figsize=(3, 3))[1], show=False
    ),
}


def draw(name: str, adata, path: Path) -> None:
    with plt.style.context("default"):
        ax = FIGURES[name](adata)
        ax.get_figure().savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close("all")


@pytest.fixture(scope="module")
def adata():
    return embryo()


def test_every_plot_function_has_a_baseline():
    # a figure is named after the function it draws, with a suffix when a function has several
    undrawn = [f for f in sot.pl.__all__ if not any(name == f or name.startswith(f"{f}_") for name in FIGURES)]
    assert not undrawn, f"no image test for sot.pl.{undrawn}"
    assert sorted(path.stem for path in BASELINES.glob("*.png")) == sorted(FIGURES)


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_plot_matches_its_baseline(name, adata, tmp_path):
    baseline = BASELINES / f"{name}.png"
    assert baseline.exists(), f"no baseline {baseline}: draw it with `python tests/test_pl_images.py` and commit it"
    actual = tmp_path / f"{name}.png"
    draw(name, adata.copy(), actual)
    difference = compare_images(str(baseline), str(actual), tol=TOLERANCE)
    assert difference is None, difference


if __name__ == "__main__":  # write the baselines again, after an intended change of a figure
    BASELINES.mkdir(exist_ok=True)
    data = embryo()
    for figure in sys.argv[1:] or FIGURES:
        draw(figure, data.copy(), BASELINES / f"{figure}.png")
        print("wrote", BASELINES / f"{figure}.png")
