"""The methods as torch models on padded point clouds (no AnnData).

Each model takes :class:`~spatialot.ot.PointClouds` (or the lazily gathered
:class:`~spatialot.ot.IndexedClouds`), trains with one shared loop (Adam, progress bar), runs on
CUDA when present (``device='auto'``), and has ``save``/``load``.
"""

from ._asot import ASOT
from ._base import Model
from ._blocks import SetTransformer, weighted_mean
from ._device import resolve_device
from ._hotet import HOTET
from ._wfm import WassersteinFlowMatching
from ._wfm_gaussian import GaussianFlowMatching
from ._wormhole import Wormhole

__all__ = [
    "ASOT",
    "GaussianFlowMatching",
    "HOTET",
    "Model",
    "SetTransformer",
    "WassersteinFlowMatching",
    "Wormhole",
    "resolve_device",
    "weighted_mean",
]
