"""Benchmark of ``sot.pp.niches`` (k-NN niches) and of gathering niche clouds, against squidpy.

Data: ``sot.datasets.simulated_tissue(n_cells)`` (2-D, one cell per 100 µm²), n_cells in 10⁴,
10⁵, 10⁶. Metric: seconds of ``sot.pp.niches(adata, k=16)``, peak extra memory of that call,
bytes of the stored index; niches/s of ``sot.get.niche_clouds(adata)[cells]`` for batches of
1,024 cells on ``X_latent``. Anchor: ``squidpy.gr.spatial_neighbors_knn(adata, n_neighs=15,
copy=True)``, the graph it replaces (same 15 neighbours). Target: 10⁶ cells, k=16 in under
10 s with O(n·k) memory on 2 cores.

Every size runs in a fresh spawned process, so that memory figures are not polluted by earlier
sizes. Run ``python benchmarks/niches.py [--quick] [--device cpu|cuda|auto] [--out PATH]``.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import sys
import time
import warnings
from typing import Any

# _common, imported first, keeps benchmarks/ot.py from shadowing POT (`import ot`)
from _common import (
    default_out,
    format_bytes,
    machine_info,
    measure_peak_memory,
    median_time,
    print_table,
    resolve_device,
    rss_bytes,
    time_call,
    write_json,
)

TARGET_CELLS = 1_000_000
TARGET_SECONDS = 10.0
GATHER_BATCH = 1024


def _quiet() -> None:
    for name in ("squidpy", "spatialdata", "spatialdata._logging"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=SyntaxWarning)  # docrep, imported by squidpy
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def measure_size(n_cells: int, k: int, device: str, seed: int, squidpy: bool) -> dict[str, Any]:
    """Everything measured at one size; runs in a fresh process."""
    _quiet()
    import numpy as np
    import torch

    import spatialot as sot

    row: dict[str, Any] = {"n_cells": n_cells, "k": k}
    repeats = 3 if n_cells <= 100_000 else 2

    # warm imports and code paths on a tiny tissue, so that the first timed call is not a cold one
    tiny = sot.datasets.simulated_tissue(1_000, random_state=seed)
    sot.pp.niches(tiny, k=k)

    row["generate_s"], adata = time_call(lambda: sot.datasets.simulated_tissue(n_cells, random_state=seed))
    row["rss_after_generate_bytes"] = rss_bytes()

    # memory of the niches call: first call measured with resident memory, second with tracemalloc
    memory = measure_peak_memory(lambda: sot.pp.niches(adata, k=k))
    row["niches_first_call_s"] = memory.pop("first_call_s")
    row.update({f"niches_{key}": value for key, value in memory.items()})

    row["niches_s"], row["niches_times_s"] = median_time(lambda: sot.pp.niches(adata, k=k), repeats=repeats, warmup=0)
    members = adata.obsp["niche_members"]  # sparse cell × cell ranks: data, indices and indptr
    row["index_shape"] = [n_cells, int(adata.uns["niche"]["params"]["max_size"])]
    row["index_dtype"] = str(members.indices.dtype)
    row["index_bytes"] = int(members.data.nbytes + members.indices.nbytes + members.indptr.nbytes)
    row["index_bytes_per_cell"] = row["index_bytes"] / n_cells
    row["niches_rss_extra_bytes_per_cell"] = row["niches_rss_peak_extra_bytes"] / n_cells

    # gathering batches of niche clouds on the latent representation
    sot.pp.niches(adata, k=k, use_rep="X_latent")
    rng = np.random.default_rng(seed)
    batches = [rng.choice(n_cells, GATHER_BATCH, replace=False) for _ in range(9)]

    def gather(cells):
        if device == "cuda":
            return sot.get.niche_clouds(adata).gather(cells, device="cuda")
        return sot.get.niche_clouds(adata)[cells]

    for cells in batches[:2]:  # warm-up
        gather(cells)
    times = [time_call(lambda c=cells: gather(c), device=device)[0] for cells in batches[2:]]
    row["gather_batch"] = GATHER_BATCH
    row["gather_batch_s"] = float(np.median(times))
    row["gather_niches_per_s"] = GATHER_BATCH / row["gather_batch_s"]
    row["gather_dim"] = int(adata.obsm["X_latent"].shape[1])
    row["gather_device"] = device
    del adata.obsp["niche_members"]

    if squidpy:
        import squidpy as sq

        _quiet()  # spatialdata, imported by squidpy, sets its logger's level on import

        def knn():
            sq.gr.spatial_neighbors_knn(adata, n_neighs=k - 1, copy=True)  # result dropped at once

        knn_tiny = sq.gr.spatial_neighbors_knn(tiny, n_neighs=k - 1, copy=True)  # warm-up
        del knn_tiny
        sq_memory = measure_peak_memory(knn, trace=False)
        row["squidpy_first_call_s"] = sq_memory["first_call_s"]
        row["squidpy_rss_peak_extra_bytes"] = sq_memory["rss_peak_extra_bytes"]
        sq_repeats = 2 if n_cells <= 100_000 else 0
        if sq_repeats:
            median, times = median_time(knn, repeats=sq_repeats, warmup=0)
            all_times = [sq_memory["first_call_s"], *times]
        else:
            all_times = [sq_memory["first_call_s"]]
        row["squidpy_times_s"] = all_times
        row["squidpy_s"] = float(np.median(all_times))
        row["squidpy_over_niches"] = row["squidpy_s"] / row["niches_s"]
    row["torch_num_threads"] = torch.get_num_threads()
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10⁴ and 10⁵ cells only (smoke test, < 1 min)")
    parser.add_argument("--device", default="auto", help="device of the gathered batches: cpu, cuda or auto")
    parser.add_argument("--out", default=None, help="JSON output (default benchmarks/results/niches-<device>.json)")
    parser.add_argument("--sizes", default=None, help="comma-separated numbers of cells (overrides the default)")
    parser.add_argument("--k", type=int, default=16, help="niche size (default 16)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-squidpy", action="store_true", help="skip the squidpy comparison")
    args = parser.parse_args(argv)
    _quiet()

    device = resolve_device(args.device)
    if args.sizes:
        sizes = [int(float(s)) for s in args.sizes.split(",")]
    else:
        sizes = [10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000]
    out = args.out or default_out("niches", device, args.quick)

    context = multiprocessing.get_context("spawn")
    rows = []
    start = time.perf_counter()
    for n_cells in sizes:
        print(f"measuring {n_cells:,} cells ...", file=sys.stderr, flush=True)
        with context.Pool(1) as pool:
            rows.append(pool.apply(measure_size, (n_cells, args.k, device, args.seed, not args.no_squidpy)))

    table_rows = [
        {
            **row,
            "niches_s_txt": f"{row['niches_s']:.3f}",
            "mem_txt": format_bytes(row["niches_rss_peak_extra_bytes"]),
            "mem_per_cell_txt": f"{row['niches_rss_extra_bytes_per_cell']:.0f}",
            "traced_txt": format_bytes(row["niches_tracemalloc_peak_bytes"]),
            "index_txt": format_bytes(row["index_bytes"]),
            "index_per_cell_txt": f"{row['index_bytes_per_cell']:.0f}",
            "gen_txt": f"{row['generate_s']:.2f}",
            "gather_txt": f"{row['gather_niches_per_s']:,.0f}",
            "sq_txt": f"{row['squidpy_s']:.3f}" if "squidpy_s" in row else "-",
            "sq_mem_txt": format_bytes(row.get("squidpy_rss_peak_extra_bytes")),
            "ratio_txt": f"{row['squidpy_over_niches']:.1f}x" if "squidpy_over_niches" in row else "-",
        }
        for row in rows
    ]
    table = print_table(
        table_rows,
        [
            ("n_cells", "cells"),
            ("k", "k"),
            ("gen_txt", "generate s"),
            ("niches_s_txt", "niches s"),
            ("mem_txt", "peak extra RSS"),
            ("mem_per_cell_txt", "B/cell"),
            ("traced_txt", "tracemalloc peak"),
            ("index_txt", "index"),
            ("index_per_cell_txt", "index B/cell"),
            ("gather_txt", "gather niches/s"),
            ("sq_txt", "squidpy knn s"),
            ("sq_mem_txt", "squidpy peak RSS"),
            ("ratio_txt", "squidpy/niches"),
        ],
        title=f"sot.pp.niches(adata, k={args.k}) on simulated_tissue(n); gather = niche_clouds(adata)[1024 cells] "
        f"on X_latent ({device}); squidpy = spatial_neighbors_knn(n_neighs={args.k - 1}, copy=True)",
    )

    target_rows = [row for row in rows if row["n_cells"] == TARGET_CELLS]
    targets: dict[str, Any] = {
        "description": f"{TARGET_CELLS:,} cells, k=16: niches under {TARGET_SECONDS:.0f} s, memory O(n·k), on 2 cores",
    }
    if target_rows:
        row = target_rows[0]
        targets["niches_s"] = row["niches_s"]
        targets["time_met"] = row["niches_s"] < TARGET_SECONDS
        targets["peak_extra_bytes_per_cell_over_k"] = row["niches_rss_extra_bytes_per_cell"] / row["k"]
    payload = {
        "benchmark": "niches",
        "machine": machine_info(device),
        "params": {
            "sizes": sizes,
            "k": args.k,
            "seed": args.seed,
            "quick": args.quick,
            "dataset": "sot.datasets.simulated_tissue(n_cells, random_state=seed)",
            "niches_call": f"sot.pp.niches(adata, k={args.k})",
            "niches_repeats": "median of 3 for n <= 1e5, of 2 above; after a warm-up on 1,000 cells and "
            "the memory-measurement calls",
            "memory_method": "each size in a fresh spawned process; rss_peak_extra = VmHWM (reset through "
            "/proc/self/clear_refs) during the first niches call minus VmRSS before it; tracemalloc_peak = "
            "peak of traced Python/numpy allocations during a second call",
            "gather_call": "sot.get.niche_clouds(adata)[cells] (gather(cells, device='cuda') on cuda) after "
            f"sot.pp.niches(adata, k={args.k}, use_rep='X_latent'); median of 7 random batches of {GATHER_BATCH} "
            "cells after 2 warm-up batches",
            "squidpy_call": f"squidpy.gr.spatial_neighbors_knn(adata, n_neighs={args.k - 1}, copy=True); "
            "median of 3 runs for n <= 1e5, 1 run above",
        },
        "targets": targets,
        "rows": rows,
        "table": table,
        "total_s": time.perf_counter() - start,
    }
    path = write_json(out, payload)
    print(f"\nwrote {path}")
    if target_rows:
        verdict = "met" if targets["time_met"] else "NOT met"
        print(f"target ({targets['description']}): {verdict}, {targets['niches_s']:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
