"""Names of the keys spatialot writes, decided in one place from ``key_added`` and checked there.

Every class refuses, when made, a key that an h5ad file cannot store (see
:func:`~spatialot._validation.check_key`), so that a bad ``key_added`` fails before any work.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ._validation import check_key


@dataclass(frozen=True)
class _Keys:
    key_added: str
    argument: str = field(default="key_added", compare=False, repr=False)
    """Name of the argument the key came from, for the error message."""

    def __post_init__(self) -> None:
        check_key(self.argument, self.key_added)


@dataclass(frozen=True)
class NicheKeys(_Keys):
    """Where :func:`spatialot.pp.niches` stores niches under ``key_added``."""

    @property
    def uns(self) -> str:
        """``.uns`` entry with the parameters."""
        return self.key_added

    @property
    def members(self) -> str:
        """``.obsp`` entry with the members of every niche: ``(i, j)`` is ``r + 1`` for member ``r`` of ``i``'s niche.

        Stored cell × cell, so that AnnData subsets, reorders and concatenates it with the cells.
        """
        return f"{self.key_added}_members"

    @property
    def size(self) -> str:
        """``.obs`` column with the number of members of every niche, to detect members lost by a subset."""
        return f"{self.key_added}_size"

    @property
    def legacy(self) -> tuple[str, str]:
        """``.obsm`` entries of earlier versions (row positions), which no subset or reorder kept right."""
        return f"{self.key_added}_indices", f"{self.key_added}_mask"


@dataclass(frozen=True)
class ResultKeys(_Keys):
    """Where a :mod:`spatialot.tl` function stores its result under ``key_added``."""

    @property
    def uns(self) -> str:
        """``.uns`` entry with the parameters, loss history and other results."""
        return self.key_added

    @property
    def obsm(self) -> str:
        """``.obsm`` entry with the per-cell embedding, ``'X_<key_added>'`` as scanpy expects."""
        return f"X_{self.key_added}"


@dataclass(frozen=True)
class GraphKeys(_Keys):
    """Where a neighbour graph is stored under ``key_added``, in the layout of :func:`scanpy.pp.neighbors`."""

    @property
    def uns(self) -> str:
        """``.uns`` entry naming the two matrices, with the parameters."""
        return self.key_added

    @property
    def distances(self) -> str:
        """``.obsp`` entry with the distances to the neighbours."""
        return f"{self.key_added}_distances"

    @property
    def connectivities(self) -> str:
        """``.obsp`` entry with the connectivities."""
        return f"{self.key_added}_connectivities"
