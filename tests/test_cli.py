import anndata as ad
import numpy as np

from spatialot import _cli, ot


def test_demo_writes_niches_distances_and_figure(tmp_path):
    _cli.main(["demo", "--out", str(tmp_path), "--k", "5", "--n-pairs", "6"])
    adata = ad.read_h5ad(tmp_path / "bdtnp_niches.h5ad")
    assert adata.obsm["niche_indices"].shape == (3039, 5)
    distances = adata.uns["demo_ot"]["w2_squared"]
    cells = adata.uns["demo_ot"]["cells"]
    assert distances.shape == (6, 6)
    # the stored distances are exact W2^2 between the stored niches
    clouds = ot.PointClouds.from_padded(adata.X[adata.obsm["niche_indices"][cells]])
    np.testing.assert_allclose(ot.pairwise_distances(clouds[:3], clouds[3:]), distances[:3, 3:], rtol=1e-6)
    assert (tmp_path / "bdtnp_niches.png").stat().st_size > 10_000
