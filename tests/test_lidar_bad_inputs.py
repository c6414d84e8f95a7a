"""Bad LiDAR inputs: one-line errors naming the file, counted outliers, no half-written raster."""

from __future__ import annotations

import logging

import laspy
import numpy as np
from scipy.spatial import cKDTree
import pytest
from odc.geo.geobox import GeoBox
from pyproj import CRS

from forestcarbon.errors import InputNotFoundError, LidarError
from forestcarbon.rs.lidar import find_tiles, grid_metrics, index_tiles


def _las(path, x, y, z, cls, crs="EPSG:4549"):
    hdr = laspy.LasHeader(point_format=6, version="1.4")
    hdr.offsets = np.array([x.min(), y.min(), 0.0])
    hdr.scales = np.array([0.01, 0.01, 0.01])
    hdr.add_crs(CRS.from_user_input(crs))
    las = laspy.LasData(hdr)
    las.x, las.y, las.z = x, y, z
    las.classification = cls
    las.write(path)
    return path


def _flat_tile(rng, n=4000, x0=500_000.0, y0=3_200_000.0):
    x = x0 + rng.uniform(0, 100, n)
    y = y0 + rng.uniform(0, 100, n)
    ground = rng.random(n) < 0.5
    z = 100 + np.where(ground, 0.0, rng.uniform(2, 20, n))
    return x, y, z, np.where(ground, 2, 5).astype("uint8")


def test_truncated_laz_is_named(tmp_path):
    """Truncation is found from the file size when the folder is indexed, before any point is decoded."""
    rng = np.random.default_rng(0)
    p = _las(tmp_path / "t.laz", *_flat_tile(rng))
    blob = p.read_bytes()
    p.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(LidarError, match=r"t\.laz: truncated LAZ file \(\d[\d,]* bytes; its chunk table should start at byte"):
        index_tiles([p])
    las_path = tmp_path / "u.las"
    laspy.read(_las(tmp_path / "u.laz", *_flat_tile(rng))).write(las_path)
    las_path.write_bytes(las_path.read_bytes()[:-100])
    with pytest.raises(LidarError, match=r"u\.las: truncated LAS file .* 4,000 points need"):
        index_tiles([las_path])


def test_no_ground_points_is_named(tmp_path):
    rng = np.random.default_rng(1)
    x, y, z, cls = _flat_tile(rng)
    p = _las(tmp_path / "noground.laz", x, y, z, np.full_like(cls, 5))
    gbox = GeoBox.from_bbox((500_000, 3_200_000, 500_100, 3_200_100), "EPSG:4549", resolution=10)
    with pytest.raises(LidarError, match=r"noground\.laz: \d+ returns but no ground return \(classes \[2\]\)"):
        grid_metrics(index_tiles([p]), gbox)
    with pytest.raises(LidarError, match=r"noground\.laz: fewer than 3 ground points.*ground classes \[2\]"):
        grid_metrics(index_tiles([p]), gbox, tiles_without_ground="neighbours")  # and no neighbour to lend any


def test_absurd_heights_are_filtered_and_counted(tmp_path, caplog):
    rng = np.random.default_rng(2)
    x, y, z, cls = _flat_tile(rng)
    z[:7] = 100 + 500.0  # birds
    cls[:7] = 1
    p = _las(tmp_path / "birds.laz", x, y, z, cls)
    gbox = GeoBox.from_bbox((500_000, 3_200_000, 500_100, 3_200_100), "EPSG:4549", resolution=10)
    with caplog.at_level(logging.WARNING):
        m = grid_metrics(index_tiles([p]), gbox, max_height_m=80)
    assert "dropped 7 returns" in caplog.text
    assert np.nanmax(m["zmax"]) <= 20.0 + 1e-6
    assert np.nansum(m["n_points"]) == x.size - 7


def test_empty_or_missing_folder(tmp_path):
    with pytest.raises(LidarError, match="no .las/.laz files"):
        find_tiles(tmp_path)
    with pytest.raises(InputNotFoundError, match="LiDAR folder not found"):
        find_tiles(tmp_path / "nope")


def test_us_survey_feet_tile_gives_metres(tmp_path):
    """The same returns written in EPSG:26943 (metres) and EPSG:2227 (US survey feet) give the same metrics in metres."""
    from pyproj import Transformer

    rng = np.random.default_rng(3)
    x, y, z, cls = _flat_tile(rng, x0=2_000_000.0, y0=500_000.0)
    # keep returns 0.5 m away from cell edges, so that quantisation cannot move one across
    x = 2_000_000.0 + np.floor((x - 2_000_000.0) / 10) * 10 + 0.5 + (x % 10) * 0.9
    y = 500_000.0 + np.floor((y - 500_000.0) / 10) * 10 + 0.5 + (y % 10) * 0.9
    pm = _las(tmp_path / "m.laz", x, y, z, cls, crs="EPSG:26943")
    fx, fy = Transformer.from_crs(26943, 2227, always_xy=True).transform(x, y)
    pf = _las(tmp_path / "ft.laz", np.asarray(fx), np.asarray(fy), z / 0.30480060960121924, cls, crs="EPSG:2227")
    gbox = GeoBox.from_bbox((2_000_000, 500_000, 2_000_100, 500_100), "EPSG:26943", resolution=10)
    a = grid_metrics(index_tiles([pm]), gbox)
    b = grid_metrics(index_tiles([pf]), gbox)
    for k in ("zmax", "zmean", "zq95", "pzabove2", "n_points"):
        np.testing.assert_allclose(b[k], a[k], atol=0.02, equal_nan=True, err_msg=k)  # 0.01 ft quantisation
    assert np.nanmax(b["zmax"]) < 21  # metres, not feet


def test_bad_tile_among_neighbours_fails_cleanly(tmp_path):
    """Three tiles in a row run in worker processes: a middle tile corrupted inside its compressed
    points is named in one line, and no product, window raster or spilled point file is left behind."""
    from forestcarbon.rs.lidar import Options, Targets, lidar_products

    rng = np.random.default_rng(4)
    paths = [_las(tmp_path / f"t{i}.laz", *_flat_tile(rng, x0=500_000.0 + 100 * i)) for i in range(3)]
    blob = bytearray(paths[1].read_bytes())
    mid = len(blob) // 2
    blob[mid:mid + 2048] = bytes(2048)
    paths[1].write_bytes(bytes(blob))
    gbox = GeoBox.from_bbox((500_000, 3_200_000, 500_300, 3_200_100), "EPSG:4549", resolution=10)
    out = tmp_path / "out"
    with pytest.raises(LidarError, match=r"t1\.laz: failed while reading points"):
        lidar_products(index_tiles(paths), Targets(metrics=gbox), Options(), {"metrics": out / "m.tif"})
    assert not out.exists() or not any(out.rglob("*"))


def test_tile_without_ground_uses_its_neighbours_ground(tmp_path):
    """A tile whose own ground returns are all missing is an error naming it; when the configuration asks
    for it, it is normalised with the neighbours' ground within the buffer (flat terrain: heights are
    unchanged) as far as lidR's knnidw(3, 1, 50) reaches -- returns more than 50 m from any ground return
    get no height; alone, it is an error naming it either way."""
    rng = np.random.default_rng(5)
    x, y, z, cls = _flat_tile(rng, x0=500_000.0)
    a = _las(tmp_path / "a.laz", x, y, z, cls)
    x2, y2, z2, cls2 = _flat_tile(rng, x0=500_100.0, n=400)
    keep = cls2 != 2
    b = _las(tmp_path / "b.laz", x2[keep], y2[keep], z2[keep], cls2[keep])
    gbox = GeoBox.from_bbox((500_000, 3_200_000, 500_200, 3_200_100), "EPSG:4549", resolution=10)
    with pytest.raises(LidarError, match=r"b\.laz: \d+ returns but no ground return \(classes \[2\]\) of its own"):
        grid_metrics(index_tiles([a, b]), gbox, buffer_m=120)
    m = grid_metrics(index_tiles([a, b]), gbox, buffer_m=120, tiles_without_ground="neighbours")
    right = m["zmax"][:, 10:]
    pa, pb = laspy.read(a), laspy.read(b)
    ground = np.c_[pa.x, pa.y][np.asarray(pa.classification) == 2]
    reach = cKDTree(ground).query(np.c_[pb.x, pb.y])[0] <= 50.0  # the knnidw search radius, as lidR's tin()
    cells = {(int((3_200_100 - yy) // 10), int((xx - 500_100) // 10)) for xx, yy in zip(pb.x[reach], pb.y[reach])}
    assert {tuple(rc) for rc in np.argwhere(np.isfinite(right)).tolist()} == cells and 30 < len(cells) < 100
    np.testing.assert_allclose(np.nanmax(right), np.max(z2[keep]) - 100, atol=0.006)  # 1 cm LAS quantisation
    with pytest.raises(LidarError, match=r"b\.laz: fewer than 3 ground points"):
        grid_metrics(index_tiles([b]), GeoBox.from_bbox((500_100, 3_200_000, 500_200, 3_200_100), "EPSG:4549", resolution=10),
                     tiles_without_ground="neighbours")


def test_empty_tile_among_neighbours(tmp_path):
    """A tile with a header but no points (a flight-block corner) leaves its cells empty and the rest intact."""
    rng = np.random.default_rng(6)
    a = _las(tmp_path / "a.laz", *_flat_tile(rng))
    hdr = laspy.LasHeader(point_format=6, version="1.4")
    hdr.offsets = np.array([500_100.0, 3_200_000.0, 0.0])
    hdr.scales = np.array([0.01, 0.01, 0.01])
    hdr.add_crs(CRS.from_user_input("EPSG:4549"))
    empty = tmp_path / "empty.laz"
    laspy.LasData(hdr).write(empty)
    gbox = GeoBox.from_bbox((500_000, 3_200_000, 500_100, 3_200_100), "EPSG:4549", resolution=10)
    alone = grid_metrics(index_tiles([a]), gbox)
    both = grid_metrics(index_tiles([a, empty]), gbox)
    for k in ("zmax", "zq95", "n_points"):
        np.testing.assert_array_equal(both[k], alone[k], err_msg=k)
