"""Plots that read what :mod:`spatialot.pp` and :mod:`spatialot.tl` wrote."""

from ._embedding import distance_fidelity, embedding
from ._loss import loss
from ._niches import niches

__all__ = [
    "distance_fidelity",
    "embedding",
    "loss",
    "niches",
]
