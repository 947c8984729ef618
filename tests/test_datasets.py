import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy.spatial import cKDTree

import spatialot as sot
from spatialot.datasets import _simulated

# ---------------------------------------------------------------------------------------------
# bdtnp


def test_bdtnp_shape_and_metadata():
    adata = sot.datasets.bdtnp()
    assert adata.shape == (3039, 84)
    assert adata.obsm["spatial"].shape == (3039, 3)
    assert np.isfinite(adata.obsm["spatial"]).all()
    # an embryo is about 500 µm long
    extent = np.ptp(adata.obsm["spatial"], axis=0)
    assert 300 < extent.max() < 600
    assert {"eve", "ftz", "hb", "Kr"} <= set(adata.var_names)
    assert adata.var_names.is_unique and adata.obs_names.is_unique
    X = adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X)
    assert X.min() >= 0 and np.isfinite(X).all()
    assert "BSD" in adata.uns["dataset"]["license"]


def test_bdtnp_returns_fresh_copy():
    first = sot.datasets.bdtnp()
    original_xyz = first.obsm["spatial"].copy()
    original_x0 = np.asarray(first.X[0]).copy()
    first.obsm["spatial"][:] = 0
    first.X[0] = -1
    first.obs["new"] = 1
    first.uns["dataset"]["name"] = "changed"

    second = sot.datasets.bdtnp()
    np.testing.assert_array_equal(second.obsm["spatial"], original_xyz)
    np.testing.assert_array_equal(np.asarray(second.X[0]), original_x0)
    assert "new" not in second.obs
    assert second.uns["dataset"]["name"] != "changed"


# ---------------------------------------------------------------------------------------------
# simulated_tissue


@pytest.fixture(scope="module")
def tissue():
    return sot.datasets.simulated_tissue(20_000, random_state=3)


def test_simulated_shapes_and_dtypes():
    adata = sot.datasets.simulated_tissue(
        500, n_niche_types=3, n_cell_types=4, n_genes=20, n_latent=5, regions_per_niche_type=2, random_state=1
    )
    assert adata.shape == (500, 20)
    assert sp.isspmatrix_csr(adata.X) and adata.X.dtype == np.float32
    assert adata.obsm["spatial"].shape == (500, 2) and np.issubdtype(adata.obsm["spatial"].dtype, np.floating)
    assert adata.obsm["X_latent"].shape == (500, 5) and adata.obsm["X_latent"].dtype == np.float32
    assert list(adata.obs_names[:2]) == ["cell_0", "cell_1"]
    assert list(adata.var_names[:2]) == ["gene_0", "gene_1"]
    assert list(adata.obs["niche_type"].cat.categories) == ["niche_0", "niche_1", "niche_2"]
    assert list(adata.obs["cell_type"].cat.categories) == [f"type_{i}" for i in range(4)]
    assert len(adata.obs["region"].cat.categories) == 6
    truth = adata.uns["simulated_tissue"]
    assert truth["composition"].shape == (3, 4)
    assert truth["cell_type_centroids"].shape == (4, 5)
    assert truth["loadings"].shape == (5, 20)
    assert truth["region_seeds"].shape == (6, 2)
    assert truth["params"] == {
        "n_cells": 500,
        "n_niche_types": 3,
        "n_cell_types": 4,
        "n_genes": 20,
        "n_latent": 5,
        "regions_per_niche_type": 2,
        "random_state": 1,
    }


def test_simulated_smallest_size():
    adata = sot.datasets.simulated_tissue(100)
    assert adata.shape == (100, 50)
    assert adata.obs["niche_type"].notna().all() and adata.obs["cell_type"].notna().all()


def _assert_same(a: ad.AnnData, b: ad.AnnData) -> None:
    assert (a.X != b.X).nnz == 0
    pd.testing.assert_frame_equal(a.obs, b.obs)
    for key in ("spatial", "X_latent"):
        np.testing.assert_array_equal(a.obsm[key], b.obsm[key])
    for key in ("composition", "cell_type_centroids", "loadings", "region_niche_type", "region_seeds"):
        np.testing.assert_array_equal(a.uns["simulated_tissue"][key], b.uns["simulated_tissue"][key])


def test_simulated_deterministic_by_seed():
    a = sot.datasets.simulated_tissue(2_000, random_state=7)
    b = sot.datasets.simulated_tissue(2_000, random_state=7)
    _assert_same(a, b)
    c = sot.datasets.simulated_tissue(2_000, random_state=8)
    assert not np.array_equal(a.obsm["spatial"], c.obsm["spatial"])
    assert not np.array_equal(a.uns["simulated_tissue"]["composition"], c.uns["simulated_tissue"]["composition"])
    assert (a.X != c.X).nnz > 0


def test_simulated_independent_of_thread_count(monkeypatch):
    # more cells than one chunk, so that several chunks are sampled in parallel
    n = _simulated._CHUNK + 5_000
    parallel = sot.datasets.simulated_tissue(n, n_genes=10, random_state=2)
    monkeypatch.setattr(_simulated.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    serial = sot.datasets.simulated_tissue(n, n_genes=10, random_state=2)
    _assert_same(parallel, serial)


def test_simulated_random_state_none():
    adata = sot.datasets.simulated_tissue(200, random_state=None)
    assert "random_state" not in adata.uns["simulated_tissue"]["params"]


def test_simulated_spatial_layout(tissue):
    xy = tissue.obsm["spatial"]
    side = tissue.uns["simulated_tissue"]["side"]
    assert side == pytest.approx(10 * np.sqrt(tissue.n_obs))
    assert xy.min() >= 0 and xy.max() <= side
    # constant density: the typical nearest-neighbour distance of a Poisson process is 0.5/sqrt(density)
    dist = cKDTree(xy).query(xy, k=2)[0][:, 1]
    assert dist.mean() == pytest.approx(5.0, rel=0.1)


def test_simulated_regions_and_niches(tissue):
    truth = tissue.uns["simulated_tissue"]
    region_niche = truth["region_niche_type"]
    # every niche type owns exactly regions_per_niche_type regions
    np.testing.assert_array_equal(np.bincount(region_niche), np.full(5, 3))
    # each cell's niche type is its region's niche type, and its region is its nearest seed
    region = tissue.obs["region"].cat.codes.to_numpy()
    np.testing.assert_array_equal(tissue.obs["niche_type"].cat.codes.to_numpy(), region_niche[region])
    nearest_seed = cKDTree(truth["region_seeds"]).query(tissue.obsm["spatial"])[1]
    np.testing.assert_array_equal(region, nearest_seed)
    assert tissue.obs["niche_type"].value_counts().min() > 0.05 * tissue.n_obs


def test_simulated_spatial_contiguity(tissue):
    niche = tissue.obs["niche_type"].cat.codes.to_numpy()
    neighbour = cKDTree(tissue.obsm["spatial"]).query(tissue.obsm["spatial"], k=2)[1][:, 1]
    assert (niche == niche[neighbour]).mean() > 0.9


def test_simulated_composition(tissue):
    comp = tissue.uns["simulated_tissue"]["composition"]
    assert comp.shape == (5, 8)
    assert (comp >= 0).all()
    np.testing.assert_allclose(comp.sum(axis=1), 1.0, atol=1e-12)
    l1 = np.abs(comp[:, None] - comp[None]).sum(-1)
    assert l1[np.triu_indices(5, 1)].min() >= 0.5

    # empirical cell-type frequencies in each niche type match the stored composition
    table = pd.crosstab(tissue.obs["niche_type"], tissue.obs["cell_type"], dropna=False).to_numpy()
    n_k = table.sum(axis=1, keepdims=True)
    freq = table / n_k
    tol = 5 * np.sqrt(comp * (1 - comp) / n_k) + 2e-3
    assert (np.abs(freq - comp) <= tol).all()


def test_simulated_latent(tissue):
    truth = tissue.uns["simulated_tissue"]
    centroids = truth["cell_type_centroids"]
    cell_type = tissue.obs["cell_type"].cat.codes.to_numpy()
    latent = tissue.obsm["X_latent"]
    gaps = np.linalg.norm(centroids[:, None] - centroids[None], axis=-1)
    assert gaps[np.triu_indices(len(centroids), 1)].min() >= 2.0
    noise = latent - centroids[cell_type]
    np.testing.assert_allclose(noise.std(axis=0), truth["latent_noise_sd"], rtol=0.05)
    # well separated: every cell is nearest to its own type's centroid
    assert (cKDTree(centroids).query(latent)[1] == cell_type).all()


def test_simulated_counts_follow_model(tissue):
    truth = tissue.uns["simulated_tissue"]
    X = tissue.X
    assert np.array_equal(X.data, np.round(X.data)) and (X.data > 0).all()
    library = tissue.obs["library_size"].to_numpy()
    assert 200 < np.median(library) < 500
    logits = tissue.obsm["X_latent"].astype(np.float64) @ truth["loadings"]
    rates = np.exp(logits - logits.max(axis=1, keepdims=True))
    rates *= (library / rates.sum(axis=1))[:, None]
    # Poisson: the per-gene totals agree with their expectation within a few standard deviations
    observed = np.asarray(X.sum(axis=0)).ravel()
    expected = rates.sum(axis=0)
    assert (np.abs(observed - expected) < 5 * np.sqrt(expected) + 1).all()
    # and the per-cell variance equals the mean
    resid = (X.toarray() - rates) / np.sqrt(rates)
    assert resid.var() == pytest.approx(1.0, abs=0.02)


def test_simulated_h5ad_round_trip(tmp_path):
    for random_state in (5, None):
        adata = sot.datasets.simulated_tissue(300, random_state=random_state)
        path = tmp_path / f"tissue_{random_state}.h5ad"
        adata.write_h5ad(path)
        back = ad.read_h5ad(path)
        _assert_same(adata, back)
        assert back.uns["simulated_tissue"]["params"] == adata.uns["simulated_tissue"]["params"]
        assert back.uns["simulated_tissue"]["side"] == adata.uns["simulated_tissue"]["side"]


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"n_cells": 99}, "n_cells"),
        ({"n_cells": 1000.5}, "n_cells"),
        ({"n_cells": True}, "n_cells"),
        ({"n_niche_types": 0}, "n_niche_types"),
        ({"n_cell_types": 1}, "n_cell_types"),
        ({"n_genes": 1}, "n_genes"),
        ({"n_latent": 0}, "n_latent"),
        ({"regions_per_niche_type": 0}, "regions_per_niche_type"),
        ({"random_state": -1}, "random_state"),
        ({"random_state": "seed"}, "random_state"),
    ],
)
def test_simulated_argument_errors(kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        sot.datasets.simulated_tissue(**{"n_cells": 200, **kwargs})
