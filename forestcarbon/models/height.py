"""Height-diameter models for trees whose height was not measured, after BIOMASS ``modelHD`` / ``predictHeight``.

Forms (D cm, H m):

* ``log1``: ln H = a + b·ln D
* ``log2``: ln H = a + b·ln D + c·(ln D)²
* ``michaelis``: H = a·D / (b + D)

Log models are fitted by least squares on the log scale and predicted with
Baskerville's (1972) bias correction, exp(ŷ + RSE²/2); the Michaelis-Menten
model by non-linear least squares.  ``rse`` is the residual standard error
(√(RSS / (n − p)); log scale for log models, metres otherwise), which is also
the height error of modelled trees in the Monte Carlo (drawn as BIOMASS does
with ``err = TRUE``: a normal error on the model's scale, no bias correction).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import curve_fit

from ..errors import FieldError

METHODS = ("log1", "log2", "michaelis")
MIN_PAIRS = 10


def _michaelis(d, a, b):
    return a * d / (b + d)


@dataclass(frozen=True)
class HeightModel:
    method: str
    coef: tuple[float, ...]
    rse: float
    n: int

    def _mean(self, d):
        d = np.asarray(d, dtype="float64")
        if self.method == "michaelis":
            return _michaelis(d, *self.coef)
        ld = np.log(d)
        return self.coef[0] + self.coef[1] * ld + (self.coef[2] * ld**2 if self.method == "log2" else 0.0)

    def predict(self, dbh_cm) -> np.ndarray:
        """Height (m); log models with Baskerville's correction."""
        m = self._mean(dbh_cm)
        return m if self.method == "michaelis" else np.exp(m + 0.5 * self.rse**2)

    def draw(self, rng: np.random.Generator, dbh_cm) -> np.ndarray:
        """One Monte Carlo draw of heights (m) with the model's residual error; heights <= 0 become 0.1 m."""
        m = self._mean(dbh_cm)
        e = rng.normal(size=np.shape(m)) * self.rse
        h = m + e if self.method == "michaelis" else np.exp(m + e)
        return np.where(h > 0, h, 0.1)


def fit_height_model(dbh_cm, height_m, method: str = "log2") -> HeightModel:
    """Fit an H-D model to measured pairs (D > 0, H > 0)."""
    if method not in METHODS:
        raise FieldError(f"height model must be one of {METHODS}, not {method!r}")
    d, h = np.asarray(dbh_cm, dtype="float64"), np.asarray(height_m, dtype="float64")
    ok = np.isfinite(d) & np.isfinite(h) & (d > 0) & (h > 0)
    d, h = d[ok], h[ok]
    p = {"log1": 2, "log2": 3, "michaelis": 2}[method]
    if d.size < max(MIN_PAIRS, p + 1):
        raise FieldError(f"a {method} height model needs at least {max(MIN_PAIRS, p + 1)} trees with measured heights, got {d.size}")
    if method == "michaelis":
        try:
            coef, _ = curve_fit(_michaelis, d, h, p0=(float(h.max()) * 1.2, float(np.median(d))), maxfev=20_000)
        except RuntimeError as err:  # no convergence
            raise FieldError(f"the michaelis height model did not converge on {d.size} trees ({err}); "
                             "try log2") from None
        resid = h - _michaelis(d, *coef)
    else:
        ld = np.log(d)
        X = np.c_[np.ones(d.size), ld, ld**2][:, :p]
        coef, *_ = np.linalg.lstsq(X, np.log(h), rcond=None)
        resid = np.log(h) - X @ coef
    rse = float(np.sqrt(np.sum(resid**2) / (d.size - p)))
    return HeightModel(method, tuple(float(c) for c in coef), rse, int(d.size))


def fill_heights(trees: pd.DataFrame, method: str, by: str = "species_group") -> tuple[pd.DataFrame, dict]:
    """Heights for trees without one, from H-D models fitted on the measured trees.

    One model per value of ``by`` (species group) with at least 10 measured
    trees, else one model over all measured trees (key ``"*"``).  Adds
    ``height_source``: ``measured`` or ``hd_model:<key>:<method>``.  Returns the
    trees and the models by key.
    """
    t = trees.copy()
    h = pd.to_numeric(t["height_m"], errors="coerce") if "height_m" in t else pd.Series(np.nan, index=t.index)
    measured = h.notna() & (h > 0)
    t["height_m"] = h
    t["height_source"] = np.where(measured, "measured", "")
    models: dict[str, HeightModel] = {}
    missing = ~measured
    if not missing.any():
        return t, models
    pooled = None
    for key, idx in t[missing].groupby(by).groups.items() if by in t else [("*", t.index[missing])]:
        own = measured & (t[by] == key) if by in t else measured
        if own.sum() >= MIN_PAIRS:
            model, name = fit_height_model(t.loc[own, "dbh_cm"], t.loc[own, "height_m"], method), str(key)
        else:
            if pooled is None:
                pooled = fit_height_model(t.loc[measured, "dbh_cm"], t.loc[measured, "height_m"], method)
            model, name = pooled, "*"
        models[name] = model
        t.loc[idx, "height_m"] = model.predict(t.loc[idx, "dbh_cm"].to_numpy(float))
        t.loc[idx, "height_source"] = f"hd_model:{name}:{method}"
    return t, models
