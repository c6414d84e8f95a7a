"""How much biomass and carbon a pipeline run puts on the synthetic county's non-forest land.

``python -m forestcarbon_synth.measure DEMO_DIR`` (the folder ``forestcarbon demo --out`` wrote, holding
``scene/`` and ``output/``) prints, per truth land-cover class (``scene/truth/land_cover_truth.tif``), the
pixels, the area, the mapped AGB and carbon (``output/maps/agb.tif``, ``output/maps/carbon.tif`` band 1)
and the true AGB; then the same over all non-forest truth pixels and over the parcels whose truth
``land_class`` is ``non_forest`` (``output/parcels/parcels_carbon.gpkg`` against
``scene/truth/parcel_carbon_truth.csv``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio


def _band1(path: Path, grid: tuple | None = None) -> tuple[np.ndarray, tuple]:
    """Band 1 as float64 and the raster's grid (shape, transform, crs); refused when not on ``grid``."""
    with rasterio.open(path) as src:
        own = (src.shape, src.transform, src.crs)
        if grid is not None and (own[0] != grid[0] or not own[1].almost_equals(grid[1]) or own[2] != grid[2]):
            raise ValueError(f"{path} is not on the truth grid {grid}")
        return src.read(1).astype("float64"), own


def nonforest_carbon(scene: Path | str, output: Path | str) -> dict:
    """Mapped AGB (Mg), carbon (t C) and true AGB (Mg) per truth land-cover class, on all non-forest truth
    pixels, and mapped against true carbon on the non-forest parcels (see the module docstring)."""
    scene, output = Path(scene), Path(output)
    cover, ref = _band1(scene / "truth" / "land_cover_truth.tif")
    with rasterio.open(scene / "truth" / "land_cover_truth.tif") as src:
        legend = {int(k): v for k, v in json.loads(src.tags()["legend"]).items()}
        cell_ha = abs(src.transform.a * src.transform.e) / 10_000
    true_agb, _ = _band1(scene / "truth" / "agb_truth.tif", ref)
    agb, _ = _band1(output / "maps" / "agb.tif", ref)
    carbon, _ = _band1(output / "maps" / "carbon.tif", ref)

    def sums(sel: np.ndarray) -> dict:
        return {"pixels": int(sel.sum()), "area_ha": float(sel.sum() * cell_ha),
                "mapped_agb_mg": float(np.nansum(agb[sel]) * cell_ha),
                "mapped_carbon_t": float(np.nansum(carbon[sel]) * cell_ha),
                "mapped_agb_mean_mg_ha": float(np.nanmean(agb[sel])) if sel.any() else float("nan"),
                "true_agb_mg": float(true_agb[sel].sum() * cell_ha)}

    by_class = {v["key"]: sums(cover == k) for k, v in legend.items()}
    non_forest = np.isin(cover, [k for k, v in legend.items() if not v["forest"]])
    parcels = gpd.read_file(output / "parcels" / "parcels_carbon.gpkg", layer="parcels_carbon")
    truth = pd.read_csv(scene / "truth" / "parcel_carbon_truth.csv", dtype={"parcel_id": str})
    m = truth[truth["land_class"] == "non_forest"].merge(parcels[["parcel_id", "carbon_t"]], on="parcel_id")
    return {
        "by_truth_class": by_class,
        "non_forest_pixels": sums(non_forest),
        "all_pixels_mapped_carbon_t": float(np.nansum(carbon) * cell_ha),
        "non_forest_parcels": {"parcels": int(len(m)), "mapped_carbon_t": float(m["carbon_t"].sum()),
                               "true_carbon_t": float(m["true_carbon_t"].sum())},
    }


def main(argv: list[str] | None = None) -> int:  # pragma: no cover - thin command-line wrapper
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m forestcarbon_synth.measure DEMO_DIR", file=sys.stderr)
        return 2
    d = Path(args[0])
    print(json.dumps(nonforest_carbon(d / "scene", d / "output"), indent=1))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
