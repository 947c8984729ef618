"""The one training loop every model uses: Adam, step decay, gradient clipping, progress bar.

It also holds the one rule every ``fit`` follows: a fit that fails leaves the model as it was.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from .._settings import cpu_threads, progress_bar
from .._validation import check_int
from ._base import Model


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


def _all_finite(tensors: list[torch.Tensor]) -> bool:
    # one fused norm per tensor and one device synchronisation for all: a per-tensor isfinite
    # costs more than the optimiser step on small models. An entry too large to square in its
    # dtype (above ~1e19 in float32) counts as diverged, which at that size it has
    return not tensors or bool(torch.stack(torch._foreach_norm(tensors)).isfinite().all())


def train(
    model: Model,
    step_loss: Callable[[int], torch.Tensor],
    *,
    n_steps: int,
    learning_rate: float,
    decay_rate: float = 1.0,
    decay_every: int = 1000,
    max_grad_norm: float | None = None,
    progress: bool = True,
    description: str = "training",
) -> list[float]:
    """Minimise ``step_loss`` with Adam for ``n_steps`` steps and append the losses to ``model.history``.

    Parameters
    ----------
    model
        The model whose parameters are trained; left in evaluation mode afterwards.
    step_loss
        Called with the step number; draws its own minibatch and returns a scalar loss.
    n_steps
        Number of optimiser steps.
    learning_rate
        Initial Adam learning rate.
    decay_rate, decay_every
        The learning rate is multiplied by ``decay_rate`` every ``decay_every`` steps.
    max_grad_norm
        Clip the global gradient norm to this value when given.
    progress
        Show a progress bar with the running loss (when ``sot.settings`` and scanpy's verbosity
        allow it, see :class:`spatialot.settings`).
    description
        Label of the progress bar.

    Returns
    -------
    The loss of every step of this call.

    Raises
    ------
    RuntimeError
        If the loss or the gradients become NaN or infinite. The check comes before the
        optimiser step, and the model is then restored as it was before the call (see
        :func:`restored_on_failure`).
    """
    n_steps = check_int("n_steps", n_steps)
    parameters = list(model.parameters())
    with restored_on_failure(model), cpu_threads():
        # foreach: one fused update for all tensors (torch's default on GPU only)
        optimizer = torch.optim.Adam(parameters, lr=learning_rate, foreach=True)
        schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=decay_every, gamma=decay_rate)
        losses: list[float] = []
        model.train()
        bar = progress_bar(range(n_steps), description=description, requested=progress)
        try:
            for step in bar:
                optimizer.zero_grad(set_to_none=True)
                loss = step_loss(step)
                value = float(loss.detach())
                if not math.isfinite(value):
                    _diverged(f"The training loss became {value} at step {step}")
                loss.backward()
                # checked before the step: Adam would write a NaN gradient into every weight
                gradients = [parameter.grad for parameter in parameters if parameter.grad is not None]
                if not _all_finite(gradients):
                    _diverged(f"The gradients became NaN or infinite at step {step}")
                if max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)
                optimizer.step()
                schedule.step()
                losses.append(value)
                if step % 10 == 0 or step == n_steps - 1:
                    recent = losses[-50:]
                    bar.set_postfix(loss=f"{sum(recent) / len(recent):.4g}")
            # a finite last gradient can still take a weight out of range
            if not _all_finite(parameters):
                _diverged(f"The weights became NaN or infinite at step {n_steps - 1}")
        finally:
            bar.close()
            model.history.extend(losses)
            model.eval()
    return losses


def _diverged(what: str) -> None:
    raise RuntimeError(
        f"{what}: lower the learning rate, or check the input clouds for extreme values. "
        "The model is left as it was before this call."
    )
