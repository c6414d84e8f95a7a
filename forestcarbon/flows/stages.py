"""The pipeline's stages as plain functions: read inputs, compute, write outputs.

Each stage takes a :class:`Context` (configuration, the one target GeoBox,
the output layout), reads its inputs or earlier stages' outputs, calls the
computation in ``rs``, ``vector`` and ``models`` and writes atomically.  No
Prefect here: the flows in :mod:`forestcarbon.flows.pipeline` only wire
these together.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import dask
import dask.array as da
import geopandas as gpd
import joblib
import numpy as np
import pandas as pd
import rioxarray  # noqa: F401  (registers the .rio accessor used by open_rasterio)
import xarray as xr
from odc.geo.geobox import GeoBox

from ..config import Config, default_allometry_path
from ..errors import (AllometryError, ConfigError, CRSError, FieldError, InputNotFoundError, LidarError, ModelError,
                      SceneError, StageInputError, UnresolvedSpeciesWarning)
from ..fileio import atomic_path, sha256, write_json, write_table
from ..models import carbon as carbon_model
from ..models.allometry import (candidate_agb, load_registry, resolve_fallback, resolve_species, species_groups,
                               validate_trees)
from ..models.height import fill_heights
from ..models.uncertainty import ErrorModel, monte_carlo
from ..models.coverage import CoverageModel, applicability_block, predict_coverage_block
from ..models.regressor import sparse_features, spatial_blocks
from ..models.support import window_at, window_mean, window_px
from ..rs import composite, lidar
from ..rs.cog import write_cog
from ..rs.forest_mask import NO_PARCEL, REASON_BITS, forest_mask_block, land_class_text
from ..rs.grid import check_on_grid, geobox_from_config, pixel_area_ha
from ..rs.scenes import check_scene_files, read_scenes, select_overlapping
from ..rs.tiles import lonlat_footprint
from ..models.plots import plot_biomass
from ..vector.inventory import read_trees
from ..vector.layers import check_layer, check_layer_contents, read_layer
from ..vector.overlay import project_parcel_shares, project_totals
from ..vector.plots import check_plot_ids, equation_spread, read_plots
from ..vector.rasterize import burn_values
from ..vector.zonal import zonal_table
from .layout import Layout

log = logging.getLogger("forestcarbon")

LIDAR_FEATURES = ("zmax", "zmean", "zsd", "zq50", "zq95", "pzabove2")


@dataclass(frozen=True)
class Context:
    cfg: Config
    gbox: GeoBox

    @property
    def out(self) -> Layout:
        return Layout(Path(self.cfg.output))

    def need(self, *paths: Path) -> None:
        for p in paths:
            if not p.exists():
                raise StageInputError(f"{p} is missing; run the stage that writes it first")


STAGE_NEEDS = {
    "mosaic": ("stac_items",), "lidar": (), "terrain": (), "plots": ("plots", "trees"), "model": (), "map": (),
    "parcels": ("parcels",), "projects": ("parcels",), "report": ("parcels",),
}
"""Input keys each stage needs (LiDAR, projects, truth and the parcels' species field are optional)."""


def preflight(cfg: Config, stages: list[str] | None = None) -> Context:
    """Check the inputs the requested stages (default: all) need, before any computation; return the run
    context.

    Missing files, layers without their id field, unparsable CRSs and the contents checked by
    :func:`check_inventory` and :func:`~forestcarbon.vector.layers.check_layer_contents` fail here with
    one line naming the file, field or value.  A stage run on its own is checked for its own inputs only.
    """
    names = list(STAGES) if not stages else [s for s in STAGES if s in stages]
    i = cfg.inputs
    needed = {k for n in names for k in STAGE_NEEDS[n]}
    if "lidar" in names and i.plots is not None:
        needed.add("plots")  # plot-footprint metrics
    if "map" in names and (cfg.carbon.group_field or cfg.forest_mask.parcel_field):
        needed.add("parcels")
    for key in sorted(needed):
        if getattr(i, key) is None:
            stage = next((n for n in names if key in STAGE_NEEDS[n]), "map")
            raise ConfigError(f"inputs.{key} is required by stage {stage!r}")
    must = [(f"inputs.{k}", getattr(i, k)) for k in sorted(needed)]
    if "lidar" in names:
        must += [(f"inputs.{k}", getattr(i, k)) for k in ("laz", "lidar_metrics_raster") if getattr(i, k) is not None]
    if "projects" in names and i.projects is not None:
        must.append(("inputs.projects", i.projects))
    if "terrain" in names and i.dem is not None:
        must.append(("inputs.dem", i.dem))
    if "map" in names and i.landcover is not None:
        must.append(("inputs.landcover", i.landcover))
    if cfg.allometry is not None and {"plots", "map", "parcels"} & set(names):
        must.append(("allometry", cfg.allometry))
    if cfg.truth is not None and "report" in names:
        must += [("truth.agb", cfg.truth.agb), ("truth.parcels", cfg.truth.parcels)]
    if cfg.grid.aoi is not None:
        must.append(("grid.aoi", cfg.grid.aoi))
    for key, p in must:
        if not Path(p).exists():
            raise InputNotFoundError(f"{key}: file not found: {p}")
    check_output_folder(cfg, [p for _, p in must])
    if "parcels" in needed:
        fields = (i.parcel_id,) + tuple(f for f in (cfg.carbon.group_field, cfg.forest_mask.parcel_field) if f)
        check_layer(i.parcels, i.parcels_layer, fields)
        check_layer_contents(i.parcels, i.parcels_layer, i.parcel_id)
        if "map" in names and cfg.forest_mask.parcel_field:
            check_forest_codes(i.parcels, i.parcels_layer, cfg.forest_mask.parcel_field, cfg.forest_mask.forest_codes)
    if "map" in names and i.landcover is not None:
        check_categorical_raster(i.landcover, "inputs.landcover")
    if "plots" in needed:
        if Path(i.plots).suffix.lower() in (".csv", ".txt", ".xlsx", ".xls", ".xlsm"):
            if cfg.ground.plots_crs is None:
                raise ConfigError(f"inputs.plots: {i.plots} is a table; set ground.plots_crs (the CRS of its x/y columns)")
        else:
            check_layer(i.plots, i.plots_layer, (i.plot_id,))
    if "projects" in names and i.projects is not None:
        check_layer_contents(i.projects, i.projects_layer, i.project_id)
    if "terrain" in names and i.dem is not None:
        check_dem(i.dem)
    if "lidar" in names:
        if i.lidar_crs is not None:
            from pyproj import CRS
            from pyproj.exceptions import CRSError as PyprojCRSError

            try:
                CRS.from_user_input(i.lidar_crs)
            except PyprojCRSError:
                raise CRSError(f"inputs.lidar_crs: {i.lidar_crs!r} is not a CRS that parses") from None
        if i.laz is not None and i.lidar_metrics_raster is None:
            tiles = lidar.index_tiles(lidar.find_tiles(i.laz), i.lidar_crs)  # headers and file sizes only
            check_tiles_on_grid(tiles, geobox_from_config(cfg.grid))
    if "mosaic" in names:
        m = cfg.mosaic
        missing_bands = {"blue", "red", "nir", "nir08", "swir16", "swir22"} - set(m.bands)
        if missing_bands:
            raise ConfigError(f"mosaic.bands must include {sorted(missing_bands)} for the spectral indices")
        read_scenes(i.stac_items, m.bands, m.start, m.end, m.asset_keys)  # item JSONs only: asset keys, sensors
    ctx = Context(cfg, geobox_from_config(cfg.grid))
    if {"plots", "map", "parcels"} & set(names):
        registry = load_registry(cfg.allometry or default_allometry_path())
        try:
            resolve_fallback(cfg.allometry_fallback, registry)
        except AllometryError as err:
            raise ConfigError(str(err)) from None
        if "plots" in names:
            check_inventory(ctx, registry)
    return ctx


def check_forest_codes(path: Path, layer: str | None, field: str, codes: tuple[str, ...]) -> None:
    """At least one parcel must carry one of the forest codes (else the codes are written differently from the
    layer's, e.g. 111 against '0111', and every pixel would be zeroed)."""
    values = pd.Series(land_class_text(gpd.read_file(path, layer=layer, columns=[field], ignore_geometry=True)[field],
                                       codes))
    if not values.isin(codes).any():
        found = sorted(values.unique().tolist())
        raise ConfigError(f"forest_mask.forest_codes {list(codes)}: no parcel of {path} carries one in field {field!r} "
                          f"(its values: {found[:12]}{' ...' if len(found) > 12 else ''})")


def check_categorical_raster(path: Path, key: str) -> None:
    import rasterio

    with rasterio.open(path) as src:
        if src.crs is None:
            raise CRSError(f"{key}: {path} has no CRS")
        if np.dtype(src.dtypes[0]).kind not in "iu":
            raise ConfigError(f"{key}: {path} band 1 has type {src.dtypes[0]}; a land-cover raster holds integer classes")


def check_dem(path: Path) -> None:
    """A DEM must have a CRS and elevations in metres: its smallest overview's values within
    :data:`~forestcarbon.rs.terrain.ELEVATION_RANGE_M` (centimetres or decimetres land outside it)."""
    import rasterio

    from ..rs.terrain import ELEVATION_RANGE_M

    with rasterio.open(path) as src:
        if src.crs is None:
            raise CRSError(f"inputs.dem: {path} has no CRS")
        if np.dtype(src.dtypes[0]).kind not in "iuf":
            raise ConfigError(f"inputs.dem: {path} band 1 has type {src.dtypes[0]}, not numbers")
        f = max(1, max(src.height, src.width) // 512)
        z = src.read(1, out_shape=(max(1, src.height // f), max(1, src.width // f)), masked=True).astype("float64")
    z = z.compressed()
    z = z[np.isfinite(z)]
    lo, hi = ELEVATION_RANGE_M
    if z.size and (z.min() < lo or z.max() > hi):
        raise ConfigError(f"inputs.dem: {path} holds elevations {z.min():.6g}..{z.max():.6g}, outside {lo:g}..{hi:g} m: "
                          "not metres above sea level (centimetres? a nodata value not declared?)")


def check_tiles_on_grid(tiles, gbox: GeoBox) -> None:
    """LiDAR tiles whose header bounds miss the grid are an error naming them (a tile 100 km off would
    stretch the CHM over the gap)."""
    import shapely
    from pyproj import CRS

    grid = shapely.box(*gbox.extent.boundingbox)
    bounds = lidar.tile_bounds_in(tiles, CRS.from_user_input(gbox.crs.to_wkt()))
    off = [t.path.name for t, b in zip(tiles, bounds) if not shapely.box(*b).intersects(grid)]
    if off:
        raise LidarError(f"inputs.laz: {len(off)} of {len(tiles)} LiDAR tiles lie outside the grid "
                         f"{tuple(round(v) for v in gbox.extent.boundingbox)}: {off[:5]}; wrong CRS, or tiles from "
                         "elsewhere?")


def check_output_folder(cfg: Config, inputs: list) -> None:
    """The output folder must be neither an input nor inside an input folder, hold no input (stages
    replace whole sub-folders of it), and be writable."""
    import os

    out = Path(cfg.output).resolve()
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not os.access(existing, os.W_OK):
        raise ConfigError(f"output: {existing} is not writable, so the output folder {out} cannot be written")
    for p in inputs:
        p = Path(p).resolve()
        if out == p or p in out.parents or out in p.parents:
            where = "is" if out == p else ("lies inside" if p in out.parents else "holds")
            raise ConfigError(f"output: the output folder {out} {where} the input {p}; choose a folder of its own")


def check_inventory(ctx: "Context", registry) -> None:
    """The plots and trees (small tables) through the plots stage's own biomass step, up front: columns,
    ids, numbers, implausible values, designs, plot areas, orphan trees, species without an equation,
    plot AGB above the ceiling and plots off the grid fail here, before the mosaic and LiDAR stages run."""
    _, plots, _ = inventory_biomass(ctx, registry)
    off = ~plots.intersects(ctx.gbox.extent.geom)
    if off.any():
        raise FieldError(f"{ctx.cfg.inputs.plots}: {int(off.sum())} of {len(plots)} plots lie outside the grid "
                         f"{tuple(round(v) for v in ctx.gbox.extent.boundingbox)} ({ctx.cfg.grid.crs}): "
                         f"{list(plots.loc[off, 'plot_id'][:5])}; wrong CRS or coordinates, or a grid too small?")


def preflight_mosaic(cfg: Config) -> Context:
    """The checks the mosaic alone needs (used by the nightly update)."""
    if not Path(cfg.inputs.stac_items).exists():
        raise InputNotFoundError(f"inputs.stac_items: file not found: {cfg.inputs.stac_items}")
    return Context(cfg, geobox_from_config(cfg.grid))


# 1 ------------------------------------------------------------------ mosaic
def stage_mosaic(ctx: Context) -> dict:
    cfg, m = ctx.cfg, ctx.cfg.mosaic
    scenes = select_overlapping(read_scenes(cfg.inputs.stac_items, m.bands, m.start, m.end, m.asset_keys),
                                lonlat_footprint(ctx.gbox))
    if not scenes:
        raise SceneError(f"{cfg.inputs.stac_items}: no scene within {m.start}..{m.end} intersects the area of interest")
    check_scene_files(scenes, m.bands)
    comp = composite.build_composite(scenes, ctx.gbox, bands=m.bands, scl_mask=m.scl_classes(), qa_flags=m.qa_flags(),
                                     method=m.method, min_valid_fraction=m.min_valid_fraction, chunk_px=cfg.compute.chunk_px,
                                     dilation_px=m.mask_dilation_px, harmonise=m.harmonise)
    write_composite(comp, ctx.gbox, ctx.out.root / "mosaic", list(m.bands), cfg.compute.chunk_px)
    written = open_stack(ctx.out.reflectance, cfg.compute.chunk_px)
    idx = composite.spectral_indices(written.to_dataset("band"))
    write_cog(idx.to_array("band").data, ctx.gbox, ctx.out.indices, descriptions=list(idx.data_vars), block=cfg.compute.chunk_px)
    write_table(scene_table(scenes, comp), ctx.out.scenes)
    return {"scenes": len(comp.scenes_used), "scenes_skipped": len(scenes) - len(comp.scenes_used),
            "bandpass_adjustment": comp.bandpass_summary}


def write_composite(comp: "composite.Composite", gbox: GeoBox, folder: Path, bands: list[str], chunk_px: int) -> None:
    """reflectance.tif, valid_count.tif (and source_date.tif) of a composite into ``folder``."""
    tags = {"scenes": ",".join(comp.scenes_used), "method": comp.method, "bandpass_adjustment": comp.bandpass_summary}
    write_cog(comp.reflectance[bands].to_array("band").data, gbox, folder / "reflectance.tif", descriptions=bands,
              units="surface reflectance", tags=tags, block=chunk_px)
    write_cog(comp.valid_count.data, gbox, folder / "valid_count.tif", nodata=None, descriptions=["valid_count"], block=chunk_px)
    if comp.source_date is not None:
        write_cog(comp.source_date.data, gbox, folder / "source_date.tif", nodata=-1,
                  descriptions=["source_date_days_since_1970"], block=chunk_px)


def scene_table(scenes, comp: "composite.Composite") -> pd.DataFrame:
    used = set(comp.scenes_used)
    return pd.DataFrame({
        "scene_id": [s.id for s in scenes], "sensor": [s.sensor.name for s in scenes],
        "datetime": [s.datetime.isoformat() for s in scenes],
        "processing_baseline": [s.item.properties.get("s2:processing_baseline") for s in scenes],
        "boa_add_offset": [s.boa_add_offset for s in scenes], "scale": [s.scale for s in scenes],
        "offset": [s.offset for s in scenes], "valid_fraction": np.round(comp.valid_fraction, 4),
        "used": [s.id in used for s in scenes], "bandpass": list(comp.bandpass) or ["none"] * len(scenes),
    })


def open_stack(path: Path, chunk_px: int) -> xr.DataArray:
    """A multi-band COG as a lazy (band, y, x) DataArray with band names as coordinates."""
    da = rioxarray.open_rasterio(path, chunks={"band": -1, "x": chunk_px, "y": chunk_px}, masked=True)
    names = list(da.attrs.get("long_name", [])) if isinstance(da.attrs.get("long_name"), (list, tuple)) else [da.attrs.get("long_name")]
    return da.assign_coords(band=names)


# 2 ------------------------------------------------------------------- lidar
def stage_lidar(ctx: Context) -> dict:
    cfg = ctx.cfg
    if cfg.inputs.lidar_metrics_raster is not None:
        return premade_lidar_metrics(ctx, cfg.inputs.lidar_metrics_raster)
    if cfg.inputs.laz is None:
        log.info("lidar: no inputs.laz configured; the model will use optical features only")
        return {"tiles": 0}
    tiles = lidar.index_tiles(lidar.find_tiles(cfg.inputs.laz), cfg.inputs.lidar_crs)
    for line in lidar.units_summary(tiles):
        log.info("lidar: %s (points reprojected into the metre grid)", line)
    chm_gbox = chm_geobox(tiles, ctx.gbox, cfg.lidar.chm_resolution_m)
    plots = ()
    if cfg.inputs.plots is not None:
        fp = plot_footprints(ctx)
        plots = tuple(zip(fp["plot_id"].astype(str), fp.geometry))
    targets = lidar.Targets(metrics=ctx.gbox, chm=chm_gbox, dtm=chm_gbox, plots=plots)
    opts = lidar.Options(normalized=cfg.inputs.lidar_normalized, ground_classes=tuple(cfg.inputs.ground_classes),
                         buffer_m=cfg.lidar.buffer_m, min_height_m=cfg.lidar.min_height_m,
                         max_height_m=cfg.lidar.max_height_m, chm_algorithm=cfg.lidar.chm_algorithm,
                         pitfree_thresholds_m=tuple(cfg.lidar.pitfree_thresholds_m),
                         pitfree_max_edge_m=tuple(cfg.lidar.pitfree_max_edge_m),
                         noise_classes=tuple(cfg.lidar.noise_classes),
                         tiles_without_ground=cfg.lidar.tiles_without_ground)
    out = {"metrics": ctx.out.lidar_metrics, "chm": ctx.out.lidar_chm, "dtm": ctx.out.lidar_dtm}
    try:
        run = lidar.lidar_products(tiles, targets, opts, out, workdir=ctx.out.lidar_work)
    finally:
        shutil.rmtree(ctx.out.lidar_work, ignore_errors=True)
    n_points = rioxarray.open_rasterio(ctx.out.lidar_metrics, chunks={"x": cfg.compute.chunk_px, "y": cfg.compute.chunk_px})
    cover = (n_points.sel(band=lidar.METRICS.index("n_points") + 1).fillna(0) > 0).astype("uint8")
    write_cog(cover.data, ctx.gbox, ctx.out.lidar_coverage, nodata=None, descriptions=["lidar_coverage"])
    write_table(pd.DataFrame([{"path": str(t.path), "points": t.point_count, "crs": t.crs.to_string(),
                               "xmin": t.bounds[0], "ymin": t.bounds[1], "xmax": t.bounds[2], "ymax": t.bounds[3]}
                              for t in tiles]), ctx.out.lidar_tiles)
    if run.plot_metrics is not None:
        write_table(run.plot_metrics, ctx.out.lidar_plot_metrics)
    return {"tiles": len(tiles), "points": run.points, "outlier_returns_dropped": run.dropped,
            "noise_returns_dropped": run.noise, "returns_without_ground_within_50m": run.no_ground,
            "tiles_already_normalised": run.normalized_tiles,
            "plots_with_lidar": 0 if run.plot_metrics is None else int(len(run.plot_metrics)),
            "covered_fraction": float(cover.mean().compute())}


def premade_lidar_metrics(ctx: Context, path: Path) -> dict:
    """Metrics delivered as a raster (one band per metric, named by its description) onto the target grid.

    Resampled with the average of the source cells (odc-geo) when they are finer than the grid,
    nearest otherwise; bands the model needs must be present.
    """
    import rasterio

    from ..rs.rasters import load_on_grid

    with rasterio.open(path) as src:
        names = [d or "" for d in src.descriptions]
        finer = abs(src.transform.a) < abs(ctx.gbox.affine.a)
    missing = [k for k in LIDAR_FEATURES if k not in names]
    if ctx.cfg.model.use_lidar and missing:
        raise ConfigError(f"inputs.lidar_metrics_raster: {path} lacks bands {missing} (its bands: {names})")
    da = load_on_grid(path, ctx.gbox, resampling="average" if finer else "nearest", chunk_px=ctx.cfg.compute.chunk_px,
                      nodata=float("nan"))
    write_cog(da.data.astype("float32"), ctx.gbox, ctx.out.lidar_metrics, descriptions=names,
              tags={"source": str(path), "resampling": "average" if finer else "nearest"})
    return {"tiles": 0, "premade": str(path)}


def chm_geobox(tiles, gbox: GeoBox, resolution_m: float) -> GeoBox:
    """A fine grid over the LiDAR tiles only, aligned with the target grid (its edges are target-grid edges)."""
    from pyproj import CRS

    bounds = lidar.tile_bounds_in(tiles, CRS.from_user_input(gbox.crs.to_wkt()))
    a = gbox.affine
    r = abs(a.a)
    x0 = a.c + np.floor((min(b[0] for b in bounds) - a.c) / r) * r
    x1 = a.c + np.ceil((max(b[2] for b in bounds) - a.c) / r) * r
    y1 = a.f - np.floor((a.f - max(b[3] for b in bounds)) / r) * r
    y0 = a.f - np.ceil((a.f - min(b[1] for b in bounds)) / r) * r
    return GeoBox.from_bbox((x0, y0, x1, y1), crs=gbox.crs, resolution=resolution_m)


# 2b --------------------------------------------------------------- terrain
def stage_terrain(ctx: Context) -> dict:
    """Elevation, slope and aspect (as northness/eastness) on the grid, from ``inputs.dem`` (wall to wall) or
    else the LiDAR DTM averaged onto the grid (where flown); neither: no terrain features."""
    import rasterio

    from ..rs.rasters import load_on_grid
    from ..rs.terrain import TERRAIN_FEATURES, terrain_features

    cfg = ctx.cfg
    chunk = cfg.compute.chunk_px
    if cfg.inputs.dem is not None:
        path, coverage = cfg.inputs.dem, "wall-to-wall"
        with rasterio.open(path) as src:
            finer = abs(src.transform.a) < abs(ctx.gbox.affine.a)
        dem = load_on_grid(path, ctx.gbox, resampling="average" if finer else "bilinear", chunk_px=chunk,
                           nodata=float("nan")).isel(band=0)
    elif ctx.out.lidar_dtm.exists():
        path, coverage = ctx.out.lidar_dtm, "lidar"
        dem = load_on_grid(path, ctx.gbox, resampling="average", chunk_px=chunk, nodata=float("nan")).isel(band=0)
    else:
        log.info("terrain: no inputs.dem and no LiDAR DTM; the model uses no terrain features")
        ctx.out.terrain.unlink(missing_ok=True)
        return {"terrain": None}
    feats = terrain_features(dem.data.astype("float32"), abs(ctx.gbox.affine.a))
    write_cog(feats, ctx.gbox, ctx.out.terrain, descriptions=list(TERRAIN_FEATURES), block=chunk,
              tags={"source": str(path), "coverage": coverage,
                    "method": "elevation averaged (finer source) or bilinear onto the grid; slope/aspect Horn 1981 "
                              "on the grid; northness = cos(aspect), eastness = sin(aspect), 0 where flat"})
    return {"terrain": str(path), "coverage": coverage}


# 3 ------------------------------------------------------------------- plots
def plot_footprints(ctx: Context):
    """The plots layer as footprints on the grid CRS, with the configured designs and column mapping."""
    i, g = ctx.cfg.inputs, ctx.cfg.ground
    return read_plots(i.plots, i.plots_layer, i.plot_id, ctx.gbox.crs.to_wkt(), columns=g.plots_columns,
                      plots_crs=g.plots_crs, designs=g.designs, size_on_slope=g.plot_size_on_slope)


def inventory_biomass(ctx: Context, registry) -> tuple[pd.DataFrame, gpd.GeoDataFrame, dict]:
    """Trees (heights filled where configured) and plots through :func:`plot_biomass`, with the configured
    plausibility limits: (trees, plots, height models).  Cheap: preflight runs it too."""
    cfg, i, g = ctx.cfg, ctx.cfg.inputs, ctx.cfg.ground
    plots = plot_footprints(ctx)
    trees = read_trees(i.trees, g.trees_columns, g.trees_sheet)
    source = str(i.trees)
    check_plot_ids(trees, plots, source)
    validate_trees(trees, source, g.plausible_dbh_cm, g.plausible_height_m)
    height_models: dict = {}
    if g.height_model is not None:
        groups, _ = species_groups(trees["species"], registry, cfg.allometry_fallback, source)
        trees, height_models = fill_heights(trees.assign(species_group=groups), g.height_model)
        trees = trees.drop(columns="species_group")
    tree_out, plot_out = plot_biomass(trees, plots, registry, source=source, fallback=cfg.allometry_fallback,
                                      designs=g.designs, dbh_out_of_range=g.dbh_out_of_range,
                                      dbh_range_cm=g.plausible_dbh_cm, height_range_m=g.plausible_height_m,
                                      max_agb_mg_ha=g.max_plot_agb_mg_ha)
    return tree_out, plot_out, height_models


def stage_plots(ctx: Context) -> dict:
    cfg, g = ctx.cfg, ctx.cfg.ground
    registry = load_registry(cfg.allometry or default_allometry_path())
    tree_out, plot_out, height_models = inventory_biomass(ctx, registry)
    errors = ErrorModel(**g.uncertainty.model_dump())
    live = tree_out[tree_out["status"] == "alive"]
    spread = pd.DataFrame()
    if len(live):
        plot_out = plot_out.merge(monte_carlo(live, registry, errors, height_models=height_models), on="plot_id",
                                  how="left")
        spread, per_plot = equation_spread(live, candidate_agb(live, registry))
        plot_out = plot_out.merge(per_plot, on="plot_id", how="left")
        plot_out["equation_spread_exceeds_mc"] = ((plot_out["agb_mg_ha_eq_max"] - plot_out["agb_mg_ha_eq_min"])
                                                  > (plot_out["agb_mg_ha_mc_q97_5"] - plot_out["agb_mg_ha_mc_q2_5"]))
    # written only once everything is computed: a failed stage leaves none of its files
    if height_models:
        write_table(pd.DataFrame([{"key": k, "method": m.method, "coef": list(m.coef), "rse": m.rse, "n_measured": m.n}
                                  for k, m in height_models.items()]), ctx.out.height_models)
    write_table(plot_out, ctx.out.plots, layer="plots")
    write_table(tree_out, ctx.out.trees)
    write_table(registry.equations_table(), ctx.out.equations)
    write_table(spread, ctx.out.equation_spread)
    above = tree_out["equation_id"].str.split(";").str[0]
    return {"plots": len(plot_out), "trees": len(tree_out), "dead_trees": int((tree_out["status"] == "dead").sum()),
            "allometry_version": registry.version,
            "unverified_tree_share": float(1 - tree_out["equation_verified"].mean()),
            "trees_dbh_out_of_range": int((~tree_out["dbh_in_range"]).sum()),
            "trees_with_modelled_height": int(tree_out.get("height_source", pd.Series(dtype=str)).astype(str)
                                              .str.startswith("hd_model").sum()),
            "monte_carlo_draws": errors.draws,
            "trees_per_equation": {k: int(v) for k, v in above.value_counts().items()},
            "trees_per_species_route": {k: int(v) for k, v in tree_out["species_source"].value_counts().items()},
            "plots_equation_spread_pct_median": (float(plot_out["equation_spread_pct"].median())
                                                 if "equation_spread_pct" in plot_out else None)}


# 4 ------------------------------------------------------------------- model
def feature_rasters(ctx: Context) -> list[tuple[Path, list[str], bool]]:
    """(raster, band names used as features, whether they cover the whole grid) in feature order.

    Reflectances, indices and DEM terrain are wall to wall: a pixel without them gets no prediction.
    LiDAR metrics and terrain from the LiDAR DTM exist only where flown: missing there, the model's
    NaN handling serves.
    """
    import rasterio

    from ..rs.terrain import TERRAIN_FEATURES

    ctx.need(ctx.out.reflectance, ctx.out.indices)
    out = [(ctx.out.reflectance, list(ctx.cfg.mosaic.bands), True), (ctx.out.indices, ["ndvi", "evi", "ndmi", "nbr"], True)]
    if ctx.cfg.model.use_lidar and ctx.out.lidar_metrics.exists():
        out.append((ctx.out.lidar_metrics, list(LIDAR_FEATURES), False))
    if ctx.out.terrain.exists():
        with rasterio.open(ctx.out.terrain) as src:
            wall = src.tags().get("coverage") == "wall-to-wall"
        if wall or (ctx.cfg.model.use_lidar and ctx.out.lidar_metrics.exists()):
            out.append((ctx.out.terrain, list(TERRAIN_FEATURES), wall))
    for path, _, _ in out:
        check_on_grid(path, ctx.gbox)
    return out


def stage_model(ctx: Context) -> dict:
    """Coverage-aware models (:mod:`..models.coverage`): an optical model on every plot with the wall-to-wall
    features, a LiDAR + optical model on the plots LiDAR covers; each chosen by spatial-block CV among
    ``model.kind`` candidates, with random CV beside it, calibrated intervals, a residual variogram,
    permutation importance and (complete features) the area of applicability (:func:`..models.fit.fit_table`)."""
    from ..models.card import build_card
    from ..models.coverage import SOURCES, coverage_labels
    from ..models.fit import fit_table
    from ..models.validation import make_splits

    cfg, m = ctx.cfg, ctx.cfg.model
    ctx.need(ctx.out.plots)
    plots = gpd.read_file(ctx.out.plots, layer="plots")
    table = pd.DataFrame({"plot_id": plots["plot_id"]})
    sources = feature_rasters(ctx)
    res = float(abs(ctx.gbox.affine.a))
    if m.support == "window":
        k = m.window_px or window_px(float(plots.geometry.area.median()), res)
        if k % 2 == 0:
            raise ConfigError(f"model.window_px must be odd (a window centred on its pixel), not {k}")
        support = {"kind": f"window mean {k} x {k} pixels", "area_m2": k * k * res * res, "window_px": k}
        for path, names, _ in sources:
            vals = plot_window_features(path, plots, ctx.gbox, k)
            for j, n in enumerate(names):
                table[n] = vals[:, j]
    else:
        support = {"kind": "plot footprint mean of the grid's features", "area_m2": float(plots.geometry.area.median())}
        for path, names, _ in sources:
            z = zonal_table(path, plots, "plot_id", ("mean",))
            for n in names:
                table[n] = z[f"{n}_mean"].to_numpy()
    wall = [n for _, ns, w in sources if w for n in ns]
    partial = [n for _, ns, w in sources if not w for n in ns]
    table["agb_mg_ha"] = plots["agb_mg_ha"].to_numpy()
    c = plots.geometry.centroid
    table["x"], table["y"] = c.x.to_numpy(), c.y.to_numpy()
    table["cv_block"] = spatial_blocks(table.x, table.y, m.cv_block_m)
    no_optical = ~np.isfinite(table[wall].to_numpy(dtype="float64")).all(axis=1)
    if no_optical.any():
        ids = table.plot_id[no_optical].astype(str).tolist()
        if m.plots_without_features == "error":
            raise ModelError(f"{int(no_optical.sum())} plots lack mosaic features (cloud or outside the mosaic): "
                             f"{ids[:10]}{' ...' if len(ids) > 10 else ''}; model.plots_without_features: drop to "
                             "train without them")
        log.warning("model: %d plots lack mosaic features (cloud or outside the mosaic) and train no model: %s",
                    len(ids), ids[:10])
    table["trains"] = ~no_optical
    train = table[~no_optical].reset_index(drop=True)
    make_splits(len(train), folds=m.cv_folds, seed=m.seed)  # enough plots for the CV at all, before anything else
    dropped = sparse_features(train, wall + partial, min_plots=2 * m.cv_folds)
    if dropped:
        log.warning("model: features %s have fewer than %d plots with values; not used", dropped, 2 * m.cv_folds)
    wall = [f for f in wall if f not in dropped]
    partial = [f for f in partial if f not in dropped]
    coverage = coverage_labels(train, partial)
    rf_grid = {k: tuple(int(v) if k == "min_samples_leaf" else v for v in vs) for k, vs in m.rf_grid.items()}
    kw = dict(block_m=m.cv_block_m, folds=m.cv_folds, seed=m.seed, alpha=m.interval_alpha, rf_grid=rf_grid,
              kinds=MAP_KINDS if m.kind == "auto" else (m.kind,))
    fits, notes = {}, []
    lidar_rows = coverage == "lidar"
    if partial:
        sub = train[lidar_rows].reset_index(drop=True)
        try:
            fits["lidar"] = fit_table(sub, "agb_mg_ha", wall + partial, x=sub.x, y=sub.y, **kw)
        except ModelError as err:
            notes.append(f"no LiDAR model ({int(lidar_rows.sum())} plots under LiDAR): {err}")
            log.warning("model: %s", notes[-1])
    fits["optical"] = fit_table(train, "agb_mg_ha", wall, x=train.x, y=train.y, coverage=coverage, **kw)
    table["coverage_class"] = ""
    table.loc[~no_optical, "coverage_class"] = coverage
    for name, fit in fits.items():
        col = np.full(len(table), np.nan)
        rows = np.flatnonzero(~no_optical)[lidar_rows] if name == "lidar" else np.flatnonzero(~no_optical)
        col[rows] = fit.honest.predicted
        table[f"agb_cv_pred_{name}_mg_ha"] = col
    comparison = model_comparison(fits)
    serving = [n for n in ("lidar", "optical") if n in fits]
    if comparison is not None and not comparison["lidar_plus_optical"]["rmse"] < comparison["optical_only"]["rmse"]:
        serving.remove("lidar")
        notes.append(f"the LiDAR + optical model is not served: on the {comparison['optical_only']['n']} plots under "
                     f"LiDAR its spatial-CV RMSE {comparison['lidar_plus_optical']['rmse']:.1f} Mg/ha is not below the "
                     f"optical model's {comparison['optical_only']['rmse']:.1f} (more LiDAR plots would change that)")
        log.warning("model: %s", notes[-1])
    served = "lidar" if "lidar" in serving else "optical"
    table["agb_cv_pred_mg_ha"] = table[f"agb_cv_pred_{served}_mg_ha"].fillna(table["agb_cv_pred_optical_mg_ha"])
    write_table(table, ctx.out.training_table)
    digest = sha256(ctx.out.training_table)
    grid = {"crs": ctx.gbox.crs.to_wkt(), "resolution_m": res}
    cards = {n: build_card(f, name=f"{cfg.name}-{n}", target_units="Mg/ha (dry aboveground biomass)", support=support,
                           training_sha256=digest, source=str(ctx.out.training_table), grid=grid)
             for n, f in fits.items()}
    ident = hashlib.sha256((digest + "".join(c["model_id"] for c in cards.values())).encode()).hexdigest()[:16]
    card = {"model_id": f"{cfg.name}-{ident}", "training_table_sha256": digest, "features": wall + partial,
            "lidar_features": partial if "lidar" in fits else [], "models": cards, "serving_order": serving,
            "comparison_on_lidar_plots": comparison, "features_dropped":
            {f: f"fewer than {2 * m.cv_folds} plots with values" for f in dropped},
            "plots_without_mosaic_features": table.plot_id[no_optical].astype(str).tolist(), "notes": notes,
            "config": m.model_dump()}
    models = [CoverageModel(n, fits[n].model, fits[n].intervals, tuple(fits[n].features)) for n in serving]
    card["served_features"] = [f for f in wall + partial if any(f in mm.features for mm in models)]
    with atomic_path(ctx.out.model) as tmp:
        joblib.dump({"models": models, "features": card["served_features"], "model_id": card["model_id"],
                     "aoa": {n: f.aoa for n, f in fits.items()}, "support": support, "grid": grid}, tmp)
    card["model_file_sha256"] = sha256(ctx.out.model)
    write_json(card, ctx.out.model_card)
    out = {"model_id": card["model_id"], "comparison_on_lidar_plots": comparison}
    for n, f in fits.items():
        for scheme, res in f.cv.items():
            out[f"{n}_{scheme}_cv"] = {k: res.overall[k] for k in ("r2", "rmse", "rrmse", "bias", "n")}
        out[f"{n}_interval_inside_fraction"] = f.calibration["overall"]["inside_fraction"]
        out[f"{n}_kind"] = f.model.kind
    return out


def plot_window_features(path: Path, plots: gpd.GeoDataFrame, gbox: GeoBox, k: int) -> np.ndarray:
    """(plots, bands) window means (:func:`..models.support.window_mean`) of a feature raster around the
    pixel holding each plot's centre, read window by window (NaN outside the raster)."""
    import rasterio
    from rasterio.windows import Window

    c = plots.geometry.centroid
    inv = ~gbox.affine
    cols, rows = zip(*[inv * (x, y) for x, y in zip(c.x, c.y)]) if len(plots) else ((), ())
    rows = np.floor(np.asarray(rows, float)).astype(int)
    cols = np.floor(np.asarray(cols, float)).astype(int)
    with rasterio.open(path) as src:
        def read(r0, r1, c0, c1):
            a = src.read(window=Window(c0, r0, c1 - c0, r1 - r0), boundless=True, masked=True).astype("float64")
            return a.filled(np.nan)
        return window_at(read, rows, cols, k)


MAP_KINDS = ("random_forest", "hist_gradient_boosting")
"""What ``model.kind: auto`` compares for the map: the log-log baseline needs strictly positive features,
and spectral indices, northness and eastness are signed, so it could not predict every pixel
(``forestcarbon model fit`` compares it on tables of positive metrics)."""


def model_comparison(fits: dict) -> dict | None:
    """Both models on the plots LiDAR covers, each under its own spatial-block CV: the optical model's
    out-of-block predictions there (its per-class figures) against the LiDAR + optical model's."""
    if "lidar" not in fits:
        return None
    opt = fits["optical"].honest.per_class.get("lidar")
    return {"lidar_plus_optical": {k: fits["lidar"].honest.overall[k] for k in ("r2", "rmse", "rrmse", "bias", "n")},
            "optical_only": opt}


# 5 --------------------------------------------------------------------- map
def stage_map(ctx: Context) -> dict:
    """AGB with its SD and 90 % interval from the coverage-aware models, the serving model per pixel, the
    forest mask, and carbon with the same interval (carbon is monotone in AGB, so the AGB quantiles map
    onto carbon quantiles; its SD is the AGB SD times the pixel's carbon-to-AGB ratio)."""
    from ..models.coverage import BANDS, SOURCES
    from ..rs.forest_mask import masked_bands

    cfg = ctx.cfg
    chunk = cfg.compute.chunk_px
    ctx.need(ctx.out.model)
    bundle = joblib.load(ctx.out.model)
    if not isinstance(bundle, dict) or "models" not in bundle:
        raise ConfigError(f"{ctx.out.model}: written by an older forestcarbon (no coverage models); rerun the model stage")
    grid = {"crs": ctx.gbox.crs.to_wkt(), "resolution_m": float(abs(ctx.gbox.affine.a))}
    if bundle["grid"]["crs"] != grid["crs"] or abs(bundle["grid"]["resolution_m"] - grid["resolution_m"]) > 1e-6:
        raise ModelError(f"{ctx.out.model}: model {bundle['model_id']} was trained on another grid "
                         f"({bundle['grid']['resolution_m']} m); rerun the model stage")
    used = set(bundle["features"])
    sources = [(p, [n for n in ns if n in used], wall) for p, ns, wall in feature_rasters(ctx)]
    sources = [s for s in sources if s[1]]
    names = [n for _, ns, _ in sources for n in ns]
    if set(names) != used:
        raise ModelError(f"{ctx.out.model}: model {bundle['model_id']} uses features {sorted(used - set(names))} "
                         "the feature rasters lack; rerun the model stage")
    stack = xr.concat([open_stack(p, chunk).sel(band=ns) for p, ns, _ in sources], dim="band")
    data = stack.data.rechunk({0: -1})
    k = int(bundle["support"].get("window_px", 1))
    if k > 1:  # the features the model was trained on: window means of about the plot's area
        data = data.map_overlap(window_mean, k=k, depth={0: 0, 1: k // 2, 2: k // 2}, boundary=np.nan, dtype="float32")
    pred = data.map_blocks(predict_coverage_block, names, bundle["models"], chunks=((len(BANDS),), *data.chunks[1:]),
                           dtype="float32")
    tags = {"model_id": bundle["model_id"], "units": "Mg/ha"}
    mask_summary = None
    if cfg.forest_mask.configured or cfg.inputs.landcover is not None:
        fm = cfg.forest_mask
        write_cog(forest_mask_layer(ctx), ctx.gbox, ctx.out.forest_mask, nodata=None, block=chunk,
                  descriptions=["forest", "non_forest_reasons"],
                  tags={"reason_bits": json.dumps(REASON_BITS), "config": fm.model_dump_json(),
                        "landcover": str(cfg.inputs.landcover)})
        forest = open_stack(ctx.out.forest_mask, chunk).data[0]
        v = fm.non_forest_agb_mg_ha
        pred = da.map_blocks(masked_bands, pred, forest, (v, 0.0, v, v, None), dtype="float32")
        tags |= {"forest_mask": f"{ctx.out.forest_mask.name}: non-forest pixels = {v:g} Mg/ha"}
        mask_summary = forest_mask_summary(ctx)
    write_cog(pred, ctx.gbox, ctx.out.prediction_work, descriptions=list(BANDS), block=chunk)
    try:
        bands = open_stack(ctx.out.prediction_work, chunk).data
        itags = tags | {"interval": f"nominal {1 - cfg.model.interval_alpha:.0%} (conformal, spatial-block calibrated)"}
        for i, path in ((0, ctx.out.agb), (1, ctx.out.agb_sd), (2, ctx.out.agb_p05), (3, ctx.out.agb_p95)):
            write_cog(bands[i], ctx.gbox, path, descriptions=[BANDS[i]], units="Mg/ha", tags=itags if i else tags,
                      block=chunk)
        write_cog(bands[4].astype("uint8"), ctx.gbox, ctx.out.model_source, nodata=None, descriptions=["model_source"],
                  tags={"codes": json.dumps({"none": 0, **SOURCES}), "model_id": bundle["model_id"]}, block=chunk)
    finally:
        ctx.out.prediction_work.unlink(missing_ok=True)
    agb_w = open_stack(ctx.out.agb, chunk).data[0]
    registry = load_registry(cfg.allometry or default_allometry_path())
    conversion = registry.conversion
    rule = carbon_rule_layer(ctx, registry)
    write_cog(rule, ctx.gbox, ctx.out.carbon_rule, nodata=None, descriptions=["carbon_rule"], block=chunk,
              tags={"rules": json.dumps({k: v["group"] for k, v in conversion.describe().items()}),
                    "group_field": str(cfg.carbon.group_field)})
    rule_w = open_stack(ctx.out.carbon_rule, chunk).data[0]
    carbon = da.map_blocks(conversion.carbon_bands, agb_w, rule_w, new_axis=0,
                           chunks=((3,), *agb_w.chunks), dtype="float32")
    area = _rule_area_ha(ctx, agb_w, rule_w, conversion)
    ctags = tags | {"units": "Mg C/ha", "carbon": "C = AGB*CF_above(rule) + AGB*R(rule, AGB)*CF_below(rule)",
                    "rules": json.dumps(conversion.describe(), ensure_ascii=False),
                    "rule_area_ha": json.dumps(area, ensure_ascii=False)}
    write_cog(carbon, ctx.gbox, ctx.out.carbon, descriptions=list(CARBON_BANDS), units="Mg C/ha", tags=ctags, block=chunk)

    def total_carbon(a, r):
        return conversion.carbon_bands(a, r)[0]

    for src, dst in ((ctx.out.agb_p05, ctx.out.carbon_p05), (ctx.out.agb_p95, ctx.out.carbon_p95)):
        q = open_stack(src, chunk).data[0]
        write_cog(da.map_blocks(total_carbon, q, rule_w, dtype="float32"), ctx.gbox, dst, descriptions=[dst.stem + "_mg_ha"],
                  units="Mg C/ha", tags=ctags | {"from": src.name}, block=chunk)
    c_total = open_stack(ctx.out.carbon, chunk).data[0]
    sd = open_stack(ctx.out.agb_sd, chunk).data[0]
    ratio = da.where(agb_w > 0, c_total / da.where(agb_w > 0, agb_w, 1), 0)
    write_cog((sd * ratio).astype("float32"), ctx.gbox, ctx.out.carbon_sd, descriptions=["carbon_sd_mg_ha"],
              units="Mg C/ha", tags=ctags | {"carbon_sd": "agb_sd x carbon/agb of the pixel"}, block=chunk)
    trained = (bundle.get("aoa") or {}).get("optical")
    aoa_summary = None
    if trained is not None:  # where the optical model (the one that serves everywhere) is applicable
        di = data.map_blocks(applicability_block, names, trained, chunks=((2,), *data.chunks[1:]), dtype="float32")
        write_cog(di, ctx.gbox, ctx.out.aoa, descriptions=["dissimilarity_index", "inside_aoa"], block=chunk,
                  tags={"method": "Meyer & Pebesma 2021 dissimilarity index (CAST 1.1.0 trainDI/aoa), optical model",
                        "threshold": str(trained.threshold), "features": json.dumps(trained.features)})
        inside = open_stack(ctx.out.aoa, chunk).data[1]
        n_in, n_out = dask.compute((inside == 1).sum(), (inside == 0).sum())
        aoa_summary = {"inside_ha": float(n_in) * pixel_area_ha(ctx.gbox), "outside_ha": float(n_out) * pixel_area_ha(ctx.gbox)}
    served = dask.compute(*[(open_stack(ctx.out.model_source, chunk).data[0] == k).sum() for k in SOURCES.values()])
    px = pixel_area_ha(ctx.gbox)
    return {"model_id": bundle["model_id"], "carbon_rule_area_ha": area, "forest_mask": mask_summary,
            "area_ha_by_model": {n: float(c) * px for n, c in zip(SOURCES, served)}, "area_of_applicability": aoa_summary}


def forest_mask_layer(ctx: Context) -> "da.Array":
    """(2, y, x) forest flag and non-forest reasons from the configured sources (:mod:`..rs.forest_mask`)."""
    from ..rs.rasters import load_on_grid

    cfg, i, fm = ctx.cfg, ctx.cfg.inputs, ctx.cfg.forest_mask
    chunk = cfg.compute.chunk_px
    parcel = landcover = ndvi = None
    lc_nodata = None
    if fm.parcel_field:
        parcels = read_layer(i.parcels, i.parcels_layer, i.parcel_id, ctx.gbox.crs.to_wkt())
        is_forest = np.isin(land_class_text(parcels[fm.parcel_field], fm.forest_codes), fm.forest_codes)
        parcel = burn_values(parcels, is_forest.astype("uint8"), ctx.gbox, fill=NO_PARCEL, chunk_px=chunk)
    if i.landcover is not None:
        import rasterio

        with rasterio.open(i.landcover) as src:
            finer = abs(src.transform.a) < abs(ctx.gbox.affine.a)
            lc_nodata = None if src.nodata is None else int(src.nodata)
        lc = load_on_grid(i.landcover, ctx.gbox, resampling="mode" if finer else "nearest", chunk_px=chunk)
        landcover, lc_nodata = lc.isel(band=0).data, lc.attrs.get("nodata", lc_nodata)
    if fm.ndvi_min is not None:
        ctx.need(ctx.out.indices)
        ndvi = open_stack(ctx.out.indices, chunk).sel(band="ndvi").data
    layers = [a for a in (parcel, landcover, ndvi) if a is not None]

    def block(*arrays):
        it = iter(arrays)
        return forest_mask_block(next(it) if parcel is not None else None, next(it) if landcover is not None else None,
                                 next(it) if ndvi is not None else None, landcover_forest=fm.landcover_forest_classes,
                                 landcover_never_forest=fm.landcover_never_forest_classes, landcover_nodata=lc_nodata, ndvi_min=fm.ndvi_min, outside_parcels=fm.outside_parcels)

    return da.map_blocks(block, *layers, new_axis=0, chunks=((2,), *layers[0].chunks), dtype="uint8")


def forest_mask_summary(ctx: Context) -> dict:
    """Forest and non-forest area (ha) and the area each reason zeroed."""
    m = open_stack(ctx.out.forest_mask, ctx.cfg.compute.chunk_px).data
    px = pixel_area_ha(ctx.gbox)
    reasons = m[1].astype("uint8")
    forest, *by_reason = dask.compute((m[0] == 1).sum(), *[((reasons & b) > 0).sum() for b in REASON_BITS.values()])
    n = int(np.prod(ctx.gbox.shape))
    return {"forest_ha": float(forest) * px, "non_forest_ha": float(n - forest) * px,
            "non_forest_ha_by_reason": {k: float(c) * px for k, c in zip(REASON_BITS, by_reason)}}


CARBON_BANDS = ("carbon_mg_ha", "carbon_above_mg_ha", "carbon_below_mg_ha")


def carbon_rule_layer(ctx: Context, registry) -> "da.Array":
    """Per pixel, the code of the conversion rule its parcel's dominant species gets (0: the default)."""
    cfg, i = ctx.cfg, ctx.cfg.inputs
    field = cfg.carbon.group_field
    if field is None:
        return da.zeros(tuple(ctx.gbox.shape), chunks=cfg.compute.chunk_px, dtype="uint8")
    parcels = read_layer(i.parcels, i.parcels_layer, i.parcel_id, ctx.gbox.crs.to_wkt())
    groups = parcel_groups(parcels, field, i.parcels, registry, cfg.allometry_fallback)
    return burn_values(parcels, registry.conversion.code_of(groups), ctx.gbox, chunk_px=cfg.compute.chunk_px)


def parcel_groups(parcels: gpd.GeoDataFrame, field: str, source, registry, fallback: dict | None = None) -> list:
    """Species group of each parcel from its dominant-species field: names resolve as tree species do, then
    through ``allometry_fallback``; None where empty or unresolved (the default rule, with an
    :class:`~forestcarbon.errors.UnresolvedSpeciesWarning` naming the species)."""
    if field not in parcels.columns:
        raise FieldError(f"{source}: carbon.group_field {field!r} is not a field of the parcels layer "
                         f"(fields: {[c for c in parcels.columns if c != 'geometry']})")
    names = parcels[field].fillna("").astype(str).str.strip()
    groups, _ = resolve_species(names, registry, fallback)
    unknown_mask = groups.isna() & names.ne("")
    if unknown_mask.any():
        warnings.warn(f"{source}: {int(unknown_mask.sum())} parcels name species without a species group in field "
                      f"{field!r} ({sorted(set(names[unknown_mask]))[:5]}); their pixels take the default carbon "
                      "conversion", UnresolvedSpeciesWarning, stacklevel=2)
    return [g if isinstance(g, str) else None for g in groups]


def _rule_area_ha(ctx: Context, agb, rule, conversion) -> dict:
    """Mapped area (ha) served by each conversion rule."""
    valid = da.isfinite(agb)
    counts = dask.compute(*[((rule == k) & valid).sum() for k in range(len(conversion.rules_by_code()))])
    px = pixel_area_ha(ctx.gbox)
    return {r.group: float(c) * px for r, c in zip(conversion.rules_by_code(), counts)}


# 6 ----------------------------------------------------------------- parcels
def parcel_carbon(ctx: Context, polygons: gpd.GeoDataFrame, id_field: str) -> pd.DataFrame:
    """Exact (exactextract) carbon and AGB per polygon from the mapped rasters.

    ``carbon_t`` = coverage-weighted mean carbon density × polygon area: where
    a polygon has unmapped pixels (``valid_fraction`` < 1) they take the
    polygon's mean.  ``carbon_t_mapped`` is the exact sum over mapped pixels.
    """
    ctx.need(ctx.out.carbon, ctx.out.agb)
    zc = zonal_table(ctx.out.carbon, polygons, id_field, ("mean", "sum", "count"), band_names=["c", "ca", "cb"])
    za = zonal_table(ctx.out.agb, polygons, id_field, ("mean",), band_names=["agb"])
    px_ha = pixel_area_ha(ctx.gbox)
    area_ha = polygons.geometry.area.to_numpy() / 10_000
    df = pd.DataFrame({id_field: polygons[id_field].to_numpy(), "area_ha": area_ha})
    df["valid_fraction"] = np.clip(zc["c_count"].to_numpy() * px_ha / area_ha, 0, 1)
    df["agb_mg_ha"] = za["agb_mean"].to_numpy()
    df["carbon_t_ha"] = zc["c_mean"].to_numpy()
    df["carbon_above_t"] = zc["ca_mean"].to_numpy() * area_ha
    df["carbon_below_t"] = zc["cb_mean"].to_numpy() * area_ha
    df["carbon_t"] = df["carbon_t_ha"] * df["area_ha"]
    df["carbon_t_mapped"] = zc["c_sum"].to_numpy() * px_ha
    df["co2e_t"] = carbon_model.co2e(df["carbon_t"].to_numpy())
    return df


def stage_parcels(ctx: Context) -> dict:
    i = ctx.cfg.inputs
    parcels = read_layer(i.parcels, i.parcels_layer, i.parcel_id, ctx.gbox.crs.to_wkt())
    stats = parcel_carbon(ctx, parcels, i.parcel_id)
    model_id = joblib.load(ctx.out.model)["model_id"] if ctx.out.model.exists() else ""
    keep = [c for c in parcels.columns if c not in stats.columns or c in (i.parcel_id,)]
    out = parcels[keep].merge(stats, on=i.parcel_id).rename(columns={i.parcel_id: "parcel_id"})
    out["model_id"] = model_id
    if ctx.cfg.carbon.group_field is not None:
        registry = load_registry(ctx.cfg.allometry or default_allometry_path())
        groups = parcel_groups(parcels, ctx.cfg.carbon.group_field, i.parcels, registry, ctx.cfg.allometry_fallback)
        out["carbon_rule"] = [registry.conversion.rule(g).group for g in groups]
        # the map burns rules by pixel centre: the share of the parcel's area whose pixels carry its own rule
        z = zonal_table(ctx.out.carbon_rule, parcels, i.parcel_id, ("unique", "frac"), band_names=["r"])
        own = registry.conversion.code_of(groups)
        out["carbon_rule_coverage"] = [float(np.sum(f[u == k])) for u, f, k in zip(z["r_unique"], z["r_frac"], own)]
    write_table(out, ctx.out.parcels_gpkg, layer="parcels_carbon")
    write_table(out, ctx.out.parcels_parquet)  # GeoParquet
    return {"parcels": len(out), "total_carbon_t": float(np.nansum(out["carbon_t"]))}


# 7 ---------------------------------------------------------------- projects
def stage_projects(ctx: Context) -> dict:
    i = ctx.cfg.inputs
    if i.projects is None:
        return {"projects": 0}
    ctx.need(ctx.out.parcels_gpkg)
    projects = read_layer(i.projects, i.projects_layer, i.project_id, ctx.gbox.crs.to_wkt())
    parcels = gpd.read_file(ctx.out.parcels_gpkg, layer="parcels_carbon")
    shares = project_parcel_shares(projects, parcels, i.project_id, "parcel_id")
    totals = project_totals(shares, parcels, i.project_id, "parcel_id")
    direct = parcel_carbon(ctx, projects, i.project_id)[[i.project_id, "carbon_t"]].rename(columns={"carbon_t": "carbon_t_direct"})
    out = projects.merge(totals, on=i.project_id, how="left").merge(direct, on=i.project_id, how="left")
    out = out.rename(columns={i.project_id: "project_id"})
    write_table(out, ctx.out.projects_gpkg, layer="projects_carbon")
    write_table(shares.rename(columns={i.project_id: "project_id"}), ctx.out.project_parcels)
    return {"projects": len(out), "project_carbon_t": float(out["carbon_t"].sum())}


# 8 ------------------------------------------------------------------ report
def stage_report(ctx: Context) -> dict:
    from .report import build_report

    return build_report(ctx)


STAGES = {
    "mosaic": stage_mosaic, "lidar": stage_lidar, "terrain": stage_terrain, "plots": stage_plots, "model": stage_model,
    "map": stage_map, "parcels": stage_parcels, "projects": stage_projects, "report": stage_report,
}
