"""Landsat-to-Sentinel-2 bandpass adjustment: the HLS coefficients (Claverie et al. 2018), inverted.

Source of the coefficients: the Harmonized Landsat Sentinel-2 (HLS) project, NASA/GSFC, page "Bandpass
adjustment" (https://hls.gsfc.nasa.gov/algorithms/bandpass-adjustment/), table "coefficients of linear
regression used to adjust from Sentinel-2A,B/MSI to Landsat 8/OLI", Sentinel-2A columns; the same values
appear in the HLS Product User's Guide v1.4 (Skakun et al., December 2018) as transcribed by ESA's
sen2like (``S2L_Sbaf.get_oli_like_coef``, "Value in HLS Guide v 1.4").  Method: Claverie et al. (2018),
Remote Sensing of Environment 219:145-161, section on bandpass adjustment: OLS fits between MSI and OLI bands
synthesised from 500 Hyperion surface-reflectance spectra of 160 scenes (MSI relative spectral responses
v2.0).  The HLS v2.0 User Guide PDF itself could not be read here, so its table and page are not cited.

Direction.  HLS adjusts Sentinel-2 to Landsat: ``rho_OLI = slope * rho_MSI + offset`` (OLI is HLS's
reference, in v1.4 as on the current HLS page).  forestcarbon's reference is Sentinel-2 (its band names,
10 m grid and ``nir`` = B08), so Landsat 8/9 OLI reflectance is brought to Sentinel-2A MSI by inverting
that line, ``rho_MSI = (rho_OLI - offset) / slope``, as sen2like does (``get_sen2like_coef``: "coefficient
applied to Landsat8/OLI towards Sentinel2A/MSI").  Inverting an OLS fit is not the OLS fit the other way;
with slopes within 2.5 % of 1 and offsets below 0.005 the two differ far less than the adjustment itself.
Sentinel-2A is the target: Sentinel-2B/C scenes are left as they are (the HLS table's S2B column differs
from S2A by up to 0.016 in slope, SWIR 2).

Landsat 9 OLI-2 takes the OLI coefficients (HLS treats Landsat 8 and 9 as one reference group; sen2like
applies the same values to both).  Landsat 4/5 TM and 7 ETM+ have no HLS coefficients; Roy et al. (2016)
give ETM+ -> OLI fits, but they were not verified here, so such scenes stay unadjusted with a
:class:`~forestcarbon.errors.BandpassWarning`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from ..errors import BandpassWarning
from .sensors import LANDSAT, LANDSAT_C2_L2, SENTINEL2_L2A

HLS_MSI_TO_OLI_S2A = {
    # MSI band: (slope, offset) of rho_OLI = slope * rho_MSI + offset; HLS bandpass-adjustment table, Sentinel-2A
    "B01": (0.9959, -0.0002),  # CA, OLI band 1
    "B02": (0.9778, -0.004),   # Blue, OLI 2
    "B03": (1.0053, -0.0009),  # Green, OLI 3
    "B04": (0.9765, 0.0009),   # Red, OLI 4
    "B8A": (0.9983, -0.0001),  # NIR, OLI 5
    "B11": (0.9987, -0.0011),  # SWIR 1, OLI 6
    "B12": (1.003, -0.0012),   # SWIR 2, OLI 7
}

MSI_BAND = {**SENTINEL2_L2A.bands, "coastal": "B01", "nir": "B8A"}
"""Harmonised band -> the MSI band whose HLS row adjusts Landsat's band of that name.  Landsat has no
counterpart of the broad MSI B08: its ``nir`` is OLI band 5 standing in (:func:`..scenes.read_scenes`), so it
is adjusted as that band is, to B8A, and stays equal to ``nir08``."""

HARMONISE_MODES = ("auto", "always", "never")


@dataclass(frozen=True)
class SceneAdjustment:
    """What happens to one scene's reflectance: ``label`` for the record, ``rows`` band -> (slope, offset)
    of the HLS line to invert (empty: unchanged)."""

    label: str
    rows: dict[str, tuple[float, float]]


NONE = SceneAdjustment("none", {})


def oli_to_msi(rho_oli: np.ndarray, slope: float, offset: float) -> np.ndarray:
    """Sentinel-2A-like reflectance from OLI reflectance: the HLS line ``rho_OLI = slope * rho_MSI + offset`` inverted."""
    return (rho_oli - offset) / slope


def platform(item) -> str:
    p = item.properties
    return str(p.get("platform", p.get("eo:platform", ""))).lower().replace("_", "-")


def resolve_mode(scenes, mode: str) -> str:
    """``auto`` decided once for a whole collection: ``always`` when it mixes Landsat and Sentinel-2, else
    ``never`` (other modes unchanged).  The nightly tiles use it so that a Landsat-only tile is adjusted like
    its mixed neighbours (no seams)."""
    if mode != "auto":
        return mode
    landsat = any(s.sensor in LANDSAT for s in scenes)
    return "always" if landsat and any(s.sensor is SENTINEL2_L2A for s in scenes) else "never"


def plan(scenes, bands, mode: str = "auto") -> list[SceneAdjustment]:
    """The adjustment of every scene, in order.

    ``auto``: Landsat OLI scenes are adjusted when the scenes mix Landsat and Sentinel-2; ``always``: whenever
    present; ``never``: none.  Sentinel-2 scenes are never changed.  Landsat scenes of other sensors (TM,
    ETM+, or no platform given) that would be adjusted stay unadjusted, with a :class:`BandpassWarning`.
    """
    if mode not in HARMONISE_MODES:
        raise ValueError(f"unknown harmonise mode {mode!r}; one of {HARMONISE_MODES}")
    landsat = [s for s in scenes if s.sensor in LANDSAT]
    mixed = bool(landsat) and any(s.sensor is SENTINEL2_L2A for s in scenes)
    if mode == "never" or not landsat or (mode == "auto" and not mixed):
        return [NONE] * len(scenes)
    rows = {b: HLS_MSI_TO_OLI_S2A[MSI_BAND[b]] for b in bands if MSI_BAND.get(b) in HLS_MSI_TO_OLI_S2A}
    oli = SceneAdjustment("hls_oli_to_s2a_msi", rows)
    other = sorted({f"{s.id} ({platform(s.item) or 'platform unknown'})" for s in landsat
                    if s.sensor is not LANDSAT_C2_L2})
    if other:
        warnings.warn(f"{len(other)} Landsat scene(s) not from OLI are composited without a bandpass adjustment "
                      f"(no verified TM/ETM+ -> Sentinel-2 coefficients): {', '.join(other[:5])}"
                      f"{' ...' if len(other) > 5 else ''}", BandpassWarning, stacklevel=2)
    return [oli if s.sensor is LANDSAT_C2_L2
            else SceneAdjustment("none: no coefficients", {}) if s.sensor in LANDSAT else NONE
            for s in scenes]


def describe(adjustments: list[SceneAdjustment]) -> str:
    """One line for raster tags and summaries: the rule and coefficients applied, and to how many scenes."""
    used = [a for a in adjustments if a.rows]
    skipped = sum(a.label.startswith("none:") for a in adjustments)
    if not used:
        return "none" + (f" ({skipped} Landsat scene(s) without coefficients)" if skipped else "")
    coeffs = "; ".join(f"{b} {s}/{o}" for b, (s, o) in used[0].rows.items())
    return (f"{len(used)} Landsat OLI scene(s) to Sentinel-2A MSI: rho = (rho_OLI - offset) / slope, HLS "
            f"(Claverie et al. 2018) MSI->OLI slope/offset {coeffs}"
            + (f"; {skipped} Landsat scene(s) without coefficients left unadjusted" if skipped else ""))
