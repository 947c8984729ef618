"""Batched entropic OT between padded point clouds: stabilised Sinkhorn on CPU or GPU."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._clouds import PointClouds


def squared_euclidean_cost(x_points: torch.Tensor, y_points: torch.Tensor) -> torch.Tensor:
    """Batched cost matrices ``C[b, i, j] = ||x[b, i] - y[b, j]||^2``, shape ``(batch, n, m)``.

    Examples
    --------
    >>> import torch
    >>> squared_euclidean_cost(torch.tensor([[[0.0, 0.0]]]), torch.tensor([[[3.0, 4.0], [1.0, 0.0]]]))
    tensor([[[25.,  1.]]])
    """
    x_norm = (x_points**2).sum(-1)
    y_norm = (y_points**2).sum(-1)
    cross = torch.bmm(x_points, y_points.transpose(1, 2))
    # the expanded form loses a little precision in float32 and can dip below zero
    return (x_norm[:, :, None] + y_norm[:, None, :] - 2 * cross).clamp_min(0)


@dataclass(frozen=True)
class SinkhornOutput:
    r"""Solution of a batch of entropic OT problems.

    Attributes
    ----------
    objective
        Regularised cost :math:`\mathrm{OT}_\varepsilon = \langle P, C\rangle + \varepsilon\,
        \mathrm{KL}(P \,|\, a \otimes b)`, shape ``(batch,)``; equals the dual value
        :math:`\langle a, f\rangle + \langle b, g\rangle`. Differentiable in the points and
        weights (envelope theorem), the quantity the Sinkhorn divergence is built from.
    cost
        Transport cost :math:`\langle P, C\rangle` of the entropic plan, shape ``(batch,)``: an
        estimate of :math:`W_2^2` that tends to it as :math:`\varepsilon \to 0`.
    f, g
        Dual potentials on the points of ``x`` and ``y`` (zero on padding).
    plan
        Transport plans, shape ``(batch, n, m)``, when requested.
    marginal_error
        L1 error of the column marginals of each plan (the rows are exact by construction).
    n_iter
        Number of Sinkhorn iterations run at the target ``epsilon`` by the slowest problem.
    converged
        Whether every problem met the tolerance before ``max_iter``; ``None`` when no
        tolerance was checked (``tol=None``: read ``marginal_error`` instead).

    Examples
    --------
    >>> import numpy as np
    >>> from spatialot.ot import PointClouds, sinkhorn
    >>> x = PointClouds.from_list([np.zeros((4, 2))])
    >>> y = PointClouds.from_list([np.ones((4, 2))])
    >>> output = sinkhorn(x, y, epsilon=0.01)
    >>> output.cost, output.converged
    (tensor([2.]), True)
    """

    objective: torch.Tensor
    cost: torch.Tensor
    f: torch.Tensor
    g: torch.Tensor
    plan: torch.Tensor | None
    marginal_error: torch.Tensor
    n_iter: int
    converged: bool | None


def _softmin(
    kernel: torch.Tensor, log_weights: torch.Tensor, potential: torch.Tensor, epsilon: float | torch.Tensor
) -> torch.Tensor:
    """Sinkhorn update ``-eps * log sum_j w_j exp(h_j / eps + K_ij)`` over the last axis, ``K = -C / eps``.

    ``epsilon`` is a number, or a tensor ``(batch, 1)`` of one value per problem.
    """
    return -epsilon * torch.logsumexp(kernel + (log_weights + potential / epsilon)[:, None, :], dim=2)


def sinkhorn(
    x: PointClouds,
    y: PointClouds,
    *,
    epsilon: float = 1e-2,
    max_iter: int = 1000,
    tol: float | None = 1e-3,
    check_every: int = 10,
    annealing: float = 0.5,
    over_relaxation: float = 1.5,
    return_plan: bool = False,
) -> SinkhornOutput:
    r"""Solve many entropic OT problems at once with log-domain Sinkhorn iterations.

    For each pair of clouds ``(x[b], y[b])`` with weights ``a``, ``b`` and squared-Euclidean
    cost :math:`C_{ij} = \lVert x_i - y_j \rVert^2`, computes

    .. math:: \mathrm{OT}_\varepsilon(x, y) = \min_{P \in U(a, b)} \langle P, C\rangle
              + \varepsilon\, \mathrm{KL}(P \,|\, a \otimes b).

    All problems run as one batch of tensor operations on the device of ``x``. Padded points
    (``mask == False``) have weight zero and are ignored. The potentials live in the log
    domain, so small ``epsilon`` is stable in float32: between two convergence checks the
    iterations run on scalings of a kernel into which the potentials are absorbed (two batched
    vector-matrix products per iteration, exponentials only at the checks), with the log domain
    as the fallback where the scalings would leave the floating-point range. The problem starts
    at a large ``epsilon`` that is divided by ``1 / annealing`` each step down to the target
    (ε-scaling), and the iterations at the target are over-relaxed, which together make small
    ``epsilon`` converge in few iterations. Each problem leaves the batch as soon as it
    converges. Gradients flow through one final Sinkhorn step from the converged potentials,
    which by the envelope theorem is the exact gradient of the objective at convergence, at the
    memory cost of a single iteration.

    Parameters
    ----------
    x, y
        Batches of the same length and point dimension.
    epsilon
        Entropic regularisation, in the units of the cost (squared distances). Choose it
        relative to the typical squared distance between points; :math:`W_2^2` is recovered as
        ``epsilon`` tends to 0.
    max_iter
        Largest number of iterations at the target ``epsilon`` (the number run when ``tol`` is
        ``None``).
    tol
        A problem has converged when the L1 error of its marginals is below ``tol``. The
        transport cost is then accurate to about ``tol * max(C)``. In float32 the error
        cannot fall much below ``1e-7 * max(C) / epsilon``: for very small ``epsilon`` relative
        to the costs, scale the points or pass float64 clouds.

        ``None`` checks nothing and never reads a value of the device on the host, the mode for
        training steps on a GPU: every problem runs exactly ``max_iter`` log-domain iterations
        after an ε-scaling of a fixed :data:`FIXED_WARMUP_STEPS` steps, whose rate each problem
        sets from its own largest cost (down from it to ``epsilon``, no faster than
        ``annealing`` unless its costs span more than ``annealing ** -FIXED_WARMUP_STEPS``
        times ``epsilon``). Choose ``max_iter`` by a tolerance-checked solve of typical
        problems (:attr:`SinkhornOutput.n_iter`), as the official Wormhole code probes its
        iteration count.
    check_every
        Check the marginals every this many iterations (each check synchronises a GPU).
    annealing
        Factor in ``(0, 1)`` by which ``epsilon`` shrinks per warm-up step; ``0`` disables the
        warm-up.
    over_relaxation
        Factor ``omega`` in ``[1, 2)`` of the over-relaxed updates
        ``f <- (1 - omega) f + omega T(g)``, which share the fixed point of plain Sinkhorn
        (``omega = 1``) and reach it in fewer iterations for small ``epsilon``.
    return_plan
        Also return the transport plans.

    Returns
    -------
    :class:`SinkhornOutput` with the regularised objective, the transport cost
    :math:`\langle P, C\rangle` (the :math:`W_2^2` estimate) and the potentials.

    Examples
    --------
    >>> import numpy as np
    >>> from spatialot.ot import PointClouds
    >>> x = PointClouds.from_list([np.zeros((4, 2))])
    >>> y = PointClouds.from_list([np.ones((4, 2))])
    >>> sinkhorn(x, y, epsilon=0.01).cost
    tensor([2.])
    """
    if len(x) != len(y):
        raise ValueError(f"`x` and `y` must hold the same number of clouds, got {len(x)} and {len(y)}.")
    if x.dim != y.dim:
        raise ValueError(f"`x` and `y` must have the same point dimension, got {x.dim} and {y.dim}.")
    if epsilon <= 0:
        raise ValueError(f"`epsilon` must be positive, got {epsilon}.")
    if not 0 <= annealing < 1:
        raise ValueError(f"`annealing` must lie in [0, 1), got {annealing}.")
    if not 1 <= over_relaxation < 2:
        raise ValueError(f"`over_relaxation` must lie in [1, 2), got {over_relaxation}.")
    if tol is None and max_iter < 1:
        raise ValueError(f"`max_iter` must be at least 1 when `tol` is None, got {max_iter}.")
    y = y.to(device=x.device, dtype=x.points.dtype)
    cost = squared_euclidean_cost(x.points, y.points)
    log_a = torch.where(x.mask, x.weights.log(), -torch.inf)
    log_b = torch.where(y.mask, y.weights.log(), -torch.inf)

    with torch.no_grad():
        if tol is None:
            f, g = _fixed_warm_start(cost.detach(), log_a, log_b, epsilon, annealing)
            f, g = _log_domain_steps(cost.detach() / epsilon, f, g, log_a, log_b, epsilon, max_iter, over_relaxation)
            n_iter, converged = max_iter, None
        else:
            f, g = _warm_start(cost.detach(), log_a, log_b, epsilon, annealing)
            f, g, n_iter, converged = _iterate(
                cost.detach(), f, g, log_a, log_b, y.weights, epsilon, max_iter, tol, check_every, over_relaxation
            )

    # one differentiable step of the semi-dual: its gradient in C is the plan (envelope theorem)
    f = _softmin(-cost / epsilon, log_b, g, epsilon)
    log_plan = log_a[:, :, None] + log_b[:, None, :] + (f[:, :, None] + g[:, None, :] - cost) / epsilon
    plan = log_plan.exp()
    objective = (x.weights * torch.where(x.mask, f, 0)).sum(1) + (y.weights * torch.where(y.mask, g, 0)).sum(1)
    transport_cost = (plan * cost).sum((1, 2))
    # the final step makes the rows exact: the columns tell how far from convergence it stopped
    marginal_error = (plan.detach().sum(1) - y.weights).abs().sum(1)
    return SinkhornOutput(
        objective=objective,
        cost=transport_cost,
        f=torch.where(x.mask, f, 0),
        g=torch.where(y.mask, g.detach(), 0),
        plan=plan if return_plan else None,
        marginal_error=marginal_error,
        n_iter=n_iter,
        converged=converged,
    )


def _absorbed_kernel(scaled_cost, g, log_b, epsilon):
    r"""Kernel ``M = softmax_j((g_j - C_ij) / ε + log b_j)`` and the potentials ``f = T(g)`` in it.

    ``M`` is the Gibbs kernel with the potentials ``(T(g), g)`` absorbed and the weights ``b``
    folded in: the plan of scalings ``(u, v)`` on top of them is ``a_i u_i M_ij v_j``, and
    ``(T(g), g)`` is ``u = v = 1``. Its rows sum to one, so no row underflows however small
    ``ε``. ``scaled_cost`` is ``C / ε``.
    """
    exponent = (g / epsilon + log_b)[:, None, :] - scaled_cost
    row_max = exponent.amax(2, keepdim=True)
    kernel = exponent.sub_(row_max).exp_()
    row_sum = kernel.sum(2, keepdim=True)
    return kernel.div_(row_sum), -epsilon * (row_max + row_sum.log())[:, :, 0]


def _times(vector: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Batched ``vector @ matrix``: as a row vector, the fastest form of a batched product on CPU."""
    return torch.bmm(vector[:, None, :], matrix)[:, 0, :]


def _warm_start(cost, log_a, log_b, epsilon, annealing):
    """Potentials after ε-scaling: one Sinkhorn step at each ε from the largest cost down.

    Each step is one exponential pass: the row update is the absorbed kernel's normaliser, the
    column update a product with it. A column whose kernel mass underflows (a point far from
    every point of the other cloud at a small ``ε``) is updated in the log domain instead.
    """
    f, g = torch.zeros_like(log_a), torch.zeros_like(log_b)
    a, b = log_a.exp(), log_b.exp()
    eps = float(cost.max()) if annealing > 0 else epsilon
    while eps > epsilon:
        kernel, f = _absorbed_kernel(cost / eps, g, log_b, eps)
        g = torch.where(b > 0, g + eps * (b / _times(a, kernel)).log(), g)
        lost = ~torch.isfinite(g).all(1)
        if bool(lost.any()):
            g[lost] = _softmin(-cost[lost].transpose(1, 2) / eps, log_a[lost], f[lost], eps)
        eps *= annealing
    return f, g


# ε-scaling steps of the unchecked mode (tol=None): at the default annealing of 0.5 they span
# costs up to 2**12 ≈ 4,000 times ε, the range of clouds scaled as the models scale them
FIXED_WARMUP_STEPS = 12


def _fixed_warm_start(cost, log_a, log_b, epsilon, annealing):
    """:func:`_warm_start` in a fixed number of log-domain steps, each problem on its own ε schedule.

    Problem ``b`` starts at its largest cost ``M_b`` and shrinks ε by ``max(annealing,
    (ε / M_b) ** (1 / FIXED_WARMUP_STEPS))`` per step, never below the target: the schedule is
    a tensor, so no step reads the device.
    """
    f, g = torch.zeros_like(log_a), torch.zeros_like(log_b)
    if annealing == 0:
        return f, g
    largest = cost.amax((1, 2)).clamp_min(epsilon)[:, None]
    rate = torch.clamp((epsilon / largest) ** (1 / FIXED_WARMUP_STEPS), max=annealing)
    for step in range(FIXED_WARMUP_STEPS):
        eps = (largest * rate**step).clamp_min(epsilon)
        kernel = -cost / eps[:, :, None]
        f = _softmin(kernel, log_b, g, eps)
        g = _softmin(kernel.transpose(1, 2), log_a, f, eps)
    return f, g


def _log_domain_steps(scaled_cost, f, g, log_a, log_b, epsilon, n_steps, omega):
    """``n_steps`` over-relaxed Sinkhorn steps on the potentials, in the log domain; ``scaled_cost`` is ``C / ε``."""
    kernel = -scaled_cost
    kernel_t = kernel.transpose(1, 2)
    for _ in range(n_steps):
        f = (1 - omega) * f + omega * _softmin(kernel, log_b, g, epsilon)
        g = (1 - omega) * g + omega * _softmin(kernel_t, log_a, f, epsilon)
    return f, g


def _iterate(cost, f, g, log_a, log_b, b, epsilon, max_iter, tol, check_every, over_relaxation):
    """Over-relaxed Sinkhorn at the target ε, dropping each problem once it converges.

    The iterations run on scalings ``(u, v)`` of a kernel into which the potentials are
    absorbed every ``check_every`` iterations (stabilised scaling Sinkhorn, Schmitzer 2019): a
    step is two batched vector-matrix products instead of two log-sum-exps over the cost
    matrices, and exponentials are taken once per absorption. The iterates are those of the
    log-domain updates, reparametrised. Scalings that leave the floating-point range between
    two absorptions (large moves of the potentials, as right after the warm start) are redone
    in the log domain, which has no range to leave.

    Problems in a batch converge at very different speeds (clustered clouds are slow), so the
    finished ones leave the working set rather than be iterated until the slowest is done.
    """
    omega = over_relaxation
    a, mask_b = log_a.exp(), b > 0
    active = torch.arange(len(cost), device=cost.device)
    state = [cost / epsilon, log_a, log_b, a, b, mask_b, f.clone(), g.clone()]
    n_iter = 0
    while n_iter < max_iter and len(active):
        scaled_cost, la, lb, aa, bb, mb, f_now, g_now = state
        kernel, f_absorbed = _absorbed_kernel(scaled_cost, g_now, lb, epsilon)
        kernel_t = kernel.transpose(1, 2).contiguous()
        # the scalings carry on from the current potentials: absorbing changes no iterate
        u, v = ((f_now - f_absorbed) / epsilon).exp(), torch.ones_like(g_now)
        n_steps = min(check_every, max_iter - n_iter)
        for _ in range(n_steps):
            u = u ** (1 - omega) * _times(v, kernel_t) ** -omega
            v = torch.where(mb, v ** (1 - omega) * (bb / _times(aa * u, kernel)) ** omega, 1)
        n_iter += n_steps
        # L1 error of the columns once one more row update makes the rows exact
        columns = v * _times(aa / _times(v, kernel_t), kernel)
        errors = torch.where(mb, columns - bb, 0).abs().sum(1)
        f_now, g_now = f_absorbed + epsilon * u.log(), g_now + epsilon * v.log()
        lost = ~(torch.isfinite(f_now).all(1) & torch.isfinite(g_now).all(1) & torch.isfinite(errors))
        if bool(lost.any()):
            f_before, g_before = state[6][lost], state[7][lost]
            f_now[lost], g_now[lost] = _log_domain_steps(
                scaled_cost[lost], f_before, g_before, la[lost], lb[lost], epsilon, n_steps, omega
            )
            errors[lost] = torch.inf  # checked after the next round
        f[active], g[active] = f_now, g_now
        state[6:] = [f_now, g_now]
        done = errors < tol
        if bool(done.any()):
            active, state = active[~done], [t[~done] for t in state]
    return f, g, n_iter, not len(active)


def sinkhorn_divergence(x: PointClouds, y: PointClouds, *, epsilon: float = 1e-2, **kwargs) -> torch.Tensor:
    r"""Debiased Sinkhorn divergence between paired clouds.

    .. math:: S_\varepsilon(x, y) = \mathrm{OT}_\varepsilon(x, y)
              - \tfrac12 \mathrm{OT}_\varepsilon(x, x) - \tfrac12 \mathrm{OT}_\varepsilon(y, y)

    (Feydy et al. 2019). It is non-negative, zero if and only if ``x == y`` as measures, and
    interpolates between :math:`W_2^2` (``epsilon -> 0``) and an energy distance (large
    ``epsilon``). For a translation, :math:`S_\varepsilon(x, x + v) = \lVert v \rVert^2` at any
    ``epsilon``, as for :math:`W_2^2`.

    Parameters
    ----------
    x, y
        Batches of the same length and point dimension.
    epsilon
        Entropic regularisation in the units of the squared-Euclidean cost.
    **kwargs
        Passed to :func:`sinkhorn`.

    Returns
    -------
    Tensor of shape ``(batch,)``, differentiable in the points and weights of both clouds.

    Examples
    --------
    >>> import numpy as np
    >>> from spatialot.ot import PointClouds
    >>> x = PointClouds.from_list([np.zeros((4, 2))])
    >>> y = PointClouds.from_list([np.ones((4, 2))])
    >>> sinkhorn_divergence(x, y, epsilon=0.01)
    tensor([2.])
    """
    cross = sinkhorn(x, y, epsilon=epsilon, **kwargs).objective
    self_x = sinkhorn(x, x, epsilon=epsilon, **kwargs).objective
    self_y = sinkhorn(y, y, epsilon=epsilon, **kwargs).objective
    return cross - 0.5 * (self_x + self_y)
