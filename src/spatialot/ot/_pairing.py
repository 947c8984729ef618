r"""Pairing the clouds of two batches by OT at the level of clouds (minibatch OT).

Flow matching between families of clouds pairs each data cloud of a minibatch with a source
cloud; re-pairing them by an optimal assignment on a cheap cloud-to-cloud cost straightens the
learned flow (Haviv et al. 2024, after Tong et al. and Pooladian et al. 2023). The assignment is
solved on the host (:func:`scipy.optimize.linear_sum_assignment`, exact: the batch is small),
or on the device by a rounded entropic plan (:func:`rounded_assignment`), which reads nothing on
the host and so never stalls an accelerator.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from ._sinkhorn import _fixed_warm_start, _log_domain_steps

# a cost beyond every allowed one (costs are divided by their largest allowed entry): an
# excluded pair gets no plan mass, and the potentials stay finite
_EXCLUDED_COST = 1e3


def rounded_assignment(
    cost: torch.Tensor,
    *,
    row_mask: torch.Tensor | None = None,
    column_mask: torch.Tensor | None = None,
    allowed: torch.Tensor | None = None,
    epsilon: float = 0.002,
    n_iter: int = 100,
    n_swaps: int | None = None,
) -> torch.Tensor:
    r"""Many assignment problems solved on the device: an entropic plan rounded to a matching.

    For each problem ``b``, Sinkhorn (log domain, a fixed ε-scaling then ``n_iter``
    iterations, uniform weights on the real rows and columns) solves the entropic problem on
    ``cost[b]`` divided by its largest allowed entry, and the plan is rounded greedily: the
    largest entry of the plan among the rows and columns still free is matched, one pair at a
    time, as the official Wasserstein flow-matching code rounds its minibatch pairing. The
    count of every loop is fixed by the tensor shapes, so nothing is read on the host: the
    assignment for a training step on a GPU. At ``epsilon`` = 0.002 the plan is close to a
    permutation and the rounding close to the optimum (see the tests against
    :func:`scipy.optimize.linear_sum_assignment`), but it is not guaranteed optimal.

    Parameters
    ----------
    cost
        Costs ``(batch, n, n)``; ``cost[b, i, j]`` of matching row ``i`` with column ``j``.
    row_mask, column_mask
        Real rows and columns ``(batch, n)`` (all by default); each problem must have as many
        real rows as real columns.
    allowed
        Boolean ``(batch, n, n)``: pairs that may be matched (all by default). Every real row
        must be matchable within the allowed pairs, e.g. groups of equal sizes.
    epsilon
        Entropic regularisation relative to the largest allowed cost of each problem.
    n_iter
        Sinkhorn iterations after the ε-scaling.
    n_swaps
        Rounds of improvement after the rounding, each exchanging the partners of the two rows
        whose exchange lowers the cost most (2-opt); ``n`` by default.

    Returns
    -------
    Integer tensor ``(batch, n)`` on the device of ``cost``: the column matched to each real
    row (0 on padded rows).

    Examples
    --------
    >>> import torch
    >>> from spatialot.ot import rounded_assignment
    >>> rounded_assignment(torch.tensor([[[5.0, 0.0], [0.0, 5.0]]]))
    tensor([[1, 0]])
    """
    if cost.dim() != 3 or cost.shape[1] != cost.shape[2]:
        raise ValueError(f"`cost` must have shape (batch, n, n), got {tuple(cost.shape)}.")
    batch, n, _ = cost.shape
    n_swaps = n if n_swaps is None else n_swaps
    cost = cost.detach().float()
    ones = torch.ones(batch, n, dtype=torch.bool, device=cost.device)
    row_mask = ones if row_mask is None else row_mask.to(cost.device, torch.bool)
    column_mask = ones if column_mask is None else column_mask.to(cost.device, torch.bool)
    valid = row_mask[:, :, None] & column_mask[:, None, :]
    if allowed is not None:
        valid = valid & allowed.to(cost.device, torch.bool)
    with torch.no_grad():
        largest = torch.where(valid, cost, 0).amax((1, 2), keepdim=True).clamp_min(1e-12)
        unit = torch.where(valid, cost / largest, _EXCLUDED_COST)
        log_a = torch.where(row_mask, -row_mask.sum(1, keepdim=True).clamp_min(1).float().log(), -torch.inf)
        log_b = torch.where(column_mask, -column_mask.sum(1, keepdim=True).clamp_min(1).float().log(), -torch.inf)
        f, g = _fixed_warm_start(unit, log_a, log_b, epsilon, 0.5)
        f, g = _log_domain_steps(unit / epsilon, f, g, log_a, log_b, epsilon, n_iter, 1.5)
        # the plan's ranking, in the log domain (uniform weights rank nothing)
        score = torch.where(valid, f[:, :, None] + g[:, None, :] - unit, -torch.inf)
        partner = torch.zeros(batch, n, dtype=torch.long, device=cost.device)
        problems = torch.arange(batch, device=cost.device)
        for _ in range(n):
            best, flat = score.view(batch, -1).max(1)
            row, column = flat // n, flat % n
            found = torch.isfinite(best)  # false once a problem has matched all its rows
            partner[problems, row] = torch.where(found, column, partner[problems, row])
            score[problems, row, :] = torch.where(found[:, None], -torch.inf, score[problems, row, :])
            score[problems, :, column] = torch.where(found[:, None], -torch.inf, score[problems, :, column])
        partner = _swap_improvements(cost, partner, row_mask & valid.any(2), valid, n_swaps)
    return torch.where(row_mask, partner, 0)


def _swap_improvements(cost, partner, rows, valid, n_swaps):
    """``n_swaps`` rounds of the best exchange of partners between two rows (2-opt), per problem."""
    batch, n, _ = cost.shape
    problems = torch.arange(batch, device=cost.device)
    cost = torch.where(valid, cost, torch.inf)
    pair_ok = rows[:, :, None] & rows[:, None, :]
    for _ in range(n_swaps):
        own = torch.gather(cost, 2, partner[:, :, None])[:, :, 0]  # C[i, p_i]
        crossed = torch.gather(cost, 2, partner[:, None, :].expand(-1, n, -1))  # [i, k] = C[i, p_k]
        gain = own[:, :, None] + own[:, None, :] - crossed - crossed.transpose(1, 2)
        gain = torch.where(pair_ok & torch.isfinite(gain), gain, 0)
        best, flat = gain.view(batch, -1).max(1)
        first, second = flat // n, flat % n
        swap = best > 0
        first_partner, second_partner = partner[problems, first], partner[problems, second]
        partner[problems, first] = torch.where(swap, second_partner, first_partner)
        partner[problems, second] = torch.where(swap, first_partner, second_partner)
    return partner


def chamfer_costs(
    source: torch.Tensor, source_mask: torch.Tensor, target: torch.Tensor, target_mask: torch.Tensor
) -> torch.Tensor:
    r"""Squared-Euclidean Chamfer cost between every source and every target cloud.

    :math:`C_{ji} = \operatorname{mean}_{x \in X_j} \min_{y \in Y_i} \lVert x - y \rVert^2 +
    \operatorname{mean}_{y \in Y_i} \min_{x \in X_j} \lVert x - y \rVert^2`, the cloud cost of the
    official minibatch pairing (there with the clouds' weights; here uniform over real points).
    Unlike the rest of :mod:`spatialot.ot` it is no estimate of :math:`W_2^2`: a cheap proxy, enough
    to rank candidate partners.

    Parameters
    ----------
    source
        Points ``(n_source, size, dim)``.
    source_mask
        ``(n_source, size)``, or ``(n_source, n_target, size)`` when the real points of a source
        cloud depend on the target it is compared with (i.i.d. noise clouds take the mask of the
        target cloud).
    target, target_mask
        Points ``(n_target, size', dim)`` and their mask ``(n_target, size')``.

    Returns
    -------
    Tensor ``(n_source, n_target)``.

    Examples
    --------
    >>> import torch
    >>> from spatialot.ot import chamfer_costs
    >>> x = torch.zeros(1, 2, 1)
    >>> y = torch.tensor([[[1.0], [3.0]]])
    >>> mask = torch.ones(1, 2, dtype=torch.bool)
    >>> chamfer_costs(x, mask, y, mask)  # 1 from x's side, (1 + 9) / 2 from y's side
    tensor([[6.]])
    """
    with torch.no_grad():
        squared = ((source[:, None, :, None, :] - target[None, :, None, :, :]) ** 2).sum(-1)  # (j, i, p, q)
        if source_mask.dim() == 2:
            source_mask = source_mask[:, None, :].expand(-1, len(target), -1)
        valid_source, valid_target = source_mask[..., None], target_mask[None, :, None, :]
        huge = torch.finfo(squared.dtype).max
        to_target = torch.where(valid_target, squared, huge).amin(3)  # nearest target point of each source point
        to_source = torch.where(valid_source, squared, huge).amin(2)  # nearest source point of each target point
        source_count = source_mask.sum(-1).clamp_min(1)
        target_count = target_mask.sum(-1).clamp_min(1)[None, :]
        return (to_target * source_mask).sum(-1) / source_count + (to_source * target_mask[None]).sum(-1) / target_count


def minibatch_pairing(
    cost: torch.Tensor | np.ndarray,
    groups: torch.Tensor | np.ndarray | None = None,
    *,
    method: Literal["exact", "rounded"] = "exact",
) -> np.ndarray | torch.Tensor:
    """The pairing of source clouds with target clouds that minimises the total cost.

    Parameters
    ----------
    cost
        Square matrix, ``cost[j, i]`` the cost of moving source cloud ``j`` to target cloud ``i``.
    groups
        Optional group of every target cloud (e.g. its label code): source clouds are re-paired
        only among the slots of one group, so that each source cloud stays with the group it was
        drawn for (conditional training keeps every cloud with its label).
    method
        ``'exact'``: :func:`scipy.optimize.linear_sum_assignment` on the host. ``'rounded'``:
        :func:`rounded_assignment` on the device of ``cost`` (a tensor), which reads nothing
        on the host: the pairing of a training step on a GPU.

    Returns
    -------
    ``order`` with ``source[order[i]]`` the partner of target ``i``: a permutation minimising
    ``cost[order, arange(n)].sum()`` (within each group); a numpy array, or a tensor on the
    device of ``cost`` when ``method='rounded'``.

    Notes
    -----
    The official code solves this with Sinkhorn (ε = 0.002 on the cost divided by its maximum)
    and rounds the plan greedily to a permutation; at minibatch sizes (16) the exact assignment
    (:func:`scipy.optimize.linear_sum_assignment`) is cheaper and exact on a CPU.
    ``'rounded'`` is the official rounding followed by exchanges of partners, for a device
    whose values the host should not wait for.

    Examples
    --------
    >>> import numpy as np
    >>> from spatialot.ot import minibatch_pairing
    >>> minibatch_pairing(np.array([[5.0, 0.0], [0.0, 5.0]]))
    array([1, 0])
    """
    if method not in ("exact", "rounded"):
        raise ValueError(f"`method` must be 'exact' or 'rounded', got {method!r}.")
    if cost.ndim != 2 or cost.shape[0] != cost.shape[1]:
        raise ValueError(f"`cost` must be a square matrix, got shape {tuple(cost.shape)}.")
    n = len(cost)
    if groups is not None and tuple(groups.shape) != (n,):
        raise ValueError(f"`groups` must hold one entry per target cloud ({n}), got shape {tuple(groups.shape)}.")
    if method == "rounded":
        cost = torch.as_tensor(cost)
        allowed = None
        if groups is not None:
            groups = torch.as_tensor(groups, device=cost.device)
            allowed = (groups[:, None] == groups[None, :])[None]
        # rows are the targets, so that each row's partner is its source cloud
        return rounded_assignment(cost.T[None], allowed=allowed)[0]
    cost = cost.detach().cpu().double().numpy() if isinstance(cost, torch.Tensor) else np.asarray(cost, float)
    if isinstance(groups, torch.Tensor):
        groups = groups.detach().cpu().numpy()
    groups = np.zeros(n, dtype=np.int64) if groups is None else np.asarray(groups)
    order = np.arange(n)
    for group in np.unique(groups):
        slots = np.flatnonzero(groups == group)
        if len(slots) > 1:
            sources, targets = linear_sum_assignment(cost[np.ix_(slots, slots)])
            order[slots[targets]] = slots[sources]
    return order
