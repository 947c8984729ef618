"""Optimal-transport geometry over spatial niches of single-cell data."""

from importlib.metadata import PackageNotFoundError, version

from . import datasets, get, models, ot, pl, pp, tl
from ._settings import settings

try:
    __version__ = version("spatialot")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"

__all__ = ["datasets", "get", "models", "ot", "pl", "pp", "settings", "tl", "__version__"]
