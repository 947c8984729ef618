"""What the plots of spatialot share: panel grids, scanpy's category colours, labelled colour bars, the end.

Every plot ends in :func:`finish`: save, show and return like scanpy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.colors import to_hex
from scanpy import settings
from scanpy.plotting import palettes

from .._anndata import cell_positions


def finish(ax: Axes, *, show: bool | None, save: str | Path | None) -> Axes | None:
    """Save the figure of ``ax`` if asked, show it if asked, and return ``ax`` unless shown.

    ``show=None`` follows ``scanpy.settings.autoshow`` unless the figure is being saved.
    """
    figure = ax.get_figure()
    if save is not None:
        figure.savefig(save, dpi=150, bbox_inches="tight")
    if show is None:
        show = settings.autoshow and save is None
    if show:
        plt.show()
        return None
    return ax


def chosen_cells(
    adata: AnnData, cells: Sequence[int | str] | None, n_random: int, random_state: int | None
) -> np.ndarray:
    """Positions of the cells a plot shows: ``cells`` resolved, or ``n_random`` random cells when ``None``."""
    if cells is not None:
        return cell_positions(adata, cells)
    rng = np.random.default_rng(random_state)
    return rng.choice(adata.n_obs, size=min(n_random, adata.n_obs), replace=False)


def panel_grid(
    n_panels: int, *, ncols: int, panel_size: tuple[float, float], height_ratios: Sequence[float] = (1.0,)
) -> np.ndarray:
    """A new figure of ``n_panels`` panels wrapped in rows of at most ``ncols``, like scanpy's grids.

    Each panel is a column of ``len(height_ratios)`` Axes stacked with those heights. Returns an
    array of shape ``(len(height_ratios), n_panels)``: the Axes of each panel, top to bottom;
    the unused cells of the last row are removed.
    """
    ncols = max(1, min(ncols, n_panels))
    nrows = math.ceil(n_panels / ncols)
    per_panel = len(height_ratios)
    width, height = panel_size
    figure = plt.figure(figsize=(width * ncols, height * nrows * sum(height_ratios)), layout="constrained")
    grid = figure.add_gridspec(nrows * per_panel, ncols, height_ratios=list(height_ratios) * nrows)
    axes = np.empty((per_panel, n_panels), dtype=object)
    for panel in range(n_panels):
        row, column = divmod(panel, ncols)
        for part in range(per_panel):
            axes[part, panel] = figure.add_subplot(grid[row * per_panel + part, column])
    return axes


def category_colors(adata: AnnData, key: str) -> list[str]:
    """Colours of the categories of ``.obs[key]`` as scanpy draws them: ``.uns[f'{key}_colors']`` or its default.

    Nothing is written to ``adata``: a missing or short palette is replaced, for this plot only,
    by scanpy's default for that many categories.
    """
    n_categories = len(adata.obs[key].astype("category").cat.categories)
    stored = adata.uns.get(f"{key}_colors")
    if stored is not None and len(stored) >= n_categories:
        return [to_hex(color) for color in list(stored)[:n_categories]]
    if n_categories <= 20:
        palette = palettes.default_20
    elif n_categories <= 28:
        palette = palettes.default_28
    else:
        palette = palettes.default_102
    return [to_hex(palette[number % len(palette)]) for number in range(n_categories)]


def label_colorbars(ax: Axes, label: str) -> None:
    """Put ``label`` on the colour bar of every mappable drawn in ``ax``."""
    for artist in [*ax.collections, *ax.images]:
        if getattr(artist, "colorbar", None) is not None:
            artist.colorbar.set_label(label)
