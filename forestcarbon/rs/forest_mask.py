"""Which pixels are forest: the map gives biomass only there, and 0 elsewhere.

The regressor only ever sees forest plots, so on roads, rivers, villages and
farmland it would predict forest biomass.  A pixel is non-forest when any
configured source says so:

* the parcel layer's land class (地类, e.g. the field ``DI_LEI``): a pixel whose
  parcel's code is not one of the forest codes; pixels outside every parcel
  are non-forest too unless ``outside_parcels`` is ``"evidence"`` (then the
  other sources decide);
* a land-cover raster (``inputs.landcover``): a class that is never forest
  (ESA WorldCover: 50 built-up, 80 permanent water) zeroes a pixel anywhere; where
  no parcel decides (no parcel layer, or outside parcels with ``"evidence"``) a
  class not among the forest classes (WorldCover: 10 tree cover) does too.  Inside
  forest parcels the map's tree/grass/crop confusion does not overrule the
  inventory (WorldCover 2021 states 76.7 % overall accuracy);
* the mosaic's spectral evidence: NDVI below ``ndvi_min`` (no green canopy:
  water, built-up, bare soil, fresh clear-cuts).

Each source's verdict is kept in a bit of the ``reasons`` layer so an auditor
can see why a pixel was zeroed (:data:`REASON_BITS`).  Missing evidence (NaN
NDVI under persistent cloud, land-cover nodata) never zeroes a pixel.
"""

from __future__ import annotations

import numpy as np

from ..vector.parcels import land_class_text  # noqa: F401  (one land-class normaliser for the mask and every total)

REASON_BITS = {"parcel_land_class": 1, "outside_parcels": 2, "landcover": 4, "ndvi": 8}
"""Bit of each reason a pixel is non-forest in ``maps/forest_mask.tif`` band 2 (0: forest)."""

NO_PARCEL = 255
"""Value of the burnt parcel land-class layer outside every parcel (1 forest code, 0 another code)."""


def forest_mask_block(parcel_forest: np.ndarray | None, landcover: np.ndarray | None, ndvi: np.ndarray | None, *,
                      landcover_forest: tuple[int, ...] = (10,), landcover_never_forest: tuple[int, ...] = (50, 80),
                      landcover_nodata: int | None = None, ndvi_min: float | None = None,
                      outside_parcels: str = "non_forest") -> np.ndarray:
    """(2, y, x) uint8: forest (1) / non-forest (0), and the bit-coded reasons (:data:`REASON_BITS`).

    ``parcel_forest`` is 1 where the pixel's parcel carries a forest code, 0 another code,
    :data:`NO_PARCEL` outside parcels; any source may be None (not configured).
    """
    shape = next(a.shape for a in (parcel_forest, landcover, ndvi) if a is not None)
    reasons = np.zeros(shape, dtype=np.uint8)
    if parcel_forest is not None:
        reasons |= np.where(parcel_forest == 0, REASON_BITS["parcel_land_class"], 0).astype(np.uint8)
        if outside_parcels == "non_forest":
            reasons |= np.where(parcel_forest == NO_PARCEL, REASON_BITS["outside_parcels"], 0).astype(np.uint8)
    if landcover is not None:
        known = np.ones(shape, bool) if landcover_nodata is None else landcover != landcover_nodata
        undecided = (np.ones(shape, bool) if parcel_forest is None
                     else (parcel_forest == NO_PARCEL) & (outside_parcels == "evidence"))
        never = np.isin(landcover, landcover_never_forest) | (undecided & ~np.isin(landcover, landcover_forest))
        reasons |= np.where(known & never, REASON_BITS["landcover"], 0).astype(np.uint8)
    if ndvi is not None and ndvi_min is not None:
        with np.errstate(invalid="ignore"):
            low = np.isfinite(ndvi) & (ndvi < ndvi_min)
        reasons |= np.where(low, REASON_BITS["ndvi"], 0).astype(np.uint8)
    return np.stack([(reasons == 0).astype(np.uint8), reasons])


def masked_bands(bands: np.ndarray, forest: np.ndarray, values) -> np.ndarray:
    """``bands`` (band, y, x) where ``forest`` is 1, band i's ``values[i]`` elsewhere (None: left as it is)."""
    out = np.array(bands, dtype="float32", copy=True)
    for i, v in enumerate(values):
        if v is not None:
            out[i] = np.where(forest == 1, out[i], np.float32(v))
    return out
