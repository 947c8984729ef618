"""``sot.pl.asot``: the anchors of :func:`spatialot.tl.asot` and the weights of chosen niches on them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from anndata import AnnData
from matplotlib.axes import Axes

from .._keys import ResultKeys
from ._utils import chosen_cells, finish


def asot(
    adata: AnnData,
    cells: Sequence[int | str] | None = None,
    *,
    key: str = "asot",
    n_random: int = 3,
    random_state: int = 0,
    size: float = 400.0,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
) -> Axes | None:
    """Show the anchors in their first two principal components, sized by the weights of chosen niches.

    Every anchor is a grey ring; each chosen niche puts a disc of its colour on every anchor
    it weighs, with area proportional to the weight, so the plot shows where on the anchor
    simplex the niches sit and how much they overlap.

    Parameters
    ----------
    adata
        Annotated data matrix on which :func:`spatialot.tl.asot` ran.
    cells
        Cells whose niches to show, as positions or ``obs_names``. Default: ``n_random`` random cells.
    key
        The ``key_added`` of :func:`spatialot.tl.asot`.
    n_random
        Number of random cells when ``cells`` is ``None``.
    random_state
        Seed of the random choice of cells.
    size
        Marker area of a weight of 1.
    ax
        Axes to draw into; a new figure when ``None``.
    show
        Show the figure; by default as :data:`scanpy.settings.autoshow`, unless saving.
    save
        Path to save the figure to.

    Returns
    -------
    The Axes, unless the figure was shown.

    Examples
    --------
    >>> import spatialot as sot
    >>> adata = sot.datasets.bdtnp()
    >>> sot.pp.niches(adata, k=8)
    >>> sot.tl.asot(adata, n_anchors=32)  # doctest: +SKIP
    >>> sot.pl.asot(adata, cells=["cell10", "cell200"])  # doctest: +SKIP
    """
    keys = ResultKeys(key, argument="key")
    if keys.uns not in adata.uns or keys.obsm not in adata.obsm or "anchors" not in adata.uns[keys.uns]:
        raise KeyError(f"No ASOT result under `key`={key!r}: run `sot.tl.asot(adata, key_added={key!r})` first.")
    anchors = np.asarray(adata.uns[keys.uns]["anchors"], dtype=np.float64)
    weights = np.asarray(adata.obsm[keys.obsm])
    positions = chosen_cells(adata, cells, n_random, random_state)

    centred = anchors - anchors.mean(0)
    _, singular, components = np.linalg.svd(centred, full_matrices=False)
    coords = centred @ components[:2].T
    if coords.shape[1] < 2:
        coords = np.column_stack([coords, np.zeros(len(coords))])
    explained = singular**2 / max(float((singular**2).sum()), 1e-300)

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 6))
    ax.scatter(*coords[:, :2].T, s=30, facecolors="none", edgecolors="grey", linewidths=0.8, label="anchors")
    palette = plt.get_cmap("tab10")
    for number, cell in enumerate(positions):
        on = weights[cell] > 0
        ax.scatter(
            *coords[on, :2].T,
            s=size * weights[cell, on],
            color=palette(number % 10),
            alpha=0.6,
            edgecolors="black",
            linewidths=0.3,
            label=f"niche of {adata.obs_names[cell]}",
        )
    ax.set_xlabel(f"anchor PC1 ({explained[0]:.0%})")
    ax.set_ylabel(f"anchor PC2 ({explained[1] if len(explained) > 1 else 0:.0%})")
    ax.set_title(f"{len(anchors)} anchors, weights of {len(positions)} niches")
    ax.legend(loc="best", fontsize="small", markerscale=0.5)
    return finish(ax, show=show, save=save)
