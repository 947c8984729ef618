"""Benchmark of Wasserstein Flow Matching: quality of generated niches, and training time.

Data (point-cloud mode):

- ``simulated``: ``sot.datasets.simulated_tissue(n_cells, n_latent=8)``; niches =
  ``sot.pp.niches(k=K, use_rep='X_latent', include_center=False)``; condition = the centre
  cell's ``cell_type`` (8 types).
- ``bdtnp``: the BDTNP embryo (3,039 cells × 84 genes, 3-D); genes z-scored, PCA to 8
  components, divided by the largest absolute value (as the official spatial preprocessing);
  niches = the K nearest spatial neighbours, centre excluded. BDTNP has no cell-type
  annotation, so the "centre cell's type" is a k-means cluster (6) of the centre's PCA profile.

Cells are split 80/20 into training and held-out cells (seeded). W2 metrics score up to
``--n-eval`` held-out niches that share no cell with each other (overlapping niches of
neighbouring cells are near-duplicates that a 1-NN test would pick up whatever the generator);
the reference training niches of the anchors are picked the same way. The model
(``sot.models.WassersteinFlowMatching``, conditional on the centre type, p_uncond 0.1) is
trained on the training niches only; then one niche is generated per held-out niche, with the
same condition and size. Metrics (all OT values are exact W2², POT):

- ``nn1_accuracy``: leave-one-out 1-nearest-neighbour accuracy of telling held-out real from
  generated niches under W2² (ideal 50%, target <= 60%).
- ``mean_w2_to_nearest_generated``: mean over held-out real niches of the W2² to the nearest
  generated one; anchors: the same to the nearest of as many *training* real niches
  (``..._train_real``, what a perfect generator would reach) and to as many noise clouds.
- ``classifier_accuracy_*``: a logistic regression on per-niche features (mean and standard
  deviation of the points per dimension) trained on real training niches to predict the centre
  type, applied to all held-out real niches and to as many generated niches, one per held-out
  cell with its type (target: within 3 points).

Gaussian mode: a synthetic family in 3-D with a known mean–covariance relation (the covariance
of a Gaussian is a rotation, by the angle of its mean in the first plane, of diag(1, 0.3, 0.1),
scaled by exp(0.3 m_3)); ``sot.models.GaussianFlowMatching`` is trained on 4,000 of them.
Metrics: the mean Bures–Wasserstein W2² between each generated Gaussian and the true Gaussian
at its mean's angle (the relation) and a family-level W2 (exact OT between the generated and a
fresh true family, ground cost = Bures–Wasserstein W2²), against the same for noise Gaussians
and for two independent true families (the sampling floor).

Run ``python benchmarks/wfm.py [--quick] [--device cpu|cuda|auto] [--steps N] [--out PATH]``.
"""

from __future__ import annotations

import argparse
import time
import warnings
from typing import Any

from _common import default_out, machine_info, print_table, resolve_device, write_json

warnings.filterwarnings("ignore", category=FutureWarning)

import numpy as np  # noqa: E402
import ot as pot  # noqa: E402
import torch  # noqa: E402
from scipy.optimize import linear_sum_assignment  # noqa: E402
from sklearn.cluster import KMeans  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402

import spatialot as sot  # noqa: E402
from spatialot.models import GaussianFlowMatching, WassersteinFlowMatching  # noqa: E402
from spatialot.ot import IndexedClouds, PointClouds  # noqa: E402


def simulated(n_cells: int, k: int, seed: int):
    adata = sot.datasets.simulated_tissue(n_cells, n_latent=8, random_state=seed)
    sot.pp.niches(adata, k=k, use_rep="X_latent", include_center=False)
    return adata, adata.obs["cell_type"].astype(str).to_numpy()


def bdtnp(k: int, seed: int):
    adata = sot.datasets.bdtnp()
    values = np.asarray(adata.X, dtype=np.float64)
    values = (values - values.mean(0)) / values.std(0).clip(1e-12)
    centred = values - values.mean(0)
    _, _, components = np.linalg.svd(centred, full_matrices=False)
    pca = centred @ components[:8].T
    adata.obsm["X_pca"] = (pca / np.abs(pca).max()).astype(np.float32)
    sot.pp.niches(adata, k=k, use_rep="X_pca", include_center=False)
    types = KMeans(6, n_init=10, random_state=seed).fit_predict(adata.obsm["X_pca"])
    return adata, np.array([f"cluster_{t}" for t in types])


def disjoint_niches(candidates: np.ndarray, family, n: int, used: set[int]) -> np.ndarray:
    """Up to ``n`` cells, in the order of ``candidates``, whose niches (centre included) share no cell
    with each other nor with ``used``; ``used`` is updated."""
    chosen = []
    for cell in candidates:
        members = set(family.indices[cell][family.mask[cell]].tolist()) | {int(cell)}
        if used.isdisjoint(members):
            chosen.append(int(cell))
            used |= members
            if len(chosen) == n:
                break
    return np.sort(np.asarray(chosen, dtype=np.int64))


def features_of(clouds: PointClouds) -> np.ndarray:
    """Permutation-invariant per-niche features: mean and standard deviation per dimension."""
    points, weights = clouds.points.double(), clouds.weights.double()[..., None]
    mean = (weights * points).sum(1)
    std = ((weights * (points - mean[:, None]) ** 2).sum(1)).clamp_min(0).sqrt()
    return torch.cat([mean, std], 1).numpy()


def w2_matrix(first: PointClouds, second: PointClouds) -> np.ndarray:
    """Exact W2² between every cloud of ``first`` and of ``second``, all of one size with uniform weights.

    Between uniform clouds of equal size, OT is an assignment problem (Birkhoff), solved here
    by :func:`scipy.optimize.linear_sum_assignment`, which is much faster per pair than POT's
    network simplex; a few pairs are checked against :func:`sot.ot.exact_w2_squared`.
    """
    if not (bool(first.mask.all()) and bool(second.mask.all()) and first.max_size == second.max_size):
        raise ValueError("w2_matrix needs full clouds of one size.")
    size = first.max_size
    matrix = np.empty((len(first), len(second)))
    x, y = first.points.double(), second.points.double()
    for i in range(len(first)):
        cost = sot.ot.squared_euclidean_cost(x[i].expand(len(second), -1, -1).contiguous(), y).numpy()
        for j in range(len(second)):
            rows, cols = linear_sum_assignment(cost[j])
            matrix[i, j] = cost[j][rows, cols].sum() / size
    check = np.arange(min(5, len(first), len(second)))
    exact = sot.ot.exact_w2_squared(first[check], second[check])
    np.testing.assert_allclose(matrix[check, check], exact, rtol=1e-5, atol=1e-8)
    return matrix


def nn1_accuracy(real: PointClouds, fake: PointClouds, real_real: np.ndarray | None = None) -> float:
    """Leave-one-out 1-NN accuracy of the real/generated label under W2² (``real_real`` may be passed in)."""
    real_real = w2_matrix(real, real) if real_real is None else real_real
    real_fake = w2_matrix(real, fake)
    distances = np.block([[real_real, real_fake], [real_fake.T, w2_matrix(fake, fake)]])
    np.fill_diagonal(distances, np.inf)
    is_fake = np.r_[np.zeros(len(real)), np.ones(len(fake))]
    return float(np.mean(is_fake[distances.argmin(1)] == is_fake))


def mean_nearest(real: PointClouds, other: PointClouds) -> float:
    return float(w2_matrix(real, other).min(1).mean())


def point_cloud_case(name: str, adata, types: np.ndarray, args, device: str) -> dict[str, Any]:
    rng = np.random.default_rng(args.seed)
    family = sot.get.niche_clouds(adata)
    order = rng.permutation(adata.n_obs)
    n_train = int(0.8 * adata.n_obs)
    train_cells, all_held = np.sort(order[:n_train]), np.sort(order[n_train:])
    # The classifier scores every held-out cell. The W2 metrics score niches that share no cell
    # (neither member nor centre) with each other: overlapping niches of neighbouring cells are
    # near-duplicates, which would let real niches find each other in a 1-NN test whatever the
    # generator does. The reference training niches are chosen the same way.
    used: set[int] = set()
    held_cells = disjoint_niches(order[n_train:], family, args.n_eval, used)
    reference_cells = disjoint_niches(rng.permutation(train_cells), family, len(held_cells), used)
    train = IndexedClouds(family.features, family.indices[train_cells], family.mask[train_cells])
    names = sorted(set(types))
    torch.manual_seed(args.seed)
    model = WassersteinFlowMatching(
        family.dim, family.max_size, labels=names, width=args.width, n_layers=args.layers, noise=args.noise
    )
    start = time.perf_counter()
    model.fit(
        train,
        types[train_cells],
        n_steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        device=device,
        random_state=args.seed,
        progress=False,
    )
    if device == "cuda":
        torch.cuda.synchronize()
    train_s = time.perf_counter() - start
    model.to("cpu")

    real = family.gather(held_cells)
    reference = family.gather(reference_cells)
    noise = model.draw_noise(real.mask)
    noise = PointClouds.from_padded(noise.points * model.scale + model.center, noise.mask)
    classifier = LogisticRegression(max_iter=2000).fit(features_of(family.gather(train_cells)), types[train_cells])
    accuracy_real = float(classifier.score(features_of(family.gather(all_held)), types[all_held]))
    real_real = w2_matrix(real, real)
    row: dict[str, Any] = {
        "data": name,
        "n_cells": int(adata.n_obs),
        "niche_size": int(family.max_size),
        "dim": int(family.dim),
        "n_conditions": len(names),
        "n_train_niches": len(train_cells),
        "n_eval_niches": len(held_cells),
        "train_s": train_s,
        "ms_per_step": 1000 * train_s / args.steps,
        "mean_w2_nearest_train_real": mean_nearest(real, reference),
        "mean_w2_nearest_noise": mean_nearest(real, noise),
        "nn1_accuracy_train_real": nn1_accuracy(real, reference, real_real),
        "classifier_accuracy_real": accuracy_real,
        "n_classifier_niches": len(all_held),
        "classifier_chance": float(max(np.mean(types[all_held] == t) for t in names)),
        "by_guidance": [],
    }
    for guidance in args.guidance:
        start = time.perf_counter()
        # one generated niche per held-out cell, with its condition and size; the first n_eval
        # are scored by W2, all of them by the classifier
        generated = model.sample(
            labels=list(types[all_held]),
            sizes=family.sizes[all_held],
            n_steps=args.ode_steps,
            guidance=guidance,
            random_state=args.seed,
        )
        sample_s = time.perf_counter() - start
        accuracy_fake = float(classifier.score(features_of(generated), types[all_held]))
        fake = generated[np.flatnonzero(np.isin(all_held, held_cells))]  # same conditions as `real`
        row["by_guidance"].append(
            {
                "guidance": guidance,
                "sample_s": sample_s,
                "nn1_accuracy": nn1_accuracy(real, fake, real_real),
                "mean_w2_nearest_generated": mean_nearest(real, fake),
                "classifier_accuracy_generated": accuracy_fake,
                "classifier_gap_points": 100 * (accuracy_fake - accuracy_real),
            }
        )
    return row


def _true_covariances(means: np.ndarray) -> np.ndarray:
    angle = np.arctan2(means[:, 1], means[:, 0])
    rotation = np.zeros((len(means), 3, 3))
    rotation[:, 0, 0], rotation[:, 0, 1] = np.cos(angle), -np.sin(angle)
    rotation[:, 1, 0], rotation[:, 1, 1] = np.sin(angle), np.cos(angle)
    rotation[:, 2, 2] = 1.0
    scale = np.exp(0.3 * means[:, 2])[:, None, None]
    return scale * rotation @ np.diag([1.0, 0.3, 0.1]) @ rotation.transpose(0, 2, 1)


def _true_family(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    angle = rng.uniform(0, 2 * np.pi, n)
    means = np.column_stack([2 * np.cos(angle), 2 * np.sin(angle), rng.normal(size=n)])
    return means, _true_covariances(means)


def _bw(mean_1, cov_1, mean_2, cov_2) -> np.ndarray:
    tensors = [torch.as_tensor(np.asarray(a), dtype=torch.float64) for a in (mean_1, cov_1, mean_2, cov_2)]
    return sot.ot.bures_wasserstein_squared(*tensors).numpy()


def _family_w2(first, second) -> float:
    """W2² between two families of Gaussians as uniform measures, ground cost Bures–Wasserstein W2²."""
    n, m = len(first[0]), len(second[0])
    rows, cols = np.meshgrid(np.arange(n), np.arange(m), indexing="ij")
    cost = _bw(first[0][rows.ravel()], first[1][rows.ravel()], second[0][cols.ravel()], second[1][cols.ravel()])
    return float(pot.emd2(np.full(n, 1 / n), np.full(m, 1 / m), cost.reshape(n, m)))


def gaussian_case(args, device: str) -> dict[str, Any]:
    rng = np.random.default_rng(args.seed)
    means, covariances = _true_family(4000, rng)
    torch.manual_seed(args.seed)
    model = GaussianFlowMatching(3)
    start = time.perf_counter()
    model.fit(means, covariances, n_steps=args.gaussian_steps, batch_size=128, device=device, progress=False)
    if device == "cuda":
        torch.cuda.synchronize()
    train_s = time.perf_counter() - start
    model.to("cpu")
    n = args.n_eval
    generated = model.sample(n, n_steps=args.ode_steps)
    noise_mean, noise_cov = model.draw_noise(n)
    noise = ((noise_mean * model.scale + model.center).numpy(), (noise_cov * model.scale**2).numpy())
    fresh, other = _true_family(n, rng), _true_family(n, rng)

    def relation_error(family) -> float:
        mean = family[0]
        angle = np.arctan2(mean[:, 1], mean[:, 0])
        on_circle = np.column_stack([2 * np.cos(angle), 2 * np.sin(angle), mean[:, 2]])
        return float(_bw(mean, family[1], on_circle, _true_covariances(on_circle)).mean())

    return {
        "data": "gaussian-synthetic-3d",
        "n_train": len(means),
        "n_eval": n,
        "train_s": train_s,
        "ms_per_step": 1000 * train_s / args.gaussian_steps,
        "relation_bw2_generated": relation_error(generated),
        "relation_bw2_noise": relation_error(noise),
        "relation_bw2_true": relation_error(fresh),
        "family_w2sq_generated": _family_w2(generated, fresh),
        "family_w2sq_noise": _family_w2(noise, fresh),
        "family_w2sq_true_vs_true": _family_w2(other, fresh),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small data, 200 steps (smoke test)")
    parser.add_argument("--device", default="auto", help="training device: cpu, cuda or auto")
    parser.add_argument("--out", default=None, help="JSON output (default benchmarks/results/wfm-<device>.json)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default 3000)")
    parser.add_argument("--gaussian-steps", type=int, default=None, help="Gaussian-mode steps (default 2000)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument("--noise", default="normal", help="source family: normal or cholesky")
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--k", type=int, default=8, help="niche size (neighbours, centre excluded)")
    parser.add_argument("--n-cells", type=int, default=None, help="cells of the simulated tissue (default 5000)")
    parser.add_argument("--n-eval", type=int, default=None, help="held-out niches scored (default 250)")
    parser.add_argument("--ode-steps", type=int, default=100)
    parser.add_argument("--guidance", default="1.0,1.5", help="guidance weights to score, comma-separated")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--cases", default="simulated,bdtnp,gaussian")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    torch.set_num_threads(args.threads)
    args.steps = args.steps or (200 if args.quick else 3000)
    args.gaussian_steps = args.gaussian_steps or (200 if args.quick else 2000)
    args.n_cells = args.n_cells or (1500 if args.quick else 5000)
    args.n_eval = args.n_eval or (100 if args.quick else 250)
    args.guidance = [float(g) for g in args.guidance.split(",")]
    cases = args.cases.split(",")

    rows = []
    if "simulated" in cases:
        rows.append(point_cloud_case("simulated", *simulated(args.n_cells, args.k, args.seed), args, device))
    if "bdtnp" in cases:
        rows.append(point_cloud_case("bdtnp", *bdtnp(args.k, args.seed), args, device))
    gaussian = gaussian_case(args, device) if "gaussian" in cases else None

    table = []
    for row in rows:
        for scored in row["by_guidance"]:
            table.append({**row, **scored})
    columns = [
        ("data", "data", "<"),
        ("guidance", "guidance"),
        ("train_s", "train s"),
        ("ms_per_step", "ms/step"),
        ("nn1_accuracy", "1-NN acc"),
        ("nn1_accuracy_train_real", "1-NN train-real"),
        ("mean_w2_nearest_generated", "W2² to gen"),
        ("mean_w2_nearest_train_real", "W2² to train"),
        ("mean_w2_nearest_noise", "W2² to noise"),
        ("classifier_accuracy_real", "clf real"),
        ("classifier_accuracy_generated", "clf gen"),
        ("classifier_chance", "chance"),
    ]
    if table:
        print_table(table, columns, title=f"WFM point clouds ({args.steps} steps × batch {args.batch_size}, {device})")
    if gaussian is not None:
        print_table(
            [gaussian],
            [
                ("data", "data", "<"),
                ("train_s", "train s"),
                ("relation_bw2_generated", "relation gen"),
                ("relation_bw2_noise", "relation noise"),
                ("relation_bw2_true", "relation true"),
                ("family_w2sq_generated", "family gen"),
                ("family_w2sq_noise", "family noise"),
                ("family_w2sq_true_vs_true", "family true"),
            ],
            title=f"WFM Gaussian mode ({args.gaussian_steps} steps × batch 128)",
        )
    payload = {
        "benchmark": "wfm",
        "description": __doc__,
        "metric": "1-NN accuracy real vs generated under exact W2² (ideal 0.5, target <= 0.6); mean W2² from "
        "held-out real to nearest generated; centre-type classifier accuracy on generated vs held-out real "
        "(target within 3 points); Gaussian mode: Bures–Wasserstein W2² to the true family.",
        "anchor": "W2² and 1-NN of held-out real niches against as many training real niches "
        "(what a perfect generator reaches); noise clouds (an untrained one).",
        "training_budget": {
            "pointcloud_steps": args.steps,
            "batch_size": args.batch_size,
            "width": args.width,
            "n_layers": args.layers,
            "learning_rate": args.learning_rate,
            "noise": args.noise,
            "gaussian_steps": args.gaussian_steps,
            "gaussian_batch_size": 128,
            "ode_steps": args.ode_steps,
            "integrator": "euler",
            "torch_threads": args.threads,
        },
        "args": vars(args),
        "machine": machine_info(device),
        "pointcloud": rows,
        "gaussian": gaussian,
    }
    out = args.out or default_out("wfm", device, args.quick)
    print(f"wrote {write_json(out, payload)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
