"""The forest mask: every configured source can zero a pixel, each with its own reason bit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from forestcarbon.config import ForestMaskConfig
from forestcarbon.rs.forest_mask import NO_PARCEL, forest_mask_block, masked_bands

from .test_pipeline import _cli


def test_each_source_and_its_reason():
    # pixels: 0 forest everywhere; 1 parcel coded non-forest; 2 outside parcels; 3 built-up land cover (50);
    # 4 NDVI 0.1 (< 0.3); 5 NDVI unknown (cloud) and land-cover nodata (0): evidence missing zeroes nothing;
    # 6 everything against it; 7 grassland (30) inside a forest parcel: the map's confusion does not
    # overrule the inventory
    parcel = np.array([[1, 0, NO_PARCEL, 1, 1, 1, 0, 1]], dtype=np.uint8)
    lc = np.array([[10, 10, 10, 50, 10, 0, 80, 30]])
    ndvi = np.array([[0.8, 0.8, 0.8, 0.8, 0.1, np.nan, -0.2, 0.7]])
    forest, why = forest_mask_block(parcel, lc, ndvi, landcover_forest=(10,), landcover_never_forest=(50, 80),
                                    landcover_nodata=0, ndvi_min=0.3)
    np.testing.assert_array_equal(forest[0], [1, 0, 0, 0, 0, 1, 0, 1])
    np.testing.assert_array_equal(why[0], [0, 1, 2, 4, 8, 0, 1 | 4 | 8, 0])
    # without parcels, land cover decides everywhere: grassland is not forest
    forest, why = forest_mask_block(None, lc, None, landcover_forest=(10,), landcover_nodata=0)
    np.testing.assert_array_equal(forest[0], [1, 1, 1, 0, 1, 1, 0, 0])
    parcel, lc, ndvi = parcel[:, :7], lc[:, :7], ndvi[:, :7]
    # outside parcels decided by the evidence instead
    forest, why = forest_mask_block(parcel, None, ndvi, ndvi_min=0.3, outside_parcels="evidence")
    np.testing.assert_array_equal(forest[0], [1, 0, 1, 1, 0, 1, 0])
    agb = np.array([[120.0, 80.0, np.nan, 50.0, 10.0, np.nan, 3.0]], dtype="float32")
    sd = np.full_like(agb, 9.0)
    got = masked_bands(np.stack([agb, sd]), forest[0], (0.0, None))  # band 2 left as it is
    np.testing.assert_array_equal(got[0], [[120.0, 0.0, np.nan, 50.0, 0.0, np.nan, 0.0]])
    np.testing.assert_array_equal(got[1], sd)


def test_codes_saved_as_numbers_find_their_leading_zero():
    from forestcarbon.rs.forest_mask import land_class_text

    got = land_class_text([111, "0111", 111.0, " 210", None, "A1"], ("0111", "0113"))
    assert got.tolist() == ["0111", "0111", "0111", "0210", "", "A1"]
    assert land_class_text([111], ("111", "0113")).tolist() == ["111"]  # codes of mixed width: no padding


def test_codes_need_their_field_and_are_text():
    with pytest.raises(ValueError, match="needs forest_mask.forest_codes"):
        ForestMaskConfig(parcel_field="DI_LEI")
    assert ForestMaskConfig(parcel_field="DI_LEI", forest_codes=[111, "0113 "]).forest_codes == ("111", "0113")


def test_codes_no_parcel_carries_fail_in_one_line(small_scene, tmp_path):
    """Codes written unlike the layer's (here 'forest' land coded 'Forest') would zero every pixel: refused."""
    raw = yaml.safe_load(small_scene.read_text())
    base = small_scene.parent
    for k in ("stac_items", "laz", "plots", "trees", "parcels", "projects", "landcover", "tree_lidar", "villages",
                "village_field_trees"):
        if raw["inputs"].get(k):
            raw["inputs"][k] = str(base / raw["inputs"][k])
    raw.pop("truth", None)
    raw["parcels"].update(land_class_field="land_class", forest_codes=["Forest"])
    raw["output"] = str(tmp_path / "out")
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(raw))
    res = _cli("run", str(p), "--stage", "map")
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert lines[0].startswith("error: parcels.forest_codes ['Forest']: no parcel of ")
    assert lines[0].endswith(f"{Path(raw['inputs']['parcels']).name} carries one in field 'land_class' "
                             "(its values: ['forest', 'non_forest'])")
