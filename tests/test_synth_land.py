"""The synthetic county's non-forest land, land-class codes, land-cover input and clustered plots."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
import shapely
from pyproj import Transformer

from forestcarbon_synth import land
from forestcarbon_synth.landscape import CRS, Frame


@pytest.fixture(scope="module")
def scene(small_scene) -> Path:
    return Path(small_scene).parent


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def test_non_forest_cells_hold_no_woody_biomass(scene):
    cover = _read(scene / "truth/land_cover_truth.tif")
    agb = _read(scene / "truth/agb_truth.tif")
    code = {c.key: c.code for c in land.COVERS}
    for key in ("water", "paddy", "cropland", "built_up"):
        sel = cover == code[key]
        assert sel.any(), key
        assert (agb[sel] == 0).all(), key
    # every land use the brief asks for is in the 3 km county
    assert (cover == code["road"]).any() and (cover == code["clearcut"]).any()
    clear = agb[cover == code["clearcut"]]
    assert 0 < clear.min() and clear.mean() < 2.5  # regrowth 0.5-2.5 Mg/ha x texture
    assert agb[cover == code["forest"]].mean() > 30
    legend = json.loads(rasterio.open(scene / "truth/land_cover_truth.tif").tags()["legend"])
    assert {v["key"] for v in legend.values() if not v["forest"]} == {"road", "water", "paddy", "cropland",
                                                                      "built_up", "village_trees"}


def test_road_share_is_the_covered_area():
    """A 14 m road along y = 50 m over a 100 m frame of 10 m cells: the two cells it straddles are 7/10
    covered (43-50 and 50-57 m), all others 0."""
    frame = Frame(0.0, 0.0, 100.0, 10.0)
    road = shapely.LineString([(-10, 50), (110, 50)]).buffer(7, cap_style="flat")
    share = land._fine_fraction([road], frame)
    expected = np.zeros(10)
    expected[[4, 5]] = 0.7  # rows 4 and 5 from the top span y 60-50 and 50-40
    np.testing.assert_allclose(share[:, 3], expected, atol=1e-6)
    np.testing.assert_allclose(share.sum() * 100, 14 * 100, rtol=1e-6)  # 14 m x 100 m of road


def test_di_lei_codes_and_traps(scene):
    parcels = gpd.read_file(scene / "parcels/parcels.gpkg")
    truth = pd.read_csv(scene / "truth/parcel_carbon_truth.csv", dtype=str, keep_default_na=False)
    assert "DI_LEI" in parcels and parcels.DI_LEI.map(type).eq(str).all()
    m = parcels[["parcel_id", "DI_LEI"]].merge(truth[["parcel_id", "di_lei_trap", "di_lei_correct", "land_use"]],
                                               on="parcel_id")
    restored = m.DI_LEI.where(m.DI_LEI.str.len() == 4, "0" + m.DI_LEI)
    assert restored.isin(list(land.DI_LEI_CODES)).all()
    lost = m.di_lei_trap.str.contains("lost_zero")
    assert lost.any() and (m.DI_LEI[lost].str.len() == 3).all() and (m.DI_LEI[~lost].str.len() == 4).all()
    wrong = restored != m.di_lei_correct
    # a code differs from the correct one only where the trap says so: stale clear-cuts and 0200 farmland
    assert set(m.di_lei_trap[wrong].str.replace("+lost_zero", "")) <= {"stale", "unspecified"}
    assert (m.loc[m.di_lei_trap == "converted", "DI_LEI"] == "1633").all()
    assert (restored[m.land_use == "water"] == "0230").all() and (restored[m.land_use == "village"] == "0250").all()
    # forest land / non-forest split of the code list
    assert "0161" in land.FOREST_LAND_CODES and "1633" in land.FOREST_LAND_CODES
    assert "0210" in land.NON_FOREST_CODES and not set(land.FOREST_LAND_CODES) & set(land.NON_FOREST_CODES)


def test_clustered_plots_on_any_land(scene):
    plots = gpd.read_file(scene / "ground/plots.gpkg")
    trees = pd.read_csv(scene / "ground/trees.csv")
    sizes = plots.groupby("cluster").size()
    assert sizes.max() <= 5 and sizes.median() >= 3
    c = plots.geometry.centroid
    for _, g in c.groupby(plots.cluster):
        xy = np.c_[g.x, g.y]
        far = np.sqrt(((xy[:, None] - xy[None]) ** 2).sum(-1)).max()
        assert far <= 300 * np.sqrt(2) + 1e-6  # the diagonal of the 300 m square
    empty = ~plots.plot_id.isin(trees.plot_id)
    assert empty.any()
    restored = plots.DI_LEI.str.zfill(4)
    assert set(restored[empty]) <= {"0210", "0230", "0250", "0161"}
    assert not (set(restored[~empty]) & {"0210", "0230", "0161"})  # farmland, water, clear-cut: no tallied trees
    bamboo = trees.species == "毛竹"
    assert bamboo.any() and trees.loc[bamboo, "age"].isin([1, 2, 3]).all() and trees.loc[~bamboo, "age"].isna().all()


def test_pipeline_keeps_plots_without_trees_at_zero(scene):
    """Plots with no row in the tree list come out of the pipeline's plot biomass with AGB 0, not dropped."""
    from forestcarbon.config import default_allometry_path
    from forestcarbon.models.allometry import load_registry
    from forestcarbon.models.plots import plot_biomass
    from forestcarbon.vector.inventory import read_trees
    from forestcarbon.vector.plots import read_plots

    plots = read_plots(scene / "ground/plots.gpkg", None, "plot_id", CRS)
    trees = read_trees(scene / "ground/trees.csv")
    _, out = plot_biomass(trees, plots, load_registry(default_allometry_path()))
    assert len(out) == len(plots)
    empty = ~out.plot_id.isin(trees.plot_id)
    assert empty.sum() > 0 and (out.loc[empty, "agb_mg_ha"] == 0).all() and (out.loc[empty, "n_trees"] == 0).all()
    assert (out.loc[~empty, "agb_mg_ha"] > 0).all()


def test_landcover_input_and_its_stated_accuracy(scene):
    path = scene / "landcover" / "worldcover_like_2021.tif"
    with rasterio.open(path) as src:
        assert src.crs.to_epsg() == 4326
        np.testing.assert_allclose([src.res[0], src.res[1]], [1 / 12000, 1 / 12000])
        mapped, tags = src.read(1), src.tags()
        tr = src.transform
    assert set(np.unique(mapped)) - {0} <= set(land.WORLDCOVER)
    # recompute the agreement: truth cell centres looked up in the product (nearest), here by pyproj
    wc_truth = _read(scene / "truth/worldcover_truth.tif")
    with rasterio.open(scene / "truth/worldcover_truth.tif") as src:
        t = src.transform
    rows, cols = np.mgrid[0:wc_truth.shape[0], 0:wc_truth.shape[1]]
    x, y = t.c + (cols + 0.5) * t.a, t.f + (rows + 0.5) * t.e
    lon, lat = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True).transform(x, y)
    c = np.floor((lon - tr.c) / tr.a).astype(int)
    r = np.floor((lat - tr.f) / tr.e).astype(int)
    seen = mapped[r, c]
    oa = float(np.mean(seen == wc_truth))
    assert oa == pytest.approx(float(tags["stated_overall_accuracy"]), abs=0.005)
    assert 0.75 < oa < 0.95  # a realistic 10 m product (ESA WorldCover 2021: 76.7 % globally)
    tree = seen == 10
    assert float(np.mean(wc_truth[tree] == 10)) == pytest.approx(float(tags["stated_tree_cover_users_accuracy"]), abs=0.005)
    open_land = wc_truth != 10
    commission = float(np.mean(seen[open_land] == 10))
    assert commission == pytest.approx(float(tags["stated_open_land_mapped_as_tree_cover"]), abs=0.005)
    assert 0.02 < commission < 0.2  # a mask from this product alone leaves some non-forest in


def _ndvi_at(scene: Path, date: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    folder = next((scene / "sentinel2").glob(f"*_{date}_0_L2A"))
    item = json.loads(next(folder.glob("*.json")).read_text())
    offset = 1000 if item["properties"]["s2:processing_baseline"] >= "04.00" else 0
    ux, uy = Transformer.from_crs(CRS, "EPSG:32650", always_xy=True).transform(x, y)
    vals = {}
    for b in ("B04", "B08", "SCL"):
        with rasterio.open(folder / f"{b}.tif") as src:
            r, c = rasterio.transform.rowcol(src.transform, ux, uy)
            vals[b] = src.read(1)[np.asarray(r), np.asarray(c)].astype(float)
    red, nir = (vals["B04"] - offset) / 1e4, (vals["B08"] - offset) / 1e4
    clear = np.isin(vals["SCL"], [4, 5])
    return ((nir - red) / (nir + red))[clear]


def test_paddy_is_as_green_as_forest_in_september_only(scene):
    """The trap for an NDVI-only forest mask: rice before harvest (late October) is as green as forest."""
    cover = _read(scene / "truth/land_cover_truth.tif")
    with rasterio.open(scene / "truth/land_cover_truth.tif") as src:
        t = src.transform
    code = {c.key: c.code for c in land.COVERS}
    med = {}
    for key in ("paddy", "forest"):
        r, c = np.nonzero(cover == code[key])
        pick = np.random.default_rng(0).choice(r.size, min(r.size, 2000), replace=False)
        x, y = t.c + (c[pick] + 0.5) * t.a, t.f + (r[pick] + 0.5) * t.e
        med[key] = {d: float(np.median(_ndvi_at(scene, d, x, y))) for d in ("20240908", "20241207")}
    assert med["paddy"]["20240908"] > 0.6
    assert abs(med["paddy"]["20240908"] - med["forest"]["20240908"]) < 0.15
    assert med["paddy"]["20241207"] < 0.4 < med["forest"]["20241207"]


def test_measure_nonforest_carbon_by_hand(tmp_path):
    """A 2 x 2 grid: one forest and three non-forest cells (road, water, village trees) of 1 ha each."""
    from forestcarbon_synth.measure import nonforest_carbon

    scene, out = tmp_path / "scene", tmp_path / "output"
    (scene / "truth").mkdir(parents=True)
    (out / "maps").mkdir(parents=True)
    (out / "parcels").mkdir(parents=True)
    tr = rasterio.transform.from_origin(0, 200, 100, 100)
    legend = {c.code: {"key": c.key, "forest": c.forest, "worldcover": c.worldcover} for c in land.COVERS}

    def write(path, arr, count=1, tags=None):
        arr = np.asarray(arr, "float32").reshape(count, 2, 2)
        with rasterio.open(path, "w", driver="GTiff", width=2, height=2, count=count, dtype="float32", crs=CRS,
                           transform=tr) as dst:
            dst.write(arr)
            if tags:
                dst.update_tags(**tags)

    write(scene / "truth/land_cover_truth.tif", [1, 3, 4, 8], tags={"legend": json.dumps(legend)})
    write(scene / "truth/agb_truth.tif", [100, 0, 0, 80])
    write(out / "maps/agb.tif", [90, 50, 20, 70])
    write(out / "maps/carbon.tif", [45, 25, 10, 35, 30, 15, 5, 25, 15, 10, 5, 10], count=3)
    gpd.GeoDataFrame({"parcel_id": ["A", "B"], "carbon_t": [45.0, 70.0]},
                     geometry=[shapely.box(0, 100, 100, 200), shapely.box(100, 0, 200, 200)], crs=CRS
                     ).to_file(out / "parcels/parcels_carbon.gpkg", layer="parcels_carbon")
    pd.DataFrame({"parcel_id": ["A", "B"], "true_carbon_t": [47.0, 37.6], "land_class": ["forest", "non_forest"]}
                 ).to_csv(scene / "truth/parcel_carbon_truth.csv", index=False)
    r = nonforest_carbon(scene, out)
    nf = r["non_forest_pixels"]
    assert nf["pixels"] == 3 and nf["area_ha"] == pytest.approx(3.0)
    assert nf["mapped_carbon_t"] == pytest.approx(25 + 10 + 35)
    assert nf["mapped_agb_mg"] == pytest.approx(50 + 20 + 70) and nf["true_agb_mg"] == pytest.approx(80)
    assert r["by_truth_class"]["road"]["mapped_carbon_t"] == pytest.approx(25)
    assert r["by_truth_class"]["paddy"]["pixels"] == 0
    assert r["all_pixels_mapped_carbon_t"] == pytest.approx(115)
    assert r["non_forest_parcels"] == {"parcels": 1, "mapped_carbon_t": 70.0, "true_carbon_t": 37.6}
