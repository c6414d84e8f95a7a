"""Write a whole synthetic county: inputs, truth and a ready ``config.yaml``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import rasterio
import yaml

from . import ground, landscape, lidar, sentinel2
from forestcarbon.config import default_allometry_path
from forestcarbon.models.allometry import load_registry


def _write_truth_raster(path: Path, arr: np.ndarray, frame: landscape.Frame, description: str):
    profile = dict(driver="COG", width=frame.n, height=frame.n, count=1, dtype="float32",
                   crs=landscape.CRS, transform=frame.transform, nodata=None, compress="DEFLATE", predictor=3)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(arr.astype("float32"), 1)
        dst.set_band_description(1, description)


def true_carbon_mg_ha(agb: np.ndarray, parcels, frame: landscape.Frame) -> np.ndarray:
    """True carbon density: the one carbon conversion the pipeline uses (a definition, not an estimate),
    with each cell's rule from its parcel's dominant species."""
    registry = load_registry(default_allometry_path())
    conversion = registry.conversion
    groups = [registry.resolve(s) if s else None for s in parcels.dom_species]
    code = np.append(conversion.code_of(groups), 0)[landscape.rasterize_ids(parcels, frame)]  # -1 (outside) -> 0
    _, c_above, c_below = conversion.pools_mg_ha(agb.astype("float64"), code)
    return c_above + c_below


def make_scene(out: Path | str, seed: int = 0, size_km: float = 10.0) -> Path:
    """Generate the scene into ``out`` and return the path of its ``config.yaml``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    frame = landscape.make_frame(size_km)
    parcels = landscape.make_parcels(rng, frame)
    dem = landscape.make_dem(rng, frame)
    agb, tcode = landscape.true_agb(rng, parcels, frame)

    (out / "parcels").mkdir(exist_ok=True)
    parcels.to_file(out / "parcels" / "parcels.gpkg", layer="parcels", driver="GPKG")
    projects = ground.make_projects(rng, frame)
    (out / "projects").mkdir(exist_ok=True)
    projects.to_file(out / "projects" / "projects.gpkg", layer="projects", driver="GPKG")

    plots, trees = ground.make_plots(rng, frame, parcels, agb)
    (out / "ground").mkdir(exist_ok=True)
    plots.to_file(out / "ground" / "plots.gpkg", layer="plots", driver="GPKG")
    trees.to_csv(out / "ground" / "trees.csv", index=False)

    sentinel2.write_scenes(rng, frame, agb, tcode, out / "sentinel2")
    lidar.write_tiles(rng, frame, dem, agb, tcode, out / "lidar")

    truth = out / "truth"
    truth.mkdir(exist_ok=True)
    _write_truth_raster(truth / "agb_truth.tif", agb, frame, "true AGB (Mg/ha)")
    carbon = true_carbon_mg_ha(agb, parcels, frame)
    ptruth = landscape.parcel_truth(parcels, frame, carbon)
    ptruth["land_class"] = parcels.land_class.to_numpy()
    ptruth.to_csv(truth / "parcel_carbon_truth.csv", index=False)
    (truth / "README.json").write_text(json.dumps({
        "seed": seed, "size_km": size_km, "crs": landscape.CRS,
        "carbon_definition": "carbon_t = integral over the parcel of the pipeline's carbon conversion "
                             "(forestcarbon.models.carbon, rule by the parcel's dom_species) applied to true AGB",
        "total_true_carbon_t_forest": float(ptruth.true_carbon_t[ptruth.land_class == "forest"].sum()),
    }, indent=1))

    cfg = {
        "name": f"synthetic-quzhou-seed{seed}",
        "grid": {"crs": landscape.CRS, "resolution_m": frame.res, "bounds": [float(v) for v in frame.bounds]},
        "inputs": {
            "stac_items": "sentinel2",
            "laz": "lidar",
            "plots": "ground/plots.gpkg",
            "trees": "ground/trees.csv",
            "parcels": "parcels/parcels.gpkg",
            "parcel_id": "parcel_id",
            "projects": "projects/projects.gpkg",
            "project_id": "project_id",
        },
        "mosaic": {"start": "2024-09-01", "end": "2025-01-31"},
        "carbon": {"group_field": "dom_species"},
        "output": "output",
        "truth": {"agb": "truth/agb_truth.tif", "parcels": "truth/parcel_carbon_truth.csv"},
    }
    path = out / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))
    return path
