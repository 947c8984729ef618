"""``sot.pl.niches``: where chosen niches sit in the tissue."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection

from .._anndata import get_coordinates
from ..get import niche_clouds
from ._utils import chosen_cells, finish


def niches(
    adata: AnnData,
    cells: Sequence[int | str] | None = None,
    *,
    niche_key: str = "niche",
    color: str | None = None,
    n_random: int = 4,
    dims: tuple[int, int] = (0, 1),
    point_size: float | None = None,
    random_state: int = 0,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
) -> Axes | None:
    """Show the tissue and the niches of chosen cells, each centre joined to its niche.

    Parameters
    ----------
    adata
        Annotated data matrix on which :func:`spatialot.pp.niches` ran.
    cells
        Centre cells to show, as positions or ``obs_names``. Default: ``n_random`` random cells.
    niche_key
        The ``key_added`` of :func:`spatialot.pp.niches`.
    color
        Column of ``.obs`` (categorical or numeric) or gene of ``.var_names`` (read from
        ``.X``) colouring the background cells.
    n_random
        Number of random cells when ``cells`` is ``None``.
    dims
        Which two spatial dimensions to draw (3-D data is projected).
    point_size
        Marker size of the background cells; chosen from the number of cells when ``None``.
    random_state
        Seed of the random choice of cells.
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
    >>> adata = sot.datasets.simulated_tissue()
    >>> sot.pp.niches(adata, k=8)
    >>> sot.pl.niches(adata, cells=[0, 10], color="cell_type")  # doctest: +SKIP
    """
    family = niche_clouds(adata, niche_key=niche_key)
    coordinates = get_coordinates(adata, adata.uns[niche_key]["params"]["spatial_key"])
    if max(dims) >= coordinates.shape[1]:
        raise ValueError(f"`dims`={dims} asks for a dimension the {coordinates.shape[1]}-D coordinates lack.")
    coordinates = coordinates[:, list(dims)]
    positions = chosen_cells(adata, cells, n_random, random_state)

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 6))
    size = point_size if point_size is not None else max(0.5, min(20.0, 20_000 / adata.n_obs))
    background = {"c": "lightgrey"}
    if color is not None:
        background = _background_colors(adata, color)
    ax.scatter(*coordinates.T, s=size, linewidths=0, alpha=0.6, **background)
    palette = plt.get_cmap("tab10")
    for number, center in enumerate(positions):
        members = family.indices[center][family.mask[center]]
        tint = palette(number % 10)
        segments = np.stack([np.broadcast_to(coordinates[center], (len(members), 2)), coordinates[members]], axis=1)
        ax.add_collection(LineCollection(segments, colors=[tint], linewidths=0.8))
        ax.scatter(*coordinates[members].T, s=4 * size + 8, color=tint, edgecolors="black", linewidths=0.3)
        ax.scatter(*coordinates[center], s=12 * size + 30, color=tint, marker="*", edgecolors="black", linewidths=0.5)
    ax.set_aspect("equal")
    ax.set_xlabel(f"spatial {dims[0] + 1}")
    ax.set_ylabel(f"spatial {dims[1] + 1}")
    ax.set_title(f"{len(positions)} niches" + (f" on {color}" if color else ""))
    return finish(ax, show=show, save=save)


def _background_colors(adata: AnnData, color: str) -> dict:
    if color in adata.obs:
        values = adata.obs[color]
        if hasattr(values, "cat"):
            return {"c": values.cat.codes.to_numpy(), "cmap": "tab20"}
        return {"c": values.to_numpy(), "cmap": "viridis"}
    if color in adata.var_names:
        column = adata[:, color].X
        column = column.toarray() if hasattr(column, "toarray") else np.asarray(column)
        return {"c": column.ravel(), "cmap": "viridis"}
    raise KeyError(f"`color`={color!r} is neither a column of `adata.obs` nor a gene of `adata.var_names`.")
