"""Single trees on real data: lidaRtRee's chablais3 plot (50 x 50 m, 110 field trees with position, DBH,
height and species; ~13.5 pts/m2, not normalised).

    python benchmarks/check_trees_chablais3.py [DATA_DIR]

Runs the pipeline's single-tree chain (``forestcarbon.flows.single_trees``: pit-free CHM at the trees
config's resolution, tops, crowns, crown point metrics) with the default ``trees`` settings and prints:

* detection rate: field trees >= 10 m with a detected top within 3 m and 20 % of their height (one to one,
  closest pairs first: :func:`forestcarbon.rs.lidar.trees.match_detected_to_field`);
* commission rate: detected tops >= 10 m inside the field trees' convex hull without a match (the
  inventory gives no plot boundary);
* height RMSE and bias of the matched trees (CHM height at the top, and the crown's highest return);
* DBH RMSE and bias of the matched trees, the DBH model (ln D ~ ln H, :mod:`forestcarbon.models.tree_dbh`)
  fitted on the other field trees (leave one out), and in-sample;
* plot carbon from the detected trees (all, inside the hull) against the field trees, both through one
  shared yardstick allometry: Chave et al. 2014 eq. 4 with species wood densities (Global Wood Density
  Database means, Zanne et al. 2009; the detected trees take the plot's basal-area-weighted mean), since
  the project's allometry table holds Chinese species only.

Last line: JSON.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from pyproj import CRS
from shapely import contains_xy
from shapely.geometry import MultiPoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from forestcarbon.config import TreesConfig, default_allometry_path  # noqa: E402
from forestcarbon.flows import single_trees as st  # noqa: E402
from forestcarbon.models.allometry import load_registry  # noqa: E402
from forestcarbon.models.tree_dbh import fit_dbh_model, fit_dbh_models  # noqa: E402
from forestcarbon.rs import lidar  # noqa: E402
from forestcarbon.rs.lidar.trees import match_detected_to_field  # noqa: E402

# GWDD species means (g/cm3), rounded; a yardstick shared by field and detected trees
WOOD_DENSITY = {"PIAB": 0.38, "ABAL": 0.37, "FASY": 0.59, "ACPS": 0.52, "SOAU": 0.60, "TABA": 0.55,
                "ULGL": 0.53, "FREX": 0.56, "BEPE": 0.53}
GROUP = "tropical_measured_wd"  # the registry's Chave 2014 eq. 4 group (per-tree wood density)


def run(data: Path) -> dict:
    laz, inv = data / "las_chablais3.laz", data / "tree_inventory_chablais3.csv"
    field = pd.read_csv(inv).rename(columns={"d": "dbh_cm", "h": "height_m", "s": "species"})
    field["wood_density_g_cm3"] = field["species"].map(WOOD_DENSITY)
    field = field.assign(species_group=GROUP, status="alive", height_source="measured")
    cfg = TreesConfig()
    det = st.Detection(window_m=cfg.window_m, min_height_m=cfg.min_height_m, smooth=cfg.smooth,
                       smooth_px=cfg.smooth_px, segmentation=cfg.segmentation, max_crown_m=cfg.max_crown_m,
                       tile_px=cfg.tile_px)
    tiles = lidar.index_tiles([laz])
    with tempfile.TemporaryDirectory() as work:
        srcs = st.chms_from_points(tiles, lambda sel: lidar.geobox_over_tiles(sel, cfg.chm_resolution_m),
                                   lidar.Options(chm_algorithm="pitfree"), Path(work))
        crs = CRS.from_user_input(lidar.geobox_over_tiles(tiles, 1.0).crs.to_wkt())
        trees, _ = st.detect_all(srcs, det, crs, (7, 18))
    trees = pd.DataFrame(trees.drop(columns="geometry"))

    m = match_detected_to_field(trees[["x", "y"]].to_numpy(), trees["height_m"].to_numpy(),
                                field[["x", "y"]].to_numpy(), field["height_m"].to_numpy())
    big = np.flatnonzero(field["height_m"].to_numpy() >= 10)
    m = m[np.isin(m["field_index"], big)].reset_index(drop=True)
    hull = MultiPoint(field[["x", "y"]].to_numpy()).convex_hull
    in_hull = contains_xy(hull, trees["x"].to_numpy(), trees["y"].to_numpy())
    dbig = np.flatnonzero((trees["height_m"].to_numpy() >= 10) & in_hull)
    dh = m["dh_m"].to_numpy()
    dz = trees["z_max_m"].to_numpy()[m["det_index"]] - field["height_m"].to_numpy()[m["field_index"]]

    # DBH of matched trees from their detected height: leave-one-out and in-sample ln D ~ ln H
    hd = trees["height_m"].to_numpy()[m["det_index"]]
    d_true = field["dbh_cm"].to_numpy()[m["field_index"]]
    loo = np.empty(len(m))
    for k, fi in enumerate(m["field_index"]):
        rest = field.drop(index=fi)
        loo[k] = fit_dbh_model(rest["height_m"], rest["dbh_cm"]).predict(np.array([hd[k]]))[0][0]
    ins = fit_dbh_model(field["height_m"], field["dbh_cm"]).predict(hd)[0]

    # plot carbon: detected trees in the hull vs field trees, one allometry and conversion
    registry = load_registry(default_allometry_path())
    ba = np.pi * (field["dbh_cm"] / 200) ** 2
    rho_plot = float(np.sum(ba * field["wood_density_g_cm3"]) / ba.sum())
    models = fit_dbh_models(field)
    mine = trees[in_hull].assign(species_group=GROUP, wood_density_g_cm3=rho_plot, village_tree=True)
    car = st.CarbonSettings(default_group=GROUP, height_sd_m=cfg.height_sd_m, draws=cfg.draws, seed=cfg.seed)
    detected, totals = st.carbon(mine.assign(tree_index=np.arange(len(mine))), registry, models, car,
                                 levels=())
    from forestcarbon.models.allometry import tree_biomass

    fld = tree_biomass(field.assign(species=GROUP), registry)
    tot = totals[totals["level"] == "class"].iloc[0]
    out = {
        "field_trees_ge_10m": int(len(big)), "detected_ge_10m_in_hull": int(len(dbig)),
        "detected_all": int(len(trees)), "matched": int(len(m)),
        "detection_rate": len(m) / len(big), "commission_rate": 1 - np.isin(dbig, m["det_index"]).mean(),
        "height_rmse_m": float(np.sqrt(np.mean(dh**2))), "height_bias_m": float(dh.mean()),
        "crown_zmax_height_rmse_m": float(np.sqrt(np.nanmean(dz**2))), "crown_zmax_height_bias_m": float(np.nanmean(dz)),
        "dbh_rmse_cm_loo": float(np.sqrt(np.mean((loo - d_true) ** 2))), "dbh_bias_cm_loo": float(np.mean(loo - d_true)),
        "dbh_rmse_cm_in_sample": float(np.sqrt(np.mean((ins - d_true) ** 2))),
        "dbh_bias_cm_in_sample": float(np.mean(ins - d_true)),
        "field_dbh_model_rse_log": models["*"].rse,
        "plot_carbon_t_detected": float(tot["carbon_kg"]) / 1000,
        "plot_carbon_t_detected_interval_90": [float(tot["carbon_kg_p05"]) / 1000, float(tot["carbon_kg_p95"]) / 1000],
        "plot_carbon_t_field": float(fld["carbon_kg"].sum()) / 1000,
        "plot_carbon_t_field_ge_10m": float(fld.loc[fld["height_m"] >= 10, "carbon_kg"].sum()) / 1000,
        "wood_density_plot_mean": rho_plot,
    }
    return out


def main(argv: list[str]) -> int:
    data = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parents[2] / "shared" / "data" / "lidar" / "lidaRtRee"
    if not (data / "las_chablais3.laz").exists():
        print(f"skip: {data}/las_chablais3.laz not found")
        return 0
    r = run(data)
    print(f"chablais3: {r['field_trees_ge_10m']} field trees >= 10 m, {r['detected_ge_10m_in_hull']} detected >= 10 m "
          f"in the hull; detection {r['detection_rate']:.3f}, commission {r['commission_rate']:.3f}")
    print(f"height (CHM at the top): RMSE {r['height_rmse_m']:.2f} m, bias {r['height_bias_m']:+.2f} m; "
          f"(crown's highest return): RMSE {r['crown_zmax_height_rmse_m']:.2f} m, bias {r['crown_zmax_height_bias_m']:+.2f} m")
    print(f"DBH of matched trees: leave-one-out RMSE {r['dbh_rmse_cm_loo']:.1f} cm, bias {r['dbh_bias_cm_loo']:+.1f} cm; "
          f"in-sample RMSE {r['dbh_rmse_cm_in_sample']:.1f} cm, bias {r['dbh_bias_cm_in_sample']:+.1f} cm")
    lo, hi = r["plot_carbon_t_detected_interval_90"]
    print(f"plot carbon: detected {r['plot_carbon_t_detected']:.2f} t C (90 % [{lo:.2f}, {hi:.2f}]) vs field "
          f"{r['plot_carbon_t_field']:.2f} t C (trees >= 10 m: {r['plot_carbon_t_field_ge_10m']:.2f})")
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
