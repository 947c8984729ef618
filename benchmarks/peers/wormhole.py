"""Wasserstein Wormhole side by side: spatialot against the authors' ``wassersteinwormhole``.

Both implementations train on exactly the same clouds, with the same budget, batch size,
learning rate and seed, embed the same held-out clouds, and are scored against the same exact
W2² (POT) on the same pairs, in one run of this script on one machine.

Data (built once per run, handed to every worker):

- ``simulated``: ``sot.datasets.simulated_tissue(6000, n_cell_types=6, n_niche_types=5)``,
  niches of all cells within 38 µm in the 8-D ``X_latent``, kept where they hold 30–64 cells:
  the analogue of the official code's own test set (30–64 points in 8-D, 5 niche types).
  800 training niches from the left half of the tissue, 200 held-out niches from the right
  half (out-of-sample: no held-out niche shares a cell with a training niche's centre region).
- ``bdtnp``: the bundled BDTNP atlas, niches of k = 8 on a 16-component PCA of the 84 genes;
  a random 70 % of the niches train, the other 30 % are held out.

Metrics, at every budget of ``--steps``: the official code trains once to the largest and is
scored on snapshots on the way (its schedule does not depend on the budget); spatialot trains
once per budget, as a user calling ``fit(n_steps=...)`` would (its cosine schedule ends at the
budget):

- Pearson and Spearman correlation between the squared embedding distance and exact W2² on
  2,000 random pairs of held-out niches, on 2,000 pairs of held-out niches of the same niche
  type (``simulated``: the fine structure), and on 2,000 pairs of training niches;
- decoder W2²: mean exact W2² (data units) between a held-out niche and the decoding of its
  embedding (each package's decoder size: the official code uses the mean niche size);
- training steps/s (steps 10 → end, so JAX's compilation is excluded), encode clouds/s through
  each package's own ``encode`` (median of 5 calls after a first), and the worker process's peak resident memory.

Each (package, dataset) pair trains in its own process with ``--threads`` threads for both
torch and XLA; ``--jobs`` processes run at once. Speed figures from a run with ``--jobs 2``
share the machine; ``--speed-steps N`` adds a speed phase at the end that runs each package
alone, one after the other, with ``--speed-threads`` threads (default 2, the whole machine).

Setup and run (from the repository root; see ``benchmarks/README.md``)::

    python3.11 -m venv .venv-peers && .venv-peers/bin/pip install -r benchmarks/peers/requirements.txt -e .
    .venv-peers/bin/python benchmarks/peers/wormhole.py

``--packages spatialot --config '{"decoder_weight": 0}' --label no-decoder`` runs an ablation
of spatialot alone (the JSON then holds no official figures).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import RESULTS, machine_info, peak_rss_bytes, print_table, stamp_steps, write_json  # noqa: E402

SEED = 0
N_PAIRS = 2000
N_DECODED = 200


# --------------------------------------------------------------------------- data


def build_data(name: str, path: Path) -> dict[str, Any]:
    """Padded training and held-out clouds, scoring pairs and their exact W2², saved to ``path``."""
    import numpy as np
    import scanpy as sc

    import spatialot as sot

    rng = np.random.default_rng(SEED)
    if name == "simulated":
        adata = sot.datasets.simulated_tissue(6000, n_cell_types=6, n_niche_types=5, random_state=SEED)
        sot.pp.niches(adata, radius=38, use_rep="X_latent")
        sizes = np.asarray(sot.get.niche_clouds(adata).sizes)
        x = adata.obsm["spatial"][:, 0]
        usable = (sizes >= 30) & (sizes <= 64)
        left = np.flatnonzero(usable & (x < np.median(x)))
        right = np.flatnonzero(usable & (x >= np.quantile(x, 0.55)))  # a gap: no shared cells
        train = np.sort(rng.choice(left, 800, replace=False))
        test = np.sort(rng.choice(right, 200, replace=False))
        labels = adata.obs["niche_type"].to_numpy()
    elif name == "bdtnp":
        adata = sot.datasets.bdtnp()
        sc.pp.pca(adata, n_comps=16, random_state=SEED)
        sot.pp.niches(adata, k=8, use_rep="X_pca")
        cells = rng.permutation(adata.n_obs)
        split = int(0.7 * adata.n_obs)
        train, test = np.sort(cells[:split]), np.sort(cells[split:])
        labels = None
    else:
        raise SystemExit(f"unknown dataset {name!r}")
    family = sot.get.niche_clouds(adata)
    train_clouds, test_clouds = family[train], family[test]

    def random_pairs(count, n):
        first, second = rng.integers(n, size=count), rng.integers(n, size=count)
        keep = first != second
        return first[keep], second[keep]

    pairs = {"held_out": random_pairs(N_PAIRS, len(test)), "train": random_pairs(N_PAIRS, len(train))}
    if labels is not None:
        test_labels = labels[test]
        kinds = np.unique(test_labels)
        first, second = [], []
        for kind in kinds:
            members = np.flatnonzero(test_labels == kind)
            first.append(rng.choice(members, N_PAIRS // len(kinds)))
            second.append(rng.choice(members, N_PAIRS // len(kinds)))
        first, second = np.concatenate(first), np.concatenate(second)
        keep = first != second
        pairs["same_type"] = (first[keep], second[keep])
    arrays: dict[str, Any] = {}
    for kind, (first, second) in pairs.items():
        source = train_clouds if kind == "train" else test_clouds
        arrays[f"{kind}_first"], arrays[f"{kind}_second"] = first, second
        arrays[f"{kind}_exact"] = sot.ot.exact_w2_squared(source[first], source[second])
    np.savez(
        path,
        train_points=train_clouds.points.numpy(),
        train_mask=train_clouds.mask.numpy(),
        test_points=test_clouds.points.numpy(),
        test_mask=test_clouds.mask.numpy(),
        **arrays,
    )
    sizes = np.asarray(family.sizes)
    return {
        "dataset": name,
        "n_train": len(train),
        "n_test": len(test),
        "dim": family.dim,
        "niche_sizes_min_mean_max": [int(sizes.min()), float(sizes.mean()), int(sizes.max())],
        "pairs": {kind: len(first) for kind, (first, _) in pairs.items()},
    }


def clouds_as_lists(points, mask):
    """The official code takes a list of (n_i, d) arrays; spatialot a padded batch with a mask."""
    return [p[m] for p, m in zip(points, mask, strict=True)]


# --------------------------------------------------------------------------- workers


def worker(args: argparse.Namespace) -> None:
    """Train one package on one dataset, write embeddings at each checkpoint and timings to ``--result``."""
    import numpy as np

    code = code_version()  # before the run: what was imported, whatever is committed meanwhile
    data = np.load(args.data)
    checkpoints = sorted(int(s) for s in args.steps.split(","))
    train_points, train_mask = data["train_points"], data["train_mask"]
    test_points, test_mask = data["test_points"], data["test_mask"]
    run = {"official": run_official, "spatialot": run_spatialot}[args.worker]
    result = run(args, checkpoints, train_points, train_mask, test_points, test_mask)
    result["peak_rss_bytes"] = peak_rss_bytes()
    result["code"] = code
    np.savez(args.result, **{k: v for k, v in result.items() if isinstance(v, np.ndarray)})
    Path(args.result).with_suffix(".json").write_text(
        json.dumps({k: v for k, v in result.items() if not isinstance(v, np.ndarray)})
    )


def code_version() -> str:
    """The commit of spatialot this worker imported, ``+dirty`` when the work tree had changes."""
    import spatialot

    root = Path(spatialot.__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "src"], cwd=root, capture_output=True, text=True)
    except OSError:
        return "unknown"
    return commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def step_rate(stamps: list[float]) -> float:
    """Steps per second from the 10th step on (the first steps compile JAX and warm caches)."""
    skip = min(10, len(stamps) - 2)
    return (len(stamps) - 1 - skip) / (stamps[-1] - stamps[skip])


def run_official(args, checkpoints, train_points, train_mask, test_points, test_mask) -> dict[str, Any]:
    import jax
    import numpy as np
    from wassersteinwormhole import Wormhole

    np.random.seed(SEED)  # noqa: NPY002 - the official cost scale samples pairs with numpy's global generator
    model = Wormhole(
        point_clouds=clouds_as_lists(train_points, train_mask),
        point_clouds_test=clouds_as_lists(test_points, test_mask),
        num_sinkhorn_iter=200,  # what its probe chooses on clouds like these, without the slow probe
    )
    snapshots, stamps = {}, []

    def train_step(state, *rest):
        if len(stamps) in checkpoints:
            snapshots[len(stamps)] = state.params
        out = type(model).train_step(model, state, *rest)
        jax.block_until_ready(out[1])
        stamps.append(time.perf_counter())
        return out

    model.train_step = train_step  # an instance attribute shadows the jitted method
    start = time.perf_counter()
    model.train(training_steps=max(checkpoints), batch_size=16, verbose=10**9, key=jax.random.key(SEED))
    train_seconds = time.perf_counter() - start
    snapshots[max(checkpoints)] = model.params
    result: dict[str, Any] = {
        "train_seconds": train_seconds,
        "steps_per_s": step_rate(stamps),
        "decoder_size": int(model.num_particles_output),
        "ot_scale": float(model.ot_scale_value),
    }
    train_all, train_weights = model.point_clouds, model.weights
    test_all, test_weights = model.point_clouds_test, model.weights_test
    for step in checkpoints:
        model.params = snapshots[step]
        test_embedding = np.asarray(model.encode(test_all, test_weights))
        result[f"test_embedding_{step}"] = test_embedding
        result[f"train_embedding_{step}"] = np.asarray(model.encode(train_all, train_weights))
        result[f"decoded_{step}"] = np.asarray(model.decode(test_embedding[:N_DECODED]))
    result["encode_per_s"] = encode_rate(
        lambda: jax.block_until_ready(model.encode(train_all, train_weights)), len(train_all)
    )
    return result


def _sum_distance(model) -> None:
    """Main before issue 10: the embedding distance summed over dimensions, outputs in data units / scale."""
    model._embedding_distances = lambda out, first, second: ((out[first] - out[second]) ** 2).sum(-1)
    model._output_to_data_units = lambda: model.scale


def _torch_init(model) -> None:
    """PyTorch's default initialisation of dense layers instead of Glorot-uniform with zero biases."""
    import torch

    for layer in model.modules():
        if isinstance(layer, torch.nn.Linear):
            layer.reset_parameters()


def _fixed_iterations(model) -> None:
    """The official stopping rule: 200 Sinkhorn iterations, no tolerance, no ε-scaling."""
    model._sinkhorn_kwargs = lambda: {
        "epsilon": model.config["epsilon"],
        "tol": 0.0,
        "max_iter": 200,
        "annealing": 0.0,
        "over_relaxation": 1.0,
    }


def _gpu_solver(model) -> None:
    """The Sinkhorn rule of a GPU step, run on the CPU: a fixed count chosen once per fit, no tolerance checks."""
    from spatialot.models import _wormhole

    _wormhole.checks_on_host = lambda device: False


def _no_final_norm(model) -> None:
    """The official encoder pools the last block's tokens without a final LayerNorm."""
    import torch

    model.encoder.norm = torch.nn.Identity()


def _joint_decoder(model) -> None:
    """The paper's joint training: the decoder's loss also shapes the embedding."""
    model._decoder_gradient_to_embedding = 1.0


ENCODE_REPEATS = 5


def encode_rate(encode, n_clouds: int) -> float:
    """Clouds/s of ``encode()``: the median of ``ENCODE_REPEATS`` timed calls after one untimed call.

    One call on the 800 training clouds takes under a second, so a single timing swings with
    whatever else the machine does in that second; the median of several does not.
    """
    encode()
    seconds = []
    for _ in range(ENCODE_REPEATS):
        start = time.perf_counter()
        encode()
        seconds.append(time.perf_counter() - start)
    return n_clouds / sorted(seconds)[len(seconds) // 2]


# spatialot arguments in --config that go to `fit` rather than to the constructor
FIT_OPTIONS = ("learning_rate", "batch_size", "decay_every", "decay_rate", "schedule", "warmup_steps")

# internal choices that are no constructor argument, switched by --ablation (comma-separated)
ABLATIONS = {
    "sum-distance": _sum_distance,
    "torch-init": _torch_init,
    "fixed-200-iterations": _fixed_iterations,
    "gpu-solver": _gpu_solver,
    "no-final-norm": _no_final_norm,
    "joint-decoder": _joint_decoder,
}


def run_spatialot(args, checkpoints, train_points, train_mask, test_points, test_mask) -> dict[str, Any]:
    import torch

    from spatialot.models import Wormhole
    from spatialot.ot import PointClouds

    torch.set_num_threads(args.threads)
    train = PointClouds.from_padded(train_points, train_mask)
    test = PointClouds.from_padded(test_points, test_mask)
    config = json.loads(args.config)
    fit_options = {k: config.pop(k) for k in FIT_OPTIONS if k in config}

    def trained(n_steps: int):
        """A model trained from scratch for ``n_steps`` (the schedule depends on the budget), and its step times."""
        torch.manual_seed(SEED)
        model = Wormhole(train.dim, **config)
        for name in filter(None, args.ablation.split(",")):
            if name.startswith("decoder-coupling="):  # a share of the decoder's gradient reaches the embedding
                model._decoder_gradient_to_embedding = float(name.split("=")[1])
            else:
                ABLATIONS[name](model)
        stamps = stamp_steps(model)
        start = time.perf_counter()
        model.fit(train, n_steps=n_steps, device="cpu", random_state=SEED, progress=True, **fit_options)
        seconds = time.perf_counter() - start
        stamps.append(time.perf_counter())
        return model, seconds, stamps

    # one run per budget, as a user would call it: a cosine schedule ends at the budget, so a
    # snapshot taken midway through a longer run is not the model of the shorter budget
    result: dict[str, Any] = {}
    for step in sorted(checkpoints):
        model, seconds, stamps = trained(step)
        test_embedding = model.encode(test)
        result[f"test_embedding_{step}"] = test_embedding
        result[f"train_embedding_{step}"] = model.encode(train)
        result[f"decoded_{step}"] = model.decode(test_embedding[:N_DECODED])
    result.update(
        train_seconds=seconds,
        steps_per_s=step_rate(stamps[1:]),
        decoder_size=int(model.config["decoder_size"]),
        ot_scale=float(model.scale) ** 2,
        config=model.config,
    )
    result["encode_per_s"] = encode_rate(lambda: model.encode(train), len(train))
    return result


# --------------------------------------------------------------------------- scoring


def score(data_path: Path, result_path: Path, checkpoints: list[int]) -> list[dict[str, Any]]:
    import numpy as np
    import scipy.stats

    import spatialot as sot

    data, result = np.load(data_path), np.load(result_path)
    test = sot.ot.PointClouds.from_padded(data["test_points"], data["test_mask"])
    rows = []
    for step in checkpoints:
        row: dict[str, Any] = {"steps": step}
        for kind in ("held_out", "same_type", "train"):
            if f"{kind}_exact" not in data:
                continue
            embedding = result[f"{'train' if kind == 'train' else 'test'}_embedding_{step}"]
            first, second = data[f"{kind}_first"], data[f"{kind}_second"]
            predicted = ((embedding[first] - embedding[second]) ** 2).sum(1)
            exact = data[f"{kind}_exact"]
            row[f"{kind}_pearson"] = float(scipy.stats.pearsonr(predicted, exact)[0])
            row[f"{kind}_spearman"] = float(scipy.stats.spearmanr(predicted, exact)[0])
        decoded = sot.ot.PointClouds.from_padded(result[f"decoded_{step}"])
        row["decoder_w2"] = float(np.mean(sot.ot.exact_w2_squared(test[: len(decoded)], decoded)))
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- orchestration


def launch(args, package: str, dataset: str, data_path: Path, workdir: Path, steps: str, threads: int, tag: str):
    result = workdir / f"{package}-{dataset}-{tag}.npz"
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(threads)
    env["MKL_NUM_THREADS"] = str(threads)
    if threads == 1:
        env["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    env["JAX_PLATFORMS"] = "cpu"
    command = [sys.executable, __file__, "--worker", package, "--data", str(data_path), "--result", str(result)]
    command += ["--steps", steps, "--threads", str(threads), "--config", args.config, "--ablation", args.ablation]
    log = (workdir / f"{package}-{dataset}-{tag}.log").open("w")
    started = time.perf_counter()
    done = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode:
        raise SystemExit(f"{package} on {dataset} failed; see {log.name} in {workdir}")
    summary = json.loads(result.with_suffix(".json").read_text())
    summary["wall_seconds"] = time.perf_counter() - started
    return result, summary


def machine_load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", choices=["official", "spatialot"], help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--steps", default="1000,3000", help="checkpoints, comma-separated (default 1000,3000)")
    parser.add_argument("--datasets", default="simulated,bdtnp")
    parser.add_argument("--packages", default="official,spatialot")
    parser.add_argument("--config", default="{}", help="JSON of spatialot Wormhole arguments (ablations)")
    parser.add_argument("--ablation", default="", help=f"spatialot internals to switch: {', '.join(ABLATIONS)}")
    parser.add_argument("--label", default=None, help="name of this run in the output file")
    parser.add_argument("--threads", type=int, default=1, help="torch and XLA threads per worker (default 1)")
    parser.add_argument("--jobs", type=int, default=2, help="workers at once (default 2)")
    parser.add_argument("--speed-steps", type=int, default=300, help="steps of the speed phase; 0 skips it")
    parser.add_argument("--speed-threads", type=int, default=2)
    parser.add_argument(
        "--speed-repeats", type=int, default=1, help="alternate the packages' speed runs this many times"
    )
    parser.add_argument("--speed-only", action="store_true", help="skip the fidelity phase")
    parser.add_argument("--quick", action="store_true", help="20 and 40 steps, no speed phase: a smoke test")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if args.quick:
        args.steps, args.speed_steps = "20,40", 0
    checkpoints = sorted(int(s) for s in args.steps.split(","))
    packages = args.packages.split(",")
    datasets = args.datasets.split(",")
    load_before = machine_load()
    workdir = Path(tempfile.mkdtemp(prefix="wormhole-peers-"))
    print(f"workers write to {workdir}", flush=True)
    data_info, data_paths = {}, {}
    for name in datasets:
        data_paths[name] = workdir / f"{name}.npz"
        data_info[name] = build_data(name, data_paths[name])
    # the longest jobs (the official code's) first, so that two workers finish close together
    jobs = [] if args.speed_only else [(p, d) for p in packages for d in datasets]
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = {
            job: pool.submit(launch, args, *job, data_paths[job[1]], workdir, args.steps, args.threads, "fidelity")
            for job in jobs
        }
        finished = {job: future.result() for job, future in futures.items()}
    rows = []
    for (package, dataset), (result_path, summary) in finished.items():
        for row in score(data_paths[dataset], result_path, checkpoints):
            rows.append({"package": package, "dataset": dataset, **row, **summary})
    speed_rows = []
    # alternated, so that a change of the shared machine's load falls on both packages
    for repeat in range(args.speed_repeats if args.speed_steps else 0):
        for package in packages:
            _, summary = launch(
                args,
                package,
                "simulated",
                data_paths.get("simulated") or data_paths[datasets[0]],
                workdir,
                str(args.speed_steps),
                args.speed_threads,
                "speed",
            )
            speed_rows.append(
                {"package": package, "repeat": repeat, "threads": args.speed_threads, "load": machine_load(), **summary}
            )
    if rows:
        print_table(
            rows,
            [
                ("dataset", "dataset", "<"),
                ("package", "package", "<"),
                ("steps", "steps"),
                ("held_out_pearson", "held-out r"),
                ("held_out_spearman", "held-out ρ"),
                ("same_type_pearson", "same-type r"),
                ("train_pearson", "train r"),
                ("decoder_w2", "decoder W2²"),
                ("decoder_size", "dec. size"),
                ("steps_per_s", "steps/s"),
                ("encode_per_s", "encode/s"),
            ],
            title=f"Wormhole side by side ({args.threads} thread(s) per worker, {args.jobs} workers at once)",
        )
    if speed_rows:
        print_table(
            speed_rows,
            [
                ("package", "package", "<"),
                ("repeat", "repeat"),
                ("threads", "threads"),
                ("steps_per_s", "train steps/s"),
                ("encode_per_s", "encode clouds/s"),
                ("peak_rss_bytes", "peak RSS B"),
            ],
            title=f"Speed, each package alone ({args.speed_steps} steps on 'simulated')",
        )
    import numpy as np

    import spatialot

    versions = {"spatialot": getattr(spatialot, "__version__", "unknown")}
    try:
        from importlib.metadata import version

        versions.update({name: version(name) for name in ("wassersteinwormhole", "jax", "flax", "ott-jax")})
    except Exception:  # noqa: BLE001 - the official package is absent in a spatialot-only ablation
        pass
    payload = {
        "benchmark": "wormhole-peers",
        "label": args.label,
        "machine": machine_info("cpu"),
        "load_average_before": load_before,
        "load_average_after": machine_load(),
        "versions": versions,
        "settings": {
            "steps": checkpoints,
            "batch_size": 16,
            "learning_rate": 1e-4,
            "seed": SEED,
            "threads_per_worker": args.threads,
            "jobs": args.jobs,
            "spatialot_config": json.loads(args.config),
            "spatialot_ablation": args.ablation,
            "official": "DefaultConfig (S2, eps 0.01 of ot_scale, 3 layers, 4 heads, 128-d, dropout 0.1), "
            "num_sinkhorn_iter=200",
        },
        "data": data_info,
        "fidelity": rows,
        "speed": speed_rows,
        "numpy": np.__version__,
    }
    name = "wormhole-peers" + (f"-{args.label}" if args.label else "") + ("-quick" if args.quick else "")
    path = write_json(args.out or RESULTS / f"{name}-cpu.json", payload)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
