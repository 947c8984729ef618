r"""A dense input-convex neural network (ICNN) whose parameters are given from outside, one set per distribution.

The potential of distribution ``b`` is (Amos et al. 2017; Korotin et al. 2021, dense ICNN)

.. math::

    z_1 &= \sigma\bigl((a_1^\top x)^2 + W_1 x + c_1\bigr), \\
    z_{l+1} &= \sigma\bigl(U_l^{+} z_l + (a_{l+1}^\top x)^2 + W_{l+1} x + c_{l+1}\bigr), \\
    \varphi(x) &= u^{+\top} z_L + v^\top x + \tfrac12 \lVert M x \rVert^2,

with :math:`\sigma` = CELU (convex and non-decreasing), one rank-1 convex quadratic
:math:`(a^\top x)^2` per hidden unit, hidden-to-hidden and output weights made non-negative by a
square of free values (:math:`U^{+}`, :math:`u^{+}`; :func:`positive`), and a quadratic term
:math:`\tfrac12\lVert Mx\rVert^2` whose matrix :math:`M = I + \Delta` (``quadratic='full'``) or
:math:`M = I` (``quadratic='identity'``) starts at the identity,
so the map :math:`\nabla\varphi` starts near the identity. Each piece
is convex in :math:`x` for *any* parameter values, so a hypernetwork may output them freely.
The map is the gradient :math:`\nabla\varphi`, taken by autograd.

**Deviation from the paper.** HOTET's code (as Korotin et al.'s dense ICNN) makes these weights
non-negative by a ReLU of the hypernetwork's output; here they are the square of a free value
(:func:`positive`). Trained from the Gaussian start, a ReLU left every output weight of the
inverse ICNN at exactly 0 within 50 steps (one measure of ``sot.datasets.w2_benchmark``, d = 2),
and with them every gradient to the hidden layers: the map stayed affine for good. A softplus
(tried next) keeps them alive but, started at the small output weights that keep the map at its
start, sits in its exponential regime, where an Adam step changes a weight by a fraction of
itself: one ICNN per measure (d = 8, 600 steps) reached L2-UVP 4.55 / 6.41 % (forward / inverse)
with it and 3.94 / 2.60 % with the square, which moves them by a step of the free value's size,
and lets a weight pushed to zero come back (``benchmarks/hotet.py --only-ceiling``).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .._validation import check_int


def positive(raw: torch.Tensor) -> torch.Tensor:
    r"""The non-negative ICNN weights from their free values: :math:`w^2`.

    The paper (and Korotin et al.'s dense ICNN) clips them, :math:`\max(w, 0)`. A clipped weight
    that the loss pushes below zero passes no gradient any more, to itself or to the hidden unit
    behind it, so the unit is dead for good; with a hypernetwork the same output row serves every
    distribution, so a weight clipped at one step is clipped for all of them. A softplus keeps a
    gradient but is exponential for the small weights the ICNN starts with (an Adam step of
    :math:`\eta` on the free value multiplies the weight by about :math:`e^{\eta}`), so a weight
    that starts at :math:`10^{-4}` needs thousands of steps to matter. The square changes by about
    :math:`2|w|\eta` per step, crosses zero and comes back, and is smooth: no weight is ever
    stuck (see :class:`BatchedICNN`).

    Examples
    --------
    >>> import torch
    >>> positive(torch.tensor([-2.0, 0.0, 3.0]))
    tensor([4., 0., 9.])
    """
    return raw * raw


def inverse_positive(value: torch.Tensor) -> torch.Tensor:
    r"""A free value whose :func:`positive` is ``value`` (>= 0): :math:`\sqrt v`.

    Examples
    --------
    >>> import torch
    >>> value = torch.tensor([1e-4, 0.5, 20.0])
    >>> bool(torch.allclose(positive(inverse_positive(value)), value))
    True
    """
    return value.sqrt()


def default_hidden(dim: int) -> tuple[int, ...]:
    """Hidden sizes of the reference implementation: ``[max(2d, 64), max(2d, 64), max(d, 32)]``."""
    return (max(2 * dim, 64), max(2 * dim, 64), max(dim, 32))


class BatchedICNN(nn.Module):
    r"""Dense ICNN evaluated with one parameter vector per distribution.

    The module holds no trainable weights: :meth:`potential` and :meth:`gradient` take a flat
    parameter tensor of shape ``(batch, n_params)`` (from a hypernetwork, or free parameters
    fitted per distribution) and points of shape ``(batch, n_points, dim)``.

    Parameters
    ----------
    dim
        Dimension of the points.
    hidden
        Sizes of the hidden layers; :func:`default_hidden` when ``None``.
    quadratic
        ``'full'``: learnable :math:`\tfrac12\lVert (I + \Delta) x\rVert^2`; ``'identity'``: fixed
        :math:`\tfrac12\lVert x\rVert^2`.
    alpha
        Scale of the CELU activations.
    """

    def __init__(
        self,
        dim: int,
        hidden: tuple[int, ...] | list[int] | None = None,
        *,
        quadratic: str = "full",
        alpha: float = 1.0,
    ):
        super().__init__()
        if quadratic not in ("full", "identity"):
            raise ValueError(f"`quadratic` must be 'full' or 'identity', got {quadratic!r}.")
        hidden = tuple(check_int("hidden", h) for h in (default_hidden(dim) if hidden is None else hidden))
        if not hidden:
            raise ValueError("`hidden` must hold at least one layer size, got none.")
        self.dim, self.hidden, self.quadratic, self.alpha = dim, hidden, quadratic, alpha
        shapes: dict[str, tuple[int, ...]] = {}
        for layer, size in enumerate(hidden):
            if layer:
                shapes[f"U{layer}"] = (size, hidden[layer - 1])
            shapes[f"a{layer}"] = (size, dim)
            shapes[f"W{layer}"] = (size, dim)
            shapes[f"c{layer}"] = (size,)
        shapes["u"] = (hidden[-1],)
        shapes["v"] = (dim,)
        if quadratic == "full":
            shapes["M"] = (dim, dim)
        self.shapes = shapes
        self.sizes = {name: math.prod(shape) for name, shape in shapes.items()}
        self.n_params = sum(self.sizes.values())

    def split(self, params: torch.Tensor) -> dict[str, torch.Tensor]:
        """View a flat ``(batch, n_params)`` tensor as the named parameters, each ``(batch, *shape)``."""
        if params.ndim != 2 or params.shape[1] != self.n_params:
            raise ValueError(f"ICNN parameters must have shape (batch, {self.n_params}), got {tuple(params.shape)}.")
        pieces = torch.split(params, list(self.sizes.values()), dim=1)
        return {
            name: piece.reshape(-1, *shape) for (name, shape), piece in zip(self.shapes.items(), pieces, strict=True)
        }

    def initial_params(self, generator: torch.Generator | None = None) -> torch.Tensor:
        r"""A parameter vector ``(n_params,)`` whose map is close to the identity.

        Rank-1 and linear input weights are random (so hidden units differ), hidden-to-hidden
        weights start at :math:`1/\text{fan-in}` and output weights at :math:`10^{-2}/\text{width}`
        (both stored as :func:`inverse_positive` of those values), so :math:`\nabla\varphi(x)
        \approx x`.
        """
        values = []
        for name, shape in self.shapes.items():
            size = math.prod(shape)
            if name.startswith(("a", "W")):
                values.append(torch.randn(size, generator=generator) / math.sqrt(self.dim))
            elif name.startswith("U"):
                values.append(inverse_positive(torch.full((size,), 1.0 / shape[1])))
            elif name == "u":
                values.append(inverse_positive(torch.full((size,), 1e-2 / shape[0])))
            else:  # biases, linear term, quadratic correction
                values.append(torch.zeros(size))
        return torch.cat(values)

    def potential(
        self,
        points: torch.Tensor,
        params: torch.Tensor,
        base: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        r"""Potentials :math:`\varphi_b(x_{bi})`, shape ``(batch, n_points)``, of points ``(batch, n_points, dim)``.

        ``base = (root, shift)``, when given, replaces the identity in the quadratic term by
        ``root`` ``(batch, dim, dim)`` (so that it starts at :math:`\tfrac12 x^\top R^\top R x`) and
        adds ``shift`` ``(batch, dim)`` to the linear term: the ICNN then starts at a given affine map.
        """
        p = self.split(params)
        z = None
        for layer in range(len(self.hidden)):
            pre = torch.einsum("bnd,bhd->bnh", points, p[f"a{layer}"]) ** 2
            pre = pre + torch.einsum("bnd,bhd->bnh", points, p[f"W{layer}"]) + p[f"c{layer}"][:, None, :]
            if z is not None:
                pre = pre + torch.einsum("bnk,bhk->bnh", z, positive(p[f"U{layer}"]))
            z = F.celu(pre, alpha=self.alpha)
        linear = p["v"] if base is None else p["v"] + base[1]
        value = torch.einsum("bnh,bh->bn", z, positive(p["u"])) + torch.einsum("bnd,bd->bn", points, linear)
        if base is None:
            root = torch.eye(self.dim, dtype=points.dtype, device=points.device).expand(len(params), -1, -1)
        else:
            root = base[0]
        if self.quadratic == "full":
            root = root + p["M"]
        if base is None and self.quadratic == "identity":
            return value + 0.5 * (points**2).sum(-1)
        return value + 0.5 * (torch.einsum("bnd,bkd->bnk", points, root) ** 2).sum(-1)

    def gradient(
        self,
        points: torch.Tensor,
        params: torch.Tensor,
        base: tuple[torch.Tensor, torch.Tensor] | None = None,
        *,
        create_graph: bool = False,
    ) -> torch.Tensor:
        r"""The map :math:`\nabla\varphi_b(x_{bi})`, shape ``(batch, n_points, dim)``, by autograd.

        Works under :func:`torch.no_grad` too; with ``create_graph=True`` the result can be
        differentiated again (with respect to the points or the parameters).
        """
        with torch.enable_grad():
            points = points.detach().requires_grad_(True) if not points.requires_grad else points
            value = self.potential(points, params, base).sum()
            (grad,) = torch.autograd.grad(value, points, create_graph=create_graph)
        return grad
