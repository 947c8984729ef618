"""``sot.tl.wfm`` and ``sot.tl.generate_niches``: learn the distribution of niches and sample new ones."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from anndata import AnnData
from scanpy import logging as logg

from .._anndata import check_writable
from .._docs import inject_docs
from .._keys import ResultKeys
from .._validation import check_int
from ..get import niche_clouds
from ..models._batches import family_moments
from ..models._device import resolve_device
from ..models._training import CHECKPOINT_EVERY, Precision, Schedule
from ..models._wfm import DEFAULT_N_STEPS, WassersteinFlowMatching
from ..models._wfm_gaussian import GaussianFlowMatching
from ..ot import IndexedClouds, sqrtm_psd
from ._utils import write_result

_MODES = ("pointcloud", "gaussian")
WFMModel = WassersteinFlowMatching | GaussianFlowMatching


def _condition_labels(adata: AnnData, condition_key: str | None) -> tuple[np.ndarray | None, list[str] | None]:
    """Condition of every cell as strings, and the sorted names; ``(None, None)`` without a key."""
    if condition_key is None:
        return None, None
    if condition_key not in adata.obs:
        raise KeyError(
            f"`condition_key`={condition_key!r} is not a column of `adata.obs` (columns: {list(adata.obs)})."
        )
    column = adata.obs[condition_key]
    if column.isna().any():
        raise ValueError(f"`adata.obs[{condition_key!r}]` has missing values; every niche needs a condition.")
    values = column.astype(str).to_numpy()
    names = list(column.cat.categories.astype(str)) if hasattr(column, "cat") else sorted(set(values))
    names = [name for name in names if name in set(values)]
    return values, names


def _condition_vectors(adata: AnnData, condition_key: str) -> np.ndarray:
    """``adata.obsm[condition_key]`` as a finite float64 array ``(n_obs, d)``."""
    values = adata.obsm[condition_key]
    values = values.toarray() if hasattr(values, "toarray") else np.asarray(values)
    values = values.reshape(len(values), -1) if values.ndim == 1 else values
    if values.ndim != 2 or not np.issubdtype(values.dtype, np.number):
        raise ValueError(f"`adata.obsm[{condition_key!r}]` must be a numeric (n_obs, d) array to condition on.")
    values = values.astype(np.float64)
    if not np.isfinite(values).all():
        raise ValueError(
            f"`adata.obsm[{condition_key!r}]` holds NaN or infinite values; every niche needs a condition."
        )
    return values


def _condition_kind(adata: AnnData, condition_key: str | None) -> str | None:
    """``'labels'`` for a column of ``.obs``, ``'vectors'`` for a key of ``.obsm``, ``None`` without a key."""
    if condition_key is None:
        return None
    in_obs, in_obsm = condition_key in adata.obs, condition_key in adata.obsm
    if in_obs and in_obsm:
        raise ValueError(
            f"`condition_key`={condition_key!r} is both a column of `adata.obs` and a key of `adata.obsm`; "
            "rename one of them."
        )
    if not (in_obs or in_obsm):
        raise KeyError(
            f"`condition_key`={condition_key!r} is neither a column of `adata.obs` (columns: {list(adata.obs)}) "
            f"nor a key of `adata.obsm` (keys: {list(adata.obsm)})."
        )
    return "labels" if in_obs else "vectors"


def _cells(adata: AnnData, cells: str | np.ndarray | Sequence[int], name: str) -> np.ndarray:
    """Sorted indices of the cells chosen by a boolean ``.obs`` column, a boolean mask or integer indices."""
    if isinstance(cells, str):
        if cells not in adata.obs:
            raise KeyError(f"`{name}`={cells!r} is not a column of `adata.obs` (columns: {list(adata.obs)}).")
        column = adata.obs[cells]
        if column.dtype != bool:
            raise ValueError(f"`adata.obs[{cells!r}]` must be boolean (True on the cells of `{name}`).")
        chosen = np.flatnonzero(column.to_numpy())
    else:
        values = np.asarray(cells)
        if values.dtype == bool:
            if values.shape != (adata.n_obs,):
                raise ValueError(f"`{name}` as a boolean mask must have one entry per cell ({adata.n_obs}).")
            chosen = np.flatnonzero(values)
        elif values.ndim == 1 and np.issubdtype(values.dtype, np.integer):
            if len(values) and (values.min() < 0 or values.max() >= adata.n_obs):
                raise ValueError(f"`{name}` holds cell indices outside [0, {adata.n_obs}).")
            chosen = np.unique(values)
        else:
            raise ValueError(f"`{name}` must be a boolean `.obs` column, a boolean mask or integer cell indices.")
    if len(chosen) == 0:
        raise ValueError(f"`{name}` selects no cell.")
    return chosen


def _subset(family: IndexedClouds, cells: np.ndarray) -> IndexedClouds:
    """The niches of ``cells`` only."""
    return IndexedClouds(family.features, family.indices[cells], family.mask[cells])


@inject_docs
def wfm(
    adata: AnnData,
    *,
    niche_key: str = "niche",
    condition_key: str | None = None,
    mode: Literal["pointcloud", "gaussian"] = "pointcloud",
    n_steps: int = DEFAULT_N_STEPS,
    batch_size: int | None = None,
    learning_rate: float | None = None,
    schedule: Schedule = "cosine",
    warmup_steps: int = 100,
    p_uncond: float = 0.1,
    width: int | None = None,
    n_layers: int = 3,
    noise: Literal["normal", "cholesky"] = "normal",
    matching: Literal["auto", "exact", "entropic"] = "auto",
    minibatch_ot: bool = True,
    pairing_pool: int = 64,
    source: str | np.ndarray | Sequence[int] | None = None,
    key_added: str = "wfm",
    device: str = "auto",
    random_state: int | None = 0,
    progress: bool = True,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = CHECKPOINT_EVERY,
    precision: Precision = "float32",
    copy: bool = False,
) -> WFMModel | tuple[AnnData, WFMModel]:
    r"""Learn the distribution of niches with Wasserstein Flow Matching.

    Trains a generative model of the niches built by :func:`spatialot.pp.niches` (Haviv,
    Pooladian, Pe'er & Amos 2024): a flow from noise to niches along Wasserstein geodesics
    (squared-Euclidean cost, :math:`W_2^2`), optionally conditioned on a label of each niche's
    centre cell (its type, a region, a sample). Sample new niches with :func:`generate_niches`.

    Parameters
    ----------
    {adata_niches}
    {niche_key}
    condition_key
        What conditions each niche, read at its centre cell: a column of ``.obs`` (categorical
        labels: a cell type, a region, a sample) or a key of ``.obsm`` (a continuous vector per
        cell: the centre's expression or embedding, as the official spatial class allows);
        unconditional when ``None``.
    mode
        ``'pointcloud'``: niches as point clouds, velocity field = masked set transformer, OT
        matching of points (:class:`~spatialot.models.WassersteinFlowMatching`). ``'gaussian'``:
        niches as the Gaussian of their mean and covariance, Bures–Wasserstein closed forms
        (:class:`~spatialot.models.GaussianFlowMatching`).
    n_steps
        Training steps. The default, 6,000, took 1–4 minutes per model on one CPU thread of a
        shared machine (10–39 ms per step). It was chosen on ``benchmarks/wfm.py`` (both data
        sets, 5 generations). Against 2,000 steps, every figure moves towards its target:
        the 1-NN accuracy under exact :math:`W_2^2` nears the real-vs-real floor (simulated
        tissue, labels: 0.564 → 0.551, floor 0.537); the centre-label classifier on generated
        niches comes within 1.0 point of real ones (from 1.5; BDTNP: 2.0 → 1.5); with
        condition vectors on the simulated tissue it comes within 2.3 points (from 4.3). The
        Gaussian mode ends closer to its sampling floor (family :math:`W_2^2` 0.244 → 0.206;
        two true families: 0.249). 10,000 steps gain nothing more on the classifier (vectors:
        2.25 points) and take BDTNP's unconditional 1-NN 0.036 below its floor.
    batch_size
        Niches per step; 16 (point clouds, as the official code) or 64 (Gaussians) by default.
    learning_rate
        Adam learning rate, 1e-3 by default: the peak of a 100-step warm-up and a cosine decay
        to 0 over ``n_steps`` in both modes (the official code: a constant 3e-4; see
        :meth:`~spatialot.models.WassersteinFlowMatching.fit`). In the Gaussian mode the cosine
        brings the generated family to the sampling floor on ``benchmarks/wfm.py``'s synthetic
        family (W2² 0.244 between generated and true families, 0.249 between two true ones),
        where a constant rate stops at 0.350.
    {schedule}
    p_uncond
        Fraction of conditions dropped in training (classifier-free guidance).
    width
        Width of the network; 128 (point clouds) or 256 (Gaussians) by default.
    n_layers
        Transformer blocks (point clouds) or hidden layers per tower (Gaussians).
    noise
        Source family of the point-cloud mode (see :class:`~spatialot.models.WassersteinFlowMatching`).
    matching
        Matching of noise and niche points in the point-cloud mode: ``'auto'`` (exact assignment
        for equal sizes), ``'exact'`` or ``'entropic'``.
    minibatch_ot
        Re-pair the source (noise) and niche clouds of each minibatch by an exact assignment on
        their Chamfer costs before matching points (the official default for unconditional
        training); with labels the pairing stays within a label; skipped with continuous
        conditions. Point-cloud mode.
    pairing_pool
        Niches re-paired together by minibatch OT at each step, of which ``batch_size`` pairs
        are trained on (the official code pairs within the minibatch): a larger pool gives a
        coupling closer to OT, straighter paths and sharper niches at the same network cost.
        Point-cloud mode.
    source
        Transport between two families of niches instead of from noise: the cells whose niches
        form the source family (a boolean column of ``.obs``, a boolean mask or integer cell
        indices; e.g. the cells of a control sample), the niches of all other cells being the
        targets (e.g. a treated sample). Transport source niches with
        ``generate_niches(..., source=...)``. Point-cloud mode.
    key_added
        Key of ``.uns`` written.
    {device}
    random_state
        Seed of the initialisation and of training.
    {progress}
    {checkpoint}
    {precision}
    {copy_model}

    Returns
    -------
    The trained model, or ``(adata_copy, model)`` when ``copy=True``. Writes
    ``.uns[key_added]``:

    ``'params'``
        The parameters above (``source`` as ``'n_source_niches'``), plus ``'conditions'`` (the
        condition names the model knows, with labels), ``'condition_dim'`` (with vectors),
        ``'n_niches'`` (the niches trained on) and ``'dim'``.
    ``'loss'``
        Training loss of every step (plotted by ``sot.pl.loss``).

    Notes
    -----
    Where this departs from the official code (see
    :class:`~spatialot.models.WassersteinFlowMatching`): minibatch OT pairing is an exact
    assignment on CPU (on a GPU a rounded Sinkhorn plan, improved by exchanges), pairs a pool of
    ``pairing_pool`` niches rather than the minibatch alone, and stays on, within each label,
    for labelled conditions (the official code turns it off under conditioning); the learning
    rate warms up to 1e-3 and decays along a cosine to 0 (the official code: a constant 3e-4),
    which at this budget keeps generated niches sharp and covering the real ones; a dropped
    condition vector becomes a learned null embedding; source niches are drawn independently of
    the targets and re-paired by minibatch OT, as two unpaired samples (control, treated) call
    for, where the official code pairs the i-th source cloud with the i-th data cloud. The
    defaults were checked in ``benchmarks/wfm.py``.

    Examples
    --------
    >>> import spatialot as sot
    >>> adata = sot.datasets.simulated_tissue(2_000)
    >>> sot.pp.niches(adata, k=8, use_rep="X_latent", include_center=False)
    >>> model = sot.tl.wfm(adata, condition_key="cell_type", n_steps=200)  # doctest: +SKIP
    >>> sot.tl.generate_niches(adata, model, n=50, condition="type_0")  # doctest: +SKIP

    Conditioned on the centre cell's latent profile (a key of ``.obsm``):

    >>> model = sot.tl.wfm(adata, condition_key="X_latent", n_steps=200)  # doctest: +SKIP
    >>> sot.tl.generate_niches(adata, model, condition=adata.obsm["X_latent"][:50])  # doctest: +SKIP

    From the niches of one half of the tissue to those of the other:

    >>> adata.obs["left"] = adata.obsm["spatial"][:, 0] < 200
    >>> model = sot.tl.wfm(adata, source="left", n_steps=200)  # doctest: +SKIP
    >>> sot.tl.generate_niches(adata, model, source="left")  # doctest: +SKIP
    """
    check_writable(adata, copy)
    start = logg.info("training Wasserstein flow matching")
    keys = ResultKeys(key_added)
    if mode not in _MODES:
        raise ValueError(f"`mode` must be one of {_MODES}, got {mode!r}.")
    family = niche_clouds(adata, niche_key=niche_key)
    kind = _condition_kind(adata, condition_key)
    values, names = _condition_labels(adata, condition_key) if kind == "labels" else (None, None)
    vectors = _condition_vectors(adata, condition_key) if kind == "vectors" else None
    n_steps = check_int("n_steps", n_steps)
    gaussian = mode == "gaussian"
    if gaussian and (kind == "vectors" or source is not None):
        raise ValueError(
            "`mode='gaussian'` takes categorical conditions only: use the point-cloud mode for a `condition_key` "
            "of `.obsm` or a `source` family."
        )
    batch_size = check_int("batch_size", batch_size if batch_size is not None else (64 if gaussian else 16))
    n_layers = check_int("n_layers", n_layers)
    width = check_int("width", width if width is not None else (256 if gaussian else 128))
    learning_rate = float(learning_rate if learning_rate is not None else 1e-3)
    if not learning_rate > 0:
        raise ValueError(f"`learning_rate` must be positive, got {learning_rate}.")
    if not 0 <= p_uncond <= 1:
        raise ValueError(f"`p_uncond` must lie in [0, 1], got {p_uncond}.")
    source_family = None
    if source is not None:
        source_cells = _cells(adata, source, "source")
        targets = np.setdiff1d(np.arange(adata.n_obs), source_cells)
        if len(targets) == 0:
            raise ValueError("`source` selects every cell: no niche is left to transport to.")
        source_family, family = _subset(family, source_cells), _subset(family, targets)
        values = None if values is None else values[targets]
        vectors = None if vectors is None else vectors[targets]
        if names is not None:
            names = [name for name in names if name in set(values)]
    resolved = resolve_device(device)

    if gaussian:
        model: WFMModel = GaussianFlowMatching(
            family.dim, labels=names, width=width, n_layers=n_layers, random_state=random_state
        )
    else:
        model = WassersteinFlowMatching(
            family.dim,
            family.max_size,
            labels=names,
            condition_dim=None if vectors is None else vectors.shape[1],
            width=width,
            n_layers=n_layers,
            noise=noise,
            matching=matching,
            minibatch_ot=minibatch_ot,
            pairing_pool=pairing_pool,
            random_state=random_state,
        )
    fit_kwargs = {
        "n_steps": n_steps,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "schedule": schedule,
        "warmup_steps": warmup_steps,
        "p_uncond": p_uncond,
        "device": resolved,
        "random_state": random_state,
        "progress": progress,
        "checkpoint": checkpoint,
        "checkpoint_every": checkpoint_every,
        "precision": precision,
    }
    if gaussian:
        means, covariances = family_moments(family, device=resolved)
        model.fit(means, covariances, values, **fit_kwargs)
    else:
        model.fit(family, values, conditions=vectors, source=source_family, **fit_kwargs)

    adata = adata.copy() if copy else adata
    params = {
        "niche_key": niche_key,
        "condition_key": condition_key,
        "mode": mode,
        "n_steps": n_steps,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "schedule": schedule,
        "warmup_steps": warmup_steps,
        "p_uncond": p_uncond,
        "width": width,
        "n_layers": n_layers,
        "noise": None if gaussian else noise,
        "matching": None if gaussian else matching,
        "minibatch_ot": None if gaussian else bool(minibatch_ot),
        "pairing_pool": None if gaussian else pairing_pool,
        "n_source_niches": None if source_family is None else len(source_family),
        "condition_dim": None if vectors is None else int(vectors.shape[1]),
        "device": str(resolved),
        "random_state": random_state,
        "conditions": None if names is None else np.asarray(names, dtype=str),
        "n_niches": len(family),
        "dim": family.dim,
    }
    write_result(adata, keys, params=params, loss=np.asarray(model.history, dtype=np.float64))
    logg.info("    finished", time=start, deep=f"added\n    '{keys.uns}', parameters and loss (adata.uns)")
    return (adata, model) if copy else model


@inject_docs
def generate_niches(
    adata: AnnData,
    model: WFMModel,
    *,
    n: int = 100,
    condition: str | Sequence[str] | np.ndarray | None = None,
    size: int | None = None,
    source: str | np.ndarray | Sequence[int] | None = None,
    niche_key: str = "niche",
    condition_key: str | None = None,
    n_steps: int = 100,
    method: Literal["euler", "midpoint"] = "euler",
    guidance: float = 1.0,
    key_added: str = "wfm_generated",
    random_state: int | None = 0,
    copy: bool = False,
) -> AnnData | None:
    """Sample new niches from a model trained by :func:`wfm`, or transport source niches.

    Parameters
    ----------
    adata
        The AnnData the model was trained on (or one with niches in the same feature space).
    model
        Model returned by :func:`wfm`.
    n
        Number of niches; ignored when ``condition`` holds one entry per niche or ``source`` is given.
    condition
        For a model trained on labels: one name for all niches, one per niche, or ``None``
        (labels drawn with their frequencies in training). For a model trained on condition
        vectors: an array ``(n, d)`` (one vector per niche) or ``(d,)`` (one for all), or
        ``None`` (vectors of random cells of ``adata.obsm[condition_key]``). With ``source`` and
        a ``condition_key``, ``None`` takes the source cells' own conditions.
    size
        Number of points per niche; by default drawn from the sizes of the training niches
        (of the same label in the point-cloud mode). Not with ``source``.
    source
        For a model trained with ``source``: the cells whose niches are transported (a boolean
        column of ``.obs``, a boolean mask or integer cell indices); one niche per cell, of the
        size of its source niche.
    niche_key
        The ``key_added`` of :func:`spatialot.pp.niches`, used to check the feature space and
        recorded for :func:`spatialot.pl.generated_niches`.
    condition_key
        Column of ``.obs`` (labels) or key of ``.obsm`` (vectors) the conditions come from;
        recorded for the plot, checked against the model's conditions, and read when
        ``condition`` is ``None`` as described above.
    n_steps
        Integration steps of the flow.
    method
        ``'euler'`` or ``'midpoint'``.
    guidance
        Classifier-free guidance weight (1: plain conditional sampling; the official code uses 1.5).
        Each 0.1 above 1 makes generated niches about 1–1.5 points easier to tell by their
        centre's label. On the simulated tissue of ``benchmarks/wfm.py`` a model conditioned on
        vectors (a ``condition_key`` of ``.obsm``) is 2.3 points below real niches at 1 and level
        at 1.1, but 1.1 lifts BDTNP's label-conditioned niches 2.6 points above real ones, so 1
        stays the default.
    key_added
        Key of ``.uns`` written.
    random_state
        Seed of the noise, the drawn conditions and sizes.
    {copy}

    Returns
    -------
    ``None``, or a copy of ``adata`` when ``copy=True``, with ``.uns[key_added]``:

    ``'points'``
        ``float32`` array ``(n, max_size, dim)`` of the generated niches, padded with zeros.
    ``'mask'``
        Boolean array ``(n, max_size)``, ``True`` on real points.
    ``'conditions'``
        String array ``(n,)`` of the label of each niche (models trained on labels).
    ``'condition_vectors'``
        ``float32`` array ``(n, d)`` of the condition vector of each niche (models trained on vectors).
    ``'source_cells'``
        Integer array ``(n,)``: the cell whose niche each generated niche was transported from
        (with ``source``).
    ``'means'``, ``'covariances'``
        The generated Gaussians (Gaussian mode only); their ``'points'`` are samples of them.
    ``'params'``
        The parameters above and the model's mode.

    Examples
    --------
    >>> import spatialot as sot
    >>> adata = sot.datasets.simulated_tissue()
    >>> sot.pp.niches(adata, k=8)
    >>> model = sot.tl.wfm(adata, condition_key="cell_type", n_steps=200)  # doctest: +SKIP
    >>> sot.tl.generate_niches(adata, model, n=50)  # doctest: +SKIP
    >>> adata.uns["wfm_generated"]["points"].shape  # doctest: +SKIP

    Conditioned on the centre cell's latent profile, one niche per given vector:

    >>> model = sot.tl.wfm(adata, condition_key="X_latent", n_steps=200)  # doctest: +SKIP
    >>> sot.tl.generate_niches(adata, model, condition=adata.obsm["X_latent"][:10])  # doctest: +SKIP
    """
    check_writable(adata, copy)
    start = logg.info("generating niches")
    keys = ResultKeys(key_added)
    if not isinstance(model, WassersteinFlowMatching | GaussianFlowMatching):
        raise ValueError(f"`model` must be returned by `sot.tl.wfm`, got a {type(model).__name__}.")
    family = niche_clouds(adata, niche_key=niche_key)
    if family.dim != model.config["dim"]:
        raise ValueError(
            f"The niches under `niche_key`={niche_key!r} have dimension {family.dim}, but `model` was trained on "
            f"{model.config['dim']}: pass the AnnData and niche key the model was trained on."
        )
    n = check_int("n", n)
    n_steps = check_int("n_steps", n_steps)
    if size is not None:
        size = check_int("size", size)
    pointcloud = isinstance(model, WassersteinFlowMatching)
    names = model.label_names
    condition_dim = model.config.get("condition_dim")
    kind = _condition_kind(adata, condition_key)
    from_source = pointcloud and bool(model.from_source)
    source_cells = None
    if source is not None:
        if not from_source:
            raise ValueError(
                "`model` was trained from noise: leave `source=None` (train with `sot.tl.wfm(source=...)`)."
            )
        if size is not None:
            raise ValueError("`size` cannot be given with `source`: each niche keeps the size of its source niche.")
        source_cells = _cells(adata, source, "source")
        n = len(source_cells)
    elif from_source:
        raise ValueError("`model` was trained to transport a `source` family: pass the cells to transport as `source`.")
    rng = np.random.default_rng(random_state)

    conditions, vectors = None, None
    if condition_dim:
        if kind == "labels":
            raise ValueError(
                f"`model` is conditioned on vectors: `condition_key` must be a key of `.obsm`, not {condition_key!r}."
            )
        if condition is None:
            if kind is None:
                raise ValueError(
                    "`model` is conditioned on vectors: pass `condition` (vectors) or a `condition_key` of `.obsm`."
                )
            table = _condition_vectors(adata, condition_key)
            rows = source_cells if source_cells is not None else rng.choice(adata.n_obs, size=n)
            vectors = table[rows]
        else:
            vectors = np.asarray(condition, dtype=np.float64)
            if vectors.ndim == 1:
                vectors = np.broadcast_to(vectors, (n, len(vectors))).copy()
            if vectors.ndim != 2 or vectors.shape[1] != condition_dim:
                raise ValueError(
                    f"`condition` must be vectors of length {condition_dim}, shape (n, {condition_dim}) or "
                    f"({condition_dim},); got shape {np.shape(condition)}."
                )
            if source_cells is not None and len(vectors) != n:
                raise ValueError(f"`condition` must hold one vector per source cell ({n}), got {len(vectors)}.")
            n = len(vectors)
    else:
        if kind == "vectors":
            raise ValueError(
                f"`model` was not trained on condition vectors: `condition_key`={condition_key!r} is a key of `.obsm`."
            )
        if condition_key is not None:
            _, known = _condition_labels(adata, condition_key)
            if names and not set(known) & set(names):
                raise ValueError(f"`adata.obs[{condition_key!r}]` holds none of the model's conditions {names}.")
        if condition is None:
            if names and source_cells is not None and condition_key is not None:
                conditions = adata.obs[condition_key].astype(str).to_numpy()[source_cells]
                unknown = sorted(set(conditions) - set(names))
                if unknown:
                    raise ValueError(
                        f"The source cells have conditions {unknown} the model does not know: pass `condition`."
                    )
            elif names:
                counts = model.size_counts.sum(1)[:-1] if pointcloud else model.label_counts[:-1]
                frequencies = counts.cpu().double().numpy()
                conditions = np.asarray(names)[rng.choice(len(names), size=n, p=frequencies / frequencies.sum())]
        else:
            if not names:
                raise ValueError("`model` was trained without conditions: leave `condition=None`.")
            conditions = np.asarray([condition] * n if isinstance(condition, str) else list(condition), dtype=str)
            unknown = sorted(set(conditions) - set(names))
            if unknown:
                raise ValueError(f"Unknown `condition` {unknown}: the model knows {names}.")
            if source_cells is not None and len(conditions) != n:
                raise ValueError(f"`condition` must hold one label per source cell ({n}), got {len(conditions)}.")
            n = len(conditions)
    labels = None if conditions is None else list(conditions)

    fields: dict[str, Any] = {}
    if pointcloud:
        if size is not None and size > model.config["max_size"]:
            raise ValueError(
                f"`size`={size} exceeds the largest niche size the model knows, {model.config['max_size']}."
            )
        clouds = model.sample(
            None if source_cells is not None else n,
            labels=labels,
            conditions=vectors,
            sizes=size,
            source=None if source_cells is None else _subset(family, source_cells),
            n_steps=n_steps,
            method=method,
            guidance=guidance,
            random_state=random_state,
        )
        points, mask = clouds.points.numpy(), clouds.mask.numpy()
        mode = "pointcloud"
    else:
        means, covariances = model.sample(
            n, labels=labels, n_steps=n_steps, method=method, guidance=guidance, random_state=random_state
        )
        sizes = np.full(n, size) if size is not None else rng.choice(family.sizes, size=n)
        points, mask = _sample_gaussians(means, covariances, sizes, rng)
        fields = {"means": means, "covariances": covariances}
        mode = "gaussian"

    adata = adata.copy() if copy else adata
    params = {
        "n": n,
        "size": size,
        "niche_key": niche_key,
        "condition_key": condition_key,
        "mode": mode,
        "n_steps": n_steps,
        "method": method,
        "guidance": guidance,
        "random_state": random_state,
    }
    if conditions is not None:
        fields["conditions"] = conditions
    if vectors is not None:
        fields["condition_vectors"] = vectors.astype(np.float32)
    if source_cells is not None:
        fields["source_cells"] = source_cells.astype(np.int64)
    write_result(adata, keys, params=params, points=points.astype(np.float32), mask=mask.astype(bool), **fields)
    logg.info("    finished", time=start, deep=f"added\n    '{keys.uns}', generated niches (adata.uns)")
    return adata if copy else None


def _sample_gaussians(
    means: np.ndarray, covariances: np.ndarray, sizes: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``sizes[i]`` points from each Gaussian, padded to the largest size."""
    roots = sqrtm_psd(torch.as_tensor(covariances, dtype=torch.float64)).numpy()
    max_size = int(sizes.max())
    normal = rng.standard_normal((len(means), max_size, means.shape[1]))
    points = means[:, None, :] + normal @ roots.transpose(0, 2, 1)
    mask = np.arange(max_size)[None, :] < np.asarray(sizes)[:, None]
    return np.where(mask[..., None], points, 0.0), mask
