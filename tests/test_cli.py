import anndata as ad
import numpy as np

import spatialot as sot
from spatialot import _cli


def test_demo_writes_embedding_model_and_figure(tmp_path):
    _cli.main(["demo", "--out", str(tmp_path), "--k", "5", "--steps", "3", "--n-pairs", "20", "--quiet"])
    adata = ad.read_h5ad(tmp_path / "bdtnp_wormhole.h5ad")
    assert sot.get.niche_clouds(adata).indices.shape == (3039, 5)
    assert adata.obsm["X_wormhole"].shape == (3039, 128)
    assert len(adata.uns["wormhole"]["loss"]) == 3
    # the saved model reproduces the stored embedding
    model = sot.models.Wormhole.load(tmp_path / "wormhole.pt", device="cpu")
    encoded = model.encode(sot.get.niche_clouds(adata))
    np.testing.assert_allclose(encoded, adata.obsm["X_wormhole"], rtol=1e-5, atol=1e-6)
    assert (tmp_path / "bdtnp_wormhole.png").stat().st_size > 20_000
