"""What the ``tl`` front-ends share: writing results under ``key_added``, never a non-finite one."""

from __future__ import annotations

from typing import Any

import numpy as np
from anndata import AnnData

from .._anndata import h5ad_params
from .._keys import ResultKeys
from .._validation import check_finite


def write_result(
    adata: AnnData,
    keys: ResultKeys,
    *,
    params: dict[str, Any],
    embedding: np.ndarray | None = None,
    **fields: Any,
) -> ResultKeys:
    """Store a tool's result: ``.obsm['X_<key_added>']`` and ``.uns[key_added]`` = params + fields.

    Parameters
    ----------
    adata
        Where to write.
    keys
        The keys, made (and so checked) from ``key_added`` when the tool started.
    params
        Parameters of the call; None values are dropped, as h5ad cannot store them.
    embedding
        Per-cell array for ``.obsm``.
    **fields
        Further entries of ``.uns[key_added]``: what h5ad can write (numpy arrays, numbers,
        strings, dicts of them).

    Returns
    -------
    The keys written.

    Raises
    ------
    ValueError
        If the embedding or a field holds NaN or infinite values (a diverged model, or extreme
        features); nothing is written then.

    Examples
    --------
    >>> import anndata as ad
    >>> import numpy as np
    >>> adata = ad.AnnData(np.zeros((3, 2)))
    >>> write_result(adata, ResultKeys("demo"), params={"k": 3}, embedding=np.ones((3, 2))).obsm
    'X_demo'
    """
    results = {keys.obsm: embedding} if embedding is not None else {}
    results |= {f"{keys.uns}/{name}": value for name, value in fields.items()}
    for name, value in results.items():
        check_result(name, value)
    if embedding is not None:
        adata.obsm[keys.obsm] = np.asarray(embedding)
    adata.uns[keys.uns] = {"params": h5ad_params(params), **fields}
    return keys


def check_result(name: str, value: Any) -> None:
    """Refuse a result that holds NaN or infinite values, before anything is written to ``adata``.

    Parameters
    ----------
    name
        Where the result would go, for the message.
    value
        The result: an array, a sparse matrix or a number.

    Examples
    --------
    >>> check_result("X_demo", np.ones(3))
    """
    check_finite(
        value,
        f"The result {name!r}",
        "nothing was written to `adata`. The model may have diverged, or the features hold extreme "
        "values: train again with a lower learning rate, or scale the features",
    )
