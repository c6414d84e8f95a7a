"""Individual tree detection and crowns (forestcarbon.rs.lidar.trees / .crowns) against independent derivations.

References written here from lidR's sources, not from the module:
lidR src/LAS.cpp ``LAS::filter_local_maxima`` (serial loop), src/C_dalponte2016.cpp ``C_dalponte2016``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rasterio.transform import from_origin

from forestcarbon.rs.lidar.crowns import crown_point_metrics, crown_polygons, crown_table, segment_crowns
from forestcarbon.rs.lidar.trees import (detect_trees, local_maxima, local_maxima_points, match_detected_to_field,
                                         smooth_chm, window_size)


def data_file(*parts) -> Path | None:
    for root in (Path(__file__).resolve().parents[1].parent / "shared" / "data", Path("/work/shared/data")):
        p = root.joinpath(*parts)
        if p.exists():
            return p
    return None


# ---------------------------------------------------------------- brute-force lmf (lidR LAS.cpp, serial)

def lmf_bruteforce(X, Y, Z, wsfun, hmin, circular):
    """Every point in order: skipped if Z < hmin; not a maximum if a point of its window (centred on it,
    half size ws/2; circle d² <= r² + 1e-8, square |dx|,|dy| <= r + 1e-8) is higher, or is equally high and
    already flagged a maximum."""
    n = len(Z)
    flag = [False] * n
    for i in range(n):
        if Z[i] < hmin:
            continue
        r = wsfun(Z[i]) / 2.0
        is_lm = True
        for j in range(n):
            dx, dy = X[i] - X[j], Y[i] - Y[j]
            if circular:
                inside = dx * dx + dy * dy <= r * r + 1e-8
            else:
                inside = -r - 1e-8 <= -dx <= r + 1e-8 and -r - 1e-8 <= -dy <= r + 1e-8
            if not inside:
                continue
            if Z[j] > Z[i]:
                is_lm = False
            if Z[j] == Z[i] and flag[j]:
                is_lm = False
                break
        flag[i] = is_lm
    return [i for i in range(n) if flag[i]]


@pytest.mark.parametrize("shape", ["circular", "square"])
@pytest.mark.parametrize("ws", [2.0, (0.5, 0.25, 1.0, 3.5)])
def test_local_maxima_raster_vs_bruteforce(shape, ws):
    rng = np.random.default_rng(7)
    chm = rng.integers(0, 12, size=(40, 40)).astype(float)  # integer heights: many ties
    chm[rng.random(chm.shape) < 0.1] = np.nan
    tf = from_origin(481000.0, 3813000.0, 0.5, 0.5)
    rows, cols = np.nonzero(np.isfinite(chm))  # lidR raster_as_las: non-NA cells, row-major from the north-west
    X = [481000.0 + (c + 0.5) * 0.5 for c in cols]
    Y = [3813000.0 - (r + 0.5) * 0.5 for r in rows]
    Z = [float(chm[r, c]) for r, c in zip(rows, cols)]
    if isinstance(ws, tuple):
        a, b, lo, hi = ws
        wsfun = lambda h: min(max(a + b * h, lo), hi)  # noqa: E731
    else:
        wsfun = lambda h: ws  # noqa: E731
    ref = lmf_bruteforce(X, Y, Z, wsfun, 2.0, shape == "circular")
    got = local_maxima(chm, tf, ws, hmin_m=2.0, shape=shape)
    assert list(zip(got["row"], got["col"])) == [(rows[i], cols[i]) for i in ref]
    assert np.allclose(got["x"], [X[i] for i in ref]) and np.allclose(got["y"], [Y[i] for i in ref])
    assert np.array_equal(got["height_m"], [Z[i] for i in ref])
    # a tie between two neighbours in a window is kept once (first in row-major order)
    assert len(ref) > 20


@pytest.mark.parametrize("shape", ["circular", "square"])
def test_local_maxima_points_vs_bruteforce(shape):
    rng = np.random.default_rng(3)
    n = 500
    x = rng.uniform(0, 30, n)
    y = rng.uniform(0, 30, n)
    z = np.round(rng.uniform(0, 20, n) * 2) / 2  # half-metre steps: ties
    x[10], y[10], z[10] = x[5], y[5], z[5]  # a duplicate point: the first one wins
    for ws in (4.0, (1.0, 0.2, 2.0, 6.0)):
        wsfun = (lambda h: ws) if np.ndim(ws) == 0 else (lambda h: min(max(1.0 + 0.2 * h, 2.0), 6.0))
        ref = lmf_bruteforce(x.tolist(), y.tolist(), z.tolist(), wsfun, 2.0, shape == "circular")
        got = local_maxima_points(x, y, z, ws, hmin_m=2.0, shape=shape)
        assert got.tolist() == ref


def test_local_maxima_points_speed():
    rng = np.random.default_rng(0)
    n = 40_000
    x, y = rng.uniform(0, 100, n), rng.uniform(0, 100, n)
    z = 20 + 5 * np.sin(x / 3) * np.cos(y / 3) + rng.normal(0, 0.5, n)
    t = time.perf_counter()
    local_maxima_points(x, y, z, (2.0, 0.1, 3.0, 6.0))
    assert time.perf_counter() - t < 5.0


def test_window_size_rule():
    h = np.array([0.0, 10.0, 30.0, 100.0])
    assert np.allclose(window_size(h, (2.0, 0.1, 3.0, 6.0)), [3.0, 3.0, 5.0, 6.0])  # 2+0.1h in [3, 6]
    assert np.allclose(window_size(h, 5), 5.0)


def test_smooth_chm_by_hand():
    a = np.arange(25, dtype=float).reshape(5, 5)
    a[0, 0] = np.nan
    m = smooth_chm(a, 3, "mean")
    assert m[2, 2] == pytest.approx(np.mean(a[1:4, 1:4]))
    assert m[1, 1] == pytest.approx(np.nanmean(a[0:3, 0:3]))  # NaN left out
    assert np.isnan(m[0, 0])
    md = smooth_chm(a, 3, "median")
    assert md[0, 1] == pytest.approx(np.nanmedian(a[0:2, 0:3]))  # outside the array counts as missing
    g = smooth_chm(a, 3, "gaussian", sigma_px=1.0)
    w = np.exp(-0.5 * np.array([[2, 1, 2], [1, 0, 1], [2, 1, 2]]))
    assert g[3, 3] == pytest.approx((w * a[2:5, 2:5]).sum() / w.sum())


# ---------------------------------------------------------------- dalponte2016 (C_dalponte2016.cpp, plain Python)

def dalponte_reference(chm, tops_rc, th_seed, th_crown, th_tree, DIST):
    """Plain-Python transcription of lidR's C_dalponte2016 on its own matrix layout
    (Image(i, j): column i from the west, row j from the south; NA = -Inf)."""
    nrow_img, ncol_img = chm.shape
    nrow, ncol = ncol_img, nrow_img  # lidR matrix dims
    Image = [[(-np.inf if np.isnan(chm[nrow_img - 1 - j, i]) else float(chm[nrow_img - 1 - j, i]))
              for j in range(ncol)] for i in range(nrow)]
    Region = [[0] * ncol for _ in range(nrow)]
    for t, (r, c) in enumerate(tops_rc):
        Region[c][nrow_img - 1 - r] = t + 1
    seeds, sum_height, npixel = {}, {}, {}
    for i in range(nrow):
        for j in range(ncol):
            if Region[i][j] != 0:
                seeds[Region[i][j]] = (i, j)
                sum_height[Region[i][j]] = Image[i][j]
                npixel[Region[i][j]] = 1
    grown = True
    while grown:
        grown = False
        Regiontemp = [row[:] for row in Region]
        for r in range(1, nrow - 1):
            for k in range(1, ncol - 1):
                if Region[r][k] != 0:
                    id_ = Region[r][k]
                    sx, sy = seeds[id_]
                    hSeed = Image[sx][sy]
                    mhCrown = sum_height[id_] / npixel[id_]
                    for (px, py) in ((r - 1, k), (r, k - 1), (r, k + 1), (r + 1, k)):
                        z = Image[px][py]
                        if z > th_tree:
                            if (z > hSeed * th_seed and z > mhCrown * th_crown and z <= hSeed + hSeed * 0.05
                                    and abs(sx - px) < DIST and abs(sy - py) < DIST and Region[px][py] == 0):
                                Regiontemp[px][py] = Region[r][k]
                                npixel[id_] += 1
                                sum_height[id_] += Image[px][py]
                                grown = True
        Region = Regiontemp
    out = np.zeros(chm.shape, np.int32)
    for i in range(nrow):
        for j in range(ncol):
            out[nrow_img - 1 - j, i] = Region[i][j]
    return out


def paraboloid_chm(shape, trees, res, noise=0.0, seed=0):
    """Max over paraboloid crowns h - k d² (trees: (x, y, h, k)); ground 0."""
    nr, nc = shape
    yy, xx = (np.mgrid[0:nr, 0:nc] + 0.5) * res
    chm = np.zeros(shape)
    for x0, y0, h, k in trees:
        chm = np.maximum(chm, h - k * ((xx - x0) ** 2 + (yy - y0) ** 2))
    if noise:
        chm = chm + np.random.default_rng(seed).normal(0, noise, shape)
    return np.maximum(chm, 0.0)


def test_dalponte2016_vs_transcription():
    res = 0.5
    trees = [(6.0, 6.0, 20.0, 0.8), (11.0, 7.5, 16.0, 0.9), (8.0, 13.0, 24.0, 0.6), (15.0, 15.0, 12.0, 1.2),
             (3.0, 16.0, 9.0, 1.0)]
    chm = paraboloid_chm((40, 40), trees, res, noise=0.3, seed=1)
    chm[0:3, 30:34] = np.nan
    tops = local_maxima(chm, from_origin(0, 20, res, res), 4.0, hmin_m=2.0)
    rc = np.c_[tops["row"], tops["col"]]
    assert 4 <= len(rc) <= 12
    for max_cr_m in (10.0 * res, 3.0):
        ref = dalponte_reference(chm, rc.tolist(), 0.45, 0.55, 2.0, max_cr_m / res)
        got = segment_crowns(chm, rc, "dalponte2016", th_tree=2.0, th_seed=0.45, th_cr=0.55, max_cr_m=max_cr_m,
                             res_m=res)
        assert np.array_equal(got, ref)
        assert all(got[r, c] == i + 1 for i, (r, c) in enumerate(rc))  # every crown covers its seed
    assert (got > 0).sum() > 0.3 * (chm > 2).sum()


def test_watershed_needs_skimage():
    from forestcarbon.errors import LidarError
    from forestcarbon.rs.lidar import crowns
    if crowns.HAS_SKIMAGE:
        pytest.skip("scikit-image is installed")
    with pytest.raises(LidarError, match="scikit-image"):
        segment_crowns(np.ones((5, 5)), [(2, 2)], "watershed", res_m=1.0)


def forest_chm(seed=4, shape=(96, 110), res=0.5):
    rng = np.random.default_rng(seed)
    n = 45
    trees = np.c_[rng.uniform(0, shape[1] * res, n), rng.uniform(0, shape[0] * res, n), rng.uniform(8, 30, n),
                  rng.uniform(0.3, 1.5, n)]
    chm = paraboloid_chm(shape, trees, res, noise=0.2, seed=seed)
    chm = np.round(chm, 1)  # decimetre heights: ties across tile edges
    chm[rng.random(shape) < 0.02] = np.nan
    return chm


@pytest.mark.parametrize("smooth", [None, {"size_px": 3, "method": "median"}, {"size_px": 5, "method": "gaussian"}])
def test_detect_trees_tiling_invariance(smooth):
    res = 0.5
    chm = forest_chm()
    tf = from_origin(1000.0, 2000.0, res, res)
    kw = dict(ws=(1.0, 0.15, 2.0, 5.0), hmin_m=2.0, smooth=smooth, max_cr_m=4.0)
    t_big, l_big = detect_trees(chm, tf, tile_px=10_000, **kw)
    t_small, l_small = detect_trees(chm, tf, tile_px=16, **kw)
    pd.testing.assert_frame_equal(t_big, t_small)
    assert np.array_equal(l_big, l_small)
    assert len(t_big) > 20 and (l_big > 0).mean() > 0.3
    # untiled detection equals local_maxima on the (smoothed) CHM, crowns equal segment_crowns
    sm = smooth_chm(chm, **smooth) if smooth else chm
    lm = local_maxima(sm, tf, kw["ws"], 2.0)
    assert np.array_equal(lm[["row", "col"]].to_numpy(), t_big[["row", "col"]].to_numpy())
    lab = segment_crowns(sm, lm[["row", "col"]].to_numpy(), res_m=res, max_cr_m=4.0)
    assert np.array_equal(lab, l_big)


def test_crown_table_polygons_point_metrics():
    res = 0.5
    chm = forest_chm(seed=9, shape=(40, 50))
    tf = from_origin(500.0, 800.0, res, res)
    trees, labels = detect_trees(chm, tf, 3.0, max_cr_m=3.0)
    ct = crown_table(labels, chm, tf)
    for lab in ct["label"][:5]:
        n = (labels == lab).sum()
        row = ct.set_index("label").loc[lab]
        assert row["crown_area_m2"] == n * 0.25
        assert row["crown_diameter_m"] == pytest.approx(2 * np.sqrt(n * 0.25 / np.pi))
    polys = crown_polygons(labels, tf)
    assert np.allclose(polys.set_index("label").area.loc[ct["label"]].to_numpy(), ct["crown_area_m2"].to_numpy())
    rng = np.random.default_rng(2)
    m = 20_000
    x, y = rng.uniform(499, 526, m), rng.uniform(779, 801, m)
    z = rng.uniform(0, 30, m)
    got = crown_point_metrics(labels, tf, x, y, z).set_index("label")
    col = np.floor((x - 500.0) / res).astype(int)
    row = np.floor((800.0 - y) / res).astype(int)
    ok = (col >= 0) & (col < 50) & (row >= 0) & (row < 40)
    lp = np.zeros(m, int)
    lp[ok] = labels[row[ok], col[ok]]
    labs = np.unique(lp[lp > 0])
    assert sorted(got.index) == labs.tolist()
    for lab in labs:
        zz = z[lp == lab]
        g = got.loc[lab]
        assert g["n_points"] == zz.size
        assert g["z_max_m"] == zz.max()
        assert g["z_p95_m"] == pytest.approx(np.percentile(zz, 95))
        assert g["z_mean_m"] == pytest.approx(zz.mean())


def test_match_detected_to_field_by_hand():
    det = np.array([[0.0, 0.0], [1.0, 0.0], [10.0, 0.0]])
    field = np.array([[0.5, 0.0], [2.5, 0.0], [10.0, 2.9]])
    m = match_detected_to_field(det, [20, 20, 30], field, [20, 21, 30])
    # pairs: d0-f0 0.5, d1-f0 0.5 (tie -> lower det index d0), d1-f1 1.5, d2-f2 2.9
    assert m[["det_index", "field_index"]].to_numpy().tolist() == [[0, 0], [1, 1], [2, 2]]
    m2 = match_detected_to_field(det, [20, 20, 30], field, [20, 30, 30])  # d1-f1 height off by 33 %
    assert m2[["det_index", "field_index"]].to_numpy().tolist() == [[0, 0], [2, 2]]


# ---------------------------------------------------------------- real data

def test_mixedconifer_lidr_counts():
    """lidR tests/testthat/test-locate_trees.R: on MixedConifer.laz (Z >= 0) locate_trees(las, lmf(5)) has
    177 trees and lmf(function(x) x * 0.07 + 3) 205 (default hmin = 2, circular)."""
    from forestcarbon.rs.lidar.io import read_points
    p = data_file("lidar", "lidR", "MixedConifer.laz")
    if p is None:
        pytest.skip("lidR MixedConifer.laz not in shared/data/lidar/lidR")
    x, y, z, _ = read_points(p)
    k = z >= 0
    x, y, z = x[k], y[k], z[k]
    assert len(local_maxima_points(x, y, z, 5.0)) == 177
    assert len(local_maxima_points(x, y, z, lambda h: h * 0.07 + 3)) == 205


def test_chablais3_against_field_inventory():
    """lidaRtRee chablais3: 0.5 m pit-free CHM, median 3 x 3, window 1 + 0.15 h in [2, 8] m, hmin 5 m.
    Field trees >= 10 m; a detection matches within 3 m and 20 % of the field height (one-to-one, closest first);
    commissions are detections >= 10 m inside the field trees' convex hull with no match."""
    from shapely import contains_xy
    from shapely.geometry import MultiPoint

    from forestcarbon.rs.lidar.chm import pitfree_chm
    from forestcarbon.rs.lidar.ground import normalize_heights
    from forestcarbon.rs.lidar.io import read_points
    p = data_file("lidar", "lidaRtRee", "las_chablais3.laz")
    q = data_file("lidar", "lidaRtRee", "tree_inventory_chablais3.csv")
    if p is None or q is None:
        pytest.skip("lidaRtRee las_chablais3.laz / tree_inventory_chablais3.csv not in shared/data/lidar/lidaRtRee")
    x, y, z, cls, ret = read_points(p, returns=True)
    h = normalize_heights(x, y, z, cls)
    first = ret == 1
    res = 0.5
    x0, y0 = np.floor(x.min()), np.ceil(y.max())
    shape = (int(np.ceil((y0 - y.min()) / res)), int(np.ceil((x.max() - x0) / res)))
    chm = pitfree_chm(x[first], y[first], h[first], x0, y0, res, shape)
    tf = from_origin(x0, y0, res, res)
    kw = dict(ws=(1.0, 0.15, 2.0, 8.0), hmin_m=5.0, smooth={"size_px": 3, "method": "median"}, max_cr_m=5.0)
    trees, labels = detect_trees(chm, tf, tile_px=10_000, **kw)
    trees_t, labels_t = detect_trees(chm, tf, tile_px=48, **kw)
    pd.testing.assert_frame_equal(trees, trees_t)
    assert np.array_equal(labels, labels_t)

    fld = pd.read_csv(q)
    m = match_detected_to_field(trees[["x", "y"]].to_numpy(), trees["height_raw_m"].to_numpy(),
                                fld[["x", "y"]].to_numpy(), fld["h"].to_numpy())
    big = np.flatnonzero(fld["h"].to_numpy() >= 10)
    detection = np.isin(big, m["field_index"]).mean()
    hull = MultiPoint(fld[["x", "y"]].to_numpy()).convex_hull
    dbig = np.flatnonzero((trees["height_raw_m"].to_numpy() >= 10)
                          & contains_xy(hull, trees["x"].to_numpy(), trees["y"].to_numpy()))
    commission = 1 - np.isin(dbig, m["det_index"]).mean()
    dh = m.loc[np.isin(m["field_index"], big), "dh_m"].to_numpy()
    rmse, bias = np.sqrt(np.mean(dh ** 2)), dh.mean()
    print(f"chablais3: {len(big)} field trees >= 10 m, {len(dbig)} detections >= 10 m in the plot hull; "
          f"detection {detection:.3f}, commission {commission:.3f}, height RMSE {rmse:.2f} m, bias {bias:+.2f} m")
    # measured: detection 0.612, commission 0.042, RMSE 1.24 m, bias -0.51 m
    assert detection >= 0.5
    assert commission <= 0.15
    assert rmse < 2.0 and -1.5 < bias < 0.5
    # crowns: every top in its own crown, crowns a plausible size for 10-30 m conifers
    assert all(labels[r, c] == i + 1 for i, (r, c) in enumerate(zip(trees["row"], trees["col"])))
    d = trees.loc[trees["height_raw_m"] >= 10, "crown_diameter_m"]
    assert 2.0 < d.median() < 8.0
