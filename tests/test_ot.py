import numpy as np
import ot as pot
import pytest
import scipy.linalg
import torch

from spatialot import ot


def _random_clouds(batch, size, dim, *, seed, shift=0.0, ragged=False):
    generator = torch.Generator().manual_seed(seed)
    points = torch.rand(batch, size, dim, generator=generator) + shift
    mask = None
    if ragged:
        sizes = torch.randint(2, size + 1, (batch,), generator=generator)
        mask = torch.arange(size)[None, :] < sizes[:, None]
    return ot.PointClouds.from_padded(points, mask)


def _random_spd(dim, rng):
    root = rng.normal(size=(dim, dim))
    return root @ root.T + 0.1 * np.eye(dim)


# --- PointClouds --------------------------------------------------------------------------


def test_point_clouds_normalise_and_zero_padding():
    points = torch.ones(2, 3, 2)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    clouds = ot.PointClouds.from_padded(points, mask, weights=torch.tensor([[1.0, 3.0, 5.0], [1.0, 1.0, 2.0]]))
    np.testing.assert_allclose(clouds.weights.numpy(), [[0.25, 0.75, 0.0], [0.25, 0.25, 0.5]])
    assert clouds.points[0, 2].abs().sum() == 0
    assert clouds.sizes.tolist() == [2, 3]


def test_point_clouds_from_list_round_trip():
    rng = np.random.default_rng(0)
    arrays = [rng.normal(size=(n, 3)) for n in (2, 5, 4)]
    clouds = ot.PointClouds.from_list(arrays)
    assert clouds.max_size == 5 and len(clouds) == 3 and clouds.dim == 3
    for i, array in enumerate(arrays):
        points, weights = clouds.cloud(i)
        np.testing.assert_allclose(points, array, rtol=1e-6)
        np.testing.assert_allclose(weights, np.full(len(array), 1 / len(array)), rtol=1e-6)


def test_point_clouds_integer_index_keeps_the_batch_dimension():
    clouds = _random_clouds(4, 3, 2, seed=27)
    for index in (2, np.int64(2), -1):
        assert clouds[index].points.shape == (1, 3, 2)
    np.testing.assert_array_equal(clouds[-1].points.numpy(), clouds.points[3:].numpy())
    np.testing.assert_array_equal(clouds[np.array([3, 0])].points.numpy(), clouds.points[[3, 0]].numpy())


def test_point_clouds_boolean_mask_selects_clouds():
    # a numpy mask was once read as the integers 0 and 1
    clouds = _random_clouds(4, 3, 2, seed=28)
    keep = np.array([False, True, False, True])
    for index in (keep, keep.tolist(), torch.from_numpy(keep)):
        np.testing.assert_array_equal(clouds[index].points.numpy(), clouds.points[[1, 3]].numpy())
    np.testing.assert_array_equal(clouds[torch.tensor([3, 3])].points.numpy(), clouds.points[[3, 3]].numpy())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"points": torch.zeros(3, 2)}, "points"),
        ({"points": torch.zeros(1, 2, 2), "mask": torch.zeros(1, 3, dtype=torch.bool)}, "mask"),
        ({"points": torch.zeros(1, 2, 2), "mask": torch.tensor([[False, False]])}, "Cloud 0"),
        ({"points": torch.zeros(1, 2, 2), "weights": torch.tensor([[1.0, -1.0]])}, "non-negative"),
        ({"points": torch.full((1, 2, 2), float("nan"))}, "NaN"),
    ],
)
def test_point_clouds_reject_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ot.PointClouds.from_padded(**kwargs)


# --- exact OT -----------------------------------------------------------------------------


def test_exact_shift_equals_squared_norm():
    clouds = _random_clouds(5, 7, 3, seed=1)
    shift = torch.tensor([0.5, -2.0, 1.0])
    moved = ot.PointClouds.from_padded(clouds.points + shift, clouds.mask)
    np.testing.assert_allclose(ot.exact_w2_squared(clouds, moved), float((shift**2).sum()), rtol=1e-5)


def test_exact_matches_pot_with_weights_and_ragged_sizes():
    x = _random_clouds(6, 8, 2, seed=2, ragged=True)
    y = _random_clouds(6, 5, 2, seed=3, ragged=True, shift=0.3)
    values = ot.exact_w2_squared(x, y)
    for b in range(6):
        xp, xw = x.cloud(b)
        yp, yw = y.cloud(b)
        expected = pot.emd2(xw.astype(float) / xw.sum(), yw.astype(float) / yw.sum(), pot.dist(xp, yp).astype(float))
        assert values[b] == pytest.approx(expected, rel=1e-5)


def test_exact_of_gaussian_pushforward_equals_mean_displacement():
    # the Bures-Wasserstein map is the gradient of a convex function, so it is optimal between an
    # empirical cloud and its image: W2^2 equals the mean squared displacement exactly
    rng = np.random.default_rng(4)
    cov_1, cov_2 = _random_spd(3, rng), _random_spd(3, rng)
    mean_1, mean_2 = rng.normal(size=3), rng.normal(size=3)
    matrix, shift = ot.gaussian_map(*(torch.as_tensor(a) for a in (mean_1, cov_1, mean_2, cov_2)))
    points = rng.multivariate_normal(mean_1, cov_1, size=40)
    image = points @ matrix.numpy().T + shift.numpy()
    x = ot.PointClouds.from_padded(points[None], dtype=torch.float64)
    y = ot.PointClouds.from_padded(image[None], dtype=torch.float64)
    displacement = ((points - image) ** 2).sum(1).mean()
    assert ot.exact_w2_squared(x, y)[0] == pytest.approx(displacement, rel=1e-8)


# --- entropic OT --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sinkhorn_approaches_exact_as_epsilon_shrinks(dtype):
    x = _random_clouds(16, 12, 3, seed=5, ragged=True).to(dtype=dtype)
    y = _random_clouds(16, 10, 3, seed=6, ragged=True, shift=0.2).to(dtype=dtype)
    exact = ot.exact_w2_squared(x, y)
    errors = []
    for epsilon in (1e-1, 1e-2, 1e-3):
        out = ot.sinkhorn(x, y, epsilon=epsilon, max_iter=5000)
        assert torch.isfinite(out.objective).all() and torch.isfinite(out.cost).all()
        errors.append(np.abs(out.cost.double().numpy() - exact).max() / exact.mean())
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 5e-3


def test_sinkhorn_matches_pot_entropic_solution():
    x = _random_clouds(4, 9, 2, seed=7, ragged=True).to(dtype=torch.float64)
    y = _random_clouds(4, 6, 2, seed=8, ragged=True).to(dtype=torch.float64)
    out = ot.sinkhorn(x, y, epsilon=0.05, tol=1e-10, max_iter=10_000, return_plan=True)
    assert out.converged
    for b in range(4):
        xp, xw = x.cloud(b)
        yp, yw = y.cloud(b)
        cost = pot.dist(xp, yp)
        plan = pot.sinkhorn(xw, yw, cost, reg=0.05, method="sinkhorn_log", stopThr=1e-12, numItermax=100_000)
        ours = out.plan[b][x.mask[b]][:, y.mask[b]].numpy()
        np.testing.assert_allclose(ours, plan, atol=1e-8)
        # padding carries no mass
        assert out.plan[b][~x.mask[b]].abs().sum() == 0


def test_sinkhorn_gradient_is_the_plan():
    x = _random_clouds(3, 6, 2, seed=9).to(dtype=torch.float64)
    y = _random_clouds(3, 5, 2, seed=10).to(dtype=torch.float64)
    points = x.points.clone().requires_grad_(True)
    x_grad = ot.PointClouds(points, x.mask, x.weights)
    out = ot.sinkhorn(x_grad, y, epsilon=0.05, tol=1e-12, max_iter=10_000, return_plan=True)
    (grad,) = torch.autograd.grad(out.objective.sum(), points)
    plan = out.plan.detach()
    # d/dx_i sum_j P_ij ||x_i - y_j||^2 = 2 (a_i x_i - sum_j P_ij y_j)
    expected = 2 * (x.weights[..., None] * x.points - plan @ y.points)
    np.testing.assert_allclose(grad.numpy(), expected.numpy(), atol=1e-7)


def test_sinkhorn_divergence_of_a_translation_is_the_squared_shift():
    clouds = _random_clouds(8, 10, 4, seed=11, ragged=True)
    shift = torch.tensor([0.3, -0.1, 0.0, 0.7])
    moved = ot.PointClouds.from_padded(clouds.points + shift, clouds.mask)
    for epsilon in (1.0, 0.1, 0.01):
        values = ot.sinkhorn_divergence(clouds, moved, epsilon=epsilon)
        np.testing.assert_allclose(values.numpy(), float((shift**2).sum()), rtol=2e-3)


def test_sinkhorn_divergence_zero_on_identical_and_symmetric():
    x = _random_clouds(6, 8, 3, seed=12, ragged=True)
    y = _random_clouds(6, 8, 3, seed=13, ragged=True)
    np.testing.assert_allclose(ot.sinkhorn_divergence(x, x, epsilon=0.05).numpy(), 0, atol=1e-5)
    forward = ot.sinkhorn_divergence(x, y, epsilon=0.05).numpy()
    backward = ot.sinkhorn_divergence(y, x, epsilon=0.05).numpy()
    np.testing.assert_allclose(forward, backward, rtol=1e-4)
    assert (forward > 0).all()


def test_padding_does_not_change_sinkhorn():
    x = _random_clouds(4, 6, 2, seed=14)
    y = _random_clouds(4, 5, 2, seed=15)
    padded_points = torch.cat([x.points, 100 * torch.ones(4, 3, 2)], dim=1)
    padded_mask = torch.cat([x.mask, torch.zeros(4, 3, dtype=torch.bool)], dim=1)
    padded = ot.PointClouds.from_padded(padded_points, padded_mask)
    plain = ot.sinkhorn(x, y, epsilon=0.05).cost
    np.testing.assert_allclose(ot.sinkhorn(padded, y, epsilon=0.05).cost.numpy(), plain.numpy(), rtol=1e-5)


def test_sinkhorn_rejects_bad_arguments():
    x = _random_clouds(2, 4, 2, seed=16)
    with pytest.raises(ValueError, match="epsilon"):
        ot.sinkhorn(x, x, epsilon=0)
    with pytest.raises(ValueError, match="same number of clouds"):
        ot.sinkhorn(x, x[:1])
    with pytest.raises(ValueError, match="point dimension"):
        ot.sinkhorn(x, _random_clouds(2, 4, 3, seed=17))


# --- pairwise -----------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["exact", "sinkhorn", "sinkhorn_divergence"])
def test_pairwise_matrix_symmetric_and_consistent(method):
    clouds = _random_clouds(7, 6, 2, seed=18, ragged=True)
    # a tight tolerance: pairs solved in different batches must agree to the test's precision
    solver = {} if method == "exact" else {"tol": 1e-6, "max_iter": 10_000}
    matrix = ot.pairwise_distances(clouds, method=method, epsilon=0.05, batch_size=5, **solver)
    np.testing.assert_allclose(matrix, matrix.T)
    if method != "sinkhorn":
        np.testing.assert_array_equal(np.diag(matrix), 0)
    rows, cols = np.array([0, 3, 6]), np.array([2, 5, 1])
    paired = ot.paired_distances(clouds[rows], clouds[cols], method=method, epsilon=0.05, **solver)
    np.testing.assert_allclose(matrix[rows, cols], paired, rtol=1e-4)
    other = ot.pairwise_distances(clouds[:3], clouds[3:], method=method, epsilon=0.05, **solver)
    np.testing.assert_allclose(other, matrix[:3, 3:], rtol=1e-4)


def test_pairwise_sinkhorn_close_to_exact():
    clouds = _random_clouds(10, 8, 3, seed=19, ragged=True)
    exact = ot.pairwise_distances(clouds, method="exact")
    entropic = ot.pairwise_distances(clouds, method="sinkhorn_divergence", epsilon=1e-3)
    upper = np.triu_indices(10, 1)
    assert np.corrcoef(exact[upper], entropic[upper])[0, 1] > 0.999


def test_pairwise_rejects_unknown_method():
    clouds = _random_clouds(2, 3, 2, seed=20)
    with pytest.raises(ValueError, match="method"):
        ot.pairwise_distances(clouds, method="gromov")


# --- Gaussians (Bures-Wasserstein) --------------------------------------------------------


def test_bures_in_one_dimension():
    mean_1, mean_2 = torch.tensor([[1.0]]), torch.tensor([[-2.0]])
    cov_1, cov_2 = torch.tensor([[[4.0]]]), torch.tensor([[[9.0]]])
    value = ot.bures_wasserstein_squared(mean_1, cov_1, mean_2, cov_2)
    assert float(value[0]) == pytest.approx(3.0**2 + (2.0 - 3.0) ** 2)


def test_bures_against_scipy_sqrtm():
    rng = np.random.default_rng(21)
    cov_1, cov_2 = _random_spd(4, rng), _random_spd(4, rng)
    mean_1, mean_2 = rng.normal(size=4), rng.normal(size=4)
    root = scipy.linalg.sqrtm(cov_1)
    expected = ((mean_1 - mean_2) ** 2).sum() + np.trace(cov_1 + cov_2 - 2 * scipy.linalg.sqrtm(root @ cov_2 @ root))
    value = ot.bures_wasserstein_squared(*(torch.as_tensor(a) for a in (mean_1, cov_1, mean_2, cov_2)))
    assert float(value) == pytest.approx(float(np.real(expected)), rel=1e-8)


def test_gaussian_map_pushes_covariance_and_geodesic_ends():
    rng = np.random.default_rng(22)
    mean_1, cov_1, mean_2, cov_2 = (
        torch.as_tensor(a) for a in (rng.normal(size=3), _random_spd(3, rng), rng.normal(size=3), _random_spd(3, rng))
    )
    matrix, shift = ot.gaussian_map(mean_1, cov_1, mean_2, cov_2)
    np.testing.assert_allclose((matrix @ cov_1 @ matrix.T).numpy(), cov_2.numpy(), atol=1e-8)
    np.testing.assert_allclose((matrix @ mean_1 + shift).numpy(), mean_2.numpy(), atol=1e-10)
    assert torch.linalg.eigvalsh(matrix).min() > 0
    for t, (mean, cov) in ((0.0, (mean_1, cov_1)), (1.0, (mean_2, cov_2))):
        mean_t, cov_t = ot.bures_geodesic(mean_1, cov_1, mean_2, cov_2, t)
        np.testing.assert_allclose(mean_t.numpy(), mean.numpy(), atol=1e-8)
        np.testing.assert_allclose(cov_t.numpy(), cov.numpy(), atol=1e-8)
    # constant speed: W2(start, t) = t * W2(start, end)
    full = ot.bures_wasserstein_squared(mean_1, cov_1, mean_2, cov_2)
    mean_t, cov_t = ot.bures_geodesic(mean_1, cov_1, mean_2, cov_2, 0.3)
    partial = ot.bures_wasserstein_squared(mean_1, cov_1, mean_t, cov_t)
    assert float(partial) == pytest.approx(0.09 * float(full), rel=1e-6)


def test_bures_matches_exact_ot_on_large_gaussian_samples():
    rng = np.random.default_rng(23)
    cov_1, cov_2 = np.diag([1.0, 0.25]), np.array([[2.0, 0.5], [0.5, 1.0]])
    mean_1, mean_2 = np.zeros(2), np.array([1.0, 2.0])
    x = rng.multivariate_normal(mean_1, cov_1, size=600)
    y = rng.multivariate_normal(mean_2, cov_2, size=600)
    clouds_x = ot.PointClouds.from_padded(x[None], dtype=torch.float64)
    clouds_y = ot.PointClouds.from_padded(y[None], dtype=torch.float64)
    closed = ot.bures_wasserstein_squared(*(torch.as_tensor(a) for a in (mean_1, cov_1, mean_2, cov_2)))
    empirical = ot.bures_wasserstein_squared(*ot.gaussian_moments(clouds_x), *ot.gaussian_moments(clouds_y))
    assert float(empirical[0]) == pytest.approx(float(closed), rel=0.1)
    # exact OT between samples is a consistent estimate of the Gaussian W2^2
    assert ot.exact_w2_squared(clouds_x, clouds_y)[0] == pytest.approx(float(closed), rel=0.15)


def test_gaussian_moments_ignore_padding():
    rng = np.random.default_rng(24)
    cloud = rng.normal(size=(5, 2))
    padded = ot.PointClouds.from_list([cloud, rng.normal(size=(9, 2))], dtype=torch.float64)
    means, covs = ot.gaussian_moments(padded)
    np.testing.assert_allclose(means[0].numpy(), cloud.mean(0))
    np.testing.assert_allclose(covs[0].numpy(), np.cov(cloud.T, bias=True))


@pytest.mark.parametrize(("n_points", "dim"), [(5, 2), (8, 8), (6, 12), (128, 8), (128, 64)])
def test_oas_shrinkage_matches_scikit_learn(n_points, dim):
    from sklearn.covariance import oas

    rng = np.random.default_rng(n_points + dim)
    clouds = [rng.normal(size=(n_points, dim)) * rng.uniform(0.5, 2.0, size=dim) + 3.0 for _ in range(2)]
    # beside a larger cloud, both are padded by three slots: the padding must count neither as points nor in n
    padded = ot.PointClouds.from_list([clouds[0], clouds[1], rng.normal(size=(n_points + 3, dim))], dtype=torch.float64)
    means, covs = ot.gaussian_moments(padded, shrinkage="oas")
    for index in range(2):
        expected, _ = oas(clouds[index])
        np.testing.assert_allclose(covs[index].numpy(), expected, atol=1e-12)
        np.testing.assert_allclose(means[index].numpy(), clouds[index].mean(0))


def test_fixed_shrinkage_keeps_the_trace_and_moves_towards_the_identity():
    rng = np.random.default_rng(31)
    clouds = ot.PointClouds.from_list([rng.normal(size=(7, 4)) * [1.0, 2.0, 3.0, 4.0]], dtype=torch.float64)
    _, raw = ot.gaussian_moments(clouds)
    _, half = ot.gaussian_moments(clouds, shrinkage=0.25)
    _, full = ot.gaussian_moments(clouds, shrinkage=1.0)
    level = torch.trace(raw[0]) / 4
    torch.testing.assert_close(half[0], 0.75 * raw[0] + 0.25 * level * torch.eye(4, dtype=torch.float64))
    torch.testing.assert_close(full[0], level * torch.eye(4, dtype=torch.float64))
    for bad in (-0.1, 1.5, "ledoit", True):
        with pytest.raises(ValueError, match="`shrinkage` must be 'oas' or a number in"):
            ot.gaussian_moments(clouds, shrinkage=bad)


def test_unchecked_sinkhorn_matches_the_checked_solve_and_pot():
    x = _random_clouds(6, 12, 3, seed=29, ragged=True).to(dtype=torch.float64)
    y = _random_clouds(6, 9, 3, seed=30, shift=0.5, ragged=True).to(dtype=torch.float64)
    checked = ot.sinkhorn(x, y, epsilon=0.05, tol=1e-8, max_iter=20_000)
    unchecked = ot.sinkhorn(x, y, epsilon=0.05, tol=None, max_iter=checked.n_iter)
    assert checked.converged and unchecked.converged is None and unchecked.n_iter == checked.n_iter
    np.testing.assert_allclose(unchecked.objective.numpy(), checked.objective.numpy(), rtol=1e-7)
    assert (unchecked.marginal_error < 1e-7).all()
    for b in range(len(x)):
        a_points, a_weights = x.cloud(b)
        b_points, b_weights = y.cloud(b)
        cost = ot.squared_euclidean_cost(torch.from_numpy(a_points)[None], torch.from_numpy(b_points)[None])[0]
        plan = pot.sinkhorn(a_weights, b_weights, cost.numpy(), 0.05, method="sinkhorn_log", stopThr=1e-12)
        np.testing.assert_allclose(unchecked.cost[b].item(), (plan * cost.numpy()).sum(), rtol=1e-6)
    # too few iterations show in the marginal error, which the caller reads when it chooses
    short = ot.sinkhorn(x, y, epsilon=0.002, tol=None, max_iter=3)
    assert short.marginal_error.max() > 1e-3
    with pytest.raises(ValueError, match="max_iter"):
        ot.sinkhorn(x, y, tol=None, max_iter=0)


def test_unchecked_sinkhorn_reads_nothing_on_the_host():
    # meta tensors hold no values: any test of a value on the host (`bool`, `.item()`, numpy,
    # a boolean mask) raises, as a synchronisation would stall a GPU
    x = _random_clouds(4, 6, 2, seed=31, ragged=True)
    y = _random_clouds(4, 5, 2, seed=32, ragged=True)
    x_meta, y_meta = x.to(device="meta"), y.to(device="meta")
    output = ot.sinkhorn(x_meta, y_meta, epsilon=0.01, tol=None, max_iter=20)
    assert output.objective.shape == (4,) and output.objective.device.type == "meta"
    with pytest.raises((RuntimeError, NotImplementedError)):
        ot.sinkhorn(x_meta, y_meta, epsilon=0.01, tol=1e-3)


def test_over_relaxation_keeps_the_fixed_point_and_reports_convergence():
    x = _random_clouds(8, 10, 3, seed=25, ragged=True).to(dtype=torch.float64)
    y = _random_clouds(8, 7, 3, seed=26, ragged=True).to(dtype=torch.float64)
    plain = ot.sinkhorn(x, y, epsilon=0.05, over_relaxation=1.0, tol=1e-9, max_iter=20_000)
    relaxed = ot.sinkhorn(x, y, epsilon=0.05, over_relaxation=1.7, tol=1e-9, max_iter=20_000)
    assert plain.converged and relaxed.converged and relaxed.n_iter < plain.n_iter
    np.testing.assert_allclose(relaxed.objective.numpy(), plain.objective.numpy(), rtol=1e-7)
    assert (relaxed.marginal_error < 1e-9).all()
    stopped = ot.sinkhorn(x, y, epsilon=0.001, annealing=0, max_iter=10, check_every=5)
    assert not stopped.converged and stopped.n_iter == 10
    assert stopped.marginal_error.max() > 1e-3
    with pytest.raises(ValueError, match="over_relaxation"):
        ot.sinkhorn(x, y, over_relaxation=2.0)


def test_scaling_iterations_follow_the_log_domain_iterates():
    # the solver iterates on scalings of an absorbed kernel: a reparametrisation of the
    # log-domain updates, so after the same number of iterations the potentials must agree
    from spatialot.ot._sinkhorn import _iterate, _log_domain_steps, _warm_start

    x = _random_clouds(6, 9, 3, seed=31, ragged=True).to(dtype=torch.float64)
    y = _random_clouds(6, 7, 3, seed=32, ragged=True).to(dtype=torch.float64)
    cost = ot.squared_euclidean_cost(x.points, y.points)
    log_a = torch.where(x.mask, x.weights.log(), -torch.inf)
    log_b = torch.where(y.mask, y.weights.log(), -torch.inf)
    f, g = _warm_start(cost, log_a, log_b, 0.01, 0.5)
    reference = _log_domain_steps(cost / 0.01, f, g, log_a, log_b, 0.01, 30, 1.6)
    ours_f, ours_g, n_iter, _ = _iterate(cost, f.clone(), g.clone(), log_a, log_b, y.weights, 0.01, 30, 0.0, 7, 1.6)
    assert n_iter == 30
    np.testing.assert_allclose(ours_f[x.mask].numpy(), reference[0][x.mask].numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ours_g[y.mask].numpy(), reference[1][y.mask].numpy(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("annealing", [0.5, 0.0])
def test_sinkhorn_recovers_when_scalings_leave_the_float32_range(monkeypatch, annealing):
    # without the warm start, a far outlier makes the scalings overflow at once; with it, a
    # far point of negligible weight makes its kernel column underflow: both fall back to
    # log-domain updates and must still give POT's answer
    from spatialot.ot import _sinkhorn

    calls = {"softmin": 0, "log_steps": 0}
    softmin, log_steps = _sinkhorn._softmin, _sinkhorn._log_domain_steps

    def counting_softmin(*args):
        calls["softmin"] += 1
        return softmin(*args)

    def counting_log_steps(*args):
        calls["log_steps"] += 1
        return log_steps(*args)

    monkeypatch.setattr(_sinkhorn, "_softmin", counting_softmin)
    monkeypatch.setattr(_sinkhorn, "_log_domain_steps", counting_log_steps)
    rng = np.random.default_rng(33)
    xs = [rng.normal(size=(12, 2)) for _ in range(3)]
    ys = [rng.normal(size=(10, 2)) for _ in range(3)]
    ys[1][0] = 40.0  # a point far from every point of its partner cloud
    y_weights = np.full((3, 10), 0.1)
    if annealing:
        y_weights[1] = [1e-44] + [1 / 9] * 9  # a denormal in float32
    x = ot.PointClouds.from_list(xs)
    y = ot.PointClouds.from_list(ys, [w for w in y_weights])
    out = ot.sinkhorn(x, y, epsilon=0.5, annealing=annealing, tol=1e-5, max_iter=5000)
    assert out.converged and torch.isfinite(out.objective).all()
    assert (calls["softmin"] > 1) if annealing else (calls["log_steps"] > 0), calls
    for b in range(3):
        cost = pot.dist(xs[b], ys[b])
        expected = pot.sinkhorn2(np.full(12, 1 / 12), y_weights[b], cost, reg=0.5, method="sinkhorn_log", stopThr=1e-10)
        assert abs(float(out.cost[b]) - expected) < 1e-3 * expected


def test_reversed_numpy_arrays_are_accepted_and_read_in_their_order():
    # x[::-1] is a numpy view with a negative stride, which torch.as_tensor refuses
    rng = np.random.default_rng(0)
    points, weights = rng.normal(size=(2, 4, 3)), rng.random((2, 4)) + 0.1
    mask = np.array([[True, True, True, False], [True, True, True, True]])
    flipped = ot.PointClouds.from_padded(points[::-1, ::-1], mask[::-1, ::-1], weights[::-1, ::-1])
    copied = ot.PointClouds.from_padded(*(np.ascontiguousarray(a[::-1, ::-1]) for a in (points, mask, weights)))
    for got, expected in zip(
        (flipped.points, flipped.mask, flipped.weights), (copied.points, copied.mask, copied.weights), strict=True
    ):
        torch.testing.assert_close(got, expected)
    listed = ot.PointClouds.from_list([points[0, ::-1], points[1]], [weights[0, ::-1], weights[1]])
    torch.testing.assert_close(listed.points[0], torch.as_tensor(points[0, ::-1].copy(), dtype=torch.float32))
    torch.testing.assert_close(listed[np.arange(2)[::-1]].points, listed.points.flip(0))
    mean, _ = ot.bures_geodesic(
        torch.zeros(2), torch.eye(2), torch.ones(2), 4 * torch.eye(2), np.array([0.0, 1.0])[::-1]
    )
    torch.testing.assert_close(mean, torch.tensor([[1.0, 1.0], [0.0, 0.0]]))


def test_read_only_numpy_arrays_are_accepted_without_a_warning():
    # torch warns on non-writable arrays (np.broadcast_to, protected views); warnings are errors here
    cloud = np.arange(6.0).reshape(3, 2)
    batch = ot.PointClouds.from_padded(np.broadcast_to(cloud, (4, 3, 2)))
    torch.testing.assert_close(batch.points, torch.as_tensor(np.tile(cloud, (4, 1, 1)), dtype=torch.float32))
    frozen = cloud.copy()
    frozen.flags.writeable = False
    np.testing.assert_allclose(ot.exact_w2_squared(ot.PointClouds.from_list([frozen]), batch[:1]), [0.0], atol=1e-6)


# --------------------------------------------------------------------------- rounded assignment


def test_rounded_assignment_is_a_near_optimal_permutation():
    """Against scipy's exact assignment on random problems: a permutation, within 1 % of the optimum."""
    from scipy.optimize import linear_sum_assignment

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(2, 12, 16, 3))
    cost = torch.cdist(torch.tensor(x), torch.tensor(y)).float() ** 2
    partner = ot.rounded_assignment(cost)
    ratios = []
    for problem, columns in zip(cost.numpy(), partner.numpy(), strict=True):
        assert sorted(columns) == list(range(16))
        rows, optimal = linear_sum_assignment(problem)
        ratios.append(problem[np.arange(16), columns].sum() / problem[rows, optimal].sum())
    assert np.mean(ratios) < 1.01 and np.min(ratios) > 1 - 1e-6
    # a shuffled copy of the points has one clear optimum: the shuffle itself
    order = rng.permutation(16)
    shuffled = torch.tensor(x[0])[order]
    cost = (torch.cdist(torch.tensor(x[0]), shuffled) ** 2).float()[None]
    np.testing.assert_array_equal(ot.rounded_assignment(cost)[0], np.argsort(order))


def test_rounded_assignment_keeps_to_masks_and_allowed_pairs():
    rng = np.random.default_rng(1)
    cost = torch.tensor(rng.random((3, 6, 6)), dtype=torch.float32)
    rows = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]], dtype=torch.bool)
    columns = torch.tensor([[0, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1], [1, 0, 1, 0, 1, 0]], dtype=torch.bool)
    groups = torch.tensor([0, 0, 1, 1, 1, 0])
    allowed = torch.ones(3, 6, 6, dtype=torch.bool)
    allowed[1] = (groups[:, None] == groups[None, :]) & ~torch.eye(6, dtype=torch.bool)  # within groups, no fixed point
    partner = ot.rounded_assignment(cost, row_mask=rows, column_mask=columns, allowed=allowed)
    for b in range(3):
        chosen = partner[b][rows[b]]
        assert len(set(chosen.tolist())) == int(rows[b].sum())  # one-to-one
        assert columns[b][chosen].all()  # only real columns
        assert (partner[b][~rows[b]] == 0).all()
    # problem 1: every row stays in its group
    for row, column in enumerate(partner[1].tolist()):
        assert groups[row] == groups[column] and row != column


def test_minibatch_pairing_rounded_on_the_device_matches_the_exact_one():
    rng = np.random.default_rng(2)
    points = rng.normal(size=(10, 3))
    shuffle = rng.permutation(10)
    cost = torch.cdist(torch.tensor(points[shuffle]), torch.tensor(points)).float() ** 2
    groups = torch.tensor([0, 1] * 5)
    for given in (None, groups):
        exact = ot.minibatch_pairing(cost, given)
        rounded = ot.minibatch_pairing(cost, given, method="rounded")
        assert isinstance(rounded, torch.Tensor)
        np.testing.assert_array_equal(rounded.numpy(), exact)
    with pytest.raises(ValueError, match="method"):
        ot.minibatch_pairing(cost, method="auction")


def test_rounded_assignment_reads_nothing_on_the_host():
    cost = torch.empty(4, 7, 7, device="meta")  # meta tensors hold no values: a host read raises
    mask = torch.ones(4, 7, dtype=torch.bool, device="meta")
    assert ot.rounded_assignment(cost, row_mask=mask, n_iter=2, n_swaps=2).shape == (4, 7)
