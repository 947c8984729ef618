"""Niche index builders on plain arrays: coordinates or a graph in, padded index rows out."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.spatial import cKDTree

PAD = -1
"""Index stored in padded slots of a niche index."""
_QUERY_CHUNK = 1 << 16


def _index_dtype(n_obs: int) -> type:
    return np.int32 if n_obs < np.iinfo(np.int32).max else np.int64


def _library_groups(n_obs: int, library_codes: np.ndarray | None) -> list[np.ndarray]:
    """Positions of the cells of each library (one group of all cells without libraries)."""
    if library_codes is None:
        return [np.arange(n_obs)]
    order = np.argsort(library_codes, kind="stable")
    boundaries = np.flatnonzero(np.diff(library_codes[order])) + 1
    return np.split(order, boundaries)


def knn_niche_indices(
    coordinates: np.ndarray,
    k: int,
    *,
    include_center: bool = True,
    library_codes: np.ndarray | None = None,
    library_names: np.ndarray | None = None,
) -> np.ndarray:
    """Indices of the ``k`` cells of each cell's niche, by nearest spatial neighbours.

    Parameters
    ----------
    coordinates
        Array ``(n_obs, n_dims)`` of spatial coordinates.
    k
        Niche size. With ``include_center`` the niche is the cell itself (column 0) and its
        ``k - 1`` nearest neighbours; without, its ``k`` nearest neighbours.
    include_center
        Whether the cell belongs to its own niche.
    library_codes
        Integer library of every cell; neighbours are searched within a library only.
    library_names
        Names of the libraries, indexed by code, for error messages.

    Returns
    -------
    Integer array ``(n_obs, k)`` of positions of cells.
    """
    n_obs = coordinates.shape[0]
    n_neighbours = k - 1 if include_center else k
    neighbours = np.empty((n_obs, n_neighbours), dtype=_index_dtype(n_obs))
    for cells in _library_groups(n_obs, library_codes):
        if len(cells) <= n_neighbours:
            where = "" if library_codes is None else f" in library {library_names[library_codes[cells[0]]]!r}"
            raise ValueError(
                f"`k`={k} needs more than {n_neighbours} cells per sample, but there are only {len(cells)}{where}. "
                "Lower `k`."
            )
        if n_neighbours == 0:
            continue
        tree = cKDTree(coordinates[cells], balanced_tree=False, compact_nodes=False)
        # queried in chunks: the float64 distances and int64 indices of the whole query would
        # take several times the memory of the index itself
        for start in range(0, len(cells), _QUERY_CHUNK):
            chunk = np.arange(start, min(start + _QUERY_CHUNK, len(cells)))
            # one extra neighbour, so that the cell itself can be dropped wherever it appears
            _, local = tree.query(coordinates[cells[chunk]], k=n_neighbours + 1, workers=-1)
            is_self = local == chunk[:, None]
            # ties at distance zero (duplicated coordinates) may push the cell out of its own list
            is_self[~is_self.any(axis=1), -1] = True
            neighbours[cells[chunk]] = cells[local[~is_self].reshape(len(chunk), n_neighbours)]
    if not include_center:
        return neighbours
    centers = np.arange(n_obs, dtype=neighbours.dtype)[:, None]
    return np.concatenate([centers, neighbours], axis=1)


def radius_graph(coordinates: np.ndarray, radius: float, *, library_codes: np.ndarray | None = None) -> sp.csr_matrix:
    """Adjacency of all pairs of cells of the same library closer than ``radius``.

    Parameters
    ----------
    coordinates
        Array ``(n_obs, n_dims)`` of spatial coordinates.
    radius
        Largest distance between neighbours, in the units of ``coordinates``.
    library_codes
        Integer library of every cell; pairs never cross libraries.

    Returns
    -------
    Boolean CSR matrix ``(n_obs, n_obs)``, without its diagonal.
    """
    n_obs = coordinates.shape[0]
    rows, cols = [], []
    for cells in _library_groups(n_obs, library_codes):
        tree = cKDTree(coordinates[cells])
        # a structured array keeps pairs at distance zero, which sparse outputs would drop
        pairs = tree.sparse_distance_matrix(tree, radius, output_type="ndarray")
        rows.append(cells[pairs["i"]])
        cols.append(cells[pairs["j"]])
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    off_diagonal = rows != cols
    data = np.ones(off_diagonal.sum(), dtype=bool)
    return sp.csr_matrix((data, (rows[off_diagonal], cols[off_diagonal])), shape=(n_obs, n_obs))


def graph_niche_indices(graph: sp.spmatrix, *, include_center: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Padded niche indices from an adjacency matrix: each cell's niche is its graph neighbours.

    Parameters
    ----------
    graph
        Sparse ``(n_obs, n_obs)`` adjacency; explicit non-zero entries off the diagonal are edges.
    include_center
        Whether the cell itself opens its niche (column 0).

    Returns
    -------
    ``(indices, mask)``: integer array ``(n_obs, max_size)`` padded with ``-1`` and the boolean
    mask of real entries.
    """
    graph = sp.csr_matrix(graph, copy=True)
    graph.sum_duplicates()  # an edge stored twice is one member, not two
    graph.setdiag(0)
    graph.eliminate_zeros()
    n_obs = graph.shape[0]
    sizes = np.diff(graph.indptr) + int(include_center)
    max_size = int(sizes.max()) if n_obs else 0
    indices = np.full((n_obs, max_size), PAD, dtype=_index_dtype(n_obs))
    mask = np.arange(max_size)[None, :] < sizes[:, None]
    if include_center:
        indices[:, 0] = np.arange(n_obs)
        neighbour_slots = mask.copy()
        neighbour_slots[:, 0] = False
    else:
        neighbour_slots = mask
    # row-major boolean assignment fills each row's slots with that row's CSR columns, in order
    indices[neighbour_slots] = graph.indices
    return indices, mask


def _rank_dtype(max_size: int) -> type:
    return np.int16 if max_size < np.iinfo(np.int16).max else np.int32


def member_matrix(indices: np.ndarray, mask: np.ndarray | None = None) -> tuple[sp.csr_matrix, np.ndarray]:
    """Padded niche index rows as a sparse cell × cell matrix of member ranks, and the niche sizes.

    Entry ``(i, j)`` is ``r + 1`` when cell ``j`` is in slot ``r`` of cell ``i``'s row. Stored in
    ``.obsp``, AnnData subsets, reorders and concatenates it along with the cells, and the order
    of the members survives in the values. The sizes let a reader tell a niche that lost members
    to a subset from a smaller one.

    Parameters
    ----------
    indices
        Integer array ``(n_obs, max_size)`` of cell positions.
    mask
        Boolean array of the real slots (a prefix of every row); all slots when ``None``.

    Returns
    -------
    ``(matrix, sizes)``: the CSR matrix ``(n_obs, n_obs)``, whose row ``i`` lists the members
    of niche ``i`` in slot order, and the integer size of every niche.

    Examples
    --------
    >>> matrix, sizes = member_matrix(np.array([[0, 1], [1, 0]]))
    >>> matrix.toarray()
    array([[1, 2],
           [2, 1]], dtype=int16)
    """
    n_obs, max_size = indices.shape
    rank_dtype = _rank_dtype(max_size)
    if mask is None:
        sizes = np.full(n_obs, max_size, dtype=rank_dtype)
        ranks = np.tile(np.arange(1, max_size + 1, dtype=rank_dtype), n_obs)
        columns = indices.ravel()  # a view: the index is not copied
    else:
        sizes = mask.sum(axis=1).astype(rank_dtype)
        ranks = np.broadcast_to(np.arange(1, max_size + 1, dtype=rank_dtype), indices.shape)[mask]
        columns = indices[mask]
    pointers = np.zeros(n_obs + 1, dtype=np.int64)
    np.cumsum(sizes, out=pointers[1:])
    matrix = sp.csr_matrix((ranks, columns, pointers), shape=(n_obs, n_obs))
    return matrix, sizes
