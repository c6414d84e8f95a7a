"""Forest types of the synthetic county and their growth, structure and spectra.

Growth follows a Chapman-Richards curve AGB(age) = amax * (1 - exp(-k age))^p
(Mg/ha); canopy top height h = h_coef * (AGB / stocking)^0.45 (m) and canopy
cover, which makes optical reflectance saturate at high biomass, are set per
stand by :mod:`forestcarbon_synth.structure`.  Values are plausible for
subtropical Zhejiang plantations, not taken from a yield table.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ForestType:
    """Growth and appearance of one synthetic forest type.

    ``amax`` asymptotic AGB (Mg/ha), ``k`` rate (1/yr) and ``p`` shape of the
    Chapman-Richards curve; ``age_range`` (yr); ``h_coef`` in h_m = h_coef·(AGB/stocking)^0.45;
    ``dbh_per_year`` (cm/yr) and ``dbh_max`` (cm) set plot DBH draws; ``veg`` is
    the closed-canopy surface reflectance per band (unitless, 0-1).
    """

    key: str
    species: str  # name as written in inventory tables (Chinese)
    share: float
    age_range: tuple[int, int]
    amax: float
    k: float
    p: float
    h_coef: float
    dbh_per_year: float
    dbh_max: float
    # canopy reflectance: blue, green, red, nir, nir08, swir16, swir22
    veg: tuple[float, ...]

    def agb_mg_ha(self, age):
        age = np.asarray(age, dtype=float)
        return self.amax * (1 - np.exp(-self.k * age)) ** self.p


FOREST_TYPES = (
    ForestType("chinese_fir", "杉木", 0.30, (4, 40), 190.0, 0.07, 2.0, 3.0, 0.7, 40, (0.025, 0.050, 0.022, 0.26, 0.27, 0.13, 0.06)),
    ForestType("masson_pine", "马尾松", 0.20, (5, 50), 160.0, 0.05, 2.0, 2.8, 0.6, 45, (0.028, 0.055, 0.027, 0.24, 0.25, 0.14, 0.07)),
    ForestType("moso_bamboo", "毛竹", 0.15, (3, 30), 60.0, 0.30, 1.0, 2.2, 0.0, 12, (0.035, 0.080, 0.035, 0.36, 0.37, 0.18, 0.08)),
    ForestType("camellia_oleifera", "油茶", 0.10, (3, 40), 22.0, 0.10, 1.5, 1.3, 0.3, 14, (0.032, 0.070, 0.035, 0.30, 0.31, 0.17, 0.08)),
    ForestType("broadleaf", "阔叶树", 0.15, (8, 70), 230.0, 0.04, 1.6, 2.8, 0.5, 60, (0.030, 0.065, 0.028, 0.33, 0.34, 0.15, 0.065)),
)
SOIL = (0.075, 0.105, 0.135, 0.21, 0.22, 0.27, 0.21)
BANDS = ("blue", "green", "red", "nir", "nir08", "swir16", "swir22")
