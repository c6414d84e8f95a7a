"""Band dtypes and value ranges against the product's, before any heavy work (issue #10, item 7).

Fixtures are the real Sentinel-2 and Landsat files of ../shared/data, copied to tmp_path at test time and one
band rewritten as it is wrongly delivered; the real files themselves must pass.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio

from forestcarbon.errors import SceneError
from forestcarbon.rs.scenes import check_scene_files, dn_range_problem, read_scenes, sample_dns

from .conftest import shared
from .s2_layouts import REAL_S2, REAL_S2_ITEM, localise

S2_BANDS = ("blue", "green", "red", "nir", "nir08", "swir16", "swir22")
LANDSAT = "satellite/landsat8-c2l2-001062-20201031"
LANDSAT_BANDS = ("blue", "green", "red", "nir08", "swir16", "swir22")


def _s2_scene(tmp_path: Path):
    """The real 29RKH scene: its band files copied to tmp_path, its STAC item pointing at them."""
    folder = shared(REAL_S2)
    local = tmp_path / "s2"
    shutil.copytree(folder, local, ignore=shutil.ignore_patterns("*.json"))
    for f in local.iterdir():
        f.chmod(0o644)
    item = localise(folder / REAL_S2_ITEM, local)
    items = tmp_path / "items"
    items.mkdir()
    item.save_object(dest_href=str(items / f"{item.id}.json"), include_self_link=False)
    return items, local


def _landsat_scene(tmp_path: Path):
    local = tmp_path / "landsat"
    shutil.copytree(shared(LANDSAT), local, ignore=shutil.ignore_patterns("*_stac.json", "*.md"))
    for f in local.iterdir():
        f.chmod(0o644)
    return local, local


def _rewrite(path: Path, fn, dtype: str) -> None:
    """Rewrite band file ``path`` as ``fn(DNs)`` in ``dtype`` (same grid, nodata 0)."""
    with rasterio.open(path) as src:
        prof, dn = src.profile, src.read(1)
    prof.update(dtype=dtype, nodata=0)
    with rasterio.open(path, "w", **prof) as dst:
        dst.write(fn(dn).astype(dtype), 1)


def test_real_files_pass():
    """No false alarm: the real Sentinel-2 (baseline 02.14) and Landsat 8 C2 L2 bands pass the checks, their
    sampled medians and maxima well inside the limits."""
    s2 = read_scenes(shared(REAL_S2), S2_BANDS)
    check_scene_files(s2, S2_BANDS)
    landsat = read_scenes(shared(LANDSAT), LANDSAT_BANDS)
    check_scene_files(landsat, LANDSAT_BANDS)
    with rasterio.open(shared(REAL_S2) / "B02.tif") as src:
        dns, step = sample_dns(src)
        full = src.read(1)
    assert step == 3 and dns.shape == (366, 366)  # 1098 px read at every third (GDAL serves it from an overview)
    med_sample, med_full = np.median(dns[dns > 0]), np.median(full[full > 0])
    assert abs(med_sample - med_full) / med_full < 0.02  # the sample stands for the band
    assert dn_range_problem(dns, 1e-4, 0.0, 0) is None


@pytest.mark.parametrize("dtype", ["int16", "uint8"])
def test_sentinel2_band_of_another_integer_type(tmp_path, dtype):
    """B04 re-exported as int16 (same DNs), or as an 8-bit preview (DN / 10000 x 255): the product's DNs are
    uint16, so the file and band are named with the dtype found."""
    items, local = _s2_scene(tmp_path)
    _rewrite(local / "B04.tif", (lambda d: d) if dtype == "int16" else (lambda d: np.clip(d / 10_000 * 255, 0, 255)), dtype)
    scenes = read_scenes(items, S2_BANDS)
    with pytest.raises(SceneError, match=rf"B04\.tif: band 'red' of scene S2A_29RKH_20200219_0_L2A holds {dtype} "
                                         r"values, the product's reflectance DNs are uint16"):
        check_scene_files(scenes, S2_BANDS)


def test_sentinel2_reflectance_delivered_as_integers_0_1(tmp_path):
    """B8A delivered as reflectance rounded to integers (uint16 0/1): its brightest pixel reads 0.0001."""
    items, local = _s2_scene(tmp_path)
    _rewrite(local / "B8A.tif", lambda d: np.where(d > 0, np.maximum(np.round(d / 10_000), 1), 0), "uint16")
    with rasterio.open(local / "B8A.tif") as src:
        assert set(np.unique(src.read(1))) <= {0, 1}
    scenes = read_scenes(items, S2_BANDS)
    with pytest.raises(SceneError, match=r"B8A\.tif: band 'nir08' of scene .* the brightest valid pixel has reflectance "
                                         r"0\.0001 \(DN 1\), below 0\.01"):
        check_scene_files(scenes, S2_BANDS)


def test_sentinel2_dns_scaled_twice(tmp_path):
    """B11 with its DNs multiplied by 10 again (clipped to uint16): the median valid reflectance, by hand from
    the sampled DNs, is above 1.5 and is named."""
    items, local = _s2_scene(tmp_path)
    _rewrite(local / "B11.tif", lambda d: np.clip(d.astype("int64") * 10, 0, 65535), "uint16")
    with rasterio.open(local / "B11.tif") as src:
        dns, step = sample_dns(src)
    med = np.median(dns[dns > 0]) / 10_000
    assert med > 1.5
    scenes = read_scenes(items, S2_BANDS)
    with pytest.raises(SceneError, match=rf"B11\.tif: band 'swir16' of scene .* \(sampled every {step} px\): median valid "
                                         rf"reflectance {med:.2f} .* above 1\.5"):
        check_scene_files(scenes, S2_BANDS)


def test_landsat_band_in_collection_1_scaling(tmp_path):
    """Landsat SR_B4 delivered in Collection 1's scaling (reflectance x 10000) in a C2 product folder: read with
    C2's scale and offset its median is far below zero (by hand: median DN x 0.0000275 - 0.2)."""
    folder, local = _landsat_scene(tmp_path)
    f = next(local.glob("*_SR_B4.TIF"))
    _rewrite(f, lambda d: np.where(d > 0, np.clip(np.round((d * 0.0000275 - 0.2) * 10_000), 1, 65535), 0), "uint16")
    with rasterio.open(f) as src:
        dns, _ = sample_dns(src)
    med = np.median(dns[dns > 0]) * 0.0000275 - 0.2
    assert med < -0.05
    scenes = read_scenes(folder, LANDSAT_BANDS)
    with pytest.raises(SceneError, match=rf"SR_B4\.TIF: band 'red' of scene LC08_.* median valid reflectance {med:.3f} "
                                         r".* below -0\.05"):
        check_scene_files(scenes, LANDSAT_BANDS)
