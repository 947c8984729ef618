"""``sot.pl.hotet``: a niche, the reference, and the reference transported onto the niche by HOTET."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection

from .._keys import ResultKeys
from ..get import niche_clouds
from ._utils import chosen_cells, finish


def hotet(
    adata: AnnData,
    cells: Sequence[int | str] | None = None,
    *,
    key: str = "hotet",
    n_random: int = 2,
    components: tuple[int, int] = (0, 1),
    arrows: bool = True,
    random_state: int = 0,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
) -> Axes | None:
    """Show the reference, chosen niches, and the reference points transported onto each niche.

    Reads what :func:`spatialot.tl.hotet` wrote: the anchors (a fixed sample of the reference)
    and, in ``.obsm['X_<key>']``, their images under each niche's inverse map (reference →
    niche). A good map lands the transported anchors on the niche's points. Everything is
    drawn in the plane of two principal axes of the reference covariance.

    Parameters
    ----------
    adata
        Annotated data matrix on which :func:`spatialot.tl.hotet` ran.
    cells
        Cells whose niches to show, as positions or ``obs_names``. Default: ``n_random`` random cells.
    key
        The ``key_added`` of :func:`spatialot.tl.hotet`.
    n_random
        Number of random cells when ``cells`` is ``None``.
    components
        Which principal axes of the reference covariance span the plane (0 = the widest).
    arrows
        Join each anchor to its image with a line.
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
    >>> import scanpy as sc
    >>> import spatialot as sot
    >>> adata = sot.datasets.bdtnp()
    >>> sc.pp.pca(adata, n_comps=8)
    >>> sot.pp.niches(adata, k=8, use_rep="X_pca")
    >>> sot.tl.hotet(adata, n_steps=200)  # doctest: +SKIP
    >>> sot.pl.hotet(adata, cells=["cell10"])  # doctest: +SKIP
    """
    keys = ResultKeys(key, argument="key")
    if keys.uns not in adata.uns or keys.obsm not in adata.obsm:
        raise KeyError(f"No HOTET result under `key`={key!r}: run `sot.tl.hotet(adata, key_added={key!r})` first.")
    result = adata.uns[keys.uns]
    anchors = np.asarray(result["anchors"], dtype=np.float64)
    mean = np.asarray(result["reference_mean"], dtype=np.float64)
    cov = np.asarray(result["reference_cov"], dtype=np.float64)
    dim = anchors.shape[1]
    if len(components) != 2 or min(components) < 0 or max(components) >= dim:
        raise ValueError(f"`components` must be two axes among 0..{dim - 1}, got {components!r}.")
    family = niche_clouds(adata, niche_key=result["params"]["niche_key"])
    positions = chosen_cells(adata, cells, n_random, random_state)

    eigenvalues, eigenvectors = np.linalg.eigh(cov)
    axes = eigenvectors[:, np.argsort(eigenvalues)[::-1][list(components)]]

    def project(points: np.ndarray) -> np.ndarray:
        return (np.asarray(points, dtype=np.float64) - mean) @ axes

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 6))
    reference_2d = project(anchors)
    ax.scatter(*reference_2d.T, s=14, color="lightgrey", edgecolors="grey", linewidths=0.3, label="reference")
    images = np.asarray(adata.obsm[keys.obsm], dtype=np.float64).reshape(adata.n_obs, -1, dim) * np.sqrt(len(anchors))
    palette = plt.get_cmap("tab10")
    for number, cell in enumerate(positions):
        tint = palette(number % 10)
        niche, _ = family.gather([int(cell)]).cloud(0)
        mapped_2d = project(images[cell])
        if arrows:
            segments = np.stack([reference_2d, mapped_2d], axis=1)
            ax.add_collection(LineCollection(segments, colors=[tint], linewidths=0.4, alpha=0.4))
        ax.scatter(
            *mapped_2d.T, s=10, color=tint, alpha=0.7, linewidths=0, label=f"{adata.obs_names[cell]}: transported"
        )
        ax.scatter(
            *project(niche).T,
            s=60,
            color=tint,
            marker="*",
            edgecolors="black",
            linewidths=0.5,
            label=f"{adata.obs_names[cell]}: niche",
        )
    ax.set_xlabel(f"reference PC {components[0] + 1}")
    ax.set_ylabel(f"reference PC {components[1] + 1}")
    ax.set_title(f"HOTET maps of {len(positions)} niche(s)")
    ax.legend(fontsize="small", markerscale=0.8, frameon=False)
    return finish(ax, show=show, save=save)
