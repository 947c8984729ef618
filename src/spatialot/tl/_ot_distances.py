"""``sot.tl.ot_distances``: true OT distances between chosen niches."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from anndata import AnnData

from .._anndata import cell_positions
from .._docs import inject_docs
from ..get import niche_clouds
from ..models._device import resolve_device
from ..ot import paired_distances, pairwise_distances

_METHODS = ("exact", "sinkhorn", "sinkhorn_divergence")


@inject_docs
def ot_distances(
    adata: AnnData,
    cells: Sequence[int | str] | np.ndarray,
    other: Sequence[int | str] | np.ndarray | None = None,
    *,
    niche_key: str = "niche",
    paired: bool = False,
    method: Literal["exact", "sinkhorn", "sinkhorn_divergence"] = "exact",
    epsilon: float = 1e-2,
    device: str = "auto",
    progress: bool = True,
) -> np.ndarray:
    r"""Squared 2-Wasserstein distances between the niches of chosen cells.

    The ground truth that the embeddings of :func:`spatialot.tl.wormhole` and others
    approximate, for checking them (see :func:`spatialot.pl.distance_fidelity`) or wherever
    true distances are needed. Nothing is written to ``adata``.

    Parameters
    ----------
    {adata_niches}
    cells
        Cells whose niches are compared: ``obs_names``, integer positions or a boolean mask.
    other
        Second set of cells. ``None`` compares ``cells`` with themselves.
    {niche_key}
    paired
        Compare ``cells[i]`` with ``other[i]`` only (both of the same length) instead of every
        cell with every other.
    method
        ``'exact'`` (POT's network simplex, CPU), ``'sinkhorn'`` (transport cost of the
        entropic plan) or ``'sinkhorn_divergence'`` (debiased); see
        :func:`spatialot.ot.paired_distances`.
    epsilon
        Entropic regularisation of the Sinkhorn methods, in squared units of the niche features.
    device
        Device of the Sinkhorn methods: ``'auto'`` (CUDA when present), ``'cpu'`` or ``'cuda'``.
    {progress}

    Returns
    -------
    :math:`W_2^2` (or its entropic estimate) as a float64 array: of shape ``(len(cells),)``
    when ``paired``, else ``(len(cells), len(other))`` (``other = cells`` when ``None``).

    Examples
    --------
    >>> import spatialot as sot
    >>> adata = sot.datasets.bdtnp()
    >>> sot.pp.niches(adata, k=8)
    >>> sot.tl.ot_distances(adata, [0, 1, 2]).shape
    (3, 3)
    >>> sot.tl.ot_distances(adata, [0, 1], [2, 3], paired=True).shape
    (2,)
    """
    if method not in _METHODS:
        raise ValueError(f"`method` must be one of {_METHODS}, got {method!r}.")
    family = niche_clouds(adata, niche_key=niche_key)
    rows = cell_positions(adata, cells, "cells")
    cols = None if other is None else cell_positions(adata, other, "other")
    options = {"method": method, "epsilon": epsilon, "device": resolve_device(device), "progress": progress}
    if paired:
        if cols is None or len(cols) != len(rows):
            raise ValueError("`paired=True` needs `other` with as many cells as `cells`.")
        return paired_distances(family[rows], family[cols], **options)
    return pairwise_distances(family[rows], None if cols is None else family[cols], **options)
