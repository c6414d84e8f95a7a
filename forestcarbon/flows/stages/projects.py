"""Stage 7: carbon per carbon project."""

from __future__ import annotations


import geopandas as gpd

from ...fileio import write_table
from ...vector.layers import read_layer
from ...vector.overlay import project_parcel_shares, project_totals
from .parcels import parcel_carbon
from .context import Context

def stage_projects(ctx: Context) -> dict:
    i = ctx.cfg.inputs
    if i.projects is None:
        return {"projects": 0}
    ctx.need(ctx.out.parcels_gpkg)
    projects = read_layer(i.projects, i.projects_layer, i.project_id, ctx.gbox.crs.to_wkt())
    parcels = gpd.read_file(ctx.out.parcels_gpkg, layer="parcels_carbon")
    shares = project_parcel_shares(projects, parcels, i.project_id, "parcel_id")
    totals = project_totals(shares, parcels, i.project_id, "parcel_id")
    direct = parcel_carbon(ctx, projects, i.project_id)[[i.project_id, "carbon_t"]].rename(columns={"carbon_t": "carbon_t_direct"})
    out = projects.merge(totals, on=i.project_id, how="left").merge(direct, on=i.project_id, how="left")
    out = out.rename(columns={i.project_id: "project_id"})
    write_table(out, ctx.out.projects_gpkg, layer="projects_carbon")
    write_table(shares.rename(columns={i.project_id: "project_id"}), ctx.out.project_parcels)
    return {"projects": len(out), "project_carbon_t": float(out["carbon_t"].sum())}
