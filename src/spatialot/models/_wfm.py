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

from .._docs import inject_docs
from .._settings import cpu_threads
from .._validation import check_float32_range, check_int
from ..ot import (
    IndexedClouds,
    PointClouds,
    chamfer_costs,
    gaussian_moments,
    minibatch_pairing,
    rounded_assignment,
    sinkhorn,
    squared_euclidean_cost,
)
from ._base import Model
from ._batches import CloudFamily, take
from ._blocks import SetTransformer, mlp
from ._device import checks_on_host, resolve_device, seeded
from ._training import CHECKPOINT_EVERY, Precision, Schedule, full_precision, restored_on_failure, train

Matching = Literal["auto", "exact", "entropic"]
Noise = Literal["normal", "cholesky"]
Integrator = Literal["euler", "midpoint"]
_MATCHINGS = ("auto", "exact", "entropic")
_NOISES = ("normal", "cholesky")
_INTEGRATORS = ("euler", "midpoint")
# training steps of both WFM models and of sot.tl.wfm, one budget (its choice: tl.wfm's `n_steps`)
DEFAULT_N_STEPS = 6000


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
        the exact OT map between clouds of equal size and uniform weights; off the CPU, a
        near-optimal one rounded on the device (:func:`~spatialot.ot.rounded_assignment`), so
        that a training step never waits for the host. ``'entropic'``: the
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
    if not checks_on_host(source.device):
        return _matched_on_device(source, target, matching, epsilon)
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
    return _partners(source, target, torch.as_tensor(partner, device=source.device))


def _partners(source: PointClouds, target: PointClouds, partner: torch.Tensor) -> torch.Tensor:
    """The target point ``partner[b, i]`` of every source point ``i`` of cloud ``b``; zero on padding."""
    index = partner[..., None].expand(-1, -1, source.dim)
    return torch.gather(target.points, 1, index) * source.mask[..., None]


def _matched_on_device(source: PointClouds, target: PointClouds, matching: Matching, epsilon: float) -> torch.Tensor:
    """:func:`matched_targets` without a host read: assignments rounded on the device.

    Every pair is assigned (:func:`~spatialot.ot.rounded_assignment`) and, with ``'auto'``,
    also mapped entropically; each pair keeps the one its sizes and weights call for, chosen
    on the device. ``'exact'`` is not checked for equal sizes here (a check reads the host).
    """
    cost = squared_euclidean_cost(source.points.detach(), target.points.detach())
    assigned = _partners(source, target, rounded_assignment(cost, row_mask=source.mask, column_mask=target.mask))
    if matching == "exact":
        return assigned
    exact = (source.sizes == target.sizes) & _is_uniform(source) & _is_uniform(target)
    return torch.where(exact[:, None, None], assigned, _entropic_map(source, target, epsilon))


def _entropic_map(source: PointClouds, target: PointClouds, epsilon: float) -> torch.Tensor:
    with torch.no_grad():
        cost = squared_euclidean_cost(source.points, target.points)
        valid = source.mask[:, :, None] & target.mask[:, None, :]
        # ε relative to the largest cost: the points divided by its root, which gives the same plan
        # as ε times the largest cost, and is never read on the host
        unit = torch.where(valid, cost, 0).max().clamp_min(1e-12).sqrt()
        unit_source = PointClouds(source.points / unit, source.mask, source.weights)
        unit_target = PointClouds(target.points / unit, target.mask, target.weights)
        # 200 iterations at most; on an accelerator exactly 200, so that no check reads the device
        tol = 1e-3 if checks_on_host(source.device) else None
        plan = sinkhorn(unit_source, unit_target, epsilon=epsilon, max_iter=200, tol=tol, return_plan=True).plan
    mass = source.weights.clamp_min(1e-30)[..., None]
    return (plan @ target.points) / mass * source.mask[..., None]


# ---------------------------------------------------------------------------- shared pieces


class FlowConditioner(nn.Module):
    """Time (Fourier features → MLP), an optional label embedding and an optional condition vector, as one vector.

    The last label row is the *null* label of classifier-free guidance: the label of an
    unconditional model, and the dropped label during conditional training. Continuous
    condition vectors (``condition_dim > 0``) pass through a linear layer, as in the official
    code; a dropped vector is replaced by a learned null embedding (the official code feeds a
    zero vector, which is also a valid condition).
    """

    def __init__(self, width: int, n_labels: int, n_frequencies: int = 16, condition_dim: int = 0):
        super().__init__()
        self.register_buffer("frequencies", math.pi * 2.0 ** torch.arange(n_frequencies, dtype=torch.float32) / 8)
        self.time = mlp([2 * n_frequencies, width, width])
        self.labels = nn.Embedding(n_labels + 1, width)
        if condition_dim:
            self.vectors = nn.Linear(condition_dim, width)
            self.null_vector = nn.Parameter(torch.zeros(width))

    def forward(
        self,
        t: torch.Tensor,
        codes: torch.Tensor,
        vectors: torch.Tensor | None = None,
        null: torch.Tensor | None = None,
    ) -> torch.Tensor:
        angles = t[:, None] * self.frequencies
        out = self.time(torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)) + self.labels(codes)
        if vectors is not None:
            embedded = self.vectors(vectors)
            if null is not None:
                embedded = torch.where(null[:, None], self.null_vector.to(embedded.dtype), embedded)
            out = out + embedded
        return out


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
    features, an optional label embedding and an optional continuous condition vector added to
    the token stream before every block; its output layer starts near zero. Training pairs each
    data cloud with a source cloud (noise, or a cloud of a user-given source family), matches
    their points by OT (exact assignment for equal sizes, entropic map otherwise;
    squared-Euclidean cost, i.e. :math:`W_2^2`), and regresses the displacement of matched points
    at a uniform random time on the straight line between them. With ``minibatch_ot``, source
    clouds are first re-paired with data clouds by an exact assignment on their Chamfer costs
    (minibatch OT at the level of clouds), within a pool of ``pairing_pool`` clouds from which
    each step keeps a random minibatch of pairs. Sampling integrates
    the field from noise, or from given source clouds (Euler or midpoint steps). Conditional
    models drop the condition of a fraction ``p_uncond`` of the clouds in training, which
    enables classifier-free guidance.

    Parameters
    ----------
    dim
        Dimension of the points.
    max_size
        Largest cloud size the model records sizes for (that of the training clouds).
    labels
        Names of the categorical conditions (e.g. the centre cell's types); ``None`` for none.
    condition_dim
        Length of a continuous condition vector per cloud (e.g. the centre cell's expression or
        embedding); ``None`` for none. Labels and vectors may be used together.
    width, n_layers, n_heads, mlp_width, dropout
        Shape of the set transformer (the official one: 512, 6, 4, 512, 0.1; smaller by default
        for CPU).
    n_frequencies
        Number of Fourier frequencies of the time features.
    noise
        Source family: ``'normal'`` draws i.i.d. standard normal points in the standardised space
        of the data (the official default of its spatial class); ``'cholesky'`` draws per noise
        cloud a random Cholesky factor around the mean Cholesky factor of the data clouds'
        covariances, scaled by ``noise_scale`` (the official default). Replaced by the clouds of
        ``source`` when :meth:`fit` is given one.
    noise_scale
        Scale of the ``'cholesky'`` noise (official 2.0).
    matching
        How source and data points are matched, see :func:`matched_targets`.
    epsilon
        Relative entropic regularisation of the entropic map.
    minibatch_ot
        Re-pair the source and data clouds of each minibatch by an exact assignment on the
        batch × batch Chamfer cost (:func:`~spatialot.ot.chamfer_costs`,
        :func:`~spatialot.ot.minibatch_pairing`) before the point matching. Labels are kept:
        clouds are re-paired only within a label. Models with continuous condition vectors skip
        it (no two clouds share a condition; the official code turns it off under any
        conditioning). Measured in ``benchmarks/wfm.py`` (``results/wfm-5gen-cpu.json``): on the
        simulated tissue it brings 1-NN accuracy closer to the real-vs-real floor, unconditional
        (+0.037 → +0.017) and with labels (+0.044 → +0.026); on BDTNP it is level.
    pairing_pool
        Number of data clouds (and as many source clouds) that minibatch OT re-pairs together at
        each step; the step then trains on a random ``batch_size`` of these pairs (all of them
        when the pool is not larger than the batch). Keeping a uniform random subset of the
        pairs keeps both marginals exact (noise and data), while the coupling is the OT
        coupling of the larger pool: closer to the OT coupling of the two distributions, with
        straighter, less ambiguous paths and a lower attainable flow-matching loss. The cost is
        a ``pairing_pool`` × ``pairing_pool`` Chamfer matrix and one assignment per step; the
        network and the point matching still see ``batch_size`` clouds. Ignored without
        ``minibatch_ot``, with condition vectors, and with a user-given source family, whose
        clouds are re-paired within the minibatch: on unpaired translated clouds (tests), a pool
        of 64 reached a lower loss but transported unseen clouds less accurately at 300 steps
        than the minibatch of 16 (RMS error 0.45 against 0.25).
    condition_pairing
        Minibatch OT pairing for a model with condition vectors (C²OT, Cheng et al. 2025): each
        noise cloud carries the vector of the slot it was drawn for, and the pairing cost adds
        ``condition_pairing`` times the squared distance between vectors (standardised),
        rescaled to the mean Chamfer cost of the pool, so that noise is re-paired mostly among
        clouds of near conditions (a very large weight keeps every noise cloud in its slot, 0
        skips the pairing with vectors, as the official code does). Ignored without
        ``minibatch_ot`` or without vectors. Off by default: on the simulated tissue
        (``benchmarks/wfm_classifier_probe.py``, ``results/wfm-probe/``) a weight of 1 lowers
        the final flow-matching loss of the centre-vector model from 3.31 to 2.54 (labels with
        pairing: 2.60), but its niches' centre-label classifier gap moves only from -3.5 to
        -3.1 points (± 0.8, two generations of 3,000 niches), within the noise; its 1-NN
        scores and BDTNP are not measured.
    random_state
        Seed of the initial weights, drawn here whatever torch's global generator holds (``None``:
        drawn from it). Training and sampling are seeded by the ``random_state`` of :meth:`fit`
        and :meth:`sample`.

    Notes
    -----
    Points are standardised inside the model by the per-dimension mean and one global scale
    (so that the geometry, and with it :math:`W_2`, is preserved up to that scale); samples
    come back in the units of the data. Condition vectors are standardised per dimension.

    Deviations from the official code (Haviv et al.): on CPU the minibatch pairing solves the
    assignment exactly instead of rounding a Sinkhorn plan (exact and cheaper at these sizes; on
    a GPU it rounds a plan as the official code does, then improves the matching by exchanges,
    see :func:`~spatialot.ot.rounded_assignment`), and is applied within labels in conditional
    training, where the official code turns it off; it pairs a pool of 64 clouds, of which each
    step trains on ``batch_size`` (16), where the official code pairs within the minibatch of
    16. Why: with 16 clouds, and fewer still per label, the pairing is close to random, the
    flow-matching loss stalls at the ambiguity of that coupling and generated niches come out
    blurred (points off the cell states, compositions pulled to the mean); a pool of 64 lowers
    the loss at the same number of network evaluations and brings the generated half of the 1-NN
    test to the real-vs-real floor with labels (``benchmarks/wfm.py``;
    ``results/wfm-pool64-*``).

    The learning rate warms up over 100 steps to 1e-3 and falls along half a cosine to 0 at
    the last step, where the official code keeps a constant 3e-4 (spatial data; ×0.998 per
    1,000 steps) over 32,000 steps of a 512-wide, 6-block network. Why: at the few thousand
    steps of a CPU-sized budget (2,000 when this was measured; 6,000 is the default), a
    constant rate ends training with the weights still moving, and the generated niches come
    out blurred and short of part of the real ones. Unconditional, on
    the simulated tissue (``benchmarks/wfm.py``, ``results/wfm-probe/``, 3 generations, floor
    0.540): 1-NN under :math:`W_2^2` 0.608 with the real half at 0.663 and MMD² 0.016 at the
    constant 3e-4; 0.572 with the cosine at 3e-4; 0.547, real half 0.606 and MMD² 0.0010 (the
    floor's: 0.0083) with the cosine at 1e-3. More integration steps do not help (Euler 400:
    0.605). Under the constant rate a larger pairing pool made unconditional training worse
    (pools of 16 / 64 / 256: 0.581 / 0.608 / 0.600); under the cosine, pools of 16 and 64 are
    level on 1-NN (0.552 ± 0.040 and 0.547 ± 0.025) and 64 has the lower MMD² (0.0010 against
    0.0064). A dropped condition vector becomes a learned null embedding rather than the zero
    vector; a user-given source family is sampled independently of the data (and re-paired by
    minibatch OT), where the official code pairs source and data clouds by index.

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
        condition_dim: int | None = None,
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
        minibatch_ot: bool = True,
        pairing_pool: int = 64,
        condition_pairing: float = 0.0,
        random_state: int | None = 0,
    ):
        dim, max_size = check_int("dim", dim), check_int("max_size", max_size)
        width, n_layers = check_int("width", width), check_int("n_layers", n_layers)
        pairing_pool = check_int("pairing_pool", pairing_pool)
        if not condition_pairing >= 0:
            raise ValueError(f"`condition_pairing` must be non-negative, got {condition_pairing}.")
        if condition_dim is not None:
            condition_dim = check_int("condition_dim", condition_dim)
        if noise not in _NOISES:
            raise ValueError(f"`noise` must be one of {_NOISES}, got {noise!r}.")
        if matching not in _MATCHINGS:
            raise ValueError(f"`matching` must be one of {_MATCHINGS}, got {matching!r}.")
        if not epsilon > 0:
            raise ValueError(f"`epsilon` must be positive, got {epsilon}.")
        if not isinstance(minibatch_ot, bool | np.bool_):
            raise ValueError(f"`minibatch_ot` must be True or False, got {minibatch_ot!r}.")
        names = None if labels is None else [str(label) for label in labels]
        if names is not None and (len(names) == 0 or len(set(names)) != len(names)):
            raise ValueError("`labels` must be a non-empty list of distinct names.")
        super().__init__(
            dim=int(dim),
            max_size=int(max_size),
            labels=names,
            condition_dim=None if condition_dim is None else int(condition_dim),
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
            minibatch_ot=bool(minibatch_ot),
            pairing_pool=pairing_pool,
            condition_pairing=float(condition_pairing),
            random_state=random_state,
        )
        self.label_names: list[str] = names or []
        with seeded(random_state):
            self.conditioner = FlowConditioner(width, len(self.label_names), n_frequencies, condition_dim or 0)
            self.transformer = SetTransformer(dim, width, n_layers, n_heads, mlp_width, dropout)
            self.head = zero_init(nn.Linear(width, dim))
        # fitted state
        self.register_buffer("center", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("cholesky_mean", torch.eye(dim))
        self.register_buffer("cholesky_std", torch.zeros(dim, dim))
        # row c: how many training clouds of label c had each size; the last row counts them all
        self.register_buffer("size_counts", torch.zeros(len(self.label_names) + 1, max_size + 1))
        if condition_dim:
            self.register_buffer("condition_center", torch.zeros(condition_dim))
            self.register_buffer("condition_scale", torch.ones(condition_dim))
        # whether the model was trained to transport a user-given source family rather than noise
        self.register_buffer("from_source", torch.zeros((), dtype=torch.bool))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # checkpoints written before source families existed were all trained from noise
        state_dict.setdefault(prefix + "from_source", torch.zeros((), dtype=torch.bool))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ------------------------------------------------------------------ pieces
    @property
    def conditional(self) -> bool:
        """Whether the model was built with labels or condition vectors."""
        return bool(self.label_names) or bool(self.config.get("condition_dim"))

    def velocity(
        self,
        points: torch.Tensor,
        weights: torch.Tensor,
        t: torch.Tensor,
        codes: torch.Tensor,
        vectors: torch.Tensor | None = None,
        null: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Velocity at standardised ``points`` ``(batch, size, dim)``, times ``t`` ``(batch,)`` and conditions.

        ``codes`` are label codes (the null code for none), ``vectors`` standardised condition
        vectors ``(batch, condition_dim)`` of a model built with them, and ``null`` marks the
        clouds whose vector is dropped.
        """
        tokens = self.transformer(points, weights, self.conditioner(t, codes, vectors, null))
        return self.head(tokens) * (weights > 0)[..., None]

    def _standardise(self, clouds: PointClouds) -> PointClouds:
        points = (clouds.points - self.center) / self.scale * clouds.mask[..., None]
        return PointClouds(points, clouds.mask, clouds.weights)

    def _standardise_conditions(self, conditions, n: int) -> torch.Tensor | None:
        """Condition vectors as a standardised float32 tensor ``(n, condition_dim)``; checks their shape."""
        dim = self.config.get("condition_dim")
        if not dim:
            if conditions is not None:
                raise ValueError("This model was built without `condition_dim`: pass `conditions=None`.")
            return None
        if conditions is None:
            raise ValueError(f"This model is conditional on vectors of length {dim}: pass `conditions`.")
        values = np.asarray(conditions.cpu() if isinstance(conditions, torch.Tensor) else conditions, dtype=np.float64)
        if values.ndim == 1 and values.shape[0] == dim:
            values = np.broadcast_to(values, (n, dim)).copy()
        if values.shape != (n, dim):
            raise ValueError(f"`conditions` must have shape ({n}, {dim}) (one vector per cloud), got {values.shape}.")
        if not np.isfinite(values).all():
            raise ValueError("`conditions` holds NaN or infinite values.")
        tensor = torch.as_tensor(values, dtype=torch.float32, device=self.device)
        return (tensor - self.condition_center) / self.condition_scale

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

    @property
    def _pairs_clouds(self) -> bool:
        """Whether training re-pairs source and data clouds by minibatch OT."""
        vectors_allowed = not self.config.get("condition_dim") or self.config["condition_pairing"] > 0
        return bool(self.config["minibatch_ot"]) and vectors_allowed

    def _pool_size(self, batch_size: int, n_clouds: int, from_noise: bool) -> int:
        """Data clouds drawn per step: a pairing pool when noise clouds are re-paired, else the minibatch."""
        pooled = self._pairs_clouds and from_noise
        pool = max(batch_size, self.config["pairing_pool"]) if pooled else batch_size
        return min(pool, n_clouds)

    def _paired_start(
        self, data: PointClouds, groups: torch.Tensor, source: PointClouds | None, vectors: torch.Tensor | None = None
    ) -> PointClouds:
        """Source clouds (noise when ``source`` is None) for the data clouds, re-paired by minibatch OT when asked.

        With condition ``vectors``, source cloud ``j`` carries the vector of the slot it was drawn
        for, and the pairing cost adds ``condition_pairing`` times the squared distance between
        vectors, scaled to the mean Chamfer cost (C²OT, Cheng et al. 2025).
        """
        pair = self._pairs_clouds and len(data) > 1
        # exact on the host, where it costs nothing to read; rounded on an accelerator
        method = "exact" if checks_on_host(data.device) else "rounded"
        if source is None:
            if not pair:
                return self.draw_noise(data.mask)
            # i.i.d. points: noise cloud j, seen with the mask of data cloud i, is a valid partner of i
            full = self.draw_noise(torch.ones_like(data.mask))
            cost = chamfer_costs(full.points, data.mask[None].expand(len(data), -1, -1), data.points, data.mask)
            cost = self._with_condition_cost(cost, vectors)
            order = torch.as_tensor(minibatch_pairing(cost, groups, method=method), device=data.points.device)
            weights = data.mask.to(full.points.dtype) / data.mask.sum(1, keepdim=True).clamp_min(1)
            return PointClouds(full.points[order] * data.mask[..., None], data.mask, weights)
        if not pair:
            return source
        cost = self._with_condition_cost(chamfer_costs(source.points, source.mask, data.points, data.mask), vectors)
        return source[minibatch_pairing(cost, groups, method=method)]

    def _with_condition_cost(self, cost: torch.Tensor, vectors: torch.Tensor | None) -> torch.Tensor:
        """The pairing cost plus the weighted squared distance between condition vectors (none without vectors)."""
        if vectors is None:
            return cost
        distances = torch.cdist(vectors.float(), vectors.float()) ** 2
        scale = cost.mean() / distances.mean().clamp_min(1e-12)
        return cost + self.config["condition_pairing"] * scale * distances

    def flow_matching_loss(
        self,
        data: PointClouds,
        codes: torch.Tensor,
        vectors: torch.Tensor | None = None,
        null: torch.Tensor | None = None,
        source: PointClouds | None = None,
        groups: torch.Tensor | None = None,
        keep: int | None = None,
    ) -> torch.Tensor:
        """Flow-matching loss of a batch of standardised data clouds with their conditions.

        ``source`` holds standardised source clouds, one per data cloud (noise when ``None``);
        ``groups`` the true label code of every data cloud, within which minibatch OT re-pairs
        (``codes`` by default, which may hold dropped labels); ``keep`` how many of the pairs,
        drawn uniformly after the pairing, the loss is taken on (all by default): the data
        clouds are then a pairing pool, see ``pairing_pool``.
        """
        # the network runs in the training loop's precision; the sources, pairing, matching and loss in float32
        with full_precision(data.device):
            start = self._paired_start(data, codes if groups is None else groups, source, vectors)
            if keep is not None and keep < len(data):
                kept = torch.randperm(len(data), device=data.device)[:keep]
                data, start, codes = data[kept], start[kept], codes[kept]
                vectors = None if vectors is None else vectors[kept]
                null = None if null is None else null[kept]
            matched = matched_targets(start, data, matching=self.config["matching"], epsilon=self.config["epsilon"])
        t = torch.rand(len(data), device=self.device)
        points = (1 - t)[:, None, None] * start.points + t[:, None, None] * matched
        velocity = self.velocity(points, start.weights, t, codes, vectors, null)
        with full_precision(data.device):
            error = (velocity.float() - (matched - start.points)) ** 2
            return (error.sum(-1) * start.weights).sum(1).mean()

    # ------------------------------------------------------------------ training
    def _check_family(self, family: CloudFamily) -> None:
        super()._check_family(family)
        if family.max_size > self.config["max_size"]:
            raise ValueError(
                f"The clouds hold up to {family.max_size} points, but the model was built for `max_size`="
                f"{self.config['max_size']}."
            )

    def _calibrate(
        self, family: CloudFamily, codes: np.ndarray, conditions: np.ndarray | None, rng: np.random.Generator
    ) -> None:
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
        if conditions is not None:
            values = np.asarray(conditions, dtype=np.float64)
            check_float32_range(values, "`conditions`")
            self.condition_center.copy_(torch.as_tensor(values.mean(0)))
            spread = values.std(0)
            self.condition_scale.copy_(torch.as_tensor(np.where(spread > 1e-12, spread, 1.0)))

    def _check_source(self, source: CloudFamily | None) -> None:
        """Refuse a source family of the wrong kind, or one that contradicts how the model was trained."""
        if source is None:
            if self.history and bool(self.from_source):
                raise ValueError("This model was trained from a `source` family: pass `source` again.")
            return
        if not isinstance(source, PointClouds | IndexedClouds):
            raise TypeError(f"`source` must be PointClouds or IndexedClouds, got {type(source).__name__}.")
        if source.dim != self.config["dim"]:
            raise ValueError(
                f"The `source` clouds have dimension {source.dim}, but the model was built for {self.config['dim']}."
            )
        if len(source) < 1:
            raise ValueError("`source` holds no cloud.")
        if self.history and not bool(self.from_source):
            raise ValueError("This model was trained from noise: leave `source=None` to continue training it.")

    @inject_docs
    def fit(
        self,
        family: CloudFamily,
        labels: Sequence | np.ndarray | None = None,
        *,
        conditions: np.ndarray | torch.Tensor | None = None,
        source: CloudFamily | None = None,
        n_steps: int = DEFAULT_N_STEPS,
        batch_size: int = 16,
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
    ) -> WassersteinFlowMatching:
        """Train by flow matching on random minibatches of ``family``.

        A first call also records the standardisation, the noise family's statistics, the
        distribution of cloud sizes (per label) and that of the condition vectors; further calls
        continue training.

        Parameters
        ----------
        family
            Training clouds (:class:`~spatialot.ot.PointClouds` or :class:`~spatialot.ot.IndexedClouds`).
        labels
            Condition of every cloud, as names from ``labels`` of the constructor or integer
            codes; required by a model built with labels, refused by one without.
        conditions
            Continuous condition vector of every cloud, ``(len(family), condition_dim)``;
            required by a model built with ``condition_dim``, refused by one without.
        source
            A source family to transport from instead of noise (e.g. the niches of a control
            sample, with ``family`` those of a treated one). Each step draws as many source
            clouds as data clouds at random, independently of them, and (with ``minibatch_ot``)
            re-pairs them by minibatch OT; :meth:`sample` then transports given source clouds.
            Source clouds may have other sizes than the data clouds (points are then matched by
            the entropic map). The first ``fit`` decides: a model trained from a source is
            always trained and sampled from one.
        n_steps
            Optimiser steps.
        batch_size
            Clouds per minibatch (official 16); with minibatch OT, the pairs kept from a pool
            of ``pairing_pool`` re-paired clouds (see the constructor).
        learning_rate
            Peak Adam learning rate (official: 3e-4 for spatial data, without warm-up or decay
            to speak of).
        schedule, warmup_steps
            After a linear warm-up over ``warmup_steps`` steps, ``'cosine'`` lowers the learning
            rate along half a cosine to ``decay_rate * learning_rate`` at ``n_steps``; ``'step'``
            multiplies it by ``decay_rate`` every ``decay_every`` steps, as the official code
            does (×0.998 every 1,000 steps: a constant rate at these budgets). The defaults
            (1e-3, warm-up of 100 steps, cosine to 0) deviate from the official ones, see the
            Notes of the class. A cosine run ends at its ``n_steps``: a checkpoint resumes only
            a run of the same budget (extend runs with ``schedule='step'``).
        decay_rate, decay_every
            The learning rate's final fraction (``'cosine'``), or its factor every
            ``decay_every`` steps (``'step'``).
        p_uncond
            Fraction of conditions (label and vector together) replaced by the null condition in
            training (classifier-free guidance).
        max_grad_norm
            Clip the gradient norm to this value.
        device
            ``'auto'`` (CUDA when present, else CPU), ``'cpu'`` or ``'cuda'``.
        random_state
            Seed of minibatches, noise, times and condition dropout.
        progress
            Show a progress bar with the running loss.
        {checkpoint}
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
        if self.label_names and labels is None:
            raise ValueError(f"This model is conditional on {self.label_names}: pass `labels` for every cloud.")
        if not self.label_names and labels is not None:
            raise ValueError("This model was built without `labels`; build it with `labels=` to train on conditions.")
        if not 0 <= p_uncond <= 1:
            raise ValueError(f"`p_uncond` must lie in [0, 1], got {p_uncond}.")
        self._check_source(source)
        batch_size = check_int("batch_size", batch_size)
        codes = label_codes(labels, self.label_names, len(family))
        self.to(resolve_device(device))
        if self.config.get("condition_dim") and conditions is not None:
            conditions = np.asarray(conditions.cpu() if isinstance(conditions, torch.Tensor) else conditions, float)
        # a failure anywhere below, calibration included, leaves the model as it was
        with restored_on_failure(self), seeded(random_state) as rng:
            if not self.history:
                self._calibrate(family, codes, conditions if self.config.get("condition_dim") else None, rng)
                self.from_source.fill_(source is not None)
            step_loss = self._step_loss(family, codes, conditions, source, batch_size, p_uncond, rng)
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
                description="WFM",
                rng=rng,
                checkpoint=checkpoint,
                checkpoint_every=checkpoint_every,
                precision=precision,
            )
        return self

    def _step_loss(self, family, codes, conditions, source, batch_size: int, p_uncond: float, rng):
        """The loss of one training step: a random minibatch, its conditions (some dropped) and its sources."""
        codes_tensor = torch.as_tensor(codes, device=self.device)
        vectors = self._standardise_conditions(conditions, len(family))
        n_labels = len(self.label_names)
        pool, keep = self._pool_size(batch_size, len(family), source is None), min(batch_size, len(family))

        def step_loss(step: int) -> torch.Tensor:
            # with minibatch OT, a pool of clouds is re-paired and ``keep`` of its pairs are trained on
            chosen = np.sort(rng.choice(len(family), pool, replace=False))
            index = torch.as_tensor(chosen, device=self.device)
            true_codes = codes_tensor[index]
            # one draw per cloud drops its label and its vector together
            dropped = torch.rand(len(chosen), device=self.device) < p_uncond if self.conditional else None
            batch_codes = true_codes if dropped is None or not n_labels else torch.where(dropped, n_labels, true_codes)
            data = self._standardise(take(family, chosen, self.device))
            start = None
            if source is not None:
                drawn = np.sort(rng.choice(len(source), len(chosen), replace=len(source) < len(chosen)))
                start = self._standardise(take(source, drawn, self.device))
            batch_vectors = None if vectors is None else vectors[index]
            return self.flow_matching_loss(data, batch_codes, batch_vectors, dropped, start, true_codes, keep)

        return step_loss

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

    def _guided_velocity(self, points, weights, t, codes, guidance: float, vectors=None) -> torch.Tensor:
        velocity = self.velocity(points, weights, t, codes, vectors)
        null = len(self.label_names)
        if guidance == 1.0 or not self.conditional:
            return velocity
        dropped = torch.ones(len(points), dtype=torch.bool, device=points.device)
        unconditional = self.velocity(points, weights, t, torch.full_like(codes, null), vectors, dropped)
        guided = unconditional + guidance * (velocity - unconditional)
        if vectors is not None:
            return guided
        # clouds sampled with the null label have no conditional field to amplify
        return torch.where((codes == null)[:, None, None], velocity, guided)

    def sample(
        self,
        n: int | None = None,
        *,
        labels: Sequence | np.ndarray | str | int | None = None,
        conditions: np.ndarray | torch.Tensor | None = None,
        sizes: int | Sequence[int] | np.ndarray | None = None,
        source: CloudFamily | None = None,
        n_steps: int = 100,
        method: Integrator = "euler",
        guidance: float = 1.0,
        batch_size: int = 256,
        random_state: int | None = 0,
    ) -> PointClouds:
        """Generate clouds by integrating the learned flow from noise clouds, or transport given source clouds.

        Parameters
        ----------
        n
            Number of clouds; may be left out when ``labels``, ``conditions``, ``sizes`` or
            ``source`` fixes it.
        labels
            Label of each cloud: one name/code for all, one per cloud, or ``None`` (the null
            label: unconditional generation, or a model without labels).
        conditions
            Condition vectors of a model built with ``condition_dim``: ``(n, condition_dim)``, or
            one vector ``(condition_dim,)`` for all clouds. Required by such a model.
        sizes
            Number of points of each cloud: one for all, one per cloud, or ``None`` to draw them
            from the training sizes of each label. At most ``max_size``. Not with ``source``.
        source
            Clouds to transport (a model trained with ``source=``): the flow starts from them
            instead of noise, and each output cloud has the size of its source cloud.
        n_steps
            Integration steps from time 0 to 1.
        method
            ``'euler'`` or ``'midpoint'`` (second order, two field evaluations per step).
        guidance
            Classifier-free guidance weight ``w`` of ``v_null + w (v_cond - v_null)``; 1 is plain
            conditional sampling (the official code uses 1.5).
        batch_size
            Clouds integrated together.
        random_state
            Seed of the noise and of the drawn sizes.

        Returns
        -------
        The generated clouds in data units, as a :class:`~spatialot.ot.PointClouds` batch on
        CPU padded to ``max_size`` (to the source's largest size with ``source``), uniform
        weights on the real points.
        """
        if source is not None and bool(self.from_source) is False:
            raise ValueError("This model was trained from noise: leave `source=None`.")
        if source is None and bool(self.from_source):
            raise ValueError("This model was trained from a `source` family: pass the clouds to transport as `source`.")
        if source is not None:
            self._check_source_for_sampling(source, n, sizes)
            n = len(source)
        n = _resolve_count(n, labels, sizes, conditions)
        if method not in _INTEGRATORS:
            raise ValueError(f"`method` must be one of {_INTEGRATORS}, got {method!r}.")
        n_steps, batch_size = check_int("n_steps", n_steps), check_int("batch_size", batch_size)
        codes = label_codes(labels, self.label_names, n)
        vectors = self._standardise_conditions(conditions, n)
        max_size = self.config["max_size"] if source is None else source.max_size
        with seeded(random_state) as rng:
            if source is not None:
                size_array = np.asarray(source.sizes.cpu() if isinstance(source.sizes, torch.Tensor) else source.sizes)
            elif sizes is None:
                size_array = self.draw_sizes(codes, rng)
            else:
                size_array = np.broadcast_to(np.asarray(sizes, dtype=np.int64), (n,)).copy()
            if source is None and (size_array.min(initial=1) < 1 or size_array.max(initial=1) > max_size):
                raise ValueError(f"`sizes` must lie between 1 and `max_size`={max_size}.")
            mask = torch.as_tensor(np.arange(max_size)[None, :] < size_array[:, None])
            points = torch.zeros(n, max_size, self.config["dim"])
            was_training = self.training
            self.eval()
            try:
                with torch.no_grad(), cpu_threads():
                    for start in range(0, n, batch_size):
                        chunk = slice(start, min(start + batch_size, n))
                        if source is None:
                            begin = self.draw_noise(mask[chunk].to(self.device))
                        else:
                            begin = _left_aligned(self._standardise(take(source, np.arange(n)[chunk], self.device)))
                            begin = _padded_to(begin, max_size)
                        codes_chunk = torch.as_tensor(codes[chunk], device=self.device)
                        vectors_chunk = None if vectors is None else vectors[chunk]
                        end = self._integrate(begin, codes_chunk, n_steps, method, guidance, vectors_chunk)
                        points[chunk] = (end * self.scale + self.center).cpu() * mask[chunk][..., None]
            finally:
                self.train(was_training)
        return PointClouds.from_padded(points, mask)

    def _check_source_for_sampling(self, source: CloudFamily, n: int | None, sizes) -> None:
        if not isinstance(source, PointClouds | IndexedClouds):
            raise TypeError(f"`source` must be PointClouds or IndexedClouds, got {type(source).__name__}.")
        if source.dim != self.config["dim"]:
            raise ValueError(
                f"The `source` clouds have dimension {source.dim}, but the model was built for {self.config['dim']}."
            )
        if sizes is not None:
            raise ValueError("`sizes` cannot be given with `source`: each cloud keeps the size of its source cloud.")
        if n is not None and n != len(source):
            raise ValueError(f"`n`={n} differs from the {len(source)} clouds of `source`; leave `n` out.")

    def _integrate(
        self, start: PointClouds, codes: torch.Tensor, n_steps: int, method: str, guidance: float, vectors=None
    ):
        points, weights = start.points, start.weights
        dt = 1.0 / n_steps
        for step in range(n_steps):
            t = torch.full((len(points),), step * dt, device=points.device)
            velocity = self._guided_velocity(points, weights, t, codes, guidance, vectors)
            if method == "midpoint":
                halfway = points + 0.5 * dt * velocity
                velocity = self._guided_velocity(halfway, weights, t + 0.5 * dt, codes, guidance, vectors)
            points = points + dt * velocity
        return points * start.mask[..., None]


def _left_aligned(clouds: PointClouds) -> PointClouds:
    """The same clouds with their real points first (the layout of the masks :meth:`sample` returns)."""
    order = torch.argsort((~clouds.mask).to(torch.int8), dim=1, stable=True)
    points = torch.gather(clouds.points, 1, order[..., None].expand(-1, -1, clouds.dim))
    return PointClouds(points, torch.gather(clouds.mask, 1, order), torch.gather(clouds.weights, 1, order))


def _padded_to(clouds: PointClouds, size: int) -> PointClouds:
    extra = size - clouds.max_size
    if extra <= 0:
        return clouds
    pad = (0, extra)
    points = torch.nn.functional.pad(clouds.points, (0, 0, *pad))
    return PointClouds(points, torch.nn.functional.pad(clouds.mask, pad), torch.nn.functional.pad(clouds.weights, pad))


def _resolve_count(n, labels, sizes, conditions=None) -> int:
    """The number of clouds asked for, from ``n`` or the length of ``labels`` / ``sizes`` / ``conditions``."""
    lengths = {
        len(value)
        for value in (labels, sizes)
        if value is not None and not isinstance(value, str | int | np.integer) and np.ndim(value) == 1
    }
    if conditions is not None and np.ndim(conditions) == 2:
        lengths.add(len(conditions))
    if n is None:
        if len(lengths) != 1:
            raise ValueError("Pass `n`, or `labels`/`sizes`/`conditions` as sequences of one common length.")
        return lengths.pop()
    n = check_int("n", n)
    if lengths - {n}:
        raise ValueError(f"`labels`, `sizes` and `conditions` must have `n`={n} entries when given per cloud.")
    return int(n)
