"""Wasserstein Wormhole (Haviv et al. 2024): a Euclidean embedding of point clouds whose distances match OT."""

from __future__ import annotations

import math
import os
from typing import Literal

import numpy as np
import torch
from torch import nn

from .._docs import inject_docs
from .._validation import as_tensor, check_float32_range, check_int
from ..ot import PointClouds, exact_w2_squared, sinkhorn
from ._base import Model
from ._batches import CloudFamily, map_batches, mean_size, take
from ._blocks import SetTransformer, glorot_init, mlp, weighted_mean
from ._device import checks_on_host, resolve_device, seeded
from ._training import CHECKPOINT_EVERY, Precision, Schedule, full_precision, restored_on_failure, train

OTDistance = Literal["sinkhorn_divergence", "entropic", "exact"]
_OT_DISTANCES = ("sinkhorn_divergence", "entropic", "exact")


ENCODE_POINTS = {"cpu": 4608, "cuda": 65536}
"""Points per forward pass of :meth:`Wormhole.encode` by default, by device type."""


class Wormhole(Model):
    r"""Wasserstein Wormhole: point clouds embedded so that Euclidean distance approximates W2.

    An encoder maps clouds into :math:`\mathbb{R}^n` where squared Euclidean distance
    approximates the squared 2-Wasserstein distance, and a decoder maps embeddings back to clouds.

    The encoder is a transformer over the points of a cloud without positional encoding (so it
    is permutation-invariant), masked by the point weights and pooled by the weighted mean,
    followed by an MLP. The decoder maps an embedding to ``decoder_size`` tokens, runs unmasked
    transformer blocks and an MLP, and squashes the points into the range of the training data.

    Training minimises, on each minibatch of :math:`B` clouds (all :math:`B(B-1)/2` pairs),

    .. math:: \frac{1}{|\text{pairs}|}\sum_{i<j}\Big(D(x_i, x_j)
              - \tfrac1n\lVert h_i - h_j\rVert^2\Big)^2
              \; + \; \lambda\, \frac1B \sum_i S_\varepsilon\big(x_i,
              \mathrm{dec}(\mathrm{sg}_{0.1}(h_i))\big),

    where :math:`h_i \in \mathbb{R}^n` is the network's output for cloud :math:`x_i`,
    :math:`D` is the OT distance chosen by ``ot_distance`` and computed on the fly with
    :mod:`spatialot.ot` on the model's device, :math:`S_\varepsilon` is the Sinkhorn divergence
    and :math:`\lambda` is ``decoder_weight``. As in the official implementation, costs are
    divided by a scale :math:`s` (the largest squared distance between points of random pairs
    of training clouds) so that ``epsilon`` is relative to it, and the embedding distance is the
    *mean* over the :math:`n` dimensions, so that outputs of order one (where a freshly
    initialised network starts) already match targets of order :math:`D/s \le 1`; a sum
    would make the network first shrink every output by :math:`\sqrt n`, and the decoder then
    reads embeddings squeezed near zero. :meth:`encode` returns
    :math:`z = h \sqrt{s / n}`, so that :math:`\lVert z_i - z_j\rVert^2 \approx W_2^2(x_i, x_j)`
    in the units of the data, whatever the internal parametrisation.

    Unlike the paper, only a tenth of the decoder's gradient reaches the encoder
    (:math:`\mathrm{sg}_{0.1}(h) = 0.1\,h + 0.9\,\mathrm{sg}(h)`, with :math:`\mathrm{sg}` the
    stop-gradient): the distance loss shapes the embedding, and the decoder learns to read it.
    Trained jointly, the reconstruction pulls the embedding away from the distances; fully
    detached, the decoder reconstructs less well. Side by side with the official code
    (``benchmarks/peers/wormhole.py``, simulated niches, 1,000 steps, before the exact means
    below), joint training gave
    held-out / same-type Pearson 0.987 / 0.943 and decoder W2² 0.66, a detached decoder
    0.992 / 0.952 and 0.80, a tenth 0.992 / 0.954 and 0.69 (official code: 0.984 / 0.931, 0.72).

    Parameters
    ----------
    dim
        Dimension of the points.
    n_components
        Dimension of the embedding.
    width
        Width of the transformer token stream (encoder and decoder).
    n_layers
        Transformer blocks in the encoder and in the decoder.
    n_heads
        Attention heads.
    mlp_width
        Hidden width of the transformer MLPs.
    dropout
        Dropout on attention probabilities during training.
    decoder_size
        Number of points of a decoded cloud; ``None`` (default) takes the mean size of the
        training clouds at the first :meth:`fit`, as the official implementation does.
    ot_distance
        Target distance :math:`D` between clouds:

        - ``'sinkhorn_divergence'`` (default, the paper's S2): the debiased
          :math:`S_\varepsilon = \mathrm{OT}_\varepsilon(x, y) - \frac12\mathrm{OT}_\varepsilon(x, x)
          - \frac12\mathrm{OT}_\varepsilon(y, y)`, a metric-like estimate of :math:`W_2^2`;
        - ``'entropic'`` (the paper's W2): the transport cost :math:`\langle P_\varepsilon, C\rangle`
          of the entropic plan;
        - ``'exact'``: exact :math:`W_2^2` from POT, solved on the CPU (slow for large clouds).
    epsilon
        Entropic regularisation relative to the cost scale (the paper's default 0.01).
    decoder_weight
        Weight :math:`\lambda` of the decoder loss; 0 trains the encoder alone (no decoder).
    exact_mean
        Make the first ``dim`` components of the embedding the cloud's (weighted) mean, exactly,
        and train the networks on the centred clouds; ``None`` (default) does so when
        ``n_components > dim``. See the notes.
    sinkhorn_tol
        Marginal tolerance (L1) of the Sinkhorn solves in training. Targets only need to rank
        and scale pairs correctly: at ``1e-2`` they correlate with converged values to better
        than 0.9999 at a quarter of the iterations of ``1e-3`` on clustered niches. On a GPU the
        tolerance is checked once per :meth:`fit`, not per step: see the notes.
    random_state
        Seed of the initial weights, drawn here whatever torch's global generator holds (``None``:
        drawn from it). The minibatches are seeded by :meth:`fit`'s own ``random_state``.

    Notes
    -----
    Train with :meth:`fit`; embed with :meth:`encode` (any clouds of the same dimension, e.g.
    another sample: out-of-sample embedding); reconstruct with :meth:`decode`; average niches
    with :meth:`barycenter` and :meth:`interpolate`.

    **Exact means** (``exact_mean``; not in the paper). For the squared Euclidean cost, every
    distance offered here splits exactly into a term of the means and a term of the shapes,
    :math:`D(x, y) = \lVert m_x - m_y\rVert^2 + D(x - m_x, y - m_y)` (a translation changes the
    cost by terms that each depend on one point only, which leave the plan unchanged). The
    embedding is then :math:`z = (m_x, g(x - m_x))`: the mean needs no learning, and the
    encoder learns only the shapes' distances, from centred clouds (so it is invariant to
    translation), while the decoder decodes a centred shape that is moved to the mean. On
    niches the means carry most of the distance (93 % of W2² on BDTNP niches of 8, where the
    mean term alone correlates with W2² at 0.999, more than this encoder learned without it;
    25 % on the simulated niches of ``benchmarks/peers/wormhole.py``), and the remaining
    error is that of the shape term alone.

    On CPU every Sinkhorn solve of a step stops when its problems meet ``sinkhorn_tol``. On a
    GPU, reading that test back to the host would stall the device a dozen times per step, so
    :meth:`fit` first solves a few minibatches of the training clouds to ``sinkhorn_tol`` and
    then runs every solve of every step for a fixed count of iterations (1.25 times the
    slowest problem of those minibatches; :func:`~spatialot.ot.sinkhorn` with ``tol=None``), as
    the official code fixes its count by probing the data.

    Examples
    --------
    >>> import numpy as np
    >>> from spatialot.models import Wormhole
    >>> from spatialot.ot import PointClouds
    >>> rng = np.random.default_rng(0)
    >>> sizes = rng.integers(5, 12, 64)
    >>> clouds = PointClouds.from_list([rng.normal(size=(n, 3)) + rng.normal(size=3) for n in sizes])
    >>> model = Wormhole(3).fit(clouds, n_steps=1000, progress=False)  # doctest: +SKIP
    >>> embedding = model.encode(clouds)  # doctest: +SKIP
    >>> model.decode(embedding[:2]).shape  # doctest: +SKIP
    (2, 8, 3)
    """

    # 2: `exact_mean` (the leading outputs are the clouds' means, the decoder decodes shapes)
    _WEIGHTS_VERSION = 2
    # the share of the decoder's gradient that reaches the embedding: 1 in the paper (ablations:
    # benchmarks/peers/wormhole.py --ablation joint-decoder, decoder-coupling=0)
    _decoder_gradient_to_embedding = 0.1
    # Sinkhorn iterations of every solve in a training step; None: checked against the
    # tolerance (on CPU). Set by `fit` on other devices (see the class notes)
    _fixed_sinkhorn_iterations: int | None = None

    def __init__(
        self,
        dim: int,
        *,
        n_components: int = 128,
        width: int = 128,
        n_layers: int = 3,
        n_heads: int = 4,
        mlp_width: int = 512,
        dropout: float = 0.1,
        decoder_size: int | None = None,
        ot_distance: OTDistance = "sinkhorn_divergence",
        epsilon: float = 0.01,
        decoder_weight: float = 1.0,
        sinkhorn_tol: float = 1e-2,
        exact_mean: bool | None = None,
        random_state: int | None = 0,
    ):
        if ot_distance not in _OT_DISTANCES:
            raise ValueError(f"`ot_distance` must be one of {_OT_DISTANCES}, got {ot_distance!r}.")
        dim, n_components = check_int("dim", dim), check_int("n_components", n_components)
        if decoder_size is not None:
            decoder_size = check_int("decoder_size", decoder_size)
        if epsilon <= 0:
            raise ValueError(f"`epsilon` must be positive, got {epsilon}.")
        if exact_mean is None:
            exact_mean = n_components > dim
        elif exact_mean and n_components <= dim:
            raise ValueError(
                f"`exact_mean=True` needs `n_components` > `dim` (the first `dim` components are the "
                f"clouds' means), got n_components={n_components} and dim={dim}."
            )
        super().__init__(
            dim=dim,
            n_components=n_components,
            width=width,
            n_layers=n_layers,
            n_heads=n_heads,
            mlp_width=mlp_width,
            dropout=dropout,
            decoder_size=decoder_size,
            ot_distance=ot_distance,
            epsilon=epsilon,
            decoder_weight=decoder_weight,
            sinkhorn_tol=sinkhorn_tol,
            exact_mean=bool(exact_mean),
            random_state=random_state,
        )
        # fitted state: the cost scale and the data range the decoder squashes into
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("lower", torch.zeros(dim))
        self.register_buffer("upper", torch.ones(dim))
        with seeded(random_state):
            self.encoder = SetTransformer(dim, width, n_layers, n_heads, mlp_width, dropout)
            self.encoder_head = mlp([width, width, n_components - self._mean_components])
            self.decoder = SetTransformer(width, width, n_layers, n_heads, mlp_width, dropout)
            self.decoder_head = mlp([width, width, dim])
            # the token layer's size follows `decoder_size`, which may wait for the training clouds
            # (then it is drawn in `fit`, under fit's seed)
            self.decoder_tokens: nn.Linear | None = None
            if decoder_size is not None:
                self._build_decoder_tokens(int(decoder_size))
            glorot_init(self)

    def _build_decoder_tokens(self, decoder_size: int) -> None:
        self.config["decoder_size"] = decoder_size
        width = self.config["width"]
        learned = self.config["n_components"] - self._mean_components
        self.decoder_tokens = nn.Linear(learned, decoder_size * width).to(self.scale.device)
        glorot_init(self.decoder_tokens)

    # ------------------------------------------------------------------ networks on scaled points
    @property
    def _mean_components(self) -> int:
        """Leading components of the outputs that hold the clouds' means (``dim``, or 0)."""
        return self.config["dim"] if self.config["exact_mean"] else 0

    def _centred(self, scaled: PointClouds) -> tuple[PointClouds, torch.Tensor]:
        """Clouds moved to mean zero (when ``exact_mean``, else unchanged), and their means."""
        means = weighted_mean(scaled.points, scaled.weights)
        if not self.config["exact_mean"]:
            return scaled, means
        return PointClouds(scaled.points - means[:, None], scaled.mask, scaled.weights), means

    def _encode_scaled(self, clouds: PointClouds) -> torch.Tensor:
        r"""Network outputs :math:`h` of clouds; :math:`\mathrm{mean}_d (h_i - h_j)^2` approximates :math:`D / s`."""
        centred, means = self._centred(self._scaled(clouds))
        return self._join_means(self._encode_shapes(centred), means)

    def _encode_shapes(self, centred: PointClouds) -> torch.Tensor:
        """The learned outputs of scaled clouds (centred by :meth:`_centred` when ``exact_mean``)."""
        return self.encoder_head(weighted_mean(self.encoder(centred.points, centred.weights), centred.weights))

    def _join_means(self, learned: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
        if not self.config["exact_mean"]:
            return learned
        # scaled by sqrt(n) so that their share of the mean over the n outputs is |m_i - m_j|² / s
        return torch.cat([means.to(learned.dtype) * self.config["n_components"] ** 0.5, learned], -1)

    def _embedding_distances(self, outputs: torch.Tensor, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """Squared differences summed over ``outputs``' components and divided by all ``n_components``.

        On the whole outputs :math:`h` that is their mean; on the learned outputs alone (with
        ``exact_mean``) it is their share of it, the mean term being the rest.
        """
        return ((outputs[first] - outputs[second]) ** 2).sum(-1) / self.config["n_components"]

    def _output_to_data_units(self) -> torch.Tensor:
        r"""Factor :math:`\sqrt{s / n}` from network outputs to embeddings in data units."""
        return self.scale / self.config["n_components"] ** 0.5

    def _decode_scaled(self, outputs: torch.Tensor) -> torch.Tensor:
        n_means = self._mean_components
        shapes = self._decode_centred(outputs[:, n_means:])
        if not n_means:
            return shapes
        return shapes + (outputs[:, None, :n_means] / self.config["n_components"] ** 0.5).to(shapes.dtype)

    def _decode_centred(self, learned: torch.Tensor) -> torch.Tensor:
        """Scaled clouds decoded from the learned outputs: centred on 0 when ``exact_mean``."""
        if self.decoder_tokens is None:
            raise RuntimeError("The decoder is built by the first `fit` (its size follows the training clouds).")
        tokens = self.decoder_tokens(learned).view(len(learned), self.config["decoder_size"], -1)
        unit = torch.sigmoid(self.decoder_head(self.decoder(tokens)).float())
        points = (self.lower + unit * (self.upper - self.lower)) / self.scale
        # the mean is the embedding's to say, not the decoder's
        return points - points.mean(1, keepdim=True) if self.config["exact_mean"] else points

    # ------------------------------------------------------------------ training
    def _sinkhorn_kwargs(self) -> dict:
        # over-relaxation 1.8 rather than the solver's 1.5: on clustered niches at ε = 0.01 it
        # reaches the same tolerance in a third of the iterations, and the targets dominate a step
        kwargs = {
            "epsilon": self.config["epsilon"],
            "tol": self.config["sinkhorn_tol"],
            "max_iter": 2000,
            "over_relaxation": 1.8,
        }
        if self._fixed_sinkhorn_iterations is not None:
            kwargs.update(tol=None, max_iter=self._fixed_sinkhorn_iterations)
        return kwargs

    def _calibrate_iterations(self, family: CloudFamily, batch_size: int, n_batches: int = 4) -> int:
        """Fixed Sinkhorn iterations for a step: 1.25 times the slowest checked solve of a few minibatches.

        The minibatches come from a generator of their own, so that calibrating draws nothing
        from the training's random stream (a resumed run stays the same run).
        """
        rng = np.random.default_rng(0)
        first, second = torch.triu_indices(batch_size, batch_size, offset=1, device=self.device)
        kwargs, slowest = self._sinkhorn_kwargs(), 1
        with torch.no_grad():
            for _ in range(n_batches):
                chosen = np.sort(rng.choice(len(family), batch_size, replace=False))
                scaled = self._centred(self._scaled(take(family, chosen, self.device)))[0]
                for x, y in ((scaled[first], scaled[second]), (scaled, scaled)):
                    slowest = max(slowest, sinkhorn(x, y, **kwargs).n_iter)
        return min(math.ceil(1.25 * slowest), 2000)

    def pair_targets(self, clouds: PointClouds, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """OT distances :math:`D` between clouds ``first[p]`` and ``second[p]`` of a batch, on scaled points.

        Parameters
        ----------
        clouds
            A batch of clouds in data units.
        first, second
            Integer tensors of the same length: the pairs.

        Returns
        -------
        Tensor of the target distances divided by :attr:`scale` squared.
        """
        return self._pair_targets(self._scaled(clouds), first, second)[0]

    def _scaled(self, clouds: PointClouds) -> PointClouds:
        return PointClouds(clouds.points / self.scale, clouds.mask, clouds.weights)

    def _pair_targets(
        self, scaled: PointClouds, first: torch.Tensor, second: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The targets of :meth:`pair_targets` on scaled clouds, and the clouds' self terms when solved."""
        distance = self.config["ot_distance"]
        with torch.no_grad():
            if distance == "exact":
                values = exact_w2_squared(scaled[first.cpu().numpy()], scaled[second.cpu().numpy()])
                return torch.as_tensor(values, dtype=scaled.points.dtype, device=scaled.device), None
            kwargs = self._sinkhorn_kwargs()
            cross = sinkhorn(scaled[first], scaled[second], **kwargs)
            if distance == "entropic":
                return cross.cost, None
            # the self terms are shared by every pair a cloud is in: solve them once per cloud
            self_terms = sinkhorn(scaled, scaled, **kwargs).objective
            return (cross.objective - 0.5 * (self_terms[first] + self_terms[second])).clamp_min(0), self_terms

    def _loss(self, clouds: PointClouds, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        # the networks run in the training loop's precision, the OT and the loss in float32.
        # With `exact_mean`, D(x, y) = |m_x - m_y|² + D(x - m_x, y - m_y) for all three distances
        # (the plan of a squared-Euclidean cost is blind to translations): the means are exact
        # outputs, and the networks fit the distances between the centred clouds
        with full_precision(clouds.device):
            centred, _ = self._centred(self._scaled(clouds))
        learned = self._encode_shapes(centred)
        decoded = None
        if self.config["decoder_weight"] > 0:
            # the decoder learns to read the embedding and reshapes it only a little: a share of
            # its gradient reaches the encoder (see the class notes)
            coupling = self._decoder_gradient_to_embedding
            read = learned.detach() if coupling == 0 else coupling * learned + (1 - coupling) * learned.detach()
            decoded = self._decode_centred(read)
        with full_precision(clouds.device):
            predicted = self._embedding_distances(learned.float(), first, second)
            targets, self_data = self._pair_targets(centred, first, second)
            loss = ((predicted - targets) ** 2).mean()
            if decoded is None:
                return loss
            decoded = decoded.float()
            size = decoded.shape[1]
            uniform = torch.full(decoded.shape[:2], 1 / size, dtype=decoded.dtype, device=decoded.device)
            decoded_clouds = PointClouds(decoded, torch.ones_like(uniform, dtype=torch.bool), uniform)
            kwargs = self._sinkhorn_kwargs()
            cross = sinkhorn(centred, decoded_clouds, **kwargs).objective
            if self_data is None:  # the targets did not need them (exact or entropic distance)
                with torch.no_grad():
                    self_data = sinkhorn(centred, centred, **kwargs).objective
            self_decoded = sinkhorn(decoded_clouds, decoded_clouds, **kwargs).objective
            reconstruction = (cross - 0.5 * (self_data + self_decoded)).mean()
            return loss + self.config["decoder_weight"] * reconstruction

    def calibrate(self, family: CloudFamily, rng: np.random.Generator, n_pairs: int = 1000) -> None:
        """Set the cost scale and the decoder's range from the training clouds.

        The scale is the largest squared distance between points of ``n_pairs`` random pairs of
        clouds (the official implementation's ``ot_scale``), the range is the per-feature
        minimum and maximum over the points of up to 10,000 random clouds.
        """
        device = self.device
        sample = take(family, np.sort(rng.choice(len(family), min(len(family), 10_000), replace=False)), device)
        # the decoder's range: of the points, or of the centred points when it decodes shapes
        real = self._centred(sample)[0].points[sample.mask]
        self.lower.copy_(real.min(0).values)
        self.upper.copy_(real.max(0).values)
        first = torch.as_tensor(rng.integers(len(sample), size=n_pairs), device=device)
        second = torch.as_tensor(rng.integers(len(sample), size=n_pairs), device=device)
        # in float64: squared distances of features beyond about 1e19 overflow float32 to inf
        points = sample.points.double()
        cost = torch.cdist(points[first], points[second]) ** 2
        valid = sample.mask[first][:, :, None] & sample.mask[second][:, None, :]
        largest = float(torch.where(valid, cost, 0).max())
        scale = max(largest, 1e-12) ** 0.5
        check_float32_range(np.array([scale]), "The cost scale (largest distance between points of two clouds)")
        self.scale.fill_(scale)

    @inject_docs
    def fit(
        self,
        family: CloudFamily,
        *,
        n_steps: int = 1000,
        batch_size: int = 16,
        learning_rate: float = 1e-3,
        decay_rate: float = 0.0,
        decay_every: int = 2000,
        schedule: Schedule = "cosine",
        warmup_steps: int = 100,
        device: torch.device | str = "auto",
        random_state: int | None = 0,
        progress: bool = True,
        checkpoint: str | os.PathLike | None = None,
        checkpoint_every: int = CHECKPOINT_EVERY,
        precision: Precision = "float32",
    ) -> Wormhole:
        """Train on random minibatches of ``family``.

        A first call also calibrates the cost scale and the decoder's range on ``family``;
        further calls continue training from the current weights.

        Parameters
        ----------
        family
            Training clouds (:class:`~spatialot.ot.PointClouds` or
            :class:`~spatialot.ot.IndexedClouds`) of dimension ``dim``.
        n_steps
            Optimiser steps.
        batch_size
            Clouds per minibatch; each step solves ``batch_size * (batch_size - 1) / 2`` OT problems.
        learning_rate
            Peak Adam learning rate.
        schedule, warmup_steps
            After a linear warm-up over ``warmup_steps`` steps, ``'cosine'`` lowers the learning
            rate along half a cosine to ``decay_rate * learning_rate`` at ``n_steps``; ``'step'``
            multiplies it by ``decay_rate`` every ``decay_every`` steps, as the official code
            does (1e-4, ×0.99 every 2,000 steps, no warm-up). The defaults (1e-3, warm-up of
            100 steps, cosine to 0) deviate from the paper's: at 1,000 steps on BDTNP niches
            (``benchmarks/peers/wormhole.py``) this model reaches held-out Pearson 0.992 with
            the official schedule and 0.995 with this one (the official code: 0.990), and a
            constant 1e-3 without warm-up only 0.967. A cosine run ends at its ``n_steps``: a checkpoint
            resumes only a run of the same budget (extend runs with ``schedule='step'``).
        decay_rate, decay_every
            The learning rate's final fraction (``'cosine'``), or its factor every
            ``decay_every`` steps (``'step'``).
        device
            ``'auto'`` (CUDA when present, else CPU), ``'cpu'`` or ``'cuda'``.
        random_state
            Seed of the initialisation-independent randomness of training (minibatches, dropout).
        progress
            Show a progress bar with the running loss.
        {checkpoint}
        precision
            ``'float32'``, or ``'bfloat16'`` for bf16 autocast of the networks (the OT targets
            and the loss stay float32).

        Returns
        -------
        The model itself, trained, in evaluation mode.

        Notes
        -----
        Under ``torchrun`` every process trains on its own minibatches of ``batch_size`` clouds
        and the gradients are averaged (see :doc:`/training`).
        """
        self._check_family(family)
        if len(family) < 2:
            raise ValueError(f"Training needs at least 2 clouds, got {len(family)}.")
        batch_size = min(check_int("batch_size", batch_size, minimum=2, why="the loss compares pairs"), len(family))
        self.to(resolve_device(device))
        first, second = torch.triu_indices(batch_size, batch_size, offset=1, device=self.device)
        # a failure anywhere below, calibration included, leaves the model as it was
        with restored_on_failure(self), seeded(random_state) as rng:
            if not self.history:
                self.calibrate(family, rng)
            if self.decoder_tokens is None:
                self._build_decoder_tokens(max(1, round(mean_size(family))))
            if not checks_on_host(self.device):
                self._fixed_sinkhorn_iterations = self._calibrate_iterations(family, batch_size)

            def step_loss(step: int) -> torch.Tensor:
                chosen = np.sort(rng.choice(len(family), batch_size, replace=False))
                return self._loss(take(family, chosen, self.device), first, second)

            try:
                train(
                    self,
                    step_loss,
                    n_steps=n_steps,
                    learning_rate=learning_rate,
                    decay_rate=decay_rate,
                    decay_every=decay_every,
                    schedule=schedule,
                    warmup_steps=warmup_steps,
                    progress=progress,
                    description="Wormhole",
                    rng=rng,
                    checkpoint=checkpoint,
                    checkpoint_every=checkpoint_every,
                    precision=precision,
                )
            finally:
                self._fixed_sinkhorn_iterations = None  # outside training, solves check their tolerance
        return self

    # ------------------------------------------------------------------ inference
    def encode(
        self,
        family: CloudFamily,
        *,
        batch_size: int | None = None,
        progress: bool = False,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        r"""Embed clouds: :math:`\lVert z_i - z_j\rVert^2 \approx W_2^2(x_i, x_j)` in data units.

        The clouds stream through the model in batches (see
        :func:`~spatialot.models._batches.map_batches`): each stretch of clouds is batched by
        increasing size and each batch padded only to its largest cloud; features on disk are
        read a stretch at a time. Memory is that of the output plus one stretch.

        Parameters
        ----------
        family
            Clouds of dimension ``dim``; they need not be those the model was trained on.
        batch_size
            Clouds per forward pass; by default as many as hold ``ENCODE_POINTS`` points
            (4,608 on CPU, 65,536 on a GPU) at the family's mean cloud size: 96 clouds of 48
            points, 512 of 9. The clouds are sorted by size and each batch is padded only to its
            largest; on CPU (2 threads) these budgets were the fastest for clouds of 9 and of 48
            points, 1.3× (9 points) and 1.2× (48 points) the clouds/s of a fixed 128.
        progress
            Show a progress bar.
        out
            Array ``(n_clouds, n_components)`` to write the embedding into (e.g. a ``np.memmap``
            opened with ``mode='w+'``); a new float32 array when ``None``.

        Returns
        -------
        Array of shape ``(n_clouds, n_components)``: ``out`` when given.

        Examples
        --------
        >>> import numpy as np
        >>> from spatialot.ot import PointClouds
        >>> rng = np.random.default_rng(0)
        >>> clouds = PointClouds.from_list([rng.normal(size=(6, 2)) for _ in range(10)])
        >>> model = Wormhole(2, n_components=4).fit(clouds, n_steps=5, batch_size=4, progress=False)
        >>> model.encode(clouds).shape
        (10, 4)
        """
        self._check_family(family)
        self.eval()
        if batch_size is None:
            points = ENCODE_POINTS.get(self.device.type, ENCODE_POINTS["cuda"])
            batch_size = max(1, int(points // max(mean_size(family), 1.0)))
        return map_batches(
            lambda batch: self._encode_scaled(batch) * self._output_to_data_units(),
            family,
            batch_size=batch_size,
            device=self.device,
            progress=progress,
            description="encoding",
            out=out,
            trim=True,
        )

    def decode(self, embedding: np.ndarray | torch.Tensor) -> np.ndarray:
        """Reconstruct clouds from embeddings of :meth:`encode`.

        Parameters
        ----------
        embedding
            Array of shape ``(n, n_components)``.

        Returns
        -------
        Array of shape ``(n, decoder_size, dim)``: uniform-weight point clouds in data units.
        """
        embedding = as_tensor(np.asarray(embedding), dtype=torch.float32, device=self.device)
        if embedding.ndim != 2 or embedding.shape[1] != self.config["n_components"]:
            raise ValueError(
                f"`embedding` must have shape (n, {self.config['n_components']}), got {tuple(embedding.shape)}."
            )
        self.eval()
        with torch.no_grad():
            return (self._decode_scaled(embedding / self._output_to_data_units()) * self.scale).cpu().numpy()

    def barycenter(self, family: CloudFamily, weights: np.ndarray | None = None) -> np.ndarray:
        """Wasserstein barycentre of clouds, approximated by decoding the mean of their embeddings.

        Parameters
        ----------
        family
            The clouds to average.
        weights
            Non-negative weight per cloud; uniform when ``None``.

        Returns
        -------
        Array of shape ``(decoder_size, dim)``.
        """
        embedding = self.encode(family)
        weights = np.full(len(embedding), 1 / len(embedding)) if weights is None else np.asarray(weights, float)
        if weights.shape != (len(embedding),) or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(f"`weights` must be {len(embedding)} non-negative numbers with a positive sum.")
        return self.decode(((weights / weights.sum()) @ embedding)[None])[0]

    def interpolate(self, source: CloudFamily, target: CloudFamily, n_points: int = 5) -> np.ndarray:
        """Clouds along the straight line between two embedded clouds, decoded.

        Parameters
        ----------
        source, target
            One cloud each (a batch of length 1).
        n_points
            Number of clouds on the path, ends included.

        Returns
        -------
        Array of shape ``(n_points, decoder_size, dim)``.
        """
        if len(source) != 1 or len(target) != 1:
            raise ValueError("`source` and `target` must each hold exactly one cloud.")
        ends = self.encode(source)[0], self.encode(target)[0]
        times = np.linspace(0, 1, n_points)[:, None]
        return self.decode((1 - times) * ends[0] + times * ends[1])
