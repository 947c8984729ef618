"""How Euclidean is the W2 geometry of a benchmark's held-out clouds: the best any embedding can do.

Builds the held-out clouds of ``peers/wormhole.py`` (same data, split and seed), computes their
full exact W2² matrix (POT's network simplex), embeds it by classical multidimensional scaling
(the top eigenvectors of the double-centred matrix) and scores ``‖z_i − z_j‖²`` against exact
W2² on the harness's held-out pairs, at 16, 64 and 128 dimensions. A learned embedding of the
clouds (Wormhole) scores on the same pairs, so this is the figure it could reach if its encoder
were perfect; the share of negative eigenvalues says how far W2 on these clouds is from a
Euclidean geometry.

Run ``python benchmarks/peers/embedding_ceiling.py [--datasets bdtnp] [--out PATH]``
(about 7 CPU-minutes for BDTNP's 912 clouds on one core).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import tempfile
import time
from pathlib import Path

import numpy as np

# the harness by its path (benchmarks/wormhole.py has the same module name); it puts benchmarks/
# on sys.path and imports _common, which keeps benchmarks/ot.py from shadowing POT
_spec = importlib.util.spec_from_file_location("peers_wormhole", Path(__file__).resolve().parent / "wormhole.py")
harness = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(harness)

from _common import RESULTS, machine_info, print_table, write_json  # noqa: E402

DIMENSIONS = (16, 64, 128)


def ceiling(name: str, workdir: Path) -> dict:
    import torch

    import spatialot as sot
    from spatialot.ot import PointClouds

    path = workdir / f"{name}.npz"
    harness.build_data(name, path)
    data = np.load(path)
    clouds = PointClouds.from_padded(data["test_points"], data["test_mask"])
    n = len(clouds)
    first, second = np.triu_indices(n, 1)
    start = time.perf_counter()
    values = np.concatenate(
        [
            sot.ot.exact_w2_squared(clouds[first[s : s + 20_000]], clouds[second[s : s + 20_000]])
            for s in range(0, len(first), 20_000)
        ]
    )
    seconds = time.perf_counter() - start
    distances = np.zeros((n, n))
    distances[first, second] = values
    distances += distances.T
    centring = np.eye(n) - 1.0 / n
    eigenvalues, eigenvectors = np.linalg.eigh(-0.5 * centring @ distances @ centring)
    order = np.argsort(eigenvalues)[::-1]
    pairs_first, pairs_second, exact = data["held_out_first"], data["held_out_second"], data["held_out_exact"]
    row = {
        "dataset": name,
        "n_clouds": n,
        "w2_matrix_s": seconds,
        "negative_eigenvalue_share": float(-eigenvalues[eigenvalues < 0].sum() / np.abs(eigenvalues).sum()),
        "torch_threads": torch.get_num_threads(),
    }
    for dim in DIMENSIONS:
        top = order[:dim]
        embedding = eigenvectors[:, top] * np.sqrt(np.clip(eigenvalues[top], 0, None))
        estimate = ((embedding[pairs_first] - embedding[pairs_second]) ** 2).sum(1)
        row[f"cmds_{dim}_pearson"] = float(np.corrcoef(estimate, exact)[0, 1])
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="bdtnp")
    parser.add_argument("--out", default=str(RESULTS / "wormhole-embedding-ceiling-cpu.json"))
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    load_before = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory() as folder:
        rows = [ceiling(name, Path(folder)) for name in args.datasets.split(",")]
    columns = [("dataset", "dataset"), ("n_clouds", "clouds"), ("negative_eigenvalue_share", "negative share")]
    columns += [(f"cmds_{dim}_pearson", f"cMDS {dim}-D r") for dim in DIMENSIONS]
    table = print_table(rows, columns, title="Classical MDS of the exact W2² matrix of the held-out clouds")
    payload = {
        "benchmark": "wormhole-embedding-ceiling",
        "description": __doc__,
        "machine": machine_info("cpu"),
        "load_average_before": load_before,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "rows": rows,
        "table": table,
    }
    print(f"wrote {write_json(Path(args.out), payload)}")


if __name__ == "__main__":
    main()
