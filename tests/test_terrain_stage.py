"""Terrain features: elevation, slope and aspect (as northness/eastness) on the grid, from a DEM or the LiDAR DTM."""

from __future__ import annotations

import math

import dask.array as da
import numpy as np
import pytest
import rasterio
import yaml

from forestcarbon.rs.terrain import terrain_block, terrain_features

from .test_pipeline import _cli


def test_plane_slope_and_orientation_by_hand():
    """z = 0.1 x + 0.05 y (x east, y north, m): slope atan(|grad|) = 6.38 deg; the slope faces downhill, along
    -grad = (-0.1, -0.05) / |grad|: eastness -0.894, northness -0.447 (a south-west-facing slope)."""
    res = 10.0
    xs = np.arange(20) * res
    ys = np.arange(15)[::-1] * res  # rows run south
    z = 0.1 * xs[None, :] + 0.05 * ys[:, None] + 200.0
    out = terrain_features(da.from_array(z, chunks=(4, 7)), res).compute()  # chunks smaller than the plane
    g = math.hypot(0.1, 0.05)
    inner = out[:, 1:-1, 1:-1]
    np.testing.assert_allclose(inner[0], z[1:-1, 1:-1], rtol=1e-6)
    np.testing.assert_allclose(inner[1], math.degrees(math.atan(g)), atol=1e-4)
    np.testing.assert_allclose(inner[2], -0.05 / g, atol=1e-6)  # northness
    np.testing.assert_allclose(inner[3], -0.1 / g, atol=1e-6)  # eastness
    assert np.isnan(out[1, 0]).all() and np.isnan(out[1, :, -1]).all()  # Horn needs the 3 x 3 window
    np.testing.assert_array_equal(out, terrain_block(z, res))  # the chunking changes nothing
    flat = terrain_block(np.full((5, 5), 3.0), res)
    assert (flat[2:, 1:-1, 1:-1] == 0).all()  # flat: no orientation


def _dem_config(small_scene, tmp_path, dem):
    raw = yaml.safe_load(small_scene.read_text())
    cfg = {"name": "terrain-only", "grid": raw["grid"], "inputs": {"dem": str(dem)}, "output": str(tmp_path / "out")}
    p = tmp_path / "terrain.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p, raw


def _write_dem(path, raw, values_fn, scale=1.0):
    x0, y0, x1, y1 = raw["grid"]["bounds"]
    res = 30.0
    w, h = int((x1 - x0) // res) + 4, int((y1 - y0) // res) + 4
    tr = rasterio.transform.from_origin(x0 - 2 * res, y1 + 2 * res, res, res)
    cx = x0 - 2 * res + (np.arange(w) + 0.5) * res
    cy = y1 + 2 * res - (np.arange(h) + 0.5) * res
    z = values_fn(cx[None, :], cy[:, None]) * scale
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=1, dtype="float32", crs=raw["grid"]["crs"],
                       transform=tr, nodata=-9999) as dst:
        dst.write(z.astype("float32"), 1)


def test_terrain_stage_from_a_dem(small_scene, tmp_path):
    """A planar 30 m DEM through the stage: the 10 m grid's elevation is the plane at each cell centre
    (bilinear is exact on a plane) and its slope the plane's."""
    p, raw = _dem_config(small_scene, tmp_path, tmp_path / "dem.tif")
    x0, y0 = raw["grid"]["bounds"][:2]
    _write_dem(tmp_path / "dem.tif", raw, lambda x, y: 300.0 + 0.08 * (x - x0) - 0.03 * (y - y0))
    res = _cli("run", str(p), "--stage", "terrain")
    assert res.returncode == 0, res.stderr
    with rasterio.open(tmp_path / "out/terrain/terrain.tif") as src:
        t = src.read()
        tr = src.transform
        assert src.tags()["coverage"] == "wall-to-wall" and list(src.descriptions) == ["elevation_m", "slope_deg",
                                                                                      "northness", "eastness"]
    r, c = 40, 55
    cx, cy = tr.c + (c + 0.5) * tr.a, tr.f + (r + 0.5) * tr.e
    assert t[0, r, c] == pytest.approx(300.0 + 0.08 * (cx - x0) - 0.03 * (cy - y0), abs=1e-3)
    assert t[1, r, c] == pytest.approx(math.degrees(math.atan(math.hypot(0.08, 0.03))), abs=1e-3)


def test_dem_in_centimetres_is_refused_in_one_line(small_scene, tmp_path):
    p, raw = _dem_config(small_scene, tmp_path, tmp_path / "dem_cm.tif")
    _write_dem(tmp_path / "dem_cm.tif", raw, lambda x, y: 300.0 + 0.0 * x + 0.0 * y + 900.0 * ((x + y) % 2), scale=100.0)
    res = _cli("run", str(p), "--stage", "terrain")
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert lines[0].startswith("error: inputs.dem: ") and "not metres above sea level" in lines[0]
    assert not (tmp_path / "out/terrain").exists()
