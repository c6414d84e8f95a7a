"""Regressor utilities: accuracy numbers vs scikit-learn, block CV honesty, coverage-aware blockwise prediction."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LinearRegression
from sklearn.metrics import mean_squared_error, r2_score

from forestcarbon.errors import ModelError
from forestcarbon.models.coverage import CoverageModel, predict_coverage_block
from forestcarbon.models.estimator import AGBRegressor
from forestcarbon.models.intervals import fit_intervals
from forestcarbon.models.regressor import accuracy, spatial_blocks
from forestcarbon.models.validation import cross_validate, make_splits


def _block_cv(t, features, groups):
    splits = make_splits(len(t), groups=groups, folds=5, seed=0)
    return cross_validate(AGBRegressor("hist_gradient_boosting"), t[features], t["agb_mg_ha"].to_numpy(), splits,
                          scheme="spatial blocks 1000 m")


def test_accuracy_matches_sklearn():
    rng = np.random.default_rng(0)
    obs = rng.gamma(3, 30, 200)
    pred = obs + rng.normal(5, 20, 200)
    a = accuracy(obs, pred)
    assert a["r2"] == pytest.approx(r2_score(obs, pred))
    assert a["rmse"] == pytest.approx(np.sqrt(mean_squared_error(obs, pred)))
    assert a["bias"] == pytest.approx(np.mean(pred - obs))
    assert a["rrmse"] == pytest.approx(a["rmse"] / obs.mean())


def test_spatial_blocks_group_by_square():
    x = np.array([10.0, 990.0, 1010.0, 10.0, 2500.0])
    y = np.array([10.0, 990.0, 10.0, 1500.0, 10.0])
    b = spatial_blocks(x, y, 1000.0)
    assert b[0] == b[1] and len(set(b.tolist())) == 4


def _table(rng, n_blocks=40, per_block=6, signal=True):
    rows = []
    for blk in range(n_blocks):
        bx, by = (blk % 8) * 1000 + 500, (blk // 8) * 1000 + 500
        level = rng.uniform(20, 200)
        for _ in range(per_block):
            ndvi = rng.uniform(0.2, 0.9)
            agb = 200 * ndvi + rng.normal(0, 10) if signal else level + rng.normal(0, 5)
            # "site" feature: constant within a block, a spatial-autocorrelation trap
            rows.append({"ndvi": ndvi, "site": level + rng.normal(0, 1), "agb_mg_ha": agb,
                         "x": bx + rng.uniform(-400, 400), "y": by + rng.uniform(-400, 400)})
    return pd.DataFrame(rows)


def test_block_cv_reports_real_skill():
    t = _table(np.random.default_rng(1))
    res = _block_cv(t, ["ndvi"], spatial_blocks(t.x, t.y, 1000))
    assert res.overall["r2"] > 0.85 and len(res.per_fold) == 5
    assert np.isfinite(res.predicted).all()


def test_block_cv_does_not_reward_memorising_sites():
    """Target = a per-block level; features identify the block. Random CV would look perfect;
    block CV must show that nothing transfers to unseen blocks."""
    t = _table(np.random.default_rng(2), signal=False)
    t["site"] = t.groupby(spatial_blocks(t.x, t.y, 1000)).ngroup() * 1.0  # block id as a feature
    t["agb_mg_ha"] = t.groupby(spatial_blocks(t.x, t.y, 1000))["agb_mg_ha"].transform("mean")
    assert _block_cv(t, ["site"], spatial_blocks(t.x, t.y, 1000)).overall["r2"] < 0.3


def test_too_few_plots_is_an_error():
    t = _table(np.random.default_rng(3), n_blocks=1, per_block=5)
    with pytest.raises(ModelError, match="at least 10"):
        _block_cv(t, ["ndvi"], np.zeros(len(t), int))


def test_coverage_block_serves_lidar_then_optical():
    """A pixel with every LiDAR feature gets the LiDAR model, one without LiDAR the optical model, one without
    optical features none: each value equals its model's own prediction (a linear fit, by hand)."""
    rng = np.random.default_rng(4)
    opt = rng.uniform(0.2, 0.8, 60)
    zq95 = rng.uniform(5, 30, 60)
    y = 100 * opt + 4 * zq95
    t = pd.DataFrame({"ndvi": opt, "zq95": zq95, "agb_mg_ha": y})
    splits = make_splits(len(t), folds=5, seed=0)
    models = []
    for name, feats in (("lidar", ["ndvi", "zq95"]), ("optical", ["ndvi"])):
        est = AGBRegressor("loglog_linear").fit(t[feats], y)
        iv = fit_intervals(t[feats], y, splits, method="absolute", point_estimator=AGBRegressor("loglog_linear"))
        models.append(CoverageModel(name, est, iv, tuple(feats)))
    blk = np.array([[[0.5, 0.6, np.nan]], [[20.0, np.nan, 10.0]]])  # (feature, y=1, x=3)
    out = predict_coverage_block(blk, ["ndvi", "zq95"], models, threads=1)
    lid = models[0].estimator.predict(pd.DataFrame({"ndvi": [0.5], "zq95": [20.0]}))[0]
    op = models[1].estimator.predict(pd.DataFrame({"ndvi": [0.6]}))[0]
    np.testing.assert_allclose(out[0, 0, :2], [lid, op], rtol=1e-6)
    np.testing.assert_array_equal(out[4, 0], [1, 2, 0])
    assert np.isnan(out[0, 0, 2]) and (out[2, 0, :2] <= out[0, 0, :2]).all() and (out[0, 0, :2] <= out[3, 0, :2]).all()
