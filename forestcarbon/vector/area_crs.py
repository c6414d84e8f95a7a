"""Is a CRS fit to measure areas in, over an area of interest?

Parcel and project areas are planar areas in the grid's projected CRS.  A
conformal projection (Gauss-Krüger, UTM, Web Mercator) scales areas by
``k²`` (k: the point scale factor), so its planar areas are wrong by
``areal_scale - 1``; an equal-area projection has ``areal_scale == 1``
everywhere.  :func:`areal_scale_errors` asks PROJ for the areal scale
(``pyproj.Proj.get_factors``, Snyder 1987, *Map Projections - A Working
Manual*, USGS PP 1395, §4 "Scale factors") at the AOI's four corners and
centre, and :func:`require_area_crs` refuses a CRS whose largest error there
exceeds a tolerance (0.1 % by default).

Reference values (PROJ): Web Mercator at 29°N scales areas by
``sec²(29°) = 1.307`` (a 31 % error); EPSG:4549 (CGCS2000 3-degree GK, CM 120°E,
k0 = 1) at 118.4°E 29°N by about ``1 + (Δλ cos φ)² = 1.0006``.
"""

from __future__ import annotations

import numpy as np
from pyproj import CRS, Proj, Transformer

from ..errors import CRSError

MAX_AREAL_SCALE_ERROR = 0.001
"""Default tolerance on |areal scale - 1| at the AOI: 0.1 %."""


def aoi_points_lonlat(bounds, bounds_crs) -> tuple[np.ndarray, np.ndarray]:
    """Longitude and latitude (of ``bounds_crs``'s geodetic datum) of the four corners and the centre of
    ``bounds`` = (xmin, ymin, xmax, ymax) given in ``bounds_crs``."""
    src = CRS.from_user_input(bounds_crs)
    x0, y0, x1, y1 = (float(b) for b in bounds)
    xs = np.array([x0, x1, x1, x0, (x0 + x1) / 2])
    ys = np.array([y0, y0, y1, y1, (y0 + y1) / 2])
    lon, lat = Transformer.from_crs(src, src.geodetic_crs, always_xy=True).transform(xs, ys)
    return np.asarray(lon), np.asarray(lat)


def areal_scale_errors(crs, lon, lat) -> np.ndarray:
    """|areal scale - 1| of projected ``crs`` at geodetic (lon, lat) points of its own datum."""
    crs = CRS.from_user_input(crs)
    if not crs.is_projected:
        raise CRSError(f"{crs.name}: not a projected CRS, planar areas in it are not areas")
    f = Proj(crs).get_factors(np.asarray(lon, "float64"), np.asarray(lat, "float64"))
    return np.abs(np.asarray(f.areal_scale, "float64") - 1.0)


def require_area_crs(crs, bounds, bounds_crs, max_error: float = MAX_AREAL_SCALE_ERROR, where: str = "") -> float:
    """The largest areal scale error of ``crs`` over ``bounds`` (in ``bounds_crs``); a one-line
    :class:`~forestcarbon.errors.CRSError` when it exceeds ``max_error`` or ``crs`` is not projected."""
    target = CRS.from_user_input(crs)
    prefix = f"{where}: " if where else ""
    if not target.is_projected:
        raise CRSError(f"{prefix}areas need a projected CRS, got {target.name!r} (geographic: degrees are not metres)")
    lon, lat = aoi_points_lonlat(bounds, bounds_crs)
    if not target.geodetic_crs.equals(CRS.from_user_input(bounds_crs).geodetic_crs):
        t = Transformer.from_crs(CRS.from_user_input(bounds_crs).geodetic_crs, target.geodetic_crs, always_xy=True)
        lon, lat = t.transform(lon, lat)
    err = areal_scale_errors(target, lon, lat)
    if not np.all(np.isfinite(err)):
        raise CRSError(f"{prefix}CRS {target.name!r} is undefined at the AOI (lon {np.round(lon, 3).tolist()}, "
                       f"lat {np.round(lat, 3).tolist()})")
    worst = float(err.max())
    if worst > max_error:
        i = int(err.argmax())
        raise CRSError(f"{prefix}CRS {target.name!r} distorts areas by {worst:.3%} at lon {lon[i]:.3f}, lat {lat[i]:.3f} "
                       f"(limit {max_error:.3%}): use the local projected CRS (e.g. EPSG:4549) or an equal-area CRS")
    return worst
