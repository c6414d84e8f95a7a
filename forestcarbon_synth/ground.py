"""Ground plots and tree lists consistent with the true AGB at each plot.

Each plot is a 0.0667 ha (1 mu) square, as in Chinese forest inventories.
Its target AGB is the true AGB field averaged over the plot footprint; trees
are drawn (DBH, height) and kept until their summed AGB -- computed here with
the same published equations the pipeline's allometry table ships, written
out independently -- is closest to that target.
"""

from __future__ import annotations

import datetime as dt

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from shapely import affinity

from .forest_types import FOREST_TYPES, canopy_height_m
from .landscape import CRS, Frame

PLOT_SIDE_M = float(np.sqrt(10_000 / 15))  # 1 mu = 666.7 m2
STAND_IN_WOOD_DENSITY = {"masson_pine": 0.47, "camellia_oleifera": 0.70, "broadleaf": 0.55}


def tree_agb_kg(ftype: str, d, h, age_du=None):
    """AGB (kg) per tree: LY/T 2264-2014 for Chinese fir, Zhou & Jiang (2004) per Moso bamboo culm
    (age in du), Chave et al. 2014 eq. 4 otherwise."""
    d = np.asarray(d, float)
    h = np.asarray(h, float)
    if ftype == "chinese_fir":
        return np.where(d >= 5, 0.065388 * d**2.01735 * h**0.49425, 0.190713 * d**1.35226 * h**0.49452)
    if ftype == "moso_bamboo":
        a = np.asarray(age_du, float)
        return 747.787 * d**2.771 * (0.148 * a / (0.028 + a)) ** 5.555 + 3.772
    rho = STAND_IN_WOOD_DENSITY[ftype]
    return 0.0673 * (rho * d**2 * h) ** 0.976


def footprint_mean(field: np.ndarray, frame: Frame, geom, step: float = 1.0) -> float:
    """Mean of a 10 m field over a polygon by 1 m point sampling."""
    x0, y0, x1, y1 = geom.bounds
    xs = np.arange(x0 + step / 2, x1, step)
    ys = np.arange(y0 + step / 2, y1, step)
    xx, yy = np.meshgrid(xs, ys)
    inside = shapely.contains_xy(geom, xx, yy)
    col = ((xx[inside] - frame.x0) / frame.res).astype(int)
    row = ((frame.y0 + frame.size_m - yy[inside]) / frame.res).astype(int)
    return float(field[row, col].mean())


def make_plots(rng, frame: Frame, parcels: gpd.GeoDataFrame, agb: np.ndarray, plots_per_km2: float = 2.2,
               min_plots: int = 60):
    area_km2 = (frame.size_m / 1000) ** 2
    plots_per_km2 = max(plots_per_km2, 1.4 * min_plots / area_km2)  # small test scenes still get a trainable sample
    spacing = 1000 / np.sqrt(plots_per_km2)
    x0, y0, x1, y1 = frame.bounds
    off = rng.uniform(0, spacing, 2)
    gx = np.arange(x0 + off[0], x1 - PLOT_SIDE_M, spacing)
    gy = np.arange(y0 + off[1], y1 - PLOT_SIDE_M, spacing)
    xx, yy = np.meshgrid(gx, gy)
    pts = shapely.points(xx.ravel(), yy.ravel())
    forest = parcels[parcels.land_class == "forest"]
    hit = forest.sindex.query(pts, predicate="within")
    by_key = {t.key: t for t in FOREST_TYPES}
    plots, trees = [], []
    for k, (pi, fi) in enumerate(zip(*hit)):
        p = forest.iloc[fi]
        cx, cy = shapely.get_x(pts[pi]), shapely.get_y(pts[pi])
        sq = shapely.box(cx - PLOT_SIDE_M / 2, cy - PLOT_SIDE_M / 2, cx + PLOT_SIDE_M / 2, cy + PLOT_SIDE_M / 2)
        if not p.geometry.contains(sq):
            continue  # plots are laid out inside one stand
        t = by_key[p.forest_type]
        target_mg_ha = footprint_mean(agb, frame, sq)
        plot_id = f"P{len(plots) + 1:04d}"
        target_kg = target_mg_ha * sq.area / 10_000 * 1000
        if t.key == "moso_bamboo":
            dbh = rng.normal(10.0, 1.5, 4000).clip(5, 16)
        else:
            dq = min(t.dbh_max, 3.0 + t.dbh_per_year * p.age)
            dbh = rng.gamma(8.0, dq / 8.0, 4000).clip(1.5, t.dbh_max * 1.3)
        htop = max(2.0, float(canopy_height_m(target_mg_ha, t.h_coef)))
        d95 = np.quantile(dbh, 0.95)
        hgt = np.clip(htop * (dbh / d95) ** 0.6 * rng.normal(1, 0.08, dbh.size), 1.5, None)
        age = rng.integers(1, 4, dbh.size) if t.key == "moso_bamboo" else None  # culm age in du (1 du = 2 years)
        kg = tree_agb_kg(t.key, dbh, hgt, age)
        n = int(np.argmin(np.abs(np.cumsum(kg) - target_kg))) + 1
        plots.append({
            "plot_id": plot_id, "shape": "square", "size_m2": round(sq.area, 2),
            "survey_date": (dt.date(2024, 10, 1) + dt.timedelta(days=int(rng.integers(0, 60)))).isoformat(),
            "parcel_id": p.parcel_id, "geometry": sq,
        })
        tree_rows = pd.DataFrame({
            "plot_id": plot_id, "tree_id": [f"{plot_id}-{i + 1:03d}" for i in range(n)],
            "species": t.species, "dbh_cm": dbh[:n].round(1), "height_m": hgt[:n].round(1),
        })
        if t.key == "moso_bamboo":
            tree_rows["age"] = age[:n]
        trees.append(tree_rows)
    return gpd.GeoDataFrame(plots, crs=CRS), pd.concat(trees, ignore_index=True)


def make_projects(rng, frame: Frame) -> gpd.GeoDataFrame:
    """Carbon projects whose boundaries cut across parcels."""
    x0, y0, _, _ = frame.bounds
    s = frame.size_m
    specs = [
        ("CCER-AF-001", "Qujiang afforestation", "CCER afforestation", "2021-03-01", (0.25, 0.70), (0.10, 0.06), 20),
        ("CCER-FM-002", "Kecheng forest management", "CCER forest management", "2019-01-01", (0.65, 0.45), (0.14, 0.09), -35),
        ("ZJ-FCS-003", "Longyou provincial carbon sink", "Zhejiang forestry carbon sink", "2022-07-01", (0.40, 0.25), (0.08, 0.12), 60),
        ("CCER-FM-004", "Jiangshan forest management", "CCER forest management", "2023-05-01", (0.80, 0.85), (0.09, 0.07), 0),
    ]
    rows = []
    for pid, name, ptype, start, (fx, fy), (ax, ay), rot in specs:
        c = shapely.Point(x0 + fx * s, y0 + fy * s).buffer(1.0, quad_segs=32)
        g = affinity.rotate(affinity.scale(c, ax * s, ay * s), rot)
        g = g.simplify(5)
        rows.append({"project_id": pid, "name": name, "type": ptype, "start_date": start, "geometry": g})
    return gpd.GeoDataFrame(rows, crs=CRS)
