"""``sot.pl.distance_fidelity`` scores each basis by its own method's distance, on its own niches.

Five cells whose niches under ``'single'`` are the cells alone: W2² between two of them is the
squared difference of their one feature, and the features 0, 1, 3, 7, 15 make the ten values
distinct, so every plotted point names its pair.
"""

from itertools import combinations

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pytest

import spatialot as sot

FEATURES = np.array([0.0, 1.0, 3.0, 7.0, 15.0])


@pytest.fixture
def cells():
    adata = ad.AnnData(FEATURES[:, None].astype(np.float32))
    adata.obsm["spatial"] = np.column_stack([np.arange(5.0), np.zeros(5)])
    sot.pp.niches(adata, k=1, key_added="single")
    sot.pp.niches(adata, k=3)  # the default key 'niche': other niches, other distances
    return adata


def plotted_pairs(ax) -> dict[tuple[int, int], float]:
    """The pair of every plotted point, found from its true W2², and the method's distance drawn for it."""
    pair_of = {(FEATURES[i] - FEATURES[j]) ** 2: (i, j) for i, j in combinations(range(5), 2)}
    points = ax.collections[0].get_offsets()
    assert all(true in pair_of for true in points[:, 0]), "the true distances are not those of the recorded niches"
    return {pair_of[true]: predicted for true, predicted in points}


def test_a_vector_basis_uses_squared_euclidean_distance_and_its_own_niches(cells):
    # a HOTET-like result computed on the niches 'single', with a map representation of 2 × the features
    cells.obsm["X_hotet"] = 2 * FEATURES[:, None]
    cells.uns["hotet"] = {"params": {"niche_key": "single"}}
    ax = sot.pl.distance_fidelity(cells, basis="hotet", n_pairs=30, show=False)
    pairs = plotted_pairs(ax)
    assert len(pairs) > 5
    for (i, j), predicted in pairs.items():
        assert predicted == pytest.approx(4 * (FEATURES[i] - FEATURES[j]) ** 2)
    assert ax.get_xlabel() == "exact $W_2^2$ between niches (single)"
    assert ax.get_ylabel() == "squared distance in X_hotet"
    plt.close("all")


def test_asot_uses_its_anchor_space_ot_distance(cells):
    # cells on anchors 0, 1, 2, 0, 2 of the squared-Euclidean cost of the anchor points 0, 1, 2
    anchor_of = np.array([0, 1, 2, 0, 2])
    cost = (np.arange(3.0)[:, None] - np.arange(3.0)[None]) ** 2
    cells.obsm["X_asot"] = np.eye(3, dtype=np.float32)[anchor_of]
    cells.uns["asot"] = {"params": {"niche_key": "single", "n_iter": 50}, "cost": cost, "epsilon": 0.01}
    ax = sot.pl.distance_fidelity(cells, basis="asot", n_pairs=30, show=False)
    for (i, j), predicted in plotted_pairs(ax).items():
        # one-hot weights leave one plan: OT is the anchor cost itself (the Euclidean distance of
        # the weight vectors, 0 or 2, is not)
        assert predicted == pytest.approx(cost[anchor_of[i], anchor_of[j]], abs=1e-5)
    assert ax.get_ylabel() == "anchor-space OT in X_asot"
    plt.close("all")


def test_asot_reads_what_tl_asot_wrote(cells):
    model = sot.tl.asot(cells, niche_key="single", n_anchors=3, progress=False)
    ax = sot.pl.distance_fidelity(cells, basis="asot", n_pairs=30, show=False)
    weights = cells.obsm["X_asot"]
    for (i, j), predicted in plotted_pairs(ax).items():
        expected = model.paired_distances(weights[[i]], weights[[j]])[0]
        assert predicted == pytest.approx(expected, rel=1e-5, abs=1e-6)
    plt.close("all")


def test_niche_key_comes_from_the_result(cells):
    cells.obsm["X_emb"] = FEATURES[:, None]
    cells.uns["emb"] = {"params": {"niche_key": "single"}}
    with pytest.raises(ValueError, match="computed on the niches under 'single'"):
        sot.pl.distance_fidelity(cells, basis="emb", niche_key="niche", show=False)
    # agreeing with the record is fine: squared Euclidean of the features is then W2² exactly
    ax = sot.pl.distance_fidelity(cells, basis="emb", niche_key="single", n_pairs=10, show=False)
    for (i, j), predicted in plotted_pairs(ax).items():
        assert predicted == pytest.approx((FEATURES[i] - FEATURES[j]) ** 2)
    del cells.uns["emb"]
    with pytest.raises(KeyError, match="records no `niche_key`: pass `niche_key=`"):
        sot.pl.distance_fidelity(cells, basis="emb", show=False)
    plt.close("all")
