"""Single-tree allometry against hand computations and the BIOMASS sample data."""

from __future__ import annotations

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
    out = tree_biomass(trees, reg)
    # hand computation, LY/T 2264-2014 (StemAnalysis allomPardata.csv)
    agb = [0.190713 * 4**1.35226 * 3.5**0.49452,
           0.065388 * 5**2.01735 * 5**0.49425,
           0.065388 * 20**2.01735 * 16**0.49425]
    bgb = [0.034655 * 4**2.06398 * 3.5**-0.11744,
           0.016385 * 5**2.52941 * 5**-0.11744,
           0.016385 * 20**2.52941 * 16**-0.11744]
    np.testing.assert_allclose(out.agb_kg, agb, rtol=1e-12)
    np.testing.assert_allclose(out.bgb_kg, bgb, rtol=1e-12)
    np.testing.assert_allclose(out.carbon_kg, np.array(agb) * 0.5003 + np.array(bgb) * 0.488, rtol=1e-12)
    np.testing.assert_allclose(out.co2e_kg, out.carbon_kg * 44 / 12, rtol=1e-12)
    assert out.equation_id[0].startswith("chinese_fir:lyt2264_cula_agb_d5minus")
    assert out.equation_id[1].startswith("chinese_fir:lyt2264_cula_agb_d5plus")
    assert out.equation_verified.all()


def test_ipcc_root_shoot_chosen_by_plot_density(reg):
    trees = pd.DataFrame({"species": ["masson pine"] * 2, "dbh_cm": [20.0, 20.0], "height_m": [15.0, 15.0]})
    out = tree_biomass(trees, reg, plot_agb_mg_ha=np.array([100.0, 150.0]))
    agb = 0.0673 * (0.47 * 20**2 * 15) ** 0.976
    np.testing.assert_allclose(out.agb_kg, agb, rtol=1e-12)
    np.testing.assert_allclose(out.bgb_kg, [agb * 0.230, agb * 0.246], rtol=1e-12)
    np.testing.assert_allclose(out.carbon_kg, [agb * 1.230 * 0.47, agb * 1.246 * 0.47], rtol=1e-12)
    assert not out.equation_verified.any()  # stand-in wood density is flagged, not hidden


def test_unknown_species_names_species_and_rows(reg):
    trees = pd.DataFrame({"species": ["杉木", "Quercus robur"], "dbh_cm": [10.0, 12.0], "height_m": [8.0, 9.0]})
    with pytest.raises(AllometryError, match=r"Quercus robur.*rows \[1\]"):
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
    assert (t.species_group[conifer] == "masson_pine").all() and (t.species_group[~conifer] == "broadleaf").all()
    rho = np.where(conifer, 0.47, 0.55)  # the groups' wood densities in allometry.yaml
    np.testing.assert_allclose(t.agb_kg, 0.0673 * (rho * t.dbh_cm**2 * t.height_m) ** 0.976, rtol=1e-9)
    assert not t.equation_verified.any()  # stand-ins stay flagged
    missing = subprocess.run([str(exe), "trees", str(src), "--out", str(tmp_path / "x.csv"), "--species-col", "s",
                              "--dbh-col", "d", "--height-col", "h"], capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "no allometric equation for species" in missing.stderr
    assert not (tmp_path / "x.csv").exists()
