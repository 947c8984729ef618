"""The ``spatialot`` command line: the main job without a notebook."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path


def _demo(args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")  # the command runs without a display
    import numpy as np
    import scanpy as sc

    import spatialot as sot

    sc.settings.verbosity = "info"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    adata = sot.datasets.bdtnp()
    sc.logging.info(f"loaded the BDTNP Drosophila embryo atlas: {adata.n_obs} cells × {adata.n_vars} genes")
    sot.pp.niches(adata, k=args.k)

    # exact OT between a few niches, to show that the clouds are ready for the OT core
    rng = np.random.default_rng(0)
    cells = rng.choice(adata.n_obs, size=args.n_pairs, replace=False)
    clouds = sot.get.niche_clouds(adata)[cells]
    distances = sot.ot.pairwise_distances(clouds, method="exact")
    adata.uns["demo_ot"] = {"cells": cells, "w2_squared": distances}
    sc.logging.info(
        f"exact W2² between {len(cells)} niches: median {np.median(distances[np.triu_indices(len(cells), 1)]):.3f}"
    )

    h5ad_path = out / "bdtnp_niches.h5ad"
    adata.write_h5ad(h5ad_path)
    figure_path = out / "bdtnp_niches.png"
    sot.pl.niches(adata, cells=cells[:6], color="eve", dims=(0, 2), show=False, save=figure_path)
    print(f"wrote {h5ad_path} and {figure_path}")


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``spatialot`` console script."""
    parser = argparse.ArgumentParser(prog="spatialot", description="Optimal-transport geometry over spatial niches.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="build niches on the bundled BDTNP atlas; write the h5ad and a figure")
    demo.add_argument("--out", default="spatialot_demo", help="output folder (default: %(default)s)")
    demo.add_argument("-k", "--k", type=int, default=8, help="cells per niche (default: %(default)s)")
    demo.add_argument("--n-pairs", type=int, default=40, help="niches compared by exact OT (default: %(default)s)")
    demo.set_defaults(run=_demo)
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
