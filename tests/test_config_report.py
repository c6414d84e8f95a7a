"""Configuration validation messages and the report's accuracy figures."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import rasterio
import yaml

from forestcarbon.config import config_from_dict, load_config
from forestcarbon.errors import ConfigError, CRSError, InputNotFoundError
from forestcarbon.flows.report import truth_comparison

from .conftest import shared

BASE = {"grid": {"crs": "EPSG:4549", "resolution_m": 10, "bounds": [0, 0, 100, 100]},
        "inputs": {"stac_items": "s2", "plots": "p.gpkg", "trees": "t.csv", "parcels": "x.gpkg"}}


def _with(path, value):
    raw = yaml.safe_load(yaml.safe_dump(BASE))
    node = raw
    for k in path[:-1]:
        node = node.setdefault(k, {})
    node[path[-1]] = value
    return raw


@pytest.mark.parametrize("path,value,err,words", [
    (("grid", "resolution_m"), -5, ConfigError, "key 'grid.resolution_m': Input should be greater than 0 (got -5)"),
    (("grid", "bounds"), [10, 0, 5, 100], ConfigError, "grid.bounds [10.0, 0.0, 5.0, 100.0] must be"),
    (("grid", "crs"), "EPSG:4490", CRSError, "'EPSG:4490' is geographic"),
    (("grid", "crs"), "EPSG:2992", CRSError, "'EPSG:2992' (NAD83 / Oregon GIC Lambert (ft)) has axes in foot (0.3048 m)"),
    (("grid", "crs"), "not a crs", CRSError, "grid.crs: 'not a crs' is not a CRS that parses"),
    (("model", "kind"), "xgboost", ConfigError, "key 'model.kind'"),
    (("mosaic", "colour"), "blue", ConfigError, "key 'mosaic.colour': Extra inputs are not permitted"),
])
def test_config_errors_name_key_and_value(path, value, err, words):
    with pytest.raises(err) as e:
        config_from_dict(_with(path, value), source="cfg.yaml")
    msg = str(e.value)
    assert words in msg and msg.startswith("cfg.yaml: ") and "\n" not in msg


def test_relative_paths_resolve_against_the_file(tmp_path):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(BASE))
    cfg = load_config(tmp_path / "c.yaml")
    assert cfg.inputs.trees == (tmp_path / "t.csv").resolve()
    with pytest.raises(InputNotFoundError, match="configuration file not found"):
        load_config(tmp_path / "missing.yaml")


def test_truth_comparison_by_hand(tmp_path):
    """Real raster as the 'truth' field, a perturbed copy as the estimate; figures recomputed here."""
    src_path = shared("satellite/sentinel2-l2a-29RKH-20200219/B02.tif")
    with rasterio.open(src_path) as src:
        t = src.read(1, window=rasterio.windows.Window(200, 200, 50, 40)).astype("float32")
        prof = dict(driver="GTiff", width=50, height=40, count=1, dtype="float32", crs=src.crs,
                    transform=src.window_transform(rasterio.windows.Window(200, 200, 50, 40)), nodata=np.nan)
    e = t * 1.1 - 2
    e[0, :5] = np.nan
    for name, arr in (("t.tif", t), ("e.tif", e)):
        with rasterio.open(tmp_path / name, "w", **prof) as d:
            d.write(arr, 1)
    parcels = pd.DataFrame({"parcel_id": ["a", "b", "c", "d"], "carbon_t": [110.0, 45.0, np.nan, 7.0],
                            "carbon_p05_t": [90.0, 51.0, np.nan, 0.0], "carbon_p95_t": [115.0, 60.0, np.nan, 9.0]})
    pd.DataFrame({"parcel_id": ["a", "b", "c", "d"], "true_carbon_t": [100.0, 50.0, 20.0, 5.0],
                  "land_class": ["forest", "forest", "forest", "non_forest"]}).to_csv(tmp_path / "truth.csv", index=False)
    county = {"carbon_t": 162.0, "carbon_sd_t": 10.0, "carbon_p05_t": 145.55, "carbon_p95_t": 178.45}
    r = truth_comparison(parcels, tmp_path / "truth.csv", tmp_path / "e.tif", tmp_path / "t.tif", county)
    # a's interval [90, 115] holds 100, b's [51, 60] misses 50, c has no estimate: 1 of 2
    assert r["parcel_interval_90_inside_fraction"] == 0.5
    # all parcels' true total 175 inside [145.55, 178.45]; z = (162 - 175) / 10
    assert r["county_all_parcels"]["inside"] and r["county_all_parcels"]["z"] == pytest.approx(-1.3)
    assert r["total_carbon_t"] == pytest.approx(170.0)  # all forest parcels of the truth
    assert r["estimated_total_carbon_t"] == pytest.approx(155.0)
    assert r["total_relative_error"] == pytest.approx((155 - 170) / 170)
    assert r["parcel_carbon_rrmse"] == pytest.approx(np.sqrt((10**2 + 5**2) / 2) / 75)
    ok = np.isfinite(e)
    assert r["pixel_agb_rmse_mg_ha"] == pytest.approx(np.sqrt(np.mean((e[ok] - t[ok]) ** 2)), rel=1e-5)
    assert r["forest_parcels_compared"] == 2


def test_grid_origin_aligns_pixel_edges():
    """A 900 m grid over (1000, 2000, 9100, 8100) snaps to multiples of 900 (x from 900: one column more);
    with origin (100, 200) its edges fall at 100 + k*900, 200 + k*900 and it covers the box exactly."""
    from forestcarbon.rs.grid import target_geobox

    g = target_geobox("EPSG:4549", 900, (1000, 2000, 9100, 8100))
    assert (g.affine.c, g.affine.f, g.shape.x, g.shape.y) == (900, 8100, 10, 7)
    g = target_geobox("EPSG:4549", 900, (1000, 2000, 9100, 8100), origin=(100, 200))
    assert (g.affine.c, g.affine.f, g.shape.x, g.shape.y) == (1000, 8300, 9, 7)


def test_grid_like_a_real_raster(tmp_path):
    """grid.like: the target grid takes a real raster's CRS, pixel size and pixel edges (Sentinel-2 B02, 100 m)."""
    import rasterio

    from forestcarbon.config import GridConfig
    from forestcarbon.errors import ConfigError
    from forestcarbon.rs.grid import geobox_from_config

    src_path = shared("satellite/sentinel2-l2a-29RKH-20200219/B02.tif")
    with rasterio.open(src_path) as src:
        a, crs, b = src.transform, src.crs, src.bounds
    cfg = GridConfig(like=src_path, bounds=(b.left + 1234.5, b.bottom + 999.0, b.left + 20_000, b.bottom + 15_000))
    g = geobox_from_config(cfg)
    assert g.crs.epsg == crs.to_epsg() and g.affine.a == a.a
    cols, rows = (g.affine.c - a.c) / a.a, (g.affine.f - a.f) / a.e
    assert cols == pytest.approx(round(cols), abs=1e-9) and rows == pytest.approx(round(rows), abs=1e-9)
    with pytest.raises(ConfigError, match="resolution_m says 10"):
        geobox_from_config(GridConfig(like=src_path, resolution_m=10, bounds=cfg.bounds))
