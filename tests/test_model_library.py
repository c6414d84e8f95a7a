"""AGBRegressor, CV helpers, residual variogram, CAST area of applicability, conformal intervals, model card:
each checked against an independent numpy computation or a hand calculation."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import RandomForestRegressor
from scipy.stats import norm

from forestcarbon.errors import ModelError, SpatialCVWarning
from forestcarbon.models.card import build_card, check_card, frame_sha256
from forestcarbon.models.estimator import AGBRegressor, select_model
from forestcarbon.models.fit import fit_table
from forestcarbon.models.intervals import (calibrated, conformal_margin, fit_intervals, interval_calibration, scores,
                                              tree_point_quantiles)
from forestcarbon.models.validation import (check_block_size, cross_validate, fold_ids, make_splits,
                                            residual_variogram, train_di)


def _loglog_table(rng, n=120):
    h = rng.uniform(5, 35, n)
    cover = rng.uniform(20, 100, n)
    agb = np.exp(-1.0 + 1.4 * np.log(h) + 0.5 * np.log(cover) + rng.normal(0, 0.2, n))
    return pd.DataFrame({"zmean": h, "pzabove2": cover, "agb_mg_ha": agb})


# ------------------------------------------------------------------ estimator
def test_loglog_matches_numpy_lstsq_and_baskerville():
    t = _loglog_table(np.random.default_rng(0))
    m = AGBRegressor("loglog_linear").fit(t[["zmean", "pzabove2"]], t.agb_mg_ha)
    A = np.column_stack([np.ones(len(t)), np.log(t.zmean), np.log(t.pzabove2)])
    b, rss, *_ = np.linalg.lstsq(A, np.log(t.agb_mg_ha), rcond=None)
    s2 = float(rss[0]) / (len(t) - 3)
    assert m.intercept_ == pytest.approx(b[0]) and m.coef_ == pytest.approx(b[1:])
    new = pd.DataFrame({"pzabove2": [50.0, 80.0], "zmean": [10.0, 30.0]})  # other column order
    expect = np.exp(b[0] + b[1] * np.log(new.zmean) + b[2] * np.log(new.pzabove2) + s2 / 2)
    assert m.predict(new) == pytest.approx(expect.to_numpy())


def test_loglog_refuses_non_positive_feature_by_name():
    t = _loglog_table(np.random.default_rng(1))
    t.loc[7, "pzabove2"] = 0.0
    with pytest.raises(ModelError, match="'pzabove2'.*1 values <= 0"):
        AGBRegressor("loglog_linear").fit(t[["zmean", "pzabove2"]], t.agb_mg_ha)
    good = AGBRegressor("loglog_linear").fit(t[["zmean"]], t.agb_mg_ha)
    with pytest.raises(ModelError, match="'zmean' is <= 0"):
        good.predict(pd.DataFrame({"zmean": [10.0, -1.0]}))


def test_predict_refuses_other_columns_naming_them():
    t = _loglog_table(np.random.default_rng(2))
    m = AGBRegressor("random_forest", {"n_estimators": 20}).fit(t[["zmean", "pzabove2"]], t.agb_mg_ha)
    with pytest.raises(ModelError, match=r"missing \['pzabove2'\], extra \['ndvi'\]"):
        m.predict(t[["zmean"]].assign(ndvi=0.5))
    with pytest.raises(ModelError, match="needs a DataFrame"):
        m.predict(t[["zmean", "pzabove2"]].to_numpy())
    swapped = m.predict(t[["pzabove2", "zmean"]])
    assert swapped == pytest.approx(m.predict(t[["zmean", "pzabove2"]]))
    assert m.predict_matrix(t[["pzabove2", "zmean"]].to_numpy(), ["pzabove2", "zmean"]) == pytest.approx(swapped)


def test_tree_models_take_missing_lidar_natively():
    rng = np.random.default_rng(3)
    t = _loglog_table(rng)
    t.loc[::3, "zmean"] = np.nan
    for kind in ("random_forest", "hist_gradient_boosting"):
        m = AGBRegressor(kind).fit(t[["zmean", "pzabove2"]], t.agb_mg_ha)
        assert np.isfinite(m.predict(t[["zmean", "pzabove2"]])).all()


def test_select_model_picks_lowest_rmse_and_lists_unfit_candidates():
    t = _loglog_table(np.random.default_rng(4))
    t["zero"] = np.r_[0.0, np.ones(len(t) - 1)]
    X = t[["zmean", "pzabove2", "zero"]]
    splits = make_splits(len(t), groups=np.arange(len(t)) // 6, folds=4)
    est, table, res = select_model(X, t.agb_mg_ha, splits, rf_grid={"min_samples_leaf": (1, 5)})
    assert "'zero'" in table.loc[table.kind == "loglog_linear", "status"].iloc[0]
    ok = table[table.status == "ok"]
    assert table.chosen.sum() == 1 and ok.loc[ok.chosen, "rmse"].iloc[0] == ok.rmse.min()
    assert res.overall["rmse"] == pytest.approx(np.sqrt(np.mean((res.predicted - t.agb_mg_ha) ** 2)))


# --------------------------------------------------------------- validation
def test_grouped_splits_never_share_a_group_and_too_few_groups_is_an_error():
    g = np.repeat(np.arange(8), 5)
    for train, test in make_splits(g.size, groups=g, folds=4):
        assert not set(g[train]) & set(g[test])
    with pytest.raises(ModelError, match="3 groups.*needs at least 5"):
        make_splits(30, groups=np.arange(30) % 3, folds=5)
    with pytest.raises(ModelError, match="8 rows"):
        make_splits(8, folds=5)


def test_cross_validate_metrics_per_fold_and_class_match_numpy():
    t = _loglog_table(np.random.default_rng(5))
    cls = np.where(np.arange(len(t)) % 3 == 0, "optical", "lidar")
    splits = make_splits(len(t), groups=np.arange(len(t)) // 10, folds=4)
    r = cross_validate(AGBRegressor("loglog_linear"), t[["zmean", "pzabove2"]], t.agb_mg_ha, splits,
                       scheme="test", coverage=cls)
    obs, pred = t.agb_mg_ha.to_numpy(), r.predicted
    for k, (_, test) in enumerate(splits):  # each fold refitted independently with numpy
        tr = np.setdiff1d(np.arange(len(t)), test)
        A = np.column_stack([np.ones(len(t)), np.log(t.zmean), np.log(t.pzabove2)])
        b, rss, *_ = np.linalg.lstsq(A[tr], np.log(obs[tr]), rcond=None)
        assert pred[test] == pytest.approx(np.exp(A[test] @ b + rss[0] / (tr.size - 3) / 2))
        assert r.per_fold.loc[k, "rmse"] == pytest.approx(np.sqrt(np.mean((pred[test] - obs[test]) ** 2)))
    for c in ("lidar", "optical"):
        s = cls == c
        assert r.per_class[c]["bias"] == pytest.approx(np.mean(pred[s] - obs[s]))
        assert r.per_class[c]["n"] == s.sum()
    assert r.overall["r2"] == pytest.approx(1 - np.sum((pred - obs) ** 2) / np.sum((obs - obs.mean()) ** 2))


def _gaussian_field(seed, n=500, a=300.0):
    """n points in 6 km, exponential covariance 25·exp(−h/a) plus a nugget of 1 (Cholesky simulation)."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 6000, (n, 2))
    d = np.hypot(*(xy[:, None, :] - xy[None, :, :]).transpose(2, 0, 1))
    z = np.linalg.cholesky(25.0 * np.exp(-d / a) + 1e-9 * np.eye(n)) @ rng.normal(size=n) + rng.normal(0, 1.0, n)
    return xy, d, z


def test_empirical_variogram_matches_double_loop_and_fit_recovers_range():
    n = 500
    xy, d, z = _gaussian_field(6, n)
    v = residual_variogram(xy[:, 0], xy[:, 1], z, n_lags=12, max_lag_m=3000)
    edges = np.linspace(0, 3000, 13)
    for k in range(3):  # Matheron, by the book
        num = cnt = 0.0
        for i in range(n):
            for j in range(i + 1, n):
                if edges[k] <= d[i, j] < edges[k + 1]:
                    num, cnt = num + (z[i] - z[j]) ** 2, cnt + 1
        assert v.pairs[k] == cnt and v.gamma[k] == pytest.approx(num / (2 * cnt))
    # range parameter 300 m -> practical range 900 m; one realisation varies (seed 6 alone gives ~1.9 km,
    # its field drifts), so the median of three realisations is checked
    ranges = [residual_variogram(f[0][:, 0], f[0][:, 1], f[2], max_lag_m=3000).practical_range_m
              for f in ((xy, d, z), _gaussian_field(7, n), _gaussian_field(8, n))]
    assert 600 < np.median(ranges) < 1350 and v.status == "ok"
    with pytest.warns(SpatialCVWarning, match="block 500 m is smaller"):
        assert not check_block_size(500, v)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_block_size(5000, v)


def test_variogram_without_structure_is_a_pure_nugget():
    """Independent residuals: the F test against a flat γ finds no structure (partial sill 0, the nugget the
    pairs-weighted mean γ, practical range the first lag); over 20 independent sets it rejects at about its
    5 % level; a correlated field keeps its structure."""
    pvals = []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        xy = rng.uniform(0, 6000, (300, 2))
        v = residual_variogram(xy[:, 0], xy[:, 1], rng.normal(0, 30, 300), max_lag_m=3000)
        pvals.append(v.structure_p_value)
        if seed == 0:
            assert v.structure_p_value > 0.05 and v.partial_sill == 0.0 and v.status == "ok"
            assert v.nugget == pytest.approx(np.sum(np.array(v.gamma) * v.pairs) / np.sum(v.pairs), rel=1e-12)
            assert v.practical_range_m == pytest.approx(v.lag_m[0])
            with warnings.catch_warnings():  # nothing resolved beyond the first lag: no block-size warning
                warnings.simplefilter("error")
                assert check_block_size(1000, v)
    assert np.mean(np.array(pvals) < 0.05) <= 0.2
    xy, _, z = _gaussian_field(7, 500)
    v = residual_variogram(xy[:, 0], xy[:, 1], z, max_lag_m=3000)
    assert v.structure_p_value < 1e-3 and v.partial_sill > 10


# ------------------------------------------------------ area of applicability
def _r_quantile7(x, p):
    """R's default quantile (type 7), written out."""
    x = np.sort(x[np.isfinite(x)])
    h = (x.size - 1) * p
    lo = math.floor(h)
    return x[lo] + (h - lo) * (x[min(lo + 1, x.size - 1)] - x[lo])


def _cast_traindi(train, weight, fold):
    """CAST 1.1.0 R/trainDI.R, line by line: scale(), weight, loop over points, CV masking, threshold."""
    X = (train - train.mean(0)) / train.std(0, ddof=1) * weight
    avrg, mins = [], []
    for i in range(X.shape[0]):
        dist = np.sqrt(((X - X[i]) ** 2).sum(1))
        dist[i] = np.nan
        avrg.append(np.nanmean(dist))
        if fold is not None:
            dist[fold == fold[i]] = np.nan  # not in CVtrain of the fold holding i back
        mins.append(np.nanmin(dist))
    di = np.array(mins) / np.mean(avrg)
    thres = _r_quantile7(di, 0.75) + 1.5 * (_r_quantile7(di, 0.75) - _r_quantile7(di, 0.25))
    return di, min(thres, di.max()), np.mean(avrg), X


def test_train_di_by_hand_four_points():
    X = pd.DataFrame({"h": [0.0, 1.0, 3.0, 6.0]})
    # mean distances to the others 10/3, 8/3, 8/3, 14/3 (raw units; the SD scaling cancels) -> d̄ = 10/3
    t = train_di(X)
    assert t.train_di == pytest.approx([0.3, 0.3, 0.6, 0.9])
    assert t.threshold == pytest.approx(0.9)  # 0.675 + 1.5·0.375 = 1.2375, capped at the largest DI
    assert t.di(pd.DataFrame({"h": [10.0, 2.0]})) == pytest.approx([1.2, 0.3])
    assert t.aoa(pd.DataFrame({"h": [10.0, 2.0, np.nan]})).tolist() == [False, True, False]
    t = train_di(X, cv_fold=np.array([0, 0, 1, 1]))  # nearest point outside the own fold: 3, 2, 2, 5
    assert t.train_di == pytest.approx([0.9, 0.6, 0.6, 1.5])


def test_train_di_matches_cast_transcription():
    rng = np.random.default_rng(7)
    A = rng.normal(size=(40, 3)) * [1.0, 5.0, 0.1] + [0, 10, 3]
    w = np.array([2.0, 0.5, -1.0])  # negative importance -> weight 0, as CAST
    fold = np.arange(40) % 5
    t = train_di(pd.DataFrame(A, columns=["a", "b", "c"]), dict(zip("abc", w)), fold)
    di, thres, dbar, Z = _cast_traindi(A, np.maximum(w, 0), fold)
    assert t.train_di == pytest.approx(di) and t.threshold == pytest.approx(thres)
    assert t.mean_distance == pytest.approx(dbar)
    new = rng.normal(size=(25, 3)) * [2.0, 5.0, 0.1] + [0, 10, 3]
    Zn = (new - A.mean(0)) / A.std(0, ddof=1) * np.maximum(w, 0)
    brute = np.sqrt(((Zn[:, None, :] - Z[None]) ** 2).sum(2)).min(1) / dbar
    assert t.di(new) == pytest.approx(brute)
    assert (t.aoa(new) == (brute <= thres)).all()


# ---------------------------------------------------------------- intervals
def test_conformal_margin_is_the_ceil_rank():
    s = np.arange(19, 0, -1.0)  # 19 scores; ⌈20·0.9⌉ = 18th smallest = 18
    assert conformal_margin(s, 0.10) == 18.0
    with pytest.raises(ModelError, match="too few"):
        conformal_margin(np.arange(8.0), 0.10)  # ⌈9·0.9⌉ = 9 > 8


def _hetero(rng, n_groups=30, per=6):
    g = np.repeat(np.arange(n_groups), per)
    h = rng.uniform(5, 35, g.size)
    agb = 6 * h + rng.normal(0, 1, g.size) * h  # spread grows with height
    return pd.DataFrame({"zmean": h, "noise": rng.normal(size=g.size), "agb_mg_ha": agb, "g": g})


def test_interval_calibration_counts_and_classes():
    t = _hetero(np.random.default_rng(8))
    cls = np.where(t.zmean > 20, "tall", "short")
    cal = interval_calibration(t[["zmean", "noise"]], t.agb_mg_ha, groups=t.g, folds=5, coverage=cls)
    rows = cal["rows"]
    inside = (t.agb_mg_ha >= rows.lower) & (t.agb_mg_ha <= rows.upper)
    assert cal["overall"]["inside_fraction"] == pytest.approx(inside.mean())
    for c in ("tall", "short"):
        assert cal["per_coverage_class"][c]["inside_fraction"] == pytest.approx(inside[cls == c].mean())
    assert 0.8 <= cal["overall"]["inside_fraction"] <= 0.98
    # forest intervals follow the spread (true SD 2.2 times larger for tall plots): wider there
    width = rows.upper - rows.lower
    assert width[cls == "tall"].mean() > 1.2 * width[cls == "short"].mean()


def test_interval_model_sd_and_absolute_method():
    t = _hetero(np.random.default_rng(9))
    X = t[["zmean", "noise"]]
    splits = make_splits(len(t), groups=t.g, folds=5)
    im = fit_intervals(X, t.agb_mg_ha, splits)
    p = im.predict(X.iloc[:5])
    assert p.sd.to_numpy() == pytest.approx(((p.upper - p.lower) / (2 * norm.ppf(0.95))).to_numpy())
    point = AGBRegressor("random_forest", {"n_estimators": 50})
    ab = fit_intervals(X, t.agb_mg_ha, splits, method="absolute", point_estimator=point)
    fitted = point.fit(X, t.agb_mg_ha).predict(X.iloc[:3])
    q = ab.predict(X.iloc[:3])
    assert (q.upper - fitted).to_numpy() == pytest.approx(np.full(3, ab.margin))


def test_tree_point_quantiles_against_the_trees_one_by_one():
    rng = np.random.default_rng(11)
    X = rng.normal(size=(300, 4))
    y = X[:, 0] * 10 + rng.normal(size=300)
    X[rng.random(X.shape) < 0.1] = np.nan  # missing values follow each split's learnt direction
    forest = RandomForestRegressor(n_estimators=25, min_samples_leaf=2, random_state=0).fit(X, y)
    new = rng.normal(size=(1000, 4))
    new[rng.random(new.shape) < 0.1] = np.nan
    per_tree = np.stack([t.predict(new.astype("float32")) for t in forest.estimators_])  # (trees, n)
    got = tree_point_quantiles(forest, new, [0.05, 0.95], rows=128)
    assert got[:, 0] == pytest.approx(forest.predict(new), rel=1e-12, abs=1e-12)
    assert got[:, 1] == pytest.approx(np.percentile(per_tree, 5, axis=0))
    assert got[:, 2] == pytest.approx(np.percentile(per_tree, 95, axis=0))


def test_scores_and_interval_at_the_biomass_floor():
    # a zero plot whose lower quantile sits on the floor scores its upper side only: 0 - 50 = -50;
    # a plot above the floor scores the usual max(10 - 5, 5 - 60) = 5
    assert scores([0.0, 10.0], [50.0, 60.0], [0.0, 5.0]).tolist() == [-50.0, 5.0]
    assert scores([0.0, 10.0], [50.0, 60.0], [0.0, 5.0], floor=None).tolist() == [0.0, 5.0]
    lo, hi = calibrated([0.0, 10.0, 30.0], [50.0, 60.0, 34.0], -3.0)
    assert lo.tolist() == [0.0, 13.0, 32.0] and hi.tolist() == [47.0, 57.0, 32.0]  # third crossed: middle
    lo, hi = calibrated([0.0, 2.0], [1.0, 60.0], 5.0)
    assert lo.tolist() == [0.0, 0.0] and hi.tolist() == [6.0, 65.0]


def _with_bare_land(rng, n_groups=30, per=8, bare=0.2):
    """Forest plots (spread growing with height) and plots on bare land (height 0, biomass 0)."""
    t = _hetero(rng, n_groups, per)
    zero = rng.random(len(t)) < bare
    t.loc[zero, "zmean"] = rng.uniform(0, 0.3, zero.sum())
    t.loc[zero, "agb_mg_ha"] = 0.0
    t["agb_mg_ha"] = t["agb_mg_ha"].clip(lower=0)
    return t


def test_zero_biomass_plots_no_longer_pin_the_margin():
    """With a fifth of the plots at 0 Mg/ha, the plain CQR score is exactly 0 for each of them, so the
    margin cannot fall below 0 and a quantile forest that over-covers stays too wide; the floor-aware score
    lets it fall and brings held-out coverage to the nominal 90 %."""
    t = _with_bare_land(np.random.default_rng(12))
    X, y = t[["zmean", "noise"]], t.agb_mg_ha
    splits = make_splits(len(t), groups=t.g, folds=5)
    plain = fit_intervals(X, y, splits, method="cqr", floor=None)
    aware = fit_intervals(X, y, splits, method="cqr")
    assert plain.margin == 0.0 and aware.margin < 0
    cal_plain = interval_calibration(X, y, groups=t.g, method="cqr", floor=None)
    cal = interval_calibration(X, y, groups=t.g, method="cqr")
    assert cal_plain["overall"]["inside_fraction"] > 0.95
    assert 0.85 <= cal["overall"]["inside_fraction"] <= 0.95
    assert cal["overall"]["mean_width"] < cal_plain["overall"]["mean_width"]
    rows = cal["rows"]
    assert (rows.lower >= 0).all() and rows.inside.equals((y >= rows.lower) & (y <= rows.upper))
    # the point forest's own trees, calibrated the same way, hold the nominal share too
    point = AGBRegressor("random_forest", {"n_estimators": 100, "min_samples_leaf": 3})
    trees = interval_calibration(X, y, groups=t.g, method="cqr_trees", point_estimator=point)
    assert 0.85 <= trees["overall"]["inside_fraction"] <= 0.95


def test_cqr_trees_point_is_the_forest_and_served_in_one_object():
    t = _hetero(np.random.default_rng(13))
    X, y = t[["zmean", "noise"]], t.agb_mg_ha
    point = AGBRegressor("random_forest", {"n_estimators": 60}).fit(X, y)
    iv = fit_intervals(X, y, make_splits(len(t), groups=t.g, folds=5), method="cqr_trees", point_estimator=point,
                       fitted=point)
    assert iv.estimator is point and iv.gives_point
    p = iv.predict_with_point(X.iloc[:20][["noise", "zmean"]])
    assert p.point.to_numpy() == pytest.approx(point.predict(X.iloc[:20]), rel=1e-12)
    with pytest.raises(ModelError, match="random-forest point estimator"):
        fit_intervals(X, y, make_splits(len(t), folds=5), method="cqr_trees", point_estimator=AGBRegressor("loglog_linear"))


# --------------------------------------------------------------- fit + card
def test_fit_table_card_and_check_card():
    rng = np.random.default_rng(10)
    t = _loglog_table(rng)
    t["x"], t["y"] = rng.uniform(0, 5000, len(t)), rng.uniform(0, 5000, len(t))
    t["cov"] = np.where(np.arange(len(t)) % 2 == 0, "lidar", "optical")
    res = fit_table(t, "agb_mg_ha", ["zmean", "pzabove2"], block_m=1000, x=t.x, y=t.y, coverage=t["cov"],
                    kinds=["loglog_linear", "random_forest"], rf_grid={"min_samples_leaf": (3,)})
    support = {"kind": "plot footprint mean", "area_m2": 667.0}
    card = build_card(res, name="t", target_units="Mg/ha", support=support,
                      training_sha256=frame_sha256(t[["zmean", "pzabove2", "agb_mg_ha"]]),
                      grid={"crs": "EPSG:4549", "resolution_m": 10.0})
    assert set(card["cv"]) == {"spatial", "random"} and card["coverage_classes"] == ["lidar", "optical"]
    folds = {tuple(np.unique(np.floor(t.x[res.cv["spatial"].fold == k] / 1000) * 1000 + np.floor(t.y[res.cv["spatial"].fold == k] / 1000)))
             for k in range(5)}
    assert len(set().union(*folds)) == sum(len(f) for f in folds)  # no block in two folds
    assert card["calibration"]["overall"]["n"] == len(t)
    check_card(card, ["pzabove2", "zmean"], support=support, grid={"crs": "EPSG:4549", "resolution_m": 10.0})
    with pytest.raises(ModelError, match=r"missing \['pzabove2'\]"):
        check_card(card, ["zmean"])
    with pytest.raises(ModelError, match="trained on support"):
        check_card(card, ["zmean", "pzabove2"], support={"kind": "pixel", "area_m2": 100.0})
    with pytest.raises(ModelError, match="made for grid"):
        check_card(card, ["zmean", "pzabove2"], grid={"crs": "EPSG:4549", "resolution_m": 30.0})
    assert fold_ids([(np.array([1]), np.array([0]))], 2).tolist() == [0, -1]


def test_nested_cv_repeats_the_choice_inside_each_outer_fold():
    """The nested figure equals a hand loop: per outer fold, group-holding inner
    splits of the training rows, the candidate with the lowest inner RMSE (computed here with
    cross_val_predict), refitted and predicting the held-out rows."""
    from sklearn.model_selection import cross_val_predict

    from forestcarbon.models.estimator import candidates, nested_cv

    t = _hetero(np.random.default_rng(14), n_groups=15, per=6)
    X, y, g = t[["zmean", "noise"]], t.agb_mg_ha.to_numpy(), t.g.astype(str).to_numpy()
    grid = {"min_samples_leaf": (1, 8)}
    outer = make_splits(len(t), groups=g, folds=3)
    res, chosen = nested_cv(X, y, outer, g, folds=3, kinds=["random_forest"], rf_grid=grid)
    pred = np.full(len(t), np.nan)
    for k, (train, test) in enumerate(outer):
        inner = make_splits(train.size, groups=g[train], folds=3)
        rmses = {}
        for label, est in candidates(["random_forest"], grid):
            p = cross_val_predict(est, X.iloc[train], y[train], cv=inner)
            rmses[label] = np.sqrt(np.mean((p - y[train]) ** 2))
        best = min(rmses, key=rmses.get)
        assert chosen[k] == best
        est = dict(candidates(["random_forest"], grid))[best]
        pred[test] = est.fit(X.iloc[train], y[train]).predict(X.iloc[test])
    np.testing.assert_allclose(res.predicted, pred, rtol=1e-12)
    assert res.overall["rmse"] == pytest.approx(np.sqrt(np.mean((pred - y) ** 2)))
