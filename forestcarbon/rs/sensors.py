"""Sensors: harmonised band names and DN-to-surface-reflectance scaling.

Harmonised names are STAC ``eo`` common names: blue, green, red, rededge1-3,
nir (Sentinel-2 B08, broad), nir08 (Sentinel-2 B8A, Landsat OLI B5), swir16,
swir22.

- Sentinel-2 L2A: reflectance = (DN + BOA_ADD_OFFSET) / 10000; the offset
  (−1000 from processing baseline 04.00) is decided per scene from its
  metadata (:func:`forestcarbon.rs.scenes.boa_add_offset`).  DN 0 = nodata.
- Landsat 8/9 Collection 2 Level-2: reflectance = DN × 0.0000275 − 0.2
  (USGS Landsat 8-9 C2 L2 Science Product Guide, LSDS-1619).  DN 0 = fill.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Sensor:
    name: str
    bands: dict[str, str]  # harmonised name -> band id in the product
    scale: float
    offset: float
    nodata: int = 0


SENTINEL2_L2A = Sensor(
    "sentinel-2-l2a",
    {"blue": "B02", "green": "B03", "red": "B04", "rededge1": "B05", "rededge2": "B06", "rededge3": "B07",
     "nir": "B08", "nir08": "B8A", "swir16": "B11", "swir22": "B12"},
    scale=1e-4, offset=0.0,  # plus the per-scene BOA_ADD_OFFSET × 1e-4
)

LANDSAT_C2_L2 = Sensor(
    "landsat-c2-l2",
    {"coastal": "SR_B1", "blue": "SR_B2", "green": "SR_B3", "red": "SR_B4", "nir08": "SR_B5",
     "swir16": "SR_B6", "swir22": "SR_B7"},
    scale=0.0000275, offset=-0.2,
)


def to_reflectance(dn: np.ndarray, scale: float, offset: float, nodata: float | None = 0) -> np.ndarray:
    """Surface reflectance (float32) from DNs; ``nodata`` DNs become NaN."""
    dn = np.asarray(dn)
    refl = (dn.astype("float64") * scale + offset).astype("float32")
    if nodata is not None:
        refl[dn == nodata] = np.nan
    return refl
