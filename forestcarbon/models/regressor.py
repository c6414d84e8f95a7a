"""Fitted AGB regressors: spatial block cross-validation, model cards, blockwise maps.

Training rows are plots (features = exact footprint means of the feature
rasters, target = plot AGB in Mg/ha).  Cross-validation holds out whole
spatial blocks (``cv_block_m`` squares, scikit-learn ``GroupKFold``) so that
neighbouring plots never sit on both sides of a split (Roberts et al. 2017,
Ecography 40:913-929).  Reported: R², RMSE (Mg/ha), relative RMSE and bias
(mean of predicted − observed, Mg/ha) of the out-of-block predictions.

Models handle missing LiDAR features natively (NaN outside the flight
blocks): ``HistGradientBoostingRegressor`` learns a split direction for
missing values; scikit-learn ≥ 1.4 random forests do the same.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
import sklearn
from sklearn.ensemble import HistGradientBoostingRegressor, RandomForestRegressor
from sklearn.model_selection import GroupKFold, cross_val_predict

from ..errors import ModelError


def make_estimator(kind: str, seed: int):
    if kind == "hist_gradient_boosting":
        return HistGradientBoostingRegressor(
            learning_rate=0.05, max_iter=300, min_samples_leaf=8, l2_regularization=1.0, random_state=seed
        )
    if kind == "random_forest":
        return RandomForestRegressor(n_estimators=400, min_samples_leaf=3, max_features=0.5, random_state=seed, n_jobs=1)
    raise ModelError(f"model.kind: unknown regressor {kind!r}")


def sparse_features(table: pd.DataFrame, features: list[str], min_plots: int) -> list[str]:
    """Features with fewer than ``min_plots`` finite, or fewer than 2 distinct, training values: they cannot
    be learnt (and a CV fold may hold one value or none); the caller drops them and says so."""
    out = []
    for f in features:
        v = table[f].to_numpy(float)
        v = v[np.isfinite(v)]
        if v.size < min_plots or np.unique(v).size < 2:
            out.append(f)
    return out


def spatial_blocks(x: np.ndarray, y: np.ndarray, block_m: float) -> np.ndarray:
    """Integer label of the ``block_m`` square holding each (x, y)."""
    bx = np.floor(np.asarray(x) / block_m).astype(np.int64)
    by = np.floor(np.asarray(y) / block_m).astype(np.int64)
    _, labels = np.unique(np.c_[bx, by], axis=0, return_inverse=True)
    return labels.ravel()


def accuracy(obs: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    obs, pred = np.asarray(obs, float), np.asarray(pred, float)
    resid = pred - obs
    ss_res = float(np.sum(resid**2))
    ss_tot = float(np.sum((obs - obs.mean()) ** 2))
    rmse = float(np.sqrt(np.mean(resid**2)))
    return {
        "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan"),
        "rmse": rmse,
        "rrmse": rmse / float(obs.mean()) if obs.mean() != 0 else float("nan"),
        "bias": float(resid.mean()),
        "n": int(obs.size),
    }


@dataclass(frozen=True)
class FittedModel:
    estimator: object
    features: tuple[str, ...]
    target: str
    cv: dict
    oof_pred: np.ndarray


def fit_agb_model(table: pd.DataFrame, features: list[str], target: str, groups: np.ndarray, *,
                  kind: str = "hist_gradient_boosting", folds: int = 5, seed: int = 0) -> FittedModel:
    """Block-cross-validate then fit on all rows."""
    missing = [f for f in features if f not in table.columns]
    if missing:
        raise ModelError(f"training table lacks features {missing}")
    y = table[target].to_numpy(float)
    X = table[list(features)].to_numpy(float)
    usable = np.isfinite(y)
    # rows whose optical features are all missing carry no information
    usable &= np.isfinite(X).any(axis=1)
    if usable.sum() < 10:
        raise ModelError(f"only {int(usable.sum())} plots with features and AGB; at least 10 are needed")
    X, y, groups = X[usable], y[usable], groups[usable]
    n_groups = np.unique(groups).size
    k = min(folds, n_groups)
    if k < 2:
        raise ModelError(f"all {usable.sum()} plots fall in one {n_groups} CV block; reduce model.cv_block_m")
    est = make_estimator(kind, seed)
    oof = cross_val_predict(est, X, y, groups=groups, cv=GroupKFold(n_splits=k))
    cv = accuracy(y, oof) | {"folds": k, "blocks": int(n_groups)}
    est = make_estimator(kind, seed).fit(X, y)
    full = np.full(len(table), np.nan)
    full[usable] = oof
    return FittedModel(est, tuple(features), target, cv, full)


def predict_block(block: np.ndarray, estimator, required: np.ndarray) -> np.ndarray:
    """Predict AGB for a (feature, y, x) block; NaN where a required feature is missing."""
    nf, ny, nx = block.shape
    X = block.reshape(nf, -1).T.astype("float64")
    ok = np.isfinite(X[:, required]).all(axis=1)
    out = np.full(ny * nx, np.nan, dtype="float32")
    if ok.any():
        out[ok] = np.clip(estimator.predict(X[ok]), 0, None)
    return out.reshape(ny, nx)


def model_card(fm: FittedModel, *, name: str, training_sha256: str, config: dict, lidar_features: list[str]) -> dict:
    """JSON-able description of a fitted model: what, on what, how well."""
    params = {k: (v if isinstance(v, (int, float, str, bool, type(None))) else str(v))
              for k, v in fm.estimator.get_params().items()}
    ident = hashlib.sha256((training_sha256 + repr(sorted(params.items())) + ",".join(fm.features)).encode()).hexdigest()[:16]
    return {
        "model_id": f"{name}-{ident}",
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "estimator": type(fm.estimator).__name__,
        "params": params,
        "scikit_learn": sklearn.__version__,
        "target": fm.target,
        "target_units": "Mg/ha (dry aboveground biomass)",
        "features": list(fm.features),
        "lidar_features": lidar_features,
        "missing_lidar": "NaN outside LiDAR coverage; handled natively by the estimator",
        "training_table_sha256": training_sha256,
        "cv": {"method": "spatial block GroupKFold", "block_m": config.get("cv_block_m"), **fm.cv},
        "config": config,
    }
