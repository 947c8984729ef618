"""HOTET side by side: spatialot against the authors' code (JiangMingchen/HOTET) on the W2 benchmark.

Both implementations train on exactly the same samples, with the same number of steps, and
predict the maps of the same 50 unseen measures from the same 128-point samples; both are
scored by the same functions against the exact maps, beside the closed-form Gaussian map, in
one run of this script on one machine (issue 13).

**Data** (``w2_data`` of ``benchmarks/hotet.py``, part 3): ``sot.datasets.w2_benchmark``,
reference ν = N(0, I_d), each measure μ_b = (∇φ_b)#ν with ∇φ_b known in closed form (Korotin et
al. 2021 construction); ``--n-train`` training measures, each as ``--samples`` independent
samples of ``--n-points`` points; 50 unseen measures, each map predicted from a fresh sample of
``--n-points`` points and scored on 1,000 further points.

**Scoring** (``w2_scores``): L2-UVP = 100 · E‖T̂ − T*‖² / Var(target) and the cosine of the
displacements, mean over the unseen measures, for the forward map μ_b → ν and the inverse map
ν → μ_b; beside them the closed-form Gaussian map between each test sample's moments and ν
(``w2_gaussian_baseline``). ``--eval-every N`` also scores the official maps every N steps
(their script scores every 1,000), the RNG state kept so that the run itself is unchanged.

**spatialot** (``fit_w2``): ``sot.models.HOTET(d)`` with its defaults (Gaussian base, three
conjugate ascent steps), trained as ``benchmarks/hotet.py --only-w2`` trains it.

**Official** (``--official-path``, the ``framework`` folder of the repository): the modules are
imported from there at run time (``src.embedding.Embedding``, ``src.hnet_icnn.HyperDenseICNN``,
``src.mnet.MainDenseICNN``, ``src.tools.train_wishart_identity_map_with_emb``), and the
functions ``calc_W`` and ``approx_corr`` (the MM-B loss) are taken from the source of their
multi-distribution script ``wishart_HOTET_multi_mixtureGaussian copy.py`` (parsed, never run:
its body trains at import). The training loop below is that script's loop line by line: their
config ``configs/mixtureGaussian_HOTET_{d}.yaml`` (ICNN [64, 64, 32], rank 1, CELU, strong
convexity 1e-4, embedding ``'transformer'``, seed 0), hypernetwork layers [max(2d, 16)] × 3,
identity pre-training (``max_iter=5000, blow=3``) on one training measure, then both
embeddings and hypernetworks copied from it, four Adam optimisers at ``LR`` (1e-3, constant),
8 distributions per step, loss ``((L_XY + L_YX) / 2) / 8`` summed over the 8. Their
directions: ``H`` (∇D, conditioned on the source sample X) maps source → reference (X → Y), and
``H_conj`` (∇D_conj) maps reference → source; their source is our measure μ_b and their fixed
target our reference ν, so their forward/inverse are ours.

Deviations needed to run their code here (each also in ``benchmarks/README.md``):

1. **CPU.** Their code calls ``.cuda()`` on tensors (``MainDenseICNN.push``, the sampler);
   while the official model runs on CPU, ``torch.Tensor.cuda`` returns the tensor itself
   (restored afterwards). Modules are built and left on the CPU.
2. **Imports.** ``src/mnet.py`` imports ``hypnettorch`` (``pip install --no-deps
   hypnettorch==0.0.4``, pure Python); ``src/tools.py`` imports ``torchvision`` for image
   helpers unused here: when torchvision is absent, empty stand-in modules are registered
   before importing it.
3. **Data.** Their sampler draws fresh points of their Gaussian mixtures every step; here each
   step takes 8 training measures (``random.sample``, as they do) and one of each measure's
   fixed samples: X the sample's ``--n-points`` points (their config has 256 points at d = 2, 4
   and 128 at d ≥ 8) and Y = the paired reference points z with X = ∇φ_b(z), i.e. Y = T*(X),
   as their ``sample`` returns Y = T*(X) by the true map. The identity pre-training gets
   1,024 points of the first training measure (their ``batch_size`` default) per iteration.
4. **Conditioning of the inverse.** Their training conditions ``H_conj`` on Y (``approx_corr(H_conj,
   embedding_y, Y, X)``) but their evaluation on the source sample X (``calc_W(H_conj,
   embedding_y, X_eval, config)``). ``--inverse-condition reference`` runs that as written
   (``official``); ``source`` conditions it on X in training too (the paper: only the source is
   embedded; a one-line change of their ``calc_W`` call, ``official_source``). Both by default.
5. **Evaluation.** Their ``test`` loop predicts every unseen map from the last *training*
   sample (``calc_W(H, embedding_x, X, config)``); here each unseen map is predicted from that
   measure's own sample, as their ``eval`` loop does. They score with the modules in training
   mode (dropout 0.1 active in the embedding transformer): reported as ``official``; the same
   trained model's maps with dropout off (``.eval()``) as ``official_eval_mode``.
6. **Budget.** ``--steps`` (their ``MAX_ITER`` is 5,001) and one CPU thread.

Run (from the repository root; see ``benchmarks/README.md``)::

    git --git-dir=<mirror of JiangMingchen/HOTET> archive HEAD | tar -x -C /work/hotet-official
    pip install -r benchmarks/peers/requirements.txt   # hypnettorch, for their src/mnet.py
    python benchmarks/peers/hotet.py --dims 2 4 8 --steps 1000
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib.util
import os
import random
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import RESULTS, machine_info, print_table, write_json  # noqa: E402

SCRIPT = "wishart_HOTET_multi_mixtureGaussian copy.py"
N_DISTRIBUTIONS = 8  # their `dist_pairs.sample(batch_size=8)`
# --inverse-condition: the official model as written (H_conj conditioned on Y in training), and the variant
VARIANTS = {"reference": "official", "source": "official_source"}


def load_benchmark() -> types.ModuleType:
    """``benchmarks/hotet.py`` (this file has the same name, so it is loaded by path)."""
    path = Path(__file__).resolve().parents[1] / "hotet.py"
    spec = importlib.util.spec_from_file_location("hotet_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- the official code


@contextlib.contextmanager
def cuda_calls_stay_on_cpu():
    """Deviation 1: ``tensor.cuda()`` returns the tensor itself while the official code runs on CPU."""
    kept = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    try:
        yield
    finally:
        torch.Tensor.cuda = kept


def import_official(official_path: Path) -> dict[str, Any]:
    """The official modules, and ``calc_W`` / ``approx_corr`` from the source of their script."""
    if not (official_path / SCRIPT).exists():
        raise SystemExit(f"--official-path {official_path} holds no {SCRIPT!r}: export the HOTET repository there.")
    if importlib.util.find_spec("torchvision") is None:  # deviation 2: image helpers of src/tools.py, unused
        vision = types.ModuleType("torchvision")
        vision.datasets = types.ModuleType("torchvision.datasets")
        vision.utils = types.ModuleType("torchvision.utils")
        vision.utils.save_image = None
        sys.modules.update({"torchvision": vision, **{m.__name__: m for m in (vision.datasets, vision.utils)}})
    sys.path.insert(0, str(official_path))
    from src.embedding import Embedding
    from src.hnet_icnn import HyperDenseICNN
    from src.mnet import MainDenseICNN
    from src.tools import train_wishart_identity_map_with_emb, unfreeze

    tree = ast.parse((official_path / SCRIPT).read_text())
    names = ("calc_W", "approx_corr")
    wanted = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name in names]
    return {
        "Embedding": Embedding,
        "HyperDenseICNN": HyperDenseICNN,
        "MainDenseICNN": MainDenseICNN,
        "train_identity": train_wishart_identity_map_with_emb,
        "unfreeze": unfreeze,
        "functions": compile(ast.Module(body=wanted, type_ignores=[]), SCRIPT, "exec"),
    }


class _PretrainingPair:
    """Stands in for their ``MixGaussianDistPair`` in the identity pre-training: points of one training measure."""

    def __init__(self, points: np.ndarray, seed: int):
        self.points = torch.as_tensor(points.reshape(-1, points.shape[-1]))
        self.rng = np.random.default_rng(seed)

    def sample(self, batch_size: int = 512, inner_batch: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.rng.choice(len(self.points), size=batch_size, replace=batch_size > len(self.points))
        x = self.points[torch.as_tensor(rows)].clone()
        return x, x


def train_official(
    official: dict[str, Any],
    config: dict[str, Any],
    data,
    steps: int,
    inverse_condition: str,
    seed: int,
    score: Callable[[np.ndarray, np.ndarray], dict[str, float]],
    eval_every: int = 0,
) -> dict[str, Any]:
    """Their multi-distribution script's model and training loop, on ``data`` (a ``W2Data``).

    Every ``eval_every`` steps (0: never) the maps of the unseen measures are scored with ``score``
    (training mode, as their script scores; the RNG state is restored so that the run is unchanged),
    excluded from the training time.
    """
    dim = config["DIM"]
    torch.manual_seed(config["SEED"])
    D = official["MainDenseICNN"](**config["D_HYPERPARAMS"])  # noqa: N806 (their names)
    D_conj = official["MainDenseICNN"](**config["D_HYPERPARAMS"])  # noqa: N806
    embedding_x = official["Embedding"](dim=dim, cond_in_size=config["COND_IN_SIZE"])
    embedding_y = official["Embedding"](dim=dim, cond_in_size=config["COND_IN_SIZE"])
    h_layers = [max(2 * dim, 16)] * 3
    H, H_conj = (  # noqa: N806
        official["HyperDenseICNN"](
            target_shapes=D.param_shapes,
            convexify_id=D.convex_layer_indices,
            embedding_size=dim,
            layers=h_layers,
            verbose=False,
        )
        for _ in range(2)
    )
    namespace: dict[str, Any] = {
        "torch": torch,
        "D": D,
        "config": config,
        "HyperDenseICNN": official["HyperDenseICNN"],
        "Embedding": official["Embedding"],
        "MLP": None,
    }
    exec(official["functions"], namespace)  # their calc_W and approx_corr, bound to D and config
    calc_W, approx_corr = namespace["calc_W"], namespace["approx_corr"]  # noqa: N806
    condition: list[torch.Tensor | None] = [None]
    if inverse_condition == "source":  # deviation 4, variant: H_conj conditioned on the source sample X
        namespace["calc_W"] = lambda h, embedding, x, cfg: calc_W(h, embedding, condition[0] if h is H_conj else x, cfg)

    start = time.perf_counter()
    pretrain_loss, _ = official["train_identity"](
        D,
        embedding_x,
        H,
        _PretrainingPair(data.train_points[0], seed),
        max_iter=5000,
        convex=False,
        blow=3,
        verbose=False,
        emb_method=config["emb_method"],
    )
    pretrain_s = time.perf_counter() - start
    embedding_y.load_state_dict(embedding_x.state_dict())
    H_conj.load_state_dict(H.state_dict())
    lr = config["LR"]
    optimisers = [torch.optim.Adam(m.parameters(), lr=lr) for m in (embedding_x, embedding_y, H, H_conj)]

    def predict(eval_mode: bool) -> tuple[np.ndarray, np.ndarray]:
        for module in (H, H_conj, embedding_x, embedding_y):
            module.train(not eval_mode)
        forward, inverse = [], []
        for b in range(len(data.test)):
            given = data.test.points[b]  # the unseen measure's own sample (deviation 5)
            W = calc_W(H, embedding_x, given, config)  # noqa: N806
            W_conj = calc_W(H_conj, embedding_y, given, config)  # noqa: N806  (their eval loop: the source)
            x = torch.as_tensor(data.x[b], dtype=torch.float32).requires_grad_(True)
            z = torch.as_tensor(data.z[b], dtype=torch.float32).requires_grad_(True)
            forward.append(D.push_nograd(x, W).numpy())
            inverse.append(D_conj.push_nograd(z, W_conj).numpy())
        return np.stack(forward), np.stack(inverse)

    picker = random.Random(seed)
    curve = []
    n_train, n_samples = data.train_points.shape[:2]
    history = []
    start = time.perf_counter()
    for step in range(steps):
        pairs_sampled = picker.sample(range(n_train), N_DISTRIBUTIONS)
        W_loss = 0  # noqa: N806
        for module in (H, H_conj, embedding_x, embedding_y):
            official["unfreeze"](module)
        for module in (H, H_conj, embedding_x, embedding_y):
            module.zero_grad()
        for opt in optimisers:
            opt.zero_grad()
        for measure in pairs_sampled:
            sample = picker.randrange(n_samples)
            X = torch.as_tensor(data.train_points[measure, sample])  # noqa: N806
            Y = torch.as_tensor(data.train_reference[measure, sample])  # noqa: N806  (Y = T*(X))
            X.requires_grad_(True)
            Y.requires_grad_(True)
            condition[0] = X
            W_loss_XY, _ = approx_corr(H, embedding_x, X, Y)  # noqa: N806
            W_loss_YX, _ = approx_corr(H_conj, embedding_y, Y, X)  # noqa: N806
            W_loss += ((W_loss_XY + W_loss_YX) / 2) / len(pairs_sampled)  # noqa: N806
        W_loss.backward()
        for opt in optimisers:
            opt.step()
        history.append(float(W_loss.detach()))
        if eval_every and (step + 1) % eval_every == 0 and step + 1 < steps:
            paused = time.perf_counter()
            kept = torch.get_rng_state()
            curve.append({"step": step + 1, **score(*predict(eval_mode=False))})
            torch.set_rng_state(kept)
            start += time.perf_counter() - paused
    train_s = time.perf_counter() - start

    torch.manual_seed(seed + 4)  # the dropout masks of the training-mode evaluation
    maps = {"train": predict(eval_mode=False), "eval": predict(eval_mode=True)}
    return {
        "maps": maps,
        "curve": curve,
        "pretrain_s": pretrain_s,
        "pretrain_final_mse": float(pretrain_loss),
        "train_s": train_s,
        "final_loss": float(np.mean(history[-50:])),
        "n_parameters": sum(p.numel() for m in (embedding_x, embedding_y, H, H_conj) for p in m.parameters()),
        "icnn_parameters_per_direction": int(sum(np.prod(s) for s in D.param_shapes)),
    }


# --------------------------------------------------------------------------- one dimension


def run_dim(bench, official, args: argparse.Namespace, dim: int) -> dict[str, Any]:
    import yaml

    config_path = args.official_path.parent / "configs" / f"mixtureGaussian_HOTET_{dim}.yaml"
    if not config_path.exists():
        raise SystemExit(f"No official config for d = {dim}: {config_path}")
    config = yaml.safe_load(config_path.read_text())
    data = bench.w2_data(dim, args.n_train, args.n_points, args.samples, args.seed)
    row: dict[str, Any] = {"dim": dim, "steps": args.steps, "load_before": list(os.getloadavg())}

    for base in args.bases:
        key = "spatialot" if base == "gaussian" else f"spatialot_{base}"
        model, fit_s = bench.fit_w2(data, base, args.steps, "cpu", learning_rate=1e-3, seed=args.seed)
        forward = model.transport(data.test, data.x.astype(np.float32))
        inverse = model.inverse_transport(data.test, data.z.astype(np.float32))
        row[key] = {
            **bench.w2_scores(data, forward, inverse),
            "fit_s": fit_s,
            "s_per_step": fit_s / args.steps,
            "final_loss": float(np.mean(model.history[-50:])),
            "n_parameters": sum(p.numel() for p in model.parameters()),
            "config": {k: v for k, v in model.config.items()},
        }
        print(f"d={dim} {key}: {row[key]['s_per_step']:.3f} s/step", flush=True)
        del model

    for variant in args.inverse_condition:
        key = VARIANTS[variant]
        with cuda_calls_stay_on_cpu():
            result = train_official(
                official,
                config,
                data,
                args.steps,
                variant,
                args.seed,
                lambda forward, inverse: bench.w2_scores(data, forward, inverse),
                args.eval_every,
            )
        for mode, (forward, inverse) in result.pop("maps").items():
            row[key + ("_eval_mode" if mode == "eval" else "")] = bench.w2_scores(data, forward, inverse)
        row[key].update(result, s_per_step=result["train_s"] / args.steps)
        row[key]["config"] = {
            "file": config_path.name,
            **{k: config[k] for k in ("SEED", "BATCH_SIZE", "LR", "COND_IN_SIZE", "emb_method", "D_HYPERPARAMS")},
            "hypernetwork_layers": [max(2 * dim, 16)] * 3,
            "inverse_condition": variant,
            "points_per_distribution": args.n_points,
        }
        print(f"d={dim} {key}: {row[key]['s_per_step']:.3f} s/step", flush=True)
    row["gaussian"] = bench.w2_scores(data, *bench.w2_gaussian_baseline(data))  # HOTET's default base
    row["load_after"] = list(os.getloadavg())
    return row


def table_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    labels = {
        "spatialot": "spatialot HOTET",
        "spatialot_identity": "spatialot HOTET, base='identity'",
        "official": "official HOTET",
        "official_eval_mode": "official, dropout off",
        "official_source": "official, H_conj on X",
        "official_source_eval_mode": "official, H_conj on X, dropout off",
        "gaussian": "Gaussian closed form",
    }
    out = []
    for row in rows:
        for key, label in labels.items():
            if key not in row:
                continue
            scores = row[key]
            out.append({"dim": row["dim"], "model": label, **scores, "s_per_step": scores.get("s_per_step")})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official-path", type=Path, default=Path("/work/hotet-official/framework"))
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--n-train", type=int, default=400)
    parser.add_argument("--n-points", type=int, default=128)
    parser.add_argument("--samples", type=int, default=16, help="independent samples of each training measure")
    parser.add_argument(
        "--inverse-condition",
        nargs="+",
        choices=list(VARIANTS),
        default=list(VARIANTS),
        help="official variants to run: H_conj conditioned on Y in training as written (reference), or on X (source)",
    )
    parser.add_argument(
        "--bases",
        nargs="+",
        choices=["gaussian", "identity"],
        default=["gaussian"],
        help="spatialot's HOTET bases to run: its default (gaussian), and/or the paper's identity start",
    )
    parser.add_argument("--eval-every", type=int, default=0, help="score the official maps every N steps (0: never)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.official_path = args.official_path.resolve()
    out = args.out or RESULTS / "hotet-peer-w2bench-cpu.json"

    bench = load_benchmark()
    official = import_official(args.official_path)
    payload: dict[str, Any] = {
        "benchmark": "hotet-peer-w2bench",
        "machine": machine_info("cpu"),
        "load_before": list(os.getloadavg()),
        "official_code": "github.com/JiangMingchen/HOTET, framework/" + SCRIPT + " (its loop, calc_W and "
        "approx_corr) and framework/src modules, imported from " + str(args.official_path),
        "data": f"benchmarks/hotet.py w2_data: sot.datasets.w2_benchmark, reference N(0, I_d); {args.n_train} training "
        f"measures, each as {args.samples} independent samples of {args.n_points} points; 50 unseen measures, "
        f"maps predicted from a fresh {args.n_points}-point sample, scored on 1,000 further points",
        "metric": "benchmarks/hotet.py w2_scores: L2-UVP % = 100 E||T_hat - T*||^2 / Var(target) (forward mu_b -> nu, "
        "Var = d; inverse nu -> mu_b, Var = tr Cov mu_b) and cosine of the displacements, mean over unseen measures",
        "budget": f"{args.steps} steps each, {args.threads} torch thread(s); spatialot: HOTET defaults (base "
        f"{' and '.join(args.bases)}, "
        "3 conjugate steps), batch 8 clouds, 256 reference points per cloud, Adam 1e-3 halved every steps/3; official: "
        "its config for d, 8 distributions per step of n_points source points and their paired reference points, "
        "Adam LR constant, identity pre-training first (not counted in s_per_step)",
        "deviations": "see the docstring of benchmarks/peers/hotet.py and benchmarks/README.md",
        "rows": [],
    }
    for dim in args.dims:
        payload["rows"].append(run_dim(bench, official, args, dim))
        payload["load_after"] = list(os.getloadavg())
        write_json(out, payload)
    print_table(
        table_rows(payload["rows"]),
        [
            ("dim", "d"),
            ("model", "model", "<"),
            ("forward_l2_uvp", "fwd UVP %"),
            ("forward_cosine", "fwd cos"),
            ("inverse_l2_uvp", "inv UVP %"),
            ("inverse_cosine", "inv cos"),
            ("s_per_step", "s/step"),
        ],
        title=f"HOTET, spatialot vs official, W2 benchmark (unseen measures, {args.steps} steps)",
    )
    print(f"wrote {write_json(out, payload)}")


if __name__ == "__main__":
    main()
