"""Stage 3: plot biomass from tree lists (allometry, heights, Monte Carlo), and the inventory preflight."""

from __future__ import annotations


import geopandas as gpd
import pandas as pd

from ...config import default_allometry_path
from ...errors import FieldError
from ...fileio import write_table
from ...models.allometry import (candidate_agb, load_registry, species_groups, validate_trees)
from ...models.height import fill_heights
from ...models.uncertainty import ErrorModel, monte_carlo
from ...models.plots import plot_biomass
from ...vector.inventory import read_trees
from ...vector.plots import check_plot_ids, equation_spread, read_plots
from .context import Context

def check_inventory(ctx: "Context", registry) -> None:
    """The plots and trees (small tables) through the plots stage's own biomass step, up front: columns,
    ids, numbers, implausible values, designs, plot areas, orphan trees, species without an equation,
    plot AGB above the ceiling and plots off the grid fail here, before the mosaic and LiDAR stages run."""
    _, plots, _ = inventory_biomass(ctx, registry)
    off = ~plots.intersects(ctx.gbox.extent.geom)
    if off.any():
        raise FieldError(f"{ctx.cfg.inputs.plots}: {int(off.sum())} of {len(plots)} plots lie outside the grid "
                         f"{tuple(round(v) for v in ctx.gbox.extent.boundingbox)} ({ctx.cfg.grid.crs}): "
                         f"{list(plots.loc[off, 'plot_id'][:5])}; wrong CRS or coordinates, or a grid too small?")



def plot_footprints(ctx: Context):
    """The plots layer as footprints on the grid CRS, with the configured designs and column mapping."""
    i, g = ctx.cfg.inputs, ctx.cfg.ground
    return read_plots(i.plots, i.plots_layer, i.plot_id, ctx.gbox.crs.to_wkt(), columns=g.plots_columns,
                      plots_crs=g.plots_crs, designs=g.designs, size_on_slope=g.plot_size_on_slope)


def inventory_biomass(ctx: Context, registry) -> tuple[pd.DataFrame, gpd.GeoDataFrame, dict]:
    """Trees (heights filled where configured) and plots through :func:`plot_biomass`, with the configured
    plausibility limits: (trees, plots, height models).  Cheap: preflight runs it too."""
    cfg, i, g = ctx.cfg, ctx.cfg.inputs, ctx.cfg.ground
    plots = plot_footprints(ctx)
    trees = read_trees(i.trees, g.trees_columns, g.trees_sheet)
    source = str(i.trees)
    check_plot_ids(trees, plots, source)
    validate_trees(trees, source, g.plausible_dbh_cm, g.plausible_height_m)
    height_models: dict = {}
    if g.height_model is not None:
        groups, _ = species_groups(trees["species"], registry, cfg.allometry_fallback, source)
        trees, height_models = fill_heights(trees.assign(species_group=groups), g.height_model)
        trees = trees.drop(columns="species_group")
    tree_out, plot_out = plot_biomass(trees, plots, registry, source=source, fallback=cfg.allometry_fallback,
                                      designs=g.designs, dbh_out_of_range=g.dbh_out_of_range,
                                      dbh_range_cm=g.plausible_dbh_cm, height_range_m=g.plausible_height_m,
                                      max_agb_mg_ha=g.max_plot_agb_mg_ha)
    return tree_out, plot_out, height_models


def stage_plots(ctx: Context) -> dict:
    cfg, g = ctx.cfg, ctx.cfg.ground
    registry = load_registry(cfg.allometry or default_allometry_path())
    tree_out, plot_out, height_models = inventory_biomass(ctx, registry)
    errors = ErrorModel(**g.uncertainty.model_dump())
    live = tree_out[tree_out["status"] == "alive"]
    spread = pd.DataFrame()
    if len(live):
        plot_out = plot_out.merge(monte_carlo(live, registry, errors, height_models=height_models), on="plot_id",
                                  how="left")
        spread, per_plot = equation_spread(live, candidate_agb(live, registry))
        plot_out = plot_out.merge(per_plot, on="plot_id", how="left")
        plot_out["equation_spread_exceeds_mc"] = ((plot_out["agb_mg_ha_eq_max"] - plot_out["agb_mg_ha_eq_min"])
                                                  > (plot_out["agb_mg_ha_mc_q97_5"] - plot_out["agb_mg_ha_mc_q2_5"]))
    # written only once everything is computed: a failed stage leaves none of its files
    if height_models:
        write_table(pd.DataFrame([{"key": k, "method": m.method, "coef": list(m.coef), "rse": m.rse, "n_measured": m.n}
                                  for k, m in height_models.items()]), ctx.out.height_models)
    write_table(plot_out, ctx.out.plots, layer="plots")
    write_table(tree_out, ctx.out.trees)
    write_table(registry.equations_table(), ctx.out.equations)
    write_table(spread, ctx.out.equation_spread)
    above = tree_out["equation_id"].str.split(";").str[0]
    return {"plots": len(plot_out), "trees": len(tree_out), "dead_trees": int((tree_out["status"] == "dead").sum()),
            "allometry_version": registry.version,
            "unverified_tree_share": float(1 - tree_out["equation_verified"].mean()),
            "trees_dbh_out_of_range": int((~tree_out["dbh_in_range"]).sum()),
            "trees_with_modelled_height": int(tree_out.get("height_source", pd.Series(dtype=str)).astype(str)
                                              .str.startswith("hd_model").sum()),
            "monte_carlo_draws": errors.draws,
            "trees_per_equation": {k: int(v) for k, v in above.value_counts().items()},
            "trees_per_species_route": {k: int(v) for k, v in tree_out["species_source"].value_counts().items()},
            "plots_equation_spread_pct_median": (float(plot_out["equation_spread_pct"].median())
                                                 if "equation_spread_pct" in plot_out else None)}
