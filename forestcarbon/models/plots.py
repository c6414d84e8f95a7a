"""Plot biomass and carbon: tree lists through the allometry and the one carbon conversion, aggregated
per hectare with the plots' expansion factors (:mod:`forestcarbon.vector.plots`)."""

from __future__ import annotations

import logging

import geopandas as gpd
import numpy as np
import pandas as pd

from ..errors import FieldError
from ..vector.inventory import data_rows
from ..vector.plots import check_plot_ids, expansion_per_ha, plot_summaries
from .allometry import AllometryRegistry, tree_agb, with_carbon

log = logging.getLogger(__name__)


def plot_biomass(trees: pd.DataFrame, plots: gpd.GeoDataFrame, registry: AllometryRegistry,
                 source: str = "trees", fallback: dict[str, str] | None = None, designs: dict | None = None,
                 dbh_out_of_range: str = "warn", equation: str | None = None, dbh_range_cm=(0.5, 300.0),
                 height_range_m=(1.3, 80.0), max_agb_mg_ha: float = 600.0) -> tuple[pd.DataFrame, gpd.GeoDataFrame]:
    """Per-tree biomass and carbon, and per-plot per-hectare summaries (live trees).

    AGB comes first, since the carbon conversion picks each tree's root-to-shoot ratio by its plot's
    live AGB density (Mg/ha), as the map picks it by the pixel's.
    """
    check_plot_ids(trees, plots, source)
    trees = trees.copy()
    trees["expansion_ha"] = expansion_per_ha(trees, plots, designs)
    below = ~np.isfinite(trees["expansion_ha"])
    if below.any():
        log.warning("%s: %d trees are below their plot design's smallest DBH threshold and are left out (rows %s)",
                    source, int(below.sum()), data_rows(below))
        trees = trees[~below]
    agb = tree_agb(trees, registry, source=source, fallback=fallback, dbh_out_of_range=dbh_out_of_range,
                   equation=equation, dbh_range_cm=dbh_range_cm, height_range_m=height_range_m)
    live = (agb["status"] == "alive") if "status" in agb else pd.Series(True, index=agb.index)
    density = (agb["agb_kg"] * agb["expansion_ha"] * live).groupby(agb["plot_id"]).transform("sum") / 1000
    high = density.groupby(agb["plot_id"]).first()
    high = high[high > max_agb_mg_ha]
    if len(high):
        raise FieldError(f"{source}: plots {list(high.index[:5])} have {[round(v) for v in high.to_numpy()[:5]]} Mg/ha "
                         f"of live AGB, above the {max_agb_mg_ha:g} Mg/ha a subtropical forest plot plausibly holds; "
                         "DBH in millimetres, or a plot area too small? Set ground.max_plot_agb_mg_ha to accept them")
    out = with_carbon(agb, registry.conversion, density.to_numpy())
    summary = plot_summaries(out[live.to_numpy()])
    dead = (~live).groupby(out["plot_id"]).sum().rename("n_dead")
    res = plots.merge(summary, on="plot_id", how="left").merge(dead, left_on="plot_id", right_index=True, how="left")
    res["n_dead"] = res["n_dead"].fillna(0).astype(int)
    empty = res["n_trees"].isna()
    if empty.any():  # plots without live trees: zero biomass, a measured fact
        for col in summary.columns.drop(["plot_id", "equations", "equation_mix", "equations_verified", "conversion_verified",
                                         "lorey_height_m", "dominant_height_m"]):
            res.loc[empty, col] = 0.0
        res.loc[empty, ["equations", "equation_mix"]] = ""
        res.loc[empty, ["equations_verified", "conversion_verified"]] = True
    return out, res
