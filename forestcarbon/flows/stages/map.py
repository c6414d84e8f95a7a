"""Stage 5: the AGB and carbon maps with their uncertainty, the forest mask and the area of applicability."""

from __future__ import annotations

import json
import warnings

import dask
import dask.array as da
import geopandas as gpd
import joblib
import numpy as np
import xarray as xr

from ...config import default_allometry_path
from ...errors import (ConfigError, FieldError, ModelError, UnresolvedSpeciesWarning)
from ...models.allometry import (load_registry, resolve_species)
from ...models.coverage import applicability_block, predict_coverage_block
from ...models.support import window_mean
from ...rs.cog import write_cog
from ...rs.forest_mask import NO_PARCEL, REASON_BITS, forest_mask_block
from ...rs.grid import pixel_area_ha
from ...vector.rasterize import burn_values
from .context import Context, open_stack, read_parcel_layer
from .model import feature_rasters

def stage_map(ctx: Context) -> dict:
    """AGB with its SD and 90 % interval from the coverage-aware models, the serving model per pixel, the
    forest mask, and carbon with the same interval (carbon is monotone in AGB, so the AGB quantiles map
    onto carbon quantiles; its SD is the AGB SD times the pixel's carbon-to-AGB ratio)."""
    from ...models.coverage import BANDS, SOURCES
    from ...rs.forest_mask import masked_bands

    cfg = ctx.cfg
    chunk = cfg.compute.chunk_px
    ctx.need(ctx.out.model)
    bundle = joblib.load(ctx.out.model)
    if not isinstance(bundle, dict) or "models" not in bundle:
        raise ConfigError(f"{ctx.out.model}: written by an older forestcarbon (no coverage models); rerun the model stage")
    grid = {"crs": ctx.gbox.crs.to_wkt(), "resolution_m": float(abs(ctx.gbox.affine.a))}
    if bundle["grid"]["crs"] != grid["crs"] or abs(bundle["grid"]["resolution_m"] - grid["resolution_m"]) > 1e-6:
        raise ModelError(f"{ctx.out.model}: model {bundle['model_id']} was trained on another grid "
                         f"({bundle['grid']['resolution_m']} m); rerun the model stage")
    used = set(bundle["features"])
    sources = [(p, [n for n in ns if n in used], wall) for p, ns, wall in feature_rasters(ctx)]
    sources = [s for s in sources if s[1]]
    names = [n for _, ns, _ in sources for n in ns]
    if set(names) != used:
        raise ModelError(f"{ctx.out.model}: model {bundle['model_id']} uses features {sorted(used - set(names))} "
                         "the feature rasters lack; rerun the model stage")
    stack = xr.concat([open_stack(p, chunk).sel(band=ns) for p, ns, _ in sources], dim="band")
    data = stack.data.rechunk({0: -1})
    k = int(bundle["support"].get("window_px", 1))
    if k > 1:  # the features the model was trained on: window means of about the plot's area
        data = data.map_overlap(window_mean, k=k, depth={0: 0, 1: k // 2, 2: k // 2}, boundary=np.nan, dtype="float32")
    pred = data.map_blocks(predict_coverage_block, names, bundle["models"], chunks=((len(BANDS),), *data.chunks[1:]),
                           dtype="float32")
    tags = {"model_id": bundle["model_id"], "units": "Mg/ha"}
    mask_summary = None
    if cfg.forest_mask.configured or cfg.inputs.landcover is not None:
        fm = cfg.forest_mask
        write_cog(forest_mask_layer(ctx), ctx.gbox, ctx.out.forest_mask, nodata=None, block=chunk,
                  descriptions=["forest", "non_forest_reasons"],
                  tags={"reason_bits": json.dumps(REASON_BITS), "config": fm.model_dump_json(),
                        "landcover": str(cfg.inputs.landcover)})
        forest = open_stack(ctx.out.forest_mask, chunk).data[0]
        v = fm.non_forest_agb_mg_ha
        pred = da.map_blocks(masked_bands, pred, forest, (v, 0.0, v, v, None), dtype="float32")
        tags |= {"forest_mask": f"{ctx.out.forest_mask.name}: non-forest pixels = {v:g} Mg/ha"}
        mask_summary = forest_mask_summary(ctx)
    write_cog(pred, ctx.gbox, ctx.out.prediction_work, descriptions=list(BANDS), block=chunk)
    try:
        bands = open_stack(ctx.out.prediction_work, chunk).data
        itags = tags | {"interval": f"nominal {1 - cfg.model.interval_alpha:.0%} (conformal, spatial-block calibrated)"}
        for i, path in ((0, ctx.out.agb), (1, ctx.out.agb_sd), (2, ctx.out.agb_p05), (3, ctx.out.agb_p95)):
            write_cog(bands[i], ctx.gbox, path, descriptions=[BANDS[i]], units="Mg/ha", tags=itags if i else tags,
                      block=chunk)
        write_cog(bands[4].astype("uint8"), ctx.gbox, ctx.out.model_source, nodata=None, descriptions=["model_source"],
                  tags={"codes": json.dumps({"none": 0, **SOURCES}), "model_id": bundle["model_id"]}, block=chunk)
    finally:
        ctx.out.prediction_work.unlink(missing_ok=True)
    agb_w = open_stack(ctx.out.agb, chunk).data[0]
    registry = load_registry(cfg.allometry or default_allometry_path())
    conversion = registry.conversion
    rule = carbon_rule_layer(ctx, registry)
    write_cog(rule, ctx.gbox, ctx.out.carbon_rule, nodata=None, descriptions=["carbon_rule"], block=chunk,
              tags={"rules": json.dumps({k: v["group"] for k, v in conversion.describe().items()}),
                    "group_field": str(cfg.carbon.group_field)})
    rule_w = open_stack(ctx.out.carbon_rule, chunk).data[0]
    carbon = da.map_blocks(conversion.carbon_bands, agb_w, rule_w, new_axis=0,
                           chunks=((3,), *agb_w.chunks), dtype="float32")
    area = _rule_area_ha(ctx, agb_w, rule_w, conversion)
    ctags = tags | {"units": "Mg C/ha", "carbon": "C = AGB*CF_above(rule) + AGB*R(rule, AGB)*CF_below(rule)",
                    "rules": json.dumps(conversion.describe(), ensure_ascii=False),
                    "rule_area_ha": json.dumps(area, ensure_ascii=False)}
    write_cog(carbon, ctx.gbox, ctx.out.carbon, descriptions=list(CARBON_BANDS), units="Mg C/ha", tags=ctags, block=chunk)

    def total_carbon(a, r):
        return conversion.carbon_bands(a, r)[0]

    for src, dst in ((ctx.out.agb_p05, ctx.out.carbon_p05), (ctx.out.agb_p95, ctx.out.carbon_p95)):
        q = open_stack(src, chunk).data[0]
        write_cog(da.map_blocks(total_carbon, q, rule_w, dtype="float32"), ctx.gbox, dst, descriptions=[dst.stem + "_mg_ha"],
                  units="Mg C/ha", tags=ctags | {"from": src.name}, block=chunk)
    c_total = open_stack(ctx.out.carbon, chunk).data[0]
    sd = open_stack(ctx.out.agb_sd, chunk).data[0]
    ratio = da.where(agb_w > 0, c_total / da.where(agb_w > 0, agb_w, 1), 0)
    write_cog((sd * ratio).astype("float32"), ctx.gbox, ctx.out.carbon_sd, descriptions=["carbon_sd_mg_ha"],
              units="Mg C/ha", tags=ctags | {"carbon_sd": "agb_sd x carbon/agb of the pixel"}, block=chunk)
    trained = (bundle.get("aoa") or {}).get("optical")
    aoa_summary = None
    if trained is not None:  # where the optical model (the one that serves everywhere) is applicable
        di = data.map_blocks(applicability_block, names, trained, chunks=((2,), *data.chunks[1:]), dtype="float32")
        write_cog(di, ctx.gbox, ctx.out.aoa, descriptions=["dissimilarity_index", "inside_aoa"], block=chunk,
                  tags={"method": "Meyer & Pebesma 2021 dissimilarity index (CAST 1.1.0 trainDI/aoa), optical model",
                        "threshold": str(trained.threshold), "features": json.dumps(trained.features)})
        inside = open_stack(ctx.out.aoa, chunk).data[1]
        n_in, n_out = dask.compute((inside == 1).sum(), (inside == 0).sum())
        aoa_summary = {"inside_ha": float(n_in) * pixel_area_ha(ctx.gbox), "outside_ha": float(n_out) * pixel_area_ha(ctx.gbox)}
    served = dask.compute(*[(open_stack(ctx.out.model_source, chunk).data[0] == k).sum() for k in SOURCES.values()])
    px = pixel_area_ha(ctx.gbox)
    return {"model_id": bundle["model_id"], "carbon_rule_area_ha": area, "forest_mask": mask_summary,
            "area_ha_by_model": {n: float(c) * px for n, c in zip(SOURCES, served)}, "area_of_applicability": aoa_summary}


def forest_mask_layer(ctx: Context) -> "da.Array":
    """(2, y, x) forest flag and non-forest reasons from the configured sources (:mod:`..rs.forest_mask`)."""
    from ...rs.rasters import load_on_grid

    cfg, i, fm = ctx.cfg, ctx.cfg.inputs, ctx.cfg.forest_mask
    chunk = cfg.compute.chunk_px
    parcel = landcover = ndvi = None
    lc_nodata = None
    if fm.parcel_field:
        parcels = read_parcel_layer(ctx).gdf  # is_forest: the land class and codes every total uses
        is_forest = parcels["is_forest"].to_numpy(bool)
        parcel = burn_values(parcels, is_forest.astype("uint8"), ctx.gbox, fill=NO_PARCEL, chunk_px=chunk)
    if i.landcover is not None:
        import rasterio

        with rasterio.open(i.landcover) as src:
            finer = abs(src.transform.a) < abs(ctx.gbox.affine.a)
            lc_nodata = None if src.nodata is None else int(src.nodata)
        lc = load_on_grid(i.landcover, ctx.gbox, resampling="mode" if finer else "nearest", chunk_px=chunk)
        landcover, lc_nodata = lc.isel(band=0).data, lc.attrs.get("nodata", lc_nodata)
    if fm.ndvi_min is not None:
        ctx.need(ctx.out.indices)
        ndvi = open_stack(ctx.out.indices, chunk).sel(band="ndvi").data
    layers = [a for a in (parcel, landcover, ndvi) if a is not None]

    def block(*arrays):
        it = iter(arrays)
        return forest_mask_block(next(it) if parcel is not None else None, next(it) if landcover is not None else None,
                                 next(it) if ndvi is not None else None, landcover_forest=fm.landcover_forest_classes,
                                 landcover_never_forest=fm.landcover_never_forest_classes, landcover_nodata=lc_nodata, ndvi_min=fm.ndvi_min, outside_parcels=fm.outside_parcels)

    return da.map_blocks(block, *layers, new_axis=0, chunks=((2,), *layers[0].chunks), dtype="uint8")


def forest_mask_summary(ctx: Context) -> dict:
    """Forest and non-forest area (ha) and the area each reason zeroed."""
    m = open_stack(ctx.out.forest_mask, ctx.cfg.compute.chunk_px).data
    px = pixel_area_ha(ctx.gbox)
    reasons = m[1].astype("uint8")
    forest, *by_reason = dask.compute((m[0] == 1).sum(), *[((reasons & b) > 0).sum() for b in REASON_BITS.values()])
    n = int(np.prod(ctx.gbox.shape))
    return {"forest_ha": float(forest) * px, "non_forest_ha": float(n - forest) * px,
            "non_forest_ha_by_reason": {k: float(c) * px for k, c in zip(REASON_BITS, by_reason)}}


CARBON_BANDS = ("carbon_mg_ha", "carbon_above_mg_ha", "carbon_below_mg_ha")


def carbon_rule_layer(ctx: Context, registry) -> "da.Array":
    """Per pixel, the code of the conversion rule its parcel's dominant species gets (0: the default)."""
    cfg, i = ctx.cfg, ctx.cfg.inputs
    field = cfg.carbon.group_field
    if field is None:
        return da.zeros(tuple(ctx.gbox.shape), chunks=cfg.compute.chunk_px, dtype="uint8")
    parcels = read_parcel_layer(ctx).gdf
    groups = parcel_groups(parcels, field, i.parcels, registry, cfg.allometry_fallback)
    return burn_values(parcels, registry.conversion.code_of(groups), ctx.gbox, chunk_px=cfg.compute.chunk_px)


def parcel_groups(parcels: gpd.GeoDataFrame, field: str, source, registry, fallback: dict | None = None) -> list:
    """Species group of each parcel from its dominant-species field: names resolve as tree species do, then
    through ``allometry_fallback``; None where empty or unresolved (the default rule, with an
    :class:`~forestcarbon.errors.UnresolvedSpeciesWarning` naming the species)."""
    if field not in parcels.columns:
        raise FieldError(f"{source}: carbon.group_field {field!r} is not a field of the parcels layer "
                         f"(fields: {[c for c in parcels.columns if c != 'geometry']})")
    names = parcels[field].fillna("").astype(str).str.strip()
    groups, _ = resolve_species(names, registry, fallback)
    unknown_mask = groups.isna() & names.ne("")
    if unknown_mask.any():
        warnings.warn(f"{source}: {int(unknown_mask.sum())} parcels name species without a species group in field "
                      f"{field!r} ({sorted(set(names[unknown_mask]))[:5]}); their pixels take the default carbon "
                      "conversion", UnresolvedSpeciesWarning, stacklevel=2)
    return [g if isinstance(g, str) else None for g in groups]


def _rule_area_ha(ctx: Context, agb, rule, conversion) -> dict:
    """Mapped area (ha) served by each conversion rule."""
    valid = da.isfinite(agb)
    counts = dask.compute(*[((rule == k) & valid).sum() for k in range(len(conversion.rules_by_code()))])
    px = pixel_area_ha(ctx.gbox)
    return {r.group: float(c) * px for r, c in zip(conversion.rules_by_code(), counts)}
