r"""Wasserstein Flow Matching on Gaussians: niches as (mean, covariance), the Bures–Wasserstein geometry.

Between two Gaussians the OT map is affine, :math:`T(x) = m_1 + A (x - m_0)` with :math:`A` from
:func:`~spatialot.ot.gaussian_map`, and the Wasserstein geodesic (McCann interpolation) moves
every point :math:`x_0` along :math:`x_t = m_t + S_t (x_0 - m_0)`, :math:`S_t = (1-t) I + t A`. Its
velocity field at time :math:`t` is :math:`v_t(x) = \dot m + V_t (x - m_t)` with the symmetric
:math:`V_t = (A - I) S_t^{-1}` (``A`` and ``S_t`` commute), which moves the covariance as
:math:`\dot\Sigma_t = V_t \Sigma_t + \Sigma_t V_t`. The network regresses :math:`(\dot m, V_t)`;
the loss is the squared norm of the error in the tangent space of the Wasserstein space,
:math:`\lVert \delta m \rVert^2 + \operatorname{tr}(\delta V\, \Sigma_t\, \delta V)`, i.e. the
:math:`L^2(N(m_t, \Sigma_t))` error of the velocity field.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from .._docs import inject_docs
from .._settings import cpu_threads
from .._validation import as_tensor, check_float32_range, check_int
from ..ot import gaussian_map
from ._base import Model
from ._blocks import mlp
from ._device import resolve_device, seeded
from ._training import CHECKPOINT_EVERY, Precision, Schedule, full_precision, restored_on_failure, train
from ._wfm import (
    _INTEGRATORS,
    DEFAULT_N_STEPS,
    FlowConditioner,
    Integrator,
    _resolve_count,
    cholesky_statistics,
    drop_labels,
    label_codes,
    random_cholesky,
    zero_init,
)


def bures_velocity(
    mean_0: torch.Tensor, cov_0: torch.Tensor, mean_1: torch.Tensor, cov_1: torch.Tensor, t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Point and velocity at time ``t`` on the Wasserstein geodesic between Gaussians.

    Parameters
    ----------
    mean_0, cov_0
        Start Gaussians, ``(batch, d)`` and ``(batch, d, d)``; ``cov_0`` non-singular.
    mean_1, cov_1
        End Gaussians.
    t
        Times ``(batch,)`` in ``[0, 1)``.

    Returns
    -------
    ``(mean_t, cov_t, mean_velocity, matrix_velocity)``: the Gaussian at time ``t`` (as
    :func:`~spatialot.ot.bures_geodesic`), :math:`\dot m = m_1 - m_0`, and the symmetric
    :math:`V_t` with :math:`\dot\Sigma_t = V_t \Sigma_t + \Sigma_t V_t`.
    """
    matrix, _ = gaussian_map(mean_0, cov_0, mean_1, cov_1)
    identity = torch.eye(matrix.shape[-1], dtype=matrix.dtype, device=matrix.device)
    step = (1 - t)[:, None, None] * identity + t[:, None, None] * matrix
    mean_t = (1 - t)[:, None] * mean_0 + t[:, None] * mean_1
    cov_t = step @ cov_0 @ step.transpose(-1, -2)
    # S⁻¹ (A − I), equal to (A − I) S⁻¹; S is invertible for t < 1 (A is positive definite), and
    # solve_ex skips the check of that, which would make the host wait for the device
    velocity = torch.linalg.solve_ex(step, matrix - identity).result
    return mean_t, cov_t, mean_1 - mean_0, 0.5 * (velocity + velocity.transpose(-1, -2))


class GaussianFlowMatching(Model):
    r"""Wasserstein Flow Matching over Gaussians (the Bures–Wasserstein mode).

    Each niche is summarised by the mean and covariance of its points (as COVET does with
    covariances); the model learns a flow on the space of Gaussians from a noise family of
    Gaussians to the data along Bures–Wasserstein geodesics (closed forms of
    :mod:`spatialot.ot`), and samples new (mean, covariance) pairs.

    Parameters
    ----------
    dim
        Dimension of the Gaussians.
    labels
        Names of the conditions; ``None`` for an unconditional model.
    width
        Width of the two MLP towers (mean velocity, covariance velocity).
    n_layers
        Hidden layers of each tower.
    n_frequencies
        Number of Fourier frequencies of the time features.
    ridge
        Added to the diagonal of the standardised data covariances, so that every covariance
        is non-singular (niches with fewer points than dimensions have singular ones); taken
        off the generated covariances again, so that they are unbiased.
    random_state
        Seed of the initial weights, drawn here whatever torch's global generator holds (``None``:
        drawn from it). Training and sampling are seeded by the ``random_state`` of :meth:`fit`
        and :meth:`sample`.

    Notes
    -----
    Noise Gaussians have standard normal means and covariances :math:`L L^\top` with a random
    Cholesky factor around the mean Cholesky factor of the data covariances (in the
    standardised space). Generated Gaussians come back in the units of the data.

    Examples
    --------
    >>> import numpy as np
    >>> from spatialot.models import GaussianFlowMatching
    >>> rng = np.random.default_rng(0)
    >>> means = rng.normal(size=(64, 2))
    >>> covariances = np.tile(np.eye(2), (64, 1, 1))
    >>> model = GaussianFlowMatching(2).fit(means, covariances, n_steps=50, progress=False)  # doctest: +SKIP
    >>> new_means, new_covariances = model.sample(8)  # doctest: +SKIP
    """

    def __init__(
        self,
        dim: int,
        *,
        labels: Sequence[str] | None = None,
        width: int = 256,
        n_layers: int = 3,
        n_frequencies: int = 16,
        ridge: float = 1e-2,
        random_state: int | None = 0,
    ):
        dim, width, n_layers = check_int("dim", dim), check_int("width", width), check_int("n_layers", n_layers)
        if not ridge > 0:
            raise ValueError(f"`ridge` must be positive, got {ridge}.")
        names = None if labels is None else [str(label) for label in labels]
        if names is not None and (len(names) == 0 or len(set(names)) != len(names)):
            raise ValueError("`labels` must be a non-empty list of distinct names.")
        super().__init__(
            dim=int(dim),
            labels=names,
            width=width,
            n_layers=n_layers,
            n_frequencies=n_frequencies,
            ridge=ridge,
            random_state=random_state,
        )
        self.label_names: list[str] = names or []
        n_triangle = dim * (dim + 1) // 2
        self.register_buffer("triangle", torch.tril_indices(dim, dim), persistent=False)
        with seeded(random_state):
            self.conditioner = FlowConditioner(width, len(self.label_names), n_frequencies)
            self.embed = nn.Linear(dim + n_triangle, width)
            self.mean_tower = mlp([width] * (n_layers + 1), final_activation=True)
            self.mean_head = zero_init(nn.Linear(width, dim))
            self.cov_tower = mlp([width] * (n_layers + 1), final_activation=True)
            self.cov_head = zero_init(nn.Linear(width, n_triangle))
        self.register_buffer("center", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("cholesky_mean", torch.eye(dim))
        self.register_buffer("cholesky_std", torch.zeros(dim, dim))
        self.register_buffer("label_counts", torch.zeros(len(self.label_names) + 1))

    @property
    def conditional(self) -> bool:
        """Whether the model was built with labels."""
        return bool(self.label_names)

    def velocity(
        self, mean: torch.Tensor, cov: torch.Tensor, t: torch.Tensor, codes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predicted ``(mean velocity, symmetric matrix velocity)`` at standardised Gaussians."""
        rows, cols = self.triangle
        features = torch.cat([mean, cov[:, rows, cols]], dim=1)
        hidden = self.embed(features) + self.conditioner(t, codes)
        mean_velocity = self.mean_head(self.mean_tower(hidden))
        lower = torch.zeros_like(cov)
        lower[:, rows, cols] = self.cov_head(self.cov_tower(hidden)).to(lower.dtype)
        return mean_velocity, 0.5 * (lower + lower.transpose(-1, -2))

    def draw_noise(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` noise Gaussians (standardised space): means and covariances."""
        factors = random_cholesky(self.cholesky_mean, self.cholesky_std, n)
        eye = torch.eye(self.config["dim"], device=self.device)
        return torch.randn(n, self.config["dim"], device=self.device), factors @ factors.transpose(1, 2) + 1e-3 * eye

    def _standardise(self, means: torch.Tensor, covs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        eye = torch.eye(self.config["dim"], device=self.device)
        return (means - self.center) / self.scale, covs / self.scale**2 + self.config["ridge"] * eye

    def flow_matching_loss(self, means: torch.Tensor, covs: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Tangent-space flow-matching loss of standardised data Gaussians with label codes."""
        # the network runs in the training loop's precision, the closed forms and the loss in float32
        with full_precision(means.device):
            noise_mean, noise_cov = self.draw_noise(len(means))
            t = torch.rand(len(means), device=self.device)
            mean_t, cov_t, target_m, target_v = bures_velocity(noise_mean, noise_cov, means, covs, t)
        predicted_m, predicted_v = self.velocity(mean_t, cov_t, t, codes)
        with full_precision(means.device):
            error_v = predicted_v.float() - target_v
            covariance_term = torch.diagonal(error_v @ cov_t @ error_v, dim1=-2, dim2=-1).sum(-1)
            return (((predicted_m.float() - target_m) ** 2).sum(-1) + covariance_term).mean()

    def _check_moments(self, means, covariances) -> tuple[torch.Tensor, torch.Tensor]:
        dim = self.config["dim"]
        means = as_tensor(np.asarray(means), dtype=torch.float32)
        covariances = as_tensor(np.asarray(covariances), dtype=torch.float32)
        if means.ndim != 2 or means.shape[1] != dim or len(means) < 1:
            raise ValueError(f"`means` must have shape (n, {dim}), got {tuple(means.shape)}.")
        if covariances.shape != (len(means), dim, dim):
            raise ValueError(
                f"`covariances` must have shape ({len(means)}, {dim}, {dim}), got {tuple(covariances.shape)}."
            )
        if not (torch.isfinite(means).all() and torch.isfinite(covariances).all()):
            raise ValueError("`means` and `covariances` must be finite.")
        return means, 0.5 * (covariances + covariances.transpose(1, 2))

    @inject_docs
    def fit(
        self,
        means: np.ndarray | torch.Tensor,
        covariances: np.ndarray | torch.Tensor,
        labels: Sequence | np.ndarray | None = None,
        *,
        n_steps: int = DEFAULT_N_STEPS,
        batch_size: int = 64,
        learning_rate: float = 1e-3,
        decay_rate: float = 0.0,
        decay_every: int = 1000,
        schedule: Schedule = "cosine",
        warmup_steps: int = 100,
        p_uncond: float = 0.1,
        max_grad_norm: float | None = 1.0,
        device: torch.device | str = "auto",
        random_state: int | None = 0,
        progress: bool = True,
        checkpoint: str | os.PathLike | None = None,
        checkpoint_every: int = CHECKPOINT_EVERY,
        precision: Precision = "float32",
    ) -> GaussianFlowMatching:
        """Train by flow matching along Bures–Wasserstein geodesics.

        Parameters
        ----------
        means, covariances
            The data Gaussians, shapes ``(n, dim)`` and ``(n, dim, dim)`` (e.g. from
            :func:`~spatialot.ot.gaussian_moments` of the niches).
        labels
            Condition of every Gaussian (names or codes); required by a conditional model.
        n_steps
            Optimiser steps.
        batch_size
            Gaussians per minibatch.
        learning_rate
            Peak Adam learning rate.
        schedule, warmup_steps, decay_rate, decay_every
            The learning-rate schedule, as in :meth:`WassersteinFlowMatching.fit
            <spatialot.models.WassersteinFlowMatching.fit>`: by default a warm-up of 100 steps,
            then a cosine to 0 at ``n_steps``; ``schedule='step'`` with ``decay_rate=0.998``
            and ``warmup_steps=0`` is the official code's (nearly constant) rate.
        p_uncond
            Fraction of labels dropped to the null label (classifier-free guidance).
        max_grad_norm
            Clip the gradient norm to this value.
        device
            ``'auto'`` (CUDA when present, else CPU), ``'cpu'`` or ``'cuda'``.
        random_state
            Seed of minibatches, noise, times and label dropout.
        progress
            Show a progress bar with the running loss.
        {checkpoint}
        precision
            ``'float32'``, or ``'bfloat16'`` for bf16 autocast of the velocity network (the
            Bures–Wasserstein targets and the loss stay float32).

        Returns
        -------
        The model itself, trained, in evaluation mode.
        """
        means, covariances = self._check_moments(means, covariances)
        if self.conditional and labels is None:
            raise ValueError(f"This model is conditional on {self.label_names}: pass `labels` for every Gaussian.")
        if not self.conditional and labels is not None:
            raise ValueError("This model was built without `labels`; build it with `labels=` to train on conditions.")
        if not 0 <= p_uncond <= 1:
            raise ValueError(f"`p_uncond` must lie in [0, 1], got {p_uncond}.")
        batch_size = check_int("batch_size", batch_size)
        codes = label_codes(labels, self.label_names, len(means))
        self.to(resolve_device(device))
        means, covariances = means.to(self.device), covariances.to(self.device)
        codes_tensor = torch.as_tensor(codes, device=self.device)
        # a failure anywhere below, calibration included, leaves the model as it was
        with restored_on_failure(self), seeded(random_state) as rng:
            if not self.history:
                self._calibrate(means, covariances, codes)
            data_means, data_covs = self._standardise(means, covariances)

            def step_loss(step: int) -> torch.Tensor:
                chosen = torch.as_tensor(rng.choice(len(means), min(batch_size, len(means)), replace=False))
                chosen = chosen.to(self.device)
                batch_codes = drop_labels(codes_tensor[chosen], len(self.label_names), p_uncond)
                return self.flow_matching_loss(data_means[chosen], data_covs[chosen], batch_codes)

            train(
                self,
                step_loss,
                n_steps=n_steps,
                learning_rate=learning_rate,
                decay_rate=decay_rate,
                decay_every=decay_every,
                schedule=schedule,
                warmup_steps=warmup_steps,
                max_grad_norm=max_grad_norm,
                progress=progress,
                description="WFM (Gaussian)",
                rng=rng,
                checkpoint=checkpoint,
                checkpoint_every=checkpoint_every,
                precision=precision,
            )
        return self

    def _calibrate(self, means: torch.Tensor, covs: torch.Tensor, codes: np.ndarray) -> None:
        center = means.mean(0)
        total = ((means - center) ** 2).sum(1).mean() + torch.diagonal(covs, dim1=1, dim2=2).sum(1).mean()
        # float32 moments of features beyond about 1e19 have overflowed to inf
        check_float32_range(total.detach().cpu().numpy(), "The spread of the Gaussians (squared feature units)")
        self.center.copy_(center)
        self.scale.fill_(float((total / self.config["dim"]).clamp_min(1e-24).sqrt()))
        _, standardised = self._standardise(means, covs)
        mean, std = cholesky_statistics(standardised.double())
        self.cholesky_mean.copy_(mean.float())
        self.cholesky_std.copy_(std.float())
        counts = np.bincount(codes, minlength=len(self.label_names) + 1).astype(np.float32)
        self.label_counts.copy_(torch.as_tensor(counts))

    def sample(
        self,
        n: int | None = None,
        *,
        labels: Sequence | np.ndarray | str | int | None = None,
        n_steps: int = 100,
        method: Integrator = "euler",
        guidance: float = 1.0,
        random_state: int | None = 0,
    ) -> tuple[np.ndarray, np.ndarray]:
        r"""Generate Gaussians by integrating the learned flow from noise Gaussians.

        Parameters
        ----------
        n
            Number of Gaussians; may be left out when ``labels`` is a sequence.
        labels
            Condition of each Gaussian: one for all, one each, or ``None`` (null label).
        n_steps
            Integration steps from time 0 to 1.
        method
            ``'euler'`` or ``'midpoint'``. Covariances are pushed forward by the linear part of
            each step, :math:`\Sigma \leftarrow (I + h V) \Sigma (I + h V)`, so they stay positive
            semi-definite.
        guidance
            Classifier-free guidance weight (1: plain conditional sampling).
        random_state
            Seed of the noise.

        Returns
        -------
        Means ``(n, dim)`` and covariances ``(n, dim, dim)`` in data units, as float32 arrays;
        the training ridge is removed from the covariances (eigenvalues below it clip to zero).
        """
        n = _resolve_count(n, labels, None)
        if method not in _INTEGRATORS:
            raise ValueError(f"`method` must be one of {_INTEGRATORS}, got {method!r}.")
        n_steps = check_int("n_steps", n_steps)
        codes = torch.as_tensor(label_codes(labels, self.label_names, n), device=self.device)
        was_training = self.training
        self.eval()
        try:
            with seeded(random_state), torch.no_grad(), cpu_threads():
                mean, cov = self.draw_noise(n)
                dt = 1.0 / n_steps
                for step in range(n_steps):
                    t = torch.full((n,), step * dt, device=self.device)
                    velocity = self._guided(mean, cov, t, codes, guidance)
                    if method == "midpoint":
                        half_mean, half_cov = _step(mean, cov, *velocity, 0.5 * dt)
                        velocity = self._guided(half_mean, half_cov, t + 0.5 * dt, codes, guidance)
                    mean, cov = _step(mean, cov, *velocity, dt)
        finally:
            self.train(was_training)
        mean = mean * self.scale + self.center
        cov = self._unstandardise_covariances(cov)
        return mean.cpu().numpy(), cov.cpu().numpy()

    def _unstandardise_covariances(self, covs: torch.Tensor) -> torch.Tensor:
        """Inverse of the covariance part of :meth:`_standardise`, projected onto the PSD cone.

        The flow learns the data covariances *plus* the ridge, so the ridge comes off before
        rescaling; a generated eigenvalue below the ridge (the model undershooting a singular
        direction) would turn negative, and is clipped to zero: the nearest PSD matrix.
        """
        eye = torch.eye(self.config["dim"], dtype=covs.dtype, device=covs.device)
        values, vectors = torch.linalg.eigh(covs.double() - self.config["ridge"] * eye.double())
        unridged = (vectors * values.clamp_min(0)[..., None, :]) @ vectors.transpose(-1, -2)
        return (unridged * self.scale.double() ** 2).to(covs.dtype)

    def _guided(self, mean, cov, t, codes, guidance: float):
        mean_v, matrix_v = self.velocity(mean, cov, t, codes)
        null = len(self.label_names)
        if guidance == 1.0 or not self.conditional:
            return mean_v, matrix_v
        null_m, null_v = self.velocity(mean, cov, t, torch.full_like(codes, null))
        keep = codes == null
        guided_m = torch.where(keep[:, None], mean_v, null_m + guidance * (mean_v - null_m))
        guided_v = torch.where(keep[:, None, None], matrix_v, null_v + guidance * (matrix_v - null_v))
        return guided_m, guided_v


def _step(mean, cov, mean_velocity, matrix_velocity, dt):
    linear = torch.eye(cov.shape[-1], device=cov.device) + dt * matrix_velocity
    return mean + dt * mean_velocity, linear @ cov @ linear.transpose(-1, -2)
