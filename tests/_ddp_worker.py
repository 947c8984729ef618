"""One Wormhole fit, written as a user would write it, run by ``test_training.py`` under ``torch.distributed.run``.

``python -m torch.distributed.run --standalone --nproc_per_node=2 tests/_ddp_worker.py OUT`` trains on
two processes (gloo on CPU) with nothing in this file about them; every rank then writes its weights
and history to ``OUT/rank<r>.pt`` for the test to compare, and those of the same run stopped half-way
and resumed from its checkpoint to ``OUT/resumed<r>.pt``.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import torch

from spatialot.models import Wormhole
from spatialot.ot import PointClouds

N_STEPS = 200
BATCH_SIZE = 16  # in all: each of N processes draws BATCH_SIZE // N clouds per step
OPTIONS = {
    "n_components": 8,
    "width": 16,
    "n_layers": 1,
    "n_heads": 2,
    "mlp_width": 32,
    "decoder_weight": 0.0,
    "decoder_size": 6,
}


def clouds(n: int, seed: int) -> PointClouds:
    """2-D clouds of 8 points around centres spread over a square, each with a spread of its own."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-3, 3, size=(n, 1, 2))
    spreads = rng.uniform(0.3, 1.0, size=(n, 1, 1))
    return PointClouds.from_padded(centres + spreads * rng.normal(size=(n, 8, 2)))


def model(seed: int) -> Wormhole:
    torch.manual_seed(seed)
    return Wormhole(2, **OPTIONS, epsilon=0.05)


def fit(wormhole: Wormhole, batch_size: int, n_steps: int = N_STEPS, **options) -> Wormhole:
    return wormhole.fit(
        clouds(96, seed=0),
        n_steps=n_steps,
        batch_size=batch_size,
        learning_rate=1e-2,
        # a step schedule does not depend on the budget: the half-way checkpoint can be resumed to N_STEPS
        schedule="step",
        decay_rate=0.99,
        warmup_steps=0,
        device="cpu",
        progress=False,
        **options,
    )


if __name__ == "__main__":
    torch.set_num_threads(1)
    out = sys.argv[1]
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    batch_size = BATCH_SIZE // world_size
    # each rank builds its model from its own seed: DDP starts every rank from rank 0's weights
    wormhole = fit(model(seed=rank), batch_size, checkpoint=os.path.join(out, "checkpoint.pt"))
    # a run stopped half-way (its checkpoint at N_STEPS // 2), then resumed by a model built anew
    fit(model(seed=rank), batch_size, n_steps=N_STEPS // 2, checkpoint=os.path.join(out, "halves.pt"))
    resumed = fit(model(seed=10 + rank), batch_size, checkpoint=os.path.join(out, "halves.pt"))
    for name, trained in (("rank", wormhole), ("resumed", resumed)):
        torch.save({"state": trained.state_dict(), "history": trained.history}, os.path.join(out, f"{name}{rank}.pt"))
