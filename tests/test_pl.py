import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.collections import LineCollection

import spatialot as sot


@pytest.fixture
def embryo():
    adata = sot.datasets.bdtnp()
    sot.pp.niches(adata, k=6)
    return adata


def test_niches_plot_draws_one_edge_per_niche_member(embryo):
    ax = sot.pl.niches(embryo, cells=[10, "cell20"], color="eve", dims=(0, 2), show=False)
    lines = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert [len(c.get_segments()) for c in lines] == [6, 6]
    # each segment starts at its centre cell, projected on the requested dimensions
    np.testing.assert_allclose(lines[1].get_segments()[0][0], embryo.obsm["spatial"][20, [0, 2]])
    assert ax.get_title() == "2 niches on eve"
    plt.close(ax.get_figure())


def test_niches_plot_saves_a_file(embryo, tmp_path):
    path = tmp_path / "niches.png"
    assert sot.pl.niches(embryo, save=path, show=False) is not None
    assert path.stat().st_size > 1000
    plt.close("all")


def test_niches_plot_errors(embryo):
    with pytest.raises(KeyError, match="color"):
        sot.pl.niches(embryo, color="not_a_gene", show=False)
    with pytest.raises(ValueError, match="dims"):
        sot.pl.niches(embryo, dims=(0, 3), show=False)
    with pytest.raises(KeyError, match="niche_key"):
        sot.pl.niches(embryo, niche_key="other", show=False)
    plt.close("all")


@pytest.fixture
def banded(embryo):
    import pandas as pd

    embryo.obs["band"] = pd.Categorical(
        pd.cut(embryo.obsm["spatial"][:, 0], 3, labels=["anterior", "middle", "posterior"])
    )
    embryo.uns["band_colors"] = ["#8c564b", "#17becf", "#bcbd22"]
    embryo.obsm["X_wormhole"] = embryo.obsm["spatial"].copy()
    return embryo


def test_niches_uses_the_category_palette_of_uns_and_a_legend(banded):
    from matplotlib.colors import to_hex

    ax = sot.pl.niches(banded, cells=[0], color="band", show=False)
    legend = ax.get_legend()
    assert legend.get_title().get_text() == "band"
    assert [text.get_text() for text in legend.get_texts()] == ["anterior", "middle", "posterior"]
    assert [to_hex(handle.get_facecolor()[0]) for handle in legend.legend_handles] == banded.uns["band_colors"]
    # every cell of the tissue takes its category's colour
    tissue = ax.collections[0].get_facecolors()
    codes = banded.obs["band"].cat.codes.to_numpy()
    assert {to_hex(tissue[i]) for i in np.flatnonzero(codes == 1)} == {"#17becf"}
    assert "band_colors" in banded.uns and banded.uns["band_colors"] == ["#8c564b", "#17becf", "#bcbd22"]
    plt.close("all")


def test_colour_bars_are_labelled(banded):
    ax = sot.pl.niches(banded, cells=[0], color="eve", show=False)
    assert ax.collections[0].colorbar.ax.get_ylabel() == "eve"
    axes = sot.pl.embedding(banded, color=["band", "eve", "ftz"], ncols=2, show=False)
    assert [panel.get_title() for panel in axes] == ["band", "eve", "ftz"]
    labels = [c.colorbar.ax.get_ylabel() for panel in axes for c in panel.collections if c.colorbar is not None]
    assert labels == ["eve", "ftz"]
    # a grid of 2 columns: the third panel starts a second row
    positions = [panel.get_position() for panel in axes]
    assert positions[2].y0 < positions[0].y0 and positions[2].x0 == pytest.approx(positions[0].x0, abs=0.02)
    plt.close("all")


def test_embedding_refuses_a_list_of_colours_on_one_ax(banded):
    _, ax = plt.subplots()
    with pytest.raises(ValueError, match="leave `ax` out to get a grid"):
        sot.pl.embedding(banded, color=["band", "eve"], ax=ax, show=False)
    assert sot.pl.embedding(banded, color="band", ax=ax, show=False) is ax
    assert sot.pl.embedding(banded, ax=ax, show=False) is ax  # no colour at all
    with pytest.raises(ValueError, match="list of keys, got"):
        sot.pl.embedding(banded, color=["band", 3], show=False)
    plt.close("all")
