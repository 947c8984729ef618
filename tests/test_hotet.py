import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

import spatialot as sot
from spatialot.models import HOTET
from spatialot.models._hotet import batch_dual_loss
from spatialot.models._icnn import BatchedICNN, inverse_positive, positive

NON_GAUSSIAN_SEED, NON_GAUSSIAN_STEPS = 0, 300
SMALL = {"hidden": [16, 16], "width": 16, "n_layers": 1, "n_heads": 2, "mlp_width": 32, "hyper_width": 32}


def _gaussians(rng, n, dim):
    means = rng.uniform(0, 3, size=(n, dim))
    factors = rng.normal(size=(n, dim, 2 * dim))
    return means, factors @ factors.transpose(0, 2, 1) / (2 * dim)


def _sample(rng, means, covs, size):
    noise = rng.normal(size=(len(means), size, means.shape[1]))
    return means[:, None, :] + noise @ np.linalg.cholesky(covs).transpose(0, 2, 1)


@pytest.fixture(scope="module")
def gaussian_problem():
    """A short HOTET run on 2-D Gaussians towards a Gaussian reference given as a large sample."""
    rng = np.random.default_rng(0)
    dim = 2
    ref_mean, ref_cov = _gaussians(rng, 1, dim)
    reference = _sample(rng, ref_mean, ref_cov, 2000)[0]
    means, covs = _gaussians(rng, 64, dim)
    clouds = sot.ot.PointClouds.from_padded(_sample(rng, means, covs, 64))
    model = HOTET(dim, **SMALL, n_anchors=32)
    model.fit(clouds, reference=reference, n_steps=400, n_reference_samples=128, learning_rate=3e-3, progress=False)
    return {"model": model, "clouds": clouds, "means": means, "covs": covs, "ref": (ref_mean[0], ref_cov[0])}


@pytest.mark.parametrize("quadratic", ["full", "identity"])
def test_icnn_is_convex_for_any_parameters(quadratic):
    torch.manual_seed(0)
    icnn = BatchedICNN(3, [8, 8, 4], quadratic=quadratic)
    params = torch.randn(2, icnn.n_params, dtype=torch.float64)
    points = torch.randn(2, 5, 3, dtype=torch.float64)
    for b in range(2):
        for i in range(5):
            hessian = torch.autograd.functional.hessian(
                lambda x, b=b: icnn.potential(x[None, None], params[b : b + 1]).sum(), points[b, i]
            )
            assert torch.allclose(hessian, hessian.T, atol=1e-8)
            assert torch.linalg.eigvalsh(hessian).min() > -1e-8


def test_icnn_starts_near_the_identity_and_gradient_matches_finite_differences():
    icnn = BatchedICNN(4, None)
    assert icnn.hidden == (64, 64, 32)
    params = icnn.initial_params(torch.Generator().manual_seed(0))[None].double()
    points = torch.randn(1, 10, 4, dtype=torch.float64)
    mapped = icnn.gradient(points, params)
    assert torch.allclose(mapped, points, atol=0.1)
    step = 1e-6
    shifted = points.clone()
    shifted[0, :, 1] += step
    finite = (icnn.potential(shifted, params) - icnn.potential(points, params)) / step
    assert torch.allclose(mapped[0, :, 1], finite[0], atol=1e-4)
    with pytest.raises(ValueError, match="ICNN parameters must have shape"):
        icnn.potential(points, params[:, :-1])
    with pytest.raises(ValueError, match="quadratic"):
        BatchedICNN(2, quadratic="rank")


def test_non_negative_weights_never_stop_passing_gradients():
    """A weight whose free value crossed zero (a ReLU would clip it to 0 for good) still trains itself and its unit."""
    torch.manual_seed(1)
    icnn = BatchedICNN(2, [6, 4])
    params = icnn.initial_params(torch.Generator().manual_seed(0))[None].double()
    pieces = icnn.split(params)
    for name in ("u", "U1"):
        pieces[name].fill_(-0.3)  # below 0: ReLU(-0.3) = 0 passes no gradient to anything behind it
    params.requires_grad_(True)
    points = torch.randn(1, 32, 2, dtype=torch.float64)
    (grad,) = torch.autograd.grad(icnn.gradient(points, params, create_graph=True).square().sum(), params)
    blocks = dict(zip(icnn.shapes, torch.split(grad[0], list(icnn.sizes.values())), strict=True))
    for name, block in blocks.items():
        assert float(block.abs().max()) > 0, name  # every layer of the ICNN still learns
    # the reparametrisation: non-negative everywhere, the identity's inverse, and not exponential:
    # a small weight changes by a step of the free value's size (a softplus would change it by about 1 % of itself)
    values = torch.tensor([0.0, 1e-6, 0.01, 1.0, 30.0], dtype=torch.float64)
    torch.testing.assert_close(positive(inverse_positive(values)), values)
    torch.testing.assert_close(positive(torch.tensor([-3.0, -0.5, 0.0, 2.0])), torch.tensor([9.0, 0.25, 0.0, 4.0]))
    small = inverse_positive(torch.tensor(1e-4))
    assert float(positive(small + 1e-2)) > 2e-4  # one Adam step of 1e-2 more than doubles it


def test_gradients_reach_every_block():
    """One training loss: every weight of both hypernetworks and every block of both ICNNs gets a gradient."""
    dim = 3
    family = sot.datasets.w2_benchmark(4, dim, random_state=0)
    clouds = sot.ot.PointClouds.from_padded(family.sample(32, 1).astype(np.float32))
    model = HOTET(dim, **SMALL)
    model.fit(clouds, reference=(np.zeros(dim), np.eye(dim)), n_steps=1, learning_rate=1e-12, progress=False)
    model.train()
    reference = model.sample_reference(4, 64, np.random.default_rng(0))
    model._step_loss(clouds, reference).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and float(parameter.grad.abs().max()) > 0, name
    for network in (model.forward_net, model.inverse_net):
        blocks = model.icnn.split(network.head.bias.grad[None])
        for name, block in blocks.items():
            assert float(block.abs().max()) > 0, name


def test_trained_maps_stay_monotone_with_every_hidden_unit_alive(gaussian_problem):
    model, clouds = gaussian_problem["model"], gaussian_problem["clouds"]
    for direction in ("forward", "inverse"):
        with torch.no_grad():
            params, base = model.icnn_params(clouds[:8], direction=direction)
        pieces = model.icnn.split(params)
        # no output weight is clipped to 0 (with ReLU clipping most were within 50 steps): every free value
        # is away from 0, where a square would pass no gradient
        assert float(pieces["u"].abs().min()) > 1e-6
        x = torch.randn(8, 200, 2, generator=torch.Generator().manual_seed(0))
        y = torch.randn(8, 200, 2, generator=torch.Generator().manual_seed(1))
        gx, gy = model.icnn.gradient(x, params, base), model.icnn.gradient(y, params, base)
        # the gradient of a convex potential is a monotone map
        assert float(((gx - gy) * (x - y)).sum(-1).min()) >= -1e-5
        first = params[:1]
        hessian = torch.autograd.functional.hessian(
            lambda p, first=first: model.icnn.potential(p[None, None], first).sum(), x[0, 0]
        )
        assert float(torch.linalg.eigvalsh(hessian).min()) > -1e-5


def test_one_non_gaussian_measure_is_mapped_better_than_by_the_gaussian_map():
    """A single measure of the Wasserstein-2 benchmark (exact maps known): the ICNN learns beyond the Gaussian start."""
    dim = 2
    family = sot.datasets.w2_benchmark(1, dim, random_state=NON_GAUSSIAN_SEED)
    clouds = sot.ot.PointClouds.from_padded(family.sample(512, 1).astype(np.float32))
    model = HOTET(dim, **SMALL)
    model.fit(clouds, reference=(np.zeros(dim), np.eye(dim)), n_steps=NON_GAUSSIAN_STEPS, progress=False)
    gaussian = HOTET(dim, **SMALL)  # the Gaussian start: the closed-form map of the sample moments
    gaussian.fit(clouds, reference=(np.zeros(dim), np.eye(dim)), n_steps=1, learning_rate=1e-12, progress=False)
    z = np.random.default_rng(2).standard_normal((1, 2000, dim))
    x = family.forward(z)  # exact Brenier map of the reference onto the measure
    variance = ((x - x.mean(1, keepdims=True)) ** 2).sum(-1).mean()

    def errors(m):
        forward = 100 * ((m.transport(clouds, x.astype(np.float32)) - z) ** 2).sum(-1).mean() / dim
        inverse = 100 * ((m.inverse_transport(clouds, z.astype(np.float32)) - x) ** 2).sum(-1).mean() / variance
        return forward, inverse

    (learned_fwd, learned_inv), (gauss_fwd, gauss_inv) = errors(model), errors(gaussian)
    # measured: forward below 0.7x the Gaussian map's error; inverse 9.9 against 10.4 %
    assert learned_fwd < 0.7 * gauss_fwd
    assert learned_inv < gauss_inv


def test_maps_of_gaussians_approach_the_closed_form(gaussian_problem):
    model, (ref_mean, ref_cov) = gaussian_problem["model"], gaussian_problem["ref"]
    rng = np.random.default_rng(1)
    means, covs = _gaussians(rng, 8, 2)  # sources unseen in training
    clouds = sot.ot.PointClouds.from_padded(_sample(rng, means, covs, 64))
    points = _sample(rng, means, covs, 500)
    predicted = model.transport(clouds, points)
    matrix, shift = sot.ot.gaussian_map(
        torch.as_tensor(means), torch.as_tensor(covs), torch.as_tensor(ref_mean), torch.as_tensor(ref_cov)
    )
    truth = points @ matrix.numpy().transpose(0, 2, 1) + shift.numpy()[:, None, :]
    variance = np.trace(ref_cov)
    uvp = 100 * ((predicted - truth) ** 2).sum(-1).mean() / variance
    uvp_identity = 100 * ((points - truth) ** 2).sum(-1).mean() / variance
    assert uvp < 25
    assert uvp < 0.1 * uvp_identity


def test_transport_via_the_inverse_inverts_the_inverse_map(gaussian_problem):
    model, (ref_mean, ref_cov) = gaussian_problem["model"], gaussian_problem["ref"]
    rng = np.random.default_rng(4)
    means, covs = _gaussians(rng, 6, 2)  # unseen sources, one of them with padding
    samples = _sample(rng, means, covs, 48)
    clouds = sot.ot.PointClouds.from_list([samples[0, :30], *samples[1:]])
    points = _sample(rng, means, covs, 300)
    inverted = model.transport(clouds, points, via="inverse")
    # its defining property, whatever the training reached: the inverse map takes it back
    back = model.inverse_transport(clouds, inverted)
    assert np.abs(back - points).max() < 1e-2 * np.sqrt(np.trace(ref_cov))
    # and it is a map to the reference as good as the forward network's on Gaussians
    matrix, shift = sot.ot.gaussian_map(
        torch.as_tensor(means), torch.as_tensor(covs), torch.as_tensor(ref_mean), torch.as_tensor(ref_cov)
    )
    truth = points @ matrix.numpy().transpose(0, 2, 1) + shift.numpy()[:, None, :]
    uvp = 100 * ((inverted - truth) ** 2).sum(-1).mean() / np.trace(ref_cov)
    assert uvp < 25
    own = model.transport(clouds, via="inverse")
    assert own.shape == (6, 48, 2) and np.all(own[0, 30:] == 0)  # padding stays zero
    given = model.transport(clouds, clouds.points.numpy(), via="inverse")  # the same points, given
    np.testing.assert_allclose(own[0, :30], given[0, :30], atol=1e-4)
    np.testing.assert_allclose(own[1:], given[1:], atol=1e-4)
    with pytest.raises(ValueError, match="`via` must be 'forward' or 'inverse'"):
        model.transport(clouds, via="backward")


def test_transported_clouds_are_closer_to_the_reference(gaussian_problem):
    model, clouds = gaussian_problem["model"], gaussian_problem["clouds"][:6]
    transported = sot.ot.PointClouds.from_padded(model.transport(clouds), clouds.mask)
    reference = model.reference_points[:64].expand(len(clouds), 64, 2)
    reference = sot.ot.PointClouds.from_padded(reference)
    before = sot.ot.exact_w2_squared(clouds, reference)
    after = sot.ot.exact_w2_squared(transported, reference)
    assert np.all(after < before)
    assert np.median(after / before) < 0.3


def test_embedding_distances_follow_w2(gaussian_problem):
    model, clouds = gaussian_problem["model"], gaussian_problem["clouds"][:12]
    embedding = model.embed(clouds)
    assert embedding.shape == (12, 32 * 2)
    left, right = np.triu_indices(12, 1)
    learned = ((embedding[left] - embedding[right]) ** 2).sum(-1)
    exact = sot.ot.exact_w2_squared(clouds[left], clouds[right])
    assert np.corrcoef(learned, exact)[0, 1] > 0.9


def test_save_load_round_trip(gaussian_problem, tmp_path):
    model, clouds = gaussian_problem["model"], gaussian_problem["clouds"][:4]
    model.save(tmp_path / "hotet.pt")
    loaded = HOTET.load(tmp_path / "hotet.pt", device="cpu")
    assert loaded.reference_is_cloud and loaded.history == model.history
    np.testing.assert_array_equal(loaded.embed(clouds), model.embed(clouds))
    np.testing.assert_array_equal(loaded.transport(clouds), model.transport(clouds))
    with pytest.raises(ValueError, match="not a Wormhole|holds a HOTET"):
        sot.models.Wormhole.load(tmp_path / "hotet.pt")
    # files of before the squared weights (no weights version: 1, ReLU; 2: softplus) would read their weights wrongly
    contents = torch.load(tmp_path / "hotet.pt", weights_only=True)
    assert contents["weights_version"] == 3
    contents["weights_version"] = 2
    torch.save(contents, tmp_path / "softplus.pt")
    with pytest.raises(ValueError, match=r"weights version 2, this version reads 3\): train the model again"):
        HOTET.load(tmp_path / "softplus.pt")
    del contents["weights_version"]
    torch.save(contents, tmp_path / "old.pt")
    with pytest.raises(ValueError, match=r"weights version 1, this version reads 3\): train the model again"):
        HOTET.load(tmp_path / "old.pt")


def test_model_errors(gaussian_problem):
    clouds = gaussian_problem["clouds"]
    with pytest.raises(RuntimeError, match="not fitted"):
        HOTET(2, **SMALL).embed(clouds)
    with pytest.raises(ValueError, match="dimension 2"):
        HOTET(3, **SMALL).fit(clouds, n_steps=1, progress=False)
    with pytest.raises(ValueError, match="`reference` must have shape"):
        HOTET(2, **SMALL).fit(clouds, reference=np.zeros((5, 3)), n_steps=1, progress=False)
    with pytest.raises(ValueError, match="fixed at the first"):
        gaussian_problem["model"].fit(clouds, reference=np.zeros((5, 2)), n_steps=1, progress=False)
    with pytest.raises(ValueError, match="`points` must have shape"):
        gaussian_problem["model"].transport(clouds, np.zeros((5, 3)))
    with pytest.raises(ValueError, match="`dim`"):
        HOTET(0)


def _tissue():
    rng = np.random.default_rng(0)
    adata = ad.AnnData(X=rng.normal(size=(60, 3)).astype(np.float32))
    adata.obsm["spatial"] = rng.uniform(0, 10, size=(60, 2))
    sot.pp.niches(adata, k=5)
    return adata


def test_tl_hotet_writes_and_round_trips(tmp_path):
    adata = _tissue()
    model = HOTET(3, **SMALL, n_anchors=16)
    returned = sot.tl.hotet(adata, model=model, n_steps=20, progress=False)
    assert returned is model
    assert adata.obsm["X_hotet"].shape == (60, 16 * 3)
    result = adata.uns["hotet"]
    assert result["loss"].shape == (20,)
    assert result["anchors"].shape == (16, 3) and result["reference_cov"].shape == (3, 3)
    assert result["params"]["reference"] == "gaussian" and result["params"]["niche_key"] == "niche"
    np.testing.assert_allclose(result["reference_mean"], adata.X.mean(0), atol=0.2)
    adata.write_h5ad(tmp_path / "a.h5ad")
    back = ad.read_h5ad(tmp_path / "a.h5ad")
    np.testing.assert_array_equal(back.obsm["X_hotet"], adata.obsm["X_hotet"])
    np.testing.assert_array_equal(back.uns["hotet"]["loss"], result["loss"])

    # a fitted model is applied without training, and gives the same representation
    copy, same = sot.tl.hotet(adata, model=model, key_added="again", copy=True, progress=False)
    assert same is model and "again" not in adata.uns
    np.testing.assert_allclose(copy.obsm["X_again"], adata.obsm["X_hotet"], rtol=1e-5, atol=1e-6)
    assert copy.uns["again"]["loss"].shape == (0,) and not copy.uns["again"]["params"]["trained"]

    ax = sot.pl.hotet(adata, cells=[0, "1"] if "1" in adata.obs_names else [0, 1], show=False)
    assert len(ax.collections) >= 5
    plt.close("all")


def test_tl_hotet_with_a_reference_cloud():
    adata = _tissue()
    reference = np.random.default_rng(1).normal(size=(30, 3))
    model = sot.tl.hotet(adata, reference=reference, n_steps=2, n_anchors=8, progress=False, device="cpu")
    assert model.reference_is_cloud
    assert adata.uns["hotet"]["params"]["reference"] == "cloud"
    assert {tuple(a) for a in adata.uns["hotet"]["anchors"]} <= {tuple(r) for r in reference.astype(np.float32)}


def test_tl_hotet_bad_input_leaves_adata_unchanged():
    adata = _tissue()
    before = (set(adata.obsm), set(adata.uns))
    with pytest.raises(KeyError, match="niche_key"):
        sot.tl.hotet(adata, niche_key="missing")
    with pytest.raises(ValueError, match="`reference` must be 'gaussian'"):
        sot.tl.hotet(adata, reference="uniform")
    with pytest.raises(ValueError, match=r"shape \(n_points, 3\)"):
        sot.tl.hotet(adata, reference=np.zeros((4, 2)))
    with pytest.raises(ValueError, match="built for 2-D"):
        sot.tl.hotet(adata, model=HOTET(2, **SMALL))
    with pytest.raises(ValueError, match="`n_steps`"):
        sot.tl.hotet(adata, n_steps=0)
    with pytest.raises(KeyError, match="No HOTET result"):
        sot.pl.hotet(adata)
    assert (set(adata.obsm), set(adata.uns)) == before


@pytest.mark.parametrize("shrinkage", [0.0, 0.5, "oas"])
def test_gaussian_base_starts_at_the_plug_in_gaussian_map(shrinkage):
    rng = np.random.default_rng(2)
    means, covs = _gaussians(rng, 4, 3)
    ref_mean, ref_cov = (a[0] for a in _gaussians(rng, 1, 3))
    # clouds of 6 points: few enough that the shrinkage moves the covariance a long way
    clouds = sot.ot.PointClouds.from_padded(_sample(rng, means, covs, 6))
    model = HOTET(3, **SMALL, base="gaussian", shrinkage=shrinkage)
    model.fit(clouds, reference=(ref_mean, ref_cov), n_steps=1, learning_rate=1e-9, progress=False)
    points = _sample(rng, means, covs, 100)
    scale2 = float(model.scale) ** 2

    def plug_in_map(weight):
        sample_means, sample_covs = sot.ot.gaussian_moments(clouds.to(dtype=torch.float64), shrinkage=weight)
        matrix, shift = sot.ot.gaussian_map(
            sample_means,
            sample_covs + 1e-4 * scale2 * torch.eye(3, dtype=torch.float64),
            torch.tensor(ref_mean),
            torch.tensor(ref_cov),
        )
        return points @ matrix.numpy().transpose(0, 2, 1) + shift.numpy()[:, None, :]

    def l2_uvp(predicted, expected):
        return 100 * ((predicted - expected) ** 2).sum(-1).mean() / np.trace(ref_cov)

    predicted = model.transport(clouds, points)
    assert l2_uvp(predicted, plug_in_map(shrinkage)) < 1.0
    # and not the map of another shrinkage: the test tells them apart
    other = 0.0 if shrinkage else 0.5
    assert l2_uvp(predicted, plug_in_map(other)) > 5.0
    with pytest.raises(ValueError, match="`base`"):
        HOTET(3, base="affine")
    with pytest.raises(ValueError, match="`shrinkage` must be 'oas' or a number"):
        HOTET(3, shrinkage="ledoit")
    with pytest.raises(ValueError, match="positive definite"):
        HOTET(3, **SMALL).fit(clouds, reference=(ref_mean, -ref_cov), n_steps=1, progress=False)


def test_training_is_reproducible():
    clouds = sot.ot.PointClouds.from_padded(np.random.default_rng(3).normal(size=(10, 6, 2)))
    runs = [HOTET(2, **SMALL).fit(clouds, n_steps=3, progress=False) for _ in range(2)]
    assert runs[0].history == runs[1].history
    np.testing.assert_array_equal(runs[0].embed(clouds), runs[1].embed(clouds))


# ---------------------------------------------------------------------------- Wasserstein-2 benchmark family


def test_w2_benchmark_maps_are_the_exact_ot_maps():
    """The pairing (z, ∇φ(z)) is an optimal assignment (cyclical monotonicity), as POT's exact solver finds."""
    ot = pytest.importorskip("ot")
    family = sot.datasets.w2_benchmark(3, 3, random_state=1)
    z = np.random.default_rng(2).standard_normal((3, 60, 3))
    x = family.forward(z)
    uniform = np.full(60, 1 / 60)
    for b in range(3):
        cost = ot.dist(z[b], x[b])  # squared Euclidean
        plan = ot.emd(uniform, uniform, cost)
        np.testing.assert_allclose(plan, np.eye(60) / 60, atol=1e-12)
        known = ((x[b] - z[b]) ** 2).sum(-1).mean()
        assert known == pytest.approx(ot.emd2(uniform, uniform, cost), rel=1e-9)
        # a map that is not the gradient of a convex function does not pass: a rotation by 90°
        rotated = z[b] @ np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]).T
        assert ((rotated - z[b]) ** 2).sum(-1).mean() > 1.01 * ot.emd2(uniform, uniform, ot.dist(z[b], rotated))
    # the maps are far from affine: the best affine fit leaves a sizeable residual
    design = np.concatenate([z[0], np.ones((60, 1))], 1)
    residual = x[0] - design @ np.linalg.lstsq(design, x[0], rcond=None)[0]
    assert (residual**2).sum(-1).mean() > 0.02 * ((x[0] - x[0].mean(0)) ** 2).sum(-1).mean()


def test_w2_benchmark_inverse_and_potential():
    family = sot.datasets.w2_benchmark(4, 5, n_ridges=3, random_state=0)
    assert len(family) == 4 and family.dim == 5 and family.directions.shape == (4, 3, 5)
    z = np.random.default_rng(1).standard_normal((4, 20, 5))
    x = family.forward(z)
    np.testing.assert_allclose(family.inverse(x), z, atol=1e-8)
    np.testing.assert_allclose(family.forward(family.inverse(z)), z, atol=1e-8)
    # the map is the gradient of the potential (central differences)
    step = 1e-6
    for k in range(5):
        shift = np.zeros(5)
        shift[k] = step
        numeric = (family.potential(z + shift) - family.potential(z - shift)) / (2 * step)
        np.testing.assert_allclose(numeric, x[..., k], atol=1e-6)
    # no ridges: a translation
    plain = sot.datasets.w2_benchmark(2, 5, n_ridges=0, random_state=0)
    np.testing.assert_allclose(plain.forward(z[:2]), z[:2] + plain.shifts[:, None, :])
    assert family.sample(7, 0).shape == (4, 7, 5)
    np.testing.assert_array_equal(family.sample(7, 3), family.sample(7, 3))
    assert len(family.subset(slice(1, 3))) == 2
    with pytest.raises(ValueError, match="`points` must have shape"):
        family.forward(z[:2])
    with pytest.raises(ValueError, match="`sharpness`"):
        sot.datasets.w2_benchmark(2, 2, sharpness=0)
    with pytest.raises(ValueError, match="`height`"):
        sot.datasets.w2_benchmark(2, 2, height=(1.0, 0.5))
    with pytest.raises(ValueError, match="`n_measures`"):
        sot.datasets.w2_benchmark(0, 2)


# ---------------------------------------------------------------------------- conjugates of the dual loss


def _quadratic_model(dim):
    """A HOTET whose ICNNs are pure quadratics (hidden units switched off), so conjugates are closed-form."""
    model = HOTET(dim, **SMALL)
    params = model.icnn.initial_params(torch.Generator().manual_seed(0))[None].double()
    pieces = model.icnn.split(params)
    pieces["u"].fill_(0.0)  # squared: 0, no hidden contribution
    pieces["v"].copy_(torch.tensor([[0.3, -0.2, 0.1]]))
    pieces["M"].copy_(torch.tensor([[[0.2, 0.1, 0.0], [0.0, -0.1, 0.0], [0.05, 0.0, 0.3]]]))
    return model, params


def test_refined_conjugate_reaches_the_closed_form_and_beats_the_batch_maximum():
    model, params = _quadratic_model(3)
    rng = np.random.default_rng(0)
    root = torch.as_tensor(np.linalg.cholesky(np.array([[2.0, 0.3, 0.0], [0.3, 1.0, 0.2], [0.0, 0.2, 1.5]])).T)[None]
    base = (root, torch.tensor([[0.5, 0.0, -0.5]], dtype=torch.float64))
    pieces = model.icnn.split(params)
    matrix = (root + pieces["M"])[0].T @ (root + pieces["M"])[0]  # f(q) = ½ qᵀ A q + ⟨v + shift, q⟩
    linear = pieces["v"][0] + base[1][0]
    points = torch.as_tensor(rng.normal(size=(1, 40, 3)))
    candidates = torch.as_tensor(rng.normal(size=(1, 30, 3)))
    values = model.icnn.potential(candidates, params, base)
    weights = torch.full((1, 30), 1 / 30, dtype=torch.float64)
    exact = 0.5 * torch.einsum("bnd,de,bne->bn", points - linear, torch.linalg.inv(matrix), points - linear)
    batch = (torch.bmm(points, candidates.transpose(1, 2)) - values[:, None, :]).max(2).values
    # from a poor start (the origin), preconditioned by a rough inverse Hessian
    precondition = (torch.eye(3, dtype=torch.float64)[None] * 0.8, None)
    start = torch.zeros_like(points)
    refined = model._conjugate(points, (params, base), candidates, weights, values, start, precondition, 40)
    torch.testing.assert_close(refined, exact, atol=1e-6, rtol=1e-6)
    assert bool((batch < exact - 1e-3).all())  # the batch maximum is a loose lower bound
    # no refinement: the best of the batch and of the start, never above the exact conjugate
    crude = model._conjugate(points, (params, base), candidates, weights, values, start, None, 0)
    assert bool((crude <= exact + 1e-9).all()) and bool((crude >= batch - 1e-12).all())


def test_conjugate_steps_zero_is_the_papers_batch_loss():
    rng = np.random.default_rng(4)
    clouds = sot.ot.PointClouds.from_padded(rng.normal(size=(4, 12, 2)).astype(np.float32))
    model = HOTET(2, **SMALL, conjugate_steps=0)
    model.fit(clouds, n_steps=1, learning_rate=1e-12, progress=False)
    batch = clouds.to(dtype=torch.float32)
    reference = model.sample_reference(4, 16, np.random.default_rng(0))
    loss = model._step_loss(batch, reference)
    x = model._normalise(batch.points) * batch.mask[..., None]
    y = model._normalise(reference)
    uniform = torch.full((4, 16), 1 / 16)
    phi = model.icnn.potential(x, model.forward_net(x, batch.weights), model._base(x, batch.weights, "forward"))
    psi = model.icnn.potential(y, model.inverse_net(x, batch.weights), model._base(x, batch.weights, "inverse"))
    expected = (
        0.5
        * (
            batch_dual_loss(phi, x, batch.weights, y, uniform) + batch_dual_loss(psi, y, uniform, x, batch.weights)
        ).mean()
    )
    torch.testing.assert_close(loss, expected)
    # refined conjugates are tighter lower bounds of the same conjugates: the loss can only rise
    refined = HOTET(2, **SMALL)
    refined.load_state_dict(model.state_dict())
    assert refined.config["conjugate_steps"] == 3
    assert float(refined._step_loss(batch, reference).detach()) >= float(loss.detach()) - 1e-6
    with pytest.raises(ValueError, match="`conjugate_steps`"):
        HOTET(2, conjugate_steps=-1)
