"""Canopy height models: highest return per cell (lidR ``p2r``) and pit-free (lidR ``pitfree``).

Pit-free CHM after Khosravipour et al. (2014), Photogramm. Eng. Remote Sens.
80(9):863-872, as lidR's ``pitfree(thresholds, max_edge)`` does it: of the
first returns, the highest per grid cell is kept; for each height threshold
those at or above it are triangulated (Delaunay); triangles with an edge
longer than ``max_edge[0]`` (threshold 0) or ``max_edge[1]`` (the others;
0 = keep all) are dropped; each TIN is sampled linearly at cell centres and
the CHM is the highest layer value per cell.
"""

from __future__ import annotations

import numpy as np
import startinpy

from .ground import spatial_order


def rasterize_tin(px, py, pz, triangles, x0: float, y0: float, res: float, shape: tuple[int, int]) -> np.ndarray:
    """Linear TIN values at the centres of a north-up grid window (top-left ``x0, y0``), NaN outside every triangle.

    Vectorised: each triangle is paired with the cell centres in its bounding
    box and tested with barycentric coordinates; a centre on a shared edge
    takes the larger value.
    """
    h, w = shape
    out = np.full(h * w, -np.inf)
    if len(triangles) == 0:
        return np.full(shape, np.nan)
    X, Y, Z = px[triangles], py[triangles], pz[triangles]
    c0 = np.maximum(np.ceil((X.min(1) - x0) / res - 0.5), 0).astype(np.int64)
    c1 = np.minimum(np.floor((X.max(1) - x0) / res - 0.5), w - 1).astype(np.int64)
    r0 = np.maximum(np.ceil((y0 - Y.max(1)) / res - 0.5), 0).astype(np.int64)
    r1 = np.minimum(np.floor((y0 - Y.min(1)) / res - 0.5), h - 1).astype(np.int64)
    nc, nr = np.maximum(c1 - c0 + 1, 0), np.maximum(r1 - r0 + 1, 0)
    count = nc * nr
    tid = np.repeat(np.arange(len(triangles)), count)
    if tid.size == 0:
        return np.full(shape, np.nan)
    k = np.arange(tid.size) - np.repeat(np.cumsum(count) - count, count)
    rr, cc = r0[tid] + k // nc[tid], c0[tid] + k % nc[tid]
    cx, cy = x0 + (cc + 0.5) * res, y0 - (rr + 0.5) * res
    x1, x2, x3 = X[tid, 0], X[tid, 1], X[tid, 2]
    y1, y2, y3 = Y[tid, 0], Y[tid, 1], Y[tid, 2]
    det = (y2 - y3) * (x1 - x3) + (x3 - x2) * (y1 - y3)
    with np.errstate(divide="ignore", invalid="ignore"):
        l1 = ((y2 - y3) * (cx - x3) + (x3 - x2) * (cy - y3)) / det
        l2 = ((y3 - y1) * (cx - x3) + (x1 - x3) * (cy - y3)) / det
    l3 = 1.0 - l1 - l2
    eps = -1e-9
    inside = (l1 >= eps) & (l2 >= eps) & (l3 >= eps) & (det != 0)
    z = l1 * Z[tid, 0] + l2 * Z[tid, 1] + l3 * Z[tid, 2]
    np.maximum.at(out, (rr * w + cc)[inside], z[inside])
    return np.where(np.isfinite(out), out, np.nan).reshape(shape)


def _tin(x, y, z):
    """Triangulation of (x, y, z) in spatial order: (points, triangles) with the infinite vertex at index 0."""
    o = spatial_order(x, y)
    dt = startinpy.DT()
    dt.duplicates_handling = "Highest"
    dt.insert(np.c_[x[o], y[o], z[o]])
    return dt.points, dt.triangles


def _long_edges(p, tri, max_edge: float) -> np.ndarray:
    a, b, c = p[tri[:, 0], :2], p[tri[:, 1], :2], p[tri[:, 2], :2]
    longest = np.max(np.stack([np.hypot(*(a - b).T), np.hypot(*(b - c).T), np.hypot(*(c - a).T)]), axis=0)
    return longest > max_edge


def highest_per_cell(x, y, h, x0: float, y0: float, res: float) -> np.ndarray:
    """Indices of the highest point in each cell of the grid through (x0, y0) with cell size ``res``
    (cells continue beyond any window, so buffer points keep their own cells); of equally high
    points the first in file order, as R's ``which.max`` in lidR."""
    col = np.floor((x - x0) / res).astype(np.int64)
    row = np.floor((y0 - y) / res).astype(np.int64)
    key = (row - row.min()) * (int(col.max() - col.min()) + 1) + (col - col.min())
    order = np.lexsort((-h, key))  # stable: ties keep file order
    first = np.r_[True, key[order][1:] != key[order][:-1]]
    return order[first]


def pitfree_chm(x, y, h, x0: float, y0: float, res: float, shape: tuple[int, int],
                thresholds=(0.0, 2.0, 5.0, 10.0, 15.0), max_edge=(0.0, 1.0)) -> np.ndarray:
    """Pit-free CHM (m) from first returns (x, y, height) on a grid window (top-left ``x0, y0``);
    NaN where no layer covers a cell."""
    x, y, h = (np.asarray(a, dtype="float64") for a in (x, y, h))
    chm = np.full(shape, -np.inf)
    if x.size:
        keep = highest_per_cell(x, y, h, x0, y0, res)
        x, y, h = x[keep], y[keep], h[keep]
    # centred coordinates keep the orientation tests well conditioned
    ox, oy = (float(np.floor(x.min())), float(np.floor(y.min()))) if x.size else (0.0, 0.0)
    for t in thresholds:
        sel = h >= t
        if sel.sum() < 3:
            continue
        p, tri = _tin(x[sel] - ox, y[sel] - oy, h[sel])
        edge = max_edge[0] if t == 0 else max_edge[1]
        if edge > 0 and len(tri):
            tri = tri[~_long_edges(p, tri, edge)]
        layer = rasterize_tin(p[:, 0], p[:, 1], p[:, 2], tri, x0 - ox, y0 - oy, res, shape)
        chm = np.fmax(chm, np.where(np.isfinite(layer), layer, -np.inf))
    return np.where(np.isfinite(chm), chm, np.nan)
