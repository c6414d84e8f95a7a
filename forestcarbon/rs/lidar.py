"""Airborne LiDAR (LAS/LAZ) to height-normalised points and grid metrics.

Tiles are indexed by their header bounds without reading points.  Each tile
is processed with a buffer of points from its neighbours, and each target
grid cell is owned by the one tile that holds its centre, so the metrics do
not depend on how the flight block was cut into tiles.

Metric definitions follow the R package lidR (``stdmetrics_z(z, dz=1, th=2)``),
computed over *all* returns of a cell after height normalisation (see
:func:`cell_metrics`): zmax, zmean, zsd, zskew, zkurt, zentropy, pzabovezmean,
pzabove2, zq5..zq95, zpcum1..zpcum9; plus ``n_points``, returns in the cell.
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

QUANTILES = tuple(range(5, 100, 5))
METRICS = (
    "zmax", "zmean", "zsd", "zskew", "zkurt", "zentropy", "pzabovezmean", "pzabove2",
    *(f"zq{q}" for q in QUANTILES), *(f"zpcum{i}" for i in range(1, 10)), "n_points",
)
METRIC_UNITS = {k: "m" for k in ("zmax", "zmean", "zsd", *(f"zq{q}" for q in QUANTILES))} | {
    "zskew": "1", "zkurt": "1", "zentropy": "1", "pzabovezmean": "%", "pzabove2": "%", "n_points": "count",
} | {f"zpcum{i}": "%" for i in range(1, 10)}


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
    z_to_m = vertical_unit_factor(src_crs)
    xs, ys, zs, cs = [], [], [], []
    try:
        with laspy.open(path) as f:
            for pts in f.chunk_iterator(chunk):
                x, y, z = np.asarray(pts.x), np.asarray(pts.y), np.asarray(pts.z) * z_to_m
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


def looks_normalized(z: np.ndarray, cls: np.ndarray, ground_classes=(2,), tol_m: float = 0.3) -> bool:
    """True when the ground returns already sit at height 0 (99 % within ``tol_m``).

    Without ground returns nothing can be told: False, so that normalisation
    then reports the missing ground instead of guessing.
    """
    g = np.isin(cls, ground_classes)
    if g.sum() < 3:
        return False
    return bool(np.quantile(np.abs(z[g]), 0.99) < tol_m)


def vertical_unit_factor(crs) -> float:
    """Metres per unit of the heights: the vertical CRS's unit if the CRS is compound,
    else the horizontal unit of a projected CRS (US survey feet in many US state planes)."""
    if crs is None:
        return 1.0
    crs = CRS(crs)
    subs = crs.sub_crs_list
    if subs and len(subs) > 1 and subs[1].axis_info:
        return float(subs[1].axis_info[0].unit_conversion_factor)
    if crs.is_projected and crs.axis_info:
        return float(crs.axis_info[0].unit_conversion_factor)
    return 1.0


def ground_surface(gx, gy, gz):
    """Interpolator of ground elevation: Delaunay linear inside the hull, nearest outside."""
    if gx.size < 3:
        raise LidarError("fewer than 3 ground points: cannot build a terrain model")
    # projected coordinates are large (1e5-1e6 m): centring them keeps Qhull from merging
    # nearly coplanar facets (it dropped ~1 % of triangles on a test tile) and is ~30 % faster
    ox, oy = float(np.floor(gx.min())), float(np.floor(gy.min()))
    o = _spatial_order(gx, gy)
    pts = np.c_[gx[o] - ox, gy[o] - oy]
    nearest = NearestNDInterpolator(pts, gz[o])
    try:
        linear = LinearNDInterpolator(Delaunay(pts), gz[o])
    except QhullError:
        return lambda x, y: nearest(x - ox, y - oy)

    def surface(x, y):
        # queries in spatial order let Qhull's simplex walk start next door (~20x faster)
        q = _spatial_order(x, y)
        z = np.empty(x.shape, dtype="float64")
        z[q] = linear(x[q] - ox, y[q] - oy)
        bad = ~np.isfinite(z)
        if bad.any():
            z[bad] = nearest(x[bad] - ox, y[bad] - oy)
        return z

    return surface


def normalize_heights(x, y, z, cls, ground_classes=(2,)):
    """Height above ground (m) of every point: z minus the ground TIN at (x, y)."""
    g = np.isin(cls, ground_classes)
    surface = ground_surface(x[g], y[g], z[g])
    return z - surface(x, y)


def cell_metrics(cell: np.ndarray, h: np.ndarray, n_cells: int) -> dict[str, np.ndarray]:
    """lidR ``stdmetrics_z(z, dz = 1, th = 2, zmin = 0)`` per cell index (0..n_cells-1); NaN where empty.

    Definitions as in lidR (R/metrics_stdmetrics.R): zsd with n−1; zskew =
    m3/m2^1.5 and zkurt = n·Σd⁴/(Σd²)² (plain, not excess); zq* type-7
    quantiles; pzabove2 and pzabovezmean = 100·#(z > x)/n; zpcum1-9 the
    cumulative % of returns above 0 in ten equal layers of [0, zmax];
    zentropy the normalised Shannon index of 1 m layers (NA when zmax < 2 m
    or any z < 0).
    """
    order = np.lexsort((h, cell))
    c, z = cell[order], h[order]
    n = np.bincount(c, minlength=n_cells)
    out = {k: np.full(n_cells, np.nan) for k in METRICS}
    has = n > 0
    out["n_points"] = n.astype("float64")
    if not has.any():
        return out
    start = np.concatenate([[0], np.cumsum(n)[:-1]])
    nf = np.where(has, n, 1).astype("float64")
    mean = np.bincount(c, weights=z, minlength=n_cells) / nf
    zmax = np.where(has, z[np.maximum(start + n - 1, 0)], np.nan)
    zmin = np.where(has, z[np.minimum(start, z.size - 1)], np.nan)
    d = z - mean[c]
    m2 = np.bincount(c, weights=d**2, minlength=n_cells)
    m3 = np.bincount(c, weights=d**3, minlength=n_cells)
    m4 = np.bincount(c, weights=d**4, minlength=n_cells)
    with np.errstate(invalid="ignore", divide="ignore"):
        out["zmax"], out["zmean"] = zmax, np.where(has, mean, np.nan)
        out["zsd"] = np.where(n > 1, np.sqrt(m2 / np.maximum(n - 1, 1)), np.nan)
        out["zskew"] = np.where(has, (m3 / nf) / (m2 / nf) ** 1.5, np.nan)
        out["zkurt"] = np.where(has, nf * m4 / m2**2, np.nan)
        out["pzabove2"] = np.where(has, 100.0 * np.bincount(c, weights=z > 2.0, minlength=n_cells) / nf, np.nan)
        out["pzabovezmean"] = np.where(has, 100.0 * np.bincount(c, weights=z > mean[c], minlength=n_cells) / nf, np.nan)
    for q in QUANTILES:
        pos = q / 100 * (n - 1)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, np.maximum(n - 1, 0))
        zl = z[np.minimum(start + lo, z.size - 1)]
        zh = z[np.minimum(start + hi, z.size - 1)]
        out[f"zq{q}"] = np.where(has, zl + (pos - lo) * (zh - zl), np.nan)
    _zpcum(out, c, z, zmax, has, n_cells)
    _zentropy(out, c, z, zmax, zmin, has, n_cells)
    return out


def _zpcum(out, c, z, zmax, has, n_cells):
    """zpcum1..9: breaks = 0 + (0:10)·zmax/10 (R's seq); layer k = findInterval(z, breaks) for z > 0;
    only layers 1..10 are tabulated (lidR fast_table), so returns at exactly the top break drop out."""
    step = zmax / 10.0
    pos = (z > 0) & (zmax[c] > 0)
    k = np.zeros(z.size, dtype=int)
    for j in range(11):
        k += z >= j * step[c]
    ok = pos & (k >= 1) & (k <= 10)
    counts = np.zeros((n_cells, 10))
    np.add.at(counts, (c[ok], k[ok] - 1), 1.0)
    total = counts.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cum = np.cumsum(counts, axis=1) / total[:, None] * 100.0
    for i in range(1, 10):
        col = np.where(zmax > 0, cum[:, i - 1], 0.0)
        out[f"zpcum{i}"] = np.where(has, col, np.nan)


def _zentropy(out, c, z, zmax, zmin, has, n_cells, by: float = 1.0):
    """Normalised Shannon entropy of 1 m layers from 0 to ceiling(zmax) (lidR ``entropy``)."""
    nb = np.where(has, np.ceil(np.nan_to_num(zmax) / by), 0).astype(int)  # layers per cell
    k = np.floor(z / by).astype(int) + 1  # findInterval on integer breaks, for z >= 0
    ok = (z >= 0) & (k <= nb[c])
    width = int(nb.max()) + 1 if nb.size else 1
    counts = np.zeros((n_cells, width))
    np.add.at(counts, (c[ok], k[ok] - 1), 1.0)
    p = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        s = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0.0), axis=1) / np.log(nb)
    valid = has & (zmax >= 2 * by) & (zmin >= 0)
    out["zentropy"] = np.where(valid, s, np.nan)


def _cells_of(x, y, gbox: GeoBox):
    """Row/col of the target-grid cell holding each point (-1 outside)."""
    inv = ~gbox.affine
    col, row = inv @ (x, y)
    col, row = np.floor(col).astype(int), np.floor(row).astype(int)
    ny, nx = gbox.shape
    inside = (row >= 0) & (row < ny) & (col >= 0) & (col < nx)
    return row, col, inside


def cell_max(cell: np.ndarray, h: np.ndarray, n_cells: int) -> dict[str, np.ndarray]:
    """Highest return per cell (lidR ``rasterize_canopy(p2r())`` without subcircle)."""
    out = np.full(n_cells, -np.inf)
    np.maximum.at(out, cell, h)
    return {"chm": np.where(np.isfinite(out), out, np.nan)}


def _tile_cells(i, tiles, tb, grid_crs, *, targets, normalized, ground_classes, buffer_m, min_height_m, max_height_m,
                dtm_gbox=None):
    """Per target (gbox, reducer, keys): the reduced values of the cells owned by tile ``i``.

    Points are read (with the buffer) and height-normalised once per tile.
    Returns a list of (rows, cols, values by key) per target, the number of
    outlier returns dropped in owned cells of the first target, and the DTM
    (rows, cols, elevations) of the owned cells of ``dtm_gbox`` (None when the
    heights are already normalised).
    """
    own = tb[i]
    buf = (own[0] - buffer_m, own[1] - buffer_m, own[2] + buffer_m, own[3] + buffer_m)
    near = [j for j in range(len(tiles)) if _intersects(tb[j], buf)]
    parts = [read_points(tiles[j].path, buf, to_crs=grid_crs, src_crs=tiles[j].crs) for j in near]
    x, y, z, cls = (np.concatenate(a) for a in zip(*parts))
    if x.size == 0:
        return [(np.empty(0, int), np.empty(0, int), {k: np.empty(0) for k in keys}) for _, _, keys in targets], 0, None
    if normalized == "auto":
        normalized = looks_normalized(z, cls, ground_classes)
        if normalized:
            log.info("%s: ground returns lie at z = 0: heights taken as already normalised", tiles[i].path)
    surface = None
    if normalized:
        h = z
    else:
        g = np.isin(cls, ground_classes)
        try:
            surface = ground_surface(x[g], y[g], z[g])
        except LidarError as err:
            raise LidarError(f"{tiles[i].path}: {err} (ground classes {list(ground_classes)})") from None
        h = z - surface(x, y)
        # ground returns are TIN vertices: their height is 0 up to float noise, which would
        # otherwise decide lidR's "any z < 0 -> zentropy NA" rule by the sign of 1e-12
        h[np.abs(h) < 1e-6] = 0.0
    ok = (h >= min_height_m) & (h <= max_height_m)
    results, dropped = [], 0
    bounds_near = [tb[j] for j in near]
    for t, (gbox, reducer, _) in enumerate(targets):
        nx = gbox.shape[1]
        row, col, inside = _cells_of(x, y, gbox)
        cx = gbox.affine.c + (col + 0.5) * gbox.affine.a
        cy = gbox.affine.f + (row + 0.5) * gbox.affine.e
        mine = inside & (_owner(cx, cy, bounds_near) == near.index(i))
        if t == 0:
            dropped = int((mine & ~ok).sum())
        sel = mine & ok
        uniq, inv = np.unique(row[sel] * nx + col[sel], return_inverse=True)
        rr, cc = np.divmod(uniq, nx)
        results.append((rr, cc, reducer(inv, h[sel], uniq.size)))
    dtm = None
    if dtm_gbox is not None and surface is not None:
        a = dtm_gbox.affine
        c0 = max(int(np.floor((own[0] - a.c) / a.a)) - 1, 0)
        c1 = min(int(np.ceil((own[2] - a.c) / a.a)) + 1, dtm_gbox.shape[1])
        r0 = max(int(np.floor((own[3] - a.f) / a.e)) - 1, 0)
        r1 = min(int(np.ceil((own[1] - a.f) / a.e)) + 1, dtm_gbox.shape[0])
        rr, cc = np.mgrid[r0:r1, c0:c1]
        rr, cc = rr.ravel(), cc.ravel()
        cx, cy = a.c + (cc + 0.5) * a.a, a.f + (rr + 0.5) * a.e
        mine = _owner(cx, cy, bounds_near) == near.index(i)
        dtm = (rr[mine], cc[mine], surface(cx[mine], cy[mine]))
    return results, dropped, dtm


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
    """lidR stdmetrics_z of all tiles on ``gbox`` (dict of 2-D float32 arrays, NaN where no returns)."""
    return lidar_rasters(tiles, gbox, None, normalized=normalized, ground_classes=ground_classes, buffer_m=buffer_m,
                         min_height_m=min_height_m, max_height_m=max_height_m)[0]


def canopy_height_model(tiles: list[TileInfo], gbox: GeoBox, *, normalized: bool = False, ground_classes=(2,),
                        buffer_m: float = 20.0, min_height_m: float = -2.0, max_height_m: float = 80.0) -> np.ndarray:
    """Canopy height model (m) on ``gbox`` (e.g. 1 m): highest normalised return per cell, NaN where none."""
    return lidar_rasters(tiles, None, gbox, normalized=normalized, ground_classes=ground_classes, buffer_m=buffer_m,
                         min_height_m=min_height_m, max_height_m=max_height_m)[1]


def lidar_rasters(tiles: list[TileInfo], metrics_gbox: GeoBox | None, chm_gbox: GeoBox | None, *, normalized=False,
                  ground_classes=(2,), buffer_m: float = 20.0, min_height_m: float = -2.0, max_height_m: float = 80.0,
                  dtm_gbox: GeoBox | None = None):
    """Metrics on ``metrics_gbox``, a CHM on ``chm_gbox`` and a DTM on ``dtm_gbox`` (any may be None) in one pass.

    The DTM is the ground TIN (Delaunay, nearest outside the hull) at cell
    centres; it stays NaN for tiles whose heights are already normalised.

    Each tile is a Dask task on the current scheduler that opens its own files,
    reads its points plus a buffer from its neighbours and normalises them once.
    """
    targets = []
    grid_for_crs = metrics_gbox or chm_gbox or dtm_gbox
    if metrics_gbox is not None:
        targets.append((metrics_gbox, cell_metrics, METRICS))
    if chm_gbox is not None:
        targets.append((chm_gbox, cell_max, ("chm",)))
    grid_crs = CRS.from_user_input(grid_for_crs.crs.to_wkt())
    outs = [{k: np.full(g.shape, np.nan, dtype="float32") for k in keys} for g, _, keys in targets]
    tb = []  # tile bounds in grid CRS
    for t in tiles:
        if t.crs.equals(grid_crs):
            tb.append(t.bounds)
        else:
            tb.append(Transformer.from_crs(t.crs, grid_crs, always_xy=True).transform_bounds(*t.bounds))
    # every point of an owned cell must be read
    buffer_m = max(buffer_m, max([float(abs(g.affine.a)) for g, _, _ in targets] + [0.0]) * 1.5)
    opts = dict(targets=targets, normalized=normalized, ground_classes=tuple(ground_classes), buffer_m=buffer_m,
                min_height_m=min_height_m, max_height_m=max_height_m, dtm_gbox=dtm_gbox)
    tasks = [dask.delayed(_tile_cells)(i, tiles, tb, grid_crs, **opts) for i in range(len(tiles))]
    dropped = 0
    dtm = np.full(dtm_gbox.shape, np.nan, dtype="float32") if dtm_gbox is not None else None
    for results, d, tdtm in dask.compute(*tasks):
        dropped += d
        for out, (rr, cc, vals) in zip(outs, results):
            for k, v in vals.items():
                out[k][rr, cc] = v
        if tdtm is not None:
            dtm[tdtm[0], tdtm[1]] = tdtm[2]
    if dropped:
        log.warning("LiDAR: dropped %d returns with heights outside [%g, %g] m (outlier filter)", dropped, min_height_m, max_height_m)
    res = iter(outs)
    metrics = next(res) if metrics_gbox is not None else None
    chm = next(res)["chm"] if chm_gbox is not None else None
    return (metrics, chm, dtm) if dtm_gbox is not None else (metrics, chm)


def geobox_over_tiles(tiles: list[TileInfo], resolution_m: float) -> GeoBox:
    """A GeoBox in the tiles' CRS covering their header bounds, snapped to ``resolution_m``."""
    crs = tiles[0].crs
    for t in tiles[1:]:
        if not t.crs.equals(crs):
            raise CRSError(f"{t.path}: CRS differs from {tiles[0].path}; give a target grid instead")
    x0 = min(t.bounds[0] for t in tiles)
    y0 = min(t.bounds[1] for t in tiles)
    x1 = max(t.bounds[2] for t in tiles)
    y1 = max(t.bounds[3] for t in tiles)
    r = float(resolution_m)
    x0, y0 = np.floor(x0 / r) * r, np.floor(y0 / r) * r
    x1, y1 = np.floor(x1 / r) * r + r, np.floor(y1 / r) * r + r
    return GeoBox.from_bbox((x0, y0, x1, y1), crs=crs.to_wkt(), resolution=r)
