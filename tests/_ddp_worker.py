"""One Wormhole fit, written as a user would write it, run by ``test_training.py`` under ``torch.distributed.run``.

``python -m torch.distributed.run --standalone --nproc_per_node=2 tests/_ddp_worker.py OUT`` trains on
two processes (gloo on CPU) with nothing in this file about them; every rank then writes its weights
and history to ``OUT/rank<r>.pt`` for the test to compare.
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


def fit(wormhole: Wormhole, batch_size: int, **options) -> Wormhole:
    return wormhole.fit(
        clouds(96, seed=0),
        n_steps=N_STEPS,
        batch_size=batch_size,
        learning_rate=1e-2,
        device="cpu",
        progress=False,
        **options,
    )


if __name__ == "__main__":
    torch.set_num_threads(1)
    out = sys.argv[1]
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    # each rank builds its model from its own seed: DDP starts every rank from rank 0's weights
    wormhole = fit(model(seed=rank), BATCH_SIZE // world_size, checkpoint=os.path.join(out, "checkpoint.pt"))
    torch.save({"state": wormhole.state_dict(), "history": wormhole.history}, os.path.join(out, f"rank{rank}.pt"))
