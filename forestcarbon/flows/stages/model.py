"""Stage 4: coverage-aware AGB models fitted on the plots' features, with their cards."""

from __future__ import annotations

import hashlib
from pathlib import Path

import geopandas as gpd
import joblib
import numpy as np
import pandas as pd
from odc.geo.geobox import GeoBox

from ...errors import (ConfigError, ModelError)
from ...fileio import atomic_path, sha256, write_json, write_table
from ...models.coverage import CoverageModel
from ...models.regressor import sparse_features, spatial_blocks
from ...models.support import window_at, window_px
from ...rs.grid import check_on_grid
from ...vector.zonal import zonal_table
from .context import Context, LIDAR_FEATURES, log

def feature_rasters(ctx: Context) -> list[tuple[Path, list[str], bool]]:
    """(raster, band names used as features, whether they cover the whole grid) in feature order.

    Reflectances, indices and DEM terrain are wall to wall: a pixel without them gets no prediction.
    LiDAR metrics and terrain from the LiDAR DTM exist only where flown: missing there, the model's
    NaN handling serves.
    """
    import rasterio

    from ...rs.terrain import TERRAIN_FEATURES

    ctx.need(ctx.out.reflectance, ctx.out.indices)
    out = [(ctx.out.reflectance, list(ctx.cfg.mosaic.bands), True), (ctx.out.indices, ["ndvi", "evi", "ndmi", "nbr"], True)]
    if ctx.cfg.model.use_lidar and ctx.out.lidar_metrics.exists():
        out.append((ctx.out.lidar_metrics, list(LIDAR_FEATURES), False))
    if ctx.out.terrain.exists():
        with rasterio.open(ctx.out.terrain) as src:
            wall = src.tags().get("coverage") == "wall-to-wall"
        if wall or (ctx.cfg.model.use_lidar and ctx.out.lidar_metrics.exists()):
            out.append((ctx.out.terrain, list(TERRAIN_FEATURES), wall))
    for path, _, _ in out:
        check_on_grid(path, ctx.gbox)
    return out


def stage_model(ctx: Context) -> dict:
    """Coverage-aware models (:mod:`..models.coverage`): an optical model on every plot with the wall-to-wall
    features, a LiDAR + optical model on the plots LiDAR covers; each chosen by spatial-block CV among
    ``model.kind`` candidates, with random CV beside it, calibrated intervals, a residual variogram,
    permutation importance and (complete features) the area of applicability (:func:`..models.fit.fit_table`)."""
    from ...models.card import build_card
    from ...models.coverage import coverage_labels
    from ...models.fit import fit_table
    from ...models.validation import make_splits

    cfg, m = ctx.cfg, ctx.cfg.model
    ctx.need(ctx.out.plots)
    plots = gpd.read_file(ctx.out.plots, layer="plots")
    table = pd.DataFrame({"plot_id": plots["plot_id"]})
    sources = feature_rasters(ctx)
    res = float(abs(ctx.gbox.affine.a))
    if m.support == "window":
        k = m.window_px or window_px(float(plots.geometry.area.median()), res)
        if k % 2 == 0:
            raise ConfigError(f"model.window_px must be odd (a window centred on its pixel), not {k}")
        support = {"kind": f"window mean {k} x {k} pixels", "area_m2": k * k * res * res, "window_px": k}
        for path, names, _ in sources:
            vals = plot_window_features(path, plots, ctx.gbox, k)
            for j, n in enumerate(names):
                table[n] = vals[:, j]
    else:
        support = {"kind": "plot footprint mean of the grid's features", "area_m2": float(plots.geometry.area.median())}
        for path, names, _ in sources:
            z = zonal_table(path, plots, "plot_id", ("mean",))
            for n in names:
                table[n] = z[f"{n}_mean"].to_numpy()
    wall = [n for _, ns, w in sources if w for n in ns]
    partial = [n for _, ns, w in sources if not w for n in ns]
    table["agb_mg_ha"] = plots["agb_mg_ha"].to_numpy()
    c = plots.geometry.centroid
    table["x"], table["y"] = c.x.to_numpy(), c.y.to_numpy()
    table["cv_block"] = spatial_blocks(table.x, table.y, m.cv_block_m)
    no_optical = ~np.isfinite(table[wall].to_numpy(dtype="float64")).all(axis=1)
    if no_optical.any():
        ids = table.plot_id[no_optical].astype(str).tolist()
        if m.plots_without_features == "error":
            raise ModelError(f"{int(no_optical.sum())} plots lack mosaic features (cloud or outside the mosaic): "
                             f"{ids[:10]}{' ...' if len(ids) > 10 else ''}; model.plots_without_features: drop to "
                             "train without them")
        log.warning("model: %d plots lack mosaic features (cloud or outside the mosaic) and train no model: %s",
                    len(ids), ids[:10])
    table["trains"] = ~no_optical
    train = table[~no_optical].reset_index(drop=True)
    make_splits(len(train), folds=m.cv_folds, seed=m.seed)  # enough plots for the CV at all, before anything else
    dropped = sparse_features(train, wall + partial, min_plots=2 * m.cv_folds)
    if dropped:
        log.warning("model: features %s have fewer than %d plots with values; not used", dropped, 2 * m.cv_folds)
    wall = [f for f in wall if f not in dropped]
    partial = [f for f in partial if f not in dropped]
    coverage = coverage_labels(train, partial)
    rf_grid = {k: tuple(int(v) if k == "min_samples_leaf" else v for v in vs) for k, vs in m.rf_grid.items()}
    kw = dict(block_m=m.cv_block_m, folds=m.cv_folds, seed=m.seed, alpha=m.interval_alpha, rf_grid=rf_grid,
              kinds=MAP_KINDS if m.kind == "auto" else (m.kind,))
    fits, notes = {}, []
    lidar_rows = coverage == "lidar"
    if partial:
        sub = train[lidar_rows].reset_index(drop=True)
        try:
            fits["lidar"] = fit_table(sub, "agb_mg_ha", wall + partial, x=sub.x, y=sub.y, **kw)
        except ModelError as err:
            notes.append(f"no LiDAR model ({int(lidar_rows.sum())} plots under LiDAR): {err}")
            log.warning("model: %s", notes[-1])
    fits["optical"] = fit_table(train, "agb_mg_ha", wall, x=train.x, y=train.y, coverage=coverage, **kw)
    table["coverage_class"] = ""
    table.loc[~no_optical, "coverage_class"] = coverage
    for name, fit in fits.items():
        col = np.full(len(table), np.nan)
        rows = np.flatnonzero(~no_optical)[lidar_rows] if name == "lidar" else np.flatnonzero(~no_optical)
        col[rows] = fit.honest.predicted
        table[f"agb_cv_pred_{name}_mg_ha"] = col
    comparison = model_comparison(fits)
    serving = [n for n in ("lidar", "optical") if n in fits]
    if comparison is not None and not comparison["lidar_plus_optical"]["rmse"] < comparison["optical_only"]["rmse"]:
        serving.remove("lidar")
        notes.append(f"the LiDAR + optical model is not served: on the {comparison['optical_only']['n']} plots under "
                     f"LiDAR its spatial-CV RMSE {comparison['lidar_plus_optical']['rmse']:.1f} Mg/ha is not below the "
                     f"optical model's {comparison['optical_only']['rmse']:.1f} (more LiDAR plots would change that)")
        log.warning("model: %s", notes[-1])
    served = "lidar" if "lidar" in serving else "optical"
    table["agb_cv_pred_mg_ha"] = table[f"agb_cv_pred_{served}_mg_ha"].fillna(table["agb_cv_pred_optical_mg_ha"])
    write_table(table, ctx.out.training_table)
    digest = sha256(ctx.out.training_table)
    grid = {"crs": ctx.gbox.crs.to_wkt(), "resolution_m": res}
    cards = {n: build_card(f, name=f"{cfg.name}-{n}", target_units="Mg/ha (dry aboveground biomass)", support=support,
                           training_sha256=digest, source=str(ctx.out.training_table), grid=grid)
             for n, f in fits.items()}
    ident = hashlib.sha256((digest + "".join(c["model_id"] for c in cards.values())).encode()).hexdigest()[:16]
    card = {"model_id": f"{cfg.name}-{ident}", "training_table_sha256": digest, "features": wall + partial,
            "lidar_features": partial if "lidar" in fits else [], "models": cards, "serving_order": serving,
            "comparison_on_lidar_plots": comparison, "features_dropped":
            {f: f"fewer than {2 * m.cv_folds} plots with values" for f in dropped},
            "plots_without_mosaic_features": table.plot_id[no_optical].astype(str).tolist(), "notes": notes,
            "config": m.model_dump()}
    models = [CoverageModel(n, fits[n].model, fits[n].intervals, tuple(fits[n].features)) for n in serving]
    card["served_features"] = [f for f in wall + partial if any(f in mm.features for mm in models)]
    with atomic_path(ctx.out.model) as tmp:
        joblib.dump({"models": models, "features": card["served_features"], "model_id": card["model_id"],
                     "aoa": {n: f.aoa for n, f in fits.items()}, "support": support, "grid": grid}, tmp)
    card["model_file_sha256"] = sha256(ctx.out.model)
    write_json(card, ctx.out.model_card)
    out = {"model_id": card["model_id"], "comparison_on_lidar_plots": comparison}
    for n, f in fits.items():
        for scheme, res in f.cv.items():
            out[f"{n}_{scheme}_cv"] = {k: res.overall[k] for k in ("r2", "rmse", "rrmse", "bias", "n")}
        out[f"{n}_interval_inside_fraction"] = f.calibration["overall"]["inside_fraction"]
        out[f"{n}_kind"] = f.model.kind
    return out


def plot_window_features(path: Path, plots: gpd.GeoDataFrame, gbox: GeoBox, k: int) -> np.ndarray:
    """(plots, bands) window means (:func:`..models.support.window_mean`) of a feature raster around the
    pixel holding each plot's centre, read window by window (NaN outside the raster)."""
    import rasterio
    from rasterio.windows import Window

    c = plots.geometry.centroid
    inv = ~gbox.affine
    cols, rows = zip(*[inv * (x, y) for x, y in zip(c.x, c.y)]) if len(plots) else ((), ())
    rows = np.floor(np.asarray(rows, float)).astype(int)
    cols = np.floor(np.asarray(cols, float)).astype(int)
    with rasterio.open(path) as src:
        def read(r0, r1, c0, c1):
            a = src.read(window=Window(c0, r0, c1 - c0, r1 - r0), boundless=True, masked=True).astype("float64")
            return a.filled(np.nan)
        return window_at(read, rows, cols, k)


MAP_KINDS = ("random_forest", "hist_gradient_boosting")
"""What ``model.kind: auto`` compares for the map: the log-log baseline needs strictly positive features,
and spectral indices, northness and eastness are signed, so it could not predict every pixel
(``forestcarbon model fit`` compares it on tables of positive metrics)."""


def model_comparison(fits: dict) -> dict | None:
    """Both models on the plots LiDAR covers, each under its own spatial-block CV: the optical model's
    out-of-block predictions there (its per-class figures) against the LiDAR + optical model's."""
    if "lidar" not in fits:
        return None
    opt = fits["optical"].honest.per_class.get("lidar")
    return {"lidar_plus_optical": {k: fits["lidar"].honest.overall[k] for k in ("r2", "rmse", "rrmse", "bias", "n")},
            "optical_only": opt}
