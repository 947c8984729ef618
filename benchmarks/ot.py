"""Benchmark of pairwise OT between niches: throughput (pairs/s) and accuracy of entropic OT.

Data: niches of ``sot.datasets.simulated_tissue(20_000, n_latent=dim)``, built with
``sot.pp.niches(adata, k=size, use_rep='X_latent')`` for sizes 8, 16, 32, 64; random pairs of
distinct cells, gathered with ``sot.get.niche_clouds``. Points are divided by the rms distance
between the points of paired clouds, so the typical squared distance is 1 and ``epsilon`` is
relative to it. Metric: pairs/s of exact W2² (``sot.ot.exact_w2_squared``, POT network simplex,
CPU), of ``sot.ot.sinkhorn(x, y, epsilon=eps).cost`` and of ``sot.ot.sinkhorn_divergence`` at
several batch sizes; for the entropic rows, relative error, bias and Pearson correlation against
exact W2² on the first ``--n-exact`` pairs, and the Sinkhorn iterations used. Anchor: exact W2².
Solver settings are the package defaults (``max_iter=1000``, ``tol=1e-3``, ε-scaling 0.5, over-relaxation 1.5).

Run ``python benchmarks/ot.py [--quick] [--device cpu|cuda|auto] [--out PATH]``.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
import warnings
from typing import Any

# _common, imported first, moves benchmarks/ to the end of sys.path: this file would otherwise
# shadow POT (`import ot`) when spatialot imports it.
from _common import (
    default_out,
    machine_info,
    print_table,
    resolve_device,
    synchronize,
    time_call,
    write_json,
)

warnings.filterwarnings("ignore", category=FutureWarning)

import numpy as np  # noqa: E402
import torch  # noqa: E402

import spatialot as sot  # noqa: E402
import spatialot.ot._sinkhorn as sinkhorn_module  # noqa: E402

ENTROPIC = ("sinkhorn", "sinkhorn_divergence")


@contextlib.contextmanager
def record_sinkhorn_calls():
    """Record ``(n_iter, converged)`` of every ``sinkhorn`` call, including those inside
    ``sinkhorn_divergence`` (which looks ``sinkhorn`` up in its module at call time)."""
    calls: list[tuple[int, bool]] = []
    original = sinkhorn_module.sinkhorn

    def wrapper(*args, **kwargs):
        out = original(*args, **kwargs)
        calls.append((out.n_iter, out.converged))
        return out

    sinkhorn_module.sinkhorn = wrapper
    try:
        yield calls
    finally:
        sinkhorn_module.sinkhorn = original


def entropic(method: str, x, y, epsilon: float) -> torch.Tensor:
    with torch.no_grad():
        if method == "sinkhorn":
            return sinkhorn_module.sinkhorn(x, y, epsilon=epsilon).cost
        return sinkhorn_module.sinkhorn_divergence(x, y, epsilon=epsilon)


def make_pairs(adata, k: int, n_pairs: int, rng: np.random.Generator):
    """Scaled niche clouds of ``n_pairs`` random pairs of distinct cells, and the scale."""
    sot.pp.niches(adata, k=k, use_rep="X_latent")
    family = sot.get.niche_clouds(adata)
    first = rng.integers(0, adata.n_obs, n_pairs)
    second = (first + rng.integers(1, adata.n_obs, n_pairs)) % adata.n_obs  # never the same cell
    x, y = family[first], family[second]
    squared = ((x.points[:, :, None, :] - y.points[:, None, :, :]) ** 2).sum(-1)
    pair_weights = x.weights[:, :, None] * y.weights[:, None, :]
    scale = float((squared * pair_weights).sum((1, 2)).mean().sqrt())
    x = sot.ot.PointClouds.from_padded(x.points / scale, x.mask)
    y = sot.ot.PointClouds.from_padded(y.points / scale, y.mask)
    return x, y, scale


def accuracy(values: np.ndarray, exact: np.ndarray) -> dict[str, float]:
    n = min(len(values), len(exact))
    values, exact = values[:n], exact[:n]
    return {
        "rel_err": float(np.mean(np.abs(values - exact) / exact)),
        "bias": float(np.mean(values - exact) / np.mean(exact)),
        "pearson": float(np.corrcoef(values, exact)[0, 1]),
        "n_compared": n,
    }


def bench_entropic(method, x, y, exact, *, epsilon, batch, n_exact, device, min_time) -> dict[str, Any]:
    n_needed = max(batch, n_exact)
    # warm-up: the full batch on a GPU (kernels, allocator), a small one on CPU (it would be slow)
    warm = batch if device == "cuda" else min(batch, 16)
    entropic(method, x[:warm], y[:warm], epsilon)
    synchronize(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    times, values = [], []
    with record_sinkhorn_calls() as calls:
        for start in range(0, n_needed, batch):
            chunk = slice(start, start + batch)
            seconds, value = time_call(lambda c=chunk: entropic(method, x[c], y[c], epsilon), device=device)
            times.append(seconds)
            values.append(value.double().cpu().numpy())
        # cheap rows: repeat the first batch until min_time is spent (at most 5 timings in all)
        while sum(times) < min_time and len(times) < 5:
            times.append(time_call(lambda: entropic(method, x[:batch], y[:batch], epsilon), device=device)[0])
    values = np.concatenate(values)
    batch_s = statistics.median(times)
    row = {
        "method": method,
        "epsilon": epsilon,
        "batch": batch,
        "batch_s": batch_s,
        "pairs_per_s": batch / batch_s,
        "n_timings": len(times),
        "times_s": times,
        "n_iter_mean": float(np.mean([n for n, _ in calls])),
        "n_iter_max": int(max(n for n, _ in calls)),
        "converged_frac": float(np.mean([c for _, c in calls])),
        "n_sinkhorn_calls": len(calls),
        **accuracy(values, exact),
    }
    if device == "cuda":
        row["cuda_peak_bytes"] = int(torch.cuda.max_memory_allocated())
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="sizes 8 and 16, batches 64 and 256 (smoke test)")
    parser.add_argument("--device", default="auto", help="device of the entropic solvers: cpu, cuda or auto")
    parser.add_argument("--out", default=None, help="JSON output (default benchmarks/results/ot-<device>.json)")
    parser.add_argument("--sizes", default=None, help="niche sizes, comma-separated (default 8,16,32,64)")
    parser.add_argument("--dim", type=int, default=8, help="point dimension (latent dimension of the tissue)")
    parser.add_argument(
        "--batch-sizes", default=None, help="pairs per entropic batch (default 256,4096 on cuda, 256,1024 on cpu)"
    )
    parser.add_argument("--epsilons", default="0.01,0.1", help="entropic regularisations, relative to rms² = 1")
    parser.add_argument("--n-exact", type=int, default=None, help="pairs solved exactly (default 500)")
    parser.add_argument("--n-cells", type=int, default=20_000)
    parser.add_argument("--min-time", type=float, default=1.0, help="repeat cheap rows until this many seconds")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    if args.sizes:
        sizes = [int(s) for s in args.sizes.split(",")]
    else:
        sizes = [8, 16] if args.quick else [8, 16, 32, 64]
    if args.batch_sizes:
        batch_sizes = [int(s) for s in args.batch_sizes.split(",")]
    elif args.quick:
        batch_sizes = [64, 256]
    else:
        batch_sizes = [256, 4096] if device == "cuda" else [256, 1024]
    epsilons = [float(e) for e in args.epsilons.split(",")]
    n_exact = args.n_exact or (128 if args.quick else 500)
    min_time = 0.2 if args.quick else args.min_time
    out = args.out or default_out("ot", device, args.quick)

    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    generate_s, adata = time_call(
        lambda: sot.datasets.simulated_tissue(args.n_cells, n_latent=args.dim, random_state=args.seed)
    )
    params = {
        "quick": args.quick,
        "dataset": f"sot.datasets.simulated_tissue({args.n_cells}, n_latent={args.dim}, random_state={args.seed})",
        "generate_s": generate_s,
        "niches": "sot.pp.niches(adata, k=size, use_rep='X_latent'); pairs of distinct random cells",
        "scaling": "points / scale, scale = rms distance between points of paired clouds (per size, "
        "over all pairs), so the mean squared distance is 1",
        "sizes": sizes,
        "dim": args.dim,
        "batch_sizes": batch_sizes,
        "epsilons": epsilons,
        "n_exact": n_exact,
        "dtype": "float32 (exact: float64 inside POT)",
        "solver_settings": (
            "package defaults: max_iter=1000, tol=1e-3, check_every=10, annealing=0.5, over_relaxation=1.5"
        ),
        "timing": "perf_counter around each batch call (torch.cuda.synchronize before and after on cuda), "
        "after a warm-up call; batch_s is the median over the batches needed for the accuracy pairs, "
        f"repeated up to 5 timings while under {min_time} s; pairs/s = batch / batch_s",
        "accuracy": "on the first n_exact pairs: rel_err = mean |v - w| / w, bias = mean(v - w) / mean(w), "
        "Pearson r of v and w, with w the exact W2^2",
        "n_iter": "Sinkhorn iterations at the target epsilon per sinkhorn call (3 calls per divergence), "
        "recorded by wrapping spatialot.ot._sinkhorn.sinkhorn",
    }
    rows: list[dict[str, Any]] = []
    scales = {}
    for k in sizes:
        x, y, scale = make_pairs(adata, k, max(n_exact, *batch_sizes), rng)
        scales[k] = scale
        print(f"size {k}: scale {scale:.4g}", file=sys.stderr, flush=True)

        sot.ot.exact_w2_squared(x[:4], y[:4])  # warm-up
        exact_s, exact = time_call(lambda x=x, y=y: sot.ot.exact_w2_squared(x[:n_exact], y[:n_exact]))
        rows.append(
            {
                "k": k,
                "method": "exact",
                "device": "cpu",
                "batch": 1,
                "pairs_per_s": n_exact / exact_s,
                "batch_s": exact_s / n_exact,
                "n_pairs": n_exact,
                "exact_mean": float(exact.mean()),
                "exact_std": float(exact.std()),
            }
        )
        x_dev, y_dev = x.to(device), y.to(device)
        for method in ENTROPIC:
            for epsilon in epsilons:
                for batch in batch_sizes:
                    row = bench_entropic(
                        method,
                        x_dev,
                        y_dev,
                        exact,
                        epsilon=epsilon,
                        batch=batch,
                        n_exact=n_exact,
                        device=device,
                        min_time=min_time,
                    )
                    rows.append({"k": k, "device": device, **row})
                    print(
                        f"  {method} eps={epsilon} batch={batch}: {row['pairs_per_s']:.0f} pairs/s, "
                        f"n_iter {row['n_iter_mean']:.0f}",
                        file=sys.stderr,
                        flush=True,
                    )
        payload = {
            "benchmark": "ot",
            "machine": machine_info(device),
            "params": {**params, "scales": scales},
            "rows": rows,
            "complete": k == sizes[-1],
            "total_s": time.perf_counter() - start,
        }
        write_json(out, payload)  # after every size, so that a cut run keeps what it measured

    columns = [
        ("k", "size"),
        ("method", "method", "<"),
        ("device", "device", "<"),
        ("epsilon", "eps"),
        ("batch", "batch"),
        ("pairs_txt", "pairs/s"),
        ("batch_ms", "ms/batch"),  # per pair for exact
        ("n_iter_txt", "iters"),
        ("conv_txt", "converged"),
        ("rel_err", "rel err"),
        ("bias", "bias"),
        ("pearson", "pearson"),
    ]
    if device == "cuda":
        columns.append(("mem_txt", "cuda peak"))
    table_rows = []
    for row in rows:
        text = dict(row)
        text["pairs_txt"] = f"{row['pairs_per_s']:,.0f}"
        ms = row["batch_s"] * 1e3
        text["batch_ms"] = f"{ms:,.0f}" if ms >= 100 else f"{ms:.3g}"
        text["n_iter_txt"] = f"{row['n_iter_mean']:.0f}" if "n_iter_mean" in row else "-"
        text["conv_txt"] = f"{row['converged_frac']:.0%}" if "converged_frac" in row else "-"
        text["mem_txt"] = f"{row['cuda_peak_bytes'] / 2**20:.0f} MiB" if "cuda_peak_bytes" in row else "-"
        for key, spec in (("rel_err", ".4f"), ("bias", "+.4f"), ("pearson", ".4f")):
            text[key] = format(row[key], spec) if key in row else "-"
        table_rows.append(text)
    scale_text = ", ".join(f"k={k}: {s:.3g}" for k, s in scales.items())
    table = print_table(
        table_rows,
        columns,
        title=f"pairwise OT between niches of simulated_tissue({args.n_cells}), dim {args.dim}, points / rms "
        f"distance ({scale_text}); accuracy vs exact W2^2 on {n_exact} pairs",
    )
    payload["table"] = table
    write_json(out, payload)
    print(f"\nwrote {out}")
    not_converged = [r for r in rows if r.get("converged_frac", 1.0) < 1.0]
    if not_converged:
        print(
            f"note: {len(not_converged)} of {len(rows) - len(sizes)} entropic rows had Sinkhorn calls that stopped at "
            "max_iter before reaching tol (see 'converged')"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
