"""``sot.pl.loss``: the training loss a ``tl`` function recorded."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from anndata import AnnData
from matplotlib.axes import Axes

from .._validation import check_int
from ._utils import finish


def loss(
    adata: AnnData,
    key: str = "wormhole",
    *,
    window: int = 50,
    log: bool = True,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
) -> Axes | None:
    """Plot the training loss stored in ``.uns[key]['loss']``, raw and as a running mean.

    Parameters
    ----------
    adata
        Annotated data matrix on which a training tool ran (e.g. :func:`spatialot.tl.wormhole`).
    key
        The ``key_added`` of that tool.
    window
        Steps in the running mean.
    log
        Logarithmic loss axis.
    ax, show, save
        As in :func:`spatialot.pl.embedding`.

    Returns
    -------
    The Axes, unless the figure was shown.

    Examples
    --------
    >>> import spatialot as sot
    >>> adata = sot.datasets.bdtnp()
    >>> sot.pp.niches(adata, k=8)
    >>> sot.tl.wormhole(adata, n_steps=500)  # doctest: +SKIP
    >>> sot.pl.loss(adata, "wormhole", window=25)  # doctest: +SKIP
    """
    if key not in adata.uns or "loss" not in adata.uns[key]:
        raise KeyError(f"`key`={key!r}: no training loss in `adata.uns[{key!r}]['loss']`; train a model first.")
    history = np.asarray(adata.uns[key]["loss"], dtype=float)
    if history.size == 0:
        raise ValueError(f"`adata.uns[{key!r}]['loss']` is empty: the model was not trained.")
    window = check_int("window", window)
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.5))
    steps = np.arange(1, history.size + 1)
    ax.plot(steps, history, color="lightgrey", lw=0.8, label="step")
    window = min(window, history.size)
    running = np.convolve(history, np.ones(window) / window, mode="valid")
    ax.plot(steps[window - 1 :], running, color="tab:blue", lw=1.5, label=f"mean of {window}")
    if log and (history > 0).all():
        ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("loss")
    ax.set_title(key)
    ax.legend(frameon=False)
    return finish(ax, show=show, save=save)
