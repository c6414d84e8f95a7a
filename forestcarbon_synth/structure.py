"""Stand structure of the synthetic county: what LiDAR measures and optical reflectance barely sees.

Two stands of the same biomass can be tall and open or short and dense, and two stands of the same
canopy cover can hold 80 or 200 Mg/ha.  Above canopy closure, optical reflectance hardly changes with
biomass: in Zhejiang, Landsat reflectance saturates at about 159 Mg/ha in pine, 152 in mixed, 143 in Chinese
fir, 123 in broadleaf, 75 in bamboo forest and 55 in shrub (Zhao et al. 2016, Remote Sens. 8(6):469,
doi:10.3390/rs8060469), and single Sentinel-2 bands at about 80 Mg/ha across China, indices at 100-150
(Remote Sens. 2025, 17(20):3437, doi:10.3390/rs17203437); optical-only models are correspondingly weak
(review: Lu et al. 2016, Int. J. Digit. Earth 9:63-105).  LiDAR measures canopy height and cover
directly, and area-based LiDAR models reach 20-27 % relative RMSE under honest validation (Ploton et al.
2020, Nat. Commun. 11:4540).  The truth here follows the same physics, with its own equations (the
pipeline fits random forests; it has no height-biomass equation):

* **stocking** ``s`` (relative stand density, lognormal per stand, SD 0.25 in log, and a within-stand
  field, SD 0.08): at the same top height a denser stand holds more biomass,
  ``AGB = s · (H / h_coef)^(1/0.45)``, i.e. ``H = h_coef · (AGB / s)^0.45`` (synthetic SD: planting
  density, thinning, mortality).  LiDAR sees ``H``; nothing sees ``s`` once the canopy is closed.
* **canopy cover** ``fc = 1 - exp(-AGB / (35 · g))`` with a per-stand crown-closure factor ``g``
  (lognormal, SD 0.25: crown form, gaps, thinning; synthetic): cover closes near 100 Mg/ha, so
  reflectance, which follows cover, saturates there.  LiDAR's share of returns above 2 m follows ``fc``.
* **closed-canopy spectrum** per stand: the type's spectrum mixed with a second type's (a share drawn
  from Beta(1.2, 4), mean 23 %: Zhejiang stands are often 针阔混交, mixed conifer-broadleaf), times a
  stand brightness (leaf area past closure, leaf chemistry, understory; lognormal, SD 0.07 common to
  all bands and 0.04 per band; synthetic), darkened by crown shadow that deepens with canopy height,
  ``1 - shadow_b · (1 - exp(-H / 15 m))`` (NIR and SWIR lose up to 20 %, visible bands 10 %; synthetic
  levels): the weak optical signal of biomass past closure, and why saturation sits higher in tall
  conifers than in bamboo.

Village groves and clear-cut regrowth follow their forest type's (broadleaf's, the stand's) rules.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .forest_types import FOREST_TYPES
from .landscape import smooth_field

STOCKING_SD = 0.25  # log SD between stands; synthetic (see the module docstring)
STOCKING_TEXTURE_SD = 0.08  # log SD within a stand; synthetic
CLOSURE_SD = 0.25  # log SD of the crown-closure factor g between stands; synthetic
COVER_SCALE_MG_HA = 35.0  # fc = 1 - exp(-AGB / (35 g)): 94 % cover at 100 Mg/ha when g = 1
MIX_BETA = (1.2, 4.0)  # share of the second type's crowns in the canopy; synthetic
BRIGHTNESS_SD = 0.07  # log SD common to all bands; synthetic
BAND_SD = 0.04  # log SD per band; synthetic
SHADOW = (0.10, 0.10, 0.10, 0.20, 0.20, 0.20, 0.20)  # darkening of tall canopies per band; synthetic
SHADOW_HEIGHT_M = 15.0
HEIGHT_EXPONENT = 0.45


@dataclass
class Structure:
    """Per-cell stand structure on the frame grid.

    ``height_m``: canopy top height (m), 0 without trees; ``cover``: canopy cover (0-1) of the stand
    (before roads take their share of the cell); ``canopy``: (band, y, x) surface reflectance of the
    closed canopy (mixing, brightness and crown shadow applied); ``stocking``: ``s``.
    """

    height_m: np.ndarray
    cover: np.ndarray
    canopy: np.ndarray
    stocking: np.ndarray


def stand_structure(rng, ids: np.ndarray, stand_agb: np.ndarray, tcode: np.ndarray) -> Structure:
    """Structure of every cell from its parcel (``ids``, -1 outside), its stand's AGB (Mg/ha, before the
    road share) and its forest-type index (``len(FOREST_TYPES)``: no trees)."""
    n_types = len(FOREST_TYPES)
    n = int(ids.max()) + 2  # parcels and one slot for cells outside every parcel (index -1)
    stocking = np.exp(rng.normal(0, STOCKING_SD, n))[ids] * np.exp(smooth_field(rng, ids.shape, 3.0,
                                                                                STOCKING_TEXTURE_SD))
    closure = np.exp(rng.normal(0, CLOSURE_SD, n))[ids]
    trees = tcode < n_types
    t = np.minimum(tcode, n_types - 1)
    h_coef = np.array([ft.h_coef for ft in FOREST_TYPES])[t]
    agb = np.where(trees, np.maximum(stand_agb, 0.0), 0.0)
    height = np.where(trees, h_coef * np.power(agb / stocking, HEIGHT_EXPONENT), 0.0)
    cover = np.where(trees, 1.0 - np.exp(-agb / (COVER_SCALE_MG_HA * closure)), 0.0)

    veg = np.array([ft.veg for ft in FOREST_TYPES], dtype="float64")  # type, band
    offset = rng.integers(1, n_types, n)  # the second type: the cell's type index + offset, never the same
    share = rng.beta(*MIX_BETA, n)
    bright = np.exp(rng.normal(0, BRIGHTNESS_SD, n)[:, None] + rng.normal(0, BAND_SD, (n, veg.shape[1])))
    mixed = ((1 - share[ids])[None] * veg[t].transpose(2, 0, 1)
             + share[ids][None] * veg[(t + offset[ids]) % n_types].transpose(2, 0, 1))
    shade = 1.0 - np.asarray(SHADOW)[:, None, None] * (1.0 - np.exp(-height / SHADOW_HEIGHT_M))[None]
    canopy = (mixed * bright[ids].transpose(2, 0, 1) * shade).astype("float32")
    return Structure(height.astype("float32"), cover.astype("float32"), canopy, stocking.astype("float32"))
