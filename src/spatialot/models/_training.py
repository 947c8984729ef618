"""The one training loop every model uses.

Adam with step decay and gradient clipping, a progress bar, checkpoints that a later call resumes
from, ``DistributedDataParallel`` when the process is one of several (``torchrun``), and bf16
autocast. It also holds the one rule every ``fit`` follows: a fit that fails leaves the model as
it was.

The loop never waits for the device inside a step: losses, the finiteness checks and the progress
bar are read together every :data:`SYNC_EVERY` steps (and at checkpoints and the end).
"""

from __future__ import annotations

import atexit
import copy
import inspect
import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import distributed, nn

from .._settings import cpu_threads, progress_bar
from .._validation import check_int
from ._base import Model

Precision = Literal["float32", "bfloat16"]
PRECISIONS: tuple[str, ...] = ("float32", "bfloat16")
SYNC_EVERY = 50
"""Steps between two reads of device values (losses, finiteness flags) by the host."""
CHECKPOINT_EVERY = 500
"""Default number of steps between two checkpoints."""
_FORMAT = "spatialot training checkpoint"
_FORMAT_VERSION = 1
# the training arguments a resumed run must share with the run that wrote the checkpoint
_RUN_ARGUMENTS = (
    "learning_rate",
    "decay_rate",
    "decay_every",
    "schedule",
    "warmup_steps",
    "max_grad_norm",
    "precision",
)
# what a checkpoint written before an argument existed ran with
_RUN_DEFAULTS = {"schedule": "step", "warmup_steps": 0}
Schedule = Literal["step", "cosine"]
SCHEDULES: tuple[str, ...] = ("step", "cosine")


@contextmanager
def restored_on_failure(model: Model) -> Iterator[None]:
    """Run a block that changes ``model``; if it raises, put back its layers, weights, buffers, config and history.

    Every ``fit`` runs its whole body, calibration included, in this block, so that a failed fit
    (a non-finite loss, a bad batch, any exception) never leaves a half-trained or half-calibrated
    model that later calls would use silently. A ``KeyboardInterrupt`` is not a failure: the
    steps taken so far are kept, with their history, as before. The training mode is put back
    too. Nested blocks on the same model keep one snapshot, the outermost.

    Parameters
    ----------
    model
        The model the block changes.

    Examples
    --------
    >>> from spatialot.models import Wormhole
    >>> model = Wormhole(2, n_components=2)
    >>> with restored_on_failure(model):  # doctest: +SKIP
    ...     model.fit(clouds, learning_rate=1e9)  # raises: the model is as it was before
    """
    if getattr(model, "_snapshot_held", False):
        yield
        return
    # the values, on the CPU so that the copy takes no accelerator memory
    state = {name: tensor.detach().to("cpu", copy=True) for name, tensor in model.state_dict().items()}
    # and the structure: a fit may build a layer sized from the data (where an attribute was
    # None) or reassign a buffer. A shallow copy of the attributes, and of torch's registries of
    # layers, weights and buffers among them, puts every object of before back in its place
    attributes = dict(vars(model))
    registries = {name: dict(attributes[name]) for name in ("_modules", "_parameters", "_buffers")}
    config, history, training = copy.deepcopy(model.config), list(model.history), model.training
    model._snapshot_held = True
    try:
        yield
    except Exception:
        vars(model).clear()
        vars(model).update(attributes)
        for name, before in registries.items():
            attributes[name].clear()
            attributes[name].update(before)
        model.config, model.history = config, history
        model.load_state_dict(state)  # copies the values back in place, into the objects of before
        model.train(training)
        raise
    finally:
        model._snapshot_held = False


@contextmanager
def full_precision(device: torch.device | str) -> Iterator[None]:
    """Run a block in float32 inside the training loop's bf16 autocast: OT solves, closed forms and losses.

    Tensors made by the networks before the block may be bfloat16: cast them with ``.float()``
    inside it. Outside autocast the block changes nothing.

    Parameters
    ----------
    device
        Device of the tensors of the block (its type selects the autocast to switch off).

    Examples
    --------
    >>> import torch
    >>> x = torch.ones(2, 2)
    >>> with torch.autocast("cpu", dtype=torch.bfloat16), full_precision(x.device):
    ...     (x @ x).dtype
    torch.float32
    """
    with torch.autocast(device_type=torch.device(device).type, enabled=False):
        yield


def _all_finite(tensors: list[torch.Tensor]) -> bool:
    # one fused norm per tensor and one device synchronisation for all: a per-tensor isfinite
    # costs more than the optimiser step on small models. An entry too large to square in its
    # dtype (above ~1e19 in float32) counts as diverged, which at that size it has
    return not tensors or bool(torch.stack(torch._foreach_norm(tensors)).isfinite().all())


def _gradient_norm(parameters: list[nn.Parameter], max_grad_norm: float | None) -> torch.Tensor:
    """Global norm of the gradients (clipping them to ``max_grad_norm`` when given), on the device."""
    if max_grad_norm is not None:
        # the norm before clipping: NaN or infinite when a gradient is
        return torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)
    gradients = [parameter.grad for parameter in parameters if parameter.grad is not None]
    if not gradients:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(gradients)))


# ---------------------------------------------------------------------------- several processes


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process: ``(0, 1)`` unless ``torch.distributed`` is initialised."""
    if distributed.is_available() and distributed.is_initialized():
        return distributed.get_rank(), distributed.get_world_size()
    return 0, 1


def _join_process_group(device: torch.device) -> tuple[int, int]:
    """Initialise ``torch.distributed`` from torchrun's variables when they name several processes.

    An initialised process group is used as it is. Otherwise ``WORLD_SIZE`` above 1 in the
    environment (set by ``torchrun``, with ``RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``) makes
    this process join the group, NCCL for a CUDA model and gloo for a CPU one.
    """
    if not distributed.is_available():
        return 0, 1
    if not distributed.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
        atexit.register(_leave_process_group)
    return world()


def _leave_process_group() -> None:
    if distributed.is_initialized():
        distributed.destroy_process_group()


# torch 2.13 renamed DDP's `broadcast_buffers` to `forward_sync_buffers`
_NO_BUFFER_SYNC_PER_STEP = (
    {"forward_sync_buffers": False}
    if "forward_sync_buffers" in inspect.signature(nn.parallel.DistributedDataParallel).parameters
    else {"broadcast_buffers": False}
)


class _StepLoss(nn.Module):
    """The step's loss as a module's ``forward``: the call ``DistributedDataParallel`` averages gradients through.

    The models compute their loss with methods of their own, not ``forward``; DDP arms its
    gradient hooks in the ``forward`` of the module it wraps, so the loop wraps this module,
    whose only submodule is the model (the same parameters) and whose ``forward`` is the step.
    """

    def __init__(self, model: nn.Module, step_loss: Callable[[int], torch.Tensor]):
        super().__init__()
        self.model = model
        self.step_loss = step_loss

    def forward(self, step: int) -> torch.Tensor:
        return self.step_loss(step)


def _rank_streams(rng: np.random.Generator | None, rank: int) -> None:
    """Give every rank its own minibatches, noise and dropout, derived from the shared seed."""
    base = int(rng.integers(2**62)) if rng is not None else int(torch.randint(2**62, ()))
    if rng is not None:
        rng.bit_generator.state = np.random.default_rng([base, rank]).bit_generator.state
    torch.manual_seed(int(np.random.default_rng([base, rank, 1]).integers(2**62)))


# ---------------------------------------------------------------------------- checkpoints


def _random_state(rng: np.random.Generator | None, device: torch.device) -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "numpy": None if rng is None else rng.bit_generator.state,
    }


def _set_random_state(state: dict[str, Any], rng: np.random.Generator | None, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state["cuda"] is not None:
        torch.cuda.set_rng_state(state["cuda"], device)
    if rng is not None and state["numpy"] is not None:
        rng.bit_generator.state = state["numpy"]


def _write_checkpoint(path: Path, contents: dict[str, Any]) -> None:
    """Write ``contents`` to ``path`` atomically: a temporary file beside it, flushed, then renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as file:
            torch.save(contents, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _describe(name: str, config: dict[str, Any]) -> str:
    return f"{name}({', '.join(f'{key}={value!r}' for key, value in config.items())})"


def _read_checkpoint(path: Path, model: Model, run: dict[str, Any], n_steps: int, world_size: int) -> dict[str, Any]:
    """The contents of ``path``, once checked to be a checkpoint of this model and of this run."""
    where = f"`checkpoint`={os.fspath(path)!r}"
    try:
        contents = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"{where} cannot be read as a training checkpoint ({error}).") from error
    if not isinstance(contents, dict) or contents.get("format") != _FORMAT:
        raise ValueError(
            f"{where} is not a training checkpoint (a model written by `save` is read with `load`): "
            "pass the path a `fit` wrote its checkpoints to, or a new path."
        )
    name = type(model).__name__
    if contents["class"] != name or contents["config"] != model.config:
        differing = sorted(
            key
            for key in set(contents["config"]) | set(model.config)
            if contents["config"].get(key) != model.config.get(key)
        )
        raise ValueError(
            f"{where} was written by a {_describe(contents['class'], contents['config'])}, but this model is a "
            f"{_describe(name, model.config)}"
            + (f" (they differ in {', '.join(differing)})" if contents["class"] == name else "")
            + ": resume with the model that wrote it, or pass a new path."
        )
    for argument in _RUN_ARGUMENTS:
        written = contents["run"].get(argument, _RUN_DEFAULTS.get(argument))
        if written != run[argument]:
            raise ValueError(
                f"`{argument}`={run[argument]!r} differs from the {written!r} of the run in {where}: "
                "resume with the same training arguments, or pass a new path."
            )
    if contents["world_size"] != world_size:
        raise ValueError(
            f"{where} was written by {contents['world_size']} process(es), and this run has {world_size}: each "
            "process's random state is in the checkpoint, so resume with the same number of processes."
        )
    if contents["step"] > n_steps:
        raise ValueError(
            f"{where} holds {contents['step']} steps of its run, more than `n_steps`={n_steps}: pass at least "
            f"`n_steps`={contents['step']}, or a new path."
        )
    if run["schedule"] == "cosine" and contents["run"].get("n_steps") != n_steps:
        raise ValueError(
            f"`n_steps`={n_steps} differs from the {contents['run'].get('n_steps')!r} of the run in {where}: a cosine "
            "schedule ends at `n_steps`, so resume with the same `n_steps`, or pass a new path (or use "
            "`schedule='step'` to extend runs)."
        )
    return contents


def _load_checkpoint(model: Model, contents: dict[str, Any], optimizer, schedule) -> None:
    try:
        model.load_state_dict(contents["model"])
    except RuntimeError as error:  # the same configuration with other layers: a checkpoint of another version
        raise ValueError(f"The checkpoint's weights do not fit this model: {error}") from error
    optimizer.load_state_dict(contents["optimizer"])
    schedule.load_state_dict(contents["scheduler"])
    model.history = list(contents["history"])


# ---------------------------------------------------------------------------- the loop


def learning_rate_factor(
    step: int,
    *,
    n_steps: int,
    schedule: Schedule = "step",
    warmup_steps: int = 0,
    decay_rate: float = 1.0,
    decay_every: int = 1000,
) -> float:
    """The learning rate of step ``step`` (from 0) as a fraction of the initial one.

    A linear warm-up over ``warmup_steps`` steps, then either a step decay (``decay_rate`` every
    ``decay_every`` steps, counted from the start) or half a cosine that ends at ``decay_rate``
    at step ``n_steps``.

    Parameters
    ----------
    step
        Steps taken before this one.
    n_steps
        Steps of the whole run.
    schedule
        ``'step'`` or ``'cosine'``.
    warmup_steps
        Length of the linear warm-up (0: none).
    decay_rate, decay_every
        See above.

    Returns
    -------
    The factor, in [0, 1] (0 only once a decay to ``decay_rate=0`` has ended).

    Examples
    --------
    >>> from spatialot.models._training import learning_rate_factor
    >>> learning_rate_factor(0, n_steps=100, schedule="cosine", warmup_steps=10)
    0.1
    >>> round(learning_rate_factor(55, n_steps=100, schedule="cosine", warmup_steps=10, decay_rate=0.0), 3)
    0.5
    """
    ramp = min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
    if schedule == "step":
        return ramp * decay_rate ** (step // decay_every)
    span = max(n_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / span, 1.0)
    return ramp * (decay_rate + (1.0 - decay_rate) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def train(
    model: Model,
    step_loss: Callable[[int], torch.Tensor],
    *,
    n_steps: int,
    learning_rate: float,
    decay_rate: float = 1.0,
    decay_every: int = 1000,
    schedule: Schedule = "step",
    warmup_steps: int = 0,
    max_grad_norm: float | None = None,
    progress: bool = True,
    description: str = "training",
    rng: np.random.Generator | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = CHECKPOINT_EVERY,
    precision: Precision = "float32",
) -> list[float]:
    """Minimise ``step_loss`` with Adam for ``n_steps`` steps and append the losses to ``model.history``.

    Parameters
    ----------
    model
        The model whose parameters are trained; left in evaluation mode afterwards.
    step_loss
        Called with the step number; draws its own minibatch (from ``rng`` and torch's generator)
        and returns a scalar loss. It must not read device values on the host.
    n_steps
        Number of optimiser steps of the run (those taken before a resumed checkpoint included).
    learning_rate
        Initial Adam learning rate.
    decay_rate, decay_every
        With ``schedule='step'``, the learning rate is multiplied by ``decay_rate`` every
        ``decay_every`` steps.
    schedule
        ``'step'`` (the decay above) or ``'cosine'``: after the warm-up, the learning rate follows
        half a cosine from ``learning_rate`` down to ``decay_rate * learning_rate`` at ``n_steps``
        (see :func:`learning_rate_factor`).
    warmup_steps
        Steps over which the learning rate rises linearly from ``learning_rate / warmup_steps``
        to ``learning_rate`` (0: none).
    max_grad_norm
        Clip the global gradient norm to this value when given.
    progress
        Show a progress bar with the running loss (when ``sot.settings`` and scanpy's verbosity
        allow it, see :class:`spatialot.settings`); only the first process of several shows one.
    description
        Label of the progress bar.
    rng
        The numpy generator ``step_loss`` draws minibatches from: checkpoints save and restore its
        state, and several processes each get their own stream of it.
    checkpoint
        File to write a checkpoint to every ``checkpoint_every`` steps and at the end: weights,
        buffers, optimiser, schedule, random states (torch, CUDA, ``rng``; of every process),
        step and loss history. When the file exists, the run resumes from it, with the same
        model configuration, training arguments and number of processes.
    checkpoint_every
        Steps between two checkpoints.
    precision
        ``'float32'``, or ``'bfloat16'`` to run ``step_loss`` under bf16 autocast (the model
        computes its OT in float32 inside :func:`full_precision`); weights, gradients and the
        optimiser stay float32.

    Returns
    -------
    The loss of every step of this call (the mean over the processes when there are several).

    Raises
    ------
    RuntimeError
        If the loss or the gradients become NaN or infinite (found at the next read, within
        :data:`SYNC_EVERY` steps; an error that a diverged step causes in a later step is
        reported as the divergence). The model is then restored as it was before the call (see
        :func:`restored_on_failure`).
    ValueError
        If ``checkpoint`` exists but was written by another model or another run.

    Notes
    -----
    **Several processes.** When ``torch.distributed`` is initialised with more than one process,
    or ``WORLD_SIZE`` in the environment says there are several (``torchrun`` sets it; the
    process group is then initialised here, NCCL for a CUDA model, gloo otherwise), the step
    runs through :class:`~torch.nn.parallel.DistributedDataParallel`: every process draws its
    own minibatches (its own stream of ``rng`` and of torch's generator, derived from the shared
    seed), DDP averages the gradients, so the weights stay identical on every process, and
    only the first process (rank 0) shows the bar and writes checkpoints, the others waiting
    for it at a barrier. A step on ``N`` processes with ``batch_size`` each sees ``N * batch_size``
    clouds, as one process with that batch size (a loss over pairs of clouds pairs them within
    each process's batch).
    """
    n_steps = check_int("n_steps", n_steps)
    checkpoint_every = check_int("checkpoint_every", checkpoint_every)
    warmup_steps = check_int("warmup_steps", warmup_steps, minimum=0)
    if schedule not in SCHEDULES:
        raise ValueError(f"`schedule` must be one of {SCHEDULES}, got {schedule!r}.")
    if precision not in PRECISIONS:
        raise ValueError(f"`precision` must be one of {PRECISIONS}, got {precision!r}.")
    path = None if checkpoint is None else Path(checkpoint)
    run = {
        "learning_rate": learning_rate,
        "decay_rate": decay_rate,
        "decay_every": decay_every,
        "schedule": schedule,
        "warmup_steps": warmup_steps,
        "n_steps": n_steps,
        "max_grad_norm": max_grad_norm,
        "precision": precision,
    }
    parameters = list(model.parameters())
    device = model.device
    with restored_on_failure(model), cpu_threads():
        rank, world_size = _join_process_group(device)
        # foreach: one fused update for all tensors (torch's default on GPU only)
        optimizer = torch.optim.Adam(parameters, lr=learning_rate, foreach=True)
        rates = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: learning_rate_factor(
                step,
                n_steps=n_steps,
                schedule=schedule,
                warmup_steps=warmup_steps,
                decay_rate=decay_rate,
                decay_every=decay_every,
            ),
        )
        start = 0
        if path is not None and path.exists():
            contents = _read_checkpoint(path, model, run, n_steps, world_size)
            _load_checkpoint(model, contents, optimizer, rates)
            _set_random_state(contents["random_state"][rank], rng, device)
            start = contents["step"]
        elif world_size > 1:
            _rank_streams(rng, rank)
        loop = _Loop(model, n_steps, device, world_size)
        forward: Callable[[int], torch.Tensor] = step_loss
        if world_size > 1:
            forward = nn.parallel.DistributedDataParallel(
                _StepLoss(model, step_loss),
                device_ids=[device.index] if device.type == "cuda" else None,
                # the buffers (scales, ranges) are fixed before training: sent from rank 0 once, not every step
                **_NO_BUFFER_SYNC_PER_STEP,
                # the same weights take part in every step: no search for unused ones per step
                static_graph=True,
            )
        autocast = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bfloat16" else nullcontext()

        def save(step: int) -> None:
            states = [_random_state(rng, device)]
            if world_size > 1:
                states = [None] * world_size
                distributed.all_gather_object(states, _random_state(rng, device))
            if rank == 0:
                contents = {
                    "format": _FORMAT,
                    "version": _FORMAT_VERSION,
                    "class": type(model).__name__,
                    "config": model.config,
                    "model": {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()},
                    "optimizer": optimizer.state_dict(),
                    "scheduler": rates.state_dict(),
                    "step": step,
                    "history": list(model.history),
                    "run": run,
                    "world_size": world_size,
                    "random_state": states,
                }
                _write_checkpoint(path, contents)
            if world_size > 1:
                distributed.barrier()

        model.train()
        bar = progress_bar(range(start, n_steps), description=description, requested=progress and rank == 0)
        try:
            for step in bar:
                optimizer.zero_grad(set_to_none=True)
                with autocast:
                    loss = forward(step)
                loss = loss.float()
                loss.backward()
                loop.record(step, loss.detach(), _gradient_norm(parameters, max_grad_norm))
                optimizer.step()
                rates.step()
                done = step + 1
                to_save = path is not None and (done % checkpoint_every == 0 or done == n_steps)
                if done % SYNC_EVERY == 0 or done == n_steps or to_save:
                    loop.read(bar)
                if to_save:
                    save(done)
            # a finite last gradient can still take a weight out of range
            if not _all_finite(parameters):
                _diverged(f"The weights became NaN or infinite at step {n_steps - 1}")
        except BaseException as error:
            loop.read_after(error)
            raise
        finally:
            bar.close()
            model.eval()
    return loop.losses


class _Loop:
    """The losses and finiteness flags of the steps not yet read by the host, and their reading."""

    def __init__(self, model: Model, n_steps: int, device: torch.device, world_size: int):
        self.model, self.n_steps, self.world_size = model, n_steps, world_size
        self.losses: list[float] = []
        self.pending: list[torch.Tensor] = []
        self.first_step = n_steps  # of the pending steps
        # the first step whose loss, or whose gradients, were NaN or infinite (n_steps: none)
        self.bad_loss = torch.full((), n_steps, dtype=torch.float32, device=device)
        self.bad_gradient = torch.full((), n_steps, dtype=torch.float32, device=device)

    def record(self, step: int, loss: torch.Tensor, gradient_norm: torch.Tensor) -> None:
        """Keep the step's loss and flags on the device (no synchronisation)."""
        if not self.pending:
            self.first_step = step
        self.pending.append(loss)
        never = torch.full_like(self.bad_loss, self.n_steps)
        self.bad_loss = torch.minimum(self.bad_loss, torch.where(torch.isfinite(loss), never, step))
        finite = torch.isfinite(gradient_norm.to(never.device))
        self.bad_gradient = torch.minimum(self.bad_gradient, torch.where(finite, never, step))

    def read(self, bar=None, *, collective: bool = True) -> None:
        """Read the pending losses and flags (one transfer), average them over the processes, stop on divergence."""
        if not self.pending:
            return
        losses = torch.stack(self.pending)
        flags = torch.stack([self.bad_loss, self.bad_gradient])
        if self.world_size > 1 and collective:
            distributed.all_reduce(losses)
            losses /= self.world_size
            distributed.all_reduce(flags, op=distributed.ReduceOp.MIN)
        values = torch.cat([losses, flags]).tolist()
        losses_read, (bad_loss, bad_gradient) = values[:-2], values[-2:]
        first_step, self.pending = self.first_step, []
        if bad_loss < self.n_steps and bad_loss <= bad_gradient:
            value = losses_read[int(bad_loss) - first_step] if int(bad_loss) >= first_step else float("nan")
            _diverged(f"The training loss became {value} at step {int(bad_loss)}")
        if bad_gradient < self.n_steps:
            _diverged(f"The gradients became NaN or infinite at step {int(bad_gradient)}")
        self.losses.extend(losses_read)
        self.model.history.extend(losses_read)
        recent = self.model.history[-50:]
        if bar is not None and recent:
            bar.set_postfix(loss=f"{sum(recent) / len(recent):.4g}")

    def read_after(self, error: BaseException) -> None:
        """After an error in the loop: a divergence found among the pending steps is the error to report.

        An interrupted run (``KeyboardInterrupt``) keeps the steps it took, with their losses.
        No collective: the other processes may not be here.
        """
        if isinstance(error, _Divergence):
            return
        try:
            self.read(collective=False)
        except RuntimeError as divergence:
            raise divergence from error


class _Divergence(RuntimeError):
    """The loss, gradients or weights became NaN or infinite."""


def _diverged(what: str) -> None:
    raise _Divergence(
        f"{what}: lower the learning rate, or check the input clouds for extreme values. "
        "The model is left as it was before this call."
    )
