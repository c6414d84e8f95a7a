"""Quality masks against independent bit decoding on the real Landsat 8 C2 L2 scene."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

from forestcarbon.rs.qa import dilate, qa_pixel_flags, qa_pixel_invalid, radsat_invalid, scl_invalid

from .conftest import shared

L8 = "satellite/landsat8-c2l2-001062-20201031/LC08_L2SP_001062_20201031_20201106_02_T2"


def test_qa_pixel_class_counts_equal_independent_decoding():
    with rasterio.open(shared(L8 + "_QA_PIXEL.TIF")) as src:
        qa = src.read(1)
    flags = qa_pixel_flags(qa)
    # independent decoding: Python integers, string formatting of the bits
    values, counts = np.unique(qa, return_counts=True)
    names = ["fill", "dilated_cloud", "cirrus", "cloud", "cloud_shadow", "snow", "clear", "water"]
    ref = {n: 0 for n in names}
    for v, c in zip(values.tolist(), counts.tolist()):
        bits = format(v, "016b")[::-1]
        for i, n in enumerate(names):
            ref[n] += c if bits[i] == "1" else 0
    assert {n: int(flags[n].sum()) for n in names} == ref
    assert ref["cloud"] > 0.5 * qa.size  # the scene is 99.94 % cloud
    inval = qa_pixel_invalid(qa)
    assert int(inval.sum()) == int((flags["fill"] | flags["dilated_cloud"] | flags["cirrus"] | flags["cloud"]
                                   | flags["cloud_shadow"] | flags["snow"]).sum())


def test_landsat_reflectance_scale_and_nodata():
    """SR = DN x 0.0000275 - 0.2 (C2 L2); DN 0 is nodata and stays nodata."""
    with rasterio.open(shared(L8 + "_SR_B4.TIF")) as src:
        dn = src.read(1)
        nodata = src.nodata
    from forestcarbon.rs.sensors import LANDSAT_C2_L2, to_reflectance

    refl = to_reflectance(dn, LANDSAT_C2_L2.scale, LANDSAT_C2_L2.offset, nodata=nodata)
    ok = dn != 0
    np.testing.assert_allclose(refl[ok], dn[ok].astype("float64") * 0.0000275 - 0.2, rtol=1e-6)
    assert np.isnan(refl[~ok]).all() and (~ok).any()
    assert -0.2 <= np.nanmin(refl) and np.nanmax(refl) <= 1.61


def test_radsat_and_scl_and_dilation():
    radsat = np.array([0, 1 << 3, 1 << 11, 1 << 8], dtype=np.uint16)
    np.testing.assert_array_equal(radsat_invalid(radsat, bands=(2, 3, 4, 5)), [False, True, True, False])
    np.testing.assert_array_equal(scl_invalid(np.array([0, 4, 9, 11]), (8, 9, 10)), [True, False, True, False])
    m = np.zeros((5, 5), bool)
    m[2, 2] = True
    assert dilate(m, 1).sum() == 9 and dilate(m, 2).sum() == 25
    with pytest.raises(ValueError, match="unknown QA_PIXEL flags"):
        qa_pixel_invalid(np.zeros(2, np.uint16), ("clouds",))


def test_landsat_product_folder_loads_scaled_and_masked():
    """Real data: the Landsat 8 C2 L2 product folder (MTL.json + per-band GeoTIFFs) through the mosaic loader."""
    from odc.geo.geobox import GeoBox

    from forestcarbon.rs.composite import load_reflectance
    from forestcarbon.rs.scenes import read_scenes

    folder = shared(L8 + "_MTL.json").parent
    scenes = read_scenes(folder, ("red", "nir", "swir16"))
    assert len(scenes) == 1 and scenes[0].sensor.name == "landsat-oli-c2-l2"
    assert scenes[0].datetime.date().isoformat() == "2020-10-31"
    with rasterio.open(folder / "LC08_L2SP_001062_20201031_20201106_02_T2_SR_B4.TIF") as src:
        red = src.read(1)
        gbox = GeoBox(src.shape, src.transform, src.crs.to_wkt())
    bands = {}
    for b in ("SR_B5", "SR_B6", "QA_PIXEL", "QA_RADSAT"):
        with rasterio.open(folder / f"LC08_L2SP_001062_20201031_20201106_02_T2_{b}.TIF") as src:
            bands[b] = src.read(1)
    # the scene is 99.94 % cloud: with the default flags nearly nothing survives ...
    _, valid_default = load_reflectance(scenes, gbox, ("red", "nir", "swir16"), (), chunk_px=128)
    ref_default = ~qa_pixel_invalid(bands["QA_PIXEL"]) & ~radsat_invalid(bands["QA_RADSAT"], (4, 5, 6)) & (red > 0)
    np.testing.assert_array_equal(valid_default.isel(time=0).values, ref_default & (bands["SR_B5"] > 0) & (bands["SR_B6"] > 0))
    # ... so check scaling with only fill masked
    refl, valid = load_reflectance(scenes, gbox, ("red", "nir", "swir16"), (), chunk_px=128, qa_flags=("fill",))
    ok = (~qa_pixel_invalid(bands["QA_PIXEL"], ("fill",)) & ~radsat_invalid(bands["QA_RADSAT"], (4, 5, 6))
          & (red > 0) & (bands["SR_B5"] > 0) & (bands["SR_B6"] > 0))
    np.testing.assert_array_equal(valid.isel(time=0).values, ok)
    got = refl["red"].isel(time=0).values
    np.testing.assert_allclose(got[ok], red[ok] * 0.0000275 - 0.2, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(refl["nir"].isel(time=0).values[ok], bands["SR_B5"][ok] * 0.0000275 - 0.2, rtol=1e-5, atol=1e-7)
    assert ok.sum() > 0.5 * ok.size


def test_landsat_stac_item_loads_like_the_product_folder(tmp_path):
    """Real data: the Landsat 8 scene described by a STAC item with common-name asset keys
    (as USGS / Planetary Computer publish) gives the same scene as the MTL product folder."""
    import json

    from odc.geo.geobox import GeoBox

    from forestcarbon.rs.composite import load_reflectance
    from forestcarbon.rs.scenes import read_scenes

    folder = shared(L8 + "_MTL.json").parent
    real = json.loads((folder / "LC08_L2SP_001062_20201031_20201106_02_T2_SR_stac.json").read_text())
    pid = "LC08_L2SP_001062_20201031_20201106_02_T2"
    keys = {"blue": "SR_B2", "green": "SR_B3", "red": "SR_B4", "nir08": "SR_B5", "swir16": "SR_B6", "swir22": "SR_B7",
            "qa_pixel": "QA_PIXEL", "qa_radsat": "QA_RADSAT"}
    assets = {}
    for k, b in keys.items():
        with rasterio.open(folder / f"{pid}_{b}.TIF") as src:
            assets[k] = {"href": str(folder / f"{pid}_{b}.TIF"), "roles": ["data"], "proj:shape": [src.height, src.width],
                         "proj:transform": list(src.transform)[:6]}
    item = {"type": "Feature", "stac_version": "1.0.0", "id": pid,
            "stac_extensions": ["https://stac-extensions.github.io/projection/v1.0.0/schema.json"],
            "geometry": real["geometry"], "bbox": real["bbox"], "links": [], "assets": assets,
            "properties": {"datetime": "2020-10-31T14:05:00Z", "platform": "landsat-8", "proj:epsg": 32620}}
    (tmp_path / "l8.json").write_text(json.dumps(item))
    via_stac = read_scenes(tmp_path, ("red", "nir", "swir16"))
    via_folder = read_scenes(folder, ("red", "nir", "swir16"))
    assert via_stac[0].sensor is via_folder[0].sensor and via_stac[0].offset == -0.2
    with rasterio.open(folder / f"{pid}_SR_B4.TIF") as src:
        gbox = GeoBox(src.shape, src.transform, src.crs.to_wkt())
    a, va = load_reflectance(via_stac, gbox, ("red", "nir", "swir16"), (), 128, ("fill",))
    b, vb = load_reflectance(via_folder, gbox, ("red", "nir", "swir16"), (), 128, ("fill",))
    np.testing.assert_array_equal(va.values, vb.values)
    np.testing.assert_array_equal(a["red"].values, b["red"].values)


def test_snow_is_masked_alike_for_both_sensors():
    from forestcarbon.config import MosaicConfig

    m = MosaicConfig()
    assert 11 in m.scl_classes() and "snow" in m.qa_flags()
    off = MosaicConfig(mask_snow=False)
    assert 11 not in off.scl_classes() and "snow" not in off.qa_flags()
    assert set(off.scl_classes()) == set(off.scl_mask) - {11}  # the cloud, shadow and defect classes stay
