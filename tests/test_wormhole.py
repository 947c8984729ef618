"""Wasserstein Wormhole: the model's invariances and round trips, the AnnData front-end, the plots."""

import contextlib

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.stats
import torch

import spatialot as sot
import spatialot.models._wormhole as wormhole_module
from spatialot.models import Wormhole
from spatialot.ot import PointClouds

SMALL = {"n_components": 8, "width": 16, "n_layers": 1, "n_heads": 2, "mlp_width": 32, "decoder_size": 4}


@pytest.fixture(scope="module")
def tissue():
    adata = sot.datasets.simulated_tissue(240, n_latent=4, random_state=3)
    sot.pp.niches(adata, k=6, use_rep="X_latent")
    return adata


@pytest.fixture(scope="module")
def trained(tissue):
    """A model trained briefly on the tissue, and the AnnData it wrote into."""
    adata = tissue.copy()
    model = sot.tl.wormhole(
        adata, n_steps=20, batch_size=6, learning_rate=1e-3, n_components=16, epsilon=0.05, progress=False
    )
    return adata, model


def random_clouds(n=6, size=5, dim=3, seed=0):
    rng = np.random.default_rng(seed)
    return PointClouds.from_padded(rng.normal(size=(n, size, dim)) + rng.normal(size=(n, 1, dim)) * 3)


def small_model(dim=3, seed=0, **options):
    torch.manual_seed(seed)
    return Wormhole(dim, **{**SMALL, "epsilon": 0.05, **options}).eval()


# --------------------------------------------------------------------------- the model


def test_encoder_is_permutation_invariant():
    model, clouds = small_model(), random_clouds()
    order = torch.randperm(clouds.max_size)
    shuffled = PointClouds.from_padded(clouds.points[:, order])
    np.testing.assert_allclose(model.encode(shuffled), model.encode(clouds), rtol=1e-5, atol=1e-5)


def test_padding_does_not_change_the_embedding():
    model, clouds = small_model(), random_clouds()
    padded_points = torch.cat([clouds.points, 50 * torch.randn(len(clouds), 3, 3)], dim=1)
    mask = torch.zeros(len(clouds), clouds.max_size + 3, dtype=torch.bool)
    mask[:, : clouds.max_size] = True
    padded = PointClouds.from_padded(padded_points, mask)
    np.testing.assert_allclose(model.encode(padded), model.encode(clouds), rtol=1e-5, atol=1e-5)


def test_embedding_depends_only_on_the_measure():
    """Each point twice, at half the weight, is the same distribution and embeds the same."""
    model, clouds = small_model(), random_clouds()
    doubled = PointClouds.from_padded(torch.cat([clouds.points, clouds.points], dim=1))
    np.testing.assert_allclose(model.encode(doubled), model.encode(clouds), rtol=1e-4, atol=1e-5)


def test_identical_niches_embed_identically(trained):
    adata, _ = trained
    family = sot.get.niche_clouds(adata)
    rows = family.indices
    # cells whose niches hold the same cells in another order
    same = [(i, j) for i in range(len(rows)) for j in range(i) if set(rows[i]) == set(rows[j])]
    if not same:
        pytest.skip("no two cells share a niche in this tissue")
    i, j = same[0]
    np.testing.assert_allclose(adata.obsm["X_wormhole"][i], adata.obsm["X_wormhole"][j], rtol=1e-5, atol=1e-5)


def test_training_lowers_the_distance_loss():
    clouds = random_clouds(n=40, size=6, dim=3, seed=1)
    model = small_model(decoder_weight=0.0)
    model.fit(clouds, n_steps=60, batch_size=8, learning_rate=3e-3, progress=False)
    history = np.asarray(model.history)
    assert history[-10:].mean() < 0.5 * history[:10].mean()


def test_training_is_reproducible_on_cpu():
    clouds = random_clouds(n=20)
    first = small_model(seed=4).fit(clouds, n_steps=5, batch_size=4, device="cpu", progress=False, random_state=7)
    second = small_model(seed=4).fit(clouds, n_steps=5, batch_size=4, device="cpu", progress=False, random_state=7)
    assert first.history == second.history
    np.testing.assert_array_equal(first.encode(clouds), second.encode(clouds))


def test_save_load_round_trip(tmp_path):
    clouds = random_clouds(n=12)
    model = small_model().fit(clouds, n_steps=3, batch_size=4, progress=False)
    path = tmp_path / "wormhole.pt"
    model.save(path)
    loaded = Wormhole.load(path, device="cpu")
    assert loaded.config == model.config
    assert loaded.history == model.history
    assert float(loaded.scale) == float(model.scale)
    np.testing.assert_array_equal(loaded.encode(clouds), model.encode(clouds))
    np.testing.assert_array_equal(loaded.decode(model.encode(clouds)), model.decode(model.encode(clouds)))


def test_load_refuses_another_model(tmp_path):
    path = tmp_path / "model.pt"
    sot.models.Model(a=1).save(path)
    with pytest.raises(ValueError, match="not a Wormhole"):
        Wormhole.load(path)


@pytest.mark.parametrize("distance", ["sinkhorn_divergence", "entropic", "exact"])
def test_training_targets_match_the_ot_core(distance):
    clouds = random_clouds(n=5, size=4, seed=2)
    model = small_model(ot_distance=distance, epsilon=1e-3, sinkhorn_tol=1e-6)
    model.calibrate(clouds, np.random.default_rng(0))
    first, second = torch.triu_indices(5, 5, offset=1)
    targets = model.pair_targets(clouds, first, second).numpy() * float(model.scale) ** 2
    exact = sot.ot.exact_w2_squared(clouds[first.numpy()], clouds[second.numpy()])
    # epsilon is relative to the cost scale, so at 1e-3 every entropic target is close to exact W2²
    np.testing.assert_allclose(targets, exact, rtol=0.02 if distance != "exact" else 1e-5)


def test_a_training_step_off_the_cpu_reads_nothing_on_the_host(monkeypatch):
    clouds = random_clouds(n=12, size=6, seed=5)
    # the CPU standing in for a GPU: `fit` fixes the iteration count instead of testing tolerances
    monkeypatch.setattr(wormhole_module, "checks_on_host", lambda device: False)
    counts = []
    calibrate = Wormhole._calibrate_iterations
    monkeypatch.setattr(
        Wormhole, "_calibrate_iterations", lambda *a, **k: counts.append(calibrate(*a, **k)) or counts[-1]
    )
    model = small_model().fit(clouds, n_steps=2, batch_size=6, progress=False, device="cpu")
    assert len(counts) == 1 and model._fixed_sinkhorn_iterations is None  # training's alone
    fixed = model._fixed_sinkhorn_iterations = counts[0]
    first, second = torch.triu_indices(6, 6, offset=1)
    scaled = model._scaled(clouds[:6])
    checked = sot.ot.sinkhorn(
        scaled[first], scaled[second], **{**model._sinkhorn_kwargs(), "tol": 1e-2, "max_iter": 2000}
    )
    assert checked.n_iter <= fixed <= 2000
    # the loss of a fixed count agrees with the loss checked against the tolerance
    batch = clouds[:6]
    torch.manual_seed(0)
    unchecked_loss = model._loss(batch, first, second).item()
    model._fixed_sinkhorn_iterations = None
    torch.manual_seed(0)
    np.testing.assert_allclose(unchecked_loss, model._loss(batch, first, second).item(), rtol=1e-3)
    # on meta tensors any host read of a value raises: the whole step, backward included, has none
    model._fixed_sinkhorn_iterations = fixed
    monkeypatch.setattr(wormhole_module, "full_precision", lambda device: contextlib.nullcontext())
    model.to("meta")
    model._loss(batch.to(device="meta"), first.to("meta"), second.to("meta")).backward()
    model._fixed_sinkhorn_iterations = None
    with pytest.raises((RuntimeError, NotImplementedError, TypeError)):
        model._loss(batch.to(device="meta"), first.to("meta"), second.to("meta"))


def test_decoder_output_shapes_and_range():
    clouds = random_clouds(n=8)
    model = small_model().fit(clouds, n_steps=2, batch_size=4, progress=False)
    decoded = model.decode(model.encode(clouds))
    assert decoded.shape == (8, SMALL["decoder_size"], 3)
    real = clouds.points[clouds.mask].numpy()
    assert (decoded >= real.min(0) - 1e-4).all() and (decoded <= real.max(0) + 1e-4).all()
    path = model.interpolate(clouds[0], clouds[1], n_points=4)
    assert path.shape == (4, SMALL["decoder_size"], 3)
    np.testing.assert_allclose(path[0], model.decode(model.encode(clouds[0]))[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(path[-1], model.decode(model.encode(clouds[1]))[0], rtol=1e-5, atol=1e-5)
    middle = model.barycenter(clouds[[0, 1]])
    np.testing.assert_allclose(middle, model.decode(model.encode(clouds[[0, 1]]).mean(0, keepdims=True))[0], atol=1e-5)


def test_model_errors():
    with pytest.raises(ValueError, match="ot_distance"):
        Wormhole(3, ot_distance="w1")
    model = small_model()
    with pytest.raises(ValueError, match="dimension 5"):
        model.encode(random_clouds(dim=5))
    with pytest.raises(ValueError, match="batch_size"):
        model.fit(random_clouds(), batch_size=1)
    with pytest.raises(ValueError, match="embedding"):
        model.decode(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="weights"):
        model.barycenter(random_clouds(n=2), weights=[1.0, -1.0])


# --------------------------------------------------------------------------- the AnnData front-end


def test_wormhole_writes_embedding_params_and_loss(trained):
    adata, model = trained
    assert adata.obsm["X_wormhole"].shape == (adata.n_obs, 16)
    params = adata.uns["wormhole"]["params"]
    assert params["n_steps"] == 20 and params["trained"] and params["random_state"] == 0
    assert len(adata.uns["wormhole"]["loss"]) == 20
    np.testing.assert_array_equal(adata.obsm["X_wormhole"], model.encode(sot.get.niche_clouds(adata)))


def test_wormhole_result_survives_h5ad(trained, tmp_path):
    adata, _ = trained
    adata.write_h5ad(tmp_path / "a.h5ad")
    back = ad.read_h5ad(tmp_path / "a.h5ad")
    np.testing.assert_array_equal(back.obsm["X_wormhole"], adata.obsm["X_wormhole"])
    np.testing.assert_array_equal(back.uns["wormhole"]["loss"], adata.uns["wormhole"]["loss"])
    assert back.uns["wormhole"]["params"]["ot_distance"] == "sinkhorn_divergence"


def test_given_model_embeds_another_sample_without_training(trained):
    _, model = trained
    other = sot.datasets.simulated_tissue(120, n_latent=4, random_state=9)
    sot.pp.niches(other, k=6, use_rep="X_latent")
    history = list(model.history)
    returned = sot.tl.wormhole(other, model=model, progress=False, key_added="oos")
    assert returned is model and model.history == history
    assert other.obsm["X_oos"].shape == (120, 16)
    assert not other.uns["oos"]["params"]["trained"]


def test_copy_returns_new_anndata_and_leaves_input(tissue):
    before = set(tissue.obsm), set(tissue.uns)
    copied, model = sot.tl.wormhole(tissue, n_steps=2, batch_size=4, n_components=4, progress=False, copy=True)
    assert (set(tissue.obsm), set(tissue.uns)) == before
    assert copied.obsm["X_wormhole"].shape == (tissue.n_obs, 4) and isinstance(model, Wormhole)


def test_wormhole_with_squidpy_graph_and_libraries():
    import squidpy as sq

    adata = sot.datasets.simulated_tissue(200, n_latent=4, random_state=5)
    adata.obs["sample"] = pd.Categorical(np.where(np.arange(200) < 100, "a", "b"))
    sq.gr.spatial_neighbors_knn(adata, n_neighs=5, library_key="sample")
    sot.pp.niches(adata, connectivity_key="spatial_connectivities", library_key="sample", use_rep="X_latent")
    sot.tl.wormhole(adata, n_steps=2, batch_size=4, n_components=4, progress=False)
    assert np.isfinite(adata.obsm["X_wormhole"]).all()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"niche_key": "missing"}, KeyError, "niche_key"),
        ({"ot_distance": "gw"}, ValueError, "ot_distance"),
        ({"n_steps": 0}, ValueError, "n_steps"),
        ({"batch_size": 1}, ValueError, "batch_size"),
        ({"model": "a model"}, ValueError, "model"),
        ({"device": "tpu"}, ValueError, "device"),
    ],
)
def test_wormhole_bad_input_leaves_adata_unchanged(tissue, kwargs, error, match):
    adata = tissue.copy()
    with pytest.raises(error, match=match):
        sot.tl.wormhole(adata, progress=False, **kwargs)
    assert "X_wormhole" not in adata.obsm and "wormhole" not in adata.uns


def test_wormhole_refuses_a_model_of_other_features(trained):
    _, model = trained
    other = sot.datasets.simulated_tissue(100, n_latent=3, random_state=1)
    sot.pp.niches(other, k=4, use_rep="X_latent")
    with pytest.raises(ValueError, match="4-dimensional"):
        sot.tl.wormhole(other, model=model, progress=False)


def test_wormhole_refuses_nan_features(tissue):
    adata = tissue.copy()
    adata.obsm["X_latent"][3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        sot.tl.wormhole(adata, n_steps=2, progress=False)
    assert "X_wormhole" not in adata.obsm


# --------------------------------------------------------------------------- true distances


def test_ot_distances_match_pot(tissue):
    cells = ["cell_3", "cell_7", "cell_11"]
    block = sot.tl.ot_distances(tissue, cells, progress=False)
    family = sot.get.niche_clouds(tissue)
    positions = [3, 7, 11]
    for a in range(3):
        for b in range(3):
            x, y = family[[positions[a]]], family[[positions[b]]]
            np.testing.assert_allclose(block[a, b], sot.ot.exact_w2_squared(x, y)[0], rtol=1e-6, atol=1e-9)
    paired = sot.tl.ot_distances(tissue, [3, 7], [11, 3], paired=True, progress=False)
    np.testing.assert_allclose(paired, [block[0, 2], block[1, 0]])


def test_ot_distances_errors(tissue):
    with pytest.raises(ValueError, match="method"):
        sot.tl.ot_distances(tissue, [0, 1], method="gw")
    with pytest.raises(ValueError, match="paired"):
        sot.tl.ot_distances(tissue, [0, 1], [2], paired=True)
    with pytest.raises(KeyError, match="cells"):
        sot.tl.ot_distances(tissue, ["no such cell"])
    with pytest.raises(ValueError, match="other"):
        sot.tl.ot_distances(tissue, [0], [10_000])


# --------------------------------------------------------------------------- plots


def test_embedding_plot_projects_onto_principal_components(trained):
    adata, _ = trained
    ax = sot.pl.embedding(adata, color="niche_type", show=False)
    offsets = ax.collections[0].get_offsets()
    assert offsets.shape == (adata.n_obs, 2)
    # the first principal axis carries at least as much variance as the second
    assert np.var(offsets[:, 0]) >= np.var(offsets[:, 1])
    assert "wormhole PC1" in ax.get_xlabel()
    assert "X_view" not in adata.obsm


def test_distance_fidelity_reports_the_correlation(trained):
    adata, _ = trained
    ax = sot.pl.distance_fidelity(adata, n_pairs=40, show=False)
    true, predicted = ax.collections[0].get_offsets().T
    expected = scipy.stats.pearsonr(predicted, true)[0]
    assert f"Pearson {expected:.3f}" in ax.get_title()


def test_loss_plot_shows_every_step(trained):
    adata, _ = trained
    ax = sot.pl.loss(adata, window=5, show=False)
    np.testing.assert_array_equal(ax.lines[0].get_ydata(), adata.uns["wormhole"]["loss"])
    assert len(ax.lines[1].get_ydata()) == 20 - 5 + 1


def test_plots_name_missing_keys(trained):
    adata, _ = trained
    with pytest.raises(KeyError, match="basis"):
        sot.pl.embedding(adata, basis="missing", show=False)
    with pytest.raises(KeyError, match="key"):
        sot.pl.loss(adata, "missing", show=False)


def test_encode_is_the_trained_distance_in_data_units():
    """Whatever the internal parametrisation, ||z_i - z_j||² is what the loss fits, times the cost scale."""
    clouds = random_clouds(n=8, seed=5)
    model = small_model().fit(clouds, n_steps=3, batch_size=4, progress=False)
    first, second = torch.triu_indices(8, 8, offset=1)
    with torch.no_grad():
        fitted = model._embedding_distances(model._encode_scaled(clouds), first, second) * model.scale**2
    embedding = model.encode(clouds)
    public = ((embedding[first.numpy()] - embedding[second.numpy()]) ** 2).sum(1)
    np.testing.assert_allclose(public, fitted.numpy(), rtol=1e-4)
    with torch.no_grad():
        reconstructed = model._decode_scaled(model._encode_scaled(clouds)) * model.scale
    np.testing.assert_allclose(model.decode(embedding), reconstructed.numpy(), rtol=1e-4, atol=1e-5)


def test_decoder_size_defaults_to_the_mean_cloud_size(tmp_path):
    rng = np.random.default_rng(0)
    clouds = PointClouds.from_list([rng.normal(size=(n, 3)) for n in (3, 4, 6, 9, 9, 9)])  # mean 6.67
    model = small_model(decoder_size=None)
    with pytest.raises(RuntimeError, match="first `fit`"):
        model.decode(np.zeros((1, SMALL["n_components"])))
    model.fit(clouds, n_steps=2, batch_size=3, progress=False)
    assert model.config["decoder_size"] == 7
    assert model.decode(model.encode(clouds)).shape == (6, 7, 3)
    model.save(tmp_path / "model.pt")
    loaded = Wormhole.load(tmp_path / "model.pt", device="cpu")
    np.testing.assert_array_equal(loaded.decode(loaded.encode(clouds)), model.decode(model.encode(clouds)))


def test_tl_wormhole_decoder_size(tissue):
    adata = tissue.copy()
    model = sot.tl.wormhole(adata, n_steps=2, batch_size=4, n_components=8, progress=False)
    assert adata.uns["wormhole"]["params"]["decoder_size"] == 6  # the niches hold k = 6 cells
    model = sot.tl.wormhole(adata, n_steps=2, batch_size=4, n_components=8, decoder_size=3, progress=False)
    assert model.decode(adata.obsm["X_wormhole"][:2]).shape == (2, 3, 4)
    assert adata.uns["wormhole"]["params"]["decoder_size"] == 3


@pytest.mark.parametrize(
    ("options", "fit_options", "name"),
    [
        ({"n_components": 2.5}, {}, "n_components"),
        ({"decoder_size": 0}, {}, "decoder_size"),
        ({}, {"batch_size": 2.5}, "batch_size"),
    ],
)
def test_integer_arguments_are_checked_by_name(options, fit_options, name):
    with pytest.raises(ValueError, match=f"`{name}` must be an integer"):
        small_model(**options).fit(random_clouds(n=8), n_steps=1, progress=False, **fit_options)


def test_a_tenth_of_the_decoder_gradient_reaches_the_embedding():
    """Encoder gradient = distance loss's + 0.1 × the decoder loss's; the decoder gets all of its own."""
    clouds = random_clouds(n=6, seed=7)
    first, second = torch.triu_indices(6, 6, offset=1)

    def encoder_gradients(decoder_weight, coupling=None):
        model = small_model(decoder_weight=decoder_weight)
        if coupling is not None:
            model._decoder_gradient_to_embedding = coupling
        model.calibrate(clouds, np.random.default_rng(0))
        model._loss(clouds, first, second).backward()
        decoder_moved = any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.decoder.parameters())
        return [p.grad.clone() for p in model.encoder.parameters()], decoder_moved

    distance_only, decoder_moved = encoder_gradients(0.0)
    assert not decoder_moved
    default, decoder_moved = encoder_gradients(1.0)
    assert decoder_moved
    joint, _ = encoder_gradients(1.0, coupling=1.0)
    detached, _ = encoder_gradients(1.0, coupling=0.0)
    for alone, tenth, full, none in zip(distance_only, default, joint, detached, strict=True):
        torch.testing.assert_close(none, alone)
        torch.testing.assert_close(tenth, alone + 0.1 * (full - alone), rtol=1e-4, atol=1e-7)


def test_the_default_encoding_batch_holds_a_fixed_number_of_points(monkeypatch):
    from spatialot.models import _wormhole

    batch_sizes = []
    map_batches = _wormhole.map_batches

    def recording(*args, **options):
        batch_sizes.append(options["batch_size"])
        return map_batches(*args, **options)

    monkeypatch.setattr(_wormhole, "map_batches", recording)
    rng = np.random.default_rng(0)
    model = Wormhole(2, n_components=4, width=16, n_layers=1, mlp_width=16)
    for size in (9, 48, 10_000):
        model.encode(PointClouds.from_padded(rng.normal(size=(3, size, 2))))
    assert batch_sizes == [4608 // 9, 4608 // 48, 1] == [512, 96, 1]


def test_encoding_does_not_depend_on_the_batch_size():
    # the default batch (4,608 points' worth of clouds on CPU) sorts clouds by size and trims padding per batch
    rng = np.random.default_rng(3)
    clouds = PointClouds.from_list([rng.normal(size=(int(rng.integers(3, 12)), 2)) for _ in range(300)])
    model = Wormhole(2, n_components=4, width=16, n_layers=1, mlp_width=16).fit(clouds, n_steps=3, progress=False)
    default = model.encode(clouds)
    np.testing.assert_allclose(model.encode(clouds, batch_size=7), default, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.encode(clouds, batch_size=1000), default, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- exact means


@pytest.mark.parametrize("distance", ["sinkhorn_divergence", "entropic", "exact"])
def test_distances_split_into_a_mean_term_and_a_shape_term(distance):
    """The identity `exact_mean` rests on: D(x, y) = |m_x - m_y|² + D(x - m_x, y - m_y)."""
    clouds = random_clouds(n=5, size=4, seed=2)
    model = small_model(ot_distance=distance, sinkhorn_tol=1e-7)
    model.calibrate(clouds, np.random.default_rng(0))
    first, second = torch.triu_indices(5, 5, offset=1)
    scaled = model._scaled(clouds)
    centred, means = model._centred(scaled)
    whole = model._pair_targets(scaled, first, second)[0]
    shapes = model._pair_targets(centred, first, second)[0]
    np.testing.assert_allclose(whole, ((means[first] - means[second]) ** 2).sum(1) + shapes, rtol=1e-4)


def test_exact_mean_embeds_each_cloud_mean_and_a_translation_invariant_shape():
    clouds = random_clouds(n=8, seed=4)
    model = small_model().fit(clouds, n_steps=3, batch_size=4, progress=False)
    assert model.config["exact_mean"]  # n_components 8 > dim 3
    embedding = model.encode(clouds)
    means = (clouds.points * clouds.weights[..., None]).sum(1).numpy()
    np.testing.assert_allclose(embedding[:, :3], means, rtol=1e-5, atol=1e-5)
    moved = PointClouds(clouds.points + torch.tensor([5.0, -2.0, 1.0]), clouds.mask, clouds.weights)
    np.testing.assert_allclose(model.encode(moved)[:, 3:], embedding[:, 3:], rtol=1e-4, atol=1e-5)
    # the decoder moves its shape to the embedded mean
    np.testing.assert_allclose(model.decode(embedding).mean(1), means, rtol=1e-4, atol=1e-4)


def test_exact_mean_needs_more_components_than_dimensions():
    assert not small_model(dim=8).config["exact_mean"]  # n_components 8: chosen off
    assert not small_model(exact_mean=False).config["exact_mean"]
    with pytest.raises(ValueError, match="exact_mean"):
        small_model(dim=8, exact_mean=True)
    # without it, the networks see the clouds as they are and the outputs are all learned
    clouds = random_clouds(n=8, seed=4)
    model = small_model(exact_mean=False).fit(clouds, n_steps=3, batch_size=4, progress=False)
    moved = PointClouds(clouds.points + 5.0, clouds.mask, clouds.weights)
    assert np.abs(model.encode(moved) - model.encode(clouds)).max() > 1e-2


def test_the_loss_fits_the_whole_embedding_distance_to_the_whole_ot_distance():
    """With exact means the loss works on centred clouds; it equals the loss on whole distances."""
    clouds = random_clouds(n=6, seed=6)
    model = small_model(decoder_weight=0.0, sinkhorn_tol=1e-7).fit(clouds, n_steps=2, batch_size=3, progress=False)
    model.eval()
    first, second = torch.triu_indices(6, 6, offset=1)
    with torch.no_grad():
        loss = model._loss(clouds, first, second)
        whole = model._embedding_distances(model._encode_scaled(clouds), first, second)
        expected = ((whole - model.pair_targets(clouds, first, second)) ** 2).mean()
    np.testing.assert_allclose(loss.item(), expected.item(), rtol=1e-3)
    # the loss reads the distance through `_embedding_distances`, which the peers harness's
    # `--ablation sum-distance` replaces
    model._embedding_distances = lambda outputs, i, j: ((outputs[i] - outputs[j]) ** 2).sum(-1)
    with torch.no_grad():
        assert abs(model._loss(clouds, first, second).item() - loss.item()) > 1e-6
