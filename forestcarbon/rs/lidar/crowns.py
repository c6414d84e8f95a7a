"""Tree crowns on a CHM: lidR's ``dalponte2016`` region growing, crown areas, polygons and point metrics.

A label raster is int32: 0 = no crown, ``i + 1`` = crown of tree ``i``.
Source: lidR (r-lidar/lidR, commit d185a7eb) ``src/C_dalponte2016.cpp``
(``C_dalponte2016``) and ``R/algorithm-its.R`` (``dalponte2016``); Dalponte,
M. & Coomes, D. A. (2016) Methods Ecol. Evol. 7:1236-1245.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pandas as pd
from rasterio import features
from shapely.geometry import shape as to_shape
from shapely.ops import unary_union

from ...errors import LidarError

HAS_SKIMAGE = importlib.util.find_spec("skimage") is not None


def segment_crowns(chm, tops_rowcol, method: str = "dalponte2016", th_tree: float = 2.0, th_seed: float = 0.45,
                   th_cr: float = 0.55, max_cr_m: float = 10.0, *, res_m: float) -> np.ndarray:
    """Crown labels (int32; tree ``i`` of ``tops_rowcol`` gets ``i + 1``) grown from the tops over the CHM.

    ``dalponte2016`` transcribes lidR's ``C_dalponte2016`` exactly; see
    :func:`dalponte2016`.  ``max_cr_m`` is converted to lidR's ``max_cr``
    in cells (``max_cr_m / res_m``).  ``watershed`` (marker-controlled
    watershed on -CHM within CHM >= th_tree) needs scikit-image, which is not
    installed: it raises.
    """
    if method == "dalponte2016":
        return dalponte2016(chm, tops_rowcol, th_tree, th_seed, th_cr, max_cr_m / res_m)
    if method == "watershed":
        if not HAS_SKIMAGE:
            raise LidarError("crown segmentation 'watershed' needs scikit-image, which is not installed")
        from skimage.segmentation import watershed  # pragma: no cover - not installed here
        a = np.asarray(chm, dtype="float64")
        markers = np.zeros(a.shape, np.int32)
        rc = np.asarray(tops_rowcol, dtype=np.int64).reshape(-1, 2)
        markers[rc[:, 0], rc[:, 1]] = np.arange(1, len(rc) + 1)
        mask = np.nan_to_num(a, nan=-np.inf) >= th_tree
        return watershed(-np.nan_to_num(a, nan=-np.inf), markers, mask=mask).astype(np.int32)
    raise LidarError(f"crown segmentation method {method!r}: expected 'dalponte2016' or 'watershed'")


def _to_lidr(a):
    """lidR's matrix of a north-up array: ``M[i, j]`` = column i (west to east), row from the south j
    (``raster_as_matrix``, ``R/utils_raster.R``: ``t(apply(as.matrix(r), 2, rev))``)."""
    return a[::-1, :].T


def dalponte2016(chm, tops_rowcol, th_tree: float = 2.0, th_seed: float = 0.45, th_cr: float = 0.55,
                 max_cr_px: float = 10.0) -> np.ndarray:
    """lidR ``C_dalponte2016`` (``src/C_dalponte2016.cpp``) on a north-up array, vectorised but step-for-step equal.

    lidR's rule, on its matrix (column index x from the west, y from the
    south; NA cells = -Inf): seeds are labelled; then sweeps repeat until
    nothing grows.  A sweep visits the labelled cells with 1 <= x <= nx-2 and
    1 <= y <= ny-2 (the image border never grows) x-major, y inner; for each
    it takes the seed height ``hSeed`` and the crown's current mean height
    (sum / count, read once per visited cell) and tries the 4 neighbours in
    the order (x-1), (y-1), (y+1), (x+1).  A neighbour of height z joins when
    z > th_tree, z > hSeed*th_seed, z > mean*th_cr, z <= hSeed + hSeed*0.05,
    |dx| < max_cr and |dy| < max_cr from the seed (in cells; lidR calls
    max_cr a diameter but it bounds the half-width) and it was unlabelled at
    the start of the sweep.  A joining cell adds to its crown's sum and count
    at once (so the same cell can be counted twice, or by two crowns, within
    a sweep); of several crowns taking a cell in one sweep, the last visited
    keeps it.  Labels of the sweep apply at its end.

    Vectorised: each sweep handles the k-th frontier cell of every crown at
    once (k = 0, 1, ...), which keeps each crown's order of sum/count updates.
    """
    img = _to_lidr(np.where(np.isfinite(chm), np.asarray(chm, dtype="float64"), -np.inf))
    nx, ny = img.shape
    region = np.zeros((nx, ny), np.int32)
    rc = np.asarray(tops_rowcol, dtype=np.int64).reshape(-1, 2)
    ntree = len(rc)
    if ntree == 0:
        return np.zeros(np.shape(chm), np.int32)
    sx, sy = rc[:, 1], (np.shape(chm)[0] - 1) - rc[:, 0]
    if sx.min() < 0 or sx.max() >= nx or sy.min() < 0 or sy.max() >= ny:
        raise LidarError("crown seeds: a tree top lies outside the CHM")
    region[sx, sy] = np.arange(1, ntree + 1, dtype=np.int32)  # a later seed on the same cell overwrites
    lab = region[sx, sy]
    present = lab == np.arange(1, ntree + 1)
    hseed = np.zeros(ntree + 1)
    seedx = np.zeros(ntree + 1, np.int64)
    seedy = np.zeros(ntree + 1, np.int64)
    hseed[1:], seedx[1:], seedy[1:] = img[sx, sy], sx, sy
    ssum = np.zeros(ntree + 1)
    cnt = np.zeros(ntree + 1)
    ssum[1:][present], cnt[1:][present] = img[sx, sy][present], 1
    dxs = np.array([-1, 0, 0, 1])
    dys = np.array([0, -1, 1, 0])
    grown = True
    while grown:
        grown = False
        inner = region[1:-1, 1:-1]
        free = region == 0
        front = (inner != 0) & (free[:-2, 1:-1] | free[1:-1, :-2] | free[1:-1, 2:] | free[2:, 1:-1])
        fx, fy = np.nonzero(front)  # x-major, y inner: lidR's visiting order
        if fx.size == 0:
            break
        fx, fy = fx + 1, fy + 1
        fid = region[fx, fy]
        scan = np.arange(fx.size)
        o = np.lexsort((scan, fid))
        fx, fy, fid, scan = fx[o], fy[o], fid[o], scan[o]
        first = np.r_[True, fid[1:] != fid[:-1]]
        gstart = np.flatnonzero(first)
        rank = np.arange(fid.size) - np.repeat(gstart, np.diff(np.r_[gstart, fid.size]))
        # static part of the test, per (frontier cell, neighbour)
        nbx, nby = fx[:, None] + dxs, fy[:, None] + dys
        z = img[nbx, nby]
        hs = hseed[fid][:, None]
        static = ((z > th_tree) & (z > hs * th_seed) & (z <= hs + hs * 0.05)
                  & (np.abs(seedx[fid][:, None] - nbx) < max_cr_px) & (np.abs(seedy[fid][:, None] - nby) < max_cr_px)
                  & (region[nbx, nby] == 0))
        accept = np.zeros(static.shape, dtype=bool)
        for k in range(int(rank.max()) + 1):
            sel = np.flatnonzero((rank == k) & static.any(axis=1))
            if sel.size == 0:
                continue
            ids = fid[sel]
            mean = ssum[ids] / cnt[ids]
            acc = static[sel] & (z[sel] > (mean * th_cr)[:, None])
            accept[sel] = acc
            ssum[ids] += np.where(acc, z[sel], 0.0).sum(axis=1)
            cnt[ids] += acc.sum(axis=1)
        if not accept.any():
            break
        grown = True
        ci, di = np.nonzero(accept)
        order_key = scan[ci] * 4 + di  # global visiting order of each acceptance
        cell = nbx[ci, di] * ny + nby[ci, di]
        o = np.argsort(order_key)
        cell, lab_new = cell[o], fid[ci][o]
        srt = np.argsort(cell, kind="stable")
        cell_s, lab_s = cell[srt], lab_new[srt]
        last = np.r_[cell_s[1:] != cell_s[:-1], True]
        region.ravel()[cell_s[last]] = lab_s[last]
    return region.T[::-1, :].copy()


def crown_table(labels, chm, transform) -> pd.DataFrame:
    """Per crown label: n_cells, crown_area_m2 (cells x cell area), crown_diameter_m (equal-area circle,
    2 sqrt(A / pi)) and max_height_m (highest CHM cell of the crown)."""
    lab = np.asarray(labels)
    res = float(transform.a)
    ids, n = np.unique(lab[lab > 0], return_counts=True)
    a = n * res * res
    hmax = np.full(ids.size, np.nan)
    if ids.size:
        c = np.where(np.isfinite(chm), chm, -np.inf)[lab > 0]
        m = np.full(int(ids.max()) + 1, -np.inf)
        np.maximum.at(m, lab[lab > 0], c)
        hmax = m[ids]
    return pd.DataFrame({"label": ids.astype(np.int64), "n_cells": n, "crown_area_m2": a,
                         "crown_diameter_m": 2.0 * np.sqrt(a / np.pi), "max_height_m": hmax})


def crown_polygons(labels, transform, crs=None):
    """Crown outlines (one shapely geometry per label, union of its cells' polygons) from
    ``rasterio.features.shapes``; a GeoDataFrame with label and geometry."""
    import geopandas as gpd

    lab = np.asarray(labels, dtype=np.int32)
    parts: dict[int, list] = {}
    for geom, val in features.shapes(lab, mask=lab > 0, transform=transform, connectivity=4):
        parts.setdefault(int(val), []).append(to_shape(geom))
    ids = sorted(parts)
    geoms = [parts[i][0] if len(parts[i]) == 1 else unary_union(parts[i]) for i in ids]
    return gpd.GeoDataFrame({"label": np.asarray(ids, dtype=np.int64)}, geometry=geoms, crs=crs)


def crown_point_metrics(labels, transform, x, y, z) -> pd.DataFrame:
    """Per crown label, of the points falling in its cells: n_points, z_max_m, z_p95_m (type-7 quantile,
    numpy's default linear interpolation), z_mean_m.  Points outside the raster or in label 0 are ignored."""
    lab = np.asarray(labels)
    x, y, z = (np.asarray(a, dtype="float64") for a in (x, y, z))
    inv = ~transform
    col, row = inv * (x, y)
    col, row = np.floor(col).astype(np.int64), np.floor(row).astype(np.int64)
    inside = (row >= 0) & (row < lab.shape[0]) & (col >= 0) & (col < lab.shape[1])
    lp = np.zeros(z.size, dtype=np.int64)
    lp[inside] = lab[row[inside], col[inside]]
    keep = lp > 0
    lp, zp = lp[keep], z[keep]
    o = np.lexsort((zp, lp))
    lp, zp = lp[o], zp[o]
    if lp.size == 0:
        return pd.DataFrame({"label": np.empty(0, np.int64), "n_points": np.empty(0, np.int64),
                             "z_max_m": np.empty(0), "z_p95_m": np.empty(0), "z_mean_m": np.empty(0)})
    start = np.flatnonzero(np.r_[True, lp[1:] != lp[:-1]])
    n = np.diff(np.r_[start, lp.size])
    hq = (n - 1) * 0.95
    lo = np.floor(hq).astype(np.int64)
    hi = np.minimum(lo + 1, n - 1)
    frac = hq - lo
    p95 = zp[start + lo] + frac * (zp[start + hi] - zp[start + lo])
    return pd.DataFrame({"label": lp[start], "n_points": n, "z_max_m": zp[start + n - 1], "z_p95_m": p95,
                         "z_mean_m": np.add.reduceat(zp, start) / n})
