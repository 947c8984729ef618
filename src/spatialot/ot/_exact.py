"""Exact (unregularised) OT between weighted point clouds, solved by POT's network simplex."""

from __future__ import annotations

import numpy as np
import ot as pot

from .._settings import progress_bar
from ._clouds import PointClouds


def exact_w2_squared(
    x: PointClouds,
    y: PointClouds,
    *,
    max_iter: int = 1_000_000,
    progress: bool = False,
) -> np.ndarray:
    r"""Exact squared 2-Wasserstein distance between paired clouds.

    Solves, for every ``b``, the linear program
    :math:`W_2^2(x_b, y_b) = \min_{P \in U(a, b)} \sum_{ij} P_{ij} \lVert x_i - y_j \rVert^2`
    with POT's network simplex (:func:`ot.emd2`), in float64.

    Parameters
    ----------
    x, y
        Batches of the same length; cloud ``b`` of ``x`` is compared with cloud ``b`` of ``y``.
    max_iter
        Iteration limit of the network simplex.
    progress
        Show a progress bar.

    Returns
    -------
    Array of shape ``(batch,)`` holding :math:`W_2^2` (the squared distance, not :math:`W_2`).

    Examples
    --------
    >>> import numpy as np
    >>> from spatialot.ot import PointClouds
    >>> x = PointClouds.from_list([np.zeros((3, 2))])
    >>> y = PointClouds.from_list([np.ones((3, 2))])
    >>> exact_w2_squared(x, y)
    array([2.])
    """
    if len(x) != len(y):
        raise ValueError(f"`x` and `y` must hold the same number of clouds, got {len(x)} and {len(y)}.")
    if x.dim != y.dim:
        raise ValueError(f"`x` and `y` must have the same point dimension, got {x.dim} and {y.dim}.")
    values = np.empty(len(x), dtype=np.float64)
    for b in progress_bar(range(len(x)), description="exact OT", requested=progress):
        x_points, x_weights = (arr.astype(np.float64) for arr in x.cloud(b))
        y_points, y_weights = (arr.astype(np.float64) for arr in y.cloud(b))
        cost = pot.dist(x_points, y_points, metric="sqeuclidean")
        # the weights were normalised in float32; renormalise so the simplex sees equal masses
        values[b] = pot.emd2(x_weights / x_weights.sum(), y_weights / y_weights.sum(), cost, numItermax=max_iter)
    return values
