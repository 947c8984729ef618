"""Anchor Space OT (ASOT): every cloud as a weight vector on one shared set of anchors."""

from __future__ import annotations

import math
import os
import warnings
from typing import Literal

import numpy as np
import torch
from torch import nn

from .._validation import as_tensor, check_int
from ..ot import IndexedClouds, PointClouds, exact_w2_squared
from ..ot._anchor import (
    AnchorMethod,
    anchor_cost,
    anchor_kneighbors,
    anchor_paired_distances,
    anchor_pairwise_distances,
    anchor_sinkhorn,
)
from ._base import Model
from ._batches import CloudFamily, map_batches, map_stretches, stretch_size, take
from ._device import resolve_device, seeded
from ._training import CHECKPOINT_EVERY, restored_on_failure, train

ASOTMethod = Literal["kmeans", "ml", "dl"]
ASOT_METHODS: tuple[str, ...] = ("kmeans", "ml", "dl")
_MIN_CODE = 1e-6
"""Soft codes below this are set to zero (and the rest renormalised)."""
_MINIBATCH_ABOVE = 50_000
"""Points above which k-means runs as mini-batch k-means."""
NEAR_PAIR_POOL = 100_000
"""Most clouds among which ASOT-ML's near training pairs are sought (a random sample beyond it)."""


class ASOT(Model):
    r"""Anchor Space OT: map clouds onto one anchor simplex and compare them with one shared cost.

    Every point gets a code on the simplex over ``n_anchors`` anchors; a cloud's histogram is
    the weighted sum of its points' codes. All histograms share the cost matrix between the
    anchors, so OT between any pairs runs as batched dense matrix products
    (:func:`~spatialot.ot.anchor_sinkhorn`). The cost is the **squared** Euclidean distance
    between anchors, so distances estimate :math:`W_2^2` between the clouds (the ASOT paper,
    Huang et al. 2023, uses the Euclidean cost).

    ``method='kmeans'`` (ASOT-k): anchors are k-means centroids (scikit-learn), a point's code is
    the one-hot of its nearest anchor. ``method='ml'`` (ASOT-ML, metric learning): starts from
    ASOT-k, then learns soft codes ``softmax(-||x - a_i||^2 / tau)`` (anchors ``a`` and
    temperature ``tau``) and the shared cost
    :math:`C_{ij} = \lVert b_i - b_j \rVert^2 + s_i + s_j` (anchor positions ``b`` and a
    non-negative spread ``s_i`` that stands for the variance quantisation removes), by
    minimising the relative squared error of the anchor-space Sinkhorn distance against exact
    :math:`W_2^2` (POT) on sampled pairs of clouds. Its distance of a cloud to itself is
    :math:`2\sum_i h_i s_i`, not 0; pairwise matrices set their diagonal to 0. This deviates
    from the paper's ASOT-ML, which learns soft codes from a linear map and the anchor cost
    from a learnt projection by matching point-to-point distances to expected anchor distances,
    with no OT in its loss: we fit the quantity the method is used for, exact :math:`W_2^2`
    between clouds, which a few thousand POT solves make affordable, and the spread term
    corrects the underestimate that coding a point by anchors causes (measured in
    ``benchmarks/asot.py``: ASOT-k with 32 anchors reaches Pearson 0.92 against exact
    :math:`W_2^2` on BDTNP niches, ASOT-ML 0.97).

    ``method='dl'`` (ASOT-DL, deep dictionary learning): the anchors are a learnt dictionary
    ``D`` and a point's code is the output of ``n_layers`` unrolled non-negative ISTA layers
    for :math:`\min_{z \ge 0} \tfrac12\lVert x - z D\rVert^2 + \lambda(x) \lVert z\rVert_1`,
    with a per-point sparsity weight :math:`\lambda(x) \ge 0` from a small MLP. Dictionary and
    MLP are trained at the point level, without OT in the loop, on the paper's loss
    :math:`\lVert x - zD\rVert^2 + (\lVert z\rVert_2 - 1)^2 + (\lVert z\rVert_1 - 1)^2`
    (its minima are codes that pick one atom with weight 1 and reconstruct the point). The
    shared cost is the squared distance between atoms, as for ASOT-k. Where this deviates from
    the paper and its code, and why: the dictionary is not passed through a ReLU (niche
    features such as PCA scores or latents are signed; a non-negative dictionary could not
    reconstruct them); points are centred and scaled before coding and the dictionary starts
    at the k-means centroids (their code starts it at random), so training refines ASOT-k's
    anchors instead of rediscovering them; the ISTA step is ``1 / L`` with ``L`` the largest
    eigenvalue of :math:`D D^\top`, recomputed from the dictionary (their step is a learnt
    scalar started at :math:`\lVert D\rVert_F^2`), so the layers stay a convergent ISTA
    whatever the dictionary; each point's code is normalised to sum 1 before the cloud's
    histogram is summed (every point keeps its own mass, as in the OT problem the histogram
    stands for), and a point whose code is all zero takes the one-hot code of its nearest atom.

    Parameters
    ----------
    dim
        Dimension of the points.
    n_anchors
        Number of anchors ``k``.
    method
        ``'kmeans'``, ``'ml'`` or ``'dl'``.
    epsilon
        Entropic regularisation of the anchor Sinkhorn, relative to the largest entry of the
        shared cost (so ``max(C) / epsilon = 1 / epsilon``; at most 30 keeps the fast float32
        kernel iterations). The paper's code uses an absolute 0.1 and 50 iterations; a relative
        value does not depend on the units of the features.
    n_iter
        Sinkhorn iterations per anchor problem (fixed, so that training and use agree).
    n_layers
        ``'dl'`` only: unrolled ISTA layers of the sparse coder (the paper uses 20).

    Examples
    --------
    >>> import numpy as np
    >>> from spatialot.models import ASOT
    >>> from spatialot.ot import PointClouds
    >>> rng = np.random.default_rng(0)
    >>> clouds = PointClouds.from_list([rng.normal(size=(8, 2)) for _ in range(20)])
    >>> model = ASOT(2, n_anchors=6).fit(clouds, progress=False)
    >>> model.transform(clouds).shape
    (20, 6)
    >>> model.pairwise_distances(clouds).shape  # doctest: +SKIP
    (20, 20)
    """

    def __init__(
        self,
        dim: int,
        n_anchors: int = 64,
        *,
        method: ASOTMethod = "kmeans",
        epsilon: float = 0.04,
        n_iter: int = 10,
        n_layers: int = 20,
    ):
        dim, n_anchors = check_int("dim", dim), check_int("n_anchors", n_anchors)
        if method not in ASOT_METHODS:
            raise ValueError(f"`method` must be one of {ASOT_METHODS}, got {method!r}.")
        if not (isinstance(epsilon, int | float) and epsilon > 0):
            raise ValueError(f"`epsilon` must be a positive number, got {epsilon!r}.")
        n_iter, n_layers = check_int("n_iter", n_iter), check_int("n_layers", n_layers)
        # n_layers only says something about ASOT-DL: the other methods keep it out of config and repr
        extra = {"n_layers": n_layers} if method == "dl" else {}
        super().__init__(dim=dim, n_anchors=n_anchors, method=method, epsilon=float(epsilon), n_iter=n_iter, **extra)
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        if method == "kmeans":
            self.register_buffer("anchors", torch.zeros(n_anchors, dim))
        elif method == "dl":
            self.register_buffer("center", torch.zeros(dim))
            self.anchors = nn.Parameter(torch.zeros(n_anchors, dim))  # the dictionary, one atom per row
            hidden = math.ceil(dim / 2)
            # the per-point sparsity weight, ReLU-ed as in the authors' code
            self.sparsity = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, 1), nn.ReLU())
        else:
            self.anchors = nn.Parameter(torch.zeros(n_anchors, dim))
            self.cost_anchors = nn.Parameter(torch.zeros(n_anchors, dim))
            self.log_temperature = nn.Parameter(torch.zeros(()))
            self.raw_spread = nn.Parameter(torch.zeros(n_anchors))

    # ------------------------------------------------------------------ the anchor space

    @property
    def n_anchors(self) -> int:
        """Number of anchors."""
        return self.config["n_anchors"]

    @property
    def method(self) -> str:
        """``'kmeans'``, ``'ml'`` or ``'dl'``."""
        return self.config["method"]

    def anchor_positions(self) -> np.ndarray:
        """The anchors that points are coded against, in the units of the points, shape ``(k, dim)``."""
        positions = self.anchors.detach() * self.scale
        if self.method == "dl":
            positions = positions + self.center
        return positions.cpu().numpy()

    def _standardised(self, points: torch.Tensor) -> torch.Tensor:
        """Points in the units the anchors are stored in (centred too for ``'dl'``)."""
        if self.method == "dl":
            points = points - self.center
        return points / self.scale

    def _scaled_cost(self) -> torch.Tensor:
        if self.method in ("kmeans", "dl"):
            return anchor_cost(self.anchors)
        spread = nn.functional.softplus(self.raw_spread)
        return anchor_cost(self.cost_anchors) + spread[:, None] + spread[None, :]

    def cost_geometry(self) -> tuple[np.ndarray, np.ndarray]:
        """Points ``p`` ``(k, dim)`` and offsets ``o`` ``(k,)`` with ``cost = ||p_i - p_j||^2 + o_i + o_j``.

        For ``'kmeans'`` and ``'dl'`` these are the anchors and zeros. They give the lower bound
        that :func:`~spatialot.ot.anchor_kneighbors` prunes with.
        """
        with torch.no_grad():
            if self.method in ("kmeans", "dl"):
                return self.anchor_positions(), np.zeros(self.n_anchors, dtype=np.float32)
            spread = nn.functional.softplus(self.raw_spread) * self.scale**2
            return (self.cost_anchors * self.scale).cpu().numpy(), spread.cpu().numpy()

    def cost(self) -> torch.Tensor:
        """The shared ``(k, k)`` cost between anchors in squared units of the points (W2² ground cost)."""
        with torch.no_grad():
            return self._scaled_cost() * self.scale**2

    def absolute_epsilon(self) -> float:
        """The Sinkhorn regularisation in the units of :meth:`cost`."""
        return self.config["epsilon"] * float(self.cost().max().clamp_min(1e-12))

    def _ista(self, points: torch.Tensor) -> torch.Tensor:
        """``'dl'``: the unrolled non-negative ISTA codes (not normalised) of standardised points."""
        atoms = self.anchors
        lipschitz = torch.linalg.matrix_norm(atoms.detach(), ord=2).square().clamp_min(1e-12)
        step = 1.0 / lipschitz
        correlation = points @ atoms.T  # (..., k)
        threshold = self.sparsity(points)  # (..., 1), non-negative
        shrink = torch.eye(self.n_anchors, dtype=atoms.dtype, device=atoms.device) - step * (atoms @ atoms.T)
        drive = step * (correlation - threshold)
        codes = torch.relu(drive)
        for _ in range(self.config["n_layers"] - 1):
            codes = torch.relu(codes @ shrink + drive)
        return codes

    def sparse_codes(self, points: np.ndarray | torch.Tensor) -> np.ndarray:
        """``'dl'`` only: the non-negative ISTA codes ``z`` of points, with ``points ≈ z @ D``.

        ``D`` is the dictionary in the units of the points, centred: ``anchor_positions()``
        minus the centre of the training points, so ``z @ (anchor_positions() - center) + center``
        reconstructs the points.

        Parameters
        ----------
        points
            Array ``(n, dim)`` in the units of the clouds.

        Returns
        -------
        Float32 array ``(n, n_anchors)``, non-negative, not normalised.

        Examples
        --------
        >>> import numpy as np
        >>> from spatialot.models import ASOT
        >>> from spatialot.ot import PointClouds
        >>> rng = np.random.default_rng(0)
        >>> clouds = PointClouds.from_list([rng.normal(size=(8, 2)) for _ in range(20)])
        >>> model = ASOT(2, n_anchors=4, method="dl").fit(clouds, n_steps=20, progress=False)
        >>> model.sparse_codes(clouds.points[0]).shape
        (8, 4)
        """
        self._check_fitted()
        if self.method != "dl":
            raise ValueError(f"`sparse_codes` is for method='dl', not {self.method!r}.")
        points = as_tensor(np.asarray(points), dtype=torch.float32, device=self.device)
        if points.ndim != 2 or points.shape[1] != self.config["dim"]:
            raise ValueError(f"`points` must have shape (n, {self.config['dim']}), got {tuple(points.shape)}.")
        with torch.no_grad():
            return self._ista(self._standardised(points)).cpu().numpy()

    def _codes(self, points: torch.Tensor) -> torch.Tensor:
        """Codes on the simplex of points given in standardised units, shape ``(..., k)``."""
        # the expanded square: the (..., k, dim) difference tensor would dominate training time
        squared = (
            (points**2).sum(-1, keepdim=True) + (self.anchors**2).sum(-1) - 2 * points @ self.anchors.T
        ).clamp_min(0)
        # a scatter rather than one_hot, which reads its indices' range back from the device
        nearest = torch.zeros_like(squared).scatter_(-1, squared.argmin(-1, keepdim=True), 1.0)
        if self.method == "kmeans":
            return nearest
        if self.method == "dl":
            codes = self._ista(points)
            total = codes.sum(-1, keepdim=True)
            # a point the layers code as all zero keeps its mass on its nearest atom
            codes = torch.where(total > 0, codes / total.clamp_min(1e-30), nearest)
        else:
            codes = torch.softmax(-squared / self.log_temperature.exp(), dim=-1)
        # negligible weights would turn into denormal floats in Sinkhorn, which are slow on CPU
        codes = torch.where(codes < _MIN_CODE, 0.0, codes)
        return codes / codes.sum(-1, keepdim=True)

    def _histograms(self, clouds: PointClouds) -> torch.Tensor:
        codes = self._codes(self._standardised(clouds.points))
        return (clouds.weights[..., None] * codes).sum(1)

    # ------------------------------------------------------------------ fitting

    def _check_family(self, family: CloudFamily) -> None:
        super()._check_family(family)
        if len(family) < 2:
            raise ValueError("ASOT needs at least two clouds.")

    def _check_fitted(self) -> None:
        if not bool(self.fitted):
            raise RuntimeError("The model is not fitted: call `fit` (or `from_anchors`) first.")

    def fit(
        self,
        family: CloudFamily,
        *,
        n_train_pairs: int = 2048,
        n_steps: int = 300,
        batch_size: int = 256,
        learning_rate: float = 1e-2,
        max_points: int | None = 1_000_000,
        random_state: int | None = 0,
        device: torch.device | str = "auto",
        progress: bool = True,
        checkpoint: str | os.PathLike | None = None,
        checkpoint_every: int = CHECKPOINT_EVERY,
    ) -> ASOT:
        """Place the anchors by k-means; ``'ml'`` then learns codes and cost against exact OT, ``'dl'`` a dictionary.

        Parameters
        ----------
        family
            The clouds (:class:`~spatialot.ot.PointClouds` or :class:`~spatialot.ot.IndexedClouds`).
            k-means sees every point once per cloud it belongs to, with its weight in that cloud.
        n_train_pairs
            ``'ml'`` only: pairs of clouds whose exact :math:`W_2^2` (POT) is the training target;
            half are random pairs, half near pairs (neighbours in the initial anchor weights, among
            a random sample of ``NEAR_PAIR_POOL`` = 100,000 clouds when there are more), so that both
            far and close distances are learnt.
        n_steps
            ``'ml'`` and ``'dl'``: optimiser steps.
        batch_size
            ``'ml'``: pairs per step; ``'dl'``: points per step (drawn by their mass in the clouds).
        learning_rate
            ``'ml'`` and ``'dl'``: Adam learning rate, in units of the rms spread of the points.
        max_points
            Most distinct points that k-means (and ASOT-DL's dictionary) sees: when the clouds
            hold more, a uniform random sample of that many, each with its mass. k-means'
            objective is a weighted mean over the points, which a sample of a million estimates
            closely; its time and memory then stop growing with the atlas. ``None``: every point.
        random_state
            Seed of k-means, pair sampling and training.
        device
            ``'auto'``, ``'cpu'`` or ``'cuda'``.
        progress
            Show a progress bar.
        checkpoint
            ``'ml'`` only: file to write a training checkpoint to every ``checkpoint_every`` steps
            and at the end; when it exists, training resumes from it (see :doc:`/training`).
        checkpoint_every
            ``'ml'`` only: steps between two checkpoints.

        Returns
        -------
        The fitted model.
        """
        self._check_family(family)
        if self.method in ("ml", "dl"):
            n_train_pairs, n_steps = check_int("n_train_pairs", n_train_pairs), check_int("n_steps", n_steps)
            batch_size = check_int("batch_size", batch_size)
        if max_points is not None:
            max_points = check_int("max_points", max_points, minimum=self.n_anchors)
        # the sample is drawn apart from `rng`, so that it changes no other random choice of the fit
        points, weights = _weighted_points(family, max_points, np.random.default_rng(random_state))
        if len(points) < self.n_anchors:
            raise ValueError(f"`n_anchors`={self.n_anchors} exceeds the {len(points)} distinct points of the clouds.")
        self.to(resolve_device(device))
        # a failure anywhere below, k-means included, leaves the model as it was
        with restored_on_failure(self), seeded(random_state) as rng:
            centers, labels = _kmeans(points, weights, self.n_anchors, random_state)
            residuals = ((points - centers[labels]) ** 2).sum(1)
            spread = np.sqrt(np.average(((points - np.average(points, 0, weights)) ** 2).sum(1), weights=weights))
            scale = float(spread) if spread > 0 else 1.0
            with torch.no_grad():
                self.scale.fill_(scale)
                self.anchors.copy_(torch.as_tensor(centers / scale, dtype=torch.float32))
                self.fitted.fill_(True)
            if self.method == "ml":
                self._init_ml(centers / scale, residuals / scale**2, labels, weights)
                self._train(
                    family,
                    rng,
                    n_train_pairs,
                    n_steps,
                    batch_size,
                    learning_rate,
                    progress,
                    checkpoint,
                    checkpoint_every,
                )
            if self.method == "dl":
                self._train_dl(points, weights, centers, rng, n_steps, batch_size, learning_rate, progress)
        return self

    @classmethod
    def from_anchors(
        cls, anchors: np.ndarray | torch.Tensor, *, epsilon: float = 0.04, n_iter: int = 10, device="auto"
    ) -> ASOT:
        """An ASOT-k model with given anchors (no k-means), e.g. the support points of the clouds.

        Parameters
        ----------
        anchors
            Array ``(k, dim)``.
        epsilon, n_iter
            As in :class:`ASOT`.
        device
            ``'auto'``, ``'cpu'`` or ``'cuda'``.

        Returns
        -------
        A fitted ``method='kmeans'`` model whose codes are the one-hot nearest anchor.
        """
        anchors = as_tensor(np.asarray(anchors), dtype=torch.float32)
        if anchors.ndim != 2 or not bool(torch.isfinite(anchors).all()):
            raise ValueError(f"`anchors` must be a finite 2-D array (k, dim), got shape {tuple(anchors.shape)}.")
        model = cls(anchors.shape[1], anchors.shape[0], method="kmeans", epsilon=epsilon, n_iter=n_iter)
        with torch.no_grad():
            model.anchors.copy_(anchors)
            model.fitted.fill_(True)
        return model.to(resolve_device(device))

    def _init_ml(self, centers, residuals, labels, weights) -> None:
        per_anchor = np.bincount(labels, weights * residuals, self.n_anchors) / np.maximum(
            np.bincount(labels, weights, self.n_anchors), 1e-12
        )
        mean_residual = max(float(np.average(residuals, weights=weights)), 1e-6)
        # half the within-anchor variance: a start between no correction and the independent-residual one
        spread = np.maximum(0.5 * per_anchor, 1e-4 * mean_residual)
        with torch.no_grad():
            self.cost_anchors.copy_(torch.as_tensor(centers, dtype=torch.float32))
            self.raw_spread.copy_(torch.as_tensor(spread + np.log(-np.expm1(-spread)), dtype=torch.float32))
            # codes start close to the hard nearest-anchor codes of ASOT-k
            self.log_temperature.fill_(math.log(0.25 * mean_residual))

    def _train(
        self, family, rng, n_train_pairs, n_steps, batch_size, learning_rate, progress, checkpoint, checkpoint_every
    ) -> None:
        device = self.device
        first, second = self._training_pairs(family, rng, n_train_pairs)
        x, y = take(family, first, torch.device("cpu")), take(family, second, torch.device("cpu"))
        target = torch.as_tensor(exact_w2_squared(x, y), dtype=torch.float32, device=device) / self.scale**2
        x = PointClouds(x.points.to(device), x.mask.to(device), x.weights.to(device))
        y = PointClouds(y.points.to(device), y.mask.to(device), y.weights.to(device))
        epsilon, n_iter = self.config["epsilon"], self.config["n_iter"]

        def step_loss(step: int) -> torch.Tensor:
            chosen = rng.choice(len(target), min(batch_size, len(target)), replace=False)
            cost = self._scaled_cost()
            # ε relative to the largest cost: the cost in units of it (the same plan as ε times it),
            # so that the step never reads it on the host
            unit = cost.detach().max()
            value = unit * anchor_sinkhorn(
                self._histograms(x[chosen]), self._histograms(y[chosen]), cost / unit, epsilon=epsilon, n_iter=n_iter
            )
            goal = target[torch.as_tensor(chosen, device=device)]
            return ((value - goal) ** 2).mean() / (goal**2).mean().clamp_min(1e-12)

        self._train_steps(
            step_loss,
            n_steps,
            learning_rate,
            progress,
            "ASOT-ML",
            rng=rng,
            checkpoint=checkpoint,
            checkpoint_every=checkpoint_every,
        )

    def _train_steps(self, step_loss, n_steps, learning_rate, progress, description, **options) -> None:
        """The shared training loop with ASOT's schedule: halve the rate twice, clip at 10."""
        train(
            self,
            step_loss,
            n_steps=n_steps,
            learning_rate=learning_rate,
            decay_rate=0.5,
            decay_every=max(1, n_steps // 3),
            max_grad_norm=10.0,
            progress=progress,
            description=description,
            **options,
        )

    def _train_dl(self, points, weights, centers, rng, n_steps, batch_size, learning_rate, progress) -> None:
        """ASOT-DL: the dictionary (started at the centroids) and the sparsity MLP, on points alone."""
        device = self.device
        center = np.average(points, axis=0, weights=weights)
        # drawn here, under fit's seed: drawn by the constructor, the start (and so the fitted
        # codes) would depend on whatever used torch's global generator before
        for layer in self.sparsity:
            if isinstance(layer, nn.Linear):
                layer.reset_parameters()
        with torch.no_grad():
            self.center.copy_(torch.as_tensor(center, dtype=torch.float32))
            self.anchors.copy_(torch.as_tensor((centers - center) / float(self.scale), dtype=torch.float32))
        x = self._standardised(torch.as_tensor(points, dtype=torch.float32, device=device))
        drawn = torch.as_tensor(rng.choice(len(x), (n_steps, batch_size), p=weights / weights.sum()), device=device)

        def step_loss(step: int) -> torch.Tensor:
            batch = x[drawn[step]]
            codes = self._ista(batch)
            reconstruction = ((batch - codes @ self.anchors) ** 2).sum(-1)
            unit_l2 = (codes.norm(dim=-1) - 1) ** 2
            unit_l1 = (codes.sum(-1) - 1) ** 2
            return (reconstruction + unit_l2 + unit_l1).mean()

        self._train_steps(step_loss, n_steps, learning_rate, progress, "ASOT-DL")

    def _training_pairs(self, family, rng: np.random.Generator, n_pairs: int) -> tuple[np.ndarray, np.ndarray]:
        from sklearn.neighbors import NearestNeighbors

        n = len(family)
        n_near = n_pairs // 2
        first = rng.integers(0, n, n_pairs)
        second = (first + rng.integers(1, n, n_pairs)) % n  # never the same cloud
        # near pairs are neighbours among at most NEAR_PAIR_POOL clouds: weighing and indexing
        # every niche of an atlas (10⁷) would cost more than the rest of the fit
        pool = np.arange(n)
        if n > NEAR_PAIR_POOL:
            pool = np.sort(rng.choice(n, NEAR_PAIR_POOL, replace=False))
            first[:n_near] = pool[rng.integers(0, NEAR_PAIR_POOL, n_near)]
            second[:n_near] = (first[:n_near] + rng.integers(1, n, n_near)) % n
        hard = self.transform(family if len(pool) == n else family[pool])
        n_neighbors = min(len(pool), 11)
        near = hard[np.searchsorted(pool, first[:n_near])]
        _, neighbours = NearestNeighbors(n_neighbors=n_neighbors).fit(hard).kneighbors(near)
        chosen = pool[neighbours[np.arange(n_near), rng.integers(1, n_neighbors, n_near)]]
        # duplicated histograms can return the cloud itself among its neighbours: keep those pairs random
        keep = chosen != first[:n_near]
        second[:n_near][keep] = chosen[keep]
        return first, second

    # ------------------------------------------------------------------ use

    def transform(
        self,
        family: CloudFamily,
        *,
        batch_size: int = 4096,
        progress: bool = False,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """Weights of every cloud on the anchors: rows on the simplex, shape ``(n_clouds, k)``.

        Parameters
        ----------
        family
            The clouds. :class:`~spatialot.ot.IndexedClouds` stream in stretches of clouds
            (read from disk once per stretch when the features are there): every row a stretch
            uses is coded once and each cloud averages the codes of its rows.
        batch_size
            Points (or clouds) coded at once.
        progress
            Show a progress bar.
        out
            Array ``(n_clouds, k)`` to write the weights into (e.g. a ``np.memmap``); a new
            float32 array when ``None``.

        Returns
        -------
        Float32 array (``out`` when given); for ``'kmeans'`` the fraction of each cloud's mass
        nearest each anchor.

        Examples
        --------
        >>> import numpy as np
        >>> from spatialot.ot import PointClouds
        >>> rng = np.random.default_rng(0)
        >>> clouds = PointClouds.from_list([rng.normal(size=(8, 2)) for _ in range(20)])
        >>> weights = ASOT(2, n_anchors=4).fit(clouds, random_state=0).transform(clouds)
        >>> weights.shape, bool(np.allclose(weights.sum(1), 1))
        ((20, 4), True)
        """
        self._check_fitted()
        self._check_family(family)
        batch_size = check_int("batch_size", batch_size)
        device = self.device
        if not isinstance(family, IndexedClouds):
            return map_batches(
                self._histograms,
                family,
                batch_size=batch_size,
                device=device,
                progress=progress,
                description="ASOT",
                out=out,
            )

        def stretch_histograms(stretch: IndexedClouds) -> np.ndarray:
            table = stretch.features
            codes = np.empty((table.shape[0], self.n_anchors), dtype=np.float32)
            for start in range(0, table.shape[0], batch_size):
                rows = as_tensor(table[start : start + batch_size], dtype=torch.float32, device=device)
                codes[start : start + batch_size] = self._codes(self._standardised(rows)).cpu().numpy()
            mask = stretch.mask
            gathered = codes[np.where(mask, stretch.indices, 0)] * mask[..., None]
            return (gathered.sum(1) / mask.sum(1, keepdims=True)).astype(np.float32)

        # a stretch holds its rows' features and codes, and the codes gathered per cloud
        stretch = stretch_size(family, 1, family.max_size * (family.dim + 2 * self.n_anchors))
        return map_stretches(
            stretch_histograms, family, stretch=stretch, progress=progress, description="ASOT", out=out
        )

    def _solver_kwargs(self, method: AnchorMethod, n_iter: int | None) -> dict:
        return {
            "method": method,
            "epsilon": self.absolute_epsilon(),
            "n_iter": self.config["n_iter"] if n_iter is None else n_iter,
        }

    def pairwise_distances(
        self,
        weights: np.ndarray,
        other: np.ndarray | None = None,
        *,
        method: AnchorMethod = "sinkhorn",
        n_iter: int | None = None,
        batch_size: int | None = None,
        device: torch.device | str | None = None,
        progress: bool = False,
    ) -> np.ndarray:
        """All-pairs ASOT distances (:math:`W_2^2` estimates) between anchor weights from :meth:`transform`.

        Parameters
        ----------
        weights
            ``(n, k)`` anchor weights.
        other
            ``(m, k)`` anchor weights; ``weights`` when ``None`` (symmetric, zero diagonal).
        method
            ``'sinkhorn'`` (batched, on the model's ``epsilon``) or ``'exact'`` (POT on anchors).
        n_iter
            Sinkhorn iterations; the model's when ``None``.
        batch_size
            Pairs per chunk (bounds memory).
        device
            Device of the iterations; the model's when ``None``.
        progress
            Show a progress bar.

        Returns
        -------
        Float64 array ``(n, m)``.
        """
        self._check_fitted()
        return anchor_pairwise_distances(
            weights,
            other,
            self.cost(),
            batch_size=batch_size,
            device=device,
            progress=progress,
            **self._solver_kwargs(method, n_iter),
        )

    def paired_distances(
        self,
        weights: np.ndarray,
        other: np.ndarray,
        *,
        method: AnchorMethod = "sinkhorn",
        n_iter: int | None = None,
        batch_size: int | None = None,
        device: torch.device | str | None = None,
        progress: bool = False,
    ) -> np.ndarray:
        """ASOT distance (:math:`W_2^2` estimate) between ``weights[p]`` and ``other[p]`` for every ``p``.

        Parameters are those of :meth:`pairwise_distances`; returns a float64 array ``(n,)``.
        """
        self._check_fitted()
        return anchor_paired_distances(
            weights,
            other,
            self.cost(),
            batch_size=batch_size,
            device=device,
            progress=progress,
            **self._solver_kwargs(method, n_iter),
        )

    def kneighbors(
        self,
        weights: np.ndarray,
        n_neighbors: int = 15,
        *,
        method: AnchorMethod = "sinkhorn",
        n_iter: int | None = None,
        batch_size: int | None = None,
        device: torch.device | str | None = None,
        progress: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Nearest clouds of every cloud by ASOT distance (see :func:`~spatialot.ot.anchor_kneighbors`).

        Parameters are those of :meth:`pairwise_distances`, with ``n_neighbors`` counting the
        cloud itself; returns ``(indices, distances)`` of shape ``(n, n_neighbors)``.
        """
        self._check_fitted()
        points, offsets = self.cost_geometry()
        return anchor_kneighbors(
            weights,
            self.cost(),
            n_neighbors,
            anchor_points=points,
            anchor_offsets=offsets,
            batch_size=batch_size,
            device=device,
            progress=progress,
            **self._solver_kwargs(method, n_iter),
        )


def _weighted_points(
    family: CloudFamily, max_points: int | None, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The distinct points of the clouds, each weighted by its total mass over the clouds (float64).

    Beyond ``max_points`` points, a uniform random sample of ``max_points`` of them, chosen
    before any feature is read (a backed AnnData reads only the sampled rows).
    """

    def sampled(count: int) -> np.ndarray | slice:
        if max_points is None or count <= max_points:
            return slice(None)
        return np.sort(rng.choice(count, max_points, replace=False))

    if isinstance(family, IndexedClouds):
        sizes = family.mask.sum(1, keepdims=True)
        mass = np.bincount(
            family.indices[family.mask],
            np.broadcast_to(1.0 / sizes, family.mask.shape)[family.mask],
            family.features.shape[0],
        )
        used = np.flatnonzero(mass > 0)
        used = used[sampled(len(used))]
        return family.read_features(used).astype(np.float64), mass[used]
    mask = family.mask.cpu().numpy()
    kept = sampled(int(mask.sum()))
    points = family.points.detach().cpu().numpy()[mask][kept]
    return points.astype(np.float64), family.weights.detach().cpu().numpy()[mask][kept]


def _kmeans(points: np.ndarray, weights: np.ndarray, n_clusters: int, random_state: int | None):
    from sklearn.cluster import KMeans, MiniBatchKMeans

    n_distinct = len(np.unique(points, axis=0)) if len(points) <= 200_000 else len(points)
    if n_distinct < n_clusters:
        raise ValueError(f"`n_anchors`={n_clusters} exceeds the {n_distinct} distinct points of the clouds.")
    if len(points) > _MINIBATCH_ABOVE:
        estimator = MiniBatchKMeans(n_clusters, batch_size=4096, n_init=3, random_state=random_state)
    else:
        estimator = KMeans(n_clusters, n_init=1, random_state=random_state)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=FutureWarning)
        estimator.fit(points, sample_weight=weights)
    return estimator.cluster_centers_, estimator.predict(points)
