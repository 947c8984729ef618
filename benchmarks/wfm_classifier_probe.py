"""Probe of the paired classifier score of ``wfm.py`` alone, without its 1-NN / MMD² scoring (diagnosis runs).

Same data, split, classifier, paired niches and generation seeds as ``benchmarks/wfm.py`` (the
random draws are replayed in its order), for the named variants only; ``--set`` as there. A
model trained here with the same seed and settings is the model of ``wfm.py``, so the first
``--generations`` of a ``wfm.py`` run are comparable generation by generation. Also scored:
real training-colour niches in the place of generated ones (``reference_scores``), what a
perfect sampler given the vector, or the label, would score. ``--variants ''`` scores only these.

``--guidance 1,1.5,2`` samples each trained model at several classifier-free guidance weights
(one fit per variant; the same niches and generation seeds at every weight, so the weights are
compared niche by niche: ``difference_from_first_guidance``, the generated accuracy at a weight
minus at the first one, with its standard error over niches). Rows are then named
``VARIANT@guidance=W``.

Run ``nice -n 19 python benchmarks/wfm_classifier_probe.py --case simulated --variants vectors,vectors-paired
[--generations 2] [--guidance W1,W2,...] [--set NAME=VALUE] --out PATH``.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import numpy as np
import torch
import wfm
from _common import machine_info, write_json
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import NearestNeighbors

import spatialot as sot


def reference_scores(classifier, family, labels, vectors, train_cells, paired_cells) -> dict[str, Any]:
    """What a perfect sampler would score, from real niches of the training colour.

    ``label_from_vector_1nn``: how well the centre's vector tells its label (1-NN against the
    training cells). ``nearest_vector_niche``: the classifier's accuracy, with each paired
    cell's own label, on the real niche of the training cell whose vector is the k-th nearest
    (k = 1…5): a sampler of p(niche | vector) scores about this. ``same_label_niche``: the same
    on the niche of a random training cell of the same label (5 draws; what a sampler of
    p(niche | label) scores, with the classifier's advantage on its own training niches).
    """
    train_vectors, paired_vectors = vectors[train_cells], vectors[paired_cells]
    _, nearest = NearestNeighbors(n_neighbors=5).fit(train_vectors).kneighbors(paired_vectors)
    truth = labels[paired_cells]

    def accuracy(cells) -> float:
        return float((classifier.predict(wfm.features_of(family.gather(cells))) == truth).mean())

    same_label = []
    for draw in range(5):
        rng = np.random.default_rng(10 + draw)
        same_label.append(accuracy(np.array([rng.choice(train_cells[labels[train_cells] == t]) for t in truth])))
    return {
        "label_from_vector_1nn": float((labels[train_cells][nearest[:, 0]] == truth).mean()),
        "nearest_vector_niche": [accuracy(train_cells[nearest[:, k]]) for k in range(5)],
        "same_label_niche": {"mean": float(np.mean(same_label)), "sd": float(np.std(same_label, ddof=1))},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", default="simulated", choices=["simulated", "bdtnp"])
    parser.add_argument("--variants", default="vectors,vectors-paired")
    parser.add_argument("--generations", type=int, default=2)
    parser.add_argument("--n-paired", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument(
        "--guidance", default=None, help="comma-separated guidance weights, each sampled from one fit per variant"
    )
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    overrides = wfm.parse_overrides(args.set)
    guidances: list[float | None] = [None]
    if args.guidance is not None:
        if "guidance" in overrides["sample"]:
            parser.error("give the guidance by --guidance or by --set sample_guidance, not both")
        guidances = [float(text) for text in args.guidance.split(",")]
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
    references = reference_scores(classifier, family, labels, vectors, train_cells, paired_cells)
    print(f"{args.case} references: {references}", flush=True)
    rows: dict[str, Any] = {}

    def write() -> None:
        payload = {
            "benchmark": "wfm_classifier_probe",
            "description": __doc__,
            "args": vars(args),
            "overrides": overrides,
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
            "machine": machine_info("cpu"),
            "n_paired_niches": len(paired_cells),
            "classifier_real_paired": float(real_correct.mean()),
            "references": references,
            "variants": rows,
        }
        write_json(args.out, payload)

    for variant in filter(None, args.variants.split(",")):
        conditioning, _ = wfm.VARIANTS[variant]
        model, train_s = wfm.train_variant(
            variant,
            wfm.TrainingSet(family, labels, vectors, train_cells, names),
            defaults=defaults,
            steps=defaults["n_steps"],
            device="cpu",
            seed=args.seed,
            overrides=overrides,
        )
        first_correct = None
        for guidance in guidances:
            sample = overrides["sample"] if guidance is None else {**overrides["sample"], "guidance": guidance}
            sample_overrides = {**overrides, "sample": sample}
            correct = wfm.paired_generated_correct(
                model,
                classifier,
                conditioning,
                paired_cells,
                family,
                labels,
                vectors,
                defaults,
                sample_overrides,
                args.generations,
                args.seed,
            )
            name = variant if guidance is None else f"{variant}@guidance={guidance:g}"
            paired = wfm.paired_classifier(correct, real_correct, labels[paired_cells], args.seed)
            paired["guidance"] = defaults["guidance"] if guidance is None else guidance
            paired["final_loss_mean_last_100"] = float(np.mean(model.history[-100:]))
            paired["model_overrides"] = wfm.VARIANT_MODEL.get(variant, {})
            paired["train_s"] = train_s
            paired["loadavg_after"] = os.getloadavg()
            if first_correct is None:
                first_correct = correct
            else:
                # niche by niche against the first weight: same model, niches and noise seeds
                difference = correct.astype(float).mean(0) - first_correct.astype(float).mean(0)
                paired["difference_from_first_guidance"] = {
                    "guidance": guidances[0],
                    "points": float(100 * difference.mean()),
                    "se_cells": float(100 * difference.std(ddof=1) / np.sqrt(len(difference))),
                }
            rows[name] = paired
            print(
                f"{args.case} {name}: generated {paired['generated']:.4f} real {paired['real']:.4f} "
                f"gap {paired['gap_points']:+.2f} ± {paired['gap_se_cells']:.2f} "
                f"by generation {[round(100 * a, 1) for a in paired['generated_by_generation']]} "
                f"loss {paired['final_loss_mean_last_100']:.3f}",
                flush=True,
            )
            write()  # after every row, so that a stopped run keeps what it measured
    write()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
