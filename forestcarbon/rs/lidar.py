"""Airborne LiDAR (LAS/LAZ) to height-normalised points and grid metrics.

Tiles are indexed by their header bounds without reading points.  Each tile
is processed with a buffer of points from its neighbours, and each target
grid cell is owned by the one tile that holds its centre, so the metrics do
not depend on how the flight block was cut into tiles.

Metric definitions follow the R package lidR (``stdmetrics_z``), computed
over *all* returns of a cell after height normalisation:

- ``zmax``, ``zmean``: maximum and mean height (m);
- ``zsd``: standard deviation with n-1 in the denominator (m);
- ``zq50``, ``zq95``: type-7 quantiles (R's default, numpy's ``linear``) (m);
- ``pzabove2``: 100 x #(z > 2 m) / n, percent of all returns above 2 m;
- ``n_points``: returns in the cell.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import dask
import laspy
import numpy as np
from odc.geo.geobox import GeoBox
from pyproj import CRS, Transformer
from scipy.interpolate import LinearNDInterpolator, NearestNDInterpolator
from scipy.spatial import Delaunay, QhullError

from ..errors import CRSError, InputNotFoundError, LidarError

log = logging.getLogger(__name__)

METRICS = ("zmax", "zmean", "zsd", "zq50", "zq95", "pzabove2", "n_points")
METRIC_UNITS = {"zmax": "m", "zmean": "m", "zsd": "m", "zq50": "m", "zq95": "m", "pzabove2": "%", "n_points": "count"}


@dataclass(frozen=True)
class TileInfo:
    path: Path
    bounds: tuple[float, float, float, float]  # in the tile's own CRS
    crs: CRS
    point_count: int


def index_tiles(paths, default_crs: str | None = None) -> list[TileInfo]:
    """Read only the headers of LAS/LAZ files: bounds, CRS and point counts."""
    tiles = []
    for p in paths:
        p = Path(p)
        try:
            with laspy.open(p) as f:
                h = f.header
                crs = h.parse_crs()
                bounds = (h.mins[0], h.mins[1], h.maxs[0], h.maxs[1])
                n = h.point_count
        except Exception as err:
            raise LidarError(f"{p}: not a readable LAS/LAZ file ({type(err).__name__}: {err})") from None
        if crs is None:
            if default_crs is None:
                raise CRSError(f"{p}: LAS header has no CRS; set inputs.lidar_crs in the configuration")
            crs = CRS.from_user_input(default_crs)
        tiles.append(TileInfo(p, tuple(float(v) for v in bounds), crs, int(n)))
    return tiles


def find_tiles(folder: Path | str) -> list[Path]:
    folder = Path(folder)
    if not folder.exists():
        raise InputNotFoundError(f"LiDAR folder not found: {folder}")
    paths = sorted([*folder.rglob("*.laz"), *folder.rglob("*.las"), *folder.rglob("*.LAZ"), *folder.rglob("*.LAS")])
    if not paths:
        raise LidarError(f"{folder}: no .las/.laz files")
    return paths


def read_points(path: Path, bounds=None, chunk: int = 2_000_000, to_crs: CRS | None = None, src_crs: CRS | None = None):
    """x, y, z (float64) and classification of the points of ``path`` within ``bounds``.

    ``bounds`` (xmin, ymin, xmax, ymax) are in the output CRS; points are
    streamed in chunks so only the selected ones are kept.
    """
    tf = None
    if to_crs is not None and src_crs is not None and not CRS(src_crs).equals(to_crs):
        tf = Transformer.from_crs(src_crs, to_crs, always_xy=True)
    xs, ys, zs, cs = [], [], [], []
    try:
        with laspy.open(path) as f:
            for pts in f.chunk_iterator(chunk):
                x, y, z = np.asarray(pts.x), np.asarray(pts.y), np.asarray(pts.z)
                if tf is not None:
                    x, y = tf.transform(x, y)
                if bounds is not None:
                    keep = (x >= bounds[0]) & (x < bounds[2]) & (y >= bounds[1]) & (y < bounds[3])
                    x, y, z = x[keep], y[keep], z[keep]
                    c = np.asarray(pts.classification)[keep]
                else:
                    c = np.asarray(pts.classification)
                xs.append(x), ys.append(y), zs.append(z), cs.append(c)
    except Exception as err:
        raise LidarError(f"{path}: failed while reading points ({type(err).__name__}: {err})") from None
    cat = (lambda a, t: np.concatenate(a).astype(t) if a else np.empty(0, t))
    return cat(xs, "float64"), cat(ys, "float64"), cat(zs, "float64"), cat(cs, "uint8")


def _spatial_order(x, y, band_m: float = 5.0):
    """Permutation visiting points in 5 m row bands, west to east."""
    return np.lexsort((x, np.floor(y / band_m)))


def ground_surface(gx, gy, gz):
    """Interpolator of ground elevation: Delaunay linear inside the hull, nearest outside."""
    if gx.size < 3:
        raise LidarError("fewer than 3 ground points: cannot build a terrain model")
    o = _spatial_order(gx, gy)
    pts = np.c_[gx[o], gy[o]]
    nearest = NearestNDInterpolator(pts, gz[o])
    try:
        linear = LinearNDInterpolator(Delaunay(pts), gz[o])
    except QhullError:
        return nearest

    def surface(x, y):
        # queries in spatial order let Qhull's simplex walk start next door (~20x faster)
        q = _spatial_order(x, y)
        z = np.empty(x.shape, dtype="float64")
        z[q] = linear(x[q], y[q])
        bad = ~np.isfinite(z)
        if bad.any():
            z[bad] = nearest(x[bad], y[bad])
        return z

    return surface


def normalize_heights(x, y, z, cls, ground_classes=(2,)):
    """Height above ground (m) of every point: z minus the ground TIN at (x, y)."""
    g = np.isin(cls, ground_classes)
    surface = ground_surface(x[g], y[g], z[g])
    return z - surface(x, y)


def cell_metrics(cell: np.ndarray, h: np.ndarray, n_cells: int) -> dict[str, np.ndarray]:
    """lidR ``stdmetrics_z``-style metrics per cell index (0..n_cells-1); NaN where empty."""
    order = np.lexsort((h, cell))
    c, z = cell[order], h[order]
    n = np.bincount(c, minlength=n_cells)
    out = {k: np.full(n_cells, np.nan) for k in METRICS}
    has = n > 0
    out["n_points"] = n.astype("float64")
    if not has.any():
        return out
    start = np.concatenate([[0], np.cumsum(n)[:-1]])
    s = np.bincount(c, weights=z, minlength=n_cells)
    ss = np.bincount(c, weights=z * z, minlength=n_cells)
    mean = np.divide(s, n, out=np.full(n_cells, np.nan), where=has)
    out["zmean"] = mean
    out["zmax"] = np.where(has, z[np.maximum(start + n - 1, 0)], np.nan)
    var = np.divide(ss - n * mean**2, n - 1, out=np.full(n_cells, np.nan), where=n > 1)
    out["zsd"] = np.sqrt(np.maximum(var, 0))
    for q, key in ((0.5, "zq50"), (0.95, "zq95")):
        pos = q * (n - 1)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, n - 1)
        frac = pos - lo
        zl = z[np.minimum(start + lo, z.size - 1)]
        zh = z[np.minimum(start + hi, z.size - 1)]
        out[key] = np.where(has, zl + frac * (zh - zl), np.nan)
    above = np.bincount(c, weights=(z > 2.0).astype(float), minlength=n_cells)
    out["pzabove2"] = np.where(has, 100.0 * above / np.maximum(n, 1), np.nan)
    return out


def _cells_of(x, y, gbox: GeoBox):
    """Row/col of the target-grid cell holding each point (-1 outside)."""
    inv = ~gbox.affine
    col, row = inv @ (x, y)
    col, row = np.floor(col).astype(int), np.floor(row).astype(int)
    ny, nx = gbox.shape
    inside = (row >= 0) & (row < ny) & (col >= 0) & (col < nx)
    return row, col, inside


def _tile_metrics(i, tiles, tb, gbox, grid_crs, *, normalized, ground_classes, buffer_m, min_height_m, max_height_m):
    """Metrics of the cells owned by tile ``i``: (rows, cols, metrics, dropped outliers)."""
    nx = gbox.shape[1]
    own = tb[i]
    buf = (own[0] - buffer_m, own[1] - buffer_m, own[2] + buffer_m, own[3] + buffer_m)
    near = [j for j in range(len(tiles)) if _intersects(tb[j], buf)]
    parts = [read_points(tiles[j].path, buf, to_crs=grid_crs, src_crs=tiles[j].crs) for j in near]
    x, y, z, cls = (np.concatenate(a) for a in zip(*parts))
    empty = (np.empty(0, int), np.empty(0, int), {k: np.empty(0) for k in METRICS}, 0)
    if x.size == 0:
        return empty
    if normalized:
        h = z
    else:
        try:
            h = normalize_heights(x, y, z, cls, ground_classes)
        except LidarError as err:
            raise LidarError(f"{tiles[i].path}: {err} (ground classes {list(ground_classes)})") from None
    ok = (h >= min_height_m) & (h <= max_height_m)
    row, col, inside = _cells_of(x, y, gbox)
    cx = gbox.affine.c + (col + 0.5) * gbox.affine.a
    cy = gbox.affine.f + (row + 0.5) * gbox.affine.e
    mine = inside & (_owner(cx, cy, [tb[j] for j in near]) == near.index(i))
    sel = mine & ok
    flat = row[sel] * nx + col[sel]
    uniq, inv = np.unique(flat, return_inverse=True)
    m = cell_metrics(inv, h[sel], uniq.size)
    rr, cc = np.divmod(uniq, nx)
    return rr, cc, m, int((mine & ~ok).sum())


def _owner(cx, cy, bounds: list) -> np.ndarray:
    """Index of the tile each cell centre belongs to: the one holding it, else the
    nearest (cells at the outer edge of a block); ties go to the lower index."""
    d = np.stack([np.hypot(np.maximum(np.maximum(b[0] - cx, cx - b[2]), 0),
                           np.maximum(np.maximum(b[1] - cy, cy - b[3]), 0)) for b in bounds])
    inside = np.stack([(cx >= b[0]) & (cx < b[2]) & (cy >= b[1]) & (cy < b[3]) for b in bounds])
    d = np.where(inside, -1.0, d)  # half-open containment decides shared edges
    return np.argmin(d, axis=0)


def _intersects(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def grid_metrics(tiles: list[TileInfo], gbox: GeoBox, *, normalized: bool = False, ground_classes=(2,),
                 buffer_m: float = 20.0, min_height_m: float = -2.0, max_height_m: float = 80.0) -> dict[str, np.ndarray]:
    """Metrics of all tiles on ``gbox`` (dict of 2-D float32 arrays, NaN where no returns)."""
    grid_crs = CRS.from_user_input(gbox.crs.to_wkt())
    ny, nx = gbox.shape
    out = {k: np.full((ny, nx), np.nan, dtype="float32") for k in METRICS}
    tb = []  # tile bounds in grid CRS
    for t in tiles:
        if t.crs.equals(grid_crs):
            tb.append(t.bounds)
        else:
            tb.append(Transformer.from_crs(t.crs, grid_crs, always_xy=True).transform_bounds(*t.bounds))
    buffer_m = max(buffer_m, float(abs(gbox.affine.a)) * 1.5)  # every point of an owned cell must be read
    opts = dict(normalized=normalized, ground_classes=tuple(ground_classes), buffer_m=buffer_m,
                min_height_m=min_height_m, max_height_m=max_height_m)
    # one task per tile on the current Dask scheduler; each task opens its own files
    tasks = [dask.delayed(_tile_metrics)(i, tiles, tb, gbox, grid_crs, **opts) for i in range(len(tiles))]
    dropped = 0
    for rr, cc, m, d in dask.compute(*tasks):
        dropped += d
        for k in METRICS:
            out[k][rr, cc] = m[k]
    if dropped:
        log.warning("LiDAR: dropped %d returns with heights outside [%g, %g] m (outlier filter)", dropped, min_height_m, max_height_m)
    return out
