"""What the ``tl`` front-ends share: reading niches and writing results under ``key_added``."""

from __future__ import annotations

from typing import Any

import numpy as np
from anndata import AnnData

from .._anndata import h5ad_params
from .._keys import ResultKeys


def write_result(
    adata: AnnData,
    key_added: str,
    *,
    params: dict[str, Any],
    embedding: np.ndarray | None = None,
    **fields: Any,
) -> ResultKeys:
    """Store a tool's result: ``.obsm['X_<key_added>']`` and ``.uns[key_added]`` = params + fields.

    Values must be what h5ad can write (numpy arrays, numbers, strings, dicts of them); None
    parameters are dropped. Returns the keys written.
    """
    keys = ResultKeys(key_added)
    if embedding is not None:
        adata.obsm[keys.obsm] = np.asarray(embedding)
    adata.uns[keys.uns] = {"params": h5ad_params(params), **fields}
    return keys
