"""``sot.get.niche_clouds``: the niche index of an AnnData as a lazily gathered family of clouds."""

from __future__ import annotations

import numpy as np
from anndata import AnnData

from .._anndata import get_features
from .._keys import NicheKeys
from ..ot import IndexedClouds


def niche_clouds(adata: AnnData, *, niche_key: str = "niche") -> IndexedClouds:
    """The niches of every cell as point clouds, gathered on demand.

    Parameters
    ----------
    adata
        Annotated data matrix on which :func:`spatialot.pp.niches` ran.
    niche_key
        The ``key_added`` of that call.

    Returns
    -------
    :class:`~spatialot.ot.IndexedClouds` over the features the niches were built on (as
    recorded in ``.uns[niche_key]['params']``). Index it with cell positions, a boolean mask or
    a slice to get a padded :class:`~spatialot.ot.PointClouds` batch (points, mask, uniform
    weights); its ``gather`` method also takes a device and dtype.

    Examples
    --------
    >>> import spatialot as sot
    >>> adata = sot.datasets.bdtnp()
    >>> sot.pp.niches(adata, k=8)
    >>> batch = sot.get.niche_clouds(adata)[[0, 5, 9]]
    >>> batch.points.shape
    torch.Size([3, 8, 84])
    """
    keys = NicheKeys(niche_key)
    if keys.uns not in adata.uns or keys.indices not in adata.obsm:
        raise KeyError(
            f"No niches under `niche_key`={niche_key!r}: run `sot.pp.niches(adata, key_added={niche_key!r})`."
        )
    params = adata.uns[keys.uns]["params"]
    if int(params["n_obs"]) != adata.n_obs:
        raise ValueError(
            f"The niches under {niche_key!r} were built on {params['n_obs']} cells but `adata` has {adata.n_obs}: "
            "their indices no longer point at the right cells. Run `sot.pp.niches` again on this AnnData."
        )
    indices = np.asarray(adata.obsm[keys.indices])
    mask = adata.obsm[keys.mask] if keys.mask in adata.obsm else None
    features = get_features(adata, use_rep=params.get("use_rep"), layer=params.get("layer"))
    return IndexedClouds(features, indices, mask)
