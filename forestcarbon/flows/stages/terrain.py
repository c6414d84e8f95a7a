"""Stage 2b: terrain features (elevation, slope, northness, eastness) from a DEM or the LiDAR DTM."""

from __future__ import annotations



from ...rs.cog import write_cog
from .context import Context, log

def stage_terrain(ctx: Context) -> dict:
    """Elevation, slope and aspect (as northness/eastness) on the grid, from ``inputs.dem`` (wall to wall) or
    else the LiDAR DTM averaged onto the grid (where flown); neither: no terrain features."""
    import rasterio

    from ...rs.rasters import load_on_grid
    from ...rs.terrain import TERRAIN_FEATURES, terrain_features

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
