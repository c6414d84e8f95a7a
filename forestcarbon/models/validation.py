"""Honest validation of plot-level models: spatial / grouped / random cross-validation, accuracy per fold and per
coverage class, the residual variogram, permutation importance and the area of applicability.

* Spatial block CV: plots are labelled by the ``block_m`` square holding them (``regressor.spatial_blocks``)
  and whole blocks are held out (scikit-learn ``GroupKFold``; Roberts et al. 2017, Ecography 40:913-929).
  Grouped CV holds out whole groups (e.g. plot clusters) the same way.  Random CV (shuffled ``KFold``,
  seeded) is reported beside them: with clustered plots it overstates accuracy (Ploton et al. 2020,
  Nat. Commun. 11:4540), and the gap between the two is itself worth reading.
* Accuracy (``regressor.accuracy``): R² = 1 − Σ(ŷ−y)²/Σ(y−ȳ)², RMSE = √mean((ŷ−y)²) in the target's units,
  rRMSE = RMSE / ȳ, bias = mean(ŷ − y).
* Residual variogram of the out-of-fold residuals: Matheron's estimator
  γ(h) = 1/(2N(h)) Σ_{|s_i−s_j|∈h} (r_i − r_j)² over equal-width lag bins up to half the largest pair
  distance (Journel & Huijbregts 1978), fitted by least squares weighted by the pairs per bin
  (σ_k = 1/√N_k) with an exponential model γ(h) = c0 + c1(1 − exp(−h/a)), practical range 3a (95 % of
  the sill), or a spherical one γ(h) = c0 + c1(1.5h/a − 0.5(h/a)³) for h ≤ a, c0 + c1 beyond, practical
  range a (Webster & Oliver 2007, Geostatistics for Environmental Scientists, 2nd ed., §6.3).  Blocks
  smaller than that range leave correlated neighbours across the split: :class:`SpatialCVWarning`.
  Whether the fitted structure is there at all is tested against a pure nugget (a flat γ, its weighted
  mean) by the extra-sum-of-squares F test of nested least-squares fits, F = ((RSS₀ − RSS₁)/2) /
  (RSS₁/(k − 3)) on k lag bins with 2 and k − 3 degrees of freedom (Bates & Watts 1988, Nonlinear
  Regression Analysis and Its Applications, §3.5.1); lag bins share plots, so the test is approximate.
  Above ``structure_alpha`` (0.05) no structure is resolved between the lags: the pure nugget is kept
  (partial sill 0, practical range set to the first lag: whatever structure there is lies below it).  An
  exponential fitted to a flat γ otherwise wanders to any range, e.g. 189 km with a 614-unit partial sill
  over lags up to 6 km, which reads as near-full correlation over a county.
* Permutation importance (Breiman 2001; scikit-learn ``sklearn.inspection.permutation_importance``): the
  mean increase in RMSE when one feature's values are shuffled.
* Area of applicability, Meyer & Pebesma 2021 (Methods Ecol. Evol. 12:1620-1633), transcribed from CAST
  1.1.0 (github.com/HannaMeyer/CAST, commit 139849d, ``R/trainDI.R`` and ``R/aoa.R``, Euclidean "L2"
  distance): features standardised with the training mean and SD (R ``scale``, n − 1), multiplied by
  their importance weights (negative weights set to 0); d̄ = mean over training points of their mean
  distance to all other training points; a training point's DI is its distance to the nearest training
  point outside its own CV fold divided by d̄; threshold = 75th percentile + 1.5·IQR of the training DIs
  (R type-7 quantiles), capped at their maximum; new data's DI = distance to the nearest training point
  / d̄, inside the area of applicability where DI <= threshold (CAST: ``ifelse(DI > thres, 0, 1)``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.optimize import curve_fit
from scipy.spatial import cKDTree
from scipy.spatial.distance import cdist, pdist
from sklearn.base import clone
from sklearn.model_selection import GroupKFold, KFold

from ..errors import ModelError, SpatialCVWarning
from .regressor import accuracy, spatial_blocks

__all__ = ["spatial_blocks", "make_splits", "fold_ids", "CVResult", "cross_validate", "ResidualVariogram",
           "residual_variogram", "structure_test", "check_block_size", "permutation_importance_table", "TrainDI", "train_di"]

MIN_ROWS = 10


# ------------------------------------------------------------------ splits
def make_splits(n_rows: int, *, groups=None, folds: int = 5, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train positions, test positions) per fold: ``GroupKFold`` over ``groups`` (block or cluster labels)
    when given, else a shuffled ``KFold`` seeded by ``seed``.  Refuses fewer than ``MIN_ROWS`` rows or
    fewer groups than folds, naming the counts."""
    if folds < 2:
        raise ModelError(f"cross-validation needs at least 2 folds, got {folds}")
    if n_rows < max(MIN_ROWS, folds):
        raise ModelError(f"{n_rows} rows; {folds}-fold cross-validation needs at least {max(MIN_ROWS, folds)}")
    idx = np.arange(n_rows)
    if groups is None:
        return list(KFold(n_splits=folds, shuffle=True, random_state=seed).split(idx))
    groups = np.asarray(groups)
    if groups.shape[0] != n_rows:
        raise ModelError(f"{groups.shape[0]} group labels for {n_rows} rows")
    if pd.isna(groups).any():
        raise ModelError(f"{int(pd.isna(groups).sum())} rows have no group label")
    n_groups = np.unique(groups.astype(str)).size
    if n_groups < folds:
        raise ModelError(f"{n_rows} rows fall in {n_groups} groups/blocks; {folds}-fold grouped CV needs at least "
                         f"{folds} (fewer folds, or smaller blocks)")
    return list(GroupKFold(n_splits=folds).split(idx, groups=groups.astype(str)))


def fold_ids(splits, n_rows: int) -> np.ndarray:
    """Fold number (0-based) holding out each row; −1 for a row never held out."""
    out = np.full(n_rows, -1, dtype=int)
    for k, (_, test) in enumerate(splits):
        out[test] = k
    return out


# --------------------------------------------------------- cross-validation
@dataclass
class CVResult:
    """Out-of-fold predictions and their accuracy; ``per_class`` by coverage class (e.g. LiDAR / optical)."""

    scheme: str
    observed: np.ndarray
    predicted: np.ndarray
    fold: np.ndarray
    overall: dict
    per_fold: pd.DataFrame
    per_class: dict = field(default_factory=dict)

    @property
    def residual(self) -> np.ndarray:
        """Out-of-fold predicted − observed."""
        return self.predicted - self.observed

    def to_dict(self) -> dict:
        return {"scheme": self.scheme, **self.overall, "folds": int(self.per_fold.shape[0]),
                "per_fold": self.per_fold.to_dict(orient="records"), "per_coverage_class": self.per_class}


def _class_metrics(obs, pred, coverage) -> dict:
    if coverage is None:
        return {}
    cov = np.asarray(coverage).astype(str)
    return {c: accuracy(obs[cov == c], pred[cov == c]) for c in sorted(set(cov.tolist()))}


def cross_validate(estimator, X: pd.DataFrame, y, splits, *, scheme: str, coverage=None) -> CVResult:
    """Fit a clone of ``estimator`` on each fold's training rows and predict its held-out rows."""
    y = np.asarray(y, dtype="float64")
    pred = np.full(y.size, np.nan)
    rows = []
    for k, (train, test) in enumerate(splits):
        est = clone(estimator).fit(X.iloc[train], y[train])
        pred[test] = est.predict(X.iloc[test])
        rows.append({"fold": k, **accuracy(y[test], pred[test])})
    fold = fold_ids(splits, y.size)
    done = fold >= 0
    return CVResult(scheme, y, pred, fold, accuracy(y[done], pred[done]), pd.DataFrame(rows),
                    _class_metrics(y[done], pred[done], None if coverage is None else np.asarray(coverage)[done]))


# ----------------------------------------------------------------- variogram
def _exponential(h, c0, c1, a):
    return c0 + c1 * (1.0 - np.exp(-h / a))


def _spherical(h, c0, c1, a):
    r = np.minimum(h / a, 1.0)
    return c0 + c1 * (1.5 * r - 0.5 * r**3)


_MODELS = {"exponential": (_exponential, 3.0), "spherical": (_spherical, 1.0)}  # practical range = factor × a


@dataclass
class ResidualVariogram:
    """Empirical semivariogram of residuals (target units²) and its fitted model; JSON-able with
    :meth:`to_dict` / :meth:`from_dict`.  ``covariance(h)`` = c0 + c1 − γ(h) for h > 0 and c0 + c1 at 0
    is what aggregating correlated pixel errors over a parcel needs."""

    lag_m: list
    gamma: list
    pairs: list
    model: str
    nugget: float
    partial_sill: float
    range_param_m: float
    practical_range_m: float
    status: str = "ok"
    structure_p_value: float = float("nan")

    def gamma_at(self, h) -> np.ndarray:
        fn, _ = _MODELS[self.model]
        h = np.asarray(h, dtype="float64")
        return np.where(h > 0, fn(np.maximum(h, 1e-12), self.nugget, self.partial_sill, self.range_param_m), 0.0)

    def covariance(self, h) -> np.ndarray:
        return self.nugget + self.partial_sill - self.gamma_at(h)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, d: dict) -> "ResidualVariogram":
        optional = {"status", "structure_p_value"}  # cards written before the structure test lack the latter
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d or k not in optional})


def residual_variogram(x, y, residual, *, n_lags: int = 12, max_lag_m: float | None = None,
                       model: str = "exponential", structure_alpha: float = 0.05) -> ResidualVariogram:
    """Matheron's empirical semivariogram of ``residual`` at points (x, y) (metres) and a fitted
    ``model`` (``exponential`` or ``spherical``), see the module docstring."""
    if model not in _MODELS:
        raise ModelError(f"variogram model must be one of {list(_MODELS)}, not {model!r}")
    xy = np.column_stack([np.asarray(x, float), np.asarray(y, float)])
    r = np.asarray(residual, float)
    ok = np.isfinite(xy).all(axis=1) & np.isfinite(r)
    xy, r = xy[ok], r[ok]
    if r.size < 3:
        raise ModelError(f"a residual variogram needs at least 3 located residuals, got {r.size}")
    d = pdist(xy)
    sq = pdist(r[:, None], "sqeuclidean")
    max_lag_m = float(d.max()) / 2 if max_lag_m is None else float(max_lag_m)
    edges = np.linspace(0.0, max_lag_m, n_lags + 1)
    which = np.digitize(d, edges[1:-1])  # bin index 0..n_lags-1
    keep = d <= max_lag_m
    pairs = np.bincount(which[keep], minlength=n_lags)
    sums = np.bincount(which[keep], weights=sq[keep], minlength=n_lags)
    dsum = np.bincount(which[keep], weights=d[keep], minlength=n_lags)
    has = pairs > 0
    lag = dsum[has] / pairs[has]
    gamma = sums[has] / (2.0 * pairs[has])
    fn, factor = _MODELS[model]
    status = "ok"
    try:
        if lag.size < 3:
            raise RuntimeError(f"only {lag.size} non-empty lag bins")
        p0 = (float(gamma.min()), float(max(gamma.max() - gamma.min(), 1e-12)), max_lag_m / 3)
        (c0, c1, a), _ = curve_fit(fn, lag, gamma, p0=p0, sigma=1.0 / np.sqrt(pairs[has]),
                                   bounds=([0, 0, 1e-9], [np.inf, np.inf, 10 * max(max_lag_m, 1e-9)]), maxfev=20_000)
        c0, c1, a = float(c0), float(c1), float(a)
        practical = factor * a
        p_value = structure_test(gamma, fn(lag, c0, c1, a), pairs[has])
        if np.isfinite(p_value) and p_value > structure_alpha:  # no structure resolved between the lags: a pure nugget
            c0, c1 = float(np.average(gamma, weights=pairs[has])), 0.0
            a, practical = float(lag[0]) / factor, float(lag[0])
        elif practical > max_lag_m:
            status = (f"practical range {practical:.0f} m lies beyond the largest lag {max_lag_m:.0f} m: "
                      "not resolved by these plots")
    except (RuntimeError, ValueError) as err:
        c0, c1, a, practical, status = float("nan"), float("nan"), float("nan"), float("nan"), f"fit failed: {err}"
        p_value = float("nan")
    return ResidualVariogram(lag.tolist(), gamma.tolist(), pairs[has].astype(int).tolist(), model, c0, c1, a,
                             practical, status, p_value)


def structure_test(gamma, fitted, pairs) -> float:
    """p-value of the extra-sum-of-squares F test of a 3-parameter variogram fit (``fitted`` at the lags)
    against a flat one (the pairs-weighted mean of ``gamma``), both weighted by ``pairs`` as in the fit
    (module docstring).  NaN with fewer than 4 lags."""
    from scipy.stats import f as f_dist

    g, w = np.asarray(gamma, float), np.asarray(pairs, float)
    k = g.size
    if k < 4:
        return float("nan")
    rss1 = float(np.sum(w * (g - np.asarray(fitted, float)) ** 2))
    rss0 = float(np.sum(w * (g - np.average(g, weights=w)) ** 2))
    if rss1 <= 0:
        return 0.0 if rss0 > 0 else 1.0
    stat = max(rss0 - rss1, 0.0) / 2 / (rss1 / (k - 3))
    return float(f_dist.sf(stat, 2, k - 3))


def check_block_size(block_m: float, variogram: ResidualVariogram) -> bool:
    """Warn (``SpatialCVWarning``) and return False when the CV blocks are smaller than the residuals'
    practical range."""
    if np.isfinite(variogram.practical_range_m) and block_m < variogram.practical_range_m:
        note = "" if variogram.status == "ok" else f" ({variogram.status})"
        warnings.warn(f"spatial CV block {block_m:g} m is smaller than the out-of-fold residuals' practical range "
                      f"{variogram.practical_range_m:.0f} m ({variogram.model} variogram{note}): the spatial CV "
                      "figures may be optimistic; use blocks of at least that size", SpatialCVWarning, stacklevel=2)
        return False
    return True


# --------------------------------------------------------------- importance
def permutation_importance_table(estimator, X: pd.DataFrame, y, *, n_repeats: int = 10, seed: int = 0) -> pd.DataFrame:
    """Mean and SD over ``n_repeats`` shuffles of the increase in RMSE (target units) per feature, sorted."""
    from sklearn.inspection import permutation_importance

    res = permutation_importance(estimator, X, np.asarray(y, float), scoring="neg_root_mean_squared_error",
                                 n_repeats=n_repeats, random_state=seed, n_jobs=1)
    return (pd.DataFrame({"feature": [str(c) for c in X.columns], "rmse_increase": res.importances_mean,
                          "rmse_increase_sd": res.importances_std})
            .sort_values("rmse_increase", ascending=False, ignore_index=True))


# ----------------------------------------------------- area of applicability
@dataclass
class TrainDI:
    """CAST's ``trainDI`` object (see the module docstring); :meth:`di` and :meth:`aoa` apply it to new data."""

    features: list
    center: np.ndarray
    scale: np.ndarray
    weight: np.ndarray
    train_weighted: np.ndarray
    mean_distance: float  # CAST trainDist_avrgmean
    train_di: np.ndarray  # NaN for rows never held out
    threshold: float

    def di(self, X) -> np.ndarray:
        """Dissimilarity index of new rows (DataFrame with the features, or an array in ``features`` order);
        NaN where a feature is missing (CAST leaves those rows NA)."""
        if isinstance(X, pd.DataFrame):
            from .estimator import check_feature_names

            check_feature_names(list(X.columns), self.features, "area of applicability")
            X = X[self.features].to_numpy(dtype="float64")
        Z = (np.asarray(X, dtype="float64") - self.center) / self.scale * self.weight
        out = np.full(Z.shape[0], np.nan)
        ok = np.isfinite(Z).all(axis=1)
        if ok.any():
            out[ok] = cKDTree(self.train_weighted).query(Z[ok], k=1)[0] / self.mean_distance
        return out

    def aoa(self, X) -> np.ndarray:
        """True inside the area of applicability (DI <= threshold); False outside or where DI is NaN."""
        d = self.di(X)
        return np.isfinite(d) & (d <= self.threshold)

    def to_dict(self) -> dict:
        return {"features": list(self.features), "center": self.center.tolist(), "scale": self.scale.tolist(),
                "weight": self.weight.tolist(), "mean_distance": self.mean_distance, "threshold": self.threshold,
                "source": "Meyer & Pebesma 2021; CAST 1.1.0 trainDI/aoa, L2"}


def train_di(X: pd.DataFrame, weights=None, cv_fold=None) -> TrainDI:
    """CAST ``trainDI`` (L2): ``weights`` per feature (e.g. permutation importance; default 1), ``cv_fold``
    the fold holding out each row (``fold_ids``; −1 never held out) or None (all other rows count)."""
    features = [str(c) for c in X.columns]
    A = X.to_numpy(dtype="float64")
    bad = [f for f, col in zip(features, A.T) if not np.isfinite(col).all()]
    if bad:
        raise ModelError(f"area of applicability: features with missing values {bad}; compute it per coverage "
                         "class on complete features")
    if A.shape[0] <= 1:
        raise ModelError("area of applicability: at least two training points are needed")
    center, scale = A.mean(axis=0), A.std(axis=0, ddof=1)
    flat = [f for f, s in zip(features, scale) if not s > 0]
    if flat:
        raise ModelError(f"area of applicability: features without variance {flat}")
    w = np.ones(len(features)) if weights is None else np.asarray(
        [float(weights[f]) for f in features] if isinstance(weights, dict) else weights, dtype="float64")
    w = np.where(w < 0, 0.0, w)
    if not w.sum() > 0:
        raise ModelError("area of applicability: all feature weights are <= 0")
    Z = (A - center) / scale * w
    D = cdist(Z, Z)
    np.fill_diagonal(D, np.nan)
    mean_distance = float(np.mean(np.nanmean(D, axis=1)))
    if cv_fold is None:
        dmin = np.nanmin(D, axis=1)
    else:
        f = np.asarray(cv_fold)
        other = f[:, None] != f[None, :]
        dmin = np.where(f >= 0, np.nanmin(np.where(other, D, np.inf), axis=1), np.nan)
    tdi = dmin / mean_distance
    q25, q75 = np.nanquantile(tdi, [0.25, 0.75])  # type 7, as R's quantile() and IQR()
    thres = float(min(q75 + 1.5 * (q75 - q25), np.nanmax(tdi)))
    return TrainDI(features, center, scale, w, Z, mean_distance, tdi, thres)
