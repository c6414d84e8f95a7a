"""Stage 6: carbon per forest parcel (小班), with its uncertainty, and the county total.

Reads the parcels through the configured field mapping (``parcels``), the map stage's carbon, AGB, SD and
model-source layers and the model card; writes ``parcels/parcels_carbon.gpkg`` (styled for QGIS),
``.parquet`` (GeoParquet 1.1), ``.csv``, ``parcels/parcels_carbon.png`` and ``parcels/summary.json``.

Per parcel (exact coverage fractions computed once, :mod:`~forestcarbon.vector.zonal_engine`):
``carbon_t`` = the mean mapped carbon density × the parcel's area: cells the map leaves unmapped (never
clear, no model could predict) take the parcel's own mean; ``carbon_t_mapped`` is the exact sum over mapped
cells and ``valid_fraction`` the mapped share of the area (the summary gives the carbon the filling adds).
Uncertainty (:mod:`~forestcarbon.models.aggregate`): the SD of the parcel total with spatially correlated
pixel errors (the residual variogram's shape, each pixel's calibrated SD, the models' shared level
error), scaled to the full area as ``carbon_t`` is, and a normal 90 % interval clipped at 0.
"""

from __future__ import annotations

import functools
import json

import geopandas as gpd
import numpy as np
import pandas as pd

from ...config import default_allometry_path
from ...fileio import write_json
from ...models import carbon as carbon_model
from ...models.aggregate import (cells_from_coverage, interval, level_offset_sd, map_error_correlation,
                                 parcel_uncertainty, weight_field_sd)
from ...models.allometry import load_registry
from ...models.coverage import SOURCES
from ...rs.grid import pixel_area_ha
from ...vector.zonal import zonal_table
from ...vector.zonal_engine import PartitionCells, RasterLayer, zonal_stats
from .context import Context, read_parcel_layer
from .map import parcel_groups

PARTITION_PARCELS = 5_000
"""Parcels per zonal partition (one dask task): memory follows the partition, not the parcel count."""


def error_model(ctx: Context) -> tuple[str, object, dict]:
    """(the variogram's model name, its :class:`~forestcarbon.models.aggregate.ErrorCorrelation`, the level SD
    (Mg/ha) by ``model_source`` code) from the model card."""
    ctx.need(ctx.out.model_card)
    card = json.loads(ctx.out.model_card.read_text())
    name, corr = map_error_correlation(card)
    level = {SOURCES[m]: level_offset_sd(next(v for k, v in card["models"][m]["cv"].items() if k != "random"))
             for m in card["serving_order"]}
    return name, corr, level


def uncertainty_reducer(cells: PartitionCells, *, sd_path: str, agb_sd_path: str, source_path: str, corr,
                        level: dict) -> dict:
    """A zonal partition's parcels' :func:`~forestcarbon.models.aggregate.parcel_uncertainty`."""
    off, r, c, f = cells_from_coverage(cells.polygon, cells.rows, cells.cols, cells.fraction, cells.n)
    if cells.window is None:
        sd = agb_sd = source = np.zeros((1, 1))
    else:
        sd, agb_sd, source = cells.read(sd_path), cells.read(agb_sd_path), cells.read(source_path)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(agb_sd > 0, sd / agb_sd, 0.0)
    res = parcel_uncertainty(off, r, c, f, sd, ratio, source, cells.res_m, corr, level)
    res = res.rename(columns={"covered_ha": "mapped_ha"})
    res["lidar_fraction"] = np.bincount(np.repeat(np.arange(cells.n), np.diff(off)),
                                        weights=(source[r, c] == SOURCES["lidar"]) * f, minlength=cells.n) / \
        np.maximum(np.bincount(np.repeat(np.arange(cells.n), np.diff(off)), weights=f, minlength=cells.n), 1e-12)
    return {k: res[k].to_numpy() for k in res.columns}


def parcel_carbon(ctx: Context, polygons: gpd.GeoDataFrame, id_field: str, *, uncertainty: bool = False,
                  alpha: float = 0.10) -> pd.DataFrame:
    """Exact carbon and AGB per polygon from the mapped rasters, all layers in one pass (module docstring);
    with ``uncertainty`` also the SD and 1 − ``alpha`` interval of ``carbon_t``."""
    ctx.need(ctx.out.carbon, ctx.out.agb)
    layers = [RasterLayer("carbon", str(ctx.out.carbon), ("c", "ca", "cb")), RasterLayer("agb", str(ctx.out.agb), ("agb",))]
    reducers = None
    if uncertainty:
        ctx.need(ctx.out.carbon_sd, ctx.out.agb_sd, ctx.out.model_source)
        _, corr, level = error_model(ctx)
        reducers = {"sd": functools.partial(uncertainty_reducer, sd_path=str(ctx.out.carbon_sd),
                                            agb_sd_path=str(ctx.out.agb_sd), source_path=str(ctx.out.model_source),
                                            corr=corr, level=level)}
    z = zonal_stats(polygons, layers, id_field=id_field, partition_size=PARTITION_PARCELS, reducers=reducers)
    px_ha = pixel_area_ha(ctx.gbox)
    area_ha = z["area_ha"].to_numpy()
    df = pd.DataFrame({id_field: polygons[id_field].to_numpy(), "area_ha": area_ha})
    df["valid_fraction"] = z["c_valid_fraction"].to_numpy()
    df["agb_mg_ha"] = z["agb_mean"].to_numpy()
    df["carbon_t_ha"] = z["c_mean"].to_numpy()
    df["carbon_above_t"] = z["ca_mean"].to_numpy() * area_ha
    df["carbon_below_t"] = z["cb_mean"].to_numpy() * area_ha
    df["carbon_t"] = df["carbon_t_ha"] * area_ha
    df["carbon_t_mapped"] = z["c_sum"].to_numpy() * px_ha
    df["co2e_t"] = carbon_model.co2e(df["carbon_t"].to_numpy())
    if uncertainty:
        # SD over the mapped cells, scaled to the full area as carbon_t is
        mapped_ha = z["mapped_ha"].to_numpy()
        with np.errstate(divide="ignore", invalid="ignore"):
            up = np.where(mapped_ha > 0, area_ha / mapped_ha, np.nan)
        df["carbon_sd_t"] = z["carbon_sd_mapped_t"].to_numpy() * up
        lo, hi = interval(df["carbon_t"].to_numpy(), df["carbon_sd_t"].to_numpy(), alpha)
        df["carbon_p05_t"], df["carbon_p95_t"] = lo, hi
        df["co2e_sd_t"] = carbon_model.co2e(df["carbon_sd_t"].to_numpy())
        df["carbon_sd_linear_t"] = z["carbon_sd_linear_t"].to_numpy() * up
        for k in level:
            df[f"carbon_sd_level_{k}_t"] = z[f"carbon_sd_level_{k}_t"].to_numpy() * up
        df["lidar_fraction"] = z["lidar_fraction"].to_numpy()
        df["mapped_ha"] = mapped_ha
    return df


def county_total(ctx: Context, parcels: gpd.GeoDataFrame, table: pd.DataFrame, alpha: float = 0.10) -> dict:
    """The sum of the parcels (all, and forest land only) with its SD from the same error model: the
    correlated part over every mapped pixel inside a parcel (:func:`~forestcarbon.models.aggregate.weight_field_sd`,
    pixels by centre, each parcel's mapped-to-full-area scaling applied to its pixels), and each serving
    model's level error shared by all the parcels it serves (linear sums, models independent).  Reads the SD
    raster whole: memory follows the grid's area here (a block-aggregated version is for the county scale)."""
    import rasterio

    from ...vector.rasterize import burn_values

    _, corr, level = error_model(ctx)
    with rasterio.open(ctx.out.carbon_sd) as src:
        sd = src.read(1, masked=True).astype("float64").filled(np.nan)
    out = {"method": "models.aggregate: correlated pixel errors (residual variogram shape, pixel SD) over the "
                     "parcels' mapped pixels + each model's shared level error; normal interval clipped at 0"}
    mapped = table["mapped_ha"].to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(mapped > 0, table["area_ha"].to_numpy() / mapped, 0.0)
    for label, sel in (("all_parcels", np.ones(len(table), bool)),
                       ("forest_parcels", table["is_forest"].to_numpy(bool) if "is_forest" in table else None)):
        if sel is None:
            continue
        weight = burn_values(parcels[sel], scale[sel].astype("float32"), ctx.gbox, fill=0, dtype="float32",
                             chunk_px=ctx.cfg.compute.chunk_px).compute()
        a = weight * pixel_area_ha(ctx.gbox) * np.isfinite(sd)
        s_corr = weight_field_sd(a, sd, abs(ctx.gbox.resolution.x), corr)
        lev = {k: float(np.nansum(table.loc[sel, f"carbon_sd_level_{k}_t"])) for k in level}
        s = float(np.sqrt(s_corr**2 + sum(v**2 for v in lev.values())))
        total = float(np.nansum(table.loc[sel, "carbon_t"]))
        lo, hi = interval(total, s, alpha)
        out[label] = {"parcels": int(sel.sum()), "carbon_t": total, "carbon_sd_t": s, "carbon_sd_correlated_t": s_corr,
                      "carbon_sd_level_t": {str(k): v for k, v in lev.items()},
                      f"carbon_p{round(100 * alpha / 2):02d}_t": float(lo),
                      f"carbon_p{round(100 * (1 - alpha / 2))}_t": float(hi),
                      "co2e_t": float(carbon_model.co2e(total)), "co2e_sd_t": float(carbon_model.co2e(s)),
                      "carbon_t_mapped": float(np.nansum(table.loc[sel, "carbon_t_mapped"])),
                      "carbon_t_added_by_filling_unmapped": float(np.nansum(table.loc[sel, "carbon_t"])
                                                                  - np.nansum(table.loc[sel, "carbon_t_mapped"]))}
    return out


def stage_parcels(ctx: Context) -> dict:
    from ...vector.choropleth import write_choropleth_png
    from ...vector.outputs import write_csv_excel, write_geoparquet, write_styled_gpkg

    cfg = ctx.cfg
    ingest = read_parcel_layer(ctx)
    parcels = ingest.gdf
    stats = parcel_carbon(ctx, parcels, "parcel_id", uncertainty=True, alpha=cfg.projects.interval_alpha)
    card = json.loads(ctx.out.model_card.read_text()) if ctx.out.model_card.exists() else {}
    keep = [c for c in parcels.columns if c not in stats.columns or c == "parcel_id"]
    out = parcels[keep].merge(stats, on="parcel_id", validate="1:1")
    out["model_id"] = card.get("model_id", "")
    if cfg.carbon.group_field is not None:
        registry = load_registry(cfg.allometry or default_allometry_path())
        groups = parcel_groups(parcels, cfg.carbon.group_field, cfg.inputs.parcels, registry, cfg.allometry_fallback)
        out["carbon_rule"] = [registry.conversion.rule(g).group for g in groups]
        # the map burns rules by pixel centre: the share of the parcel's area whose pixels carry its own rule
        z = zonal_table(ctx.out.carbon_rule, parcels, "parcel_id", ("unique", "frac"), band_names=["r"])
        own = registry.conversion.code_of(groups)
        out["carbon_rule_coverage"] = [float(np.sum(f[u == k])) for u, f, k in zip(z["r_unique"], z["r_frac"], own)]
    county = county_total(ctx, parcels, out, cfg.projects.interval_alpha)
    off = out["valid_fraction"] <= 0
    summary = {"ingest": ingest.report, "county": county, "parcels_off_the_map": int(off.sum()),
               "parcels_off_the_map_ids": out.loc[off, "parcel_id"].head(20).tolist(),
               "forest_codes": list(cfg.parcels.forest_codes), "land_class_field": cfg.parcels.land_class_field}
    ctx.out.parcels_gpkg.parent.mkdir(parents=True, exist_ok=True)
    write_styled_gpkg(out, ctx.out.parcels_gpkg, density_col="carbon_t_ha", layer="parcels_carbon")
    write_geoparquet(out, ctx.out.parcels_parquet)
    write_csv_excel(out, ctx.out.parcels_gpkg.with_suffix(".csv"))
    write_choropleth_png(out, ctx.out.parcels_gpkg.with_suffix(".png"), density_col="carbon_t_ha",
                         title="Parcel carbon density (t C/ha)")
    write_json(summary, ctx.out.parcels_gpkg.parent / "summary.json")
    return {"parcels": len(out), "total_carbon_t": county["all_parcels"]["carbon_t"],
            "total_carbon_sd_t": county["all_parcels"]["carbon_sd_t"],
            "forest_carbon_t": county.get("forest_parcels", {}).get("carbon_t"),
            "repaired_geometries": len(ingest.repaired_ids), "area_flagged": len(ingest.area_flagged_ids),
            "parcels_off_the_map": int(off.sum())}
