"""Terrain derivatives of a DTM grid: slope and aspect (Horn 1981).

Horn, B.K.P. (1981) Hill shading and the reflectance map. Proc. IEEE 69(1):14-47:
third-order finite differences over the 3 x 3 neighbourhood, as GDAL's
``gdaldem slope/aspect`` use by default.  Slope in degrees from horizontal;
aspect in degrees clockwise from north of the downslope direction (0 = north-
facing, 90 = east-facing), NaN on flat cells.  Edge cells and cells next to
missing values are NaN.
"""

from __future__ import annotations

import numpy as np


def slope_aspect(dtm: np.ndarray, res_x: float, res_y: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Slope (deg) and aspect (deg, clockwise from north) of a north-up DTM (rows run south)."""
    res_y = res_x if res_y is None else res_y
    z = np.asarray(dtm, dtype="float64")
    p = np.pad(z, 1, constant_values=np.nan)
    a, b, c = p[:-2, :-2], p[:-2, 1:-1], p[:-2, 2:]
    d, f = p[1:-1, :-2], p[1:-1, 2:]
    g, h, i = p[2:, :-2], p[2:, 1:-1], p[2:, 2:]
    dzdx = ((c + 2 * f + i) - (a + 2 * d + g)) / (8 * res_x)  # towards east
    dzdy = ((a + 2 * b + c) - (g + 2 * h + i)) / (8 * res_y)  # towards north
    slope = np.degrees(np.arctan(np.hypot(dzdx, dzdy)))
    aspect = np.degrees(np.arctan2(-dzdx, -dzdy)) % 360.0
    aspect = np.where(np.hypot(dzdx, dzdy) > 0, aspect, np.nan)
    return slope.astype("float32"), aspect.astype("float32")


TERRAIN_FEATURES = ("elevation_m", "slope_deg", "northness", "eastness")
"""Terrain features of the model: elevation, Horn slope, and aspect as cos/sin (northness = cos(aspect),
eastness = sin(aspect); 0 on flat cells, which face nowhere) so that 359 deg and 1 deg are neighbours."""

ELEVATION_RANGE_M = (-450.0, 8_850.0)
"""Plausible elevations (m above sea level): the Dead Sea shore (-430 m) to Everest (8,849 m)."""


def terrain_block(dem: np.ndarray, res_m: float) -> np.ndarray:
    """(4, y, x) :data:`TERRAIN_FEATURES` of a DEM block (m, north-up, ``res_m`` cells)."""
    slope, aspect = slope_aspect(dem, res_m)
    a = np.radians(aspect)
    flat = ~np.isfinite(aspect) & np.isfinite(slope)
    north = np.where(flat, 0.0, np.cos(a))
    east = np.where(flat, 0.0, np.sin(a))
    return np.stack([np.asarray(dem, dtype="float32"), slope, north.astype("float32"), east.astype("float32")])


def terrain_features(dem, res_m: float):
    """:data:`TERRAIN_FEATURES` of a (y, x) dask DEM, chunk by chunk with a one-cell overlap (Horn's 3 x 3
    window sees across chunk edges, so the result does not depend on the chunking)."""
    import dask.array as da

    dem = da.asarray(dem).astype("float64")
    # with a new axis dask cannot trim the halo itself: each block drops its own one-cell border
    return dem.map_overlap(lambda b: terrain_block(b, res_m)[:, 1:-1, 1:-1], depth=1, boundary=np.nan, new_axis=0,
                           chunks=((4,), *dem.chunks), dtype="float32", trim=False)
