"""Exact zonal sums (exactextract wrapper) against hand computation and exact supersampling."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import rasterio.features
import shapely
from affine import Affine

from forestcarbon.vector.overlay import project_parcel_shares, project_totals
from forestcarbon.vector.zonal import zonal_table

from .conftest import shared


@pytest.fixture()
def raster4(tmp_path):
    a = np.arange(32, dtype="float32").reshape(2, 4, 4)
    p = tmp_path / "r.tif"
    with rasterio.open(p, "w", driver="GTiff", width=4, height=4, count=2, dtype="float32", crs="EPSG:4549",
                       transform=Affine(10, 0, 500_000, 0, -10, 3_200_040), nodata=np.nan) as d:
        d.write(a)
        d.set_band_description(1, "b1")
        d.set_band_description(2, "b2")
    return p


def test_hand_computed_partial_pixels(raster4):
    g = gpd.GeoDataFrame({"id": ["p1"]}, geometry=[shapely.box(500_000, 3_200_000, 500_015, 3_200_015)], crs="EPSG:4549")
    z = zonal_table(raster4, g, "id", ("sum", "mean", "count"))
    # bottom row (values 12, 13) fully/half covered; row above (8, 9) half/quarter covered
    s = 12 * 1.0 + 13 * 0.5 + 8 * 0.5 + 9 * 0.25
    assert z.loc[0, "b1_sum"] == pytest.approx(s)
    assert z.loc[0, "b1_count"] == pytest.approx(2.25)
    assert z.loc[0, "b1_mean"] == pytest.approx(s / 2.25)
    assert z.loc[0, "b2_sum"] == pytest.approx(s + 16 * 2.25)
    assert z.loc[0, "id"] == "p1"


def test_polygons_in_another_crs_are_reprojected(raster4):
    box = shapely.box(500_003, 3_200_002, 500_031, 3_200_033)
    g = gpd.GeoDataFrame({"id": ["a"]}, geometry=[box], crs="EPSG:4549")
    same = zonal_table(raster4, g, "id", ("sum",))
    geog = zonal_table(raster4, g.to_crs("EPSG:4490"), "id", ("sum",))
    assert geog.loc[0, "b1_sum"] == pytest.approx(same.loc[0, "b1_sum"], rel=1e-5)


def _supersampled_sums(values, transform, polys, factor):
    """Exact sums for polygons whose vertices lie on the 1/factor sub-pixel lattice."""
    ny, nx = values.shape
    fine_tr = transform * Affine.scale(1 / factor)
    fine_vals = np.kron(values.astype("float64"), np.ones((factor, factor)))
    out = []
    for p in polys:
        m = rasterio.features.rasterize([(p, 1)], out_shape=(ny * factor, nx * factor), transform=fine_tr, fill=0,
                                        dtype="uint8").astype(bool)
        out.append(fine_vals[m].sum() / factor**2)
    return np.array(out)


def _lattice_polygons(rng, transform, shape, factor, n):
    x0, y1 = transform.c, transform.f
    sx, sy = transform.a / factor, -transform.e / factor  # pixels need not be square
    nx, ny = shape[1] * factor, shape[0] * factor
    polys = []
    for _ in range(n):
        boxes = []
        for _ in range(3):  # union of lattice-aligned boxes: L-shapes and blobs
            i, j = rng.integers(0, nx - 20), rng.integers(0, ny - 20)
            di, dj = rng.integers(3, 20), rng.integers(3, 20)
            boxes.append(shapely.box(x0 + sx * i, y1 - sy * (j + dj), x0 + sx * (i + di), y1 - sy * j))
        polys.append(shapely.union_all(boxes))
    return polys


def test_real_raster_against_exact_supersampling():
    """Real data: rasterio's RGB.byte.tif (Landsat 7, EPSG:32618), irregular lattice polygons."""
    path = shared("satellite/rasterio-rgb/RGB.byte.tif")
    with rasterio.open(path) as src:
        win = rasterio.windows.Window(300, 300, 120, 100)
        vals = src.read(1, window=win)
        tr = src.window_transform(win)
        crs = src.crs
    rng = np.random.default_rng(5)
    polys = _lattice_polygons(rng, tr, vals.shape, 4, 12)
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = f"{d}/win.tif"
        with rasterio.open(p, "w", driver="GTiff", width=vals.shape[1], height=vals.shape[0], count=1, dtype="uint8",
                           crs=crs, transform=tr) as dst:
            dst.write(vals, 1)
        g = gpd.GeoDataFrame({"pid": [f"p{i}" for i in range(len(polys))]}, geometry=polys, crs=crs)
        got = zonal_table(p, g, "pid", ("sum",), band_names=["red"])
    ref = _supersampled_sums(vals, tr, polys, 4)
    np.testing.assert_allclose(got["red_sum"].to_numpy(), ref, rtol=1e-9)


def test_project_shares_and_totals_by_hand():
    parcels = gpd.GeoDataFrame({"parcel_id": ["A", "B"], "carbon_t": [100.0, 50.0], "co2e_t": [366.67, 183.33]},
                               geometry=[shapely.box(0, 0, 100, 100), shapely.box(100, 0, 200, 100)], crs="EPSG:4549")
    projects = gpd.GeoDataFrame({"pid": ["X"]}, geometry=[shapely.box(50, 0, 125, 100)], crs="EPSG:4549")
    sh = project_parcel_shares(projects, parcels, "pid", "parcel_id")
    assert sh.parcel_id.tolist() == ["A", "B"]
    np.testing.assert_allclose(sh.overlap_ha, [0.5, 0.25])
    np.testing.assert_allclose(sh.share, [0.5, 0.25])
    tot = project_totals(sh, parcels, "pid", "parcel_id")
    assert tot.loc[0, "carbon_t"] == pytest.approx(100 * 0.5 + 50 * 0.25)
    assert tot.loc[0, "area_ha"] == pytest.approx(0.75)
    assert tot.loc[0, "n_parcels"] == 2
