"""Single trees from a canopy height model to a carbon register: the chain that the ``trees`` stage and
``forestcarbon trees-detect`` share.

Wiring only; the computation lives in :mod:`forestcarbon.rs.lidar.trees` (tree tops, lidR ``lmf``),
:mod:`forestcarbon.rs.lidar.crowns` (lidR ``dalponte2016`` crowns, crown point metrics),
:mod:`forestcarbon.models.tree_dbh` (DBH from height), :mod:`forestcarbon.models.tree_carbon` (AGB, carbon,
Monte Carlo, totals), :mod:`forestcarbon.vector.tree_register` (ids, files, polygon labels) and
:mod:`forestcarbon.models.tree_match` (epochs).

Per CHM: tops and crowns (tiles with buffers, the same trees as one run), then, where the points are
at hand, the crown's point metrics (highest return and 95th percentile of normalised heights, lidR
``crown_metrics`` with ``.stdtreemetrics``-like statistics).  The tree's height is the highest unsmoothed CHM
cell within the smoothing footprint of its top (:func:`top_heights`); without smoothing, the CHM value at the
top, as lidR's ``locate_trees`` on a raster gives it.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
from pyproj import CRS
from rasterio.enums import Resampling
from rasterio.transform import Affine
from rasterio.windows import Window, from_bounds
from scipy import ndimage

from ..errors import FieldError, LidarError
from ..fileio import write_json, write_table
from ..models.allometry import AllometryRegistry, resolve_species, species_groups, validate_trees
from ..models.tree_carbon import tree_carbon
from ..models.tree_dbh import DbhModel, fit_dbh_models
from ..models.tree_match import match_epochs
from ..rs import lidar
from ..rs.lidar.crowns import crown_point_metrics, crown_polygons
from ..rs.lidar.trees import iter_tree_tiles
from ..vector.layers import feature_rows, listing
from ..vector.tree_register import outside, summarise_by_polygons, tree_ids, write_register

log = logging.getLogger("forestcarbon")

MAX_CANOPY_M = 90.0  # the tallest trees of China (Tibetan cypress, ~100 m) aside, a CHM above this is not metres


@dataclass(frozen=True)
class Detection:
    """Tree detection settings (plain values; :class:`forestcarbon.config.TreesConfig`)."""

    window_m: float | tuple = (1.0, 0.15, 2.0, 8.0)
    min_height_m: float = 5.0
    smooth: str = "median"
    smooth_px: int = 3
    segmentation: str = "dalponte2016"
    max_crown_m: float = 5.0
    tile_px: int = 2048


@dataclass(frozen=True)
class CarbonSettings:
    default_group: str = "evergreen_broadleaf"
    no_single_tree_groups: tuple[str, ...] = ("moso_bamboo",)
    height_sd_m: float = 1.0
    draws: int = 500
    seed: int = 0


def settings(t) -> tuple[Detection, CarbonSettings]:
    """Detection and carbon settings of a :class:`forestcarbon.config.TreesConfig`."""
    det = Detection(window_m=t.window_m, min_height_m=t.min_height_m, smooth=t.smooth, smooth_px=t.smooth_px,
                    segmentation=t.segmentation, max_crown_m=t.max_crown_m, tile_px=t.tile_px)
    car = CarbonSettings(default_group=t.species_group, no_single_tree_groups=tuple(t.no_single_tree_groups),
                         height_sd_m=t.height_sd_m, draws=t.draws, seed=t.seed)
    return det, car


def open_chm(path: Path, sample_px: int = 1024) -> tuple[rasterio.Affine, CRS, tuple[int, int]]:
    """Transform, CRS and shape of a CHM raster (band 1, metres), with one line when it is not a north-up
    metre grid or its heights are not metres (99.9th percentile of a decimated read of at most
    ``sample_px``² cells above :data:`MAX_CANOPY_M`).  Reads no more than the sample."""
    with rasterio.open(path) as src:
        if src.crs is None:
            raise LidarError(f"{path}: the CHM has no CRS")
        crs = CRS.from_user_input(src.crs.to_wkt())
        unit = crs.axis_info[0].unit_name if crs.axis_info else ""
        if not crs.is_projected or unit not in ("metre", "meter"):
            raise LidarError(f"{path}: the CHM must be on a projected grid in metres, not {crs.name} ({unit})")
        t = src.transform
        if t.b or t.d or t.e >= 0 or abs(t.a) != abs(t.e):
            raise LidarError(f"{path}: the CHM must be north-up with square cells (transform {tuple(t)[:6]})")
        k = max(1, int(np.ceil(max(src.height, src.width) / sample_px)))
        sample = src.read(1, out_shape=(max(1, src.height // k), max(1, src.width // k)), masked=True,
                          resampling=Resampling.nearest).astype("float64").filled(np.nan)
        shape = (src.height, src.width)
    top = np.nanpercentile(sample, 99.9) if np.isfinite(sample).any() else 0.0
    if top > MAX_CANOPY_M:
        raise LidarError(f"{path}: 99.9th percentile of the CHM is {top:.0f}, above {MAX_CANOPY_M:.0f} m: heights in "
                         "feet or centimetres, or not normalised (elevations)?")
    return t, crs, shape


def chm_bounds(path: Path) -> tuple[float, float, float, float]:
    with rasterio.open(path) as src:
        return tuple(src.bounds)


def top_heights(chm: np.ndarray, row: np.ndarray, col: np.ndarray, size_px: int) -> np.ndarray:
    """Height of each top (m): the highest input-CHM cell in the ``size_px`` square around it.

    Tops are found on the smoothed CHM; smoothing moves and lowers apexes, and the input cell under a top can
    be a pit (a gap between branches), so the apex is the raw maximum within the smoothing footprint.  A top
    at or above ``min_height_m`` on a median or Gaussian smoothed CHM has such a cell at or above it too."""
    r = size_px // 2
    if r == 0 or not len(row):
        return chm[row, col].astype("float64")
    padded = np.pad(chm, r, constant_values=np.nan)
    out = np.full(len(row), -np.inf)
    for dr in range(-r, r + 1):
        for dc in range(-r, r + 1):
            out = np.fmax(out, padded[row + r + dr, col + r + dc])
    return out


def detect_file(path: Path, det: Detection, points=None) -> tuple[pd.DataFrame, list, CRS]:
    """Tops, crowns and per-tree attributes of a CHM file, read tile by tile (memory bounded by
    ``det.tile_px`` and its buffer; :func:`~forestcarbon.rs.lidar.trees.iter_tree_tiles`).

    ``points``: a function of window bounds (xmin, ymin, xmax, ymax) giving the returns' x, y and height
    above ground there (:func:`point_heights`), for each crown's ``n_points``, ``z_max_m`` and ``z_p95_m``.
    Returns (trees: tree_index, x, y, height_detect_m, height_m, crown_area_m2, crown_diameter_m [, point
    metrics]; crown outlines in the same order, None where a tree has no crown cell; the CHM's CRS)."""
    transform, crs, shape = open_chm(path)
    window = det.window_m if isinstance(det.window_m, (int, float)) else tuple(det.window_m)
    smooth = None if det.smooth == "none" else {"size_px": det.smooth_px, "method": det.smooth}
    res = float(transform.a)
    highest = [-np.inf]
    with rasterio.open(path) as src:
        def read(r0, r1, c0, c1):
            a = src.read(1, window=Window(c0, r0, c1 - c0, r1 - r0), masked=True).astype("float64").filled(np.nan)
            if np.isfinite(a).any():
                highest[0] = max(highest[0], float(np.nanmax(a)))
            return a

        tops, tiles = iter_tree_tiles(read, shape, transform, window, det.min_height_m, tile_px=det.tile_px,
                                      smooth=smooth, segmentation=det.segmentation, max_cr_m=det.max_crown_m)
        n = len(tops)
        tr, tc = tops["row"].to_numpy(), tops["col"].to_numpy()
        height, cells, polys = np.full(n, np.nan), np.zeros(n), [None] * n
        pm = {k: np.full(n, np.nan) for k in ("n_points", "z_max_m", "z_p95_m")}
        for ids, w, raw, own in tiles:
            wt = transform * Affine.translation(w[2], w[0])
            height[ids] = top_heights(raw, tr[ids] - w[0], tc[ids] - w[2], det.smooth_px if smooth else 1)
            lab, cnt = np.unique(own[own > 0], return_counts=True)
            cells[lab - 1] = cnt
            outlines = crown_polygons(own, wt)
            for label, geom in zip(outlines["label"].to_numpy(), outlines.geometry.to_numpy()):
                polys[label - 1] = geom
            if points is not None:
                x, y, h = points(_window_bounds(w, wt))
                m = crown_point_metrics(own, wt, x, y, h)
                for k in pm:
                    pm[k][m["label"].to_numpy() - 1] = m[k].to_numpy()
    if not n:
        log.warning("trees: no tree top at or above %g m in %s (highest CHM cell %.1f m)", det.min_height_m, path,
                    highest[0])
    out = tops.rename(columns={"height_m": "height_detect_m"}).drop(columns=["row", "col"])
    out["height_m"] = height
    out["crown_area_m2"] = cells * res * res
    out["crown_diameter_m"] = 2.0 * np.sqrt(out["crown_area_m2"] / np.pi)
    if points is not None:
        out["n_points"] = np.nan_to_num(pm["n_points"]).astype(int)
        out["z_max_m"], out["z_p95_m"] = pm["z_max_m"], pm["z_p95_m"]
    return out, polys, crs


def _window_bounds(w, wt) -> tuple[float, float, float, float]:
    """(xmin, ymin, xmax, ymax) of window rows w[0]:w[1], cols w[2]:w[3] whose top-left cell has transform wt."""
    return (wt.c, wt.f + wt.e * (w[1] - w[0]), wt.c + wt.a * (w[3] - w[2]), wt.f)


def point_heights(tiles, crs: CRS, bounds, dtm_path: Path | None, noise_classes=(7, 18)):
    """x, y and heights above ground (m) of the returns in ``bounds``: elevation minus the DTM (bilinear, read
    over ``bounds`` only) where one was written, else the elevations of already-normalised tiles; noise
    classes dropped; tiles whose header bounds miss ``bounds`` are not opened."""
    xs, ys, zs = [np.zeros(0)], [np.zeros(0)], [np.zeros(0)]
    for t, b in zip(tiles, lidar.tile_bounds_in(tiles, crs)):
        if b[0] > bounds[2] or b[2] < bounds[0] or b[1] > bounds[3] or b[3] < bounds[1]:
            continue
        x, y, z, c = lidar.read_points(t.path, bounds=bounds, to_crs=crs, src_crs=t.crs)
        keep = ~np.isin(c, noise_classes)
        xs.append(x[keep]), ys.append(y[keep]), zs.append(z[keep])
    x, y, z = np.concatenate(xs), np.concatenate(ys), np.concatenate(zs)
    if dtm_path is not None and z.size:
        with rasterio.open(dtm_path) as src:
            f = from_bounds(*bounds, transform=src.transform)
            c0, r0 = int(np.floor(f.col_off)) - 1, int(np.floor(f.row_off)) - 1
            win = Window(c0, r0, int(np.ceil(f.col_off + f.width)) + 1 - c0, int(np.ceil(f.row_off + f.height)) + 1 - r0)
            dtm = src.read(1, window=win, masked=True, boundless=True).astype("float64").filled(np.nan)
            col, row = ~src.window_transform(win) * (x, y)
        z = z - ndimage.map_coordinates(dtm, [row - 0.5, col - 0.5], order=1, mode="nearest", cval=np.nan)
    return x, y, z


def with_places(trees: gpd.GeoDataFrame, parcels: gpd.GeoDataFrame | None, villages: gpd.GeoDataFrame | None,
                village_id: str = "village_id") -> gpd.GeoDataFrame:
    """Trees with ``parcel_id`` (the parcel holding the top, None outside all), ``in_forest_parcel`` and
    ``village_tree`` (not in a forest parcel: the trees sold one by one), and ``village_id`` where villages
    are given.  ``parcels``: standard columns ``parcel_id``, ``is_forest``, ``species``."""
    out = trees.copy()
    if parcels is not None and len(parcels):
        out["parcel_id"], _ = summarise_by_polygons(out, parcels, "parcel_id")
        out["village_tree"] = outside(out, parcels, parcels["is_forest"].to_numpy(bool))
    else:
        out["parcel_id"], out["village_tree"] = None, True
    out["in_forest_parcel"] = ~out["village_tree"].to_numpy(bool)
    if villages is not None:
        out["village_id"], _ = summarise_by_polygons(out, villages, village_id)
    return out


def species_layer_groups(layer: gpd.GeoDataFrame, field: str, registry: AllometryRegistry, where: str,
                         fallback: dict | None = None) -> gpd.GeoDataFrame:
    """The polygons of a species layer with ``species_group`` resolved from ``field``; a name no equation,
    binomial or fallback maps is an error naming the layer, field, names and 1-based feature rows (a tree
    there would otherwise get another group's equation without a trace)."""
    if field not in layer:
        raise FieldError(f"{where}: no field {field!r} (fields: {[c for c in layer.columns if c != 'geometry']})")
    names = layer[field].fillna("").astype(str).str.strip()
    groups, _ = resolve_species(names, registry, fallback)
    bad = groups.isna().to_numpy()
    if bad.any():
        raise FieldError(f"{where}: field {field!r} names species with no group in {registry.source_path}: "
                         f"{listing(sorted(set(names[bad])))} (features {feature_rows(bad)}); add them to the "
                         "species table or map them in allometry_fallback")
    return gpd.GeoDataFrame({"species_group": groups.to_numpy(dtype=object)}, geometry=layer.geometry.to_numpy(),
                            crs=layer.crs).reset_index(drop=True).assign(_row=lambda d: np.arange(len(d)))


def species_groups_of(trees: pd.DataFrame, parcels: pd.DataFrame | None, registry: AllometryRegistry,
                      default_group: str, fallback: dict | None = None,
                      species_layer: gpd.GeoDataFrame | None = None) -> pd.DataFrame:
    """``species_group`` of each tree and ``group_source`` saying where it came from: the polygon of
    ``species_layer`` holding the tree (:func:`species_layer_groups`; ``species_layer``), else its parcel's
    dominant species where the registry resolves it (``parcel_species``), else ``default_group``
    (``default``).  Counts per source, and the parcel species no group resolves, are logged."""
    if default_group not in registry.groups:
        raise FieldError(f"trees.species_group {default_group!r} is not a species group of {registry.source_path} "
                         f"({sorted(registry.groups)})")
    out = trees.copy()
    group = pd.Series(default_group, index=out.index, dtype=object)
    source = pd.Series("default", index=out.index, dtype=object)
    if parcels is not None and "species" in parcels and len(parcels):
        names = parcels["species"].fillna("").astype(str).str.strip()
        g, _ = resolve_species(names, registry, fallback)
        by_parcel = pd.Series([x if isinstance(x, str) else None for x in g], index=parcels["parcel_id"].to_numpy())
        got = out["parcel_id"].map(by_parcel)
        has = got.notna()
        group[has], source[has] = got[has], "parcel_species"
        name_of = out["parcel_id"].map(pd.Series(names.to_numpy(), index=parcels["parcel_id"].to_numpy()))
        unknown = out["parcel_id"].notna() & ~has & name_of.fillna("").ne("")  # a parcel without a species: default
        if unknown.any():
            spp = name_of[unknown]
            log.warning("trees: %d trees stand in parcels whose dominant species has no group (%s); they get "
                        "trees.species_group %r", int(unknown.sum()), listing(sorted(set(spp.astype(str)))),
                        default_group)
    if species_layer is not None and len(species_layer) and len(out):
        pts = gpd.GeoDataFrame(geometry=gpd.points_from_xy(out["x"], out["y"]), crs=species_layer.crs)
        pos, _ = summarise_by_polygons(pts, species_layer, "_row")
        has = pd.Series(pos, index=out.index).notna()
        group[has] = species_layer["species_group"].to_numpy()[pos[has.to_numpy()].astype(int)]
        source[has] = "species_layer"
    out["species_group"], out["group_source"] = group.to_numpy(), source.to_numpy()
    if len(out):
        log.info("trees: species group from %s", source.value_counts().to_dict())
    return out


def carbon(trees: pd.DataFrame, registry: AllometryRegistry, dbh_models: dict[str, DbhModel], c: CarbonSettings,
           levels: tuple[str, ...] = ("parcel_id", "village_id")) -> tuple[pd.DataFrame, pd.DataFrame]:
    """DBH, carbon and 90 % intervals of the single trees (:func:`~forestcarbon.models.tree_carbon.tree_carbon`),
    and totals with intervals from the summed draws per parcel, per village, for the village trees of each
    village and for the village trees and the forest-parcel trees as wholes (``level`` = ``parcel_id``,
    ``village_id``, ``village_id_village_trees``, ``class``).  Trees of
    ``no_single_tree_groups`` (bamboo: a LiDAR top is a clump, not a culm) get ``carbon_status`` saying so and
    no carbon."""
    bad = [g for g in c.no_single_tree_groups if g not in registry.groups]
    if bad:
        raise FieldError(f"trees.no_single_tree_groups {bad} are not species groups of {registry.source_path}")
    t = trees.reset_index(drop=True)
    skip = t["species_group"].isin(c.no_single_tree_groups).to_numpy()
    low = (t["height_m"].to_numpy(float) < 1.3) & ~skip
    t["carbon_status"] = np.where(skip, "no_single_tree_group", np.where(low, "below_breast_height", "ok"))
    ok = t["carbon_status"].eq("ok").to_numpy()
    sub = t[ok]
    labels = pd.DataFrame({lev: sub[lev].to_numpy(dtype=object) for lev in levels if lev in sub})
    vt = sub["village_tree"].to_numpy(bool)
    labels["class"] = np.where(vt, "village_trees", "forest_parcel_trees")
    if "village_id" in sub:  # the village trees of each village: the assets a village sells
        labels[VILLAGE_TREES_LEVEL] = np.where(vt, sub["village_id"].to_numpy(dtype=object), None)
    if any(k.startswith(VILLAGE_SET) for k in dbh_models):
        sub = sub.assign(dbh_set=np.where(sub["village_tree"].to_numpy(bool), VILLAGE_SET, ""))
    done, totals = tree_carbon(sub, registry, dbh_models, height_sd_m=c.height_sd_m, draws=c.draws, seed=c.seed,
                               totals_by=labels, dbh_set_col="dbh_set")
    done = done.drop(columns=["dbh_set"], errors="ignore")
    t = pd.concat([done, t[~ok]], ignore_index=True).sort_values("tree_index", kind="stable") if len(t[~ok]) else done
    return t.reset_index(drop=True), totals


VILLAGE_TREES_LEVEL = "village_id_village_trees"  # totals level: village trees per village
VILLAGE_SET = "village:"  # DBH models of open-grown trees outside forest parcels, keyed "village:<group>"


def village_dbh_models(field: pd.DataFrame, registry: AllometryRegistry, form: str, source: str,
                       fallback: dict | None = None) -> dict[str, DbhModel]:
    """DBH models of open-grown trees (``VILLAGE_SET`` + group, and ``VILLAGE_SET*`` pooled) from measured
    village trees: ``species_group`` or ``species`` (a name no group maps is an error naming its rows),
    ``dbh_cm``, ``height_m`` (and ``crown_diameter_m`` for ``log_h_cd``).  A tree grown in the open is
    thicker at a given height than one grown in a stand, so forest plots' models would understate it."""
    t = field.copy()
    if "species_group" not in t:
        if "species" not in t:
            raise FieldError(f"{source}: needs a column 'species_group' or 'species' (have {list(t.columns)})")
        t["species_group"], _ = species_groups(t["species"], registry, fallback, source)
    validate_trees(t.assign(species=t["species_group"]), source)
    return {f"{VILLAGE_SET}{k}": m for k, m in fit_dbh_models(t, form=form).items()}


def register_ids(trees: pd.DataFrame, crs: CRS) -> pd.Series:
    epsg = crs.to_epsg() or 0
    return pd.Series(tree_ids(trees["x"].to_numpy(float), trees["y"].to_numpy(float), epsg), index=trees.index)


def chms_from_points(tiles, geobox_of, opts, work: Path) -> list[dict]:
    """One pit-free CHM (and DTM, unless the tiles are normalised) per group of touching tiles
    (:func:`~forestcarbon.rs.lidar.tile_clusters`), on ``geobox_of(tiles of the group)``, written into ``work``."""
    crs = CRS.from_user_input(geobox_of(tiles[:1]).crs.to_wkt())
    out = []
    for k, group in enumerate(lidar.tile_clusters(lidar.tile_bounds_in(tiles, crs))):
        sel = [tiles[j] for j in group]
        g = geobox_of(sel)
        files = {"chm": work / f"chm_{k + 1}.tif", "dtm": work / f"dtm_{k + 1}.tif"}
        run = lidar.lidar_products(sel, lidar.Targets(chm=g, dtm=g), opts, files, workdir=work / f"lidar_{k + 1}")
        shutil.rmtree(work / f"lidar_{k + 1}", ignore_errors=True)
        out.append({"name": f"tree_lidar_{k + 1}", "chm": files["chm"], "tiles": sel,
                    "dtm": files["dtm"] if "dtm" in run.files else None, "bounds": tuple(g.boundingbox)})
    return out


def detect_all(sources: list[dict], det: Detection, grid_crs: CRS, noise_classes) -> tuple[gpd.GeoDataFrame, list]:
    """Trees of every CHM in the grid CRS, numbered across CHMs, with their crown outlines."""
    frames, crowns, offset = [], [], 0
    for s in sources:
        points = None
        if s.get("tiles"):
            _, chm_crs, _ = open_chm(s["chm"])
            points = (lambda b, s=s, c=chm_crs: point_heights(s["tiles"], c, b, s.get("dtm"), noise_classes))
        trees, polys, crs = detect_file(s["chm"], det, points)
        polys = gpd.GeoSeries(polys, crs=crs).to_crs(grid_crs)
        pts = gpd.GeoDataFrame(trees.assign(chm_source=s["name"]),
                               geometry=gpd.points_from_xy(trees["x"], trees["y"]), crs=crs).to_crs(grid_crs)
        pts["x"], pts["y"] = pts.geometry.x, pts.geometry.y
        pts["tree_index"] = pts["tree_index"] + offset
        offset += len(pts)
        log.info("trees: %d trees in %s (%s)", len(pts), s["name"], s["chm"])
        frames.append(pts)
        crowns += list(polys)
    gdf = gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), crs=grid_crs)
    return gdf, crowns


def register(sources: list[dict], det: Detection, car: CarbonSettings, registry: AllometryRegistry,
             field_trees: pd.DataFrame, dbh_form: str, grid_crs: CRS, parcels, villages, noise_classes=(7, 18),
             fallback: dict | None = None, provenance: dict | None = None,
             species_layer: gpd.GeoDataFrame | None = None, village_models: dict[str, DbhModel] | None = None):
    """The register of the trees in ``sources``: (trees table, crown outlines in its order, totals, DBH
    models).  DBH models are fitted on ``field_trees`` (the plots stage's tree list: measured heights);
    trees outside forest parcels take ``village_models`` (:func:`village_dbh_models`) where given;
    ``species_layer``: polygons with ``species_group`` (:func:`species_layer_groups`)."""
    bad = [g for g in (car.default_group, *car.no_single_tree_groups) if g not in registry.groups]
    if bad:
        raise FieldError(f"trees.species_group / no_single_tree_groups: {bad} are not species groups of "
                         f"{registry.source_path} ({sorted(registry.groups)})")
    dbh_models = fit_dbh_models(field_trees, form=dbh_form) | (village_models or {})
    trees, crowns = detect_all(sources, det, grid_crs, noise_classes)
    trees = with_places(trees, parcels, villages)
    trees = species_groups_of(trees, parcels, registry, car.default_group, fallback, species_layer)
    table, totals = carbon(pd.DataFrame(trees.drop(columns="geometry")), registry, dbh_models, car)
    table.insert(0, "tree_id", register_ids(table, grid_crs).to_numpy())
    by_index = dict(zip(trees["tree_index"], crowns))
    ordered = [by_index[i] for i in table["tree_index"].to_numpy()]
    table = table.drop(columns=["tree_index"]).assign(allometry_version=registry.version, **(provenance or {}))
    return table, ordered, totals, dbh_models


def changes_since(previous: Path, table: pd.DataFrame, max_distance_m: float, max_height_drop_m: float) -> pd.DataFrame:
    """Matched (growth: ``dheight_m``, ``dcarbon_kg``), ``lost`` and ``new`` trees against an earlier register
    (:func:`~forestcarbon.models.tree_match.match_epochs`)."""
    prev = pd.read_parquet(previous, columns=["tree_id", "x", "y", "height_m", "carbon_kg"])
    matched, lost, new = match_epochs(prev, table, max_distance_m, max_height_drop_m)
    return pd.concat([matched.assign(change="matched"),
                      lost[["tree_id"]].rename(columns={"tree_id": "id_a"}).assign(change="lost"),
                      new[["tree_id"]].rename(columns={"tree_id": "id_b"}).assign(change="new")], ignore_index=True)


def write_outputs(out, table, crowns, crs, totals, dbh_models, changes=None, validation=None, chms=()) -> None:
    """Every file of the register under ``out`` (:class:`~forestcarbon.flows.layout.Layout`), each atomically;
    CHMs built from points are moved beside them."""
    write_register(table, crowns, crs, out.trees_dir)
    write_table(totals, out.trees_totals)
    write_table(pd.DataFrame([{"key": k, **m.to_dict()} for k, m in dbh_models.items()]), out.trees_dbh_models)
    if changes is not None:
        write_table(changes, out.trees_changes)
    if validation is not None:
        write_json(validation, out.trees_validation)
    if chms:
        out.trees_chm_dir.mkdir(parents=True, exist_ok=True)
        for p in chms:
            shutil.move(str(p), out.trees_chm_dir / Path(p).name)
