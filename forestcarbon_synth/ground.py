"""Ground plots and tree lists consistent with the true AGB at each plot.

Each plot is a 0.0667 ha (1 mu) square, as in Chinese forest inventories.
Its target AGB is the true AGB field averaged over the plot footprint; trees
are drawn (DBH, height) and kept until their summed AGB -- computed with the
county's own allometry (:func:`tree_agb_kg`), published equations written out
here, for some types not the ones the pipeline picks -- is closest to that target.
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


def _ln_sum(d, parts):
    return sum(np.exp(a + b * np.log(d)) for a, b in parts)


def tree_agb_kg(ftype: str, d, h, age_du=None):
    """The synthetic county's own "true" allometry, AGB (kg) per tree.

    Nature follows one published equation per type, not always the one the
    pipeline's table picks, so the demo carries a realistic equation error:

    * Chinese fir: LY/T 2264-2014 (D >= 5 cm: 0.065388 D^2.01735 H^0.49425; below: 0.190713 D^1.35226 H^0.49452),
      the same standard the pipeline uses.
    * Masson pine: Zhou et al. 2018 (Science Press, Zhejiang, per organ a D^b):
      0.2931 D^1.97 + 0.0048 D^2.63 + 0.0670 D^1.46 -- the pipeline uses Xiang et al. 2016.
    * Moso bamboo: Zhou & Jiang 2004 per culm, 747.787 D^2.771 (0.148 A/(0.028 + A))^5.555 + 3.772 (A in du).
    * Camellia oleifera: Xiang et al. 2016 Schima superba (same family), stem + branches + foliage,
      exp(-2.963 + 2.621 ln D) + exp(-2.378 + 2.022 ln D) + exp(-2.680 + 1.690 ln D), × 1.091.
    * Broadleaf: Xiang et al. 2016 Cyclobalanopsis glauca (a dominant evergreen oak of Zhejiang),
      exp(-1.798 + 2.3235 ln D) + exp(-4.849 + 2.774 ln D) + exp(-5.600 + 2.832 ln D), × 1.042.
    """
    d = np.asarray(d, float)
    h = np.asarray(h, float)
    if ftype == "chinese_fir":
        return np.where(d >= 5, 0.065388 * d**2.01735 * h**0.49425, 0.190713 * d**1.35226 * h**0.49452)
    if ftype == "masson_pine":
        return 0.2931 * d**1.97 + 0.0048 * d**2.63 + 0.0670 * d**1.46
    if ftype == "moso_bamboo":
        a = np.asarray(age_du, float)
        return 747.787 * d**2.771 * (0.148 * a / (0.028 + a)) ** 5.555 + 3.772
    if ftype == "camellia_oleifera":
        return 1.091 * _ln_sum(d, [(-2.963, 2.621), (-2.378, 2.022), (-2.680, 1.690)])
    if ftype == "broadleaf":
        return 1.042 * _ln_sum(d, [(-1.798, 2.3235), (-4.849, 2.774), (-5.600, 2.832)])
    raise ValueError(f"no synthetic allometry for {ftype!r}")


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
