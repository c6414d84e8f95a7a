"""The one-pass zonal engine against exactextract's own per-layer statistics, numpy totals and shapely areas."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from exactextract import exact_extract

from forestcarbon.errors import CRSError, FieldError
from forestcarbon.vector.zonal_engine import RasterLayer, zonal_stats

X0, Y1, RES, W, H = 500_000.0, 3_200_300.0, 10.0, 40, 30
TRANSFORM = Affine(RES, 0, X0, 0, -RES, Y1)
RASTER_BOX = shapely.box(X0, Y1 - H * RES, X0 + W * RES, Y1)


def _write(path, data, nodata, names=None):
    with rasterio.open(path, "w", driver="GTiff", width=W, height=H, count=data.shape[0], dtype=data.dtype,
                       crs="EPSG:4549", transform=TRANSFORM, nodata=nodata, tiled=True, blockxsize=16,
                       blockysize=16) as d:
        d.write(data)
        for i, n in enumerate(names or []):
            d.set_band_description(i + 1, n)
    return str(path)


@pytest.fixture()
def layers(tmp_path):
    """Three files on one grid: a 3-band float32 with nodata -9999 and NaN holes, a 1-band float32 with
    nodata NaN, a uint8 category band with nodata 0."""
    rng = np.random.default_rng(3)
    carbon = rng.uniform(0, 120, (3, H, W)).astype("float32")
    carbon[0, 5:9, 10:14] = -9999
    carbon[1, 20:25, 0:6] = np.nan
    carbon[2, :, 35:] = -9999
    carbon[:, 0, :] = np.nan
    sd = rng.uniform(1, 30, (1, H, W)).astype("float32")
    sd[0, 10:20, 20:24] = np.nan
    src = rng.integers(0, 3, (1, H, W)).astype("uint8")
    return [RasterLayer("carbon", _write(tmp_path / "carbon.tif", carbon, -9999, ["c", "ca", "cb"])),
            RasterLayer("sd", _write(tmp_path / "sd.tif", sd, np.nan)),
            RasterLayer("source", _write(tmp_path / "source.tif", src, 0))]


def odd_parcels() -> gpd.GeoDataFrame:
    ring = shapely.Polygon([(X0 + 20, Y1 - 280), (X0 + 180, Y1 - 260), (X0 + 150, Y1 - 120), (X0 + 30, Y1 - 150)],
                           holes=[[(X0 + 60, Y1 - 230), (X0 + 120, Y1 - 220), (X0 + 90, Y1 - 170)]])
    multi = shapely.MultiPolygon([shapely.box(X0 + 203, Y1 - 57, X0 + 241.5, Y1 - 13.3),
                                  shapely.Point(X0 + 300, Y1 - 100).buffer(33.3)])
    edge = shapely.Polygon([(X0 - 25, Y1 + 12), (X0 + 77.7, Y1 - 5), (X0 + 51, Y1 - 64), (X0 - 40, Y1 - 40)])
    corner = shapely.box(X0 + W * RES - 33.3, Y1 - H * RES - 20, X0 + W * RES + 50, Y1 - H * RES + 41.7)
    outside = shapely.box(X0 + 1000, Y1, X0 + 1100, Y1 + 100)
    tiny = shapely.box(X0 + 101.1, Y1 - 58.9, X0 + 103.4, Y1 - 55.2)
    holes_only = shapely.box(X0 + 350, Y1 - 60, X0 + 400, Y1 - 40)  # only in band cb's nodata columns
    return gpd.GeoDataFrame({"pid": ["ring", "multi", "edge", "corner", "outside", "tiny", "holes_only"]},
                            geometry=[ring, multi, edge, corner, outside, tiny, holes_only], crs="EPSG:4549")


def test_sums_and_means_equal_exactextract(layers):
    parcels = odd_parcels()
    got = zonal_stats(parcels, layers, id_field="pid", partition_size=3)
    assert got["pid"].tolist() == parcels["pid"].tolist()
    for lay, names in ((layers[0], ["c", "ca", "cb"]), (layers[1], ["sd"]), (layers[2], ["source"])):
        ref = exact_extract(lay.path, parcels, ["sum", "mean", "count"], output="pandas")
        for i, b in enumerate(names):
            col = (lambda op: f"band_{i + 1}_{op}") if len(names) > 1 else (lambda op: op)
            np.testing.assert_allclose(got[f"{b}_sum"], ref[col("sum")], rtol=1e-9, atol=0)
            np.testing.assert_allclose(got[f"{b}_mean"], ref[col("mean")], rtol=1e-9, atol=0)  # NaN where NaN
            # exactextract's count is the covered valid cells; the covered area from shapely is independent
            covered_cells = shapely.area(shapely.intersection(parcels.geometry.values, RASTER_BOX)) / RES**2
            frac = np.divide(ref[col("count")], covered_cells, out=np.zeros(len(parcels)), where=covered_cells > 0)
            np.testing.assert_allclose(got[f"{b}_valid_fraction"], frac, rtol=1e-6, atol=1e-12)
    assert got.loc[got.pid == "holes_only", "cb_valid_fraction"].item() == 0
    assert np.isnan(got.loc[got.pid == "holes_only", "cb_mean"].item())
    np.testing.assert_allclose(got["covered_ha"], shapely.area(shapely.intersection(parcels.geometry.values,
                                                                                    RASTER_BOX)) / 1e4, rtol=1e-6)
    np.testing.assert_allclose(got["area_ha"], parcels.area / 1e4, rtol=1e-12)


def test_outside_parcel_reported_in_place(layers):
    parcels = odd_parcels()
    got = zonal_stats(parcels, layers, id_field="pid", partition_size=2)
    row = got.iloc[4]
    assert row["pid"] == "outside"
    assert row["area_ha"] == pytest.approx(1.0)  # a 100 m x 100 m box
    assert row["covered_ha"] == 0
    for b in ("c", "ca", "cb", "sd", "source"):
        assert row[f"{b}_valid_fraction"] == 0 and row[f"{b}_sum"] == 0 and np.isnan(row[f"{b}_mean"])


def _tiles(seed: int, n: int) -> gpd.GeoDataFrame:
    pts = shapely.points(np.random.default_rng(seed).uniform([X0, Y1 - H * RES], [X0 + W * RES, Y1], (n, 2)))
    cells = shapely.get_parts(shapely.voronoi_polygons(shapely.multipoints(pts), extend_to=RASTER_BOX))
    return gpd.GeoDataFrame({"pid": np.arange(len(cells))}, geometry=shapely.intersection(cells, RASTER_BOX),
                            crs="EPSG:4549")


def test_tiling_parcels_sum_to_raster_total(layers):
    tiles = _tiles(11, 60)
    got = zonal_stats(tiles, layers, partition_size=7)
    with rasterio.open(layers[0].path) as src:
        a = src.read().astype("float64")
    for i, b in enumerate(("c", "ca", "cb")):
        band = a[i]
        total = band[np.isfinite(band) & (band != -9999)].sum()
        assert got[f"{b}_sum"].sum() == pytest.approx(total, rel=1e-9)
    assert got["covered_ha"].sum() == pytest.approx(W * H * RES**2 / 1e4, rel=1e-9)


def test_geographic_and_projected_parcels_agree(layers):
    tiles = _tiles(5, 25)
    inside = tiles.assign(geometry=tiles.geometry.buffer(-2.5))  # off the raster edge: no vertex on it
    proj = zonal_stats(inside, layers)
    geog = zonal_stats(inside.to_crs("EPSG:4490"), layers)
    cols = [c for c in proj.columns if not c.endswith("_mean")] + [c for c in proj.columns if c.endswith("_mean")]
    for c in cols:
        np.testing.assert_allclose(geog[c], proj[c], rtol=1e-6, err_msg=c)


def test_partition_size_and_scheduler_do_not_change_results(layers):
    parcels = gpd.pd.concat([odd_parcels(), _tiles(2, 30).assign(pid=lambda d: d.pid.astype(str))],
                            ignore_index=True)
    base = zonal_stats(parcels, layers, partition_size=len(parcels), scheduler="synchronous")
    for size, sched in ((1, "threads"), (4, "threads"), (9, "processes")):
        other = zonal_stats(parcels, layers, partition_size=size, scheduler=sched)
        gpd.pd.testing.assert_frame_equal(other, base, check_exact=True)


def test_bad_inputs_are_one_line_errors(layers, tmp_path):
    parcels = odd_parcels()
    bow = shapely.Polygon([(X0, Y1 - 10), (X0 + 50, Y1 - 60), (X0 + 50, Y1 - 10), (X0, Y1 - 60)])
    with pytest.raises(FieldError, match=r"parcels \['bow'\] have invalid geometries"):
        zonal_stats(gpd.GeoDataFrame({"pid": ["bow"]}, geometry=[bow], crs="EPSG:4549"), layers, id_field="pid")
    with pytest.raises(FieldError, match="no polygon geometry"):
        zonal_stats(gpd.GeoDataFrame({"pid": ["line"]}, geometry=[shapely.LineString([(X0, Y1), (X0 + 9, Y1 - 9)])],
                                     crs="EPSG:4549"), layers, id_field="pid")
    other = _write(tmp_path / "shifted.tif", np.zeros((1, H, W), "float32"), None)
    with rasterio.open(other, "r+") as d:
        d.transform = TRANSFORM * Affine.translation(1, 0)
    with pytest.raises(CRSError, match="not on the grid"):
        zonal_stats(parcels, [layers[0], other])


def test_collections_keep_their_polygonal_parts(layers):
    poly = shapely.Polygon([(X0 + 12, Y1 - 15), (X0 + 95, Y1 - 33), (X0 + 60, Y1 - 101)])
    coll = shapely.GeometryCollection([poly, shapely.LineString([(X0, Y1), (X0 + 300, Y1 - 200)])])
    got = zonal_stats(gpd.GeoDataFrame({"pid": ["c"]}, geometry=[coll], crs="EPSG:4549"), layers)
    ref = exact_extract(layers[1].path, gpd.GeoDataFrame(geometry=[poly], crs="EPSG:4549"), ["sum"], output="pandas")
    assert got["sd_sum"].item() == pytest.approx(ref["sum"].item(), rel=1e-12)
    assert got["area_ha"].item() == pytest.approx(poly.area / 1e4, rel=1e-12)
