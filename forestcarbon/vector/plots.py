"""Inventory plots: footprints, and tree lists aggregated to per-hectare values.

Plot area is the horizontal area of the footprint polygon in the (projected)
target CRS.  Point plots are expanded to circles (``radius_m``) or axis-
aligned squares (``size_m2``, e.g. 666.7 m² = 1 mu).

Per-plot values (all per hectare of plot area): AGB/BGB/carbon (Mg/ha),
CO2e (Mg/ha), stems/ha, basal area (m²/ha, g = π/4 · (DBH/100)²) and Lorey's
height (basal-area-weighted mean height, m).
"""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from ..errors import FieldError, InputNotFoundError
from ..models.allometry import AllometryRegistry, tree_biomass
from .layers import read_layer


def read_plots(path: Path | str, layer: str | None, plot_id: str, crs) -> gpd.GeoDataFrame:
    """Plot footprints (polygons in ``crs``) with ``plot_id`` and ``area_ha``."""
    plots = read_layer(path, layer, plot_id, crs)
    geom = plots.geometry
    pts = geom.geom_type == "Point"
    if pts.any():
        if "radius_m" in plots:
            geom = geom.where(~pts, geom.buffer(plots["radius_m"].astype(float), quad_segs=64))
        elif "size_m2" in plots:
            half = np.sqrt(plots["size_m2"].astype(float)) / 2
            boxes = shapely.box(geom.x - half, geom.y - half, geom.x + half, geom.y + half)
            geom = geom.where(~pts, gpd.GeoSeries(boxes, index=plots.index, crs=plots.crs))
        else:
            raise FieldError(f"{path}: point plots need a 'radius_m' or 'size_m2' field")
    plots = plots.set_geometry(geom)
    plots["area_ha"] = plots.geometry.area / 10_000
    bad = plots["area_ha"] <= 0
    if bad.any():
        raise FieldError(f"{path}: plots {list(plots.loc[bad, plot_id][:5])} have area <= 0")
    return plots.rename(columns={plot_id: "plot_id"})


def read_trees(path: Path | str) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"trees table not found: {path}")
    trees = pd.read_csv(path, dtype={"plot_id": str, "tree_id": str})
    for col in ("plot_id", "tree_id", "species", "dbh_cm", "height_m"):
        if col not in trees.columns:
            raise FieldError(f"{path}: missing column {col!r} (have {list(trees.columns)})")
    dup = trees.duplicated(["plot_id", "tree_id"])
    if dup.any():
        raise FieldError(f"{path}: duplicated tree ids {list(trees.loc[dup, 'tree_id'][:5])}")
    return trees


def plot_biomass(trees: pd.DataFrame, plots: gpd.GeoDataFrame, registry: AllometryRegistry,
                 source: str = "trees", fallback: dict[str, str] | None = None) -> tuple[pd.DataFrame, gpd.GeoDataFrame]:
    """Per-tree biomass and per-plot per-hectare summaries.

    Groups without a belowground equation use the IPCC root-to-shoot ratio
    chosen by the plot's AGB density, so AGB is computed first.
    """
    orphan = ~trees["plot_id"].isin(plots["plot_id"])
    if orphan.any():
        raise FieldError(f"{source}: trees in plots not in the plots layer: {sorted(trees.loc[orphan, 'plot_id'].unique())[:5]}")
    area = trees["plot_id"].map(plots.set_index("plot_id")["area_ha"])
    first = tree_biomass(trees, registry, source=source, fallback=fallback)
    density = first.groupby("plot_id")["agb_kg"].transform("sum") / 1000 / area
    out = tree_biomass(trees, registry, plot_agb_mg_ha=density.to_numpy(), source=source, fallback=fallback)
    out["expansion_ha"] = 1.0 / area.to_numpy()  # trees per ha represented by one tree
    summary = _summaries(out)
    res = plots.merge(summary, on="plot_id", how="left")
    empty = res["n_trees"].isna()
    if empty.any():  # plots without trees: zero biomass, a measured fact
        for col in summary.columns.drop(["plot_id", "equations", "equations_verified", "lorey_height_m"]):
            res.loc[empty, col] = 0.0
        res.loc[empty, "equations"] = ""
        res.loc[empty, "equations_verified"] = True
    return out, res


def _summaries(t: pd.DataFrame) -> pd.DataFrame:
    w = t["expansion_ha"]
    ba = np.pi / 4 * (t["dbh_cm"] / 100) ** 2
    g = t.assign(
        agb=t.agb_kg * w / 1000, bgb=t.bgb_kg * w / 1000, c=t.carbon_kg * w / 1000, co2=t.co2e_kg * w / 1000,
        stems=w, ba=ba * w, bah=ba * w * t.height_m,
    ).groupby("plot_id")
    s = pd.DataFrame({
        "n_trees": g.size(),
        "agb_mg_ha": g["agb"].sum(), "bgb_mg_ha": g["bgb"].sum(),
        "carbon_mg_ha": g["c"].sum(), "co2e_mg_ha": g["co2"].sum(),
        "stems_ha": g["stems"].sum(), "basal_area_m2_ha": g["ba"].sum(),
        "lorey_height_m": g["bah"].sum() / g["ba"].sum(),
        "equations_verified": g["equation_verified"].all(),
        "equations": g["equation_id"].agg(lambda s: ";".join(sorted(set(s)))),
    })
    return s.reset_index()
