"""Write a whole synthetic county: inputs, truth and a ready ``config.yaml``.

With ``uav=True`` (the default) the county also gets UAV LiDAR windows for the pipeline's single-tree
stage (``lidar_uav/``, :mod:`.uav_lidar`), every tree in them (``truth/trees.csv``, :mod:`.trees`), the
windows (``truth/uav_windows.gpkg``), the DEM the ground returns lie on (``truth/dem_truth.tif``) and the
village polygons (``villages/villages.gpkg``, :mod:`.villages`).  These draw from their own random stream
(seed, 11), so every other input and truth file of a seed is the same with or without them (config.yaml and
truth/README.json gain their entries).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import rasterio
import yaml

from . import ground, land, landscape, lidar, sentinel2, structure, trees as stems, uav_lidar, villages as vil
from forestcarbon.config import default_allometry_path
from forestcarbon.models.allometry import load_registry


def _write_truth_raster(path: Path, arr: np.ndarray, frame: landscape.Frame, description: str, dtype: str = "float32",
                        tags: dict | None = None):
    profile = dict(driver="COG", width=frame.n, height=frame.n, count=1, dtype=dtype,
                   crs=landscape.CRS, transform=frame.transform, nodata=None, compress="DEFLATE",
                   predictor=3 if dtype == "float32" else 2)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(arr.astype(dtype), 1)
        dst.set_band_description(1, description)
        if tags:
            dst.update_tags(**tags)


def true_carbon_mg_ha(agb: np.ndarray, parcels, frame: landscape.Frame) -> np.ndarray:
    """True carbon density: the one carbon conversion the pipeline uses (a definition, not an estimate),
    with each cell's rule from its parcel's dominant species."""
    registry = load_registry(default_allometry_path())
    conversion = registry.conversion
    groups = [registry.resolve(s) if s else None for s in parcels.dom_species]
    code = np.append(conversion.code_of(groups), 0)[landscape.rasterize_ids(parcels, frame)]  # -1 (outside) -> 0
    _, c_above, c_below = conversion.pools_mg_ha(agb.astype("float64"), code)
    return c_above + c_below


LANDCOVER_FILE = "worldcover_like_2021.tif"


def _correct_code(land_use: str, forest_type: str, trap: str) -> str:
    """The DI_LEI a correct, current inventory would carry for the parcel's truth land use (forest land
    cleared for crops stays forest land in law: 1633 毁林开垦)."""
    if trap == "converted":
        return "1633"
    if land_use == "forest":
        return "0113" if forest_type == "moso_bamboo" else "0111"
    return {"young_plantation": "0141", "clearcut": "0161", "water": "0230", "village": "0250"}.get(land_use, "0210")


def write_uav(out: Path, seed: int, frame: landscape.Frame, parcels, agb: np.ndarray, tcode: np.ndarray, cells, stand,
              dem: np.ndarray, villages) -> dict:
    """UAV windows, their stem maps, LAZ tiles and the true tree list (:mod:`.trees`, :mod:`.uav_lidar`),
    on their own random stream so that nothing else in the scene changes with them; returns a summary."""
    rng = np.random.default_rng([seed, 11])
    windows = stems.choose_windows(frame, cells.cover, stems.n_windows(frame.size_m / 1000), tcode=tcode)
    stem_map = stems.stem_map(rng, frame, windows, parcels, agb, cells.cover, stand.height_m)
    registry = load_registry(default_allometry_path())
    table = stems.truth_table(stem_map, parcels, villages, registry)
    truth = out / "truth"
    table.to_csv(truth / "trees.csv", index=False)
    windows.to_file(truth / "uav_windows.gpkg", layer="uav_windows", driver="GPKG")
    uav_lidar.write_windows(rng, frame, dem, cells, stem_map, windows, out / "lidar_uav")
    stems.village_survey(np.random.default_rng([seed, 12])).to_csv(out / "ground" / "village_trees.csv", index=False)
    vt = table["village_tree"].to_numpy(bool)
    use = dict(zip(parcels["parcel_id"], parcels["land_use"]))
    margin = table["parcel_id"].map(use).isin(["cropland", "paddy"]).to_numpy()
    return {"windows": windows["window"].tolist(), "window_side_m": stems.WINDOW_M,
            "trees": int(len(table)), "forest_parcel_trees": int((~vt).sum()), "village_trees": int(vt.sum()),
            "field_margin_trees_not_in_agb_raster": int(margin.sum()),
            "visible_share": float(table["visible"].mean()) if len(table) else None,
            "trees_by_type": {k: int(v) for k, v in table["type"].value_counts().items()},
            "carbon_kg_village_trees": float(table.loc[vt, "carbon_kg"].sum()),
            "carbon_kg_forest_parcel_trees": float(table.loc[~vt, "carbon_kg"].sum())}


def make_scene(out: Path | str, seed: int = 0, size_km: float = 10.0, uav: bool = True) -> Path:
    """Generate the scene into ``out`` and return the path of its ``config.yaml``.

    ``uav``: also the UAV windows (``lidar_uav/``, ``truth/trees.csv``, ``truth/uav_windows.gpkg``) and
    the village polygons (``villages/villages.gpkg``), wired into the config (``inputs.tree_lidar``,
    ``inputs.villages``, ``truth.trees``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    frame = landscape.make_frame(size_km)
    parcels = landscape.make_parcels(rng, frame)
    dem = landscape.make_dem(rng, frame)
    river_centre, river = land.make_river(rng, frame)
    roads = land.make_roads(rng, frame, river_centre)
    dem = land.carve_valley(dem, frame, river)
    parcels = land.assign_land_use(rng, land.split_out_river(parcels, river), river)
    parcels = land.bureau_fields(np.random.default_rng([seed, 7]), parcels, frame)
    ids = landscape.rasterize_ids(parcels, frame)
    dem = land.level_water(dem, parcels, ids)
    cells = land.land_cells(rng, parcels, frame, roads, ids)
    agb, tcode = landscape.true_agb(rng, parcels, frame, cells)
    stand = structure.stand_structure(rng, ids, landscape.stand_agb(agb, cells.road_share), tcode)

    delivered = parcels[["XIAN", "XIANG", "CUN", "LIN_BAN", "XIAO_BAN", "DI_LEI", "MIAN_JI", "YOU_SHI_SZ", "LING_ZU",
                         "parcel_id", "land_class", "forest_type", "dom_species", "age", "area_ha", "geometry"]]
    (out / "parcels").mkdir(exist_ok=True)
    delivered.to_file(out / "parcels" / "parcels.gpkg", layer="parcels", driver="GPKG")
    projects = ground.make_projects(rng, frame)
    (out / "projects").mkdir(exist_ok=True)
    projects.to_file(out / "projects" / "projects.gpkg", layer="projects", driver="GPKG")

    plots, trees = ground.make_plots(rng, frame, parcels, agb, cells.cover, stand.height_m,
                                    dense_block=lidar.lidar_block(frame))
    (out / "ground").mkdir(exist_ok=True)
    plots.to_file(out / "ground" / "plots.gpkg", layer="plots", driver="GPKG")
    trees["age"] = trees["age"].astype("Int64")  # culm age in du, integer as tallied; empty for trees
    trees.to_csv(out / "ground" / "trees.csv", index=False)

    sentinel2.write_scenes(rng, frame, tcode, cells, stand, dem, out / "sentinel2")
    lidar.write_tiles(rng, frame, dem, stand, cells, out / "lidar")

    truth = out / "truth"
    truth.mkdir(exist_ok=True)
    wc_truth = land.true_worldcover(cells, stand.cover)
    (out / "landcover").mkdir(exist_ok=True)
    wc_accuracy = land.write_worldcover(out / "landcover" / LANDCOVER_FILE, land.mapped_worldcover(rng, wc_truth, cells),
                                        frame, wc_truth)
    _write_truth_raster(truth / "agb_truth.tif", agb, frame, "true woody AGB (Mg/ha)")
    legend = {c.code: {"key": c.key, "forest": c.forest, "worldcover": c.worldcover} for c in land.COVERS}
    _write_truth_raster(truth / "land_cover_truth.tif", cells.cover, frame, "true land cover (code)", "uint8",
                        {"legend": json.dumps(legend)})
    _write_truth_raster(truth / "worldcover_truth.tif", wc_truth, frame, "true ESA WorldCover class", "uint8")
    roads.to_file(truth / "roads.gpkg", layer="roads", driver="GPKG")
    carbon = true_carbon_mg_ha(agb, parcels, frame)
    ptruth = landscape.parcel_truth(parcels, frame, carbon)
    for col in ("land_class", "land_use", "DI_LEI", "di_lei_trap"):
        ptruth[col] = parcels[col].to_numpy()
    ptruth["di_lei_correct"] = [_correct_code(u, f, t) for u, f, t in zip(parcels.land_use, parcels.forest_type,
                                                                         parcels.di_lei_trap)]
    ptruth.to_csv(truth / "parcel_carbon_truth.csv", index=False)
    nf = ~np.isin(cells.cover, [c.code for c in land.COVERS if c.forest])
    trees_summary = None
    if uav:
        villages = vil.make_villages(parcels)
        (out / "villages").mkdir(exist_ok=True)
        villages.to_file(out / "villages" / "villages.gpkg", layer="villages", driver="GPKG")
        _write_truth_raster(truth / "dem_truth.tif", dem, frame, "the DEM the LiDAR ground returns lie on (m)")
        trees_summary = write_uav(out, seed, frame, parcels, agb, tcode, cells, stand, dem, villages)
    (truth / "README.json").write_text(json.dumps({
        "seed": seed, "size_km": size_km, "crs": landscape.CRS,
        "carbon_definition": "carbon_t = integral over the parcel of the pipeline's carbon conversion "
                             "(forestcarbon.models.carbon, rule by the parcel's dom_species) applied to true AGB",
        "total_true_carbon_t_forest": float(ptruth.true_carbon_t[ptruth.land_class == "forest"].sum()),
        "agb_definition": "true woody AGB: stands, clear-cut regrowth and village groves; crops, rice, grass, "
                          "water, roads and buildings 0 (forestcarbon_synth.land)",
        "land_cover_legend": legend,
        "non_forest_truth_pixels": int(nf.sum()),
        "non_forest_truth_agb_mg": float(agb[nf].sum() * frame.res**2 / 10_000),
        "landcover_input": {"file": f"landcover/{LANDCOVER_FILE}", "classes": land.WORLDCOVER,
                            "accuracy_against_truth_on_target_grid": wc_accuracy},
        "di_lei_codes": land.DI_LEI_CODES,
        **({"trees": {
            "file": "truth/trees.csv", "windows": "truth/uav_windows.gpkg", "uav_lidar": "lidar_uav",
            "carbon_definition": "carbon_kg = the pipeline's carbon conversion (forestcarbon registry.conversion."
                                 "tree_pools: agb_kg x carbon_fraction_above + agb_kg x R x carbon_fraction_below, "
                                 "rule by the group the registry resolves the tree's species to) applied to the "
                                 "tree's true AGB (forestcarbon_synth.ground.tree_agb_kg, the county's own "
                                 "allometry; village trees by its broadleaf equation), R picked by the true AGB "
                                 "density of the 10 m cell holding the stem (column stand_agb_mg_ha), as "
                                 "carbon_truth does for that cell. The pipeline's trees stage converts every "
                                 "detected tree with the low-density ratio (a tree standing alone).",
            "agb_definition": "trees >= 5 cm DBH; in forest stands and village groves their AGB sums to the true "
                              "AGB raster over each parcel's part of the window; field-margin trees on farmland "
                              "are not in the raster (its farmland cells are 0)",
            "village_tree": "the stem lies outside every parcel whose truth land_class is forest",
            "visible": "no other crown's surface rises above the tree's apex within 0.5 m of its stem",
            "dem": "truth/dem_truth.tif",
            **trees_summary}} if trees_summary else {}),
    }, indent=1, ensure_ascii=False))

    cfg = {
        "name": f"synthetic-quzhou-seed{seed}",
        "grid": {"crs": landscape.CRS, "resolution_m": frame.res, "bounds": [float(v) for v in frame.bounds]},
        "inputs": {
            "stac_items": "sentinel2",
            "laz": "lidar",
            "plots": "ground/plots.gpkg",
            "trees": "ground/trees.csv",
            "parcels": "parcels/parcels.gpkg",
            "projects": "projects/projects.gpkg",
            "project_id": "project_id",
            "landcover": "landcover/worldcover_like_2021.tif",
        },
        "mosaic": {"start": "2024-09-01", "end": "2025-01-31"},
        # the bureau's 小班 layer: composite key, declared area in mu, land class, species, age group;
        # 林地 that may hold trees: 乔木林, 竹林, 疏林, 灌木林, 未成林, 苗圃, 迹地 (not 无立木林地 163x, 宜林地 017x)
        "parcels": {"id_fields": ["XIAN", "XIANG", "CUN", "LIN_BAN", "XIAO_BAN"], "id_separator": "-",
                    "area_field": "MIAN_JI", "area_unit": "mu", "land_class_field": "DI_LEI",
                    "forest_codes": list(land.MAY_HOLD_TREES_CODES), "species_field": "YOU_SHI_SZ",
                    "age_group_field": "LING_ZU"},
        "projects": {"start_date_field": "start_date", "registration_field": "start_date"},
        "output": "output",
        "truth": {"agb": "truth/agb_truth.tif", "parcels": "truth/parcel_carbon_truth.csv"},
    }
    if uav:
        cfg["inputs"].update({"tree_lidar": "lidar_uav", "villages": "villages/villages.gpkg",
                              "villages_layer": "villages", "village_id": "village_id",
                              "village_field_trees": "ground/village_trees.csv"})
        cfg["truth"]["trees"] = "truth/trees.csv"
    path = out / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))
    return path
