"""``sot.tl.wfm`` and ``sot.tl.generate_niches``: learn the distribution of niches and sample new ones."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from anndata import AnnData
from scanpy import logging as logg

from .._anndata import check_writable
from .._keys import ResultKeys
from .._validation import check_int
from ..get import niche_clouds
from ..models._batches import family_moments
from ..models._device import resolve_device, seeded
from ..models._wfm import WassersteinFlowMatching
from ..models._wfm_gaussian import GaussianFlowMatching
from ..ot import sqrtm_psd
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


def wfm(
    adata: AnnData,
    *,
    niche_key: str = "niche",
    condition_key: str | None = None,
    mode: Literal["pointcloud", "gaussian"] = "pointcloud",
    n_steps: int = 2000,
    batch_size: int | None = None,
    learning_rate: float | None = None,
    p_uncond: float = 0.1,
    width: int | None = None,
    n_layers: int = 3,
    noise: Literal["normal", "cholesky"] = "normal",
    matching: Literal["auto", "exact", "entropic"] = "auto",
    key_added: str = "wfm",
    device: str = "auto",
    random_state: int | None = 0,
    progress: bool = True,
    copy: bool = False,
) -> WFMModel | tuple[AnnData, WFMModel]:
    r"""Learn the distribution of niches with Wasserstein Flow Matching.

    Trains a generative model of the niches built by :func:`spatialot.pp.niches` (Haviv,
    Pooladian, Pe'er & Amos 2024): a flow from noise to niches along Wasserstein geodesics
    (squared-Euclidean cost, :math:`W_2^2`), optionally conditioned on a label of each niche's
    centre cell (its type, a region, a sample). Sample new niches with :func:`generate_niches`.

    Parameters
    ----------
    adata
        Annotated data matrix on which :func:`spatialot.pp.niches` ran.
    niche_key
        The ``key_added`` of :func:`spatialot.pp.niches`.
    condition_key
        Column of ``.obs`` whose value at each centre cell conditions its niche; unconditional
        when ``None``.
    mode
        ``'pointcloud'``: niches as point clouds, velocity field = masked set transformer, OT
        matching of points (:class:`~spatialot.models.WassersteinFlowMatching`). ``'gaussian'``:
        niches as the Gaussian of their mean and covariance, Bures–Wasserstein closed forms
        (:class:`~spatialot.models.GaussianFlowMatching`).
    n_steps
        Training steps.
    batch_size
        Niches per step; 16 (point clouds, as the official code) or 64 (Gaussians) by default.
    learning_rate
        Adam learning rate; 3e-4 (point clouds, official value for spatial data) or 1e-3
        (Gaussians) by default.
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
    key_added
        Key of ``.uns`` written.
    device
        ``'auto'`` (CUDA when present, else CPU), ``'cpu'`` or ``'cuda'``.
    random_state
        Seed of the initialisation and of training.
    progress
        Show a progress bar.
    copy
        Write into a copy of ``adata`` and return it with the model.

    Returns
    -------
    The trained model, or ``(adata_copy, model)`` when ``copy=True``. Writes
    ``.uns[key_added]``:

    ``'params'``
        The parameters above, plus ``'conditions'`` (the condition names the model knows, when
        conditional), ``'n_niches'`` and ``'dim'``.
    ``'loss'``
        Training loss of every step (plotted by ``sot.pl.loss``).

    Examples
    --------
    >>> import spatialot as sot
    >>> adata = sot.datasets.simulated_tissue(2_000)
    >>> sot.pp.niches(adata, k=8, use_rep="X_latent", include_center=False)
    >>> model = sot.tl.wfm(adata, condition_key="cell_type", n_steps=200)  # doctest: +SKIP
    >>> sot.tl.generate_niches(adata, model, n=50, condition="type_0")  # doctest: +SKIP
    """
    check_writable(adata, copy)
    start = logg.info("training Wasserstein flow matching")
    keys = ResultKeys(key_added)
    if mode not in _MODES:
        raise ValueError(f"`mode` must be one of {_MODES}, got {mode!r}.")
    family = niche_clouds(adata, niche_key=niche_key)
    values, names = _condition_labels(adata, condition_key)
    n_steps = check_int("n_steps", n_steps)
    gaussian = mode == "gaussian"
    batch_size = check_int("batch_size", batch_size if batch_size is not None else (64 if gaussian else 16))
    n_layers = check_int("n_layers", n_layers)
    width = check_int("width", width if width is not None else (256 if gaussian else 128))
    learning_rate = float(learning_rate if learning_rate is not None else (1e-3 if gaussian else 3e-4))
    if not learning_rate > 0:
        raise ValueError(f"`learning_rate` must be positive, got {learning_rate}.")
    if not 0 <= p_uncond <= 1:
        raise ValueError(f"`p_uncond` must lie in [0, 1], got {p_uncond}.")
    resolved = resolve_device(device)

    with seeded(random_state):  # the initial weights
        if gaussian:
            model: WFMModel = GaussianFlowMatching(family.dim, labels=names, width=width, n_layers=n_layers)
        else:
            model = WassersteinFlowMatching(
                family.dim,
                family.max_size,
                labels=names,
                width=width,
                n_layers=n_layers,
                noise=noise,
                matching=matching,
            )
    fit_kwargs = {
        "n_steps": n_steps,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "p_uncond": p_uncond,
        "device": resolved,
        "random_state": random_state,
        "progress": progress,
    }
    if gaussian:
        means, covariances = family_moments(family, device=resolved)
        model.fit(means, covariances, values, **fit_kwargs)
    else:
        model.fit(family, values, **fit_kwargs)

    adata = adata.copy() if copy else adata
    params = {
        "niche_key": niche_key,
        "condition_key": condition_key,
        "mode": mode,
        "n_steps": n_steps,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "p_uncond": p_uncond,
        "width": width,
        "n_layers": n_layers,
        "noise": None if gaussian else noise,
        "matching": None if gaussian else matching,
        "device": str(resolved),
        "random_state": random_state,
        "conditions": None if names is None else np.asarray(names, dtype=str),
        "n_niches": len(family),
        "dim": family.dim,
    }
    write_result(adata, keys, params=params, loss=np.asarray(model.history, dtype=np.float64))
    logg.info("    finished", time=start, deep=f"added\n    '{keys.uns}', parameters and loss (adata.uns)")
    return (adata, model) if copy else model


def generate_niches(
    adata: AnnData,
    model: WFMModel,
    *,
    n: int = 100,
    condition: str | Sequence[str] | None = None,
    size: int | None = None,
    niche_key: str = "niche",
    condition_key: str | None = None,
    n_steps: int = 100,
    method: Literal["euler", "midpoint"] = "euler",
    guidance: float = 1.0,
    key_added: str = "wfm_generated",
    random_state: int | None = 0,
    copy: bool = False,
) -> AnnData | None:
    """Sample new niches from a model trained by :func:`wfm`.

    Parameters
    ----------
    adata
        The AnnData the model was trained on (or one with niches in the same feature space).
    model
        Model returned by :func:`wfm`.
    n
        Number of niches; ignored when ``condition`` is a sequence (one niche per entry).
    condition
        Condition of the niches: one name for all, one per niche, or ``None``: for a
        conditional model, conditions drawn with their frequencies in training; for an
        unconditional one, none.
    size
        Number of points per niche; by default drawn from the sizes of the training niches
        (of the same condition in the point-cloud mode).
    niche_key
        The ``key_added`` of :func:`spatialot.pp.niches`, used to check the feature space and
        recorded for :func:`spatialot.pl.generated_niches`.
    condition_key
        Column of ``.obs`` the conditions come from; recorded for the plot, and its values
        checked against the model's conditions.
    n_steps
        Integration steps of the flow.
    method
        ``'euler'`` or ``'midpoint'``.
    guidance
        Classifier-free guidance weight (1: plain conditional sampling; the official code uses 1.5).
    key_added
        Key of ``.uns`` written.
    random_state
        Seed of the noise, the drawn conditions and sizes.
    copy
        Return a modified copy instead of writing to ``adata``.

    Returns
    -------
    ``None``, or a copy of ``adata`` when ``copy=True``, with ``.uns[key_added]``:

    ``'points'``
        ``float32`` array ``(n, max_size, dim)`` of the generated niches, padded with zeros.
    ``'mask'``
        Boolean array ``(n, max_size)``, ``True`` on real points.
    ``'conditions'``
        String array ``(n,)`` of the condition of each niche (conditional models only).
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
    names = model.label_names
    if condition_key is not None:
        _, known = _condition_labels(adata, condition_key)
        if names and not set(known) & set(names):
            raise ValueError(f"`adata.obs[{condition_key!r}]` holds none of the model's conditions {names}.")
    rng = np.random.default_rng(random_state)
    if condition is None:
        if names:
            counts = (
                model.size_counts.sum(1)[:-1] if isinstance(model, WassersteinFlowMatching) else model.label_counts[:-1]
            )
            frequencies = counts.cpu().double().numpy()
            conditions = np.asarray(names)[rng.choice(len(names), size=n, p=frequencies / frequencies.sum())]
        else:
            conditions = None
    else:
        if not names:
            raise ValueError("`model` was trained without conditions: leave `condition=None`.")
        conditions = np.asarray([condition] * n if isinstance(condition, str) else list(condition), dtype=str)
        unknown = sorted(set(conditions) - set(names))
        if unknown:
            raise ValueError(f"Unknown `condition` {unknown}: the model knows {names}.")
        n = len(conditions)
    labels = None if conditions is None else list(conditions)

    fields: dict[str, Any] = {}
    if isinstance(model, WassersteinFlowMatching):
        if size is not None and size > model.config["max_size"]:
            raise ValueError(
                f"`size`={size} exceeds the largest niche size the model knows, {model.config['max_size']}."
            )
        clouds = model.sample(
            n, labels=labels, sizes=size, n_steps=n_steps, method=method, guidance=guidance, random_state=random_state
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
