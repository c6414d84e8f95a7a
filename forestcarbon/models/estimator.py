"""One AGB estimator type that knows its feature names, and model choice by spatial / grouped CV.

:class:`AGBRegressor` is a scikit-learn estimator (``BaseEstimator``, ``RegressorMixin``: ``clone``,
``cross_val_predict``, ``permutation_importance`` work on it) with three kinds:

* ``random_forest`` -- scikit-learn ``RandomForestRegressor`` (Breiman 2001, Mach. Learn. 45:5-32);
* ``hist_gradient_boosting`` -- scikit-learn ``HistGradientBoostingRegressor`` (Friedman 2001,
  Ann. Stat. 29:1189-1232; LightGBM-style histograms, Ke et al. 2017);
* ``loglog_linear`` -- the transparent area-based-approach baseline (Næsset 2002, Remote Sens. Environ.
  80:88-99): ln(AGB) = b0 + Σ b_i·ln(x_i), fitted by ordinary least squares, back-transformed with
  Baskerville's (1972, Can. J. For. Res. 2:49-53) correction for the log bias,
  AGB = exp(b0 + Σ b_i·ln x_i) · exp(σ²/2), with σ² = RSS / (n − p − 1) the residual mean square on
  the log scale.  Only strictly positive features and targets have a logarithm: others are refused.

Missing values (NaN, e.g. LiDAR metrics outside the flight blocks) are handled natively by the two tree
ensembles (scikit-learn >= 1.4 random forests and HistGradientBoosting learn a direction for missing
values at each split); the log-log model refuses them.

It is fitted on a DataFrame and remembers its columns (``feature_names_in_``); ``predict`` takes a
DataFrame with the same columns (any order) and refuses one whose columns differ, naming the missing and
extra features.  :meth:`AGBRegressor.predict_matrix` is the same for a bare array with the names given
beside it (map blocks).
"""

from __future__ import annotations

import itertools
import json
from typing import Sequence

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, RegressorMixin, clone

from ..errors import ModelError
from .regressor import make_estimator

KINDS = ("loglog_linear", "random_forest", "hist_gradient_boosting")
# Random-forest hyper-parameters compared by ``select_model``: leaf size (smoothing) and the share of
# features tried at each split (decorrelation), the two that matter most for small plot sets
# (Probst, Wright & Boulesteix 2019, WIREs Data Min. Knowl. Discov. 9:e1301).
RF_GRID = {"min_samples_leaf": (1, 3, 5), "max_features": (1 / 3, 0.5, 1.0)}


def check_feature_names(offered: Sequence[str], expected: Sequence[str], what: str = "data") -> None:
    """Raise a one-line ModelError naming the features missing from / extra in ``offered``."""
    offered, expected = [str(c) for c in offered], [str(c) for c in expected]
    missing = [f for f in expected if f not in offered]
    extra = [f for f in offered if f not in expected]
    if missing or extra:
        raise ModelError(f"{what}: features differ from the model's: missing {missing}, extra {extra}")
    if len(set(offered)) != len(offered):
        dup = sorted({f for f in offered if offered.count(f) > 1})
        raise ModelError(f"{what}: duplicate feature columns {dup}")


def _positions(mask: np.ndarray, limit: int = 5) -> str:
    pos = np.flatnonzero(mask).tolist()
    return f"{pos[:limit]}" + (f" (+{len(pos) - limit} more)" if len(pos) > limit else "")


class AGBRegressor(RegressorMixin, BaseEstimator):
    """AGB regressor of one ``kind`` (see the module docstring); ``params`` override the kind's defaults
    (``regressor.make_estimator``: RF 400 trees, min_samples_leaf 3, max_features 0.5; HGB learning rate
    0.05, 300 iterations, min_samples_leaf 8, l2 1.0)."""

    def __init__(self, kind: str = "random_forest", params: dict | None = None, random_state: int = 0):
        self.kind = kind
        self.params = params
        self.random_state = random_state

    # ------------------------------------------------------------------ fit
    def fit(self, X: pd.DataFrame, y):
        if self.kind not in KINDS:
            raise ModelError(f"unknown model kind {self.kind!r}; one of {list(KINDS)}")
        if not isinstance(X, pd.DataFrame):
            raise ModelError("AGBRegressor.fit needs a DataFrame whose columns name the features")
        names = [str(c) for c in X.columns]
        check_feature_names(names, list(dict.fromkeys(names)), "training data")
        nonnum = [c for c in names if not pd.api.types.is_numeric_dtype(X[c])]
        if nonnum:
            raise ModelError(f"training data: non-numeric feature columns {nonnum}")
        Xa = X.to_numpy(dtype="float64")
        ya = np.asarray(y, dtype="float64").ravel()
        if ya.size != Xa.shape[0]:
            raise ModelError(f"training data: {Xa.shape[0]} feature rows but {ya.size} target values")
        bad = ~np.isfinite(ya)
        if bad.any():
            raise ModelError(f"training data: target has non-finite values at positions {_positions(bad)}")
        self.feature_names_in_ = np.asarray(names, dtype=object)
        self.n_features_in_ = len(names)
        if self.kind == "loglog_linear":
            self._fit_loglog(Xa, ya, names)
        else:
            est = make_estimator(self.kind, self.random_state)
            if self.params:
                est.set_params(**self.params)
            self.estimator_ = est.fit(Xa, ya)
        return self

    def _fit_loglog(self, X: np.ndarray, y: np.ndarray, names: list[str]) -> None:
        for j, name in enumerate(names):
            col = X[:, j]
            if not (np.isfinite(col) & (col > 0)).all():
                raise ModelError(f"loglog_linear needs strictly positive, finite features: {name!r} has "
                                 f"{int((~(np.isfinite(col) & (col > 0))).sum())} values <= 0 or missing "
                                 f"(positions {_positions(~(np.isfinite(col) & (col > 0)))})")
        if not (y > 0).all():
            raise ModelError(f"loglog_linear needs a strictly positive target: {int((y <= 0).sum())} values <= 0 "
                             f"(positions {_positions(y <= 0)})")
        n, p = X.shape
        if n - p - 1 < 1:
            raise ModelError(f"loglog_linear with {p} features needs at least {p + 2} rows, got {n}")
        A = np.column_stack([np.ones(n), np.log(X)])
        coef, *_ = np.linalg.lstsq(A, np.log(y), rcond=None)
        resid = np.log(y) - A @ coef
        self.intercept_ = float(coef[0])
        self.coef_ = coef[1:].astype("float64")
        self.sigma2_log_ = float(resid @ resid / (n - p - 1))
        self.baskerville_factor_ = float(np.exp(self.sigma2_log_ / 2.0))

    # -------------------------------------------------------------- predict
    def predict(self, X: pd.DataFrame) -> np.ndarray:
        if not hasattr(self, "feature_names_in_"):
            raise ModelError("AGBRegressor is not fitted")
        if not isinstance(X, pd.DataFrame):
            raise ModelError("AGBRegressor.predict needs a DataFrame with the model's feature columns "
                             "(or predict_matrix(array, feature_names))")
        return self.predict_matrix(X.to_numpy(dtype="float64"), list(X.columns))

    def predict_matrix(self, X: np.ndarray, features: Sequence[str]) -> np.ndarray:
        """Predict from an (n, features) array whose columns are named by ``features`` (any order)."""
        if not hasattr(self, "feature_names_in_"):
            raise ModelError("AGBRegressor is not fitted")
        X = self.ordered(X, features)
        if self.kind != "loglog_linear":
            return self.estimator_.predict(X)
        ok = np.isfinite(X) & (X > 0)
        if not ok.all():
            j = int(np.flatnonzero(~ok.all(axis=0))[0])
            raise ModelError(f"loglog_linear cannot predict where {self.feature_names_in_[j]!r} is <= 0 or missing "
                             f"({int((~ok[:, j]).sum())} rows, positions {_positions(~ok[:, j])})")
        return np.exp(self.intercept_ + np.log(X) @ self.coef_) * self.baskerville_factor_

    def ordered(self, X, features: Sequence[str] | None = None) -> np.ndarray:
        """The (n, features) float64 array of ``X`` (a DataFrame, or an array whose columns ``features``
        names) with its columns in the fitted order; a one-line ModelError if the names differ."""
        if not hasattr(self, "feature_names_in_"):
            raise ModelError("AGBRegressor is not fitted")
        if features is None:
            if not isinstance(X, pd.DataFrame):
                raise ModelError("prediction data: an array needs its feature names")
            features, X = list(X.columns), X.to_numpy(dtype="float64")
        features = [str(f) for f in features]
        check_feature_names(features, self.feature_names_in_, "prediction data")
        X = np.asarray(X, dtype="float64")
        if X.ndim != 2 or X.shape[1] != len(features):
            raise ModelError(f"prediction data: {X.shape} array for {len(features)} named features")
        return X[:, [features.index(f) for f in self.feature_names_in_]]

    # ----------------------------------------------------------- describing
    def hyperparameters(self) -> dict:
        """JSON-able hyper-parameters actually used (the kind's defaults with ``params`` applied)."""
        if self.kind == "loglog_linear":
            return {"form": "ln(y) = b0 + sum_i b_i ln(x_i), OLS", "back_transform": "exp(.) * exp(sigma2/2)"}
        est = getattr(self, "estimator_", None)
        if est is None:
            est = make_estimator(self.kind, self.random_state)
            if self.params:
                est.set_params(**self.params)
        return {k: (v if isinstance(v, (int, float, str, bool, type(None))) else str(v))
                for k, v in est.get_params().items()}

    def coefficients(self) -> dict:
        """log-log model: intercept, coefficients per feature, σ² (log scale) and the Baskerville factor."""
        if self.kind != "loglog_linear" or not hasattr(self, "coef_"):
            return {}
        return {"intercept": self.intercept_,
                "coef": dict(zip(self.feature_names_in_.tolist(), self.coef_.tolist())),
                "sigma2_log": self.sigma2_log_, "baskerville_factor": self.baskerville_factor_}


def candidates(kinds: Sequence[str] = KINDS, rf_grid: dict | None = None, seed: int = 0) -> list[tuple[str, AGBRegressor]]:
    """(label, unfitted estimator) for each candidate: one per kind, random forests over ``rf_grid``."""
    rf_grid = RF_GRID if rf_grid is None else rf_grid
    out = []
    for kind in kinds:
        if kind not in KINDS:
            raise ModelError(f"unknown model kind {kind!r}; one of {list(KINDS)}")
        if kind == "random_forest" and rf_grid:
            keys = list(rf_grid)
            for combo in itertools.product(*(rf_grid[k] for k in keys)):
                params = dict(zip(keys, combo))
                label = "random_forest(" + ", ".join(f"{k}={_fmt(v)}" for k, v in params.items()) + ")"
                out.append((label, AGBRegressor(kind, params, seed)))
        else:
            out.append((kind, AGBRegressor(kind, None, seed)))
    return out


def _fmt(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def select_model(X: pd.DataFrame, y, splits, *, kinds: Sequence[str] = KINDS, rf_grid: dict | None = None,
                 seed: int = 0, scheme: str = "spatial/grouped CV", coverage=None):
    """Compare the candidates by out-of-fold RMSE over the same ``splits`` (spatial blocks or groups,
    ``validation.make_splits``) and return (the unfitted winner, the table of all candidates, the winner's
    ``validation.CVResult`` over ``splits``, with per-class figures when ``coverage`` labels are given).

    A candidate that cannot be fitted on these data (loglog_linear on a feature with zeros or NaN) is listed
    with its reason and no figures.  The winner's figures come from the folds used to choose it, so they
    are slightly optimistic when many candidates are compared (Cawley & Talbot 2010, JMLR 11:2079-2107).
    """
    from .validation import cross_validate

    rows, best = [], None
    for label, est in candidates(kinds, rf_grid, seed):
        try:
            res = cross_validate(est, X, y, splits, scheme=scheme, coverage=coverage)
        except ModelError as err:
            rows.append({"candidate": label, "kind": est.kind, "params": json.dumps(est.params), "status": str(err)})
            continue
        rows.append({"candidate": label, "kind": est.kind, "params": json.dumps(est.params), "status": "ok",
                     **{k: res.overall[k] for k in ("r2", "rmse", "rrmse", "bias", "n")}})
        if best is None or res.overall["rmse"] < best[1]:
            best = (est, res.overall["rmse"], label, res)
    table = pd.DataFrame(rows)
    if best is None:
        raise ModelError("no candidate model could be fitted: " + "; ".join(table["status"].astype(str)))
    table["chosen"] = table["candidate"] == best[2]
    return clone(best[0]), table, best[3]


def nested_cv(X: pd.DataFrame, y, splits, groups, *, folds: int = 5, kinds: Sequence[str] = KINDS,
              rf_grid: dict | None = None, seed: int = 0, scheme: str = "spatial/grouped CV", coverage=None):
    """Out-of-fold accuracy of the whole procedure "choose among the candidates by CV, then fit": for each
    outer fold of ``splits``, :func:`select_model` runs on inner folds of the training rows only (the same
    kind of folds: ``groups`` of the training rows, ``validation.make_splits``), the winner is fitted on
    them and predicts the held-out rows.  The figure :func:`select_model` returns for its winner was used to
    choose it and is optimistic by the selection (Cawley & Talbot 2010, JMLR 11:2079-2107, §5.3; Varma &
    Simon 2006, BMC Bioinformatics 7:91); this one is not.  Returns (``validation.CVResult``, the candidate
    chosen in each outer fold)."""
    from .validation import CVResult, _class_metrics, accuracy, fold_ids, make_splits

    from concurrent.futures import ThreadPoolExecutor

    from .coverage import predict_threads

    y = np.asarray(y, dtype="float64")
    groups = None if groups is None else np.asarray(groups).astype(str)
    pred = np.full(y.size, np.nan)

    def outer(fold):
        train, test = fold
        g = None if groups is None else groups[train]
        inner = make_splits(train.size, groups=g, folds=folds if g is None else min(folds, np.unique(g).size),
                            seed=seed)
        cov = None if coverage is None else np.asarray(coverage)[train]
        est, table, _ = select_model(X.iloc[train], y[train], inner, kinds=kinds, rf_grid=rf_grid, seed=seed,
                                     scheme=scheme, coverage=cov)
        return str(table.loc[table.chosen, "candidate"].iloc[0]), est.fit(X.iloc[train], y[train]).predict(X.iloc[test])

    # the outer folds are independent: run them in threads (tree building releases the GIL); each fold's
    # numbers do not depend on the threads
    with ThreadPoolExecutor(min(predict_threads(), len(splits))) as pool:
        done = list(pool.map(outer, splits))
    rows, chosen = [], []
    for k, ((train, test), (label, p)) in enumerate(zip(splits, done)):
        pred[test] = p
        chosen.append(label)
        rows.append({"fold": k, "chosen": label, **accuracy(y[test], pred[test])})
    fold = fold_ids(splits, y.size)
    done = fold >= 0
    res = CVResult(f"{scheme}, model chosen inside each fold (nested)", y, pred, fold, accuracy(y[done], pred[done]),
                   pd.DataFrame(rows), _class_metrics(y[done], pred[done],
                                                      None if coverage is None else np.asarray(coverage)[done]))
    return res, chosen
