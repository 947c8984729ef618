"""Plots that read what :mod:`spatialot.pp` and :mod:`spatialot.tl` wrote."""

from ._niches import niches

__all__ = ["niches"]
