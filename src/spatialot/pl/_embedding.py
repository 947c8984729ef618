"""``sot.pl.embedding``: a niche embedding in two dimensions, coloured like scanpy."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import matplotlib.pyplot as plt
import numpy as np
import scanpy as sc
from anndata import AnnData
from matplotlib.axes import Axes

from .._keys import ResultKeys
from ._utils import finish


def _embedding(adata: AnnData, basis: str) -> np.ndarray:
    key = ResultKeys(basis.removeprefix("X_"), argument="basis").obsm
    if key not in adata.obsm:
        tool = basis.removeprefix("X_")
        raise KeyError(f"`basis`={basis!r}: no `adata.obsm[{key!r}]`; run e.g. `sot.tl.{tool}` first.")
    return np.asarray(adata.obsm[key], dtype=float)


def embedding(
    adata: AnnData,
    *,
    basis: str = "wormhole",
    color: str | None = None,
    projection: Literal["pca", "none"] = "pca",
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
    **kwargs,
) -> Axes | None:
    """Plot a niche embedding in two dimensions, coloured like :func:`scanpy.pl.embedding`.

    Parameters
    ----------
    adata
        Annotated data matrix with ``.obsm['X_<basis>']``.
    basis
        Embedding to show, e.g. ``'wormhole'`` (from :func:`spatialot.tl.wormhole`).
    color
        A column of ``.obs`` or a gene, as in scanpy.
    projection
        ``'pca'``: the first two principal components of the embedding, the linear view that
        keeps its Euclidean (≈ Wasserstein) geometry best; ``'none'``: its first two coordinates.
    ax
        Axes to draw into; a new figure when ``None``.
    show
        Show the figure; by default follows ``scanpy.settings.autoshow``.
    save
        File to save the figure to.
    **kwargs
        Passed to :func:`scanpy.pl.embedding` (e.g. ``palette``, ``size``, ``legend_loc``).

    Returns
    -------
    The Axes, unless the figure was shown.

    Examples
    --------
    >>> import spatialot as sot
    >>> adata = sot.datasets.bdtnp()
    >>> sot.pp.niches(adata, k=8)
    >>> sot.tl.wormhole(adata, n_steps=500)  # doctest: +SKIP
    >>> sot.pl.embedding(adata, basis="wormhole", color=["eve", "ftz"])  # doctest: +SKIP
    """
    if projection not in ("pca", "none"):
        raise ValueError(f"`projection` must be 'pca' or 'none', got {projection!r}.")
    if color is not None and not isinstance(color, str):
        raise ValueError("`color` must be one key (a column of `.obs` or a gene).")
    coordinates = _embedding(adata, basis)
    if coordinates.shape[1] < 2:
        raise ValueError(f"`basis`={basis!r} has {coordinates.shape[1]} dimension; a plot needs 2.")
    if projection == "pca":
        centred = coordinates - coordinates.mean(0)
        _, _, components = np.linalg.svd(centred, full_matrices=False)
        coordinates = centred @ components[:2].T
    # a light AnnData sharing the user's arrays lets scanpy do the colouring without touching `adata`
    view = AnnData(X=adata.X, obs=adata.obs, var=adata.var, uns=dict(adata.uns), obsm={"X_view": coordinates[:, :2]})
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 5))
    sc.pl.embedding(view, basis="X_view", color=color, ax=ax, show=False, **kwargs)
    label = f"{basis} PC" if projection == "pca" else f"{basis} "
    ax.set_xlabel(f"{label}1")
    ax.set_ylabel(f"{label}2")
    return finish(ax, show=show, save=save)
