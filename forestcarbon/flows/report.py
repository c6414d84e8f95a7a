"""Report stage: summary.json, provenance, PNG quicklooks and an HTML page.

For a synthetic scene (configuration with ``truth``) the estimate is compared
with the truth: total carbon over forest parcels (relative error), parcel
carbon relative RMSE (RMSE / mean true parcel carbon) and per-pixel AGB RMSE.
"""

from __future__ import annotations

import datetime as dt
import html
import importlib.metadata as md
import json
import logging
import subprocess
from pathlib import Path

import geopandas as gpd
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import rasterio  # noqa: E402

from .. import __version__  # noqa: E402

log = logging.getLogger("forestcarbon")
from ..config import default_allometry_path  # noqa: E402
from ..fileio import atomic_path, fingerprint, sha256, write_json  # noqa: E402

PACKAGES = ("numpy", "xarray", "dask", "rasterio", "odc-geo", "odc-stac", "geopandas", "shapely", "exactextract",
            "laspy", "lazrs", "scikit-learn", "prefect", "pydantic")


def _forest_mask(parcels: pd.DataFrame) -> np.ndarray:
    """Forest land by the parcels' configured land-class codes (``is_forest`` from parcel ingest); all parcels
    when no land class is configured."""
    if "is_forest" in parcels:
        return parcels["is_forest"].astype(bool).to_numpy()
    return np.ones(len(parcels), dtype=bool)


def truth_comparison(parcels: pd.DataFrame, truth_csv: Path, agb_est: Path, agb_truth: Path,
                     county: dict | None = None) -> dict:
    """Estimates against a synthetic scene's truth, over the parcels that are forest in TRUTH (the truth
    file's ``land_class``): totals, parcel RRMSE, pixel AGB error, the share of forest parcels whose 90 %
    interval holds their true carbon, and whether the county interval (``county``: the parcels stage's
    ``all_parcels`` figures) holds the true total of all parcels."""
    truth = pd.read_csv(truth_csv, dtype={"parcel_id": str})
    cols = ["parcel_id", "carbon_t"] + [c for c in ("carbon_p05_t", "carbon_p95_t") if c in parcels]
    m = parcels[cols].merge(truth, on="parcel_id", how="inner", validate="1:1")
    forest = (m["land_class"] == "forest").to_numpy() if "land_class" in m else np.ones(len(m), bool)
    est, tru = m.loc[forest, "carbon_t"].to_numpy(), m.loc[forest, "true_carbon_t"].to_numpy()
    ok = np.isfinite(est)
    total_est, total_true = float(est[ok].sum()), float(tru.sum())
    with rasterio.open(agb_est) as a, rasterio.open(agb_truth) as b:
        e, t = a.read(1), b.read(1)
    good = np.isfinite(e) & np.isfinite(t)
    out = {
        "total_carbon_t": total_true,
        "estimated_total_carbon_t": total_est,
        "total_relative_error": (total_est - total_true) / total_true,
        "parcel_carbon_rrmse": float(np.sqrt(np.mean((est[ok] - tru[ok]) ** 2)) / tru[ok].mean()),
        "parcel_carbon_r2": float(1 - np.sum((est[ok] - tru[ok]) ** 2) / np.sum((tru[ok] - tru[ok].mean()) ** 2)),
        "forest_parcels_compared": int(ok.sum()),
        "pixel_agb_rmse_mg_ha": float(np.sqrt(np.mean((e[good] - t[good]) ** 2))),
        "pixel_agb_bias_mg_ha": float(np.mean(e[good] - t[good])),
        "scope": "parcels that are forest in truth (the truth file's land_class)",
    }
    if "carbon_p05_t" in m:
        lo, hi = m.loc[forest, "carbon_p05_t"].to_numpy(), m.loc[forest, "carbon_p95_t"].to_numpy()
        out["parcel_interval_90_inside_fraction"] = float(np.mean((tru[ok] >= lo[ok]) & (tru[ok] <= hi[ok])))
    if county:
        true_all = float(m["true_carbon_t"].sum())
        lo, hi = county.get("carbon_p05_t"), county.get("carbon_p95_t")
        out["county_all_parcels"] = {"estimated_carbon_t": county["carbon_t"], "carbon_sd_t": county["carbon_sd_t"],
                                     "interval_90_t": [lo, hi], "true_carbon_t": true_all,
                                     "inside": bool(lo <= true_all <= hi), "z": (county["carbon_t"] - true_all)
                                     / county["carbon_sd_t"] if county["carbon_sd_t"] > 0 else None}
    return out


def _quicklook(path: Path, draw, axes: bool = False) -> str:
    fig, ax = plt.subplots(figsize=(6, 5), dpi=100)
    draw(fig, ax)
    if not axes:
        ax.set_axis_off()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path.name


def _raster_png(src: Path, band: int | str, title: str, cmap: str, out: Path, vmax=None) -> str:
    with rasterio.open(src) as r:
        if isinstance(band, str):
            band = list(r.descriptions).index(band) + 1
        a = r.read(band, out_shape=(min(r.height, 800), min(r.width, 800)), masked=True).astype(float).filled(np.nan)

    def draw(fig, ax):
        im = ax.imshow(a, cmap=cmap, vmin=0, vmax=vmax or np.nanpercentile(a, 99))
        fig.colorbar(im, ax=ax, shrink=0.8)
        ax.set_title(title)
    return _quicklook(out, draw)


def _rgb_png(src: Path, out: Path) -> str:
    with rasterio.open(src) as r:
        names = list(r.descriptions)
        idx = [names.index(b) + 1 for b in ("red", "green", "blue")]
        a = r.read(idx, out_shape=(3, min(r.height, 800), min(r.width, 800))).astype(float)
    rgb = np.clip(np.moveaxis(a, 0, -1) / 0.15, 0, 1)
    rgb = np.nan_to_num(rgb)

    def draw(fig, ax):
        ax.imshow(rgb)
        ax.set_title("Median composite (true colour)")
    return _quicklook(out, draw)


def _git_commit() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5).stdout.strip() or None
    except Exception:
        return None


def build_report(ctx) -> dict:
    cfg, out = ctx.cfg, ctx.out
    ctx.need(out.parcels_gpkg, out.model_card, out.agb, out.carbon)
    rep = out.report_dir
    rep.mkdir(parents=True, exist_ok=True)
    parcels = gpd.read_file(out.parcels_gpkg, layer="parcels_carbon")
    card = json.loads(out.model_card.read_text())
    forest = _forest_mask(parcels)
    summary = {
        "name": cfg.name,
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "parcels": int(len(parcels)),
        "forest_parcels": int(forest.sum()),
        "total_carbon_t": float(np.nansum(parcels.loc[forest, "carbon_t"])),
        "total_co2e_t": float(np.nansum(parcels.loc[forest, "co2e_t"])),
        "total_carbon_above_t": float(np.nansum(parcels.loc[forest, "carbon_above_t"])),
        "total_carbon_below_t": float(np.nansum(parcels.loc[forest, "carbon_below_t"])),
        "total_carbon_t_all_parcels": float(np.nansum(parcels["carbon_t"])),
        # totals skip parcels without any mapped pixel: say how many and how large they are
        "forest_parcels_without_estimate": int((forest & parcels["carbon_t"].isna()).sum()),
        "forest_area_ha_without_estimate": float(parcels.loc[forest & parcels["carbon_t"].isna(), "area_ha"].sum()),
        "forest_parcels_under_half_mapped": int((forest & (parcels["valid_fraction"] < 0.5)).sum()),
        "scope": "totals over forest parcels (is_forest: the configured land-class codes; all parcels if none)",
        "model": model_summary(card),
        "carbon_conversion": _conversion_tags(out.carbon),
        "equations": _equation_summary(out),
        "grid": {"crs": str(ctx.gbox.crs), "shape": list(ctx.gbox.shape), "resolution_m": cfg.grid.resolution_m,
                 "bounds": list(ctx.gbox.extent.boundingbox)},
    }
    if out.projects_gpkg.exists():
        pr = gpd.read_file(out.projects_gpkg, layer="projects_carbon")
        summary["projects"] = [{k: (None if pd.isna(v) else v) for k, v in r.items()}
                               for r in pd.DataFrame(pr.drop(columns="geometry"))[[c for c in ("project_id", "area_ha", "n_parcels", "n_conflicts", "contested_ha", "ineligible_ha", "carbon_t", "carbon_sd_t", "carbon_lo_t", "carbon_hi_t", "rel_half_width", "co2e_t", "carbon_credited_t", "carbon_t_inside_boundary_all_land") if c in pr]].to_dict("records")]
    if out.trees_totals.exists():
        summary["single_trees"] = trees_summary(out)
    parcel_summary = out.parcels_gpkg.parent / "summary.json"
    county = json.loads(parcel_summary.read_text())["county"] if parcel_summary.exists() else {}
    summary["county"] = county
    if cfg.truth is not None:
        summary["truth"] = truth_comparison(parcels, cfg.truth.parcels, out.agb, cfg.truth.agb,
                                            county.get("all_parcels"))
    from ..models.allometry import load_registry
    from .run_state import LOCK, MANIFEST, _paths, code_hash

    allometry = Path(cfg.allometry or default_allometry_path())
    registry = load_registry(allometry)
    tables = [allometry] + [allometry.parent / t for t in ("species.csv",) if (allometry.parent / t).exists()]
    inputs = sorted({Path(p) for p in _paths(cfg.model_dump(exclude={"output", "compute"}))}, key=str)
    provenance = {
        "forestcarbon": __version__, "git_commit": _git_commit(), "source_sha256": code_hash(),
        "packages": {p: _version(p) for p in PACKAGES},
        "config": json.loads(cfg.model_dump_json()),
        "allometry": {"version": registry.version, "files": fingerprint(tables, out.root)},
        "model_card_sha256": sha256(out.model_card),
        "paths_relative_to": str(out.root),
        "inputs": fingerprint(inputs, out.root),
        "outputs": fingerprint([out.root], out.root, skip=[rep, out.root / LOCK, out.root / MANIFEST]),
    }
    write_json(provenance, rep / "provenance.json")
    summary["provenance"] = "provenance.json"
    pngs = [_rgb_png(out.reflectance, rep / "composite.png"),
            _raster_png(out.agb, 1, "Estimated AGB (Mg/ha)", "YlGn", rep / "agb.png", 250),
            _raster_png(out.carbon, 1, "Carbon density (Mg C/ha)", "YlGn", rep / "carbon.png", 150)]
    if out.lidar_metrics.exists():
        pngs.append(_raster_png(out.lidar_metrics, "zq95", "LiDAR zq95 (m)", "viridis", rep / "lidar_zq95.png", 35))
    pngs.append(_quicklook(rep / "parcels.png", lambda fig, ax: (
        parcels.plot(column="carbon_t_ha", cmap="YlGn", legend=True, ax=ax, vmin=0,
                     legend_kwds={"label": "carbon t/ha", "shrink": 0.8}),
        ax.set_title("Parcel carbon density (t C/ha)"))))
    if out.plots.exists():
        plots = gpd.read_file(out.plots, layer="plots")
        if "agb_mg_ha_eq_min" in plots and "agb_mg_ha_mc_q2_5" in plots:
            pngs.append(_quicklook(rep / "equation_spread.png", lambda fig, ax: spread_figure(plots, ax), axes=True))
    tt = pd.read_csv(out.training_table)

    def scatter(fig, ax):
        ax.scatter(tt.agb_mg_ha, tt.agb_cv_pred_mg_ha, s=8)
        lim = float(np.nanmax([tt.agb_mg_ha.max(), tt.agb_cv_pred_mg_ha.max()]))
        ax.plot([0, lim], [0, lim], "k--", lw=1)
        ax.set_xlabel("plot AGB from allometry (Mg/ha)")
        ax.set_ylabel("block-CV prediction (Mg/ha)")
        cv = summary["model"]["models"][card["serving_order"][0]]["spatial_cv"]
        ax.set_title(f"Block CV ({card['serving_order'][0]} model): R² {cv['r2']:.2f}, RMSE {cv['rmse']:.1f} Mg/ha")
    pngs.append(_quicklook(rep / "cv_scatter.png", scatter, axes=True))
    served = card["models"][card["serving_order"][0]]

    def importance(fig, ax):
        imp = pd.DataFrame(served["permutation_importance"]).sort_values("rmse_increase")
        ax.barh(imp["feature"], imp["rmse_increase"], xerr=imp["rmse_increase_sd"], color="tab:green")
        ax.set_xlabel("RMSE increase when the feature is permuted (Mg/ha)")
        ax.set_title(f"Permutation importance ({card['serving_order'][0]} model)")

    def folds(fig, ax):
        for k, (scheme, color) in enumerate((("spatial", "tab:blue"), ("random", "tab:orange"))):
            pf = pd.DataFrame(served["cv"][scheme]["per_fold"])
            ax.bar(pf["fold"] + (k - 0.5) * 0.4, pf["rmse"], width=0.4, color=color, label=f"{scheme} CV RMSE")
            ax.plot(pf["fold"] + (k - 0.5) * 0.4, pf["bias"], "k_", markersize=14)
        ax.axhline(0, color="k", lw=0.5)
        ax.set_xlabel("fold (black: bias, Mg/ha)")
        ax.set_ylabel("Mg/ha")
        ax.legend()
        ax.set_title("Accuracy by fold: spatial blocks vs random")
    pngs.append(_quicklook(rep / "importance.png", importance, axes=True))
    pngs.append(_quicklook(rep / "cv_folds.png", folds, axes=True))
    if summary["forest_parcels_without_estimate"]:
        log.warning("report: %d forest parcels (%.1f ha) have no mapped pixel and are not in the totals",
                    summary["forest_parcels_without_estimate"], summary["forest_area_ha_without_estimate"])
    summary["maps_to_explore"] = explorable_maps(parcels, out, cfg.name)
    write_json(summary, out.summary)
    _write_html(out.report_html, summary, pngs)
    return {k: summary[k] for k in ("parcels", "total_carbon_t", "total_co2e_t")} | (
        {"truth": summary["truth"]} if "truth" in summary else {})


def trees_summary(out) -> dict:
    """The tree register's class totals (village trees, forest-parcel trees: count, carbon with SD and 90 %
    interval, kg) and, for synthetic scenes, its scores against the true trees."""
    tot = pd.read_csv(out.trees_totals)
    cls = tot[tot["level"] == "class"] if "level" in tot else tot.iloc[0:0]
    res = {"register": str(out.trees_gpkg.relative_to(out.root)),
           "classes": {r["label"]: {"n_trees": int(r["n_trees"]), "carbon_kg": float(r["carbon_kg"]),
                                    "carbon_kg_sd": float(r["carbon_kg_sd"]),
                                    "interval_90": [float(r["carbon_kg_p05"]), float(r["carbon_kg_p95"])]}
                       for _, r in cls.iterrows()}}
    if out.trees_validation.exists():
        res["validation"] = json.loads(out.trees_validation.read_text())
    return res


def model_summary(card: dict) -> dict:
    """Each model's kind, spatial-block and random CV side by side, interval calibration per coverage class,
    the comparison on the LiDAR plots, and which models serve the map."""
    keys = ("r2", "rmse", "rrmse", "bias", "n")
    models = {}
    for name, c in card["models"].items():
        honest = next(k for k in c["cv"] if k != "random")
        models[name] = {"kind": c["kind"], "features": c["features"],
                        "spatial_cv": {k: c["cv"][honest][k] for k in keys},
                        "random_cv": {k: c["cv"]["random"][k] for k in keys},
                        "interval_inside_fraction": c["calibration"]["overall"]["inside_fraction"],
                        "interval_inside_by_coverage": {k: v["inside_fraction"] for k, v in
                                                        (c["calibration"].get("per_coverage_class") or {}).items()},
                        "nominal_coverage": c["calibration"]["nominal"]}
    return {"model_id": card["model_id"], "serving_order": card["serving_order"], "models": models,
            "comparison_on_lidar_plots": card.get("comparison_on_lidar_plots"), "notes": card.get("notes", [])}


def _conversion_tags(carbon_tif: Path) -> dict:
    """The carbon conversion's rules and the mapped area each served, as the map stage tagged them."""
    with rasterio.open(carbon_tif) as src:
        tags, bands = src.tags(), list(src.descriptions)
    return {"rules": json.loads(tags.get("rules", "{}")), "rule_area_ha": json.loads(tags.get("rule_area_ha", "{}")),
            "bands": bands}


def _equation_summary(out) -> dict:
    """Trees per aboveground equation and per species-resolution route, and how often the equation choice
    (the plot's AGB under each credible equation) spreads wider than the plot's Monte Carlo interval."""
    if not out.trees.exists():
        return {}
    trees = pd.read_csv(out.trees, usecols=lambda c: c in ("equation_id", "species_source", "equation_verified",
                                                           "conversion_verified"))
    res = {"trees_per_equation": {k: int(v) for k, v in trees["equation_id"].str.split(";").str[0].value_counts().items()},
           "trees_per_species_route": {k: int(v) for k, v in trees["species_source"].value_counts().items()},
           "tree_share_equation_verified": float(trees["equation_verified"].mean()),
           "tree_share_conversion_verified": float(trees["conversion_verified"].mean())}
    if out.plots.exists():
        p = gpd.read_file(out.plots, layer="plots")
        if "equation_spread_pct" in p:
            res["plot_equation_spread_pct_median"] = float(p["equation_spread_pct"].median())
            res["plot_equation_spread_pct_max"] = float(p["equation_spread_pct"].max())
            res["plots_equation_spread_wider_than_mc_interval"] = int(p["equation_spread_exceeds_mc"].fillna(False).sum())
            res["plots"] = int(len(p))
    return res


def spread_figure(plots: pd.DataFrame, ax) -> None:
    """Per plot (sorted by AGB): the 95 % Monte Carlo interval beside the range of AGB under the credible equations."""
    p = plots.sort_values("agb_mg_ha").reset_index(drop=True)
    x = np.arange(len(p))
    ax.vlines(x - 0.15, p["agb_mg_ha_mc_q2_5"], p["agb_mg_ha_mc_q97_5"], color="tab:blue", lw=1.5,
              label="Monte Carlo 95 % interval")
    ax.vlines(x + 0.15, p["agb_mg_ha_eq_min"], p["agb_mg_ha_eq_max"], color="tab:orange", lw=1.5,
              label="range over credible equations")
    ax.plot(x, p["agb_mg_ha"], "k.", ms=3, label="plot AGB (table's equation)")
    ax.set_xlabel("plots, sorted by AGB")
    ax.set_ylabel("AGB (Mg/ha)")
    ax.set_title("Equation choice vs measurement and model error")
    ax.legend(fontsize=8, loc="upper left")


def _version(pkg: str) -> str | None:
    try:
        return md.version(pkg)
    except md.PackageNotFoundError:
        return None


def _ratio_text(rs) -> str:
    low, high, threshold = rs
    return f"{low:g}" if not np.isfinite(threshold) else f"{low:g} up to {threshold:g} Mg/ha AGB, {high:g} above"


def _conversion_html(conv: dict) -> str:
    """The carbon conversion's rules, the mapped area each served and their sources, as a table."""
    rules, area = conv.get("rules", {}), conv.get("rule_area_ha", {})
    if not rules:
        return ""
    rows = "".join(
        f"<tr><td>{'default' if r['group'] == '*' else html.escape(r['group'])}</td>"
        f"<td>{r['cf_above']:g} / {r['cf_below']:g}</td><td>{_ratio_text(r['root_shoot'])}</td>"
        f"<td>{area.get(r['group'], 0):,.1f}</td><td>{'yes' if r['verified'] else 'no'}</td>"
        f"<td>{'<br>'.join(html.escape(x) for x in r['sources'])}</td></tr>" for r in rules.values())
    return ("<h2>Carbon conversion</h2><table><tr><th>rule (species group)</th><th>carbon fraction above / below</th>"
            "<th>root-to-shoot ratio</th><th>mapped area (ha)</th><th>verified</th><th>sources</th></tr>"
            f"{rows}</table>")


MAP_MAX_PARCELS = 50_000  # beyond this one page of parcels is too heavy to open; the GeoPackage serves instead


def explorable_maps(parcels: gpd.GeoDataFrame, out, name: str) -> list[dict]:
    """Self-contained interactive maps the report links (:func:`forestcarbon.vector.webmap.write_webmap_html`:
    pan, zoom, click a parcel for its carbon, SD, 90 % interval, area): all parcels when there are at most
    :data:`MAP_MAX_PARCELS`, and each project's map the projects stage wrote.  Paths relative to the report."""
    from ..vector.webmap import write_webmap_html

    maps = []
    if 0 < len(parcels) <= MAP_MAX_PARCELS and {"carbon_t_ha", "carbon_t", "area_ha"} <= set(parcels.columns):
        cols = {c: c if c in parcels else None for c in ("carbon_sd_t", "carbon_p05_t", "carbon_p95_t")}
        write_webmap_html(parcels, out.report_dir / "parcels_map.html", density_col="carbon_t_ha", area_col="area_ha",
                          carbon_col="carbon_t", sd_col=cols["carbon_sd_t"], lo_col=cols["carbon_p05_t"],
                          hi_col=cols["carbon_p95_t"], title=f"{name}: parcel carbon")
        maps.append({"title": f"All {len(parcels):,} parcels", "href": "parcels_map.html"})
    elif len(parcels) > MAP_MAX_PARCELS:
        log.info("report: %d parcels, more than %d for one interactive page; open parcels/parcels_carbon.gpkg in "
                 "QGIS (styled)", len(parcels), MAP_MAX_PARCELS)
    for p in sorted(out.projects_gpkg.parent.glob("*.html")):
        maps.append({"title": f"Project {p.stem}", "href": f"../projects/{p.name}"})
    return maps


def _num(v, digits: int = 0) -> str:
    """A number as people read it: thousands separated, ``digits`` decimals; '–' for none."""
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "–"
    return f"{float(v):,.{digits}f}" if isinstance(v, (int, float, np.number)) else str(v)


def _write_html(path: Path, summary: dict, pngs: list[str]) -> None:
    """report/index.html from the Jinja2 template ``templates/report.html`` (autoescaped): totals with units
    and intervals, warnings, the models' spatial CV, projects, single trees, truth, conversion, stage timings,
    the quicklooks and the whole summary."""
    import jinja2

    from .prefect_io import run_warnings

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
                             autoescape=jinja2.select_autoescape(["html"]), undefined=jinja2.ChainableUndefined)
    env.filters["num"] = _num
    county = (summary.get("county") or {}).get("forest_parcels") or (summary.get("county") or {}).get("all_parcels") or {}
    county = {k: v for k, v in county.items() if not isinstance(v, dict)}
    models = [(k, m.get("spatial_cv") or {}) for k, m in ((summary.get("model") or {}).get("models") or {}).items()]
    page = env.get_template("report.html").render(
        s=summary, county=county, models=models, warnings=run_warnings(summary), pngs=pngs,
        conversion=_conversion_html(summary.get("carbon_conversion", {})),
        raw=json.dumps(summary, indent=1, ensure_ascii=False, default=str))
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
