"""``sot.tl.hotet``: the OT map from every niche to one reference measure, and its map representation."""

from __future__ import annotations

import os

import numpy as np
from anndata import AnnData
from scanpy import logging as logg

from .._anndata import check_writable
from .._docs import inject_docs
from .._keys import ResultKeys
from .._validation import check_int
from ..get import niche_clouds
from ..models._device import resolve_device
from ..models._hotet import HOTET
from ..models._training import CHECKPOINT_EVERY, Precision
from ._utils import write_result


@inject_docs
def hotet(
    adata: AnnData,
    *,
    niche_key: str = "niche",
    reference: str | np.ndarray = "gaussian",
    model: HOTET | None = None,
    n_steps: int = 1000,
    batch_size: int = 8,
    n_reference_samples: int = 256,
    learning_rate: float = 1e-3,
    n_anchors: int = 64,
    base: str = "gaussian",
    key_added: str = "hotet",
    device: str = "auto",
    random_state: int = 0,
    progress: bool = True,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = CHECKPOINT_EVERY,
    precision: Precision = "float32",
    copy: bool = False,
) -> HOTET | tuple[AnnData, HOTET]:
    """Learn the optimal-transport map from every niche to a shared reference measure (HOTET).

    A set transformer embeds each niche and a hypernetwork turns the embedding into an
    input-convex network whose gradient is the Monge map (squared-Euclidean cost, W2²) between
    the niche and the reference (Jiang et al. 2025, see :class:`~spatialot.models.HOTET`). The
    map of an unseen niche takes one forward pass. Each cell is represented by the inverse map
    (reference → its niche) evaluated on a fixed sample of ``n_anchors`` reference points,
    flattened and divided by ``sqrt(n_anchors)``: squared Euclidean distances between these
    vectors approximate W2² between niches (linearised OT; an upper bound that is exact when the
    maps are compatible).

    Parameters
    ----------
    {adata_niches}
    {niche_key}
    reference
        ``'gaussian'``: the Gaussian with the mean and covariance of all niche points; or an
        array ``(n_points, dim)`` of reference points in the feature space of the niches.
        Ignored when ``model`` is already fitted (its reference is kept).
    model
        A :class:`~spatialot.models.HOTET`. Fitted: it is applied without training. Not
        fitted: it is trained (use this to choose the architecture). ``None``: a new model
        with default architecture is trained.
    n_steps
        Training steps.
    batch_size
        Niches per step.
    n_reference_samples
        Reference points drawn per niche and step.
    learning_rate
        Initial Adam learning rate.
    n_anchors
        Reference points on which the map representation is evaluated (new models only).
    base
        Where each niche's convex potential starts (new models only): ``'gaussian'`` (default)
        at the closed-form Bures–Wasserstein map between Gaussians with the moments of the niche
        and of the reference, so the network learns the non-Gaussian correction; ``'identity'``
        at the identity map, as in the paper. On the benchmark of ``benchmarks/hotet.py``,
        ``'gaussian'`` has 4–5× lower map error (L2-UVP) at every dimension from 2 to 64. With
        ``'identity'`` the forward maps of small niches run off (see the conjugate in
        :class:`~spatialot.models.HOTET`): fit ``HOTET(dim, base='identity', conjugate_steps=0)``
        on ``sot.get.niche_clouds(adata)`` and pass it as ``model``.
    key_added
        Key of the results (see Returns).
    {device}
    random_state
        Seed of the initial weights, batches and anchors.
    {progress}
    {checkpoint}
    {precision}
    {copy_model}

    Returns
    -------
    The model, or ``(adata_copy, model)`` when ``copy=True``. Writes:

    ``.obsm['X_{key_added}']``
        ``(n_obs, n_anchors * dim)`` map representation of each cell's niche.
    ``.uns['{key_added}']['params']``
        Model configuration and the training parameters above.
    ``.uns['{key_added}']['loss']``
        Training loss of every step (empty when a fitted model was applied).
    ``.uns['{key_added}']['anchors']``
        ``(n_anchors, dim)`` reference points on which the map representation is evaluated.
    ``.uns['{key_added}']['reference_mean']``, ``.uns['{key_added}']['reference_cov']``
        Mean and covariance of the reference measure.

    Raises
    ------
    KeyError
        If there are no niches under ``niche_key``.
    ValueError
        On a bad ``reference`` or ``key_added``, a model of another dimension, counts that are
        not positive integers, features too large for float32, or a non-finite result (e.g. a
        diverged model). ``adata`` is left untouched when an error is raised, and a ``model``
        whose training failed is left as it was.

    Examples
    --------
    >>> import scanpy as sc
    >>> import spatialot as sot
    >>> adata = sot.datasets.bdtnp()
    >>> sc.pp.pca(adata, n_comps=8)
    >>> sot.pp.niches(adata, k=8, use_rep="X_pca")
    >>> model = sot.tl.hotet(adata, n_steps=200)  # doctest: +SKIP
    >>> adata.obsm["X_hotet"].shape  # doctest: +SKIP
    (3039, 512)
    """
    check_writable(adata, copy)
    start = logg.info("fitting HOTET maps to a reference")
    keys = ResultKeys(key_added)
    family = niche_clouds(adata, niche_key=niche_key)
    for name, value in (
        ("n_steps", n_steps),
        ("batch_size", batch_size),
        ("n_reference_samples", n_reference_samples),
        ("n_anchors", n_anchors),
    ):
        check_int(name, value)
    target_device = resolve_device(device)
    if not learning_rate > 0:
        raise ValueError(f"`learning_rate` must be positive, got {learning_rate!r}.")
    reference_points = None
    if isinstance(reference, str):
        if reference != "gaussian":
            raise ValueError(f"`reference` must be 'gaussian' or an array of points, got {reference!r}.")
    else:
        reference_points = np.asarray(reference, dtype=np.float64)
        if reference_points.ndim != 2 or reference_points.shape[1] != family.dim or len(reference_points) == 0:
            raise ValueError(
                f"`reference` must be an array of shape (n_points, {family.dim}) in the niches' feature space, "
                f"got shape {reference_points.shape}."
            )
        if not np.isfinite(reference_points).all():
            raise ValueError("`reference` contains NaN or infinite values.")
    if model is not None:
        if not isinstance(model, HOTET):
            raise ValueError(f"`model` must be a spatialot.models.HOTET, got {type(model).__name__}.")
        if model.config["dim"] != family.dim:
            raise ValueError(
                f"`model` was built for {model.config['dim']}-D points, but the niches under {niche_key!r} "
                f"are {family.dim}-D."
            )
    trained = model is None or not bool(model.fitted)
    if model is None:
        model = HOTET(family.dim, n_anchors=n_anchors, base=base, random_state=random_state)
    elif device != "auto":
        model.to(target_device)
    history_start = len(model.history)
    if trained:
        model.fit(
            family,
            reference=reference_points,
            n_steps=n_steps,
            batch_size=batch_size,
            n_reference_samples=n_reference_samples,
            learning_rate=learning_rate,
            random_state=random_state,
            progress=progress,
            checkpoint=checkpoint,
            checkpoint_every=checkpoint_every,
            precision=precision,
            device=target_device,
        )
    embedding = model.embed(family, progress=progress)

    adata = adata.copy() if copy else adata
    params = {
        **model.params_summary(),
        "niche_key": niche_key,
        "trained": trained,
        "n_steps": n_steps if trained else None,
        "batch_size": batch_size if trained else None,
        "n_reference_samples": n_reference_samples if trained else None,
        "learning_rate": learning_rate if trained else None,
        "training_random_state": random_state if trained else None,
    }
    write_result(
        adata,
        keys,
        params=params,
        embedding=embedding,
        loss=np.asarray(model.history[history_start:], dtype=np.float64),
        anchors=model.anchors.detach().cpu().numpy(),
        reference_mean=model.reference_mean.detach().cpu().numpy(),
        reference_cov=model.reference_cov.detach().cpu().numpy(),
    )
    logg.info(
        "    finished",
        time=start,
        deep=f"added\n    '{keys.obsm}', map representation (adata.obsm)\n    '{keys.uns}', parameters, loss, "
        "anchors and reference (adata.uns)",
    )
    return (adata, model) if copy else model
