"""Issue 11: inputs that gave a wrong result, a broken model, an unreadable file or an error naming nothing.

Each test is one case of the issue; the section comments give its number.
"""

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import torch

import spatialot as sot
from spatialot.models import HOTET, Wormhole

SMALL_HOTET = {"hidden": [8, 8], "width": 8, "n_layers": 1, "n_heads": 2, "mlp_width": 16, "hyper_width": 16}


@pytest.fixture(scope="module")
def atlas():
    """300 cells of the bundled atlas; every test takes a copy."""
    return sot.datasets.bdtnp()[:300].copy()


def _small(atlas, k=8, **kwargs):
    """The atlas with a 4-gene representation (fast models) and niches on it."""
    adata = atlas.copy()
    adata.obsm["X_small"] = np.asarray(adata.X[:, :4], dtype=np.float32)
    sot.pp.niches(adata, k=k, use_rep="X_small", **kwargs)
    return adata


def _state(adata):
    """What a failed call must leave as it was: every key, and the arrays of the niches."""
    return (
        list(adata.obs.columns),
        sorted(adata.obsm),
        sorted(adata.obsp),
        sorted(adata.uns),
        sorted(adata.layers),
        {key: np.asarray(value).copy() for key, value in adata.obsm.items()},
    )


def _assert_same_state(adata, before):
    after = _state(adata)
    assert after[:5] == before[:5]
    for key, value in before[5].items():
        np.testing.assert_array_equal(np.asarray(adata.obsm[key]), value)


def _weights(model):
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def _assert_same_weights(model, weights):
    now = model.state_dict()
    assert now.keys() == weights.keys()
    for name, tensor in weights.items():
        assert torch.equal(now[name], tensor), name


# ---------------------------------------------------------------------------------------- 1
def test_niches_follow_cells_that_are_reordered(atlas):
    adata = atlas.copy()
    sot.pp.niches(adata, k=8)
    order = np.random.default_rng(0).permutation(adata.n_obs)
    shuffled = adata[order].copy()
    family = sot.get.niche_clouds(shuffled)
    # every niche still opens with its own cell, and holds the same cells as before the shuffle
    np.testing.assert_array_equal(family.indices[:, 0], np.arange(adata.n_obs))
    np.testing.assert_array_equal(order[family.indices], sot.get.niche_clouds(adata).indices[order])
    np.testing.assert_array_equal(family[:].points.numpy(), sot.get.niche_clouds(adata)[order].points.numpy())


def test_tools_use_the_right_niches_after_a_reordering(atlas):
    adata = atlas.copy()
    sot.pp.niches(adata, k=8)
    order = np.random.default_rng(0).permutation(adata.n_obs)
    shuffled = adata[order].copy()
    model = sot.tl.asot(adata, n_anchors=8, progress=False)
    expected = model.transform(sot.get.niche_clouds(adata))[order]
    np.testing.assert_allclose(model.transform(sot.get.niche_clouds(shuffled)), expected)


def test_variable_niches_follow_a_reordering_and_survive_h5ad(atlas, tmp_path):
    adata = atlas.copy()
    spread = np.ptp(adata.obsm["spatial"], axis=0).max()
    sot.pp.niches(adata, radius=0.1 * spread)
    family = sot.get.niche_clouds(adata)
    assert len(set(family.sizes.tolist())) > 1
    order = np.random.default_rng(1).permutation(adata.n_obs)
    shuffled = adata[order].copy()
    shuffled.write_h5ad(tmp_path / "shuffled.h5ad")
    back = sot.get.niche_clouds(ad.read_h5ad(tmp_path / "shuffled.h5ad"))
    np.testing.assert_array_equal(back.sizes, family.sizes[order])
    np.testing.assert_array_equal(
        np.where(back.mask, order[back.indices], -1), np.where(family.mask, family.indices, -1)[order]
    )


def test_subset_to_one_sample_keeps_its_niches(atlas):
    # niches never cross samples, so a sample cut out of the whole keeps every niche whole
    adata = ad.concat({"a": atlas, "b": atlas}, label="sample", index_unique="-")
    sot.pp.niches(adata, k=8, library_key="sample")
    one = adata[adata.obs["sample"] == "b"].copy()
    rebuilt = sot.pp.niches(one, k=8, copy=True)
    np.testing.assert_array_equal(sot.get.niche_clouds(one).indices, sot.get.niche_clouds(rebuilt).indices)


def test_subset_that_cuts_niches_is_refused_naming_a_cell(atlas):
    adata = atlas.copy()
    sot.pp.niches(adata, k=8)
    region = adata[:100].copy()
    before = _state(region)
    with pytest.raises(ValueError, match=r"no longer have their whole niche.*cell\d+.*sot\.pp\.niches"):
        sot.get.niche_clouds(region)
    with pytest.raises(ValueError, match="no longer have their whole niche"):
        sot.tl.asot(region, n_anchors=4, progress=False)
    _assert_same_state(region, before)


def test_repeated_cells_are_refused(atlas):
    adata = atlas.copy()
    sot.pp.niches(adata, k=8)
    with pytest.warns(UserWarning, match="not unique"):
        repeated = adata[np.r_[np.arange(300), 0]].copy()
    repeated.obs_names_make_unique()
    with pytest.raises(ValueError, match="had cells repeated"):
        sot.get.niche_clouds(repeated)


def test_a_niche_that_lost_its_last_member_is_told_from_a_smaller_one():
    from spatialot.get._niches import padded_members
    from spatialot.pp._build import member_matrix

    matrix, sizes = member_matrix(np.array([[0, 1, 2], [1, 2, 0], [2, 0, 1]]))
    dropped = matrix.tolil()
    dropped[0, 2] = 0  # member 2 (rank 3, the last) of niche 0
    _, _, complete = padded_members(sp.csr_matrix(dropped), sizes.astype(np.int64))
    assert complete.tolist() == [False, True, True]


def test_concatenation_keeps_niches_with_pairwise(atlas):
    adata = atlas.copy()
    sot.pp.niches(adata, k=8)
    both = ad.concat([adata, adata], pairwise=True, uns_merge="same", index_unique="-")
    rows = sot.get.niche_clouds(both).indices
    single = sot.get.niche_clouds(adata).indices
    np.testing.assert_array_equal(rows[:300], single)
    np.testing.assert_array_equal(rows[300:], single + 300)
    # without pairwise=True AnnData drops .obsp: the niches are gone, and the error says how to keep them
    dropped = ad.concat([adata, adata], uns_merge="same", index_unique="-")
    with pytest.raises(KeyError, match="pairwise=True"):
        sot.get.niche_clouds(dropped)


def test_concatenation_with_cells_without_niches_is_refused_naming_one(atlas):
    adata = atlas[:200].copy()
    sot.pp.niches(adata, k=8)
    both = ad.concat([adata, atlas[200:].copy()], join="outer", pairwise=True, uns_merge="first", index_unique="-")
    with pytest.raises(ValueError, match=r"100 cells have no niche under 'niche', e.g. 'cell200-1'"):
        sot.get.niche_clouds(both)


# ---------------------------------------------------------------------------------------- 2
def _hotet_failing_at(model, step, failure):
    """Make the third loss of ``model`` NaN or an exception, after two real optimiser steps."""
    calls = {"n": 0}
    step_loss = model._step_loss

    def failing(*args):
        calls["n"] += 1
        loss = step_loss(*args)
        if calls["n"] == step:
            if failure == "nan":
                return loss * float("nan")
            raise RuntimeError("a batch that cannot be read")
        return loss

    model._step_loss = failing


@pytest.mark.parametrize("failure", ["nan", "exception"])
def test_failed_first_hotet_fit_leaves_the_model_unfitted(atlas, failure):
    adata = _small(atlas)
    model = HOTET(4, **SMALL_HOTET, n_anchors=8)
    weights, training = _weights(model), model.training
    _hotet_failing_at(model, 3, failure)
    before = _state(adata)
    with pytest.raises(RuntimeError, match="loss became nan|cannot be read"):
        sot.tl.hotet(adata, model=model, n_steps=5, progress=False)
    _assert_same_weights(model, weights)
    assert model.history == [] and not bool(model.fitted) and model.training == training
    _assert_same_state(adata, before)
    with pytest.raises(RuntimeError, match="not fitted"):
        model.embed(sot.get.niche_clouds(adata))


def test_failed_second_hotet_fit_keeps_the_first(atlas):
    adata = _small(atlas)
    model = HOTET(4, **SMALL_HOTET, n_anchors=8)
    model.fit(sot.get.niche_clouds(adata), n_steps=3, progress=False)
    weights, history = _weights(model), list(model.history)
    _hotet_failing_at(model, 2, "nan")
    with pytest.raises(RuntimeError, match="left as it was"):
        model.fit(sot.get.niche_clouds(adata), n_steps=4, progress=False)
    _assert_same_weights(model, weights)
    assert model.history == history and bool(model.fitted)


def test_non_finite_gradients_stop_training_before_the_step(atlas):
    adata = _small(atlas)
    family = sot.get.niche_clouds(adata)
    model = Wormhole(4, n_components=4, width=16, n_layers=1, mlp_width=16, decoder_weight=0.0)
    weights, config = _weights(model), dict(model.config)
    # a finite loss whose gradient is NaN: only a check between backward and step catches it
    model.encoder_head[-1].weight.register_hook(lambda gradient: gradient * float("nan"))
    with pytest.raises(RuntimeError, match="gradients became NaN"):
        model.fit(family, n_steps=3, batch_size=4, progress=False)
    _assert_same_weights(model, weights)  # the cost scale of the failed calibration included
    assert model.history == []
    # the decoder layer that the first fit sizes from the clouds is gone again, with its size
    assert model.decoder_tokens is None and model.config == config


def test_failed_wormhole_fit_then_tl_writes_a_finite_embedding(atlas):
    adata = _small(atlas)
    family = sot.get.niche_clouds(adata)
    model = Wormhole(4, n_components=4, width=16, n_layers=1, mlp_width=16, decoder_weight=0.0)
    model.fit(family, n_steps=2, batch_size=4, progress=False)
    weights, history = _weights(model), list(model.history)
    with pytest.raises(RuntimeError, match="left as it was"):
        model.fit(family, n_steps=20, batch_size=4, learning_rate=1e12, progress=False)
    _assert_same_weights(model, weights)
    assert model.history == history
    sot.tl.wormhole(adata, model=model, progress=False)
    assert np.isfinite(adata.obsm["X_wormhole"]).all()


def test_every_model_restores_itself_after_a_failed_fit(atlas):
    # the point-cloud flow matching model, through the same training loop and snapshot
    adata = _small(atlas)
    family = sot.get.niche_clouds(adata)
    model = sot.models.WassersteinFlowMatching(4, 8, width=16, n_layers=1, mlp_width=16)
    weights, calls = _weights(model), {"n": 0}
    loss = model.flow_matching_loss

    def failing(*args):
        calls["n"] += 1
        return loss(*args) * (float("inf") if calls["n"] == 3 else 1.0)

    model.flow_matching_loss = failing
    with pytest.raises(RuntimeError, match="loss became inf at step 2"):
        model.fit(family, n_steps=5, batch_size=4, progress=False)
    _assert_same_weights(model, weights)  # the calibration of this first fit included
    assert model.history == []


@pytest.mark.parametrize("tool", ["wormhole", "hotet"])
def test_tl_never_writes_a_non_finite_result(atlas, tool):
    adata = _small(atlas)
    family = sot.get.niche_clouds(adata)
    if tool == "wormhole":
        model = Wormhole(4, n_components=4, width=16, n_layers=1, mlp_width=16, decoder_weight=0.0)
        model.fit(family, n_steps=2, batch_size=4, progress=False)
        broken = model.encoder_head[-1].bias
    else:
        model = HOTET(4, **SMALL_HOTET, n_anchors=8).fit(family, n_steps=2, progress=False)
        broken = model.inverse_net.head.bias
    with torch.no_grad():
        broken.fill_(float("inf"))
    before = _state(adata)
    with pytest.raises(ValueError, match=rf"'X_{tool}' holds NaN or infinite values: nothing was written"):
        getattr(sot.tl, tool)(adata, model=model, progress=False)
    _assert_same_state(adata, before)


# ---------------------------------------------------------------------------------------- 3
def test_wormhole_cost_scale_of_huge_features_is_finite_and_exact(atlas):
    embeddings, scales = {}, {}
    for factor in (1.0, 1e20):
        adata = atlas.copy()
        adata.obsm["X_small"] = np.asarray(adata.X[:, :4], dtype=np.float64) * factor
        sot.pp.niches(adata, k=8, use_rep="X_small")
        model = sot.tl.wormhole(adata, n_components=4, n_steps=1, batch_size=4, decoder_weight=0.0, progress=False)
        embeddings[factor], scales[factor] = adata.obsm["X_wormhole"], float(model.scale)
    assert np.isfinite(embeddings[1e20]).all()
    # the same random pairs set both scales: one is the other times the factor
    assert scales[1e20] == pytest.approx(scales[1.0] * 1e20, rel=1e-5)


def test_flow_matching_on_huge_features_trains_or_refuses_clearly(atlas):
    adata = atlas.copy()
    adata.obsm["X_small"] = np.asarray(adata.X[:, :4], dtype=np.float64) * 1e20
    sot.pp.niches(adata, k=8, use_rep="X_small")
    model = sot.tl.wfm(adata, n_steps=2, width=16, n_layers=1, progress=False)
    assert 1e18 < float(model.scale) < 1e20  # the spread, computed in float64
    sot.tl.generate_niches(adata, model, n=4, n_steps=2)
    assert np.isfinite(adata.uns["wfm_generated"]["points"]).all()
    with pytest.raises(ValueError, match="exceeds the float32 range.*scale the features"):
        sot.tl.wfm(adata, mode="gaussian", n_steps=2, key_added="gaussian", progress=False)
    assert "gaussian" not in adata.uns


def test_hotet_refuses_huge_features_with_a_clear_error(atlas):
    adata = atlas.copy()
    adata.obsm["X_small"] = np.asarray(adata.X[:, :4], dtype=np.float64) * 1e20
    sot.pp.niches(adata, k=8, use_rep="X_small")
    before = _state(adata)
    model = HOTET(4, **SMALL_HOTET, n_anchors=8)
    with pytest.raises(ValueError, match="exceeds the float32 range.*scale the features"):
        sot.tl.hotet(adata, model=model, n_steps=2, progress=False)
    _assert_same_state(adata, before)
    assert not bool(model.fitted) and model.history == []


def test_features_beyond_float32_are_refused_by_niches(atlas):
    adata = atlas.copy()
    adata.obsm["X_small"] = np.asarray(adata.X[:, :4], dtype=np.float64) * 1e39
    before = _state(adata)
    with pytest.raises(ValueError, match=r"`use_rep`='X_small'.*float32 range.*scale the features"):
        sot.pp.niches(adata, k=8, use_rep="X_small")
    _assert_same_state(adata, before)


# ---------------------------------------------------------------------------------------- 4
@pytest.mark.parametrize("key", ["run/1", "", ".", 3])
@pytest.mark.parametrize("call", ["niches", "asot", "wormhole", "hotet", "wfm", "asot_neighbors"])
def test_keys_that_h5ad_cannot_store_are_refused_before_any_work(atlas, key, call):
    adata = _small(atlas)
    if call == "asot_neighbors":
        sot.tl.asot(adata, n_anchors=4, progress=False)
    before = _state(adata)
    run = {
        "niches": lambda: sot.pp.niches(adata, k=4, key_added=key),
        "asot": lambda: sot.tl.asot(adata, n_anchors=4, key_added=key, progress=False),
        "wormhole": lambda: sot.tl.wormhole(adata, n_steps=1, key_added=key, progress=False),
        "hotet": lambda: sot.tl.hotet(adata, n_steps=1, key_added=key, progress=False),
        "wfm": lambda: sot.tl.wfm(adata, n_steps=1, key_added=key, progress=False),
        "asot_neighbors": lambda: sot.tl.asot_neighbors(adata, key_added=key, progress=False),
    }[call]
    with pytest.raises(
        ValueError, match="`key_added` must be a non-empty string without '/' that h5ad files can store"
    ):
        run()
    _assert_same_state(adata, before)


def test_a_key_with_allowed_punctuation_round_trips(atlas, tmp_path):
    adata = _small(atlas)
    sot.tl.asot(adata, n_anchors=4, key_added="run-1.v2", progress=False)
    adata.write_h5ad(tmp_path / "keys.h5ad")
    back = ad.read_h5ad(tmp_path / "keys.h5ad")
    np.testing.assert_array_equal(back.obsm["X_run-1.v2"], adata.obsm["X_run-1.v2"])


# ---------------------------------------------------------------------------------------- 5, 6
@pytest.mark.parametrize(
    ("where", "match"),
    [("X", r"`adata\.X`.*NaN or infinite"), ("X_small", r"`use_rep`='X_small'.*NaN or infinite")],
)
def test_infinite_features_are_refused_naming_the_argument(atlas, where, match):
    adata = atlas.copy()
    adata.X = np.asarray(adata.X, dtype=np.float32)
    adata.obsm["X_small"] = adata.X[:, :4].copy()
    target = adata.X if where == "X" else adata.obsm["X_small"]
    target[5, 1] = np.inf
    before = _state(adata)
    with pytest.raises(ValueError, match=match):
        sot.pp.niches(adata, k=4, use_rep=None if where == "X" else where)
    _assert_same_state(adata, before)


def test_niches_of_an_empty_anndata_are_refused(atlas):
    with pytest.raises(ValueError, match="no cells"):
        sot.pp.niches(atlas[:0].copy(), radius=5)


@pytest.mark.parametrize("coordinates", [np.array([["a", "b"]] * 300), np.array([["1.5", "2"]] * 300)])
def test_string_coordinates_are_refused_naming_the_key(atlas, coordinates):
    adata = atlas.copy()
    adata.obsm["spatial"] = coordinates
    with pytest.raises(ValueError, match=r"`spatial_key`='spatial'.*must hold numbers"):
        sot.pp.niches(adata, k=4)


def test_backed_sparse_features_are_read_from_disk(atlas, tmp_path):
    adata = atlas.copy()
    adata.X = sp.csr_matrix(adata.X)
    adata.write_h5ad(tmp_path / "sparse.h5ad")
    backed = ad.read_h5ad(tmp_path / "sparse.h5ad", backed="r")
    try:
        sot.pp.niches(backed, k=4)
        family = sot.get.niche_clouds(backed)
        assert family.on_disk  # the features stay on disk (tests/test_streaming.py checks the rest)
        points = family[:2].points
        in_memory = backed.to_memory()  # closes the file
        assert torch.equal(points, sot.get.niche_clouds(in_memory)[:2].points)
        assert points.shape == (2, 4, 84)
    finally:
        backed.file.close()


def test_names_shared_by_several_cells_are_refused(atlas):
    adata = atlas.copy()
    sot.pp.niches(adata, k=4)
    names = adata.obs_names.to_numpy().copy()
    names[1] = names[0]
    adata.obs_names = names
    match = rf"`cells` names '{names[0]}', which several cells of `adata.obs_names` share"
    with pytest.raises(ValueError, match=match):
        sot.tl.ot_distances(adata, [names[0], names[2]], progress=False)
    with pytest.raises(ValueError, match=match):
        sot.pl.niches(adata, cells=[names[0]], show=False)
    # positions stay unambiguous
    assert sot.tl.ot_distances(adata, [0, 1], progress=False).shape == (2, 2)


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda a: sot.tl.wormhole(a, n_steps=2.5, progress=False), "n_steps"),
        (lambda a: sot.tl.wormhole(a, n_steps=2, batch_size=1, progress=False), "batch_size"),
        (lambda a: sot.pp.niches(a, k=2.5), "k"),
        (lambda a: sot.tl.hotet(a, n_steps=2.5, progress=False), "n_steps"),
        (lambda a: sot.tl.wfm(a, batch_size=np.float64(4), progress=False), "batch_size"),
        (lambda a: sot.tl.asot(a, n_iter=True, progress=False), "n_iter"),
        (lambda a: sot.tl.asot(a, method="ml", n_steps="3", progress=False), "n_steps"),
        (lambda a: sot.datasets.simulated_tissue(n_cells=150.5), "n_cells"),
        (lambda a: sot.pl.loss(a, key="asot", window=0.5, show=False), "window"),
    ],
)
def test_integer_arguments_share_one_check_and_one_wording(atlas, call, name):
    adata = _small(atlas)
    adata.uns["asot"] = {"loss": np.ones(3)}
    with pytest.raises(ValueError, match=rf"^`{name}` must be an integer (>= \d+|between \d+ and \d+)( \(.+\))?, got "):
        call(adata)


# the training front-ends and small settings of each: (call(adata, **options), result key in .obsm)
_TRAINING_FRONT_ENDS = {
    "wormhole": (lambda adata, **o: sot.tl.wormhole(adata, n_components=4, batch_size=4, **o), "X_wormhole"),
    "wfm": (lambda adata, **o: sot.tl.wfm(adata, width=16, n_layers=1, batch_size=4, **o), None),
    "hotet": (lambda adata, **o: sot.tl.hotet(adata, n_anchors=8, batch_size=4, **o), "X_hotet"),
}


@pytest.mark.parametrize("name", list(_TRAINING_FRONT_ENDS))
def test_tl_training_resumes_from_its_checkpoint_and_refuses_a_bad_precision(atlas, tmp_path, name):
    call, key = _TRAINING_FRONT_ENDS[name]
    adata = _small(atlas)
    path = tmp_path / f"{name}.pt"
    first = call(adata, n_steps=4, checkpoint=path, checkpoint_every=2, progress=False, random_state=3)
    assert path.exists() and torch.load(path, weights_only=True)["step"] == 4
    written = None if key is None else np.asarray(adata.obsm[key]).copy()
    # the same call finds the finished run: no step taken, the same weights and results
    again = call(adata, n_steps=4, checkpoint=path, progress=False, random_state=3)
    assert again.history == first.history and len(again.history) == 4
    _assert_same_weights(again, _weights(first))
    if key is not None:
        np.testing.assert_array_equal(np.asarray(adata.obsm[key]), written)
    before = _state(adata)
    with pytest.raises(ValueError, match="`precision` must be one of"):
        call(adata, n_steps=2, precision="float16", progress=False)
    _assert_same_state(adata, before)


@pytest.mark.parametrize("name", ["wormhole", "wfm"])
def test_tl_training_runs_the_schedule_it_is_given_and_refuses_an_unknown_one(atlas, tmp_path, name):
    call, _ = _TRAINING_FRONT_ENDS[name]
    adata = _small(atlas)
    path = tmp_path / f"{name}.pt"
    call(adata, n_steps=3, schedule="step", warmup_steps=2, checkpoint=path, progress=False)
    run = torch.load(path, weights_only=True)["run"]  # what the training loop ran
    assert (run["schedule"], run["warmup_steps"]) == ("step", 2)
    assert adata.uns[name]["params"]["schedule"] == "step" and adata.uns[name]["params"]["warmup_steps"] == 2
    before = _state(adata)
    with pytest.raises(ValueError, match="schedule"):
        call(adata, n_steps=2, schedule="linear", progress=False)
    _assert_same_state(adata, before)
