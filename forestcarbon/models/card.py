"""Model card of a :class:`fit.TableFit`, and the check that a saved model fits the data offered to it.

The card says what the model predicts (target, units), from what (features, support: the spatial unit a
feature value summarises, e.g. the plot footprint mean over 667 m²), trained on which data (SHA-256 of
the training columns), with which libraries and hyper-parameters, how well under spatial / grouped AND
random CV (side by side, per coverage class), how calibrated its intervals are, and where it applies.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata as md
import json

import numpy as np
import pandas as pd

from ..errors import ModelError
from .estimator import check_feature_names

LIBRARIES = ("forestcarbon", "scikit-learn", "quantile-forest", "numpy", "scipy", "pandas", "joblib")


def frame_sha256(frame: pd.DataFrame) -> str:
    """SHA-256 of a table's columns and values as CSV (floats written with repr precision, no index)."""
    return hashlib.sha256(frame.to_csv(index=False, lineterminator="\n").encode("utf-8")).hexdigest()


def library_versions() -> dict:
    out = {}
    for lib in LIBRARIES:
        try:
            out[lib] = md.version(lib)
        except md.PackageNotFoundError:
            out[lib] = None
    return out


def _jsonable(v):
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating, float)):
        return float(v) if np.isfinite(v) else None
    if isinstance(v, (np.bool_,)):
        return bool(v)
    return v


def build_card(fit, *, name: str, target_units: str, support: dict, training_sha256: str,
               source: str | None = None, grid: dict | None = None) -> dict:
    """JSON-able card.  ``support`` e.g. ``{"kind": "plot footprint mean", "area_m2": 667.0}``; ``grid``
    (``{"crs": ..., "resolution_m": ...}``) when the model is meant for one map grid, else None."""
    m = fit.model
    params = m.hyperparameters()
    ident = hashlib.sha256((training_sha256 + m.kind + json.dumps(params, sort_keys=True, default=str)
                            + ",".join(fit.features)).encode()).hexdigest()[:16]
    cal = {k: v for k, v in fit.calibration.items() if k != "rows"}
    card = {
        "model_id": f"{name}-{ident}",
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "kind": m.kind,
        "hyperparameters": params,
        "coefficients": m.coefficients() or None,
        "target": fit.target,
        "target_units": target_units,
        "features": list(fit.features),
        "support": support,
        "grid": grid,
        "training_source": source,
        "training_table_sha256": training_sha256,
        "n_training_rows": int(len(fit.honest.observed)),
        "libraries": library_versions(),
        "selection": {"by": f"{fit.scheme} RMSE", "candidates": fit.selection.to_dict(orient="records"),
                      "winner_on_the_folds_that_chose_it": (fit.selection_cv.overall if fit.selection_cv is not None
                                                            else None),
                      "chosen_in_each_outer_fold": fit.fold_choices,
                      "honest_cv": "nested: the choice repeated inside each outer fold" if fit.fold_choices
                      else "one candidate: its CV is honest"},
        "cv": {k: v.to_dict() for k, v in fit.cv.items()},
        "coverage_classes": sorted(fit.honest.per_class) or None,
        "residual_variogram": fit.variogram.to_dict() if fit.variogram is not None else None,
        "block_m": fit.block_m,
        "block_size_at_least_residual_range": fit.block_size_ok,
        "intervals": fit.intervals.to_dict(),
        "calibration": cal,
        "permutation_importance": fit.importance.to_dict(orient="records"),
        "area_of_applicability": fit.aoa.to_dict() if fit.aoa is not None else None,
        "notes": list(fit.notes),
    }
    return _jsonable(card)


def check_card(card: dict, features, *, support: dict | None = None, grid: dict | None = None) -> None:
    """One-line ModelError when the offered features, support or grid differ from the card's.  ``support``
    compares ``kind`` exactly and ``area_m2`` within 1 %; ``grid`` compares the CRS (pyproj equality) and
    ``resolution_m`` within 1e-6 m; a card without a grid accepts any grid."""
    mid = card.get("model_id", "model")
    check_feature_names(list(features), card["features"], f"model {mid}")
    if support is not None:
        have = card.get("support") or {}
        if have.get("kind") != support.get("kind") or not _close(have.get("area_m2"), support.get("area_m2"), 0.01):
            raise ModelError(f"model {mid}: trained on support {have}, offered {support}")
    if grid is not None and card.get("grid"):
        from pyproj import CRS

        have = card["grid"]
        same_crs = CRS.from_user_input(have["crs"]) == CRS.from_user_input(grid["crs"])
        if not same_crs or not _close(have.get("resolution_m"), grid.get("resolution_m"), 0, atol=1e-6):
            raise ModelError(f"model {mid}: made for grid {have}, offered {grid}")


def _close(a, b, rtol: float, atol: float = 0.0) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return bool(np.isclose(float(a), float(b), rtol=rtol, atol=atol))
