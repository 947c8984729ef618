"""Reading what spatialot needs out of an AnnData, with errors that name the argument."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from ._validation import check_finite, check_float32_range

_CHECK_ROWS = 1 << 16
"""Rows checked at a time, so that a check never holds more than a block of a large table."""


def get_features(adata: AnnData, *, use_rep: str | None = None, layer: str | None = None, check_values: bool = True):
    """Per-cell features: ``.obsm[use_rep]``, ``.layers[layer]`` or ``.X`` (dense or sparse, not copied).

    The features may stay on disk: ``.X`` of an AnnData read with ``backed='r'`` (an
    ``h5py.Dataset``, or anndata's sparse dataset) and memory-mapped arrays (``np.load(path,
    mmap_mode='r')`` put in ``.obsm``, ``.layers`` or ``.X``) are returned as they are, and the
    niches read from them only the rows they gather.

    Parameters
    ----------
    adata
        Annotated data matrix, in memory or backed.
    use_rep, layer
        Where the features are; ``.X`` when both are ``None``.
    check_values
        Refuse NaN, infinite values and values that overflow the models' float32. The check
        reads the table in blocks of ``2**16`` rows.

    Raises
    ------
    KeyError
        If ``use_rep`` or ``layer`` is not in the AnnData.
    ValueError
        If both are given, the features are not a 2-D numeric matrix, or (with
        ``check_values``) hold NaN, infinite or too large values.

    Examples
    --------
    >>> import spatialot as sot
    >>> adata = sot.datasets.bdtnp()
    >>> get_features(adata).shape
    (3039, 84)
    """
    if use_rep is not None and layer is not None:
        raise ValueError("Pass at most one of `use_rep` and `layer`.")
    if use_rep is not None:
        if use_rep not in adata.obsm:
            raise KeyError(f"`use_rep`={use_rep!r} is not in `adata.obsm` (keys: {list(adata.obsm)}).")
        features, name = adata.obsm[use_rep], f"`use_rep`={use_rep!r} (adata.obsm[{use_rep!r}])"
    elif layer is not None:
        if layer not in adata.layers:
            raise KeyError(f"`layer`={layer!r} is not in `adata.layers` (keys: {list(adata.layers)}).")
        features, name = adata.layers[layer], f"`layer`={layer!r} (adata.layers[{layer!r}])"
    else:
        if adata.X is None:
            raise ValueError("`adata.X` is empty: pass `use_rep` or `layer`.")
        features, name = adata.X, "`adata.X` (the features when neither `use_rep` nor `layer` is given)"
    if hasattr(features, "to_numpy"):  # a DataFrame in .obsm
        features = features.to_numpy()
    if not (sp.issparse(features) or is_on_disk(features)):
        features = np.asarray(features)
    shape = tuple(features.shape)
    if len(shape) != 2 or shape[1] == 0:
        raise ValueError(f"{name} must be a 2-D matrix with at least one column, got shape {shape}.")
    if not np.issubdtype(features.dtype, np.number):
        raise ValueError(f"{name} must be numeric, got dtype {features.dtype}.")
    if check_values:
        # a table on disk is read a block at a time; one in memory is checked at once
        blocks = (
            (features[start : start + _CHECK_ROWS] for start in range(0, shape[0], _CHECK_ROWS))
            if is_on_disk(features)
            else [features]
        )
        for block in blocks:
            check_finite(block, name, "impute or drop them first")
            if features.dtype.itemsize > 4:  # finite float32 (or narrower) values fit by construction
                check_float32_range(block, name)
    return features


def is_on_disk(features) -> bool:
    """Whether ``features`` is a table on disk read by rows: an ``h5py.Dataset`` or anndata's backed sparse dataset."""
    return (
        hasattr(features, "shape")
        and hasattr(features, "dtype")
        and type(features).__module__.startswith(("h5py", "anndata"))
    )


def check_writable(adata: AnnData, copy: bool) -> None:
    """Refuse, before any work is done, what anndata cannot write to when ``adata`` is backed on disk.

    Raises
    ------
    ValueError
        If ``adata`` is backed and ``copy`` is true (anndata copies a backed object only to
        another file), or ``adata`` is a view of a backed object (writing into a view copies it).

    Examples
    --------
    >>> import anndata as ad
    >>> check_writable(ad.AnnData(np.zeros((2, 2))), True)
    """
    if not adata.isbacked:
        return
    if copy:
        raise ValueError(
            f"`copy=True` needs an AnnData in memory, but `adata` is backed on disk ({adata.filename}): pass "
            "`copy=False` to write the results into `adata` (in memory beside the file; save them with "
            "`adata.write()` when it was opened with backed='r+'), or load it with `adata.to_memory()`."
        )
    if adata.is_view:
        raise ValueError(
            f"`adata` is a view of an AnnData backed on disk ({adata.filename}), which results cannot be "
            "written into: load the subset with `adata = adata.to_memory()` (the features of a subset are "
            "read at once), or run on the whole backed AnnData."
        )


def get_coordinates(adata: AnnData, spatial_key: str) -> np.ndarray:
    """Spatial coordinates ``.obsm[spatial_key]`` as a float array ``(n_obs, n_dims)``.

    Raises
    ------
    KeyError
        If ``spatial_key`` is not in ``.obsm``.
    ValueError
        If the coordinates are not a numeric ``(n_obs, n_dims)`` matrix of finite values.
    """
    if spatial_key not in adata.obsm:
        raise KeyError(
            f"`spatial_key`={spatial_key!r} is not in `adata.obsm` (keys: {list(adata.obsm)}). "
            "Spatial coordinates are expected there, as squidpy does."
        )
    coordinates = adata.obsm[spatial_key]
    coordinates = np.asarray(coordinates.to_numpy() if hasattr(coordinates, "to_numpy") else coordinates)
    name = f"`spatial_key`={spatial_key!r} (adata.obsm[{spatial_key!r}])"
    if not np.issubdtype(coordinates.dtype, np.number):
        raise ValueError(f"{name} must hold numbers, got dtype {coordinates.dtype}: convert the coordinates to floats.")
    coordinates = coordinates.astype(np.float64, copy=False)
    if coordinates.ndim != 2 or coordinates.shape[1] == 0:
        raise ValueError(f"{name} must have shape (n_obs, n_dims), got {coordinates.shape}.")
    check_finite(coordinates, name, "drop the cells without a position first")
    return coordinates


def get_library_codes(adata: AnnData, library_key: str | None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Integer library of every cell and the library names, or ``(None, None)`` without a key."""
    if library_key is None:
        return None, None
    if library_key not in adata.obs:
        raise KeyError(f"`library_key`={library_key!r} is not a column of `adata.obs` (columns: {list(adata.obs)}).")
    column = adata.obs[library_key]
    if column.isna().any():
        raise ValueError(f"`adata.obs[{library_key!r}]` has missing values; every cell needs a library.")
    names, codes = np.unique(column.astype(str).to_numpy(), return_inverse=True)
    return codes, names


def h5ad_params(params: dict) -> dict:
    """Parameters as they can be stored in ``.uns``: h5ad cannot store None, so absent means "not used"."""
    return {name: value for name, value in params.items() if value is not None}


def cell_positions(adata: AnnData, cells, argument: str = "cells") -> np.ndarray:
    """Positions of ``cells`` in ``adata``: given as ``obs_names``, integer positions or a boolean mask.

    Raises
    ------
    KeyError
        If a name is not in ``adata.obs_names``.
    ValueError
        If a position is out of range, a mask has the wrong length, a name is shared by several
        cells, or nothing is selected.
    """
    values = np.asarray(cells)
    if values.ndim == 0:
        values = values[None]
    if values.dtype == bool:
        if values.shape != (adata.n_obs,):
            raise ValueError(
                f"A boolean `{argument}` must have one entry per cell ({adata.n_obs}), got shape {values.shape}."
            )
        positions = np.flatnonzero(values)
    elif np.issubdtype(values.dtype, np.integer):
        positions = values.astype(np.intp)
        if len(positions) and (positions.min() < -adata.n_obs or positions.max() >= adata.n_obs):
            raise ValueError(f"`{argument}` holds positions outside [0, {adata.n_obs}).")
        positions = positions % adata.n_obs
    else:  # names, possibly mixed with positions
        values = np.asarray(cells, dtype=object).ravel()
        names = np.array([str(value) for value in values if isinstance(value, str)])
        missing = names[~np.isin(names, adata.obs_names)]
        if len(missing):
            raise KeyError(f"`{argument}` names cells not in `adata.obs_names`, e.g. {str(missing[0])!r}.")
        # a name that several cells share has no one position
        shared = adata.obs_names[adata.obs_names.duplicated()]
        ambiguous = names[np.isin(names, shared)]
        if len(ambiguous):
            raise ValueError(
                f"`{argument}` names {str(ambiguous[0])!r}, which several cells of `adata.obs_names` share: "
                "call `adata.obs_names_make_unique()`, or pass integer positions."
            )
        positions = np.array(
            [adata.obs_names.get_loc(value) if isinstance(value, str) else int(value) for value in values],
            dtype=np.intp,
        )
        return cell_positions(adata, positions, argument)
    if positions.size == 0:
        raise ValueError(f"`{argument}` selects no cell.")
    return positions
