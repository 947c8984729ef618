"""Tools: the methods run on the niches of an AnnData, results written back to it."""

from ._ot_distances import ot_distances
from ._wormhole import wormhole

__all__ = [
    "ot_distances",
    "wormhole",
]
