"""The target grid: one odc-geo ``GeoBox`` travels through the pipeline.

It is built once from the configuration (:func:`target_geobox`) and handed to
every stage; stages that read rasters from earlier stages check that those
rasters sit on it (:func:`check_on_grid`) instead of re-deriving a grid.
"""

from __future__ import annotations

from pathlib import Path

from odc.geo import xy_
from odc.geo.geobox import GeoBox

from ..errors import CRSError, ConfigError


def target_geobox(crs: str, resolution_m: float, bounds=None, aoi: Path | None = None,
                  origin: tuple[float, float] | None = None) -> GeoBox:
    """GeoBox with square pixels of ``resolution_m`` covering ``bounds`` (or ``aoi``), snapped outward.

    ``bounds`` are (xmin, ymin, xmax, ymax) in ``crs``; or ``aoi`` is a vector file whose total bounds
    (reprojected to ``crs``) are used.  Pixel edges fall on multiples of the resolution, or, with
    ``origin`` (x, y), on ``origin`` plus multiples of it -- so the grid can sit on a sensor's or a
    bureau raster's own grid (odc-geo ``GeoBox.from_bbox`` with that anchor).
    """
    if bounds is None:
        import geopandas as gpd

        aoi_df = gpd.read_file(aoi)
        if aoi_df.crs is None:
            raise CRSError(f"{aoi}: the area-of-interest layer has no CRS")
        bounds = tuple(aoi_df.to_crs(crs).total_bounds)
    r = float(resolution_m)
    anchor = "default" if origin is None else xy_((origin[0] / r) % 1.0, (origin[1] / r) % 1.0)
    return GeoBox.from_bbox(tuple(bounds), crs=crs, resolution=r, anchor=anchor)


def geobox_from_config(grid_cfg) -> GeoBox:
    crs, res, origin = grid_cfg.crs, grid_cfg.resolution_m, grid_cfg.origin
    if grid_cfg.like is not None:
        crs, res, origin = grid_like(grid_cfg.like, grid_cfg)
    return target_geobox(crs, res, grid_cfg.bounds, grid_cfg.aoi, origin)


def grid_like(path: Path, grid_cfg) -> tuple[str, float, tuple[float, float]]:
    """(CRS, resolution, origin) of a raster whose grid the target grid should share (``grid.like``); a CRS
    or resolution also set in the configuration must agree with it."""
    import rasterio
    from pyproj import CRS

    if not Path(path).exists():
        from ..errors import InputNotFoundError

        raise InputNotFoundError(f"grid.like: file not found: {path}")
    with rasterio.open(path) as src:
        a, crs = src.transform, src.crs
    if crs is None:
        raise CRSError(f"grid.like: {path} has no CRS")
    if abs(a.a) != abs(a.e) or a.b or a.d:
        raise ConfigError(f"grid.like: {path} has no square, north-up pixels ({a.a} x {a.e})")
    if "crs" in grid_cfg.model_fields_set and not CRS.from_user_input(grid_cfg.crs).equals(CRS.from_user_input(crs)):
        raise ConfigError(f"grid.like: {path} is in {crs.to_string()}, grid.crs says {grid_cfg.crs}")
    if "resolution_m" in grid_cfg.model_fields_set and abs(grid_cfg.resolution_m - abs(a.a)) > 1e-9:
        raise ConfigError(f"grid.like: {path} has {abs(a.a)} m pixels, grid.resolution_m says {grid_cfg.resolution_m}")
    if not CRS.from_user_input(crs).is_projected:
        raise CRSError(f"grid.like: {path} is in a geographic CRS; the target grid needs a projected CRS in metres")
    return crs.to_wkt(), abs(a.a), (a.c, a.f)


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
