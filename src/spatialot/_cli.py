"""The ``spatialot`` command line: the main job without a notebook."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path


def _demo(args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")  # the command runs without a display
    import matplotlib.pyplot as plt
    import numpy as np
    import scanpy as sc

    import spatialot as sot

    sc.settings.verbosity = "info"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    adata = sot.datasets.bdtnp()
    sc.logging.info(f"loaded the BDTNP Drosophila embryo atlas: {adata.n_obs} cells × {adata.n_vars} genes")
    sot.pp.niches(adata, k=args.k)
    model = sot.tl.wormhole(adata, n_steps=args.steps, device=args.device, progress=not args.quiet)
    model.save(out / "wormhole.pt")

    h5ad_path = out / "bdtnp_wormhole.h5ad"
    adata.write_h5ad(h5ad_path)
    rng = np.random.default_rng(0)
    figures = {
        "niches": lambda ax: sot.pl.niches(adata, cells=rng.choice(adata.n_obs, 6), color="eve", dims=(0, 2), ax=ax),
        "embedding": lambda ax: sot.pl.embedding(adata, color="eve", ax=ax),
        "fidelity": lambda ax: sot.pl.distance_fidelity(adata, n_pairs=args.n_pairs, ax=ax),
        "loss": lambda ax: sot.pl.loss(adata, "wormhole", ax=ax),
    }
    figure, axes = plt.subplots(1, len(figures), figsize=(5 * len(figures), 4.8))
    for ax, draw in zip(axes, figures.values(), strict=True):
        draw(ax)
    figure.tight_layout()
    figure_path = out / "bdtnp_wormhole.png"
    figure.savefig(figure_path, dpi=120)
    print(f"wrote {h5ad_path}, {figure_path} and {out / 'wormhole.pt'}")


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``spatialot`` console script."""
    parser = argparse.ArgumentParser(prog="spatialot", description="Optimal-transport geometry over spatial niches.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="niches of the bundled BDTNP atlas embedded by Wasserstein Wormhole; writes h5ad, model, figure"
    )
    demo.add_argument("--out", default="spatialot_demo", help="output folder (default: %(default)s)")
    demo.add_argument("-k", "--k", type=int, default=8, help="cells per niche (default: %(default)s)")
    demo.add_argument("--steps", type=int, default=1000, help="Wormhole training steps (default: %(default)s)")
    demo.add_argument("--device", default="auto", help="'auto', 'cpu' or 'cuda' (default: %(default)s)")
    demo.add_argument(
        "--n-pairs", type=int, default=1000, help="niche pairs checked against exact OT (default: %(default)s)"
    )
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(run=_demo)
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
