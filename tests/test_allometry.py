"""Single-tree allometry against hand computations and the BIOMASS sample data."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from forestcarbon.config import default_allometry_path
from forestcarbon.errors import AllometryError, FieldError
from forestcarbon.models.allometry import load_registry, tree_biomass

from .conftest import shared


@pytest.fixture(scope="module")
def reg():
    return load_registry(default_allometry_path())


def test_chinese_fir_both_sides_of_5cm(reg):
    trees = pd.DataFrame({"species": ["杉木", "Cunninghamia lanceolata", "CULA"],
                          "dbh_cm": [4.0, 5.0, 20.0], "height_m": [3.5, 5.0, 16.0]})
    out = tree_biomass(trees, reg, plot_agb_mg_ha=np.array([80.0, 80.0, 200.0]))
    # hand computation, LY/T 2264-2014 (StemAnalysis allomPardata.csv)
    agb = np.array([0.190713 * 4**1.35226 * 3.5**0.49452,
                    0.065388 * 5**2.01735 * 5**0.49425,
                    0.065388 * 20**2.01735 * 16**0.49425])
    bgb_eq = [0.034655 * 4**2.06398 * 3.5**-0.11744,
              0.016385 * 5**2.52941 * 5**-0.11744,
              0.016385 * 20**2.52941 * 16**-0.11744]
    r = np.array([0.230, 0.230, 0.246])  # IPCC 2019 Table 4.4 p. 4.18, by the plot's AGB density
    np.testing.assert_allclose(out.agb_kg, agb, rtol=1e-12)
    np.testing.assert_allclose(out.bgb_kg, agb * r, rtol=1e-12)
    np.testing.assert_allclose(out.bgb_kg_equation, bgb_eq, rtol=1e-12)
    np.testing.assert_allclose(out.carbon_kg, agb * 0.5003 + agb * r * 0.488, rtol=1e-12)
    np.testing.assert_allclose(out.carbon_above_kg + out.carbon_below_kg, out.carbon_kg, rtol=1e-12)
    np.testing.assert_allclose(out.co2e_kg, out.carbon_kg * 44 / 12, rtol=1e-12)
    assert out.equation_id[0].startswith("chinese_fir:lyt2264_cula_agb_d5minus")
    assert out.equation_id[1].startswith("chinese_fir:lyt2264_cula_agb_d5plus")
    assert out.equation_verified.all()


# Xiang et al. 2016 (Eur. J. For. Res. 135:963), as allodb tabulates it: per part exp(a + b ln D) times the
# part's printed bias-correction factor; total aboveground = stem + branches + foliage.
XIANG_2016 = {
    "马尾松": [(-1.754, 2.154, 1.014), (-5.060, 2.569, 1.106), (-5.595, 2.348, 1.345)],
    "Schima superba": [(-2.963, 2.621, 1.1), (-2.378, 2.022, 1.1), (-2.680, 1.690, 1.196)],
    "枫香": [(-1.522, 2.185, 1.019), (-6.345, 3.218, 1.135), (-10.080, 3.842, 1.343)],
    "青冈": [(-1.798, 2.3235, 1.041), (-4.849, 2.774, 1.297), (-5.600, 2.832, 1.27)],
    "阔叶树": [(-2.567, 2.532, 1.041), (-1.603, 1.905, 1.297), (-3.412, 2.131, 1.27)],
    "麻栎": [(-2.644, 2.453, 1.053), (-4.852, 2.684, 1.213), (-5.895, 2.682, 1.662)],
}


@pytest.mark.parametrize("species", list(XIANG_2016))
def test_xiang2016_regional_equations_by_hand(reg, species):
    d = np.array([6.0, 20.0, 31.5])
    out = tree_biomass(pd.DataFrame({"species": species, "dbh_cm": d}), reg)
    hand = sum(cf * np.exp(a + b * np.log(d)) for a, b, cf in XIANG_2016[species])
    np.testing.assert_allclose(out.agb_kg, hand, rtol=1e-12)
    assert out.equation_verified.all() and (out.log_bias == "corrected").all()


def test_xiang2016_parts_at_20cm_match_an_independent_computation(reg):
    """At D = 20 cm, stem / branches / foliage before correction are 109.8161 / 13.9578 / 4.2164 kg (Masson
    pine), 132.7960 / 39.6215 / 10.8351 (Schima), 151.9688 / 26.9846 / 4.1770 (sweetgum), 174.6151 / 31.8539 /
    17.8841 (C. glauca) and 151.1381 / 60.5743 / 19.5291 (evergreen broad-leaved) -- computed by a reviewer
    from allodb's equation strings, not from this table; allodb's part factors as printed."""
    t = pd.DataFrame({"species": ["马尾松", "木荷", "枫香", "青冈", "常绿阔叶树"], "dbh_cm": 20.0})
    out = tree_biomass(t, reg)
    parts = np.array([[109.8161, 13.9578, 4.2164], [132.7960, 39.6215, 10.8351], [151.9688, 26.9846, 4.1770],
                      [174.6151, 31.8539, 17.8841], [151.1381, 60.5743, 19.5291]])
    factors = np.array([[1.014, 1.106, 1.345], [1.1, 1.1, 1.196], [1.019, 1.135, 1.343], [1.041, 1.297, 1.27],
                        [1.041, 1.297, 1.27]])
    np.testing.assert_allclose(out.agb_kg, (parts * factors).sum(axis=1), rtol=1e-6)


def test_alternatives_by_hand(reg):
    """Luo et al. 2018 (Zhejiang, 10^(a + b log10 D)), Zhou et al. 2018 (a D^b per organ) and Xiang et al. 2021
    (exp(a + b ln(D^2 H)) per organ) alternatives."""
    from forestcarbon.models.allometry import candidate_agb

    t = tree_biomass(pd.DataFrame({"species": ["马尾松", "杉木"], "dbh_cm": [10.0, 10.0], "height_m": [9.0, 9.0]}), reg)
    c = candidate_agb(t, reg).set_index(["tree", "equation_id"]).agb_kg
    np.testing.assert_allclose(c[(0, "luo2018_pima_zhejiang")], 10 ** (-1.3855 + 2.7751), rtol=1e-12)
    np.testing.assert_allclose(c[(0, "zhou2018_pima_zhejiang")], 0.2931 * 10**1.97 + 0.0048 * 10**2.63 + 0.0670 * 10**1.46,
                               rtol=1e-12)
    np.testing.assert_allclose(c[(1, "luo2018_cula_zhejiang")], 10 ** (-0.9513 + 2.2746), rtol=1e-12)
    d2h = 10.0**2 * 9.0
    np.testing.assert_allclose(c[(1, "xiang2021_cula_d2h")], np.exp(-4.295 + 1.006 * np.log(d2h))
                               + np.exp(-6.837 + 1.028 * np.log(d2h)) + np.exp(-4.499 + 0.697 * np.log(d2h)), rtol=1e-12)
    # an independent evaluation of allodb's string for f79f0f at D = 10 cm gave 24.5245 kg
    assert c[(0, "luo2018_pima_zhejiang")] == pytest.approx(24.5245, abs=1e-4)


def test_species_names_as_bureaus_write_them(reg):
    t = pd.DataFrame({"species": ["Pinus massoniana Lamb.", "马尾松", "PIMA", "Cunninghamia lanceolata (Lamb.) Hook.",
                                  "杉树", "  Schima   superba ", "荷木", "楠竹", "Quercus glauca Thunb."],
                      "dbh_cm": 12.0, "height_m": 10.0, "age": 2})
    out = tree_biomass(t, reg)
    assert list(out.species_group) == ["masson_pine"] * 3 + ["chinese_fir"] * 2 + ["schima_superba"] * 2 + [
        "moso_bamboo", "cyclobalanopsis_glauca"]
    assert (out.species_source == "table").all()
    out2 = tree_biomass(pd.DataFrame({"species": ["Liquidambar formosana Hance var. x"], "dbh_cm": [12.0]}), reg)
    assert out2.species_source[0] == "binomial" and out2.species_group[0] == "liquidambar_formosana"
    with pytest.raises(AllometryError, match="'Pinus'"):  # one word is not a binomial
        tree_biomass(pd.DataFrame({"species": ["Pinus"], "dbh_cm": [12.0]}), reg)


def test_unknown_species_names_species_and_rows(reg):
    trees = pd.DataFrame({"species": ["杉木", "Quercus robur"], "dbh_cm": [10.0, 12.0], "height_m": [8.0, 9.0]})
    with pytest.raises(AllometryError, match=r"Quercus robur.*rows \[3\]"):
        tree_biomass(trees, reg)


@pytest.mark.parametrize("col,val,msg", [("dbh_cm", 0.0, "dbh_cm must be a positive"),
                                         ("dbh_cm", -3.0, "dbh_cm must be a positive"),
                                         ("height_m", 1.0, "height_m must be >= 1.3")])
def test_bad_tree_values_rejected(reg, col, val, msg):
    trees = pd.DataFrame({"species": ["杉木", "杉木"], "dbh_cm": [10.0, 12.0], "height_m": [8.0, 9.0]})
    trees.loc[1, col] = val
    with pytest.raises(FieldError, match=msg):
        tree_biomass(trees, reg)


def test_chave2014_on_nouragues_plots_equals_formula(reg):
    """Real data: BIOMASS NouraguesPlot.csv (D, WD, H given) against Chave et al. 2014 eq. 4."""
    df = pd.read_csv(shared("plots/BIOMASS/NouraguesPlot.csv"))
    trees = pd.DataFrame({"species": "tropical_measured_wd", "dbh_cm": df.D, "height_m": df.H,
                          "wood_density_g_cm3": df.WD, "plot_id": df["plot"]})
    out = tree_biomass(trees, reg)
    ref_kg = 0.0673 * (df.WD * df.H * df.D**2) ** 0.976  # BIOMASS::computeAGB × 1000
    np.testing.assert_allclose(out.agb_kg, ref_kg, rtol=1e-9)
    per_plot = out.groupby("plot_id").agb_kg.sum() / 1000
    ref_plot = (ref_kg / 1000).groupby(df["plot"]).sum()
    np.testing.assert_allclose(per_plot.sort_index(), ref_plot.sort_index(), rtol=1e-9)
    assert out.equation_id.str.contains("chave2014_eq4_wd").all()


def test_chablais3_species_codes_through_fallback_groups(tmp_path):
    """Real data: lidaRtRee chablais3 inventory (codes PIAB, ABAL, FASY...) through the `trees` CLI with
    configured fallback groups; the mapping is visible per row and AGB follows the group's equation."""
    import subprocess
    import sys
    from pathlib import Path

    import geopandas as gpd

    src = shared("lidar/lidaRtRee/tree_inventory_chablais3.csv")
    exe = Path(sys.executable).parent / "forestcarbon"
    out = tmp_path / "trees.gpkg"
    res = subprocess.run([str(exe), "trees", str(src), "--out", str(out), "--species-col", "s", "--dbh-col", "d",
                          "--height-col", "h", "--fallback", "PIAB=masson_pine", "--fallback", "ABAL=masson_pine",
                          "--fallback", "*=broadleaf", "--crs", "EPSG:2154"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    t = gpd.read_file(out)
    raw = pd.read_csv(src)
    assert len(t) == len(raw) and t.crs.to_epsg() == 2154
    assert (t.species_source == "fallback").all()
    conifer = t.species.isin(["PIAB", "ABAL"])
    assert (t.species_group[conifer] == "masson_pine").all() and (t.species_group[~conifer] == "evergreen_broadleaf").all()
    d = t.dbh_cm  # Xiang et al. 2016 by hand: Masson pine and evergreen broad-leaved, parts with their correction factors
    pine = sum(cf * np.exp(a + b * np.log(d)) for a, b, cf in XIANG_2016["马尾松"])
    broad = sum(cf * np.exp(a + b * np.log(d)) for a, b, cf in XIANG_2016["阔叶树"])
    np.testing.assert_allclose(t.agb_kg, np.where(conifer, pine, broad), rtol=1e-9)
    missing = subprocess.run([str(exe), "trees", str(src), "--out", str(tmp_path / "x.csv"), "--species-col", "s",
                              "--dbh-col", "d", "--height-col", "h"], capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "no allometric equation for species" in missing.stderr
    assert not (tmp_path / "x.csv").exists()


@pytest.mark.parametrize("edit,msg", [
    ("a: 0.1", "a must be a number, not '0,1'"),
    ("names: 杉木", "names must be a list"),
    ("dbh_min_cm: 50", "dbh_min_cm 50.0 is not below dbh_max_cm 40.0"),
    ("log_bias: corrected", "needs bias_correction_factor"),
])
def test_malformed_allometry_tables_name_the_equation(tmp_path, edit, msg):
    base = {"a: 0.1": "a: '0,1'", "names: 杉木": "names: 杉木", "dbh_min_cm: 50": "dbh_min_cm: 50",
            "log_bias: corrected": "log_bias: corrected"}[edit]
    yml = tmp_path / "a.yaml"
    yml.write_text(f"""
version: t
defaults: {{carbon_fraction: 0.47, carbon_fraction_source: t, root_shoot: {{ratio: 0.2, source: t}}}}
groups:
  g:
    {base if edit == "names: 杉木" else "names: [x]"}
    aboveground:
      - id: e1
        form: power
        {base if edit == "a: 0.1" else "a: 0.1"}
        b: 2.0
        {base if edit in ("dbh_min_cm: 50", "log_bias: corrected") else "c: 0"}
        dbh_max_cm: 40
        source: t
""", encoding="utf-8")
    with pytest.raises(AllometryError, match=re.escape(msg)):
        load_registry(yml)


# Alternatives as printed: Luo et al. 2018 (allodb luo_2018_acnt, Zhejiang rows), 10^(a + b log10 D); Zhou et al.
# 2018 (BiomassChina initValueSet.R, Zhejiang, a.1/b.1 for stem, branch, leaf), sum of a D^b.
ALTERNATIVES = [
    ("木荷", "luo2018_scsu_zhejiang", lambda d: 10 ** (-1.04046 + 2.4487 * np.log10(d))),
    ("木荷", "zhou2018_scsu_zhejiang", lambda d: 0.2567 * d**1.99 + 0.1043 * d**1.74 + 0.0393 * d**1.65),
    ("青冈", "luo2018_cygl_zhejiang", lambda d: 10 ** (-0.58154 + 2.1347 * np.log10(d))),
    ("青冈", "zhou2018_cygl_zhejiang", lambda d: 0.2861 * d**1.98 + 0.2059 * d**1.56 + 0.0340 * d**1.69),
    ("甜槠", "luo2018_caey_zhejiang", lambda d: 10 ** (-0.77107 + 2.1534 * np.log10(d))),
    ("甜槠", "zhou2018_broadleaf_zhejiang", lambda d: 0.2562 * d**1.9908 + 0.1187 * d**1.7757 + 0.0161 * d**2.0046),
]


@pytest.mark.parametrize("species,eq,hand", ALTERNATIVES, ids=[a[1] for a in ALTERNATIVES])
def test_regional_alternatives_by_hand(reg, species, eq, hand):
    from forestcarbon.models.allometry import candidate_agb

    d = np.array([5.0, 12.0, 25.0])
    t = tree_biomass(pd.DataFrame({"species": species, "dbh_cm": d}), reg)
    c = candidate_agb(t, reg)
    np.testing.assert_allclose(c[c.equation_id == eq].agb_kg, hand(d), rtol=1e-12)
    assert c[c.equation_id == eq].verified.all()


def test_luo2018_alternatives_at_10cm_match_an_independent_computation(reg):
    """allodb's Luo 2018 strings evaluated by a reviewer at D = 10 cm: Schima 25.6000, C. glauca 35.7404,
    C. eyrei 24.1174, Masson pine 24.5245, Chinese fir 21.0523 kg."""
    from forestcarbon.models.allometry import candidate_agb

    t = tree_biomass(pd.DataFrame({"species": ["木荷", "青冈", "甜槠", "马尾松", "杉木"], "dbh_cm": 10.0,
                                   "height_m": 9.0}), reg)
    c = candidate_agb(t, reg).set_index(["tree", "equation_id"]).agb_kg
    got = [c[(0, "luo2018_scsu_zhejiang")], c[(1, "luo2018_cygl_zhejiang")], c[(2, "luo2018_caey_zhejiang")],
           c[(3, "luo2018_pima_zhejiang")], c[(4, "luo2018_cula_zhejiang")]]
    np.testing.assert_allclose(got, [25.6000, 35.7404, 24.1174, 24.5245, 21.0523], atol=1e-4)
