"""Train Wasserstein Wormhole on several processes with ``torchrun``; the same script runs alone too.

Nothing below knows about the processes: ``fit`` finds torchrun's environment, joins the process
group (NCCL on GPUs, gloo on CPUs), draws its own minibatches on every process and averages the
gradients with ``DistributedDataParallel``. Only writing the results is left to rank 0.

    torchrun --standalone --nproc_per_node=2 examples/torchrun_wormhole.py                 # 2 CPU processes
    torchrun --standalone --nproc_per_node=4 examples/torchrun_wormhole.py --precision bfloat16  # 4 GPUs
    python examples/torchrun_wormhole.py                                                   # one process

Run the same command again after a crash: training resumes from the checkpoint.
"""

import argparse
import os

import spatialot as sot

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--cells", type=int, default=20_000, help="cells of the simulated tissue")
parser.add_argument("--steps", type=int, default=2000, help="optimiser steps")
parser.add_argument("--batch-size", type=int, default=16, help="niches per step and process")
parser.add_argument("--precision", default="float32", choices=["float32", "bfloat16"])
parser.add_argument("--out", default="wormhole_run", help="folder of the checkpoint and the results")
args = parser.parse_args()

adata = sot.datasets.simulated_tissue(args.cells, random_state=0)
sot.pp.niches(adata, k=8, use_rep="X_latent")
niches = sot.get.niche_clouds(adata)

model = sot.models.Wormhole(niches.dim, n_components=32)
model.fit(
    niches,
    n_steps=args.steps,
    batch_size=args.batch_size,  # per process: the step sees batch_size × processes niches
    precision=args.precision,
    checkpoint=os.path.join(args.out, "checkpoint.pt"),  # resumed from when it exists
    checkpoint_every=200,
)

if int(os.environ.get("RANK", "0")) == 0:  # every process holds the same weights: one writes
    adata.obsm["X_wormhole"] = model.encode(niches, progress=True)
    model.save(os.path.join(args.out, "wormhole.pt"))
    adata.write_h5ad(os.path.join(args.out, "tissue.h5ad"))
