"""Leiden on the ASOT niche graph against k-means on the anchor weights: graph diagnostics.

Data: ``sot.datasets.simulated_tissue(10_000, random_state=0)``, niches
``sot.pp.niches(adata, k=K, use_rep='X_latent')`` (K = ``--size``, default 8), truth
``obs['niche_type']`` (5 types). ASOT-k with 32 anchors (k-means, no training: deterministic);
``--method ml`` or ``dl`` for ASOT-ML / ASOT-DL with 32 anchors (output ``asot-graph-kK-ml``…).

For several neighbour graphs of the same niches, Leiden (scanpy, igraph flavour, seed 0) at
resolutions 0.1 / 0.2 / 0.3 / 0.5 / 0.7 / 1 scored by the adjusted Rand index against the niche
types, beside the kNN purity (fraction of neighbours of the same type), the connected
components and the largest in-degree of the kNN lists (for the graphs of
``sot.tl.asot_neighbors`` and the Euclidean graphs of weights and means also the seed
stability, the mean ARI between Leiden runs with seeds 0, 1 and 2, a label-free criterion):

- the all-pairs debiased ASOT distance (``model.pairwise_distances`` minus half of both
  self-costs), plain kNN with 15 and 30 neighbours, scanpy's UMAP connectivities
  (``scanpy.neighbors._connectivity.umap``) on W2 and binary (symmetrised) weights;
- ``sot.tl.asot_neighbors`` as shipped (Euclidean candidates of the anchor weights, ranked and
  weighted by the debiased ASOT distance), with ``n_candidates`` = 15 (the default), 30 and 45;
- the Euclidean kNN of the anchor weights (what k-means sees);
- the exact cell-type composition of each niche (counts of the 8 cell types, L2), as it is,
  with N(0, 0.3²) noise added to every count, and with copies counted once (as
  ``tl.asot_neighbors`` counts identical histograms; Gaussian kernel): the lattice question;
- the anchor weights with near-copies counted once: rows within a quarter or half of the
  lattice's step (the median distance between the mean weights of two compositions one cell
  apart, ``one_cell_step`` in the summary) grouped, densest first, and each group listed once.

k-means (told the 5 types) on the weights and on the compositions is the reference, beside Leiden
on the Euclidean 15-NN graph of the mean niche expression (log1p of normalised counts, PCA 30)
and of the mean niche latent (``X_latent``), as in ``benchmarks/asot.py``. The label-free pick of
a graph is the resolution of largest seed stability (the lower one on ties); its ARI is reported
beside the ARI at scanpy's default resolution 1, and the ARI of Leiden told the number of types
as k-means is (the resolution bisected until Leiden finds 5 clusters): equal information.

Run ``python benchmarks/asot_graph.py [--size 8] [--out PATH]``; CPU, about 5 minutes.

``--repeat`` measures the noise of the equal-information comparison instead: for every tissue
seed (``--tissue-seeds``, the ASOT fit seeded with it plus 1) and every ASOT variant
(``--methods``), each graph of ``GRAPHS`` is clustered by Leiden bisected to 5 clusters once per
Leiden seed (``--leiden-seeds``), k-means (told 5, ``n_init=10``) runs once per seed on the
weights, and Leiden on the Euclidean 15-NN graph of the mean niche expression (UMAP and
Gaussian kernels) once per Leiden seed; each row gives the mean and standard deviation of the ARI
over seeds (``ari_mean``, ``ari_sd``) and, pooled over tissues, over all runs. ``--graphs``
picks graphs of ``GRAPHS`` by name, separated by ``;``. Output ``asot-graph-repeat-kK``; about
10 minutes per 3 tissues, 5 seeds and 6 graphs at ``nice 19`` on a shared 2-core machine.
The runs of ``benchmarks/README.md``::

    python benchmarks/asot_graph.py --repeat --size 8  # and 32, at commit 7b57525: asot-graph-repeat-k8-cpu.json
    G="tl.asot_neighbors (default);tl.asot_neighbors, kernel='umap';tl.asot_neighbors, 30 candidates;\
    same lists, binary weights;epsilon / 10, 100 iterations;anchor weights, Euclidean 15-NN"
    python benchmarks/asot_graph.py --repeat --size 8 --tissue-seeds 0,1,2,3,4 --graphs "$G" \
        --out benchmarks/results/asot-graph-repeat-kernel-k8-cpu.json  # --size 32 with --leiden-seeds 0,1,2
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from functools import partial

from _common import default_out, machine_info, print_table, time_call, write_json
from asot import euclidean_graph, leiden_ari, leiden_at_count, leiden_labels, mean_niche_baselines, store_asot

warnings.filterwarnings("ignore", category=FutureWarning)

import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402
import torch  # noqa: E402
from anndata import AnnData  # noqa: E402
from scanpy.neighbors import _connectivity  # noqa: E402
from scipy.sparse.csgraph import connected_components  # noqa: E402
from sklearn.cluster import KMeans  # noqa: E402
from sklearn.metrics import adjusted_rand_score  # noqa: E402
from sklearn.neighbors import NearestNeighbors  # noqa: E402

import spatialot as sot  # noqa: E402
from spatialot.models import ASOT  # noqa: E402
from spatialot.ot import anchor_kneighbors, anchor_paired_distances  # noqa: E402
from spatialot.ot._anchor import _share_lists_with_copies  # noqa: E402

RESOLUTIONS = (0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
SEEDS = (0, 1, 2)
N_TYPES = 5  # niche types of the simulated tissue, as k-means is told


def knn_of_matrix(matrix: np.ndarray, k: int, block: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k nearest columns (itself first, at 0), sorted, by blocks of rows."""
    n = len(matrix)
    indices, distances = np.empty((n, k), np.int64), np.empty((n, k))
    for start in range(0, n, block):
        rows = np.array(matrix[start : start + block], dtype=np.float64)
        rows[np.arange(len(rows)), np.arange(start, start + len(rows))] = -np.inf
        nearest = np.argpartition(rows, k - 1, axis=1)[:, :k]
        values = np.take_along_axis(rows, nearest, 1)
        order = np.argsort(values, 1, kind="stable")
        indices[start : start + block] = np.take_along_axis(nearest, order, 1)
        distances[start : start + block] = np.take_along_axis(values, order, 1)
    distances[:, 0] = 0.0
    return indices, np.maximum(distances, 0.0)


def graph_row(name, indices, distances, truth, *, weighting="umap") -> dict:
    """Leiden scores of the graph of kNN lists ``indices`` at metric ``distances``.

    ``weighting``: ``'umap'`` (UMAP's connectivities), ``'gauss'`` (the kernel of
    ``tl.asot_neighbors``) or ``'binary'`` (1 on the union of the lists).
    """
    n, k = indices.shape
    if weighting == "umap":
        graph = _connectivity.umap(indices, distances.astype(np.float32), n_obs=n, n_neighbors=k)
    elif weighting == "gauss":
        from spatialot.tl._asot import _graph

        graph = _graph(indices, distances**2, n, k, "gauss")[1]
    else:
        rows = np.repeat(np.arange(n), k - 1)
        graph = sp.csr_matrix((np.ones(rows.size), (rows, indices[:, 1:].ravel())), shape=(n, n))
        graph = ((graph + graph.T) > 0).astype(np.float32)
    return score_graph(name, sp.csr_matrix(graph), truth, indices=indices, weighting=weighting)


def seed_stability(graph, resolutions=RESOLUTIONS) -> dict[str, float]:
    """Mean ARI between the Leiden partitions of ``SEEDS`` at each resolution: no labels needed."""
    holder = AnnData(np.zeros((graph.shape[0], 1), dtype=np.float32))
    out = {}
    for resolution in resolutions:
        labels = [leiden_labels(holder, resolution, random_state=seed, adjacency=graph) for seed in SEEDS]
        pairs = [(a, b) for i, a in enumerate(labels) for b in labels[i + 1 :]]
        out[f"stability_{resolution}"] = float(np.mean([adjusted_rand_score(a, b) for a, b in pairs]))
    return out


def score_graph(name, graph, truth, *, indices=None, weighting="umap") -> dict:
    row = {"graph": name, "weights": weighting, "components": int(connected_components(graph)[0])}
    if indices is not None:
        row["knn_purity"] = float((truth[indices[:, 1:]] == truth[:, None]).mean())
        row["max_in_degree"] = int(np.bincount(indices[:, 1:].ravel(), minlength=len(truth)).max())
    holder = AnnData(np.zeros((len(truth), 1), dtype=np.float32))
    row.update(leiden_ari(holder, truth, resolutions=RESOLUTIONS, adjacency=graph))
    row.update(leiden_at_count(holder, truth, N_TYPES, adjacency=graph))
    print(f"  {row}", file=sys.stderr, flush=True)
    return row


def euclidean_knn(features: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    distances, indices = NearestNeighbors(n_neighbors=k).fit(features).kneighbors(features)
    indices[:, 0], distances[:, 0] = np.arange(len(features)), 0.0
    return indices, distances


def grouped_knn(features: np.ndarray, k: int, radius: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean kNN in which each group of (near-)copies counts once, as ``anchor_kneighbors`` counts copies.

    Groups: every row within ``radius`` of a leader joins it, leaders taken densest first (``0``:
    exact copies only). The leaders' kNN among leaders is each group's list; the leader gets it,
    every other member gets its leader at 0 followed by the same list.
    """
    n = len(features)
    if radius > 0:
        balls = NearestNeighbors(radius=radius).fit(features).radius_neighbors(features, return_distance=False)
        leader = np.full(n, -1)
        for row in np.argsort([-len(ball) for ball in balls], kind="stable"):
            if leader[row] < 0:
                leader[row] = row
                free = balls[row][leader[balls[row]] < 0]
                leader[free] = row
    else:
        _, first, inverse = np.unique(features, axis=0, return_index=True, return_inverse=True)
        leader = first[inverse.reshape(-1)]
    leaders, group = np.unique(leader, return_inverse=True)
    distances, indices = (
        NearestNeighbors(n_neighbors=min(k, len(leaders))).fit(features[leaders]).kneighbors(features[leaders])
    )
    indices, distances = leaders[indices][group], distances[group]
    _share_lists_with_copies(indices, distances, leader)
    distances[:, 0] = 0.0
    return indices, distances


def one_cell_step(weights: np.ndarray, composition: np.ndarray) -> float:
    """Median distance between the mean weights of two compositions one cell apart: the lattice's step."""
    distinct, group = np.unique(composition, axis=0, return_inverse=True)
    group = group.reshape(-1)
    means = np.zeros((len(distinct), weights.shape[1]))
    np.add.at(means, group, weights)
    means /= np.bincount(group)[:, None]
    nearest = NearestNeighbors(n_neighbors=min(60, len(distinct))).fit(distinct).kneighbors(distinct)[1]
    steps = [
        np.linalg.norm(means[a] - means[b])
        for a in range(len(distinct))
        for b in nearest[a]
        if np.abs(distinct[a] - distinct[b]).sum() == 2  # one cell moved from one type to another
    ]
    return float(np.median(steps))


def _asot_graph(**options):
    def build(adata, key):
        sot.tl.asot_neighbors(adata, key=key, n_neighbors=15, key_added="_graph", progress=False, **options)
        return adata.obsp["_graph_connectivities"].tocsr()

    return build


def _weights_graph(adata, key):
    holder = AnnData(np.zeros((adata.n_obs, 1), dtype=np.float32))
    euclidean_graph(holder, np.asarray(adata.obsm[f"X_{key}"]), "_graph")
    return holder.obsp["_graph_connectivities"].tocsr()


def _binary(indices: np.ndarray) -> sp.csr_matrix:
    n, k = indices.shape
    rows = np.repeat(np.arange(n), k - 1)
    graph = sp.csr_matrix((np.ones(rows.size), (rows, indices[:, 1:].ravel())), shape=(n, n))
    return ((graph + graph.T) > 0).astype(np.float32).tocsr()


def _lists_graph(weighting: str = "umap", *, epsilon_scale: float = 1.0, n_iter: int | None = None):
    """The lists of ``tl.asot_neighbors`` (15 of 15 candidates) from ``anchor_kneighbors``, weighted otherwise.

    ``weighting``: ``'binary'`` (1 on the union of the lists) or a kernel of ``tl.asot_neighbors``.
    """

    def build(adata, key):
        from spatialot.tl._asot import _graph

        result = adata.uns[key]
        indices, distances = anchor_kneighbors(
            np.asarray(adata.obsm[f"X_{key}"], dtype=np.float32),
            torch.as_tensor(np.asarray(result["cost"]), dtype=torch.float32),
            15,
            epsilon=float(result["epsilon"]) * epsilon_scale,
            n_iter=n_iter or int(result["params"]["n_iter"]),
            debias=True,
            n_candidates=15,
            device="cpu",
        )
        if weighting == "binary":
            return _binary(indices)
        return _graph(indices, distances, len(indices), 15, weighting)[1].tocsr()

    return build


# graph name -> builder(adata, asot key) returning the connectivities; the first is the default
GRAPHS = {
    "tl.asot_neighbors (default)": _asot_graph(),
    "tl.asot_neighbors, kernel='umap'": _asot_graph(kernel="umap"),
    "tl.asot_neighbors, 30 candidates": _asot_graph(n_candidates=30),
    "tl.asot_neighbors, not debiased": _asot_graph(debias=False),
    "same lists, binary weights": _lists_graph("binary"),
    "epsilon / 10, 100 iterations": _lists_graph("gauss", epsilon_scale=0.1, n_iter=100),
    "anchor weights, Euclidean 15-NN": _weights_graph,
}


def _spread(values) -> dict[str, float]:
    return {"ari_mean": float(np.mean(values)), "ari_sd": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0}


def repeat(args) -> int:
    """The equal-information comparison over tissue, fit, Leiden and k-means seeds (``--repeat``)."""
    torch.set_num_threads(1)
    load_start = list(os.getloadavg())
    names = [{"kmeans": "ASOT-k", "ml": "ASOT-ML", "dl": "ASOT-DL"}[m] for m in args.methods]
    graphs = {name: GRAPHS[name] for name in (args.graphs or GRAPHS)}
    rows = []
    for tissue in args.tissue_seeds:
        adata = sot.datasets.simulated_tissue(args.n_cells, random_state=tissue)
        sot.pp.niches(adata, k=args.size, use_rep="X_latent")
        family = sot.get.niche_clouds(adata)
        truth = adata.obs["niche_type"].cat.codes.to_numpy()
        holder = AnnData(np.zeros((adata.n_obs, 1), dtype=np.float32))
        features = mean_niche_baselines(adata, family)["mean niche expression (log1p, PCA 30)"]
        for kernel in ("umap", "gauss"):  # scanpy's default, and the kernel of tl.asot_neighbors
            euclidean_graph(holder, features, "mean_nn", kernel)
            scores = [
                leiden_at_count(holder, truth, N_TYPES, neighbors_key="mean_nn", random_state=seed)["leiden_at_count"]
                for seed in args.leiden_seeds
            ]
            name = f"mean niche expression, Euclidean 15-NN, kernel={kernel!r}"
            rows.append({"tissue": tissue, "asot": "-", "graph": name, "scores": scores})
            print(f"  {rows[-1]}", file=sys.stderr, flush=True)
        for method, variant in zip(args.methods, names, strict=True):
            model = ASOT(family.dim, 32, method=method)
            fit_s, _ = time_call(partial(model.fit, family, random_state=tissue + 1, device="cpu", progress=False))
            weights = model.transform(family)
            key = f"asot_{method}"
            store_asot(adata, key, model, weights)
            scores = [
                float(adjusted_rand_score(truth, KMeans(N_TYPES, n_init=10, random_state=seed).fit_predict(weights)))
                for seed in args.leiden_seeds
            ]
            common = {"tissue": tissue, "asot": variant, "fit_s": fit_s}
            rows.append(common | {"graph": "k-means on the weights (told 5)", "scores": scores})
            print(f"  {rows[-1]}", file=sys.stderr, flush=True)
            for name, build in graphs.items():
                graph_s, graph = time_call(lambda b=build, a=adata, k=key: b(a, k))
                scores = [
                    leiden_at_count(holder, truth, N_TYPES, adjacency=graph, random_state=seed)["leiden_at_count"]
                    for seed in args.leiden_seeds
                ]
                rows.append(common | {"graph": name, "graph_s": graph_s, "scores": scores})
                print(f"  {rows[-1]}", file=sys.stderr, flush=True)
    for row in rows:
        row |= _spread(row["scores"])
    pooled = {}
    for row in rows:
        pooled.setdefault((row["asot"], row["graph"]), []).extend(row["scores"])
    summary = [{"asot": a, "graph": g, "runs": len(v)} | _spread(v) for (a, g), v in pooled.items()]
    columns = [("tissue", "tissue"), ("asot", "asot", "<"), ("graph", "graph", "<")]
    columns += [("ari_mean", "ARI mean"), ("ari_sd", "sd")]
    table = print_table(rows, columns, title=f"ARI at {N_TYPES} clusters, niches of {args.size}, per tissue")
    columns = [("asot", "asot", "<"), ("graph", "graph", "<"), ("runs", "runs")]
    columns += [("ari_mean", "ARI mean"), ("ari_sd", "sd")]
    pooled_table = print_table(summary, columns, title="pooled over tissues and seeds")
    payload = {
        "benchmark": "asot-graph-repeat",
        "machine": machine_info("cpu"),
        "loadavg_start": load_start,
        "loadavg_end": list(os.getloadavg()),
        "params": {
            "data": f"sot.datasets.simulated_tissue({args.n_cells}, random_state=T) for T in {args.tissue_seeds}; "
            f"sot.pp.niches(adata, k={args.size}, use_rep='X_latent')",
            "asot": "32 anchors, defaults, fit with random_state=T + 1",
            "leiden": f"igraph, resolution bisected to {N_TYPES} clusters, seeds {args.leiden_seeds}",
            "kmeans": f"k={N_TYPES}, n_init=10, seeds {args.leiden_seeds}",
        },
        "rows": rows,
        "pooled": summary,
        "table": table,
        "pooled_table": pooled_table,
    }
    out = args.out or default_out(f"asot-graph-repeat-k{args.size}", "cpu", False)
    write_json(out, payload)
    print(f"\nwrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=8, help="cells per niche")
    parser.add_argument("--n-cells", type=int, default=10_000)
    parser.add_argument(
        "--method", default="kmeans", choices=("kmeans", "ml", "dl"), help="ASOT variant (output gets a suffix)"
    )
    parser.add_argument("--out", default=None)
    parser.add_argument("--repeat", action="store_true", help="seeds and tissues: the noise of the comparison")
    ints = lambda text: [int(t) for t in text.split(",")]  # noqa: E731
    parser.add_argument("--tissue-seeds", type=ints, default=[0, 1, 2], help="--repeat: tissue seeds")
    parser.add_argument("--leiden-seeds", type=ints, default=[0, 1, 2, 3, 4], help="--repeat: Leiden/k-means seeds")
    parser.add_argument("--methods", type=lambda t: t.split(","), default=["kmeans", "ml", "dl"], help="--repeat")
    parser.add_argument("--graphs", type=lambda t: t.split(";"), default=None, help="--repeat: names in GRAPHS")
    args = parser.parse_args(argv)
    if args.repeat:
        return repeat(args)
    torch.set_num_threads(1)
    load_start = list(os.getloadavg())
    adata = sot.datasets.simulated_tissue(args.n_cells, random_state=0)
    sot.pp.niches(adata, k=args.size, use_rep="X_latent")
    family = sot.get.niche_clouds(adata)
    truth = adata.obs["niche_type"].cat.codes.to_numpy()
    n = len(truth)
    variant = {"kmeans": "ASOT-k", "ml": "ASOT-ML", "dl": "ASOT-DL"}[args.method]
    model = ASOT(family.dim, 32, method=args.method)
    model.fit(family, random_state=1, device="cpu", progress=False)
    weights = model.transform(family)
    cell_types = adata.obs["cell_type"].cat.codes.to_numpy()
    members = np.where(family.mask, family.indices, 0)
    composition = np.zeros((n, cell_types.max() + 1))
    cells = (np.repeat(np.arange(n), members.shape[1]), cell_types[members].ravel())
    np.add.at(composition, cells, family.mask.ravel())
    summary = {
        "distinct_histograms": len(np.unique(weights, axis=0)),
        "distinct_compositions": len(np.unique(composition, axis=0)),
        "kmeans_weights": float(
            adjusted_rand_score(truth, KMeans(N_TYPES, n_init=10, random_state=0).fit_predict(weights))
        ),
        "kmeans_composition": float(
            adjusted_rand_score(truth, KMeans(N_TYPES, n_init=10, random_state=0).fit_predict(composition))
        ),
    }
    print(summary, file=sys.stderr, flush=True)

    pairs_s, matrix = time_call(lambda: model.pairwise_distances(weights).astype(np.float32))
    cost = model.cost().double()
    half = 0.5 * anchor_paired_distances(
        weights, weights, cost, epsilon=model.absolute_epsilon(), n_iter=model.config["n_iter"]
    )
    matrix -= half[:, None].astype(np.float32)
    matrix -= half[None, :].astype(np.float32)
    indices, distances = knn_of_matrix(matrix, 30)
    del matrix
    metric = np.sqrt(distances)
    rows = []
    for k in (15, 30):
        rows.append(graph_row(f"{variant} debiased, plain {k}-NN", indices[:, :k], metric[:, :k], truth))
    rows.append(graph_row(f"{variant} debiased, plain 30-NN", indices, metric, truth, weighting="binary"))
    store_asot(adata, "asot", model, weights)
    for n_candidates in (15, 30, 45):
        graph_s, _ = time_call(
            lambda c=n_candidates: sot.tl.asot_neighbors(adata, n_neighbors=15, n_candidates=c, progress=False)
        )
        graph = adata.obsp["asot_neighbors_connectivities"].tocsr()
        listed = adata.obsp["asot_neighbors_distances"].tocsr()
        lists = None
        if (listed.getnnz(axis=1) == 14).all():  # explicit zeros (copies) are kept: every row lists 14
            lists = np.concatenate([np.arange(n)[:, None], listed.indices.reshape(n, -1)], axis=1)
        name = f"tl.asot_neighbors (15 of {n_candidates} candidates)"
        rows.append(score_graph(name, graph, truth, indices=lists, weighting="gauss"))  # its default kernel
        rows[-1] |= {"graph_s": graph_s, **seed_stability(graph)}
    holder = AnnData(np.zeros((n, 1), dtype=np.float32))
    euclidean_graph(holder, weights, "weights_nn")  # the UMAP weights of tl.asot_neighbors, on L2
    graph = holder.obsp["weights_nn_connectivities"].tocsr()
    lists = euclidean_knn(weights, 15)[0]
    rows.append(score_graph("anchor weights, Euclidean 15-NN", graph, truth, indices=lists) | seed_stability(graph))
    for name, features in mean_niche_baselines(adata, family).items():
        euclidean_graph(holder, features, "mean_nn")
        graph = holder.obsp["mean_nn_connectivities"].tocsr()
        rows.append(score_graph(f"{name}, Euclidean 15-NN", graph, truth) | seed_stability(graph))
    rows.append(graph_row("cell-type composition, Euclidean 15-NN", *euclidean_knn(composition, 15), truth))
    noisy = composition + np.random.default_rng(0).normal(0, 0.3, composition.shape)
    rows.append(graph_row("composition + N(0, 0.3^2), Euclidean 15-NN", *euclidean_knn(noisy, 15), truth))
    # the lattice with copies counted once, as tl.asot_neighbors counts identical histograms;
    # then the weights with their near-copies (within a quarter or half of a one-cell step) counted once
    rows.append(
        graph_row(
            "cell-type composition, copies counted once, Euclidean 15-NN",
            *grouped_knn(composition, 15),
            truth,
            weighting="gauss",
        )
    )
    step = one_cell_step(weights, composition)
    summary["one_cell_step"] = step
    for fraction in (0.25, 0.5):
        name = f"anchor weights, near-copies within {fraction} x one-cell step counted once, Euclidean 15-NN"
        rows.append(graph_row(name, *grouped_knn(weights, 15, fraction * step), truth, weighting="gauss"))

    for row in rows:
        if "stability_1.0" in row:
            stable = max(RESOLUTIONS, key=lambda r: (round(row[f"stability_{r}"], 6), -r))
            row |= {"stable_resolution": stable, "ari_at_stable": row[f"leiden_{stable}"]}
    columns = [("graph", "graph", "<"), ("weights", "weights", "<"), ("knn_purity", "purity")]
    columns += [("components", "comp."), ("max_in_degree", "max in")]
    columns += [(f"leiden_{r}", f"ARI {r}") for r in RESOLUTIONS] + [(f"leiden_{r}_n", f"n@{r}") for r in RESOLUTIONS]
    columns += [(f"stability_{r}", f"stab {r}") for r in RESOLUTIONS]
    columns += [("stable_resolution", "stable res"), ("ari_at_stable", "ARI@stable")]
    columns += [("leiden_at_count", f"ARI@{N_TYPES} cl."), ("leiden_at_count_resolution", "res")]
    table = print_table(rows, columns, title=f"Leiden vs niche types (ARI), niches of {args.size}; {summary}")
    payload = {
        "benchmark": "asot-graph",
        "machine": machine_info("cpu"),
        "loadavg_start": load_start,
        "loadavg_end": list(os.getloadavg()),
        "params": {
            "data": f"sot.datasets.simulated_tissue({args.n_cells}, random_state=0); "
            f"sot.pp.niches(adata, k={args.size}, use_rep='X_latent')",
            "asot": f"ASOT ({args.method}), 32 anchors, defaults (epsilon 0.04 x max cost, 10 iterations)",
            "all_pairs_s": pairs_s,
        },
        "summary": summary,
        "rows": rows,
        "table": table,
    }
    name = f"asot-graph-k{args.size}" + ("" if args.method == "kmeans" else f"-{args.method}")
    out = args.out or default_out(name, "cpu", False)
    write_json(out, payload)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
