"""What every plot of spatialot does at its end: save, show, return like scanpy."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from anndata import AnnData
from matplotlib.axes import Axes
from scanpy import settings

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
