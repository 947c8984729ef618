"""Moving families of clouds through a model batch by batch."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .._settings import cpu_threads, progress_bar
from .._validation import check_int
from ..ot import IndexedClouds, PointClouds, gaussian_moments

CloudFamily = PointClouds | IndexedClouds


def take(family: CloudFamily, clouds: np.ndarray | slice, device: torch.device) -> PointClouds:
    """Clouds ``clouds`` of ``family`` as a float32 :class:`PointClouds` batch on ``device``."""
    if isinstance(family, IndexedClouds):
        return family.gather(clouds, device=device)
    if not isinstance(family, PointClouds):
        raise TypeError(f"Expected PointClouds or IndexedClouds, got {type(family).__name__}.")
    return family[clouds].to(device=device, dtype=torch.float32)


def map_batches(
    function: Callable[..., torch.Tensor],
    family: CloudFamily,
    *aligned: torch.Tensor,
    batch_size: int,
    device: torch.device,
    progress: bool = False,
    description: str = "",
) -> np.ndarray:
    """Apply ``function`` to consecutive batches of ``family`` without gradients; concatenate the results.

    Parameters
    ----------
    function
        Maps a batch on ``device`` (and the rows of ``aligned`` for it) to a tensor whose first
        axis is the batch.
    family
        The clouds, padded or indexed.
    *aligned
        Tensors with one row per cloud of ``family``, sliced alongside it and passed to
        ``function`` after the batch.
    batch_size
        Clouds per batch.
    device
        Device the batches are gathered onto.
    progress
        Show a progress bar (when the settings allow it, see :class:`spatialot.settings`).
    description
        Label of the progress bar.

    Returns
    -------
    The results of all batches as one float32 numpy array, in the order of ``family``.
    """
    batch_size = check_int("batch_size", batch_size)
    if any(len(rows) != len(family) for rows in aligned):
        raise ValueError(f"Every aligned tensor must have one row per cloud ({len(family)}).")
    results = []
    starts = range(0, len(family), batch_size)
    with torch.no_grad(), cpu_threads():
        for start in progress_bar(starts, description=description, requested=progress):
            rows = slice(start, min(start + batch_size, len(family)))
            output = function(take(family, rows, device), *(tensor[rows] for tensor in aligned))
            results.append(output.detach().to("cpu", torch.float32).numpy())
    return np.concatenate(results) if results else np.zeros((0,), dtype=np.float32)


def family_moments(
    family: CloudFamily, *, device: torch.device, batch_size: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted mean ``(n, dim)`` and covariance ``(n, dim, dim)`` of every cloud of ``family``.

    :func:`~spatialot.ot.gaussian_moments` applied batch by batch, as float32 numpy arrays.
    """
    dim = family.dim

    def stacked(batch: PointClouds) -> torch.Tensor:
        means, covariances = gaussian_moments(batch)
        return torch.cat([means, covariances.flatten(1)], dim=1)

    moments = map_batches(stacked, family, batch_size=batch_size, device=device)
    return moments[:, :dim], moments[:, dim:].reshape(-1, dim, dim)
