"""LiDAR gridding against an independent numpy implementation of lidR's definitions."""

from __future__ import annotations

import laspy
import numpy as np
import pytest
from odc.geo.geobox import GeoBox

from forestcarbon.errors import CRSError
from forestcarbon.rs.lidar import METRICS, cell_metrics, grid_metrics, index_tiles, normalize_heights, read_points

from .conftest import shared


def _find_interval(x, breaks):
    """R's findInterval: number of breaks <= x."""
    return np.searchsorted(breaks, x, side="right")


def _fast_table(k, size):
    """lidR fast_table: counts of the values 1..size (others ignored)."""
    return np.array([np.count_nonzero(k == v) for v in range(1, size + 1)], dtype=float)


def reference_metrics(z: np.ndarray) -> dict:
    """lidR stdmetrics_z(z, dz = 1, th = 2, zmin = 0), transcribed line by line (R/metrics_stdmetrics.R)."""
    n, zmax, zmean = z.size, z.max(), z.mean()
    out = {"zmax": zmax, "zmean": zmean, "zsd": z.std(ddof=1) if n > 1 else np.nan,
           "zskew": (np.sum((z - zmean) ** 3) / n) / (np.sum((z - zmean) ** 2) / n) ** 1.5,
           "zkurt": n * np.sum((z - zmean) ** 4) / (np.sum((z - zmean) ** 2) ** 2),
           "pzabovezmean": np.count_nonzero(z > zmean) / n * 100, "pzabove2": np.count_nonzero(z > 2) / n * 100,
           "n_points": float(n)}
    for q in range(5, 100, 5):
        out[f"zq{q}"] = np.quantile(z, q / 100)  # numpy 'linear' == R type 7
    if zmax <= 0:
        d = np.zeros(9)
    else:
        breaks = 0 + np.arange(11) * ((zmax - 0) / 10)
        t = _fast_table(_find_interval(z[z > 0], breaks), 10)
        d = np.cumsum(t / t.sum() * 100)[:9]
    out.update({f"zpcum{i + 1}": d[i] for i in range(9)})
    if zmax < 2 or z.min() < 0:
        out["zentropy"] = np.nan
    else:
        bk = np.arange(0, np.ceil(zmax) + 1, 1.0)
        hist = _fast_table(_find_interval(z, bk), len(bk) - 1)
        hist = hist / hist.sum()
        p = hist[hist > 0]
        pref = np.full(len(hist), 1 / len(hist))
        out["zentropy"] = -np.sum(p * np.log(p)) / -np.sum(pref * np.log(pref))
    return out


def test_cell_metrics_match_reference_on_random_cells():
    rng = np.random.default_rng(3)
    cell = rng.integers(0, 50, 5000)
    h = rng.gamma(2.0, 5.0, 5000)
    h[cell == 7] = np.round(h[cell == 7])  # ties and returns exactly at the top break
    h[cell == 8] = h[cell == 8] * 0.1  # a low cell: zmax < 2 m, no entropy
    h[:3] = -0.5  # a few below-ground returns: entropy NA in their cells
    m = cell_metrics(cell, h, 52)  # cells 50, 51 are empty
    for c in range(50):
        ref = reference_metrics(h[cell == c])
        for k in METRICS:
            if np.isnan(ref[k]):
                assert np.isnan(m[k][c]), (k, c)
            else:
                assert m[k][c] == pytest.approx(ref[k], rel=1e-9, abs=1e-9), (k, c)
    assert np.isnan(m["zmax"][50]) and m["n_points"][51] == 0


def _geobox_over(path, res):
    with laspy.open(path) as f:
        h = f.header
        crs = h.parse_crs()
        x0, y0 = np.floor(h.mins[:2] / res) * res
        x1, y1 = np.ceil(h.maxs[:2] / res) * res
    return GeoBox.from_bbox((x0, y0, x1, y1), crs=crs.to_wkt(), resolution=res)


def test_megaplot_metrics_equal_numpy_reference():
    """Real data: lidR Megaplot.laz (already normalised), 20 m cells."""
    path = shared("lidar/lidR/Megaplot.laz")
    gbox = _geobox_over(path, 20.0)
    got = grid_metrics(index_tiles([path]), gbox, normalized=True, min_height_m=-1e9, max_height_m=1e9)
    las = laspy.read(path)
    x, y, z = np.asarray(las.x), np.asarray(las.y), np.asarray(las.z)
    col = np.floor((x - gbox.affine.c) / 20).astype(int)
    row = np.floor((gbox.affine.f - y) / 20).astype(int)
    checked = 0
    for r, c in set(zip(row.tolist(), col.tolist())):
        sel = (row == r) & (col == c)
        ref = reference_metrics(z[sel])
        for k in METRICS:
            np.testing.assert_allclose(got[k][r, c], ref[k], rtol=1e-5, atol=1e-5, equal_nan=True, err_msg=f"{k} at {(r, c)}")
        checked += 1
    assert checked > 100
    assert np.nansum(got["n_points"]) == las.header.point_count


def test_topography_ground_points_normalise_to_zero():
    """Real data: lidR Topography.laz (not normalised; ground classes 2 and 9)."""
    path = shared("lidar/lidR/Topography.laz")
    x, y, z, cls = read_points(path)
    h = normalize_heights(x, y, z, cls, ground_classes=(2, 9))
    g = np.isin(cls, (2, 9))
    assert np.median(np.abs(h[g])) < 1e-6
    assert np.quantile(np.abs(h[g]), 0.99) < 0.05
    assert z.min() > 700 and np.quantile(h[~g], 0.5) > 1.0  # relief removed, vegetation stands above ground


def _cut_in_four(path, folder) -> list:
    """The file cut at its median x and y into four LAZ tiles."""
    las = laspy.read(path)
    xm, ym = np.median(las.x), np.median(las.y)
    pieces = []
    for i, (sx, sy) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
        sel = ((las.x >= xm) == bool(sx)) & ((las.y >= ym) == bool(sy))
        piece = laspy.LasData(las.header)
        piece.points = las.points[np.asarray(sel)]
        p = folder / f"piece{i}.laz"
        piece.write(p)
        pieces.append(p)
    return pieces


def test_tiling_does_not_change_metrics(tmp_path):
    """Real data: lidaRtRee las_chablais3.laz cut in 4 tiles gives the metrics of the whole file."""
    path = shared("lidar/lidaRtRee/las_chablais3.laz")
    pieces = _cut_in_four(path, tmp_path)
    gbox = _geobox_over(path, 10.0)
    whole = grid_metrics(index_tiles([path]), gbox, buffer_m=45)
    tiled = grid_metrics(index_tiles(pieces), gbox, buffer_m=45)
    for k in METRICS:
        np.testing.assert_allclose(tiled[k], whole[k], rtol=1e-7, atol=1e-6, equal_nan=True, err_msg=k)
    assert np.isfinite(whole["zmax"]).sum() >= 60
    # with a buffer shorter than the gaps between ground returns under dense canopy the
    # ground TIN near a tile edge may differ slightly; heights stay within centimetres
    short = grid_metrics(index_tiles(pieces), gbox, buffer_m=20)
    np.testing.assert_array_equal(np.isfinite(short["zmax"]), np.isfinite(whole["zmax"]))
    assert np.nanmax(np.abs(short["zmax"] - whole["zmax"])) < 0.15


def test_tile_without_crs_is_a_clear_error(tmp_path):
    hdr = laspy.LasHeader(point_format=1, version="1.2")
    las = laspy.LasData(hdr)
    las.x, las.y, las.z = np.array([0.0, 1.0]), np.array([0.0, 1.0]), np.array([0.0, 1.0])
    p = tmp_path / "nocrs.laz"
    las.write(p)
    with pytest.raises(CRSError, match="nocrs.laz: LAS header has no CRS"):
        index_tiles([p])
    assert index_tiles([p], default_crs="EPSG:4549")[0].crs.to_epsg() == 4549


def test_lidar_metrics_cli_on_real_file(tmp_path):
    """`forestcarbon lidar-metrics` on Megaplot.laz: a COG with one named band per metric, values as lidR's."""
    import subprocess
    import sys
    from pathlib import Path

    import rasterio

    path = shared("lidar/lidR/Megaplot.laz")
    out = tmp_path / "m.tif"
    exe = Path(sys.executable).parent / "forestcarbon"
    res = subprocess.run([str(exe), "lidar-metrics", str(path), "--res", "20", "--out", str(out), "--normalized"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    las = laspy.read(path)
    x, y, z = np.asarray(las.x), np.asarray(las.y), np.asarray(las.z)
    with rasterio.open(out) as src:
        assert src.descriptions == METRICS and src.crs.to_epsg() == 26917
        a = src.read()
        col = np.floor((x - src.transform.c) / 20).astype(int)
        row = np.floor((src.transform.f - y) / 20).astype(int)
    for r, c in list(set(zip(row.tolist(), col.tolist())))[:25]:
        ref = reference_metrics(z[(row == r) & (col == c)])
        for i, k in enumerate(METRICS):
            np.testing.assert_allclose(a[i, r, c], ref[k], rtol=1e-5, atol=1e-5, equal_nan=True, err_msg=k)
    bad = subprocess.run([str(exe), "lidar-metrics", str(tmp_path / "none.laz"), "--res", "20", "--out", str(tmp_path / "x.tif")],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: LAS/LAZ file not found")
    assert not (tmp_path / "x.tif").exists()
    # Topography (not normalised): metrics, a pit-free CHM and the DTM with slope and aspect in one pass
    topo = shared("lidar/lidR/Topography.laz")
    res = subprocess.run([str(exe), "lidar-metrics", str(topo), "--res", "20", "--out", str(tmp_path / "t.tif"),
                          "--ground", "2,9", "--chm", str(tmp_path / "chm.tif"), "--dtm", str(tmp_path / "dtm.tif"),
                          "--pitfree"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    with rasterio.open(tmp_path / "chm.tif") as c, rasterio.open(tmp_path / "dtm.tif") as d:
        assert c.res == (1.0, 1.0) and "pit-free" in c.tags()["method"]
        assert d.descriptions == ("dtm_m", "slope_deg", "aspect_deg") and np.nanmin(d.read(1)) > 700


def test_chm_at_field_trees_correlates_with_measured_heights():
    """Real data: lidaRtRee chablais3, 1 m CHM (highest return) vs the 110 field-measured tree heights."""
    import pandas as pd

    from forestcarbon.rs.lidar import canopy_height_model

    path = shared("lidar/lidaRtRee/las_chablais3.laz")
    trees = pd.read_csv(shared("lidar/lidaRtRee/tree_inventory_chablais3.csv"))
    gbox = _geobox_over(path, 1.0)
    chm = canopy_height_model(index_tiles([path]), gbox)
    # independent check of p2r: the highest normalised return of one cell, recomputed here
    x, y, z, cls = read_points(path)
    h = normalize_heights(x, y, z, cls)
    col = np.floor((x - gbox.affine.c) / 1.0).astype(int)
    row = np.floor((gbox.affine.f - y) / 1.0).astype(int)
    r0, c0 = row[np.argmax(h)], col[np.argmax(h)]
    assert chm[r0, c0] == pytest.approx(h[(row == r0) & (col == c0)].max(), abs=1e-5)
    # CHM maximum within 1.5 m of each stem vs field height (trees >= 10 m, as visible from above)
    tall = trees[trees.h >= 10]
    got = []
    for tx, ty in zip(tall.x, tall.y):
        rr = int(np.floor((gbox.affine.f - ty))), int(np.floor((tx - gbox.affine.c)))
        win = chm[max(rr[0] - 1, 0): rr[0] + 2, max(rr[1] - 1, 0): rr[1] + 2]
        got.append(np.nanmax(win) if np.isfinite(win).any() else np.nan)
    got = np.array(got)
    ok = np.isfinite(got)
    r = np.corrcoef(got[ok], tall.h.to_numpy()[ok])[0, 1]
    print(f"chablais3: r(CHM, field height) = {r:.3f} over {ok.sum()} trees >= 10 m")
    assert ok.sum() > 40 and r > 0.6


def test_normalisation_is_detected_on_real_files():
    """Megaplot (normalised, ground at 0) is detected as such; Topography (ground at ~800 m) is not."""
    from forestcarbon.rs.lidar import looks_normalized

    x, y, z, cls = read_points(shared("lidar/lidR/Megaplot.laz"))
    assert looks_normalized(z, cls)
    x, y, z, cls = read_points(shared("lidar/lidR/Topography.laz"))
    assert not looks_normalized(z, cls, (2, 9))
    path = shared("lidar/lidR/Megaplot.laz")
    gbox = _geobox_over(path, 20.0)
    auto = grid_metrics(index_tiles([path]), gbox, normalized="auto")
    declared = grid_metrics(index_tiles([path]), gbox, normalized=True)
    for k in METRICS:
        np.testing.assert_array_equal(auto[k], declared[k])


def test_topography_dtm_matches_its_ground_points():
    """Real data: lidR Topography.laz (classes 2 and 9); the 1 m DTM sampled at the ground returns gives their z."""
    from scipy.interpolate import RegularGridInterpolator

    from forestcarbon.rs.lidar import lidar_rasters

    path = shared("lidar/lidR/Topography.laz")
    gbox = _geobox_over(path, 1.0)
    _, _, dtm = lidar_rasters(index_tiles([path]), None, None, ground_classes=(2, 9), dtm_gbox=gbox)
    x, y, z, cls = read_points(path)
    g = np.isin(cls, (2, 9))
    a = gbox.affine
    rows = a.f + (np.arange(gbox.shape[0]) + 0.5) * a.e
    cols = a.c + (np.arange(gbox.shape[1]) + 0.5) * a.a
    interp = RegularGridInterpolator((rows[::-1], cols), dtm[::-1], bounds_error=False)
    got = interp(np.c_[y[g], x[g]])
    ok = np.isfinite(got)
    err = np.abs(got[ok] - z[g][ok])
    print(f"Topography DTM at {ok.sum()} ground returns: median |dz| {np.median(err):.3f} m, p95 {np.quantile(err, 0.95):.3f} m")
    assert ok.mean() > 0.95 and np.median(err) < 0.05 and np.quantile(err, 0.95) < 0.3
    assert np.isfinite(dtm).mean() > 0.95  # the TIN covers the tile; nearest fills outside the hull


def test_premade_metrics_raster_onto_the_grid(tmp_path):
    """Real data: Megaplot metrics written by `lidar-metrics` at 20 m, fed as a pre-made raster onto the
    same 20 m grid, arrive unchanged; onto a 40 m grid they are the average of the four 20 m cells."""
    import rasterio

    from forestcarbon.config import config_from_dict
    from forestcarbon.flows.stages import Context, premade_lidar_metrics
    from forestcarbon.rs.cog import write_cog

    path = shared("lidar/lidR/Megaplot.laz")
    g20 = _geobox_over(path, 20.0)
    m = grid_metrics(index_tiles([path]), g20, normalized=True)
    src = tmp_path / "premade.tif"
    write_cog(np.stack([m[k] for k in METRICS]).astype("float32"), g20, src, descriptions=list(METRICS))
    x0, y1 = g20.affine.c, g20.affine.f
    ny, nx = g20.shape
    from forestcarbon.rs.grid import geobox_from_config

    for res, out in ((20.0, tmp_path / "o20"), (40.0, tmp_path / "o40")):
        # a grid whose cells are whole 2 x 2 blocks of the 20 m cells when res = 40
        ax0, ay1 = np.ceil(x0 / res) * res, np.floor(y1 / res) * res
        c0, r0 = int(round((ax0 - x0) / 20)), int(round((y1 - ay1) / 20))
        k = int(res // 20)
        nx2, ny2 = (nx - c0) // k, (ny - r0) // k
        cfg = config_from_dict({
            "grid": {"crs": g20.crs.to_wkt(), "resolution_m": res, "bounds": [ax0, ay1 - ny2 * res, ax0 + nx2 * res, ay1]},
            "inputs": {"stac_items": str(tmp_path), "plots": "p", "trees": "t", "parcels": "x", "lidar_metrics_raster": str(src)},
            "output": str(out)})
        ctx = Context(cfg, geobox_from_config(cfg.grid))
        premade_lidar_metrics(ctx, src)
        with rasterio.open(out / "lidar/metrics.tif") as r:
            got = r.read()
            assert list(r.descriptions) == list(METRICS)
        i = METRICS.index("zq95")
        ref = m["zq95"][r0: r0 + ny2 * k, c0: c0 + nx2 * k]
        if k == 2:
            with np.errstate(all="ignore"), __import__("warnings").catch_warnings():
                __import__("warnings").simplefilter("ignore")
                ref = np.nanmean(ref.reshape(ny2, 2, nx2, 2), axis=(1, 3))
        np.testing.assert_allclose(got[i], ref, rtol=1e-5, equal_nan=True)


def test_plot_footprint_metrics_equal_reference_on_megaplot(tmp_path):
    """Real data: circular and square plot footprints on Megaplot, cut into 4 tiles; each plot's
    metrics equal the lidR reference over the returns inside it (independent point-in-shape test)."""
    import shapely

    from forestcarbon.rs.lidar import Options, Targets, lidar_products

    path = shared("lidar/lidR/Megaplot.laz")
    las = laspy.read(path)
    x, y, z = np.asarray(las.x), np.asarray(las.y), np.asarray(las.z)
    pieces = _cut_in_four(path, tmp_path)
    tiles = index_tiles(pieces)
    xm, ym = float(np.median(x)), float(np.median(y))
    # one circle across the cut, one square in a corner tile, one plot outside the data
    circle = ("c1", shapely.Point(xm + 3, ym - 2).buffer(11.28, quad_segs=64))
    square = ("s1", shapely.box(x.min() + 10, y.min() + 10, x.min() + 35.82, y.min() + 35.82))
    outside = ("far", shapely.Point(x.max() + 500, y.max() + 500).buffer(10))
    gbox = _geobox_over(path, 20.0)
    run = lidar_products(tiles, Targets(metrics=gbox, plots=(circle, square, outside)),
                         Options(normalized=True, min_height_m=-1e9, max_height_m=1e9),
                         {"metrics": tmp_path / "m.tif"})
    got = run.plot_metrics.set_index("plot_id")
    assert set(got.index) == {"c1", "s1"}
    cx, cy = xm + 3, ym - 2
    # the circle is a 256-gon inscribed in the true circle: it holds every return within the
    # polygon's inner radius and none beyond the circle
    d = np.hypot(x - cx, y - cy)
    assert (d <= 11.28 * np.cos(np.pi / 256)).sum() <= got.loc["c1", "n_points"] <= (d <= 11.28).sum()
    assert got.loc["c1", "n_points"] > 150
    b = square[1].bounds
    sel = (x >= b[0]) & (x <= b[2]) & (y >= b[1]) & (y <= b[3])
    ref = reference_metrics(z[sel])
    assert sel.sum() > 150
    for k in METRICS:
        np.testing.assert_allclose(got.loc["s1", k], ref[k], rtol=1e-6, atol=1e-6, equal_nan=True, err_msg=k)


def _pitfree_reference(x, y, h, x0, y0, res, shape, thresholds=(0, 2, 5, 10, 15), max_edge=(0, 1)):
    """lidR pitfree (R/algorithm-dsm.R) re-done with scipy's Qhull: highest first return per cell, then per
    threshold a Delaunay TIN of the points at or above it, long-edge triangles dropped, sampled at cell centres."""
    import pandas as pd
    from scipy.spatial import Delaunay

    col, row = np.floor((x - x0) / res), np.floor((y0 - y) / res)
    df = pd.DataFrame({"x": x, "y": y, "h": h, "cell": row * 1e6 + col})
    df = df.loc[df.groupby("cell").h.idxmax()]
    cx, cy = np.meshgrid(x0 + (np.arange(shape[1]) + 0.5) * res, y0 - (np.arange(shape[0]) + 0.5) * res)
    q = np.c_[cx.ravel(), cy.ravel()]
    out = np.full(len(q), -np.inf)
    for t in thresholds:
        d = df[df.h >= t]
        if len(d) < 3:
            continue
        P = d[["x", "y"]].to_numpy() - [x0, y0]
        tri = Delaunay(P)
        s = tri.find_simplex(q - [x0, y0])
        e = max_edge[0] if t == 0 else max_edge[1]
        ok = s >= 0
        if e > 0:
            v = P[tri.simplices]
            longest = np.max([np.hypot(*(v[:, i] - v[:, (i + 1) % 3]).T) for i in range(3)], axis=0)
            ok[ok] &= longest[s[ok]] <= e
        T = tri.transform[s[ok]]
        b = np.einsum("ijk,ik->ij", T[:, :2], q[ok] - [x0, y0] - T[:, 2])
        z = np.sum(np.c_[b, 1 - b.sum(1)] * d.h.to_numpy()[tri.simplices[s[ok]]], axis=1)
        out[ok] = np.maximum(out[ok], z)
    return np.where(np.isfinite(out), out, np.nan).reshape(shape)


def test_pitfree_chm_equals_qhull_reference_on_chablais3():
    """Real data: pit-free CHM (first returns, lidR thresholds and max_edge 0/1.5 m) at 0.5 m against the same
    algorithm on scipy's Delaunay; it fills the pits of the highest-return CHM."""
    from forestcarbon.rs.lidar import canopy_height_model, lidar_rasters

    path = shared("lidar/lidaRtRee/las_chablais3.laz")
    gbox = _geobox_over(path, 0.5)
    _, pf = lidar_rasters(index_tiles([path]), None, gbox, chm_algorithm="pitfree", pitfree_max_edge_m=(0.0, 1.5))
    las = laspy.read(path)
    x, y, z, cls = read_points(path)
    h = normalize_heights(x, y, z, cls)
    first = (np.asarray(las.return_number) == 1) & (h >= -2) & (h <= 80)
    a = gbox.affine
    ref = _pitfree_reference(x[first], y[first], h[first], a.c, a.f, 0.5, gbox.shape, max_edge=(0, 1.5))
    both = np.isfinite(pf) & np.isfinite(ref)
    assert both.sum() > 0.95 * np.isfinite(ref).sum()
    diff = np.abs(pf[both] - ref[both])
    # co-circular returns on the 1 cm grid can be triangulated either way; nearly every cell is identical
    assert np.mean(diff < 1e-6) > 0.999
    p2r = canopy_height_model(index_tiles([path]), gbox)
    pits = lambda c: np.nansum(c[1:-1, 1:-1] < np.nanmin(np.stack([c[:-2, 1:-1], c[2:, 1:-1], c[1:-1, :-2], c[1:-1, 2:]]), 0) - 2)
    assert pits(pf) < 0.2 * pits(p2r)


def test_tiles_on_a_distributed_cluster_equal_in_process(tmp_path):
    """Real data: chablais3 cut in 4, processed on a dask.distributed LocalCluster (worker processes, as an
    existing cluster would), gives the metrics of the in-process run."""
    import dask
    from distributed import Client, LocalCluster

    path = shared("lidar/lidaRtRee/las_chablais3.laz")
    pieces = _cut_in_four(path, tmp_path)
    gbox = _geobox_over(path, 10.0)
    with dask.config.set(scheduler="sync"):
        local = grid_metrics(index_tiles(pieces), gbox, buffer_m=45)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster):
        remote = grid_metrics(index_tiles(pieces), gbox, buffer_m=45)
    for k in METRICS:
        np.testing.assert_array_equal(remote[k], local[k], err_msg=k)


def test_tile_workers_run_from_a_script_without_main_guard(tmp_path):
    """Analysts call the LiDAR functions from plain scripts (no `if __name__ == "__main__"`) or stdin: the
    tile workers must not re-run the caller's main module."""
    import subprocess
    import sys

    from forestcarbon.rs.lidar import geobox_over_tiles

    path = shared("lidar/lidaRtRee/las_chablais3.laz")
    pieces = _cut_in_four(path, tmp_path)
    script = (
        "import dask\n"
        "from forestcarbon.rs.lidar import index_tiles, grid_metrics, geobox_over_tiles\n"
        f"tiles = index_tiles({[str(p) for p in pieces]!r})\n"
        "print('start', flush=True)\n"
        "with dask.config.set(scheduler='threads', num_workers=2):\n"
        "    m = grid_metrics(tiles, geobox_over_tiles(tiles, 10.0), buffer_m=45)\n"
        "print('cells', int((m['n_points'] > 0).sum()))\n"
    )
    res = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("start") == 1  # the workers did not re-run the script
    tiles = index_tiles(pieces)
    here = grid_metrics(tiles, geobox_over_tiles(tiles, 10.0), buffer_m=45)
    assert f"cells {int((here['n_points'] > 0).sum())}" in res.stdout


def test_efi_plots_on_megaplot_like_lidr_plot_metrics(tmp_path):
    """Real data: lidR's efi_plot.shp (5 plot centres) with 11.28 m circles on Megaplot cut in 4 tiles, through
    read_plots and the LiDAR stage's plot-footprint metrics, as lidR's plot_metrics(las, .stdmetrics_z, efi_plot,
    radius = 11.28) computes them: each plot's metrics equal the lidR transcription over the returns within 11.28 m."""
    import geopandas as gpd

    from forestcarbon.rs.lidar import Options, Targets, lidar_products
    from forestcarbon.vector.plots import read_plots

    efi = gpd.read_file(shared("lidar/lidR/efi_plot.shp")).assign(radius_m=11.28)
    efi.to_file(tmp_path / "efi.gpkg")
    plots = read_plots(tmp_path / "efi.gpkg", None, "IDPEP", "EPSG:26917")
    path = shared("lidar/lidR/Megaplot.laz")
    run = lidar_products(index_tiles(_cut_in_four(path, tmp_path)), Targets(metrics=_geobox_over(path, 20.0),
                         plots=tuple(zip(plots.plot_id, plots.geometry))), Options(normalized=True),
                         {"metrics": tmp_path / "m.tif"})
    got = run.plot_metrics.set_index("plot_id")
    assert sorted(got.index) == sorted(efi.IDPEP)
    las = laspy.read(path)
    x, y, z = np.asarray(las.x), np.asarray(las.y), np.asarray(las.z)
    exact = 0
    for pid, pt in zip(efi.IDPEP, efi.geometry):
        d = np.hypot(x - pt.x, y - pt.y)
        lo, hi = (d <= 11.28 * np.cos(np.pi / 256)).sum(), (d <= 11.28).sum()
        assert lo <= got.loc[pid, "n_points"] <= hi  # the footprint is a 256-gon inscribed in the circle
        if got.loc[pid, "n_points"] == hi:  # no return in the sliver between polygon and circle
            ref = reference_metrics(z[d <= 11.28])
            for k in METRICS:
                np.testing.assert_allclose(got.loc[pid, k], ref[k], rtol=1e-6, atol=1e-6, equal_nan=True, err_msg=f"{pid} {k}")
            exact += 1
    assert exact >= 3


def test_returns_on_the_grid_edges_and_noise_classes(tmp_path):
    """Real data: every return of chablais3 is counted in some cell when the grid is snapped to the data's
    extent (returns on the bottom and right edges included, as laspy counts them), and returns of the ASPRS
    noise classes 7 and 18 are dropped by class and counted."""
    import rasterio

    from forestcarbon.rs.lidar import Options, Targets, lidar_products

    path = shared("lidar/lidaRtRee/las_chablais3.laz")
    las = laspy.read(path)
    h = las.header
    res = 1.0  # the file's minimum y is a whole metre: its southernmost returns lie on the grid's bottom edge
    x0, y0 = np.floor(h.mins[:2] / res) * res
    x1, y1 = np.ceil(h.maxs[:2] / res) * res
    gbox = GeoBox.from_bbox((x0, y0, x1, y1), crs=h.parse_crs().to_wkt(), resolution=res)
    on_edge = int(((np.asarray(las.y) == y0) | (np.asarray(las.x) == x1)).sum())
    run = lidar_products(index_tiles([path]), Targets(metrics=gbox), Options(normalized=False, min_height_m=-1e9,
                                                                              max_height_m=1e9),
                         {"metrics": tmp_path / "m.tif"})
    with rasterio.open(tmp_path / "m.tif") as src:
        n = src.read(METRICS.index("n_points") + 1)
    assert np.nansum(n) == len(las.x) and on_edge > 0
    # three returns re-classified as noise (7, 18, 7) are dropped and counted
    noisy = laspy.read(path)
    cls = np.asarray(noisy.classification).copy()
    pick = np.flatnonzero(cls != 2)[[0, 10, 20]]  # three non-ground returns
    cls[pick] = [7, 18, 7]
    noisy.classification = cls
    p = tmp_path / "noisy.laz"
    noisy.write(p)
    run = lidar_products(index_tiles([p]), Targets(metrics=gbox), Options(normalized=False, min_height_m=-1e9,
                                                                           max_height_m=1e9),
                         {"metrics": tmp_path / "m2.tif"})
    with rasterio.open(tmp_path / "m2.tif") as src:
        n2 = src.read(METRICS.index("n_points") + 1)
    assert run.noise == 3 and np.nansum(n2) == len(las.x) - 3
