"""COG writing (atomic, tiled, described) and stage-order errors."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import rasterio
from odc.geo.geobox import GeoBox

from forestcarbon.errors import StageInputError
from forestcarbon.rs.cog import write_cog


def test_write_cog_from_dask_blocks(tmp_path):
    gbox = GeoBox.from_bbox((500_000, 3_200_000, 507_000, 3_205_000), "EPSG:4549", resolution=10)
    rng = np.random.default_rng(0)
    arr = rng.random((2, *gbox.shape)).astype("float32")
    arr[0, :3, :3] = np.nan
    p = write_cog(da.from_array(arr, chunks=(2, 256, 256)), gbox, tmp_path / "x.tif", descriptions=["a", "b"],
                  tags={"model_id": "m1"}, block=256)
    with rasterio.open(p) as src:
        np.testing.assert_array_equal(src.read(), arr)
        assert src.descriptions == ("a", "b") and src.tags()["model_id"] == "m1"
        assert src.profile["blockxsize"] == 512 and src.overviews(1)
        assert src.transform == gbox.affine and src.crs.to_epsg() == 4549
    assert sorted(q.name for q in tmp_path.iterdir()) == ["x.tif"]


def test_failed_write_leaves_nothing(tmp_path):
    gbox = GeoBox.from_bbox((0, 0, 100, 100), "EPSG:4549", resolution=10)

    def boom(block):
        raise RuntimeError("disk full")

    bad = da.zeros((1, 10, 10), chunks=(1, 5, 5), dtype="float32").map_blocks(boom, dtype="float32")
    with pytest.raises(RuntimeError, match="disk full"):
        write_cog(bad, gbox, tmp_path / "y.tif", block=5)
    assert list(tmp_path.iterdir()) == []


def test_stage_without_its_input_says_which(small_scene, tmp_path):
    from forestcarbon.config import load_config
    from forestcarbon.flows.stages import preflight, stage_map

    ctx = preflight(load_config(small_scene).with_output(tmp_path / "o"))
    with pytest.raises(StageInputError, match=r"model\.joblib is missing; run the stage that writes it first"):
        stage_map(ctx)
