r"""Pairing the clouds of two batches by OT at the level of clouds (minibatch OT).

Flow matching between families of clouds pairs each data cloud of a minibatch with a source
cloud; re-pairing them by an optimal assignment on a cheap cloud-to-cloud cost straightens the
learned flow (Haviv et al. 2024, after Tong et al. and Pooladian et al. 2023). The assignment is
solved on the host (:func:`scipy.optimize.linear_sum_assignment`): the batch is small.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment


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


def minibatch_pairing(cost: torch.Tensor | np.ndarray, groups: torch.Tensor | np.ndarray | None = None) -> np.ndarray:
    """The pairing of source clouds with target clouds that minimises the total cost: an exact assignment.

    Parameters
    ----------
    cost
        Square matrix, ``cost[j, i]`` the cost of moving source cloud ``j`` to target cloud ``i``.
    groups
        Optional group of every target cloud (e.g. its label code): source clouds are re-paired
        only among the slots of one group, so that each source cloud stays with the group it was
        drawn for (conditional training keeps every cloud with its label).

    Returns
    -------
    ``order`` with ``source[order[i]]`` the partner of target ``i``: a permutation minimising
    ``cost[order, arange(n)].sum()`` (within each group).

    Notes
    -----
    The official code solves this with Sinkhorn (ε = 0.002 on the cost divided by its maximum)
    and rounds the plan greedily to a permutation; at minibatch sizes (16) the exact assignment
    (:func:`scipy.optimize.linear_sum_assignment`) is cheaper and exact.

    Examples
    --------
    >>> import numpy as np
    >>> from spatialot.ot import minibatch_pairing
    >>> minibatch_pairing(np.array([[5.0, 0.0], [0.0, 5.0]]))
    array([1, 0])
    """
    cost = cost.detach().cpu().double().numpy() if isinstance(cost, torch.Tensor) else np.asarray(cost, float)
    if cost.ndim != 2 or cost.shape[0] != cost.shape[1]:
        raise ValueError(f"`cost` must be a square matrix, got shape {cost.shape}.")
    n = len(cost)
    if isinstance(groups, torch.Tensor):
        groups = groups.detach().cpu().numpy()
    groups = np.zeros(n, dtype=np.int64) if groups is None else np.asarray(groups)
    if groups.shape != (n,):
        raise ValueError(f"`groups` must hold one entry per target cloud ({n}), got shape {groups.shape}.")
    order = np.arange(n)
    for group in np.unique(groups):
        slots = np.flatnonzero(groups == group)
        if len(slots) > 1:
            sources, targets = linear_sum_assignment(cost[np.ix_(slots, slots)])
            order[slots[targets]] = slots[sources]
    return order
