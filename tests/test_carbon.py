"""The one carbon conversion: hand computations from the printed factors of its sources.

IPCC 2019 Refinement Vol. 4 Ch. 4 Table 4.4 p. 4.18 (subtropical humid, Asia): R = 0.230 for
AGB <= 125 t/ha, 0.246 above; IPCC 2006 Table 4.3: CF 0.47; LY/T 2264-2014 (StemAnalysis
allomPardata.csv): Chinese fir carbon content 0.5003 above, 0.488 below; Ouyang et al. 2022:
Moso bamboo root-to-shoot ratio 0.37.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from forestcarbon.config import default_allometry_path
from forestcarbon.errors import AllometryError
from forestcarbon.models.allometry import load_registry, tree_biomass
from forestcarbon.models.carbon import CarbonConversion


@pytest.fixture(scope="module")
def conv():
    return load_registry(default_allometry_path()).conversion


def test_default_rule_by_density(conv):
    agb = np.array([100.0, 125.0, 126.0, np.nan])
    bgb, ca, cb = conv.pools_mg_ha(agb)
    np.testing.assert_allclose(bgb[:3], [23.0, 125 * 0.230, 126 * 0.246], rtol=1e-12)
    np.testing.assert_allclose(ca[:3], agb[:3] * 0.47, rtol=1e-12)
    np.testing.assert_allclose(cb[:3], bgb[:3] * 0.47, rtol=1e-12)
    assert np.isnan(bgb[3]) and np.isnan(ca[3]) and np.isnan(cb[3])


def test_group_rules_through_codes(conv):
    """Per-pixel rule codes: Chinese fir's own fractions, Moso bamboo's own ratio, the default elsewhere."""
    codes = conv.code_of(["chinese_fir", "moso_bamboo", "masson_pine", None])
    agb = np.full(4, 150.0)
    bands = conv.carbon_bands(agb, codes)
    fir = 150 * 0.5003 + 150 * 0.246 * 0.488
    bamboo = 150 * 0.47 + 150 * 0.37 * 0.47
    default = 150 * 1.246 * 0.47
    np.testing.assert_allclose(bands[0], [fir, bamboo, default, default], rtol=1e-6)
    np.testing.assert_allclose(bands[1] + bands[2], bands[0], rtol=1e-6)
    assert bands.dtype == np.float32


def test_trees_and_stand_share_the_conversion(conv):
    """A plot's trees sum to what the stand-level rule gives for the plot (same ratio, same fractions)."""
    reg = load_registry(default_allometry_path())
    t = pd.DataFrame({"species": ["杉木"] * 3, "dbh_cm": [12.0, 20.0, 31.0], "height_m": [10.0, 15.0, 21.0]})
    dens = 140.0
    out = tree_biomass(t, reg, plot_agb_mg_ha=np.full(3, dens))
    agb_kg = out.agb_kg.sum()
    np.testing.assert_allclose(out.bgb_kg.sum(), agb_kg * 0.246, rtol=1e-12)
    np.testing.assert_allclose(out.carbon_kg.sum(), agb_kg * 0.5003 + agb_kg * 0.246 * 0.488, rtol=1e-12)
    _, ca, cb = conv.pools_mg_ha(np.array([agb_kg]), conv.code_of(["chinese_fir"]))
    np.testing.assert_allclose(ca + cb, out.carbon_kg.sum(), rtol=1e-12)
    # the LY/T 2264 root equation stays visible beside the ratio
    bgb_eq = 0.016385 * t.dbh_cm**2.52941 * t.height_m**-0.11744
    np.testing.assert_allclose(out.bgb_kg_equation, bgb_eq, rtol=1e-12)
    assert out.conversion_verified.all()


def test_conversion_table_lists_sources(conv):
    t = conv.table()
    fir = t[(t.group == "chinese_fir") & (t.part == "carbon_fraction_above")].iloc[0]
    assert fir.a == 0.5003 and "LY/T 2264" in fir.source and fir.verified
    rs = t[(t.group == "*") & (t.part == "root_shoot")].iloc[0]
    assert (rs.a, rs.b, rs.c) == (0.230, 0.246, 125.0) and "p. 4.18" in rs.source and rs.verified


@pytest.mark.parametrize("defaults,groups,msg", [
    ({"carbon_fraction": 0.47}, {}, "defaults lack 'carbon_fraction_source'"),
    ({"carbon_fraction": 4.7, "carbon_fraction_source": "x", "root_shoot": {"ratio": 0.2, "source": "x"}}, {},
     "not in \\(0, 1\\)"),
    ({"carbon_fraction": 0.47, "carbon_fraction_source": "x", "root_shoot": {"ratio": 0.2, "source": "x"}},
     {"g": {"carbon_fraction_above": 0.5}}, "without carbon_fraction_source"),
    ({"carbon_fraction": 0.47, "carbon_fraction_source": "x", "root_shoot": {"ratio": 23, "source": "x"}}, {},
     "not in \\[0, 2\\)"),
])
def test_implausible_conversions_are_errors(defaults, groups, msg):
    with pytest.raises(AllometryError, match=msg):
        CarbonConversion.from_yaml(defaults, groups, "t.yaml")


def test_nan_density_gives_nan_ratio(conv):
    assert np.isnan(conv.default.root_shoot.ratio([np.nan])[0])
    assert conv.default.root_shoot.ratio([125.0])[0] == 0.230  # "<= 125" takes the low class (p. 4.18)


def test_rule_layer_equals_a_whole_array_rasterisation_by_blocks():
    """burn_values (per block, polygons from the spatial index) equals rasterio's rasterisation of the whole
    array in file order, overlaps included (the later polygon wins), for any chunk size."""
    import geopandas as gpd
    import shapely
    from odc.geo.geobox import GeoBox
    from rasterio.features import rasterize

    from forestcarbon.vector.rasterize import burn_values

    rng = np.random.default_rng(4)
    gbox = GeoBox.from_bbox((500_000, 3_200_000, 501_000, 3_200_700), crs="EPSG:4549", resolution=10)
    centres = rng.uniform([500_000, 3_200_000], [501_000, 3_200_700], (40, 2))
    polys = [shapely.Point(x, y).buffer(r, quad_segs=8) for (x, y), r in zip(centres, rng.uniform(30, 160, 40))]
    gdf = gpd.GeoDataFrame({"v": rng.integers(1, 6, 40)}, geometry=polys, crs="EPSG:4549")
    ref = rasterize(zip(gdf.geometry, gdf.v), out_shape=gbox.shape, transform=gbox.affine, fill=0, dtype="uint8")
    for chunk in (64, 17 * 4, 1024):
        got = burn_values(gdf, gdf.v.to_numpy(), gbox, chunk_px=chunk).compute()
        np.testing.assert_array_equal(got, ref)
    # another CRS: reprojected onto the grid first
    got = burn_values(gdf.to_crs("EPSG:4490"), gdf.v.to_numpy(), gbox, chunk_px=128).compute()
    assert (got == ref).mean() > 0.99


def test_parcel_species_resolve_with_fallback_and_warn_when_unknown():
    import geopandas as gpd
    import shapely

    from forestcarbon.errors import UnresolvedSpeciesWarning
    from forestcarbon.flows.stages import parcel_groups

    reg = load_registry(default_allometry_path())
    gdf = gpd.GeoDataFrame({"YOU_SHI_SZ": ["杉木", "Phyllostachys edulis (Carrière) J.Houz.", "枫杨", "", None, "030"]},
                           geometry=[shapely.Point(i, 0).buffer(1) for i in range(6)], crs="EPSG:4549")
    with pytest.warns(UnresolvedSpeciesWarning, match=r"2 parcels .*\['030', '枫杨'\]"):
        g = parcel_groups(gdf, "YOU_SHI_SZ", "p.gpkg", reg)
    assert g == ["chinese_fir", "moso_bamboo", None, None, None, None]
    g = parcel_groups(gdf, "YOU_SHI_SZ", "p.gpkg", reg, {"030": "杉木", "*": "阔叶树"})
    assert g == ["chinese_fir", "moso_bamboo", "evergreen_broadleaf", None, None, "chinese_fir"]
