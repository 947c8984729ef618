"""Benchmark of Anchor Space OT (ASOT): all niche-to-niche OT distances at once, and niche clustering.

Data: (1) BDTNP, ``sot.datasets.bdtnp()`` (3,039 cells × 84 genes), niches
``sot.pp.niches(adata, k=8)`` on the 84 genes of ``.X``; (2) ``sot.datasets.simulated_tissue(10_000)``,
niches ``sot.pp.niches(adata, k=8, use_rep='X_latent')`` (the 8-D latent space the simulation
draws expression from).

Speed: for each ASOT variant (ASOT-k = k-means anchors, ASOT-ML = learnt codes and cost, ASOT-DL =
sparse codes on a learnt dictionary; anchor counts in the table; the row of ``sot.tl.asot``'s
defaults is marked), the time and peak memory of the full all-pairs distance matrix
(``model.pairwise_distances``: anchor Sinkhorn, batched, upper triangle), plus fit and transform
time; against exact W2² (POT network simplex through ``sot.ot.paired_distances(method='exact')``,
timed on the sample pairs and extrapolated to all pairs) and batched Sinkhorn on the raw clouds
(``sot.ot.paired_distances(method='sinkhorn')``, same extrapolation). Per-pair speed-ups compare
ASOT's all-pairs time per pair with exact's time per pair.

Quality: relative RMSE (sqrt(mean (d - w)^2) / sqrt(mean w^2)), bias and Pearson r of every method
against exact W2² ``w`` on ``--n-pairs`` random pairs of distinct niches (never used for training:
ASOT-ML trains on pairs drawn with another seed). Every value is W2² (squared-Euclidean cost).

Clustering (simulated tissue): adjusted Rand index against the known ``obs['niche_type']`` of
leiden on the ASOT neighbour graph (``sot.tl.asot_neighbors``, 15 neighbours) and k-means on the
ASOT anchor weights, against the same on the mean niche expression (log1p of normalised counts,
PCA 30) and on the mean niche latent features (15-NN Euclidean graphs with the same UMAP
connectivities); leiden at several resolutions.

Run ``python benchmarks/asot.py [--quick] [--out PATH] [--threads N]``; CPU only. The clustering
alone on niches of another size: ``python benchmarks/asot.py --clustering-only 32 --variants
kmeans:32,ml:16`` (writes ``results/asot-clustering-k32-cpu.json``).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from _common import default_out, machine_info, measure_peak_memory, print_table, time_call, write_json

warnings.filterwarnings("ignore", category=FutureWarning)

import numpy as np  # noqa: E402
import scanpy as sc  # noqa: E402
import torch  # noqa: E402
from sklearn.cluster import KMeans  # noqa: E402
from sklearn.metrics import adjusted_rand_score  # noqa: E402

import spatialot as sot  # noqa: E402
from spatialot.models import ASOT  # noqa: E402

RESOLUTIONS = (0.1, 0.3, 1.0)
LABELS = {"kmeans": "k", "ml": "ML", "dl": "DL"}
_DEFAULTS = inspect.signature(sot.tl.asot).parameters
DEFAULT = (_DEFAULTS["method"].default, _DEFAULTS["n_anchors"].default)
"""The method and anchor count of ``sot.tl.asot``'s defaults."""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def accuracy(values: np.ndarray, exact: np.ndarray) -> dict[str, float]:
    return {
        "rel_rmse": float(np.sqrt(np.mean((values - exact) ** 2) / np.mean(exact**2))),
        "bias": float(np.mean(values - exact) / np.mean(exact)),
        "pearson": float(np.corrcoef(values, exact)[0, 1]),
    }


def load(name: str, n_cells: int):
    if name == "bdtnp":
        adata = sot.datasets.bdtnp()
        sot.pp.niches(adata, k=8)
        return adata, "sot.datasets.bdtnp(); sot.pp.niches(adata, k=8) on the 84 genes of .X"
    adata = sot.datasets.simulated_tissue(n_cells, random_state=0)
    sot.pp.niches(adata, k=8, use_rep="X_latent")
    return (
        adata,
        f"sot.datasets.simulated_tissue({n_cells}, random_state=0); sot.pp.niches(adata, k=8, use_rep='X_latent')",
    )


def sample_pairs(n: int, n_pairs: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    first = rng.integers(0, n, n_pairs)
    return first, (first + rng.integers(1, n, n_pairs)) % n


def bench_baselines(family, first, second, n_all: int) -> tuple[list[dict[str, Any]], np.ndarray]:
    x, y = family[first], family[second]
    sot.ot.paired_distances(x[:8], y[:8], method="exact")  # warm-up
    exact_s, exact = time_call(lambda: sot.ot.paired_distances(x, y, method="exact"))
    per_pair = exact_s / len(first)
    rows = [
        {
            "method": "exact (POT)",
            "anchors": "-",
            "per_pair_us": per_pair * 1e6,
            "all_pairs_s": per_pair * n_all,
            "all_pairs_measured": False,
            "rel_rmse": 0.0,
            "bias": 0.0,
            "pearson": 1.0,
        }
    ]
    # epsilon relative to the mean squared distance between points of paired clouds, as in benchmarks/ot.py
    squared = ((x.points[:, :, None, :] - y.points[:, None, :, :]) ** 2).sum(-1)
    mean_squared = float((squared * x.weights[:, :, None] * y.weights[:, None, :]).sum((1, 2)).mean())
    for relative in (0.01, 0.1):
        epsilon = relative * mean_squared
        run = lambda e=epsilon: sot.ot.paired_distances(x, y, method="sinkhorn", epsilon=e)  # noqa: E731
        run()
        seconds, values = time_call(run)
        rows.append(
            {
                "method": f"sinkhorn raw clouds (eps {relative} x mean sq. dist)",
                "anchors": "-",
                "epsilon": epsilon,
                "per_pair_us": seconds / len(first) * 1e6,
                "all_pairs_s": seconds / len(first) * n_all,
                "all_pairs_measured": False,
                **accuracy(values, exact),
            }
        )
    return rows, exact


def bench_asot(
    family, method, n_anchors, first, second, exact, *, n_steps, full, seed
) -> tuple[dict, ASOT, np.ndarray]:
    model = ASOT(family.dim, n_anchors, method=method)
    fit_s, _ = time_call(
        lambda: model.fit(family, n_steps=n_steps, random_state=seed + 1, device="cpu", progress=False)
    )
    transform_s, weights = time_call(lambda: model.transform(family))
    model.paired_distances(weights[first[:64]], weights[second[:64]])  # warm-up
    pairs_s, values = time_call(lambda: model.paired_distances(weights[first], weights[second]))
    exact_anchor = model.paired_distances(weights[first[:500]], weights[second[:500]], method="exact")
    n = len(family)
    n_all = n * (n - 1) // 2
    row: dict[str, Any] = {
        "method": f"ASOT-{LABELS[method]}" + (" (tl.asot default)" if (method, n_anchors) == DEFAULT else ""),
        "anchors": n_anchors,
        "n_iter": model.config["n_iter"],
        "epsilon_rel_max_cost": model.config["epsilon"],
        "fit_s": fit_s,
        "transform_s": transform_s,
        "sample_per_pair_us": pairs_s / len(first) * 1e6,
        **accuracy(values, exact),
        "anchor_exact_pearson_500": float(np.corrcoef(exact_anchor, exact[:500])[0, 1]),
        "anchor_exact_rel_rmse_500": accuracy(exact_anchor, exact[:500])["rel_rmse"],
    }
    if method in ("ml", "dl"):
        row |= {"n_steps": n_steps, "final_loss": float(np.mean(model.history[-20:]))}
    if method == "ml":
        row["n_train_pairs"] = 2048
    if full:
        memory = measure_peak_memory(lambda: model.pairwise_distances(weights), trace=False)
        row |= {
            "all_pairs_s": memory["first_call_s"],
            "all_pairs_measured": True,
            "all_pairs_peak_rss_extra_bytes": memory["rss_peak_extra_bytes"],
            "matrix_bytes": n * n * 8,
        }
    else:
        rows = min(n, 500)  # a block of rows against all columns, extrapolated
        seconds, _ = time_call(lambda: model.pairwise_distances(weights[:rows], weights))
        row |= {"all_pairs_s": seconds / (rows * n) * n_all, "all_pairs_measured": False}
    row["per_pair_us"] = row["all_pairs_s"] / n_all * 1e6
    return row, model, weights


def mean_features(adata, family, features: np.ndarray) -> np.ndarray:
    mask = family.mask
    gathered = features[np.where(mask, family.indices, 0)] * mask[..., None]
    return gathered.sum(1) / mask.sum(1, keepdims=True)


def mean_niche_baselines(adata, family) -> dict[str, np.ndarray]:
    """The mean of each niche's normalised expression (log1p, PCA to 30) and of its ``X_latent``."""
    normalised = sc.pp.log1p(sc.pp.normalize_total(adata, target_sum=1e4, copy=True), copy=True)
    expression = np.asarray(normalised.X.toarray() if hasattr(normalised.X, "toarray") else normalised.X)
    baselines = {
        "mean niche expression (log1p, PCA 30)": mean_features(adata, family, expression),
        "mean niche latent (X_latent)": mean_features(adata, family, np.asarray(adata.obsm["X_latent"])),
    }
    return {
        name: sc.pp.pca(features, n_comps=30, random_state=0) if features.shape[1] > 30 else features
        for name, features in baselines.items()
    }


def euclidean_graph(adata, features: np.ndarray, key: str, kernel: str = "umap") -> None:
    """A 15-NN Euclidean graph with connectivities of ``tl.asot_neighbors``' ``kernel`` (scanpy's layout).

    ``sc.pp.neighbors`` is not used: in this environment (scipy sparse arrays) it fails in
    ``_ind_dist_shortcut``; building both graphs with one routine also keeps the comparison fair.
    """
    from sklearn.neighbors import NearestNeighbors

    from spatialot.tl._asot import _graph

    distances, indices = NearestNeighbors(n_neighbors=15).fit(features).kneighbors(features)
    indices[:, 0] = np.arange(len(features))  # duplicates may come before the point itself
    distances[:, 0] = 0.0
    distance_matrix, connectivities = _graph(indices, distances**2, len(features), 15, kernel)
    adata.obsp[f"{key}_distances"], adata.obsp[f"{key}_connectivities"] = distance_matrix, connectivities
    adata.uns[key] = {
        "connectivities_key": f"{key}_connectivities",
        "distances_key": f"{key}_distances",
        "params": {"n_neighbors": 15, "method": "umap"},
    }


def leiden_labels(adata, resolution: float, *, random_state: int = 0, **graph) -> np.ndarray:
    """Leiden clusters (scanpy, igraph flavour, 2 iterations, undirected) of ``adata``'s graph.

    ``graph`` names the graph as ``sc.tl.leiden`` takes it: ``neighbors_key=`` or ``adjacency=``.
    """
    sc.tl.leiden(
        adata,
        resolution=resolution,
        flavor="igraph",
        n_iterations=2,
        directed=False,
        key_added="_leiden",
        random_state=random_state,
        **graph,
    )
    return adata.obs["_leiden"].to_numpy()


def leiden_ari(adata, truth, *, resolutions=RESOLUTIONS, **graph) -> dict[str, float]:
    """ARI against ``truth`` and number of clusters of Leiden at each resolution.

    ``graph`` names the graph as ``sc.tl.leiden`` takes it: ``neighbors_key=`` or ``adjacency=``.
    """
    out = {}
    for resolution in resolutions:
        labels = leiden_labels(adata, resolution, **graph)
        out[f"leiden_{resolution}"] = float(adjusted_rand_score(truth, labels))
        out[f"leiden_{resolution}_n"] = len(np.unique(labels))
    return out


def leiden_at_count(adata, truth, n_clusters: int, *, n_halvings: int = 14, **graph) -> dict[str, float]:
    """ARI of Leiden at the resolution that gives ``n_clusters`` clusters, as k-means is told.

    Bisects the resolution on a log scale between 0.005 and 5 (Leiden's cluster count grows
    with it); when no resolution gives the count exactly, the nearest count found is scored.
    The comparison with k-means is then one of equal information: both are told the count.
    """
    low, high, best = np.log(0.005), np.log(5.0), None
    for _ in range(n_halvings):
        resolution = float(np.exp(0.5 * (low + high)))
        labels = leiden_labels(adata, resolution, **graph)
        count = len(np.unique(labels))
        if best is None or abs(count - n_clusters) < abs(best[1] - n_clusters):
            best = (resolution, count, float(adjusted_rand_score(truth, labels)))
        if count == n_clusters:
            break
        low, high = (np.log(resolution), high) if count < n_clusters else (low, np.log(resolution))
    return {"leiden_at_count": best[2], "leiden_at_count_resolution": best[0], "leiden_at_count_n": best[1]}


def store_asot(adata, key: str, model: ASOT, weights: np.ndarray) -> None:
    """Write a fitted ASOT model's weights and cost into ``adata`` as ``sot.tl.asot`` does (for ``asot_neighbors``)."""
    adata.obsm[f"X_{key}"] = weights
    points, offsets = model.cost_geometry()
    adata.uns[key] = {
        "params": {"n_iter": model.config["n_iter"]},
        "cost": model.cost().double().numpy(),
        "epsilon": model.absolute_epsilon(),
        "cost_anchors": points,
        "cost_offsets": offsets,
    }


def kmeans_ari(features: np.ndarray, truth, n_types: int) -> float:
    labels = KMeans(n_types, n_init=10, random_state=0).fit_predict(features)
    return float(adjusted_rand_score(truth, labels))


def bench_clustering(adata, models: dict[str, tuple[ASOT, np.ndarray]], *, umap: bool) -> list[dict[str, Any]]:
    family = sot.get.niche_clouds(adata)
    truth = adata.obs["niche_type"].to_numpy()
    n_types = len(np.unique(truth))
    rows = []
    for name, (model, weights) in models.items():
        key = f"asot_{name}"
        store_asot(adata, key, model, weights)
        seconds, _ = time_call(
            lambda k=key: sot.tl.asot_neighbors(adata, key=k, n_neighbors=15, key_added=f"{k}_nn", progress=False)
        )
        row = {
            "features": f"{name} graph / weights",
            "graph_s": seconds,
            **leiden_ari(adata, truth, neighbors_key=f"{key}_nn"),
        }
        row["kmeans"] = kmeans_ari(weights, truth, n_types)
        rows.append(row)
        log(f"  clustering {name}: {row}")
    for name, features in mean_niche_baselines(adata, family).items():
        seconds, _ = time_call(lambda f=features: euclidean_graph(adata, f, "mean_nn"))
        row = {"features": name, "graph_s": seconds, **leiden_ari(adata, truth, neighbors_key="mean_nn")}
        row["kmeans"] = kmeans_ari(features, truth, n_types)
        rows.append(row)
        log(f"  clustering {name}: {row}")
    if umap:
        first = next(iter(models))
        try:
            seconds, _ = time_call(lambda: sc.tl.umap(adata, neighbors_key=f"asot_{first}_nn", random_state=0))
            rows[0]["umap_s"] = seconds
        except Exception as error:  # noqa: BLE001 - a failed UMAP must not lose the measurements
            rows[0]["umap_error"] = repr(error)
    return rows


def clustering_only(args) -> int:
    """Niche clustering alone, on niches of another size: fit every variant, build the graphs, score."""
    torch.set_num_threads(args.threads)
    size = args.clustering_only
    adata = sot.datasets.simulated_tissue(args.n_cells, random_state=0)
    sot.pp.niches(adata, k=size, use_rep="X_latent")
    family = sot.get.niche_clouds(adata)
    models = {}
    for method, n_anchors in ((m, int(k)) for m, k in (v.split(":") for v in args.variants.split(","))):
        model = ASOT(family.dim, n_anchors, method=method)
        model.fit(family, n_steps=args.n_steps, random_state=args.seed + 1, device="cpu", progress=False)
        models[f"{method}{n_anchors}"] = (model, model.transform(family))
    rows = bench_clustering(adata, models, umap=False)
    columns = [("features", "features", "<"), ("kmeans", "ARI k-means")]
    columns += [(f"leiden_{r}", f"ARI leiden {r}") for r in RESOLUTIONS]
    columns += [(f"leiden_{r}_n", f"n@{r}") for r in RESOLUTIONS]
    table = print_table(rows, columns, title=f"niche clustering vs obs['niche_type'] (ARI), niches of {size} cells")
    data = (
        f"sot.datasets.simulated_tissue({args.n_cells}, random_state=0); "
        f"sot.pp.niches(adata, k={size}, use_rep='X_latent')"
    )
    payload = {
        "loadavg_end": list(os.getloadavg()),
        "benchmark": "asot-clustering",
        "machine": machine_info("cpu"),
        "params": {"data": data, "variants": args.variants, "n_steps": args.n_steps, "torch_threads": args.threads},
        "clustering": rows,
        "table": table,
    }
    out = args.out or default_out(f"asot-clustering-k{size}", "cpu", False)
    write_json(out, payload)
    print(f"\nwrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2,000 simulated cells, 500 pairs, short training")
    parser.add_argument("--out", default=None, help="JSON output (default benchmarks/results/asot-cpu.json)")
    parser.add_argument("--n-cells", type=int, default=10_000, help="cells of the simulated tissue")
    parser.add_argument("--n-pairs", type=int, default=2000, help="pairs compared with exact OT")
    parser.add_argument(
        "--variants", default="kmeans:32,kmeans:64,ml:16,ml:32,ml:64,dl:32", help="method:anchors, comma-separated"
    )
    parser.add_argument("--n-steps", type=int, default=300, help="ASOT-ML and ASOT-DL training steps")
    parser.add_argument(
        "--full-budget",
        type=float,
        default=2e9,
        help="measure the full matrix when pairs x anchors is at most this; else time 500 rows and extrapolate",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--no-umap", action="store_true", help="skip sc.tl.umap on the ASOT graph")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--datasets", default="bdtnp,simulated", help="which datasets, comma-separated")
    parser.add_argument(
        "--keep-existing", action="store_true", help="keep the other datasets already in the output JSON"
    )
    parser.add_argument(
        "--clustering-only",
        type=int,
        default=None,
        metavar="K",
        help="only the clustering part, on the simulated tissue with niches of K cells (output asot-clustering-k<K>)",
    )
    args = parser.parse_args(argv)
    if args.clustering_only is not None:
        return clustering_only(args)
    torch.set_num_threads(args.threads)
    n_cells = 2000 if args.quick else args.n_cells
    n_pairs = 500 if args.quick else args.n_pairs
    n_steps = 100 if args.quick else args.n_steps
    variants = [(m, int(k)) for m, k in (v.split(":") for v in args.variants.split(","))]
    out = args.out or default_out("asot", "cpu", args.quick)
    start = time.perf_counter()
    params = {
        "quick": args.quick,
        "n_pairs": n_pairs,
        "variants": args.variants,
        "ml_training": f"{n_steps} Adam steps, 2048 training pairs (half random, half near), lr 1e-2, 256 pairs/step",
        "dl_training": f"{n_steps} Adam steps, 256 points/step, lr 1e-2, 20 ISTA layers, dictionary started at k-means",
        "tl_asot_default": f"method={DEFAULT[0]!r}, n_anchors={DEFAULT[1]}",
        "torch_threads": args.threads,
        "cost": "squared Euclidean everywhere: values are W2^2 (the ASOT paper uses the Euclidean cost)",
        "asot_solver": "anchor Sinkhorn, kernel mode, epsilon = 0.04 x max anchor cost, 10 iterations (defaults)",
        "per_pair_us": "ASOT: measured all-pairs time / number of pairs; exact and raw Sinkhorn: time on the sample "
        "pairs / their number (all_pairs_s extrapolated from it)",
        "memory": "all_pairs_peak_rss_extra_bytes: resident-set high-water mark during the all-pairs call minus the "
        "resident set before it, the float64 n x n output (matrix_bytes) included",
    }
    params["loadavg_start"] = list(os.getloadavg())
    payload: dict[str, Any] = {"benchmark": "asot", "machine": machine_info("cpu"), "params": params, "datasets": {}}
    if args.keep_existing and Path(out).exists():
        payload["datasets"] = json.loads(Path(out).read_text())["datasets"]
    for name in args.datasets.split(","):
        adata, description = load(name, n_cells)
        family = sot.get.niche_clouds(adata)
        n = len(family)
        n_all = n * (n - 1) // 2
        first, second = sample_pairs(n, n_pairs, args.seed + 100)
        log(f"{name}: {n} niches, {n_all:,} pairs")
        rows, exact = bench_baselines(family, first, second, n_all)
        exact_per_pair = rows[0]["per_pair_us"]
        models = {}
        for method, n_anchors in variants:
            row, model, weights = bench_asot(
                family,
                method,
                n_anchors,
                first,
                second,
                exact,
                n_steps=n_steps,
                full=n_all * n_anchors <= args.full_budget,
                seed=args.seed,
            )
            models[f"{method}{n_anchors}"] = (model, weights)
            rows.append(row)
            log(f"  {row}")
        for row in rows:
            row["speedup_vs_exact"] = exact_per_pair / row["per_pair_us"]
        entry: dict[str, Any] = {
            "data": description,
            "n_niches": n,
            "n_pairs_all": n_all,
            "rows": rows,
            "loadavg_after": list(os.getloadavg()),  # the machine is shared: timings move with its load
        }
        if name == "simulated":
            entry["clustering"] = bench_clustering(adata, models, umap=not args.no_umap)
        payload["datasets"][name] = entry
        payload["total_s"] = time.perf_counter() - start
        write_json(out, payload)

    tables = []
    for name, entry in payload["datasets"].items():
        table_rows = []
        for row in entry["rows"]:
            text = dict(row)
            text["all_txt"] = f"{row['all_pairs_s']:,.1f}" + ("" if row.get("all_pairs_measured") else " (extrap.)")
            mem = row.get("all_pairs_peak_rss_extra_bytes")
            text["mem_txt"] = f"{mem / 2**20:,.0f} MiB" if mem is not None else "-"
            text["fit_txt"] = f"{row['fit_s']:.1f}" if "fit_s" in row else "-"
            for key, spec in (("rel_rmse", ".3f"), ("bias", "+.3f"), ("pearson", ".4f"), ("speedup_vs_exact", ",.0f")):
                text[key] = format(row[key], spec)
            text["us_txt"] = f"{row['per_pair_us']:.3g}"
            table_rows.append(text)
        tables.append(
            print_table(
                table_rows,
                [
                    ("method", "method", "<"),
                    ("anchors", "k"),
                    ("fit_txt", "fit s"),
                    ("all_txt", "all pairs s"),
                    ("mem_txt", "peak mem"),
                    ("us_txt", "us/pair"),
                    ("speedup_vs_exact", "x exact"),
                    ("rel_rmse", "rel RMSE"),
                    ("bias", "bias"),
                    ("pearson", "pearson"),
                ],
                title=f"{name}: {entry['n_niches']} niches, {entry['n_pairs_all']:,} pairs; accuracy vs exact W2^2 on "
                f"{n_pairs} pairs; {args.threads} torch thread(s)",
            )
        )
        if "clustering" in entry:
            columns = [("features", "features", "<"), ("kmeans", "ARI k-means")]
            columns += [(f"leiden_{r}", f"ARI leiden {r}") for r in RESOLUTIONS]
            columns += [(f"leiden_{r}_n", f"n@{r}") for r in RESOLUTIONS]
            tables.append(
                print_table(entry["clustering"], columns, title="niche clustering vs obs['niche_type'] (ARI)")
            )
    payload["table"] = "\n\n".join(tables)
    payload["total_s"] = time.perf_counter() - start
    write_json(out, payload)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
