import itertools

import anndata as ad
import numpy as np
import pytest
import torch

import spatialot as sot
from spatialot.models import GaussianFlowMatching, WassersteinFlowMatching
from spatialot.models._wfm import matched_targets
from spatialot.models._wfm_gaussian import bures_velocity
from spatialot.ot import PointClouds, chamfer_costs, minibatch_pairing

SMALL = {"width": 32, "n_layers": 2, "mlp_width": 64}


def _ring_family(n=128, size=8, *, seed=0, radius=3.0, offset=5.0):
    """Clouds of ``size`` points around centres on a circle: a family with known structure."""
    rng = np.random.default_rng(seed)
    angle = rng.uniform(0, 2 * np.pi, n)
    centres = offset + radius * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    return PointClouds.from_padded(centres[:, None, :] + 0.3 * rng.normal(size=(n, size, 2)))


def _nearest_w2(generated: PointClouds, data: PointClouds) -> float:
    """Mean over generated clouds of the W2² to the nearest data cloud."""
    distances = sot.ot.pairwise_distances(generated, data, method="exact")
    return float(distances.min(axis=1).mean())


def _random_spd(generator, n, d, dtype=torch.float64):
    factors = torch.randn(n, d, d + 2, generator=generator, dtype=dtype)
    return factors @ factors.transpose(1, 2) / d + 0.1 * torch.eye(d, dtype=dtype)


@pytest.fixture(scope="module")
def ring_model():
    family = _ring_family()
    model = WassersteinFlowMatching(2, 8, **SMALL)
    torch.manual_seed(0)
    model.fit(family, n_steps=200, learning_rate=2e-3, device="cpu", progress=False)
    return model, family


@pytest.fixture(scope="module")
def conditional_model():
    left = _ring_family(64, 6, seed=1, radius=0.5, offset=-3.0)
    right = _ring_family(64, 6, seed=2, radius=0.5, offset=3.0)
    family = PointClouds.from_padded(torch.cat([left.points, right.points]))
    labels = ["left"] * 64 + ["right"] * 64
    model = WassersteinFlowMatching(2, 6, labels=["left", "right"], **SMALL)
    model.fit(family, labels, n_steps=150, learning_rate=2e-3, device="cpu", progress=False)
    return model


# ---------------------------------------------------------------------------- velocity targets


def test_targets_of_a_shifted_cloud_are_the_shift():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(3, 7, 4))
    mask = np.arange(7)[None, :] < np.array([[7], [5], [2]])
    shift = rng.normal(size=(3, 1, 4))
    order = rng.permutation(7)
    source = PointClouds.from_padded(points, mask, dtype=torch.float64)
    # the same clouds, shifted, with their points listed in another order
    shuffled = np.where(mask[..., None], points + shift, 0)
    target_points = np.stack(
        [np.concatenate([c[m][order[order < m.sum()]], c[~m]]) for c, m in zip(shuffled, mask, strict=True)]
    )
    target = PointClouds.from_padded(target_points, mask, dtype=torch.float64)
    velocity = (matched_targets(source, target) - source.points).numpy()
    expected = np.broadcast_to(shift, velocity.shape) * mask[..., None]
    np.testing.assert_allclose(velocity, expected, atol=1e-10)


def test_targets_of_an_affine_image_follow_the_gaussian_closed_form():
    generator = torch.Generator().manual_seed(1)
    source = PointClouds.from_padded(torch.randn(4, 30, 3, generator=generator), dtype=torch.float64)
    matrix = _random_spd(generator, 4, 3)  # the gradient of a convex map: optimal for W2²
    shift = torch.randn(4, 1, 3, generator=generator, dtype=torch.float64)
    image = source.points @ matrix.transpose(1, 2) + shift
    target = PointClouds.from_padded(image[:, torch.randperm(30, generator=generator)], dtype=torch.float64)
    mean_0, cov_0 = sot.ot.gaussian_moments(source)
    mean_1, cov_1 = sot.ot.gaussian_moments(target)
    closed, offset = sot.ot.gaussian_map(mean_0, cov_0, mean_1, cov_1)
    expected = source.points @ closed.transpose(1, 2) + offset[:, None, :]
    torch.testing.assert_close(matched_targets(source, target, matching="exact"), expected, rtol=1e-6, atol=1e-6)


def test_entropic_map_between_unequal_sizes_recovers_the_shift():
    generator = torch.Generator().manual_seed(2)
    source = PointClouds.from_padded(torch.randn(2, 6, 2, generator=generator) * 3, dtype=torch.float64)
    target = PointClouds.from_padded(torch.cat([source.points, source.points], dim=1) + 0.5, dtype=torch.float64)
    matched = matched_targets(source, target, epsilon=1e-4)  # sizes differ: 'auto' takes the entropic map
    torch.testing.assert_close(matched - source.points, torch.full_like(matched, 0.5), atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match="equal sizes"):
        matched_targets(source, target, matching="exact")


def test_bures_velocity_is_the_derivative_of_the_geodesic():
    generator = torch.Generator().manual_seed(3)
    mean_0, mean_1 = (torch.randn(5, 3, generator=generator, dtype=torch.float64) for _ in range(2))
    cov_0, cov_1 = _random_spd(generator, 5, 3), _random_spd(generator, 5, 3)
    t = torch.tensor([0.0, 0.2, 0.5, 0.8, 0.95], dtype=torch.float64)
    mean_t, cov_t, mean_velocity, matrix_velocity = bures_velocity(mean_0, cov_0, mean_1, cov_1, t)
    geodesic = sot.ot.bures_geodesic(mean_0, cov_0, mean_1, cov_1, t)
    torch.testing.assert_close(mean_t, geodesic[0])
    torch.testing.assert_close(cov_t, geodesic[1])
    h = 1e-6
    ahead = sot.ot.bures_geodesic(mean_0, cov_0, mean_1, cov_1, t + h)
    behind = sot.ot.bures_geodesic(mean_0, cov_0, mean_1, cov_1, t - h)
    torch.testing.assert_close(mean_velocity, (ahead[0] - behind[0]) / (2 * h), atol=1e-7, rtol=1e-6)
    derivative = (ahead[1] - behind[1]) / (2 * h)
    torch.testing.assert_close(matrix_velocity @ cov_t + cov_t @ matrix_velocity, derivative, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(matrix_velocity, matrix_velocity.transpose(1, 2))
    # at t = 0 the velocity field is the displacement of the Monge map, x -> (A - I) x + ...
    matrix, _ = sot.ot.gaussian_map(mean_0, cov_0, mean_1, cov_1)
    torch.testing.assert_close(matrix_velocity[0], matrix[0] - torch.eye(3, dtype=torch.float64))


# ---------------------------------------------------------------------------- minibatch pairing


def test_minibatch_pairing_is_the_cheapest_permutation():
    rng = np.random.default_rng(0)
    cost = rng.uniform(size=(6, 6))
    order = minibatch_pairing(cost)
    assert sorted(order.tolist()) == list(range(6))
    best = min(sum(cost[p[i], i] for i in range(6)) for p in itertools.permutations(range(6)))
    assert cost[order, np.arange(6)].sum() == pytest.approx(best)
    # within groups: every source stays in the group of its slot, and each block is optimal
    groups = np.array([0, 1, 0, 1, 0, 1])
    order = minibatch_pairing(cost, groups)
    assert sorted(order.tolist()) == list(range(6)) and np.array_equal(groups[order], groups)
    for group in (0, 1):
        slots = np.flatnonzero(groups == group)
        best = min(sum(cost[p[i], s] for i, s in enumerate(slots)) for p in itertools.permutations(slots))
        assert cost[order[slots], slots].sum() == pytest.approx(best)
    with pytest.raises(ValueError, match="`cost` must be a square"):
        minibatch_pairing(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="`groups`"):
        minibatch_pairing(np.zeros((2, 2)), np.zeros(3))


def test_chamfer_costs_match_a_direct_computation():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(3, 5, 2)), rng.normal(size=(4, 6, 2))
    x_mask = np.arange(5)[None, :] < np.array([[5], [3], [1]])
    y_mask = np.arange(6)[None, :] < np.array([[6], [2], [4], [5]])

    def chamfer(a, b):
        squared = ((a[:, None] - b[None]) ** 2).sum(-1)
        return squared.min(1).mean() + squared.min(0).mean()

    expected = np.array([[chamfer(x[j][x_mask[j]], y[i][y_mask[i]]) for i in range(4)] for j in range(3)])
    tensors = [torch.as_tensor(a) for a in (x, x_mask, y, y_mask)]
    np.testing.assert_allclose(chamfer_costs(*tensors).numpy(), expected, rtol=1e-10)
    # a mask per (source, target) pair: the first points of each source cloud, as many as the target has
    per_pair = np.arange(5)[None, None, :] < np.minimum(y_mask.sum(1), 5)[None, :, None].repeat(3, 0)
    expected = np.array([[chamfer(x[j][per_pair[j, i]], y[i][y_mask[i]]) for i in range(4)] for j in range(3)])
    costs = chamfer_costs(tensors[0], torch.as_tensor(per_pair), tensors[2], tensors[3])
    np.testing.assert_allclose(costs.numpy(), expected, rtol=1e-10)


def test_minibatch_ot_pairs_each_source_cloud_with_its_translate():
    # source clouds far apart; the data clouds are the same clouds moved a little, listed in
    # another order: the optimal pairing gives every data cloud its own source cloud back
    rng = np.random.default_rng(2)
    centres = 10 * rng.normal(size=(8, 1, 2))
    source = PointClouds.from_padded(centres + rng.normal(size=(8, 5, 2)))
    order = rng.permutation(8)
    data = PointClouds.from_padded(source.points[order] + 0.1)
    model = WassersteinFlowMatching(2, 5, **SMALL)
    start = model._paired_start(data, torch.zeros(8, dtype=torch.long), source)
    torch.testing.assert_close(start.points, source.points[order])
    # within labels, a source cloud can only go to a slot of the same label
    groups = torch.as_tensor(np.arange(8) % 2)
    start = model._paired_start(data, groups, source)
    costs = chamfer_costs(start.points, start.mask, data.points, data.mask).diagonal()
    unpaired = chamfer_costs(source.points, source.mask, data.points, data.mask).diagonal()
    assert costs.sum() <= unpaired.sum()
    # noise clouds take the masks of the data clouds they are paired with
    sizes = np.array([5, 3, 5, 2, 4, 5, 1, 5])
    ragged = PointClouds.from_padded(data.points, np.arange(5)[None, :] < sizes[:, None])
    noise = model._paired_start(ragged, torch.zeros(8, dtype=torch.long), None)
    assert torch.equal(noise.mask, ragged.mask) and torch.all(noise.points[~noise.mask] == 0)
    np.testing.assert_allclose(noise.weights.sum(1).numpy(), 1.0, rtol=1e-6)


def test_condition_pairing_trades_the_chamfer_cost_for_the_distance_between_vectors():
    # models with condition vectors skip the pairing unless `condition_pairing` > 0; a huge weight
    # keeps every noise cloud with the vector of the slot it was drawn for (no re-pairing), a
    # tiny one pairs as the Chamfer cost alone does
    rng = np.random.default_rng(5)
    data = PointClouds.from_padded(np.exp(rng.uniform(-1.5, 0.7, 16))[:, None, None] * rng.normal(size=(16, 6, 2)))
    groups = torch.zeros(16, dtype=torch.long)
    vectors = torch.as_tensor(rng.normal(size=(16, 3)), dtype=torch.float32)
    assert not WassersteinFlowMatching(2, 6, condition_dim=3, **SMALL)._pairs_clouds
    for weight, expected in ((1e9, "identity"), (1e-9, "chamfer")):
        model = WassersteinFlowMatching(2, 6, condition_dim=3, condition_pairing=weight, **SMALL)
        torch.manual_seed(0)
        start = model._paired_start(data, groups, None, vectors)
        torch.manual_seed(0)
        noise = model.draw_noise(torch.ones_like(data.mask))
        if expected == "identity":
            torch.testing.assert_close(start.points, noise.points)
        else:
            cost = chamfer_costs(noise.points, data.mask[None].expand(16, -1, -1), data.points, data.mask)
            torch.testing.assert_close(start.points, noise.points[minibatch_pairing(cost)])
    with pytest.raises(ValueError, match="condition_pairing"):
        WassersteinFlowMatching(2, 6, condition_dim=3, condition_pairing=-1.0)


def _zero_velocity(model: WassersteinFlowMatching) -> WassersteinFlowMatching:
    """The model with a head that outputs 0: its flow-matching loss is the mean squared displacement."""
    with torch.no_grad():
        model.head.weight.zero_()
    return model


def test_pairing_pool_trains_on_pairs_of_the_pool_assignment():
    # eight source clouds far apart, the data clouds their translates by delta in another order:
    # the OT pairing of the whole pool gives every data cloud its own translate, so every kept
    # pair moves every point by -delta and the loss of a zero field is |delta|^2 exactly
    rng = np.random.default_rng(3)
    source = PointClouds.from_padded(10 * rng.normal(size=(8, 1, 2)) + rng.normal(size=(8, 5, 2)))
    order = rng.permutation(8)
    delta = torch.tensor([0.3, -0.4])
    data = PointClouds.from_padded(source.points[order] + delta)
    codes = torch.zeros(8, dtype=torch.long)
    model = _zero_velocity(WassersteinFlowMatching(2, 5, pairing_pool=8, **SMALL))
    seen = []
    velocity = model.velocity
    model.velocity = lambda points, *args: seen.append(len(points)) or velocity(points, *args)
    torch.manual_seed(0)
    for keep in (3, 5, None):
        loss = model.flow_matching_loss(data, codes, source=source[rng.permutation(8)], keep=keep)
        torch.testing.assert_close(loss, delta.square().sum())
    assert seen == [3, 5, 8]  # the network sees only the kept pairs
    # without the pairing, the same clouds in another order are far apart
    unpaired = _zero_velocity(WassersteinFlowMatching(2, 5, minibatch_ot=False, **SMALL))
    assert unpaired.flow_matching_loss(data, codes, source=source, keep=3) > 10


def test_pairing_pool_draws_a_pool_and_keeps_a_minibatch():
    family = _ring_family(100, 4)
    calls = []

    def spy(model):
        loss = model.flow_matching_loss
        model.flow_matching_loss = lambda data, *args: calls.append((len(data), args[-1])) or loss(data, *args)
        return model

    spy(WassersteinFlowMatching(2, 4, pairing_pool=40, **SMALL)).fit(family, n_steps=2, batch_size=8, progress=False)
    spy(WassersteinFlowMatching(2, 4, pairing_pool=4, **SMALL)).fit(family, n_steps=1, batch_size=8, progress=False)
    spy(WassersteinFlowMatching(2, 4, minibatch_ot=False, **SMALL)).fit(family, n_steps=1, batch_size=8, progress=False)
    spy(WassersteinFlowMatching(2, 4, pairing_pool=400, **SMALL)).fit(family, n_steps=1, batch_size=8, progress=False)
    # (clouds drawn, pairs kept): a pool of 40; a pool below the batch is the batch; no pool without
    # pairing; never more clouds than the family holds
    assert calls == [(40, 8), (40, 8), (8, 8), (8, 8), (100, 8)]
    with pytest.raises(ValueError, match="pairing_pool"):
        WassersteinFlowMatching(2, 4, pairing_pool=0)


def test_a_larger_pairing_pool_gives_cheaper_pairs():
    # the point of the pool: among clouds of spreads from 0.2 to 2, noise clouds paired within a
    # pool of 64 are closer (Chamfer) to their data clouds than when paired within four separate
    # minibatches of 16, themselves closer than unpaired noise; the noise stays standard normal
    rng = np.random.default_rng(0)
    scales = np.exp(rng.uniform(np.log(0.2), np.log(2.0), 64))
    data = PointClouds.from_padded(scales[:, None, None] * rng.normal(size=(64, 8, 2)))
    model = WassersteinFlowMatching(2, 8, **SMALL)
    torch.manual_seed(0)
    groups = torch.zeros(64, dtype=torch.long)

    def cost(start, target):
        return chamfer_costs(start.points, start.mask, target.points, target.mask).diagonal().mean()

    pooled = model._paired_start(data, groups, None)
    split = [cost(model._paired_start(data[i : i + 16], groups[:16], None), data[i : i + 16]) for i in (0, 16, 32, 48)]
    unpaired = cost(model.draw_noise(data.mask), data)
    assert cost(pooled, data) < 0.95 * torch.stack(split).mean() < 0.8 * unpaired
    points = pooled.points.reshape(-1, 2)
    assert points.mean(0).abs().max() < 0.15 and (points.var(0) - 1).abs().max() < 0.2


# ---------------------------------------------------------------------------- learning


def test_flow_moves_samples_toward_the_data(ring_model):
    model, family = ring_model
    assert model.history[-1] < model.history[0]
    family = family[:64]
    generated = model.sample(24, n_steps=30, random_state=1)
    noise = model.draw_noise(torch.ones(24, 8, dtype=torch.bool))
    noise = PointClouds.from_padded(noise.points * model.scale + model.center)
    assert _nearest_w2(generated, family) < 0.25 * _nearest_w2(noise, family)
    midpoint = model.sample(24, n_steps=15, method="midpoint", random_state=1)
    assert _nearest_w2(midpoint, family) < 0.25 * _nearest_w2(noise, family)


def test_gaussian_mode_moves_samples_toward_the_family():
    rng = np.random.default_rng(0)
    angle = rng.uniform(0, 2 * np.pi, 512)
    means = 3 * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    rotation = np.stack([np.stack([np.cos(angle), -np.sin(angle)], 1), np.stack([np.sin(angle), np.cos(angle)], 1)], 1)
    covariances = rotation @ np.diag([1.0, 0.1]) @ rotation.transpose(0, 2, 1)
    model = GaussianFlowMatching(2, width=128, n_layers=2)
    model.fit(means, covariances, n_steps=200, batch_size=128, learning_rate=3e-3, device="cpu", progress=False)

    def distance_to_truth(mean, cov):
        # the true covariance of a Gaussian at ``mean`` is fixed by its angle
        phi = np.arctan2(mean[:, 1], mean[:, 0])
        turn = np.stack([np.stack([np.cos(phi), -np.sin(phi)], 1), np.stack([np.sin(phi), np.cos(phi)], 1)], 1)
        true_mean = 3 * np.stack([np.cos(phi), np.sin(phi)], axis=1)
        true_cov = turn @ np.diag([1.0, 0.1]) @ turn.transpose(0, 2, 1)
        args = [torch.as_tensor(np.asarray(a), dtype=torch.float64) for a in (mean, cov, true_mean, true_cov)]
        return float(sot.ot.bures_wasserstein_squared(*args).mean())

    generated = model.sample(200, n_steps=30)
    assert generated[1].shape == (200, 2, 2)
    # positive semi-definite: eigenvalues the flow left below the training ridge clip to zero
    assert np.all(np.linalg.eigvalsh(generated[1]) > -1e-6)
    noise_mean, noise_cov = model.draw_noise(200)
    noise = (noise_mean * model.scale + model.center).numpy(), (noise_cov * model.scale**2).numpy()
    assert distance_to_truth(*generated) < 0.3 * distance_to_truth(*noise)


def test_gaussian_mode_returns_the_known_covariances_without_the_ridge():
    # near-singular covariances of niches with fewer points than dimensions: a ridge of 1e-2 in
    # standardised units is several times their smallest eigenvalues
    rng = np.random.default_rng(0)
    factors = rng.normal(size=(3, 3, 2))
    covariances = factors @ factors.transpose(0, 2, 1) + 1e-4 * np.eye(3)
    means = rng.normal(scale=3.0, size=(3, 3))
    model = GaussianFlowMatching(3, width=16, n_layers=1, ridge=1e-2)
    model.fit(means, covariances, n_steps=1, device="cpu", progress=False)
    targets = model._standardise(torch.as_tensor(means).float(), torch.as_tensor(covariances).float())

    def oracle(mean, cov, t, codes):
        # the exact flow to target ``i`` for sample ``i``: Euler lands on it at the last step
        matrix, _ = sot.ot.gaussian_map(mean.double(), cov.double(), targets[0].double(), targets[1].double())
        remaining = (1 - t.double())[:, None]
        mean_velocity = (targets[0].double() - mean.double()) / remaining
        matrix_velocity = (matrix - torch.eye(3, dtype=torch.float64)) / remaining[..., None]
        return mean_velocity.float(), (0.5 * (matrix_velocity + matrix_velocity.transpose(1, 2))).float()

    model.velocity = oracle
    generated_means, generated_covariances = model.sample(3, n_steps=20)
    np.testing.assert_allclose(generated_means, means, atol=1e-3)
    # a tenth of the old bias, ridge · scale² on the diagonal
    np.testing.assert_allclose(generated_covariances, covariances, atol=1e-3 * float(model.scale) ** 2)


def test_sampling_respects_sizes_and_masks():
    rng = np.random.default_rng(4)
    sizes = np.where(np.arange(40) < 20, 3, 5)
    family = PointClouds.from_padded(rng.normal(size=(40, 5, 2)), np.arange(5)[None, :] < sizes[:, None])
    model = WassersteinFlowMatching(2, 6, **SMALL).fit(family, n_steps=5, device="cpu", progress=False)
    drawn = model.sample(200, n_steps=3)
    assert drawn.points.shape == (200, 6, 2)
    assert set(drawn.sizes.tolist()) == {3, 5}
    assert 0.35 < float((drawn.sizes == 3).float().mean()) < 0.65
    assert torch.all(drawn.points[~drawn.mask] == 0) and torch.isfinite(drawn.points).all()
    fixed = model.sample(sizes=[1, 4, 6], n_steps=3)
    assert fixed.sizes.tolist() == [1, 4, 6]
    np.testing.assert_allclose(fixed.weights.sum(1).numpy(), 1.0, rtol=1e-6)
    assert model.sample(4, sizes=2, n_steps=2).sizes.tolist() == [2] * 4
    with pytest.raises(ValueError, match="max_size"):
        model.sample(2, sizes=7)
    with pytest.raises(ValueError, match="entries"):
        model.sample(3, sizes=[2, 2])


def test_conditions_change_the_output(conditional_model):
    model = conditional_model
    left = model.sample(40, labels="left", n_steps=20, random_state=5)
    right = model.sample(40, labels="right", n_steps=20, random_state=5)
    left_x = float(left.points[..., 0][left.mask].mean())
    right_x = float(right.points[..., 0][right.mask].mean())
    assert left_x < -1.5 and right_x > 1.5
    # guidance amplifies the difference between the conditional and the null field
    guided = model.sample(40, labels="right", n_steps=20, random_state=5, guidance=2.0)
    assert not torch.allclose(guided.points, right.points)
    mixed = model.sample(labels=["left", "right", 1], n_steps=20, random_state=5)
    assert len(mixed) == 3


def test_continuous_conditions_move_the_niche_means_linearly(tmp_path):
    # niches whose mean is (c, -c / 2) for a condition c in [-2, 2]: the generated niche means follow c
    rng = np.random.default_rng(3)
    condition = rng.uniform(-2, 2, size=(256, 1))
    means = np.column_stack([condition[:, 0], -0.5 * condition[:, 0]])
    family = PointClouds.from_padded(means[:, None, :] + 0.3 * rng.normal(size=(256, 6, 2)))
    torch.manual_seed(0)
    model = WassersteinFlowMatching(2, 6, condition_dim=1, **SMALL)
    model.fit(family, conditions=condition, n_steps=300, learning_rate=2e-3, device="cpu", progress=False)
    asked = np.linspace(-1.5, 1.5, 7)[:, None].repeat(8, 0)
    generated = model.sample(conditions=asked, n_steps=20, random_state=1)
    assert generated.points.shape == (56, 6, 2)
    centres = (generated.points * generated.weights[..., None]).sum(1).numpy()
    slope_x, intercept_x = np.polyfit(asked[:, 0], centres[:, 0], 1)
    slope_y, _ = np.polyfit(asked[:, 0], centres[:, 1], 1)
    assert abs(slope_x - 1) < 0.2 and abs(slope_y + 0.5) < 0.15 and abs(intercept_x) < 0.2
    # one vector for all clouds
    assert model.sample(3, conditions=np.array([1.0]), n_steps=2).points.shape == (3, 6, 2)
    # the standardisation of the vectors survives save / load
    model.save(tmp_path / "vectors.pt")
    loaded = WassersteinFlowMatching.load(tmp_path / "vectors.pt", device="cpu")
    torch.testing.assert_close(
        loaded.sample(conditions=asked[:5], n_steps=3).points, model.sample(conditions=asked[:5], n_steps=3).points
    )
    with pytest.raises(ValueError, match=r"`conditions` must have shape \(4, 1\)"):
        model.sample(4, conditions=np.zeros((4, 2)))
    with pytest.raises(ValueError, match="pass `conditions`"):
        model.sample(4)
    with pytest.raises(ValueError, match="`conditions` holds NaN"):
        model.sample(1, conditions=np.array([[np.nan]]))
    with pytest.raises(ValueError, match="without `condition_dim`"):
        WassersteinFlowMatching(2, 6, **SMALL).fit(family, conditions=condition, progress=False)


def test_transport_from_a_source_family_recovers_a_translation():
    # targets are the source clouds translated by a fixed vector; the two families are given
    # unpaired (shuffled), and unseen source clouds are transported by that vector
    rng = np.random.default_rng(4)
    shift = np.array([1.5, -1.0])

    def clouds(n):
        return 2 * rng.normal(size=(n, 1, 2)) + 0.4 * rng.normal(size=(n, 6, 2))

    source = PointClouds.from_padded(clouds(256))
    target = PointClouds.from_padded(clouds(256) + shift)
    torch.manual_seed(0)
    # a source family is re-paired within the minibatch whatever `pairing_pool` (a pool of 64
    # moved unseen clouds by (1.82, -0.88), RMS error 0.45 against 0.25, at 300 steps)
    model = WassersteinFlowMatching(2, 6, **SMALL)
    model.fit(target, source=source, n_steps=300, learning_rate=2e-3, device="cpu", progress=False)
    unseen = clouds(40)
    moved = model.sample(source=PointClouds.from_padded(unseen), n_steps=20)
    assert moved.points.shape == (40, 6, 2)
    displacement = (moved.points.numpy() - unseen).reshape(-1, 2)
    np.testing.assert_allclose(displacement.mean(0), shift, atol=0.2)
    assert np.sqrt(((displacement - shift) ** 2).sum(1).mean()) < 0.3 * np.linalg.norm(shift)
    with pytest.raises(ValueError, match="pass the clouds to transport as `source`"):
        model.sample(3)
    with pytest.raises(ValueError, match="`sizes` cannot be given with `source`"):
        model.sample(source=source[:2], sizes=3)
    with pytest.raises(ValueError, match="`source` clouds have dimension 3"):
        model.sample(source=PointClouds.from_padded(np.zeros((2, 4, 3))))
    with pytest.raises(ValueError, match="trained from a `source` family"):
        model.fit(target, n_steps=1, progress=False)
    noise_model = WassersteinFlowMatching(2, 6, **SMALL).fit(target, n_steps=1, progress=False)
    with pytest.raises(ValueError, match="trained from noise"):
        noise_model.sample(source=source[:2])


def test_default_schedule_warms_up_then_decays_to_zero(tmp_path):
    # the default run: Adam at a peak of 1e-3 after the warm-up, half a cosine down to a rate of
    # exactly 0 at the last step; the checkpoint records the run, and a resume with another
    # schedule is refused by name
    family = _ring_family(32, 4)
    model = WassersteinFlowMatching(2, 4, **SMALL)
    path = tmp_path / "wfm.pt"
    model.fit(family, n_steps=20, warmup_steps=5, checkpoint=path, device="cpu", progress=False)
    contents = torch.load(path, weights_only=True)
    assert contents["run"]["schedule"] == "cosine" and contents["run"]["warmup_steps"] == 5
    assert contents["run"]["learning_rate"] == 1e-3 and contents["run"]["decay_rate"] == 0.0
    assert contents["scheduler"]["_last_lr"] == [0.0]
    with pytest.raises(ValueError, match="`schedule`='step' differs"):
        model.fit(family, n_steps=20, warmup_steps=5, schedule="step", checkpoint=path, progress=False)
    # the official step schedule keeps the rate: ×0.998 once per 1,000 steps
    model = WassersteinFlowMatching(2, 4, **SMALL)
    step_path = tmp_path / "wfm-step.pt"
    model.fit(
        family, n_steps=20, schedule="step", warmup_steps=0, decay_rate=0.998, checkpoint=step_path, progress=False
    )
    assert torch.load(step_path, weights_only=True)["scheduler"]["_last_lr"] == [1e-3]


def test_training_is_reproducible():
    family = _ring_family(32)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = WassersteinFlowMatching(2, 8, **SMALL).fit(family, n_steps=5, device="cpu", progress=False)
        runs.append((model.history, model.sample(3, n_steps=4, random_state=2).points))
    assert runs[0][0] == runs[1][0]
    torch.testing.assert_close(runs[0][1], runs[1][1])


def test_save_and_load_round_trip(tmp_path, conditional_model):
    model = conditional_model
    model.save(tmp_path / "wfm.pt")
    loaded = WassersteinFlowMatching.load(tmp_path / "wfm.pt", device="cpu")
    assert loaded.history == model.history and loaded.label_names == ["left", "right"]
    torch.testing.assert_close(
        loaded.sample(5, labels="right", n_steps=5).points, model.sample(5, labels="right", n_steps=5).points
    )
    gaussian = GaussianFlowMatching(2, labels=["a", "b"], width=16, n_layers=1)
    gaussian.fit(np.zeros((4, 2)), np.tile(np.eye(2), (4, 1, 1)), ["a", "b", "a", "b"], n_steps=3, progress=False)
    gaussian.save(tmp_path / "gaussian.pt")
    loaded_gaussian = GaussianFlowMatching.load(tmp_path / "gaussian.pt", device="cpu")
    for mine, theirs in zip(gaussian.sample(3, labels="a"), loaded_gaussian.sample(3, labels="a"), strict=True):
        np.testing.assert_allclose(mine, theirs)
    with pytest.raises(ValueError, match="not a GaussianFlowMatching"):
        GaussianFlowMatching.load(tmp_path / "wfm.pt")
    # a checkpoint of before source families (no `from_source` buffer) loads as a model trained from noise
    checkpoint = torch.load(tmp_path / "wfm.pt", weights_only=True)
    del checkpoint["state"]["from_source"]
    torch.save(checkpoint, tmp_path / "old.pt")
    assert not bool(WassersteinFlowMatching.load(tmp_path / "old.pt", device="cpu").from_source)


def test_model_rejects_bad_input(conditional_model):
    with pytest.raises(ValueError, match="noise"):
        WassersteinFlowMatching(2, 4, noise="uniform")
    with pytest.raises(ValueError, match="distinct"):
        WassersteinFlowMatching(2, 4, labels=["a", "a"])
    with pytest.raises(ValueError, match="dimension 3"):
        WassersteinFlowMatching(2, 4).fit(PointClouds.from_padded(np.zeros((2, 4, 3))), progress=False)
    with pytest.raises(ValueError, match="pass `labels`"):
        conditional_model.fit(_ring_family(4, 6), progress=False)
    with pytest.raises(ValueError, match="Unknown label 'up'"):
        conditional_model.sample(2, labels="up")
    with pytest.raises(ValueError, match="method"):
        conditional_model.sample(2, method="rk4")
    with pytest.raises(ValueError, match="covariances"):
        GaussianFlowMatching(2).fit(np.zeros((3, 2)), np.zeros((3, 3, 3)), progress=False)


# ---------------------------------------------------------------------------- AnnData front-end


@pytest.fixture(scope="module")
def tissue():
    adata = sot.datasets.simulated_tissue(300, n_latent=3, n_cell_types=3, random_state=0)
    sot.pp.niches(adata, k=6, use_rep="X_latent", include_center=False)
    return adata


def test_wfm_and_generate_niches_survive_write_h5ad(tissue, tmp_path):
    adata = tissue.copy()
    model = sot.tl.wfm(
        adata, condition_key="cell_type", n_steps=10, width=32, n_layers=1, pairing_pool=32, progress=False
    )
    assert isinstance(model, WassersteinFlowMatching) and model.config["pairing_pool"] == 32
    result = adata.uns["wfm"]
    assert result["loss"].shape == (10,) and result["params"]["mode"] == "pointcloud"
    assert result["params"]["pairing_pool"] == 32
    assert list(result["params"]["conditions"]) == ["type_0", "type_1", "type_2"]
    sot.tl.generate_niches(adata, model, n=7, condition="type_1", n_steps=5, condition_key="cell_type")
    generated = adata.uns["wfm_generated"]
    assert generated["points"].shape == (7, 6, 3) and generated["mask"].all()
    assert list(generated["conditions"]) == ["type_1"] * 7
    sot.tl.generate_niches(adata, model, n=20, n_steps=2, key_added="mixed")
    assert set(adata.uns["mixed"]["conditions"]) <= {"type_0", "type_1", "type_2"}

    adata.write_h5ad(tmp_path / "wfm.h5ad")
    back = ad.read_h5ad(tmp_path / "wfm.h5ad")
    np.testing.assert_allclose(back.uns["wfm"]["loss"], result["loss"])
    np.testing.assert_array_equal(back.uns["wfm_generated"]["points"], generated["points"])
    np.testing.assert_array_equal(back.uns["wfm_generated"]["mask"], generated["mask"])
    assert list(back.uns["wfm_generated"]["conditions"]) == ["type_1"] * 7
    assert back.uns["wfm_generated"]["params"]["condition_key"] == "cell_type"


def test_gaussian_mode_front_end_and_copy(tissue, tmp_path):
    before = set(tissue.uns)
    adata, model = sot.tl.wfm(tissue, mode="gaussian", n_steps=5, width=16, n_layers=1, progress=False, copy=True)
    assert set(tissue.uns) == before and "wfm" in adata.uns
    assert isinstance(model, GaussianFlowMatching)
    out = sot.tl.generate_niches(adata, model, n=4, size=5, n_steps=3, copy=True)
    generated = out.uns["wfm_generated"]
    assert generated["points"].shape == (4, 5, 3) and generated["covariances"].shape == (4, 3, 3)
    assert "wfm_generated" not in adata.uns
    out.write_h5ad(tmp_path / "gaussian.h5ad")
    np.testing.assert_allclose(
        ad.read_h5ad(tmp_path / "gaussian.h5ad").uns["wfm_generated"]["means"], generated["means"]
    )


def test_front_end_rejects_bad_input_and_leaves_adata_unchanged(tissue):
    adata = tissue.copy()
    before = set(adata.uns)
    with pytest.raises(KeyError, match="condition_key"):
        sot.tl.wfm(adata, condition_key="nope", n_steps=1, progress=False)
    with pytest.raises(KeyError, match="niche_key"):
        sot.tl.wfm(adata, niche_key="nope", n_steps=1, progress=False)
    with pytest.raises(ValueError, match="mode"):
        sot.tl.wfm(adata, mode="bures", n_steps=1, progress=False)
    with pytest.raises(ValueError, match="n_steps"):
        sot.tl.wfm(adata, n_steps=0, progress=False)
    assert set(adata.uns) == before
    model = sot.tl.wfm(adata, n_steps=1, width=16, n_layers=1, progress=False)
    with pytest.raises(ValueError, match="without conditions"):
        sot.tl.generate_niches(adata, model, condition="type_0")
    with pytest.raises(ValueError, match="size"):
        sot.tl.generate_niches(adata, model, size=50)
    other = adata.copy()
    sot.pp.niches(other, k=4)  # niches on the 50 genes of .X
    with pytest.raises(ValueError, match="dimension 50"):
        sot.tl.generate_niches(other, model)
    assert "wfm_generated" not in adata.uns


def test_generated_niches_plot(tissue, tmp_path):
    import matplotlib.pyplot as plt

    adata = tissue.copy()
    model = sot.tl.wfm(adata, condition_key="cell_type", n_steps=3, width=16, n_layers=1, progress=False)
    sot.tl.generate_niches(adata, model, n=12, n_steps=2, condition_key="cell_type")
    axes = sot.pl.generated_niches(adata, cell_type_key="cell_type", show=False, save=tmp_path / "wfm.png")
    shown = sorted(set(adata.uns["wfm_generated"]["conditions"]))
    assert axes.shape == (2, len(shown))
    assert sorted(ax.get_title() for ax in axes[0]) == shown
    # the composition bars of each panel add up to one, for real and for generated points
    widths = np.array([[patch.get_width() for patch in ax.patches] for ax in axes[1]])
    np.testing.assert_allclose(widths.reshape(len(shown), 2, -1).sum(-1), 1.0)
    assert (tmp_path / "wfm.png").stat().st_size > 1000
    one = sot.pl.generated_niches(adata, conditions=[shown[0]], show=False)
    assert one.shape == (1, 1)
    with pytest.raises(ValueError, match="were not generated"):
        sot.pl.generated_niches(adata, conditions=["type_9"], show=False)
    with pytest.raises(KeyError, match="generate_niches"):
        sot.pl.generated_niches(adata, key="nope", show=False)
    _, ax = plt.subplots()
    with pytest.raises(ValueError, match="`ax` holds one view"):
        sot.pl.generated_niches(adata, cell_type_key="cell_type", ax=ax, show=False)
    assert sot.pl.generated_niches(adata, conditions=[shown[0]], ax=ax, show=False) is ax
    plt.close("all")


def test_front_end_continuous_conditions(tissue, tmp_path):
    adata = tissue.copy()
    model = sot.tl.wfm(adata, condition_key="X_latent", n_steps=5, width=16, n_layers=1, progress=False)
    assert model.config["condition_dim"] == 3 and adata.uns["wfm"]["params"]["condition_dim"] == 3
    vectors = adata.obsm["X_latent"][:4]
    sot.tl.generate_niches(adata, model, condition=vectors, n_steps=2)
    generated = adata.uns["wfm_generated"]
    assert generated["points"].shape == (4, 6, 3) and "conditions" not in generated
    np.testing.assert_allclose(generated["condition_vectors"], vectors, rtol=1e-6)
    # one vector for all, or vectors of random cells of the key
    sot.tl.generate_niches(adata, model, n=3, condition=vectors[0], n_steps=2, key_added="one")
    assert adata.uns["one"]["condition_vectors"].shape == (3, 3)
    sot.tl.generate_niches(adata, model, n=5, condition_key="X_latent", n_steps=2, key_added="drawn")
    rows = adata.uns["drawn"]["condition_vectors"]
    assert all(np.isclose(adata.obsm["X_latent"], row, rtol=1e-6).all(1).any() for row in rows)
    adata.write_h5ad(tmp_path / "vectors.h5ad")
    back = ad.read_h5ad(tmp_path / "vectors.h5ad")
    np.testing.assert_array_equal(back.uns["wfm_generated"]["condition_vectors"], generated["condition_vectors"])
    with pytest.raises(ValueError, match=r"`condition` must be vectors of length 3"):
        sot.tl.generate_niches(adata, model, condition=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="pass `condition` \\(vectors\\) or a `condition_key`"):
        sot.tl.generate_niches(adata, model)
    with pytest.raises(ValueError, match="must be a key of `.obsm`"):
        sot.tl.generate_niches(adata, model, condition_key="cell_type")
    with pytest.raises(ValueError, match="categorical conditions only"):
        sot.tl.wfm(adata, condition_key="X_latent", mode="gaussian", n_steps=1, progress=False)
    adata.obs["X_latent"] = "x"
    with pytest.raises(ValueError, match="both a column of `adata.obs` and a key of `adata.obsm`"):
        sot.tl.wfm(adata, condition_key="X_latent", n_steps=1, progress=False)
    with pytest.raises(KeyError, match="neither a column of `adata.obs`"):
        sot.tl.wfm(adata, condition_key="nope", n_steps=1, progress=False)


def test_front_end_transports_a_source_family(tissue):
    adata = tissue.copy()
    adata.obs["control"] = adata.obsm["spatial"][:, 0] < np.median(adata.obsm["spatial"][:, 0])
    model = sot.tl.wfm(
        adata, source="control", condition_key="cell_type", n_steps=5, width=16, n_layers=1, progress=False
    )
    params = adata.uns["wfm"]["params"]
    assert params["n_source_niches"] == int(adata.obs["control"].sum())
    assert params["n_niches"] == adata.n_obs - params["n_source_niches"]
    cells = np.flatnonzero(adata.obs["control"])[:7]
    sot.tl.generate_niches(adata, model, source=cells, condition_key="cell_type", n_steps=2)
    generated = adata.uns["wfm_generated"]
    assert generated["points"].shape == (7, 6, 3)
    np.testing.assert_array_equal(generated["source_cells"], cells)
    # by default each source niche keeps its own centre's label
    np.testing.assert_array_equal(generated["conditions"], adata.obs["cell_type"].astype(str).to_numpy()[cells])
    with pytest.raises(ValueError, match="pass the cells to transport as `source`"):
        sot.tl.generate_niches(adata, model)
    with pytest.raises(ValueError, match="`size` cannot be given with `source`"):
        sot.tl.generate_niches(adata, model, source=cells, size=3)
    with pytest.raises(ValueError, match="`adata.obs\\['cell_type'\\]` must be boolean"):
        sot.tl.wfm(adata, source="cell_type", n_steps=1, progress=False)
    with pytest.raises(ValueError, match="`source` selects no cell"):
        sot.tl.wfm(adata, source=np.zeros(adata.n_obs, dtype=bool), n_steps=1, progress=False)
    noise_model = sot.tl.wfm(adata, n_steps=1, width=16, n_layers=1, progress=False)
    with pytest.raises(ValueError, match="trained from noise"):
        sot.tl.generate_niches(adata, noise_model, source=cells)
