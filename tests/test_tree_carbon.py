"""Single-tree carbon from detected trees: DBH models, carbon with Monte Carlo, register, epoch matching.

Expected values are derived independently: numpy.polyfit on ln-ln data, the printed coefficients of the
equations' sources (LY/T 2264-2014 as tabulated in StemAnalysis allomPardata.csv; Xiang et al. 2016 as
tabulated in allodb equations.csv; Chave et al. 2014 eq. 4), the IPCC default conversion factors, a
brute-force enumeration of one-to-one matchings, and hand-made geometries.
"""

from __future__ import annotations

import itertools
import os

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
from shapely.geometry import Point, box

from forestcarbon.config import default_allometry_path
from forestcarbon.errors import FieldError
from forestcarbon.models.allometry import load_registry
from forestcarbon.models.tree_carbon import tree_carbon
from forestcarbon.models.tree_dbh import DbhModel, fit_dbh_model, fit_dbh_models
from forestcarbon.models.tree_match import match_epochs
from forestcarbon.vector.tree_register import outside, summarise_by_polygons, tree_ids, write_register

Z95 = 1.6448536269514722  # standard normal 95th percentile


@pytest.fixture(scope="module")
def registry():
    return load_registry(default_allometry_path())


def field_trees(seed=0):
    """Field trees with measured heights: 40 Chinese fir, 30 Masson pine, 5 Camellia (too few for a model)."""
    rng = np.random.default_rng(seed)
    rows = []
    for group, n, a, b in (("chinese_fir", 40, -0.9, 1.45), ("masson_pine", 30, -1.2, 1.6),
                           ("camellia_oleifera", 5, -0.5, 1.2)):
        h = rng.uniform(4, 22, n)
        d = np.exp(a + b * np.log(h) + rng.normal(0, 0.12, n))
        rows.append(pd.DataFrame({"species_group": group, "height_m": h, "dbh_cm": d}))
    t = pd.concat(rows, ignore_index=True)
    t["height_source"] = "measured"
    t["status"] = "alive"
    # modelled heights and dead trees must not enter the fit
    extra = pd.DataFrame({"species_group": ["chinese_fir", "chinese_fir"], "height_m": [30.0, 2.0],
                          "dbh_cm": [5.0, 60.0], "height_source": ["hd_model:*:log2", "measured"],
                          "status": ["alive", "dead"]})
    return pd.concat([t, extra], ignore_index=True)


# -- DBH model --------------------------------------------------------------------------------------------------

def test_fit_dbh_model_against_polyfit_and_hand_formulas():
    t = field_trees()
    own = t[(t.species_group == "chinese_fir") & (t.height_source == "measured") & (t.status == "alive")]
    m = fit_dbh_model(own.height_m, own.dbh_cm)
    x, y = np.log(own.height_m.to_numpy()), np.log(own.dbh_cm.to_numpy())
    b, a = np.polyfit(x, y, 1)
    np.testing.assert_allclose(m.coef, (a, b), rtol=1e-10)
    resid = y - (a + b * x)
    rse = np.sqrt(np.sum(resid**2) / (len(x) - 2))
    assert m.rse == pytest.approx(rse, rel=1e-10)
    assert m.n == 40 and m.h_range_m == (own.height_m.min(), own.height_m.max())
    # slope variance of simple regression: rse^2 / Sxx
    assert m.cov[1][1] == pytest.approx(rse**2 / np.sum((x - x.mean()) ** 2), rel=1e-9)
    d, flag = m.predict([10.0, 40.0])
    np.testing.assert_allclose(d, np.exp(a + b * np.log([10.0, 40.0])) * np.exp(rse**2 / 2), rtol=1e-12)
    assert flag.tolist() == [False, True]  # 40 m is taller than every fitted tree
    assert DbhModel.from_dict(m.to_dict()) == m
    # one draw: ln D - ln-scale mean has SD rse
    rng = np.random.default_rng(5)
    e = np.log(m.draw(rng, np.full(20000, 10.0))) - (a + b * np.log(10.0))
    assert e.std() == pytest.approx(rse, rel=0.03) and abs(e.mean()) < 4 * rse / np.sqrt(e.size)


def test_fit_dbh_model_with_crowns_against_normal_equations():
    rng = np.random.default_rng(2)
    h, cd = rng.uniform(3, 25, 50), rng.uniform(1, 8, 50)
    d = np.exp(-0.7 + 1.1 * np.log(h) + 0.4 * np.log(cd) + rng.normal(0, 0.1, 50))
    m = fit_dbh_model(h, d, cd, form="log_h_cd")
    X = np.c_[np.ones(50), np.log(h), np.log(cd)]
    beta = np.linalg.solve(X.T @ X, X.T @ np.log(d))
    np.testing.assert_allclose(m.coef, beta, rtol=1e-9)
    _, flag = m.predict([10.0, 10.0], [4.0, 20.0])
    assert flag.tolist() == [False, True]  # a 20 m crown is outside the fitted crowns


def test_fit_dbh_models_groups_and_pooled():
    t = field_trees()
    models = fit_dbh_models(t)
    assert set(models) == {"*", "chinese_fir", "masson_pine"}  # camellia (5 trees) uses the pooled model
    assert models["chinese_fir"].n == 40  # the modelled height and the dead tree are left out
    assert models["*"].n == 75
    with pytest.raises(FieldError, match="at least 10"):
        fit_dbh_model([5.0] * 4, [3.0] * 4)


# -- carbon -----------------------------------------------------------------------------------------------------

def _hand_dbh(t, group, h):
    """ln-ln fit by numpy.polyfit on the usable trees of a group (None: all), Baskerville-corrected at h."""
    ok = (t.height_source == "measured") & (t.status == "alive")
    if group is not None:
        ok &= t.species_group == group
    x, y = np.log(t.height_m[ok].to_numpy()), np.log(t.dbh_cm[ok].to_numpy())
    b, a = np.polyfit(x, y, 1)
    rse = np.sqrt(np.sum((y - a - b * x) ** 2) / (len(x) - 2))
    return np.exp(a + b * np.log(h) + rse**2 / 2)


def test_tree_carbon_three_hand_trees(registry):
    field = field_trees()
    models = fit_dbh_models(field)
    trees = pd.DataFrame({"height_m": [14.0, 18.0, 6.0],
                          "species_group": ["chinese_fir", "masson_pine", "camellia_oleifera"]})
    out = tree_carbon(trees, registry, models, height_sd_m=0.0, draws=50, dbh_error=False, dbh_coef_error=False,
                      model_error=False)
    d_fir = _hand_dbh(field, "chinese_fir", 14.0)
    d_pine = _hand_dbh(field, "masson_pine", 18.0)
    d_cam = _hand_dbh(field, None, 6.0)
    np.testing.assert_allclose(out.dbh_cm, [d_fir, d_pine, d_cam], rtol=1e-9)
    assert out.dbh_source.tolist() == ["dbh_model:chinese_fir:log_h", "dbh_model:masson_pine:log_h",
                                       "dbh_model:*:log_h"]
    assert d_fir > 5  # LY/T 2264-2014 aboveground, DBH > 5 cm row: B = 0.065388 D^2.01735 H^0.49425
    agb_fir = 0.065388 * d_fir**2.01735 * 14.0**0.49425
    # Xiang et al. 2016, Masson pine: stem, branches, foliage exp(a + b ln D) each times its correction factor
    agb_pine = sum(cf * np.exp(a + b * np.log(d_pine)) for a, b, cf in
                   ((-1.754, 2.154, 1.014), (-5.06, 2.569, 1.106), (-5.595, 2.348, 1.345)))
    # Camellia: Xiang et al. 2016 evergreen broad-leaved equation as a stand-in
    agb_cam = sum(cf * np.exp(a + b * np.log(d_cam)) for a, b, cf in
                  ((-2.567, 2.532, 1.041), (-1.603, 1.905, 1.297), (-3.412, 2.131, 1.27)))
    np.testing.assert_allclose(out.agb_kg, [agb_fir, agb_pine, agb_cam], rtol=1e-9)
    np.testing.assert_allclose(out.agb_kg_plugin, [agb_fir, agb_pine, agb_cam], rtol=1e-9)
    # a tree alone: IPCC 2019 Table 4.4 subtropical humid Asia R = 0.230 (AGB <= 125 t/ha);
    # carbon fractions: Chinese fir 0.5003 above / 0.488 below (LY/T 2264-2014), others IPCC 0.47
    r = 0.230
    carbon = [agb_fir * (0.5003 + r * 0.488), agb_pine * 0.47 * (1 + r), agb_cam * 0.47 * (1 + r)]
    np.testing.assert_allclose(out.bgb_kg, np.array([agb_fir, agb_pine, agb_cam]) * r, rtol=1e-12)
    np.testing.assert_allclose(out.carbon_kg, carbon, rtol=1e-9)
    np.testing.assert_allclose(out.co2e_kg, np.array(carbon) * 44 / 12, rtol=1e-12)
    # no error source on: every draw is the deterministic tree, the expectation is the plug-in value
    np.testing.assert_allclose(out.carbon_kg_plugin, carbon, rtol=1e-9)
    assert out.carbon_kg_sd.max() < 1e-9 * out.carbon_kg.max()
    np.testing.assert_allclose(out.co2e_kg_p05, out.co2e_kg, rtol=1e-9)


def test_dbh_residual_alone_spreads_ln_carbon_by_b_times_rse(registry):
    models = fit_dbh_models(field_trees())
    rse = models["chinese_fir"].rse
    trees = pd.DataFrame({"height_m": [16.0], "species_group": ["chinese_fir"]})
    out = tree_carbon(trees, registry, models, height_sd_m=0.0, draws=4000, seed=3, dbh_coef_error=False,
                      model_error=False)
    # carbon is proportional to D^2.01735 (LY/T 2264-2014), so ln carbon has SD 2.01735 * rse; a normal's
    # 5-95 % range is 2 * 1.645 SD
    sd_ln = np.log(out.carbon_kg_p95[0] / out.carbon_kg_p05[0]) / (2 * Z95)
    assert sd_ln / 2.01735 == pytest.approx(rse, rel=0.06)
    # mean of a log-normal: exp(b^2 rse^2 / 2) above the value at the (median) DBH exp(mu)
    med = out.carbon_kg_plugin[0] / np.exp(rse**2 / 2) ** 2.01735
    assert out.carbon_kg[0] == pytest.approx(med * np.exp((2.01735 * rse) ** 2 / 2), rel=0.01)
    # the plug-in value (allometry at the expected DBH) is low by exp(b (b - 1) rse^2 / 2)
    assert out.carbon_kg[0] / out.carbon_kg_plugin[0] == pytest.approx(
        np.exp(2.01735 * 1.01735 * rse**2 / 2), rel=0.01)


def _village(n_labels=4, per_label=150, seed=1):
    rng = np.random.default_rng(seed)
    n = n_labels * per_label
    return (pd.DataFrame({"height_m": rng.uniform(6, 20, n), "species_group": "chinese_fir"}),
            np.repeat([f"v{k}" for k in range(n_labels)], per_label))


def test_totals_from_summed_draws_independent_and_shared(registry):
    trees, labels = _village()
    models = fit_dbh_models(field_trees())
    # independent errors only (height, DBH residual, equation residual): the total's variance is the sum
    out, tot = tree_carbon(trees, registry, models, height_sd_m=1.0, draws=1500, seed=4, totals_by=labels,
                           dbh_coef_error=False)
    per = out.groupby(labels).agg(mean=("carbon_kg", "sum"), det=("carbon_kg_plugin", "sum"),
                                  var=("carbon_kg_sd", lambda s: np.sum(s**2)), n=("carbon_kg", "size"))
    tot = tot.set_index("label").loc[per.index]
    np.testing.assert_allclose(tot.carbon_kg, per["mean"], rtol=1e-10)
    np.testing.assert_allclose(tot.carbon_kg_plugin, per["det"], rtol=1e-12)
    assert (tot.n_trees == per["n"]).all()
    ratio = tot.carbon_kg_sd / np.sqrt(per["var"])
    assert ratio.between(0.9, 1.1).all(), ratio.tolist()  # SD of an SD estimate from 1500 draws: ~2 %
    # with the DBH model's coefficients drawn once per draw for all trees, the errors no longer cancel
    few = field_trees().query("species_group == 'chinese_fir'").iloc[:12]
    shared = fit_dbh_models(few)
    out2, tot2 = tree_carbon(trees, registry, shared, height_sd_m=1.0, draws=1500, seed=4, totals_by=labels)
    var2 = out2.groupby(labels)["carbon_kg_sd"].apply(lambda s: np.sum(s**2))
    ratio2 = tot2.set_index("label").loc[var2.index, "carbon_kg_sd"] / np.sqrt(var2)
    assert (ratio2 > 1.5).all(), ratio2.tolist()
    # labels left empty are left out of the totals
    lab = labels.astype(object)
    lab[:10] = None
    _, tot3 = tree_carbon(trees, registry, models, height_sd_m=1.0, draws=60, totals_by=lab)
    assert tot3.n_trees.sum() == len(trees) - 10


def test_posterior_branch_mean_matches_chave2014(registry):
    rng = np.random.default_rng(8)
    n = 200
    trees = pd.DataFrame({"height_m": rng.uniform(8, 25, n), "species_group": "tropical_measured_wd",
                          "wood_density_g_cm3": 0.6})
    models = fit_dbh_models(field_trees())
    out = tree_carbon(trees, registry, models, height_sd_m=0.0, draws=1000, seed=2, dbh_error=False,
                      dbh_coef_error=False)
    # Chave et al. 2014 eq. 4 as printed: AGB = 0.0673 (rho D^2 H)^0.976, kg
    agb = 0.0673 * (0.6 * out.dbh_cm**2 * out.height_m) ** 0.976
    np.testing.assert_allclose(out.agb_kg_plugin, agb, rtol=1e-12)
    # the posterior draws (BIOMASS param_4) reproduce the printed mean equation to within 1.5 %
    assert out.carbon_kg.sum() == pytest.approx(out.carbon_kg_plugin.sum(), rel=0.015)
    assert (out.carbon_kg_sd > 0.25 * out.carbon_kg).all()  # residual SD 0.357 on the log scale


# -- register ---------------------------------------------------------------------------------------------------

def test_tree_ids_stable_and_collision_suffix():
    x = np.array([500100.2, 500100.4, 500200.0, 500099.6, 500100.0])
    y = np.array([3300020.1, 3300019.9, 3300005.0, 3300020.2, 3300020.45])
    ids = tree_ids(x, y, 4549)
    # four trees round to (500100, 3300020); ordered by exact x: 500099.6, 500100.0, 500100.2, 500100.4
    assert ids.tolist() == ["T4549-500100-3300020-3", "T4549-500100-3300020-4", "T4549-500200-3300005",
                            "T4549-500100-3300020-1", "T4549-500100-3300020-2"]
    perm = np.random.default_rng(0).permutation(5)
    assert tree_ids(x[perm], y[perm], 4549).tolist() == ids[perm].tolist()
    assert tree_ids([10.5, -2.5], [0.49, 7.5], 32650).tolist() == ["T32650-11-0", "T32650--2-8"]  # half-up


def _register_inputs(n=5):
    x = 500000 + np.arange(n) * 3.0
    y = np.full(n, 3300000.0)
    df = pd.DataFrame({"tree_id": tree_ids(x, y, 4549), "x": x, "y": y, "height_m": np.linspace(5, 15, n),
                       "carbon_kg": np.linspace(10, 50, n)})
    return df, [Point(a, b).buffer(1.2) for a, b in zip(x, y)]


def test_write_register_files_and_crs(tmp_path):
    df, crowns = _register_inputs()
    paths = write_register(df, crowns, "EPSG:4549", tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["trees.gpkg", "trees.parquet"]
    pts = gpd.read_file(paths["gpkg"], layer="trees")
    polys = gpd.read_file(paths["gpkg"], layer="crowns")
    pq = gpd.read_parquet(paths["parquet"])
    for g in (pts, polys, pq):
        assert g.crs.to_epsg() == 4549
        assert sorted(g.tree_id) == sorted(df.tree_id)
    assert (pts.geom_type == "Point").all() and (polys.geom_type == "Polygon").all()
    pq = pq.set_index("tree_id").loc[df.tree_id]
    np.testing.assert_allclose(pq.geometry.x, df.x)
    np.testing.assert_allclose(pq.carbon_kg, df.carbon_kg)
    np.testing.assert_allclose(polys.set_index("tree_id").loc[df.tree_id].area, np.pi * 1.2**2, rtol=0.01)


def test_write_register_failure_leaves_nothing(tmp_path):
    df, crowns = _register_inputs()
    with pytest.raises(FieldError, match="4 crown polygons for 5 trees"):
        write_register(df, crowns[:4], "EPSG:4549", tmp_path / "a")
    assert not (tmp_path / "a").exists() or os.listdir(tmp_path / "a") == []
    # a column GeoParquet cannot store fails after the GeoPackage is written: neither file appears
    bad = df.assign(note=[1, "a", 2.0, None, 3])
    with pytest.raises(Exception):
        write_register(bad, crowns, "EPSG:4549", tmp_path / "b")
    assert os.listdir(tmp_path / "b") == []
    # and an earlier register stays as it was
    write_register(df, crowns, "EPSG:4549", tmp_path / "c")
    before = {f: (tmp_path / "c" / f).read_bytes() for f in os.listdir(tmp_path / "c")}
    with pytest.raises(Exception):
        write_register(bad, crowns, "EPSG:4549", tmp_path / "c")
    assert {f: (tmp_path / "c" / f).read_bytes() for f in os.listdir(tmp_path / "c")} == before


def test_summarise_by_polygons_and_outside():
    polys = gpd.GeoDataFrame({"village": ["V1", "V2", "V3"], "forest": [True, False, True]},
                             geometry=[box(0, 0, 10, 10), box(10, 0, 20, 10), box(30, 0, 40, 10)], crs=4549)
    # inside V1, on the V1/V2 edge, inside V2, outside all, on V3's outer edge
    trees = gpd.GeoDataFrame(geometry=gpd.points_from_xy([5, 10, 15, 25, 30], [5, 5, 5, 5, 5]), crs=4549)
    labels, counts = summarise_by_polygons(trees, polys, "village")
    assert labels.tolist() == ["V1", "V1", "V2", None, "V3"]
    assert counts.set_index("village").n_trees.to_dict() == {"V1": 2, "V2": 1, "V3": 1}
    assert outside(trees, polys, polys.forest).tolist() == [False, False, True, True, False]
    # polygons in another CRS are reprojected to the trees'
    labels_ll, _ = summarise_by_polygons(trees.to_crs(4326), polys, "village")
    assert labels_ll.tolist()[:4] == ["V1", labels_ll[1], "V2", None] and labels_ll[1] in ("V1", "V2")


# -- epoch matching ---------------------------------------------------------------------------------------------

def _brute_force(a, b, max_d, max_drop):
    """All one-to-one matchings among candidate pairs: the largest, then the shortest in total distance."""
    cand = {}
    for i, j in itertools.product(range(len(a)), range(len(b))):
        d = np.hypot(a.x[i] - b.x[j], a.y[i] - b.y[j])
        if d <= max_d and not (a.height_m[i] - b.height_m[j] > max_drop):
            cand[(i, j)] = d
    best = (0, 0.0, ())
    pairs = list(cand)
    for k in range(1, min(len(a), len(b)) + 1):
        for combo in itertools.combinations(pairs, k):
            if len({p[0] for p in combo}) < k or len({p[1] for p in combo}) < k:
                continue
            total = sum(cand[p] for p in combo)
            if k > best[0] or (k == best[0] and total < best[1]):
                best = (k, total, combo)
    return {(a.tree_id[i], b.tree_id[j]) for i, j in best[2]}, best[1]


def test_match_epochs_against_brute_force():
    rng = np.random.default_rng(11)
    for trial in range(12):
        xy = rng.uniform(0, 4, (6, 2))
        a = pd.DataFrame({"tree_id": [f"a{i}" for i in range(6)], "x": xy[:, 0], "y": xy[:, 1],
                          "height_m": rng.uniform(8, 12, 6), "carbon_kg": rng.uniform(20, 40, 6)})
        xyb = xy + rng.normal(0, 0.8, (6, 2))
        b = pd.DataFrame({"tree_id": [f"b{i}" for i in range(6)], "x": xyb[:, 0], "y": xyb[:, 1],
                          "height_m": a.height_m + rng.normal(0, 2.5, 6), "carbon_kg": rng.uniform(20, 40, 6)})
        want, total = _brute_force(a, b, 2.0, 3.0)
        for max_dense in (1500, 0):  # dense assignment per component, and the sparse solver
            m, lost, new = match_epochs(a, b, max_dense=max_dense)
            assert len(m) == len(want) and m.distance_m.sum() == pytest.approx(total, abs=1e-9)
            assert set(zip(m.id_a, m.id_b)) == want
            assert sorted(lost.tree_id) == sorted(set(a.tree_id) - set(m.id_a))
            assert sorted(new.tree_id) == sorted(set(b.tree_id) - set(m.id_b))
        ia = m.id_a.str[1:].astype(int).to_numpy()
        ib = m.id_b.str[1:].astype(int).to_numpy()
        np.testing.assert_allclose(m.dcarbon_kg, b.carbon_kg.to_numpy()[ib] - a.carbon_kg.to_numpy()[ia])
        np.testing.assert_allclose(m.dheight_m, b.height_m.to_numpy()[ib] - a.height_m.to_numpy()[ia])


def test_match_epochs_lost_new_and_felled():
    a = pd.DataFrame({"tree_id": ["A", "B", "C", "D"], "x": [0.0, 5.0, 10.0, 15.0], "y": 0.0,
                      "height_m": [12.0, 14.0, 9.0, 20.0]})
    # B removed; C moved 0.5 m and grew; D felled and a 3 m sapling stands 0.3 m away; E new
    b = pd.DataFrame({"tree_id": ["a2", "c2", "d2", "e2"], "x": [0.2, 10.5, 15.3, 30.0], "y": 0.0,
                      "height_m": [12.5, 10.0, 3.0, 8.0]})
    m, lost, new = match_epochs(a, b)
    assert list(zip(m.id_a, m.id_b)) == [("A", "a2"), ("C", "c2")]
    np.testing.assert_allclose(m.distance_m, [0.2, 0.5])
    assert sorted(lost.tree_id) == ["B", "D"]
    assert sorted(new.tree_id) == ["d2", "e2"]
    assert m.dcarbon_kg.isna().all()


def test_totals_over_several_levels_equal_one_level_at_a_time(registry):
    trees, labels = _village(n_labels=3, per_label=40)
    models = fit_dbh_models(field_trees())
    other = np.where(np.arange(len(trees)) % 2 == 0, "even", None)
    kw = dict(height_sd_m=1.0, draws=200, seed=5)
    _, t1 = tree_carbon(trees, registry, models, totals_by=labels, **kw)
    _, t2 = tree_carbon(trees, registry, models, totals_by=other, **kw)
    _, both = tree_carbon(trees, registry, models, totals_by=pd.DataFrame({"village": labels, "half": other}), **kw)
    assert both.level.tolist() == ["village"] * 3 + ["half"]
    cols = ["n_trees", "carbon_kg", "carbon_kg_sd", "carbon_kg_p05", "carbon_kg_p95"]
    np.testing.assert_allclose(both[both.level == "village"][cols].to_numpy(float), t1[cols].to_numpy(float), rtol=1e-12)
    np.testing.assert_allclose(both[both.level == "half"][cols].to_numpy(float), t2[cols].to_numpy(float), rtol=1e-12)
    # by hand: the "half" total is the sum over the even rows, a tree in both levels counted once in each
    assert both[both.level == "half"].n_trees.iloc[0] == (len(trees) + 1) // 2
