"""One tile with its buffer: points decoded once, normalised, reduced onto grid windows.

Each LAS/LAZ tile is decoded once.  When it has neighbours, its points are
first *spilled* to a raw ``.npy`` file in a work folder, those lying in a
neighbour's buffer first, so that every neighbour reads just that leading
slice (memory-mapped) instead of decoding the whole file again.  Every
target-grid cell and every plot is owned by the one tile holding its centre
(the nearest tile for centres outside all of them), so results do not depend
on how the flight block was cut.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from odc.geo.geobox import GeoBox
from pyproj import CRS

from ...errors import LidarError
from .chm import pitfree_chm
from .ground import ground_surface, heights_above, looks_normalized
from .io import TileInfo, read_points
from .metrics import METRICS, cell_max, cell_metrics
from ..terrain import slope_aspect

POINT_DTYPE = np.dtype([("x", "f8"), ("y", "f8"), ("z", "f8"), ("c", "u1"), ("r", "u1")])
Bounds = tuple[float, float, float, float]


@dataclass(frozen=True)
class Spill:
    """Decoded points of one tile on disk; the first ``n_shared`` lie in some neighbour's buffer."""

    path: Path
    n_shared: int


@dataclass(frozen=True)
class Targets:
    """What a tile task produces: metrics / CHM / DTM grids (any may be None) and plot footprints."""

    metrics: GeoBox | None = None
    chm: GeoBox | None = None
    dtm: GeoBox | None = None
    plots: tuple = ()  # (plot_id, shapely geometry in the grid CRS)


@dataclass(frozen=True)
class Options:
    normalized: bool | str = False  # True, False or "auto"
    ground_classes: tuple[int, ...] = (2,)
    buffer_m: float = 30.0
    min_height_m: float = -2.0
    max_height_m: float = 80.0
    chm_algorithm: str = "p2r"  # or "pitfree"
    pitfree_thresholds_m: tuple[float, ...] = (0.0, 2.0, 5.0, 10.0, 15.0)
    pitfree_max_edge_m: tuple[float, float] = (0.0, 1.0)
    noise_classes: tuple[int, ...] = (7, 18)  # ASPRS LAS 1.4: 7 low point (noise), 18 high noise
    tiles_without_ground: str = "error"  # or "neighbours": normalise such a tile with its neighbours' ground


def expand(b: Bounds, d: float) -> Bounds:
    return (b[0] - d, b[1] - d, b[2] + d, b[3] + d)


def inside(x, y, b: Bounds) -> np.ndarray:
    """Half-open containment [xmin, xmax) x [ymin, ymax)."""
    return (x >= b[0]) & (x < b[2]) & (y >= b[1]) & (y < b[3])


def owner(cx, cy, bounds: list[Bounds]) -> np.ndarray:
    """Index of the tile each centre belongs to: the one holding it, else the
    nearest (centres at the outer edge of a block); ties go to the lower index."""
    cx, cy = np.asarray(cx, dtype="float64"), np.asarray(cy, dtype="float64")
    d = np.stack([np.hypot(np.maximum(np.maximum(b[0] - cx, cx - b[2]), 0),
                           np.maximum(np.maximum(b[1] - cy, cy - b[3]), 0)) for b in bounds])
    held = np.stack([inside(cx, cy, b) for b in bounds])
    d = np.where(held, -1.0, d)  # half-open containment decides shared edges
    return np.argmin(d, axis=0)


def spill_tile(i: int, tile: TileInfo, grid_crs_wkt: str, shared_with: list[Bounds], workdir: str) -> Spill:
    """Decode ``tile`` once into ``workdir``; points inside any of ``shared_with`` (neighbours' buffers) first."""
    x, y, z, c, r = read_points(tile.path, None, to_crs=CRS.from_wkt(grid_crs_wkt), src_crs=tile.crs, returns=True)
    shared = np.zeros(x.size, dtype=bool)
    for b in shared_with:
        shared |= inside(x, y, b)
    order = np.concatenate([np.flatnonzero(shared), np.flatnonzero(~shared)])
    rec = np.empty(x.size, POINT_DTYPE)
    rec["x"], rec["y"], rec["z"], rec["c"], rec["r"] = x[order], y[order], z[order], c[order], r[order]
    path = Path(workdir) / f"points-{i:06d}.npy"
    tmp = path.with_suffix(".part.npy")
    np.save(tmp, rec)
    os.replace(tmp, path)
    return Spill(path, int(shared.sum()))


def _gather(tile: TileInfo, grid_crs: CRS, buf: Bounds, spills: dict[int, Spill], me: int):
    """x, y, z, class, return number of every point within ``buf``: own points and neighbours' shared slices."""
    if not spills:
        return read_points(tile.path, buf, to_crs=grid_crs, src_crs=tile.crs, returns=True)
    parts = []
    for j, s in spills.items():
        rec = np.load(s.path, mmap_mode="r")
        if j != me:
            rec = rec[: s.n_shared]
        keep = inside(rec["x"], rec["y"], buf)
        parts.append(np.asarray(rec[keep]))
    rec = np.concatenate(parts)
    return rec["x"], rec["y"], rec["z"], rec["c"], rec["r"]


@dataclass(frozen=True)
class Window:
    """Rows/cols [r0:r1, c0:c1] of a grid around a tile, with the cells the tile owns."""

    r0: int
    r1: int
    c0: int
    c1: int
    owned: np.ndarray  # bool (r1-r0, c1-c0)

    @property
    def shape(self):
        return self.owned.shape


def window(gbox: GeoBox, own: Bounds, near: list[Bounds], me: int, halo: int = 0) -> Window | None:
    """The cells whose centres lie within one cell of ``own`` (plus ``halo`` cells), and which of them ``own`` owns."""
    a = gbox.affine
    res_x, res_y = a.a, -a.e
    c0 = max(int(np.floor((own[0] - a.c) / res_x)) - 1 - halo, 0)
    c1 = min(int(np.ceil((own[2] - a.c) / res_x)) + 1 + halo, gbox.shape[1])
    r0 = max(int(np.floor((a.f - own[3]) / res_y)) - 1 - halo, 0)
    r1 = min(int(np.ceil((a.f - own[1]) / res_y)) + 1 + halo, gbox.shape[0])
    if r1 <= r0 or c1 <= c0:
        return None
    cx = a.c + (np.arange(c0, c1) + 0.5) * res_x
    cy = a.f - (np.arange(r0, r1) + 0.5) * res_y
    gx, gy = np.meshgrid(cx, cy)
    owned = owner(gx.ravel(), gy.ravel(), near) == me
    return Window(r0, r1, c0, c1, owned.reshape(gx.shape))


def _local_cells(x, y, gbox: GeoBox, w: Window):
    """Index (row-major within ``w``) of the cell each point falls in, and a mask of points in owned cells."""
    a = gbox.affine
    col = np.floor((x - a.c) / a.a).astype(np.int64)
    row = np.floor((y - a.f) / a.e).astype(np.int64)
    # returns exactly on the grid's right or bottom edge belong to its last column / row, not outside it
    nr, nc = gbox.shape
    tol = 1e-9 * abs(a.a)
    col = np.where((col == nc) & (np.abs(x - (a.c + nc * a.a)) <= tol), nc - 1, col) - w.c0
    row = np.where((row == nr) & (np.abs(y - (a.f + nr * a.e)) <= tol), nr - 1, row) - w.r0
    h, wd = w.shape
    ok = (row >= 0) & (row < h) & (col >= 0) & (col < wd)
    idx = np.where(ok, row * wd + col, 0)
    ok &= w.owned.ravel()[idx]
    return idx, ok


def write_window(path: Path, gbox: GeoBox, w: Window, bands: np.ndarray, descriptions) -> Path:
    """A float32 GeoTIFF of ``bands`` (band, rows, cols) on the window of ``gbox`` (NaN nodata)."""
    sub = gbox[w.r0:w.r1, w.c0:w.c1]
    bands = np.where(w.owned[None], bands, np.nan).astype("float32")
    big = min(w.shape) >= 256
    prof = dict(driver="GTiff", width=w.shape[1], height=w.shape[0], count=bands.shape[0], dtype="float32",
                crs=gbox.crs.to_wkt(), transform=sub.affine, nodata=np.nan, compress="deflate", predictor=3,
                tiled=big, **({"blockxsize": 256, "blockysize": 256} if big else {}))
    tmp = path.with_name(path.stem + ".part.tif")
    with rasterio.open(tmp, "w", **prof) as dst:
        dst.write(bands)
        for i, d in enumerate(descriptions, start=1):
            dst.set_band_description(i, d)
    os.replace(tmp, path)
    return path


@dataclass(frozen=True)
class TileResult:
    """What one tile task hands back: small values and the paths of its window rasters."""

    index: int
    points: int
    dropped: int  # outside the height limits (noise-class returns not counted here)
    normalized: bool
    files: dict  # target name -> (Path, (r0, r1, c0, c1))
    plots: list  # (plot_id, {metric: value})
    noise: int = 0  # returns of the noise classes, dropped by class
    no_ground: int = 0  # returns outside the ground hull with no ground return within 50 m (no height)


def process_tile(i: int, tile: TileInfo, near_b: list[Bounds], me: int, spills: dict[int, Spill],
                 grid_crs_wkt: str, targets: Targets, opts: Options, outdir: str) -> TileResult:
    """Read tile ``i`` with its buffer, normalise the heights, and write its windows of each target.

    ``near_b`` are the grid-CRS bounds of the tiles within the buffer (this one at position ``me``);
    ``spills`` the decoded points of those tiles by tile index (empty: read ``tile`` directly).
    Only what this tile needs travels to the worker, whatever the number of tiles.
    """
    own, grid_crs = near_b[me], CRS.from_wkt(grid_crs_wkt)
    x, y, z, cls, ret = _gather(tile, grid_crs, expand(own, opts.buffer_m), spills, i)
    h, surface, normalized = _heights(tile, x, y, z, cls, opts, own)
    noise = np.isin(cls, opts.noise_classes)
    ok = (h >= opts.min_height_m) & (h <= opts.max_height_m) & ~noise
    files = {}
    out = Path(outdir)
    for name, gbox in (("metrics", targets.metrics), ("chm", targets.chm)):
        w = window(gbox, own, near_b, me) if gbox is not None and x.size else None
        if w is None:
            continue
        stack, descr = (_cell_metrics if name == "metrics" else _chm)(x, y, h, ok, ret, gbox, w, opts)
        if np.isfinite(stack).any():
            files[name] = (write_window(out / f"{name}-{i:06d}.tif", gbox, w, stack, descr), (w.r0, w.r1, w.c0, w.c1))
    w = window(targets.dtm, own, near_b, me, halo=1) if targets.dtm is not None and surface is not None else None
    if w is not None:
        files["dtm"] = (write_window(out / f"dtm-{i:06d}.tif", targets.dtm, w, _terrain(surface, targets.dtm, w),
                                     ("dtm_m", "slope_deg", "aspect_deg")), (w.r0, w.r1, w.c0, w.c1))
    plots = _plot_metrics(targets.plots, x, y, h, ok, own, near_b, me, opts.buffer_m) if targets.plots else []
    mine = inside(x, y, own)
    unheighted = mine & ~np.isfinite(h) & ~noise
    return TileResult(i, int(mine.sum()), int((mine & ~ok & ~noise).sum()) - int(unheighted.sum()), bool(normalized),
                      files, plots, int((mine & noise).sum()), int(unheighted.sum()))


def _heights(tile: TileInfo, x, y, z, cls, opts: Options, own: Bounds):
    """(height above ground, ground surface or None, whether the heights were already normalised).

    A tile with returns but no ground return of its own is an error naming it, unless
    ``opts.tiles_without_ground`` is ``"neighbours"`` (then the neighbours' ground within the buffer serves).
    """
    normalized = looks_normalized(z, cls, opts.ground_classes) if opts.normalized == "auto" else opts.normalized
    if x.size == 0 or normalized:
        return z, None, normalized
    g = np.isin(cls, opts.ground_classes)
    mine = inside(x, y, own)
    if opts.tiles_without_ground != "neighbours" and mine.any() and not (g & mine).any():
        raise LidarError(f"{tile.path}: {int(mine.sum())} returns but no ground return (classes "
                         f"{list(opts.ground_classes)}) of its own; set lidar.tiles_without_ground: neighbours to "
                         "normalise it with its neighbours' ground, or fix its classification")
    try:
        surface = ground_surface(x[g], y[g], z[g])
    except LidarError as err:
        raise LidarError(f"{tile.path}: {err} (ground classes {list(opts.ground_classes)}, "
                         f"{opts.buffer_m:g} m buffer from neighbours included)") from None
    return heights_above(x, y, z, g, surface), surface, normalized


def _cell_metrics(x, y, h, ok, ret, gbox: GeoBox, w: Window, opts: Options):
    """stdmetrics_z of the returns in each owned cell of the window (NaN where a cell has none)."""
    idx, mine = _local_cells(x, y, gbox, w)
    sel = mine & ok
    vals = cell_metrics(idx[sel], h[sel], w.owned.size)
    stack = np.stack([vals[k] for k in METRICS])
    stack[:, vals["n_points"] == 0] = np.nan
    return stack.reshape(len(METRICS), *w.shape), METRICS


def _chm(x, y, h, ok, ret, gbox: GeoBox, w: Window, opts: Options):
    """Canopy height on the window: highest return per cell, or pit-free from the first returns of the buffer."""
    if opts.chm_algorithm == "pitfree":
        first = ok & (ret <= 1)  # return number 1 (0 in files that leave it unset)
        a = gbox.affine
        chm = pitfree_chm(x[first], y[first], h[first], a.c + w.c0 * a.a, a.f + w.r0 * a.e, a.a, w.shape,
                          opts.pitfree_thresholds_m, opts.pitfree_max_edge_m)
    else:
        idx, mine = _local_cells(x, y, gbox, w)
        sel = mine & ok
        chm = cell_max(idx[sel], h[sel], w.owned.size)["chm"].reshape(w.shape)
    return chm[None], ("chm_m",)


def _terrain(surface, gbox: GeoBox, w: Window) -> np.ndarray:
    """Ground TIN at the window's cell centres, with slope and aspect (Horn 1981; the window has a one-cell halo)."""
    a = gbox.affine
    gx, gy = np.meshgrid(a.c + (np.arange(w.c0, w.c1) + 0.5) * a.a, a.f + (np.arange(w.r0, w.r1) + 0.5) * a.e)
    dtm = surface(gx.ravel(), gy.ravel()).reshape(w.shape)
    slope, aspect = slope_aspect(dtm, abs(a.a), abs(a.e))
    return np.stack([dtm, slope, aspect])


def _plot_metrics(plots, x, y, h, ok, own, near_b, me, buffer_m):
    """stdmetrics_z of the returns inside each plot footprint whose centre this tile owns."""
    import shapely

    rows = []
    for pid, geom in plots:
        c = geom.centroid
        if not (own[0] - buffer_m <= c.x < own[2] + buffer_m and own[1] - buffer_m <= c.y < own[3] + buffer_m):
            continue
        if owner([c.x], [c.y], near_b)[0] != me:
            continue
        b = geom.bounds
        cand = np.flatnonzero(inside(x, y, (b[0], b[1], b[2] + 1e-9, b[3] + 1e-9)) & ok)
        sel = cand[shapely.intersects_xy(geom, x[cand], y[cand])]  # returns on the boundary count
        vals = cell_metrics(np.zeros(sel.size, dtype=np.int64), h[sel], 1)
        rows.append((pid, {k: float(v[0]) for k, v in vals.items()}))
    return rows
