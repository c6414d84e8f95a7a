"""Regressor building blocks: the scikit-learn estimators behind :class:`~.estimator.AGBRegressor`, spatial
blocks, accuracy figures, and features too sparse to learn.

Cross-validation holds out whole spatial blocks (``cv_block_m`` squares) so that neighbouring plots never
sit on both sides of a split (Roberts et al. 2017, Ecography 40:913-929; :mod:`.validation`).  Reported:
R², RMSE (Mg/ha), relative RMSE and bias (mean of predicted − observed, Mg/ha).

Random forests and HistGradientBoosting handle missing features natively (scikit-learn ≥ 1.4).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingRegressor, RandomForestRegressor

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


