"""Benchmark of HOTET (``sot.models.HOTET`` / ``sot.tl.hotet``): map quality, map representation, speed.

1. **Gaussian benchmark** (true maps in closed form). In each dimension d of ``--dims``: a fixed
   reference N(m, Σ) and 500 training sources N(mᵢ, Σᵢ), means U[0, 3]^d and covariances
   W Wᵀ / (2d) with W a d × 2d standard normal matrix (eigenvalues about 0.09–2.9); each source
   is a fixed sample of ``--n-points`` points. The model is given the reference as its Gaussian
   (mean, covariance). Evaluation on 50 *unseen* sources: the map is predicted from a fresh
   sample of ``--n-points`` points and evaluated on 1,000 further points X. Metrics (Korotin et
   al. 2021): L2-UVP = 100 · E‖T̂(X) − T*(X)‖² / tr Σ (Var of the target), and the cosine
   similarity ⟨T̂ − id, T* − id⟩ / (‖T̂ − id‖ ‖T* − id‖) in L²(source), T* the Bures–Wasserstein
   map (``sot.ot.gaussian_map``). Anchors: the identity map, and the plug-in closed-form map of
   the sample's mean and (shrunk) covariance. Target (issue 6): L2-UVP below the paper's
   ~5–37 % at every dimension. Both ``base='identity'`` (the paper's ICNN, starting at the
   identity) and ``base='gaussian'`` (ICNN starting at the plug-in Gaussian map) are run.
2. **BDTNP niches**: ``sot.datasets.bdtnp()``, the 84 genes reduced to their first 8 principal
   components (``sc.pp.pca``, n_comps=8), niches of k=8 cells (``sot.pp.niches(k=8,
   use_rep='X_pca')``); 80 % of the cells train, the remaining 20 % are unseen niches. Reference:
   the Gaussian fitted to all training niche points. Metric: exact W2² (POT) between each unseen
   niche, transported, and a 512-point sample of the reference, against the niche's own W2²; for
   scale, W2² between 8 random points of the reference and that sample (an 8-point cloud cannot
   reach 0). Then the
   Pearson / Spearman correlation of squared map-representation distances with exact W2²
   between unseen niches (2,000 random pairs).
3. **Wasserstein-2 benchmark** (Korotin et al. 2021 construction, ``sot.datasets.w2_benchmark``):
   reference ν = N(0, I_d), each measure μ_b = (∇φ_b)#ν with φ_b = ½‖z‖² + ⟨m_b, z⟩ + six
   softplus ridges (non-negative weights), so ∇φ_b is the exact OT map ν → μ_b and its inverse
   the exact map μ_b → ν; the maps are not affine. ``--w2-train`` training measures, each given
   as ``--w2-samples`` (default 16) independent samples of ``--w2-points`` points, every sample a
   cloud of its own (the construction samples μ_b without limit, as Korotin et al.'s benchmark
   is used; one ICNN fitted to one fixed 128-point sample stays above 5 %, see part 5, although
   the family's own model fitted to such a sample gets below it, see ``w2_bound.py``); 50 unseen measures,
   each map predicted from a fresh sample of ``--w2-points`` points and scored on 1,000 further
   points: L2-UVP = 100 · E‖T̂ − T*‖² /
   Var(target) and the cosine of the displacements, for the forward map (μ_b → ν, target
   variance d) and the inverse map (ν → μ_b, target variance tr Cov μ_b). Baseline: the
   closed-form Gaussian map between each measure's own sample moments (the covariance shrunk
   as the model's Gaussian base, where it starts; also reported shrunk by OAS, by a fixed 0.1
   and not at all) and N(0, I). ``--w2-shrinkage oas`` trains HOTET with the OAS base. Targets
   (issue 13): below the baseline at every d, below 5 % at d ≤ 8 and 15 % at d = 64.
4. **Speed**: seconds per map for unseen niches (one forward pass of the trained model, batched)
   against fitting one ICNN per niche (free parameters, the same forward loss, ``--per-niche-steps``
   Adam steps), with the W2² reached by each.

5. **Ceiling** (``--only-ceiling``): one ICNN per measure (free parameters in place of the
   hypernetworks; HOTET's ICNN, Gaussian base, loss and training loop) on 4 unseen measures of
   part 3 at d = 8, fitted on one fixed sample of 128 or 1,024 points, or on a fresh 128-point
   sample every step; and the squared non-negative weights against the softplus of before.
   Same metrics as part 3.

Run ``python benchmarks/hotet.py [--quick] [--dims 2 4 8 16 32 64] [--threads 1] [--out PATH]``;
``--only-w2`` runs part 3 alone (``--w2-dims``, ``--w2-steps``).
"""

from __future__ import annotations

import argparse
import itertools
import os
import time
import warnings
from typing import Any, NamedTuple

# _common, imported first, moves benchmarks/ to the end of sys.path (see ot.py)
from _common import default_out, machine_info, print_table, resolve_device, write_json

warnings.filterwarnings("ignore", category=FutureWarning)

import numpy as np  # noqa: E402
import scipy.stats  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import spatialot as sot  # noqa: E402
from spatialot.models import HOTET, Model  # noqa: E402
from spatialot.models._hotet import batch_dual_loss  # noqa: E402
from spatialot.models._icnn import BatchedICNN  # noqa: E402
from spatialot.models._training import train  # noqa: E402

CONJUGATE_STEPS = 3  # HOTET's default; --conjugate-steps 0 is the paper's batch maximum (MM-B)

# ---------------------------------------------------------------------------- Gaussian benchmark


def random_gaussians(rng: np.random.Generator, n: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    means = rng.uniform(0, 3, size=(n, dim))
    factors = rng.normal(size=(n, dim, 2 * dim))
    return means, factors @ factors.transpose(0, 2, 1) / (2 * dim)


def sample(rng: np.random.Generator, means: np.ndarray, covs: np.ndarray, size: int) -> np.ndarray:
    noise = rng.normal(size=(len(means), size, means.shape[1]))
    return (means[:, None, :] + noise @ np.linalg.cholesky(covs).transpose(0, 2, 1)).astype(np.float32)


def l2_uvp(predicted: np.ndarray, truth: np.ndarray, variance: float) -> np.ndarray:
    return 100 * ((predicted - truth) ** 2).sum(-1).mean(1) / variance


def map_scores(predicted: np.ndarray, truth: np.ndarray, points: np.ndarray, variance: float) -> dict[str, float]:
    uvp = l2_uvp(predicted, truth, variance)
    moved, true_moved = predicted - points, truth - points
    cosine = (moved * true_moved).sum((1, 2)) / np.sqrt((moved**2).sum((1, 2)) * (true_moved**2).sum((1, 2)))
    return {"l2_uvp": float(uvp.mean()), "l2_uvp_median": float(np.median(uvp)), "cosine": float(cosine.mean())}


def gaussian_benchmark(
    dim: int, base: str, steps: int, n_points: int, device: str, learning_rate: float = 1e-3, seed: int = 0
) -> dict[str, Any]:
    rng = np.random.default_rng(seed + dim)
    ref_mean, ref_cov = (a[0] for a in random_gaussians(rng, 1, dim))
    means, covs = random_gaussians(rng, 500, dim)
    clouds = sot.ot.PointClouds.from_padded(sample(rng, means, covs, n_points))
    model = HOTET(dim, base=base, conjugate_steps=CONJUGATE_STEPS, random_state=seed)
    start = time.perf_counter()
    model.fit(
        clouds,
        reference=(ref_mean, ref_cov),
        n_steps=steps,
        n_reference_samples=n_points,
        learning_rate=learning_rate,
        random_state=seed,
        progress=False,
        device=device,
    )
    fit_s = time.perf_counter() - start

    test_means, test_covs = random_gaussians(rng, 50, dim)
    test = sot.ot.PointClouds.from_padded(sample(rng, test_means, test_covs, n_points))
    points = sample(rng, test_means, test_covs, 1000)
    predicted = model.transport(test, points)

    def closed_form(m, c):
        matrix, shift = sot.ot.gaussian_map(
            torch.as_tensor(m), torch.as_tensor(c), torch.as_tensor(ref_mean), torch.as_tensor(ref_cov)
        )
        return points @ matrix.numpy().transpose(0, 2, 1) + shift.numpy()[:, None, :]

    truth = closed_form(test_means, test_covs)

    def plug_in(shrinkage):
        """The closed form between the sample moments (covariance shrunk by ``shrinkage``) and the reference."""
        moments = sot.ot.gaussian_moments(test.to(dtype=torch.float64), shrinkage=shrinkage)
        means, covs = (t.numpy() for t in moments)
        return closed_form(means, covs + 1e-4 * np.eye(dim))

    variance = float(np.trace(ref_cov))
    row = {
        "dim": dim,
        "base": base,
        "steps": steps,
        "learning_rate": learning_rate,
        "n_points": n_points,
        "fit_s": fit_s,
        "n_parameters": sum(p.numel() for p in model.parameters()),
        **map_scores(predicted, truth, points, variance),
        "identity_l2_uvp": float(l2_uvp(points, truth, variance).mean()),
        # where the model's Gaussian base starts, and the same with OAS
        "plugin_l2_uvp": float(l2_uvp(plug_in(model.config["shrinkage"]), truth, variance).mean()),
        "plugin_oas_l2_uvp": float(l2_uvp(plug_in("oas"), truth, variance).mean()),
        "final_loss": float(np.mean(model.history[-50:])),
    }
    return row


# ---------------------------------------------------------------------------- Wasserstein-2 benchmark


def cosine(predicted: np.ndarray, truth: np.ndarray, points: np.ndarray) -> np.ndarray:
    moved, true_moved = predicted - points, truth - points
    return (moved * true_moved).sum((1, 2)) / np.sqrt((moved**2).sum((1, 2)) * (true_moved**2).sum((1, 2)))


class W2Data(NamedTuple):
    """One draw of the Wasserstein-2 benchmark: training samples, unseen measures and their true maps."""

    train_family: Any  # ConvexMapFamily of the training measures
    train_points: np.ndarray  # (n_train, samples_per_measure, n_points, dim) float32 samples of each mu_b
    train_reference: np.ndarray  # the same shape: the points z ~ nu with x = grad(phi_b)(z), row by row
    clouds: Any  # PointClouds: every training sample a cloud of its own
    test_family: Any  # ConvexMapFamily of the 50 unseen measures
    test: Any  # PointClouds: one fresh n_points sample of each unseen measure (what a map is predicted from)
    x: np.ndarray  # (50, 1000, dim) further points of each unseen measure
    z: np.ndarray  # (50, 1000, dim) their exact images in nu: x = grad(phi_b)(z)


def w2_data(dim: int, n_train: int, n_points: int, samples_per_measure: int = 1, seed: int = 0) -> W2Data:
    """The data of part 3 (also used by ``peers/hotet.py``, so that both implementations see the same samples)."""
    family = sot.datasets.w2_benchmark(n_train + 50, dim, random_state=seed + dim)
    train_family, test_family = family.subset(slice(0, n_train)), family.subset(slice(n_train, None))
    # each training measure as `samples_per_measure` independent samples of `n_points` points (clouds of its own);
    # the draws of train_family.sample(n_points * samples_per_measure, seed + 1), with the reference points kept
    shape = (n_train, samples_per_measure, n_points, dim)
    z_train = np.random.default_rng(seed + 1).standard_normal((n_train, n_points * samples_per_measure, dim))
    train_points = train_family.forward(z_train).astype(np.float32).reshape(shape)
    train_reference = z_train.astype(np.float32).reshape(shape)
    del z_train
    clouds = sot.ot.PointClouds.from_padded(train_points.reshape(n_train * samples_per_measure, n_points, dim))
    test = sot.ot.PointClouds.from_padded(test_family.sample(n_points, seed + 2).astype(np.float32))
    z = np.random.default_rng(seed + 3).standard_normal((len(test_family), 1000, dim))
    x = test_family.forward(z)  # x ~ μ_b, z = (∇φ_b)⁻¹(x) ~ ν: both true maps on one sample
    return W2Data(train_family, train_points, train_reference, clouds, test_family, test, x, z)


def fit_w2(
    data: W2Data,
    base: str,
    steps: int,
    device: str,
    *,
    learning_rate: float = 1e-3,
    batch_size: int = 8,
    shrinkage: float | str | None = None,
    seed: int = 0,
    checkpoint: str | None = None,
) -> tuple[HOTET, float]:
    """Part 3's HOTET (``conjugate_steps`` of the run) trained on ``data``; returns it and the seconds it took.

    ``shrinkage=None`` keeps HOTET's default; ``batch_size`` is the clouds per step (HOTET's default 8);
    ``checkpoint`` is HOTET's training checkpoint, resumed when it exists (the seconds are then those
    of this call only).
    """
    dim = data.x.shape[-1]
    options = {} if shrinkage is None else {"shrinkage": shrinkage}
    model = HOTET(dim, base=base, conjugate_steps=CONJUGATE_STEPS, random_state=seed, **options)
    start = time.perf_counter()
    model.fit(
        data.clouds,
        reference=(np.zeros(dim), np.eye(dim)),
        n_steps=steps,
        batch_size=batch_size,
        learning_rate=learning_rate,
        random_state=seed,
        progress=False,
        checkpoint=checkpoint,
        device=device,
    )
    return model, time.perf_counter() - start


def checkpoint_path(prefix: str | None, dim: int, base: str) -> str | None:
    """The file of part 3's training checkpoint at ``dim`` and ``base`` under ``--w2-checkpoint`` ``prefix``."""
    return None if prefix is None else f"{prefix}-d{dim}-{base}.pt"


def checkpoint_step(path: str | None) -> int:
    """Steps taken by the training checkpoint at ``path`` (0 without one): where a resumed fit starts."""
    if path is None or not os.path.exists(path):
        return 0
    return int(torch.load(path, map_location="cpu", weights_only=False)["step"])


def w2_checkpoint_scores(data: W2Data, path: str, n_seen: int = 50, seed: int = 0) -> dict[str, Any]:
    """Part 3's scores of the model in the training checkpoint at ``path``: a run's learning curve.

    On the unseen measures as ``w2_benchmark`` scores them, and on the first ``n_seen`` training
    measures (``training_*``), each predicted from its first training sample and scored on 1,000
    fresh points: the gap between the two is what the model learnt of its training measures alone.
    """
    contents = torch.load(path, map_location="cpu", weights_only=False)
    model = HOTET(**contents["config"])
    model.load_state_dict(contents["model"])
    model.fitted.fill_(True)
    model.eval()
    row = {"checkpoint": path, "step": int(contents["step"]), "base": model.config["base"], "dim": data.x.shape[-1]}
    row |= w2_scores(data, model.transport(data.test, data.x), model.inverse_transport(data.test, data.z))
    z = np.random.default_rng(seed + 4).standard_normal((n_seen, 1000, row["dim"])).astype(np.float32)
    seen = data._replace(x=data.train_family.subset(slice(0, n_seen)).forward(z).astype(np.float32), z=z)
    clouds = sot.ot.PointClouds.from_padded(data.train_points[:n_seen, 0])
    training = w2_scores(seen, model.transport(clouds, seen.x), model.inverse_transport(clouds, seen.z))
    return row | {f"training_{key}": value for key, value in training.items()}


def w2_gaussian_baseline(data: W2Data, shrinkage: float | str = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """The closed-form Gaussian maps between each test sample's moments and N(0, I).

    The covariance is shrunk by ``shrinkage`` (:func:`sot.ot.gaussian_moments`); the default is
    that of HOTET's Gaussian base. Returns the forward map at ``data.x`` and the inverse map at
    ``data.z``.
    """
    dim = data.x.shape[-1]
    means, covs = sot.ot.gaussian_moments(data.test.to(dtype=torch.float64), shrinkage=shrinkage)
    eye = torch.eye(dim, dtype=torch.float64)
    covs = covs + 1e-6 * eye
    zero, identity = torch.zeros_like(means), eye.expand_as(covs)
    to_ref = sot.ot.gaussian_map(means, covs, zero, identity)
    to_measure = sot.ot.gaussian_map(zero, identity, means, covs)

    def apply(affine, points):
        return points @ affine[0].numpy().transpose(0, 2, 1) + affine[1].numpy()[:, None, :]

    return apply(to_ref, data.x), apply(to_measure, data.z)


def w2_scores(data: W2Data, forward: np.ndarray, inverse: np.ndarray) -> dict[str, float]:
    """L2-UVP % and cosine of predicted maps against the exact ones, mean over the unseen measures.

    ``forward`` is the predicted map μ_b → ν at ``data.x`` (truth ``data.z``, target variance d),
    ``inverse`` the map ν → μ_b at ``data.z`` (truth ``data.x``, target variance tr Cov μ_b).
    Keys ``forward_l2_uvp``, ``forward_cosine``, ``inverse_l2_uvp``, ``inverse_cosine``.
    """
    x, z = data.x, data.z
    target_var = ((x - x.mean(1, keepdims=True)) ** 2).sum(-1).mean(1)
    scores = {}
    for name, predicted, points, truth, variance in (
        ("forward", forward, x, z, np.full(len(x), float(x.shape[-1]))),
        ("inverse", inverse, z, x, target_var),
    ):
        uvp = 100 * ((np.asarray(predicted, dtype=np.float64) - truth) ** 2).sum(-1).mean(1) / variance
        scores[f"{name}_l2_uvp"] = float(uvp.mean())
        scores[f"{name}_cosine"] = float(cosine(np.asarray(predicted, dtype=np.float64), truth, points).mean())
    return scores


def w2_benchmark(
    dim: int,
    base: str,
    steps: int,
    n_train: int,
    n_points: int,
    device: str,
    *,
    samples_per_measure: int = 1,
    learning_rate: float = 1e-3,
    batch_size: int = 8,
    shrinkage: float | str | None = None,
    seed: int = 0,
    data: W2Data | None = None,
    checkpoint: str | None = None,
) -> dict[str, Any]:
    """Part 3 at one dimension: HOTET trained on the draw of ``w2_data`` (or on ``data``, when the
    caller has drawn it already with these arguments), scored beside the closed-form maps."""
    if data is None:
        data = w2_data(dim, n_train, n_points, samples_per_measure, seed)
    elif data.train_points.shape != (n_train, samples_per_measure, n_points, dim):
        raise ValueError(
            f"`data` holds training samples of shape {data.train_points.shape}, not "
            f"{(n_train, samples_per_measure, n_points, dim)} as the other arguments say."
        )
    resumed_from_step = checkpoint_step(checkpoint)  # before the fit overwrites it
    model, fit_s = fit_w2(
        data,
        base,
        steps,
        device,
        learning_rate=learning_rate,
        batch_size=batch_size,
        shrinkage=shrinkage,
        seed=seed,
        checkpoint=checkpoint,
    )
    forward = model.transport(data.test, data.x.astype(np.float32))
    inverse = model.inverse_transport(data.test, data.z.astype(np.float32))
    ours = w2_scores(data, forward, inverse)
    start = time.perf_counter()
    inverted = model.transport(data.test, data.x.astype(np.float32), via="inverse")
    inverted_s = time.perf_counter() - start
    by_inversion = w2_scores(data, inverted, inverse)
    # the closed form where the model starts (its own shrinkage), and at OAS, a fixed 0.1 and 0 (the raw moments)
    gaussian = w2_scores(data, *w2_gaussian_baseline(data, model.config["shrinkage"]))
    gaussian_oas = w2_scores(data, *w2_gaussian_baseline(data, "oas"))
    gaussian_fixed = w2_scores(data, *w2_gaussian_baseline(data, 0.1))
    gaussian_raw = w2_scores(data, *w2_gaussian_baseline(data, 0.0))
    with np.errstate(invalid="ignore"):  # the identity's displacement is zero: its cosine is undefined
        identity = w2_scores(data, data.x, data.z)
    return {
        "dim": dim,
        "base": base,
        "steps": steps,
        "n_train": n_train,
        "n_points": n_points,
        "samples_per_measure": samples_per_measure,
        "learning_rate": learning_rate,
        "batch_size": batch_size,
        "shrinkage": model.config["shrinkage"],
        "seed": seed,
        "conjugate_steps": CONJUGATE_STEPS,
        "fit_s": fit_s,  # of this call: the steps from resumed_from_step on
        "resumed_from_step": resumed_from_step,
        "final_loss": float(np.mean(model.history[-50:])),
        # the forward map as the inverse of the inverse map: transport(via='inverse')
        "forward_via_inverse_l2_uvp": by_inversion["forward_l2_uvp"],
        "forward_via_inverse_cosine": by_inversion["forward_cosine"],
        "forward_via_inverse_s": inverted_s,
        "load_after": list(os.getloadavg()),
        **{
            f"{direction}_{key}": value
            for direction in ("forward", "inverse")
            for key, value in (
                ("l2_uvp", ours[f"{direction}_l2_uvp"]),
                ("cosine", ours[f"{direction}_cosine"]),
                ("gaussian_l2_uvp", gaussian[f"{direction}_l2_uvp"]),
                ("gaussian_cosine", gaussian[f"{direction}_cosine"]),
                ("gaussian_oas_l2_uvp", gaussian_oas[f"{direction}_l2_uvp"]),
                ("gaussian_fixed_l2_uvp", gaussian_fixed[f"{direction}_l2_uvp"]),
                ("gaussian_raw_l2_uvp", gaussian_raw[f"{direction}_l2_uvp"]),
                ("identity_l2_uvp", identity[f"{direction}_l2_uvp"]),
            )
        },
    }


class _FreeParameters(nn.Module):
    """Stands in for a hypernetwork: one free ICNN parameter vector per measure (a fixed batch of measures)."""

    def __init__(self, initial: torch.Tensor, n_measures: int):
        super().__init__()
        self.params = nn.Parameter(initial.detach().clone().repeat(n_measures, 1))

    def forward(self, points: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return self.params


def w2_ceiling(
    dim: int,
    n_points: int,
    fresh: bool,
    steps: int,
    device: str,
    *,
    n_measures: int = 4,
    learning_rate: float = 1e-2,
    positive: str = "square",
    seed: int = 0,
) -> dict[str, Any]:
    """One ICNN per measure (free parameters, no hypernetwork), HOTET's loss and training loop.

    The first ``n_measures`` unseen measures of :func:`w2_benchmark`, trained together (each its
    own parameters): on one fixed sample of ``n_points`` points per measure, or on a fresh sample
    each step. Scored as :func:`w2_benchmark` does, the map given the fixed sample, or (fresh) a
    4,096-point sample.
    """
    import spatialot.models._icnn as icnn_module

    family = sot.datasets.w2_benchmark(400 + n_measures, dim, random_state=seed + dim).subset(slice(400, None))
    kept = icnn_module.positive, icnn_module.inverse_positive
    if positive == "softplus":  # the parametrisation of before, for comparison
        icnn_module.positive = torch.nn.functional.softplus
        icnn_module.inverse_positive = lambda value: value + torch.log(-torch.expm1(-value))
    try:
        model = HOTET(dim, conjugate_steps=CONJUGATE_STEPS, random_state=seed).to(device)
        model.forward_net = _FreeParameters(model.forward_net.head.bias, n_measures).to(device)
        model.inverse_net = _FreeParameters(model.inverse_net.head.bias, n_measures).to(device)
        rng = np.random.default_rng(seed)
        fixed = sot.ot.PointClouds.from_padded(family.sample(n_points, seed + 1).astype(np.float32))
        model._set_reference(fixed, (np.zeros(dim), np.eye(dim)), rng)
        root = torch.eye(dim, device=device)

        def step_loss(step: int) -> torch.Tensor:
            batch = fixed
            if fresh:
                batch = sot.ot.PointClouds.from_padded(family.sample(n_points, rng).astype(np.float32))
            return model._step_loss(batch.to(device), model._draw_reference(n_measures, 256, rng, root))

        start = time.perf_counter()
        train(
            model,
            step_loss,
            n_steps=steps,
            learning_rate=learning_rate,
            decay_rate=0.5,
            decay_every=max(steps // 3, 1),
            max_grad_norm=10.0,
            progress=False,
            rng=rng,
        )
        fit_s = time.perf_counter() - start
        model.fitted.fill_(True)
        given = sot.ot.PointClouds.from_padded(family.sample(4096, seed + 2).astype(np.float32)) if fresh else fixed
        z = np.random.default_rng(seed + 3).standard_normal((n_measures, 1000, dim))
        x = family.forward(z)
        forward = model.transport(given, x.astype(np.float32))
        inverse = model.inverse_transport(given, z.astype(np.float32))
    finally:
        icnn_module.positive, icnn_module.inverse_positive = kept
    target_var = ((x - x.mean(1, keepdims=True)) ** 2).sum(-1).mean(1)
    return {
        "dim": dim,
        "positive": positive,
        "sample": "fresh each step" if fresh else "fixed",
        "n_points": n_points,
        "steps": steps,
        "learning_rate": learning_rate,
        "n_measures": n_measures,
        "fit_s": fit_s,
        "forward_l2_uvp": float(l2_uvp(forward, z, float(dim)).mean()),
        "inverse_l2_uvp": float((100 * ((inverse - x) ** 2).sum(-1).mean(1) / target_var).mean()),
        "load_after": list(os.getloadavg()),
    }


def run_ceiling(args: argparse.Namespace, device: str) -> None:
    """One ICNN per measure on a fixed sample against fresh samples: ``hotet-w2ceiling-<device>.json``."""
    out = args.out or default_out("hotet-w2ceiling", device, args.quick)
    steps = 50 if args.quick else args.ceiling_steps
    payload: dict[str, Any] = {
        "benchmark": "hotet-w2ceiling",
        "machine": machine_info(device),
        "load_before": list(os.getloadavg()),
        "data": "the first 4 unseen measures of the Wasserstein-2 benchmark (see hotet-w2bench), d = "
        + ", ".join(map(str, args.ceiling_dims)),
        "model": "HOTET's ICNN, Gaussian base, loss and training loop, with one free parameter vector per measure "
        "in place of the hypernetworks; Adam halved every steps/3, batch = the 4 measures, 256 reference points",
        "metric": "L2-UVP % of the forward (mu -> nu) and inverse (nu -> mu) maps on 1,000 further points; the map "
        "given the fixed sample (fixed) or a 4,096-point sample (fresh)",
        "rows": [],
    }
    for dim, (positive, n_points, fresh) in itertools.product(
        args.ceiling_dims,
        (("square", 128, False), ("square", 128, True), ("square", 1024, False), ("softplus", 128, True)),
    ):
        row = w2_ceiling(
            dim, n_points, fresh, steps, device, learning_rate=args.ceiling_learning_rate, positive=positive
        )
        payload["rows"].append(row)
        print(
            f"d={dim} {positive} {row['sample']} {n_points}: forward {row['forward_l2_uvp']:.2f}%  "
            f"inverse {row['inverse_l2_uvp']:.2f}%  ({row['fit_s']:.0f} s)",
            flush=True,
        )
        write_json(out, payload)
    print(f"wrote {write_json(out, payload)}")


# ---------------------------------------------------------------------------- BDTNP niches


class PerNicheICNN(Model):
    """Baseline: free ICNN parameters for each niche, fitted by the forward dual loss alone."""

    def __init__(self, dim: int, n_niches: int):
        super().__init__(dim=dim, n_niches=n_niches)
        self.icnn = BatchedICNN(dim)
        self.params = nn.Parameter(self.icnn.initial_params(torch.Generator().manual_seed(0)).repeat(n_niches, 1))


def bdtnp_benchmark(
    steps: int, per_niche_steps: int, device: str, quick: bool, shrinkages: tuple[float | str, ...] = ()
) -> dict[str, Any]:
    """Part 2; each of ``shrinkages`` also trains a Gaussian-base model at that shrinkage (key ``gaussian_<value>``)."""
    import scanpy as sc

    adata = sot.datasets.bdtnp()
    sc.pp.pca(adata, n_comps=8, random_state=0)
    sot.pp.niches(adata, k=8, use_rep="X_pca")
    family = sot.get.niche_clouds(adata)
    rng = np.random.default_rng(0)
    order = rng.permutation(adata.n_obs)
    n_train = int(0.8 * adata.n_obs)
    train_cells, test_cells = np.sort(order[:n_train]), np.sort(order[n_train:])
    train_family = sot.ot.IndexedClouds(family.features, family.indices[train_cells], family.mask[train_cells])
    test_family = sot.ot.IndexedClouds(family.features, family.indices[test_cells], family.mask[test_cells])
    if quick:
        test_family = sot.ot.IndexedClouds(family.features, test_family.indices[:100], test_family.mask[:100])

    results: dict[str, Any] = {"n_train_niches": len(train_family), "n_test_niches": len(test_family)}
    models = {}
    variants = {"identity": {"base": "identity"}, "gaussian": {"base": "gaussian"}}
    variants.update({f"gaussian_{value}": {"base": "gaussian", "shrinkage": value} for value in shrinkages})
    for name, options in variants.items():
        model = HOTET(8, conjugate_steps=CONJUGATE_STEPS, **options)
        models[name] = model
        start = time.perf_counter()
        model.fit(train_family, n_steps=steps, n_reference_samples=256, progress=False, device=device)
        fit_s = time.perf_counter() - start

        niches = test_family.gather()
        start = time.perf_counter()
        transported = model.transport(test_family)
        map_s = (time.perf_counter() - start) / len(test_family)
        reference = model.sample_reference(len(test_family), 512, np.random.default_rng(1)).cpu()
        reference = sot.ot.PointClouds.from_padded(reference)
        own = sot.ot.exact_w2_squared(niches, reference)
        moved = sot.ot.exact_w2_squared(sot.ot.PointClouds.from_padded(transported, niches.mask), reference)
        # what 8 random points of the reference itself reach: the discreteness of an 8-point cloud
        few = model.sample_reference(len(test_family), 8, np.random.default_rng(2)).cpu()
        few = sot.ot.exact_w2_squared(sot.ot.PointClouds.from_padded(few), reference)

        embedding = model.embed(test_family)
        pair_rng = np.random.default_rng(3)
        n_pairs = 500 if quick else 2000
        left = pair_rng.integers(0, len(test_family), n_pairs)
        right = (left + pair_rng.integers(1, len(test_family), n_pairs)) % len(test_family)
        learned = ((embedding[left] - embedding[right]) ** 2).sum(-1)
        exact = sot.ot.exact_w2_squared(niches[left], niches[right])
        results[name] = {
            "shrinkage": model.config["shrinkage"],
            "fit_s": fit_s,
            "steps": steps,
            "w2sq_niche_to_reference_mean": float(own.mean()),
            "w2sq_transported_to_reference_mean": float(moved.mean()),
            "w2sq_random_8_point_reference_sample_mean": float(few.mean()),
            "fraction_closer_after_transport": float((moved < own).mean()),
            "pearson_embedding_vs_exact": float(scipy.stats.pearsonr(learned, exact)[0]),
            "spearman_embedding_vs_exact": float(scipy.stats.spearmanr(learned, exact)[0]),
            "embedding_over_exact_median": float(np.median(learned / exact)),
            "seconds_per_map_unseen": map_s,
        }

    # one ICNN per niche: the same forward loss, free parameters, the same ICNN size
    model = models["gaussian"]
    n_single = 4 if quick else 8
    niches = test_family.gather(np.arange(n_single))
    baseline = PerNicheICNN(8, n_single).to(device)
    x = model._normalise(niches.points.to(device))
    sampler = np.random.default_rng(4)

    def step_loss(step: int) -> torch.Tensor:
        y = model._normalise(model.sample_reference(n_single, 256, sampler))
        uniform = torch.full(y.shape[:2], 1.0 / y.shape[1], device=y.device)
        phi = baseline.icnn.potential(x, baseline.params)
        return batch_dual_loss(phi, x, niches.weights.to(device), y, uniform).mean()

    start = time.perf_counter()
    train(baseline, step_loss, n_steps=per_niche_steps, learning_rate=1e-2, progress=False)
    per_niche_s = (time.perf_counter() - start) / n_single
    with torch.no_grad():
        mapped = model._denormalise(baseline.icnn.gradient(x, baseline.params)).cpu()
    reference = sot.ot.PointClouds.from_padded(model.sample_reference(n_single, 512, np.random.default_rng(1)).cpu())
    single = sot.ot.exact_w2_squared(sot.ot.PointClouds.from_padded(mapped, niches.mask), reference)
    amortised = {
        base: sot.ot.exact_w2_squared(sot.ot.PointClouds.from_padded(m.transport(niches), niches.mask), reference)
        for base, m in models.items()
    }
    results["per_niche_icnn"] = {
        "n_niches": n_single,
        "steps": per_niche_steps,
        "seconds_per_map": per_niche_s,
        "w2sq_transported_to_reference_mean": float(single.mean()),
        "w2sq_niche_to_reference_mean": float(sot.ot.exact_w2_squared(niches, reference).mean()),
        "hotet_identity_same_niches_w2sq": float(amortised["identity"].mean()),
        "hotet_gaussian_same_niches_w2sq": float(amortised["gaussian"].mean()),
    }
    return results


def run_w2(args: argparse.Namespace, device: str) -> None:
    """Part 3 alone, written to ``hotet-w2bench-<device>.json`` unless ``--out`` is given."""
    out = args.out or default_out("hotet-w2bench", device, args.quick)
    dims = [2, 8] if args.quick else args.w2_dims
    steps = 50 if args.quick else args.w2_steps
    payload: dict[str, Any] = {
        "benchmark": "hotet-w2bench",
        "machine": machine_info(device),
        "load_before": list(os.getloadavg()),
        "data": "sot.datasets.w2_benchmark defaults: reference N(0, I_d); mu_b = grad(phi_b)#N(0, I), phi_b = "
        "|z|^2/2 + <m_b, z> + sum of 6 softplus ridges (directions of norm 4, weights U[0.5, 1.5], offsets N(0, 1), "
        f"m_b ~ N(0, 0.25 I)); {args.w2_train} training measures, each as {args.w2_samples} independent samples of "
        f"{args.w2_points} points; 50 unseen measures, "
        f"maps predicted from a fresh {args.w2_points}-point sample, scored on 1,000 further points",
        "metric": "L2-UVP = 100 E||T_hat - T*||^2 / Var(target) (forward: mu_b -> nu, Var = d; inverse: nu -> mu_b, "
        "Var = tr Cov mu_b), mean over unseen measures; cosine of the displacements T_hat - id and T* - id",
        "anchor": "closed-form Gaussian map between each measure's sample moments and N(0, I), the covariance shrunk "
        "as the model's Gaussian base (gaussian_*, its start: row's shrinkage), by OAS (gaussian_oas_*), by a fixed "
        "0.1 (gaussian_fixed_*) and not at all (gaussian_raw_*); identity map",
        "target": "L2-UVP below the Gaussian baseline at every d; below 5 % at d <= 8 and 15 % at d = 64",
        "conjugate_steps": args.conjugate_steps,
        "budget": f"{steps} steps per row, batch {args.w2_batch_size} clouds, 256 reference points per cloud and "
        f"step, Adam {args.w2_learning_rate:g} halved every steps/3, HOTET defaults otherwise, 1 torch thread",
        "rows": [],
    }
    if args.w2_score_checkpoint:
        rows = []
        for dim in dims:
            data = w2_data(dim, args.w2_train, args.w2_points, args.w2_samples, args.w2_seed)
            for base in args.bases:
                path = checkpoint_path(args.w2_checkpoint, dim, base)
                rows.append(w2_checkpoint_scores(data, path, seed=args.w2_seed))
        columns = [("dim", "d"), ("base", "base", "<"), ("step", "step")]
        columns += [
            (f"{part}{d}_l2_uvp", f"{part or 'unseen '}{d} %")
            for part in ("", "training_")
            for d in ("forward", "inverse")
        ]
        payload |= {"rows": rows, "table": print_table(rows, columns, title="checkpoints (L2-UVP)")}
        print(f"wrote {write_json(out, payload)}")
        return
    for dim in dims:
        for base in args.bases:
            row = w2_benchmark(
                dim,
                base,
                steps,
                args.w2_train,
                args.w2_points,
                device,
                samples_per_measure=args.w2_samples,
                learning_rate=args.w2_learning_rate,
                batch_size=args.w2_batch_size,
                shrinkage=args.w2_shrinkage,
                seed=args.w2_seed,
                checkpoint=checkpoint_path(args.w2_checkpoint, dim, base),
            )
            payload["rows"].append(row)
            print(
                f"d={dim} base={base}: forward {row['forward_l2_uvp']:.2f}% "
                f"(Gaussian {row['forward_gaussian_l2_uvp']:.2f}%, "
                f"via inverse {row['forward_via_inverse_l2_uvp']:.2f}%)"
                f"  inverse {row['inverse_l2_uvp']:.2f}% (Gaussian {row['inverse_gaussian_l2_uvp']:.2f}%)"
                f"  ({row['fit_s']:.0f} s)",
                flush=True,
            )
            write_json(out, payload)
    print_table(
        payload["rows"],
        [
            ("dim", "d"),
            ("base", "base", "<"),
            ("forward_l2_uvp", "fwd UVP %"),
            ("forward_cosine", "fwd cos"),
            ("forward_gaussian_l2_uvp", "fwd Gauss %"),
            ("forward_via_inverse_l2_uvp", "fwd via inv %"),
            ("inverse_l2_uvp", "inv UVP %"),
            ("inverse_cosine", "inv cos"),
            ("inverse_gaussian_l2_uvp", "inv Gauss %"),
            ("forward_gaussian_oas_l2_uvp", "fwd G-OAS %"),
            ("inverse_gaussian_oas_l2_uvp", "inv G-OAS %"),
            ("fit_s", "fit s"),
        ],
        title="Wasserstein-2 benchmark (unseen measures)",
    )
    print(f"wrote {write_json(out, payload)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few dimensions and few steps")
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 4, 8, 16, 32, 64])
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: by dimension)")
    parser.add_argument("--n-points", type=int, default=256)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--bdtnp-steps", type=int, default=1000)
    parser.add_argument(
        "--bdtnp-shrinkages",
        nargs="*",
        type=lambda value: value if value == "oas" else float(value),
        default=[],
        help="also train Gaussian-base models at these HOTET(shrinkage=...) values on BDTNP ('oas' or numbers)",
    )
    parser.add_argument("--per-niche-steps", type=int, default=500)
    parser.add_argument("--bases", nargs="+", default=["identity", "gaussian"])
    parser.add_argument("--skip-gaussian", action="store_true")
    parser.add_argument("--conjugate-steps", type=int, default=3, help="HOTET(conjugate_steps=...); 0 = MM-B")
    parser.add_argument("--only-w2", action="store_true", help="run the Wasserstein-2 benchmark alone")
    parser.add_argument("--w2-dims", type=int, nargs="+", default=[2, 4, 8, 16, 32, 64])
    parser.add_argument("--w2-steps", type=int, default=300)
    parser.add_argument("--w2-train", type=int, default=400)
    parser.add_argument("--w2-points", type=int, default=128, help="points of every sample of a measure")
    parser.add_argument("--w2-samples", type=int, default=16, help="independent samples of each training measure")
    parser.add_argument("--w2-learning-rate", type=float, default=1e-3)
    parser.add_argument("--w2-batch-size", type=int, default=8, help="clouds per step of part 3 (HOTET's default 8)")
    parser.add_argument(
        "--w2-checkpoint",
        default=None,
        help="path prefix of part 3's training checkpoints (PREFIX-d8-gaussian.pt…): a run stopped and started "
        "again with the same arguments resumes",
    )
    parser.add_argument(
        "--w2-score-checkpoint",
        action="store_true",
        help="score the models in the --w2-checkpoint files (unseen and training measures) instead of training",
    )
    parser.add_argument(
        "--w2-shrinkage",
        type=lambda value: value if value == "oas" else float(value),
        default=None,
        help="HOTET(shrinkage=...) of part 3: 'oas' or a number (default: HOTET's)",
    )
    parser.add_argument("--w2-seed", type=int, default=0, help="seed of part 3's family draw and of the model")
    parser.add_argument("--only-ceiling", action="store_true", help="one ICNN per measure: fixed vs fresh samples")
    parser.add_argument("--ceiling-steps", type=int, default=600)
    parser.add_argument("--ceiling-dims", type=int, nargs="+", default=[8])
    parser.add_argument("--ceiling-learning-rate", type=float, default=1e-2)
    parser.add_argument("--skip-bdtnp", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.w2_score_checkpoint and args.w2_checkpoint is None:
        parser.error("--w2-score-checkpoint scores the files of --w2-checkpoint: give that prefix too")
    torch.set_num_threads(args.threads)
    global CONJUGATE_STEPS
    CONJUGATE_STEPS = args.conjugate_steps
    device = resolve_device(args.device)
    dims = [2, 8] if args.quick else args.dims

    def steps_for(dim: int) -> int:
        if args.steps is not None:
            return args.steps
        if args.quick:
            return 100
        return {2: 400, 4: 400, 8: 400, 16: 300, 32: 250}.get(dim, 200)  # CPU budget: fewer steps in high dimension

    payload: dict[str, Any] = {
        "benchmark": "hotet",
        "machine": machine_info(device),
        "note": "CPU timings on a shared machine (four jobs on 2 cores), torch threads as in machine.",
        "conjugate_steps": args.conjugate_steps,
        "load_before": list(os.getloadavg()),
        "gaussian": {
            "data": "reference and 500 training sources: means U[0,3]^d, covariances W W^T/(2d), W d x 2d N(0,1); "
            "each source a fixed sample of n_points; 50 unseen test sources, maps predicted from a fresh "
            "n_points sample and evaluated on 1,000 further points",
            "metric": "L2-UVP = 100 E||T_hat(X) - T*(X)||^2 / tr(Sigma_ref) (mean over test sources); cosine "
            "similarity of the displacement; T* the Bures-Wasserstein closed form",
            "anchor": "identity map; plug-in closed form from the sample moments, covariance shrunk as the model's "
            "Gaussian base (plugin_l2_uvp) and by OAS (plugin_oas_l2_uvp)",
            "target": "L2-UVP below the paper's ~5-37 % at every dimension",
            "budget": f"batch 8 sources/step, Adam {args.learning_rate:g} halved every steps/3, steps per row "
            "(400 for d<=8, 300 for 16, 250 for 32, 200 for 64), ICNN hidden [max(2d,64), max(2d,64), max(d,32)], "
            "set transformer 3 layers width 64, hypernetwork 3x256, 1 torch thread",
            "rows": [],
        },
    }
    if args.only_w2:
        run_w2(args, device)
        return
    if args.only_ceiling:
        run_ceiling(args, device)
        return
    out = args.out or default_out("hotet", device, args.quick)
    if not args.skip_gaussian:
        for dim in dims:
            for base in args.bases:
                row = gaussian_benchmark(dim, base, steps_for(dim), args.n_points, device, args.learning_rate)
                payload["gaussian"]["rows"].append(row)
                print(
                    f"d={dim} base={base}: UVP {row['l2_uvp']:.2f}%  cos {row['cosine']:.3f}  "
                    f"plug-in {row['plugin_l2_uvp']:.2f}%  ({row['fit_s']:.0f} s)",
                    flush=True,
                )
                write_json(out, payload)
        print_table(
            payload["gaussian"]["rows"],
            [
                ("dim", "d"),
                ("base", "base", "<"),
                ("steps", "steps"),
                ("l2_uvp", "L2-UVP %"),
                ("cosine", "cos"),
                ("identity_l2_uvp", "identity %"),
                ("plugin_l2_uvp", "plug-in %"),
                ("fit_s", "fit s"),
            ],
            title="Gaussian benchmark (unseen sources)",
        )
    if not args.skip_bdtnp:
        steps = 150 if args.quick else args.bdtnp_steps
        per_niche = 100 if args.quick else args.per_niche_steps
        payload["bdtnp"] = {
            "data": "sot.datasets.bdtnp(); sc.pp.pca(n_comps=8) of the 84 genes; sot.pp.niches(k=8, use_rep='X_pca'); "
            "80/20 split of cells, metrics on the unseen 20 %",
            "metric": "exact W2^2 (POT) to a 512-point reference sample: own vs transported vs 8 random "
            "reference points; Pearson/Spearman of squared embedding distances vs exact W2^2",
            **bdtnp_benchmark(steps, per_niche, device, args.quick, tuple(args.bdtnp_shrinkages)),
        }
        write_json(out, payload)
        names = ["identity", "gaussian", *(f"gaussian_{value}" for value in args.bdtnp_shrinkages)]
        rows = [{"model": name, **payload["bdtnp"][name]} for name in names]
        print_table(
            rows,
            [
                ("model", "base", "<"),
                ("w2sq_niche_to_reference_mean", "W2² niche"),
                ("w2sq_transported_to_reference_mean", "W2² transported"),
                ("w2sq_random_8_point_reference_sample_mean", "8 ref pts"),
                ("pearson_embedding_vs_exact", "pearson"),
                ("spearman_embedding_vs_exact", "spearman"),
                ("seconds_per_map_unseen", "s/map"),
            ],
            title="BDTNP niches (unseen)",
        )
        single = payload["bdtnp"]["per_niche_icnn"]
        print(
            f"one ICNN per niche: {single['seconds_per_map']:.2f} s/map, "
            f"W2² {single['w2sq_transported_to_reference_mean']:.3g} "
            f"(own {single['w2sq_niche_to_reference_mean']:.3g}; HOTET on the same niches: identity "
            f"{single['hotet_identity_same_niches_w2sq']:.3g}, "
            f"gaussian {single['hotet_gaussian_same_niches_w2sq']:.3g})"
        )
    print(f"wrote {write_json(out, payload)}")


if __name__ == "__main__":
    main()
