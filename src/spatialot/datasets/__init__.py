"""Example data sets.

- :func:`bdtnp` — a real spatial atlas that ships with the package (no download): the
  Drosophila stage-6 embryo, 3,039 cells × 84 genes with 3-D positions.
- :func:`simulated_tissue` — a seeded simulated 2-D tissue of any size (100 to millions of
  cells) whose niche types, compositions and expression model are known exactly, for tests
  and benchmarks.
- :func:`w2_benchmark` — measures with known non-linear OT maps to and from N(0, I) (the
  Wasserstein-2 benchmark construction of Korotin et al. 2021), to score learned maps.
"""

from ._bdtnp import bdtnp
from ._simulated import simulated_tissue
from ._w2bench import ConvexMapFamily, w2_benchmark

__all__ = ["ConvexMapFamily", "bdtnp", "simulated_tissue", "w2_benchmark"]
