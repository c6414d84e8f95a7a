"""Ground plots: designs, expansion factors, Monte Carlo uncertainty and inventory inputs."""

from __future__ import annotations

import logging

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely

from forestcarbon.config import SubplotConfig, default_allometry_path
from forestcarbon.errors import AllometryError, FieldError
from forestcarbon.models.allometry import load_registry, tree_biomass
from forestcarbon.models.uncertainty import ErrorModel, dbh_draw, monte_carlo
from forestcarbon.vector.inventory import read_trees
from forestcarbon.models.plots import plot_biomass
from forestcarbon.vector.plots import read_plots

from .conftest import shared

CRS = "EPSG:4549"


@pytest.fixture(scope="module")
def reg():
    return load_registry(default_allometry_path())


def _chave(d, h, wd):
    return 0.0673 * (wd * d**2 * h) ** 0.976


def _points(tmp_path, rows, name="plots.gpkg"):
    gdf = gpd.GeoDataFrame(rows, geometry=[shapely.Point(500_000 + 100 * i, 3_200_000) for i in range(len(rows))], crs=CRS)
    p = tmp_path / name
    gdf.to_file(p)
    return p


def test_nested_design_slope_and_partial_area_expansion(tmp_path, reg):
    """Hand computation: a 3-ring nested circle on a 20 degree slope, 80 % inside the stand."""
    designs = {"n3": [SubplotConfig(min_dbh_cm=5, radius_m=5.64), SubplotConfig(min_dbh_cm=15, radius_m=11.28),
                      SubplotConfig(min_dbh_cm=30, size_m2=1000.0)]}
    path = _points(tmp_path, [{"plot_id": "A", "design": "n3", "slope_deg": 20.0, "area_fraction": 0.8},
                              {"plot_id": "B", "radius_m": 10.0, "slope_deg": 30.0}])
    plots = read_plots(path, None, "plot_id", CRS, designs=designs)
    cos20, cos30 = np.cos(np.radians(20)), np.cos(np.radians(30))
    a = plots.set_index("plot_id")
    assert a.loc["A", "area_ha"] == pytest.approx(1000 * cos20 * 0.8 / 1e4, rel=1e-12)  # outer ring = 1000 m2 square
    assert a.loc["B", "area_ha"] == pytest.approx(np.pi * 100 * cos30 / 1e4, rel=1e-12)
    assert a.geometry["B"].area == pytest.approx(np.pi * 100 * cos30, rel=1e-3)  # horizontal footprint
    trees = pd.DataFrame({"plot_id": ["A"] * 4 + ["B"], "tree_id": list("12345"), "species": "杉木",
                          "dbh_cm": [3.0, 10.0, 20.0, 40.0, 12.0], "height_m": [3.0, 9.0, 15.0, 22.0, 10.0],
                          "status": "alive"})
    t, p = plot_biomass(trees, plots, reg, designs=designs)
    assert list(t.tree_id) == ["2", "3", "4", "5"]  # DBH 3 cm is below the design's 5 cm threshold
    f = cos20 * 0.8
    exp = {"2": 1e4 / (np.pi * 5.64**2 * f), "3": 1e4 / (np.pi * 11.28**2 * f), "4": 1e4 / (1000 * f),
           "5": 1e4 / (np.pi * 100 * cos30)}
    np.testing.assert_allclose(t.set_index("tree_id").expansion_ha.loc[list(exp)], list(exp.values()), rtol=1e-12)
    agb = t.set_index("tree_id").agb_kg
    stand_a = sum(agb[k] * exp[k] for k in "234") / 1000
    assert p.set_index("plot_id").loc["A", "agb_mg_ha"] == pytest.approx(stand_a, rel=1e-12)
    assert p.set_index("plot_id").loc["A", "stems_ha"] == pytest.approx(sum(exp[k] for k in "234"), rel=1e-12)


def test_dominant_height_equation_mix_and_dead_trees(tmp_path, reg):
    """Dominant height = mean height of the 100 thickest trees per ha; dead trees are counted, not summed."""
    path = _points(tmp_path, [{"plot_id": "P", "size_m2": 400.0}])  # 0.04 ha: one tree = 25 stems/ha
    plots = read_plots(path, None, "plot_id", CRS)
    d = [30, 28, 26, 24, 22, 10, 4]  # the 4 cm tree takes the D < 5 cm equation
    h = [20, 19, 18, 17, 16, 9, 3.5]
    trees = pd.DataFrame({"plot_id": "P", "tree_id": [str(i) for i in range(8)], "species": ["杉木"] * 7 + ["杉木"],
                          "dbh_cm": d + [35.0], "height_m": h + [21.0], "status": ["alive"] * 7 + ["dead"]})
    t, p = plot_biomass(trees, plots, reg)
    row = p.iloc[0]
    assert row.dominant_height_m == pytest.approx(np.mean([20, 19, 18, 17]))  # 4 thickest live trees = 100/ha
    assert row.n_trees == 7 and row.n_dead == 1
    live = t[t.status == "alive"]
    assert row.agb_mg_ha == pytest.approx(live.agb_kg.sum() * 25 / 1000, rel=1e-12)
    small = 0.190713 * 4**1.35226 * 3.5**0.49452  # LY/T 2264 by hand
    share = 100 * small / live.agb_kg.sum()
    assert row.equation_mix == (f"chinese_fir:lyt2264_cula_agb_d5plus {100 - share:.1f}%; "
                                f"chinese_fir:lyt2264_cula_agb_d5minus {share:.1f}%")


def test_moso_bamboo_per_culm_equation_by_hand(reg):
    t = pd.DataFrame({"species": ["毛竹", "Phyllostachys edulis"], "dbh_cm": [10.0, 8.0], "age": [2, 1]})
    out = tree_biomass(t, reg)  # no heights needed: the culm equation uses D and age
    ref = [747.787 * 10**2.771 * (0.148 * 2 / 2.028) ** 5.555 + 3.772, 747.787 * 8**2.771 * (0.148 / 1.028) ** 5.555 + 3.772]
    np.testing.assert_allclose(out.agb_kg, ref, rtol=1e-12)
    assert out.equation_id.str.startswith("moso_bamboo:zhou_jiang2004_moso_culm").all()
    assert not out.equation_verified.any()
    with pytest.raises(FieldError, match=r"needs a positive culm 'age'; rows \[3\]"):
        tree_biomass(t.assign(age=[2, None]), reg)


def test_volume_bcef_form_and_species_table(tmp_path):
    yml = tmp_path / "allom.yaml"
    (tmp_path / "sp.csv").write_text("species_code,latin_name,chinese_name,common_name,group\nXX,Pinus test,测试松,test pine,vol\n",
                                     encoding="utf-8")
    yml.write_text("""
version: t
species_table: sp.csv
defaults:
  carbon_fraction: 0.5
  carbon_fraction_source: test
  root_shoot: {threshold_agb_mg_ha: 125, low: 0.2, high: 0.25, source: test}
groups:
  vol:
    aboveground:
      - {id: v1, form: volume_bcef, a: 0.0001, b: 1.9, c: 0.9, bcef_mg_m3: 0.7, source: "test volume table"}
""", encoding="utf-8")
    r = load_registry(yml)
    out = tree_biomass(pd.DataFrame({"species": ["测试松", "Pinus test", "XX"], "dbh_cm": [20.0] * 3, "height_m": [15.0] * 3}), r)
    v = 0.0001 * 20**1.9 * 15**0.9
    np.testing.assert_allclose(out.agb_kg, v * 0.7 * 1000, rtol=1e-12)
    np.testing.assert_allclose(out.bgb_kg, out.agb_kg * 0.2, rtol=1e-12)
    bad = yml.read_text(encoding="utf-8").replace("bcef_mg_m3: 0.7, ", "")
    yml.write_text(bad, encoding="utf-8")
    with pytest.raises(AllometryError, match="volume_bcef equation 'v1' needs coefficients bcef_mg_m3"):
        load_registry(yml)


def test_forced_equation_and_dbh_range_policy(reg, caplog):
    t = pd.DataFrame({"species": ["杉木", "马尾松"], "dbh_cm": [20.0, 95.0], "height_m": [15.0, 30.0]})
    out = tree_biomass(t, reg, equation="lyt2264_cula_agb_d5plus")
    np.testing.assert_allclose(out.agb_kg, 0.065388 * t.dbh_cm**2.01735 * t.height_m**0.49425, rtol=1e-12)
    assert (out.species_source == "forced").all()
    out = tree_biomass(t, reg, equation="xiang2016_pima")
    assert list(out.dbh_in_range) == [True, False]  # Xiang et al. 2016 sampled Masson pine of 2.2-58 cm
    with caplog.at_level(logging.WARNING):
        tree_biomass(t, reg, equation="xiang2016_pima")
    assert "1 trees have DBH outside every range" in caplog.text and "rows [3]" in caplog.text
    with pytest.raises(AllometryError, match=r"rows \[3\], dbh_cm \[95.0\].*'reject'"):
        tree_biomass(t, reg, equation="xiang2016_pima", dbh_out_of_range="reject")
    with pytest.raises(AllometryError, match="no equation with id 'nope'"):
        tree_biomass(t, reg, equation="nope")


def test_inventory_excel_with_chinese_columns(tmp_path):
    df = pd.DataFrame({"样地号": ["1", "1", "2"], "树号": ["a", "b", "a"], "树种": ["杉木", "木荷", "马尾松"],
                       "胸径": [12.0, 20.5, 18.0], "树高": [10.0, 14.0, 13.0], "状态": ["活", "活", "死"]})
    x = tmp_path / "trees.xlsx"
    df.to_excel(x, index=False)
    cols = {"plot_id": "样地号", "tree_id": "树号", "species": "树种", "dbh_cm": "胸径", "height_m": "树高", "status": "状态"}
    t = read_trees(x, cols)
    assert list(t.status) == ["alive", "alive", "dead"] and t.dbh_cm.tolist() == [12.0, 20.5, 18.0]
    with pytest.raises(FieldError, match="mapped columns not in the file: dbh_cm <- 'DBH'"):
        read_trees(x, {**cols, "dbh_cm": "DBH"})


@pytest.mark.parametrize("edit,msg", [
    (lambda t: t.assign(tree_id=["1", "1", "2"]), r"duplicated tree ids \(plot_id, tree_id\) \[\('A', '1'\)\] in rows \[2, 3\]"),
    (lambda t: t.assign(status=["alive", "gone", "dead"]), r"status' must be alive or dead; rows \[3\] have \['gone'\]"),
    (lambda t: t.assign(dbh_cm=["12", "x", "3"]), r"column 'dbh_cm' is not numeric in rows \[3\]"),
])
def test_bad_tree_tables_name_rows(tmp_path, edit, msg):
    t = pd.DataFrame({"plot_id": ["A", "A", "B"], "tree_id": ["1", "2", "1"], "species": "杉木", "dbh_cm": [12.0, 14.0, 9.0],
                      "height_m": [10.0, 11.0, 8.0], "status": "alive"})
    p = tmp_path / "t.csv"
    edit(t).to_csv(p, index=False)
    with pytest.raises(FieldError, match=msg):
        read_trees(p)


def test_bad_plots_and_orphan_trees(tmp_path, reg):
    with pytest.raises(FieldError, match=r"area_fraction must be in \(0, 1\]; plots \['A'\] have \[0.0\]"):
        read_plots(_points(tmp_path, [{"plot_id": "A", "radius_m": 10.0, "area_fraction": 0.0}]), None, "plot_id", CRS)
    with pytest.raises(FieldError, match=r"plots \['A'\] have area <= 0"):
        read_plots(_points(tmp_path, [{"plot_id": "A", "radius_m": 0.0}], "z.gpkg"), None, "plot_id", CRS)
    with pytest.raises(FieldError, match=r"plots \['A'\] name unknown designs \['xx'\]"):
        read_plots(_points(tmp_path, [{"plot_id": "A", "design": "xx"}], "d.gpkg"), None, "plot_id", CRS)
    plots = read_plots(_points(tmp_path, [{"plot_id": "A", "radius_m": 10.0}], "ok.gpkg"), None, "plot_id", CRS)
    trees = pd.DataFrame({"plot_id": ["A", "Q"], "tree_id": ["1", "2"], "species": "杉木", "dbh_cm": [10.0, 11.0],
                          "height_m": [9.0, 9.0]})
    with pytest.raises(FieldError, match=r"rows \[3\] name plots not in the plots layer: \['Q'\]"):
        plot_biomass(trees, plots, reg)


def test_chave2004_dbh_errors_have_the_published_spread():
    """5 % of trees get SD 4.64 cm, the others 0.0062 D + 0.0904 (Chave et al. 2004, p. 412)."""
    rng = np.random.default_rng(1)
    d = np.full(200_000, 30.0)
    draw = dbh_draw(rng, d, "chave2004")
    expected_var = 0.95 * (0.0062 * 30 + 0.0904) ** 2 + 0.05 * 4.64**2
    assert np.var(draw - d) == pytest.approx(expected_var, rel=0.03)
    assert (np.abs(draw - d) > 2.0).mean() == pytest.approx(0.05 * 2 * 0.3333, abs=0.004)  # P(|N(0,4.64)| > 2) = 0.667


def test_model_error_alone_matches_lognormal_moments(tmp_path):
    """Only the equation residual (RSE 0.3) of an equation that estimates the mean: the plot sum's mean is
    the deterministic sum (mean-one residuals, no second log-bias correction) and its SD the log-normal
    one, sqrt(sum agb^2 (exp(s^2) - 1))."""
    yml = tmp_path / "allom.yaml"
    yml.write_text("""
version: t
defaults: {carbon_fraction: 0.47, carbon_fraction_source: t, root_shoot: {ratio: 0.2, source: t}}
groups:
  g:
    aboveground:
      - {id: e1, form: power, a: 0.1, b: 2.4, log_bias: included, rse_log: 0.3, rse_source: t, source: t}
""", encoding="utf-8")
    r = load_registry(yml)
    rng = np.random.default_rng(3)
    n = 300
    out = tree_biomass(pd.DataFrame({"plot_id": "P", "species": "g", "dbh_cm": rng.uniform(10, 60, n)}), r)
    mc = monte_carlo(out, r, ErrorModel(draws=4000, seed=5, dbh_error=None), weight=None).iloc[0]
    agb = (0.1 * out.dbh_cm.to_numpy() ** 2.4) / 1000
    sd = np.sqrt(np.sum(agb**2) * (np.exp(0.3**2) - 1))
    assert mc.agb_mg_mc_mean == pytest.approx(agb.sum(), abs=3 * sd / np.sqrt(4000))
    assert mc.agb_mg_mc_sd == pytest.approx(sd, rel=0.05)
    again = monte_carlo(out, r, ErrorModel(draws=4000, seed=5, dbh_error=None), weight=None).iloc[0]
    assert again.agb_mg_mc_q97_5 == mc.agb_mg_mc_q97_5  # seeded: reproducible


# BIOMASS 3.0 (umr-amap/BIOMASS @abd33c2) AGBmonteCarlo on NouraguesTrees, R 4.2.2, run once by
# tests/reference/biomass_agbmontecarlo_nouragues.R: model error only (Dpropag = NULL, WD = 0.643 with
# errWD = 0, H = retrieveH(D, modelHD(NouraguesHD, "log2", useWeight = FALSE)) with errH = 0).
# Per plot: sum of computeAGB (Mg); AGBmonteCarlo sdAGB (Mg) with set.seed(10) and set.seed(1), each pooled
# over 10 x 1000 draws; and the closed-form expectation of the sum over BIOMASS's 1001 posterior rows.
BIOMASS_CASE_A = {  # plot: (computeAGB sum, sdAGB seed 10, sdAGB seed 1, E over the posterior)
    "201": (422.761432728, 17.3266247525, 17.4669064289, 422.17627),
    "204": (467.326187445, 18.0572048845, 18.0205166901, 466.66462),
    "213": (353.611479048, 15.3293517478, 15.6000464007, 353.12030),
    "223": (284.109373458, 11.3939474597, 11.6472996732, 283.73888),
}


def test_monte_carlo_matches_biomass_agbmontecarlo_on_nouragues(reg):
    """The Chave 2014 Monte Carlo against BIOMASS AGBmonteCarlo itself: same deterministic sums, a mean equal
    to the deterministic estimate within Monte Carlo error (and to BIOMASS's posterior expectation), and an SD
    within 10 % of BIOMASS's."""
    trees = pd.read_csv(shared("plots/BIOMASS/NouraguesTrees.csv"))
    hd = pd.read_csv(shared("plots/BIOMASS/NouraguesHD.csv")).dropna(subset=["H"])
    X = np.c_[np.ones(len(hd)), np.log(hd.D), np.log(hd.D) ** 2]  # BIOMASS modelHD "log2", unweighted
    coef, res, *_ = np.linalg.lstsq(X, np.log(hd.H), rcond=None)
    rse_log = np.sqrt(res[0] / (len(hd) - 3))
    np.testing.assert_allclose(coef, [0.679574125836202, 1.03083409476041, -0.0835936422190924], rtol=1e-9)
    lnD = np.log(trees.D)
    h = np.exp(coef[0] + coef[1] * lnD + coef[2] * lnD**2 + rse_log**2 / 2)  # retrieveH: Baskerville
    t = pd.DataFrame({"plot_id": trees.Plot.astype(str), "species": "tropical_measured_wd", "dbh_cm": trees.D,
                      "height_m": h, "wood_density_g_cm3": 0.643})
    out = tree_biomass(t, reg)
    draws = 3000
    mc = monte_carlo(out, reg, ErrorModel(draws=draws, seed=11, dbh_error=None), weight=None).set_index("plot_id")
    for plot, (det, sd10, sd1, expect) in BIOMASS_CASE_A.items():
        assert out.agb_kg[out.plot_id == plot].sum() / 1000 == pytest.approx(det, rel=1e-9)
        m, sd = mc.loc[plot, "agb_mg_mc_mean"], mc.loc[plot, "agb_mg_mc_sd"]
        se = sd / np.sqrt(draws)
        assert abs(m - expect) < 3.5 * se, (plot, m, expect, se)
        # BIOMASS's posterior sits 0.14 % below the printed 0.0673: deterministic within MC error plus that
        assert abs(m / det - 1) < 0.0014 + 3.5 * se / det
        assert sd == pytest.approx((sd10 + sd1) / 2, rel=0.10)


def _nouragues(reg):
    """NouraguesTrees: four 1-ha plots from their UTM corners; heights from a log2 H-D model fitted on
    NouraguesHD (as BIOMASS modelHD 'log2'); wood density = mean of NouraguesPlot.csv's measured values."""
    trees = pd.read_csv(shared("plots/BIOMASS/NouraguesTrees.csv"))
    coords = pd.read_csv(shared("plots/BIOMASS/NouraguesCoords.csv"))
    hd = pd.read_csv(shared("plots/BIOMASS/NouraguesHD.csv")).dropna(subset=["H"])
    wd = pd.read_csv(shared("plots/BIOMASS/NouraguesPlot.csv")).WD
    X = np.c_[np.ones(len(hd)), np.log(hd.D), np.log(hd.D) ** 2]
    coef, *_ = np.linalg.lstsq(X, np.log(hd.H), rcond=None)
    resid_sd_m = float(np.std(hd.H - np.exp(X @ coef), ddof=3))
    polys = []
    for plot, c in coords.groupby("Plot"):
        c = c.sort_values(["Xfield", "Yfield"])
        (a, b, d_, e) = [tuple(v) for v in c[["Xutm", "Yutm"]].to_numpy()]
        polys.append({"plot_id": str(plot), "geometry": shapely.Polygon([a, b, e, d_])})
    plots = gpd.GeoDataFrame(polys, crs="EPSG:32622")
    lnD = np.log(trees.D)
    t = pd.DataFrame({"plot_id": trees.Plot.astype(str), "tree_id": np.arange(len(trees)).astype(str),
                      "species": "tropical_measured_wd", "dbh_cm": trees.D,
                      "height_m": np.exp(coef[0] + coef[1] * lnD + coef[2] * lnD**2), "wood_density_g_cm3": wd.mean(),
                      "xf": trees.Xfield, "yf": trees.Yfield})
    return t, plots, resid_sd_m, float(wd.std())


def test_nouragues_four_plots_with_monte_carlo_intervals(tmp_path, reg):
    t, plots, h_sd, wd_sd = _nouragues(reg)
    p_path = tmp_path / "nouragues.gpkg"
    plots.to_file(p_path)
    fp = read_plots(p_path, None, "plot_id", "EPSG:32622")
    assert np.allclose(fp.area_ha, 1.0, atol=0.03)  # surveyed 100 x 100 m squares
    out, p = plot_biomass(t, fp, reg)
    p = p.set_index("plot_id")
    ref = (_chave(t.dbh_cm, t.height_m, t.wood_density_g_cm3) / 1000).groupby(t.plot_id).sum() / fp.set_index("plot_id").area_ha
    np.testing.assert_allclose(p.agb_mg_ha, ref.loc[p.index], rtol=1e-9)
    errors = ErrorModel(draws=400, seed=0, dbh_error="chave2004", height_sd_m=h_sd, wood_density_sd_g_cm3=wd_sd)
    mc = monte_carlo(out, reg, errors).set_index("plot_id")
    assert ((mc.agb_mg_ha_mc_q2_5 < p.agb_mg_ha) & (p.agb_mg_ha < mc.agb_mg_ha_mc_q97_5)).all()
    # unbiased: the mean is the deterministic value (BIOMASS's posterior sits 0.14 % lower) within MC error
    se = mc.agb_mg_ha_mc_sd / np.sqrt(errors.draws)
    assert ((mc.agb_mg_ha_mc_mean - p.agb_mg_ha * 0.9986).abs() < 4 * se + 0.002 * p.agb_mg_ha).all()
    # fewer trees, wider relative intervals: quarter-hectare subplots > 1-ha plots > all 4 ha together
    quarter = out.assign(q=out.plot_id + "-" + (out.xf % 100 >= 50).astype(str) + (out.yf % 100 >= 50).astype(str))
    rel = {}
    for name, df, by in (("quarter", quarter, "q"), ("plot", out, "plot_id"), ("all", out.assign(a="all"), "a")):
        r = monte_carlo(df, reg, errors, by=by, weight=None)
        rel[name] = float((r.agb_mg_mc_sd / r.agb_mg_mc_mean).mean())
    assert rel["quarter"] > rel["plot"] > rel["all"]
    assert 1.4 < rel["quarter"] / rel["plot"] < 2.8 and 1.4 < rel["plot"] / rel["all"] < 2.8  # ~ sqrt(4)


def test_plots_table_with_xy_shape_and_size(tmp_path, reg):
    """A CSV plots table (centre x/y in EPSG:4490 lon/lat, shape + size) reprojected to the grid CRS."""
    csv = tmp_path / "plots.csv"
    pd.DataFrame({"样地": ["C", "S"], "x": [118.87, 118.88], "y": [28.97, 28.97], "shape": ["circle", "square"],
                  "size_m2": [666.7, 666.7], "survey_date": ["2024-10-02", "2024-10-03"]}).to_csv(csv, index=False)
    plots = read_plots(csv, None, "样地", CRS, plots_crs="EPSG:4490")
    np.testing.assert_allclose(plots.area_ha, 0.06667, rtol=1e-9)
    np.testing.assert_allclose(plots.geometry.area, 666.7, rtol=2e-4)  # 256-gon circle
    assert plots.crs.to_epsg() == 4549 and list(plots.plot_id) == ["C", "S"] and "survey_date" in plots
    with pytest.raises(FieldError, match="needs ground.plots_crs"):
        read_plots(csv, None, "样地", CRS)


def test_trees_cli_forced_equation_from_excel(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    x = tmp_path / "village.xlsx"
    pd.DataFrame({"树种": ["樟树", "香樟"], "胸径": [40.0, 55.0], "树高": [14.0, 18.0]}).to_excel(x, index=False)
    exe = Path(sys.executable).parent / "forestcarbon"
    out = tmp_path / "village.csv"
    r = subprocess.run([str(exe), "trees", str(x), "--out", str(out), "--species-col", "树种", "--dbh-col", "胸径",
                        "--height-col", "树高", "--equation", "lyt2264_cula_agb_d5plus"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    t = pd.read_csv(out)
    np.testing.assert_allclose(t.agb_kg, 0.065388 * t.dbh_cm**2.01735 * t.height_m**0.49425, rtol=1e-12)
    assert (t.species_source == "forced").all() and t.equation_id.str.startswith("chinese_fir:lyt2264_cula_agb_d5plus;").all()


def test_plots_stage_from_config_with_excel_mapping_and_design(tmp_path):
    """The plots stage wired from a configuration: an x/y plots table, an Excel tree list with Chinese
    column names, a nested design and slope; outputs per tree, per plot (with Monte Carlo) and the equations."""
    from forestcarbon.config import config_from_dict
    from forestcarbon.flows.stages import Context, stage_plots
    from forestcarbon.rs.grid import geobox_from_config

    pd.DataFrame({"plot_id": ["A", "B"], "x": [500_050.0, 500_250.0], "y": [3_200_050.0, 3_200_050.0],
                  "design": ["n2", ""], "size_m2": [None, 666.7], "slope_deg": [25.0, 0.0]}).to_csv(tmp_path / "plots.csv", index=False)
    pd.DataFrame({"样地": ["A", "A", "A", "B", "B"], "树号": ["1", "2", "3", "1", "2"],
                  "树种": ["杉木", "杉木", "木荷", "毛竹", "毛竹"], "胸径": [8.0, 22.0, 30.0, 9.0, 11.0],
                  "树高": [7.0, 16.0, 18.0, 12.0, 13.0], "度": [None, None, None, 1, 2]}).to_excel(tmp_path / "trees.xlsx", index=False)
    cfg = config_from_dict({
        "grid": {"crs": CRS, "resolution_m": 10, "bounds": [500_000, 3_200_000, 500_400, 3_200_100]},
        "inputs": {"stac_items": str(tmp_path), "plots": str(tmp_path / "plots.csv"), "trees": str(tmp_path / "trees.xlsx"),
                   "parcels": "x"},
        "ground": {"plots_crs": CRS, "designs": {"n2": [{"min_dbh_cm": 5, "radius_m": 5.64}, {"min_dbh_cm": 20, "radius_m": 11.28}]},
                   "trees_columns": {"plot_id": "样地", "tree_id": "树号", "species": "树种", "dbh_cm": "胸径",
                                     "height_m": "树高", "age": "度"},
                   "uncertainty": {"draws": 200}},
        "output": str(tmp_path / "out")})
    ctx = Context(cfg, geobox_from_config(cfg.grid))
    info = stage_plots(ctx)
    assert info["plots"] == 2 and info["trees"] == 5
    plots = gpd.read_file(ctx.out.plots, layer="plots").set_index("plot_id")
    trees = pd.read_csv(ctx.out.trees)
    cos25 = np.cos(np.radians(25))
    a = trees[trees.plot_id == "A"].set_index("tree_id")
    inner, outer = np.pi * 5.64**2 * cos25 / 1e4, np.pi * 11.28**2 * cos25 / 1e4
    expected = (a.agb_kg[1] / inner + a.agb_kg[2] / outer + a.agb_kg[3] / outer) / 1000
    assert plots.loc["A", "agb_mg_ha"] == pytest.approx(expected, rel=1e-12)
    assert plots.loc["A", "area_ha"] == pytest.approx(outer, rel=1e-12)
    b = trees[trees.plot_id == "B"]
    assert b.equation_id.str.startswith("moso_bamboo:zhou_jiang2004_moso_culm").all()
    assert plots.loc["B", "agb_mg_ha"] == pytest.approx(b.agb_kg.sum() / 0.06667 / 1000, rel=1e-12)
    assert (plots.agb_mg_ha_mc_q2_5 < plots.agb_mg_ha_mc_q97_5).all() and (plots.mc_draws == 200).all()
    eq = pd.read_csv(ctx.out.equations)
    assert {"lyt2264_cula_agb_d5plus", "zhou_jiang2004_moso_culm", "xiang2016_scsu"} <= set(eq["id"]) and eq["source"].notna().all()
    assert {"chinese_fir:cf_above", "moso_bamboo:cf_below", "ipcc2019_rs", "ouyang2022_moso_rs"} <= set(eq["id"])
    # both pools, and the LY/T 2264 root equation beside the conversion's ratio for the fir trees
    np.testing.assert_allclose(plots.carbon_above_mg_ha + plots.carbon_below_mg_ha, plots.carbon_mg_ha, rtol=1e-12)
    assert trees.loc[trees.species == "杉木", "bgb_kg_equation"].notna().all()
    # the equation spread: plot A under each alternative of fir and Schima, plot B has bamboo's one equation
    sp = pd.read_csv(ctx.out.equation_spread)
    assert set(sp[sp.plot_id == "A"].equation_id) >= {"luo2018_cula_zhejiang", "luo2018_scsu_zhejiang"}
    assert plots.loc["B", "equation_spread_pct"] == 0 and plots.loc["A", "agb_mg_ha_eq_max"] >= plots.loc["A", "agb_mg_ha"]


def test_height_diameter_models_on_nouragues_hd():
    """Real data: NouraguesHD. log2 equals numpy's polynomial fit on the log scale (coefficients and RSE), with
    Baskerville's correction in predictions; the Michaelis-Menten fit is a least-squares minimum."""
    from forestcarbon.models.height import fit_height_model

    hd = pd.read_csv(shared("plots/BIOMASS/NouraguesHD.csv")).dropna(subset=["H"])
    m = fit_height_model(hd.D, hd.H, "log2")
    c2, c1, c0 = np.polyfit(np.log(hd.D), np.log(hd.H), 2)
    np.testing.assert_allclose(m.coef, [c0, c1, c2], rtol=1e-9)
    resid = np.log(hd.H) - np.polyval([c2, c1, c0], np.log(hd.D))
    assert m.rse == pytest.approx(np.sqrt(np.sum(resid**2) / (len(hd) - 3)), rel=1e-12) and m.n == len(hd)
    assert m.predict([30.0])[0] == pytest.approx(np.exp(np.polyval([c2, c1, c0], np.log(30.0)) + m.rse**2 / 2), rel=1e-12)
    mm = fit_height_model(hd.D, hd.H, "michaelis")
    rss = lambda a, b: np.sum((hd.H - a * hd.D / (b + hd.D)) ** 2)  # noqa: E731
    best = rss(*mm.coef)
    for da, db in ((0.01, 0), (-0.01, 0), (0, 0.01), (0, -0.01)):
        assert rss(mm.coef[0] * (1 + da), mm.coef[1] * (1 + db)) > best
    with pytest.raises(FieldError, match="needs at least 10 trees with measured heights, got 3"):
        fit_height_model([10, 20, 30], [8, 12, 15])


def test_fill_heights_per_group_or_pooled_and_mc_height_error(reg):
    from forestcarbon.models.height import fill_heights

    rng = np.random.default_rng(0)
    d = rng.uniform(8, 40, 40)
    t = pd.DataFrame({"plot_id": "P", "tree_id": [str(i) for i in range(40)],
                      "species": ["杉木"] * 30 + ["tropical_measured_wd"] * 10, "wood_density_g_cm3": 0.6,
                      "species_group": ["chinese_fir"] * 30 + ["tropical_measured_wd"] * 10, "dbh_cm": d,
                      "height_m": np.exp(1.0 + 0.6 * np.log(d)) * rng.lognormal(0, 0.1, 40)})
    t.loc[[0, 1, 30], "height_m"] = np.nan  # fir: 28 measured -> own model; the other group: 9 measured -> pooled
    filled, models = fill_heights(t, "log1")
    assert set(models) == {"chinese_fir", "*"}
    assert list(filled.height_source[[0, 1, 30]]) == ["hd_model:chinese_fir:log1"] * 2 + ["hd_model:*:log1"]
    assert (filled.height_source.drop([0, 1, 30]) == "measured").all()
    np.testing.assert_array_equal(filled.height_m.drop([0, 1, 30]), t.height_m.drop([0, 1, 30]))
    assert filled.height_m[0] == pytest.approx(models["chinese_fir"].predict([d[0]])[0])
    # one tree of the Chave 2014 group (AGB ∝ H^0.976) whose height comes from the pooled log model only:
    # log AGB has SD 0.976 · RSE over the draws
    one = tree_biomass(filled.iloc[[30]], reg)
    mc = monte_carlo(one, reg, ErrorModel(draws=5000, seed=2, dbh_error=None, model_error=False), weight=None,
                     height_models=models).iloc[0]
    s = 0.976 * models["*"].rse
    assert mc.agb_mg_mc_sd / mc.agb_mg_mc_mean == pytest.approx(np.sqrt(np.exp(s**2) - 1), rel=0.05)


def test_plots_stage_fills_missing_heights(tmp_path):
    from forestcarbon.config import config_from_dict
    from forestcarbon.flows.stages import Context, stage_plots
    from forestcarbon.rs.grid import geobox_from_config

    plots = _points(tmp_path, [{"plot_id": "A", "size_m2": 666.7}])
    rng = np.random.default_rng(1)
    d = rng.uniform(6, 35, 14)
    h = np.round(np.exp(0.9 + 0.62 * np.log(d)), 1)
    h[[3, 7]] = np.nan
    pd.DataFrame({"plot_id": "A", "tree_id": [str(i) for i in range(14)], "species": "杉木", "dbh_cm": d,
                  "height_m": h}).to_csv(tmp_path / "trees.csv", index=False)
    cfg = config_from_dict({
        "grid": {"crs": CRS, "resolution_m": 10, "bounds": [499_900, 3_199_900, 500_200, 3_200_100]},
        "inputs": {"stac_items": str(tmp_path), "plots": str(plots), "trees": str(tmp_path / "trees.csv"), "parcels": "x"},
        "ground": {"height_model": "log2", "uncertainty": {"draws": 100}}, "output": str(tmp_path / "out")})
    ctx = Context(cfg, geobox_from_config(cfg.grid))
    info = stage_plots(ctx)
    assert info["trees_with_modelled_height"] == 2
    t = pd.read_csv(ctx.out.trees)
    assert list(t.height_source[[3, 7]]) == ["hd_model:chinese_fir:log2"] * 2  # 12 measured firs: their own model
    assert gpd.read_file(ctx.out.plots).n_heights_modelled.iloc[0] == 2
    hm = pd.read_csv(ctx.out.height_models)
    assert hm.n_measured.iloc[0] == 12 and hm.method.iloc[0] == "log2"
    no_model = config_from_dict({**cfg.model_dump(mode="json"), "ground": {}})
    with pytest.raises(FieldError, match=r"height_m must be >= 1.3 m for height-based equation"):
        stage_plots(Context(no_model, ctx.gbox))


def test_trees_cli_fills_missing_heights(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    rng = np.random.default_rng(7)
    d = rng.uniform(8, 40, 15)
    h = np.round(np.exp(1.0 + 0.6 * np.log(d)), 1)
    h[0] = np.nan
    src = tmp_path / "t.csv"
    pd.DataFrame({"species": "杉木", "dbh_cm": d, "height_m": h}).to_csv(src, index=False)
    exe = Path(sys.executable).parent / "forestcarbon"
    out = tmp_path / "o.csv"
    r = subprocess.run([str(exe), "trees", str(src), "--out", str(out), "--height-model", "log1"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    t = pd.read_csv(out)
    assert t.height_source[0] == "hd_model:chinese_fir:log1" and np.isfinite(t.agb_kg).all()
    r = subprocess.run([str(exe), "trees", str(src), "--out", str(tmp_path / "x.csv")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "height_m must be >= 1.3 m" in r.stderr and not (tmp_path / "x.csv").exists()


def test_group_root_shoot_ratio_and_carbon_fraction_source(tmp_path):
    """A group's own root-to-shoot ratio (one value, or by density) replaces the default, is named per tree,
    carries its verified flag, and is listed with its source in the equations table."""
    yml = tmp_path / "allom.yaml"
    yml.write_text("""
version: t
defaults:
  carbon_fraction: 0.47
  carbon_fraction_source: IPCC
  root_shoot: {threshold_agb_mg_ha: 125, low: 0.230, high: 0.246, source: IPCC 2019}
groups:
  bamboo:
    names: [毛竹]
    carbon_fraction_above: 0.5
    carbon_fraction_source: "test carbon content"
    root_shoot: {ratio: 0.35, source: "test bamboo rhizome ratio", verified: false}
    aboveground:
      - {id: b1, form: power, a: 0.1, b: 2.0, source: "test", verified: true}
  fir:
    names: [杉木]
    aboveground:
      - {id: f1, form: power, a: 0.1, b: 2.0, source: "test", verified: true}
""", encoding="utf-8")
    r = load_registry(yml)
    out = tree_biomass(pd.DataFrame({"species": ["毛竹", "杉木"], "dbh_cm": [10.0, 10.0]}), r, plot_agb_mg_ha=np.array([200.0, 200.0]))
    np.testing.assert_allclose(out.agb_kg, [10.0, 10.0])
    np.testing.assert_allclose(out.bgb_kg, [3.5, 2.46])
    np.testing.assert_allclose(out.carbon_kg, [10 * 0.5 + 3.5 * 0.47, 12.46 * 0.47])
    assert list(out.equation_id) == ["bamboo:b1;bamboo_rs", "fir:f1;default_rs_high"]
    assert list(out.equation_verified) == [True, True] and list(out.conversion_verified) == [False, False]
    eq = r.equations_table()
    assert {"test bamboo rhizome ratio", "test carbon content"} <= set(eq.source)


def test_carbon_fraction_error_alone(reg):
    """Only the carbon-fraction error (BIOMASS Carbon = TRUE: 2.06 / 47.13): one tree's carbon has that relative SD,
    its AGB none."""
    one = tree_biomass(pd.DataFrame({"plot_id": "P", "species": ["杉木"], "dbh_cm": [20.0], "height_m": [15.0]}), reg)
    e = ErrorModel(draws=4000, seed=1, dbh_error=None, model_error=False, carbon_fraction_sd_rel=2.06 / 47.13)
    mc = monte_carlo(one, reg, e, weight=None).iloc[0]
    assert mc.agb_mg_mc_sd == pytest.approx(0.0, abs=1e-12)
    assert mc.carbon_mg_mc_sd / mc.carbon_mg_mc_mean == pytest.approx(2.06 / 47.13, rel=0.05)
    assert mc.carbon_mg_mc_mean == pytest.approx(one.carbon_kg[0] / 1000, rel=0.005)


def test_equation_spread_by_hand():
    """Plot AGB under each candidate: the group's trees take the candidate, the others keep their own."""
    from forestcarbon.vector.plots import equation_spread

    trees = pd.DataFrame({"plot_id": ["P", "P", "Q"], "expansion_ha": [10.0, 10.0, 20.0],
                          "species_group": ["a", "b", "a"], "agb_kg": [100.0, 50.0, 40.0]}, index=[7, 8, 9])
    cands = pd.DataFrame({"tree": [7, 7, 8, 9, 9], "group": ["a", "a", "b", "a", "a"],
                          "equation_id": ["own_a", "alt_a", "own_b", "own_a", "alt_a"],
                          "agb_kg": [100.0, 130.0, 50.0, 40.0, 30.0], "in_range": [True, True, True, True, False]})
    long, per_plot = equation_spread(trees, cands)
    long = long.set_index(["plot_id", "equation_id"])
    assert long.loc[("P", "alt_a"), "agb_mg_ha"] == pytest.approx((130 * 10 + 50 * 10) / 1000)
    assert long.loc[("P", "alt_a"), "difference_pct"] == pytest.approx((1.8 / 1.5 - 1) * 100)
    assert long.loc[("Q", "alt_a"), "trees_out_of_range"] == 1 and not long.loc[("Q", "alt_a"), "in_spread"]
    pp = per_plot.set_index("plot_id")
    assert (pp.loc["P", "agb_mg_ha_eq_min"], pp.loc["P", "agb_mg_ha_eq_max"]) == pytest.approx((1.5, 1.8))
    assert pp.loc["P", "equation_spread_pct"] == pytest.approx(20.0)
    assert pp.loc["Q", "equation_spread_pct"] == 0  # its only alternative is outside its DBH range
    # an unverified alternative does not widen the range while the group's own equation is verified ...
    flagged = cands.assign(verified=[True, False, True, True, False], own=[True, False, True, True, False])
    _, pp = equation_spread(trees, flagged)
    assert pp.set_index("plot_id").loc["P", "equation_spread_pct"] == 0
    # ... but does when the own equation is itself a stand-in
    _, pp = equation_spread(trees, flagged.assign(verified=[False, False, True, False, False]))
    assert pp.set_index("plot_id").loc["P", "equation_spread_pct"] == pytest.approx(20.0)


def test_trees_cli_compares_equations(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    src = tmp_path / "t.csv"
    pd.DataFrame({"plot_id": ["P1", "P1", "P2"], "species": ["马尾松", "马尾松", "杉木"], "dbh_cm": [10.0, 12.0, 10.0],
                  "height_m": [9.0, 10.0, 9.0]}).to_csv(src, index=False)
    out = tmp_path / "o.csv"
    exe = Path(sys.executable).parent / "forestcarbon"
    r = subprocess.run([str(exe), "trees", str(src), "--out", str(out), "--compare-equations"], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    t = pd.read_csv(out)
    np.testing.assert_allclose(t["agb_kg__luo2018_pima_zhejiang"][:2], 10 ** (-1.3855 + 2.7751 * np.log10([10.0, 12.0])),
                               rtol=1e-12)
    assert np.isnan(t["agb_kg__luo2018_pima_zhejiang"][2])  # not a candidate for fir
    luo_p1 = (10 ** (-1.3855 + 2.7751 * np.log10([10.0, 12.0]))).sum() / 1000
    assert "luo2018_pima_zhejiang" in r.stdout and f"{luo_p1:,.3f}" in r.stdout and "P2" in r.stdout
