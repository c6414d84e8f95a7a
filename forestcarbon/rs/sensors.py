"""Sensors: harmonised band names and DN-to-surface-reflectance scaling.

Harmonised names are STAC ``eo`` common names: blue, green, red, rededge1-3,
nir (Sentinel-2 B08, broad), nir08 (Sentinel-2 B8A, Landsat OLI B5), swir16,
swir22.

- Sentinel-2 L2A: reflectance = (DN + BOA_ADD_OFFSET) / 10000; the offset
  (−1000 from processing baseline 04.00) is decided per scene from its
  metadata (:func:`forestcarbon.rs.scenes.boa_add_offset`).  DN 0 = nodata.
- Landsat Collection 2 Level-2: reflectance = DN × 0.0000275 − 0.2 for every
  sensor (USGS Landsat 8-9 C2 L2 Science Product Guide, LSDS-1619, and
  Landsat 4-7 C2 L2 Science Product Guide, LSDS-1618, Table 6-1).  DN 0 = fill.
  The band numbers differ: OLI (Landsat 8/9) has a coastal band 1, so blue is
  SR_B2 ... SWIR2 SR_B7; TM/ETM+ (Landsat 4, 5, 7) start with blue at SR_B1,
  and SR_B6 does not exist (band 6 is thermal, ST_B6).

Both deliver reflectance as unsigned 16-bit DNs: Sentinel-2 L2A DN 0 = NO_DATA, DN 1 to 2^15 − 1 valid
(ESA, processing baseline 04.00 evolution note of January 2022, as quoted on sentiwiki "S2 Products": L2A_BOA
= (DN + BOA_ADD_OFFSET) / QUANTIFICATION_VALUE, QUANTIFICATION_VALUE 10000; the products' metadata lists the
Special_Values NODATA 0 and SATURATED 65535); Landsat C2 SR fill 0, unsigned 16-bit, valid range
7273–43636, i.e. reflectance 0–1 (USGS, "How do I use a scale factor with Landsat Level-2 science
products?", table of scale factors, fill values, data types and valid ranges; LSDS-1619).  Single pixels
do leave the valid range (clouds: the real Landsat scene's DNs reach 54316), so values are judged by a
band's median and maximum (:data:`MEDIAN_REFLECTANCE_RANGE`, :data:`MIN_BRIGHTEST_REFLECTANCE`).
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
    dtype: str = "uint16"  # the product's reflectance DNs (see the module docstring)


REFLECTANCE_RANGE = (0.0, 1.5)
"""Reflectances an index may use: above 0 (a ratio of non-positive values is meaningless -- NDVI reached
|7373| on negative reflectance) and at most 1.5 (bright snow and cloud edges reach ~1.2)."""

MEDIAN_REFLECTANCE_RANGE = (-0.05, REFLECTANCE_RANGE[1])
"""Where the median valid reflectance of a delivered band must lie.  The real scenes in ../shared/data
(Sentinel-2 29RKH 2020-02-19, Landsat 8 001062 2020-10-31) have band medians 0.17–0.57, though single
pixels reach −0.11 (Landsat B1 over dark targets): dark pixels pull a median towards 0, not to −0.05.
Below: another scaling (Collection 1 reflectance × 10000 read with C2's scale and −0.2 offset gives
−0.07 on the Landsat scene's red band); above 1.5 (:data:`REFLECTANCE_RANGE`): DNs scaled twice (× 10)."""

MIN_BRIGHTEST_REFLECTANCE = 0.01
"""The brightest valid pixel of a delivered band reflects at least this much: a scene overlapping a forest
area of interest holds land or cloud, which reflect more than 1 % in every band (in the real scenes the
dimmest band, Landsat B7, peaks at 0.67).  Reflectance delivered as integers 0/1 reads as at most 0.0001
(Sentinel-2 before baseline 04.00; with an offset it reads negative and the median rule catches it), and
in percent mostly below 0.01."""


SENTINEL2_L2A = Sensor(
    "sentinel-2-l2a",
    {"blue": "B02", "green": "B03", "red": "B04", "rededge1": "B05", "rededge2": "B06", "rededge3": "B07",
     "nir": "B08", "nir08": "B8A", "swir16": "B11", "swir22": "B12"},
    scale=1e-4, offset=0.0,  # plus the per-scene BOA_ADD_OFFSET × 1e-4
)

LANDSAT_C2_L2 = Sensor(
    "landsat-oli-c2-l2",
    {"coastal": "SR_B1", "blue": "SR_B2", "green": "SR_B3", "red": "SR_B4", "nir08": "SR_B5",
     "swir16": "SR_B6", "swir22": "SR_B7"},
    scale=0.0000275, offset=-0.2,
)
"""Landsat 8/9 OLI (LSDS-1619 Table 6-1)."""

LANDSAT_TM_ETM_C2_L2 = Sensor(
    "landsat-tm-etm-c2-l2",
    {"blue": "SR_B1", "green": "SR_B2", "red": "SR_B3", "nir08": "SR_B4", "swir16": "SR_B5", "swir22": "SR_B7"},
    scale=0.0000275, offset=-0.2,
)
"""Landsat 4/5 TM and 7 ETM+ (LSDS-1618 Table 6-1)."""

LANDSAT = (LANDSAT_C2_L2, LANDSAT_TM_ETM_C2_L2)

_LANDSAT_BY_PREFIX = {"LC08": LANDSAT_C2_L2, "LC09": LANDSAT_C2_L2, "LO08": LANDSAT_C2_L2, "LO09": LANDSAT_C2_L2,
                      "LT04": LANDSAT_TM_ETM_C2_L2, "LT05": LANDSAT_TM_ETM_C2_L2, "LE07": LANDSAT_TM_ETM_C2_L2}
_LANDSAT_BY_PLATFORM = {"landsat-8": LANDSAT_C2_L2, "landsat-9": LANDSAT_C2_L2, "landsat-4": LANDSAT_TM_ETM_C2_L2,
                        "landsat-5": LANDSAT_TM_ETM_C2_L2, "landsat-7": LANDSAT_TM_ETM_C2_L2}


def landsat_sensor(platform: str, product_id: str) -> Sensor | None:
    """The Landsat sensor of a product: from its platform (``landsat-5``...) or its product id's first four
    characters (``LC08`` OLI/TIRS, ``LE07`` ETM+, ``LT05`` TM: the Collection 2 naming, LSDS-1618/1619
    section 1.3); None when neither tells."""
    by_platform = _LANDSAT_BY_PLATFORM.get(platform.lower().replace("_", "-"))
    return by_platform or _LANDSAT_BY_PREFIX.get(str(product_id)[:4].upper())


def to_reflectance(dn: np.ndarray, scale: float, offset: float, nodata: float | None = 0) -> np.ndarray:
    """Surface reflectance (float32) from DNs; ``nodata`` DNs become NaN."""
    dn = np.asarray(dn)
    refl = (dn.astype("float64") * scale + offset).astype("float32")
    if nodata is not None:
        refl[dn == nodata] = np.nan
    return refl
