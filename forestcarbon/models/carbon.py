"""AGB density to total tree carbon and CO2e.

carbon (Mg C/ha) = AGB × (1 + R) × CF, with R the root-to-shoot ratio and CF
the carbon fraction of dry matter (defaults: IPCC 2006 Vol. 4 Ch. 4
Table 4.3, CF = 0.47; IPCC 2019 Refinement Table 4.4, subtropical humid
forest Asia, R = 0.230 for AGB ≤ 125 t/ha, 0.246 above).  CO2e = C × 44/12.
"""

from __future__ import annotations

import numpy as np

from .allometry import CO2_PER_C


def carbon_mg_ha(agb_mg_ha, carbon_cfg):
    """Total (above + below ground) tree carbon density, Mg C/ha; NaN stays NaN."""
    agb = np.asarray(agb_mg_ha)
    r = np.where(agb <= carbon_cfg.root_shoot_threshold_mg_ha, carbon_cfg.root_shoot_low, carbon_cfg.root_shoot_high)
    return (agb * (1.0 + r) * carbon_cfg.carbon_fraction).astype(agb.dtype)


def co2e(carbon):
    return np.asarray(carbon) * CO2_PER_C
