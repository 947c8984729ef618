"""A batch of weighted point clouds of variable size, padded to one tensor."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from .._validation import as_tensor

_READ_ROWS = 1 << 16
"""Most distinct rows requested from a feature table on disk at once (see :meth:`IndexedClouds.read_features`)."""

_SLAB_VALUES = 1 << 24
"""A contiguous slab of rows spanning at most this many values (64 MiB of float32) is read whole."""


@dataclass(frozen=True)
class PointClouds:
    """A batch of weighted point clouds, padded to a common size.

    This is the one input format of every solver in :mod:`spatialot.ot` and every model in
    :mod:`spatialot.models`. Cloud ``b`` consists of the points ``points[b, mask[b]]`` with
    probability weights ``weights[b, mask[b]]``; padded slots carry weight 0 and zero
    coordinates, so they contribute nothing to any OT cost or pooled statistic.

    Parameters
    ----------
    points
        Float tensor of shape ``(batch, size, dim)``.
    mask
        Boolean tensor of shape ``(batch, size)``, ``True`` for real points.
    weights
        Float tensor of shape ``(batch, size)``: non-negative, zero on padding, summing to 1
        over each cloud.

    Notes
    -----
    Build instances with :meth:`from_padded` or :meth:`from_list`, which validate, zero the
    padding and normalise the weights; the plain constructor trusts its input.

    Examples
    --------
    >>> import numpy as np
    >>> clouds = PointClouds.from_list([np.zeros((3, 2)), np.ones((5, 2))])
    >>> len(clouds), clouds.dim, clouds.max_size, clouds.sizes.tolist()
    (2, 2, 5, [3, 5])
    """

    points: torch.Tensor
    mask: torch.Tensor
    weights: torch.Tensor

    @classmethod
    def from_padded(
        cls,
        points: torch.Tensor | np.ndarray,
        mask: torch.Tensor | np.ndarray | None = None,
        weights: torch.Tensor | np.ndarray | None = None,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> PointClouds:
        """Build a batch from padded arrays.

        Parameters
        ----------
        points
            Array of shape ``(batch, size, dim)``.
        mask
            Boolean array of shape ``(batch, size)``; all points are real when ``None``.
        weights
            Non-negative array of shape ``(batch, size)``; uniform over real points when
            ``None``. Renormalised to sum to 1 over each cloud.
        dtype
            Floating dtype of ``points`` and ``weights``.
        device
            Device of the tensors; that of ``points`` when ``None``.

        Returns
        -------
        The validated batch.
        """
        points = as_tensor(points, dtype=dtype, device=device)
        device = points.device
        if points.ndim != 3:
            raise ValueError(f"`points` must have shape (batch, size, dim), got shape {tuple(points.shape)}.")
        batch, size, _ = points.shape
        if mask is None:
            mask = torch.ones(batch, size, dtype=torch.bool, device=device)
        else:
            mask = as_tensor(mask, device=device).to(torch.bool)
            if mask.shape != (batch, size):
                raise ValueError(f"`mask` must have shape {(batch, size)}, got {tuple(mask.shape)}.")
        if weights is None:
            weights = mask.to(dtype)
        else:
            weights = as_tensor(weights, dtype=dtype, device=device)
            if weights.shape != (batch, size):
                raise ValueError(f"`weights` must have shape {(batch, size)}, got {tuple(weights.shape)}.")
            if bool((weights < 0).any()):
                raise ValueError("`weights` must be non-negative.")
            weights = weights * mask
        total = weights.sum(dim=1, keepdim=True)
        if batch and bool((total <= 0).any()):
            empty = int(torch.nonzero(total[:, 0] <= 0)[0, 0])
            raise ValueError(f"Cloud {empty} has no point with positive weight; every cloud needs at least one.")
        if not bool(torch.isfinite(points[mask]).all()):
            raise ValueError("`points` contains NaN or infinite values.")
        points = torch.where(mask[..., None], points, torch.zeros((), dtype=dtype, device=device))
        return cls(points=points, mask=mask, weights=weights / total)

    @classmethod
    def from_list(
        cls,
        clouds: Sequence[torch.Tensor | np.ndarray],
        weights: Sequence[torch.Tensor | np.ndarray] | None = None,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> PointClouds:
        """Pad a list of clouds of shapes ``(size_i, dim)`` into one batch.

        Parameters
        ----------
        clouds
            Point arrays with the same ``dim`` and any number of points.
        weights
            Optional weights per cloud, of shapes ``(size_i,)``; uniform when ``None``.
        dtype
            Floating dtype of the result.
        device
            Device of the result.

        Returns
        -------
        The padded batch.
        """
        if len(clouds) == 0:
            raise ValueError("`clouds` is empty.")
        arrays = [as_tensor(c, dtype=dtype) for c in clouds]
        dims = {a.shape[1] if a.ndim == 2 else None for a in arrays}
        if len(dims) != 1 or None in dims:
            raise ValueError("Every cloud in `clouds` must be a 2-D array (size, dim) with the same dim.")
        if weights is not None and len(weights) != len(arrays):
            raise ValueError(f"`weights` has {len(weights)} entries for {len(arrays)} clouds.")
        size = max(a.shape[0] for a in arrays)
        points = torch.zeros(len(arrays), size, dims.pop(), dtype=dtype)
        mask = torch.zeros(len(arrays), size, dtype=torch.bool)
        padded_weights = None if weights is None else torch.zeros(len(arrays), size, dtype=dtype)
        for i, cloud in enumerate(arrays):
            points[i, : len(cloud)] = cloud
            mask[i, : len(cloud)] = True
            if padded_weights is not None:
                padded_weights[i, : len(cloud)] = as_tensor(weights[i], dtype=dtype)
        return cls.from_padded(points, mask, padded_weights, dtype=dtype, device=device)

    def __len__(self) -> int:
        return self.points.shape[0]

    def __getitem__(self, index: int | slice | Sequence[int] | torch.Tensor | np.ndarray) -> PointClouds:
        """Select clouds by integers, a slice or a boolean mask; an integer keeps the batch dimension."""
        if isinstance(index, int | np.integer):
            index = slice(int(index), int(index) + 1 or None)
        elif isinstance(index, torch.Tensor):
            # moved as it is: a round trip through numpy would wait for a GPU to finish its queue
            index = index.to(self.points.device)
            index = index if index.dtype == torch.bool else index.long()
        elif not isinstance(index, slice):
            index = np.asarray(index)
            index = as_tensor(index, dtype=torch.bool if index.dtype == bool else torch.long, device=self.points.device)
        return PointClouds(self.points[index], self.mask[index], self.weights[index])

    @property
    def dim(self) -> int:
        """Dimension of the points."""
        return self.points.shape[2]

    @property
    def max_size(self) -> int:
        """Padded size: the largest number of points a cloud may hold."""
        return self.points.shape[1]

    @property
    def sizes(self) -> torch.Tensor:
        """Number of real points in each cloud."""
        return self.mask.sum(dim=1)

    @property
    def device(self) -> torch.device:
        """Device of the tensors."""
        return self.points.device

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> PointClouds:
        """Move the batch to ``device`` and/or cast its floats to ``dtype``."""
        weights = self.weights.to(device=device, dtype=dtype)
        if dtype is not None and dtype != self.weights.dtype:
            # weights normalised in a coarser dtype do not sum to 1 in a finer one
            weights = weights / weights.sum(dim=1, keepdim=True)
        return PointClouds(self.points.to(device=device, dtype=dtype), self.mask.to(device=device), weights)

    def cloud(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Return the real points and weights of one cloud as numpy arrays."""
        keep = self.mask[index]
        return (
            self.points[index, keep].detach().cpu().numpy(),
            self.weights[index, keep].detach().cpu().numpy(),
        )


class IndexedClouds:
    """A family of clouds stored as rows of indices into one table of points.

    Cloud ``i`` is made of the rows ``indices[i, mask[i]]`` of ``features``. Nothing is copied
    until clouds are requested: ``family[cells]`` gathers the requested clouds into a padded
    :class:`PointClouds` batch, so memory stays that of the table plus the index, O(n·k).

    Parameters
    ----------
    features
        Table of points, shape ``(n_points, dim)``: a numpy array (memory-mapped ones included),
        a scipy sparse matrix, or a table on disk that is indexed by rows — an ``h5py.Dataset``,
        or the sparse dataset of an AnnData read with ``backed='r'``. A table on disk is read
        only where clouds are gathered, at most ``2**16`` distinct rows at a time.
    indices
        Integer array of shape ``(n_clouds, max_size)``; padded slots may hold any value.
    mask
        Boolean array of shape ``(n_clouds, max_size)``, ``True`` for real points; every slot
        is real when ``None``.

    Examples
    --------
    >>> import numpy as np
    >>> features = np.arange(10.0).reshape(5, 2)
    >>> family = IndexedClouds(features, np.array([[0, 1, 2], [3, 4, 0]]), np.array([[1, 1, 1], [1, 1, 0]], bool))
    >>> len(family), family.dim, family.sizes.tolist()
    (2, 2, [3, 2])
    >>> family[[1]].points.shape
    torch.Size([1, 3, 2])
    >>> family.prefetch(slice(1, 2)).features  # the rows cloud 1 uses, and nothing else
    array([[6., 7.],
           [8., 9.]])
    """

    def __init__(self, features, indices: np.ndarray, mask: np.ndarray | None = None):
        shape = getattr(features, "shape", None)
        if shape is None or not hasattr(features, "__getitem__"):
            raise TypeError(
                f"`features` must be an array, a sparse matrix or a table on disk indexed by rows, "
                f"got {type(features).__name__}."
            )
        if len(shape) != 2:
            raise ValueError(f"`features` must be 2-D (n_points, dim), got shape {tuple(shape)}.")
        if indices.ndim != 2:
            raise ValueError(f"`indices` must be 2-D (n_clouds, max_size), got shape {indices.shape}.")
        if mask is not None and mask.shape != indices.shape:
            raise ValueError(f"`mask` must have the shape of `indices` {indices.shape}, got {mask.shape}.")
        self.features = features
        self.indices = indices
        self.mask = np.ones(indices.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)

    def __len__(self) -> int:
        return self.indices.shape[0]

    @property
    def dim(self) -> int:
        """Dimension of the points."""
        return self.features.shape[1]

    @property
    def max_size(self) -> int:
        """Padded size of every gathered batch."""
        return self.indices.shape[1]

    @property
    def sizes(self) -> np.ndarray:
        """Number of points of every cloud."""
        return self.mask.sum(axis=1)

    @property
    def on_disk(self) -> bool:
        """Whether the feature table is read from disk (neither a numpy array nor a scipy sparse matrix)."""
        return not (isinstance(self.features, np.ndarray) or sp.issparse(self.features))

    def read_features(self, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` of the feature table as a dense numpy array ``(len(rows), dim)``, in that order.

        A numpy array or sparse matrix is indexed at once. A table on disk is read as its distinct
        rows in increasing order (as h5py requires), ``2**16`` of them at a time: each group as
        the contiguous slab of rows it spans when that slab holds at most twice its rows or
        ``2**24`` values, else as a list of rows. A read therefore holds at most
        ``max(2 * 2**16 rows, 2**24 values)``.

        Parameters
        ----------
        rows
            Integer row positions, in any order, repeats allowed.

        Returns
        -------
        The rows, in the dtype of the table.
        """
        rows = np.asarray(rows, dtype=np.intp)
        if not self.on_disk:
            return _dense(self.features[rows])
        distinct, inverse = np.unique(rows, return_inverse=True)
        table = np.empty((len(distinct), self.dim), dtype=self.features.dtype)
        for start in range(0, len(distinct), _READ_ROWS):
            part = distinct[start : start + _READ_ROWS]
            low, high = int(part[0]), int(part[-1]) + 1
            # a slab is one read, far faster than a list of rows (from h5py as from anndata's
            # sparse datasets); it is read when it holds at most twice the rows needed or 2**24 values
            if high - low <= max(2 * len(part), _SLAB_VALUES // self.dim):
                block = _dense(self.features[low:high])[part - low]
            else:
                block = _dense(self.features[part])
            table[start : start + len(part)] = block
        return table[inverse.ravel()]

    def prefetch(self, clouds: slice | Sequence[int] | np.ndarray) -> IndexedClouds:
        """The clouds ``clouds`` over an in-memory table of just the rows they use.

        Streaming over a family whose features are on disk reads each stretch of clouds this
        way: one read of its rows (:meth:`read_features`), then batches gathered from memory.
        The gathered batches are those of the original family, bit for bit.

        Parameters
        ----------
        clouds
            Which clouds: a slice or positions.

        Returns
        -------
        An :class:`IndexedClouds` of ``len(clouds)`` clouds with a dense table of at most
        ``len(clouds) * max_size`` rows.
        """
        rows = np.asarray(self.indices[clouds])
        mask = self.mask[clouds]
        used = np.unique(rows[mask])
        # padded slots point at the first row read: their values are never used
        local = np.searchsorted(used, np.where(mask, rows, used[0] if len(used) else 0))
        return IndexedClouds(self.read_features(used), local, mask)

    def gather(
        self,
        clouds: int | slice | Sequence[int] | np.ndarray | None = None,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        trim: bool = False,
    ) -> PointClouds:
        """Gather clouds into a padded batch with uniform weights.

        Parameters
        ----------
        clouds
            Which clouds: positions, a boolean mask, a slice or ``None`` for all.
        dtype
            Floating dtype of the batch.
        device
            Device of the batch.
        trim
            Drop the padded slots that no cloud of the batch uses, so that the batch is padded to
            its own largest cloud rather than to :attr:`max_size`.

        Returns
        -------
        The clouds as a :class:`PointClouds` batch.
        """
        selection = slice(None) if clouds is None else clouds
        if isinstance(selection, int | np.integer):
            selection = [selection]
        rows = np.asarray(self.indices[selection])
        mask = self.mask[selection]
        if trim and mask.size and not mask.all():
            used = mask.any(axis=0)
            rows, mask = rows[:, used], mask[:, used]
        flat = np.where(mask, rows, 0).ravel()
        points = self.read_features(flat).reshape(*rows.shape, self.dim)
        return PointClouds.from_padded(points, mask, dtype=dtype, device=device)

    def __getitem__(self, clouds) -> PointClouds:
        return self.gather(clouds)


def _dense(block) -> np.ndarray:
    """A block of rows read from a feature table, as a dense numpy array."""
    return block.toarray() if hasattr(block, "toarray") else np.asarray(block)
