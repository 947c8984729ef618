import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import squidpy as sq
import torch

import spatialot as sot


def _grid_adata(side=3, n_genes=4, *, seed=0):
    """Cells on a unit grid; gene values are random so that clouds can be told apart."""
    xs, ys = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
    coordinates = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(float)
    rng = np.random.default_rng(seed)
    adata = ad.AnnData(X=rng.normal(size=(side * side, n_genes)).astype(np.float32))
    adata.obsm["spatial"] = coordinates
    return adata


def _random_adata(n_obs=200, n_genes=5, dims=2, *, seed=0):
    rng = np.random.default_rng(seed)
    adata = ad.AnnData(X=rng.poisson(2.0, size=(n_obs, n_genes)).astype(np.float32))
    adata.obsm["spatial"] = rng.uniform(0, 100, size=(n_obs, dims))
    adata.obsm["X_pca"] = rng.normal(size=(n_obs, 3))
    adata.layers["counts"] = sp.csr_matrix(adata.X)
    return adata


def _position(side, x, y):
    return x * side + y


def _snapshot(adata):
    return (set(adata.obs), set(adata.obsm), set(adata.uns), set(adata.obsp), set(adata.layers))


def _rows(adata, niche_key="niche"):
    """The niche index rows (padded with -1) and their mask, as every tool reads them."""
    family = sot.get.niche_clouds(adata, niche_key=niche_key)
    return np.where(family.mask, family.indices, -1), family.mask


def test_knn_on_grid_contains_the_closest_cells():
    adata = _grid_adata()
    sot.pp.niches(adata, k=5)
    indices, mask = _rows(adata)
    assert indices.shape == (9, 5)
    assert mask.all()
    center = _position(3, 1, 1)
    assert indices[center, 0] == center
    expected = {center} | {_position(3, x, y) for x, y in [(0, 1), (2, 1), (1, 0), (1, 2)]}
    assert set(indices[center]) == expected
    # every cell opens its own niche
    np.testing.assert_array_equal(indices[:, 0], np.arange(9))

    sot.pp.niches(adata, k=4, key_added="small")
    corner = _position(3, 0, 0)
    expected = {corner, _position(3, 0, 1), _position(3, 1, 0), _position(3, 1, 1)}
    assert set(_rows(adata, "small")[0][corner]) == expected


def test_knn_without_center_excludes_the_cell():
    adata = _random_adata()
    sot.pp.niches(adata, k=6, include_center=False)
    indices, _ = _rows(adata)
    assert indices.shape == (200, 6)
    assert not (indices == np.arange(200)[:, None]).any()
    assert all(len(set(row)) == 6 for row in indices)
    # the neighbours are the 6 closest cells
    coords = adata.obsm["spatial"]
    distances = np.linalg.norm(coords[:, None] - coords[None], axis=-1)
    np.fill_diagonal(distances, np.inf)
    closest = np.argsort(distances, axis=1)[:, :6]
    for row, expected in zip(indices, closest, strict=True):
        assert set(row) == set(expected)


def test_knn_with_duplicated_coordinates_keeps_center_once():
    adata = _grid_adata()
    adata.obsm["spatial"][1] = adata.obsm["spatial"][0]
    sot.pp.niches(adata, k=4)
    indices, _ = _rows(adata)
    np.testing.assert_array_equal(indices[:, 0], np.arange(9))
    assert all(len(set(row)) == 4 for row in indices)


def test_three_dimensional_coordinates():
    adata = _random_adata(dims=3)
    sot.pp.niches(adata, k=5, include_center=False)
    coords = adata.obsm["spatial"]
    distances = np.linalg.norm(coords[:, None] - coords[None], axis=-1)
    np.fill_diagonal(distances, np.inf)
    assert set(_rows(adata)[0][7]) == set(np.argsort(distances[7])[:5])


def test_libraries_never_mix():
    adata = ad.concat([_random_adata(seed=1), _random_adata(seed=1)], label="sample", index_unique="-")
    sot.pp.niches(adata, k=8, library_key="sample")
    library = adata.obs["sample"].to_numpy()
    indices, _ = _rows(adata)
    assert (library[indices] == library[:, None]).all()
    # identical samples give the same niches, shifted by the sample offset
    np.testing.assert_array_equal(indices[200:] - 200, indices[:200])


def test_radius_niches_vary_in_size_and_are_masked():
    adata = _grid_adata()
    sot.pp.niches(adata, radius=1.01)
    indices, mask = _rows(adata)
    assert indices.shape == (9, 5)
    sizes = mask.sum(1)
    assert sizes[_position(3, 1, 1)] == 5 and sizes[_position(3, 0, 0)] == 3 and sizes[_position(3, 0, 1)] == 4
    assert (indices[~mask] == -1).all()
    assert set(indices[_position(3, 0, 0)][mask[_position(3, 0, 0)]]) == {0, 1, 3}
    assert adata.uns["niche"]["params"]["radius"] == pytest.approx(1.01)

    clouds = sot.get.niche_clouds(adata)[[0, 4]]
    assert clouds.mask.sum(1).tolist() == [3, 5]
    np.testing.assert_allclose(clouds.weights.sum(1).numpy(), 1, rtol=1e-6)
    np.testing.assert_allclose(clouds.points[0, :3].numpy(), adata.X[indices[0, :3]])


def test_squidpy_graph_is_reused():
    adata = _random_adata()
    sq.gr.spatial_neighbors_knn(adata, n_neighs=4)
    sot.pp.niches(adata, connectivity_key="spatial_connectivities", key_added="graph")
    sot.pp.niches(adata, k=5, key_added="knn")
    graph_rows, _ = _rows(adata, "graph")
    assert graph_rows.shape == (200, 5)  # the centre and squidpy's 4 neighbours
    for graph_row, knn_row in zip(graph_rows, _rows(adata, "knn")[0], strict=True):
        assert set(graph_row) == set(knn_row)
    assert adata.uns["graph"]["params"]["connectivity_key"] == "spatial_connectivities"


def test_graph_edges_across_libraries_are_dropped():
    adata = _grid_adata()
    adata.obs["sample"] = pd.Categorical(["a"] * 4 + ["b"] * 5)
    adata.obsp["full"] = sp.csr_matrix(np.ones((9, 9)))
    sot.pp.niches(adata, connectivity_key="full", library_key="sample")
    indices, mask = _rows(adata)
    assert mask.sum(1).tolist() == [4] * 4 + [5] * 5
    library = adata.obs["sample"].to_numpy()
    for i, (row, keep) in enumerate(zip(indices, mask, strict=True)):
        assert (library[row[keep]] == library[i]).all()


@pytest.mark.parametrize("source", [{}, {"layer": "counts"}, {"use_rep": "X_pca"}])
def test_clouds_gather_the_chosen_features(source):
    adata = _random_adata()
    sot.pp.niches(adata, k=4, **source)
    family = sot.get.niche_clouds(adata)
    assert len(family) == 200 and family.max_size == 4
    batch = family.gather([3, 10], dtype=torch.float64)
    features = adata.obsm["X_pca"] if "use_rep" in source else adata.X
    np.testing.assert_allclose(batch.points.numpy(), features[_rows(adata)[0][[3, 10]]], rtol=1e-6)
    assert batch.points.dtype == torch.float64 and batch.mask.all()


def test_h5ad_round_trip(tmp_path):
    adata = _random_adata()
    sot.pp.niches(adata, radius=12.0, use_rep="X_pca")
    path = tmp_path / "niches.h5ad"
    adata.write_h5ad(path)
    back = ad.read_h5ad(path)
    for stored, written in zip(_rows(back), _rows(adata), strict=True):
        np.testing.assert_array_equal(stored, written)
    assert back.uns["niche"]["params"] == adata.uns["niche"]["params"]
    np.testing.assert_allclose(
        sot.get.niche_clouds(back)[:20].points.numpy(), sot.get.niche_clouds(adata)[:20].points.numpy()
    )


def test_copy_returns_new_object_and_leaves_input():
    adata = _random_adata()
    before = _snapshot(adata)
    result = sot.pp.niches(adata, k=3, copy=True)
    assert _snapshot(adata) == before
    assert "niche_members" in result.obsp and "niche_size" in result.obs
    assert sot.pp.niches(adata, k=3) is None


def test_rerun_replaces_the_niches_and_drops_legacy_index():
    adata = _grid_adata()
    sot.pp.niches(adata, radius=1.01)
    # what an earlier version wrote: row positions that no subset or reorder kept right
    adata.obsm["niche_indices"] = np.zeros((9, 3), dtype=int)
    adata.obsm["niche_mask"] = np.ones((9, 3), dtype=bool)
    sot.pp.niches(adata, k=3)
    assert "niche_indices" not in adata.obsm and "niche_mask" not in adata.obsm
    assert sot.get.niche_clouds(adata)[:].mask.all()
    assert (adata.obs["niche_size"] == 3).all()


def _nan_coordinates(adata):
    adata.obsm["spatial"][0, 0] = np.nan


def _nan_features(adata):
    adata.X[0, 0] = np.nan


@pytest.mark.parametrize(
    ("prepare", "kwargs", "error", "match"),
    [
        (None, {"spatial_key": "xy"}, KeyError, "spatial_key"),
        (None, {"library_key": "batch"}, KeyError, "library_key"),
        (None, {"use_rep": "X_umap"}, KeyError, "use_rep"),
        (None, {"layer": "raw"}, KeyError, "layer"),
        (None, {"connectivity_key": "spatial_connectivities"}, KeyError, "connectivity_key"),
        (None, {"use_rep": "X_pca", "layer": "counts"}, ValueError, "use_rep"),
        (None, {"k": 500}, ValueError, "`k`=500"),
        (None, {"k": 0}, ValueError, "`k`"),
        (None, {"radius": -1.0}, ValueError, "radius"),
        (None, {"radius": 0.001, "include_center": False}, ValueError, "empty niche"),
        (_nan_coordinates, {}, ValueError, "NaN"),
        (_nan_features, {}, ValueError, "NaN"),
    ],
)
def test_bad_input_raises_and_leaves_adata_untouched(prepare, kwargs, error, match):
    adata = _random_adata()
    if prepare is not None:
        prepare(adata)
    before = _snapshot(adata)
    with pytest.raises(error, match=match):
        sot.pp.niches(adata, **kwargs)
    assert _snapshot(adata) == before


def test_k_larger_than_a_library_names_the_library():
    adata = _random_adata()
    adata.obs["sample"] = pd.Categorical(["big"] * 195 + ["tiny"] * 5)
    with pytest.raises(ValueError, match="'tiny'"):
        sot.pp.niches(adata, k=8, library_key="sample")


def test_niche_clouds_errors():
    adata = _random_adata()
    with pytest.raises(KeyError, match="niche_key"):
        sot.get.niche_clouds(adata)
    with pytest.raises(ValueError, match="`niche_key` must be a non-empty string"):
        sot.get.niche_clouds(adata, niche_key="a/b")
