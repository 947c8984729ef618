"""``sot.pl.embedding`` and ``sot.pl.distance_fidelity``: a niche embedding and how faithful it is to OT."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import matplotlib.pyplot as plt
import numpy as np
import scanpy as sc
import scipy.stats
from anndata import AnnData
from matplotlib.axes import Axes

from .._keys import ResultKeys
from .._validation import check_int
from ..tl import ot_distances
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


def distance_fidelity(
    adata: AnnData,
    *,
    basis: str = "wormhole",
    niche_key: str = "niche",
    n_pairs: int = 500,
    method: Literal["exact", "sinkhorn", "sinkhorn_divergence"] = "exact",
    random_state: int = 0,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
) -> Axes | None:
    r"""Scatter squared embedding distance against the true :math:`W_2^2` on random niche pairs.

    A faithful embedding puts the points on the diagonal; the title gives the Pearson and
    Spearman correlations. The true distances are computed with
    :func:`spatialot.tl.ot_distances`.

    Parameters
    ----------
    adata
        Annotated data matrix with ``.obsm['X_<basis>']`` and the niches under ``niche_key``.
    basis
        Embedding to check, e.g. ``'wormhole'``.
    niche_key
        The ``key_added`` of :func:`spatialot.pp.niches`.
    n_pairs
        Number of random pairs of distinct cells.
    method
        How the true distances are computed (see :func:`spatialot.tl.ot_distances`).
    random_state
        Seed of the choice of pairs.
    ax, show, save
        As in :func:`embedding`.

    Returns
    -------
    The Axes, unless the figure was shown.

    Examples
    --------
    >>> import spatialot as sot
    >>> adata = sot.datasets.bdtnp()
    >>> sot.pp.niches(adata, k=8)
    >>> sot.tl.asot(adata, n_anchors=32)  # doctest: +SKIP
    >>> sot.pl.distance_fidelity(adata, basis="asot", n_pairs=300)  # doctest: +SKIP
    """
    coordinates = _embedding(adata, basis)
    if adata.n_obs < 2:
        raise ValueError("`adata` needs at least 2 cells to form pairs.")
    n_pairs = check_int("n_pairs", n_pairs, minimum=2)
    rng = np.random.default_rng(random_state)
    first = rng.integers(adata.n_obs, size=n_pairs)
    second = (first + rng.integers(1, adata.n_obs, size=n_pairs)) % adata.n_obs  # never the same cell
    true = ot_distances(adata, first, second, niche_key=niche_key, paired=True, method=method, progress=False)
    predicted = ((coordinates[first] - coordinates[second]) ** 2).sum(1)
    pearson = scipy.stats.pearsonr(predicted, true)[0]
    spearman = scipy.stats.spearmanr(predicted, true)[0]
    if ax is None:
        _, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(true, predicted, s=6, alpha=0.5, color="tab:blue", linewidths=0)
    limit = max(true.max(), predicted.max())
    ax.plot([0, limit], [0, limit], color="grey", lw=1, ls="--")
    ax.set_xlabel(f"{method} $W_2^2$ between niches")
    ax.set_ylabel(f"squared distance in X_{basis.removeprefix('X_')}")
    ax.set_title(f"Pearson {pearson:.3f}, Spearman {spearman:.3f} ({n_pairs} pairs)")
    return finish(ax, show=show, save=save)
