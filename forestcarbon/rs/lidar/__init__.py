"""Airborne LiDAR (LAS/LAZ) to terrain, canopy height and area-based metrics on the target grid.

Modules: :mod:`.io` (tile index, point reading), :mod:`.ground` (TIN terrain
and height normalisation), :mod:`.metrics` (lidR stdmetrics_z per cell),
:mod:`.blocks` (one tile with its buffer), :mod:`.products` (all tiles to
COGs).  The array helpers below run the same path into a temporary folder and
read the result back; they are for small grids (tests, notebooks).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import rasterio
from odc.geo.geobox import GeoBox

from .blocks import Options, Targets
from .ground import ground_surface, looks_normalized, normalize_heights, spatial_order
from .io import (TileInfo, find_tiles, geobox_over_tiles, index_tiles, read_points, tile_bounds_in, tile_clusters,
                 units_summary,
                 vertical_unit_factor)
from .metrics import METRIC_UNITS, METRICS, QUANTILES, cell_max, cell_metrics
from .products import LidarRun, lidar_products

__all__ = [
    "METRICS", "METRIC_UNITS", "QUANTILES", "LidarRun", "Options", "Targets", "TileInfo", "canopy_height_model",
    "cell_max", "cell_metrics", "find_tiles", "geobox_over_tiles", "grid_metrics", "ground_surface", "index_tiles",
    "lidar_products", "lidar_rasters", "looks_normalized", "normalize_heights", "read_points", "spatial_order",
    "tile_bounds_in", "tile_clusters", "units_summary", "vertical_unit_factor",
]


def lidar_rasters(tiles: list[TileInfo], metrics_gbox: GeoBox | None, chm_gbox: GeoBox | None, *,
                  dtm_gbox: GeoBox | None = None, **options):
    """(metrics dict, CHM, DTM) as in-memory arrays (float32, NaN where no value); any grid may be None.

    ``options`` are those of :class:`Options` (normalized, ground_classes, buffer_m, min/max_height_m,
    chm_algorithm, pitfree_thresholds_m, pitfree_max_edge_m).
    """
    targets = Targets(metrics=metrics_gbox, chm=chm_gbox, dtm=dtm_gbox)
    if "ground_classes" in options:
        options["ground_classes"] = tuple(options["ground_classes"])
    opts = Options(**options)
    with tempfile.TemporaryDirectory(prefix="lidar-arrays-") as tmp:
        out = {k: Path(tmp) / f"{k}.tif" for k in ("metrics", "chm", "dtm")}
        run = lidar_products(tiles, targets, opts, out, workdir=Path(tmp) / "work")
        metrics = chm = dtm = None
        if metrics_gbox is not None:
            with rasterio.open(run.files["metrics"]) as ds:
                metrics = dict(zip(METRICS, ds.read()))
        if chm_gbox is not None:
            with rasterio.open(run.files["chm"]) as ds:
                chm = ds.read(1)
        if dtm_gbox is not None:
            if "dtm" in run.files:
                with rasterio.open(run.files["dtm"]) as ds:
                    dtm = ds.read(1)
            else:
                dtm = np.full(dtm_gbox.shape, np.nan, dtype="float32")
    return (metrics, chm, dtm) if dtm_gbox is not None else (metrics, chm)


def grid_metrics(tiles: list[TileInfo], gbox: GeoBox, **kw) -> dict[str, np.ndarray]:
    """lidR stdmetrics_z of all tiles on ``gbox`` (dict of 2-D float32 arrays, NaN where no returns)."""
    return lidar_rasters(tiles, gbox, None, **kw)[0]


def canopy_height_model(tiles: list[TileInfo], gbox: GeoBox, **kw) -> np.ndarray:
    """Canopy height model (m) on ``gbox`` (e.g. 1 m): highest normalised return per cell, NaN where none."""
    return lidar_rasters(tiles, None, gbox, **kw)[1]
