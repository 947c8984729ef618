"""Plots that read what :mod:`spatialot.pp` and :mod:`spatialot.tl` wrote."""

from ._asot import asot
from ._embedding import embedding
from ._fidelity import distance_fidelity
from ._hotet import hotet
from ._loss import loss
from ._niches import niches
from ._wfm import generated_niches

__all__ = [
    "asot",
    "distance_fidelity",
    "embedding",
    "generated_niches",
    "hotet",
    "loss",
    "niches",
]
