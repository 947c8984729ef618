"""Features on disk (backed h5ad, memory maps) and streamed encoding: same results as in memory, bounded reads."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import torch

import spatialot as sot
from spatialot.models import ASOT, HOTET, Wormhole, _batches
from spatialot.models._batches import map_batches
from spatialot.ot import IndexedClouds, PointClouds, _clouds

N_CELLS = 400


class CountingTable:
    """A feature table read by rows, as on disk, that records the number of rows of every read."""

    def __init__(self, array: np.ndarray):
        self.array, self.reads = array, []

    @property
    def shape(self):
        return self.array.shape

    @property
    def dtype(self):
        return self.array.dtype

    def __getitem__(self, rows):
        block = self.array[rows]
        self.reads.append(len(block))
        return block


@pytest.fixture(scope="module")
def tissue() -> ad.AnnData:
    adata = sot.datasets.simulated_tissue(N_CELLS, n_genes=12, random_state=0)
    adata.X = sp.csr_matrix(adata.X, dtype=np.float32)
    adata.obsm["X_latent"] = adata.obsm["X_latent"].astype(np.float32)
    return adata


@pytest.fixture(scope="module", params=["dense", "sparse", "obsm", "memmap"])
def variant(request, tissue, tmp_path_factory) -> tuple[str, ad.AnnData, ad.AnnData, str | None]:
    """(kind, in-memory AnnData, AnnData whose features are on disk, use_rep), niches built on both."""
    folder = tmp_path_factory.mktemp(request.param)
    memory = tissue.copy()
    use_rep = None
    if request.param == "dense":
        memory.X = memory.X.toarray()
    if request.param in ("obsm", "memmap"):
        use_rep = "X_latent"
    memory.write_h5ad(folder / "tissue.h5ad")
    backed = ad.read_h5ad(folder / "tissue.h5ad", backed="r")
    if request.param == "memmap":
        np.save(folder / "latent.npy", memory.obsm["X_latent"])
        backed = memory.copy()
        backed.obsm["X_latent"] = np.load(folder / "latent.npy", mmap_mode="r")
        assert isinstance(backed.obsm["X_latent"], np.memmap)

    for adata in (memory, backed):
        sot.pp.niches(adata, radius=25.0, use_rep=use_rep)  # radius: niches of many sizes
    return request.param, memory, backed, use_rep


def test_features_stay_on_disk(variant):
    kind, _, backed, _ = variant
    family = sot.get.niche_clouds(backed)
    if kind in ("dense", "sparse"):
        assert family.on_disk and backed.isbacked
        assert not isinstance(family.features, np.ndarray) and not sp.issparse(family.features)
    if kind == "memmap":  # the memory map itself, not a copy
        assert np.shares_memory(family.features, backed.obsm["X_latent"])


def test_niches_and_clouds_match_memory(variant):
    _, memory, backed, _ = variant
    assert (memory.obsp["niche_members"] != backed.obsp["niche_members"]).nnz == 0
    assert np.array_equal(memory.obs["niche_size"], backed.obs["niche_size"])
    assert memory.obs["niche_size"].nunique() > 3
    cells = np.random.default_rng(0).permutation(N_CELLS)[:100]
    expected, got = sot.get.niche_clouds(memory)[cells], sot.get.niche_clouds(backed)[cells]
    assert torch.equal(expected.points, got.points) and torch.equal(expected.mask, got.mask)


def test_encode_transform_and_maps_match_memory(variant, monkeypatch):
    _, memory, backed, _ = variant
    in_memory, on_disk = sot.get.niche_clouds(memory), sot.get.niche_clouds(backed)
    # several stretches and several reads per stretch
    monkeypatch.setattr(_batches, "_STRETCH_CLOUDS", 96)
    monkeypatch.setattr(_clouds, "_READ_ROWS", 100)
    monkeypatch.setattr(_clouds, "_SLAB_VALUES", 1000)  # slabs of about 100 rows, lists beyond
    wormhole = Wormhole(in_memory.dim, n_components=6).fit(in_memory, n_steps=3, batch_size=4, progress=False)
    assert np.array_equal(wormhole.encode(in_memory, batch_size=32), wormhole.encode(on_disk, batch_size=32))
    asot = ASOT(in_memory.dim, n_anchors=6).fit(in_memory, random_state=0, progress=False)
    assert np.array_equal(asot.transform(in_memory, batch_size=50), asot.transform(on_disk, batch_size=50))
    hotet = HOTET(in_memory.dim, n_anchors=4).fit(in_memory, n_steps=2, progress=False)
    assert np.array_equal(hotet.embed(in_memory, batch_size=32), hotet.embed(on_disk, batch_size=32))


def test_tools_write_into_the_backed_object(variant):
    kind, memory, backed, _ = variant
    model = sot.tl.wormhole(memory, n_components=4, n_steps=3, batch_size=4, progress=False)
    sot.tl.wormhole(backed, model=model, progress=False)
    assert np.array_equal(backed.obsm["X_wormhole"], memory.obsm["X_wormhole"])
    sot.tl.asot(memory, n_anchors=5, progress=False)
    sot.tl.asot(backed, n_anchors=5, progress=False)
    assert np.array_equal(backed.obsm["X_asot"], memory.obsm["X_asot"])
    if kind != "memmap":
        with pytest.raises(ValueError, match=r"`copy=True` needs an AnnData in memory.*to_memory"):
            sot.tl.wormhole(backed, model=model, copy=True)
        with pytest.raises(ValueError, match=r"`copy=True` needs an AnnData in memory"):
            sot.pp.niches(backed, copy=True)
        with pytest.raises(ValueError, match=r"`adata` is a view of an AnnData backed on disk.*to_memory"):
            sot.pp.niches(backed[:100], k=4)
        assert "niche_members" in backed.obsp  # untouched


def test_backed_results_are_saved_with_write(tissue, tmp_path):
    path = tmp_path / "tissue.h5ad"
    tissue.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r+")
    sot.pp.niches(backed, k=6)
    sot.tl.asot(backed, n_anchors=5, progress=False)
    weights = backed.obsm["X_asot"].copy()
    backed.write()
    backed.file.close()
    again = ad.read_h5ad(path)
    assert np.array_equal(again.obsm["X_asot"], weights)
    assert "niche_members" in again.obsp


def test_backed_features_with_nan_are_refused(tmp_path):
    adata = sot.datasets.simulated_tissue(200, n_genes=5, random_state=0)
    adata.X = adata.X.toarray() if sp.issparse(adata.X) else adata.X
    adata.X[150, 2] = np.nan
    adata.write_h5ad(tmp_path / "nan.h5ad")
    backed = ad.read_h5ad(tmp_path / "nan.h5ad", backed="r")
    with pytest.raises(ValueError, match=r"`adata.X`.*NaN or infinite"):
        sot.pp.niches(backed, k=4)


# ------------------------------------------------------------------ bounded reads, one output


def _family(n: int = 300, dim: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(2 * n, dim)).astype(np.float32)
    indices = rng.integers(0, 2 * n, size=(n, 7))
    mask = np.arange(7)[None, :] < rng.integers(1, 8, size=n)[:, None]  # sizes 1..7, left-aligned
    return features, indices, mask


def test_reads_from_disk_are_bounded(monkeypatch):
    features, indices, mask = _family()
    table = CountingTable(features)
    on_disk, in_memory = IndexedClouds(table, indices, mask), IndexedClouds(features, indices, mask)
    assert on_disk.on_disk and not in_memory.on_disk
    monkeypatch.setattr(_clouds, "_READ_ROWS", 40)
    monkeypatch.setattr(_clouds, "_SLAB_VALUES", 3 * 100)  # slabs of at most 100 rows of 3 values
    monkeypatch.setattr(_batches, "_STRETCH_CLOUDS", 64)
    model = Wormhole(3, n_components=4).fit(in_memory, n_steps=2, batch_size=4, progress=False)
    expected = model.encode(in_memory, batch_size=16)
    assert np.array_equal(model.encode(on_disk, batch_size=16), expected)
    # a read is a list of at most 40 rows or a slab of at most max(2 * 40, 100) rows
    assert table.reads and max(table.reads) <= 100
    # every stretch of 64 clouds reads at most its 64 * 7 member rows, never the table
    stretches = -(-len(on_disk) // 64)
    assert sum(table.reads) <= stretches * 2 * 64 * 7
    assert sum(table.reads) < stretches * len(features)


def test_read_features_order_and_repeats(monkeypatch):
    features, _, _ = _family()
    table = IndexedClouds(CountingTable(features), np.zeros((1, 1), dtype=int))
    rows = np.array([5, 3, 5, 599, 0, 3])
    assert np.array_equal(table.read_features(rows), features[rows])
    assert table.features.reads == [600]  # the slab of rows 0..599 holds fewer than 2**24 values: one read
    monkeypatch.setattr(_clouds, "_SLAB_VALUES", 0)  # slabs only when at most twice the rows needed
    table.features.reads.clear()
    assert np.array_equal(table.read_features(rows), features[rows])
    assert table.features.reads == [4]  # the 4 distinct rows, as a list: a slab 0..599 would be 150 times more
    monkeypatch.setattr(_clouds, "_READ_ROWS", 3)
    table.features.reads.clear()
    assert np.array_equal(table.read_features(rows), features[rows])
    assert table.features.reads == [6, 1]  # rows 0, 3, 5 as one slab of rows 0..5, then row 599


def test_prefetch_keeps_only_the_rows_used():
    features, indices, mask = _family()
    stretch = IndexedClouds(features, indices, mask).prefetch(slice(10, 20))
    used = np.unique(indices[10:20][mask[10:20]])  # the real members only: padding reads nothing
    assert stretch.features.shape == (len(used), 3)
    assert torch.equal(stretch[np.arange(10)].points, IndexedClouds(features, indices, mask)[np.arange(10, 20)].points)


def test_trimmed_batches_are_sorted_by_size_and_results_come_back_in_order(monkeypatch):
    features, indices, mask = _family()
    family = IndexedClouds(features, indices, mask)
    monkeypatch.setattr(_batches, "_STRETCH_CLOUDS", 100)
    widths = []

    def sizes(batch: PointClouds) -> torch.Tensor:
        widths.append((batch.max_size, int(batch.sizes.max()), int(batch.sizes.min())))
        return batch.sizes[:, None].float()

    got = map_batches(sizes, family, batch_size=20, device=torch.device("cpu"), trim=True)
    assert np.array_equal(got[:, 0], family.sizes)  # written back in the order of the family
    assert all(width == largest for width, largest, _ in widths)  # padded to the batch's own largest cloud
    assert sum(width for width, _, _ in widths) < len(widths) * 7
    untrimmed = map_batches(sizes, family, batch_size=20, device=torch.device("cpu"))
    assert np.array_equal(untrimmed, got)


def test_trimmed_encoding_matches_padded():
    features, indices, mask = _family()
    family = IndexedClouds(features, indices, mask)
    padded = family.gather()
    model = Wormhole(3, n_components=4).fit(family, n_steps=2, batch_size=4, progress=False)
    np.testing.assert_allclose(model.encode(family, batch_size=16), model.encode(padded, batch_size=300), atol=1e-5)


def test_results_are_written_into_out(tmp_path):
    features, indices, mask = _family()
    family = IndexedClouds(features, indices, mask)
    model = Wormhole(3, n_components=4).fit(family, n_steps=2, batch_size=4, progress=False)
    out = np.lib.format.open_memmap(tmp_path / "embedding.npy", mode="w+", dtype=np.float32, shape=(300, 4))
    assert model.encode(family, out=out) is out
    out.flush()
    assert np.array_equal(np.load(tmp_path / "embedding.npy"), model.encode(family))
    with pytest.raises(ValueError, match=r"`out` has shape \(300, 5\), but the results have shape \(300, 4\)"):
        model.encode(family, out=np.zeros((300, 5), dtype=np.float32))
    with pytest.raises(ValueError, match=r"`out` must have one row per cloud \(300\)"):
        model.encode(family, out=np.zeros((10, 4), dtype=np.float32))
    asot = ASOT(3, n_anchors=4).fit(family, random_state=0, progress=False)
    weights = np.zeros((300, 4), dtype=np.float32)
    assert asot.transform(family, out=weights) is weights and np.allclose(weights.sum(1), 1)
    hotet = HOTET(3, n_anchors=4).fit(family, n_steps=2, progress=False)
    embedding = np.zeros((300, 12), dtype=np.float32)
    assert hotet.embed(family, out=embedding) is embedding
    np.testing.assert_allclose(
        embedding, hotet.inverse_transport(family.gather()).reshape(300, -1) / 2, atol=1e-5, rtol=1e-5
    )


def test_pooled_moments_average_the_clouds_moments(monkeypatch):
    features, indices, mask = _family()
    family = IndexedClouds(CountingTable(features.astype(np.float64)), indices, mask)
    monkeypatch.setattr(_batches, "_STRETCH_CLOUDS", 64)
    mean, second, largest = _batches.pooled_moments(family, device=torch.device("cpu"), batch_size=16)
    means, covariances = _batches.family_moments(IndexedClouds(features, indices, mask), device=torch.device("cpu"))
    means, covariances = means.astype(np.float64), covariances.astype(np.float64)
    np.testing.assert_allclose(mean, means.mean(0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(second, (covariances + means[:, :, None] * means[:, None, :]).mean(0), rtol=1e-6)
    assert largest == pytest.approx(np.abs(covariances).max(), rel=1e-6)
