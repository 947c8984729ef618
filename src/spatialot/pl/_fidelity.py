"""``sot.pl.distance_fidelity``: how faithful a method's niche distances are to exact OT.

Each method estimates :math:`W_2^2` its own way, and the plot must use that way: Wormhole and
HOTET by the squared Euclidean distance between their vectors (the embedding; the map
representation, linearised OT), ASOT by OT between anchor weights on its shared anchor cost.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import matplotlib.pyplot as plt
import numpy as np
import scipy.stats
from anndata import AnnData
from matplotlib.axes import Axes

from .._keys import ResultKeys
from .._validation import check_int
from ..ot import anchor_paired_distances
from ..tl import ot_distances
from ._embedding import _embedding
from ._utils import finish


def method_distances(adata: AnnData, basis: str, first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, str]:
    """The :math:`W_2^2` estimate of the method that wrote ``basis`` between cells ``first[p]`` and ``second[p]``.

    Returns the distances and what they are, for an axis label. An ASOT result is recognised by
    the shared anchor cost :func:`spatialot.tl.asot` writes beside its weights; every other
    basis (Wormhole's embedding, HOTET's map representation) is a vector whose squared
    Euclidean distances estimate :math:`W_2^2`.
    """
    coordinates = _embedding(adata, basis)
    result = adata.uns.get(ResultKeys(basis.removeprefix("X_"), argument="basis").uns, {})
    if "cost" in result and "epsilon" in result:
        distances = anchor_paired_distances(
            coordinates[first],
            coordinates[second],
            np.asarray(result["cost"]),
            method="sinkhorn",
            epsilon=float(result["epsilon"]),
            n_iter=int(result["params"]["n_iter"]),
            device="cpu",
        )
        return distances, "anchor-space OT"
    return ((coordinates[first] - coordinates[second]) ** 2).sum(1), "squared distance"


def _niche_key(adata: AnnData, basis: str, niche_key: str | None) -> str:
    """The niches ``basis`` was computed on, from ``.uns[basis]['params']``; ``niche_key`` must agree."""
    key = basis.removeprefix("X_")
    recorded = adata.uns.get(key, {}).get("params", {}).get("niche_key")
    if niche_key is None:
        if recorded is None:
            raise KeyError(
                f"`adata.uns[{key!r}]['params']` records no `niche_key`: pass `niche_key=` (the `key_added` of "
                "`sot.pp.niches` the embedding was computed on)."
            )
        return str(recorded)
    if recorded is not None and str(recorded) != niche_key:
        raise ValueError(
            f"`niche_key`={niche_key!r}, but `basis`={basis!r} was computed on the niches under {recorded!r}: "
            "leave `niche_key` out to use those."
        )
    return niche_key


def distance_fidelity(
    adata: AnnData,
    *,
    basis: str = "wormhole",
    niche_key: str | None = None,
    n_pairs: int = 500,
    method: Literal["exact", "sinkhorn", "sinkhorn_divergence"] = "exact",
    random_state: int = 0,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
) -> Axes | None:
    r"""Scatter a method's niche distance against the true :math:`W_2^2` on random niche pairs.

    Each basis is scored by its own method's estimate of :math:`W_2^2`: the squared Euclidean
    distance of the embedding for :func:`spatialot.tl.wormhole`, of the map representation for
    :func:`spatialot.tl.hotet`, and the anchor-space OT distance (on the anchor cost and
    regularisation stored in ``.uns[basis]``) for :func:`spatialot.tl.asot`. A faithful
    estimate puts the points on the diagonal; the title gives the Pearson and Spearman
    correlations. The true distances are computed with :func:`spatialot.tl.ot_distances` on the
    niches the basis was computed on.

    Parameters
    ----------
    adata
        Annotated data matrix with ``.obsm['X_<basis>']`` and ``.uns[basis]`` from a ``tl`` call.
    basis
        Result to check: the ``key_added`` of :func:`spatialot.tl.wormhole`,
        :func:`spatialot.tl.asot` or :func:`spatialot.tl.hotet`.
    niche_key
        The niches to compare with; by default those recorded in ``.uns[basis]['params']``
        (given, it must agree with them).
    n_pairs
        Number of random pairs of distinct cells.
    method
        How the true distances are computed (see :func:`spatialot.tl.ot_distances`).
    random_state
        Seed of the choice of pairs.
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
    >>> sot.tl.asot(adata, n_anchors=32)  # doctest: +SKIP
    >>> sot.pl.distance_fidelity(adata, basis="asot", n_pairs=300)  # doctest: +SKIP
    """
    _embedding(adata, basis)  # a clear error first when the basis is missing
    niche_key = _niche_key(adata, basis, niche_key)
    if adata.n_obs < 2:
        raise ValueError("`adata` needs at least 2 cells to form pairs.")
    n_pairs = check_int("n_pairs", n_pairs, minimum=2)
    rng = np.random.default_rng(random_state)
    first = rng.integers(adata.n_obs, size=n_pairs)
    second = (first + rng.integers(1, adata.n_obs, size=n_pairs)) % adata.n_obs  # never the same cell
    true = ot_distances(adata, first, second, niche_key=niche_key, paired=True, method=method, progress=False)
    predicted, what = method_distances(adata, basis, first, second)
    pearson = scipy.stats.pearsonr(predicted, true)[0]
    spearman = scipy.stats.spearmanr(predicted, true)[0]
    if ax is None:
        _, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(true, predicted, s=6, alpha=0.5, color="tab:blue", linewidths=0)
    limit = max(true.max(), predicted.max())
    ax.plot([0, limit], [0, limit], color="grey", lw=1, ls="--")
    ax.set_xlabel(f"{method} $W_2^2$ between niches ({niche_key})")
    ax.set_ylabel(f"{what} in X_{basis.removeprefix('X_')}")
    ax.set_title(f"Pearson {pearson:.3f}, Spearman {spearman:.3f} ({n_pairs} pairs)")
    return finish(ax, show=show, save=save)
