"""The target grid: one odc-geo ``GeoBox`` travels through the pipeline.

It is built once from the configuration (:func:`target_geobox`) and handed to
every stage; stages that read rasters from earlier stages check that those
rasters sit on it (:func:`check_on_grid`) instead of re-deriving a grid.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from odc.geo.geobox import GeoBox

from ..errors import CRSError, ConfigError


def target_geobox(crs: str, resolution_m: float, bounds=None, aoi: Path | None = None) -> GeoBox:
    """GeoBox with square pixels of ``resolution_m`` snapped to multiples of it.

    ``bounds`` are (xmin, ymin, xmax, ymax) in ``crs``; or ``aoi`` is a vector
    file whose total bounds (reprojected to ``crs``) are used.
    """
    if bounds is None:
        import geopandas as gpd

        aoi_df = gpd.read_file(aoi)
        if aoi_df.crs is None:
            raise CRSError(f"{aoi}: the area-of-interest layer has no CRS")
        bounds = tuple(aoi_df.to_crs(crs).total_bounds)
    x0, y0, x1, y1 = bounds
    r = float(resolution_m)
    x0, y0 = np.floor(x0 / r) * r, np.floor(y0 / r) * r
    x1, y1 = np.ceil(x1 / r) * r, np.ceil(y1 / r) * r
    return GeoBox.from_bbox((x0, y0, x1, y1), crs=crs, resolution=r)


def geobox_from_config(grid_cfg) -> GeoBox:
    return target_geobox(grid_cfg.crs, grid_cfg.resolution_m, grid_cfg.bounds, grid_cfg.aoi)


def pixel_area_ha(gbox: GeoBox) -> float:
    """Area of one pixel in hectares (projected CRS in metres)."""
    a = gbox.affine
    return abs(a.a * a.e - a.b * a.d) / 10_000.0


def check_on_grid(path: Path | str, gbox: GeoBox) -> None:
    """Raise if the raster at ``path`` is not exactly on ``gbox``."""
    import rasterio

    with rasterio.open(path) as src:
        same = (
            src.shape == tuple(gbox.shape)
            and src.transform.almost_equals(gbox.affine)
            and src.crs is not None
            and gbox.crs == str(src.crs.to_wkt())
        )
    if not same:
        raise ConfigError(f"{path}: raster is not on the target grid {gbox.crs.epsg or gbox.crs} {tuple(gbox.shape)}; rerun the stage that wrote it")


def block_slices(shape: tuple[int, int], block: int):
    """Yield (row_slice, col_slice) windows of at most ``block`` pixels per side."""
    ny, nx = shape
    for r0 in range(0, ny, block):
        for c0 in range(0, nx, block):
            yield slice(r0, min(r0 + block, ny)), slice(c0, min(c0 + block, nx))
