"""Fit an AGB model from a table of plot features: choose by spatial / grouped CV, report random CV beside it,
residual variogram, permutation importance, area of applicability, calibrated intervals.

Plain arrays and DataFrames in, a :class:`TableFit` out; ``card.build_card`` turns it into ``model_card.json``.
Methods and their sources are in the docstrings of ``estimator``, ``validation`` and ``intervals``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd
from sklearn.base import clone

from ..errors import ModelError
from .estimator import KINDS, AGBRegressor, nested_cv, select_model
from .intervals import IntervalModel, default_method, fit_intervals, interval_calibration
from .validation import (CVResult, ResidualVariogram, TrainDI, check_block_size, cross_validate, fold_ids,
                         make_splits, permutation_importance_table, residual_variogram, spatial_blocks, train_di)


@dataclass
class TableFit:
    model: AGBRegressor  # the chosen kind, fitted on all rows
    features: list
    target: str
    scheme: str  # e.g. "grouped by cluster_id" or "spatial blocks 1000 m"
    selection: pd.DataFrame  # every candidate's spatial/grouped CV figures
    cv: dict  # {"spatial" or "grouped": CVResult, "random": CVResult}
    importance: pd.DataFrame
    intervals: IntervalModel
    calibration: dict
    variogram: ResidualVariogram | None = None
    block_m: float | None = None
    block_size_ok: bool | None = None
    aoa: TrainDI | None = None
    notes: list = field(default_factory=list)
    selection_cv: CVResult | None = None  # the winner's figure on the folds that chose it (optimistic)
    fold_choices: list | None = None  # the candidate chosen inside each outer fold (nested CV)

    @property
    def honest(self) -> CVResult:
        """The spatial or grouped CV result: with several candidates, nested (the choice made inside each
        outer fold, ``estimator.nested_cv``), else the one candidate's."""
        return next(v for k, v in self.cv.items() if k != "random")


def check_table(table: pd.DataFrame, target: str, features: Sequence[str]) -> None:
    """ModelError (one line) for a missing feature or target column, a non-numeric feature or a non-finite
    target (positions 0-based; the CLI names spreadsheet rows before calling this)."""
    missing = [c for c in [*features, target] if c not in table.columns]
    if missing:
        raise ModelError(f"table lacks columns {missing}")
    nonnum = [c for c in [*features, target] if not pd.api.types.is_numeric_dtype(table[c])]
    if nonnum:
        raise ModelError(f"non-numeric columns {nonnum}")
    bad = ~np.isfinite(table[target].to_numpy(dtype="float64"))
    if bad.any():
        raise ModelError(f"target {target!r} is not finite at positions {np.flatnonzero(bad)[:5].tolist()}")


def fit_table(table: pd.DataFrame, target: str, features: Sequence[str], *, groups=None, group_name: str = "group",
              block_m: float | None = None, x=None, y=None, coverage=None, folds: int = 5, seed: int = 0,
              kinds: Sequence[str] = KINDS, rf_grid: dict | None = None, alpha: float = 0.10,
              nested: bool = True) -> TableFit:
    """Choose, validate and fit.  Held-out units: ``groups`` (labels per row, e.g. plot clusters) or squares of
    ``block_m`` metres over (``x``, ``y``); ``x``/``y`` also give the residual variogram.  ``coverage`` labels
    each row's coverage class (e.g. "lidar"/"optical") for per-class figures and interval calibration.

    Runs with native thread pools limited to one thread: on small plot tables HistGradientBoosting's OpenMP
    threads cost more than they give (measured: 12 s vs 0.7 s for 5 folds of 96 plots on a busy 2-core machine).
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        return _fit_table(table, target, features, groups=groups, group_name=group_name, block_m=block_m, x=x, y=y,
                          coverage=coverage, folds=folds, seed=seed, kinds=kinds, rf_grid=rf_grid, alpha=alpha,
                          nested=nested)


def _fit_table(table, target, features, *, groups, group_name, block_m, x, y, coverage, folds, seed, kinds, rf_grid,
               alpha, nested) -> TableFit:
    features = [str(f) for f in features]
    check_table(table, target, features)
    X = table[features].reset_index(drop=True)
    yv = table[target].to_numpy(dtype="float64")
    if groups is None:
        if block_m is None or x is None or y is None:
            raise ModelError("spatial/grouped CV needs group labels, or a block size with x and y coordinates")
        groups = spatial_blocks(np.asarray(x, float), np.asarray(y, float), block_m)
        scheme, key = f"spatial blocks {block_m:g} m", "spatial"
    else:
        scheme, key = f"grouped by {group_name}", "grouped"
    groups = np.asarray(groups).astype(str)
    splits = make_splits(len(X), groups=groups, folds=folds, seed=seed)
    random_splits = make_splits(len(X), folds=folds, seed=seed)
    chosen, selection, selection_cv = select_model(X, yv, splits, kinds=kinds, rf_grid=rf_grid, seed=seed,
                                                   scheme=scheme, coverage=coverage)
    if nested and len(selection) > 1:
        honest, fold_choices = nested_cv(X, yv, splits, groups, folds=folds, kinds=kinds, rf_grid=rf_grid, seed=seed,
                                         scheme=scheme, coverage=coverage)
    else:  # one candidate: nothing is chosen, its CV figure is already honest
        honest, fold_choices = selection_cv, None
    cv = {key: honest,
          "random": cross_validate(chosen, X, yv, random_splits, scheme=f"random {folds}-fold (seed {seed})",
                                   coverage=coverage)}
    model = clone(chosen).fit(X, yv)
    notes = []
    variogram = ok = None
    if x is not None and y is not None:
        variogram = residual_variogram(x, y, cv[key].residual)
        if block_m is not None:
            ok = check_block_size(block_m, variogram)
    importance = permutation_importance_table(model, X, yv, seed=seed)
    complete = bool(np.isfinite(X.to_numpy(dtype="float64")).all())
    aoa = None
    if complete:
        weights = dict(zip(importance["feature"], importance["rmse_increase"]))
        if max(weights.values()) > 0:
            aoa = train_di(X, weights, fold_ids(splits, len(X)))
        else:
            notes.append("area of applicability not computed: no feature has a positive permutation importance")
    else:
        notes.append("area of applicability not computed: features have missing values (compute per coverage class)")
    method = default_method(chosen, complete)
    intervals = fit_intervals(X, yv, splits, method=method, alpha=alpha, point_estimator=chosen, seed=seed,
                              fitted=model)
    calibration = interval_calibration(X, yv, groups=groups, folds=folds, seed=seed, coverage=coverage, method=method,
                                       alpha=alpha, point_estimator=chosen)
    return TableFit(model, features, target, scheme, selection, cv, importance, intervals, calibration, variogram,
                    block_m, ok, aoa, notes, selection_cv, fold_choices)
