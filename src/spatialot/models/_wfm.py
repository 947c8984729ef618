r"""Wasserstein Flow Matching over point clouds (Haviv, Pooladian, Pe'er & Amos 2024, arXiv 2411.00698).

A generative model over a *family* of point clouds. Each training step pairs noise clouds with
data clouds, matches their points by optimal transport (squared-Euclidean cost, so the matching
realises :math:`W_2^2`), and regresses the velocity of the straight-line (displacement)
interpolation between matched points: along it the cloud follows the Wasserstein geodesic from
the noise cloud to the data cloud. New clouds are drawn by integrating the learned velocity
field from fresh noise clouds.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from .._settings import cpu_threads
from .._validation import check_float32_range, check_int
from ..ot import PointClouds, gaussian_moments, sinkhorn, squared_euclidean_cost
from ._base import Model
from ._batches import CloudFamily, take
from ._blocks import SetTransformer, mlp
from ._device import resolve_device, seeded
from ._training import CHECKPOINT_EVERY, Precision, full_precision, restored_on_failure, train

Matching = Literal["auto", "exact", "entropic"]
Noise = Literal["normal", "cholesky"]
Integrator = Literal["euler", "midpoint"]
_MATCHINGS = ("auto", "exact", "entropic")
_NOISES = ("normal", "cholesky")
_INTEGRATORS = ("euler", "midpoint")


# ---------------------------------------------------------------------------- OT matching of points


def matched_targets(
    source: PointClouds, target: PointClouds, *, matching: Matching = "auto", epsilon: float = 0.002
) -> torch.Tensor:
    r"""Image of every source point under the OT map from ``source[b]`` to ``target[b]``.

    The velocity target of flow matching along the Wasserstein geodesic is the displacement
    ``matched_targets(source, target) - source.points``.

    Parameters
    ----------
    source, target
        Batches of the same length and dimension.
    matching
        ``'exact'``: an optimal one-to-one assignment (:func:`scipy.optimize.linear_sum_assignment`),
        the exact OT map between clouds of equal size and uniform weights. ``'entropic'``: the
        entropic map, i.e. the barycentric projection :math:`T(x_i) = \sum_j P_{ij} y_j / a_i` of
        the plan of :func:`~spatialot.ot.sinkhorn`. ``'auto'``: exact for the pairs of equal size
        with uniform weights, entropic for the others.
    epsilon
        Entropic regularisation relative to the largest squared distance of the batch (the
        official implementation's 0.002 on a cost divided by its maximum).

    Returns
    -------
    Tensor of the shape of ``source.points``; zero on padded source points.
    """
    if matching not in _MATCHINGS:
        raise ValueError(f"`matching` must be one of {_MATCHINGS}, got {matching!r}.")
    if len(source) != len(target) or source.dim != target.dim:
        raise ValueError("`source` and `target` must hold the same number of clouds of the same dimension.")
    target = target.to(device=source.device, dtype=source.points.dtype)
    if matching == "entropic":  # on the device, without reading anything on the host
        return _entropic_map(source, target, epsilon)
    sizes_equal = (source.sizes == target.sizes).cpu().numpy()
    uniform = (_is_uniform(source) & _is_uniform(target)).cpu().numpy()
    exact = sizes_equal & uniform if matching == "auto" else np.full(len(source), matching == "exact")
    if matching == "exact" and not sizes_equal.all():
        raise ValueError("`matching='exact'` needs source and target clouds of equal sizes; use 'auto' or 'entropic'.")
    result = torch.zeros_like(source.points)
    if exact.any():
        chosen = np.flatnonzero(exact)
        result[chosen] = _assignment(source[chosen], target[chosen])
    if not exact.all():
        chosen = np.flatnonzero(~exact)
        result[chosen] = _entropic_map(source[chosen], target[chosen], epsilon)
    return result


def _is_uniform(clouds: PointClouds) -> torch.Tensor:
    expected = clouds.mask / clouds.sizes.clamp_min(1)[:, None]
    return ((clouds.weights - expected).abs() < 1e-6).all(dim=1)


def _assignment(source: PointClouds, target: PointClouds) -> torch.Tensor:
    cost = squared_euclidean_cost(source.points.detach(), target.points.detach()).cpu().double().numpy()
    source_mask, target_mask = source.mask.cpu().numpy(), target.mask.cpu().numpy()
    partner = np.zeros(source.mask.shape, dtype=np.int64)
    for b in range(len(source)):
        rows, cols = np.flatnonzero(source_mask[b]), np.flatnonzero(target_mask[b])
        row_order, col_order = linear_sum_assignment(cost[b][np.ix_(rows, cols)])
        partner[b, rows[row_order]] = cols[col_order]
    index = torch.as_tensor(partner, device=source.device)[..., None].expand(-1, -1, source.dim)
    return torch.gather(target.points, 1, index) * source.mask[..., None]


def _entropic_map(source: PointClouds, target: PointClouds, epsilon: float) -> torch.Tensor:
    with torch.no_grad():
        cost = squared_euclidean_cost(source.points, target.points)
        valid = source.mask[:, :, None] & target.mask[:, None, :]
        # ε relative to the largest cost: the points divided by its root, which gives the same plan
        # as ε times the largest cost, and is never read on the host
        unit = torch.where(valid, cost, 0).max().clamp_min(1e-12).sqrt()
        unit_source = PointClouds(source.points / unit, source.mask, source.weights)
        unit_target = PointClouds(target.points / unit, target.mask, target.weights)
        plan = sinkhorn(unit_source, unit_target, epsilon=epsilon, max_iter=200, return_plan=True).plan
    mass = source.weights.clamp_min(1e-30)[..., None]
    return (plan @ target.points) / mass * source.mask[..., None]


# ---------------------------------------------------------------------------- shared pieces


class FlowConditioner(nn.Module):
    """Time (Fourier features → MLP) plus an optional label embedding, as one vector of ``width``.

    The last label row is the *null* label of classifier-free guidance: the label of an
    unconditional model, and the dropped label during conditional training.
    """

    def __init__(self, width: int, n_labels: int, n_frequencies: int = 16):
        super().__init__()
        self.register_buffer("frequencies", math.pi * 2.0 ** torch.arange(n_frequencies, dtype=torch.float32) / 8)
        self.time = mlp([2 * n_frequencies, width, width])
        self.labels = nn.Embedding(n_labels + 1, width)

    def forward(self, t: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        angles = t[:, None] * self.frequencies
        return self.time(torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)) + self.labels(codes)


def label_codes(labels: Sequence | np.ndarray | str | int | None, names: list[str], n: int) -> np.ndarray:
    """Integer codes of ``labels`` (names or codes; ``None`` → the null code ``len(names)``)."""
    null = len(names)
    if labels is None:
        return np.full(n, null, dtype=np.int64)
    values = [labels] * n if isinstance(labels, str | int | np.integer) else list(labels)
    if len(values) != n:
        raise ValueError(f"`labels` has {len(values)} entries for {n} clouds.")
    if not names:
        raise ValueError("This model was trained without labels: pass `labels=None`.")
    lookup = {name: code for code, name in enumerate(names)}
    codes = np.empty(n, dtype=np.int64)
    for i, value in enumerate(values):
        if isinstance(value, int | np.integer) and not isinstance(value, bool):
            if not 0 <= value < null:
                raise ValueError(f"Label code {value} is out of range: the model knows {null} labels.")
            codes[i] = int(value)
        elif str(value) in lookup:
            codes[i] = lookup[str(value)]
        else:
            raise ValueError(f"Unknown label {value!r}: the model knows {names}.")
    return codes


def drop_labels(codes: torch.Tensor, n_labels: int, p_uncond: float) -> torch.Tensor:
    """Replace each code by the null code ``n_labels`` with probability ``p_uncond`` (classifier-free guidance)."""
    if not n_labels or p_uncond <= 0:
        return codes
    dropped = torch.rand(len(codes), device=codes.device) < p_uncond
    return torch.where(dropped, n_labels, codes)


def zero_init(layer: nn.Linear, gain: float = 1e-3) -> nn.Linear:
    """Start an output layer near zero, so the initial flow barely moves (as the official code)."""
    with torch.no_grad():
        layer.weight.mul_(gain)
        layer.bias.zero_()
    return layer


def cholesky_statistics(covariances: torch.Tensor, jitter: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """Element-wise mean and std of the Cholesky factors of ``covariances`` (the official noise family)."""
    dim = covariances.shape[-1]
    eye = torch.eye(dim, dtype=covariances.dtype, device=covariances.device)
    factors = torch.linalg.cholesky(covariances + jitter * eye)
    return factors.mean(0), factors.std(0) if len(factors) > 1 else torch.zeros_like(factors[0])


def random_cholesky(mean: torch.Tensor, std: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` lower-triangular factors ``mean + std * Z`` with a positive diagonal."""
    factors = torch.tril(mean + std * torch.randn(n, *mean.shape, device=mean.device))
    diagonal = torch.diagonal(factors, dim1=-2, dim2=-1)
    return factors - torch.diag_embed(diagonal) + torch.diag_embed(diagonal.abs().clamp_min(1e-3))


# ---------------------------------------------------------------------------- the model


class WassersteinFlowMatching(Model):
    r"""Wasserstein Flow Matching: a generative model of point clouds (niches).

    The velocity field is a permutation-equivariant masked set transformer
    (:class:`~spatialot.models.SetTransformer`) over the points of a cloud, with Fourier time
    features and an optional label embedding added to the token stream before every block; its
    output layer starts near zero. Training pairs each data cloud with a noise cloud of the same
    size, matches their points by OT (exact assignment for equal sizes, entropic map otherwise;
    squared-Euclidean cost, i.e. :math:`W_2^2`), and regresses the displacement of matched points
    at a uniform random time on the straight line between them. Sampling integrates the field
    from noise (Euler or midpoint steps). Conditional models drop the label of a fraction
    ``p_uncond`` of the clouds in training, which enables classifier-free guidance.

    Parameters
    ----------
    dim
        Dimension of the points.
    max_size
        Largest cloud size the model records sizes for (that of the training clouds).
    labels
        Names of the conditions (e.g. the centre cell's types); ``None`` for an unconditional model.
    width, n_layers, n_heads, mlp_width, dropout
        Shape of the set transformer (the official one: 512, 6, 4, 512, 0.1; smaller by default
        for CPU).
    n_frequencies
        Number of Fourier frequencies of the time features.
    noise
        Source family: ``'normal'`` draws i.i.d. standard normal points in the standardised space
        of the data (the official default of its spatial class); ``'cholesky'`` draws per noise
        cloud a random Cholesky factor around the mean Cholesky factor of the data clouds'
        covariances, scaled by ``noise_scale`` (the official default).
    noise_scale
        Scale of the ``'cholesky'`` noise (official 2.0).
    matching
        How noise and data points are matched, see :func:`matched_targets`.
    epsilon
        Relative entropic regularisation of the entropic map.

    Notes
    -----
    Points are standardised inside the model by the per-dimension mean and one global scale
    (so that the geometry, and with it :math:`W_2`, is preserved up to that scale); samples
    come back in the units of the data.

    Examples
    --------
    >>> import numpy as np
    >>> from spatialot.models import WassersteinFlowMatching
    >>> from spatialot.ot import PointClouds
    >>> rng = np.random.default_rng(0)
    >>> clouds = PointClouds.from_list([rng.normal(size=(8, 2)) for _ in range(32)])
    >>> model = WassersteinFlowMatching(2, max_size=8).fit(clouds, n_steps=50, progress=False)  # doctest: +SKIP
    >>> model.sample(4).points.shape  # doctest: +SKIP
    torch.Size([4, 8, 2])
    """

    def __init__(
        self,
        dim: int,
        max_size: int,
        *,
        labels: Sequence[str] | None = None,
        width: int = 128,
        n_layers: int = 3,
        n_heads: int = 4,
        mlp_width: int = 256,
        dropout: float = 0.0,
        n_frequencies: int = 16,
        noise: Noise = "normal",
        noise_scale: float = 2.0,
        matching: Matching = "auto",
        epsilon: float = 0.002,
    ):
        dim, max_size = check_int("dim", dim), check_int("max_size", max_size)
        width, n_layers = check_int("width", width), check_int("n_layers", n_layers)
        if noise not in _NOISES:
            raise ValueError(f"`noise` must be one of {_NOISES}, got {noise!r}.")
        if matching not in _MATCHINGS:
            raise ValueError(f"`matching` must be one of {_MATCHINGS}, got {matching!r}.")
        if not epsilon > 0:
            raise ValueError(f"`epsilon` must be positive, got {epsilon}.")
        names = None if labels is None else [str(label) for label in labels]
        if names is not None and (len(names) == 0 or len(set(names)) != len(names)):
            raise ValueError("`labels` must be a non-empty list of distinct names.")
        super().__init__(
            dim=int(dim),
            max_size=int(max_size),
            labels=names,
            width=width,
            n_layers=n_layers,
            n_heads=n_heads,
            mlp_width=mlp_width,
            dropout=dropout,
            n_frequencies=n_frequencies,
            noise=noise,
            noise_scale=noise_scale,
            matching=matching,
            epsilon=epsilon,
        )
        self.label_names: list[str] = names or []
        self.conditioner = FlowConditioner(width, len(self.label_names), n_frequencies)
        self.transformer = SetTransformer(dim, width, n_layers, n_heads, mlp_width, dropout)
        self.head = zero_init(nn.Linear(width, dim))
        # fitted state
        self.register_buffer("center", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("cholesky_mean", torch.eye(dim))
        self.register_buffer("cholesky_std", torch.zeros(dim, dim))
        # row c: how many training clouds of label c had each size; the last row counts them all
        self.register_buffer("size_counts", torch.zeros(len(self.label_names) + 1, max_size + 1))

    # ------------------------------------------------------------------ pieces
    @property
    def conditional(self) -> bool:
        """Whether the model was built with labels."""
        return bool(self.label_names)

    def velocity(
        self, points: torch.Tensor, weights: torch.Tensor, t: torch.Tensor, codes: torch.Tensor
    ) -> torch.Tensor:
        """Velocity at standardised ``points`` ``(batch, size, dim)``, times ``t`` ``(batch,)`` and label ``codes``."""
        tokens = self.transformer(points, weights, self.conditioner(t, codes))
        return self.head(tokens) * (weights > 0)[..., None]

    def _standardise(self, clouds: PointClouds) -> PointClouds:
        points = (clouds.points - self.center) / self.scale * clouds.mask[..., None]
        return PointClouds(points, clouds.mask, clouds.weights)

    def draw_noise(self, mask: torch.Tensor) -> PointClouds:
        """Noise clouds (standardised space) with the given mask and uniform weights."""
        batch, size = mask.shape
        dim = self.config["dim"]
        points = torch.randn(batch, size, dim, device=self.device)
        if self.config["noise"] == "cholesky":
            factors = random_cholesky(self.cholesky_mean, self.cholesky_std, batch)
            points = self.config["noise_scale"] * points @ factors.transpose(1, 2)
        weights = mask.to(points.dtype) / mask.sum(1, keepdim=True).clamp_min(1)
        return PointClouds(points * mask[..., None], mask, weights)

    def flow_matching_loss(self, data: PointClouds, codes: torch.Tensor) -> torch.Tensor:
        """Flow-matching loss of a batch of standardised data clouds with label codes."""
        # the network runs in the training loop's precision, the noise, matching and loss in float32
        with full_precision(data.device):
            noise = self.draw_noise(data.mask)
            matched = matched_targets(noise, data, matching=self.config["matching"], epsilon=self.config["epsilon"])
        t = torch.rand(len(data), device=self.device)
        points = (1 - t)[:, None, None] * noise.points + t[:, None, None] * matched
        velocity = self.velocity(points, noise.weights, t, codes)
        with full_precision(data.device):
            error = (velocity.float() - (matched - noise.points)) ** 2
            return (error.sum(-1) * noise.weights).sum(1).mean()

    # ------------------------------------------------------------------ training
    def _check_family(self, family: CloudFamily) -> None:
        super()._check_family(family)
        if family.max_size > self.config["max_size"]:
            raise ValueError(
                f"The clouds hold up to {family.max_size} points, but the model was built for `max_size`="
                f"{self.config['max_size']}."
            )

    def _calibrate(self, family: CloudFamily, codes: np.ndarray, rng: np.random.Generator) -> None:
        sample = take(family, np.sort(rng.choice(len(family), min(len(family), 4096), replace=False)), self.device)
        # in float64: squares of features beyond about 1e19 overflow float32 to inf
        points, weights = sample.points.double(), sample.weights[..., None].double() / len(sample)
        center = (weights * points).sum((0, 1))
        variance = (weights * (points - center) ** 2 * sample.mask[..., None]).sum() / self.config["dim"]
        scale = float(variance.clamp_min(1e-24).sqrt())
        check_float32_range(np.array([scale]), "The spread of the points")
        self.center.copy_(center)
        self.scale.fill_(scale)
        if self.config["noise"] == "cholesky":
            _, covariances = gaussian_moments(self._standardise(sample))
            mean, std = cholesky_statistics(covariances.double())
            self.cholesky_mean.copy_(mean.float())
            self.cholesky_std.copy_(std.float())
        sizes = np.asarray(family.sizes.cpu() if isinstance(family.sizes, torch.Tensor) else family.sizes)
        counts = np.zeros(tuple(self.size_counts.shape))
        np.add.at(counts, (codes, sizes), 1)
        np.add.at(counts, (np.full(len(sizes), len(self.label_names)), sizes), 1)
        self.size_counts.copy_(torch.as_tensor(counts))

    def fit(
        self,
        family: CloudFamily,
        labels: Sequence | np.ndarray | None = None,
        *,
        n_steps: int = 2000,
        batch_size: int = 16,
        learning_rate: float = 3e-4,
        decay_rate: float = 0.998,
        decay_every: int = 1000,
        p_uncond: float = 0.1,
        max_grad_norm: float | None = 1.0,
        device: torch.device | str = "auto",
        random_state: int | None = 0,
        progress: bool = True,
        checkpoint: str | os.PathLike | None = None,
        checkpoint_every: int = CHECKPOINT_EVERY,
        precision: Precision = "float32",
    ) -> WassersteinFlowMatching:
        """Train by flow matching on random minibatches of ``family``.

        A first call also records the standardisation, the noise family's statistics and the
        distribution of cloud sizes (per label); further calls continue training.

        Parameters
        ----------
        family
            Training clouds (:class:`~spatialot.ot.PointClouds` or :class:`~spatialot.ot.IndexedClouds`).
        labels
            Condition of every cloud, as names from ``labels`` of the constructor or integer
            codes; required by a conditional model, refused by an unconditional one.
        n_steps
            Optimiser steps.
        batch_size
            Clouds per minibatch (official 16).
        learning_rate
            Initial Adam learning rate (official 3e-4 for spatial data).
        decay_rate, decay_every
            Multiply the learning rate by ``decay_rate`` every ``decay_every`` steps.
        p_uncond
            Fraction of labels replaced by the null label in training (classifier-free guidance).
        max_grad_norm
            Clip the gradient norm to this value.
        device
            ``'auto'`` (CUDA when present, else CPU), ``'cpu'`` or ``'cuda'``.
        random_state
            Seed of minibatches, noise, times and label dropout.
        progress
            Show a progress bar with the running loss.
        checkpoint
            File to write a training checkpoint to every ``checkpoint_every`` steps and at the end;
            when it exists, training resumes from it (see :doc:`/training`).
        checkpoint_every
            Steps between two checkpoints.
        precision
            ``'float32'``, or ``'bfloat16'`` for bf16 autocast of the velocity network (the OT
            matching and the loss stay float32).

        Returns
        -------
        The model itself, trained, in evaluation mode.
        """
        self._check_family(family)
        if len(family) < 1:
            raise ValueError("`family` holds no cloud.")
        if self.conditional and labels is None:
            raise ValueError(f"This model is conditional on {self.label_names}: pass `labels` for every cloud.")
        if not self.conditional and labels is not None:
            raise ValueError("This model was built without `labels`; build it with `labels=` to train on conditions.")
        if not 0 <= p_uncond <= 1:
            raise ValueError(f"`p_uncond` must lie in [0, 1], got {p_uncond}.")
        batch_size = check_int("batch_size", batch_size)
        codes = label_codes(labels, self.label_names, len(family))
        self.to(resolve_device(device))
        codes_tensor = torch.as_tensor(codes, device=self.device)
        # a failure anywhere below, calibration included, leaves the model as it was
        with restored_on_failure(self), seeded(random_state) as rng:
            if not self.history:
                self._calibrate(family, codes, rng)

            def step_loss(step: int) -> torch.Tensor:
                chosen = np.sort(rng.choice(len(family), min(batch_size, len(family)), replace=False))
                chosen_codes = codes_tensor[torch.as_tensor(chosen, device=self.device)]
                batch_codes = drop_labels(chosen_codes, len(self.label_names), p_uncond)
                data = self._standardise(take(family, chosen, self.device))
                return self.flow_matching_loss(data, batch_codes)

            train(
                self,
                step_loss,
                n_steps=n_steps,
                learning_rate=learning_rate,
                decay_rate=decay_rate,
                decay_every=decay_every,
                max_grad_norm=max_grad_norm,
                progress=progress,
                description="WFM",
                rng=rng,
                checkpoint=checkpoint,
                checkpoint_every=checkpoint_every,
                precision=precision,
            )
        return self

    # ------------------------------------------------------------------ sampling
    def draw_sizes(self, codes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Cloud sizes drawn from the training sizes of each label (all clouds for the null label)."""
        counts = self.size_counts.cpu().double().numpy()
        if counts.sum() == 0:
            raise ValueError("The model has not been trained: call `fit` first, or pass `sizes`.")
        sizes = np.empty(len(codes), dtype=np.int64)
        for code in np.unique(codes):
            row = counts[code] if counts[code].sum() > 0 else counts[-1]
            chosen = codes == code
            sizes[chosen] = rng.choice(len(row), size=int(chosen.sum()), p=row / row.sum())
        return sizes

    def _guided_velocity(self, points, weights, t, codes, guidance: float) -> torch.Tensor:
        velocity = self.velocity(points, weights, t, codes)
        null = len(self.label_names)
        if guidance == 1.0 or not self.conditional:
            return velocity
        unconditional = self.velocity(points, weights, t, torch.full_like(codes, null))
        guided = unconditional + guidance * (velocity - unconditional)
        # clouds sampled with the null label have no conditional field to amplify
        return torch.where((codes == null)[:, None, None], velocity, guided)

    def sample(
        self,
        n: int | None = None,
        *,
        labels: Sequence | np.ndarray | str | int | None = None,
        sizes: int | Sequence[int] | np.ndarray | None = None,
        n_steps: int = 100,
        method: Integrator = "euler",
        guidance: float = 1.0,
        batch_size: int = 256,
        random_state: int | None = 0,
    ) -> PointClouds:
        """Generate clouds by integrating the learned flow from noise clouds.

        Parameters
        ----------
        n
            Number of clouds; may be left out when ``labels`` or ``sizes`` is a sequence.
        labels
            Condition of each cloud: one name/code for all, one per cloud, or ``None`` (the null
            label: unconditional generation).
        sizes
            Number of points of each cloud: one for all, one per cloud, or ``None`` to draw them
            from the training sizes of each label. At most ``max_size``.
        n_steps
            Integration steps from time 0 to 1.
        method
            ``'euler'`` or ``'midpoint'`` (second order, two field evaluations per step).
        guidance
            Classifier-free guidance weight ``w`` of ``v_null + w (v_label - v_null)``; 1 is plain
            conditional sampling (the official code uses 1.5).
        batch_size
            Clouds integrated together.
        random_state
            Seed of the noise and of the drawn sizes.

        Returns
        -------
        The generated clouds in data units, as a :class:`~spatialot.ot.PointClouds` batch on
        CPU padded to ``max_size`` (uniform weights on the real points).
        """
        n = _resolve_count(n, labels, sizes)
        if method not in _INTEGRATORS:
            raise ValueError(f"`method` must be one of {_INTEGRATORS}, got {method!r}.")
        n_steps, batch_size = check_int("n_steps", n_steps), check_int("batch_size", batch_size)
        codes = label_codes(labels, self.label_names, n)
        max_size = self.config["max_size"]
        with seeded(random_state) as rng:
            if sizes is None:
                size_array = self.draw_sizes(codes, rng)
            else:
                size_array = np.broadcast_to(np.asarray(sizes, dtype=np.int64), (n,)).copy()
            if size_array.min(initial=1) < 1 or size_array.max(initial=1) > max_size:
                raise ValueError(f"`sizes` must lie between 1 and `max_size`={max_size}.")
            mask = torch.as_tensor(np.arange(max_size)[None, :] < size_array[:, None])
            points = torch.zeros(n, max_size, self.config["dim"])
            was_training = self.training
            self.eval()
            try:
                with torch.no_grad(), cpu_threads():
                    for start in range(0, n, batch_size):
                        chunk = slice(start, min(start + batch_size, n))
                        noise = self.draw_noise(mask[chunk].to(self.device))
                        codes_chunk = torch.as_tensor(codes[chunk], device=self.device)
                        end = self._integrate(noise, codes_chunk, n_steps, method, guidance)
                        points[chunk] = (end * self.scale + self.center).cpu()
            finally:
                self.train(was_training)
        return PointClouds.from_padded(points, mask)

    def _integrate(self, noise: PointClouds, codes: torch.Tensor, n_steps: int, method: str, guidance: float):
        points, weights = noise.points, noise.weights
        dt = 1.0 / n_steps
        for step in range(n_steps):
            t = torch.full((len(points),), step * dt, device=points.device)
            velocity = self._guided_velocity(points, weights, t, codes, guidance)
            if method == "midpoint":
                halfway = points + 0.5 * dt * velocity
                velocity = self._guided_velocity(halfway, weights, t + 0.5 * dt, codes, guidance)
            points = points + dt * velocity
        return points * noise.mask[..., None]


def _resolve_count(n, labels, sizes) -> int:
    """The number of clouds asked for, from ``n`` or the length of ``labels`` / ``sizes``."""
    lengths = {
        len(value)
        for value in (labels, sizes)
        if value is not None and not isinstance(value, str | int | np.integer) and np.ndim(value) == 1
    }
    if n is None:
        if len(lengths) != 1:
            raise ValueError("Pass `n`, or `labels`/`sizes` as sequences of one common length.")
        return lengths.pop()
    n = check_int("n", n)
    if lengths - {n}:
        raise ValueError(f"`labels` and `sizes` must have `n`={n} entries when given as sequences.")
    return int(n)
