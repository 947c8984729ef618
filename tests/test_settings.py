"""``sot.settings``: progress bars follow scanpy's verbosity and a package-wide switch; CPU threads."""

import numpy as np
import pytest
import scanpy as sc
import torch

import spatialot as sot
from spatialot.models import Model
from spatialot.models._batches import map_batches
from spatialot.models._training import train
from spatialot.ot import PointClouds, pairwise_distances


@pytest.fixture(autouse=True)
def restore_settings():
    verbosity, threads = sc.settings.verbosity, torch.get_num_threads()
    yield
    sot.settings.progress, sot.settings.n_threads = None, None
    sc.settings.verbosity = verbosity
    torch.set_num_threads(threads)


@pytest.fixture
def family():
    return PointClouds.from_list([np.full((3, 2), float(i)) for i in range(6)])


class Line(Model):
    def __init__(self):
        super().__init__(dim=1)
        self.slope = torch.nn.Parameter(torch.zeros(()))


def encode(family, progress=True):
    return map_batches(
        lambda batch: batch.points.sum((1, 2)), family, batch_size=2, device="cpu", progress=progress, description="enc"
    )


def test_bars_follow_scanpys_verbosity(family, capsys):
    sc.settings.verbosity = "warning"  # scanpy's default: bars are shown
    np.testing.assert_array_equal(encode(family), [0, 6, 12, 18, 24, 30])
    assert "enc: 100%" in capsys.readouterr().err
    sc.settings.verbosity = "error"
    encode(family)
    assert capsys.readouterr().err == ""
    # a call's own progress=False silences it at any verbosity
    sc.settings.verbosity = "hint"
    encode(family, progress=False)
    assert capsys.readouterr().err == ""


def test_the_package_switch_overrides_scanpy(family, capsys):
    sc.settings.verbosity = "info"
    sot.settings.progress = False
    encode(family)
    line = Line()
    train(line, lambda step: (line.slope - 1.0) ** 2, n_steps=2, learning_rate=0.1, description="fit")
    assert len(line.history) == 2
    pairwise_distances(family, method="sinkhorn", progress=True)
    assert capsys.readouterr().err == ""
    sc.settings.verbosity = "error"
    sot.settings.progress = True
    encode(family)
    assert "enc: 100%" in capsys.readouterr().err


def test_training_and_encoding_run_on_the_set_number_of_threads(family):
    torch.set_num_threads(2)
    sot.settings.n_threads = 1
    seen = []
    model = Line()

    def step_loss(step):
        seen.append(torch.get_num_threads())
        return (model.slope - 1.0) ** 2

    train(model, step_loss, n_steps=3, learning_rate=0.1, progress=False)

    def record(batch):
        seen.append(torch.get_num_threads())
        return batch.points.sum((1, 2))

    map_batches(record, family, batch_size=3, device="cpu")
    assert seen == [1, 1, 1, 1, 1]
    assert torch.get_num_threads() == 2  # put back after each call
    # None leaves torch's own setting alone
    sot.settings.n_threads = None
    seen.clear()
    map_batches(record, family, batch_size=6, device="cpu")
    assert seen == [2]


def test_settings_refuse_bad_values():
    with pytest.raises(ValueError, match="n_threads.*positive integer"):
        sot.settings.n_threads = 0
    with pytest.raises(ValueError, match="n_threads"):
        sot.settings.n_threads = True
    with pytest.raises(ValueError, match="progress.*True, False or None"):
        sot.settings.progress = "yes"
    assert repr(sot.settings) == "spatialot settings: progress=None, n_threads=None"


def test_encoding_and_sampling_of_every_model_run_on_the_set_number_of_threads(family, monkeypatch):
    from spatialot.models import ASOT, GaussianFlowMatching, WassersteinFlowMatching

    torch.set_num_threads(2)
    sot.settings.n_threads = 1
    seen = {}

    def recording(cls, name):
        original = getattr(cls, name)

        def wrapper(self, *args, **kwargs):
            seen[f"{cls.__name__}.{name}"] = torch.get_num_threads()
            return original(self, *args, **kwargs)

        monkeypatch.setattr(cls, name, wrapper)

    recording(ASOT, "_histograms")
    recording(WassersteinFlowMatching, "_integrate")
    recording(GaussianFlowMatching, "_guided")
    ASOT(2, 3).fit(family, device="cpu", progress=False).transform(family)
    WassersteinFlowMatching(2, max_size=3, width=8, n_layers=1, n_heads=2, mlp_width=8).sample(2, sizes=3, n_steps=1)
    GaussianFlowMatching(2, width=8, n_layers=1).sample(2, n_steps=1)
    assert seen == {"ASOT._histograms": 1, "WassersteinFlowMatching._integrate": 1, "GaussianFlowMatching._guided": 1}
    assert torch.get_num_threads() == 2
