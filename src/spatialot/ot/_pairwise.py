"""OT distances for paired clouds and full pairwise matrices, by any solver of this package."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from .._settings import cpu_threads, progress_bar
from ._clouds import PointClouds
from ._exact import exact_w2_squared
from ._sinkhorn import sinkhorn, sinkhorn_divergence

Method = Literal["exact", "sinkhorn", "sinkhorn_divergence"]
METHODS: tuple[str, ...] = ("exact", "sinkhorn", "sinkhorn_divergence")
CPU_BATCH_ENTRIES = 2**20
"""Entries of the cost tensor of one Sinkhorn batch on CPU when ``batch_size`` is not given."""
GPU_BATCH_ENTRIES = 2**26
"""Entries of the cost tensor of one Sinkhorn batch on a GPU when ``batch_size`` is not given."""


@cpu_threads()
def paired_distances(
    x: PointClouds,
    y: PointClouds,
    *,
    method: Method = "exact",
    epsilon: float = 1e-2,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
    **sinkhorn_kwargs,
) -> np.ndarray:
    r"""OT distance between ``x[b]`` and ``y[b]`` for every ``b``.

    Parameters
    ----------
    x, y
        Batches of the same length and point dimension.
    method
        ``'exact'``: :math:`W_2^2` by POT's network simplex (CPU, one pair at a time).
        ``'sinkhorn'``: the transport cost :math:`\langle P, C\rangle` of the entropic plan, an
        estimate of :math:`W_2^2` biased upwards by ``epsilon``. ``'sinkhorn_divergence'``: the
        debiased :math:`S_\varepsilon`, zero between equal clouds. All three are in squared
        units (:math:`W_2^2`, not :math:`W_2`).
    epsilon
        Entropic regularisation of the Sinkhorn methods, in squared-distance units.
    batch_size
        Number of pairs solved together by the Sinkhorn methods. By default as many as keep a
        cost tensor within :data:`CPU_BATCH_ENTRIES` entries on CPU (larger batches fall out of
        the caches and get slower per pair) or :data:`GPU_BATCH_ENTRIES` on a GPU.
    device
        Device of the Sinkhorn methods; that of ``x`` when ``None``.
    progress
        Show a progress bar.
    **sinkhorn_kwargs
        Passed to :func:`~spatialot.ot.sinkhorn`.

    Returns
    -------
    Float64 array of shape ``(batch,)``.

    Examples
    --------
    >>> import numpy as np
    >>> from spatialot.ot import PointClouds
    >>> x = PointClouds.from_list([np.zeros((3, 2)), np.zeros((4, 2))])
    >>> y = PointClouds.from_list([np.ones((3, 2)), np.zeros((2, 2))])
    >>> paired_distances(x, y)
    array([2., 0.])
    """
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}, got {method!r}.")
    if len(x) != len(y):
        raise ValueError(f"`x` and `y` must hold the same number of clouds, got {len(x)} and {len(y)}.")
    if method == "exact":
        return exact_w2_squared(x, y, progress=progress)
    values = np.empty(len(x), dtype=np.float64)
    if batch_size is None:
        on_gpu = torch.device(device or x.device).type != "cpu"
        entries = GPU_BATCH_ENTRIES if on_gpu else CPU_BATCH_ENTRIES
        batch_size = max(1, entries // (x.max_size * y.max_size))
    starts = range(0, len(x), batch_size)
    for start in progress_bar(starts, description=f"{method} OT", requested=progress):
        chunk = slice(start, start + batch_size)
        x_chunk, y_chunk = x[chunk].to(device), y[chunk].to(device)
        with torch.no_grad():
            if method == "sinkhorn":
                value = sinkhorn(x_chunk, y_chunk, epsilon=epsilon, **sinkhorn_kwargs).cost
            else:
                value = sinkhorn_divergence(x_chunk, y_chunk, epsilon=epsilon, **sinkhorn_kwargs)
        values[chunk] = value.double().cpu().numpy()
    return values


@cpu_threads()
def pairwise_distances(
    clouds: PointClouds,
    other: PointClouds | None = None,
    *,
    method: Method = "exact",
    epsilon: float = 1e-2,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
    **sinkhorn_kwargs,
) -> np.ndarray:
    r"""Matrix of OT distances between every cloud of ``clouds`` and every cloud of ``other``.

    Parameters
    ----------
    clouds
        ``n`` clouds.
    other
        ``m`` clouds; ``clouds`` itself when ``None``, in which case only the upper triangle is
        solved and mirrored, and the diagonal is zero for ``'exact'`` and
        ``'sinkhorn_divergence'``.
    method, epsilon, batch_size, device, progress, **sinkhorn_kwargs
        As in :func:`paired_distances`.

    Returns
    -------
    Float64 array of shape ``(n, m)`` in squared units (:math:`W_2^2` or its estimate).

    Examples
    --------
    >>> import numpy as np
    >>> from spatialot.ot import PointClouds
    >>> clouds = PointClouds.from_list([np.zeros((3, 2)), np.ones((4, 2))])
    >>> pairwise_distances(clouds)
    array([[0., 2.],
           [2., 0.]])
    """
    symmetric = other is None
    other = clouds if symmetric else other
    if symmetric:
        # OT_eps's transport cost of a cloud with itself is not zero, so it is solved too
        rows, cols = np.triu_indices(len(clouds), k=0 if method == "sinkhorn" else 1)
    else:
        rows, cols = (a.ravel() for a in np.meshgrid(np.arange(len(clouds)), np.arange(len(other)), indexing="ij"))
    values = paired_distances(
        clouds[rows],
        other[cols],
        method=method,
        epsilon=epsilon,
        batch_size=batch_size,
        device=device,
        progress=progress,
        **sinkhorn_kwargs,
    )
    matrix = np.zeros((len(clouds), len(other)), dtype=np.float64)
    matrix[rows, cols] = values
    if symmetric:
        matrix[cols, rows] = values
    return matrix
