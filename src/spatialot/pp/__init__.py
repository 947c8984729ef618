"""Preprocessing: niches from spatial coordinates."""

from ._niches import niches

__all__ = ["niches"]
