"""Stage 6: carbon per forest parcel (小班)."""

from __future__ import annotations


import geopandas as gpd
import joblib
import numpy as np
import pandas as pd

from ...config import default_allometry_path
from ...fileio import write_table
from ...models import carbon as carbon_model
from ...models.allometry import load_registry
from ...rs.grid import pixel_area_ha
from ...vector.layers import read_layer
from ...vector.zonal import zonal_table
from .context import Context
from .map import parcel_groups

def parcel_carbon(ctx: Context, polygons: gpd.GeoDataFrame, id_field: str) -> pd.DataFrame:
    """Exact (exactextract) carbon and AGB per polygon from the mapped rasters.

    ``carbon_t`` = coverage-weighted mean carbon density × polygon area: where
    a polygon has unmapped pixels (``valid_fraction`` < 1) they take the
    polygon's mean.  ``carbon_t_mapped`` is the exact sum over mapped pixels.
    """
    ctx.need(ctx.out.carbon, ctx.out.agb)
    zc = zonal_table(ctx.out.carbon, polygons, id_field, ("mean", "sum", "count"), band_names=["c", "ca", "cb"])
    za = zonal_table(ctx.out.agb, polygons, id_field, ("mean",), band_names=["agb"])
    px_ha = pixel_area_ha(ctx.gbox)
    area_ha = polygons.geometry.area.to_numpy() / 10_000
    df = pd.DataFrame({id_field: polygons[id_field].to_numpy(), "area_ha": area_ha})
    df["valid_fraction"] = np.clip(zc["c_count"].to_numpy() * px_ha / area_ha, 0, 1)
    df["agb_mg_ha"] = za["agb_mean"].to_numpy()
    df["carbon_t_ha"] = zc["c_mean"].to_numpy()
    df["carbon_above_t"] = zc["ca_mean"].to_numpy() * area_ha
    df["carbon_below_t"] = zc["cb_mean"].to_numpy() * area_ha
    df["carbon_t"] = df["carbon_t_ha"] * df["area_ha"]
    df["carbon_t_mapped"] = zc["c_sum"].to_numpy() * px_ha
    df["co2e_t"] = carbon_model.co2e(df["carbon_t"].to_numpy())
    return df


def stage_parcels(ctx: Context) -> dict:
    i = ctx.cfg.inputs
    parcels = read_layer(i.parcels, i.parcels_layer, i.parcel_id, ctx.gbox.crs.to_wkt())
    stats = parcel_carbon(ctx, parcels, i.parcel_id)
    model_id = joblib.load(ctx.out.model)["model_id"] if ctx.out.model.exists() else ""
    keep = [c for c in parcels.columns if c not in stats.columns or c in (i.parcel_id,)]
    out = parcels[keep].merge(stats, on=i.parcel_id).rename(columns={i.parcel_id: "parcel_id"})
    out["model_id"] = model_id
    if ctx.cfg.carbon.group_field is not None:
        registry = load_registry(ctx.cfg.allometry or default_allometry_path())
        groups = parcel_groups(parcels, ctx.cfg.carbon.group_field, i.parcels, registry, ctx.cfg.allometry_fallback)
        out["carbon_rule"] = [registry.conversion.rule(g).group for g in groups]
        # the map burns rules by pixel centre: the share of the parcel's area whose pixels carry its own rule
        z = zonal_table(ctx.out.carbon_rule, parcels, i.parcel_id, ("unique", "frac"), band_names=["r"])
        own = registry.conversion.code_of(groups)
        out["carbon_rule_coverage"] = [float(np.sum(f[u == k])) for u, f, k in zip(z["r_unique"], z["r_frac"], own)]
    write_table(out, ctx.out.parcels_gpkg, layer="parcels_carbon")
    write_table(out, ctx.out.parcels_parquet)  # GeoParquet
    return {"parcels": len(out), "total_carbon_t": float(np.nansum(out["carbon_t"]))}
