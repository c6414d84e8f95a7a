"""Stage 2: LiDAR metrics, DTM, CHM and coverage on the grid (or pre-made metrics)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import rioxarray
from odc.geo.geobox import GeoBox

from ...errors import ConfigError
from ...fileio import write_table
from ...rs import lidar
from ...rs.cog import write_cog
from .context import Context, LIDAR_FEATURES, log
from .plots import plot_footprints

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
        run = lidar.lidar_products(tiles, targets, opts, out, workdir=ctx.out.lidar_work,
                                   resume_key=ctx.stage_keys.get("lidar"))
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

    from ...rs.rasters import load_on_grid

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
