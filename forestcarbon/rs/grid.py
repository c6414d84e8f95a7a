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
    require_metres(crs, f"grid.like: {path}")
    return crs.to_wkt(), abs(a.a), (a.c, a.f)


def metres_per_unit(crs) -> float:
    """Metres per unit of a projected CRS's horizontal axes (1 for metres, 0.3048 for the international foot,
    1200/3937 for the US survey foot); NaN for a geographic CRS."""
    from pyproj import CRS

    crs = CRS.from_user_input(crs)
    if not crs.is_projected or not crs.axis_info:
        return float("nan")
    return float(crs.axis_info[0].unit_conversion_factor)


def metre_crs(crs, lonlat: tuple[float, float] | None = None):
    """A CRS in metres standing for ``crs``: ``crs`` itself when its axes are in metres; for a projected CRS in
    other units (US state planes in feet) the same projection with metre axes (its conversion parameters
    keep their own units, so coordinates scale exactly by the unit's length: 1 ft -> 0.3048 m); for a
    geographic CRS the WGS 84 UTM zone holding ``lonlat``.
    """
    from pyproj import CRS
    from pyproj.aoi import AreaOfInterest
    from pyproj.database import query_utm_crs_info

    crs = CRS.from_user_input(crs)
    if crs.is_projected:
        if metres_per_unit(crs) == 1.0:
            return crs
        j = crs.to_json_dict()
        for ax in j.get("coordinate_system", {}).get("axis", []):
            ax["unit"] = "metre"
        j["name"] = f"{j.get('name', 'unnamed')} (metre axes)"
        j.pop("id", None)
        return CRS.from_json_dict(j)
    if lonlat is None:
        raise CRSError(f"{crs.name}: geographic CRS and no location to choose a UTM zone")
    lon, lat = lonlat
    info = query_utm_crs_info(datum_name="WGS 84", area_of_interest=AreaOfInterest(lon, lat, lon, lat))
    return CRS.from_epsg(info[0].code)


def require_metres(crs, where: str) -> None:
    """Raise naming ``where`` unless ``crs`` is projected with metre axes (cell sizes, areas and slopes are metres)."""
    from pyproj import CRS

    c = CRS.from_user_input(crs)
    if not c.is_projected:
        raise CRSError(f"{where} is geographic ({c.name}); the target grid needs a projected CRS in metres (e.g. EPSG:4549)")
    if metres_per_unit(c) != 1.0:
        unit = c.axis_info[0].unit_name
        raise CRSError(f"{where} ({c.name}) has axes in {unit} ({metres_per_unit(c):.10g} m); the target grid needs a "
                       "projected CRS in metres (e.g. EPSG:4549), or the same projection in metres")


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
