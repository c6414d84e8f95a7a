"""Individual tree detection on a canopy height model (CHM) or a point cloud: lidR's local maximum filter.

A raster is a 2-D float array (NaN = no data), north-up, with a rasterio
``Affine`` ``transform`` and square cells.  Crown segmentation is in
:mod:`.crowns`; :func:`detect_trees` runs detection and segmentation tile by
tile.

Source of the definitions: lidR (r-lidar/lidR, read at commit d185a7eb),
``R/algorithm-itd.R`` (``lmf``), ``R/locate_trees.R`` and ``src/LAS.cpp``
(``LAS::filter_local_maxima(NumericVector ws, double min_height, bool circular)``),
``inst/include/lidR/Shapes.h`` (``Circle::contains``, ``Rectangle::contains``).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.spatial import cKDTree

from ...errors import LidarError
from .crowns import crown_table, segment_crowns

EPSILON = 1e-8  # lidR inst/include/lidR/Shapes.h: #define EPSILON 1e-8


def window_size(height_m, ws) -> np.ndarray:
    """Local-maximum window DIAMETER (m, lidR's ``ws``) at each height.

    ``ws`` is a number (fixed window), a tuple ``(a, b, min, max)`` for the
    linear rule ``ws = a + b * h`` clipped to ``[min, max]`` (Popescu & Wynne
    2004 use such height-dependent windows), or a callable of height.  lidR's
    ``lmf(ws = function)`` takes a function of the point height (``ws_args =
    "Z"``); a tuple here is that function written as data.
    """
    h = np.asarray(height_m, dtype="float64")
    if callable(ws):
        out = np.asarray(ws(h), dtype="float64") * np.ones_like(h)
    elif np.ndim(ws) == 0:
        out = np.full(h.shape, float(ws))
    elif len(ws) == 4:
        a, b, lo, hi = (float(v) for v in ws)
        out = np.clip(a + b * h, lo, hi)
    else:
        raise LidarError(f"window rule ws={ws!r}: expected a number (m), (a, b, min, max) or a function of height")
    finite = out[np.isfinite(h)]
    if finite.size and (not np.all(np.isfinite(finite)) or finite.min() <= 0):
        raise LidarError(f"window rule ws={ws!r} gives a non-positive or non-finite window size")
    return out


def _radius(height_m, ws, hmin_m: float) -> np.ndarray:
    """Half windows (m).  As lmf(): below hmin the window is set to the smallest one (those never are maxima)."""
    w = window_size(height_m, ws)
    low = ~(np.asarray(height_m) >= hmin_m)
    if low.any() and (~low).any():
        w = np.where(low, w[~low].min(), w)
    return w / 2.0


def _in_window(dx, dy, r, shape: str):
    """lidR ``Circle::contains``: dx²+dy² <= r²+EPSILON; ``Rectangle::contains``: |dx|, |dy| <= r+EPSILON."""
    if shape == "circular":
        return dx * dx + dy * dy <= r * r + EPSILON
    return (np.abs(dx) <= r + EPSILON) & (np.abs(dy) <= r + EPSILON)


def _resolve_ties(x, y, z, r, shape: str) -> np.ndarray:
    """Keep-mask over candidates (already in lidR's processing order) after lidR's tie rule.

    In ``LAS::filter_local_maxima`` a point whose window holds an equally high
    point already tagged as a maximum (``z == zmax && filter[pt.id]``) is not a
    maximum: of equal heights the first processed wins, checked within the
    window of the later point.  lidR runs this loop with OpenMP, so with
    several threads its own tie outcome can vary; this is the serial order.
    """
    keep = np.ones(z.size, dtype=bool)
    if z.size < 2:
        return keep
    order = np.argsort(z, kind="stable")
    zs = z[order]
    start = np.r_[True, zs[1:] != zs[:-1]]
    bounds = np.r_[np.flatnonzero(start), z.size]
    for a, b in zip(bounds[:-1], bounds[1:]):
        if b - a < 2:
            continue
        idx = order[a:b]  # same height, ascending processing order (stable sort)
        taken: list[int] = []
        for i in idx:
            if taken:
                t = np.asarray(taken)
                if np.any(_in_window(x[t] - x[i], y[t] - y[i], r[i], shape)):
                    keep[i] = False
                    continue
            taken.append(i)
    return keep


def _check_grid(transform) -> float:
    res = float(transform.a)
    if transform.b != 0 or transform.d != 0 or not math.isclose(-transform.e, res, rel_tol=1e-9) or res <= 0:
        raise LidarError(f"CHM transform {tuple(transform)[:6]}: expected north-up square cells")
    return res


def _offsets(rmax_m: float, res: float, shape: str):
    """Cell offsets (drow, dcol) whose centres can be in a window of half size rmax_m, sorted by their window key."""
    k = int(math.floor((rmax_m + EPSILON) / res)) + 1
    dr, dc = np.meshgrid(np.arange(-k, k + 1), np.arange(-k, k + 1), indexing="ij")
    dr, dc = dr.ravel(), dc.ravel()
    dx, dy = dc * res, dr * res
    key = dx * dx + dy * dy if shape == "circular" else np.maximum(np.abs(dx), np.abs(dy))
    o = np.argsort(key, kind="stable")
    return dr[o], dc[o], key[o], k


def _window_counts(r, key, shape: str):
    """Number of sorted offsets inside each cell's window (same tests as :func:`_in_window`)."""
    thr = r * r + EPSILON if shape == "circular" else r + EPSILON
    return np.searchsorted(key, thr, side="right")


def lm_candidates(chm, res: float, ws, hmin_m: float = 2.0, shape: str = "circular", core=None):
    """Cells (row, col) of ``chm`` with height >= hmin and no strictly higher cell in their window.

    ``core`` (r0, r1, c0, c1) limits the returned cells to a sub-window; the
    array must then extend at least one window radius beyond it (a buffer).
    """
    if shape not in ("circular", "square"):
        raise LidarError(f"local maxima shape {shape!r}: expected 'circular' or 'square'")
    chm = np.asarray(chm, dtype="float64")
    nr, nc = chm.shape
    r0, r1, c0, c1 = core if core is not None else (0, nr, 0, nc)
    sub = chm[r0:r1, c0:c1]
    cand = sub >= hmin_m  # NaN compares False: no-data cells are no points (raster_as_las drops NA)
    if not cand.any():
        return np.empty(0, np.int64), np.empty(0, np.int64)
    rad = _radius(chm, ws, hmin_m)[r0:r1, c0:c1]
    rmax = float(rad[cand].max())
    dr, dc, key, k = _offsets(rmax, res, shape)
    pad = np.pad(np.where(np.isfinite(chm), chm, -np.inf), k, constant_values=-np.inf)
    cnt = _window_counts(rad, key, shape)
    cnt = np.where(cand, cnt, 0)
    need = np.unique(cnt[cand])
    run = np.full(sub.shape, -np.inf)
    wmax = np.full(sub.shape, np.inf)
    h, w = sub.shape
    j = 0
    for n in need:  # running max over offsets in window-key order; read it off where a cell's window ends
        while j < n:
            a, b = r0 + k + dr[j], c0 + k + dc[j]
            np.maximum(run, pad[a:a + h, b:b + w], out=run)
            j += 1
        sel = cnt == n
        wmax[sel] = run[sel]
    ok = cand & (sub >= wmax)
    rr, cc = np.nonzero(ok)  # row-major: lidR's point order for a raster (raster_as_dataframe, R/utils_raster.R)
    return rr + r0, cc + c0


def local_maxima(chm, transform, ws, hmin_m: float = 2.0, shape: str = "circular") -> pd.DataFrame:
    """Tree tops of a CHM by lidR's local maximum filter, ``locate_trees(chm, lmf(ws, hmin, shape))``.

    As lidR (``R/locate_trees.R`` ``locate_trees.SpatRaster`` -> ``raster_as_las``,
    ``R/utils_raster.R``) the non-NA cells become points at their centres, in
    row-major order from the north-west corner.  Then ``src/LAS.cpp``
    ``LAS::filter_local_maxima``: a point is a maximum when its height is
    >= ``hmin`` (points with ``Z < min_height`` are excluded), no point of the
    window centred on it is strictly higher (equal is allowed), and no
    equally high point already tagged as a maximum lies in its window (ties:
    first in order wins).  ``ws`` is the window DIAMETER (m); the circular
    window holds points with dx²+dy² <= (ws/2)² + 1e-8, the square one
    |dx|, |dy| <= ws/2 + 1e-8 (``Shapes.h``).  With a variable window each point
    uses its own height's window.  Offsets are taken as multiples of the cell
    size (lidR subtracts absolute coordinates; they agree except within ~1e-9 m
    of a window's edge).

    Returns x, y (cell centres), row, col, height_m in lidR's order.
    """
    res = _check_grid(transform)
    chm = np.asarray(chm, dtype="float64")
    rr, cc = lm_candidates(chm, res, ws, hmin_m, shape)
    return _tops_table(rr, cc, chm[rr, cc], transform, ws, hmin_m, shape)


def _tops_table(rr, cc, z, transform, ws, hmin_m, shape):
    """Tie resolution over candidates (sorted here to row-major, lidR's order) and the output table."""
    o = np.lexsort((cc, rr))
    rr, cc, z = rr[o], cc[o], z[o]
    res = float(transform.a)
    x = transform.c + (cc + 0.5) * res
    y = transform.f - (rr + 0.5) * res
    keep = _resolve_ties(cc * res, -rr * res, z, _radius(z, ws, hmin_m), shape)
    return pd.DataFrame({"x": x[keep], "y": y[keep], "row": rr[keep], "col": cc[keep], "height_m": z[keep]})


def local_maxima_points(x, y, z, ws, hmin_m: float = 2.0, shape: str = "circular") -> np.ndarray:
    """Indices (file order) of the points that are tree tops, as lidR ``locate_trees(las, lmf(ws, hmin, shape))``.

    Same rule as :func:`local_maxima` (``src/LAS.cpp`` ``LAS::filter_local_maxima``)
    on the points themselves, in file order.  A k-d tree prunes: a point whose
    16 nearest neighbours already hold a higher one inside its window is out;
    the rest get a full window query.
    """
    if shape not in ("circular", "square"):
        raise LidarError(f"local maxima shape {shape!r}: expected 'circular' or 'square'")
    x, y, z = (np.asarray(a, dtype="float64") for a in (x, y, z))
    n = z.size
    cand = np.flatnonzero(z >= hmin_m)
    if cand.size == 0:
        return cand
    r = _radius(z, ws, hmin_m)
    p = 2 if shape == "circular" else np.inf
    xy = np.c_[x, y]
    tree = cKDTree(xy)
    k = min(16, n)
    _, nb = tree.query(xy[cand], k=k, p=p)
    nb = nb.reshape(cand.size, k)
    inside = _in_window(x[nb] - x[cand, None], y[nb] - y[cand, None], r[cand, None], shape)
    higher = inside & (z[nb] > z[cand, None])
    rest = cand[~higher.any(axis=1)]
    # full query on the rest: radius slightly larger than the window, exact test after
    qr = np.sqrt(r[rest] ** 2 + EPSILON) * (1 + 1e-12) if shape == "circular" else (r[rest] + EPSILON) * (1 + 1e-12)
    ok = np.zeros(rest.size, dtype=bool)
    for j, (i, lst) in enumerate(zip(rest, tree.query_ball_point(xy[rest], qr, p=p))):
        lst = np.asarray(lst, dtype=np.int64)
        inw = _in_window(x[lst] - x[i], y[lst] - y[i], r[i], shape)
        ok[j] = not np.any(z[lst][inw] > z[i])
    tops = rest[ok]  # ascending = file order
    keep = _resolve_ties(x[tops], y[tops], z[tops], r[tops], shape)
    return tops[keep]


def smooth_chm(chm, size_px: int = 3, method: str = "median", sigma_px: float = 1.0) -> np.ndarray:
    """Smoothed CHM; NaN cells stay NaN and are left out of their neighbours' windows.

    ``mean``: the 3 x 3 mean of lidR's examples (``terra::focal(chm, w =
    matrix(1, 3, 3), fun = mean, na.rm = TRUE)``, ``R/algorithm-its.R``);
    ``median``: focal median over a ``size_px`` square; ``gaussian``: a
    ``size_px`` square Gaussian kernel of standard deviation ``sigma_px``,
    weights renormalised over valid cells; this stands for the Gaussian step
    of lidaRtRee's ``dem_filtering`` (which uses a recursive Deriche filter
    and by default a closing first; neither is reproduced here).  Cells
    beyond the array edge count as missing.
    """
    a = np.asarray(chm, dtype="float64")
    if size_px < 1 or size_px % 2 == 0:
        raise LidarError(f"smoothing size_px={size_px}: expected an odd number of cells >= 1")
    valid = np.isfinite(a)
    if size_px == 1:
        return a.copy()
    h = size_px // 2
    if method == "median":
        pad = np.pad(a, h, constant_values=np.nan)
        win = np.lib.stride_tricks.sliding_window_view(pad, (size_px, size_px))
        out = np.full(a.shape, np.nan)
        out[valid] = np.nanmedian(win[valid], axis=(-2, -1))
        return out
    if method == "mean":
        ker = np.ones((size_px, size_px))
    elif method == "gaussian":
        g = np.exp(-0.5 * (np.arange(-h, h + 1) / sigma_px) ** 2)
        ker = np.outer(g, g)
    else:
        raise LidarError(f"smoothing method {method!r}: expected 'median', 'mean' or 'gaussian'")
    num = ndimage.correlate(np.where(valid, a, 0.0), ker, mode="constant", cval=0.0)
    den = ndimage.correlate(valid.astype("float64"), ker, mode="constant", cval=0.0)
    return np.where(valid, num / np.where(den > 0, den, 1.0), np.nan)


def match_detected_to_field(det_xy, det_h, field_xy, field_h, max_dist_m: float = 3.0,
                            max_dh_rel: float = 0.2) -> pd.DataFrame:
    """One-to-one matches of detected tops to field trees, closest pair first.

    A pair qualifies when the horizontal distance is <= ``max_dist_m`` and
    |h_det - h_field| <= ``max_dh_rel`` * h_field.  Qualifying pairs are taken
    in increasing distance (ties: lower field index, then lower detection
    index) and kept when neither tree is matched yet (the greedy rule of
    Eysn et al. 2015, Forests 6:1721, section 2.4, with a height criterion).
    Returns det_index, field_index, dist_m, dh_m (detected - field).
    """
    det_xy, field_xy = np.asarray(det_xy, float).reshape(-1, 2), np.asarray(field_xy, float).reshape(-1, 2)
    det_h, field_h = np.asarray(det_h, float), np.asarray(field_h, float)
    cols = {"det_index": np.empty(0, np.int64), "field_index": np.empty(0, np.int64),
            "dist_m": np.empty(0), "dh_m": np.empty(0)}
    if len(det_xy) == 0 or len(field_xy) == 0:
        return pd.DataFrame(cols)
    pairs = cKDTree(field_xy).query_ball_point(det_xy, max_dist_m)
    di = np.repeat(np.arange(len(det_xy)), [len(p) for p in pairs])
    fi = np.fromiter((j for p in pairs for j in p), dtype=np.int64, count=di.size)
    d = np.hypot(*(det_xy[di] - field_xy[fi]).T)
    dh = det_h[di] - field_h[fi]
    ok = (d <= max_dist_m) & (np.abs(dh) <= max_dh_rel * field_h[fi])
    di, fi, d, dh = di[ok], fi[ok], d[ok], dh[ok]
    o = np.lexsort((di, fi, d))
    used_d, used_f, keep = set(), set(), []
    for k in o:
        if di[k] in used_d or fi[k] in used_f:
            continue
        used_d.add(di[k]), used_f.add(fi[k]), keep.append(k)
    keep = np.asarray(keep, dtype=np.int64)
    return pd.DataFrame({"det_index": di[keep], "field_index": fi[keep], "dist_m": d[keep], "dh_m": dh[keep]})


def _max_window_m(hmax_m: float | None, ws, hmin_m: float) -> float:
    """Largest window diameter any cell can get: a fixed window, the upper clip of ``[a, b, min, max]``, or,
    for a callable rule, its largest value over [hmin, the highest raw height] (a smoothed CHM stays within the
    raw range; ``hmax_m`` NaN or below hmin: no cell can be a top)."""
    if np.ndim(ws) == 0 and not callable(ws):
        return float(ws)
    if not callable(ws):
        return float(max(ws[2], ws[3]))
    if hmax_m is None or not np.isfinite(hmax_m) or hmax_m < hmin_m:
        return 0.0
    grid = np.r_[hmin_m, hmax_m, np.linspace(hmin_m, hmax_m, 1001)]
    return float(window_size(grid, ws).max())


def _tiles(n: int, step: int):
    return [(a, min(a + step, n)) for a in range(0, n, step)]


def _nanmax(a) -> float:
    a = np.asarray(a, dtype="float64")
    return float(np.nanmax(a)) if np.isfinite(a).any() else float("nan")


def iter_tree_tiles(read, shape_px, transform, ws, hmin_m: float = 2.0, tile_px: int = 1024,
                    buffer_px: int | None = None, smooth: dict | None = None, segmentation: str | None = "dalponte2016",
                    shape: str = "circular", hmax_m: float | None = None, **seg_kw):
    """Tree tops and crowns tile by tile, reading the CHM through ``read(r0, r1, c0, c1)`` (a float array of
    those rows and columns, NaN = no data), so memory is bounded by the tile and its buffer, not the raster.

    Pass 1: each tile core, with a buffer of the smoothing half-width plus the largest window radius (cells),
    yields the cells that have no higher cell in their window (this is local, hence exact); lidR's tie rule
    (first in row-major order wins) is then applied to all candidates at once, so ties across tile edges
    resolve as in one run.  A tree belongs to the tile whose core holds its top; trees are numbered in
    row-major order (lidR's order) and crown labels are tree_index + 1.  Pass 2: each tile core plus
    ``buffer_px`` is segmented with every tree top inside it as a seed and the crowns of the core's trees are
    kept.  Default buffer: smoothing half-width + window radius + 2 x max crown half-width + 2 cells, so every
    crown competing with a core crown grows in the window with its own competitors.  dalponte2016's
    competition can in principle chain further than that; the equality with untiled processing is tested
    (tests/test_trees_detect.py) rather than proven for pass 2.

    ``hmax_m``: the highest raw CHM value, for a callable ``ws`` (else one more pass reads it).

    Returns (tops, tiles): tops has tree_index, x, y, row, col, height_m (detection CHM) for every tree;
    tiles is a generator of (tree_index of the core's trees, window (r0, r1, c0, c1), the raw CHM of the
    window, the window's crown labels owned by the core's trees (0 elsewhere)).  Without segmentation the
    labels are all 0.
    """
    res = _check_grid(transform)
    nr, nc = shape_px
    sm = dict(smooth) if smooth else None
    s_r = (int(sm.get("size_px", 3)) // 2) if sm else 0
    tiles = [(r0, r1, c0, c1) for r0, r1 in _tiles(nr, tile_px) for c0, c1 in _tiles(nc, tile_px)]
    if callable(ws) and hmax_m is None:
        hmax_m = max((_nanmax(read(*t)) for t in tiles), default=float("nan"))
    k_ws = int(math.floor((_max_window_m(hmax_m, ws, hmin_m) / 2 + EPSILON) / res)) + 1
    max_cr_m = float(seg_kw.get("max_cr_m", 10.0))
    k_cr = int(math.ceil(max_cr_m / res))
    if buffer_px is None:
        buffer_px = s_r + k_ws + 2 * k_cr + 2
    b1 = s_r + k_ws

    def window(t, b):
        r0, r1, c0, c1 = t
        w = (max(r0 - b, 0), min(r1 + b, nr), max(c0 - b, 0), min(c1 + b, nc))
        raw = np.asarray(read(*w), dtype="float64")
        return w, raw, (smooth_chm(raw, **sm) if sm else raw)

    rows, cols, zs = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [np.zeros(0)]
    for t in tiles:
        w, _, a = window(t, b1)
        core = (t[0] - w[0], t[1] - w[0], t[2] - w[2], t[3] - w[2])
        rr, cc = lm_candidates(a, res, ws, hmin_m, shape, core=core)
        rows.append(rr + w[0]), cols.append(cc + w[2]), zs.append(a[rr, cc])
    tops = _tops_table(np.concatenate(rows), np.concatenate(cols), np.concatenate(zs), transform, ws, hmin_m, shape)
    tops.insert(0, "tree_index", np.arange(len(tops), dtype=np.int64))
    tr, tc = tops["row"].to_numpy(), tops["col"].to_numpy()

    def per_tile():
        for t in tiles:
            core_ids = np.flatnonzero((tr >= t[0]) & (tr < t[1]) & (tc >= t[2]) & (tc < t[3]))
            if core_ids.size == 0:
                continue
            w, raw, a = window(t, buffer_px)
            own = np.zeros(a.shape, np.int32)
            if segmentation is not None:
                inw = np.flatnonzero((tr >= w[0]) & (tr < w[1]) & (tc >= w[2]) & (tc < w[3]))
                lab = segment_crowns(a, np.c_[tr[inw] - w[0], tc[inw] - w[2]], method=segmentation, res_m=res,
                                     **seg_kw)
                gid = np.r_[0, inw + 1].astype(np.int32)[lab]
                own = np.where(np.isin(gid, core_ids + 1), gid, 0).astype(np.int32)
            yield core_ids, w, raw, own

    return tops, per_tile()


def detect_trees(chm, transform, ws, hmin_m: float = 2.0, tile_px: int = 1024, buffer_px: int | None = None,
                 smooth: dict | None = None, segmentation: str | None = "dalponte2016", shape: str = "circular",
                 **seg_kw):
    """Tree tops and crowns of an in-memory CHM, tile by tile (:func:`iter_tree_tiles`); the same trees and
    labels as one untiled run.

    ``smooth`` (e.g. ``{"size_px": 3, "method": "median"}``) goes to :func:`smooth_chm`; detection
    (:func:`local_maxima`) and segmentation (:func:`.crowns.segment_crowns`, keywords ``seg_kw``, ``res_m``
    set from the transform) run on the smoothed CHM.

    Returns (trees, labels): trees has tree_index, x, y, row, col, height_m
    (detection CHM), height_raw_m (input CHM), crown_area_m2,
    crown_diameter_m; labels is the int32 crown raster (0 = none).
    """
    chm = np.asarray(chm, dtype="float64")
    tops, tiles = iter_tree_tiles(lambda r0, r1, c0, c1: chm[r0:r1, c0:c1], chm.shape, transform, ws, hmin_m,
                                  tile_px, buffer_px, smooth, segmentation, shape, hmax_m=_nanmax(chm), **seg_kw)
    tops["height_raw_m"] = chm[tops["row"].to_numpy(), tops["col"].to_numpy()]
    labels = np.zeros(chm.shape, np.int32)
    for _, w, _, own in tiles:
        sub = labels[w[0]:w[1], w[2]:w[3]]
        sub[own > 0] = own[own > 0]
    ct = crown_table(labels, chm, transform)
    area = pd.Series(ct["crown_area_m2"].to_numpy(), index=ct["label"].to_numpy())
    tops["crown_area_m2"] = area.reindex(tops["tree_index"].to_numpy() + 1).fillna(0.0).to_numpy()
    tops["crown_diameter_m"] = 2.0 * np.sqrt(tops["crown_area_m2"] / np.pi)
    return tops, labels
