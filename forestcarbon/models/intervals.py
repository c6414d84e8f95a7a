"""Per-pixel prediction intervals and SD, calibrated and checked under spatial / grouped cross-validation.

Three methods, all split-conformal with the calibration scores taken out-of-fold over the same spatial or
grouped folds as the accuracy figures (so a plot is scored by a model that never saw its block or cluster):

* ``cqr_trees`` -- conformalised quantile regression (Romano, Patterson & Candès 2019, NeurIPS 32, Alg. 1)
  whose base quantiles are those of the point random forest's own per-tree predictions: q̂_τ(x) is the τ
  quantile (linear interpolation) of the T trees' predictions at x, and the point estimate is their mean
  (the forest's prediction).  With leaves of one training value each tree's prediction is one in-bag
  training value from x's leaf: Meinshausen's (2006, JMLR 7:983-999) quantile forest with one value per
  leaf (``quantile-forest``'s ``max_samples_leaf=1``) on in-bag values.  Larger leaves make the base
  interval narrower than the conditional distribution; the conformal margin corrects for that, since CQR's
  coverage holds whatever the base quantiles (Romano et al. 2019, Thm 1).  Point and interval come from
  one traversal of one forest, and missing features are handled as the forest handles them.  The default
  when the chosen point model is a random forest.
* ``cqr`` -- the same with a separate quantile regression forest (the ``quantile-forest`` package,
  ``RandomForestQuantileRegressor``, with Meinshausen's randomForest settings: leaves of >= 5 plots, a
  third of the features per split) for other point models.  The forest refuses missing values: use it on
  complete features (one model per coverage class).
* ``absolute`` -- split-conformal on the point model's absolute residuals (Lei et al. 2018, JASA
  113:1094-1111, §2.2): E_i = |y_i − ŷ(x_i)|, interval ŷ ± Q; for other point models on features with NaN.

Scores.  E_i = max(q̂_lo(x_i) − y_i, y_i − q̂_hi(x_i)) and interval [q̂_lo − Q, q̂_hi + Q] (Romano et al.
2019 eq. 6), with one change for the physical floor of biomass (``floor``, 0 Mg/ha): biomass has an atom
at 0 (plots on bare or non-forest land), and where the base lower quantile is at the floor
(q̂_lo(x) <= floor) the interval's lower end stays at the floor and the score is the upper side's alone,
E_i = y_i − q̂_hi(x_i).  Otherwise a zero-biomass plot with q̂_lo = 0 scores exactly 0 whatever its upper
bound, and when such plots make up more than α of the calibration set Q can never fall below 0: intervals
that over-cover stay too wide (measured on the synthetic county's LiDAR plots, 20 % of them at 0 Mg/ha:
98.9 % inside for a nominal 90 %).  The score is still a nested family of intervals in Q for each x, so
the conformal guarantee is unchanged; every lower bound is clipped at the floor.

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

METHODS = ("cqr_trees", "cqr", "absolute")
QRF_DEFAULTS = {"n_estimators": 300, "min_samples_leaf": 5, "max_features": 1 / 3}
FLOOR = 0.0
"""Physical lower bound of the target (Mg/ha): biomass is not negative."""


def default_method(point_estimator, complete: bool) -> str:
    """``cqr_trees`` for a random-forest point model, ``cqr`` for others on complete features, else
    ``absolute``."""
    if getattr(point_estimator, "kind", None) == "random_forest":
        return "cqr_trees"
    return "cqr" if complete else "absolute"


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
        raise ModelError(f"method {method!r} needs the point estimator")
    if method == "cqr_trees" and getattr(point_estimator, "kind", None) != "random_forest":
        raise ModelError("method 'cqr_trees' needs a random-forest point estimator, not "
                         f"{getattr(point_estimator, 'kind', type(point_estimator).__name__)!r}")
    return clone(point_estimator).fit(X, y)


QRF_ROWS = 16384
"""Rows per block in :func:`qrf_quantiles` and :func:`tree_point_quantiles`: their (rows, trees) arrays stay
~40-50 MB each (300-400 trees)."""


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


def tree_point_quantiles(forest, A: np.ndarray, quantiles, rows: int = QRF_ROWS) -> np.ndarray:
    """(n, 1 + len(quantiles)): the mean of a fitted scikit-learn ``RandomForestRegressor``'s per-tree
    predictions (its ``predict``, to rounding) and their ``quantiles`` (linear), from one traversal of each
    tree per row, in blocks of ``rows``.  NaN features follow each split's learnt missing-value direction,
    as the forest's ``predict`` does."""
    A = np.ascontiguousarray(A, dtype="float32")  # the trees' own input type (``predict`` converts likewise)
    out = np.empty((A.shape[0], 1 + len(quantiles)))
    trees = forest.estimators_
    for i in range(0, A.shape[0], rows):
        block = A[i:i + rows]
        per_tree = np.empty((block.shape[0], len(trees)))
        for t, tree in enumerate(trees):
            per_tree[:, t] = tree.predict(block, check_input=False)
        out[i:i + rows, 0] = per_tree.mean(axis=1)
        out[i:i + rows, 1:] = np.quantile(per_tree, quantiles, method="linear", axis=1).T
    return out


def _base(method: str, est, X: pd.DataFrame, alpha: float) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """(point or None, base lower, base upper) before calibration: cqr_trees the forest's per-tree mean and
    quantiles; cqr the QRF's quantiles; absolute the point prediction twice."""
    q = [alpha / 2, 1 - alpha / 2]
    if method == "cqr_trees":
        r = tree_point_quantiles(est.estimator_, est.ordered(X), q)
        return r[:, 0], r[:, 1], r[:, 2]
    if method == "cqr":
        r = qrf_quantiles(est, X.to_numpy(dtype="float64"), q)
        return None, r[:, 0], r[:, 1]
    p = est.predict(X)
    return p, p, p


def scores(lo, hi, y, floor: float | None = FLOOR) -> np.ndarray:
    """Conformal scores (module docstring): max(lo − y, y − hi), the upper side alone where lo <= floor."""
    lo, hi, y = (np.asarray(v, dtype="float64") for v in (lo, hi, y))
    s = np.maximum(lo - y, y - hi)  # for lo == hi == ŷ this is |y − ŷ|
    return s if floor is None else np.where(lo <= floor, y - hi, s)


def calibrated(lo, hi, margin: float, floor: float | None = FLOOR) -> tuple[np.ndarray, np.ndarray]:
    """The interval :func:`scores` is consistent with: [lo − Q, hi + Q], lower end at the floor where
    lo <= floor, clipped at the floor; a negative Q that crosses the bounds collapses them to their middle."""
    lo, hi = np.asarray(lo, dtype="float64") - margin, np.asarray(hi, dtype="float64") + margin
    if floor is not None:
        lo = np.where(lo + margin <= floor, floor, np.maximum(lo, floor))
        hi = np.maximum(hi, floor)
    crossed = lo > hi
    mid = (lo + hi) / 2
    return np.where(crossed, mid, lo), np.where(crossed, mid, hi)


def _oof_scores(method, X, y, splits, alpha, point_estimator, qrf_params, seed, floor) -> np.ndarray:
    s = np.full(y.size, np.nan)
    for train, test in splits:
        est = _fit(method, X.iloc[train], y[train], point_estimator, qrf_params, seed)
        _, lo, hi = _base(method, est, X.iloc[test], alpha)
        s[test] = scores(lo, hi, y[test], floor)
    return s[np.isfinite(s)]


@dataclass
class IntervalModel:
    """A fitted interval model: ``predict`` gives lower, upper (nominal 1 − α) and SD per row;
    ``predict_with_point`` the point estimate beside them (one traversal for ``cqr_trees``)."""

    method: str
    alpha: float
    features: list
    margin: float  # conformal Q, target units
    estimator: object  # the point forest (cqr_trees), RandomForestQuantileRegressor (cqr), point estimator (absolute)
    qrf_params: dict
    floor: float | None = FLOOR

    @property
    def gives_point(self) -> bool:
        """True when ``predict_with_point``'s point is the interval estimator's own prediction."""
        return self.method in ("cqr_trees", "absolute")

    def predict_with_point(self, X: pd.DataFrame) -> pd.DataFrame:
        check_feature_names(list(X.columns), self.features, "interval prediction data")
        X = X[self.features]
        point, lo, hi = _base(self.method, self.estimator, X, self.alpha)
        lo, hi = calibrated(lo, hi, self.margin, self.floor)
        sd = (hi - lo) / (2 * norm.ppf(1 - self.alpha / 2))
        out = pd.DataFrame({"lower": lo, "upper": hi, "sd": sd}, index=X.index)
        if point is not None:
            out.insert(0, "point", point)
        return out

    def predict(self, X: pd.DataFrame) -> pd.DataFrame:
        return self.predict_with_point(X)[["lower", "upper", "sd"]]

    def to_dict(self) -> dict:
        return {"method": self.method, "nominal_coverage": 1 - self.alpha, "conformal_margin": self.margin,
                "floor": self.floor, "features": list(self.features),
                "qrf_params": self.qrf_params if self.method == "cqr" else None,
                "base_quantiles": {"cqr_trees": "the point random forest's per-tree predictions",
                                   "cqr": "quantile regression forest", "absolute": None}[self.method],
                "sd": "(upper - lower) / (2 z_(1-alpha/2))"}


def fit_intervals(X: pd.DataFrame, y, splits, *, method: str = "cqr", alpha: float = 0.10, point_estimator=None,
                  qrf_params: dict | None = None, seed: int = 0, floor: float | None = FLOOR,
                  fitted=None) -> IntervalModel:
    """Calibrate Q on out-of-fold scores over ``splits`` (``validation.make_splits``), then fit on all rows
    (``fitted``: the point estimator already fitted on all rows, reused by ``cqr_trees`` and ``absolute``,
    so the map's point and interval come from one object)."""
    if method not in METHODS:
        raise ModelError(f"interval method must be one of {list(METHODS)}, not {method!r}")
    y = np.asarray(y, dtype="float64")
    q = conformal_margin(_oof_scores(method, X, y, splits, alpha, point_estimator, qrf_params, seed, floor), alpha)
    est = fitted if fitted is not None and method != "cqr" else _fit(method, X, y, point_estimator, qrf_params, seed)
    return IntervalModel(method, alpha, [str(c) for c in X.columns], q, est, QRF_DEFAULTS | (qrf_params or {}), floor)


def interval_calibration(X: pd.DataFrame, y, *, groups=None, folds: int = 5, seed: int = 0, coverage=None,
                         method: str = "cqr", alpha: float = 0.10, point_estimator=None,
                         qrf_params: dict | None = None, floor: float | None = FLOOR) -> dict:
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
        q = conformal_margin(_oof_scores(method, Xt, yt, inner, alpha, point_estimator, qrf_params, seed, floor),
                             alpha)
        est = _fit(method, Xt, yt, point_estimator, qrf_params, seed)
        _, raw_lo[test], raw_hi[test] = _base(method, est, X.iloc[test], alpha)
        lo[test], hi[test] = calibrated(raw_lo[test], raw_hi[test], q, floor)
    rows = pd.DataFrame({"observed": y, "lower": lo, "upper": hi, "inside": (y >= lo) & (y <= hi),
                         "raw_inside": (y >= raw_lo) & (y <= raw_hi)})
    if coverage is not None:
        rows["coverage_class"] = np.asarray(coverage).astype(str)

    def summary(r: pd.DataFrame) -> dict:
        out = {"inside_fraction": float(r["inside"].mean()), "mean_width": float((r["upper"] - r["lower"]).mean()),
               "n": int(len(r))}
        if method != "absolute":
            out["raw_quantile_inside_fraction"] = float(r["raw_inside"].mean())
        return out

    per_class = ({c: summary(r) for c, r in rows.groupby("coverage_class")} if coverage is not None else {})
    return {"method": method, "nominal": 1 - alpha, "scheme": "grouped" if groups is not None else "random",
            "overall": summary(rows), "per_coverage_class": per_class, "rows": rows}
