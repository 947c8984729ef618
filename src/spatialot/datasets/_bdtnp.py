"""The BDTNP Drosophila embryo atlas that ships with the package."""

from __future__ import annotations

from importlib.resources import as_file, files

import anndata as ad

__all__ = ["bdtnp"]


def bdtnp() -> ad.AnnData:
    """Drosophila embryo at stage 6: 3,039 cells × 84 genes with 3-D positions.

    The reference atlas of the Berkeley Drosophila Transcription Network Project (BDTNP;
    Fowlkes et al. 2008, *Cell* 133:364): quantitative virtual *in situ* hybridisation of 84
    transcription factors and patterning genes in the cells of one half of a stage-6 embryo
    (end of cellularisation, onset of gastrulation). It is the 84-gene reference that DistMap
    used to map single-cell RNA-seq back onto the embryo (Karaiskos et al. 2017, *Science*
    358:194), as distributed with novoSpaRc.

    The data are read from the package itself, so no network access is needed, and each call
    returns a new object that the caller may modify freely.

    Returns
    -------
    AnnData with ``n_obs × n_vars = 3039 × 84``:

    ``.X``
        dense ``float32`` array of virtual *in situ* expression levels (0 to about 2.4,
        normalised intensities, **not** counts).
    ``.obs_names``
        ``'cell0'`` … ``'cell3038'``.
    ``.var_names``
        gene symbols (``'aay'``, ``'Ama'``, ``'Antp'``, …, ``'eve'``, ``'ftz'``, …).
    ``.obsm['spatial']``
        ``float32`` array ``(3039, 3)`` of cell positions in micrometres (anterior–posterior
        axis about -207 to 184, the two other axes about ±70).
    ``.uns['dataset']``
        ``dict`` of strings: name, source, coordinate and value units, and licence.

    Notes
    -----
    The file is distributed under the BSD 3-Clause licence, Copyright (c) 2019 Nikos
    Karaiskos, Mor Nitzan, Nir Friedman, Nikolaus Rajewsky; the full text ships beside it as
    ``spatialot/datasets/_data/bdtnp.LICENSE``.

    Examples
    --------
    >>> import spatialot as sot
    >>> adata = sot.datasets.bdtnp()
    >>> adata.shape
    (3039, 84)
    >>> adata.obsm["spatial"].shape
    (3039, 3)
    """
    resource = files("spatialot.datasets") / "_data" / "bdtnp.h5ad"
    # as_file gives a real path even when the package is imported from a zip archive.
    with as_file(resource) as path:
        # Reading the file anew each time is what makes every call an independent copy.
        return ad.read_h5ad(path)
