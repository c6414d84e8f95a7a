"""The synthetic county's UAV windows: stem maps, UAV LiDAR tiles, village polygons and the true tree list.

Every expected value is computed here from the written files (rasters, layers, LAZ points, the allometry
table) or from first principles, not by calling the code under test."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import laspy
import numpy as np
import pandas as pd
import pytest
import rasterio
import rasterio.features
import yaml
from affine import Affine
from scipy import ndimage
from scipy.spatial import cKDTree

from forestcarbon.config import default_allometry_path
from forestcarbon_synth import ground, trees as stems
from forestcarbon_synth.forest_types import FOREST_TYPES


@pytest.fixture(scope="module")
def scene(small_scene) -> Path:
    return Path(small_scene).parent


@pytest.fixture(scope="module")
def truth(scene) -> pd.DataFrame:
    return pd.read_csv(scene / "truth/trees.csv", dtype={"parcel_id": str, "village_id": str})


@pytest.fixture(scope="module")
def points(scene):
    """All UAV returns: x, y, z, class, return number, and height above the truth DEM (bilinear, computed here)."""
    cols = {k: [] for k in ("x", "y", "z", "cls", "rn")}
    for f in sorted((scene / "lidar_uav").glob("*.laz")):
        las = laspy.read(f)
        for k, v in (("x", las.x), ("y", las.y), ("z", las.z), ("cls", las.classification), ("rn", las.return_number)):
            cols[k].append(np.asarray(v))
    p = {k: np.concatenate(v) for k, v in cols.items()}
    with rasterio.open(scene / "truth/dem_truth.tif") as src:
        dem, tr = src.read(1).astype(float), src.transform
    col = (p["x"] - tr.c) / tr.a - 0.5
    row = (p["y"] - tr.f) / tr.e - 0.5
    p["hag"] = p["z"] - ndimage.map_coordinates(dem, [row, col], order=1, mode="nearest")
    return p


def _surface(h, r, ln, cone, d):
    """A crown's surface height at distance d (cone H - L d/R, half-ellipsoid H - L + L sqrt(1-(d/R)^2))."""
    q = d / r
    z = np.where(cone, h - ln * q, h - ln + ln * np.sqrt(np.clip(1 - q**2, 0, None)))
    return np.where(q < 1, z, -np.inf)


def test_config_and_files(scene, truth):
    cfg = yaml.safe_load((scene / "config.yaml").read_text())
    assert cfg["inputs"]["tree_lidar"] == "lidar_uav"
    assert cfg["inputs"]["villages"] == "villages/villages.gpkg" and cfg["inputs"]["villages_layer"] == "villages"
    assert cfg["inputs"]["village_id"] == "village_id" and cfg["truth"]["trees"] == "truth/trees.csv"
    from forestcarbon.config import Config

    Config.model_validate(cfg)  # the pipeline's own schema accepts the keys
    windows = gpd.read_file(scene / "truth/uav_windows.gpkg")
    assert len(windows) == 1  # a 3 km county
    x0, y0, x1, y1 = windows.total_bounds
    assert x1 - x0 == 300 and y1 - y0 == 300 and all(float(v).is_integer() for v in (x0, y0))
    assert set(truth["window"]) == {"W1"}
    readme = json.loads((scene / "truth/README.json").read_text())
    assert "carbon_definition" in readme["trees"] and readme["trees"]["trees"] == len(truth)


def test_windows_hold_forest_and_village_land(scene, truth):
    parcels = gpd.read_file(scene / "parcels/parcels.gpkg")
    ptruth = pd.read_csv(scene / "truth/parcel_carbon_truth.csv", dtype=str)
    windows = gpd.read_file(scene / "truth/uav_windows.gpkg")
    hit = gpd.sjoin(parcels, windows, predicate="intersects").merge(ptruth[["parcel_id", "land_use"]], on="parcel_id")
    area = hit.assign(a=hit.geometry.intersection(windows.geometry.iloc[0]).area).groupby("land_use").a.sum()
    assert area.get("forest", 0) > 0.2 * 90_000
    assert area.drop(["forest", "young_plantation", "clearcut", "water"], errors="ignore").sum() > 0.1 * 90_000
    assert truth["village_tree"].any() and (~truth["village_tree"]).any()


def test_stand_agb_matches_the_true_agb_field(scene, truth):
    """Summed tree AGB per parcel part in the window vs the AGB raster integrated over that part
    (rasterised here at 0.5 m, each fine pixel taking its 10 m cell's value)."""
    parcels = gpd.read_file(scene / "parcels/parcels.gpkg")
    ptruth = pd.read_csv(scene / "truth/parcel_carbon_truth.csv", dtype=str)
    use = dict(zip(ptruth.parcel_id, ptruth.land_use))
    w = gpd.read_file(scene / "truth/uav_windows.gpkg").geometry.iloc[0]
    with rasterio.open(scene / "truth/agb_truth.tif") as src:
        agb, tr = src.read(1).astype(float), src.transform
    f = 20  # 0.5 m
    x0, y0, x1, y1 = w.bounds
    ftr = Affine(0.5, 0, x0, 0, -0.5, y1)
    n = int((x1 - x0) * 2)
    hits = parcels[parcels.intersects(w)].reset_index(drop=True)
    ids = rasterio.features.rasterize(((g.intersection(w), i) for i, g in enumerate(hits.geometry)),
                                      out_shape=(n, n), transform=ftr, fill=-1, dtype="int32")
    r0, c0 = int((tr.f - y1) / 10), int((x0 - tr.c) / 10)
    fine = np.repeat(np.repeat(agb[r0:r0 + n // f, c0:c0 + n // f], f, 0), f, 1)
    ok = ids >= 0
    field_kg = np.bincount(ids[ok], weights=fine[ok], minlength=len(hits)) * 0.25 / 10_000 * 1000
    area_ha = np.bincount(ids[ok], minlength=len(hits)) * 0.25 / 10_000
    summed = truth.groupby("parcel_id").agb_kg.sum()
    checked = 0
    for i, pid in enumerate(hits.parcel_id):
        if use[pid] in ("forest", "young_plantation", "village") and area_ha[i] > 0.3 and field_kg[i] > 5000:
            got = summed.get(pid, 0.0)
            assert abs(got / field_kg[i] - 1) < 0.10, (pid, use[pid], got, field_kg[i])
            checked += 1
        if use[pid] in ("clearcut", "water"):
            assert pid not in summed.index
    assert checked >= 3


def test_visible_trees_top_the_point_cloud(truth, points):
    """Max height above ground of first returns within 0.5 m of a visible tree's stem equals its height,
    less what the sampling misses: the nearest of a Poisson cloud of density rho is farther than r0 with
    probability exp(-rho pi r0^2) (r0 for 1e-4), and a crown (cone or half-ellipsoid) drops at most
    L r0 / R there; plus 5 SD of the 3 cm range noise either way."""
    first = (points["rn"] == 1) & (points["cls"] != 7)
    x, y, hag = points["x"][first], points["y"][first], points["hag"][first]
    rho = first.sum() / 90_000
    assert 20 <= rho <= 40
    r0 = np.sqrt(np.log(1e4) / (np.pi * rho))
    kd = cKDTree(np.c_[x, y])
    b = (x.min(), y.min(), x.max(), y.max())
    vis = truth[truth.visible & truth.x.between(b[0] + 1, b[2] - 1) & truth.y.between(b[1] + 1, b[3] - 1)]
    assert len(vis) > 100
    near = kd.query_ball_point(vis[["x", "y"]].to_numpy(), 0.5)
    top = np.array([hag[i].max() if len(i) else -np.inf for i in near])
    h = vis.height_m.to_numpy()
    drop = vis.crown_length_m.to_numpy() * np.minimum(r0 / (vis.crown_diameter_m.to_numpy() / 2), 1)
    ok = (top >= h - drop - 0.15) & (top <= h + 0.15)
    assert ok.mean() > 0.99, (ok.mean(), vis[~ok][["type", "height_m"]].head())
    # the typical miss: the median nearest return lies sqrt(ln 2 / (pi rho)) from the stem, and a crown drops
    # at most L/R per metre there (cones exactly that, half-ellipsoids less)
    slope = vis.crown_length_m.to_numpy() / (vis.crown_diameter_m.to_numpy() / 2)
    assert np.median((h - top) / slope) < 1.5 * np.sqrt(np.log(2) / (np.pi * rho))


def test_hidden_trees_are_under_a_taller_crown(truth, points):
    """Brute force over neighbours: a hidden tree has another crown above its apex within 0.5 m of its stem,
    a visible one has none; and where another crown is over the stem itself by more than 1 m, the point
    cloud's highest return right over the stem is above the hidden tree."""
    xy = truth[["x", "y"]].to_numpy()
    h, r = truth.height_m.to_numpy(), truth.crown_diameter_m.to_numpy() / 2
    ln, cone = truth.crown_length_m.to_numpy(), (truth.crown_shape == "cone").to_numpy()
    kd = cKDTree(xy)
    over_disc, over_stem = np.zeros(len(truth)), np.zeros(len(truth))
    for i, nb in enumerate(kd.query_ball_point(xy, r.max() + 0.5)):
        nb = np.array([j for j in nb if j != i], dtype=int)
        if nb.size == 0:
            over_disc[i] = over_stem[i] = -np.inf
            continue
        d = np.hypot(*(xy[nb] - xy[i]).T)
        over_disc[i] = _surface(h[nb], r[nb], ln[nb], cone[nb], np.maximum(d - 0.5, 0)).max()
        over_stem[i] = _surface(h[nb], r[nb], ln[nb], cone[nb], d).max()
    hidden = ~truth.visible.to_numpy()
    assert hidden.any() and (~hidden).any()
    assert (over_disc[hidden] > h[hidden]).all()
    assert (over_disc[~hidden] <= h[~hidden] + 1e-9).all()
    deep = hidden & (over_stem > h + 1.0)
    first = (points["rn"] == 1) & (points["cls"] != 7)
    kdp = cKDTree(np.c_[points["x"][first], points["y"][first]])
    hag = points["hag"][first]
    near = kdp.query_ball_point(xy[deep], 0.2)
    seen = np.array([hag[n].max() > h[deep][k] if len(n) else True for k, n in enumerate(near)])
    assert deep.sum() > 10 and seen.mean() > 0.97


def test_village_trees_lie_outside_forest_parcels(scene, truth):
    parcels = gpd.read_file(scene / "parcels/parcels.gpkg")
    ptruth = pd.read_csv(scene / "truth/parcel_carbon_truth.csv", dtype=str)
    forest = set(ptruth.parcel_id[ptruth.land_class == "forest"])
    pts = gpd.GeoDataFrame(truth, geometry=gpd.points_from_xy(truth.x, truth.y), crs=parcels.crs)
    j = gpd.sjoin(pts, parcels[["parcel_id", "geometry"]], predicate="within", how="left", rsuffix="p")
    j = j[~j.index.duplicated()]
    in_forest = j["parcel_id_p"].isin(forest).to_numpy()
    np.testing.assert_array_equal(truth.village_tree.to_numpy(), ~in_forest)
    assert (j["parcel_id_p"].fillna("") == truth.parcel_id.fillna("")).all()
    vt = truth[truth.village_tree]
    assert len(vt) > 5 and vt.dbh_cm.between(15, 80).all() and (vt.species == "樟树").mean() > 0.5
    villages = gpd.read_file(scene / "villages/villages.gpkg", layer="villages")
    v = gpd.sjoin(pts, villages[["village_id", "geometry"]], predicate="within", how="left", rsuffix="v")
    v = v[~v.index.duplicated()]
    assert (v["village_id_v"].astype(str) == truth.village_id.astype(str)).all()
    # one polygon per administrative village, together covering the county, forest and farmland alike
    assert villages.village_id.is_unique and villages.village_id.str.len().eq(12).all()
    np.testing.assert_allclose(villages.area.sum(), parcels.area.sum(), rtol=1e-6)
    cls = gpd.sjoin(parcels[["parcel_id", "geometry"]].assign(geometry=parcels.representative_point()), villages,
                    predicate="within")
    cls = cls.merge(ptruth[["parcel_id", "land_class"]], on="parcel_id")
    assert (cls.groupby("village_id").land_class.nunique() == 2).any()


def test_carbon_by_hand_from_the_allometry_table(truth):
    """carbon = AGB cf_above + AGB R(stand AGB density) cf_below, read from the allometry YAML and species table."""
    path = default_allometry_path()
    table = yaml.safe_load(path.read_text())
    species = pd.read_csv(path.parent / table["species_table"], comment="#", dtype=str).fillna("")
    names = {}
    for row in species.itertuples():
        for n in [row.chinese_name, *row.other_names.split("|")]:
            names[n] = row.group
    d = table["defaults"]
    checked = set()
    for sp in ("杉木", "毛竹", "樟树", "马尾松"):
        rows = truth[truth.species == sp].head(3)
        for t in rows.itertuples():
            g = table["groups"].get(names[sp], {})
            cfa = g.get("carbon_fraction_above", d["carbon_fraction"])
            cfb = g.get("carbon_fraction_below", d["carbon_fraction"])
            rs = g.get("root_shoot") or d["root_shoot"]
            ratio = rs["ratio"] if "ratio" in rs else (rs["low"] if t.stand_agb_mg_ha <= rs["threshold_agb_mg_ha"]
                                                       else rs["high"])
            expected = t.agb_kg * cfa + t.agb_kg * ratio * cfb
            assert t.carbon_kg == pytest.approx(expected, abs=2e-3), (sp, t.tree_id)
            checked.add(sp)
    assert {"樟树"} <= checked and len(checked) >= 2
    # AGB is the county's own allometry at the listed DBH and height
    fir = truth[truth.type == "chinese_fir"].head(5)
    if len(fir):
        d_, h_ = fir.dbh_cm.to_numpy(), fir.height_m.to_numpy()
        np.testing.assert_allclose(fir.agb_kg, 0.065388 * d_**2.01735 * h_**0.49425, atol=2e-3)


def test_laz_header(scene, points):
    files = sorted((scene / "lidar_uav").glob("*.laz"))
    assert len(files) == 4  # 150 m tiles over a 300 m window
    for f in files:
        with laspy.open(f) as r:
            hd = r.header
            assert hd.point_format.id == 6 and str(hd.version) == "1.4"
            assert hd.parse_crs().to_epsg() == 4549
    cls = set(np.unique(points["cls"]).tolist())
    assert {2, 5, 7} <= cls and cls <= {2, 4, 5, 6, 7, 9}
    ground_ = points["cls"] == 2
    assert np.abs(points["hag"][ground_]).max() < 0.2  # ground returns lie on the DEM
    assert (points["rn"] > 1).sum() > 0.05 * (points["rn"] == 1).sum()  # last returns through gaps


def _old_tree_list(rng, t, age, target_mg_ha, area_m2, htop_m):
    """The plot tree list as ground._tree_list drew it before the drawing was shared (commit c7ae214)."""
    target_kg = target_mg_ha * area_m2 / 10_000 * 1000
    if t.key == "moso_bamboo":
        dbh = rng.normal(10.0, 1.5, 4000).clip(5, 16)
    else:
        dq = min(t.dbh_max, 3.0 + t.dbh_per_year * age)
        dbh = rng.gamma(8.0, dq / 8.0, 4000).clip(1.5, t.dbh_max * 1.3)
    htop = max(2.0, float(htop_m))
    d95 = np.quantile(dbh, 0.95)
    hgt = np.clip(htop * (dbh / d95) ** 0.6 * rng.normal(1, 0.08, dbh.size), 1.5, None)
    du = rng.integers(1, 4, dbh.size) if t.key == "moso_bamboo" else None
    kg = ground.tree_agb_kg(t.key, dbh, hgt, du)
    n = int(np.argmin(np.abs(np.concatenate([[0.0], np.cumsum(kg)]) - target_kg)))
    return dbh[:n].round(1), hgt[:n].round(1)


@pytest.mark.parametrize("t", FOREST_TYPES, ids=lambda t: t.key)
def test_plot_tree_lists_unchanged(t):
    new = ground._tree_list(np.random.default_rng(3), "P1", t, t.species, 20, 120.0, 666.7, 14.0)
    d, h = _old_tree_list(np.random.default_rng(3), t, 20, 120.0, 666.7, 14.0)
    assert len(new) == len(d) > 0
    np.testing.assert_array_equal(new.dbh_cm, d)
    np.testing.assert_array_equal(new.height_m, h)


def test_visibility_on_two_trees():
    """A 20 m broadleaf with a 10 m crown over a 12 m tree 2 m away hides it; 8 m away it does not reach it."""
    for dx, hidden in ((2.0, True), (8.0, False)):
        t = pd.DataFrame({"x": [0.0, dx], "y": [0.0, 0.0], "height_m": [20.0, 12.0], "crown_diameter_m": [10.0, 3.0],
                          "crown_length_m": [12.0, 6.0], "crown_shape": ["ellipsoid", "cone"]})
        # at the short tree's disc the tall crown is 20 - 12 + 12 sqrt(1 - ((dx - 0.5)/5)^2)
        top = 8 + 12 * np.sqrt(max(1 - ((dx - 0.5) / 5) ** 2, 0)) if dx - 0.5 < 5 else -np.inf
        assert (top > 12) == hidden
        np.testing.assert_array_equal(stems.visibility(t), [True, not hidden])
