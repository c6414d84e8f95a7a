"""Stage 7: carbon per carbon project, without double counting.

Reads the projects layer, the parcels stage's table (carbon, SD, land class) and the map's SD layers; writes
``projects/projects_carbon.gpkg`` (totals with SD, interval, relative precision and the configured deduction),
``projects/project_parcels.csv`` (the per-project parcel table for a project design document),
``projects/conflicts.csv`` (parcel area two projects claim, counted for neither or for the first registered,
with the carbon at stake) and one self-contained HTML map per project.  The rules (eligible land, slivers,
conflicts, deduction) are :func:`~forestcarbon.vector.projects.project_accounts`'s, set in ``projects``.

A project's SD is the exact double sum over its parcels' mapped cells (:func:`project_sd`), not the sum of
parcel SDs: parcels next to each other share correlated errors.
"""

from __future__ import annotations

import numpy as np
import geopandas as gpd
import pandas as pd
import shapely

from ...fileio import write_table
from ...models import carbon as carbon_model
from ...models.aggregate import cells_from_coverage, weighted_cells_sd
from ...vector.coverage import Grid, coverage_fractions
from ...vector.layers import read_layer
from ...vector.projects import min_piece_by_start, project_accounts
from .context import Context
from .parcels import error_model, parcel_carbon


def project_sd(rows: pd.DataFrame, *, parcels: gpd.GeoDataFrame, sd_path: str, corr, level: dict) -> float:
    """SD (t C) of Σ_p weight_p carbon_t_p over a project's parcels (``rows``: parcel_id, weight): the
    correlated part exact over the parcels' mapped cells (coverage fractions on the SD raster's window,
    :func:`~forestcarbon.models.aggregate.weighted_cells_sd`, each parcel's mapped-to-full-area scaling in
    its weight), plus each model's level error, shared by all the parcels it serves (linear in the weights)."""
    import rasterio
    from rasterio.windows import Window

    if rows.empty:
        return 0.0
    sub = parcels.set_index("parcel_id").loc[rows["parcel_id"].to_numpy()]
    mapped = sub["mapped_ha"].to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(mapped > 0, sub["area_ha"].to_numpy() / mapped, 0.0)
    g = rows["weight"].to_numpy("float64") * scale
    grid = Grid.of(sd_path)
    cov = coverage_fractions(shapely.to_wkb(np.asarray(sub.geometry.array)), grid)
    if len(cov.cell) == 0:
        s_corr = 0.0
    else:
        r, c = np.divmod(cov.cell, grid.width)
        r0, c0 = int(r.min()), int(c.min())
        win = Window(c0, r0, int(c.max()) - c0 + 1, int(r.max()) - r0 + 1)
        with rasterio.open(sd_path) as src:
            sd = src.read(1, window=win, masked=True).astype("float64").filled(np.nan)
        off, rr, cc, f = cells_from_coverage(cov.polygon, r - r0, c - c0, cov.fraction, len(sub))
        s_corr = weighted_cells_sd(off, rr, cc, f, g, sd, abs(grid.transform.a), corr)
    lev2 = sum(float(np.nansum(rows["weight"].to_numpy() * sub[f"carbon_sd_level_{k}_t"].to_numpy())) ** 2
               for k in level)
    return float(np.sqrt(s_corr**2 + lev2))


def stage_projects(ctx: Context) -> dict:
    import functools

    from ...vector.webmap import write_webmap_html

    i, pc = ctx.cfg.inputs, ctx.cfg.projects
    if i.projects is None:
        return {"projects": 0}
    ctx.need(ctx.out.parcels_parquet)
    projects = read_layer(i.projects, i.projects_layer, i.project_id, ctx.gbox.crs.to_wkt())
    parcels = gpd.read_parquet(ctx.out.parcels_parquet)
    _, corr, level = error_model(ctx)
    min_piece = (min_piece_by_start(projects.set_index(i.project_id)[pc.start_date_field], pc.min_piece_m2,
                                    pc.min_piece_m2_early, pc.early_until)
                 if pc.start_date_field else pc.min_piece_m2)
    acc = project_accounts(projects, parcels, carbon_model.co2e, project_id=i.project_id, parcel_id="parcel_id",
                           eligible_field=pc.eligible_field, min_piece_m2=min_piece, conflict_rule=pc.conflict_rule,
                           registration_field=pc.registration_field, alpha=pc.interval_alpha,
                           deduction=pc.deduction(),
                           total_sd=functools.partial(project_sd, parcels=parcels, sd_path=str(ctx.out.carbon_sd),
                                                      corr=corr, level=level))
    # the carbon inside each boundary, all land, straight from the map: what a project without the rules holds
    direct = parcel_carbon(ctx, projects, i.project_id)[[i.project_id, "carbon_t"]]
    direct = direct.rename(columns={i.project_id: "project_id", "carbon_t": "carbon_t_inside_boundary_all_land"})
    totals = acc.totals.merge(direct, on="project_id", how="left")
    out = projects.rename(columns={i.project_id: "project_id"})[["project_id", "geometry"] + [
        c for c in projects.columns if c not in (i.project_id, "geometry")]].merge(totals, on="project_id", how="left")
    folder = ctx.out.projects_gpkg.parent
    folder.mkdir(parents=True, exist_ok=True)
    write_table(out, ctx.out.projects_gpkg, layer="projects_carbon")
    write_table(acc.parcels, ctx.out.project_parcels)
    write_table(acc.conflicts, folder / "conflicts.csv")
    geo = parcels.set_index("parcel_id").geometry
    for pid, t in acc.parcels.groupby("project_id"):
        g = gpd.GeoDataFrame(t.assign(carbon_t_ha=t["carbon_t"] / t["counted_ha"].where(t["counted_ha"] > 0)),
                             geometry=geo.loc[t["parcel_id"]].to_numpy(), crs=parcels.crs)
        write_webmap_html(g, folder / f"{pid}.html", density_col="carbon_t_ha", area_col="counted_ha",
                          carbon_col="carbon_t", sd_col="carbon_sd_t", lo_col="carbon_lo_t", hi_col="carbon_hi_t",
                          title=f"{pid}: parcel carbon counted for the project")
    return {"projects": len(out), "project_carbon_t": float(out["carbon_t"].sum()),
            "conflicts": len(acc.conflicts), "conflict_ha": float(acc.conflicts["overlap_ha"].sum()) if len(acc.conflicts) else 0.0}
