"""What every plot of spatialot does at its end: save, show, return like scanpy."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from scanpy import settings


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
