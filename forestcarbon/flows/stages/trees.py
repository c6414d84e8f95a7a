"""Stage 7b: single trees (单株树碳计量) -- CHMs, tops and crowns, DBH and carbon with 90 % intervals, the
tree register, totals per parcel, village and class, changes since an earlier register, and scores against a
true tree list where the scene has one.

Reads ``inputs.tree_chm``, else the point clouds ``inputs.tree_lidar`` (one pit-free CHM per group of
touching tiles, so separate UAV flights get their own grids), else (``trees.from_lidar_stage``) the LiDAR
stage's CHM; the plots stage's
``plots/trees.csv`` (field trees with measured heights, for the DBH models); the parcels and villages layers.
Writes ``trees/`` (:class:`~forestcarbon.flows.layout.Layout`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from pyproj import CRS

from ...config import default_allometry_path
from ...errors import StageInputError
from ...models.allometry import load_registry
from ...rs import lidar
from ...rs.lidar.trees import match_detected_to_field
from ...vector.inventory import read_table
from ...vector.layers import read_attribute_layer, read_layer
from .. import single_trees as st
from .context import Context, log, read_parcel_layer
from .lidar import chm_geobox

VALIDATION_MIN_HEIGHT_M = 10.0  # trees scored for detection: >= 10 m (the chablais3 rule)


def chm_sources(ctx: Context, work: Path) -> list[dict]:
    """The CHMs to search: ``name``, ``chm`` path and, when built from points, ``tiles`` and ``dtm``."""
    cfg = ctx.cfg
    i, t = cfg.inputs, cfg.trees
    if i.tree_chm is not None:
        return [{"name": "tree_chm", "chm": Path(i.tree_chm)}]
    if i.tree_lidar is not None:
        tiles = lidar.index_tiles(lidar.find_tiles(i.tree_lidar), i.lidar_crs)
        crs = CRS.from_user_input(ctx.gbox.crs.to_wkt())
        opts = lidar.Options(normalized=i.lidar_normalized, ground_classes=tuple(i.ground_classes),
                             buffer_m=cfg.lidar.buffer_m, min_height_m=cfg.lidar.min_height_m,
                             max_height_m=cfg.lidar.max_height_m, chm_algorithm="pitfree",
                             pitfree_thresholds_m=tuple(cfg.lidar.pitfree_thresholds_m),
                             pitfree_max_edge_m=tuple(cfg.lidar.pitfree_max_edge_m),
                             noise_classes=tuple(cfg.lidar.noise_classes) + tuple(t.exclude_classes),
                             tiles_without_ground=cfg.lidar.tiles_without_ground)
        return st.chms_from_points(tiles, lambda sel: chm_geobox(sel, ctx.gbox, t.chm_resolution_m), opts, work)
    if t.from_lidar_stage and ctx.out.lidar_chm.exists():
        return [{"name": "lidar_stage", "chm": ctx.out.lidar_chm}]
    return []


def _interval(r) -> dict:
    return {"estimated": float(r["carbon_kg"]), "sd": float(r["carbon_kg_sd"]),
            "interval_90": [float(r["carbon_kg_p05"]), float(r["carbon_kg_p95"])]}


def validate(trees: pd.DataFrame, truth_path: Path, sources: list[dict], totals: pd.DataFrame,
             no_single_tree_groups: tuple[str, ...] = ()) -> dict:
    """Detection, height, DBH and carbon scores against the true tree list inside the searched CHMs' bounds,
    by :func:`~forestcarbon.rs.lidar.trees.match_detected_to_field` (within 3 m and 20 % of the true height,
    closest pairs first, one to one; trees >= 10 m).  With the truth's ``type``: detection per type and
    without ``no_single_tree_groups`` (bamboo culms are not single crowns); with ``village_tree``: the village
    trees' detection and DBH, and their carbon per village (``village_id``) and in all against the truth."""
    truth = pd.read_csv(truth_path)
    inside = np.zeros(len(truth), bool)
    for s in sources:
        b = s.get("bounds") or st.chm_bounds(s["chm"])
        inside |= truth["x"].between(b[0], b[2]) & truth["y"].between(b[1], b[3])
    tall = inside & (truth["height_m"] >= VALIDATION_MIN_HEIGHT_M)
    tr = truth[tall].reset_index(drop=True)
    det = trees[trees["height_m"] >= VALIDATION_MIN_HEIGHT_M].reset_index(drop=True)
    m = match_detected_to_field(det[["x", "y"]].to_numpy(), det["height_m"].to_numpy(), tr[["x", "y"]].to_numpy(),
                                tr["height_m"].to_numpy())
    d_det, d_true = det["dbh_cm"].to_numpy(float)[m["det_index"]], tr["dbh_cm"].to_numpy(float)[m["field_index"]]
    ok = np.isfinite(d_det)

    def dbh_scores(sel):
        e = (d_det - d_true)[ok & sel]
        return {"dbh_rmse_cm": float(np.sqrt(np.mean(e ** 2))) if e.size else None,
                "dbh_bias_cm": float(np.mean(e)) if e.size else None}

    matched = np.zeros(len(tr), bool)
    matched[m["field_index"].to_numpy()] = True
    # per-tree carbon of the matched trees against their true carbon: what a buyer of one tree relies on
    dm, tm = det.iloc[m["det_index"].to_numpy()], tr.iloc[m["field_index"].to_numpy()]
    has_c = dm["carbon_status"].eq("ok").to_numpy() if "carbon_status" in dm else np.isfinite(dm["carbon_kg"])
    c_true = tm["carbon_kg"].to_numpy(float)
    within = (c_true >= dm["carbon_kg_p05"].to_numpy(float)) & (c_true <= dm["carbon_kg_p95"].to_numpy(float))

    def carbon_scores(sel):
        sel = sel & has_c
        return {"trees": int(sel.sum()),
                "interval_90_coverage": float(within[sel].mean()) if sel.any() else None,
                "carbon_kg_estimated": float(dm["carbon_kg"].to_numpy(float)[sel].sum()),
                "carbon_kg_true": float(c_true[sel].sum())}
    out = {"rule": "one-to-one, closest first, within 3 m and 20 % of the true height; trees >= 10 m",
           "true_trees": int(len(tr)), "detected_trees": int(len(det)), "matched": int(len(m)),
           "detection_rate": float(len(m) / len(tr)) if len(tr) else None,
           "commission_rate": float(1 - len(m) / len(det)) if len(det) else None,
           "height_rmse_m": float(np.sqrt(np.mean(m["dh_m"] ** 2))) if len(m) else None,
           "height_bias_m": float(m["dh_m"].mean()) if len(m) else None, **dbh_scores(np.ones(len(m), bool)),
           "matched_trees_carbon": carbon_scores(np.ones(len(m), bool))}
    if "type" in tr:
        out["by_type"] = {k: {"true_trees": int(len(g)), "detection_rate": float(matched[g.index].mean()),
                              **({"visible_share": float(g["visible"].mean())} if "visible" in g else {})}
                          for k, g in tr.groupby("type")}
        single = ~tr["type"].isin(no_single_tree_groups).to_numpy()
        out["detection_rate_single_stems"] = float(matched[single].mean()) if single.any() else None
    if "village_tree" in truth:
        vt_true = tr["village_tree"].astype(bool).to_numpy()
        vt_m = vt_true[m["field_index"].to_numpy()]
        out["village_trees"] = {"true_trees": int(vt_true.sum()),
                                "detection_rate": float(matched[vt_true].mean()) if vt_true.any() else None,
                                **dbh_scores(vt_m), "matched_trees_carbon": carbon_scores(vt_m)}
        if len(totals):
            vt_all = inside & truth["village_tree"].astype(bool)
            cls = totals[(totals["level"] == "class") & (totals["label"] == "village_trees")]
            if len(cls):
                true_c = float(truth.loc[vt_all, "carbon_kg"].sum())
                r = _interval(cls.iloc[0])
                out["village_trees_carbon_kg"] = {**r, "true": true_c,
                                                  "inside": r["interval_90"][0] <= true_c <= r["interval_90"][1]}
            per = totals[totals["level"] == st.VILLAGE_TREES_LEVEL].set_index("label")
            if "village_id" in truth and len(per):
                true_v = truth[vt_all].groupby(truth["village_id"].astype(str))["carbon_kg"].sum()
                rows = []
                for vid in sorted(set(per.index.astype(str)) | set(true_v.index)):
                    r = _interval(per.loc[vid]) if vid in per.index.astype(str) else {
                        "estimated": 0.0, "sd": 0.0, "interval_90": [0.0, 0.0]}
                    t = float(true_v.get(vid, 0.0))
                    rows.append({"village_id": vid, **r, "true": t,
                                 "inside": r["interval_90"][0] <= t <= r["interval_90"][1]})
                out["village_trees_carbon_kg_by_village"] = rows
    return out


def stage_trees(ctx: Context) -> dict:
    cfg, t = ctx.cfg, ctx.cfg.trees
    det, car = st.settings(t)
    out_dir = ctx.out.trees_dir
    work = out_dir / ".work"
    if not (cfg.inputs.tree_chm or cfg.inputs.tree_lidar or (t.from_lidar_stage and ctx.out.lidar_chm.exists())):
        log.info("trees: no CHM (inputs.tree_chm, inputs.tree_lidar, or trees.from_lidar_stage with the lidar "
                 "stage's chm.tif); no trees")
        return {"trees": 0}
    if not ctx.out.trees.exists():
        raise StageInputError(f"{ctx.out.trees} is missing: the trees stage fits its DBH models on the plots "
                              "stage's field trees; run the plots stage first")
    # every layer read and checked before the CHMs are built
    registry = load_registry(cfg.allometry or default_allometry_path())
    grid_crs = CRS.from_user_input(ctx.gbox.crs.to_wkt())
    i = cfg.inputs
    species = (st.species_layer_groups(
        read_attribute_layer(i.tree_species, i.tree_species_layer, (i.tree_species_field,), grid_crs.to_wkt()),
        i.tree_species_field, registry, f"inputs.tree_species {i.tree_species}", cfg.allometry_fallback)
        if i.tree_species is not None else None)
    parcels = read_parcel_layer(ctx).gdf if i.parcels is not None else None
    villages = (read_layer(i.villages, i.villages_layer, i.village_id, grid_crs.to_wkt())
                .rename(columns={i.village_id: "village_id"}) if i.villages is not None else None)
    field_trees = pd.read_csv(ctx.out.trees)
    village_models = (st.village_dbh_models(read_table(i.village_field_trees), registry, t.village_dbh_form,
                                            f"inputs.village_field_trees {i.village_field_trees}",
                                            cfg.allometry_fallback)
                      if i.village_field_trees is not None else None)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        sources = chm_sources(ctx, work)
        table, crowns, totals, dbh_models = st.register(
            sources, det, car, registry, field_trees, t.dbh_form, grid_crs, parcels, villages,
            tuple(cfg.lidar.noise_classes) + tuple(t.exclude_classes), fallback=cfg.allometry_fallback,
            provenance={"run": cfg.name, "dbh_models_from": str(ctx.out.trees)}, species_layer=species,
            village_models=village_models)
        changes = (st.changes_since(t.previous_register, table, t.match_distance_m, t.match_height_drop_m)
                   if t.previous_register is not None else None)
        validation = (validate(table, cfg.truth.trees, sources, totals, tuple(t.no_single_tree_groups))
                      if cfg.truth is not None and cfg.truth.trees is not None else None)
        st.write_outputs(ctx.out, table, crowns, grid_crs, totals, dbh_models, changes, validation,
                         [s["chm"] for s in sources if Path(s["chm"]).parent == work])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    cls = totals[totals["level"] == "class"].set_index("label") if len(totals) else pd.DataFrame()
    summary = {"trees": int(len(table)), "chm_sources": [s["name"] for s in sources],
               "with_carbon": int(table["carbon_status"].eq("ok").sum()),
               "village_trees": int(table["village_tree"].sum()),
               "carbon_kg_by_class": {k: {"carbon_kg": float(r["carbon_kg"]), "sd": float(r["carbon_kg_sd"]),
                                          "interval_90": [float(r["carbon_kg_p05"]), float(r["carbon_kg_p95"])]}
                                      for k, r in cls.iterrows()},
               "dbh_models": {k: {"form": m.form, "n": m.n, "rse": m.rse} for k, m in dbh_models.items()}}
    if changes is not None:
        summary["changes"] = {k: int(v) for k, v in changes["change"].value_counts().items()}
    if validation is not None:
        summary["validation"] = validation
    return summary
