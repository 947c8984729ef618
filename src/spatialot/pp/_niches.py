"""``sot.pp.niches``: each cell's spatial neighbourhood as a point cloud in expression space."""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
from anndata import AnnData
from scanpy import logging as logg

from .._anndata import check_writable, get_coordinates, get_features, get_library_codes, h5ad_params
from .._docs import inject_docs
from .._keys import NicheKeys
from .._validation import check_int
from ._build import graph_niche_indices, knn_niche_indices, member_matrix, radius_graph


@inject_docs
def niches(
    adata: AnnData,
    k: int = 8,
    *,
    radius: float | None = None,
    spatial_key: str = "spatial",
    library_key: str | None = None,
    use_rep: str | None = None,
    layer: str | None = None,
    include_center: bool = True,
    connectivity_key: str | None = None,
    key_added: str = "niche",
    copy: bool = False,
) -> AnnData | None:
    """Define every cell's niche: the point cloud of the expression of its spatial neighbours.

    A niche is a small empirical distribution in feature space (``.X``, a layer, or a
    representation such as ``'X_pca'``), one point per neighbouring cell with uniform weights.
    Only indices are stored, never copies of the clouds; the clouds of any set of cells are
    gathered when needed with :func:`spatialot.get.niche_clouds`.

    Neighbours are, in order of precedence: the cells adjacent in an existing spatial graph
    ``.obsp[connectivity_key]`` (e.g. from :func:`squidpy.gr.spatial_neighbors`, variable size);
    all cells within ``radius`` (variable size); or the ``k`` nearest cells. Neighbours never
    cross samples of ``library_key``.

    Parameters
    ----------
    adata
        Annotated data matrix with spatial coordinates in ``.obsm[spatial_key]`` (2-D or 3-D).
    k
        Number of cells in each niche for k-nearest-neighbour niches, the cell itself included
        when ``include_center`` (so ``k - 1`` neighbours), otherwise ``k`` neighbours. Ignored
        when ``radius`` or ``connectivity_key`` is given.
    radius
        If given, a niche holds every cell within this distance (in the units of the
        coordinates), so niche sizes vary.
    spatial_key
        Key in ``.obsm`` of the spatial coordinates.
    library_key
        Column of ``.obs`` naming the sample of each cell; niches never mix samples.
    use_rep
        Key in ``.obsm`` of the features the clouds live in (e.g. ``'X_pca'``). Default: ``.X``.
    layer
        Layer to use as features instead of ``.X``.
    include_center
        Whether a cell belongs to its own niche. When ``True``, the cell is the first entry
        of its row.
    connectivity_key
        Key in ``.obsp`` of an existing spatial graph (``'spatial_connectivities'`` after
        :func:`squidpy.gr.spatial_neighbors`); its neighbours define the niches.
    key_added
        Prefix of the keys written (see Returns).
    {copy}

    Returns
    -------
    ``None``, or a copy of ``adata`` when ``copy=True``, with:

    ``.obsp['{key_added}_members']``
        Sparse integer matrix ``(n_obs, n_obs)``: entry ``(i, j)`` is ``r + 1`` when cell ``j``
        is the ``r``-th member of cell ``i``'s niche (``r = 0``, the diagonal, is the cell
        itself when ``include_center``). Stored cell × cell, as squidpy stores graphs, so that
        subsetting, reordering or concatenating cells (``anndata.concat(..., pairwise=True)``)
        keeps every niche right; where a subset leaves out members of a niche,
        :func:`spatialot.get.niche_clouds` and every tool refuse with an error that names a cell.
    ``.obs['{key_added}_size']``
        Number of members of every niche, with which lost members are told apart.
    ``.uns['{key_added}']['params']``
        The parameters above, plus ``max_size``.

    Raises
    ------
    KeyError
        If ``spatial_key``, ``library_key``, ``use_rep``, ``layer`` or ``connectivity_key`` is
        missing.
    ValueError
        On an AnnData without cells, non-numeric or non-finite coordinates, NaN or infinite
        features, a ``k`` that is not a positive integer or is larger than a sample, a
        non-positive ``radius``, or an empty niche. ``adata`` is left untouched when an error
        is raised.

    Examples
    --------
    >>> import spatialot as sot
    >>> adata = sot.datasets.bdtnp()
    >>> sot.pp.niches(adata, k=8)
    >>> clouds = sot.get.niche_clouds(adata)[:16]  # a padded batch of 16 niches
    """
    check_writable(adata, copy)
    start = logg.info("computing niches")
    keys = NicheKeys(key_added)
    if adata.n_obs == 0:
        raise ValueError("`adata` has no cells (n_obs=0): there are no niches to build.")
    coordinates = get_coordinates(adata, spatial_key)
    library_codes, library_names = get_library_codes(adata, library_key)
    get_features(adata, use_rep=use_rep, layer=layer)  # fail now, not when the clouds are gathered
    if connectivity_key is not None and radius is not None:
        raise ValueError("Pass at most one of `radius` and `connectivity_key`.")

    if connectivity_key is not None:
        if connectivity_key not in adata.obsp:
            raise KeyError(
                f"`connectivity_key`={connectivity_key!r} is not in `adata.obsp` (keys: {list(adata.obsp)}). "
                "Build a graph with `squidpy.gr.spatial_neighbors` first, or pass `k` or `radius`."
            )
        graph = sp.csr_matrix(adata.obsp[connectivity_key])
        if library_codes is not None:
            graph = _drop_cross_library_edges(graph, library_codes)
        indices, mask = graph_niche_indices(graph, include_center=include_center)
        mode: dict[str, Any] = {"connectivity_key": connectivity_key}
    elif radius is not None:
        if isinstance(radius, bool) or not isinstance(radius, int | float | np.number) or not radius > 0:
            raise ValueError(f"`radius` must be a positive number, got {radius!r}.")
        graph = radius_graph(coordinates, radius, library_codes=library_codes)
        indices, mask = graph_niche_indices(graph, include_center=include_center)
        mode = {"radius": float(radius)}
    else:
        k = check_int("k", k)
        indices = knn_niche_indices(
            coordinates,
            k,
            include_center=include_center,
            library_codes=library_codes,
            library_names=library_names,
        )
        mask = None
        mode = {"k": k}

    sizes = indices.shape[1] if mask is None else mask.sum(axis=1)
    if np.min(sizes, initial=indices.shape[1]) == 0:
        empty = int(np.argmin(sizes))
        raise ValueError(
            f"Cell {adata.obs_names[empty]!r} has an empty niche: no neighbour within `radius` or in the graph. "
            "Increase `radius`, or set `include_center=True`."
        )

    members, niche_sizes = member_matrix(indices, mask)
    adata = adata.copy() if copy else adata
    adata.obsp[keys.members] = members
    adata.obs[keys.size] = niche_sizes
    for legacy in keys.legacy:  # row positions left by an earlier version would no longer match
        adata.obsm.pop(legacy, None)
    params = {
        **mode,
        "spatial_key": spatial_key,
        "library_key": library_key,
        "use_rep": use_rep,
        "layer": layer,
        "include_center": include_center,
        "max_size": int(indices.shape[1]),
    }
    adata.uns[keys.uns] = {"params": h5ad_params(params)}
    logg.info(
        "    finished",
        time=start,
        deep=f"added\n    '{keys.members}', niche members (adata.obsp)\n    '{keys.size}', niche sizes (adata.obs)"
        f"\n    '{keys.uns}', parameters (adata.uns)",
    )
    return adata if copy else None


def _drop_cross_library_edges(graph: sp.csr_matrix, library_codes: np.ndarray) -> sp.csr_matrix:
    coo = graph.tocoo()
    same_library = library_codes[coo.row] == library_codes[coo.col]
    return sp.csr_matrix((coo.data[same_library], (coo.row[same_library], coo.col[same_library])), shape=graph.shape)
