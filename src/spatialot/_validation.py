"""The argument checks every layer shares, each with one wording: integers, keys, finite values.

It also holds :func:`as_tensor`, the one conversion of user arrays to torch tensors. This module
imports nothing else of spatialot, so that every layer (``ot`` included) may use it.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

FLOAT32_MAX = float(np.finfo(np.float32).max)
"""Largest value the float32 tensors of the models can hold."""

# what h5py (h5ad) and zarr cannot hold in a group or dataset name: '/' nests groups, so
# "run/1" is written as group "run" holding "1" and the file no longer reads back
_KEY_FORBIDDEN = ("/", "\x00")
_KEY_RESERVED = (".", "..")


def as_tensor(
    values: Any, *, dtype: torch.dtype | None = None, device: torch.device | str | None = None
) -> torch.Tensor:
    """``values`` as a tensor, sharing memory with a numpy array where torch can.

    :func:`torch.as_tensor` refuses numpy arrays with a negative stride (``x[::-1]``, ``np.flip``)
    and warns on read-only ones (``np.broadcast_to``, arrays a caller protects): those, and only
    those, are copied first. Every user array entering a solver or a model goes through here.

    Parameters
    ----------
    values
        A tensor, a numpy array (any strides, read-only or not) or anything
        :func:`torch.as_tensor` takes.
    dtype, device
        As in :func:`torch.as_tensor`.

    Returns
    -------
    The tensor.

    Examples
    --------
    >>> as_tensor(np.arange(3.0)[::-1])
    tensor([2., 1., 0.], dtype=torch.float64)
    """
    if isinstance(values, np.ndarray) and (not values.flags.writeable or any(stride < 0 for stride in values.strides)):
        values = values.copy()
    return torch.as_tensor(values, dtype=dtype, device=device)


def check_int(name: str, value: Any, *, minimum: int = 1, maximum: int | None = None, why: str = "") -> int:
    """``value`` as a Python ``int``, or a ``ValueError`` naming the argument.

    Parameters
    ----------
    name
        Name of the argument, as the user typed it.
    value
        What the user passed: an ``int`` or numpy integer (``bool`` and floats such as ``2.0``
        are refused).
    minimum, maximum
        Inclusive bounds; ``maximum=None`` for none.
    why
        Reason for the bounds, appended to the message (e.g. ``"the loss compares pairs"``).

    Returns
    -------
    The integer.

    Examples
    --------
    >>> check_int("n_steps", 10)
    10
    >>> check_int("n_steps", 2.5)
    Traceback (most recent call last):
    ...
    ValueError: `n_steps` must be an integer >= 1, got 2.5.
    """
    bounds = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
    because = f" ({why})" if why else ""
    try:
        number = operator.index(value) if not isinstance(value, bool) else None
    except TypeError:
        number = None
    if number is None or number < minimum or (maximum is not None and number > maximum):
        raise ValueError(f"`{name}` must be an integer {bounds}{because}, got {value!r}.")
    return int(number)


def check_key(name: str, value: Any) -> str:
    """``value`` if it can name an entry of ``.obsm``, ``.obsp`` or ``.uns`` in an h5ad file, else a ``ValueError``.

    Parameters
    ----------
    name
        Name of the argument (``'key_added'``…).
    value
        The key.

    Returns
    -------
    The key.

    Examples
    --------
    >>> check_key("key_added", "run_1")
    'run_1'
    >>> check_key("key_added", "run/1")
    Traceback (most recent call last):
    ...
    ValueError: `key_added` must be a non-empty string without '/' that h5ad files can store, got 'run/1'.
    """
    if (
        not isinstance(value, str)
        or not value
        or value in _KEY_RESERVED
        or any(character in value for character in _KEY_FORBIDDEN)
    ):
        raise ValueError(f"`{name}` must be a non-empty string without '/' that h5ad files can store, got {value!r}.")
    return value


_CHECK_VALUES = 1 << 22
"""Values :func:`check_finite` tests at once."""


def check_finite(values: Any, what: str, remedy: str) -> None:
    """Raise a ``ValueError`` if ``values`` (array, sparse matrix or number) holds NaN or infinity.

    Parameters
    ----------
    values
        Numbers to check; non-floating arrays are always finite.
    what
        What the values are, for the message (e.g. ``"`use_rep`='X_pca' (adata.obsm['X_pca'])"``).
    remedy
        What the user should do, ending the message.

    Examples
    --------
    >>> check_finite(np.array([1.0, np.inf]), "`points`", "drop the infinite points")
    Traceback (most recent call last):
    ...
    ValueError: `points` holds NaN or infinite values: drop the infinite points.
    """
    array = values.data if sp.issparse(values) else np.asarray(values)
    if not np.issubdtype(array.dtype, np.inexact):
        return
    # block by block along the first axis: the boolean temporary of a large array stays small
    if array.ndim == 0 or array.size <= _CHECK_VALUES:
        blocks = [array]
    else:
        rows = max(1, _CHECK_VALUES // (array.size // len(array)))
        blocks = (array[start : start + rows] for start in range(0, len(array), rows))
    if not all(np.isfinite(block).all() for block in blocks):
        raise ValueError(f"{what} holds NaN or infinite values: {remedy}.")


def check_float32_range(values: Any, what: str) -> None:
    """Raise a ``ValueError`` if ``values`` overflow float32, or overflowed to infinity, saying to scale the features.

    Parameters
    ----------
    values
        Numbers the models will hold in float32 (features, or scales derived from them).
    what
        What the values are, for the message.

    Examples
    --------
    >>> check_float32_range(np.array([1.0, 1e20]), "The features")  # fits: 1e20 < 3.4e38
    """
    array = values.data if sp.issparse(values) else np.asarray(values)
    if not np.issubdtype(array.dtype, np.floating) or array.size == 0:
        return  # integers fit float32's range
    # two reductions rather than np.abs, which would copy a feature matrix; an overflow to inf
    # in a float32 computation counts as exceeding the range
    largest = max(float(array.max()), -float(array.min()))
    if not largest <= FLOAT32_MAX:
        raise ValueError(
            f"{what} exceeds the float32 range (largest magnitude {largest:.3g}): scale the features down "
            "(e.g. divide them by their largest absolute value) before building the niches."
        )
