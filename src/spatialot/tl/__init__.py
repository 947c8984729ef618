"""Tools: the methods run on the niches of an AnnData, results written back to it."""

from ._asot import asot, asot_neighbors
from ._hotet import hotet
from ._ot_distances import ot_distances
from ._wfm import generate_niches, wfm
from ._wormhole import wormhole

__all__ = [
    "asot",
    "asot_neighbors",
    "generate_niches",
    "hotet",
    "ot_distances",
    "wfm",
    "wormhole",
]
