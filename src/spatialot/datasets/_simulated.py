"""A seeded simulated 2-D tissue whose niche types, compositions and expression model are known."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.spatial import cKDTree

from .._validation import check_int

__all__ = ["simulated_tissue"]

_CELL_SPACING_UM = 10.0  # one cell per 10 µm × 10 µm on average
_DIRICHLET_CONCENTRATION = 0.7
_MIN_COMPOSITION_L1 = 0.5  # out of a maximum of 2
_MIN_CENTROID_DISTANCE = 2.0  # in latent units; ≈ 13 noise standard deviations
_LATENT_NOISE_SD = 0.15
_SEED_SPACING = 0.6  # × side / sqrt(n_regions); random sequential packing jams near 0.83
_LIBRARY_MEDIAN = 300.0
_LIBRARY_LOG_SD = 0.25  # 95 % of library sizes within about 180–490
# Fixed so that the output does not depend on the machine's thread count.
_CHUNK = 1 << 16


def _draw_separated(
    draw: Callable[[], np.ndarray],
    n_rows: int,
    min_dist: float,
    ord: float,
    max_rounds: int = 50,
) -> np.ndarray:
    """Random sequential packing: keep a candidate only if it is ``min_dist`` from all kept ones.

    When the threshold cannot be met (e.g. many rows in few dimensions) it is relaxed by 20 %
    and the packing restarts, so the call always ends and stays deterministic given ``draw``.
    """
    threshold = min_dist
    for _ in range(max_rounds):
        rows: list[np.ndarray] = []
        for _ in range(200 * n_rows):
            cand = draw()
            if not rows or np.linalg.norm(np.asarray(rows) - cand, ord=ord, axis=1).min() >= threshold:
                rows.append(cand)
                if len(rows) == n_rows:
                    return np.asarray(rows)
        threshold *= 0.8
    raise RuntimeError("could not draw separated points")  # pragma: no cover - threshold → 0


def _sample_categories(groups: np.ndarray, probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Draw one category per element from ``probs[groups[i]]`` by inverting the CDF."""
    out = np.empty(groups.shape[0], dtype=np.int32)
    u = rng.random(groups.shape[0])
    cdf = np.cumsum(probs, axis=1)
    n_cat = probs.shape[1]
    for g in range(probs.shape[0]):
        idx = np.flatnonzero(groups == g)
        # Clipping guards against a last CDF value of 1 - eps from rounding.
        out[idx] = np.minimum(np.searchsorted(cdf[g], u[idx], side="right"), n_cat - 1)
    return out


def _expression_chunk(
    latent: np.ndarray,
    library: np.ndarray,
    loadings: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Poisson counts for one chunk of cells, returned as CSR (data, indices, row nnz)."""
    logits = latent @ loadings
    logits -= logits.max(axis=1, keepdims=True)
    rates = np.exp(logits)
    rates *= (library / rates.sum(axis=1))[:, None]
    counts = rng.poisson(rates)
    rows, cols = np.nonzero(counts)  # row-major order, i.e. already CSR order
    return counts[rows, cols].astype(np.float32), cols.astype(np.int32), np.bincount(rows, minlength=len(latent))


def simulated_tissue(
    n_cells: int = 10_000,
    *,
    n_niche_types: int = 5,
    n_cell_types: int = 8,
    n_genes: int = 50,
    n_latent: int = 8,
    regions_per_niche_type: int = 3,
    random_state: int | None = 0,
) -> ad.AnnData:
    """Simulate a 2-D tissue made of spatial regions with known niche types.

    The tissue is built in four steps, each recorded exactly in the result:

    1. **Positions.** ``n_cells`` cells are placed uniformly at random in a square of side
       ``10 µm × sqrt(n_cells)``, so the density is one cell per 100 µm² whatever the size
       (neighbouring cells about 10 µm apart).
    2. **Regions.** ``n_niche_types * regions_per_niche_type`` region seeds are scattered in
       the square with a minimum spacing (random sequential packing, so regions have similar
       areas); each cell belongs to the region of its nearest seed (a Voronoi partition).
       The regions are dealt to niche types in a random order, ``regions_per_niche_type``
       regions per type. With few cells a small region may hold no cell.
    3. **Cell types.** Each niche type has a composition over cell types, a
       Dirichlet(0.7, …, 0.7) draw; draws are redrawn until every two niche types are at
       least 0.5 apart in L1 distance (out of 2; relaxed by 20 % steps only when that is
       impossible, e.g. many niche types and two cell types). Each cell's type is drawn
       independently from its niche type's composition.
    4. **Expression.** Each cell type has a latent centroid, a standard normal draw in
       ``n_latent`` dimensions, redrawn until all centroids are at least 2 apart (relaxed
       the same way). A cell's latent state is its type's centroid plus N(0, 0.15²) noise
       per dimension. With loadings ``W`` (``n_latent × n_genes``, N(0, 1/n_latent)
       entries) and a library size ``L`` (log-normal, median 300, log-sd 0.25), the counts
       are independent ``Poisson(L * softmax(latent @ W))`` per gene, so the expected total
       count of a cell is its library size.

    The same ``random_state`` gives an identical result on any machine and thread count.
    Everything is vectorised; 10⁶ cells take a few seconds and memory grows linearly with
    ``n_cells`` (about 0.5 GB per 10⁶ cells with the default 50 genes).

    Parameters
    ----------
    n_cells
        Number of cells, at least 100.
    n_niche_types
        Number of niche types, at least 1.
    n_cell_types
        Number of cell types, at least 2.
    n_genes
        Number of genes, at least 2.
    n_latent
        Dimension of the latent expression space, at least 1.
    regions_per_niche_type
        Number of spatially separate regions of each niche type, at least 1.
    random_state
        Seed of the random number generator; ``None`` draws fresh entropy.

    Returns
    -------
    AnnData with ``n_obs × n_vars = n_cells × n_genes``:

    ``.X``
        :class:`scipy.sparse.csr_matrix` of ``float32`` counts.
    ``.obs_names``, ``.var_names``
        ``'cell_0'``, ``'cell_1'``, … and ``'gene_0'``, ``'gene_1'``, …
    ``.obs['niche_type']``
        categorical, categories ``'niche_0'`` … ``'niche_{n_niche_types - 1}'``.
    ``.obs['region']``
        categorical, categories ``'region_0'`` … (all regions, even empty ones).
    ``.obs['cell_type']``
        categorical, categories ``'type_0'`` … ``'type_{n_cell_types - 1}'``.
    ``.obs['library_size']``
        ``float32`` expected total count of each cell.
    ``.obsm['spatial']``
        ``float64`` array ``(n_cells, 2)`` of positions in µm.
    ``.obsm['X_latent']``
        ``float32`` array ``(n_cells, n_latent)`` of latent states.
    ``.uns['simulated_tissue']``
        ``dict`` of ground truth:

        ``'composition'``
            ``(n_niche_types, n_cell_types)`` array; row ``k`` is the distribution of cell
            types in niche type ``k`` (rows sum to 1).
        ``'cell_type_centroids'``
            ``(n_cell_types, n_latent)`` array of latent centroids.
        ``'loadings'``
            ``(n_latent, n_genes)`` array ``W``.
        ``'latent_noise_sd'``
            the standard deviation of the latent noise, 0.15.
        ``'region_niche_type'``
            ``(n_regions,)`` integer array: the niche type of each region.
        ``'region_seeds'``
            ``(n_regions, 2)`` array of region seed positions in µm.
        ``'side'``
            side of the square in µm.
        ``'params'``
            the arguments of this call (``random_state`` omitted when ``None``).

    Examples
    --------
    >>> import spatialot as sot
    >>> adata = sot.datasets.simulated_tissue(2_000, n_niche_types=3, random_state=1)
    >>> adata.shape
    (2000, 50)
    >>> adata.uns["simulated_tissue"]["composition"].shape
    (3, 8)
    """
    n_cells = check_int("n_cells", n_cells, minimum=100)
    n_niche_types = check_int("n_niche_types", n_niche_types, minimum=1)
    n_cell_types = check_int("n_cell_types", n_cell_types, minimum=2)
    n_genes = check_int("n_genes", n_genes, minimum=2)
    n_latent = check_int("n_latent", n_latent, minimum=1)
    regions_per_niche_type = check_int("regions_per_niche_type", regions_per_niche_type, minimum=1)
    if random_state is not None:
        random_state = check_int("random_state", random_state, minimum=0)

    seed_seq = np.random.SeedSequence(random_state)
    main_seq, expr_seq = seed_seq.spawn(2)
    rng = np.random.default_rng(main_seq)

    # 1. positions
    side = _CELL_SPACING_UM * np.sqrt(n_cells)
    spatial = rng.uniform(0.0, side, size=(n_cells, 2))

    # 2. regions
    n_regions = n_niche_types * regions_per_niche_type
    seeds = _draw_separated(
        lambda: rng.uniform(0.0, side, size=2), n_regions, _SEED_SPACING * side / np.sqrt(n_regions), ord=2
    )
    region_niche = rng.permutation(np.repeat(np.arange(n_niche_types), regions_per_niche_type))
    region = cKDTree(seeds).query(spatial, workers=-1)[1].astype(np.int32)
    niche = region_niche[region]

    # 3. cell types
    alpha = np.full(n_cell_types, _DIRICHLET_CONCENTRATION)
    composition = _draw_separated(lambda: rng.dirichlet(alpha), n_niche_types, _MIN_COMPOSITION_L1, ord=1)
    cell_type = _sample_categories(niche, composition, rng)

    # 4. expression
    centroids = _draw_separated(
        lambda: rng.standard_normal(n_latent), n_cell_types, _MIN_CENTROID_DISTANCE, ord=2
    ).astype(np.float32)
    loadings = (rng.standard_normal((n_latent, n_genes)) / np.sqrt(n_latent)).astype(np.float32)
    library = rng.lognormal(np.log(_LIBRARY_MEDIAN), _LIBRARY_LOG_SD, size=n_cells).astype(np.float32)
    latent = centroids[cell_type]
    latent += rng.normal(0.0, _LATENT_NOISE_SD, size=latent.shape).astype(np.float32)

    # Poisson sampling dominates the run time; numpy releases the GIL inside it, so chunks run
    # in threads, each with its own generator so that the result ignores the thread count.
    starts = range(0, n_cells, _CHUNK)
    chunk_rngs = [np.random.default_rng(s) for s in expr_seq.spawn(len(starts))]
    try:
        n_workers = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        n_workers = os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=max(1, min(n_workers, len(starts)))) as pool:
        parts = list(
            pool.map(
                lambda i: _expression_chunk(
                    latent[starts[i] : starts[i] + _CHUNK],
                    library[starts[i] : starts[i] + _CHUNK],
                    loadings,
                    chunk_rngs[i],
                ),
                range(len(starts)),
            )
        )
    # Concatenate one field at a time and free its chunks, so the peak stays near 1.5 × X.
    data_parts, index_parts, nnz_parts = map(list, zip(*parts, strict=True))
    del parts
    data = np.concatenate(data_parts)
    del data_parts
    indices = np.concatenate(index_parts)
    del index_parts
    row_nnz = np.concatenate(nnz_parts)
    index_dtype = np.int32 if data.size < np.iinfo(np.int32).max else np.int64
    indptr = np.zeros(n_cells + 1, dtype=index_dtype)
    np.cumsum(row_nnz, out=indptr[1:])
    X = sp.csr_matrix((data, indices.astype(index_dtype, copy=False), indptr), shape=(n_cells, n_genes))

    def categorical(codes: np.ndarray, prefix: str, n: int) -> pd.Categorical:
        return pd.Categorical.from_codes(codes, categories=[f"{prefix}_{i}" for i in range(n)])

    obs = pd.DataFrame(
        {
            "niche_type": categorical(niche, "niche", n_niche_types),
            "region": categorical(region, "region", n_regions),
            "cell_type": categorical(cell_type, "type", n_cell_types),
            "library_size": library,
        },
        index=pd.Index("cell_" + pd.RangeIndex(n_cells).astype(str)),
    )
    var = pd.DataFrame(index=pd.Index([f"gene_{j}" for j in range(n_genes)]))

    params = {
        "n_cells": n_cells,
        "n_niche_types": n_niche_types,
        "n_cell_types": n_cell_types,
        "n_genes": n_genes,
        "n_latent": n_latent,
        "regions_per_niche_type": regions_per_niche_type,
        "random_state": random_state,
    }
    truth = {
        "composition": composition,
        "cell_type_centroids": centroids,
        "loadings": loadings,
        "latent_noise_sd": _LATENT_NOISE_SD,
        "region_niche_type": region_niche,
        "region_seeds": seeds,
        "side": float(side),
        # h5ad cannot store None
        "params": {k: v for k, v in params.items() if v is not None},
    }
    return ad.AnnData(
        X=X,
        obs=obs,
        var=var,
        obsm={"spatial": spatial, "X_latent": latent},
        uns={"simulated_tissue": truth},
    )
