"""Benchmark at scale: 10⁵–10⁷ cells niched, embedded and mapped from a backed h5ad, with bounded memory.

Data: a simulated tissue built cheaply in vectorised numpy (``make_tissue``: cells uniform in a
square at one per 100 µm², square regions of 300 µm each of one of 5 niche types, 8 cell
types drawn from each niche type's composition, an 8-D feature per cell = its cell type's
centroid + unit noise), written to ``<tmp>/tissue-<n>.h5ad`` (features in ``.X``, dense
float32; coordinates in ``.obsm['spatial']``) by a separate process and read back with
``anndata.read_h5ad(path, backed='r')``: the features stay on disk and are read a stretch of
niches at a time. ``sot.datasets.simulated_tissue`` is not used: it takes minutes at 10⁷.

Metrics, per size, each stage in the same fresh process (resident high-water mark reset
through ``/proc/self/clear_refs`` before each stage; ``peak_rss`` is the absolute mark during
the stage, ``process_peak_rss`` the largest over the run):

- ``niches``: ``sot.pp.niches(adata, k=8)`` (k-NN niches of 8 cells) — seconds, peak RSS.
- ``wormhole``: ``sot.tl.wormhole(adata, n_steps=1000)`` (default model: 128 components,
  batches of 16 niches, Sinkhorn divergence) — training seconds, embedding seconds and
  niches/s (``Wormhole.encode`` timed inside the call), peak RSS.
- ``asot``: ``sot.tl.asot(adata, n_anchors=64)`` (the default ASOT-ML: k-means anchors on
  at most 10⁶ cells, codes and cost trained on 2,048 pairs against exact OT, then the
  streamed transform) — fit seconds, transform seconds and niches/s, peak RSS.
- ``hotet``: ``sot.tl.hotet(adata, n_steps=300, n_anchors=16)`` — training seconds, map
  seconds (``HOTET.embed``: the inverse map of 16 reference points, 128 numbers per niche)
  and niches/s, peak RSS. 16 rather than the default 64 anchors keeps the result the size of
  Wormhole's (64 anchors would be 2 KiB per niche: 2 GiB at 10⁶, 20 GiB at 10⁷).
- ``steps``: seconds per Wormhole training step against the batch size (8, 16, 32, 64): the
  median time between the starts of steps 3 to 13 of a fit, on one process with ``--threads``
  threads, then on each number of processes of ``--processes`` above 1 under
  ``torch.distributed.run`` (DDP, gloo on CPU; ``max(1, threads // N)`` threads per process),
  the same clouds per step split between the processes (each draws ``batch / N``, so each step
  compares ``N`` times fewer pairs: DDP averages gradients, it does not pair clouds across
  processes). The clouds are the first 20,000 niches, held in memory.
- ``padding`` (smallest size only): Wormhole encoding of the first 20,000 radius niches
  (``radius=25``: sizes vary) with and without the within-stretch sort by size that pads each batch only to its own
  largest niche — niches/s and the padded slots computed.

Targets (2 CPU cores): 10⁶ cells end to end (niches + Wormhole trained 1,000 steps + every
niche embedded) in under 5 minutes with peak memory under 3 GiB; 10⁷ cells niched and embedded
from a backed h5ad in under 30 minutes with peak memory under 8 GiB. The machine's load average
is recorded at the start and end of every stage (the machine may be shared).

Run ``python benchmarks/scale.py [--sizes 1e5,1e6] [--device cpu|cuda|auto] [--threads 1]
[--stages niches,wormhole,asot,hotet,steps,padding] [--out PATH]``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

# _common, imported first, keeps benchmarks/ot.py from shadowing POT (`import ot`)
from _common import (
    RESULTS,
    format_bytes,
    machine_info,
    peak_rss_bytes,
    print_table,
    reset_peak_rss,
    resolve_device,
    rss_bytes,
    stamp_steps,
    write_json,
)

K = 8
DIM = 8
WORMHOLE_STEPS = 1000
HOTET_STEPS = 300
HOTET_ANCHORS = 16
ASOT_ANCHORS = 64
STEP_BATCHES = (8, 16, 32, 64)
STEPS_TIMED = 10
STEP_NICHES = 20_000
PADDING_NICHES = 20_000
STAGES = ("niches", "wormhole", "asot", "hotet", "steps", "padding")
TARGETS = {
    1_000_000: {"seconds": 300.0, "peak_bytes": 3 * 2**30, "what": "niches + Wormhole 1,000 steps + embedding"},
    10_000_000: {"seconds": 1800.0, "peak_bytes": 8 * 2**30, "what": "niches + Wormhole 1,000 steps + embedding"},
}


# --------------------------------------------------------------------------- data


def make_tissue(n_cells: int, seed: int, path: Path, block: int = 1_000_000) -> dict[str, Any]:
    """Write a simulated tissue of ``n_cells`` to ``path`` (see the module docstring); returns its description."""
    import anndata as ad
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    n_types, n_cell_types, region = 5, 8, 300.0
    side = 10.0 * np.sqrt(n_cells)
    n_regions = int(np.ceil(side / region))
    region_type = rng.integers(0, n_types, size=(n_regions, n_regions))
    compositions = rng.dirichlet(np.full(n_cell_types, 0.7), size=n_types)
    cumulative = np.cumsum(compositions, axis=1)
    centroids = (3.0 * rng.normal(size=(n_cell_types, DIM))).astype(np.float32)
    coordinates = np.empty((n_cells, 2), dtype=np.float64)
    features = np.empty((n_cells, DIM), dtype=np.float32)
    niche_type = np.empty(n_cells, dtype=np.int8)
    for start in range(0, n_cells, block):
        stop = min(start + block, n_cells)
        xy = rng.uniform(0.0, side, size=(stop - start, 2))
        cell_region = np.minimum((xy // region).astype(np.int64), n_regions - 1)
        types = region_type[cell_region[:, 0], cell_region[:, 1]]
        draws = rng.uniform(size=stop - start)
        cell_types = np.minimum((draws[:, None] > cumulative[types]).sum(1), n_cell_types - 1)
        coordinates[start:stop] = xy
        features[start:stop] = centroids[cell_types] + rng.normal(size=(stop - start, DIM)).astype(np.float32)
        niche_type[start:stop] = types
    obs = pd.DataFrame(
        {"niche_type": pd.Categorical.from_codes(niche_type, [f"niche {i}" for i in range(n_types)])},
        index=pd.RangeIndex(n_cells).astype(str),
    )
    adata = ad.AnnData(features, obs=obs, obsm={"spatial": coordinates})
    adata.write_h5ad(path)
    return {
        "n_cells": n_cells,
        "side_um": side,
        "n_regions": n_regions**2,
        "dim": DIM,
        "bytes_on_disk": path.stat().st_size,
    }


# --------------------------------------------------------------------------- measuring


def _load() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


class Stage:
    """Times a stage and records its resident high-water mark and the load average around it."""

    def __init__(self, row: dict[str, Any], name: str):
        self.row, self.name = row, name

    def __enter__(self) -> Stage:
        import gc

        gc.collect()
        self.reset = reset_peak_rss()
        self.rss_before = rss_bytes()
        self.load_before = _load()
        self.cpu = time.process_time()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        seconds = time.perf_counter() - self.start
        peak = peak_rss_bytes()
        self.row[f"{self.name}_s"] = seconds
        self.row[f"{self.name}_cpu_s"] = time.process_time() - self.cpu  # CPU time of this process
        self.row[f"{self.name}_peak_rss_bytes"] = peak
        self.row[f"{self.name}_rss_before_bytes"] = self.rss_before
        self.row[f"{self.name}_load"] = [self.load_before, _load()]
        self.row["process_peak_rss_bytes"] = max(self.row.get("process_peak_rss_bytes", 0), peak)
        self.row["peak_rss_reset"] = self.reset
        print(f"  {self.name}: {seconds:.1f} s, peak RSS {format_bytes(peak)}", file=sys.stderr, flush=True)


class _Timed:
    """Wraps a model method so that the seconds of its calls are recorded, e.g. ``encode`` inside ``tl.wormhole``."""

    def __init__(self, cls: type, name: str, device: str):
        self.cls, self.name, self.device = cls, name, device
        self.seconds: list[float] = []

    def __enter__(self) -> _Timed:
        from _common import synchronize

        original = getattr(self.cls, self.name)
        self.original = original
        timings = self.seconds

        def timed(model, *args, **kwargs):
            synchronize(self.device)
            start = time.perf_counter()
            result = original(model, *args, **kwargs)
            synchronize(self.device)
            timings.append(time.perf_counter() - start)
            return result

        setattr(self.cls, self.name, timed)
        return self

    def __exit__(self, *exc) -> None:
        setattr(self.cls, self.name, self.original)


def step_seconds(family, batch_size: int, device: str) -> float:
    """Seconds per Wormhole training step: the median time between the starts of consecutive steps.

    Steps are stamped as they start (:func:`_common.stamp_steps`), so the calibration before
    training and the first steps (warm caches) are left out, and the median ignores a step that
    another job on the machine slowed. Under ``torchrun`` every process runs this.
    """
    import numpy as np
    import torch

    from spatialot.models import Wormhole

    torch.manual_seed(0)
    model = Wormhole(family.dim)
    stamps = stamp_steps(model)
    model.fit(family, n_steps=3 + STEPS_TIMED, batch_size=batch_size, device=device, progress=False)
    return float(np.median(np.diff(stamps[2:])))


def ddp_worker(args) -> None:
    """One process of ``torchrun``: time the steps of every batch size, rank 0 writes ``args.ddp_out``."""
    import numpy as np
    import torch
    from torch import distributed

    from spatialot.ot import PointClouds

    torch.set_num_threads(args.threads)
    data = np.load(args.ddp_worker)
    family = PointClouds.from_padded(data["points"], data["mask"])
    results = []
    for batch_size in [int(b) for b in args.ddp_batches.split(",")]:
        seconds = step_seconds(family, batch_size, args.device)
        results.append({"batch_per_process": batch_size, "step_s": seconds, "load": _load()})
    if not distributed.is_initialized() or distributed.get_rank() == 0:
        Path(args.ddp_out).write_text(json.dumps(results))


def time_processes(family, processes: int, threads: int, device: str) -> list[dict[str, Any]]:
    """Step times of ``processes`` DDP processes under ``torch.distributed.run``, one row per total batch size."""
    import numpy as np

    with tempfile.TemporaryDirectory() as folder:
        data, out = Path(folder) / "clouds.npz", Path(folder) / "steps.json"
        np.savez(data, points=family.points.numpy(), mask=family.mask.numpy())
        per_process = [max(2, batch // processes) for batch in STEP_BATCHES]
        per_thread = max(1, threads // processes)
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
        command += [__file__, "--ddp-worker", str(data), "--ddp-out", str(out), "--device", device]
        command += ["--threads", str(per_thread), "--ddp-batches", ",".join(map(str, per_process))]
        environment = {**os.environ, "OMP_NUM_THREADS": str(per_thread)}
        subprocess.run(command, check=True, env=environment, stdout=subprocess.DEVNULL)
        timings = json.loads(out.read_text())
    return [
        {"batch_size": batch, "processes": processes, "threads_per_process": per_thread, **timing}
        for batch, timing in zip(STEP_BATCHES, timings, strict=True)
    ]


def measure_size(
    n_cells: int,
    path: str,
    device: str,
    threads: int,
    stages: list[str],
    seed: int,
    budgets: dict[str, int],
    processes: tuple[int, ...] = (1,),
) -> dict[str, Any]:
    """Every stage at one size, in a fresh process, from the backed h5ad at ``path``."""
    warnings.filterwarnings("ignore")
    import anndata as ad
    import numpy as np
    import torch

    import spatialot as sot
    from spatialot.models import HOTET, Wormhole
    from spatialot.models._batches import map_batches
    from spatialot.ot import IndexedClouds

    torch.set_num_threads(threads)
    sot.settings.n_threads = threads
    sot.settings.progress = False
    row: dict[str, Any] = {"n_cells": n_cells, "threads": threads, "device": device, "load_start": _load()}

    # warm code paths on a tiny tissue, so that no stage pays for first calls
    tiny = sot.datasets.simulated_tissue(500, random_state=seed)
    sot.pp.niches(tiny, k=K, use_rep="X_latent")
    sot.tl.wormhole(tiny, n_steps=3, device=device, progress=False)
    del tiny

    with Stage(row, "open"):
        adata = ad.read_h5ad(path, backed="r")
    row["backed"] = bool(adata.isbacked)

    if "niches" in stages or any(s in stages for s in ("wormhole", "asot", "hotet", "steps")):
        with Stage(row, "niches"):
            sot.pp.niches(adata, k=K)
        row["index_bytes"] = int(
            sum(
                a.nbytes
                for a in (
                    adata.obsp["niche_members"].data,
                    adata.obsp["niche_members"].indices,
                    adata.obsp["niche_members"].indptr,
                )
            )
        )

    if "wormhole" in stages:
        with Stage(row, "wormhole"), _Timed(Wormhole, "encode", device) as encode:
            model = sot.tl.wormhole(
                adata, n_steps=budgets["wormhole"], device=device, random_state=seed, progress=False
            )
        row["wormhole_encode_s"] = encode.seconds[0]
        row["wormhole_train_s"] = row["wormhole_s"] - encode.seconds[0]
        row["wormhole_niches_per_s"] = n_cells / encode.seconds[0]
        row["wormhole_embedding_bytes"] = int(adata.obsm["X_wormhole"].nbytes)
        row["wormhole_loss_last100"] = float(np.mean(model.history[-100:]))
        row["end_to_end_s"] = row["niches_s"] + row["wormhole_s"]
        del adata.obsm["X_wormhole"]

    if "asot" in stages:
        from spatialot.models import ASOT

        with Stage(row, "asot"), _Timed(ASOT, "transform", device) as transform:
            sot.tl.asot(adata, n_anchors=ASOT_ANCHORS, device=device, random_state=seed, progress=False)
        # the last call is the transform of every niche; ASOT-ML's fit transforms a sample before it
        row["asot_transform_s"] = transform.seconds[-1]
        row["asot_fit_s"] = row["asot_s"] - transform.seconds[-1]
        row["asot_niches_per_s"] = n_cells / transform.seconds[-1]
        del adata.obsm["X_asot"]

    if "hotet" in stages:
        with Stage(row, "hotet"), _Timed(HOTET, "embed", device) as embed:
            sot.tl.hotet(
                adata,
                n_steps=budgets["hotet"],
                n_anchors=HOTET_ANCHORS,
                device=device,
                random_state=seed,
                progress=False,
            )
        row["hotet_embed_s"] = embed.seconds[0]
        row["hotet_train_s"] = row["hotet_s"] - embed.seconds[0]
        row["hotet_niches_per_s"] = n_cells / embed.seconds[0]
        del adata.obsm["X_hotet"]

    if "steps" in stages:
        family = sot.get.niche_clouds(adata)[np.arange(min(STEP_NICHES, adata.n_obs))]
        row["steps"] = []
        for batch_size in STEP_BATCHES:
            seconds = step_seconds(family, batch_size, device)
            row["steps"].append(
                {"batch_size": batch_size, "processes": 1, "threads_per_process": threads, "step_s": seconds}
                | {"load": _load()}
            )
        for count in processes:
            if count > 1:
                row["steps"] += time_processes(family, count, threads, device)

    if "padding" in stages:
        sot.pp.niches(adata, radius=25.0, key_added="radius")
        full = sot.get.niche_clouds(adata, niche_key="radius")
        first = slice(0, min(PADDING_NICHES, len(full)))
        family = IndexedClouds(full.features, full.indices[first], full.mask[first])
        sizes = family.sizes
        row["padding_sizes"] = {"min": int(sizes.min()), "mean": float(sizes.mean()), "max": int(sizes.max())}
        model = Wormhole(family.dim).fit(family, n_steps=3, batch_size=16, device=device, progress=False)
        model.eval()
        slots = []

        def encode(batch):
            slots.append(batch.points.shape[0] * batch.points.shape[1])
            return model._encode_scaled(batch)

        for trim in (False, True):
            slots.clear()
            start = time.perf_counter()
            map_batches(encode, family, batch_size=1024, device=torch.device(device), trim=trim)
            seconds = time.perf_counter() - start
            key = "trimmed" if trim else "padded"
            row[f"padding_{key}_s"] = seconds
            row[f"padding_{key}_niches_per_s"] = len(family) / seconds
            row[f"padding_{key}_slots"] = int(sum(slots))
        row["padding_real_slots"] = int(sizes.sum())
        row["padding_speedup"] = row["padding_padded_s"] / row["padding_trimmed_s"]
    row["load_end"] = _load()
    return row


def _generate(n_cells: int, seed: int, path: Path) -> dict[str, Any]:
    start = time.perf_counter()
    info = make_tissue(n_cells, seed, path)
    return {**info, "generate_s": time.perf_counter() - start}


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1e5,1e6", help="comma-separated numbers of cells (default 1e5,1e6)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (default 1: on a shared machine 2 threads contend)"
    )
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    parser.add_argument("--padding-at", type=float, default=None, help="size of the padding stage (default: smallest)")
    parser.add_argument("--workdir", default=None, help="where the h5ad files go (default: a temporary folder)")
    parser.add_argument("--wormhole-steps", type=int, default=WORMHOLE_STEPS, help="Wormhole training budget")
    parser.add_argument("--hotet-steps", type=int, default=HOTET_STEPS, help="HOTET training budget")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="JSON output (default benchmarks/results/scale-<device>.json)")
    parser.add_argument("--append", action="store_true", help="keep the rows of other sizes already in --out")
    parser.add_argument("--processes", default="1,2", help="numbers of DDP processes of the steps stage (default 1,2)")
    parser.add_argument("--ddp-worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--ddp-out", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--ddp-batches", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.ddp_worker:
        ddp_worker(args)
        return 0

    device = resolve_device(args.device)
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    stages = [s for s in args.stages.split(",") if s]
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise SystemExit(f"unknown --stages {sorted(unknown)}; choose from {STAGES}")
    padding_at = int(args.padding_at) if args.padding_at else min(sizes)
    out = Path(args.out) if args.out else RESULTS / f"scale-{device}.json"
    context = multiprocessing.get_context("spawn")
    kept = []
    if args.append and out.exists():
        kept = [row for row in json.loads(out.read_text())["rows"] if row["n_cells"] not in sizes]
    rows = list(kept)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=args.workdir) as folder:
        for n_cells in sizes:
            path = Path(folder) / f"tissue-{n_cells}.h5ad"
            print(f"generating {n_cells:,} cells ...", file=sys.stderr, flush=True)
            with context.Pool(1) as pool:
                data = pool.apply(_generate, (n_cells, args.seed, path))
            print(f"measuring {n_cells:,} cells (load {_load()}) ...", file=sys.stderr, flush=True)
            size_stages = [s for s in stages if s != "padding" or n_cells == padding_at]
            with context.Pool(1) as pool:
                budgets = {"wormhole": args.wormhole_steps, "hotet": args.hotet_steps}
                processes = tuple(int(p) for p in args.processes.split(","))
                row = pool.apply(
                    measure_size,
                    (n_cells, str(path), device, args.threads, size_stages, args.seed, budgets, processes),
                )
            rows.append({**row, "data": data})
            rows.sort(key=lambda row: row["n_cells"])
            path.unlink()
            write_json(out, _payload(args, device, sizes, stages, rows, start))  # after every size

    table = _table(rows, device, args.threads, args.wormhole_steps)
    payload = _payload(args, device, sizes, stages, rows, start, table)
    path = write_json(out, payload)
    print(f"\nwrote {path}")
    for verdict in payload["targets"]:
        print(verdict["summary"])
    return 0


def _targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    verdicts = []
    for row in rows:
        target = TARGETS.get(row["n_cells"])
        if target is None or "end_to_end_s" not in row:
            continue
        seconds, peak = row["end_to_end_s"], row["process_peak_rss_bytes"]
        met = seconds < target["seconds"] and peak < target["peak_bytes"]
        verdicts.append(
            {
                "n_cells": row["n_cells"],
                "what": target["what"],
                "seconds": seconds,
                "target_seconds": target["seconds"],
                "peak_rss_bytes": peak,
                "target_peak_bytes": target["peak_bytes"],
                "met": met,
                "load": row["load_start"],
                "summary": f"{row['n_cells']:,} cells ({target['what']}, backed h5ad): {seconds:.0f} s "
                f"(target < {target['seconds']:.0f} s), peak RSS {format_bytes(peak)} (target < "
                f"{format_bytes(target['peak_bytes'])}): {'met' if met else 'NOT met'}; load at start "
                f"{row['load_start']}",
            }
        )
    return verdicts


def _payload(args, device, sizes, stages, rows, start, table=None) -> dict[str, Any]:
    return {
        "benchmark": "scale",
        "machine": machine_info(device),
        "params": {
            "sizes": sorted({row["n_cells"] for row in rows} | set(sizes)),
            "stages": stages,
            "threads": args.threads,
            "seed": args.seed,
            "k": K,
            "dim": DIM,
            "dataset": "make_tissue(n, seed) in benchmarks/scale.py, written to h5ad and read with backed='r'",
            "wormhole": f"sot.tl.wormhole(adata, n_steps={args.wormhole_steps}) (defaults otherwise)",
            "asot": f"sot.tl.asot(adata, n_anchors={ASOT_ANCHORS}) (the default method, ASOT-ML)",
            "hotet": f"sot.tl.hotet(adata, n_steps={args.hotet_steps}, n_anchors={HOTET_ANCHORS})",
            "steps": f"(Wormhole.fit of {2 + STEPS_TIMED} steps - of 2 steps) / {STEPS_TIMED}, "
            f"batch sizes {list(STEP_BATCHES)}",
            "memory": "VmHWM after resetting it through /proc/self/clear_refs at the start of each stage "
            "(absolute, not extra); process_peak_rss is the largest over the stages",
        },
        "targets": _targets(rows),
        "rows": rows,
        "table": table,
        "total_s": time.perf_counter() - start,
    }


def _table(rows: list[dict[str, Any]], device: str, threads: int, wormhole_steps: int) -> str:
    def rate(value):
        return f"{value:,.0f}" if value is not None else "-"

    def seconds(value):
        return f"{value:.1f}" if value is not None else "-"

    lines = []
    for row in rows:
        lines.append(
            {
                "cells": f"{row['n_cells']:,}",
                "niches": seconds(row.get("niches_s")),
                "niches_mem": format_bytes(row.get("niches_peak_rss_bytes")),
                "wh_train": seconds(row.get("wormhole_train_s")),
                "wh_embed": seconds(row.get("wormhole_encode_s")),
                "wh_rate": rate(row.get("wormhole_niches_per_s")),
                "wh_mem": format_bytes(row.get("wormhole_peak_rss_bytes")),
                "e2e": seconds(row.get("end_to_end_s")),
                "asot_fit": seconds(row.get("asot_fit_s")),
                "asot_rate": rate(row.get("asot_niches_per_s")),
                "asot_mem": format_bytes(row.get("asot_peak_rss_bytes")),
                "hotet_train": seconds(row.get("hotet_train_s")),
                "hotet_rate": rate(row.get("hotet_niches_per_s")),
                "hotet_mem": format_bytes(row.get("hotet_peak_rss_bytes")),
                "peak": format_bytes(row.get("process_peak_rss_bytes")),
                "load": " ".join(str(v) for v in row["load_start"]),
            }
        )
    table = print_table(
        lines,
        [
            ("cells", "cells"),
            ("niches", "niches s"),
            ("niches_mem", "niches RSS"),
            ("wh_train", "WH train s"),
            ("wh_embed", "WH embed s"),
            ("wh_rate", "WH niches/s"),
            ("wh_mem", "WH RSS"),
            ("e2e", "end to end s"),
            ("asot_fit", "ASOT fit s"),
            ("asot_rate", "ASOT niches/s"),
            ("asot_mem", "ASOT RSS"),
            ("hotet_train", "HOTET train s"),
            ("hotet_rate", "HOTET niches/s"),
            ("hotet_mem", "HOTET RSS"),
            ("peak", "peak RSS"),
            ("load", "load at start", "<"),
        ],
        title=f"backed h5ad, k={K}, {DIM}-D features, {device}, {threads} threads; RSS = stage high-water mark; "
        f"WH = tl.wormhole {wormhole_steps} steps",
    )
    step_rows = [
        {"cells": f"{row['n_cells']:,}", **step, "step_ms": f"{1000 * step['step_s']:.1f}"}
        for row in rows
        for step in row.get("steps", [])
    ]
    if step_rows:
        table += "\n\n" + print_table(
            step_rows,
            [
                ("cells", "cells"),
                ("batch_size", "batch"),
                ("processes", "processes"),
                ("threads_per_process", "threads each"),
                ("step_ms", "ms/step"),
            ],
            title="Wormhole training step against batch size and processes (DDP: the batch split between them)",
        )
    padding_rows = [row for row in rows if "padding_speedup" in row]
    if padding_rows:
        table += "\n\n" + print_table(
            [
                {
                    "cells": f"{row['n_cells']:,}",
                    "sizes": f"{row['padding_sizes']['min']}-{row['padding_sizes']['max']} "
                    f"(mean {row['padding_sizes']['mean']:.1f})",
                    "padded": rate(row["padding_padded_niches_per_s"]),
                    "trimmed": rate(row["padding_trimmed_niches_per_s"]),
                    "slots": f"{row['padding_padded_slots']:,} / {row['padding_trimmed_slots']:,} / "
                    f"{row['padding_real_slots']:,}",
                    "speedup": f"{row['padding_speedup']:.2f}x",
                }
                for row in padding_rows
            ],
            [
                ("cells", "cells"),
                ("sizes", "niche sizes", "<"),
                ("padded", "padded niches/s"),
                ("trimmed", "sorted+trimmed niches/s"),
                ("slots", "slots padded / trimmed / real"),
                ("speedup", "speed-up"),
            ],
            title=f"Wormhole encoding of {PADDING_NICHES:,} radius niches (radius 25 µm): padding to the niche "
            "index's width vs sorting each stretch by size and padding each batch to its own largest niche",
        )
    return table


if __name__ == "__main__":
    sys.exit(main())
