"""Landsat sensors number their bands differently: OLI (8/9) blue is SR_B2, TM/ETM+ (4/5/7) blue is SR_B1.

The TM/ETM+ product folder here is built from the real Landsat 8 files: each OLI band is written under
the file name the Landsat 7 product gives the same colour (USGS LSDS-1618 / LSDS-1619 Table 6-1), so the
blue read from it must be the real OLI blue, and a saturation flag on TM band 1 must hide blue.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import rasterio
from odc.geo.geobox import GeoBox

from forestcarbon.errors import SceneError
from forestcarbon.rs.composite import load_reflectance
from forestcarbon.rs.scenes import read_scenes

from .conftest import shared

L8 = "satellite/landsat8-c2l2-001062-20201031/LC08_L2SP_001062_20201031_20201106_02_T2"
PID8 = "LC08_L2SP_001062_20201031_20201106_02_T2"
PID7 = "LE07_L2SP_001062_20201031_20201106_02_T2"
# the same colour in each product (Landsat 8-9 and 4-7 C2 L2 Science Product Guides, Table 6-1)
OLI_TO_ETM = {"SR_B2": "SR_B1", "SR_B3": "SR_B2", "SR_B4": "SR_B3", "SR_B5": "SR_B4", "SR_B6": "SR_B5", "SR_B7": "SR_B7"}


def _etm_folder(tmp_path, radsat_bit: int | None):
    folder = shared(L8 + "_MTL.json").parent
    out = tmp_path / PID7
    out.mkdir(parents=True)
    mtl = json.loads((folder / f"{PID8}_MTL.json").read_text())
    mtl["LANDSAT_METADATA_FILE"]["PRODUCT_CONTENTS"]["LANDSAT_PRODUCT_ID"] = PID7
    mtl["LANDSAT_METADATA_FILE"]["IMAGE_ATTRIBUTES"]["SPACECRAFT_ID"] = "LANDSAT_7"
    (out / f"{PID7}_MTL.json").write_text(json.dumps(mtl))
    for oli, etm in OLI_TO_ETM.items():
        shutil.copy(folder / f"{PID8}_{oli}.TIF", out / f"{PID7}_{etm}.TIF")
    shutil.copy(folder / f"{PID8}_QA_PIXEL.TIF", out / f"{PID7}_QA_PIXEL.TIF")
    with rasterio.open(folder / f"{PID8}_QA_RADSAT.TIF") as src:
        prof, radsat = src.profile, np.zeros((src.height, src.width), dtype="uint16")
    if radsat_bit is not None:
        radsat[180:190, 180:200] = 1 << radsat_bit  # inside the swath, away from fill
    with rasterio.open(out / f"{PID7}_QA_RADSAT.TIF", "w", **prof) as dst:
        dst.write(radsat, 1)
    return folder, out


def test_etm_folder_reads_its_own_band_numbers(tmp_path):
    folder, etm = _etm_folder(tmp_path, radsat_bit=0)  # bit 0: TM/ETM+ band 1 (blue) saturated
    scenes = read_scenes(etm, ("blue", "red", "nir"))
    assert scenes[0].sensor.name == "landsat-tm-etm-c2-l2"
    with rasterio.open(folder / f"{PID8}_SR_B2.TIF") as src:
        blue_dn = src.read(1)
        gbox = GeoBox(src.shape, src.transform, src.crs.to_wkt())
    with rasterio.open(folder / f"{PID8}_SR_B4.TIF") as src:
        red_dn = src.read(1)
    with rasterio.open(folder / f"{PID8}_SR_B5.TIF") as src:
        nir_dn = src.read(1)
    with rasterio.open(folder / f"{PID8}_QA_PIXEL.TIF") as src:
        qa = src.read(1)
    refl, valid = load_reflectance(scenes, gbox, ("blue", "red", "nir"), (), 128, ("fill",))
    v = valid.isel(time=0).values
    fill = (qa & 1) == 1
    ok = ~fill & (blue_dn > 0) & (red_dn > 0) & (nir_dn > 0)
    sat = np.zeros_like(ok)
    sat[180:190, 180:200] = True
    assert ok[sat].all()
    np.testing.assert_array_equal(v, ok & ~sat)  # blue saturated there: the observation is not used
    np.testing.assert_allclose(refl["blue"].isel(time=0).values[v], blue_dn[v] * 0.0000275 - 0.2, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(refl["nir"].isel(time=0).values[v], nir_dn[v] * 0.0000275 - 0.2, rtol=1e-5, atol=1e-7)


def test_etm_saturation_of_a_band_not_used_is_ignored(tmp_path):
    """Bit 5 is ETM+ band 6 (thermal), not a reflectance band the mosaic reads: nothing is hidden."""
    _, etm5 = _etm_folder(tmp_path / "b5", radsat_bit=5)
    _, etm_none = _etm_folder(tmp_path / "none", radsat_bit=None)
    gbox = None
    out = []
    for f in (etm5, etm_none):
        scenes = read_scenes(f, ("blue", "red", "nir"))
        with rasterio.open(f / f"{PID7}_SR_B1.TIF") as src:
            gbox = GeoBox(src.shape, src.transform, src.crs.to_wkt())
        out.append(load_reflectance(scenes, gbox, ("blue", "red", "nir"), (), 128, ("fill",))[1].values)
    np.testing.assert_array_equal(out[0], out[1])
    assert out[1][0, 180:190, 180:200].all()


def test_landsat_item_without_platform_or_known_id_is_refused(tmp_path):
    item = {"type": "Feature", "stac_version": "1.0.0", "id": "scene-42", "links": [],
            "geometry": {"type": "Point", "coordinates": [0, 0]}, "bbox": [0, 0, 0, 0],
            "properties": {"datetime": "2020-10-31T14:05:00Z"},
            "assets": {k: {"href": str(tmp_path / f"{k}.tif")} for k in ("red", "nir08", "qa_pixel")}}
    (tmp_path / "x.json").write_text(json.dumps(item))
    with pytest.raises(SceneError, match="scene-42: a Landsat item whose sensor cannot be told"):
        read_scenes(tmp_path, ("red",))
