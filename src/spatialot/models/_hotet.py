r"""HOTET: OT maps from every cloud to one reference measure, predicted by a hypernetwork.

Jiang et al. 2025 (arXiv 2504.17740): a set transformer embeds an empirical distribution, a
hypernetwork turns the embedding into the parameters of an input-convex neural network (ICNN),
and the gradient of that ICNN is the Monge map between the distribution and a fixed reference.
One forward pass gives the map of an unseen distribution.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import torch
from torch import nn

from .._docs import inject_docs
from .._validation import as_tensor, check_float32_range, check_int
from ..ot import PointClouds
from ..ot._gaussian import check_shrinkage, gaussian_map, gaussian_moments, sqrtm_psd
from ._base import Model
from ._batches import CloudFamily, map_batches, pooled_moments, take
from ._blocks import SetTransformer, mlp, weighted_mean
from ._device import resolve_device, seeded
from ._icnn import BatchedICNN
from ._training import CHECKPOINT_EVERY, Precision, full_precision, restored_on_failure, train

# ascent steps that invert the inverse map in ``transport(via='inverse')``: preconditioned
# Newton-like steps of size up to 1; 50 bring the gradient residual to about 1e-3 of the spread
INVERSION_STEPS = 50


def batch_dual_loss(
    potential: torch.Tensor, source: torch.Tensor, source_weights: torch.Tensor, target: torch.Tensor, target_weights
) -> torch.Tensor:
    r"""Semi-dual W2 objective with the conjugate taken over the source batch ("MM-B").

    .. math::

        L(\varphi) = \sum_i a_i \varphi(x_i) + \sum_j b_j \max_i \bigl(\langle x_i, y_j\rangle - \varphi(x_i)\bigr)

    Parameters
    ----------
    potential
        :math:`\varphi(x_i)` at the source points, ``(batch, n)``.
    source, source_weights
        Source points ``(batch, n, dim)`` and weights ``(batch, n)`` (0 on padding).
    target, target_weights
        Target points ``(batch, m, dim)`` and weights ``(batch, m)`` (0 on padding).

    Returns
    -------
    The objective of each problem, ``(batch,)``. Its minimum over convex :math:`\varphi` is
    :math:`\tfrac12(\mathbb E\lVert x\rVert^2 + \mathbb E\lVert y\rVert^2) - \tfrac12 W_2^2`.
    """
    scores = torch.bmm(target, source.transpose(1, 2)) - potential[:, None, :]
    scores = scores.masked_fill(source_weights[:, None, :] <= 0, float("-inf"))
    conjugate = scores.max(dim=2).values
    conjugate = torch.where(target_weights > 0, conjugate, torch.zeros_like(conjugate))
    return (source_weights * potential).sum(1) + (target_weights * conjugate).sum(1)


class _Hypernetwork(nn.Module):
    """Set transformer → per-point ReLU MLP → weighted mean → linear head giving ICNN parameters.

    Averaging the per-point hypernetwork outputs (as the paper does) equals averaging the last
    hidden layer and applying the linear head once, which is what is computed.
    """

    def __init__(
        self, dim: int, icnn: BatchedICNN, width: int, n_layers: int, n_heads: int, mlp_width: int, hyper_width: int
    ):
        super().__init__()
        self.encoder = SetTransformer(dim, width, n_layers, n_heads, mlp_width)
        self.hidden = mlp([width, hyper_width, hyper_width, hyper_width], activation=nn.ReLU, final_activation=True)
        self.head = nn.Linear(hyper_width, icnn.n_params)
        with torch.no_grad():
            # small initialisation: every distribution starts from the same near-identity ICNN
            self.head.weight.normal_(0.0, 1e-2 / math.sqrt(hyper_width))
            self.head.bias.copy_(icnn.initial_params())

    def forward(self, points: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        tokens = self.encoder(points, weights)
        return self.head(weighted_mean(self.hidden(tokens), weights))


class HOTET(Model):
    r"""Hypernetwork optimal-transport maps between many clouds and one reference measure.

    For every cloud :math:`\mu_b` two maps are predicted in one forward pass: the forward map
    :math:`\nabla\varphi_b` pushing :math:`\mu_b` onto the reference :math:`\nu` (niche →
    reference) and the inverse map :math:`\nabla\psi_b` pushing :math:`\nu` onto :math:`\mu_b`
    (reference → niche). Each direction has its own set-transformer embedding and hypernetwork
    that output the parameters of a dense ICNN (:class:`~spatialot.models._icnn.BatchedICNN`,
    hidden-to-hidden and output weights made non-negative by a square, CELU, rank-1 quadratics
    and a quadratic term starting at :math:`\tfrac12\lVert x\rVert^2`, so both maps start at
    the identity; or, with
    ``base='gaussian'``, at the closed-form Gaussian map).

    Parameters
    ----------
    dim
        Dimension of the points.
    hidden
        Hidden sizes of the ICNN; the paper's ``[max(2d,64), max(2d,64), max(d,32)]`` when ``None``.
    quadratic
        ``'full'`` (learned :math:`\tfrac12\lVert(I+\Delta)x\rVert^2`, which makes affine maps exact) or
        ``'identity'`` (fixed :math:`\tfrac12\lVert x\rVert^2`, as in the paper).
    width, n_layers, n_heads, mlp_width
        Set transformer of each direction (the paper uses 6 layers of width ``dim``).
    hyper_width
        Width of the three ReLU layers of each hypernetwork.
    n_anchors
        Number of points of the fixed sample of the reference on which the map representation
        (:meth:`embed`) is evaluated.
    base
        ``'identity'``: every ICNN starts at :math:`\tfrac12\lVert x\rVert^2` (the identity map), as
        in the paper. ``'gaussian'`` (default, 4–5× lower map error on ``benchmarks/hotet.py``):
        the quadratic and linear terms start at the closed-form Bures–Wasserstein map between the
        Gaussian with the cloud's mean and (shrunk) covariance and the Gaussian with the
        reference's moments (the *Gaussian initialisation* of ICNNs, Bunne et al. 2022), so the
        network learns only the non-Gaussian correction.
    shrinkage
        With ``base='gaussian'``, how each cloud's covariance is shrunk towards a multiple of the
        identity before the closed-form map is taken (:func:`spatialot.ot.gaussian_moments`): a
        number in ``[0, 1]`` fixes the weight of the identity; ``'oas'`` picks it per cloud from
        the cloud's size and spread, as :func:`sklearn.covariance.oas` does. The fixed default
        suits niches, where each cloud *is* the measure: on BDTNP niches of 8 cells (PCA 8), the
        transported niches end at W2² 1.50 from the reference with 0.1 and 1.72 with OAS, which
        shrinks 8-point covariances by about 0.8. ``'oas'`` suits clouds that are samples of a
        smooth measure in many dimensions: on ``sot.datasets.w2_benchmark`` with 128 points per
        measure at d = 64, the trained maps reach L2-UVP 9.6 / 9.3 % (forward / inverse) with it,
        where the closed form at 0.1 has 20.6 / 11.6 %; but at d = 4 the trained inverse map
        reaches 7.2–8.2 % with OAS against 5.5–5.7 % with 0.1 (three seeds;
        ``benchmarks/hotet.py --w2-shrinkage``).
    conjugate_steps
        Ascent steps that refine each conjugate of the dual loss from the other direction's map
        (see Notes); ``0`` is the paper's batch maximum (*MM-B*).
    random_state
        Seed of the initial weights and of the anchor sample.

    Notes
    -----
    **Objective.** The dual W2 loss of Korotin et al. (2021): for a source sample
    :math:`x_{1..n}` (weights :math:`a`) and a target sample :math:`y_{1..m}`,

    .. math::

        L(\varphi) = \sum_i a_i\varphi(x_i) + \tfrac1m\sum_j \varphi^*(y_j),
        \qquad \varphi^*(y) = \max_x\,\langle x, y\rangle - \varphi(x).

    Its minimiser over convex :math:`\varphi` makes :math:`\nabla\varphi` the Monge map for the
    squared-Euclidean cost, and the minimum is :math:`\tfrac12(\mathbb E\lVert x\rVert^2 +
    \mathbb E\lVert y\rVert^2) - \tfrac12 W_2^2`. Each step draws ``batch_size`` clouds and an
    independent reference sample of ``n_reference_samples`` points per cloud, and minimises the
    mean over clouds of :math:`\tfrac12[L_\text{fwd}(\varphi_b) + L_\text{inv}(\psi_b)]`, where the
    forward problem has source :math:`\mu_b` and target :math:`\nu`, and the inverse problem the
    reverse. Ground-truth maps are never used. All costs are squared Euclidean; every OT value
    is :math:`W_2^2`.

    **Deviation: the conjugate.** The paper (Korotin et al.'s *MM-B*) takes
    :math:`\varphi^*(y_j)` as the maximum over the batch :math:`x_{1..n}` only
    (``conjugate_steps=0``). That is a loose lower bound when a cloud has few points, and its
    minimiser is biased towards the discrete (semi-discrete) transport plan of the sample: on
    ``sot.datasets.w2_benchmark`` (d = 8, 400 measures of 128 points) training with it moved the
    maps of unseen measures *away* from the truth, from L2-UVP 7.3 / 8.1 % (forward / inverse)
    at the Gaussian start to 10.0 / 10.8 % after 200 steps, at any learning rate (1e-4 gave
    9.1 / 10.4 %); 1,024 instead of 256 reference points per step changed the inverse error,
    the signature of this bias. Here the arg-max is also sought from the other direction's
    map, which is the arg-max when both maps are right (:math:`\nabla\psi_b =
    (\nabla\varphi_b)^{-1}`), refined by ``conjugate_steps`` preconditioned ascent steps, and
    the best of all candidates is kept, so the conjugate is a tighter
    lower bound and the loss an almost unbiased estimate of the population loss; the
    degradation is gone (7.1 / 7.9 %, level with the closed-form Gaussian map of each sample,
    7.1 / 8.1 %: within a few hundred steps the Gaussian-started network learns little of the
    non-Gaussian part; see ``benchmarks/README.md``). It costs about 20 % more time per step.
    Where each cloud *is* its measure (a niche, not a sample of something larger), the batch
    maximum over the cloud's points is the exact conjugate of the forward problem, and the
    refined one lets the forward potential rise off the cloud's points until its map runs off:
    on BDTNP niches of 8 cells with ``base='identity'``, transported niches end at W2² 5.13 from
    the reference (their own distance: 3.72; 37 % of them closer) against 1.88 with
    ``conjugate_steps=0`` (all closer). With the default Gaussian base the two are level (1.50
    against 1.48; map representations correlate with exact W2² at 0.99967 and 0.99969;
    ``benchmarks/hotet.py --conjugate-steps 0``). So with ``base='identity'`` on niches, use
    ``conjugate_steps=0``.

    **Deviation: non-negative weights.** The paper passes the hypernetwork's outputs for the
    ICNN's hidden-to-hidden and output weights through a ReLU; here they are squared
    (:func:`~spatialot.models._icnn.positive`). A ReLU-clipped weight passes no gradient, and one
    output row of the hypernetwork serves every cloud, so once the loss pushes a weight below
    zero its hidden unit is dead for every cloud: on one non-Gaussian measure (d = 2) all output
    weights of the inverse ICNN and 94 % of the forward ones were clipped within 50 steps, and the
    map stayed the Gaussian one. A softplus keeps them alive, but the output weights start small
    (so that the map starts at its base), where a softplus is exponential and an Adam step only
    multiplies a weight by about :math:`e^{\eta}`: one ICNN per measure (free parameters,
    ``benchmarks/hotet.py --only-ceiling``, d = 8, fresh samples, 600 steps at 1e-2) reached
    L2-UVP 4.55 / 6.41 % (forward / inverse) with it, and 3.94 / 2.60 % with the square (see
    ``benchmarks/README.md``).

    **Limit: what the amortised maps learn beyond the Gaussian base.** On ``w2_benchmark``
    (1,000 steps, unseen measures given as 128-point samples) the inverse maps land a third to
    three quarters below the closed-form Gaussian map at d = 2 and 4 (L2-UVP 2.69 and 5.68 %
    against 9.85 and 8.81 %), but at d = 8 they stay level with it (7.97 against 8.08 %), even at
    the paper's 5,000 steps or with 20 times as many training measures; the forward maps stay
    level at every d. Where they do not improve on the Gaussian map they stay within half a point
    of it (``base='gaussian'``, d = 2 to 64), so in higher dimensions read them as that map with
    a small correction (``benchmarks/README.md``). A larger budget helps where the maps learn at
    all: with 8,000 training measures and 3,000 steps the d = 4 inverse map reaches 4.28 and
    4.41 % (two seeds), but 20,000 measures and 5,000 steps leave d = 8 level (8.12 against
    8.21 %); 15,000 steps on the 400 measures take the d = 8 inverse map to 6.93 % (forward
    level, 7.10 against 7.07 %; an hour on one CPU thread), and the same hour spent on 5,000
    steps of 32 clouds (160,000 clouds seen against 120,000) to 6.28 %, while the forward
    network then runs off the unseen measures (27.6 %). With 20,000 distinct training measures
    the same 5,000 steps of 32 keep the forward map below its Gaussian start (6.94 against
    7.03 %) and take the inverse map to 6.70 % (8.21 %); a longer run on them, at the full
    learning rate until step 5,000, has its forward map run off after step 5,000 on training
    and unseen measures alike (10.3 % at 5,500) while its inverse map keeps improving (5.92 %
    at 6,000), so the run-off is not overfitting of the training samples. The forward network
    learns from the cloud's points only; ``transport(via='inverse')`` inverts the inverse map
    instead and so carries its gain over where it has one (d = 2: 8.99 against 9.84 %, 7.11
    against 8.77 % from 1,024-point samples), and is level or worse where it has none (d = 8:
    7.20 against 7.07 %), and can be worse than the forward network where it has one (d = 8 at
    15,000 steps: 8.15 %).

    **What one 128-point sample allows.** The family's own parametric model, fitted to the same
    samples (maximum a posteriori under its prior, best of four starts drawn from that prior;
    ``benchmarks/w2_bound.py``), reaches 2.41 / 1.21 % (forward / inverse) at d = 2, 3.43 / 1.91 %
    at d = 4 and 3.71 / 2.53 % at d = 8, where HOTET, in the same run, reaches 8.72 / 2.81,
    8.72 / 5.73 and 7.08 / 7.94 %. So the sample holds a map below 5 %; what HOTET lacks is the
    family's form, which its hypernetworks must learn from the training measures. Diagnostics at
    d = 8 (scratch, ``benchmarks/README.md``): told the true maps in place of the dual loss, the
    hypernetworks fit 8 training measures to 4.45 / 4.85 % (the dual loss leaves the same 8 at
    10.30 / 7.39 %, Gaussian map 7.36 / 7.92 %), but not 400 even after 5,000 steps (7.24 /
    7.92 % on those same measures, Gaussian map 7.17 / 8.07 %). That stall is a plateau of the
    optimisation, not a limit of what the encoder reads or the ICNN holds: given each measure's
    true parameters in place of its points, the same head and ICNN stay at the Gaussian map for
    1,000 steps too, then reach 6.49 % (inverse) at 5,000 and 2.96 % at 15,000 steps; from the
    points, 5.69 % at 15,000. What leaves the plateau is the number of clouds seen, not of
    steps: at 32 clouds per step, 5,000 steps take the true-parameter maps to 2.20 % and those
    from the points to 4.28 % (on the training measures). What then limits the maps is the
    family they have seen: fitted to the true maps of the 400 training measures, the maps from
    the points score 10.73 % on unseen measures, worse than the Gaussian map, where the dual
    loss at the same budget reaches 6.28 %. With 20,000 distinct training measures the dual
    loss leaves training and unseen measures level at every checkpoint of such a run (6.70 %
    both at the end): nothing is then learnt that does not carry over to the family, and what
    limits the maps is the optimisation. So at d = 8 HOTET needs budgets well beyond the
    paper's (160,000 clouds seen against its 40,000, and more distinct training measures),
    which a GPU makes affordable.

    **Deviation: initialisation.** No identity pre-training is needed (the paper runs one): the
    hypernetwork is initialised so that every ICNN starts at :math:`\tfrac12\lVert x\rVert^2`,
    or at the Gaussian map with ``base='gaussian'``.

    **Reference.** Fixed at the first :meth:`fit`: a Gaussian fitted to all points of all clouds
    (each cloud weighted equally), a given Gaussian, or a user-given cloud; stored in buffers. Points are centred and
    scaled internally by the pooled mean and root-mean-square spread of the training clouds (OT
    maps commute with a common translation and scaling, so this changes nothing but conditioning).

    **Map representation.** :meth:`embed` evaluates the inverse map :math:`\nabla\psi_b` on a
    fixed sample :math:`r_1..r_K` of the reference (``anchors``) and flattens it, divided by
    :math:`\sqrt K`, so that the squared Euclidean distance between two embeddings is
    :math:`\tfrac1K\sum_k\lVert T_b(r_k) - T_c(r_k)\rVert^2 \approx \lVert T_b - T_c\rVert^2_{L^2(\nu)}`,
    the linearised-OT distance (Wang et al. 2013). It is an upper bound of :math:`W_2^2(\mu_b,
    \mu_c)` (the pair of maps is a coupling) and equals it when the maps are compatible (e.g.
    1-D, or Gaussians with commuting covariances).

    Examples
    --------
    >>> import numpy as np
    >>> from spatialot.models import HOTET
    >>> from spatialot.ot import PointClouds
    >>> rng = np.random.default_rng(0)
    >>> clouds = PointClouds.from_list([rng.normal(size=(16, 2)) for _ in range(32)])
    >>> model = HOTET(2, n_anchors=16).fit(clouds, n_steps=50, progress=False)  # doctest: +SKIP
    >>> model.embed(clouds).shape  # doctest: +SKIP
    (32, 32)
    """

    # 3: the ICNN's non-negative weights are stored as square roots (2: before a softplus; 1: before a ReLU)
    _WEIGHTS_VERSION = 3

    def __init__(
        self,
        dim: int,
        *,
        hidden: list[int] | None = None,
        quadratic: str = "full",
        width: int = 64,
        n_layers: int = 3,
        n_heads: int = 4,
        mlp_width: int = 128,
        hyper_width: int = 256,
        n_anchors: int = 64,
        base: str = "gaussian",
        shrinkage: float | str = 0.1,
        conjugate_steps: int = 3,
        random_state: int | None = 0,
    ):
        if base not in ("identity", "gaussian"):
            raise ValueError(f"`base` must be 'identity' or 'gaussian', got {base!r}.")
        check_shrinkage(shrinkage)
        dim = check_int("dim", dim)
        n_anchors = check_int("n_anchors", n_anchors)
        conjugate_steps = check_int("conjugate_steps", conjugate_steps, minimum=0)
        hidden = None if hidden is None else [check_int("hidden", h) for h in hidden]
        super().__init__(
            dim=dim,
            hidden=hidden,
            quadratic=quadratic,
            width=width,
            n_layers=n_layers,
            n_heads=n_heads,
            mlp_width=mlp_width,
            hyper_width=hyper_width,
            n_anchors=n_anchors,
            base=base,
            shrinkage=shrinkage,
            conjugate_steps=conjugate_steps,
            random_state=random_state,
        )
        self.icnn = BatchedICNN(dim, hidden, quadratic=quadratic)
        with seeded(random_state):
            self.forward_net = _Hypernetwork(dim, self.icnn, width, n_layers, n_heads, mlp_width, hyper_width)
            self.inverse_net = _Hypernetwork(dim, self.icnn, width, n_layers, n_heads, mlp_width, hyper_width)
        self.register_buffer("center", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("reference_mean", torch.zeros(dim))
        self.register_buffer("reference_cov", torch.eye(dim))
        self.register_buffer("reference_points", torch.zeros(0, dim))
        self.register_buffer("anchors", torch.zeros(n_anchors, dim))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # a user-given reference cloud has a size unknown to the constructor
        key = prefix + "reference_points"
        if key in state_dict:
            self.reference_points = torch.empty_like(state_dict[key], device=self.reference_points.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ------------------------------------------------------------------ reference and scaling

    @property
    def reference_is_cloud(self) -> bool:
        """Whether the reference is a user-given cloud (else a Gaussian)."""
        return self.reference_points.shape[0] > 0

    def _check_fitted(self) -> None:
        if not bool(self.fitted):
            raise RuntimeError("This HOTET model is not fitted yet: call `fit` first.")

    def _check_family(self, clouds: CloudFamily) -> None:
        super()._check_family(clouds)
        if len(clouds) == 0:
            raise ValueError("`clouds` holds no cloud.")

    def _set_reference(self, clouds: CloudFamily, reference: np.ndarray | torch.Tensor | None, generator) -> None:
        dim = self.config["dim"]
        # pooled over all points: the mean of the clouds' second moments E[x xᵀ], less the outer
        # mean; streamed, so that no (n, dim, dim) array of covariances is held
        mean, second, largest = pooled_moments(clouds, device=self.device)
        # the moments are float32, and the reference covariance is kept in float32 in data units:
        # features beyond about 1e19 overflow them, and would reach eigvalsh as inf
        check_float32_range(np.array([largest]), "The covariance of the niches (squared feature units)")
        cov = second - np.outer(mean, mean)
        cov = 0.5 * (cov + cov.T)
        check_float32_range(second, "The second moment of the niche points (squared feature units)")
        # scalar normalisation: rms spread per coordinate, floored for degenerate data
        spread = math.sqrt(max(float(np.trace(cov)) / dim, 1e-12))
        to = {"device": self.device, "dtype": torch.float32}
        self.center = torch.as_tensor(mean, **to)
        self.scale = torch.as_tensor(spread, **to)
        if isinstance(reference, tuple):
            mean, cov = (np.asarray(r, dtype=np.float64) for r in reference)
            reference = None
        if reference is None:
            eigenvalues = np.linalg.eigvalsh(cov)
            floor = 1e-6 * max(float(eigenvalues.max()), 1e-12)
            cov = cov + max(floor - float(eigenvalues.min()), 0.0) * np.eye(dim)
            self.reference_mean = torch.as_tensor(mean, **to)
            self.reference_cov = torch.as_tensor(cov, **to)
            self.reference_points = torch.zeros(0, dim, **to)
            noise = torch.as_tensor(generator.standard_normal((self.config["n_anchors"], dim)), **to)
            self.anchors = self.reference_mean + noise @ sqrtm_psd(self.reference_cov).T
        else:
            points = as_tensor(np.asarray(reference), **to)
            self.reference_points = points
            self.reference_mean = points.mean(0)
            centred = points - self.reference_mean
            self.reference_cov = centred.T @ centred / len(points)
            n_anchors = self.config["n_anchors"]
            rows = generator.choice(len(points), size=n_anchors, replace=len(points) < n_anchors)
            self.anchors = points[torch.as_tensor(rows, device=self.device)]

    def sample_reference(self, n_clouds: int, n_points: int, generator: np.random.Generator) -> torch.Tensor:
        """Independent samples of the reference, shape ``(n_clouds, n_points, dim)``, in data coordinates."""
        self._check_fitted()
        return self._draw_reference(n_clouds, n_points, generator)

    def _draw_reference(
        self, n_clouds: int, n_points: int, generator: np.random.Generator, root: torch.Tensor | None = None
    ) -> torch.Tensor:
        # also used while training, before the model is marked fitted, with the square root of
        # the reference covariance computed once (an eigendecomposition per step would make the
        # host wait for the device)
        dim = self.config["dim"]
        if self.reference_is_cloud:
            rows = generator.integers(0, len(self.reference_points), size=(n_clouds, n_points))
            return self.reference_points[torch.as_tensor(rows, device=self.device)]
        noise = torch.as_tensor(generator.standard_normal((n_clouds, n_points, dim)), dtype=torch.float32)
        root = sqrtm_psd(self.reference_cov) if root is None else root
        return self.reference_mean + noise.to(self.device) @ root.T

    def _normalise(self, points: torch.Tensor) -> torch.Tensor:
        return (points - self.center) / self.scale

    def _denormalise(self, points: torch.Tensor) -> torch.Tensor:
        return points * self.scale + self.center

    # ------------------------------------------------------------------ training

    def _base(self, x: torch.Tensor, weights: torch.Tensor, direction: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Square root and shift of the closed-form Gaussian map between the cloud's moments and the reference's."""
        if self.config["base"] == "identity":
            return None
        clouds = PointClouds(x, weights > 0, weights)
        mean, cov = gaussian_moments(clouds, shrinkage=self.config["shrinkage"])
        # a floor for clouds of one point (or of identical points), whose covariance is 0
        cov = cov + 1e-4 * torch.eye(self.config["dim"], dtype=x.dtype, device=x.device)
        ref_mean = self._normalise(self.reference_mean).expand_as(mean)
        ref_cov = (self.reference_cov / self.scale**2).expand_as(cov)
        if direction == "forward":
            matrix, shift = gaussian_map(mean, cov, ref_mean, ref_cov, floor=1e-6)
        else:
            matrix, shift = gaussian_map(ref_mean, ref_cov, mean, cov, floor=1e-6)
        return sqrtm_psd(matrix), shift

    def _ascend(
        self,
        points: torch.Tensor,
        potential: tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None],
        start: torch.Tensor,
        precondition: tuple[torch.Tensor, torch.Tensor] | None,
        n_steps: int,
        growth: float = 1.0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Ascent on :math:`\langle p, q\rangle - f(q)` from ``start``, without gradients; returns ``(q, score)``.

        Each step :math:`q \leftarrow q + t\,P(p - \nabla f(q))` is kept only where it raises the
        objective, else ``t`` is halved there; a kept step multiplies ``t`` by ``growth`` (at most
        1). ``P`` is the Gaussian base matrix of the other direction (the inverse of the Gaussian
        Hessian of ``f``, so that a step of 1 is a Newton step on the Gaussian part), or the identity.
        """
        params, base = potential
        frozen = (params.detach(), None if base is None else tuple(b.detach() for b in base))

        def value_and_gradient(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            with torch.enable_grad():
                q = q.detach().requires_grad_(True)
                value = self.icnn.potential(q, *frozen)
                (grad,) = torch.autograd.grad(value.sum(), q)
            return value.detach(), grad

        with torch.no_grad():
            matrix = None if precondition is None else precondition[0] @ precondition[0].transpose(1, 2)
            q = start
            value, grad = value_and_gradient(q)
            score = (points * q).sum(-1) - value
            size = torch.ones_like(score)
            for _ in range(n_steps):
                direction = points - grad
                if matrix is not None:
                    direction = torch.einsum("bnd,bkd->bnk", direction, matrix)
                trial = q + size[..., None] * direction
                trial_value, trial_grad = value_and_gradient(trial)
                trial_score = (points * trial).sum(-1) - trial_value
                better = trial_score > score
                q = torch.where(better[..., None], trial, q)
                grad = torch.where(better[..., None], trial_grad, grad)
                score = torch.where(better, trial_score, score)
                size = torch.where(better, (growth * size).clamp(max=1.0), 0.5 * size)
        return q, score

    def _conjugate(
        self,
        points: torch.Tensor,
        potential: tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None],
        candidates: torch.Tensor,
        candidate_weights: torch.Tensor,
        values: torch.Tensor,
        start: torch.Tensor,
        precondition: tuple[torch.Tensor, torch.Tensor] | None,
        n_steps: int,
    ) -> torch.Tensor:
        r"""Convex conjugate :math:`f^*(p) = \max_q \langle p, q\rangle - f(q)` of an ICNN at ``points``.

        The arg-max is searched without gradients: the best batch candidate (MM-B), against
        ``start`` (the other direction's map, which is the arg-max when both maps are right)
        improved by ``n_steps`` steps of :meth:`_ascend`. The value at the arg-max :math:`\hat q`
        is then :math:`\langle p, \hat q\rangle - f(\hat q)` with gradients to ``f``'s parameters
        only (envelope theorem). Every candidate gives a lower bound of :math:`f^*`, so the best
        one is the tightest available.
        """
        params, base = potential
        with torch.no_grad():
            scores = torch.bmm(points, candidates.transpose(1, 2)) - values.detach()[:, None, :]
            scores = scores.masked_fill(candidate_weights[:, None, :] <= 0, float("-inf"))
            best_score, rows = scores.max(dim=2)
            best = torch.gather(candidates, 1, rows[..., None].expand(-1, -1, points.shape[-1]))
        q, score = self._ascend(points, potential, start, precondition, n_steps)
        argmax = torch.where((score > best_score)[..., None], q, best)
        return (points * argmax).sum(-1) - self.icnn.potential(argmax, params, base)

    def _step_loss(self, batch: PointClouds, reference: torch.Tensor) -> torch.Tensor:
        x = self._normalise(batch.points) * batch.mask[..., None]
        y = self._normalise(reference)
        uniform = torch.full(y.shape[:2], 1.0 / y.shape[1], device=y.device)
        weights = batch.weights
        # the networks run in the training loop's precision, the Gaussian maps and the loss in float32
        phi_params, psi_params = self.forward_net(x, weights), self.inverse_net(x, weights)
        with full_precision(x.device):
            phi_base, psi_base = self._base(x, weights, "forward"), self._base(x, weights, "inverse")
        phi = self.icnn.potential(x, phi_params, phi_base)
        psi = self.icnn.potential(y, psi_params, psi_base)
        n_steps = self.config["conjugate_steps"]
        if n_steps == 0:  # the paper's MM-B: conjugates by the maximum over the batch
            with full_precision(x.device):
                forward = batch_dual_loss(phi.float(), x, weights, y, uniform)
                inverse = batch_dual_loss(psi.float(), y, uniform, x, weights)
                return 0.5 * (forward + inverse).mean()
        with torch.no_grad():
            # each map proposes the arg-max of the other direction's conjugate
            to_reference = self.icnn.gradient(x, phi_params, phi_base)
            to_cloud = self.icnn.gradient(y, psi_params, psi_base)
        phi_star = self._conjugate(y, (phi_params, phi_base), x, weights, phi, to_cloud, psi_base, n_steps)
        psi_star = self._conjugate(x, (psi_params, psi_base), y, uniform, psi, to_reference, phi_base, n_steps)
        with full_precision(x.device):
            forward = (weights * phi.float()).sum(1) + (uniform * phi_star.float()).sum(1)
            inverse = (uniform * psi.float()).sum(1) + (weights * psi_star.float()).sum(1)
            return 0.5 * (forward + inverse).mean()

    @inject_docs
    def fit(
        self,
        clouds: CloudFamily,
        *,
        reference: np.ndarray | torch.Tensor | tuple[np.ndarray, np.ndarray] | None = None,
        n_steps: int = 2000,
        batch_size: int = 8,
        n_reference_samples: int = 256,
        learning_rate: float = 1e-3,
        decay_rate: float = 0.5,
        decay_every: int | None = None,
        max_grad_norm: float | None = 10.0,
        random_state: int | None = 0,
        progress: bool = True,
        checkpoint: str | os.PathLike | None = None,
        checkpoint_every: int = CHECKPOINT_EVERY,
        precision: Precision = "float32",
        device: torch.device | str = "auto",
    ) -> HOTET:
        """Train both maps on a family of clouds; the reference is fixed at the first call.

        Parameters
        ----------
        clouds
            Training clouds (:class:`~spatialot.ot.PointClouds` or :class:`~spatialot.ot.IndexedClouds`).
        reference
            Points ``(n, dim)`` of a reference cloud (uniform weights); a pair ``(mean, cov)`` for
            that Gaussian; or ``None`` for the Gaussian with the mean and covariance of all points
            of all clouds. Only used by the first call.
        n_steps
            Optimiser steps.
        batch_size
            Clouds per step (8 in the paper).
        n_reference_samples
            Reference points drawn per cloud and step.
        learning_rate
            Initial Adam learning rate.
        decay_rate, decay_every
            The learning rate is multiplied by ``decay_rate`` every ``decay_every`` steps
            (default: every ``n_steps // 3`` steps).
        max_grad_norm
            Gradient-norm clipping.
        random_state
            Seed of the batches and reference samples.
        progress
            Show a progress bar.
        {checkpoint}
        precision
            ``'float32'``, or ``'bfloat16'`` for bf16 autocast of the networks (the Gaussian base
            maps and the dual loss stay float32).
        device
            Where to train: ``'auto'`` (CUDA when present, else CPU), ``'cpu'`` or ``'cuda'``; the
            model stays there for :meth:`transport`, :meth:`inverse_transport` and :meth:`embed`.

        Returns
        -------
        The model itself, trained, in evaluation mode; ``history`` holds the loss of every step.
        """
        self._check_family(clouds)
        if reference is not None and bool(self.fitted):
            raise ValueError("The reference is fixed at the first `fit`; do not pass `reference` again.")
        if isinstance(reference, tuple):
            dim = self.config["dim"]
            if len(reference) != 2 or np.shape(reference[0]) != (dim,) or np.shape(reference[1]) != (dim, dim):
                raise ValueError(f"A Gaussian `reference` must be a pair (mean ({dim},), covariance ({dim}, {dim})).")
            if not np.allclose(reference[1], np.transpose(reference[1])) or np.linalg.eigvalsh(reference[1]).min() <= 0:
                raise ValueError("The covariance of a Gaussian `reference` must be symmetric positive definite.")
        elif reference is not None:
            shape = np.shape(reference)
            if len(shape) != 2 or shape[1] != self.config["dim"] or shape[0] < 1:
                raise ValueError(f"`reference` must have shape (n_points, {self.config['dim']}), got {shape}.")
            if not np.isfinite(np.asarray(reference, dtype=np.float64)).all():
                raise ValueError("`reference` contains NaN or infinite values.")
        n_steps = check_int("n_steps", n_steps)
        batch_size = check_int("batch_size", batch_size)
        n_reference_samples = check_int("n_reference_samples", n_reference_samples)
        self.to(resolve_device(device))
        # a failure anywhere below, reference included, leaves the model as it was
        with restored_on_failure(self), seeded(random_state) as rng:
            if not bool(self.fitted):
                self._set_reference(clouds, reference, rng)

            reference_root: dict[str, torch.Tensor] = {}

            def step_loss(step: int) -> torch.Tensor:
                rows = rng.choice(len(clouds), size=batch_size, replace=len(clouds) < batch_size)
                batch = take(clouds, np.sort(rows), self.device)
                with full_precision(self.device):  # the reference sample is data: float32
                    if "root" not in reference_root:  # at the first step: after a checkpoint is read
                        reference_root["root"] = sqrtm_psd(self.reference_cov)
                    reference = self._draw_reference(batch_size, n_reference_samples, rng, reference_root["root"])
                return self._step_loss(batch, reference)

            train(
                self,
                step_loss,
                n_steps=n_steps,
                learning_rate=learning_rate,
                decay_rate=decay_rate,
                decay_every=decay_every or max(n_steps // 3, 1),
                max_grad_norm=max_grad_norm,
                progress=progress,
                description="HOTET",
                rng=rng,
                checkpoint=checkpoint,
                checkpoint_every=checkpoint_every,
                precision=precision,
            )
            self.fitted.fill_(True)  # only once training succeeded
        return self

    # ------------------------------------------------------------------ inference

    def icnn_params(
        self, clouds: PointClouds, *, direction: str = "forward"
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """ICNN parameters ``(batch, n_params)`` of each cloud of a batch, for ``'forward'`` or ``'inverse'``.

        Returned with the Gaussian base ``(root, shift)`` of the quadratic term (``None`` when
        ``base='identity'``), in the model's internal (centred, scaled) coordinates.
        """
        network = {"forward": self.forward_net, "inverse": self.inverse_net}.get(direction)
        if network is None:
            raise ValueError(f"`direction` must be 'forward' or 'inverse', got {direction!r}.")
        clouds = clouds.to(self.device, torch.float32)
        x = self._normalise(clouds.points) * clouds.mask[..., None]
        return network(x, clouds.weights), self._base(x, clouds.weights, direction)

    def _apply_map(self, clouds: PointClouds, points: torch.Tensor | None, direction: str) -> torch.Tensor:
        given = points is not None
        points = self._normalise(clouds.points if points is None else points)
        if direction == "inverted":
            # the forward map as the inverse of the inverse map: the arg-max of <p, q> - psi_b(q),
            # started at the forward map and preconditioned by its Gaussian base
            phi_params, phi_base = self.icnn_params(clouds, direction="forward")
            potential = self.icnn_params(clouds, direction="inverse")
            start = self.icnn.gradient(points, phi_params, phi_base)
            images, _ = self._ascend(points, potential, start, phi_base, INVERSION_STEPS, growth=2.0)
        else:
            images = self.icnn.gradient(points, *self.icnn_params(clouds, direction=direction))
        mapped = self._denormalise(images)
        return mapped if given else mapped * clouds.mask[..., None]

    def _map(
        self,
        clouds: CloudFamily,
        points,
        direction: str,
        batch_size: int,
        progress: bool,
        description: str,
        out: np.ndarray | None = None,
        flatten: bool = False,
    ) -> np.ndarray:
        self._check_fitted()
        self._check_family(clouds)
        fixed = None
        if points is not None:
            fixed = as_tensor(
                points if isinstance(points, torch.Tensor) else np.asarray(points),
                dtype=torch.float32,
                device=self.device,
            )
            if fixed.ndim not in (2, 3) or fixed.shape[-1] != self.config["dim"]:
                raise ValueError(
                    f"`points` must have shape (n_points, {self.config['dim']}) or (n_clouds, n_points, "
                    f"{self.config['dim']}), got {tuple(fixed.shape)}."
                )
            if fixed.ndim == 3 and len(fixed) != len(clouds):
                raise ValueError(f"`points` holds points for {len(fixed)} clouds, but there are {len(clouds)}.")
        if fixed is not None and fixed.ndim == 2:
            fixed = fixed.expand(len(clouds), *fixed.shape)  # the same points for every cloud, as a view
        scale = 1 / math.sqrt(fixed.shape[1]) if flatten else 1.0

        def mapped(batch: PointClouds, *points: torch.Tensor) -> torch.Tensor:
            images = self._apply_map(batch, points[0] if points else None, direction)
            return images.flatten(1) * scale if flatten else images

        return map_batches(
            mapped,
            clouds,
            *(() if fixed is None else (fixed,)),
            batch_size=batch_size,
            device=self.device,
            progress=progress,
            description=description,
            out=out,
            trim=fixed is not None,  # maps of given points do not depend on the padding of the batch
        )

    def transport(
        self,
        clouds: CloudFamily,
        points=None,
        *,
        via: str = "forward",
        batch_size: int = 256,
        progress: bool = False,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        r"""Push each cloud onto the reference with its forward map :math:`\nabla\varphi_b`.

        Parameters
        ----------
        clouds
            The clouds whose maps are predicted.
        points
            Where to evaluate each map: ``None`` for the cloud's own points, an array
            ``(n_points, dim)`` for the same points for every cloud, or ``(n_clouds, n_points, dim)``.
        via
            ``'forward'``: the forward network's map :math:`\nabla\varphi_b`. ``'inverse'``: the
            inverse of the inverse map, :math:`(\nabla\psi_b)^{-1} = \nabla\psi_b^*`, found per point
            by 50 preconditioned ascent steps on :math:`\langle p, q\rangle - \psi_b(q)` started at
            :math:`\nabla\varphi_b(p)` (about 50 times the cost). The inverse problem's source is
            the reference, a continuous measure, so its map is learned everywhere; the forward
            problem's source is the cloud, and where the cloud is a sample of a smooth measure its
            map between the sample's points is only interpolated (see ``benchmarks/README.md``).
        batch_size
            Clouds per forward pass.
        progress
            Show a progress bar.
        out
            Array of the shape of the result to write it into (e.g. a ``np.memmap``); a new
            float32 array when ``None``.

        Returns
        -------
        Array ``(n_clouds, n_points, dim)`` of transported points (zeros on padding when ``points`` is ``None``).
        """
        if via not in ("forward", "inverse"):
            raise ValueError(f"`via` must be 'forward' or 'inverse', got {via!r}.")
        direction = "forward" if via == "forward" else "inverted"
        return self._map(clouds, points, direction, batch_size, progress, "HOTET transport", out)

    def inverse_transport(
        self,
        clouds: CloudFamily,
        points=None,
        *,
        batch_size: int = 256,
        progress: bool = False,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        r"""Push the reference onto each cloud with its inverse map :math:`\nabla\psi_b`.

        Parameters
        ----------
        clouds
            The clouds whose maps are predicted.
        points
            Reference points to map: ``None`` for the anchors (``(n_anchors, dim)``), an array
            ``(n_points, dim)``, or ``(n_clouds, n_points, dim)``.
        batch_size
            Clouds per forward pass.
        progress
            Show a progress bar.
        out
            Array of the shape of the result to write it into (e.g. a ``np.memmap``); a new
            float32 array when ``None``.

        Returns
        -------
        Array ``(n_clouds, n_points, dim)``: the images of the reference points, a sample of each cloud's law.
        """
        self._check_fitted()
        points = self.anchors if points is None else points
        return self._map(clouds, points, "inverse", batch_size, progress, "HOTET", out)

    def embed(
        self,
        clouds: CloudFamily,
        *,
        batch_size: int = 256,
        progress: bool = False,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """Map representation: the inverse map on the anchors, flattened and divided by ``sqrt(n_anchors)``.

        Streamed in batches into one preallocated array (see :meth:`~spatialot.models.Wormhole.encode`).

        Parameters
        ----------
        clouds
            The clouds to embed.
        batch_size
            Clouds per forward pass.
        progress
            Show a progress bar.
        out
            Array ``(n_clouds, n_anchors * dim)`` to write the result into (e.g. a ``np.memmap``);
            a new float32 array when ``None``.

        Returns
        -------
        Array ``(n_clouds, n_anchors * dim)`` whose squared Euclidean distances approximate
        :math:`W_2^2` between clouds under linearised OT (see the class notes).
        """
        self._check_fitted()
        return self._map(clouds, self.anchors, "inverse", batch_size, progress, "HOTET", out, flatten=True)

    def params_summary(self) -> dict[str, Any]:
        """Configuration and reference type, as plain values (for ``.uns``)."""
        return {**self.config, "reference": "cloud" if self.reference_is_cloud else "gaussian"}
