"""``sot.tl.asot`` and ``sot.tl.asot_neighbors``: niches on one anchor simplex, and their OT neighbour graph."""

from __future__ import annotations

from typing import Literal

import numpy as np
import scipy.sparse as sp
import torch
from anndata import AnnData
from scanpy import logging as logg

from .._anndata import check_writable, h5ad_params
from .._docs import inject_docs
from .._keys import GraphKeys, ResultKeys
from .._validation import check_int
from ..get import niche_clouds
from ..models._asot import ASOT, ASOT_METHODS, ASOTMethod
from ..ot._anchor import ANCHOR_METHODS, AnchorMethod, anchor_kneighbors
from ._utils import check_result, write_result

GRAPH_KERNELS = ("gauss", "umap")
"""Kernels of :func:`asot_neighbors`' connectivities, named as ``method`` of :func:`scanpy.pp.neighbors`."""


@inject_docs
def asot(
    adata: AnnData,
    *,
    niche_key: str = "niche",
    n_anchors: int = 32,
    method: ASOTMethod = "ml",
    epsilon: float = 0.04,
    n_iter: int = 10,
    n_train_pairs: int = 2048,
    n_steps: int = 300,
    batch_size: int = 256,
    learning_rate: float = 1e-2,
    key_added: str = "asot",
    device: str = "auto",
    random_state: int | None = 0,
    progress: bool = True,
    copy: bool = False,
) -> ASOT | tuple[AnnData, ASOT]:
    r"""Anchor Space OT: every niche as a weight vector on one shared set of anchors.

    Fits :class:`~spatialot.models.ASOT` on the niches of :func:`spatialot.pp.niches`. Every
    niche becomes a histogram over ``n_anchors`` anchors in feature space, and all niches share
    one ``k × k`` cost, so OT between any pairs of niches (all pairs, or the neighbour graph of
    :func:`asot_neighbors`) runs as batched matrix products. The cost is the **squared**
    Euclidean distance, so ASOT distances estimate :math:`W_2^2` between niches (the ASOT paper
    uses the Euclidean cost).

    Parameters
    ----------
    {adata_niches}
    {niche_key}
    n_anchors
        Number of anchors ``k``: more anchors are more accurate and cost :math:`O(k^2)` per pair.
        The default (32, with ``'ml'``) reached Pearson 0.97–0.99 against exact :math:`W_2^2` at
        more than 300× the speed of exact OT per pair on BDTNP and a simulated tissue (niches
        of 8; ``benchmarks/asot.py``). The ASOT paper sets ``k`` to the largest cloud size.
    method
        ``'ml'`` (ASOT-ML, the default: soft codes and anchor cost learnt against exact OT on
        sampled pairs of niches; a few seconds of training), ``'kmeans'`` (ASOT-k: k-means
        anchors, hard codes, no training; it underestimates :math:`W_2^2` by the spread of the
        points around their anchors, Pearson 0.92 on BDTNP with 32 anchors) or ``'dl'``
        (ASOT-DL: sparse non-negative codes on a dictionary learnt at the point level, see
        :class:`~spatialot.models.ASOT`).
    epsilon
        Entropic regularisation of the anchor Sinkhorn, relative to the largest anchor cost.
    n_iter
        Sinkhorn iterations per pair.
    n_train_pairs, n_steps, batch_size, learning_rate
        Training of ``'ml'`` and ``'dl'`` (see :meth:`spatialot.models.ASOT.fit`;
        ``n_train_pairs`` is for ``'ml'`` only); ignored by ``'kmeans'``.
    key_added
        Key of the results (see Returns).
    {device}
    random_state
        Seed of k-means, pair sampling and training.
    {progress}
    {copy_model}

    Returns
    -------
    The fitted model, or ``(adata_copy, model)`` when ``copy=True``. Writes:

    ``.obsm['X_{key_added}']``
        ``(n_obs, n_anchors)`` float32: the anchor weights of every cell's niche (rows on the
        simplex).
    ``.uns['{key_added}']``
        ``'params'`` (the arguments, ``niche_key`` included), ``'loss'`` (training loss per step;
        empty for ``'kmeans'``), ``'anchors'`` (``(n_anchors, dim)`` anchor positions in the
        niche features), ``'cost'`` (the shared ``(n_anchors, n_anchors)`` squared-Euclidean cost,
        learnt for ``'ml'``, between the learnt atoms for ``'dl'``), ``'cost_anchors'`` and
        ``'cost_offsets'`` (points ``p`` and offsets ``o`` with
        ``cost = ||p_i - p_j||^2 + o_i + o_j``; the anchors and zeros for ``'kmeans'`` and
        ``'dl'``) and ``'epsilon'`` (the absolute Sinkhorn regularisation).

    Examples
    --------
    >>> import spatialot as sot
    >>> adata = sot.datasets.bdtnp()
    >>> sot.pp.niches(adata, k=8)
    >>> model = sot.tl.asot(adata, progress=False)
    >>> sot.tl.asot_neighbors(adata, n_neighbors=15, progress=False)
    """
    check_writable(adata, copy)
    start = logg.info(f"computing ASOT ({method})")
    if method not in ASOT_METHODS:
        raise ValueError(f"`method` must be one of {ASOT_METHODS}, got {method!r}.")
    keys = ResultKeys(key_added)
    family = niche_clouds(adata, niche_key=niche_key)
    model = ASOT(family.dim, n_anchors, method=method, epsilon=epsilon, n_iter=n_iter)
    model.fit(
        family,
        n_train_pairs=n_train_pairs,
        n_steps=n_steps,
        batch_size=batch_size,
        learning_rate=learning_rate,
        random_state=random_state,
        device=device,
        progress=progress,
    )
    weights = model.transform(family, progress=progress)
    points, offsets = model.cost_geometry()

    adata = adata.copy() if copy else adata
    params = {
        "niche_key": niche_key,
        "n_anchors": n_anchors,
        "method": method,
        "epsilon": epsilon,
        "n_iter": n_iter,
        "random_state": random_state,
        "cost": "squared Euclidean (values are W2^2 estimates)",
    }
    if method in ("ml", "dl"):
        params |= {"n_steps": n_steps, "batch_size": batch_size, "learning_rate": learning_rate}
    if method == "ml":
        params["n_train_pairs"] = n_train_pairs
    write_result(
        adata,
        keys,
        params=params,
        embedding=weights,
        loss=np.asarray(model.history, dtype=np.float64),
        anchors=model.anchor_positions().astype(np.float32),
        cost=model.cost().double().cpu().numpy(),
        cost_anchors=points.astype(np.float32),
        cost_offsets=offsets.astype(np.float64),
        epsilon=model.absolute_epsilon(),
    )
    logg.info(
        "    finished",
        time=start,
        deep=f"added\n    '{keys.obsm}', anchor weights (adata.obsm)\n    '{keys.uns}', anchors, cost (adata.uns)",
    )
    return (adata, model) if copy else model


@inject_docs
def asot_neighbors(
    adata: AnnData,
    *,
    n_neighbors: int = 15,
    key: str = "asot",
    method: AnchorMethod = "sinkhorn",
    debias: bool = True,
    n_candidates: int | None = None,
    kernel: Literal["gauss", "umap"] = "gauss",
    batch_size: int | None = None,
    key_added: str = "asot_neighbors",
    device: str = "auto",
    progress: bool = True,
    copy: bool = False,
) -> AnnData | None:
    r"""Niche-to-niche neighbour graph by ASOT distance, in the layout of :func:`scanpy.pp.neighbors`.

    Every niche's ``n_neighbors`` neighbours (itself included, as in scanpy) with their
    anchor-space OT distances of :func:`asot`. ``sc.tl.leiden(adata, neighbors_key=key_added)``
    and ``sc.tl.umap(adata, neighbors_key=key_added)`` then cluster and embed niches by OT
    geometry.

    The neighbour lists are not the OT kNN (the ASOT paper works with the distances themselves,
    and builds no graph): each niche's candidates are its ``n_candidates`` nearest niches by the
    Euclidean distance of the anchor weights (what :func:`scanpy.pp.neighbors` would find on
    ``.obsm['X_{key}']``), OT is solved for those pairs only, and the ``n_neighbors`` nearest by
    OT are kept (see :func:`~spatialot.ot.anchor_kneighbors`); the connectivities are scanpy's
    Gaussian kernel on the OT distances (``kernel``, see there why not UMAP's). Why Euclidean
    candidates: small niches coded on anchors form a lattice of compositions that OT measures
    almost exactly, and the OT kNN of a lattice is a graph of near-copies (niches of one
    composition that differ only by which close anchor took a point) that Leiden splits into one
    cluster per composition. The Euclidean distance of the weights counts moved mass wherever it
    moves, so its neighbour lists mix compositions a cell or two apart, and OT then weighs (and,
    with ``n_candidates > n_neighbors``, chooses) among them. On the simulated tissue of
    ``benchmarks/asot_graph.py`` (10,000 cells, 32 anchors, 15 neighbours), Leiden on the exact
    debiased OT 15-NN graph of ASOT-k reaches ARI at most 0.12 with niches of 8 cells (24
    components) and 0.56 with niches of 32, over resolutions 0.1–1. Told the number of niche
    types as k-means is (resolution bisected to 5 clusters; mean over 5 tissues and 3–5 seeds,
    ``--repeat``), Leiden on this graph scores 0.66 (ASOT-k) and 0.64 (ASOT-ML) with niches of 8,
    against 0.51 and 0.47 for k-means on the weights and 0.39–0.44 for Leiden on the mean niche
    expression; with niches of 32, 0.86 and 0.87 against 0.88 and 0.85 (k-means) and 0.85. With
    ASOT-DL on niches of 8 it fails (0.10 against 0.43 for k-means): its codes give one nearly
    fixed dense vector per cell type, so its weights are each niche's composition plus a little
    noise (1 % of their variance). The lattice of compositions itself clusters once copies count
    once (0.56, against 0.46 for k-means on it; one tissue, ``asot-graph-k8-dl-cpu.json``), but
    near-copies are not identical, so they fill each other's lists (0.14 on that tissue);
    counting those within half a lattice step once gives 0.54, still below k-means on the DL
    weights there (0.62), and that step is measured from the cell types, which the graph is not
    given (``benchmarks/README.md``). It costs ``n * n_candidates`` OT problems instead of all
    pairs. Choose Leiden's resolution with care: on niches of 32 cells the default of 1 splits
    each type.

    The distance is debiased (``debias``): half of each niche's entropic self-cost is
    subtracted, so a niche is at distance 0 from itself and spread niches are not pushed away
    from everything by the entropic blur (for ``'ml'`` this also removes the spread offsets of
    the learnt cost from the distance of a niche to a near-copy). Identical niches count once:
    the first copy gets the neighbours, every other copy that first copy at distance 0 and the
    same neighbours, so copies stay connected without filling each other's lists.

    Parameters
    ----------
    adata
        Annotated data matrix on which :func:`asot` ran.
    n_neighbors
        Size of each neighbourhood, the niche itself included.
    key
        The ``key_added`` of :func:`asot`.
    method
        ``'sinkhorn'`` (the batched anchor Sinkhorn of :func:`asot`) or ``'exact'`` (POT on the
        anchor histograms; slow, for small data).
    debias
        Subtract the mean of the two niches' self-costs from each Sinkhorn distance (see above).
    n_candidates
        Euclidean nearest niches of each niche among which OT chooses its ``n_neighbors``; at
        least ``n_neighbors``. ``None``: ``n_neighbors`` (OT gives the distances and weights of
        the Euclidean lists); larger values let OT choose, which on niches of 8 cells lowers
        Leiden's agreement with the niche types and on niches of 32 raises it at the higher
        resolutions (``benchmarks/README.md``).
    kernel
        How the distances become connectivities, named as ``method`` of :func:`scanpy.pp.neighbors`.
        ``'gauss'``: scanpy's Gaussian kernel with adaptive widths (Haghverdi et al. 2016),
        :math:`w_{ij} = \sqrt{2\sigma_i\sigma_j / (\sigma_i^2 + \sigma_j^2)}\,
        \exp(-W_{ij}^2 / (\sigma_i^2 + \sigma_j^2))` with :math:`\sigma_i^2` the median ASOT
        distance of niche ``i``'s list; a pair listed by one side only gets the same weight both
        ways, a pair listed by both the larger of its two (Sinkhorn values are not exactly
        symmetric). ``'umap'``: UMAP's fuzzy simplicial set on :math:`W_2` (scanpy's default),
        whose weights fall from 1 at each niche's nearest other niche with a width fitted so that
        they sum to :math:`\log_2 k`: among niches, where copies and near-copies sit at (almost)
        0, that concentrates the weight on the first few of each list. The Gaussian width is the
        median of the list, and Leiden on it agrees better with the niche types in all 6
        settings of ``benchmarks/asot_graph.py --repeat`` (ASOT-k, -ML, -DL; niches of 8:
        +0.013, +0.056, +0.032 ARI; of 32: +0.006, +0.001, +0.002; mean over 5 tissues and 3–5
        Leiden seeds, same tissue and seed paired).
    batch_size
        Pairs solved at once; bounds the working memory.
    key_added
        Key of the graph (see Returns).
    {device}
    {progress}
    {copy}

    Returns
    -------
    ``None``, or a copy of ``adata`` when ``copy=True``, with:

    ``.obsp['{key_added}_distances']``
        Sparse ``(n_obs, n_obs)``: the ASOT distance (a :math:`W_2^2` estimate, squared units;
        debiased and clipped at 0 with ``debias=True``)
        from each niche to its ``n_neighbors - 1`` neighbours (see above).
    ``.obsp['{key_added}_connectivities']``
        Sparse symmetric weights of ``kernel`` on :math:`W_2` (the square root of the
        distances), a metric.
    ``.uns['{key_added}']``
        ``connectivities_key``, ``distances_key`` and ``params`` (``n_neighbors``, ``method``
        (the ``kernel``), ``use_rep``, the ASOT ``key``, solver and ``n_candidates``), as scanpy
        writes; ``metric`` is ``'euclidean'``, the metric :func:`scanpy.tl.umap` uses on ``use_rep`` to place
        disconnected components of the graph, while the graph itself is by ASOT (``distance``).

    Examples
    --------
    >>> import scanpy as sc
    >>> import spatialot as sot
    >>> adata = sot.datasets.bdtnp()
    >>> sot.pp.niches(adata, k=8)
    >>> sot.tl.asot(adata, n_anchors=32)  # doctest: +SKIP
    >>> sot.tl.asot_neighbors(adata, n_neighbors=15)  # doctest: +SKIP
    >>> sc.tl.leiden(adata, neighbors_key="asot_neighbors", key_added="asot_leiden")  # doctest: +SKIP
    """
    check_writable(adata, copy)
    start = logg.info("computing ASOT neighbours")
    keys, graph_keys = ResultKeys(key, argument="key"), GraphKeys(key_added)
    if keys.uns not in adata.uns or keys.obsm not in adata.obsm or "cost" not in adata.uns[keys.uns]:
        raise KeyError(f"No ASOT result under `key`={key!r}: run `sot.tl.asot(adata, key_added={key!r})` first.")
    if method not in ANCHOR_METHODS:
        raise ValueError(f"`method` must be one of {ANCHOR_METHODS}, got {method!r}.")
    if kernel not in GRAPH_KERNELS:
        raise ValueError(f"`kernel` must be one of {GRAPH_KERNELS}, got {kernel!r}.")
    n_neighbors = check_int("n_neighbors", n_neighbors, minimum=2, maximum=adata.n_obs, why="the number of cells")
    weights = np.asarray(adata.obsm[keys.obsm], dtype=np.float32)
    result = adata.uns[keys.uns]
    n_candidates = check_int(
        "n_candidates",
        n_neighbors if n_candidates is None else n_candidates,
        minimum=n_neighbors,
        maximum=adata.n_obs,
        why="the number of cells",
    )
    from ..models._device import resolve_device

    indices, distances = anchor_kneighbors(
        weights,
        torch.as_tensor(np.asarray(result["cost"]), dtype=torch.float32),
        int(n_neighbors),
        method=method,
        epsilon=float(result["epsilon"]),
        n_iter=int(result["params"]["n_iter"]),
        debias=debias,
        n_candidates=n_candidates,
        batch_size=batch_size,
        device=resolve_device(device),
        progress=progress,
    )
    distance_matrix, connectivities = _graph(indices, distances, adata.n_obs, n_neighbors, kernel)
    check_result(graph_keys.distances, distance_matrix)
    check_result(graph_keys.connectivities, connectivities)

    adata = adata.copy() if copy else adata
    adata.obsp[graph_keys.distances] = distance_matrix
    adata.obsp[graph_keys.connectivities] = connectivities
    params = {
        "n_neighbors": n_neighbors,
        "method": kernel,  # scanpy's name for the kernel of the connectivities
        # what sc.tl.umap uses to place disconnected components on `use_rep`; the graph is by ASOT
        "metric": "euclidean",
        "distance": "ASOT W2^2, debiased (connectivities on W2)" if debias else "ASOT W2^2 (connectivities on W2)",
        "debias": debias,
        "n_candidates": n_candidates,
        "candidates": "Euclidean nearest of the anchor weights, ranked by ASOT",
        "use_rep": keys.obsm,
        "asot_key": key,
        "solver": method,
        "random_state": 0,
    }
    adata.uns[graph_keys.uns] = {
        "connectivities_key": graph_keys.connectivities,
        "distances_key": graph_keys.distances,
        "params": h5ad_params(params),
    }
    logg.info(
        "    finished",
        time=start,
        deep=f"added\n    '{graph_keys.distances}', '{graph_keys.connectivities}' (adata.obsp)"
        f"\n    '{graph_keys.uns}' (adata.uns)",
    )
    return adata if copy else None


def _graph(indices: np.ndarray, distances: np.ndarray, n_obs: int, n_neighbors: int, kernel: str = "umap"):
    """Scanpy's distance matrix (self excluded) and connectivities: ``kernel`` on the metric W2.

    ``distances`` are squared (:math:`W_2^2`), ``indices[:, 0]`` each row itself.
    """
    metric = np.sqrt(np.maximum(distances, 0)).astype(np.float32)
    if kernel == "gauss":
        connectivities = _gauss_kernel(indices, metric)
    else:
        connectivities = _fuzzy_simplicial_set(indices, metric)
    rows = np.repeat(np.arange(n_obs), n_neighbors - 1)
    distance_matrix = sp.csr_matrix(
        (distances[:, 1:].ravel().astype(np.float32), (rows, indices[:, 1:].ravel())), shape=(n_obs, n_obs)
    )
    return distance_matrix, connectivities


def _gauss_kernel(indices: np.ndarray, distances: np.ndarray) -> sp.csr_matrix:
    r"""Scanpy's Gaussian kernel with adaptive widths (``method='gauss'``, Haghverdi et al. 2016) on kNN lists.

    With :math:`\sigma_i^2` the median squared distance from row ``i`` to its neighbours
    (``indices[:, 0]``, the row itself, excluded), :math:`w_{ij} = \sqrt{2\sigma_i\sigma_j /
    (\sigma_i^2 + \sigma_j^2)} \exp(-d_{ij}^2 / (\sigma_i^2 + \sigma_j^2))` for every listed
    pair, and a pair listed by one side only gets the same weight both ways, as scanpy's
    ``neighbors._connectivity.gauss`` computes on sparse kNN distances. Two deviations: a pair
    listed by both sides takes the larger of its two weights, so the matrix is symmetric even
    where the two solved distances differ slightly (a Sinkhorn value after a fixed number of
    iterations is not exactly symmetric); and a width is at least ``1e-3`` times the mean
    positive distance (the floor of UMAP's widths), so that a row whose median distance is 0
    (copies) keeps finite weights.
    """
    n_obs, k = indices.shape
    listed = distances[:, 1:].astype(np.float64)
    squared = listed**2
    positive = listed[listed > 0]
    floor = (1e-3 * float(positive.mean())) ** 2 if positive.size else 1.0
    sigma_sq = np.maximum(np.median(squared, axis=1), floor)
    rows, columns = np.repeat(np.arange(n_obs), k - 1), indices[:, 1:].ravel()
    denominator = sigma_sq[rows] + sigma_sq[columns]
    values = np.sqrt(2 * np.sqrt(sigma_sq[rows] * sigma_sq[columns]) / denominator)
    values *= np.exp(-squared.ravel() / denominator)
    keep = rows != columns
    graph = sp.csr_matrix((values[keep], (rows[keep], columns[keep])), shape=(n_obs, n_obs))
    return sp.csr_matrix(graph.maximum(graph.T)).astype(np.float32)


def _fuzzy_simplicial_set(indices: np.ndarray, distances: np.ndarray, *, n_iter: int = 64) -> sp.csr_matrix:
    """UMAP's fuzzy simplicial set of a kNN graph (``umap.umap_.fuzzy_simplicial_set`` with precomputed neighbours).

    The same computation as umap-learn's (``local_connectivity=1``, ``set_op_mix_ratio=1``,
    ``bandwidth=1``), vectorised over all rows in numpy, which avoids umap-learn's numba
    compilation (about 10 s per process). ``indices[:, 0]`` must be each row itself.
    """
    n_obs, k = indices.shape
    distances = distances.astype(np.float64)
    positive = np.where(distances > 0, distances, np.inf)
    smallest = positive.min(1)
    rho = np.where(np.isfinite(smallest), smallest, 0.0)
    target = np.log2(k)
    low, high, mid = np.zeros(n_obs), np.full(n_obs, np.inf), np.ones(n_obs)
    active = np.ones(n_obs, dtype=bool)
    shifted = distances[:, 1:] - rho[:, None]
    for _ in range(n_iter):
        psum = np.where(shifted > 0, np.exp(-np.maximum(shifted, 0) / mid[:, None]), 1.0).sum(1)
        active &= np.abs(psum - target) >= 1e-5
        if not active.any():
            break
        above = active & (psum > target)
        below = active & ~above
        high = np.where(above, mid, high)
        mid = np.where(above, (low + high) / 2, mid)
        low = np.where(below, mid, low)
        mid = np.where(below, np.where(np.isinf(high), mid * 2, (low + high) / 2), mid)
    floor = 1e-3 * np.where(rho > 0, distances.mean(1), distances.mean())
    sigma = np.maximum(mid, floor)
    gap = distances - rho[:, None]
    values = np.where(gap <= 0, 1.0, np.exp(-np.maximum(gap, 0) / sigma[:, None]))
    values[indices == np.arange(n_obs)[:, None]] = 0.0
    graph = sp.csr_matrix((values.ravel(), (np.repeat(np.arange(n_obs), k), indices.ravel())), shape=(n_obs, n_obs))
    graph.eliminate_zeros()
    product = graph.multiply(graph.T)
    return sp.csr_matrix(graph + graph.T - product).astype(np.float32)
