"""``sot.pl.generated_niches``: generated niches beside real ones, and their predicted composition."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.patches import Patch
from scipy.spatial import cKDTree

from ..get import niche_clouds
from ._utils import category_colors, finish, panel_grid


def generated_niches(
    adata: AnnData,
    key: str = "wfm_generated",
    *,
    conditions: Sequence[str] | None = None,
    cell_type_key: str | None = None,
    n_real: int | None = None,
    point_size: float = 6.0,
    ncols: int = 4,
    random_state: int = 0,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
) -> Axes | np.ndarray | None:
    """Show generated niches beside real ones in one view, per condition, and their composition.

    One panel per condition, in a grid of ``ncols`` columns: the points of real niches and of
    generated niches in the plane of the first two principal components of all cells' features
    (the space the niches live in) and, under it (with ``cell_type_key``), the cell-type
    composition of real niches against that of generated niches, each generated point being
    given the type of its nearest real cell. The cell types take scanpy's colours
    (``.uns[f'{cell_type_key}_colors']``), in one legend for the figure.

    Parameters
    ----------
    adata
        Annotated data matrix on which :func:`spatialot.tl.generate_niches` ran.
    key
        The ``key_added`` of :func:`spatialot.tl.generate_niches`.
    conditions
        Conditions to show; all generated ones by default. Real niches of a condition are those
        whose centre cell has it in ``.obs[condition_key]`` (the key recorded at generation).
    cell_type_key
        Column of ``.obs`` with the cell types used for the composition row.
    n_real
        Real niches drawn per condition; as many as generated ones by default.
    point_size
        Marker size of the points.
    ncols
        Panels per row of the grid.
    random_state
        Seed of the choice of real niches.
    ax
        Axes to draw the view of one condition into (``conditions`` of length one, or an
        unconditional model, and no ``cell_type_key``); a new figure when ``None``.
    show
        Show the figure; by default as :data:`scanpy.settings.autoshow`, unless saving.
    save
        Path to save the figure to.

    Returns
    -------
    ``ax`` when given; else an array of the Axes of shape ``(rows, n_conditions)``, row 0 the
    views and row 1 (with ``cell_type_key``) the compositions. ``None`` if the figure was shown.

    Examples
    --------
    >>> import spatialot as sot
    >>> adata = sot.datasets.simulated_tissue()
    >>> sot.pp.niches(adata, k=8)
    >>> model = sot.tl.wfm(adata, condition_key="cell_type", n_steps=200)  # doctest: +SKIP
    >>> sot.tl.generate_niches(adata, model, n=20)  # doctest: +SKIP
    >>> sot.pl.generated_niches(adata, cell_type_key="cell_type")  # doctest: +SKIP
    """
    if key not in adata.uns or "points" not in adata.uns[key]:
        raise KeyError(f"No generated niches under `key`={key!r}: run `sot.tl.generate_niches(adata, model)` first.")
    result = adata.uns[key]
    params = result["params"]
    points, mask = np.asarray(result["points"]), np.asarray(result["mask"], dtype=bool)
    generated_conditions = np.asarray(result["conditions"], dtype=str) if "conditions" in result else None
    condition_key = params.get("condition_key")
    if cell_type_key is not None and cell_type_key not in adata.obs:
        raise KeyError(
            f"`cell_type_key`={cell_type_key!r} is not a column of `adata.obs` (columns: {list(adata.obs)})."
        )
    family = niche_clouds(adata, niche_key=params["niche_key"])
    features = family.read_features(np.arange(family.features.shape[0])).astype(np.float64)

    if generated_conditions is None:
        panels = [None]
    else:
        available = sorted(set(generated_conditions))
        panels = available if conditions is None else list(conditions)
        missing = sorted(set(panels) - set(available))
        if missing:
            raise ValueError(f"`conditions` {missing} were not generated; generated: {available}.")
    real_labels = None
    if condition_key is not None and condition_key in adata.obs:
        real_labels = adata.obs[condition_key].astype(str).to_numpy()

    center = features.mean(0)
    _, _, components = np.linalg.svd(features - center, full_matrices=False)
    projection = components[:2].T if features.shape[1] > 1 else np.eye(1)

    def project(values: np.ndarray) -> np.ndarray:
        flat = (values - center) @ projection
        return flat if flat.shape[1] == 2 else np.column_stack([flat, np.zeros(len(flat))])

    if ax is not None and (len(panels) != 1 or cell_type_key is not None):
        raise ValueError(
            f"`ax` holds one view, but {len(panels)} condition(s)"
            + (" and their composition" if cell_type_key is not None else "")
            + " were asked for: pass one of `conditions` without `cell_type_key`, or leave `ax` out to get a grid."
        )
    rng = np.random.default_rng(random_state)
    if ax is not None:
        axes = np.array([[ax]], dtype=object)
    else:
        ratios = (1.0, 0.3) if cell_type_key is not None else (1.0,)
        axes = panel_grid(len(panels), ncols=ncols, panel_size=(3.6, 3.4), height_ratios=ratios)
    types = adata.obs[cell_type_key].astype("category") if cell_type_key is not None else None
    palette = category_colors(adata, cell_type_key) if cell_type_key is not None else []
    tree = cKDTree(features) if cell_type_key is not None else None
    for column, condition in enumerate(panels):
        chosen = np.ones(len(points), dtype=bool) if condition is None else generated_conditions == condition
        fake = points[chosen][mask[chosen]]
        pool = (
            np.arange(adata.n_obs)
            if real_labels is None or condition is None
            else np.flatnonzero(real_labels == condition)
        )
        count = min(len(pool), n_real if n_real is not None else int(chosen.sum()))
        real_cells = rng.choice(pool, size=count, replace=False) if count else np.zeros(0, dtype=int)
        members = family.indices[real_cells][family.mask[real_cells]]
        view = axes[0, column]
        view.scatter(*project(features[members]).T, s=point_size, alpha=0.5, label="real", color="0.25")
        view.scatter(*project(fake).T, s=point_size, alpha=0.5, label="generated", color="tab:red")
        view.set_title("all niches" if condition is None else str(condition))
        view.set_xlabel("PC1")
        view.set_ylabel("PC2")
        if column == 0:
            view.legend(loc="best", fontsize="small")
        if tree is not None:
            codes = types.cat.codes.to_numpy()
            _, nearest = tree.query(fake)
            _composition_bars(axes[1, column], len(types.cat.categories), codes[members], codes[nearest], palette)
    if types is not None:
        palette_handles = [
            Patch(color=tint, label=name) for name, tint in zip(types.cat.categories, palette, strict=True)
        ]
        axes[0, 0].get_figure().legend(
            handles=palette_handles, title=cell_type_key, loc="outside right center", fontsize="small", frameon=False
        )
    shown = finish(axes[0, 0], show=show, save=save)
    if shown is None:
        return None
    return ax if ax is not None else axes


def _composition_bars(ax: Axes, n_types: int, real: np.ndarray, generated: np.ndarray, palette: Sequence[str]) -> None:
    """Stacked bars of the type fractions (codes ``0 … n_types - 1``) of real and generated points."""
    for row, codes in enumerate([real, generated]):
        fractions = np.bincount(codes, minlength=n_types) / max(len(codes), 1)
        lefts = np.concatenate([[0.0], np.cumsum(fractions)[:-1]])
        ax.barh(np.full(n_types, row), fractions, left=lefts, color=palette, height=0.8)
    ax.set_yticks([0, 1], ["real", "generated"])
    ax.set_xlim(0, 1)
    ax.set_xlabel("fraction of points")
