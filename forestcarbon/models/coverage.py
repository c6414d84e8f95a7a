"""Coverage-aware AGB maps: a LiDAR + optical model where LiDAR exists, an optical-only model elsewhere.

Each model is an :class:`~.estimator.AGBRegressor` with its calibrated :class:`~.intervals.IntervalModel`,
fitted on the plots whose features it uses are complete (``fit.fit_table``).  A pixel takes the first
model (in :data:`SOURCES` order) whose features are all finite there; the ``model_source`` band says
which.  Predictions and interval bounds are clipped at 0 Mg/ha (biomass is not negative).

When the interval model gives the point itself (``cqr_trees`` on the chosen random forest, or
``absolute``) and holds the very estimator that serves the point, point and interval come from one
prediction (one traversal of the forest).  Otherwise (``cqr``: a separate quantile forest) the point comes
from the chosen model and, where it falls outside its interval, the interval is widened to hold it
(coverage can only grow); the SD is then recomputed from the widened interval as
:class:`~.intervals.IntervalModel` defines it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
from scipy.stats import norm

from .estimator import AGBRegressor
from .intervals import IntervalModel

SOURCES = {"lidar": 1, "optical": 2}
"""Code of each model in the ``model_source`` band (0: no model could predict: features missing)."""

BANDS = ("agb_mg_ha", "agb_sd_mg_ha", "agb_p05_mg_ha", "agb_p95_mg_ha", "model_source")


@dataclass(frozen=True)
class CoverageModel:
    name: str  # a key of SOURCES
    estimator: AGBRegressor
    intervals: IntervalModel
    features: tuple[str, ...]


def coverage_labels(table: pd.DataFrame, lidar_features: Sequence[str]) -> np.ndarray:
    """'lidar' for rows whose LiDAR features are all finite, else 'optical'."""
    if not lidar_features:
        return np.full(len(table), "optical")
    ok = np.isfinite(table[list(lidar_features)].to_numpy(dtype="float64")).all(axis=1)
    return np.where(ok, "lidar", "optical")


def predict_threads() -> int:
    """Threads :func:`predict_coverage_block` splits a block's rows over: the dask scheduler's ``num_workers``
    when set (the pipeline's ``compute.workers``), else the CPU count."""
    import os

    import dask

    return max(1, int(dask.config.get("num_workers", None) or os.cpu_count() or 1))


def predict_coverage_block(block: np.ndarray, names: Sequence[str], models: Sequence[CoverageModel],
                           threads: int | None = None) -> np.ndarray:
    """(len(BANDS), y, x) float32 for a (feature, y, x) block whose features are ``names``: AGB, its SD, the
    interval bounds (nominal 90 % with alpha 0.10: p05 and p95) and the serving model's code.

    The block's rows are split into ``threads`` parts (default :func:`predict_threads`) predicted at once in
    threads: the forests' tree traversal releases the GIL, and ``rs.cog.write_cog`` computes one map block
    at a time, so without this one core would do a whole map's prediction.  Each pixel's numbers do not
    depend on the split (the models predict row by row)."""
    nf, ny, nx = block.shape
    X = block.reshape(nf, -1).T.astype("float64")
    names = [str(n) for n in names]
    threads = min(threads or predict_threads(), max(1, X.shape[0] // 4096))
    if threads == 1:
        return _predict_rows(X, names, models).reshape(len(BANDS), ny, nx)
    from concurrent.futures import ThreadPoolExecutor

    parts = np.array_split(np.arange(X.shape[0]), threads)
    with ThreadPoolExecutor(threads) as pool:
        out = list(pool.map(lambda rows: _predict_rows(X[rows[0]:rows[-1] + 1], names, models), parts))
    return np.concatenate(out, axis=1).reshape(len(BANDS), ny, nx)


def _predict_rows(X: np.ndarray, names: list[str], models: Sequence[CoverageModel]) -> np.ndarray:
    """(len(BANDS), n) for the (n, features) rows ``X``."""
    n = X.shape[0]
    out = np.full((len(BANDS), n), np.nan, dtype="float32")
    out[4] = 0
    todo = np.ones(n, dtype=bool)
    for m in models:
        cols = [names.index(f) for f in m.features]
        ok = todo & np.isfinite(X[:, cols]).all(axis=1)
        if ok.any():
            frame = pd.DataFrame(X[np.ix_(ok, cols)], columns=list(m.features))
            iv = m.intervals.predict_with_point(frame)
            joint = m.intervals.gives_point and m.intervals.estimator is m.estimator
            point = np.clip(iv["point"].to_numpy() if joint else m.estimator.predict(frame), 0, None)
            lo = np.clip(np.minimum(iv["lower"].to_numpy(), point), 0, None)
            hi = np.maximum(iv["upper"].to_numpy(), point)
            out[0, ok] = point
            out[1, ok] = (hi - lo) / (2 * norm.ppf(1 - m.intervals.alpha / 2))
            out[2, ok], out[3, ok] = lo, hi
            out[4, ok] = SOURCES[m.name]
            todo &= ~ok
    return out


def applicability_block(block: np.ndarray, names: Sequence[str], trained) -> np.ndarray:
    """(2, y, x) float32: the dissimilarity index (Meyer & Pebesma 2021; :class:`~.validation.TrainDI`) of each
    pixel's features and 1 inside the area of applicability (DI <= the training threshold), 0 outside; NaN
    where a feature is missing."""
    nf, ny, nx = block.shape
    names = [str(n) for n in names]
    X = block.reshape(nf, -1).T[:, [names.index(f) for f in trained.features]].astype("float64")
    di = trained.di(X)
    inside = np.where(np.isfinite(di), (di <= trained.threshold).astype("float64"), np.nan)
    return np.stack([di, inside]).astype("float32").reshape(2, ny, nx)
