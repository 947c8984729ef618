"""``sot.pl.niches``: where chosen niches sit in the tissue."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection

from .._anndata import get_coordinates
from .._docs import inject_docs
from ..get import niche_clouds
from ._utils import category_colors, chosen_cells, finish


@inject_docs
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
    {adata_niches}
    cells
        Centre cells to show, as positions or ``obs_names``. Default: ``n_random`` random cells.
    {niche_key}
    color
        Column of ``.obs`` (categorical or numeric) or gene of ``.var_names`` (read from
        ``.X``) colouring the cells of the tissue. Categories take the colours scanpy gives
        them (``.uns[f'{color}_colors']``, else scanpy's default palette) and get a legend;
        numbers get a labelled colour bar. The niches are then drawn in black over the
        tissue, their members in their own colours.
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
    background = _background(adata, color)
    drawn = ax.scatter(*coordinates.T, s=size, linewidths=0, alpha=0.6, c=background.colors, cmap=background.cmap)
    if background.categories:
        for name, tint in background.categories.items():
            ax.scatter([], [], s=30, color=tint, label=name)
        ax.legend(title=color, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False, fontsize="small")
    elif background.cmap is not None:
        ax.get_figure().colorbar(drawn, ax=ax, shrink=0.7, label=color)
    # on a coloured tissue, niches are drawn in black and their members keep the tissue's colour
    # (so a niche shows its composition); on a grey one, each niche has a colour of its own
    palette = plt.get_cmap("tab10")
    for number, center in enumerate(positions):
        members = family.indices[center][family.mask[center]]
        tint = palette(number % 10) if color is None else "black"
        member_colors = [tint] * len(members) if color is None else _member_colors(drawn, members)
        segments = np.stack([np.broadcast_to(coordinates[center], (len(members), 2)), coordinates[members]], axis=1)
        ax.add_collection(LineCollection(segments, colors=[tint], linewidths=0.8))
        ax.scatter(*coordinates[members].T, s=4 * size + 8, c=member_colors, edgecolors="black", linewidths=0.5)
        ax.scatter(*coordinates[center], s=12 * size + 30, color=tint, marker="*", edgecolors="white", linewidths=0.5)
    ax.set_aspect("equal")
    ax.set_xlabel(f"spatial {dims[0] + 1}")
    ax.set_ylabel(f"spatial {dims[1] + 1}")
    ax.set_title(f"{len(positions)} niches" + (f" on {color}" if color else ""))
    return finish(ax, show=show, save=save)


@dataclass
class _Background:
    """Colours of the tissue's cells: one per cell, a colour map for numbers, the legend of categories."""

    colors: np.ndarray | str
    cmap: str | None = None
    categories: dict[str, str] = field(default_factory=dict)


def _background(adata: AnnData, color: str | None) -> _Background:
    if color is None:
        return _Background("lightgrey")
    if color in adata.obs:
        values = adata.obs[color]
        if isinstance(values.dtype, pd.CategoricalDtype):
            palette = category_colors(adata, color)
            codes = values.cat.codes.to_numpy()
            colors = np.array([palette[code] if code >= 0 else "lightgrey" for code in codes])
            return _Background(colors, categories=dict(zip(values.cat.categories.astype(str), palette, strict=True)))
        return _Background(values.to_numpy(dtype=float), cmap="viridis")
    if color in adata.var_names:
        column = adata[:, color].X
        column = column.toarray() if hasattr(column, "toarray") else np.asarray(column)
        return _Background(column.ravel().astype(float), cmap="viridis")
    raise KeyError(f"`color`={color!r} is neither a column of `adata.obs` nor a gene of `adata.var_names`.")


def _member_colors(drawn, members: np.ndarray) -> np.ndarray:
    """The colours the tissue scatter gave to ``members`` (mapped now, not at the next draw)."""
    drawn.update_scalarmappable()
    return drawn.get_facecolors()[members]
