"""LAS/LAZ tiles: header index, point reading (streamed in chunks), units and extents."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import laspy
import numpy as np
from odc.geo.geobox import GeoBox
from pyproj import CRS, Transformer

from ...errors import CRSError, InputNotFoundError, LidarError
from ..grid import metre_crs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TileInfo:
    """One LAS/LAZ file as told by its header (no points read)."""

    path: Path
    bounds: tuple[float, float, float, float]  # in the tile's own CRS
    crs: CRS
    point_count: int


def index_tiles(paths, default_crs: str | None = None) -> list[TileInfo]:
    """Read only the headers of LAS/LAZ files: bounds, CRS and point counts.

    ``default_crs`` is used for files whose header has no CRS; without it such
    a file is an error naming it.
    """
    tiles = []
    for p in paths:
        p = Path(p)
        try:
            with laspy.open(p) as f:
                h = f.header
                crs = h.parse_crs()
                bounds = (h.mins[0], h.mins[1], h.maxs[0], h.maxs[1])
                n = h.point_count
                check_complete(p, h, f.header.are_points_compressed)
        except LidarError:
            raise
        except Exception as err:
            raise LidarError(f"{p}: not a readable LAS/LAZ file ({type(err).__name__}: {err})") from None
        if crs is None:
            if default_crs is None:
                raise CRSError(f"{p}: LAS header has no CRS; set inputs.lidar_crs in the configuration")
            crs = CRS.from_user_input(default_crs)
        tiles.append(TileInfo(p, tuple(float(v) for v in bounds), crs, int(n)))
    return tiles


def check_complete(path: Path, header, compressed: bool) -> None:
    """Fail fast on a truncated file, from its size alone (before any point is decoded).

    LAS: the points must fit (offset to points + count × record length).
    LAZ: the chunk table, whose offset laszip writes in the first 8 bytes of
    the point data, must lie inside the file.
    """
    size = path.stat().st_size
    start = header.offset_to_point_data
    if compressed:
        with open(path, "rb") as fh:
            fh.seek(start)
            raw = fh.read(8)
        table = int.from_bytes(raw, "little", signed=True) if len(raw) == 8 else size + 1
        if table != -1 and not (start + 8 <= table <= size - 8):
            raise LidarError(f"{path}: truncated LAZ file ({size:,} bytes; its chunk table should start at byte {table:,})")
    else:
        need = start + header.point_count * header.point_format.size
        if size < need:
            raise LidarError(f"{path}: truncated LAS file ({size:,} bytes; {header.point_count:,} points need {need:,})")


def find_tiles(folder: Path | str) -> list[Path]:
    """All .las/.laz files under ``folder`` (recursively), sorted."""
    folder = Path(folder)
    if not folder.exists():
        raise InputNotFoundError(f"LiDAR folder not found: {folder}")
    paths = sorted({p for pat in ("*.laz", "*.las", "*.LAZ", "*.LAS") for p in folder.rglob(pat)})
    if not paths:
        raise LidarError(f"{folder}: no .las/.laz files")
    return paths


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


def units_summary(tiles: list[TileInfo]) -> list[str]:
    """One line per distinct tile CRS: how many tiles, the horizontal unit and the factor taking heights to metres."""
    groups: dict = {}
    for t in tiles:
        key = next((k for k in groups if k.equals(t.crs)), t.crs)
        groups[key] = groups.get(key, 0) + 1
    lines = []
    for crs, n in groups.items():
        unit = crs.axis_info[0].unit_name if crs.axis_info else "unknown"
        lines.append(f"{n} tile(s) in {crs.name}: horizontal unit {unit}, heights x {vertical_unit_factor(crs):.10g} -> metres")
    return lines


def read_points(path: Path, bounds=None, chunk: int = 2_000_000, to_crs: CRS | None = None, src_crs: CRS | None = None,
                returns: bool = False):
    """x, y (output CRS units), z (metres, float64) and classification of the points within ``bounds``
    (and their return numbers when ``returns``).

    ``bounds`` (xmin, ymin, xmax, ymax) are in the output CRS; points are
    streamed in chunks of ``chunk`` points so only the selected ones are kept.
    """
    tf = None
    if to_crs is not None and src_crs is not None and not CRS(src_crs).equals(to_crs):
        tf = Transformer.from_crs(src_crs, to_crs, always_xy=True)
    z_to_m = vertical_unit_factor(src_crs)
    xs, ys, zs, cs, rs = [], [], [], [], []
    try:
        with laspy.open(path) as f:
            for pts in f.chunk_iterator(chunk):
                x, y, z = np.asarray(pts.x), np.asarray(pts.y), np.asarray(pts.z) * z_to_m
                if tf is not None:
                    x, y = tf.transform(x, y)
                c = np.asarray(pts.classification)
                r = np.asarray(pts.return_number) if returns else c
                if bounds is not None:
                    keep = (x >= bounds[0]) & (x < bounds[2]) & (y >= bounds[1]) & (y < bounds[3])
                    x, y, z, c, r = x[keep], y[keep], z[keep], c[keep], r[keep]
                xs.append(x), ys.append(y), zs.append(z), cs.append(c), rs.append(r)
    except Exception as err:
        raise LidarError(f"{path}: failed while reading points ({type(err).__name__}: {err})") from None
    cat = (lambda a, t: np.concatenate(a).astype(t, copy=False) if a else np.empty(0, t))
    out = cat(xs, "float64"), cat(ys, "float64"), cat(zs, "float64"), cat(cs, "uint8")
    return (*out, cat(rs, "uint8")) if returns else out


def tile_bounds_in(tiles: list[TileInfo], crs: CRS) -> list[tuple[float, float, float, float]]:
    """Header bounds of every tile in ``crs``."""
    out = []
    for t in tiles:
        if t.crs.equals(crs):
            out.append(t.bounds)
        else:
            out.append(tuple(Transformer.from_crs(t.crs, crs, always_xy=True).transform_bounds(*t.bounds)))
    return out


def tiles_crs(tiles: list[TileInfo]) -> CRS:
    """The one CRS of a set of tiles (an error naming the first tile that differs)."""
    crs = tiles[0].crs
    for t in tiles[1:]:
        if not t.crs.equals(crs):
            raise CRSError(f"{t.path}: CRS differs from {tiles[0].path}; give a target grid instead")
    return crs


def geobox_over_tiles(tiles: list[TileInfo], resolution_m: float) -> GeoBox:
    """A GeoBox of ``resolution_m`` metre cells covering the tiles' header bounds, edges on multiples of it.

    The grid is in the tiles' CRS when its axes are in metres; tiles in a foot-based state plane get the
    same projection with metre axes (every coordinate times 0.3048, or 1200/3937 for US survey feet), and
    tiles in longitude/latitude the UTM zone of their centre (:func:`..grid.metre_crs`).  Cells, buffers,
    CHM/DTM pixels and slopes are therefore always metres.
    """
    crs = tiles_crs(tiles)
    lonlat = None
    if not crs.is_projected:
        b = np.asarray([t.bounds for t in tiles])
        lonlat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(
            (b[:, 0].min() + b[:, 2].max()) / 2, (b[:, 1].min() + b[:, 3].max()) / 2)
    grid_crs = metre_crs(crs, lonlat)
    if not grid_crs.equals(crs):
        log.info("LiDAR grid in %s: the tiles' CRS %s is not in metres", grid_crs.name, crs.name)
    b = np.asarray(tile_bounds_in(tiles, grid_crs))
    return GeoBox.from_bbox((b[:, 0].min(), b[:, 1].min(), b[:, 2].max(), b[:, 3].max()), crs=grid_crs.to_wkt(),
                            resolution=float(resolution_m), tight=False)


def tile_clusters(bounds: list[tuple[float, float, float, float]], gap_m: float = 0.0) -> list[list[int]]:
    """Indices of tiles in groups whose bounds touch or overlap (within ``gap_m``), each group in input order:
    separate acquisitions (e.g. UAV flights over villages) get their own grids instead of one grid over
    their common bounding box, so memory follows the flown area."""
    b = np.asarray(bounds, dtype="float64").reshape(-1, 4)
    n = len(b)
    parent = list(range(n))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(n):
        near = np.flatnonzero((b[:, 0] <= b[i, 2] + gap_m) & (b[:, 2] >= b[i, 0] - gap_m)
                              & (b[:, 1] <= b[i, 3] + gap_m) & (b[:, 3] >= b[i, 1] - gap_m))
        for j in near:
            ri, rj = find(i), find(int(j))
            if ri != rj:
                parent[max(ri, rj)] = min(ri, rj)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    return list(groups.values())
