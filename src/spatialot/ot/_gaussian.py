r"""Closed forms of OT between Gaussians (the Bures–Wasserstein geometry).

For :math:`\mu = N(m_1, \Sigma_1)` and :math:`\nu = N(m_2, \Sigma_2)`,

.. math:: W_2^2(\mu, \nu) = \lVert m_1 - m_2 \rVert^2 + \operatorname{tr}\bigl(\Sigma_1 + \Sigma_2
          - 2 (\Sigma_1^{1/2} \Sigma_2 \Sigma_1^{1/2})^{1/2}\bigr),

and the Monge map is affine, :math:`T(x) = m_2 + A (x - m_1)` with
:math:`A = \Sigma_1^{-1/2} (\Sigma_1^{1/2} \Sigma_2 \Sigma_1^{1/2})^{1/2} \Sigma_1^{-1/2}`.
Every function is batched over leading dimensions and differentiable.
"""

from __future__ import annotations

import numbers

import torch

from .._validation import as_tensor
from ._clouds import PointClouds


def _psd_power(matrices: torch.Tensor, power: float, floor: float = 0.0) -> torch.Tensor:
    """``S ** power`` of symmetric PSD matrices through an eigendecomposition."""
    eigenvalues, eigenvectors = torch.linalg.eigh(0.5 * (matrices + matrices.transpose(-1, -2)))
    eigenvalues = eigenvalues.clamp_min(floor) ** power
    return (eigenvectors * eigenvalues[..., None, :]) @ eigenvectors.transpose(-1, -2)


def sqrtm_psd(matrices: torch.Tensor) -> torch.Tensor:
    """Principal square root of symmetric positive semi-definite matrices, shape ``(..., d, d)``.

    Examples
    --------
    >>> import torch
    >>> sqrtm_psd(torch.tensor([[4.0, 0.0], [0.0, 9.0]]))
    tensor([[2., 0.],
            [0., 3.]])
    """
    return _psd_power(matrices, 0.5)


def gaussian_moments(clouds: PointClouds, *, shrinkage: float | str = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Weighted mean and covariance of each cloud, the covariance optionally shrunk towards a multiple of the identity.

    Parameters
    ----------
    clouds
        A batch of weighted clouds.
    shrinkage
        Weight :math:`\rho` of the target :math:`\tfrac{\operatorname{tr} S}{d} I` in
        :math:`(1 - \rho) S + \rho \tfrac{\operatorname{tr} S}{d} I`, where :math:`S` is the
        cloud's weighted covariance: a number in ``[0, 1]`` (``0``, the default, is :math:`S`), or
        ``'oas'`` for the Oracle Approximating Shrinkage of Chen et al. (2010), which picks
        :math:`\rho` per cloud from its own :math:`S` and size, as :func:`sklearn.covariance.oas`
        does. The sample covariance of :math:`n` points in :math:`d` dimensions scatters its
        eigenvalues (it is singular for :math:`n \le d`); OAS undoes most of that error when
        :math:`n` is not much larger than :math:`d` and leaves :math:`S` nearly untouched when it
        is. A weighted cloud counts as :math:`n = 1 / \sum_i w_i^2` points (its size when the
        weights are uniform).

    Returns
    -------
    Means of shape ``(batch, dim)`` and covariances of shape ``(batch, dim, dim)`` (the weighted
    second central moment, without a small-sample correction, then shrunk).

    Examples
    --------
    >>> import numpy as np
    >>> from spatialot.ot import PointClouds
    >>> means, covariances = gaussian_moments(PointClouds.from_list([np.array([[0.0, 0.0], [2.0, 0.0]])]))
    >>> means, covariances[0, 0]
    (tensor([[1., 0.]]), tensor([1., 0.]))
    >>> gaussian_moments(PointClouds.from_list([np.array([[0.0, 0.0], [2.0, 0.0]])]), shrinkage=0.5)[1][0]
    tensor([[0.7500, 0.0000],
            [0.0000, 0.2500]])
    """
    check_shrinkage(shrinkage)
    weights = clouds.weights[..., None]
    means = (weights * clouds.points).sum(1)
    centred = (clouds.points - means[:, None, :]) * clouds.mask[..., None]
    covariances = (weights * centred).transpose(1, 2) @ centred
    if isinstance(shrinkage, str) or shrinkage > 0:
        dim = covariances.shape[-1]
        level = torch.diagonal(covariances, dim1=-2, dim2=-1).mean(-1)
        if isinstance(shrinkage, str):
            # Chen et al. (2010), eq. 23 without its 2/d terms, as scikit-learn writes it
            mean_square = (covariances**2).mean((-2, -1))
            n_points = 1.0 / (clouds.weights**2).sum(1)
            denominator = (n_points + 1) * (mean_square - level**2 / dim)
            ratio = (mean_square + level**2) / torch.where(denominator > 0, denominator, torch.ones_like(denominator))
            rho = torch.where(denominator > 0, ratio.clamp(max=1.0), torch.ones_like(ratio))[:, None, None]
        else:
            rho = shrinkage
        eye = torch.eye(dim, dtype=covariances.dtype, device=covariances.device)
        covariances = (1 - rho) * covariances + rho * level[:, None, None] * eye
    return means, covariances


def check_shrinkage(shrinkage: float | str) -> None:
    """A ``ValueError`` naming ``shrinkage`` unless it is ``'oas'`` or a number in ``[0, 1]``.

    Examples
    --------
    >>> check_shrinkage("oas")
    >>> check_shrinkage(1.5)
    Traceback (most recent call last):
    ...
    ValueError: `shrinkage` must be 'oas' or a number in [0, 1], got 1.5.
    """
    if isinstance(shrinkage, str):
        if shrinkage == "oas":
            return
    elif isinstance(shrinkage, numbers.Real) and not isinstance(shrinkage, bool) and 0 <= shrinkage <= 1:
        return
    raise ValueError(f"`shrinkage` must be 'oas' or a number in [0, 1], got {shrinkage!r}.")


def bures_wasserstein_squared(
    mean_1: torch.Tensor, cov_1: torch.Tensor, mean_2: torch.Tensor, cov_2: torch.Tensor
) -> torch.Tensor:
    r"""Squared 2-Wasserstein distance :math:`W_2^2` between Gaussians, in closed form.

    Parameters
    ----------
    mean_1, cov_1
        Means ``(..., d)`` and covariances ``(..., d, d)`` of the first Gaussians.
    mean_2, cov_2
        Those of the second Gaussians.

    Returns
    -------
    Tensor of shape ``(...)``: the squared distance (take the square root for :math:`W_2`).

    Examples
    --------
    >>> import torch
    >>> bures_wasserstein_squared(torch.zeros(2), torch.eye(2), torch.ones(2), 4 * torch.eye(2))
    tensor(4.)
    """
    root_1 = sqrtm_psd(cov_1)
    cross = sqrtm_psd(root_1 @ cov_2 @ root_1)
    trace = torch.diagonal(cov_1 + cov_2 - 2 * cross, dim1=-2, dim2=-1).sum(-1)
    return ((mean_1 - mean_2) ** 2).sum(-1) + trace.clamp_min(0)


def gaussian_map(
    mean_1: torch.Tensor, cov_1: torch.Tensor, mean_2: torch.Tensor, cov_2: torch.Tensor, *, floor: float = 1e-12
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Monge map from :math:`N(m_1, \Sigma_1)` to :math:`N(m_2, \Sigma_2)`.

    Parameters
    ----------
    mean_1, cov_1
        Source means ``(..., d)`` and covariances ``(..., d, d)``; ``cov_1`` must be
        non-singular.
    mean_2, cov_2
        Target means and covariances.
    floor
        Eigenvalues of ``cov_1`` below this are raised to it before inversion.

    Returns
    -------
    ``(matrix, shift)`` such that :math:`T(x) = A x + s` is ``x @ matrix.T + shift``; the matrix
    is symmetric positive semi-definite (T is the gradient of a convex function).

    Examples
    --------
    >>> import torch
    >>> matrix, shift = gaussian_map(torch.zeros(2), torch.eye(2), torch.ones(2), 4 * torch.eye(2))
    >>> matrix, shift
    (tensor([[2., 0.],
            [0., 2.]]), tensor([1., 1.]))
    """
    root_1 = _psd_power(cov_1, 0.5, floor)
    inverse_root_1 = _psd_power(cov_1, -0.5, floor)
    matrix = inverse_root_1 @ sqrtm_psd(root_1 @ cov_2 @ root_1) @ inverse_root_1
    matrix = 0.5 * (matrix + matrix.transpose(-1, -2))
    shift = mean_2 - (matrix @ mean_1[..., None])[..., 0]
    return matrix, shift


def bures_geodesic(
    mean_1: torch.Tensor,
    cov_1: torch.Tensor,
    mean_2: torch.Tensor,
    cov_2: torch.Tensor,
    t: float | torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Point at time ``t`` on the Wasserstein geodesic between two Gaussians (McCann interpolation).

    The interpolant is the push-forward of the first Gaussian by
    :math:`(1 - t)\,\mathrm{Id} + t\,T`, i.e. the Gaussian with mean :math:`(1 - t) m_1 + t m_2`
    and covariance :math:`((1 - t) I + t A)\, \Sigma_1\, ((1 - t) I + t A)`.

    Parameters
    ----------
    mean_1, cov_1
        Start of the geodesic.
    mean_2, cov_2
        End of the geodesic.
    t
        Time in ``[0, 1]``, a float or a tensor broadcastable to the batch shape ``(...)``.

    Returns
    -------
    Mean and covariance at time ``t``.

    Examples
    --------
    >>> import torch
    >>> mean, cov = bures_geodesic(torch.zeros(2), torch.eye(2), torch.ones(2), 4 * torch.eye(2), 0.5)
    >>> mean, torch.diagonal(cov)
    (tensor([0.5000, 0.5000]), tensor([2.2500, 2.2500]))
    """
    matrix, _ = gaussian_map(mean_1, cov_1, mean_2, cov_2)
    t = as_tensor(t, dtype=mean_1.dtype, device=mean_1.device)
    identity = torch.eye(matrix.shape[-1], dtype=matrix.dtype, device=matrix.device)
    step = (1 - t)[..., None, None] * identity + t[..., None, None] * matrix
    mean = (1 - t)[..., None] * mean_1 + t[..., None] * mean_2
    return mean, step @ cov_1 @ step.transpose(-1, -2)
