"""The stages' shared context (configuration, the one target GeoBox, the output layout) and the preflight
checks that run before any heavy work."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import rioxarray
import xarray as xr
from odc.geo.geobox import GeoBox

from ...config import Config, default_allometry_path
from ...errors import (AllometryError, ConfigError, CRSError, ForestCarbonError, InputNotFoundError, LidarError,
                        StageInputError)
from ...models.allometry import (load_registry, resolve_fallback)
from ...rs import lidar
from ...rs.forest_mask import land_class_text
from ...rs.grid import geobox_from_config
from ...rs.scenes import read_scenes

from ...vector.area_crs import require_area_crs
from ...vector.layers import check_layer, check_layer_contents
from ...vector.parcels import Parcels, check_parcels, read_parcels
from ..layout import Layout

log = logging.getLogger("forestcarbon")

LIDAR_FEATURES = ("zmax", "zmean", "zsd", "zq50", "zq95", "pzabove2")


@dataclass(frozen=True)
class Context:
    cfg: Config
    gbox: GeoBox
    stage_keys: dict = field(default_factory=dict)  # this run's key of each stage (resumable work folders)

    @property
    def out(self) -> Layout:
        return Layout(Path(self.cfg.output))

    def need(self, *paths: Path) -> None:
        for p in paths:
            if not p.exists():
                raise StageInputError(f"{p} is missing; run the stage that writes it first")


STAGE_NEEDS = {
    "mosaic": ("stac_items",), "lidar": (), "terrain": (), "plots": ("plots", "trees"), "model": (), "map": (),
    "parcels": ("parcels",), "projects": ("parcels",), "trees": (), "report": ("parcels",),
}
"""Input keys each stage needs (LiDAR, projects, truth and the parcels' species field are optional)."""


class Problems:
    """Collects the one-line errors of independent checks (``with problems:`` around each) when ``collect``,
    else lets the first one through; ``bad`` remembers the input keys already found missing or unreadable,
    so checks of their contents are skipped rather than reported twice."""

    def __init__(self, collect: bool):
        self.collect, self.found, self.bad = collect, [], set()
        self._key = None

    def on(self, key: str | None = None) -> "Problems":
        self._key = key
        return self

    def ok(self, *keys: str) -> bool:
        return not (set(keys) & self.bad)

    def __enter__(self):
        return self

    def __exit__(self, et, ev, tb):
        key, self._key = self._key, None
        if ev is None or not isinstance(ev, ForestCarbonError) or not self.collect:
            return False
        if key:
            self.bad.add(key)
        if str(ev) not in self.found:
            self.found.append(str(ev))
        return True


def preflight(cfg: Config, stages: list[str] | None = None, problems: list[str] | None = None) -> Context | None:
    """Check the inputs the requested stages (default: all) need, before any computation; return the run
    context.

    Missing files, layers without their id field, unparsable CRSs and the contents checked by
    :func:`check_inventory` and :func:`~forestcarbon.vector.layers.check_layer_contents` fail here with
    one line naming the file, field or value.  A stage run on its own is checked for its own inputs only.
    With a ``problems`` list, every independent check runs and each failure's line is appended to it
    (``forestcarbon validate``); the context is then None when any failed.
    """
    p = Problems(problems is not None)
    names = list(STAGE_NEEDS) if not stages else [s for s in STAGE_NEEDS if s in stages]
    i = cfg.inputs
    needed = {k for n in names for k in STAGE_NEEDS[n]}
    if "lidar" in names and i.plots is not None:
        needed.add("plots")  # plot-footprint metrics
    if "map" in names and (cfg.carbon.group_field or cfg.forest_mask.parcel_field):
        needed.add("parcels")
    for key in sorted(needed):
        with p.on(f"inputs.{key}"):
            if getattr(i, key) is None:
                stage = next((n for n in names if key in STAGE_NEEDS[n]), "map")
                raise ConfigError(f"inputs.{key} is required by stage {stage!r}")
    must = [(f"inputs.{k}", getattr(i, k)) for k in sorted(needed) if getattr(i, k) is not None]
    if "lidar" in names:
        must += [(f"inputs.{k}", getattr(i, k)) for k in ("laz", "lidar_metrics_raster") if getattr(i, k) is not None]
    if "projects" in names and i.projects is not None:
        must.append(("inputs.projects", i.projects))
    if "terrain" in names and i.dem is not None:
        must.append(("inputs.dem", i.dem))
    if "trees" in names:
        must += [(f"inputs.{k}", getattr(i, k)) for k in ("tree_lidar", "tree_chm", "villages", "tree_species",
                                                            "village_field_trees")
                 if getattr(i, k) is not None]
        if cfg.trees.previous_register is not None:
            must.append(("trees.previous_register", cfg.trees.previous_register))
        if cfg.truth is not None and cfg.truth.trees is not None:
            must.append(("truth.trees", cfg.truth.trees))
    if "map" in names and i.landcover is not None:
        must.append(("inputs.landcover", i.landcover))
    if cfg.allometry is not None and {"plots", "map", "parcels"} & set(names):
        must.append(("allometry", cfg.allometry))
    if cfg.truth is not None and "report" in names:
        must += [("truth.agb", cfg.truth.agb), ("truth.parcels", cfg.truth.parcels)]
    if cfg.grid.aoi is not None:
        must.append(("grid.aoi", cfg.grid.aoi))
    for key, path in dict(must).items():
        with p.on(key):
            if not Path(path).exists():
                raise InputNotFoundError(f"{key}: file not found: {path}")
    with p:
        check_output_folder(cfg, [q for _, q in must])
    if "parcels" in needed and p.ok("inputs.parcels"):
        with p.on("inputs.parcels"):
            fields = tuple(f for f in (cfg.carbon.group_field, cfg.forest_mask.parcel_field) if f)
            check_layer(i.parcels, i.parcels_layer, fields)
            check_parcels(i.parcels, cfg.parcels.fields(), i.parcels_layer)
        if p.ok("inputs.parcels"):
            with p:
                info = pyogrio.read_info(i.parcels, layer=i.parcels_layer, force_total_bounds=True)
                if info.get("total_bounds") is not None:
                    require_area_crs(cfg.grid.crs, info["total_bounds"], info["crs"],
                                     cfg.parcels.max_areal_scale_error, where=f"{i.parcels}: grid CRS")
            with p:
                if "map" in names and cfg.forest_mask.parcel_field:
                    check_forest_codes(i.parcels, i.parcels_layer, cfg.forest_mask.parcel_field,
                                       cfg.forest_mask.forest_codes)
    if "trees" in names:
        if i.villages is not None and p.ok("inputs.villages"):
            with p:
                check_layer_contents(i.villages, i.villages_layer, i.village_id)
        if i.tree_species is not None and p.ok("inputs.tree_species"):
            with p:
                check_layer(i.tree_species, i.tree_species_layer, (i.tree_species_field,))
    if "map" in names and i.landcover is not None and p.ok("inputs.landcover"):
        with p:
            check_categorical_raster(i.landcover, "inputs.landcover")
    if "plots" in needed and p.ok("inputs.plots"):
        with p.on("inputs.plots"):
            if Path(i.plots).suffix.lower() in (".csv", ".txt", ".xlsx", ".xls", ".xlsm"):
                if cfg.ground.plots_crs is None:
                    raise ConfigError(f"inputs.plots: {i.plots} is a table; set ground.plots_crs (the CRS of its "
                                      "x/y columns)")
            else:
                check_layer(i.plots, i.plots_layer, (i.plot_id,))
    if "projects" in names and i.projects is not None and p.ok("inputs.projects"):
        with p:
            check_layer_contents(i.projects, i.projects_layer, i.project_id)
    if "terrain" in names and i.dem is not None and p.ok("inputs.dem"):
        with p:
            check_dem(i.dem)
    if "lidar" in names:
        with p.on("inputs.lidar_crs"):
            if i.lidar_crs is not None:
                from pyproj import CRS
                from pyproj.exceptions import CRSError as PyprojCRSError

                try:
                    CRS.from_user_input(i.lidar_crs)
                except PyprojCRSError:
                    raise CRSError(f"inputs.lidar_crs: {i.lidar_crs!r} is not a CRS that parses") from None
        if i.laz is not None and i.lidar_metrics_raster is None and p.ok("inputs.laz", "inputs.lidar_crs", "grid.aoi"):
            with p:
                tiles = lidar.index_tiles(lidar.find_tiles(i.laz), i.lidar_crs)  # headers and file sizes only
                check_tiles_on_grid(tiles, geobox_from_config(cfg.grid))
    if "mosaic" in names:
        m = cfg.mosaic
        with p:
            missing_bands = {"blue", "red", "nir", "nir08", "swir16", "swir22"} - set(m.bands)
            if missing_bands:
                raise ConfigError(f"mosaic.bands must include {sorted(missing_bands)} for the spectral indices")
        if p.ok("inputs.stac_items"):
            with p:
                read_scenes(i.stac_items, m.bands, m.start, m.end, m.asset_keys)  # item JSONs: asset keys, sensors
    if not p.ok("grid.aoi"):  # no grid without its area of interest: the checks on the grid cannot run
        problems.extend(p.found)
        return None
    with p.on("grid"):
        ctx = Context(cfg, geobox_from_config(cfg.grid))
    if not p.ok("grid"):
        problems.extend(p.found)
        return None
    if {"plots", "map", "parcels"} & set(names) and p.ok("allometry"):
        registry = None
        with p.on("allometry"):
            registry = load_registry(cfg.allometry or default_allometry_path())
            try:
                resolve_fallback(cfg.allometry_fallback, registry)
            except AllometryError as err:
                raise ConfigError(str(err)) from None
        if "plots" in names and registry is not None and p.ok("inputs.plots", "inputs.trees", "allometry"):
            from .plots import check_inventory  # the plots stage's own biomass step

            with p:
                check_inventory(ctx, registry)
    if problems is not None:
        problems.extend(p.found)
        return None if p.found else ctx
    return ctx


def check_forest_codes(path: Path, layer: str | None, field: str, codes: tuple[str, ...]) -> None:
    """At least one parcel must carry one of the forest codes (else the codes are written differently from the
    layer's, e.g. 111 against '0111', and every pixel would be zeroed)."""
    values = pd.Series(land_class_text(gpd.read_file(path, layer=layer, columns=[field], ignore_geometry=True)[field],
                                       codes))
    if not values.isin(codes).any():
        found = sorted(values.unique().tolist())
        raise ConfigError(f"parcels.forest_codes {list(codes)}: no parcel of {path} carries one in field {field!r} "
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

    from ...rs.terrain import ELEVATION_RANGE_M

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


def preflight_mosaic(cfg: Config) -> Context:
    """The checks the mosaic alone needs (used by the nightly update)."""
    if not Path(cfg.inputs.stac_items).exists():
        raise InputNotFoundError(f"inputs.stac_items: file not found: {cfg.inputs.stac_items}")
    return Context(cfg, geobox_from_config(cfg.grid))



def open_stack(path: Path, chunk_px: int) -> xr.DataArray:
    """A multi-band COG as a lazy (band, y, x) DataArray with band names as coordinates."""
    da = rioxarray.open_rasterio(path, chunks={"band": -1, "x": chunk_px, "y": chunk_px}, masked=True)
    names = list(da.attrs.get("long_name", [])) if isinstance(da.attrs.get("long_name"), (list, tuple)) else [da.attrs.get("long_name")]
    return da.assign_coords(band=names)


def read_parcel_layer(ctx: Context) -> Parcels:
    """The parcels layer through the configured field mapping (``parcels``), in the grid's CRS: standard columns
    (``parcel_id``, ``area_ha``, ``declared_area_ha``, ``land_class``, ``is_forest``, ``species``, ``age_group``) beside
    the layer's own attributes; geometries repaired and reported (:func:`~forestcarbon.vector.parcels.read_parcels`)."""
    i, p = ctx.cfg.inputs, ctx.cfg.parcels
    return read_parcels(i.parcels, ctx.gbox.crs.to_wkt(), p.fields(), i.parcels_layer, p.max_areal_scale_error,
                        p.area_tolerance_rel)
