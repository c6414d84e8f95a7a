"""Small pipeline output folders (the files `forestcarbon accounts commit` reads) for the accounts and loss tests."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
import shapely
from affine import Affine

CRS = "EPSG:4549"
X0, Y0 = 500_000.0, 3_200_040.0  # top-left corner of the 4 x 4 grid of 10 m pixels
GRID = Affine(10, 0, X0, 0, -10, Y0)


def squares() -> gpd.GeoDataFrame:
    """Parcels A (20 x 20 m, 0.04 ha) and B (20 x 20 m), side by side in the grid's lower half."""
    return gpd.GeoDataFrame({"parcel_id": ["A", "B"], "species": ["杉木", "马尾松"]},
                            geometry=[shapely.box(X0, Y0 - 40, X0 + 20, Y0 - 20),
                                      shapely.box(X0 + 20, Y0 - 40, X0 + 40, Y0 - 20)], crs=CRS)


def write_raster(path: Path, bands: np.ndarray, names: list[str]):
    path.parent.mkdir(parents=True, exist_ok=True)
    bands = np.asarray(bands, dtype="float32")
    with rasterio.open(path, "w", driver="GTiff", width=bands.shape[2], height=bands.shape[1], count=bands.shape[0],
                       dtype="float32", crs=CRS, transform=GRID, nodata=np.nan) as d:
        d.write(bands)
        for i, n in enumerate(names):
            d.set_band_description(i + 1, n)


def make_output(root: Path, parcels: gpd.GeoDataFrame, carbon_t, *, sd_t=None, model_id: str = "county-abc",
                scene_dates=("2024-06-01", "2024-07-01", "2024-09-01"), carbon_mg_ha=None, carbon_sd_mg_ha=None,
                provenance: dict | None = None) -> Path:
    """A pipeline output folder: parcels/parcels_carbon.gpkg, model/model_card.json, mosaic/scenes.csv and, when
    given, maps/carbon.tif (3 bands: total, above, below) and maps/carbon_sd.tif."""
    root = Path(root)
    gdf = parcels.copy()
    gdf["area_ha"] = gdf.geometry.area / 10_000
    gdf["carbon_t"] = np.asarray(carbon_t, dtype=float)
    gdf["co2e_t"] = gdf["carbon_t"] * 3.0  # deliberately wrong: the accounts recompute CO2e from carbon_t
    gdf["valid_fraction"] = 1.0
    gdf["model_id"] = model_id
    if sd_t is not None:
        gdf["carbon_sd_t"] = np.asarray(sd_t, dtype=float)
    (root / "parcels").mkdir(parents=True, exist_ok=True)
    gdf.to_file(root / "parcels" / "parcels_carbon.gpkg", layer="parcels_carbon", driver="GPKG")
    (root / "model").mkdir(parents=True, exist_ok=True)
    (root / "model" / "model_card.json").write_text(json.dumps(
        {"model_id": model_id, "models": {"optical": {"model_id": f"{model_id}-optical"}}}))
    (root / "mosaic").mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"scene_id": [f"S2_{i}" for i in range(len(scene_dates))],
                  "datetime": [f"{d}T02:30:00+00:00" for d in scene_dates], "used": True}).to_csv(
        root / "mosaic" / "scenes.csv", index=False)
    if carbon_mg_ha is not None:
        c = np.asarray(carbon_mg_ha, dtype=float)
        write_raster(root / "maps" / "carbon.tif", np.stack([c, 0.8 * c, 0.2 * c]),
                     ["carbon_mg_ha", "carbon_above_mg_ha", "carbon_below_mg_ha"])
        write_raster(root / "maps" / "carbon_sd.tif", np.asarray(carbon_sd_mg_ha, dtype=float)[None], ["carbon_sd_mg_ha"])
    if provenance is not None:
        (root / "report").mkdir(parents=True, exist_ok=True)
        (root / "report" / "provenance.json").write_text(json.dumps(provenance))
    return root
