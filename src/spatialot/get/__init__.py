"""Getters: pull what spatialot computed out of an AnnData, like :mod:`scanpy.get`."""

from ._niches import niche_clouds

__all__ = ["niche_clouds"]
