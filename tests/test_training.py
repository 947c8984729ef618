"""The shared training loop at scale (issue 14): checkpoints, DDP under torchrun, bf16, no host reads per step."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import spatialot as sot
import spatialot.models._wfm as wfm_module
import spatialot.models._wormhole as wormhole_module
from spatialot.models import ASOT, HOTET, GaussianFlowMatching, WassersteinFlowMatching, Wormhole, _training
from spatialot.ot import PointClouds, exact_w2_squared

sys.path.insert(0, str(Path(__file__).parent))
import _ddp_worker  # noqa: E402

SMALL = {"n_components": 4, "width": 16, "n_layers": 1, "n_heads": 2, "mlp_width": 16}


@pytest.fixture(scope="module")
def family():
    rng = np.random.default_rng(0)
    sizes = rng.integers(4, 7, 24)
    return PointClouds.from_list([rng.normal(size=(int(n), 2)) + 2 * rng.normal(size=2) for n in sizes])


# Every model that trains, built small, and the call that trains it: (build, fit(model, **options))
MODELS = {
    "Wormhole": (
        lambda: Wormhole(2, **SMALL, decoder_size=4),
        lambda model, family, **options: model.fit(family, batch_size=4, device="cpu", **options),
    ),
    "WassersteinFlowMatching": (
        # the entropic matching runs on the device ('exact' and 'auto' assign with scipy on the CPU)
        lambda: WassersteinFlowMatching(
            2, max_size=6, width=16, n_layers=1, n_heads=2, mlp_width=16, dropout=0.1, matching="entropic"
        ),
        lambda model, family, **options: model.fit(family, batch_size=4, device="cpu", **options),
    ),
    "GaussianFlowMatching": (
        lambda: GaussianFlowMatching(2, labels=["a", "b"], width=16, n_layers=1),
        lambda model, family, **options: model.fit(
            *(moments.numpy() for moments in sot.ot.gaussian_moments(family)),
            labels=["a", "b"] * (len(family) // 2),
            batch_size=4,
            device="cpu",
            **options,
        ),
    ),
    "HOTET": (
        lambda: HOTET(2, hidden=[8, 8], width=8, n_layers=1, n_heads=2, mlp_width=16, hyper_width=16, n_anchors=8),
        lambda model, family, **options: model.fit(family, batch_size=4, n_reference_samples=16, **options),
    ),
    "ASOT-ML": (
        lambda: ASOT(2, 6, method="ml"),
        lambda model, family, **options: model.fit(family, n_train_pairs=32, batch_size=8, device="cpu", **options),
    ),
}


def _build(name: str, seed: int = 0):
    torch.manual_seed(seed)
    return MODELS[name][0]()


def _fit(name: str, model, family, **options):
    return MODELS[name][1](model, family, progress=False, **options)


def _assert_same_weights(first, second):
    one, other = first.state_dict(), second.state_dict()
    assert one.keys() == other.keys()
    for key in one:
        assert torch.equal(one[key], other[key]), key


def _failing_at(monkeypatch, step: int):
    """Make the loop raise at step ``step`` (after the backward pass), as a crash of the machine would."""
    calls = {"n": 0}
    gradient_norm = _training._gradient_norm

    def failing(*args):
        calls["n"] += 1
        if calls["n"] == step + 1:
            raise OSError("the node went away")
        return gradient_norm(*args)

    monkeypatch.setattr(_training, "_gradient_norm", failing)


# --------------------------------------------------------------------------- learning-rate schedules


def test_the_learning_rate_factor_warms_up_linearly_then_follows_half_a_cosine_to_the_decay_rate():
    factor = lambda step, **options: _training.learning_rate_factor(step, n_steps=110, **options)  # noqa: E731
    cosine = {"schedule": "cosine", "warmup_steps": 10, "decay_rate": 0.2}
    assert [factor(step, **cosine) for step in range(3)] == pytest.approx([0.1, 0.2, 0.3])
    assert factor(9, **cosine) == pytest.approx(1.0)
    # after the warm-up: 0.2 + 0.8 * (1 + cos(pi * (step - 10) / 100)) / 2
    for step in (10, 35, 60, 85, 110, 500):
        progress = min((step - 10) / 100, 1.0)
        assert factor(step, **cosine) == pytest.approx(0.2 + 0.4 * (1 + np.cos(np.pi * progress)))
    # the step schedule is torch's StepLR
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=1.0)
    step_lr = torch.optim.lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.5)
    for step in range(30):
        assert factor(step, decay_rate=0.5, decay_every=7) == pytest.approx(optimizer.param_groups[0]["lr"])
        optimizer.step()
        step_lr.step()


@pytest.mark.parametrize("name", ["Wormhole", "WassersteinFlowMatching", "GaussianFlowMatching"])
def test_training_runs_each_step_at_the_scheduled_learning_rate(name, family, monkeypatch):
    seen = []
    step = torch.optim.Adam.step

    def recording(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", recording)
    options = {"schedule": "cosine", "warmup_steps": 3, "decay_rate": 0.0, "learning_rate": 2e-3}
    _fit(name, _build(name), family, n_steps=9, **options)
    # steps 0-2 warm up to the full rate, steps 3-8 follow the cosine down towards 0 at step 9
    expected = [2e-3 * (i + 1) / 3 for i in range(3)] + [1e-3 * (1 + np.cos(np.pi * (i - 3) / 6)) for i in range(3, 9)]
    assert seen == pytest.approx(expected)
    assert seen[-1] == pytest.approx(2e-3 * 0.5 * (1 + np.cos(np.pi * 5 / 6)))


def test_a_cosine_run_refuses_a_checkpoint_of_another_budget(family, tmp_path):
    path = tmp_path / "cosine.pt"
    _fit("Wormhole", _build("Wormhole"), family, n_steps=4, schedule="cosine", checkpoint=path)
    with pytest.raises(ValueError, match=r"`n_steps`=10 differs from the 4 of the run.*cosine schedule ends at"):
        _fit("Wormhole", _build("Wormhole"), family, n_steps=10, schedule="cosine", checkpoint=path)
    with pytest.raises(ValueError, match="`schedule`='step' differs from the 'cosine' of the run"):
        _fit("Wormhole", _build("Wormhole"), family, n_steps=4, schedule="step", checkpoint=path)
    with pytest.raises(ValueError, match="`schedule` must be one of"):
        _fit("Wormhole", _build("Wormhole"), family, n_steps=4, schedule="linear")
    with pytest.raises(ValueError, match="warmup_steps"):
        _fit("Wormhole", _build("Wormhole"), family, n_steps=4, warmup_steps=-1)


# --------------------------------------------------------------------------- checkpoints


def test_an_interrupted_and_resumed_wormhole_run_ends_with_the_weights_of_an_uninterrupted_one(
    family, tmp_path, monkeypatch
):
    path = tmp_path / "run" / "wormhole.pt"
    options = {"n_steps": 12, "random_state": 3}
    uninterrupted = _fit("Wormhole", _build("Wormhole"), family, **options)
    # a run that dies at step 8 keeps the checkpoint of step 5, and the model is as it was before it
    with monkeypatch.context() as patch:
        _failing_at(patch, 8)
        crashed = _build("Wormhole")
        with pytest.raises(OSError, match="went away"):
            _fit("Wormhole", crashed, family, checkpoint=path, checkpoint_every=5, **options)
    assert crashed.history == []
    assert torch.load(path, weights_only=True)["step"] == 5
    assert list(path.parent.iterdir()) == [path]  # no temporary file left beside it
    # a new process: another initialisation, which the checkpoint replaces
    resumed = _fit("Wormhole", _build("Wormhole", seed=99), family, checkpoint=path, checkpoint_every=5, **options)
    _assert_same_weights(resumed, uninterrupted)
    assert resumed.history == uninterrupted.history
    # the same call once more finds the finished run and takes no step
    again = _fit("Wormhole", _build("Wormhole", seed=7), family, checkpoint=path, **options)
    _assert_same_weights(again, uninterrupted)
    assert len(again.history) == 12


def test_a_run_split_in_two_calls_ends_as_one_call(family, tmp_path):
    # a step schedule does not depend on the budget, so a run can be extended
    options = {"random_state": 1, "learning_rate": 1e-3, "schedule": "step"}
    whole = _fit("Wormhole", _build("Wormhole"), family, n_steps=10, **options)
    path = tmp_path / "split.pt"
    _fit("Wormhole", _build("Wormhole"), family, n_steps=4, checkpoint=path, **options)
    split = _fit("Wormhole", _build("Wormhole", seed=5), family, n_steps=10, checkpoint=path, **options)
    _assert_same_weights(split, whole)
    assert split.history == whole.history


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_resumes_a_crashed_run_to_the_weights_of_an_uninterrupted_one(name, family, tmp_path, monkeypatch):
    path = tmp_path / f"{name}.pt"
    options = {"n_steps": 8, "random_state": 2}
    uninterrupted = _fit(name, _build(name), family, **options)
    with monkeypatch.context() as patch:
        _failing_at(patch, 5)
        with pytest.raises(OSError):
            _fit(name, _build(name), family, checkpoint=path, checkpoint_every=3, **options)
    # the same model built anew, its weights moved: the checkpoint puts back every one
    fresh = _build(name)
    with torch.no_grad():
        for parameter in fresh.parameters():
            parameter.add_(0.5)
    resumed = _fit(name, fresh, family, checkpoint=path, checkpoint_every=3, **options)
    _assert_same_weights(resumed, uninterrupted)
    assert resumed.history == uninterrupted.history


def test_a_checkpoint_of_another_model_or_run_is_refused_saying_what_differs(family, tmp_path):
    path = tmp_path / "wormhole.pt"
    _fit("Wormhole", _build("Wormhole"), family, n_steps=4, checkpoint=path)
    wider = Wormhole(2, **{**SMALL, "n_components": 8}, decoder_size=4)
    with pytest.raises(ValueError, match=r"written by a Wormhole\(.*n_components=4.*differ in n_components"):
        _fit("Wormhole", wider, family, n_steps=4, checkpoint=path)
    with pytest.raises(ValueError, match="written by a Wormhole.*but this model is a HOTET"):
        _fit("HOTET", _build("HOTET"), family, n_steps=4, checkpoint=path)
    with pytest.raises(ValueError, match="`learning_rate`=0.01 differs from the 0.001 of the run"):
        _fit("Wormhole", _build("Wormhole"), family, n_steps=4, learning_rate=1e-2, checkpoint=path)
    with pytest.raises(ValueError, match="holds 4 steps of its run, more than `n_steps`=2"):
        _fit("Wormhole", _build("Wormhole"), family, n_steps=2, checkpoint=path)
    saved = tmp_path / "saved.pt"
    _build("Wormhole").save(saved)
    with pytest.raises(ValueError, match="is not a training checkpoint"):
        _fit("Wormhole", _build("Wormhole"), family, n_steps=2, checkpoint=saved)
    # a refused checkpoint leaves the model untouched
    model = _build("Wormhole")
    before = {key: value.clone() for key, value in model.state_dict().items()}
    with pytest.raises(ValueError):
        _fit("Wormhole", model, family, n_steps=2, checkpoint=saved)
    assert all(torch.equal(model.state_dict()[key], value) for key, value in before.items())


def test_a_checkpoint_is_replaced_whole_or_not_at_all(family, tmp_path, monkeypatch):
    path = tmp_path / "wormhole.pt"
    _fit("Wormhole", _build("Wormhole"), family, n_steps=3, schedule="step", checkpoint=path)
    written = path.read_bytes()
    real_save = torch.save

    def dies_half_way(contents, file):
        real_save(contents, file)
        file.truncate(100)
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(OSError, match="disk full"):
        _fit("Wormhole", _build("Wormhole"), family, n_steps=6, schedule="step", checkpoint=path, checkpoint_every=2)
    assert path.read_bytes() == written
    assert list(tmp_path.iterdir()) == [path]


# --------------------------------------------------------------------------- several processes


def _fidelity(model: Wormhole) -> float:
    """Pearson correlation of embedding distances with exact W2² on 40 held-out clouds."""
    held_out = _ddp_worker.clouds(40, seed=1)
    first, second = np.triu_indices(len(held_out), 1)
    exact = exact_w2_squared(held_out[first], held_out[second])
    embedding = model.encode(held_out)
    return scipy.stats.pearsonr(((embedding[first] - embedding[second]) ** 2).sum(1), exact)[0]


def test_two_processes_under_torchrun_train_one_model_as_good_as_one_process(tmp_path):
    """``python -m torch.distributed.run --nproc_per_node=2`` (gloo) on a script that knows nothing of it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    start = time.perf_counter()
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
        + [_ddp_worker.__file__, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    wall = time.perf_counter() - start
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(2)]
    # (a) DDP kept the weights of the ranks identical, from rank 0's start (the ranks began apart)
    for key in ranks[0]["state"]:
        assert torch.equal(ranks[0]["state"][key], ranks[1]["state"][key]), key
    assert ranks[0]["history"] == ranks[1]["history"] and len(ranks[0]["history"]) == _ddp_worker.N_STEPS
    # rank 0 wrote one checkpoint, holding the random state of both processes
    contents = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert (contents["world_size"], len(contents["random_state"]), contents["step"]) == (2, 2, _ddp_worker.N_STEPS)
    # the run stopped half-way and resumed on two processes ends as the run never stopped, on each
    for rank in range(2):
        resumed = torch.load(tmp_path / f"resumed{rank}.pt", weights_only=True)
        assert all(torch.equal(resumed["state"][key], ranks[rank]["state"][key]) for key in resumed["state"])
        assert resumed["history"] == ranks[rank]["history"]
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "checkpoint.pt",
        "halves.pt",
        "rank0.pt",
        "rank1.pt",
        "resumed0.pt",
        "resumed1.pt",
    ]
    # (b) the same fidelity as one process with the same budget (batch of 16 clouds per step)
    two = _ddp_worker.model(seed=0)
    two.load_state_dict(ranks[0]["state"])
    one = _ddp_worker.fit(_ddp_worker.model(seed=0), _ddp_worker.BATCH_SIZE)
    untrained = _fidelity(_ddp_worker.model(seed=0).fit(_ddp_worker.clouds(96, seed=0), n_steps=1, progress=False))
    fidelity_two, fidelity_one = _fidelity(two.eval()), _fidelity(one)
    print(
        f"two processes: {wall:.1f} s, Pearson {fidelity_two:.4f}; one: {fidelity_one:.4f}; untrained {untrained:.4f}"
    )
    assert fidelity_one > max(0.93, untrained + 0.05)
    assert abs(fidelity_two - fidelity_one) < 0.03


# --------------------------------------------------------------------------- precision


def test_bfloat16_runs_the_networks_in_bf16_and_the_ot_in_float32(family, monkeypatch):
    solved, encoded = [], []
    sinkhorn = sot.models._wormhole.sinkhorn

    def recording(x, y, **options):
        solved.append((x.points.dtype, y.points.dtype, torch.is_autocast_enabled("cpu")))
        return sinkhorn(x, y, **options)

    monkeypatch.setattr(sot.models._wormhole, "sinkhorn", recording)
    model = _build("Wormhole")
    model.encoder_head.register_forward_hook(lambda module, inputs, output: encoded.append(output.dtype))
    _fit("Wormhole", model, family, n_steps=2, precision="bfloat16")
    assert set(encoded) == {torch.bfloat16}
    # targets and decoder loss: float32 clouds, autocast off
    assert len(solved) == 2 * 4 and set(solved) == {(torch.float32, torch.float32, False)}
    assert all(parameter.dtype == torch.float32 for parameter in model.parameters())
    # float32 runs the networks in float32, and encoding after bf16 training too
    encoded.clear()
    model.encode(family)
    _fit("Wormhole", model, family, n_steps=1, precision="float32", checkpoint=None)
    assert set(encoded) == {torch.float32}
    with pytest.raises(ValueError, match="`precision` must be one of"):
        _fit("Wormhole", _build("Wormhole"), family, n_steps=1, precision="float16")


@pytest.mark.parametrize("name", list(MODELS)[:4])
def test_every_network_trains_in_bfloat16(name, family):
    model = _fit(name, _build(name), family, n_steps=3, precision="bfloat16")
    assert len(model.history) == 3 and np.isfinite(model.history).all()


def test_bfloat16_keeps_the_fidelity_of_float32():
    """The embedding of a bf16 run matches exact W2 as well as the float32 run of the same budget."""
    fidelity = {
        precision: _fidelity(_ddp_worker.fit(_ddp_worker.model(seed=0), _ddp_worker.BATCH_SIZE, precision=precision))
        for precision in ("float32", "bfloat16")
    }
    print(fidelity)
    assert fidelity["float32"] > 0.93
    assert abs(fidelity["bfloat16"] - fidelity["float32"]) < 0.02


# --------------------------------------------------------------------------- no host reads inside a step

# aten operations that make the host wait for the device: reading a value, or sizing an output by one
_SYNCHRONISING = {
    "_local_scalar_dense",
    "nonzero",
    "masked_select",
    "_linalg_check_errors",
    "unique",
    "_unique2",
    "repeat_interleave",
}
# functions of the loop that read device values on purpose, every SYNC_EVERY steps and at the end
_READS = {"read", "save", "_all_finite", "read_after"}


class _HostReads(TorchDispatchMode):
    """Record where, inside the training steps of ``train``, an operation made the host wait for the device.

    With ``solvers_exempt`` the OT solvers may read (they test convergence on CPU).
    """

    def __init__(self, solvers_exempt: bool = True):
        super().__init__()
        self.found: list[str] = []
        self.solvers_exempt = solvers_exempt

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in _SYNCHRONISING:
            self._check(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))

    def _check(self, what: str) -> None:
        frames = [(Path(frame.f_code.co_filename), frame.f_code.co_name) for frame in _stack()]
        in_step = any(path.name == "_training.py" and name == "train" for path, name in frames)
        allowed = any(path.name == "_training.py" and name in _READS for path, name in frames) or any(
            # the OT solvers check convergence every few iterations (their own business), and
            # the optimiser keeps its step counts on the host
            (self.solvers_exempt and "spatialot/ot/" in path.as_posix()) or "torch/optim/" in path.as_posix()
            for path, _ in frames
        )
        if in_step and not allowed:
            where = next(f"{path.name}:{name}" for path, name in frames if "spatialot" in path.as_posix())
            self.found.append(f"{what} in {where}")


def _stack():
    frame = sys._getframe(2)
    while frame is not None:
        yield frame
        frame = frame.f_back


@pytest.mark.parametrize("name", list(MODELS))
def test_a_training_step_never_waits_for_the_device(name, family, monkeypatch):
    """No value read on the host inside a step (outside the OT solvers): on a GPU the step is queued, never awaited."""
    assert _host_reads_in_training(name, family, monkeypatch, solvers_exempt=True) == []


@pytest.mark.parametrize(
    ("name", "options"),
    # WFM with minibatch pairing, and each point matching: assignments are rounded on the device
    [("Wormhole", {})] + [("WassersteinFlowMatching", {"matching": m}) for m in ("entropic", "auto", "exact")],
)
def test_off_the_cpu_the_solvers_of_a_step_read_nothing_either(name, options, family, monkeypatch):
    # the CPU standing in for a GPU: the Sinkhorn solves of a step run fixed iteration counts
    for module in (wormhole_module, wfm_module):
        monkeypatch.setattr(module, "checks_on_host", lambda device: False)
    assert _host_reads_in_training(name, family, monkeypatch, solvers_exempt=False, **options) == []
    monkeypatch.undo()
    reads = _host_reads_in_training(name, family, monkeypatch, solvers_exempt=False, **options)
    # the test can fail: on the host the solvers check tolerances and scipy assigns
    assert reads and all(any(f in read for f in ("_sinkhorn.py", "_pairing.py", "_wfm.py")) for read in reads)


def _host_reads_in_training(name, family, monkeypatch, *, solvers_exempt: bool, **options) -> list[str]:
    reads = []
    for method in ("item", "tolist", "numpy", "__float__", "__bool__", "__int__"):
        original = getattr(torch.Tensor, method)

        def recording(self, *args, _original=original, _method=method, **kwargs):
            frames = [(Path(frame.f_code.co_filename), frame.f_code.co_name) for frame in _stack()]
            if any(path.name == "_training.py" and function == "train" for path, function in frames) and not any(
                (path.name == "_training.py" and function in _READS)
                or (solvers_exempt and "spatialot/ot/" in path.as_posix())
                or "torch/" in path.as_posix()
                for path, function in frames
            ):
                reads.append(
                    f"Tensor.{_method} in " + next(f"{p.name}:{f}" for p, f in frames if "spatialot" in p.as_posix())
                )
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, method, recording)
    model = _build(name)
    for option, value in options.items():  # a constructor argument that changes no weight
        model.config[option] = value
    with _HostReads(solvers_exempt) as mode:
        _fit(name, model, family, n_steps=3)
    return mode.found + reads
