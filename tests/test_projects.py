"""Projects over parcels: shares of simple squares, slivers, eligibility and double-counting conflicts by hand;
the overlay against geopandas.overlay; totals, intervals and deductions by hand; the one-line errors."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
from scipy.stats import norm

from forestcarbon.config import ProjectsConfig
from forestcarbon.errors import ConfigError, CRSError, FieldError
from forestcarbon.models.carbon import co2e
from forestcarbon.vector.overlay import project_parcel_shares
from forestcarbon.vector.projects import (Deduction, min_piece_by_start, overlay_pieces, project_accounts)

X0, Y0 = 390_000.0, 3_220_000.0  # EPSG:4549
CO2_C = (12 + 2 * 16) / 12  # CO2 / C by integer atomic masses


def _parcels(n=4, forest=None):
    """n 100 m x 100 m (1 ha) parcels in a row: P0 at x 0-100, P1 at 100-200, ... (metres from X0)."""
    return gpd.GeoDataFrame({
        "parcel_id": [f"P{i}" for i in range(n)],
        "carbon_t": [10.0 * (i + 1) for i in range(n)], "carbon_sd_t": [1.0 * (i + 1) for i in range(n)],
        "is_forest": forest if forest is not None else [True] * n,
        "land_class": ["0111"] * n, "species": ["杉木"] * n, "age_group": ["中龄林"] * n,
    }, geometry=[shapely.box(X0 + 100 * i, Y0, X0 + 100 * (i + 1), Y0 + 100) for i in range(n)], crs="EPSG:4549")


def _projects(spans, **cols):
    geoms = [shapely.union_all([shapely.box(X0 + a, Y0, X0 + b, Y0 + 100) for a, b in s]) if isinstance(s[0], tuple)
             else shapely.box(X0 + s[0], Y0, X0 + s[1], Y0 + 100) for s in spans]
    return gpd.GeoDataFrame({"project_id": [chr(65 + i) for i in range(len(spans))], **cols}, geometry=geoms,
                            crs="EPSG:4549")


def _acc(projects, parcels, **kw):
    return project_accounts(projects, parcels, co2e, **kw)


def _row(table, project, parcel):
    r = table[(table.project_id == project) & (table.parcel_id == parcel)]
    assert len(r) == 1
    return r.iloc[0]


def test_shares_of_simple_squares():
    acc = _acc(_projects([(0, 150)]), _parcels())
    t = acc.parcels
    assert _row(t, "A", "P0")["share"] == 1.0  # wholly inside: exactly 1, no intersection computed
    assert _row(t, "A", "P0")["whole_parcel"]
    assert _row(t, "A", "P1")["share"] == pytest.approx(0.5, rel=1e-12)
    tot = acc.totals.set_index("project_id").loc["A"]
    assert tot["area_ha"] == pytest.approx(1.5, rel=1e-12)
    assert tot["n_parcels"] == 2
    assert tot["carbon_t"] == pytest.approx(10 + 0.5 * 20, rel=1e-12)
    assert tot["co2e_t"] == pytest.approx(20 * CO2_C, rel=1e-12)
    assert tot["carbon_sd_t"] == pytest.approx(1 + 0.5 * 2, rel=1e-12)  # perfectly correlated: Σ w·sd
    z = norm.ppf(0.95)
    assert tot["carbon_lo_t"] == pytest.approx(20 - z * 2, rel=1e-12)
    assert tot["carbon_hi_t"] == pytest.approx(20 + z * 2, rel=1e-12)
    assert tot["rel_half_width"] == pytest.approx(z * 2 / 20, rel=1e-12)
    # the project design document table carries the parcel's attributes and per-parcel intervals
    r = _row(t, "A", "P1")
    assert (r["land_class"], r["species"], r["age_group"]) == ("0111", "杉木", "中龄林")
    assert r["parcel_area_ha"] == pytest.approx(1.0) and r["inside_ha"] == pytest.approx(0.5)
    assert r["carbon_t"] == pytest.approx(10.0) and r["carbon_sd_t"] == pytest.approx(1.0)
    assert r["carbon_hi_t"] == pytest.approx(10 + z * 1.0)
    assert r["co2e_t"] == pytest.approx(10 * CO2_C)


def test_old_shares_function_still_answers():
    sh = project_parcel_shares(_projects([(0, 150)]), _parcels(), "project_id", "parcel_id")
    assert sh["parcel_id"].tolist() == ["P0", "P1"]
    np.testing.assert_allclose(sh["overlap_ha"], [1.0, 0.5], rtol=1e-12)
    np.testing.assert_allclose(sh["share"], [1.0, 0.5], rtol=1e-12)


def test_custom_total_sd_is_used():
    def independent(rows):  # no correlation: sqrt(Σ (w·sd)²), computed here independently
        return float(np.sqrt(((rows.weight * rows.carbon_sd_t) ** 2).sum()))

    tot = _acc(_projects([(0, 150)]), _parcels(), total_sd=independent).totals.iloc[0]
    assert tot["carbon_sd_t"] == pytest.approx(np.sqrt(1 + 1), rel=1e-12)


def test_slivers_excluded_and_reported():
    # A: 0-103 -> P1 piece 3 m x 100 m = 300 m² < 400: a sliver.  B: 0-150 + 197-210 -> P1 in two parts,
    # 5,000 m² (kept) and 300 m² (sliver); P2 piece 10 m x 100 m = 1,000 m² (kept).
    prj = _projects([(0, 103), [(0, 150), (197, 210)]])
    a = _acc(prj.iloc[[0]], _parcels(), min_piece_m2=400.0)  # separately: both hold P0 wholly (a conflict)
    b = _acc(prj.iloc[[1]], _parcels(), min_piece_m2=400.0)
    a1 = _row(a.parcels, "A", "P1")
    assert a1["sliver_ha"] == pytest.approx(0.03) and a1["counted_ha"] == 0 and a1["share"] == 0
    b1 = _row(b.parcels, "B", "P1")
    assert b1["sliver_ha"] == pytest.approx(0.03) and b1["counted_ha"] == pytest.approx(0.5)
    assert _row(b.parcels, "B", "P2")["counted_ha"] == pytest.approx(0.1)
    ta, tb = a.totals.iloc[0], b.totals.iloc[0]
    assert ta["area_ha"] == pytest.approx(1.0) and ta["n_parcels"] == 1
    assert ta["sliver_ha"] == pytest.approx(0.03)
    assert tb["area_ha"] == pytest.approx(1.0 + 0.5 + 0.1)
    assert tb["carbon_t"] == pytest.approx(10 + 0.5 * 20 + 0.1 * 30)
    both = _acc(prj, _parcels(), min_piece_m2=400.0).totals.set_index("project_id")  # P0 now contested
    assert both.loc["A", "area_ha"] == pytest.approx(0.0, abs=1e-12)
    assert both.loc["B", "area_ha"] == pytest.approx(0.5 + 0.1)
    # without the rule the pieces count
    t0 = _acc(_projects([(0, 103)]), _parcels(), min_piece_m2=0.0).parcels
    assert _row(t0, "A", "P1")["counted_ha"] == pytest.approx(0.03)


def test_sliver_threshold_by_start_date():
    """A 6 m strip (600 m²) is kept under 400 m² and excluded under 667 m² (projects started by 2019)."""
    prj = _projects([(0, 106), (194, 300)], start=["2019-06-01", "2021-03-01"])
    thr = min_piece_by_start(prj.set_index("project_id")["start"], 400.0, 667.0)
    assert thr == {"A": 667.0, "B": 400.0}
    t = _acc(prj, _parcels(), min_piece_m2=thr).parcels
    assert _row(t, "A", "P1")["counted_ha"] == 0 and _row(t, "A", "P1")["sliver_ha"] == pytest.approx(0.06)
    assert _row(t, "B", "P1")["counted_ha"] == pytest.approx(0.06)


def test_only_eligible_land_counts():
    acc = _acc(_projects([(0, 250)]), _parcels(forest=[True, False, True, True]))
    tot = acc.totals.iloc[0]
    assert tot["ineligible_ha"] == pytest.approx(1.0)
    assert tot["area_ha"] == pytest.approx(1.0 + 0.5)
    assert tot["carbon_t"] == pytest.approx(10 + 0.5 * 30)
    assert _row(acc.parcels, "A", "P1")["carbon_t"] == 0
    everything = _acc(_projects([(0, 250)]), _parcels(forest=[True, False, True, True]), eligible_field=None)
    assert everything.totals.iloc[0]["carbon_t"] == pytest.approx(10 + 20 + 15)


def test_conflict_excluded_for_both():
    """A: 0-200, B: 150-300.  P1 (100-200) lies wholly in A, its half 150-200 also in B: 0.5 ha contested."""
    acc = _acc(_projects([(0, 200), (150, 300)]), _parcels())
    c = acc.conflicts
    assert len(c) == 1
    assert (c.iloc[0]["project_a"], c.iloc[0]["project_b"], c.iloc[0]["parcel_id"]) == ("A", "B", "P1")
    assert c.iloc[0]["overlap_ha"] == pytest.approx(0.5)
    assert c.iloc[0]["carbon_at_stake_t"] == pytest.approx(0.5 * 20)
    assert c.iloc[0]["awarded_to"] is None or pd.isna(c.iloc[0]["awarded_to"])
    tot = acc.totals.set_index("project_id")
    assert tot.loc["A", "area_ha"] == pytest.approx(1.5) and tot.loc["A", "contested_ha"] == pytest.approx(0.5)
    assert tot.loc["B", "area_ha"] == pytest.approx(1.0) and tot.loc["B", "contested_ha"] == pytest.approx(0.5)
    assert tot.loc["A", "carbon_t"] == pytest.approx(10 + 0.5 * 20)
    assert tot.loc["B", "carbon_t"] == pytest.approx(30)
    assert _row(acc.parcels, "A", "P1")["share"] == pytest.approx(0.5)
    assert not _row(acc.parcels, "A", "P1")["whole_parcel"] or _row(acc.parcels, "A", "P1")["share"] < 1


def test_conflict_after_ineligible_and_sliver_pieces():
    """Pieces dropped before the conflict step (non-forest P0, a sliver) do not shift which piece is which."""
    prj = _projects([(0, 200), (97, 300)])  # B's 3 m strip in P0 is a sliver; P0 is not forest anyway
    acc = _acc(prj, _parcels(forest=[False, True, True, True]))
    tot = acc.totals.set_index("project_id")
    assert tot.loc["A", "area_ha"] == pytest.approx(0.0, abs=1e-12)  # P1 wholly contested
    assert tot.loc["B", "area_ha"] == pytest.approx(1.0)
    assert tot.loc["A", "ineligible_ha"] == pytest.approx(1.0)
    assert acc.conflicts["overlap_ha"].tolist() == pytest.approx([1.0])


@pytest.mark.parametrize("dates,area_a,area_b", [(["2020-01-01", "2021-01-01"], 2.0, 1.0),
                                                 (["2022-01-01", "2021-01-01"], 1.5, 1.5)])
def test_conflict_first_registered(dates, area_a, area_b):
    prj = _projects([(0, 200), (150, 300)], registered=dates)
    acc = _acc(prj, _parcels(), conflict_rule="first_registered", registration_field="registered")
    tot = acc.totals.set_index("project_id")
    assert tot.loc["A", "area_ha"] == pytest.approx(area_a)
    assert tot.loc["B", "area_ha"] == pytest.approx(area_b)
    assert acc.conflicts.iloc[0]["awarded_to"] == ("A" if area_a == 2.0 else "B")
    # never summed twice: the projects' P1 carbon adds up to P1's carbon at most
    p1 = acc.parcels[acc.parcels.parcel_id == "P1"]
    assert p1["carbon_t"].sum() == pytest.approx(20.0)


def test_three_way_conflict():
    """A 0-200, B 150-300, C 120-180 over P1 (100-200).  exclude: only A's 100-120 is uncontested in P1.
    first_registered with C < A < B: C 120-180 (0.6 ha), A 100-120 + 180-200 (0.4 ha), B nothing in P1."""
    prj = _projects([(0, 200), (150, 300), (120, 180)], registered=["2020-01-01", "2021-01-01", "2019-01-01"])
    ex = _acc(prj, _parcels()).parcels
    assert _row(ex, "A", "P1")["counted_ha"] == pytest.approx(0.2)
    assert _row(ex, "B", "P1")["counted_ha"] == pytest.approx(0.0, abs=1e-12)
    assert _row(ex, "C", "P1")["counted_ha"] == pytest.approx(0.0, abs=1e-12)
    fr = _acc(prj, _parcels(), conflict_rule="first_registered", registration_field="registered")
    t = fr.parcels
    assert _row(t, "C", "P1")["counted_ha"] == pytest.approx(0.6)
    assert _row(t, "A", "P1")["counted_ha"] == pytest.approx(0.4)
    assert _row(t, "B", "P1")["counted_ha"] == pytest.approx(0.0, abs=1e-12)
    assert t[t.parcel_id == "P1"]["counted_ha"].sum() == pytest.approx(1.0)
    pairs = {tuple(sorted((r.project_a, r.project_b))): r.overlap_ha for r in fr.conflicts.itertuples()}
    assert pairs == pytest.approx({("A", "B"): 0.5, ("A", "C"): 0.6, ("B", "C"): 0.3})


def _random_layers(seed=3):
    rng = np.random.default_rng(seed)
    pts = shapely.multipoints(rng.uniform([X0, Y0], [X0 + 3000, Y0 + 3000], (300, 2)))
    frame = shapely.box(X0, Y0, X0 + 3000, Y0 + 3000)
    cells = shapely.intersection(np.asarray(shapely.get_parts(shapely.voronoi_polygons(pts, extend_to=frame))), frame)
    parcels = gpd.GeoDataFrame({"parcel_id": [f"q{i}" for i in range(len(cells))]}, geometry=cells, crs="EPSG:4549")
    c = rng.uniform([X0, Y0], [X0 + 3000, Y0 + 3000], (12, 2))
    prj = [shapely.Point(x, y).buffer(r) for (x, y), r in zip(c, rng.uniform(100, 600, 12))]
    prj += [shapely.affinity.rotate(shapely.box(X0 + 500, Y0 + 500, X0 + 2200, Y0 + 900), 33)]
    projects = gpd.GeoDataFrame({"project_id": [f"j{i}" for i in range(len(prj))]}, geometry=prj, crs="EPSG:4549")
    return projects, parcels


def test_overlay_equals_geopandas_overlay():
    projects, parcels = _random_layers()
    ours = overlay_pieces(projects, parcels)
    ref = gpd.overlay(projects, parcels, how="intersection", keep_geom_type=True)
    ref = ref.assign(a=ref.area)[lambda d: d.a > 0]
    m = ours.merge(ref[["project_id", "parcel_id", "a"]], on=["project_id", "parcel_id"], how="outer", indicator=True)
    assert (m["_merge"] == "both").all(), m[m["_merge"] != "both"]
    np.testing.assert_allclose(m["piece_m2"], m["a"], rtol=1e-9, atol=1e-6)
    assert ours["inside"].sum() > 20  # the fast path was taken
    np.testing.assert_array_equal(ours.loc[ours.inside, "piece_m2"], ours.loc[ours.inside, "parcel_m2"])


def test_totals_against_overlay_with_overlapping_projects():
    """Σ counted area over all projects equals the union of projects ∩ parcels minus the contested
    area (shapely, computed independently): nothing counted twice under 'exclude'."""
    projects, parcels = _random_layers()
    parcels["carbon_t"], parcels["carbon_sd_t"], parcels["is_forest"] = 1.0, 0.1, True
    acc = _acc(projects, parcels, min_piece_m2=0.0)
    geoms = list(projects.geometry)
    once = shapely.union_all([shapely.difference(g, shapely.union_all(geoms[:i] + geoms[i + 1:]))
                              for i, g in enumerate(geoms)])  # area covered by exactly one project
    frame = shapely.union_all(parcels.geometry)
    assert acc.totals["area_ha"].sum() * 1e4 == pytest.approx(shapely.intersection(once, frame).area, rel=1e-9)
    assert len(acc.conflicts) > 0
    assert (acc.parcels.groupby("parcel_id")["share"].sum() <= 1 + 1e-12).all()


@pytest.mark.parametrize("rule,expected", [("report", lambda u: 0.0),
                                           ("proportional", lambda u: 0.524417 / 1.645006 * u),
                                           ("excess", lambda u: u - 0.10)])
def test_deduction_rules(rule, expected):
    parcels = _parcels()
    parcels["carbon_sd_t"] = [3.0, 6.0, 9.0, 12.0]  # relative SD 0.3: half-width ~0.49 > 0.10
    coef = 0.524417 / 1.645006 if rule == "proportional" else 1.0
    tot = _acc(_projects([(0, 200)]), parcels,
               deduction=Deduction(rule, 0.10, coef, "test source")).totals.iloc[0]
    u = norm.ppf(0.95) * (3 + 6) / 30
    assert tot["rel_half_width"] == pytest.approx(u, rel=1e-12)
    assert tot["exceeds_precision"]
    assert tot["deduction_fraction"] == pytest.approx(expected(u), rel=1e-12, abs=1e-15)
    assert tot["carbon_credited_t"] == pytest.approx(30 * (1 - expected(u)), rel=1e-12)
    assert tot["co2e_credited_t"] == pytest.approx(30 * (1 - expected(u)) * CO2_C, rel=1e-12)


def test_no_deduction_below_threshold():
    tot = _acc(_projects([(0, 200)]), _parcels(), deduction=Deduction("excess", 0.5, 1.0, "x")).totals.iloc[0]
    assert tot["rel_half_width"] < 0.5 and tot["deduction_fraction"] == 0.0


def test_config_builds_the_deduction():
    cfg = ProjectsConfig(deduction_rule="proportional", deduction_coefficient=0.318794,
                         deduction_source="ART TREES v2.0 §8 Eq. 10-11")
    d = cfg.deduction()
    assert d.fraction(0.2) == pytest.approx(0.318794 * 0.2)
    with pytest.raises(ValueError):
        ProjectsConfig(deduction_rule="excess")  # a deduction needs its source
    with pytest.raises(ValueError):
        ProjectsConfig(conflict_rule="first_registered")


def _one_line(err, *parts):
    msg = str(err.value)
    assert "\n" not in msg, msg
    for p in parts:
        assert p in msg, (p, msg)


def test_errors_are_one_line():
    with pytest.raises(CRSError) as e:
        _acc(_projects([(0, 150)]).to_crs("EPSG:4490"), _parcels())
    _one_line(e, "CGCS2000", "reproject")
    prj = _projects([(0, 150), (200, 300)])
    prj["project_id"] = ["A", "A"]
    with pytest.raises(FieldError) as e:
        _acc(prj, _parcels())
    _one_line(e, "projects", "'project_id'", "rows [1, 2]")
    bad = _parcels()
    bad.loc[1, "carbon_t"] = np.nan
    with pytest.raises(FieldError) as e:
        _acc(_projects([(0, 150)]), bad)
    _one_line(e, "['P1']", "carbon_t")
    tie = _projects([(0, 200), (150, 300)], registered=["2020-01-01", "2020-01-01"])
    with pytest.raises(FieldError) as e:
        _acc(tie, _parcels(), conflict_rule="first_registered", registration_field="registered")
    _one_line(e, "'A'", "'B'", "'P1'", "registration")
    with pytest.raises(ConfigError) as e:
        _acc(tie, _parcels(), conflict_rule="first_registered")
    _one_line(e, "registration_field")
    text = _parcels()
    text["is_forest"] = ["True", "False", "True", "True"]  # text "False" would read as true
    with pytest.raises(FieldError) as e:
        _acc(_projects([(0, 150)]), text)
    _one_line(e, "'is_forest'", "rows [1, 2, 3, 4]")
