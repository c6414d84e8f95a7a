"""DBH of LiDAR-detected trees from their height (and crown diameter), fitted on field trees.

Forms (D cm, H m, CD crown diameter m):

* ``log_h``:    ln D = a + b·ln H
* ``log_h_cd``: ln D = a + b·ln H + c·ln CD

fitted by ordinary least squares on the log scale to field trees whose height
was *measured* (modelled heights would feed an H-D model's own prediction back
in).  ``rse`` is the residual standard error √(RSS / (n − p)) on the log scale;
the mean prediction is Baskerville's (1972, Can. J. For. Res. 2:49) bias
corrected exp(ŷ + rse²/2), and a Monte Carlo draw is exp(ŷ + ε), ε ~ N(0, rse)
(as :class:`~forestcarbon.models.height.HeightModel` draws heights, after
BIOMASS ``predictHeight(err = TRUE)``).  ``cov`` is the OLS covariance of the
coefficients, rse²·(XᵀX)⁻¹, so a Monte Carlo can draw the coefficients too
(one set per draw, shared by every tree the model serves).

Why a direct D ~ H regression rather than inverting an H ~ D model: the H-D
model minimises errors in H given D; solving it for D gives the D at which the
*mean* height equals the observed height, which is not the mean D of trees of
that height (regression dilution: the inverse of E[H|D] is not E[D|H]), and it
carries no error for D.  Predicting the quantity that is missing (DBH) from
what the sensor measures (height, crown size) by regressing it directly, with
its own residual, is the approach of Jucker et al. (2017), "Allometric
equations for integrating remote sensing imagery into forest monitoring
programmes", Global Change Biology 23:177-190 (their eq. 2: D from H × CD on
the log scale, with a Baskerville correction).

Predictions for trees taller or shorter than the fitted trees (or with crowns
outside the fitted crown range) are made with the fitted line but flagged
(``predict`` returns the flag), never silently extrapolated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import FieldError, ModelError

FORMS = ("log_h", "log_h_cd")
MIN_TREES = 10


@dataclass(frozen=True)
class DbhModel:
    """ln D = coef · (1, ln H[, ln CD]) + N(0, rse); ranges of the fitted trees; ``cov`` of the coefficients."""

    form: str
    coef: tuple[float, ...]
    rse: float
    n: int
    h_range_m: tuple[float, float]
    cd_range_m: tuple[float, float] | None = None
    cov: tuple[tuple[float, ...], ...] | None = None

    def _design(self, height_m, crown_diameter_m=None) -> np.ndarray:
        h = np.asarray(height_m, dtype="float64")
        cols = [np.ones_like(h), np.log(h)]
        if self.form == "log_h_cd":
            if crown_diameter_m is None:
                raise ModelError("the log_h_cd DBH model needs crown_diameter_m")
            cols.append(np.log(np.broadcast_to(np.asarray(crown_diameter_m, dtype="float64"), h.shape)))
        return np.stack(cols, axis=-1)

    def log_mean(self, height_m, crown_diameter_m=None, coef=None) -> np.ndarray:
        """ŷ = ln-scale prediction; ``coef`` (..., p) replaces the fitted coefficients (a Monte Carlo draw)."""
        X = self._design(height_m, crown_diameter_m)
        c = np.asarray(self.coef if coef is None else coef, dtype="float64")
        if c.ndim == 1:
            return X @ c
        return np.einsum("...p,...p->...", X, c)

    def outside(self, height_m, crown_diameter_m=None) -> np.ndarray:
        """True where a tree lies outside the fitted height (or crown diameter) range."""
        h = np.asarray(height_m, dtype="float64")
        out = ~((h >= self.h_range_m[0]) & (h <= self.h_range_m[1]))
        if self.form == "log_h_cd" and self.cd_range_m is not None and crown_diameter_m is not None:
            cd = np.asarray(crown_diameter_m, dtype="float64")
            out |= ~((cd >= self.cd_range_m[0]) & (cd <= self.cd_range_m[1]))
        return out

    def predict(self, height_m, crown_diameter_m=None) -> tuple[np.ndarray, np.ndarray]:
        """(DBH in cm, Baskerville-corrected exp(ŷ + rse²/2); extrapolated flag per tree)."""
        d = np.exp(self.log_mean(height_m, crown_diameter_m) + 0.5 * self.rse**2)
        return d, self.outside(height_m, crown_diameter_m)

    def draw(self, rng: np.random.Generator, height_m, crown_diameter_m=None, coef=None) -> np.ndarray:
        """One Monte Carlo draw of DBH (cm): exp(ŷ + ε), ε ~ N(0, rse) per tree (mean = :meth:`predict`)."""
        m = self.log_mean(height_m, crown_diameter_m, coef)
        return np.exp(m + rng.normal(size=np.shape(m)) * self.rse)

    def to_dict(self) -> dict:
        return {"form": self.form, "coef": list(self.coef), "rse": self.rse, "n": self.n,
                "h_range_m": list(self.h_range_m),
                "cd_range_m": None if self.cd_range_m is None else list(self.cd_range_m),
                "cov": None if self.cov is None else [list(r) for r in self.cov]}

    @classmethod
    def from_dict(cls, raw: dict) -> "DbhModel":
        try:
            form = str(raw["form"])
            coef = tuple(float(c) for c in raw["coef"])
            model = cls(form, coef, float(raw["rse"]), int(raw["n"]), tuple(float(v) for v in raw["h_range_m"]),
                        None if raw.get("cd_range_m") is None else tuple(float(v) for v in raw["cd_range_m"]),
                        None if raw.get("cov") is None else tuple(tuple(float(v) for v in r) for r in raw["cov"]))
        except (KeyError, TypeError, ValueError) as err:
            raise ModelError(f"DBH model dict needs form, coef, rse, n, h_range_m ({err})") from None
        if form not in FORMS or len(coef) != (2 if form == "log_h" else 3):
            raise ModelError(f"DBH model form must be one of {FORMS} with 2 or 3 coefficients, not {form!r} {coef}")
        return model


def fit_dbh_model(height_m, dbh_cm, crown_diameter_m=None, form: str = "log_h") -> DbhModel:
    """Least squares on ln D = a + b ln H (+ c ln CD) over trees with finite, positive values."""
    if form not in FORMS:
        raise FieldError(f"DBH model form must be one of {FORMS}, not {form!r}")
    h, d = np.asarray(height_m, dtype="float64"), np.asarray(dbh_cm, dtype="float64")
    if h.shape != d.shape:
        raise FieldError(f"height_m ({h.size} values) and dbh_cm ({d.size}) differ in length")
    ok = np.isfinite(h) & np.isfinite(d) & (h > 0) & (d > 0)
    if form == "log_h_cd":
        if crown_diameter_m is None:
            raise FieldError("a log_h_cd DBH model needs crown_diameter_m of the field trees")
        cd = np.asarray(crown_diameter_m, dtype="float64")
        ok &= np.isfinite(cd) & (cd > 0)
    p = 2 if form == "log_h" else 3
    n = int(ok.sum())
    if n < max(MIN_TREES, p + 1):
        raise FieldError(f"a {form} DBH model needs at least {max(MIN_TREES, p + 1)} trees with measured height and "
                         f"DBH{' and crown diameter' if p == 3 else ''}, got {n}")
    cols = [np.ones(n), np.log(h[ok])] + ([np.log(cd[ok])] if p == 3 else [])
    X = np.stack(cols, axis=1)
    y = np.log(d[ok])
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    resid = y - X @ coef
    rse = float(np.sqrt(resid @ resid / (n - p)))
    cov = rse**2 * np.linalg.inv(X.T @ X)
    return DbhModel(form, tuple(float(c) for c in coef), rse, n, (float(h[ok].min()), float(h[ok].max())),
                    (float(cd[ok].min()), float(cd[ok].max())) if p == 3 else None,
                    tuple(tuple(float(v) for v in r) for r in cov))


def usable_field_trees(trees: pd.DataFrame) -> pd.Series:
    """Field trees a DBH model may learn from: alive (where ``status`` is given), height measured (where
    ``height_source`` is given, see :func:`~forestcarbon.models.height.fill_heights`), DBH and height > 0."""
    ok = pd.Series(True, index=trees.index)
    if "status" in trees:
        ok &= trees["status"].astype(str).str.strip().str.lower() == "alive"
    if "height_source" in trees:
        ok &= trees["height_source"].astype(str) == "measured"
    for col in ("height_m", "dbh_cm"):
        if col not in trees:
            raise FieldError(f"field trees lack column {col!r} (have {list(trees.columns)})")
        v = pd.to_numeric(trees[col], errors="coerce")
        ok &= v.notna() & (v > 0)
    return ok


def fit_dbh_models(trees: pd.DataFrame, by: str = "species_group", min_trees: int = MIN_TREES,
                   form: str = "log_h") -> dict[str, DbhModel]:
    """DBH models by ``by`` (species group) from field trees (:func:`usable_field_trees`).

    A group with at least ``min_trees`` usable trees gets its own model; a pooled
    model over all usable trees is always fitted under the key ``"*"`` for the
    other groups (the habit of :func:`~forestcarbon.models.height.fill_heights`).
    """
    ok = usable_field_trees(trees)
    if form == "log_h_cd":
        if "crown_diameter_m" not in trees:
            raise FieldError("a log_h_cd DBH model needs a crown_diameter_m column in the field trees")
        cd = pd.to_numeric(trees["crown_diameter_m"], errors="coerce")
        ok &= cd.notna() & (cd > 0)
    t = trees[ok]

    def fit(sub):
        def col(name):
            return pd.to_numeric(sub[name]).to_numpy(float)
        return fit_dbh_model(col("height_m"), col("dbh_cm"), col("crown_diameter_m") if form == "log_h_cd" else None,
                             form)

    models = {"*": fit(t)}
    if by in t:
        for key, sub in t.groupby(by):
            if len(sub) >= max(min_trees, MIN_TREES):
                models[str(key)] = fit(sub)
    return models
