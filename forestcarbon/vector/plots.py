"""Inventory plots: footprints and designs, and tree lists aggregated to per-hectare values.

Footprints.  Polygon plots are taken as drawn (horizontal area in the
projected target CRS).  Point plots become circles (``radius_m``, or ``shape``
circle with ``size_m2``) or axis-aligned squares (``size_m2``, e.g. 666.7 m² =
1 mu), or follow a named nested design (``design`` column, see :class:`~forestcarbon.config.SubplotConfig`).
Dimensions laid out along the ground on a slope (``slope_deg``) shrink to the
horizontal area by cos(slope); the footprint drawn for LiDAR and maps is then
the circle or square of that horizontal area.  ``area_fraction`` (0-1] is the
share of a plot inside its stand when a stand edge cuts it.

Expansion factors.  Each tree stands for 1 / (horizontal area of the (sub)plot
where trees of its DBH are measured × area_fraction) trees per hectare; in a
nested design that is the ring whose DBH threshold it passes.  Trees below the
smallest threshold are outside the inventory and are left out with a warning.

Per-plot values (per hectare, live trees): AGB/BGB/carbon (total, above- and
belowground)/CO2e (Mg/ha), BGB by the group's belowground equations where it
has them (``bgb_mg_ha_equation``, a check beside the conversion's ratio),
stems/ha, basal area (m²/ha, g = π/4 · (DBH/100)²), Lorey's height (basal-area-
weighted mean height, m), dominant height (mean height of the 100 thickest
trees per hectare, Assmann's top height, m), number of live and dead trees and
the share of AGB per equation.
"""

from __future__ import annotations

import logging
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from ..errors import FieldError
from .inventory import data_rows, read_table, rename_columns
from .layers import read_layer

log = logging.getLogger(__name__)


def _ring_area_m2(ring) -> float:
    return float(np.pi * ring.radius_m**2) if ring.radius_m is not None else float(ring.size_m2)


def _read_plot_table(path, layer, plot_id, crs, columns, plots_crs) -> gpd.GeoDataFrame:
    path = Path(path)
    if path.suffix.lower() in (".csv", ".txt", ".xlsx", ".xls", ".xlsm"):
        t = rename_columns(read_table(path, layer), columns, str(path))
        for col in (plot_id, "x", "y"):
            if col not in t.columns:
                raise FieldError(f"{path}: a plots table needs columns {plot_id!r}, 'x' and 'y' (have {list(t.columns)})")
        if plots_crs is None:
            raise FieldError(f"{path}: a plots table with x/y needs ground.plots_crs")
        dup = t[plot_id].duplicated(keep=False)
        if dup.any():
            raise FieldError(f"{path}: duplicated {plot_id!r} {sorted(set(t.loc[dup, plot_id].astype(str)))[:5]} in rows {data_rows(dup)}")
        return gpd.GeoDataFrame(t, geometry=gpd.points_from_xy(t["x"], t["y"]), crs=plots_crs).to_crs(crs)
    gdf = read_layer(path, layer, plot_id, crs)
    return rename_columns(gdf, columns, str(path))


def read_plots(path: Path | str, layer: str | None, plot_id: str, crs, *, columns: dict[str, str] | None = None,
               plots_crs: str | None = None, designs: dict | None = None, size_on_slope: bool = True) -> gpd.GeoDataFrame:
    """Plot footprints (polygons in ``crs``) with ``plot_id``, ``area_ha`` (horizontal × area_fraction),
    ``area_nominal_ha``, ``slope_factor``, ``area_fraction`` and ``design``."""
    designs = designs or {}
    plots = _read_plot_table(path, layer, plot_id, crs, columns or {}, plots_crs)
    ids = plots[plot_id].astype(str)
    n = len(plots)
    design = plots["design"].fillna("").astype(str) if "design" in plots else pd.Series("", index=plots.index)
    unknown = design.ne("") & ~design.isin(list(designs))
    if unknown.any():
        raise FieldError(f"{path}: plots {list(ids[unknown][:5])} name unknown designs {sorted(set(design[unknown]))[:5]} "
                         f"(ground.designs has {sorted(designs)})")
    slope = pd.to_numeric(plots["slope_deg"], errors="coerce").fillna(0.0).to_numpy() if "slope_deg" in plots else np.zeros(n)
    bad = (slope < 0) | (slope >= 90)
    if bad.any():
        raise FieldError(f"{path}: slope_deg must be in [0, 90) degrees; plots {list(ids[bad][:5])} have {slope[bad][:5].tolist()}")
    frac = pd.to_numeric(plots["area_fraction"], errors="coerce").fillna(1.0).to_numpy() if "area_fraction" in plots else np.ones(n)
    bad = (frac <= 0) | (frac > 1)
    if bad.any():
        raise FieldError(f"{path}: area_fraction must be in (0, 1]; plots {list(ids[bad][:5])} have {frac[bad][:5].tolist()}")
    geom = plots.geometry
    is_pt = (geom.geom_type == "Point").to_numpy()
    factor = np.where(is_pt & size_on_slope, np.cos(np.radians(slope)), 1.0)
    nominal = np.where(is_pt, np.nan, geom.area.to_numpy())
    shapes = np.array(geom.to_numpy(), dtype=object)
    radius = pd.to_numeric(plots["radius_m"], errors="coerce").to_numpy() if "radius_m" in plots else np.full(n, np.nan)
    size = pd.to_numeric(plots["size_m2"], errors="coerce").to_numpy() if "size_m2" in plots else np.full(n, np.nan)
    if "shape" in plots:  # shape + size: a circle of that area
        shape = plots["shape"].fillna("").astype(str).str.strip().str.casefold()
        bad = ~shape.isin(["", "circle", "square", "圆形", "方形"])
        if bad.any():
            raise FieldError(f"{path}: shape must be circle or square; plots {list(ids[bad][:5])} have {list(plots.loc[bad, 'shape'][:5])}")
        circ = shape.isin(["circle", "圆形"]).to_numpy() & ~np.isfinite(radius) & np.isfinite(size)
        radius = np.where(circ, np.sqrt(np.where(circ, size, 0) / np.pi), radius)
        size = np.where(circ, np.nan, size)
    for i in np.flatnonzero(is_pt):
        p = shapes[i]
        if design.iloc[i]:
            outer = max(designs[design.iloc[i]], key=_ring_area_m2)
            r, s = outer.radius_m, outer.size_m2
        else:
            r = radius[i] if np.isfinite(radius[i]) else None
            s = size[i] if np.isfinite(size[i]) else None
        if r is None and s is None:
            raise FieldError(f"{path}: point plot {ids.iloc[i]!r} needs radius_m, size_m2 or a design")
        nominal[i] = np.pi * r**2 if r is not None else s
        horizontal = nominal[i] * factor[i]
        if r is not None:
            shapes[i] = p.buffer(np.sqrt(horizontal / np.pi), quad_segs=64)
        else:
            half = np.sqrt(horizontal) / 2
            shapes[i] = shapely.box(p.x - half, p.y - half, p.x + half, p.y + half)
    plots = plots.set_geometry(gpd.GeoSeries(shapes, index=plots.index, crs=plots.crs))
    plots["area_nominal_ha"] = nominal / 10_000
    plots["slope_factor"] = factor
    plots["area_fraction"] = frac
    plots["design"] = design
    plots["area_ha"] = nominal * factor * frac / 10_000
    bad = ~(plots["area_ha"] > 0)
    if bad.any():
        raise FieldError(f"{path}: plots {list(ids[bad][:5])} have area <= 0 ({plots.loc[bad, 'area_ha'][:5].tolist()} ha)")
    return plots.rename(columns={plot_id: "plot_id"}).assign(plot_id=ids.to_numpy())


def expansion_per_ha(trees: pd.DataFrame, plots: gpd.GeoDataFrame, designs: dict | None = None) -> np.ndarray:
    """Trees per hectare each tree stands for (NaN below a nested design's smallest DBH threshold)."""
    p = plots.set_index("plot_id")
    area = trees["plot_id"].map(p["area_ha"]).to_numpy(float)
    exp = 1.0 / area
    for name, rings in (designs or {}).items():
        sel = (trees["plot_id"].map(p["design"]) == name).to_numpy()
        if not sel.any():
            continue
        scale = (trees.loc[sel, "plot_id"].map(p["slope_factor"] * p["area_fraction"])).to_numpy(float)
        d = trees.loc[sel, "dbh_cm"].to_numpy(float)
        ring_ha = np.full(d.size, np.nan)
        for ring in rings:  # thresholds increase: the last ring passed wins
            ring_ha[d >= ring.min_dbh_cm] = _ring_area_m2(ring) / 10_000
        exp[sel] = 1.0 / (ring_ha * scale)
    return exp


def check_plot_ids(trees: pd.DataFrame, plots: gpd.GeoDataFrame, source: str = "trees") -> None:
    """Every tree's plot_id must be a plot of the plots layer; the error names the rows and ids."""
    orphan = ~trees["plot_id"].isin(plots["plot_id"])
    if orphan.any():
        raise FieldError(f"{source}: rows {data_rows(orphan)} name plots not in the plots layer: "
                         f"{sorted(trees.loc[orphan, 'plot_id'].astype(str).unique())[:5]}")


def _dominant_height(g: pd.DataFrame, per_ha: float = 100.0) -> float:
    """Mean height of the ``per_ha`` thickest trees per hectare (weights = stems/ha each tree stands for)."""
    g = g.sort_values("dbh_cm", ascending=False)
    w = g["expansion_ha"].to_numpy(float)
    before = np.concatenate([[0.0], np.cumsum(w)[:-1]])
    take = np.clip(per_ha - before, 0.0, w)
    h = g["height_m"].to_numpy(float) if "height_m" in g else np.full(len(g), np.nan)
    return float(np.sum(take * h) / np.sum(take)) if take.sum() > 0 else np.nan


def _equation_mix(g: pd.DataFrame) -> str:
    """Share of the plot's AGB per aboveground equation, largest first."""
    share = (g["agb_kg"] * g["expansion_ha"]).groupby(g["equation_id"].str.split(";").str[0]).sum()
    share = share / share.sum() * 100 if share.sum() > 0 else share
    return "; ".join(f"{k} {v:.1f}%" for k, v in share.sort_values(ascending=False).items())


def plot_summaries(t: pd.DataFrame) -> pd.DataFrame:
    """Per-plot per-hectare values of live trees (see the module docstring)."""
    w = t["expansion_ha"]
    ba = np.pi / 4 * (t["dbh_cm"] / 100) ** 2
    h = t["height_m"] if "height_m" in t else pd.Series(np.nan, index=t.index)
    g = t.assign(
        agb=t.agb_kg * w / 1000, bgb=t.bgb_kg * w / 1000, c=t.carbon_kg * w / 1000, co2=t.co2e_kg * w / 1000,
        ca=t.carbon_above_kg * w / 1000, cb=t.carbon_below_kg * w / 1000,
        bgbe=(t["bgb_kg_equation"] if "bgb_kg_equation" in t else np.nan) * w / 1000,
        stems=w, ba=ba * w, bah=ba * w * h,
    ).groupby("plot_id")
    s = pd.DataFrame({
        "n_trees": g.size(),
        "agb_mg_ha": g["agb"].sum(), "bgb_mg_ha": g["bgb"].sum(),
        "carbon_mg_ha": g["c"].sum(), "carbon_above_mg_ha": g["ca"].sum(), "carbon_below_mg_ha": g["cb"].sum(),
        "co2e_mg_ha": g["co2"].sum(),
        "bgb_mg_ha_equation": g["bgbe"].agg(lambda x: x.sum() if x.notna().all() else np.nan),
        "stems_ha": g["stems"].sum(), "basal_area_m2_ha": g["ba"].sum(),
        "lorey_height_m": g["bah"].sum(min_count=1) / g["ba"].sum(),
        "dominant_height_m": t.groupby("plot_id")[list({"dbh_cm", "expansion_ha", *(["height_m"] if "height_m" in t else [])})]
                              .apply(_dominant_height),
        "n_heights_modelled": (t["height_source"].astype(str).str.startswith("hd_model") if "height_source" in t
                               else pd.Series(False, index=t.index)).groupby(t["plot_id"]).sum(),
        "equations_verified": g["equation_verified"].all(),
        "conversion_verified": g["conversion_verified"].all(),
        "equations": g["equation_id"].agg(lambda s: ";".join(sorted(set(s)))),
        "equation_mix": t.groupby("plot_id")[["agb_kg", "expansion_ha", "equation_id"]].apply(_equation_mix),
    })
    return s.reset_index()


def equation_spread(trees: pd.DataFrame, candidates: pd.DataFrame,
                    max_out_of_range: float = 0.1) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Plot AGB under each credible equation of each species group, beside the plot's own.

    ``trees`` are live trees with ``plot_id``, ``expansion_ha``, ``species_group`` and ``agb_kg``;
    ``candidates`` has one row per (tree, candidate equation of its group): the tree's row label
    ``tree``, ``group``, ``equation_id``, ``agb_kg`` and ``in_range``
    (:func:`~forestcarbon.models.allometry.candidate_agb`).  For each plot and candidate, the group's
    trees take the candidate's AGB and every other tree keeps its own.

    A candidate enters a plot's range only where it is verified (``verified`` in ``candidates``, an
    unverified transcription is no credible alternative, unless the group's own equation -- ``own`` --
    is itself a stand-in) and at most ``max_out_of_range`` of the group's
    trees lie outside its DBH range (nor is an equation far outside its data); the long table lists
    every candidate with ``verified`` and ``in_spread``.

    Returns (long table: ``plot_id, group, equation_id, agb_mg_ha, agb_mg_ha_used, difference_pct,
    trees, trees_out_of_range, verified, in_spread``; per plot: ``agb_mg_ha_eq_min``, ``agb_mg_ha_eq_max``
    (including the plot's own AGB), ``equation_spread_pct`` = (max − min) / own × 100 and
    ``n_equations`` in the range).
    """
    w = trees["expansion_ha"]
    used = (trees["agb_kg"] * w).groupby(trees["plot_id"]).sum() / 1000
    c = candidates.join(trees[["plot_id", "expansion_ha", "agb_kg"]].rename(columns={"agb_kg": "agb_kg_used"}),
                        on="tree", how="inner")
    c["delta"] = (c["agb_kg"] - c["agb_kg_used"]) * c["expansion_ha"] / 1000
    c["out"] = ~c["in_range"].astype(bool)
    if "verified" not in c:
        c["verified"] = True
    if "own" in c:  # where the group's own equation is a stand-in, the other stand-ins are as credible
        own_ok = c[c["own"].astype(bool)].groupby("group")["verified"].all()
        c["verified"] = c["verified"].astype(bool) | ~c["group"].map(own_ok).fillna(True).astype(bool)
    g = c.groupby(["plot_id", "group", "equation_id"], sort=True)
    long = pd.DataFrame({"delta": g["delta"].agg(lambda x: x.sum() if x.notna().all() else np.nan),
                         "trees": g.size(), "trees_out_of_range": g["out"].sum().astype(int),
                         "verified": g["verified"].all().astype(bool)}).reset_index()
    long["agb_mg_ha_used"] = long["plot_id"].map(used).to_numpy(float)
    long["agb_mg_ha"] = long["agb_mg_ha_used"] + long["delta"]
    long["difference_pct"] = np.where(long["agb_mg_ha_used"] > 0,
                                      (long["agb_mg_ha"] / long["agb_mg_ha_used"] - 1) * 100, np.nan)
    long = long.drop(columns="delta")[["plot_id", "group", "equation_id", "agb_mg_ha", "agb_mg_ha_used",
                                       "difference_pct", "trees", "trees_out_of_range", "verified"]].copy()
    long["in_spread"] = long["verified"] & (long["trees_out_of_range"] <= max_out_of_range * long["trees"])
    pg = long[long["in_spread"]].groupby("plot_id")
    idx = used.index
    lo = np.fmin(pg["agb_mg_ha"].min().reindex(idx), used)
    hi = np.fmax(pg["agb_mg_ha"].max().reindex(idx), used)
    per_plot = pd.DataFrame({"agb_mg_ha_eq_min": lo, "agb_mg_ha_eq_max": hi,
                             "n_equations": pg["equation_id"].nunique().reindex(idx).fillna(0).astype(int)})
    u = used.reindex(per_plot.index)
    per_plot["equation_spread_pct"] = np.where(u > 0, (per_plot["agb_mg_ha_eq_max"] - per_plot["agb_mg_ha_eq_min"]) / u * 100,
                                               np.nan)
    return long, per_plot.reset_index()
