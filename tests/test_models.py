"""What every model shares, from ``models/_base.py``: the one-line repr and what ``fit`` records."""

import inspect

import numpy as np
import pytest
import torch

from spatialot.models import ASOT, HOTET, GaussianFlowMatching, WassersteinFlowMatching, Wormhole
from spatialot.ot import PointClouds


@pytest.fixture
def clouds():
    rng = np.random.default_rng(0)
    return PointClouds.from_list([rng.normal(size=(int(rng.integers(4, 7)), 2)) for _ in range(12)])


def test_an_untrained_model_prints_its_architecture_on_one_line():
    model = Wormhole(3, n_components=8, width=16, n_layers=1, n_heads=2, mlp_width=16)
    assert repr(model) == (
        "Wormhole(dim=3, n_components=8, width=16, n_layers=1, n_heads=2, ot_distance='sinkhorn_divergence', "
        "exact_mean=True), not trained"
    )
    # the layers stay one call away
    assert len(torch.nn.Module.__repr__(model).splitlines()) > 10


def test_a_trained_model_says_on_how_many_clouds_and_for_how_many_steps(clouds, tmp_path):
    torch.manual_seed(0)
    model = Wormhole(2, n_components=4, width=16, n_layers=1, n_heads=2, mlp_width=16, decoder_weight=0.0)
    model.fit(clouds, n_steps=3, batch_size=4, device="cpu", progress=False)
    expected = (
        "Wormhole(dim=2, n_components=4, width=16, n_layers=1, n_heads=2, ot_distance='sinkhorn_divergence', "
        "exact_mean=True), trained on 12 clouds for 3 steps"
    )
    assert repr(model) == expected
    # a second fit on fewer clouds continues the history and records its own family
    model.fit(clouds[:5], n_steps=2, batch_size=4, device="cpu", progress=False)
    assert repr(model).endswith("trained on 5 clouds for 5 steps")
    # and the checkpoint keeps both
    model.save(tmp_path / "wormhole.pt")
    assert repr(Wormhole.load(tmp_path / "wormhole.pt", device="cpu")) == repr(model)


def test_a_failed_fit_records_nothing(clouds):
    model = ASOT(2, 4)
    with pytest.raises(ValueError, match="dimension"):
        model.fit(PointClouds.from_list([np.zeros((3, 3))]), progress=False)
    assert repr(model) == "ASOT(dim=2, n_anchors=4, method='kmeans'), not trained"


def test_every_model_has_a_one_line_repr(clouds):
    kmeans = ASOT(2, 4).fit(clouds, device="cpu", progress=False)
    assert repr(kmeans) == "ASOT(dim=2, n_anchors=4, method='kmeans'), trained on 12 clouds for 0 steps"
    # keyword data argument, and Gaussians (means) counted as the family
    gaussian = GaussianFlowMatching(2, labels=["a", "b"], width=16, n_layers=1)
    gaussian.fit(
        means=np.zeros((6, 2)),
        covariances=np.tile(np.eye(2), (6, 1, 1)),
        labels=["a", "b"] * 3,
        n_steps=2,
        device="cpu",
        progress=False,
    )
    assert (
        repr(gaussian)
        == "GaussianFlowMatching(dim=2, width=16, n_layers=1, n_labels=2), trained on 6 clouds for 2 steps"
    )
    flow = WassersteinFlowMatching(2, max_size=6, width=16, n_layers=1, n_heads=2, mlp_width=16)
    assert repr(flow) == (
        "WassersteinFlowMatching(dim=2, max_size=6, width=16, n_layers=1, n_heads=2, noise='normal'), not trained"
    )
    hotet = HOTET(2, width=16, n_layers=1, n_heads=2, mlp_width=16, hyper_width=16, n_anchors=8)
    assert repr(hotet) == "HOTET(dim=2, n_anchors=8, width=16, n_layers=1, n_heads=2, base='gaussian'), not trained"


def test_models_take_reversed_numpy_arrays(clouds):
    # negative-stride views (x[::-1]) as data, reference or embedding give what their copies give
    rng = np.random.default_rng(0)
    means, covariances = rng.normal(size=(6, 2)), np.tile(np.eye(2), (6, 1, 1)) * rng.uniform(0.5, 2, (6, 1, 1))
    histories = []
    for m, c in ((means[::-1], covariances[::-1]), (means[::-1].copy(), covariances[::-1].copy())):
        torch.manual_seed(0)
        model = GaussianFlowMatching(2, width=16, n_layers=1)
        model.fit(m, c, n_steps=3, batch_size=4, device="cpu", random_state=0, progress=False)
        histories.append(model.history)
    assert histories[0] == histories[1]

    torch.manual_seed(0)
    wormhole = Wormhole(2, n_components=4, width=16, n_layers=1, n_heads=2, mlp_width=16)
    wormhole.fit(clouds, n_steps=1, batch_size=4, device="cpu", progress=False)
    embedding = rng.normal(size=(3, 4))
    np.testing.assert_array_equal(wormhole.decode(embedding[::-1]), wormhole.decode(embedding[::-1].copy()))

    reference = rng.normal(size=(20, 2))
    hotet = HOTET(2, width=16, n_layers=1, n_heads=2, mlp_width=16, hyper_width=16, n_anchors=8)
    hotet.fit(clouds, reference=reference[::-1], n_steps=1, batch_size=4, n_reference_samples=8, progress=False)
    torch.testing.assert_close(hotet.reference_points, torch.as_tensor(reference[::-1].copy(), dtype=torch.float32))
    np.testing.assert_array_equal(
        hotet.transport(clouds[:2], reference[::-1][:5]), hotet.transport(clouds[:2], reference[::-1][:5].copy())
    )


@pytest.mark.parametrize("model_class", [Wormhole, WassersteinFlowMatching, GaussianFlowMatching, HOTET, ASOT])
def test_every_model_has_one_shape_architecture_in_the_constructor_training_in_fit(model_class):
    # the device is where a model trains, so it is an argument of `fit`, never of the constructor
    constructor = inspect.signature(model_class.__init__).parameters
    fit = inspect.signature(model_class.fit).parameters
    assert "device" not in constructor
    for name in ("device", "random_state", "progress"):
        assert fit[name].kind is inspect.Parameter.KEYWORD_ONLY, name


SMALL_MODELS = {
    Wormhole: lambda **seed: Wormhole(2, n_components=8, width=16, n_layers=1, n_heads=2, mlp_width=16, **seed),
    WassersteinFlowMatching: lambda **seed: WassersteinFlowMatching(
        2, 6, width=16, n_layers=1, n_heads=2, mlp_width=16, **seed
    ),
    GaussianFlowMatching: lambda **seed: GaussianFlowMatching(2, width=16, n_layers=1, **seed),
    HOTET: lambda **seed: HOTET(2, width=16, n_layers=1, n_heads=2, mlp_width=16, hyper_width=16, **seed),
}


@pytest.mark.parametrize("model_class", list(SMALL_MODELS))
def test_initial_weights_follow_the_constructors_seed_not_torchs_global_generator(model_class):
    build = SMALL_MODELS[model_class]

    def weights(model):
        return torch.cat([parameter.detach().flatten() for parameter in model.parameters()])

    torch.manual_seed(1)
    state_before = torch.random.get_rng_state()
    first = weights(build())
    # building a model leaves the global generator where it was
    assert torch.equal(torch.random.get_rng_state(), state_before)
    torch.manual_seed(2)
    torch.testing.assert_close(weights(build()), first)  # the default seed, whatever the global state
    torch.testing.assert_close(weights(build(random_state=0)), first)
    assert not torch.equal(weights(build(random_state=1)), first)
    # None draws from torch's global generator
    torch.manual_seed(3)
    unseeded = weights(build(random_state=None))
    torch.manual_seed(3)
    torch.testing.assert_close(weights(build(random_state=None)), unseeded)
    assert not torch.equal(unseeded, first)


def test_hotet_trains_where_fit_is_told_and_refuses_an_unknown_device(clouds):
    model = HOTET(2, width=16, n_layers=1, n_heads=2, mlp_width=16, hyper_width=16, n_anchors=8)
    model.fit(clouds, n_steps=1, batch_size=4, n_reference_samples=8, device="cpu", progress=False)
    assert {tensor.device.type for tensor in model.state_dict().values()} == {"cpu"}
    with pytest.raises(ValueError, match="device"):
        HOTET(2, width=16, n_layers=1, n_heads=2, mlp_width=16, hyper_width=16).fit(
            clouds, n_steps=1, device="tpu", progress=False
        )


def test_wfm_front_end_and_both_wfm_models_train_the_same_default_budget():
    # benchmarks/wfm.py measures sot.tl.wfm's default; a model used directly must get the same one
    from spatialot import tl

    front_end = inspect.signature(tl.wfm).parameters["n_steps"].default
    for model_class in (WassersteinFlowMatching, GaussianFlowMatching):
        assert inspect.signature(model_class.fit).parameters["n_steps"].default == front_end
    assert front_end == 6000
