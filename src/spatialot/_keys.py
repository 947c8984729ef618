"""Names of the keys spatialot writes, decided in one place from ``key_added``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NicheKeys:
    """Where :func:`spatialot.pp.niches` stores a niche index under ``key_added``."""

    key_added: str

    @property
    def uns(self) -> str:
        """``.uns`` entry with the parameters."""
        return self.key_added

    @property
    def indices(self) -> str:
        """``.obsm`` entry with the padded index rows."""
        return f"{self.key_added}_indices"

    @property
    def mask(self) -> str:
        """``.obsm`` entry with the mask of real slots (only when sizes vary)."""
        return f"{self.key_added}_mask"


@dataclass(frozen=True)
class ResultKeys:
    """Where a :mod:`spatialot.tl` function stores its result under ``key_added``."""

    key_added: str

    @property
    def uns(self) -> str:
        """``.uns`` entry with the parameters, loss history and other results."""
        return self.key_added

    @property
    def obsm(self) -> str:
        """``.obsm`` entry with the per-cell embedding, ``'X_<key_added>'`` as scanpy expects."""
        return f"X_{self.key_added}"
