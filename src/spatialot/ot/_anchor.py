"""OT between histograms on one shared set of anchors: every problem has the same k × k cost.

This is the solver side of Anchor Space OT (ASOT): once every cloud is a weight vector on the
same ``k`` anchors, all problems share one cost matrix, so entropic OT for thousands of pairs at
once is a few dense ``(batch, k) @ (k, k)`` matrix products per iteration. The cost is the
squared-Euclidean distance between anchors, so every value is a :math:`W_2^2` (squared
2-Wasserstein distance) between the anchor histograms, not the Euclidean (W1-type) cost of the
ASOT paper.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import ot as pot
import torch

from .._settings import cpu_threads, progress_bar
from .._validation import as_tensor, check_int

AnchorMethod = Literal["sinkhorn", "exact"]
ANCHOR_METHODS: tuple[str, ...] = ("sinkhorn", "exact")
CPU_BATCH_ENTRIES = 2**18
"""Histogram entries (pairs × anchors) solved together on CPU when ``batch_size`` is not given: the
working set of a chunk then stays in cache."""
GPU_BATCH_ENTRIES = 2**26
"""Histogram entries (pairs × anchors) solved together on a GPU when ``batch_size`` is not given."""
_KERNEL_LIMIT = {torch.float32: 30.0, torch.float64: 300.0}
"""Largest ``max(C) / epsilon`` at which ``exp(-C / epsilon)`` and the scalings stay finite."""


def anchor_cost(anchors: torch.Tensor | np.ndarray, other: torch.Tensor | np.ndarray | None = None) -> torch.Tensor:
    """Shared cost ``C[i, j] = ||anchors[i] - other[j]||^2`` (squared Euclidean, so OT values are W2²).

    Parameters
    ----------
    anchors
        Array of shape ``(k, dim)``.
    other
        Array of shape ``(m, dim)``; ``anchors`` when ``None``.

    Returns
    -------
    Tensor of shape ``(k, m)``, with an exactly zero diagonal when ``other`` is ``None``.

    Examples
    --------
    >>> import torch
    >>> anchor_cost(torch.tensor([[0.0, 0.0], [3.0, 4.0]]))
    tensor([[ 0., 25.],
            [25.,  0.]])
    """
    x = as_tensor(anchors)
    y = x if other is None else as_tensor(other, dtype=x.dtype, device=x.device)
    cost = ((x**2).sum(1)[:, None] + (y**2).sum(1)[None, :] - 2 * x @ y.T).clamp_min(0)
    if other is None:
        cost = cost * (1 - torch.eye(len(x), dtype=cost.dtype, device=cost.device))
    return cost


def anchor_sinkhorn(
    a: torch.Tensor,
    b: torch.Tensor,
    cost: torch.Tensor,
    *,
    epsilon: float,
    n_iter: int = 20,
    tol: float | None = None,
    check_every: int = 10,
) -> torch.Tensor:
    r"""Entropic OT between many pairs of histograms that share one cost matrix.

    For every ``p``, runs ``n_iter`` Sinkhorn iterations for
    :math:`\min_{P \in U(a_p, b_p)} \langle P, C\rangle + \varepsilon\, \mathrm{KL}(P \,|\, a_p \otimes b_p)`
    and returns the transport cost :math:`\langle P, C\rangle`. Because ``C`` is shared, the
    kernel :math:`K = e^{-C/\varepsilon}` is computed once and every iteration is two dense
    ``(batch, k) @ (k, k)`` products. When ``max(C) / epsilon`` is too large for the kernel in the
    dtype of the inputs, the iterations run in float64, and beyond that in the log domain (one
    ``(batch, k, k)`` tensor per iteration, slower but stable). Differentiable in ``a``, ``b``
    and ``cost`` (unrolled iterations).

    Parameters
    ----------
    a, b
        Histograms of shape ``(batch, k)`` and ``(batch, m)``: non-negative, summing to 1 per row.
        Zero entries are allowed.
    cost
        Shared cost of shape ``(k, m)``, e.g. :func:`anchor_cost` (squared Euclidean: values are
        :math:`W_2^2` estimates).
    epsilon
        Entropic regularisation, in the units of ``cost``.
    n_iter
        Number of Sinkhorn iterations (at most, when ``tol`` is given).
    tol
        Stop early once the L1 error of the row marginals of every pair is below ``tol``.
    check_every
        Check ``tol`` every this many iterations.

    Returns
    -------
    Tensor of shape ``(batch,)``: :math:`\langle P, C\rangle`, in squared units.

    Examples
    --------
    >>> import torch
    >>> cost = anchor_cost(torch.tensor([[0.0], [1.0]]))
    >>> a, b = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    >>> anchor_sinkhorn(a, b, cost, epsilon=0.01)
    tensor([1.])
    """
    if epsilon <= 0:
        raise ValueError(f"`epsilon` must be positive, got {epsilon}.")
    n_iter = check_int("n_iter", n_iter)
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[0]:
        raise ValueError(
            f"`a` and `b` must be (batch, k) with the same batch, got {tuple(a.shape)} and {tuple(b.shape)}."
        )
    if cost.shape != (a.shape[1], b.shape[1]):
        raise ValueError(f"`cost` must have shape {(a.shape[1], b.shape[1])}, got {tuple(cost.shape)}.")
    dtype = a.dtype if a.dtype in _KERNEL_LIMIT else torch.float32
    ratio = float(cost.detach().max()) / epsilon
    if ratio <= _KERNEL_LIMIT[dtype]:
        return _kernel_sinkhorn(a.to(dtype), b.to(dtype), cost.to(dtype), epsilon, n_iter, tol, check_every)
    if ratio <= _KERNEL_LIMIT[torch.float64]:
        value = _kernel_sinkhorn(a.double(), b.double(), cost.double(), epsilon, n_iter, tol, check_every)
        return value.to(dtype)
    return _log_sinkhorn(a.to(dtype), b.to(dtype), cost.to(dtype), epsilon, n_iter, tol, check_every)


def _kernel_sinkhorn(a, b, cost, epsilon, n_iter, tol, check_every):
    kernel = torch.exp(-cost / epsilon)
    kernel_t = kernel.T.contiguous()
    if not (torch.is_grad_enabled() and (a.requires_grad or b.requires_grad or cost.requires_grad)):
        return _kernel_sinkhorn_inplace(a, b, cost, kernel, kernel_t, n_iter, tol, check_every)
    v = torch.ones_like(b)
    for step in range(n_iter):
        u = a / (v @ kernel_t)
        v = b / (u @ kernel)
        if tol is not None and (step + 1) % check_every == 0:
            error = (u * (v @ kernel_t) - a).abs().sum(1).max()
            if float(error) < tol:
                break
    return ((u @ (kernel * cost)) * v).sum(1)


def _kernel_sinkhorn_inplace(a, b, cost, kernel, kernel_t, n_iter, tol, check_every):
    """The same iterations writing into preallocated buffers: no allocation per step, for inference."""
    u, v = torch.empty_like(a), torch.ones_like(b)
    row_sums, column_sums = torch.empty_like(a), torch.empty_like(b)
    for step in range(n_iter):
        torch.mm(v, kernel_t, out=row_sums)
        torch.div(a, row_sums, out=u)
        torch.mm(u, kernel, out=column_sums)
        torch.div(b, column_sums, out=v)
        if tol is not None and (step + 1) % check_every == 0:
            error = (u * (v @ kernel_t) - a).abs().sum(1).max()
            if float(error) < tol:
                break
    return (torch.mm(u, kernel * cost) * v).sum(1)


def _log_sinkhorn(a, b, cost, epsilon, n_iter, tol, check_every):
    log_a = torch.where(a > 0, a.log(), -torch.inf)
    log_b = torch.where(b > 0, b.log(), -torch.inf)
    f, g = torch.zeros_like(a), torch.zeros_like(b)
    # ε-scaling: one step at each ε halving down from the largest cost, as small ε converges slowly
    scale = float(cost.detach().max())
    while scale > epsilon:
        f, g = _log_step(cost, log_a, log_b, g, scale)
        scale /= 2
    kernel = -cost / epsilon
    for step in range(n_iter):
        f, g = _log_step(cost, log_a, log_b, g, epsilon)
        if tol is not None and (step + 1) % check_every == 0:
            rows = torch.logsumexp(kernel[None] + ((f[:, :, None] + g[:, None, :]) / epsilon) + log_b[:, None, :], 2)
            error = ((log_a + rows).exp() - a).abs().sum(1).max()
            if float(error) < tol:
                break
    log_plan = log_a[:, :, None] + log_b[:, None, :] + (f[:, :, None] + g[:, None, :] - cost) / epsilon
    return (log_plan.exp() * cost).sum((1, 2))


def _log_step(cost, log_a, log_b, g, epsilon):
    kernel = -cost / epsilon
    f = -epsilon * torch.logsumexp(kernel[None] + (log_b + g / epsilon)[:, None, :], dim=2)
    g = -epsilon * torch.logsumexp(kernel.T[None] + (log_a + f / epsilon)[:, None, :], dim=2)
    return f, g


def anchor_exact(a: np.ndarray, b: np.ndarray, cost: np.ndarray, *, progress: bool = False) -> np.ndarray:
    r"""Exact OT between pairs of anchor histograms (POT's network simplex), one pair at a time.

    Only the anchors with positive weight enter each linear program, so sparse histograms (hard
    k-means codes) are cheap. Meant for small ``k`` or few pairs.

    Parameters
    ----------
    a, b
        Histograms of shape ``(batch, k)`` and ``(batch, m)``.
    cost
        Shared cost of shape ``(k, m)`` (squared Euclidean: the values are :math:`W_2^2`).
    progress
        Show a progress bar.

    Returns
    -------
    Float64 array of shape ``(batch,)``.

    Examples
    --------
    >>> import numpy as np
    >>> cost = np.array([[0.0, 1.0], [1.0, 0.0]])
    >>> anchor_exact(np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]]), cost)
    array([1.])
    """
    a, b, cost = (np.asarray(t, dtype=np.float64) for t in (a, b, cost))
    values = np.empty(len(a), dtype=np.float64)
    for p in progress_bar(range(len(a)), description="exact anchor OT", requested=progress):
        rows, cols = np.flatnonzero(a[p] > 0), np.flatnonzero(b[p] > 0)
        x, y = a[p, rows], b[p, cols]
        values[p] = pot.emd2(x / x.sum(), y / y.sum(), cost[np.ix_(rows, cols)])
    return values


def _check_histograms(name: str, h) -> torch.Tensor:
    h = as_tensor(h)
    if not h.is_floating_point():
        h = h.to(torch.float32)
    if h.ndim != 2:
        raise ValueError(f"`{name}` must be a 2-D array (n, k) of anchor weights, got shape {tuple(h.shape)}.")
    if bool((h < 0).any()) or not bool(torch.isfinite(h).all()):
        raise ValueError(f"`{name}` must hold finite non-negative anchor weights.")
    if len(h) and not torch.allclose(h.sum(1).double(), torch.ones(len(h), dtype=torch.float64), atol=1e-3):
        raise ValueError(f"Every row of `{name}` must sum to 1 (weights on the anchor simplex).")
    return h


def _default_batch(batch_size: int | None, device: torch.device, n_anchors: int) -> int:
    if batch_size is not None:
        return check_int("batch_size", batch_size)
    entries = GPU_BATCH_ENTRIES if device.type != "cpu" else CPU_BATCH_ENTRIES
    return max(1, entries // max(n_anchors, 1))


def _solve(a, b, cost, method, epsilon, n_iter, tol, device) -> np.ndarray:
    if method == "exact":
        return anchor_exact(a.cpu().numpy(), b.cpu().numpy(), cost.cpu().numpy())
    with torch.no_grad():
        value = anchor_sinkhorn(a.to(device), b.to(device), cost, epsilon=epsilon, n_iter=n_iter, tol=tol)
    return value.double().cpu().numpy()


def _prepare(h, other, cost, method, epsilon, device):
    if method not in ANCHOR_METHODS:
        raise ValueError(f"`method` must be one of {ANCHOR_METHODS}, got {method!r}.")
    if method == "sinkhorn" and (epsilon is None or not epsilon > 0):
        raise ValueError(f"`epsilon` must be positive for method='sinkhorn', got {epsilon}.")
    h = _check_histograms("h", h)
    other = h if other is None else _check_histograms("other", other)
    cost = as_tensor(cost)
    if cost.shape != (h.shape[1], other.shape[1]):
        raise ValueError(f"`cost` must have shape {(h.shape[1], other.shape[1])}, got {tuple(cost.shape)}.")
    device = torch.device(device) if device is not None else cost.device
    return h, other, cost.to(device=device, dtype=h.dtype), device


@cpu_threads()
def anchor_paired_distances(
    h: torch.Tensor | np.ndarray,
    other: torch.Tensor | np.ndarray,
    cost: torch.Tensor | np.ndarray,
    *,
    method: AnchorMethod = "sinkhorn",
    epsilon: float | None = None,
    n_iter: int = 20,
    tol: float | None = None,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> np.ndarray:
    r"""OT between ``h[p]`` and ``other[p]`` for every ``p``, on one shared anchor cost.

    Parameters
    ----------
    h, other
        Anchor histograms of shape ``(n, k)`` and ``(n, m)``, rows on the simplex.
    cost
        Shared cost ``(k, m)``, squared Euclidean between anchors (values are :math:`W_2^2`).
    method
        ``'sinkhorn'`` (:func:`anchor_sinkhorn`, batched) or ``'exact'`` (:func:`anchor_exact`).
    epsilon
        Entropic regularisation of ``'sinkhorn'``, in the units of ``cost``.
    n_iter, tol
        As in :func:`anchor_sinkhorn`.
    batch_size
        Pairs per chunk: bounds memory to ``O(batch_size * k)``. Default
        :data:`CPU_BATCH_ENTRIES` / ``k`` on CPU, :data:`GPU_BATCH_ENTRIES` / ``k`` on a GPU.
    device
        Device of the Sinkhorn iterations; that of ``cost`` when ``None``.
    progress
        Show a progress bar.

    Returns
    -------
    Float64 array of shape ``(n,)`` in squared units.

    Examples
    --------
    >>> import numpy as np
    >>> cost = anchor_cost(np.array([[0.0], [1.0], [2.0]]))
    >>> h = np.array([[1.0, 0, 0], [0, 1.0, 0]])
    >>> anchor_paired_distances(h, h[[1, 0]], cost, method="exact")
    array([1., 1.])
    """
    h, other, cost, device = _prepare(h, other, cost, method, epsilon, device)
    if len(h) != len(other):
        raise ValueError(f"`h` and `other` must have the same number of rows, got {len(h)} and {len(other)}.")
    batch_size = _default_batch(batch_size, device, max(h.shape[1], other.shape[1]))
    values = np.empty(len(h), dtype=np.float64)
    for start in progress_bar(range(0, len(h), batch_size), description="anchor OT", requested=progress):
        chunk = slice(start, start + batch_size)
        values[chunk] = _solve(h[chunk], other[chunk], cost, method, epsilon, n_iter, tol, device)
    return values


def _row_blocks(n_rows: int, n_cols: int, batch_size: int):
    rows_per_block = max(1, batch_size // max(n_cols, 1))
    return [(start, min(start + rows_per_block, n_rows)) for start in range(0, n_rows, rows_per_block)]


def _block(h, other, cost, start, stop, col_start, method, epsilon, n_iter, tol, device) -> np.ndarray:
    """Distances of rows ``start:stop`` of ``h`` to columns ``col_start:`` of ``other``."""
    rows, cols = h[start:stop], other[col_start:]
    a = rows.repeat_interleave(len(cols), dim=0)
    b = cols.repeat(len(rows), 1)
    return _solve(a, b, cost, method, epsilon, n_iter, tol, device).reshape(len(rows), len(cols))


@cpu_threads()
def anchor_pairwise_distances(
    h: torch.Tensor | np.ndarray,
    other: torch.Tensor | np.ndarray | None,
    cost: torch.Tensor | np.ndarray,
    *,
    method: AnchorMethod = "sinkhorn",
    epsilon: float | None = None,
    n_iter: int = 20,
    tol: float | None = None,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> np.ndarray:
    r"""Matrix of OT distances between every histogram of ``h`` and every one of ``other``.

    Pairs are solved in chunks of whole rows of at most ``batch_size`` pairs, so the working
    memory is ``O(batch_size * k)`` whatever the size of the matrix.

    Parameters
    ----------
    h
        ``n`` anchor histograms ``(n, k)``.
    other
        ``m`` histograms ``(m, k)``; ``h`` itself when ``None``: then only the upper triangle
        is solved and mirrored, so the matrix is exactly symmetric, and its diagonal is zero
        (a niche against itself, which entropic OT would not give).
    cost, method, epsilon, n_iter, tol, batch_size, device, progress
        As in :func:`anchor_paired_distances`.

    Returns
    -------
    Float64 array of shape ``(n, m)`` in squared units (:math:`W_2^2` estimates).

    Examples
    --------
    >>> import numpy as np
    >>> cost = anchor_cost(np.array([[0.0], [1.0], [2.0]]))
    >>> h = np.eye(3)
    >>> anchor_pairwise_distances(h, None, cost, method="exact")[0]
    array([0., 1., 4.])
    """
    symmetric = other is None
    h, other, cost, device = _prepare(h, other, cost, method, epsilon, device)
    batch_size = _default_batch(batch_size, device, max(h.shape[1], other.shape[1]))
    matrix = np.zeros((len(h), len(other)), dtype=np.float64)
    if symmetric:
        # blocks of rows against the columns from their first row on: the upper triangle, chunked
        blocks, start = [], 0
        while start < len(h):
            stop = min(len(h), start + max(1, batch_size // max(len(h) - start, 1)))
            blocks.append((start, stop))
            start = stop
    else:
        blocks = _row_blocks(len(h), len(other), batch_size)
    for start, stop in progress_bar(blocks, description="anchor OT", requested=progress):
        col_start = start if symmetric else 0
        matrix[start:stop, col_start:] = _block(
            h, other, cost, start, stop, col_start, method, epsilon, n_iter, tol, device
        )
    if symmetric:
        _mirror_upper(matrix)
    return matrix


def _mirror_upper(matrix: np.ndarray, block: int = 1024) -> None:
    """Copy the strict upper triangle onto the lower one and zero the diagonal, in place, by blocks.

    ``np.triu(m) + np.triu(m).T`` would hold three ``n × n`` matrices at once.
    """
    for start in range(0, len(matrix), block):
        stop = min(start + block, len(matrix))
        matrix[start:stop, :start] = matrix[:start, start:stop].T
        diagonal = np.triu(matrix[start:stop, start:stop], k=1)
        matrix[start:stop, start:stop] = diagonal + diagonal.T


@cpu_threads()
def _share_lists_with_copies(indices: np.ndarray, distances: np.ndarray, first: np.ndarray) -> None:
    """In place: every row whose ``first`` copy is another row lists that copy at distance 0, then its list.

    ``indices`` / ``distances`` ``(n, k)`` hold, in each row, the list of the row's first copy
    (that copy first); each row then starts with itself. Copies of one histogram thus stay
    connected without filling each other's lists (see :func:`anchor_kneighbors`).
    """
    copies = np.flatnonzero(first != np.arange(len(first)))
    indices[copies, 2:], distances[copies, 2:] = indices[copies, 1:-1], distances[copies, 1:-1]
    indices[copies, 1], distances[copies, 1] = first[copies], 0.0
    indices[:, 0] = np.arange(len(first))


def anchor_kneighbors(
    h: torch.Tensor | np.ndarray,
    cost: torch.Tensor | np.ndarray,
    n_neighbors: int,
    *,
    method: AnchorMethod = "sinkhorn",
    epsilon: float | None = None,
    n_iter: int = 20,
    tol: float | None = None,
    anchor_points: torch.Tensor | np.ndarray | None = None,
    anchor_offsets: torch.Tensor | np.ndarray | None = None,
    debias: bool = False,
    n_candidates: int | None = None,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    r"""The ``n_neighbors`` nearest histograms of every histogram, by anchor-space OT.

    Works in blocks of rows and keeps only the nearest of each row, so memory stays
    ``O(batch_size * k + n * n_neighbors)``, never the full ``n × n`` matrix. When the cost is
    ``C_ij = ||p_i - p_j||^2 + o_i + o_j`` for anchor points ``p`` and offsets ``o`` (pass them
    as ``anchor_points`` and ``anchor_offsets``), OT between ``h`` and ``h'`` is at least
    :math:`\lVert h p - h' p\rVert^2 + h \cdot o + h' \cdot o` (the distance between the means
    bounds :math:`W_2^2` from below), so every row solves OT only for its candidates in order of
    that bound, until the bound exceeds its ``n_neighbors``-th distance: the result is that of
    all pairs (up to the marginal error of the Sinkhorn plans) at a fraction of the cost.

    Identical histograms count once: neighbours are chosen among the distinct histograms (each
    represented by its first row); the first copy gets the neighbours of its histogram, and every
    other copy gets that first copy (at distance 0) followed by the same neighbours, so copies
    never fill each other's neighbour lists yet stay connected (when there are fewer distinct
    histograms than ``n_neighbors``, all rows are used as they are).

    With ``debias=True`` (``'sinkhorn'`` only) the distance is the debiased
    :math:`\langle P_{ab}, C\rangle - \tfrac12 \langle P_{aa}, C\rangle - \tfrac12 \langle P_{bb}, C\rangle`
    (the self terms of a Sinkhorn divergence, on the transport cost): the entropic blur of a
    histogram with itself grows with its spread, so without it spread histograms look farther
    from everything than concentrated ones, and a histogram is not at distance 0 from itself.
    Debiased values can dip slightly below 0 for near-identical histograms; they are ordered as
    computed and returned clipped at 0.

    With ``n_candidates``, OT is solved only between each histogram and its ``n_candidates``
    nearest histograms by Euclidean distance of the weights (scikit-learn's exact
    ``NearestNeighbors``), and the ``n_neighbors`` nearest of those by OT are kept: the
    candidate-then-rerank scheme of approximate nearest-neighbour search, at ``n * n_candidates``
    OT problems instead of up to ``n^2``. The result is then not the OT kNN: with
    ``n_candidates == n_neighbors`` the neighbour lists are the Euclidean ones and OT gives their
    distances. :func:`spatialot.tl.asot_neighbors` builds its graph this way (see there why).

    Parameters
    ----------
    h
        ``n`` anchor histograms ``(n, k)``.
    cost, method, epsilon, n_iter, tol, batch_size, device, progress
        As in :func:`anchor_paired_distances`.
    n_neighbors
        Neighbours per row, the row itself included (first, at distance 0), as in scanpy.
    anchor_points, anchor_offsets
        ``(k, dim)`` points and ``(k,)`` non-negative offsets with ``cost`` as above, to prune by
        the lower bound; all pairs are solved when ``anchor_points`` is ``None``.
    debias
        Subtract the mean of the two self-costs from every ``'sinkhorn'`` value (see above);
        ignored by ``'exact'``, whose self-cost is 0.
    n_candidates
        Solve OT only for this many Euclidean nearest histograms of each row, at least
        ``n_neighbors`` (see above); ``None`` searches all histograms (pruned by the lower bound
        when ``anchor_points`` is given).

    Returns
    -------
    ``(indices, distances)``, both of shape ``(n, n_neighbors)``, sorted by distance, with
    distances in squared units (:math:`W_2^2` estimates).

    Examples
    --------
    >>> import numpy as np
    >>> cost = anchor_cost(np.array([[0.0], [1.0], [2.0]]))
    >>> h = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [0.9, 0.1, 0]])
    >>> indices, distances = anchor_kneighbors(h, cost, 2, method="exact")
    >>> indices[:, 1]
    array([3, 3, 1, 0])
    """
    h, other, cost, device = _prepare(h, None, cost, method, epsilon, device)
    n_neighbors = check_int("n_neighbors", n_neighbors, maximum=len(h), why="the number of histograms")
    if n_candidates is not None:
        n_candidates = check_int(
            "n_candidates", n_candidates, minimum=n_neighbors, maximum=len(h), why="the number of histograms"
        )
    distinct, first, inverse = np.unique(h.cpu().numpy(), axis=0, return_index=True, return_inverse=True)
    if n_neighbors <= len(distinct) < len(h):
        # copies of one histogram (frequent with hard codes on small niches) would fill each
        # other's neighbour lists at the entropic self-cost, leaving each copy a clique of copies
        # for Leiden to split off: every distinct histogram counts once, its copies share its list
        order = np.sort(first)  # distinct histograms in the order of their first occurrence
        rank = np.empty(len(distinct), dtype=np.int64)
        rank[np.argsort(first)] = np.arange(len(distinct))
        indices, distances = anchor_kneighbors(
            h[torch.as_tensor(order)],
            cost,
            n_neighbors,
            method=method,
            epsilon=epsilon,
            n_iter=n_iter,
            tol=tol,
            anchor_points=anchor_points,
            anchor_offsets=anchor_offsets,
            debias=debias,
            n_candidates=None if n_candidates is None else min(n_candidates, len(distinct)),
            batch_size=batch_size,
            device=device,
            progress=progress,
        )
        classes = rank[inverse.reshape(-1)]
        indices, distances = order[indices[classes]], distances[classes]
        _share_lists_with_copies(indices, distances, indices[:, 0].copy())
        return indices, distances
    n = len(h)
    batch_size = _default_batch(batch_size, device, max(h.shape[1], other.shape[1]))
    indices = np.empty((n, n_neighbors), dtype=np.int64)
    distances = np.empty((n, n_neighbors), dtype=np.float64)
    solve = (method, epsilon, n_iter, tol, device)
    half_self = np.zeros(n)
    if debias and method == "sinkhorn":
        for start in range(0, n, batch_size):
            chunk = h[start : start + batch_size]
            half_self[start : start + batch_size] = 0.5 * _solve(chunk, chunk, cost, *solve)
    if n_candidates is not None:
        _reranked(h, cost, n_candidates, batch_size, solve, half_self, indices, distances, progress)
    elif anchor_points is None:
        for start, stop in progress_bar(
            _row_blocks(n, n, batch_size), description="anchor OT neighbours", requested=progress
        ):
            block = _block(h, other, cost, start, stop, 0, *solve) - half_self[start:stop, None] - half_self
            block[np.arange(stop - start), np.arange(start, stop)] = -np.inf  # the row itself comes first
            _keep_nearest(block, np.broadcast_to(np.arange(n), block.shape), indices, distances, start, stop)
    else:
        bound = _MeanBound(h, anchor_points, anchor_offsets, half_self)
        rows_per_block = max(1, min(n, batch_size // (4 * n_neighbors), 2**22 // n))
        blocks = range(0, n, rows_per_block)
        for start in progress_bar(blocks, description="anchor OT neighbours", requested=progress):
            stop = min(n, start + rows_per_block)
            _pruned_block(h, cost, bound, start, stop, n_neighbors, batch_size, solve, half_self, indices, distances)
    distances[:, 0] = 0.0
    np.maximum(distances, 0.0, out=distances)
    return indices, distances


def _reranked(h, cost, n_candidates, batch_size, solve, half_self, indices, distances, progress) -> None:
    """The ``indices.shape[1]`` OT-nearest of each row among its ``n_candidates`` Euclidean nearest."""
    from sklearn.neighbors import NearestNeighbors

    n, rows = len(h), np.arange(len(h))
    weights = h.double().cpu().numpy()
    candidates = NearestNeighbors(n_neighbors=n_candidates).fit(weights).kneighbors(weights, return_distance=False)
    missing = ~(candidates == rows[:, None]).any(1)  # ties at distance 0 can push a row out of its own list
    candidates[missing, -1] = rows[missing]
    first, second = np.repeat(rows, n_candidates), candidates.ravel()
    values = np.empty(first.size)
    chunks = range(0, first.size, batch_size)
    for start in progress_bar(chunks, description="anchor OT neighbours", requested=progress):
        part = slice(start, start + batch_size)
        values[part] = _solve(h[first[part]], h[second[part]], cost, *solve)
    values = values.reshape(n, n_candidates) - half_self[:, None] - half_self[candidates]
    values[candidates == rows[:, None]] = -np.inf  # the row itself comes first
    _keep_nearest(values, candidates, indices, distances, 0, n)


def _keep_nearest(values, columns, indices, distances, start, stop) -> None:
    n_neighbors = indices.shape[1]
    nearest = np.argpartition(values, n_neighbors - 1, axis=1)[:, :n_neighbors]
    kept = np.take_along_axis(values, nearest, axis=1)
    order = np.argsort(kept, axis=1, kind="stable")
    indices[start:stop] = np.take_along_axis(np.take_along_axis(columns, nearest, axis=1), order, axis=1)
    distances[start:stop] = np.take_along_axis(kept, order, axis=1)


class _MeanBound:
    """Lower bound of anchor OT from the means of the histograms: ``||m - m'||^2 + o + o'``.

    Any coupling's cost is at least the bound (Jensen), the entropic plan's included; a debiased
    value is at least the bound minus the two half self-costs, which enter as negative offsets.
    """

    def __init__(self, h, anchor_points, anchor_offsets, half_self=None):
        points = as_tensor(anchor_points, dtype=torch.float64)
        if points.ndim != 2 or points.shape[0] != h.shape[1]:
            raise ValueError(f"`anchor_points` must have shape ({h.shape[1]}, dim), got {tuple(points.shape)}.")
        weights = h.double().cpu()
        self.means = weights @ points
        offsets = torch.zeros(h.shape[1], dtype=torch.float64)
        if anchor_offsets is not None:
            offsets = as_tensor(anchor_offsets, dtype=torch.float64).reshape(-1)
        self.offsets = weights @ offsets
        if half_self is not None:
            self.offsets = self.offsets - torch.as_tensor(half_self, dtype=torch.float64)

    def __call__(self, start: int, stop: int) -> np.ndarray:
        gap = torch.cdist(self.means[start:stop], self.means) ** 2
        return (gap + self.offsets[start:stop, None] + self.offsets[None, :]).numpy()


def _pruned_block(h, cost, bound, start, stop, n_neighbors, batch_size, solve, half_self, indices, distances) -> None:
    n, rows = len(h), np.arange(start, stop)
    lower = bound(start, stop)
    lower[rows - start, rows] = -np.inf
    order = np.argsort(lower, axis=1)
    best = np.full((len(rows), n_neighbors), np.inf)
    best_columns = np.zeros((len(rows), n_neighbors), dtype=np.int64)
    active = np.ones(len(rows), dtype=bool)
    done, upto = 0, min(n, 4 * n_neighbors)
    while active.any():
        local = np.flatnonzero(active)
        columns = order[local, done:upto]
        first = np.repeat(rows[local], columns.shape[1])
        values = np.empty(first.size)
        for chunk in range(0, first.size, batch_size):
            part = slice(chunk, chunk + batch_size)
            values[part] = _solve(h[first[part]], h[columns.ravel()[part]], cost, *solve)
        values = values.reshape(columns.shape) - half_self[rows[local], None] - half_self[columns]
        values[columns == rows[local, None]] = -np.inf
        merged = np.concatenate([best[local], values], axis=1)
        merged_columns = np.concatenate([best_columns[local], columns], axis=1)
        kept_i, kept_d = np.empty((len(local), n_neighbors), np.int64), np.empty((len(local), n_neighbors))
        _keep_nearest(merged, merged_columns, kept_i, kept_d, 0, len(local))
        best[local], best_columns[local] = kept_d, kept_i
        done, upto = upto, min(n, 2 * upto)
        if done >= n:
            break
        # a row is finished once no unsolved candidate can beat its current n_neighbors-th distance
        active[local] = lower[local, order[local, done]] < best[local, -1]
    indices[start:stop], distances[start:stop] = best_columns, best
