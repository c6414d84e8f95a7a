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
