"""Moving families of clouds through a model batch by batch."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .._settings import cpu_threads, progress_bar
from .._validation import check_int
from ..ot import IndexedClouds, PointClouds, gaussian_moments

CloudFamily = PointClouds | IndexedClouds


_STRETCH_CLOUDS = 1 << 16
"""Most clouds streamed as one stretch (one read of their rows when the features are on disk)."""

_STRETCH_VALUES = 1 << 24
"""Most feature values (64 MiB of float32) one stretch may hold in memory."""


def mean_size(family: CloudFamily) -> float:
    """The mean number of points of the clouds of ``family``."""
    sizes = family.sizes
    return float(sizes.double().mean()) if isinstance(sizes, torch.Tensor) else float(np.mean(sizes))


def take(family: CloudFamily, clouds: np.ndarray | slice, device: torch.device, *, trim: bool = False) -> PointClouds:
    """Clouds ``clouds`` of ``family`` as a float32 :class:`PointClouds` batch on ``device``.

    With ``trim``, padded slots that no cloud of the batch uses are dropped.
    """
    if isinstance(family, IndexedClouds):
        return family.gather(clouds, device=device, trim=trim)
    if not isinstance(family, PointClouds):
        raise TypeError(f"Expected PointClouds or IndexedClouds, got {type(family).__name__}.")
    batch = family[clouds]
    if trim and not bool(batch.mask.all()):
        used = batch.mask.any(dim=0)
        batch = PointClouds(batch.points[:, used], batch.mask[:, used], batch.weights[:, used])
    return batch.to(device=device, dtype=torch.float32)


def stretch_size(family: CloudFamily, batch_size: int, values_per_cloud: int | None = None) -> int:
    """Clouds per stretch: a multiple of ``batch_size`` whose rows hold at most ``2**24`` values.

    Parameters
    ----------
    family
        The clouds.
    batch_size
        Clouds per batch; a stretch holds at least one batch.
    values_per_cloud
        Values one cloud occupies while its stretch is in memory; ``max_size * dim`` when ``None``.
    """
    per_cloud = max(1, family.max_size * family.dim if values_per_cloud is None else values_per_cloud)
    clouds = min(_STRETCH_CLOUDS, _STRETCH_VALUES // per_cloud)
    return max(batch_size, clouds - clouds % batch_size)


class _Output:
    """The preallocated float32 result of a streamed map, filled stretch by stretch."""

    def __init__(self, out: np.ndarray | None, n: int):
        if out is not None:
            if not isinstance(out, np.ndarray):
                raise TypeError(f"`out` must be a numpy array (or np.memmap), got {type(out).__name__}.")
            if out.shape[:1] != (n,):
                raise ValueError(f"`out` must have one row per cloud ({n}), got shape {out.shape}.")
            if not out.flags.writeable:
                raise ValueError("`out` is read-only: open a memory map with mode 'w+' or 'r+'.")
        self.array, self.n = out, n

    def store(self, positions: slice | np.ndarray, values: torch.Tensor | np.ndarray) -> None:
        if isinstance(values, torch.Tensor):
            values = values.detach().to("cpu", torch.float32).numpy()
        if self.array is None:
            self.array = np.empty((self.n, *values.shape[1:]), dtype=np.float32)
        elif self.array.shape[1:] != values.shape[1:]:
            raise ValueError(
                f"`out` has shape {self.array.shape}, but the results have shape {(self.n, *values.shape[1:])}."
            )
        self.array[positions] = values

    def result(self) -> np.ndarray:
        return np.zeros((0,), dtype=np.float32) if self.array is None else self.array


def map_batches(
    function: Callable[..., torch.Tensor],
    family: CloudFamily,
    *aligned: torch.Tensor,
    batch_size: int,
    device: torch.device,
    progress: bool = False,
    description: str = "",
    out: np.ndarray | None = None,
    trim: bool = False,
) -> np.ndarray:
    """Apply ``function`` to consecutive batches of ``family`` without gradients, into one preallocated array.

    The clouds stream in stretches of at most ``2**16`` clouds (fewer for large clouds, see
    :func:`stretch_size`). A stretch of :class:`~spatialot.ot.IndexedClouds` whose features
    are on disk is read in one go (:meth:`~spatialot.ot.IndexedClouds.prefetch`); its batches
    are then gathered from memory. Each batch's result is written into its rows of the output,
    so no list of chunks is ever concatenated.

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
        Show a progress bar of the clouds done (when the settings allow it, see
        :class:`spatialot.settings`).
    description
        Label of the progress bar.
    out
        Array (e.g. a ``np.memmap`` opened with ``mode='w+'``) with one row per cloud to write
        the results into; a new float32 array when ``None``.
    trim
        Within each stretch, batch the clouds by increasing size and pad each batch only to its
        own largest cloud. Only for a ``function`` whose result for a cloud does not depend on
        the padding of its batch (embeddings, histograms, maps of given points).

    Returns
    -------
    ``out``, or the new float32 array, with the results in the order of ``family``.
    """
    batch_size = check_int("batch_size", batch_size)
    n = len(family)
    if any(len(rows) != n for rows in aligned):
        raise ValueError(f"Every aligned tensor must have one row per cloud ({n}).")
    output = _Output(out, n)
    stretch = stretch_size(family, batch_size)
    sizes = None
    if trim:
        sizes = family.sizes if isinstance(family, IndexedClouds) else family.sizes.cpu().numpy()
    bar = progress_bar(description=description, requested=progress, total=n, unit="clouds")
    with torch.no_grad(), cpu_threads(), bar:
        for begin in range(0, n, stretch):
            end = min(begin + stretch, n)
            source, offset = family, 0
            if isinstance(family, IndexedClouds) and family.on_disk:
                source, offset = family.prefetch(slice(begin, end)), begin
            order = None
            if sizes is not None and (sizes[begin:end] != sizes[begin]).any():
                order = begin + np.argsort(sizes[begin:end], kind="stable")
            for first in range(begin, end, batch_size):
                last = min(first + batch_size, end)
                positions = slice(first, last) if order is None else order[first - begin : last - begin]
                local = slice(first - offset, last - offset) if order is None else positions - offset
                batch = take(source, local, device, trim=trim)
                output.store(positions, function(batch, *(tensor[positions] for tensor in aligned)))
                bar.update(last - first)
    return output.result()


def map_stretches(
    function: Callable[[IndexedClouds], torch.Tensor | np.ndarray],
    family: IndexedClouds,
    *,
    stretch: int,
    progress: bool = False,
    description: str = "",
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Apply ``function`` to stretches of ``stretch`` clouds, each over a table of just its rows.

    Each stretch is :meth:`~spatialot.ot.IndexedClouds.prefetch`-ed (its rows read once, from
    disk or memory) and ``function`` maps it to one result row per cloud, written into the
    preallocated output. For work done once per distinct row (e.g. coding points) rather than
    once per cloud and point. Parameters and result as in :func:`map_batches`.
    """
    n = len(family)
    output = _Output(out, n)
    bar = progress_bar(description=description, requested=progress, total=n, unit="clouds")
    with torch.no_grad(), cpu_threads(), bar:
        for begin in range(0, n, stretch):
            end = min(begin + stretch, n)
            output.store(slice(begin, end), function(family.prefetch(slice(begin, end))))
            bar.update(end - begin)
    return output.result()


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


def pooled_moments(
    family: CloudFamily, *, device: torch.device, batch_size: int = 1024
) -> tuple[np.ndarray, np.ndarray, float]:
    """Averages over the clouds of ``family`` of their means and second moments, streamed in batches.

    What :func:`family_moments` followed by an average over clouds gives, without the
    ``(n, dim, dim)`` array: the float32 moments of each batch are summed in float64.

    Returns
    -------
    ``(mean, second, largest)``: the average cloud mean ``(dim,)``, the average second moment
    ``E[x xᵀ]`` ``(dim, dim)``, and the largest magnitude of a cloud's float32 covariance (``inf``
    where one overflowed).
    """
    batch_size = check_int("batch_size", batch_size)
    dim, n = family.dim, len(family)
    mean_sum, second_sum, largest = np.zeros(dim), np.zeros((dim, dim)), 0.0
    with torch.no_grad(), cpu_threads():
        for begin in range(0, n, stretch_size(family, batch_size)):
            end = min(begin + stretch_size(family, batch_size), n)
            source, offset = family, 0
            if isinstance(family, IndexedClouds) and family.on_disk:
                source, offset = family.prefetch(slice(begin, end)), begin
            for first in range(begin, end, batch_size):
                batch = take(source, slice(first - offset, min(first + batch_size, end) - offset), device)
                means, covariances = (m.cpu().numpy() for m in gaussian_moments(batch))
                if covariances.size:
                    largest = max(largest, float(np.abs(covariances).max()))
                means = means.astype(np.float64)
                mean_sum += means.sum(0)
                second_sum += covariances.astype(np.float64).sum(0) + means.T @ means
    return mean_sum / n, second_sum / n, largest
