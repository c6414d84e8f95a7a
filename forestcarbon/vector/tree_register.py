"""The register of detected trees: ids, files, and which polygon (parcel, village) each tree stands in.

Tree ids (:func:`tree_ids`) are made from the position so that a rerun over the
same point cloud gives the same ids without a database::

    T<EPSG>-<X>-<Y>        X, Y = the tree's projected coordinates rounded half-up to whole metres

Where several trees of one run round to the same metre (crowns closer than
~1.4 m apart), they are ordered by their exact x, then y (then input order for
identical positions) and get ``-1``, ``-2``, ... after the shared stem; a lone
tree has no suffix.  The ids do not depend on row order.  They are *not* stable
across runs that move the tree: a tree detected 0.6 m away in another flight
or with other detection settings may round to another metre and get another
id (and a new neighbour can turn a lone id into a suffixed one).  The link
between epochs is :func:`forestcarbon.models.tree_match.match_epochs`, not
equality of ids.

Carbon totals with intervals per polygon come from
:func:`forestcarbon.models.tree_carbon.tree_carbon` (``totals_by`` = the labels
:func:`summarise_by_polygons` returns); this module counts trees only.
"""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
from pyproj import CRS

from ..errors import CRSError, FieldError
from ..fileio import atomic_path
from .outputs import write_geoparquet

REGISTER_GPKG = "trees.gpkg"
REGISTER_PARQUET = "trees.parquet"


def tree_ids(x, y, crs_epsg: int) -> np.ndarray:
    """Position ids ``T<EPSG>-<round(x)>-<round(y)>`` (1 m, half-up), ``-k`` suffixes where they collide."""
    x, y = np.asarray(x, dtype="float64"), np.asarray(y, dtype="float64")
    if x.shape != y.shape:
        raise FieldError(f"tree_ids: x ({x.size} values) and y ({y.size}) differ in length")
    bad = ~(np.isfinite(x) & np.isfinite(y))
    if bad.any():
        raise FieldError(f"tree_ids: rows {(np.flatnonzero(bad)[:5] + 1).tolist()} have no finite x/y")
    ix, iy = np.floor(x + 0.5).astype("int64"), np.floor(y + 0.5).astype("int64")
    stem = np.array([f"T{int(crs_epsg)}-{a}-{b}" for a, b in zip(ix, iy)], dtype=object)
    order = np.lexsort((np.arange(x.size), y, x, iy, ix))  # by cell, then exact x, y, then input order
    if not x.size:
        return stem
    cells = np.c_[ix[order], iy[order]]
    new_cell = np.r_[True, np.any(cells[1:] != cells[:-1], axis=1)]
    start = np.maximum.accumulate(np.where(new_cell, np.arange(x.size), 0))
    rank = np.arange(x.size) - start  # 0-based position within its cell
    cell = np.cumsum(new_cell) - 1
    size = np.bincount(cell)[cell]
    ids = stem.copy()
    multi = size > 1
    ids[order[multi]] = [f"{s}-{r + 1}" for s, r in zip(stem[order[multi]], rank[multi])]
    return ids


def register_frame(trees_df: pd.DataFrame, crowns_geoms, crs) -> tuple[gpd.GeoDataFrame, gpd.GeoDataFrame]:
    """(points, crowns): the trees' attributes with point geometries from x, y and with their crown polygons."""
    for col in ("tree_id", "x", "y"):
        if col not in trees_df:
            raise FieldError(f"tree register: trees lack column {col!r} (have {list(trees_df.columns)})")
    crowns = list(crowns_geoms)
    if len(crowns) != len(trees_df):
        raise FieldError(f"tree register: {len(crowns)} crown polygons for {len(trees_df)} trees")
    if trees_df["tree_id"].duplicated().any():
        dup = trees_df["tree_id"][trees_df["tree_id"].duplicated()].tolist()[:5]
        raise FieldError(f"tree register: duplicate tree_id {dup}")
    crs = CRS.from_user_input(crs)
    attrs = trees_df.reset_index(drop=True)
    points = gpd.GeoDataFrame(attrs, geometry=gpd.points_from_xy(attrs["x"], attrs["y"]), crs=crs)
    polys = gpd.GeoDataFrame(attrs.copy(), geometry=gpd.GeoSeries(crowns, crs=crs), crs=crs)
    return points, polys


def write_register(trees_df: pd.DataFrame, crowns_geoms, crs, out_dir: Path | str) -> dict[str, Path]:
    """Write ``out_dir/trees.gpkg`` (layers ``trees``: points, ``crowns``: polygons, same attributes) and
    ``out_dir/trees.parquet`` (GeoParquet points).  Both are written under temporary names in
    ``out_dir`` and renamed into place (``os.replace``) only when both are complete, so an error
    leaves neither a temporary nor a half-written file (earlier files of the same name stay)."""
    out_dir = Path(out_dir)
    points, polys = register_frame(trees_df, crowns_geoms, crs)
    gpkg, parquet = out_dir / REGISTER_GPKG, out_dir / REGISTER_PARQUET
    with atomic_path(gpkg) as tmp_gpkg, atomic_path(parquet) as tmp_parquet:
        points.to_file(tmp_gpkg, layer="trees", driver="GPKG")
        polys.to_file(tmp_gpkg, layer="crowns", driver="GPKG", mode="a")
        write_geoparquet(points, tmp_parquet)
    return {"gpkg": gpkg, "parquet": parquet}


def _aligned(trees_gdf: gpd.GeoDataFrame, polygons: gpd.GeoDataFrame, what: str) -> gpd.GeoDataFrame:
    if trees_gdf.crs is None or polygons.crs is None:
        raise CRSError(f"{what}: trees ({trees_gdf.crs}) and polygons ({polygons.crs}) both need a CRS")
    return polygons if polygons.crs == trees_gdf.crs else polygons.to_crs(trees_gdf.crs)


def _first_polygon(trees_gdf: gpd.GeoDataFrame, polygons: gpd.GeoDataFrame) -> np.ndarray:
    """Row position (in ``polygons``) of the polygon each tree intersects, -1 for none; a tree on a shared
    boundary (it intersects several) goes to the first such polygon in ``polygons`` row order."""
    pts = trees_gdf.geometry.reset_index(drop=True)
    polys = polygons.geometry.reset_index(drop=True)
    tree_pos, poly_pos = polys.sindex.query(pts, predicate="intersects") if len(pts) and len(polys) else ([], [])
    first = np.full(len(pts), np.iinfo("int64").max)
    np.minimum.at(first, np.asarray(tree_pos, dtype="int64"), np.asarray(poly_pos, dtype="int64"))
    return np.where(first == np.iinfo("int64").max, -1, first)


def summarise_by_polygons(trees_gdf: gpd.GeoDataFrame, polygons_gdf: gpd.GeoDataFrame,
                          id_field: str) -> tuple[np.ndarray, pd.DataFrame]:
    """(label per tree: the ``id_field`` of the polygon it stands in, None outside all; table of
    ``id_field`` and ``n_trees`` for every polygon, zeros included).

    Point-in-polygon by the spatial index (``intersects``, so a tree exactly on an outer boundary
    counts); a tree on a boundary two polygons share belongs to the first of them in row order only,
    so every tree is counted once.  Polygons are reprojected to the trees' CRS when it differs.
    """
    if id_field not in polygons_gdf:
        raise FieldError(f"summarise_by_polygons: polygons lack field {id_field!r} (have {list(polygons_gdf.columns)})")
    polys = _aligned(trees_gdf, polygons_gdf, "summarise_by_polygons")
    pos = _first_polygon(trees_gdf, polys)
    ids = polys[id_field].to_numpy(dtype=object)
    labels = np.full(len(pos), None, dtype=object)
    labels[pos >= 0] = ids[pos[pos >= 0]]
    counts = pd.DataFrame({id_field: ids, "n_trees": np.bincount(pos[pos >= 0], minlength=len(ids)).astype(int)})
    return labels, counts


def outside(trees_gdf: gpd.GeoDataFrame, parcels_gdf: gpd.GeoDataFrame, forest_mask_of_parcels) -> np.ndarray:
    """True for each tree not inside (nor on the boundary of) any parcel that ``forest_mask_of_parcels``
    (one boolean per parcel row) marks as forest: the trees outside the forest estate (village trees)."""
    mask = np.asarray(forest_mask_of_parcels, dtype=bool)
    if mask.shape != (len(parcels_gdf),):
        raise FieldError(f"outside: forest_mask_of_parcels has {mask.size} values for {len(parcels_gdf)} parcels")
    forest = _aligned(trees_gdf, parcels_gdf, "outside")[mask]
    return _first_polygon(trees_gdf, forest) < 0
