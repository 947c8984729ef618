"""``sot.pl.embedding``: a niche embedding in two dimensions, coloured like scanpy."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import matplotlib.pyplot as plt
import numpy as np
import scanpy as sc
from anndata import AnnData
from matplotlib.axes import Axes

from .._keys import ResultKeys
from ._utils import finish, label_colorbars, panel_grid


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
    color: str | Sequence[str] | None = None,
    projection: Literal["pca", "none"] = "pca",
    ncols: int = 4,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
    **kwargs,
) -> Axes | list[Axes] | None:
    """Plot a niche embedding in two dimensions, coloured like :func:`scanpy.pl.embedding`.

    Parameters
    ----------
    adata
        Annotated data matrix with ``.obsm['X_<basis>']``.
    basis
        Embedding to show, e.g. ``'wormhole'`` (from :func:`spatialot.tl.wormhole`).
    color
        A column of ``.obs`` or a gene, or a list of them: one panel each, in a grid, as in
        scanpy. Categories take scanpy's colours (``.uns[f'{color}_colors']``); colour bars are
        labelled with their key.
    projection
        ``'pca'``: the first two principal components of the embedding, the linear view that
        keeps its Euclidean (≈ Wasserstein) geometry best; ``'none'``: its first two coordinates.
    ncols
        Panels per row of the grid when ``color`` is a list.
    ax
        Axes to draw into (one colour only); a new figure when ``None``.
    show
        Show the figure; by default follows ``scanpy.settings.autoshow``.
    save
        File to save the figure to.
    **kwargs
        Passed to :func:`scanpy.pl.embedding` (e.g. ``palette``, ``size``, ``legend_loc``).

    Returns
    -------
    The Axes (a list of them, one per colour, when ``color`` is a list), unless the figure was
    shown.

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
    colors = [color] if color is None or isinstance(color, str) else list(color)
    if not colors or not all(key is None or isinstance(key, str) for key in colors):
        raise ValueError(f"`color` must be a key (a column of `.obs` or a gene) or a list of keys, got {color!r}.")
    if ax is not None and len(colors) > 1:
        raise ValueError(f"`ax` holds one panel, but `color` asks for {len(colors)}: leave `ax` out to get a grid.")
    coordinates = _embedding(adata, basis)
    if coordinates.shape[1] < 2:
        raise ValueError(f"`basis`={basis!r} has {coordinates.shape[1]} dimension; a plot needs 2.")
    if projection == "pca":
        centred = coordinates - coordinates.mean(0)
        _, _, components = np.linalg.svd(centred, full_matrices=False)
        coordinates = centred @ components[:2].T
    # a light AnnData sharing the user's arrays lets scanpy do the colouring without touching `adata`
    view = AnnData(X=adata.X, obs=adata.obs, var=adata.var, uns=dict(adata.uns), obsm={"X_view": coordinates[:, :2]})
    if ax is not None:
        panels = [ax]
    elif len(colors) == 1:
        panels = [plt.subplots(figsize=(5, 5), layout="constrained")[1]]
    else:
        panels = list(panel_grid(len(colors), ncols=ncols, panel_size=(4.5, 4.0))[0])
    label = f"{basis} PC" if projection == "pca" else f"{basis} "
    for panel, key in zip(panels, colors, strict=True):
        sc.pl.embedding(view, basis="X_view", color=key, ax=panel, show=False, **kwargs)
        panel.set_xlabel(f"{label}1")
        panel.set_ylabel(f"{label}2")
        if key is not None:
            label_colorbars(panel, key)
    shown = finish(panels[0], show=show, save=save)
    if shown is None:
        return None
    return panels[0] if len(panels) == 1 else panels
