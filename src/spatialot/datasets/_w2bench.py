r"""Families of measures with known non-linear OT maps: the Wasserstein-2 benchmark construction.

Korotin et al. (2021, *Do neural optimal transport solvers work? A continuous Wasserstein-2
benchmark*): push a reference :math:`\nu` through the gradient of a convex potential. By
Brenier's theorem :math:`\nabla\varphi_b` is then the optimal (squared-Euclidean) map from
:math:`\nu` onto :math:`\mu_b = (\nabla\varphi_b)_\#\nu`, and its inverse
:math:`(\nabla\varphi_b)^{-1} = \nabla\varphi_b^*` the optimal map from :math:`\mu_b` onto
:math:`\nu`. Both maps are known exactly, so learned maps can be scored against them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._validation import check_int

__all__ = ["ConvexMapFamily", "w2_benchmark"]


def _sigmoid(t: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * t))


def _softplus(t: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, t)


@dataclass(frozen=True)
class ConvexMapFamily:
    r"""Measures :math:`\mu_b = (\nabla\varphi_b)_\#N(0, I)` with :math:`\varphi_b` convex, and their exact OT maps.

    .. math::

        \varphi_b(z) = \tfrac12\lVert z\rVert^2 + \langle m_b, z\rangle
        + \sum_k w_{bk}\,\mathrm{softplus}(\langle a_{bk}, z\rangle + c_{bk}),
        \qquad w_{bk} \ge 0,

    a quadratic plus ridges: :math:`\nabla\varphi_b(z) = z + m_b + \sum_k w_{bk}\,
    \sigma(\langle a_{bk}, z\rangle + c_{bk})\,a_{bk}` shifts the reference by a smooth step of
    height :math:`w_{bk}\lVert a_{bk}\rVert` along each ridge direction. Its Jacobian is
    :math:`I + \sum_k w_{bk}\sigma'(\cdot)\,a_{bk}a_{bk}^\top \succeq I`, so :math:`\varphi_b` is
    1-strongly convex and the inverse map is well defined (computed by Newton's method).

    Attributes
    ----------
    shifts
        :math:`m_b`, ``(n_measures, dim)``.
    directions
        :math:`a_{bk}`, ``(n_measures, n_ridges, dim)``.
    offsets
        :math:`c_{bk}`, ``(n_measures, n_ridges)``.
    heights
        :math:`w_{bk} \ge 0`, ``(n_measures, n_ridges)``.

    Examples
    --------
    >>> import numpy as np
    >>> import spatialot as sot
    >>> family = sot.datasets.w2_benchmark(2, 3)
    >>> z = np.random.default_rng(0).normal(size=(2, 4, 3))  # reference points
    >>> x = family.forward(z)  # their images in each measure: the exact OT map
    >>> np.allclose(family.inverse(x), z)
    True
    """

    shifts: np.ndarray
    directions: np.ndarray
    offsets: np.ndarray
    heights: np.ndarray

    def __len__(self) -> int:
        return len(self.shifts)

    @property
    def dim(self) -> int:
        """Dimension of the points."""
        return self.shifts.shape[1]

    def _rows(self, points: np.ndarray) -> tuple[np.ndarray, ...]:
        points = np.asarray(points, dtype=np.float64)
        if points.ndim != 3 or points.shape[0] != len(self) or points.shape[2] != self.dim:
            raise ValueError(f"`points` must have shape ({len(self)}, n_points, {self.dim}), got {points.shape}.")
        return points, self.shifts[:, None, :], self.directions, self.offsets[:, None, :], self.heights[:, None, :]

    def potential(self, points: np.ndarray) -> np.ndarray:
        r"""The potentials :math:`\varphi_b(z_{bi})`, ``(n_measures, n)``, at points ``(n_measures, n, dim)``."""
        z, m, a, c, w = self._rows(points)
        ridges = (w * _softplus(np.einsum("bnd,bkd->bnk", z, a) + c)).sum(-1)
        return 0.5 * (z**2).sum(-1) + (z * m).sum(-1) + ridges

    def forward(self, points: np.ndarray) -> np.ndarray:
        r"""The OT map :math:`\nabla\varphi_b` from the reference onto :math:`\mu_b`, at ``(n_measures, n, dim)``."""
        z, m, a, c, w = self._rows(points)
        gates = w * _sigmoid(np.einsum("bnd,bkd->bnk", z, a) + c)
        return z + m + np.einsum("bnk,bkd->bnd", gates, a)

    def inverse(self, points: np.ndarray, *, tol: float = 1e-10, max_iter: int = 50) -> np.ndarray:
        r"""The OT map :math:`(\nabla\varphi_b)^{-1}` from :math:`\mu_b` onto the reference at ``(n_measures, n, dim)``.

        Solves :math:`\nabla\varphi_b(z) = x` by damped Newton steps on the strongly convex
        :math:`\varphi_b(z) - \langle x, z\rangle`, to a residual below ``tol``.
        """
        x, m, a, c, w = self._rows(points)
        z = x - m  # exact when there are no ridges
        eye = np.eye(self.dim)
        for _ in range(max_iter):
            t = np.einsum("bnd,bkd->bnk", z, a) + c
            s = _sigmoid(t)
            residual = z + m + np.einsum("bnk,bkd->bnd", w * s, a) - x
            if np.abs(residual).max() < tol:
                break
            curvature = w * s * (1 - s)  # (b, n, k)
            hessian = eye + np.einsum("bnk,bkd,bke->bnde", curvature, a, a)
            step = np.linalg.solve(hessian, residual[..., None])[..., 0]
            # backtracking on the objective φ(z) − ⟨x, z⟩ keeps Newton globally convergent
            objective = self._objective(z, x)
            size = np.ones(z.shape[:2])
            for _ in range(30):
                trial = z - size[..., None] * step
                worse = self._objective(trial, x) > objective - 1e-4 * size * (residual * step).sum(-1)
                if not worse.any():
                    break
                size = np.where(worse, 0.5 * size, size)
            z = z - size[..., None] * step
        return z

    def _objective(self, z: np.ndarray, x: np.ndarray) -> np.ndarray:
        return self.potential(z) - (x * z).sum(-1)

    def sample(self, n_points: int, random_state: int | np.random.Generator | None = 0) -> np.ndarray:
        """Independent samples of every measure, ``(n_measures, n_points, dim)``: the forward map of reference draws."""
        n_points = check_int("n_points", n_points)
        rng = np.random.default_rng(random_state)
        return self.forward(rng.standard_normal((len(self), n_points, self.dim)))

    def subset(self, rows) -> ConvexMapFamily:
        """The measures ``rows`` (an index array or slice) as a family of their own."""
        return ConvexMapFamily(self.shifts[rows], self.directions[rows], self.offsets[rows], self.heights[rows])


def w2_benchmark(
    n_measures: int,
    dim: int,
    *,
    n_ridges: int = 6,
    sharpness: float = 4.0,
    height: tuple[float, float] = (0.5, 1.5),
    shift: float = 0.5,
    offset: float = 1.0,
    random_state: int | None = 0,
) -> ConvexMapFamily:
    r"""A seeded family of measures whose OT maps to and from :math:`N(0, I)` are known exactly.

    The Wasserstein-2 benchmark construction (Korotin et al. 2021): each measure is the push-forward
    of the reference :math:`\nu = N(0, I_d)` by the gradient of a random convex potential (see
    :class:`ConvexMapFamily`), so its OT map from :math:`\nu` (:meth:`ConvexMapFamily.forward`)
    and to :math:`\nu` (:meth:`ConvexMapFamily.inverse`) are known in closed form up to a Newton
    solve. The maps are not affine, so the closed-form Gaussian map is only an approximation.
    Korotin et al. use random pre-trained ICNNs and Gaussian-mixture references; ridges of
    softplus keep the family cheap to draw, to invert and to describe, with a controlled
    departure from Gaussianity.

    Parameters
    ----------
    n_measures
        Number of measures.
    dim
        Dimension :math:`d`.
    n_ridges
        Ridges per potential. Each has a direction drawn uniformly on the sphere.
    sharpness
        Norm of each ridge direction :math:`\lVert a_{bk}\rVert`: larger is a sharper step.
    height
        Range of the uniform ridge weights :math:`w_{bk}`; each ridge shifts mass by up to
        ``sharpness * w`` along its direction.
    shift
        Standard deviation of the random translation :math:`m_b` of each measure.
    offset
        Standard deviation of the ridge offsets :math:`c_{bk}`: the step of ridge ``k`` is
        centred where :math:`\langle a_{bk}, z\rangle = -c_{bk}`, about ``offset / sharpness``
        reference standard deviations from the centre.
    random_state
        Seed.

    Returns
    -------
    The family; draw samples with :meth:`ConvexMapFamily.sample`.

    Examples
    --------
    >>> import numpy as np
    >>> import spatialot as sot
    >>> family = sot.datasets.w2_benchmark(3, 2)
    >>> clouds = family.sample(100)  # (3, 100, 2): 100 points of each measure
    >>> z = np.random.default_rng(1).normal(size=(3, 5, 2))
    >>> np.allclose(family.inverse(family.forward(z)), z)
    True
    """
    n_measures = check_int("n_measures", n_measures)
    dim = check_int("dim", dim)
    n_ridges = check_int("n_ridges", n_ridges, minimum=0)
    if not sharpness > 0:
        raise ValueError(f"`sharpness` must be positive, got {sharpness!r}.")
    if not 0 <= height[0] <= height[1]:
        raise ValueError(f"`height` must be a range (low, high) with 0 <= low <= high, got {height!r}.")
    for name, value in (("shift", shift), ("offset", offset)):
        if not value >= 0:
            raise ValueError(f"`{name}` must be non-negative, got {value!r}.")
    rng = np.random.default_rng(random_state)
    shifts = shift * rng.standard_normal((n_measures, dim))
    directions = rng.standard_normal((n_measures, n_ridges, dim))
    directions *= sharpness / np.linalg.norm(directions, axis=-1, keepdims=True)
    offsets = offset * rng.standard_normal((n_measures, n_ridges))
    heights = rng.uniform(height[0], height[1], size=(n_measures, n_ridges))
    return ConvexMapFamily(shifts, directions, offsets, heights)
