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
