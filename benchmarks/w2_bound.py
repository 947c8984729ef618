"""What one sample of a Wasserstein-2 benchmark measure can tell: the family's own model, fitted.

HOTET's targets on part 3 of ``hotet.py`` (L2-UVP below 5 % at d ≤ 8) are scored on maps
predicted from one sample of 128 points of each unseen measure. This script asks how far any
method can get from that sample. Each unseen measure μ_b of ``sot.datasets.w2_benchmark`` is
described exactly by its parameters θ_b = (shift m, ridge directions a_k of known norm, offsets
c_k, weights w_k ∈ [0.5, 1.5]); their prior is the family's own draw. The **maximum a posteriori
(MAP)** θ_b given the sample — by change of variables, log p(x) = log N(z) − log det ∇²φ(z) with
z = (∇φ)⁻¹(x), plus the log prior — gives both maps, scored exactly as ``hotet.py`` part 3 scores
HOTET (same data: ``hotet.w2_data`` with the same seed). Two starts for the MAP's Adam ascent:

- ``truth``: from the true θ_b. An oracle start (no method knows θ_b), kept to show what the
  sample allows when the search finds the right mode;
- ``prior``: the best, by posterior value, of ``--restarts`` ascents from draws of the prior. A
  method any user could run, given the family's model.

HOTET, which knows neither the model nor the prior and must learn both from the training
measures, is trained in the same run on the same data (``--hotet-steps``, 0 to skip), beside the
closed-form Gaussian map of each sample (where HOTET's default starts). The parametric fit is a
reference, not a peer: it knows the family's form exactly, which a real niche never offers.

Run ``python benchmarks/w2_bound.py [--quick] [--dims 2 4 8] [--restarts 4] [--hotet-steps 1000]
[--threads 1] [--out PATH]``.
"""

from __future__ import annotations

import argparse
import inspect
import os
import time
from typing import Any

import numpy as np
import torch
from _common import default_out, machine_info, print_table, resolve_device, write_json
from hotet import W2Data, w2_benchmark, w2_data, w2_gaussian_baseline, w2_scores

import spatialot as sot

# the prior is the family's own draw: hotet.w2_data calls sot.datasets.w2_benchmark with its defaults
_FAMILY_DEFAULTS = {name: p.default for name, p in inspect.signature(sot.datasets.w2_benchmark).parameters.items()}
SHIFT_VARIANCE = _FAMILY_DEFAULTS["shift"] ** 2
OFFSET_VARIANCE = _FAMILY_DEFAULTS["offset"] ** 2
HEIGHT_LOW, HEIGHT_HIGH = _FAMILY_DEFAULTS["height"]


class RidgeModel:
    """The potentials φ_θ(z) = ½‖z‖² + ⟨m, z⟩ + Σ_k w_k softplus(⟨a_k, z⟩ + c_k) of a batch of measures.

    θ is one free vector per measure: m, the directions as free vectors u_k (a_k = s u_k / ‖u_k‖
    with s the family's known norm; u_k ~ N(0, I) gives the family's uniform directions), c_k, and
    v_k with w_k = low + (high − low) sigmoid(v_k) (a logistic v_k gives the family's uniform w_k).
    """

    def __init__(self, dim: int, n_ridges: int, sharpness: float):
        self.dim, self.n_ridges, self.sharpness = dim, n_ridges, sharpness

    def split(self, theta: torch.Tensor) -> tuple[torch.Tensor, ...]:
        d, k = self.dim, self.n_ridges
        shift = theta[:, :d]
        free = theta[:, d : d + k * d].reshape(-1, k, d)
        offsets = theta[:, d + k * d : d + k * d + k]
        logits = theta[:, d + k * d + k :]
        directions = self.sharpness * free / free.norm(dim=-1, keepdim=True)
        heights = HEIGHT_LOW + (HEIGHT_HIGH - HEIGHT_LOW) * torch.sigmoid(logits)
        return shift, directions, offsets, heights, free, logits

    def from_family(self, family) -> torch.Tensor:
        """θ of the true parameters of ``family`` (a :class:`~spatialot.datasets.ConvexMapFamily`)."""
        heights = np.clip((family.heights - HEIGHT_LOW) / (HEIGHT_HIGH - HEIGHT_LOW), 1e-9, 1 - 1e-9)
        parts = (
            family.shifts,
            (family.directions / self.sharpness).reshape(len(family), -1),
            family.offsets,
            np.log(heights / (1 - heights)),
        )
        return torch.tensor(np.concatenate(parts, 1), dtype=torch.float64)

    def draw_prior(self, n: int, rng: np.random.Generator) -> torch.Tensor:
        d, k = self.dim, self.n_ridges
        parts = (
            np.sqrt(SHIFT_VARIANCE) * rng.standard_normal((n, d)),
            rng.standard_normal((n, k * d)),
            np.sqrt(OFFSET_VARIANCE) * rng.standard_normal((n, k)),
            rng.logistic(size=(n, k)),
        )
        return torch.tensor(np.concatenate(parts, 1), dtype=torch.float64)

    def forward(self, theta: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """∇φ_θ(z): the map ν → μ_θ at ``z`` ``(batch, n, dim)``."""
        shift, directions, offsets, heights, _, _ = self.split(theta)
        gates = heights[:, None, :] * torch.sigmoid(torch.einsum("bnd,bkd->bnk", z, directions) + offsets[:, None, :])
        return z + shift[:, None, :] + torch.einsum("bnk,bkd->bnd", gates, directions)

    def hessian(self, theta: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        _, directions, offsets, heights, _, _ = self.split(theta)
        s = torch.sigmoid(torch.einsum("bnd,bkd->bnk", z, directions) + offsets[:, None, :])
        curvature = heights[:, None, :] * s * (1 - s)
        eye = torch.eye(self.dim, dtype=z.dtype)
        return eye + torch.einsum("bnk,bkd,bke->bnde", curvature, directions, directions)

    def inverse(self, theta: torch.Tensor, x: torch.Tensor, n_newton: int = 80) -> torch.Tensor:
        """(∇φ_θ)⁻¹(x), differentiable in θ.

        Newton steps without gradients (capped at length 1: φ_θ is 1-strongly convex, so the
        damped iteration converges), then one Newton step with gradients: at the solution its
        derivative in θ is the implicit-function derivative of the root.
        """
        with torch.no_grad():
            z = x - self.split(theta)[0][:, None, :]
            for _ in range(n_newton):
                step = torch.linalg.solve(self.hessian(theta, z), (self.forward(theta, z) - x)[..., None])[..., 0]
                z = z - step * torch.clamp(1.0 / step.norm(dim=-1, keepdim=True).clamp_min(1e-12), max=1.0)
        residual = self.forward(theta, z) - x
        return z - torch.linalg.solve(self.hessian(theta, z), residual[..., None])[..., 0]

    def log_posterior(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log p(θ | x) up to a constant, one value per measure; ``x`` ``(batch, n, dim)``."""
        z = self.inverse(theta, x)
        log_likelihood = -(0.5 * (z**2).sum(-1) + torch.linalg.slogdet(self.hessian(theta, z))[1]).sum(1)
        shift, _, offsets, _, free, logits = self.split(theta)
        log_prior = (
            -(shift**2).sum(-1) / (2 * SHIFT_VARIANCE)
            - (free**2).sum((-1, -2)) / 2
            - (offsets**2).sum(-1) / (2 * OFFSET_VARIANCE)
            + (torch.nn.functional.logsigmoid(logits) + torch.nn.functional.logsigmoid(-logits)).sum(-1)
        )
        return log_likelihood + log_prior


def fit_map(
    model: RidgeModel, start: torch.Tensor, x: torch.Tensor, steps: int, lr: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Adam ascent of the log posterior from ``start``; returns θ and its log posterior."""
    theta = start.clone().requires_grad_(True)
    optimiser = torch.optim.Adam([theta], lr=lr)
    for _ in range(steps):
        optimiser.zero_grad()
        (-model.log_posterior(theta, x).sum()).backward()
        optimiser.step()
    theta = theta.detach()
    with torch.no_grad():
        return theta, model.log_posterior(theta, x)


def map_scores(model: RidgeModel, theta: torch.Tensor, data: W2Data) -> dict[str, float]:
    with torch.no_grad():
        forward = model.inverse(theta, torch.tensor(data.x)).numpy()
        inverse = model.forward(theta, torch.tensor(data.z)).numpy()
    return w2_scores(data, forward, inverse)


def bound_rows(dim: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    data = w2_data(dim, args.train, args.n_points, args.samples, args.seed)
    family = data.test_family
    sharpness = float(np.linalg.norm(family.directions, axis=-1).mean())
    model = RidgeModel(dim, family.directions.shape[1], sharpness)
    truth = model.from_family(family)
    with torch.no_grad():  # the model is the family: same maps at the true θ
        z = torch.tensor(data.z)
        assert np.allclose(model.forward(truth, z).numpy(), data.x, atol=1e-8)
        assert np.allclose(model.inverse(truth, torch.tensor(data.x)).numpy(), data.z, atol=1e-6)
    x = data.test.points.to(torch.float64)  # the one sample each map is predicted from
    gaussian = w2_scores(data, *w2_gaussian_baseline(data, 0.1))
    common = {"dim": dim, "n_points": args.n_points, "seed": args.seed}
    rows = [{**common, "method": "closed-form Gaussian map (shrinkage 0.1)", **gaussian}]
    start_time = time.perf_counter()
    theta, _ = fit_map(model, truth, x, args.map_steps, args.map_learning_rate)
    rows.append(
        {
            **common,
            "method": "MAP, from the truth (oracle)",
            "fit_s": time.perf_counter() - start_time,
            **map_scores(model, theta, data),
        }
    )
    start_time = time.perf_counter()
    rng = np.random.default_rng(args.seed + 100 + dim)
    best, best_value = torch.zeros_like(truth), torch.full((len(family),), -torch.inf, dtype=truth.dtype)
    for _ in range(args.restarts):  # per measure, the start that ends at the highest posterior
        theta, value = fit_map(model, model.draw_prior(len(family), rng), x, args.map_steps, args.map_learning_rate)
        better = value > best_value
        best = torch.where(better[:, None], theta, best)
        best_value = torch.where(better, value, best_value)
    rows.append(
        {
            **common,
            "method": f"MAP, best of {args.restarts} prior draws",
            "fit_s": time.perf_counter() - start_time,
            **map_scores(model, best, data),
        }
    )
    if args.hotet_steps:
        result = w2_benchmark(
            dim,
            "gaussian",
            args.hotet_steps,
            args.train,
            args.n_points,
            args.device,
            samples_per_measure=args.samples,
            seed=args.seed,
            data=data,  # the draw the MAP rows were fitted to, not drawn again
        )
        for via, key in (("forward network", "forward_l2_uvp"), ("via inverse", "forward_via_inverse_l2_uvp")):
            rows.append(
                {
                    **common,
                    "method": f"HOTET, {args.hotet_steps} steps, {via}",
                    "fit_s": result["fit_s"],
                    "forward_l2_uvp": result[key],
                    "inverse_l2_uvp": result["inverse_l2_uvp"],
                    "forward_cosine": result["forward_cosine"],
                    "inverse_cosine": result["inverse_cosine"],
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--n-points", type=int, default=128, help="points of the sample each map is predicted from")
    parser.add_argument("--train", type=int, default=400, help="HOTET's training measures (as hotet.py --w2-train)")
    parser.add_argument("--samples", type=int, default=16, help="samples of each training measure (--w2-samples)")
    parser.add_argument("--restarts", type=int, default=4)
    parser.add_argument("--map-steps", type=int, default=800)
    parser.add_argument("--map-learning-rate", type=float, default=1e-2)
    parser.add_argument("--hotet-steps", type=int, default=1000, help="0 skips HOTET")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None)
    parser.add_argument("--quick", action="store_true", help="d = 2 only, small budgets: a check that it runs")
    args = parser.parse_args()
    if args.quick:
        args.dims, args.train, args.samples, args.restarts, args.map_steps, args.hotet_steps = [2], 40, 2, 1, 50, 50
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    out = args.out or default_out("w2-bound", device, args.quick)
    payload: dict[str, Any] = {
        "benchmark": "w2-bound",
        "machine": machine_info(device),
        "load_before": list(os.getloadavg()),
        "data": "hotet.py part 3 (hotet.w2_data): sot.datasets.w2_benchmark, 50 unseen measures, each map predicted "
        f"from one {args.n_points}-point sample and scored on 1,000 further points",
        "metric": "L2-UVP % and cosine, as hotet.py part 3 (forward mu_b -> nu, inverse nu -> mu_b)",
        "budget": f"MAP: Adam {args.map_learning_rate:g}, {args.map_steps} steps per start, float64; "
        f"HOTET: {args.hotet_steps} steps, defaults of hotet.py part 3",
        "rows": [],
    }
    for dim in args.dims:
        payload["rows"].extend(bound_rows(dim, args))
        payload["load_after"] = list(os.getloadavg())
        write_json(out, payload)
    print_table(
        payload["rows"],
        [
            ("dim", "d"),
            ("method", "method", "<"),
            ("forward_l2_uvp", "forward %"),
            ("inverse_l2_uvp", "inverse %"),
            ("fit_s", "s"),
        ],
        title="One sample per unseen measure: what the family's own model reaches, beside HOTET",
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
