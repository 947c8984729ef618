"""The assignment of a GPU training step: ``sot.ot.rounded_assignment`` against scipy's exact one.

On an accelerator, WFM pairs noise and data clouds (minibatch OT) and matches their points by
``sot.ot.rounded_assignment``, which reads nothing on the host; on CPU it uses the exact
``scipy.optimize.linear_sum_assignment``. This script measures what the rounding costs in
optimality, on the kinds of problems a step solves:

- ``points``: squared distances between two clouds of ``n`` i.i.d. Gaussian points in ``d``
  dimensions (the point matching of noise clouds to data clouds), 64 problems per batch;
- ``niches``: squared distances between the points of two random niches of the simulated tissue
  (``simulated_tissue(6000)``, ``X_latent``, radius niches cut to ``n`` cells), 64 problems;
- ``pairing``: the Chamfer cost between 64 noise clouds and 64 niches (the minibatch pairing),
  16 problems with fresh noise.

For each: the mean and largest ratio of the rounded assignment's cost to the optimal cost,
the share of problems solved optimally, and the seconds of one batched call (rounded, on
``--device``) against scipy's loop over the problems (CPU).

Run ``python benchmarks/assignment.py [--device cpu|cuda] [--threads 2] [--out PATH]``.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

# _common, imported first, keeps benchmarks/ot.py from shadowing POT (`import ot`)
from _common import default_out, machine_info, print_table, resolve_device, time_call, write_json

BATCH = 64

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.optimize import linear_sum_assignment  # noqa: E402

import spatialot as sot  # noqa: E402


def optimal_costs(cost: np.ndarray) -> np.ndarray:
    out = np.empty(len(cost))
    for b, problem in enumerate(cost):
        rows, columns = linear_sum_assignment(problem)
        out[b] = problem[rows, columns].sum()
    return out


def score(name: str, cost: torch.Tensor, device: str) -> dict[str, Any]:
    cost = cost.float()
    on_device = cost.to(device)
    sot.ot.rounded_assignment(on_device[:2])  # warm-up
    rounded_s, partner = time_call(lambda: sot.ot.rounded_assignment(on_device), device=device)
    host = cost.double().numpy()
    scipy_s, optimal = time_call(lambda: optimal_costs(host))
    partner = partner.cpu().numpy()
    n = cost.shape[1]
    rounded = np.take_along_axis(host, partner[:, :, None], 2)[:, :, 0].sum(1)
    assert all(len(set(p)) == n for p in partner), "not a permutation"
    ratio = rounded / optimal
    return {
        "problems": name,
        "n": n,
        "mean_ratio": float(ratio.mean()),
        "max_ratio": float(ratio.max()),
        "optimal_share": float((ratio < 1 + 1e-6).mean()),
        "rounded_s": rounded_s,
        "scipy_s": scipy_s,
    }


def niche_points(n: int, rng: np.random.Generator) -> torch.Tensor:
    adata = sot.datasets.simulated_tissue(6000, random_state=0)
    sot.pp.niches(adata, radius=38, use_rep="X_latent")
    family = sot.get.niche_clouds(adata)
    usable = np.flatnonzero(np.asarray(family.sizes) >= n)
    chosen = family[np.sort(rng.choice(usable, 2 * BATCH, replace=False))]
    points = torch.stack([chosen.points[i][chosen.mask[i]][:n] for i in range(2 * BATCH)])
    return points


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    torch.set_num_threads(args.threads)
    load_start = list(os.getloadavg())
    rng = np.random.default_rng(0)
    rows = []
    for n, d in ((8, 8), (16, 8), (32, 8), (64, 8), (64, 2), (64, 16)):
        x, y = torch.tensor(rng.normal(size=(2, BATCH, n, d)))
        rows.append(score(f"points, d = {d}", torch.cdist(x, y) ** 2, device) | {"d": d})
        print(rows[-1], file=sys.stderr, flush=True)
    for n in (8, 32):
        points = niche_points(n, rng)
        rows.append(score("niches, X_latent", torch.cdist(points[:BATCH], points[BATCH:]) ** 2, device) | {"d": 8})
        print(rows[-1], file=sys.stderr, flush=True)
        # 16 pairing problems: 64 noise clouds against the 64 niches, noise drawn afresh for each
        generator = torch.Generator().manual_seed(n)
        mask = torch.ones(BATCH, n, dtype=torch.bool)
        chamfer = torch.stack(
            [
                sot.ot.chamfer_costs(
                    torch.randn(points[:BATCH].shape, generator=generator, dtype=points.dtype),
                    mask,
                    points[:BATCH],
                    mask,
                ).T
                for _ in range(16)
            ]
        )
        rows.append(score(f"pairing, Chamfer of {n}-cell niches", chamfer, device) | {"d": 8})
        print(rows[-1], file=sys.stderr, flush=True)
    table = print_table(
        rows,
        [
            ("problems", "problems", "<"),
            ("n", "n"),
            ("d", "d"),
            ("mean_ratio", "cost / optimal (mean)"),
            ("max_ratio", "(max)"),
            ("optimal_share", "optimal"),
            ("rounded_s", f"rounded s ({device})"),
            ("scipy_s", "scipy s (CPU)"),
        ],
        title=f"rounded assignment against scipy, batches of {BATCH} problems",
    )
    payload = {
        "benchmark": "assignment",
        "machine": machine_info(device) | {"torch_num_threads": torch.get_num_threads()},
        "loadavg_start": load_start,
        "loadavg_end": list(os.getloadavg()),
        "params": {"batch": BATCH, "epsilon": 0.002, "n_iter": 100, "n_swaps": "n"},
        "rows": rows,
        "table": table,
    }
    out = args.out or default_out("assignment", device, False)
    write_json(out, payload)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
