"""``sot.get.niche_clouds``: the niches of an AnnData as a lazily gathered family of clouds.

This is the one reader of what :func:`spatialot.pp.niches` stores; every tool and plot reads
niches through it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._anndata import get_features
from .._keys import NicheKeys
from ..ot import IndexedClouds
from ..pp._build import PAD

_ROW_CHUNK = 1 << 16
"""Rows unpacked at a time by the general path, so that its temporary arrays stay small."""


def niche_clouds(adata: AnnData, *, niche_key: str = "niche") -> IndexedClouds:
    """The niches of every cell as point clouds, gathered on demand.

    Parameters
    ----------
    adata
        Annotated data matrix on which :func:`spatialot.pp.niches` ran, or a subset, reordering
        or (``pairwise=True``) concatenation of such matrices.
    niche_key
        The ``key_added`` of that call.

    Returns
    -------
    :class:`~spatialot.ot.IndexedClouds` over the features the niches were built on (as
    recorded in ``.uns[niche_key]['params']``). Index it with cell positions, a boolean mask or
    a slice to get a padded :class:`~spatialot.ot.PointClouds` batch (points, mask, uniform
    weights); its ``gather`` method also takes a device and dtype.

    Raises
    ------
    KeyError
        If there are no niches under ``niche_key``.
    ValueError
        If cells of ``adata`` lost members of their niche, as when it was subset after
        :func:`spatialot.pp.niches`: the message names a cell and says to build the niches again.

    Examples
    --------
    >>> import spatialot as sot
    >>> adata = sot.datasets.bdtnp()
    >>> sot.pp.niches(adata, k=8)
    >>> batch = sot.get.niche_clouds(adata)[[0, 5, 9]]
    >>> batch.points.shape
    torch.Size([3, 8, 84])
    """
    keys = NicheKeys(niche_key, argument="niche_key")
    if keys.uns not in adata.uns or keys.members not in adata.obsp or keys.size not in adata.obs:
        raise KeyError(
            f"No niches under `niche_key`={niche_key!r}: run `sot.pp.niches(adata, key_added={niche_key!r})` "
            "(after `anndata.concat`, pass `pairwise=True` to keep them)."
        )
    params = adata.uns[keys.uns]["params"]
    sizes = adata.obs[keys.size].to_numpy()
    if not np.issubdtype(sizes.dtype, np.integer):  # NaN: cells concatenated from an AnnData without these niches
        cells = np.flatnonzero(pd.isna(sizes))
        if len(cells):
            raise ValueError(
                f"{len(cells)} cells have no niche under {niche_key!r}, e.g. {adata.obs_names[cells[0]]!r}: "
                f"run `sot.pp.niches(adata, key_added={niche_key!r})` again on this AnnData."
            )
        sizes = sizes.astype(np.int64)
    indices, mask, complete = padded_members(adata.obsp[keys.members], sizes)
    if not complete.all():
        cell = np.flatnonzero(~complete)
        remaining = int((indices[cell[0]] != PAD).sum())
        raise ValueError(
            f"{len(cell)} cells no longer have their whole niche under {niche_key!r}, e.g. "
            f"{adata.obs_names[cell[0]]!r} ({remaining} of its {sizes[cell[0]]} members remain, each once): `adata` "
            "was subset, or had cells repeated, after `sot.pp.niches`, and these niches reached cells left out. "
            f"Run `sot.pp.niches(adata, key_added={niche_key!r})` again on this AnnData."
        )
    features = get_features(adata, use_rep=params.get("use_rep"), layer=params.get("layer"))
    return IndexedClouds(features, indices, mask)


def padded_members(matrix: sp.spmatrix, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """The member matrix of :func:`~spatialot.pp._build.member_matrix` back as padded index rows.

    Parameters
    ----------
    matrix
        Sparse ``(n_obs, n_obs)`` matrix of member ranks, possibly subset or reordered since.
    sizes
        The number of members every niche had when built.

    Returns
    -------
    ``(indices, mask, complete)``: integer array ``(n_obs, max_size)`` of member positions in
    rank order, padded with ``-1``; the boolean mask of real slots (``None`` when every niche is
    full); and whether each niche still has all its members, each once.
    """
    matrix = sp.csr_matrix(matrix)
    n_obs = matrix.shape[0]
    counts = np.diff(matrix.indptr)
    width = int(sizes.max(initial=0))
    # fast path: every niche full and its members stored in rank order, as pp.niches writes
    # them and as row or column subsets keep them; the index is then a view of the matrix
    if n_obs and (counts == width).all() and (sizes == width).all():
        ranks = matrix.data.reshape(n_obs, width)
        if (ranks == np.arange(1, width + 1, dtype=ranks.dtype)).all():  # same dtype: no upcast copy
            indices = matrix.indices.reshape(n_obs, width)
            indices.flags.writeable = False  # a view of what AnnData stores: reading must not change it
            return indices, None, np.ones(n_obs, dtype=bool)
    indices = np.full((n_obs, width), PAD, dtype=matrix.indices.dtype)
    for start in range(0, n_obs, _ROW_CHUNK):
        stop = min(start + _ROW_CHUNK, n_obs)
        entries = slice(matrix.indptr[start], matrix.indptr[stop])
        rows = np.repeat(np.arange(start, stop), counts[start:stop])
        ranks = matrix.data[entries].astype(np.intp)
        keep = (ranks >= 1) & (ranks <= sizes[rows])
        indices[rows[keep], ranks[keep] - 1] = matrix.indices[entries][keep]
    mask = indices != PAD
    # every rank kept lies in 1..size, so a niche is complete when it has `size` entries filling
    # `size` distinct slots: a lost member leaves a slot empty, a duplicated cell fills one twice
    filled = mask.sum(axis=1)
    complete = (counts == sizes) & (filled == sizes)
    return indices, (None if mask.all() else mask), complete
