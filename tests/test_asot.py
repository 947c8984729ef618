import anndata as ad
import numpy as np
import ot as pot
import pytest
import scanpy as sc
import scipy.sparse as sp
import torch
from matplotlib.axes import Axes

import spatialot as sot
import spatialot.models._asot as asot_module
from spatialot.models import ASOT
from spatialot.models._asot import _weighted_points
from spatialot.ot import (
    IndexedClouds,
    PointClouds,
    anchor_cost,
    anchor_exact,
    anchor_kneighbors,
    anchor_paired_distances,
    anchor_pairwise_distances,
    anchor_sinkhorn,
)
from spatialot.tl._asot import _fuzzy_simplicial_set, _gauss_kernel


def _histograms(n, k, *, seed=0, sparsity=0.0):
    rng = np.random.default_rng(seed)
    h = rng.random((n, k)) * (rng.random((n, k)) >= sparsity)
    h[:, 0] += 1e-3  # every row keeps some mass
    return h / h.sum(1, keepdims=True)


def _clustered_clouds(n_clouds=120, size=6, dim=4, *, seed=0):
    """Clouds drawn around a few centres with cloud-specific mixtures: structured, like niches."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=3.0, size=(6, dim))
    mixtures = rng.dirichlet(np.full(6, 0.5), size=n_clouds)
    labels = np.stack([rng.choice(6, size=size, p=m) for m in mixtures])
    points = centres[labels] + rng.normal(scale=0.7, size=(n_clouds, size, dim))
    return PointClouds.from_padded(points)


@pytest.fixture(scope="module")
def tissue():
    adata = sot.datasets.simulated_tissue(300, random_state=0)
    sot.pp.niches(adata, k=6, use_rep="X_latent")
    return adata


@pytest.fixture(scope="module")
def fitted(tissue):
    """The tissue after ``tl.asot`` and ``tl.asot_neighbors``, and the model."""
    adata = tissue.copy()
    model = sot.tl.asot(adata, n_anchors=12, progress=False)
    sot.tl.asot_neighbors(adata, n_neighbors=10, progress=False)
    return adata, model


# ------------------------------------------------------------------------------------------ solver


@pytest.mark.parametrize("relative_epsilon", [0.2, 0.02, 0.003])  # float32 kernel, float64 kernel, log domain
def test_anchor_sinkhorn_matches_pot(relative_epsilon):
    rng = np.random.default_rng(1)
    cost = anchor_cost(rng.normal(size=(7, 3))).double()
    a, b = _histograms(5, 7, seed=2, sparsity=0.3), _histograms(5, 7, seed=3)
    epsilon = relative_epsilon * float(cost.max())
    dtype = torch.float64 if relative_epsilon < 0.01 else torch.float32  # float32 logs lose digits at tiny epsilon
    value = anchor_sinkhorn(torch.tensor(a, dtype=dtype), torch.tensor(b, dtype=dtype), cost.to(dtype),
                            epsilon=epsilon, n_iter=3000).double().numpy()  # fmt: skip
    for p in range(5):
        rows = a[p] > 0  # zero weights leave the problem unchanged
        sub = cost.numpy()[rows]
        plan = pot.sinkhorn(a[p, rows], b[p], sub, epsilon, numItermax=100_000, stopThr=1e-11)
        np.testing.assert_allclose(value[p], (plan * sub).sum(), rtol=2e-3, atol=1e-5)


def test_anchor_cost_is_squared_euclidean():
    anchors = np.array([[0.0, 0.0], [3.0, 4.0]])
    np.testing.assert_allclose(anchor_cost(anchors).numpy(), [[0.0, 25.0], [25.0, 0.0]])


def test_anchors_equal_to_the_points_give_exact_ot():
    rng = np.random.default_rng(0)
    clouds = [rng.normal(size=(n, 3)) for n in (4, 5, 6)]
    clouds[2][:2] += 3.0
    weights = [rng.random(len(c)) + 0.1 for c in clouds]
    batch = PointClouds.from_list(clouds, weights, dtype=torch.float64)
    model = ASOT.from_anchors(np.concatenate(clouds), device="cpu")
    h = model.transform(batch)
    first, second = np.triu_indices(3, k=1)
    exact = sot.ot.exact_w2_squared(batch[first], batch[second])
    matrix = model.pairwise_distances(h, method="exact")
    np.testing.assert_allclose(matrix[first, second], exact, rtol=1e-5)
    # entropic OT on the anchors tends to the same value for small epsilon
    cost = model.cost().double()
    small = anchor_paired_distances(h[first], h[second], cost, epsilon=2e-3 * float(cost.max()), n_iter=3000)
    np.testing.assert_allclose(small, exact, rtol=2e-2)


def test_pairwise_is_symmetric_with_zero_diagonal_and_chunks_agree():
    h = torch.tensor(_histograms(23, 6, seed=4, sparsity=0.4), dtype=torch.float32)
    cost = anchor_cost(np.random.default_rng(5).normal(size=(6, 2)))
    kwargs = {"epsilon": 0.1 * float(cost.max()), "n_iter": 50}
    full = anchor_pairwise_distances(h, None, cost, **kwargs)
    chunked = anchor_pairwise_distances(h, None, cost, batch_size=7, **kwargs)
    np.testing.assert_allclose(full, chunked, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(full, full.T)
    np.testing.assert_array_equal(np.diag(full), 0)
    rectangular = anchor_pairwise_distances(h[:5], h, cost, batch_size=11, **kwargs)
    off = ~np.eye(5, 23, dtype=bool)
    np.testing.assert_allclose(rectangular[off], full[:5][off], rtol=1e-4)
    paired = anchor_paired_distances(h[:5], h[5:10], cost, batch_size=2, **kwargs)
    np.testing.assert_allclose(paired, full[np.arange(5), np.arange(5, 10)], rtol=1e-4)
    exact = anchor_pairwise_distances(h[:4], h[4:8], cost, method="exact")
    np.testing.assert_allclose(exact[0], anchor_exact(h[[0] * 4].numpy(), h[4:8].numpy(), cost.numpy()))


def test_kneighbors_pruned_by_the_lower_bound_match_all_pairs():
    rng = np.random.default_rng(6)
    points = rng.normal(size=(8, 3))
    h = _histograms(60, 8, seed=7, sparsity=0.6)
    cost = anchor_cost(points)
    kwargs = {"epsilon": 0.05 * float(cost.max()), "n_iter": 30}
    matrix = anchor_pairwise_distances(h, h, cost, **kwargs)
    # identical histograms (rows with all their mass on anchor 0) count once: the first copy of
    # each histogram is the only candidate, and never for a copy of itself
    _, first, inverse = np.unique(h, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    assert len(first) < len(h)
    matrix[:, ~np.isin(np.arange(len(h)), first)] = np.inf
    matrix[inverse[:, None] == inverse[None, :]] = np.inf
    np.fill_diagonal(matrix, -1)
    expected = np.sort(matrix, axis=1)[:, :5]
    expected[:, 0] = 0
    # every other copy lists its first copy at 0, then the first copy's list
    later = np.flatnonzero(~np.isin(np.arange(len(h)), first))
    expected[later, 2:], expected[later, 1] = expected[later, 1:-1], 0.0
    for extra in ({}, {"anchor_points": points}):
        indices, distances = anchor_kneighbors(h, cost, 5, batch_size=97, **kwargs, **extra)
        np.testing.assert_allclose(distances, expected, rtol=1e-4, atol=1e-6)
        np.testing.assert_array_equal(indices[:, 0], np.arange(60))
        np.testing.assert_array_equal(indices[later, 1], first[inverse[later]])


def test_kneighbors_count_identical_histograms_once():
    # anchors on a line, so exact W2^2 between these histograms is known: delta_0 to delta_1 is 1,
    # delta_0 to 0.75 delta_0 + 0.25 delta_1 is 0.25, delta_1 to it 0.75, delta_3 to it 7.75
    cost = anchor_cost(np.array([[0.0], [1.0], [2.0], [3.0]]))
    delta = np.eye(4)
    h = np.stack([delta[0], delta[0], delta[0], delta[1], delta[3], 0.75 * delta[0] + 0.25 * delta[1]])
    indices, distances = anchor_kneighbors(h, cost, 3, method="exact")
    # the copies of delta_0 (rows 0-2) do not fill each other's lists: rows 1 and 2 list row 0 at
    # distance 0, then row 0's list
    np.testing.assert_array_equal(indices, [[0, 5, 3], [1, 0, 5], [2, 0, 5], [3, 5, 0], [4, 3, 5], [5, 0, 3]])
    expected = [[0, 0.25, 1], [0, 0, 0.25], [0, 0, 0.25], [0, 0.75, 1], [0, 4, 7.75], [0, 0.25, 0.75]]
    np.testing.assert_allclose(distances, expected, atol=1e-6)
    # fewer distinct histograms than neighbours: the rows are used as they are
    indices, distances = anchor_kneighbors(h[:4], cost, 3, method="exact")
    np.testing.assert_allclose(distances[0], [0, 0, 0], atol=1e-9)


def test_kneighbors_debiased_match_all_pairs_minus_self_costs():
    rng = np.random.default_rng(8)
    points = rng.normal(size=(8, 3))
    h = _histograms(50, 8, seed=9)
    cost = anchor_cost(points)
    kwargs = {"epsilon": 0.1 * float(cost.max()), "n_iter": 30}
    matrix = anchor_pairwise_distances(h, h, cost, **kwargs)
    self_cost = anchor_paired_distances(h, h, cost, **kwargs)
    assert self_cost.min() > 0  # the entropic plan of a histogram with itself moves mass
    debiased = matrix - 0.5 * self_cost[:, None] - 0.5 * self_cost[None, :]
    np.fill_diagonal(debiased, -np.inf)
    expected = np.maximum(np.sort(debiased, axis=1)[:, :4], 0)
    for extra in ({}, {"anchor_points": points}):
        indices, distances = anchor_kneighbors(h, cost, 4, debias=True, batch_size=61, **kwargs, **extra)
        np.testing.assert_allclose(distances, expected, rtol=1e-4, atol=1e-6)
    # exact OT has no self-cost: debias changes nothing
    plain = anchor_kneighbors(h[:12], cost, 3, method="exact")
    debiased_exact = anchor_kneighbors(h[:12], cost, 3, method="exact", debias=True)
    np.testing.assert_array_equal(plain[0], debiased_exact[0])


def test_kneighbors_rerank_euclidean_candidates_by_ot():
    from sklearn.neighbors import NearestNeighbors

    rng = np.random.default_rng(3)
    points = rng.normal(size=(8, 3))
    h = _histograms(40, 8, seed=4, sparsity=0.5)
    cost = anchor_cost(points)
    kwargs = {"epsilon": 0.05 * float(cost.max()), "n_iter": 30, "debias": True}
    # every histogram a candidate: the OT kNN itself
    exact = anchor_kneighbors(h, cost, 5, anchor_points=points, **kwargs)
    everything = anchor_kneighbors(h, cost, 5, n_candidates=40, batch_size=33, **kwargs)
    np.testing.assert_array_equal(everything[0], exact[0])
    np.testing.assert_allclose(everything[1], exact[1], rtol=1e-5, atol=1e-7)
    # as many candidates as neighbours: the Euclidean lists, with their debiased OT distances, sorted
    indices, distances = anchor_kneighbors(h, cost, 5, n_candidates=5, **kwargs)
    euclidean = NearestNeighbors(n_neighbors=5).fit(h).kneighbors(h, return_distance=False)
    np.testing.assert_array_equal(np.sort(indices, 1), np.sort(euclidean, 1))
    options = {"epsilon": kwargs["epsilon"], "n_iter": 30}
    half = 0.5 * anchor_paired_distances(h, h, cost, **options)

    def debiased(rows, columns):  # row to column, as solved (Sinkhorn after 30 steps is not symmetric)
        rows, columns = np.broadcast_arrays(rows, columns)
        values = anchor_paired_distances(h[rows.ravel()], h[columns.ravel()], cost, **options).reshape(rows.shape)
        return np.maximum(values - half[rows] - half[columns], 0)

    rows = np.arange(40)[:, None]
    np.testing.assert_allclose(distances[:, 1:], debiased(rows, indices[:, 1:]), rtol=1e-4, atol=1e-6)
    assert (np.diff(distances, axis=1) >= 0).all()
    # twice as many: OT keeps the nearest of the ten
    indices, distances = anchor_kneighbors(h, cost, 5, n_candidates=10, **kwargs)
    ten = NearestNeighbors(n_neighbors=10).fit(h).kneighbors(h, return_distance=False)
    assert all(set(row) <= set(pool) for row, pool in zip(indices, ten, strict=True))
    within = debiased(rows, ten)
    within[ten == rows] = -1
    np.testing.assert_allclose(distances[:, 1:], np.sort(within, 1)[:, 1:5], rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="n_candidates"):
        anchor_kneighbors(h, cost, 5, n_candidates=4, **kwargs)


def test_kneighbors_of_a_composition_lattice_stay_connected():
    # two "cell types", each two anchors 0.1 apart, the types 10 apart: every niche of 4 points
    # is one of 35 compositions, each held by 6 identical niches. OT moves a point within a type
    # for 0.01 / 4 and across types for about 100 / 4, so the OT kNN keeps each number of points
    # per type apart (a component each); the Euclidean candidates mix them, and copies link
    from scipy.sparse.csgraph import connected_components

    from spatialot.tl._asot import _graph

    cost = anchor_cost(np.array([[0.0], [0.1], [10.0], [10.1]]))
    counts = np.array([c for c in np.ndindex(5, 5, 5, 5) if sum(c) == 4], dtype=float)
    h = np.repeat(counts / 4, 6, axis=0)
    kwargs = {"epsilon": 0.04 * float(cost.max()), "n_iter": 50, "debias": True}
    plain = anchor_kneighbors(h, cost, 5, **kwargs)
    assert connected_components(_graph(*plain, len(h), 5)[1])[0] > 1
    indices, distances = anchor_kneighbors(h, cost, 5, n_candidates=5, **kwargs)
    distance_matrix, connectivities = _graph(indices, distances, len(h), 5)
    assert connected_components(connectivities)[0] == 1
    # identical niches: at distance 0 and joined with full weight
    for copy in range(1, 6):
        assert indices[copy, 1] == 0 and distances[copy, 1] == 0
        assert connectivities[copy, 0] == pytest.approx(1.0)


def test_graph_kernels_match_scanpy_and_umap_closed_forms():
    # scanpy's method='gauss' on sparse kNN distances, and UMAP's fuzzy simplicial set, on the
    # Euclidean kNN of points in general position (symmetric distances, no ties)
    from scanpy.neighbors import _connectivity
    from scipy.optimize import brentq
    from sklearn.neighbors import NearestNeighbors

    x = np.random.default_rng(0).normal(size=(80, 3))
    distances, indices = NearestNeighbors(n_neighbors=7).fit(x).kneighbors(x)
    rows = np.repeat(np.arange(80), 6)
    sparse = sp.csr_matrix((distances[:, 1:].ravel(), (rows, indices[:, 1:].ravel())), shape=(80, 80))
    expected = _connectivity.gauss(sparse, 7, knn=True)
    gauss = _gauss_kernel(indices, distances)
    np.testing.assert_allclose(gauss.toarray(), expected.toarray(), rtol=1e-5, atol=1e-7)
    # by hand for one listed pair: sigma_i^2 the median squared distance of i's six neighbours
    i, j = 0, indices[0, 1]
    s_i, s_j = np.median(distances[i, 1:] ** 2), np.median(distances[j, 1:] ** 2)
    by_hand = np.sqrt(2 * np.sqrt(s_i * s_j) / (s_i + s_j)) * np.exp(-(distances[0, 1] ** 2) / (s_i + s_j))
    assert gauss[i, j] == pytest.approx(by_hand, rel=1e-5) and gauss[j, i] == gauss[i, j]
    # UMAP: each row's directed weights are exp(-(d - rho) / sigma), rho the nearest distance (weight
    # 1) and sigma such that they sum to log2(k); the union is a + a.T - a * a.T
    directed = np.zeros((80, 80))
    for row in range(80):
        gaps = distances[row, 1:] - distances[row, 1]
        sigma = brentq(lambda s, g=gaps: np.exp(-g / s).sum() - np.log2(7), 1e-6, 1e3, xtol=1e-12)
        directed[row, indices[row, 1:]] = np.exp(-gaps / sigma)
    umap = _fuzzy_simplicial_set(indices, distances.astype(np.float32)).toarray()
    np.testing.assert_allclose(umap, directed + directed.T - directed * directed.T, rtol=1e-4, atol=1e-6)


def test_gauss_kernel_keeps_copies_finite():
    # a row whose median distance is 0 (copies) takes the floor width, not a division by 0
    indices = np.array([[0, 1, 2], [1, 0, 2], [2, 0, 1]])
    distances = np.array([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    graph = _gauss_kernel(indices, distances).toarray()
    assert np.isfinite(graph).all() and graph[0, 1] == pytest.approx(1.0)
    assert (graph == graph.T).all() and (np.diag(graph) == 0).all()


def test_solver_errors():
    h = torch.tensor(_histograms(3, 4), dtype=torch.float32)
    cost = anchor_cost(np.eye(4))
    with pytest.raises(ValueError, match="epsilon"):
        anchor_sinkhorn(h, h, cost, epsilon=0)
    with pytest.raises(ValueError, match="sum to 1"):
        anchor_pairwise_distances(2 * h, None, cost, epsilon=0.1)
    with pytest.raises(ValueError, match="cost"):
        anchor_pairwise_distances(h, None, cost[:3], epsilon=0.1)
    with pytest.raises(ValueError, match="method"):
        anchor_paired_distances(h, h, cost, method="emd", epsilon=0.1)
    with pytest.raises(ValueError, match="n_neighbors"):
        anchor_kneighbors(h, cost, 4, epsilon=0.1)


# ------------------------------------------------------------------------------------------ model


def test_weights_are_on_the_simplex_and_ml_beats_kmeans():
    clouds = _clustered_clouds()
    kmeans = ASOT(clouds.dim, 8).fit(clouds, device="cpu", progress=False)
    ml = ASOT(clouds.dim, 8, method="ml").fit(
        clouds, n_train_pairs=512, n_steps=150, learning_rate=2e-2, device="cpu", progress=False
    )
    for model in (kmeans, ml):
        h = model.transform(clouds)
        assert h.shape == (len(clouds), 8)
        assert (h >= 0).all()
        np.testing.assert_allclose(h.sum(1), 1, atol=1e-5)
    hard = kmeans.transform(clouds)
    assert set(np.unique(hard * 6)) <= set(range(7))  # one-hot codes: multiples of 1/size

    rng = np.random.default_rng(11)  # pairs the training never saw (a different seed)
    first, second = rng.integers(0, len(clouds), 300), rng.integers(0, len(clouds), 300)
    keep = first != second
    exact = sot.ot.exact_w2_squared(clouds[first[keep]], clouds[second[keep]])

    def error(model):
        h = model.transform(clouds)
        values = model.paired_distances(h[first[keep]], h[second[keep]])
        return np.sqrt(np.mean((values - exact) ** 2) / np.mean(exact**2))

    assert error(ml) < 0.85 * error(kmeans)  # 0.090 against 0.128 when written
    assert len(ml.history) == 150 and ml.history[-1] < ml.history[0]


def _dl_on_a_known_dictionary(dictionary, *, n_layers=400):
    """An ASOT-DL model whose dictionary is ``dictionary`` (centre 0, scale 1) and whose sparsity is 0."""
    model = ASOT(dictionary.shape[1], dictionary.shape[0], method="dl", n_layers=n_layers)
    with torch.no_grad():
        model.anchors.copy_(torch.as_tensor(dictionary, dtype=torch.float32))
        model.sparsity[-2].bias.fill_(-1e3)  # lambda(x) = relu(... - 1e3) = 0: plain non-negative least squares
        model.fitted.fill_(True)
    return model


def test_dl_codes_points_on_the_dictionary_exactly():
    rng = np.random.default_rng(0)
    dictionary, _ = np.linalg.qr(rng.normal(size=(5, 3)))  # 3 orthonormal atoms in 5-D, as rows
    dictionary = dictionary.T * np.array([[1.0], [2.0], [0.5]])
    model = _dl_on_a_known_dictionary(dictionary)
    codes = rng.random((40, 3)) * (rng.random((40, 3)) < 0.6)  # non-negative, some exactly 0
    points = codes @ dictionary
    found = model.sparse_codes(points)
    # full column rank and lambda = 0: the non-negative least-squares code is unique, and ISTA reaches it
    np.testing.assert_allclose(found, codes, atol=1e-5)
    np.testing.assert_allclose(found @ dictionary, points, atol=1e-5)
    # a cloud's weights are its points' codes, each normalised to sum 1, averaged
    clouds = PointClouds.from_padded(points[:36].reshape(6, 6, 5))
    expected = codes[:36] / np.maximum(codes[:36].sum(1, keepdims=True), 1e-30)
    weights = model.transform(clouds)
    assert (weights >= 0).all()
    np.testing.assert_allclose(weights.sum(1), 1, atol=1e-5)
    zero = codes[:36].sum(1) == 0  # a point coded all zero takes its nearest atom (the shortest, index 2)
    expected[zero] = np.eye(3)[np.argmin((dictionary**2).sum(1))]
    np.testing.assert_allclose(weights, expected.reshape(6, 6, 3).mean(1), atol=1e-5)


def test_dl_codes_are_non_negative_and_fit_learns_a_clustered_family():
    clouds = _clustered_clouds()
    model = ASOT(clouds.dim, 6, method="dl").fit(clouds, n_steps=150, device="cpu", progress=False)
    assert repr(model) == "ASOT(dim=4, n_anchors=6, method='dl', n_layers=20), trained on 120 clouds for 150 steps"
    assert len(model.history) == 150 and np.mean(model.history[-10:]) < np.mean(model.history[:10])
    points = clouds.points[clouds.mask].numpy()
    codes = model.sparse_codes(points)
    assert codes.shape == (len(points), 6) and (codes >= 0).all()
    # the loss makes codes pick one atom with weight about 1, which reconstructs the point
    center = model.center.numpy()
    reconstruction = codes @ (model.anchor_positions() - center) + center
    relative = ((reconstruction - points) ** 2).sum() / ((points - points.mean(0)) ** 2).sum()
    assert relative < 0.2
    h = model.transform(clouds)
    assert h.shape == (len(clouds), 6) and (h >= 0).all()
    np.testing.assert_allclose(h.sum(1), 1, atol=1e-5)
    rng = np.random.default_rng(11)
    first, second = rng.integers(0, len(clouds), 200), rng.integers(0, len(clouds), 200)
    keep = first != second
    exact = sot.ot.exact_w2_squared(clouds[first[keep]], clouds[second[keep]])
    values = model.paired_distances(h[first[keep]], h[second[keep]])
    assert np.corrcoef(values, exact)[0, 1] > 0.85  # 0.876 when written (6 anchors)


def test_dl_fit_is_reproducible_whatever_ran_before():
    # the sparsity network was drawn by the constructor from torch's global generator, so two
    # processes with the same random_state fitted different models
    clouds = _clustered_clouds(n_clouds=40)
    fitted = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        model = ASOT(clouds.dim, 5, method="dl").fit(clouds, n_steps=20, random_state=3, device="cpu", progress=False)
        fitted.append(model)
    first, second = fitted
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items(), strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=name)
    np.testing.assert_array_equal(first.transform(clouds), second.transform(clouds))
    other = ASOT(clouds.dim, 5, method="dl").fit(clouds, n_steps=20, random_state=4, device="cpu", progress=False)
    assert not np.array_equal(other.sparsity[0].weight.detach().numpy(), first.sparsity[0].weight.detach().numpy())


def test_save_load_round_trip(tmp_path):
    clouds = _clustered_clouds(n_clouds=40)
    for method in ("kmeans", "ml", "dl"):
        model = ASOT(clouds.dim, 5, method=method).fit(
            clouds, n_steps=5, n_train_pairs=64, device="cpu", progress=False
        )
        model.save(tmp_path / f"{method}.pt")
        loaded = ASOT.load(tmp_path / f"{method}.pt", device="cpu")
        np.testing.assert_array_equal(loaded.transform(clouds), model.transform(clouds))
        np.testing.assert_array_equal(loaded.cost().numpy(), model.cost().numpy())
        assert loaded.history == model.history
        assert repr(loaded) == repr(model)


def test_anchors_from_a_sample_of_the_points_find_the_centres():
    """Beyond `max_points`, k-means sees a weighted random sample, which still finds well-separated centres."""
    rng = np.random.default_rng(3)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    points = centres[rng.integers(4, size=(200, 5))] + rng.normal(scale=0.1, size=(200, 5, 2))
    clouds = PointClouds.from_padded(points)
    model = ASOT(2, 4).fit(clouds, max_points=60, device="cpu")
    found = np.sort(model.anchors.numpy() * float(model.scale), axis=0)
    np.testing.assert_allclose(found, np.sort(centres, axis=0), atol=0.1)
    with pytest.raises(ValueError, match="max_points"):
        ASOT(2, 4).fit(clouds, max_points=3, device="cpu")


def test_near_training_pairs_of_a_large_family_come_from_a_sample(monkeypatch):
    """Beyond NEAR_PAIR_POOL clouds, only a sample is weighed for ASOT-ML's near pairs."""
    clouds = _clustered_clouds(n_clouds=60, size=4)
    model = ASOT(4, 6).fit(clouds, device="cpu")
    monkeypatch.setattr(asot_module, "NEAR_PAIR_POOL", 20)
    weighed = []
    transform = ASOT.transform
    monkeypatch.setattr(
        ASOT, "transform", lambda self, family, **k: weighed.append(len(family)) or transform(self, family, **k)
    )
    first, second = model._training_pairs(clouds, np.random.default_rng(0), 40)
    assert weighed == [20]
    assert (first != second).all() and first.max() < 60 and second.max() < 60
    # every near pair joins two clouds of the sample, the nearest of its neighbours there
    pool = np.unique(first[:20])
    assert len(pool) <= 20 and np.isin(second[:20][second[:20] != first[:20]], np.arange(60)).all()
    monkeypatch.setattr(asot_module, "NEAR_PAIR_POOL", 100)  # beyond the family: every cloud, as before
    weighed.clear()
    model._training_pairs(clouds, np.random.default_rng(0), 40)
    assert weighed == [60]


def test_a_sample_of_indexed_clouds_reads_only_its_rows_with_their_mass():
    features = np.arange(40, dtype=np.float32).reshape(20, 2)
    indices = np.array([[0, 1, 2], [2, 3, 4], [4, 5, 6], [10, 11, 19]])
    family = IndexedClouds(features, indices)
    read = []
    original = family.read_features
    family.read_features = lambda rows: read.append(np.asarray(rows)) or original(rows)
    points, weights = _weighted_points(family, 4, np.random.default_rng(0))
    assert len(read[0]) == 4 and set(read[0]) <= {0, 1, 2, 3, 4, 5, 6, 10, 11, 19}
    np.testing.assert_array_equal(points, features[read[0]])
    mass = {0: 1 / 3, 1: 1 / 3, 2: 2 / 3, 3: 1 / 3, 4: 2 / 3, 5: 1 / 3, 6: 1 / 3, 10: 1 / 3, 11: 1 / 3, 19: 1 / 3}
    np.testing.assert_allclose(weights, [mass[row] for row in read[0]])
    everything, _ = _weighted_points(family, None, np.random.default_rng(0))
    assert len(everything) == 10


def test_model_errors():
    clouds = _clustered_clouds(n_clouds=10, size=2)
    with pytest.raises(ValueError, match="method"):
        ASOT(4, 8, method="deep")
    with pytest.raises(ValueError, match="n_layers"):
        ASOT(4, 8, method="dl", n_layers=0)
    with pytest.raises(ValueError, match="method='dl'"):
        ASOT(4, 4).fit(clouds, device="cpu").sparse_codes(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="points"):
        ASOT(4, 4, method="dl").fit(clouds, n_steps=2, device="cpu", progress=False).sparse_codes(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="n_anchors"):
        ASOT(4, 0)
    with pytest.raises(ValueError, match="n_anchors"):
        ASOT(4, 50).fit(clouds, device="cpu")
    with pytest.raises(ValueError, match="dimension"):
        ASOT(3, 4).fit(clouds, device="cpu")
    with pytest.raises(RuntimeError, match="not fitted"):
        ASOT(4, 4).transform(clouds)


# ------------------------------------------------------------------------------------------ AnnData


def test_tl_asot_writes_results_that_survive_h5ad(fitted, tmp_path):
    adata, model = fitted[0].copy(), fitted[1]
    assert isinstance(model, ASOT)
    weights = adata.obsm["X_asot"]
    assert weights.shape == (adata.n_obs, 12)
    np.testing.assert_allclose(weights.sum(1), 1, atol=1e-5)
    result = adata.uns["asot"]
    assert result["anchors"].shape == (12, adata.obsm["X_latent"].shape[1])
    assert result["cost"].shape == (12, 12) and result["epsilon"] > 0
    assert result["params"]["method"] == "ml"  # the default

    distances = adata.obsp["asot_neighbors_distances"]
    connectivities = adata.obsp["asot_neighbors_connectivities"]
    assert (distances.getnnz(axis=1) <= 9).all() and distances.diagonal().sum() == 0
    assert abs(connectivities - connectivities.T).max() < 1e-6
    assert adata.uns["asot_neighbors"]["connectivities_key"] == "asot_neighbors_connectivities"
    # the graph's distances are the model's ASOT distances, debiased by half of each self-cost
    rows, cols = distances.nonzero()
    rows, cols = rows[:50], cols[:50]
    direct = model.paired_distances(weights[rows], weights[cols])
    direct -= 0.5 * (
        model.paired_distances(weights[rows], weights[rows]) + model.paired_distances(weights[cols], weights[cols])
    )
    stored = np.asarray(distances[rows, cols]).ravel()
    np.testing.assert_allclose(stored, np.maximum(direct, 0), rtol=1e-3, atol=1e-5)
    params = adata.uns["asot_neighbors"]["params"]
    assert params["debias"] and params["n_candidates"] == 10
    assert params["method"] == "gauss"  # scanpy's name for the kernel, the default
    # the connectivities: the kernel on W2 (the square root of the stored distances) of the lists
    lists = np.concatenate([np.arange(adata.n_obs)[:, None], distances.indices.reshape(adata.n_obs, -1)], axis=1)
    listed = np.concatenate([np.zeros((adata.n_obs, 1)), distances.data.reshape(adata.n_obs, -1)], axis=1)
    np.testing.assert_allclose(
        connectivities.toarray(), _gauss_kernel(lists, np.sqrt(listed)).toarray(), rtol=1e-4, atol=1e-6
    )  # the stored distances are float32
    umap = sot.tl.asot_neighbors(adata, n_neighbors=10, kernel="umap", progress=False, copy=True)
    np.testing.assert_array_equal(umap.obsp["asot_neighbors_distances"].toarray(), distances.toarray())
    np.testing.assert_allclose(
        umap.obsp["asot_neighbors_connectivities"].toarray(),
        _fuzzy_simplicial_set(lists, np.sqrt(listed).astype(np.float32)).toarray(),
        rtol=1e-4,
        atol=1e-6,
    )
    assert umap.uns["asot_neighbors"]["params"]["method"] == "umap"

    path = tmp_path / "asot.h5ad"
    adata.write_h5ad(path)
    back = ad.read_h5ad(path)
    np.testing.assert_array_equal(back.obsm["X_asot"], weights)
    np.testing.assert_array_equal(back.uns["asot"]["cost"], result["cost"])
    assert back.uns["asot_neighbors"]["params"]["n_neighbors"] == 10
    assert back.uns["asot_neighbors"]["params"]["n_candidates"] == 10
    assert abs(back.obsp["asot_neighbors_connectivities"] - connectivities).max() == 0


def test_leiden_runs_on_the_asot_graph(fitted):
    pytest.importorskip("igraph")
    adata = fitted[0].copy()
    sc.tl.leiden(adata, neighbors_key="asot_neighbors", flavor="igraph", n_iterations=2, directed=False)
    assert adata.obs["leiden"].nunique() > 1


def test_umap_runs_on_the_asot_graph(fitted):
    adata = fitted[0].copy()
    sc.tl.umap(adata, neighbors_key="asot_neighbors", random_state=0)
    assert adata.obsm["X_umap"].shape == (adata.n_obs, 2)
    assert np.isfinite(adata.obsm["X_umap"]).all()


def test_tl_copy_and_ml(tissue):
    adata = tissue.copy()
    before = set(adata.uns), set(adata.obsm)
    copied, model = sot.tl.asot(
        adata, n_anchors=6, method="ml", n_steps=5, n_train_pairs=64, key_added="ml", progress=False, copy=True
    )
    assert (set(adata.uns), set(adata.obsm)) == before
    assert copied.obsm["X_ml"].shape == (adata.n_obs, 6)
    assert len(copied.uns["ml"]["loss"]) == 5 == len(model.history)
    out = sot.tl.asot_neighbors(copied, key="ml", n_neighbors=5, key_added="g", progress=False, copy=True)
    assert "g_distances" in out.obsp and "g_distances" not in copied.obsp


def test_tl_errors_leave_adata_unchanged(tissue):
    adata = tissue.copy()
    before = set(adata.uns), set(adata.obsm), set(adata.obsp)
    with pytest.raises(KeyError, match="pp.niches"):
        sot.tl.asot(adata, niche_key="missing", progress=False)
    with pytest.raises(ValueError, match="method"):
        sot.tl.asot(adata, method="deep", progress=False)
    with pytest.raises(ValueError, match="n_anchors"):
        sot.tl.asot(adata, n_anchors=100_000, progress=False)
    with pytest.raises(KeyError, match="tl.asot"):
        sot.tl.asot_neighbors(adata, progress=False)
    sot.tl.asot(adata, n_anchors=4, progress=False)
    before = set(adata.uns), set(adata.obsm), set(adata.obsp)
    with pytest.raises(ValueError, match="n_neighbors"):
        sot.tl.asot_neighbors(adata, n_neighbors=1, progress=False)
    with pytest.raises(ValueError, match="method"):
        sot.tl.asot_neighbors(adata, method="emd", progress=False)
    with pytest.raises(ValueError, match="n_candidates"):
        sot.tl.asot_neighbors(adata, n_neighbors=10, n_candidates=5, progress=False)
    with pytest.raises(ValueError, match="kernel"):
        sot.tl.asot_neighbors(adata, kernel="cosine", progress=False)
    assert (set(adata.uns), set(adata.obsm), set(adata.obsp)) == before


def test_pl_asot(tissue):
    adata = tissue.copy()
    with pytest.raises(KeyError, match="tl.asot"):
        sot.pl.asot(adata, show=False)
    sot.tl.asot(adata, n_anchors=8, progress=False)
    ax = sot.pl.asot(adata, cells=[0, adata.obs_names[3]], show=False)
    assert isinstance(ax, Axes)
    assert len(ax.collections) == 3


def test_anchor_solvers_and_models_accept_reversed_arrays():
    # negative-stride numpy views (x[::-1]) give what their contiguous copies give
    rng = np.random.default_rng(0)
    anchors, h = rng.normal(size=(6, 2)), _histograms(10, 6)
    flipped, copied = anchors[::-1], anchors[::-1].copy()
    torch.testing.assert_close(anchor_cost(flipped), anchor_cost(copied))
    torch.testing.assert_close(anchor_cost(anchors, flipped), anchor_cost(anchors, copied))
    cost = anchor_cost(anchors).numpy()
    options = {"epsilon": 0.05 * cost.max(), "n_iter": 50}
    np.testing.assert_allclose(
        anchor_paired_distances(h[::-1], h, cost[::-1, ::-1], **options),
        anchor_paired_distances(h[::-1].copy(), h, cost[::-1, ::-1].copy(), **options),
    )
    np.testing.assert_allclose(
        anchor_pairwise_distances(h[::-1], None, cost, **options),
        anchor_pairwise_distances(h[::-1].copy(), None, cost, **options),
    )
    reversed_rows = anchor_kneighbors(
        h[::-1], cost, 3, anchor_points=flipped[::-1], anchor_offsets=np.zeros(6)[::-1], **options
    )
    expected = anchor_kneighbors(h[::-1].copy(), cost, 3, anchor_points=anchors, **options)
    np.testing.assert_array_equal(reversed_rows[0], expected[0])
    np.testing.assert_allclose(reversed_rows[1], expected[1])
    # a model from reversed anchors, coding a reversed feature table
    model = ASOT.from_anchors(flipped, device="cpu")
    features = rng.normal(size=(8, 2))
    family = sot.ot.IndexedClouds(features[::-1], np.arange(8).reshape(4, 2))
    same = sot.ot.IndexedClouds(features[::-1].copy(), np.arange(8).reshape(4, 2))
    np.testing.assert_array_equal(model.transform(family), ASOT.from_anchors(copied, device="cpu").transform(same))
