"""Optimal-transport math on point clouds (no AnnData).

Every cost here uses the squared-Euclidean ground cost, and every value returned is a
**squared** 2-Wasserstein distance :math:`W_2^2` (or an entropic estimate of it): take the square
root for :math:`W_2`.
"""

from ._anchor import (
    anchor_cost,
    anchor_exact,
    anchor_kneighbors,
    anchor_paired_distances,
    anchor_pairwise_distances,
    anchor_sinkhorn,
)
from ._clouds import IndexedClouds, PointClouds
from ._exact import exact_w2_squared
from ._gaussian import bures_geodesic, bures_wasserstein_squared, gaussian_map, gaussian_moments, sqrtm_psd
from ._pairing import chamfer_costs, minibatch_pairing, rounded_assignment
from ._pairwise import paired_distances, pairwise_distances
from ._sinkhorn import SinkhornOutput, sinkhorn, sinkhorn_divergence, squared_euclidean_cost

__all__ = [
    "anchor_cost",
    "anchor_exact",
    "anchor_kneighbors",
    "anchor_paired_distances",
    "anchor_pairwise_distances",
    "anchor_sinkhorn",
    "IndexedClouds",
    "PointClouds",
    "SinkhornOutput",
    "bures_geodesic",
    "bures_wasserstein_squared",
    "chamfer_costs",
    "exact_w2_squared",
    "gaussian_map",
    "gaussian_moments",
    "minibatch_pairing",
    "rounded_assignment",
    "paired_distances",
    "pairwise_distances",
    "sinkhorn",
    "sinkhorn_divergence",
    "sqrtm_psd",
    "squared_euclidean_cost",
]
