"""Tools: the methods run on the niches of an AnnData, results written back to it."""

__all__ = [
]
