"""Regressor utilities: accuracy numbers vs scikit-learn, block CV honesty, blockwise prediction."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LinearRegression
from sklearn.metrics import mean_squared_error, r2_score

from forestcarbon.errors import ModelError
from forestcarbon.models.regressor import accuracy, fit_agb_model, predict_block, spatial_blocks


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
    fm = fit_agb_model(t, ["ndvi"], "agb_mg_ha", spatial_blocks(t.x, t.y, 1000), folds=5)
    assert fm.cv["r2"] > 0.85 and fm.cv["folds"] == 5
    assert np.isfinite(fm.oof_pred).all()


def test_block_cv_does_not_reward_memorising_sites():
    """Target = a per-block level; features identify the block. Random CV would look perfect;
    block CV must show that nothing transfers to unseen blocks."""
    t = _table(np.random.default_rng(2), signal=False)
    t["site"] = t.groupby(spatial_blocks(t.x, t.y, 1000)).ngroup() * 1.0  # block id as a feature
    t["agb_mg_ha"] = t.groupby(spatial_blocks(t.x, t.y, 1000))["agb_mg_ha"].transform("mean")
    fm = fit_agb_model(t, ["site"], "agb_mg_ha", spatial_blocks(t.x, t.y, 1000), folds=5)
    assert fm.cv["r2"] < 0.3


def test_too_few_plots_is_an_error():
    t = _table(np.random.default_rng(3), n_blocks=1, per_block=5)
    with pytest.raises(ModelError, match="at least 10"):
        fit_agb_model(t, ["ndvi"], "agb_mg_ha", np.zeros(len(t), int))


def test_predict_block_masks_missing_optical_but_not_lidar():
    X = np.array([[0.5, 0.2], [0.3, 0.1]])
    est = LinearRegression().fit(X, [100.0, 50.0])
    blk = np.array([[[0.5, np.nan, 0.3]], [[np.nan, 0.2, 0.1]]])  # (feature, y=1, x=3); feature 1 = lidar
    out = predict_block(blk, type("E", (), {"predict": lambda self, a: est.predict(np.nan_to_num(a))})(),
                        np.array([True, False]))
    assert np.isnan(out[0, 1])  # optical missing -> no estimate
    assert np.isfinite(out[0, 0]) and out[0, 2] == pytest.approx(50.0)
