"""Benchmark of Wasserstein Wormhole: fidelity of the embedding to exact OT, and speed.

Fidelity (metric: Pearson and Spearman correlation between the squared embedding distance
``||z_i - z_j||^2`` and exact W2² from POT on niche pairs never seen in training; targets:
Pearson ≥ 0.98 overall, ≥ 0.95 on pairs of the same niche type):

- ``bdtnp``: the bundled BDTNP atlas (3,039 cells), niches of k=8 on a 16-component PCA of the
  84 genes; trained on the niches of a random 70% of the cells, scored on pairs of the other 30%.
- ``simulated``: ``simulated_tissue(6000, n_cell_types=6, n_niche_types=5)``, niches = all cells
  within 35 µm (8–60 cells, mean 38) in the 8-D ``X_latent`` space, like the official
  code's synthetic benchmark (30–64 points in 8-D, 5 niche types). Out-of-sample: trained on the
  niches of the left half of the tissue, scored on pairs of the right half, overall and within
  a niche type.

Speed: training steps/s and encode throughput on clouds of 30–64 points in 8-D at batch 16,
the scaling of one training step with niche size (8, 16, 32, 64) and batch size (8, 16, 32),
and the process's peak memory.

This script measures spatialot alone. The comparison with the authors' code, run side by side
on the same data in the same run, is ``benchmarks/peers/wormhole.py``: figures of the official
code quoted from elsewhere are context, not a comparison.

Precision: ``--precision float32,bfloat16`` trains each dataset once per precision (bf16 autocast
of the networks, OT targets in float32; ``fit(precision=...)``) and scores each: the fidelity
bf16 keeps.

Run ``python benchmarks/wormhole.py [--quick] [--steps N] [--precision float32[,bfloat16]]
[--device cpu|cuda|auto] [--out PATH]``.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from typing import Any

from _common import default_out, machine_info, peak_rss_bytes, print_table, resolve_device, synchronize, write_json

warnings.filterwarnings("ignore", category=FutureWarning)

import numpy as np  # noqa: E402
import scanpy as sc  # noqa: E402
import scipy.stats  # noqa: E402
import torch  # noqa: E402

import spatialot as sot  # noqa: E402
from spatialot.models import Wormhole  # noqa: E402


def score(model: Wormhole, family, cells: np.ndarray, labels: np.ndarray | None, n_pairs: int, rng) -> dict:
    """Correlation of embedding distances with exact W2² on random pairs of ``cells`` (and same-label pairs)."""
    embedding = model.encode(family[np.sort(cells)])
    position = {cell: i for i, cell in enumerate(np.sort(cells))}

    def correlate(first, second):
        exact = sot.ot.exact_w2_squared(family[first], family[second])
        z_first = embedding[[position[c] for c in first]]
        z_second = embedding[[position[c] for c in second]]
        predicted = ((z_first - z_second) ** 2).sum(1)
        return {
            "pearson": float(scipy.stats.pearsonr(predicted, exact)[0]),
            "spearman": float(scipy.stats.spearmanr(predicted, exact)[0]),
            "n_pairs": len(first),
        }

    first, second = rng.choice(cells, n_pairs), rng.choice(cells, n_pairs)
    keep = first != second
    result = {"all_pairs": correlate(first[keep], second[keep])}
    if labels is not None:
        first, second = [], []
        for label in np.unique(labels[cells]):
            members = cells[labels[cells] == label]
            count = n_pairs // len(np.unique(labels[cells]))
            first.append(rng.choice(members, count))
            second.append(rng.choice(members, count))
        first, second = np.concatenate(first), np.concatenate(second)
        keep = first != second
        result["same_type_pairs"] = correlate(first[keep], second[keep])
    return result


def train_and_score(name, adata, train_cells, test_cells, labels, args, device, precision) -> dict[str, Any]:
    family = sot.get.niche_clouds(adata)
    torch.manual_seed(0)
    model = Wormhole(family.dim)
    start = time.perf_counter()
    model.fit(
        family[np.sort(train_cells)], n_steps=args.steps, device=device, progress=not args.quiet, precision=precision
    )
    synchronize(device)
    seconds = time.perf_counter() - start
    rng = np.random.default_rng(1)
    result = score(model, family, test_cells, labels, args.pairs, rng)
    return {
        "dataset": name,
        "n_train_niches": len(train_cells),
        "n_test_niches": len(test_cells),
        "niche_sizes": [int(family.sizes.min()), float(family.sizes.mean()), int(family.sizes.max())],
        "dim": family.dim,
        "n_steps": args.steps,
        "batch_size": 16,
        "learning_rate": 1e-4,
        "precision": precision,
        "train_seconds": seconds,
        "final_loss": float(np.mean(model.history[-100:])),
        **result,
    }


def bdtnp_data():
    adata = sot.datasets.bdtnp()
    sc.pp.pca(adata, n_comps=16)
    sot.pp.niches(adata, k=8, use_rep="X_pca")
    cells = np.random.default_rng(0).permutation(adata.n_obs)
    split = int(0.7 * adata.n_obs)
    return adata, cells[:split], cells[split:], None


def simulated_data():
    adata = sot.datasets.simulated_tissue(6000, n_cell_types=6, n_niche_types=5)
    sot.pp.niches(adata, radius=35, use_rep="X_latent")
    x = adata.obsm["spatial"][:, 0]
    left = np.flatnonzero(x < np.median(x))
    right = np.flatnonzero(x >= np.median(x))
    return adata, left, right, adata.obs["niche_type"].to_numpy()


def speed(device: str, quick: bool) -> list[dict[str, Any]]:
    """Training steps/s and encode throughput on synthetic clouds of fixed size in 8-D."""
    rows = []
    rng = np.random.default_rng(0)
    settings = [(size, 16) for size in (8, 16, 32, 64)] + [(32, 8), (32, 32)]
    settings.insert(0, ("30-64", 16))
    for size, batch in settings:
        if size == "30-64":
            sizes = rng.integers(30, 65, 1000)
            clouds = [rng.normal(size=(n, 8)) + rng.normal(size=8) for n in sizes]
        else:
            clouds = [rng.normal(size=(size, 8)) + rng.normal(size=8) for _ in range(1000)]
        family = sot.ot.PointClouds.from_list(clouds)
        torch.manual_seed(0)
        model = Wormhole(8).fit(family, n_steps=2, batch_size=batch, device=device, progress=False)
        n_steps = 5 if quick else 20
        start = time.perf_counter()
        model.fit(family, n_steps=n_steps, batch_size=batch, device=device, progress=False)
        synchronize(device)
        steps_per_s = n_steps / (time.perf_counter() - start)
        start = time.perf_counter()
        model.encode(family, batch_size=256)
        synchronize(device)
        encode_per_s = len(family) / (time.perf_counter() - start)
        rows.append(
            {"niche_size": str(size), "batch_size": batch, "steps_per_s": steps_per_s, "encode_per_s": encode_per_s}
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few steps and pairs: a smoke test")
    parser.add_argument("--steps", type=int, default=None, help="training steps per dataset (default 3000)")
    parser.add_argument("--pairs", type=int, default=None, help="held-out pairs scored (default 3000)")
    parser.add_argument("--datasets", default="bdtnp,simulated")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="float32", help="comma-separated: float32, bfloat16")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    args.steps = args.steps or (50 if args.quick else 3000)
    args.pairs = args.pairs or (300 if args.quick else 3000)
    device = resolve_device(args.device)
    load_at_start = os.getloadavg()

    fidelity = []
    loaders = {"bdtnp": bdtnp_data, "simulated": simulated_data}
    for name in filter(None, args.datasets.split(",")):
        adata, train_cells, test_cells, labels = loaders[name]()
        for precision in args.precision.split(","):
            fidelity.append(train_and_score(name, adata, train_cells, test_cells, labels, args, device, precision))
    rows = []
    for entry in fidelity:
        for kind in ("all_pairs", "same_type_pairs"):
            if kind in entry:
                rows.append(
                    {
                        "dataset": entry["dataset"],
                        "precision": entry["precision"],
                        "pairs": kind,
                        "steps": entry["n_steps"],
                        "train_s": entry["train_seconds"],
                        **entry[kind],
                    }
                )
    print_table(
        rows,
        [
            ("dataset", "dataset", "<"),
            ("precision", "precision", "<"),
            ("pairs", "held-out pairs", "<"),
            ("n_pairs", "n"),
            ("steps", "steps"),
            ("train_s", "train s"),
            ("pearson", "Pearson"),
            ("spearman", "Spearman"),
        ],
        title="Wormhole fidelity: ||dz||² against exact W2² on held-out niches",
    )
    speed_rows = [] if args.skip_speed else speed(device, args.quick)
    if speed_rows:
        print_table(
            speed_rows,
            [
                ("niche_size", "niche size"),
                ("batch_size", "batch"),
                ("steps_per_s", "train steps/s"),
                ("encode_per_s", "encode clouds/s"),
            ],
            title="Wormhole speed (8-D clouds, defaults)",
        )
    payload = {
        "benchmark": "wormhole",
        "peers": "benchmarks/peers/wormhole.py runs the official code side by side",
        "machine": machine_info(device),
        "fidelity": fidelity,
        "speed": speed_rows,
        "peak_rss_bytes": peak_rss_bytes(),
        "load_average_1_5_15_min": {"start": load_at_start, "end": os.getloadavg()},
    }
    path = write_json(args.out or default_out("wormhole", device, args.quick), payload)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
