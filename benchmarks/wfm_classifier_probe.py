"""Probe of the paired classifier score of ``wfm.py`` alone, without its 1-NN / MMD² scoring (diagnosis runs).

Same data, split, classifier, paired niches and generation seeds as ``benchmarks/wfm.py`` (the
random draws are replayed in its order), for the named variants only; ``--set`` as there. A
model trained here with the same seed and settings is the model of ``wfm.py``, so the first
``--generations`` of a ``wfm.py`` run are comparable generation by generation.

Run ``nice -n 19 python benchmarks/wfm_classifier_probe.py --case simulated --variants vectors,vectors-paired
[--generations 2] [--set NAME=VALUE] --out PATH``.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch
import wfm
from _common import machine_info, write_json
from sklearn.linear_model import LogisticRegression

import spatialot as sot
from spatialot.models import WassersteinFlowMatching
from spatialot.ot import IndexedClouds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", default="simulated", choices=["simulated", "bdtnp"])
    parser.add_argument("--variants", default="vectors,vectors-paired")
    parser.add_argument("--generations", type=int, default=2)
    parser.add_argument("--n-paired", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    overrides = wfm.parse_overrides(args.set)
    load_before = os.getloadavg()
    loaded = wfm.simulated(args.seed, 6000) if args.case == "simulated" else wfm.bdtnp(args.seed)
    adata, labels, vectors, colour, _, _ = loaded
    defaults = wfm.tl_defaults()
    # the draws of wfm.point_cloud_case, in its order
    rng = np.random.default_rng(args.seed)
    family = sot.get.niche_clouds(adata)
    train_cells, test_cells = np.flatnonzero(colour == 0), np.flatnonzero(colour == 1)
    rng.choice(test_cells, min(300, len(test_cells)), replace=False)
    names = sorted(set(labels[train_cells]))
    sample_train = rng.choice(train_cells, min(len(train_cells), 4000), replace=False)
    classifier = LogisticRegression(max_iter=3000).fit(
        wfm.features_of(family.gather(sample_train)), labels[sample_train]
    )
    paired_rng = np.random.default_rng(args.seed + 2000)
    paired_cells = np.sort(paired_rng.choice(test_cells, min(args.n_paired, len(test_cells)), replace=False))
    real_correct = classifier.predict(wfm.features_of(family.gather(paired_cells))) == labels[paired_cells]
    train = IndexedClouds(family.features, family.indices[train_cells], family.mask[train_cells])
    rows = {}
    for variant in args.variants.split(","):
        conditioning, minibatch_ot = wfm.VARIANTS[variant]
        torch.manual_seed(args.seed)
        model = WassersteinFlowMatching(
            family.dim,
            family.max_size,
            labels=names if conditioning == "labels" else None,
            condition_dim=vectors.shape[1] if conditioning == "vectors" else None,
            width=defaults["width"],
            n_layers=defaults["n_layers"],
            noise=defaults["noise"],
            matching=defaults["matching"],
            minibatch_ot=minibatch_ot,
            pairing_pool=defaults["pairing_pool"],
            **{**wfm.VARIANT_MODEL.get(variant, {}), **overrides["model"]},
        )
        model.fit(
            train,
            labels[train_cells] if conditioning == "labels" else None,
            conditions=vectors[train_cells] if conditioning == "vectors" else None,
            **{
                "n_steps": defaults["n_steps"],
                "batch_size": defaults["batch_size"],
                "learning_rate": defaults["learning_rate"],
                "p_uncond": defaults["p_uncond"],
                "device": "cpu",
                "random_state": args.seed,
                "progress": False,
                **overrides["fit"],
            },
        )
        correct = []
        for generation in range(args.generations):
            generated = model.sample(
                labels=list(labels[paired_cells]) if conditioning == "labels" else None,
                conditions=vectors[paired_cells] if conditioning == "vectors" else None,
                sizes=family.sizes[paired_cells],
                **{
                    "n_steps": defaults["ode_steps"],
                    "method": defaults["method"],
                    "guidance": defaults["guidance"],
                    **overrides["sample"],
                },
                random_state=args.seed + 500 + generation,
            )
            correct.append(classifier.predict(wfm.features_of(generated)) == labels[paired_cells])
        rows[variant] = wfm.paired_classifier(np.array(correct), real_correct, labels[paired_cells], args.seed)
        rows[variant]["final_loss_mean_last_100"] = float(np.mean(model.history[-100:]))
        rows[variant]["model_overrides"] = wfm.VARIANT_MODEL.get(variant, {})
        paired = rows[variant]
        print(
            f"{args.case} {variant}: generated {paired['generated']:.4f} real {paired['real']:.4f} "
            f"gap {paired['gap_points']:+.2f} ± {paired['gap_se_cells']:.2f} "
            f"loss {rows[variant]['final_loss_mean_last_100']:.3f}",
            flush=True,
        )
    payload = {
        "benchmark": "wfm_classifier_probe",
        "description": __doc__,
        "args": vars(args),
        "overrides": overrides,
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "machine": machine_info("cpu"),
        "n_paired_niches": len(paired_cells),
        "variants": rows,
    }
    print(f"wrote {write_json(args.out, payload)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
