"""LiDAR in any linear unit: metre cells, metre heights and metre slopes, whatever the LAS CRS says.

The foot-based tile is a real one (PDAL's ``autzen_trim.las``, Oregon statewide Lambert in
international feet, see tests/data/README.md).  Its metre twin is made here with pyproj into
EPSG:2993 (NAD83(HARN) / Oregon LCC (m): the same projection with metre axes), so the two runs
must agree cell for cell.
"""

from __future__ import annotations

import math
from pathlib import Path

import laspy
import numpy as np
import pytest
import rasterio
from pyproj import CRS, Transformer
from scipy.spatial import cKDTree
from typer.testing import CliRunner

from forestcarbon.errors import CRSError
from forestcarbon.flows import cli
from forestcarbon.rs.grid import metre_crs, metres_per_unit, require_metres
from forestcarbon.rs.lidar import geobox_over_tiles, index_tiles, units_summary
from forestcarbon.rs.lidar.ground import ground_surface, knnidw

FOOT_TILE = Path(__file__).parent / "data" / "autzen_trim_ft.laz"
FT = 0.3048  # international foot, m (exact by definition, 1959 agreement)


def _metre_copy(src: Path, dst: Path) -> Path:
    """The same returns in EPSG:2993 with x, y, z in metres, quantised at 0.01 ft = 3.048 mm so that every
    return keeps its exact position (a 1 mm grid moves returns and flips near-degenerate TIN triangles)."""
    las = laspy.read(src)
    x, y = Transformer.from_crs(las.header.parse_crs(), "EPSG:2993", always_xy=True).transform(np.asarray(las.x),
                                                                                               np.asarray(las.y))
    hdr = laspy.LasHeader(point_format=las.header.point_format.id, version="1.2")
    hdr.scales = las.header.scales * FT
    hdr.offsets = las.header.offsets * FT
    hdr.add_crs(CRS.from_epsg(2993))
    out = laspy.LasData(hdr)
    out.x, out.y, out.z = x, y, np.asarray(las.z) * FT
    out.classification = las.classification
    out.return_number, out.number_of_returns = las.return_number, las.number_of_returns
    out.write(dst)
    return dst


def _run(tmp_path: Path, laz: Path, tag: str):
    out = {k: tmp_path / f"{tag}-{k}.tif" for k in ("metrics", "chm", "dtm")}
    res = CliRunner().invoke(cli.app, ["lidar-metrics", str(laz), "--res", "20", "--out", str(out["metrics"]),
                                       "--chm", str(out["chm"]), "--dtm", str(out["dtm"]), "--fine-res", "2"])
    assert res.exit_code == 0, res.output
    return res.output, out


def test_metre_crs_of_foot_and_geographic_crs():
    feet = CRS.from_epsg(2992)  # NAD83 / Oregon GIC Lambert (ft)
    m = metre_crs(feet)
    assert metres_per_unit(feet) == FT and metres_per_unit(m) == 1.0
    x, y = Transformer.from_crs(feet, m, always_xy=True).transform(1_000_000.0, 500_000.0)
    assert (x, y) == pytest.approx((1_000_000.0 * FT, 500_000.0 * FT), abs=1e-6)
    us_ft = CRS.from_epsg(2286)  # NAD83 / Washington South (ftUS): 1200/3937 m
    assert metres_per_unit(us_ft) == pytest.approx(1200 / 3937, rel=1e-15)
    assert metre_crs("EPSG:4549").equals(CRS.from_epsg(4549))
    assert metre_crs("EPSG:4490", lonlat=(118.9, 28.97)).to_epsg() == 32650  # Quzhou: UTM zone 50 N (114-120 E)
    with pytest.raises(CRSError, match=r"grid\.crs: 'EPSG:2992' \(NAD83 / Oregon GIC Lambert \(ft\)\) has axes in foot"):
        require_metres(feet, "grid.crs: 'EPSG:2992'")


def test_foot_tile_gives_the_same_metre_products_as_its_metre_copy(tmp_path):
    """--res 20 on a foot-based tile: 20 m cells (not 20 ft), metre heights, and every metric, the CHM,
    the DTM and its slope equal to those of the same returns converted to metres beforehand."""
    metre = _metre_copy(FOOT_TILE, tmp_path / "autzen_m.laz")
    msg_ft, ft = _run(tmp_path, FOOT_TILE, "ft")
    _, m = _run(tmp_path, metre, "m")
    assert "cells of 20.0 m" in msg_ft
    for k in ("metrics", "chm", "dtm"):
        with rasterio.open(ft[k]) as a, rasterio.open(m[k]) as b:
            assert a.crs.linear_units in ("metre", "meter") and b.crs.linear_units in ("metre", "meter")
            assert a.transform.almost_equals(b.transform, precision=1e-6) and a.shape == b.shape
            assert abs(a.transform.a) == (20.0 if k == "metrics" else 2.0)
            # both CRSs put a point at the same metre coordinates
            t = Transformer.from_crs(CRS.from_wkt(a.crs.to_wkt()), CRS.from_wkt(b.crs.to_wkt()), always_xy=True)
            assert t.transform(195_000.0, 259_000.0) == pytest.approx((195_000.0, 259_000.0), abs=1e-6)
            va, vb = a.read(masked=True), b.read(masked=True)
            names = a.descriptions
        for band, name in enumerate(names):
            a_, b_ = va[band], vb[band]
            if name == "aspect_deg":  # undefined on flat cells: a slope of 0 vs 1e-17 decides NaN
                both = ~a_.mask & ~b_.mask
                assert (a_.mask != b_.mask).sum() <= 3 and both.sum() > 0.9 * (~a_.mask).sum()
                a_, b_ = a_[both], b_[both]
            else:
                assert (a_.mask == b_.mask).all(), f"{k}:{name}"
            tol = 0 if name == "n_points" else 1e-4
            np.testing.assert_allclose(np.ma.compressed(a_), np.ma.compressed(b_), atol=tol, err_msg=f"{k}:{name}")
    with rasterio.open(ft["metrics"]) as src:
        zmax = src.read(list(src.descriptions).index("zmax") + 1)
    las = laspy.read(FOOT_TILE)
    assert np.nanmax(zmax) < (las.header.maxs[2] - las.header.mins[2]) * FT + 0.01  # heights in metres, not feet


def test_foot_tile_slope_against_a_hand_computation(tmp_path):
    """A tilted ground plane in a foot CRS: z rises 0.2 ft per ft eastwards, so the slope is atan(0.2) =
    11.31 deg in any unit (3.49 deg if metre heights were divided by foot cells); the real tile's DTM slope
    is Horn's formula on its metre DTM, recomputed here at one cell by hand."""
    rng = np.random.default_rng(3)
    x = rng.uniform(1_000_000, 1_000_400, 20_000)
    y = rng.uniform(500_000, 500_400, 20_000)
    z = 300.0 + 0.2 * (x - 1_000_000)
    hdr = laspy.LasHeader(point_format=1, version="1.2")
    hdr.scales, hdr.offsets = np.array([0.01, 0.01, 0.01]), np.array([1_000_000.0, 500_000.0, 0.0])
    hdr.add_crs(CRS.from_epsg(2992))
    las = laspy.LasData(hdr)
    las.x, las.y, las.z = x, y, z
    las.classification = np.full(x.size, 2, dtype=np.uint8)
    plane = tmp_path / "plane_ft.las"
    las.write(plane)
    _, out = _run(tmp_path, plane, "plane")
    with rasterio.open(out["dtm"]) as src:
        dtm, slope = src.read(1), src.read(2)
        res = src.transform.a
    inner = slope[5:-5, 5:-5]
    # 0.01 ft quantisation of x, y, z tilts single triangles by a few hundredths of a degree
    np.testing.assert_allclose(inner[np.isfinite(inner)], math.degrees(math.atan(0.2)), atol=0.05)
    assert np.nanmedian(inner) == pytest.approx(math.degrees(math.atan(0.2)), abs=0.005)
    # the DTM itself: metres above the datum at each cell centre; eastwards it rises 0.2 m per m
    np.testing.assert_allclose(np.diff(dtm[5:-5, 5:-5], axis=1), 0.2 * res, atol=0.005)
    assert np.nanmin(dtm) > 300.0 * FT - 0.01 and np.nanmax(dtm) < (300.0 + 80.0) * FT + 0.01

    _, real = _run(tmp_path, FOOT_TILE, "real")
    with rasterio.open(real["dtm"]) as src:
        d, s = src.read(1).astype("float64"), src.read(2)
        cell = src.transform.a
    r, c = 40, 100  # an interior cell with a full 3 x 3 neighbourhood
    w = d[r - 1:r + 2, c - 1:c + 2]
    assert np.isfinite(w).all()
    dzdx = ((w[0, 2] + 2 * w[1, 2] + w[2, 2]) - (w[0, 0] + 2 * w[1, 0] + w[2, 0])) / (8 * cell)  # Horn (1981)
    dzdy = ((w[0, 0] + 2 * w[0, 1] + w[0, 2]) - (w[2, 0] + 2 * w[2, 1] + w[2, 2])) / (8 * cell)
    assert s[r, c] == pytest.approx(math.degrees(math.atan(math.hypot(dzdx, dzdy))), abs=1e-3) and s[r, c] > 0.5
    assert cell == 2.0


def test_knnidw_outside_the_hull_by_hand():
    """Ground at the corners of a 10 m square (z 10, 20, 30, 40); outside it lidR's tin() extrapolates with
    knnidw(k=3, p=1, rmax=50): the 1/d-weighted mean of the three nearest ground returns within 50 m."""
    gx, gy, gz = np.array([0.0, 10.0, 0.0, 10.0]), np.array([0.0, 0.0, 10.0, 10.0]), np.array([10.0, 20.0, 30.0, 40.0])
    surface = ground_surface(gx, gy, gz)
    # (20, 0): nearest (10,0) at 10 m, (10,10) at sqrt(200), (0,0) at 20 m
    d = [10.0, math.sqrt(200.0), 20.0]
    want = (20 / d[0] + 40 / d[1] + 10 / d[2]) / (1 / d[0] + 1 / d[1] + 1 / d[2])
    got = surface(np.array([20.0, 5.0, 70.0]), np.array([0.0, 5.0, 0.0]))
    assert got[0] == pytest.approx(want, rel=1e-12)  # 24.14 m: not the nearest return's 20 m
    assert got[1] == pytest.approx(25.0, rel=1e-12)  # inside: TIN (bilinear plane z = 10 + x + 2y here)
    assert np.isnan(got[2])  # 60 m from the nearest ground return: beyond rmax
    # a ground return at distance 0 gives its own z, whatever the others
    tree = cKDTree(np.c_[gx, gy])
    assert knnidw(tree, gz, np.array([10.0]), np.array([10.0]))[0] == 40.0


def test_index_of_foot_tile_reports_its_unit():
    tiles = index_tiles([FOOT_TILE])
    assert metres_per_unit(tiles[0].crs) == FT
    g = geobox_over_tiles(tiles, 20.0)
    hdr = laspy.open(FOOT_TILE).header
    width_m = (hdr.maxs[0] - hdr.mins[0]) * FT
    assert abs(g.affine.a) == 20.0 and g.shape[1] == math.ceil(hdr.maxs[0] * FT / 20) - math.floor(hdr.mins[0] * FT / 20)
    assert g.shape[1] * 20.0 >= width_m
    assert units_summary(tiles) == [f"1 tile(s) in {tiles[0].crs.name}: horizontal unit foot, heights x 0.3048 -> metres"]
