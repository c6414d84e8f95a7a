"""Per-pixel prediction intervals and SD, calibrated and checked under spatial / grouped cross-validation.

Two methods, both split-conformal with the calibration scores taken out-of-fold over the same spatial or
grouped folds as the accuracy figures (so a plot is scored by a model that never saw its block or cluster):

* ``cqr`` -- conformalised quantile regression (Romano, Patterson & Candès 2019, NeurIPS 32, Alg. 1) on a
  quantile regression forest (Meinshausen 2006, JMLR 7:983-999; the ``quantile-forest`` package,
  ``RandomForestQuantileRegressor``, with Meinshausen's randomForest settings: leaves of >= 5 plots,
  a third of the features per split).  Score E_i = max(q̂_lo(x_i) − y_i, y_i − q̂_hi(x_i)) with
  q̂ the α/2 and 1 − α/2 forest quantiles; interval [q̂_lo − Q, q̂_hi + Q].  The forest refuses missing
  values: use it on complete features (one model per coverage class).
* ``absolute`` -- split-conformal on the point model's absolute residuals (Lei et al. 2018, JASA
  113:1094-1111, §2.2): E_i = |y_i − ŷ(x_i)|, interval ŷ ± Q; for features with NaN (the point models
  handle them natively).

Q = the ⌈(n + 1)(1 − α)⌉-th smallest of the n calibration scores (Romano et al. 2019 eq. 7; Lei et al.
2018 Alg. 2).  SD = (upper − lower) / (2 z_{1−α/2}): the SD of a normal distribution with the same
central (1 − α) interval, a summary for the SD layer, not an assumption the interval relies on.

:func:`interval_calibration` checks the whole procedure honestly with nested CV: for each outer fold the
forest and Q are computed from the other folds only (inner folds of the same kind), and the fraction of
held-out plots inside their interval is reported overall and per coverage class.

What the parcel/project aggregation of correlated errors needs is the out-of-fold residual variogram
(``validation.ResidualVariogram``, JSON via ``to_dict``), kept beside the interval model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import norm
from sklearn.base import clone

from ..errors import ModelError
from .estimator import check_feature_names
from .validation import make_splits

METHODS = ("cqr", "absolute")
QRF_DEFAULTS = {"n_estimators": 300, "min_samples_leaf": 5, "max_features": 1 / 3}


def conformal_margin(scores, alpha: float) -> float:
    """The ⌈(n+1)(1−α)⌉-th smallest score (1-based); refuses too few scores for that rank."""
    s = np.sort(np.asarray(scores, dtype="float64"))
    k = math.ceil((s.size + 1) * (1 - alpha))
    if k > s.size:
        raise ModelError(f"{s.size} calibration plots are too few for a {1 - alpha:.0%} conformal interval "
                         f"(needs at least {math.ceil(1 / alpha) - 1})")
    return float(s[k - 1])


def _qrf(params: dict | None, seed: int):
    from quantile_forest import RandomForestQuantileRegressor

    return RandomForestQuantileRegressor(**(QRF_DEFAULTS | (params or {})), random_state=seed, n_jobs=1)


def _fit(method: str, X: pd.DataFrame, y: np.ndarray, point_estimator, qrf_params, seed):
    if method == "cqr":
        A = X.to_numpy(dtype="float64")
        bad = [str(c) for c, col in zip(X.columns, A.T) if not np.isfinite(col).all()]
        if bad:
            raise ModelError(f"quantile regression forest: features with missing values {bad}; use method "
                             "'absolute' or one model per coverage class")
        return _qrf(qrf_params, seed).fit(A, y)
    if point_estimator is None:
        raise ModelError("method 'absolute' needs the point estimator")
    return clone(point_estimator).fit(X, y)


QRF_ROWS = 16384
"""Rows per block in :func:`qrf_quantiles`: its (rows, trees) leaf and value arrays stay ~40 MB each (300 trees)."""


def qrf_quantiles(est, A: np.ndarray, quantiles, rows: int = QRF_ROWS) -> np.ndarray:
    """(n, len(quantiles)) forest quantiles of the rows of ``A``: the numbers
    ``est.predict(A, quantiles=quantiles)`` gives (linear interpolation), computed in blocks of ``rows``.

    With one training value kept per leaf (``max_samples_leaf=1``, the package's default and ours), the
    package gathers each tree's leaf values in a Python loop over the trees (two gathers per tree) over all
    rows at once, then takes ``numpy.quantile`` of the (n, trees) values: n x trees x 8 bytes twice (2.4 GB
    each for a 1024^2 map block and 300 trees).  Here each tree's leaf -> training value table is built
    once, the values are gathered in one step and the same ``numpy.quantile`` is taken, block by block.
    Other forests (several values per leaf, monotonic constraints, several outputs) go through
    ``est.predict`` block by block.
    """
    A = np.asarray(A)
    out = np.empty((A.shape[0], len(quantiles)))
    simple = est.max_samples_leaf == 1 and est.monotonic_cst is None and est.n_outputs_ == 1
    if simple:
        leaves = np.asarray(est.forest_.y_train_leaves)[:, :, 0, 0]  # (trees, nodes) 1-based training index
        table = np.asarray(est.forest_.y_train)[0][leaves - 1]  # a leaf's value (inner nodes: unused)
        trees = np.arange(table.shape[0])
    for i in range(0, A.shape[0], rows):
        block = A[i:i + rows]
        if simple:
            out[i:i + rows] = np.quantile(table[trees, est.apply(block)], quantiles, method="linear", axis=1).T
        else:
            out[i:i + rows] = est.predict(block, quantiles=list(quantiles)).reshape(len(block), len(quantiles))
    return out


def _bounds(method: str, est, X: pd.DataFrame, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Uncalibrated lower/upper bounds (cqr: forest quantiles; absolute: the point prediction twice)."""
    if method == "cqr":
        q = qrf_quantiles(est, X.to_numpy(dtype="float64"), [alpha / 2, 1 - alpha / 2])
        return q[:, 0], q[:, 1]
    p = est.predict(X)
    return p, p


def _scores(lo, hi, y) -> np.ndarray:
    return np.maximum(lo - y, y - hi)  # for lo == hi == ŷ this is |y − ŷ|


def _oof_scores(method, X, y, splits, alpha, point_estimator, qrf_params, seed) -> np.ndarray:
    s = np.full(y.size, np.nan)
    for train, test in splits:
        est = _fit(method, X.iloc[train], y[train], point_estimator, qrf_params, seed)
        lo, hi = _bounds(method, est, X.iloc[test], alpha)
        s[test] = _scores(lo, hi, y[test])
    return s[np.isfinite(s)]


@dataclass
class IntervalModel:
    """A fitted interval model: ``predict`` gives lower, upper (nominal 1 − α) and SD per row."""

    method: str
    alpha: float
    features: list
    margin: float  # conformal Q, target units
    estimator: object  # RandomForestQuantileRegressor (cqr) or the fitted point estimator (absolute)
    qrf_params: dict

    def predict(self, X: pd.DataFrame) -> pd.DataFrame:
        check_feature_names(list(X.columns), self.features, "interval prediction data")
        X = X[self.features]
        lo, hi = _bounds(self.method, self.estimator, X, self.alpha)
        lo, hi = lo - self.margin, hi + self.margin
        crossed = lo > hi  # a negative margin can cross a narrow forest interval: collapse to its middle
        mid = (lo + hi) / 2
        lo, hi = np.where(crossed, mid, lo), np.where(crossed, mid, hi)
        sd = (hi - lo) / (2 * norm.ppf(1 - self.alpha / 2))
        return pd.DataFrame({"lower": lo, "upper": hi, "sd": sd}, index=X.index)

    def to_dict(self) -> dict:
        return {"method": self.method, "nominal_coverage": 1 - self.alpha, "conformal_margin": self.margin,
                "features": list(self.features), "qrf_params": self.qrf_params if self.method == "cqr" else None,
                "sd": "(upper - lower) / (2 z_(1-alpha/2))"}


def fit_intervals(X: pd.DataFrame, y, splits, *, method: str = "cqr", alpha: float = 0.10, point_estimator=None,
                  qrf_params: dict | None = None, seed: int = 0) -> IntervalModel:
    """Calibrate Q on out-of-fold scores over ``splits`` (``validation.make_splits``), then fit on all rows."""
    if method not in METHODS:
        raise ModelError(f"interval method must be one of {list(METHODS)}, not {method!r}")
    y = np.asarray(y, dtype="float64")
    q = conformal_margin(_oof_scores(method, X, y, splits, alpha, point_estimator, qrf_params, seed), alpha)
    est = _fit(method, X, y, point_estimator, qrf_params, seed)
    return IntervalModel(method, alpha, [str(c) for c in X.columns], q, est, QRF_DEFAULTS | (qrf_params or {}))


def interval_calibration(X: pd.DataFrame, y, *, groups=None, folds: int = 5, seed: int = 0, coverage=None,
                         method: str = "cqr", alpha: float = 0.10, point_estimator=None,
                         qrf_params: dict | None = None) -> dict:
    """Nested CV check of the intervals: outer folds by ``groups`` (blocks/clusters; shuffled KFold if None);
    per outer fold, Q from inner folds of the training rows, the model refitted on them, the held-out rows
    scored.  Returns the fraction inside (conformal and, for cqr, the raw forest interval), mean width and
    n, overall and per coverage class, and the per-row table (``rows``)."""
    y = np.asarray(y, dtype="float64")
    groups = None if groups is None else np.asarray(groups).astype(str)
    outer = make_splits(y.size, groups=groups, folds=folds, seed=seed)
    lo = np.full(y.size, np.nan)
    hi, raw_lo, raw_hi = lo.copy(), lo.copy(), lo.copy()
    for train, test in outer:
        g = None if groups is None else groups[train]
        k = folds if g is None else min(folds, np.unique(g).size)
        inner = make_splits(train.size, groups=g, folds=k, seed=seed)
        Xt, yt = X.iloc[train], y[train]
        q = conformal_margin(_oof_scores(method, Xt, yt, inner, alpha, point_estimator, qrf_params, seed), alpha)
        est = _fit(method, Xt, yt, point_estimator, qrf_params, seed)
        raw_lo[test], raw_hi[test] = _bounds(method, est, X.iloc[test], alpha)
        lo[test], hi[test] = raw_lo[test] - q, raw_hi[test] + q
    rows = pd.DataFrame({"observed": y, "lower": lo, "upper": hi, "inside": (y >= lo) & (y <= hi),
                         "raw_inside": (y >= raw_lo) & (y <= raw_hi)})
    if coverage is not None:
        rows["coverage_class"] = np.asarray(coverage).astype(str)

    def summary(r: pd.DataFrame) -> dict:
        out = {"inside_fraction": float(r["inside"].mean()), "mean_width": float((r["upper"] - r["lower"]).mean()),
               "n": int(len(r))}
        if method == "cqr":
            out["raw_qrf_inside_fraction"] = float(r["raw_inside"].mean())
        return out

    per_class = ({c: summary(r) for c, r in rows.groupby("coverage_class")} if coverage is not None else {})
    return {"method": method, "nominal": 1 - alpha, "scheme": "grouped" if groups is not None else "random",
            "overall": summary(rows), "per_coverage_class": per_class, "rows": rows}
