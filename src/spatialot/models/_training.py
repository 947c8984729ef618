"""The one training loop every model uses: Adam, step decay, gradient clipping, progress bar."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from ._base import Model


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
        Show a progress bar with the running loss.
    description
        Label of the progress bar.

    Returns
    -------
    The loss of every step of this call.
    """
    if n_steps < 1:
        raise ValueError(f"`n_steps` must be at least 1, got {n_steps}.")
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=decay_every, gamma=decay_rate)
    losses: list[float] = []
    model.train()
    bar = tqdm(range(n_steps), desc=description, disable=not progress)
    try:
        for step in bar:
            optimizer.zero_grad(set_to_none=True)
            loss = step_loss(step)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise RuntimeError(
                    f"The training loss became {value} at step {step}: lower the learning rate, "
                    "or check the input clouds for extreme values."
                )
            loss.backward()
            if max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
            optimizer.step()
            schedule.step()
            losses.append(value)
            if step % 10 == 0 or step == n_steps - 1:
                recent = losses[-50:]
                bar.set_postfix(loss=f"{sum(recent) / len(recent):.4g}")
    finally:
        bar.close()
        model.history.extend(losses)
        model.eval()
    return losses
