"""Parcel and county carbon intervals (forestcarbon.models.aggregate) against the synthetic county's truth.

    python benchmarks/check_parcel_intervals.py SCENE_DIR OUTPUT_DIR

SCENE_DIR is a ``forestcarbon synth``/``demo`` scene (its ``truth/parcel_carbon_truth.csv`` holds each parcel's
true carbon, the true carbon field integrated on a 5x finer grid), OUTPUT_DIR the pipeline's output for it.
Cells and coverage fractions per parcel come from exactextract (``cell_id``, ``coverage``) once; the carbon SD
raster and the model card's residual variogram (``map_error_correlation``) give each parcel's SD
(``parcel_sd``), the served models' spatial-CV summaries the shared level term (``level_offset_sd`` ×
``level_linear``, per serving model via ``model_source``); the pipeline's ``carbon_t`` is the total (unmapped
cells filled with the parcel mean: ``scaled_interval``).  Printed per error model (the method first, then
other readings of the nugget for diagnosis): the fraction of FOREST parcels (truth ``land_class``) whose
90 % interval holds the true carbon, by parcel size and serving model, z-score spread, and the county
total's interval (all parcels, and forest parcels in the JSON); then project SDs by ``total_sd`` against the
exact ``weighted_cells_sd`` (correlated part only).  Last line: JSON.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from forestcarbon.models.aggregate import (cells_from_coverage, error_correlation,  # noqa: E402
                                           interval, level_linear, level_offset_sd,
                                           map_error_correlation, parcel_sd,
                                           scaled_interval, total_sd,
                                           weighted_cells_sd)


def _read(path, band=1):
    with rasterio.open(path) as src:
        return src.read(band, masked=True).astype("float64").filled(np.nan), src.res[0], src.width


def cells(raster: Path, polygons: gpd.GeoDataFrame, ncols: int):
    from exactextract import exact_extract

    zones = gpd.GeoDataFrame({"k": np.arange(len(polygons))}, geometry=polygons.geometry.to_numpy(), crs=polygons.crs)
    df = exact_extract(str(raster), zones, ["cell_id", "coverage"], include_cols=["k"], output="pandas")
    df = df.sort_values("k")
    n = df["cell_id"].map(len).to_numpy()
    cid = np.concatenate(df["cell_id"].to_numpy()).astype("int64")
    frac = np.concatenate(df["coverage"].to_numpy()).astype("float64")
    pid = np.repeat(df["k"].to_numpy(), n)
    return cells_from_coverage(pid, cid // ncols, cid % ncols, frac, len(polygons))


def coverage_rate(lo, hi, truth):
    return float(np.mean((truth >= lo) & (truth <= hi)))


def main(scene: Path, out: Path) -> dict:
    t0 = time.perf_counter()
    card = json.loads((out / "model/model_card.json").read_text())
    served = card["serving_order"]
    support = card["models"][served[-1]]["support"]["area_m2"]
    corrs = {n: error_correlation(card["models"][n]["residual_variogram"], support) for n in served}
    truth = pd.read_csv(scene / "truth/parcel_carbon_truth.csv")
    parcels = gpd.read_file(out / "parcels/parcels_carbon.gpkg", layer="parcels_carbon")
    parcels = parcels.merge(truth[["parcel_id", "true_carbon_t"]], on="parcel_id", how="left", validate="1:1")
    tl = truth.set_index("parcel_id")["land_class"]
    parcels["truth_land_class"] = parcels["parcel_id"].map(tl)
    sd, res, ncols = _read(out / "maps/carbon_sd.tif")
    carbon, _, _ = _read(out / "maps/carbon.tif")
    source, _, _ = _read(out / "maps/model_source.tif")
    agb_sd, _, _ = _read(out / "maps/agb_sd.tif")
    off, r, c, f = cells(out / "maps/carbon_sd.tif", parcels, ncols)
    t_cells = time.perf_counter() - t0
    # the level offset each serving model's pixels share (level_offset_sd), as t C per parcel per model
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(agb_sd > 0, sd / agb_sd, 0.0)
    codes = {"lidar": 1, "optical": 2}
    level = {n: level_linear(off, r, c, f, np.where(source == codes[n], ratio, 0.0), res)
             * level_offset_sd(card["models"][n]["cv"]["spatial"]) for n in served}
    pid = np.repeat(np.arange(len(parcels)), np.diff(off))
    px_ha = res * res / 10_000
    mapped_t = np.bincount(pid, weights=np.nan_to_num(carbon[r, c]) * f * px_ha, minlength=len(parcels))
    lidar_share = np.bincount(pid, weights=(source[r, c] == 1) * f, minlength=len(parcels)) / np.maximum(
        np.bincount(pid, weights=f, minlength=len(parcels)), 1e-12)
    forest = (parcels["truth_land_class"] == "forest").to_numpy()
    true_t = parcels["true_carbon_t"].to_numpy()
    est_t = parcels["carbon_t"].to_numpy()
    area = parcels["area_ha"].to_numpy()
    info = {"level_offset_sd_mg_ha": {n: level_offset_sd(card["models"][n]["cv"]["spatial"]) for n in served},
            "served": served, "support_m2": support, "variograms": {n: card["models"][n]["residual_variogram"]
                                                                       | {"nugget_share": corrs[n].nugget_share}
                                                                       for n in served},
            "parcels": len(parcels), "forest_parcels": int(forest.sum()), "cells": int(off[-1]),
            "check_mapped_sum_equals_pipeline_carbon_t_mapped": float(np.nanmax(np.abs(
                mapped_t - parcels["carbon_t_mapped"].to_numpy()))),
            "lidar_share_of_forest_area": float(np.sum(lidar_share[forest] * area[forest]) / np.sum(area[forest]))}

    def variants():
        name, main_corr = map_error_correlation(card)
        white = error_correlation(card["models"][name]["residual_variogram"], support, nugget="white")
        yield (f"nugget unresolved below the first lag {main_corr.nugget_range_m:.0f} m + level offset (method)",
               main_corr, True)
        yield f"nugget unresolved below the first lag {main_corr.nugget_range_m:.0f} m, no level offset", main_corr
        yield "nugget white, regularised to the plot support", white
        yield "nugget white on the pixel diagonal (naive)", replace(white, support_m2=res * res)
        if card["models"][name]["residual_variogram"]["partial_sill"] > 0:  # a fitted structure to put it in
            yield "no nugget (all variance in the fitted structure)", replace(white, nugget_share=0.0)
        for n, cr in corrs.items():
            if n != name:
                yield f"{n} variogram (nugget unresolved below {cr.nugget_range_m:.0f} m)", cr

    results = {}
    for name, corr, *with_level in variants():
        t1 = time.perf_counter()
        ps = parcel_sd(off, r, c, f, sd, res, corr)
        dt = time.perf_counter() - t1
        if with_level:
            ps["carbon_sd_t"] = np.sqrt(ps["carbon_sd_t"] ** 2 + sum(v ** 2 for v in level.values()))
        scale = np.where(ps.covered_ha > 0, area / np.maximum(ps.covered_ha.to_numpy(), 1e-12), 1.0)
        iv = scaled_interval(est_t, area, ps)
        s, lo, hi = iv.carbon_sd_t.to_numpy(), iv.carbon_lower_t.to_numpy(), iv.carbon_upper_t.to_numpy()
        z = (est_t - true_t) / np.where(s > 0, s, np.nan)
        fz = z[forest & np.isfinite(z)]
        size_class = pd.cut(area, [0, 0.5, 1, 2, 4, np.inf])
        by_size = {str(k): round(coverage_rate(lo[m], hi[m], true_t[m]), 4) for k, m in
                   ((k, forest & (size_class == k)) for k in size_class.categories) if m.any()}
        lid = forest & (lidar_share > 0.5)
        opt = forest & (lidar_share <= 0.5)
        row = {"forest_inside": coverage_rate(lo[forest], hi[forest], true_t[forest]),
               "forest_inside_by_area_ha": by_size,
               "forest_inside_lidar_served": coverage_rate(lo[lid], hi[lid], true_t[lid]) if lid.any() else None,
               "forest_inside_optical_served": coverage_rate(lo[opt], hi[opt], true_t[opt]),
               "forest_z_sd": float(np.std(fz)), "forest_z_mean": float(np.mean(fz)),
               "forest_z_quantiles_05_50_95": [float(q) for q in np.quantile(fz, [0.05, 0.5, 0.95])],
               "forest_parcels_by_area_ha": {str(k): int((forest & (size_class == k)).sum())
                                             for k in size_class.categories},
               "forest_median_rel_sd": float(np.median(s[forest] / np.maximum(est_t[forest], 1e-9))),
               "seconds_parcel_sd": dt}
        # county: the sum of all parcels (and of forest parcels), SD from the summed weight field
        for label, sel in (("county_all_parcels", np.ones(len(parcels), bool)), ("county_forest_parcels", forest)):
            t2 = time.perf_counter()
            g = np.where(sel, scale, 0.0)
            csd_corr = weighted_cells_sd(off, r, c, f, g, sd, res, corr)
            lsd = float(np.sqrt(sum(float(g @ v) ** 2 for v in level.values()))) if with_level else 0.0
            csd = float(np.hypot(csd_corr, lsd))
            total, true_total = float(est_t[sel].sum()), float(true_t[sel].sum())
            clo, chi = interval(total, csd)
            row[label] = {"carbon_t": total, "true_carbon_t": true_total, "sd_t": csd, "sd_correlated_t": csd_corr,
                          "sd_level_t": lsd, "lower_t": float(clo),
                          "upper_t": float(chi), "inside": bool(clo <= true_total <= chi),
                          "z": (total - true_total) / csd, "sum_of_parcel_sds_t": float(s[sel].sum()),
                          "root_sum_squares_t": float(np.sqrt(np.sum(s[sel] ** 2))),
                          "seconds": time.perf_counter() - t2}
        results[name] = row
        print(f"{name}: forest parcels inside 90 %: {row['forest_inside']:.3f} (by area {by_size}); z SD "
              f"{row['forest_z_sd']:.2f}, mean {row['forest_z_mean']:+.2f}; county (all parcels) "
              f"{row['county_all_parcels']['carbon_t']:,.0f} t C, SD {row['county_all_parcels']['sd_t']:,.0f}, "
              f"interval [{row['county_all_parcels']['lower_t']:,.0f}, {row['county_all_parcels']['upper_t']:,.0f}] "
              f"true {row['county_all_parcels']['true_carbon_t']:,.0f} inside {row['county_all_parcels']['inside']}; "
              f"parcel SDs in {dt:.1f} s", flush=True)
    info["results"] = results
    info["seconds_cells"] = t_cells
    info["projects"] = project_check(out, parcels, off, r, c, f, sd, res, map_error_correlation(card)[1])
    return info


def project_check(out: Path, parcels, off, r, c, f, sd, res, corr) -> list:
    """Project SD from parcel rows (total_sd: shares as weights, centroid distances) against the exact pixel
    grid with the same shares."""
    shares_path = out / "projects/project_parcels.csv"
    if not shares_path.exists():
        return []
    shares = pd.read_csv(shares_path)
    share_col = next((k for k in ("share", "parcel_share", "fraction", "area_share") if k in shares.columns), None)
    if share_col is None:
        return [{"note": f"no share column in {list(shares.columns)}"}]
    ps = parcel_sd(off, r, c, f, sd, res, corr)
    area = parcels["area_ha"].to_numpy()
    scale = np.where(ps.covered_ha > 0, area / np.maximum(ps.covered_ha.to_numpy(), 1e-12), 1.0)
    cent = parcels.geometry.centroid
    table = pd.DataFrame({"parcel_id": parcels["parcel_id"].to_numpy(), "carbon_t": parcels["carbon_t"].to_numpy(),
                          "carbon_sd_t": ps.carbon_sd_t * scale, "carbon_sd_linear_t": ps.carbon_sd_linear_t * scale,
                          "x": cent.x.to_numpy(), "y": cent.y.to_numpy()})
    index = pd.Series(np.arange(len(parcels)), index=parcels["parcel_id"].to_numpy())
    rows = []
    shares = shares[["project_id", "parcel_id", share_col]]
    for proj, g in shares.groupby("project_id"):
        t = g.merge(table, on="parcel_id").rename(columns={share_col: "weight"})
        if t.empty:
            continue
        weight = np.zeros(len(parcels))
        weight[index[t["parcel_id"]].to_numpy()] = t["weight"].to_numpy() * scale[index[t["parcel_id"]].to_numpy()]
        rows.append({"project_id": proj, "parcels": len(t), "carbon_t": float((t["weight"] * t["carbon_t"]).sum()),
                     "sd_total_sd_t": total_sd(t, corr),
                     "sd_pixel_grid_t": weighted_cells_sd(off, r, c, f, weight, sd, res, corr)})
    return rows


if __name__ == "__main__":
    res = main(Path(sys.argv[1]), Path(sys.argv[2]))
    for p in res["projects"]:
        print(p)
    print(json.dumps(res, default=str))
