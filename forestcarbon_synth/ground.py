"""Ground plots and tree lists consistent with the true AGB at each plot.

Each plot is a 0.0667 ha (1 mu) square, as in Chinese forest inventories,
laid out in clusters (:func:`make_plots`) on any land, forest or not.
Its target AGB is the true AGB field averaged over the plot footprint; trees
are drawn (DBH, height) and kept until their summed AGB -- computed with the
county's own allometry (:func:`tree_agb_kg`), published equations written out
here, for some types not the ones the pipeline picks -- is closest to that
target.  A plot without trees (farmland, water, built-up, clear-cut) appears in
the plots layer only: the tree list has no row for it, as a tally sheet has none.
"""

from __future__ import annotations

import datetime as dt

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from shapely import affinity

from .forest_types import FOREST_TYPES
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


def footprint_values(field: np.ndarray, frame: Frame, geom, step: float = 1.0) -> np.ndarray:
    """Values of a 10 m field at 1 m points inside a polygon, row by row (the middle one at its centre
    for a square)."""
    x0, y0, x1, y1 = geom.bounds
    xs = np.arange(x0 + step / 2, x1, step)
    ys = np.arange(y0 + step / 2, y1, step)
    xx, yy = np.meshgrid(xs, ys)
    inside = shapely.contains_xy(geom, xx, yy)
    col = ((xx[inside] - frame.x0) / frame.res).astype(int)
    row = ((frame.y0 + frame.size_m - yy[inside]) / frame.res).astype(int)
    return field[row, col]


def footprint_mean(field: np.ndarray, frame: Frame, geom, step: float = 1.0) -> float:
    """Mean of a 10 m field over a polygon by 1 m point sampling."""
    return float(footprint_values(field, frame, geom, step).mean())


CLUSTER_OFFSETS_M = ((0, 0), (-150, -150), (150, -150), (150, 150), (-150, 150))  # centre + corners, synthetic
GROVE_SPECIES = "樟树"  # camphor, the village grove tree (the pipeline's species table knows it: CICA)


def cluster_centres(rng, frame: Frame, plots_per_km2: float, min_plots: int,
                    dense_block: tuple[float, float, float, float] | None = None) -> np.ndarray:
    """Cluster centres on a randomly placed systematic grid, dense enough that ~4 of each cluster's 5
    positions yield the density of ``plots_per_km2`` (at least 1.4 × ``min_plots`` plots).  Inside
    ``dense_block`` (x0, y0, x1, y1; the LiDAR flight block) a second grid, offset by half a spacing in both
    directions, doubles the density: the calibration plots a bureau lays where it flew LiDAR."""
    area_km2 = (frame.size_m / 1000) ** 2
    plots_per_km2 = max(plots_per_km2, 1.4 * min_plots / area_km2)  # small test scenes still get a trainable sample
    spacing = 1000 / np.sqrt(plots_per_km2 / 4)
    x0, y0, x1, y1 = frame.bounds
    off = rng.uniform(0, spacing, 2)
    gx = np.arange(x0 + off[0], x1, spacing)
    gy = np.arange(y0 + off[1], y1, spacing)
    xx, yy = np.meshgrid(gx, gy)
    centres = np.c_[xx.ravel(), yy.ravel()]
    if dense_block is None:
        return centres
    bx0, by0, bx1, by1 = dense_block
    extra = centres + spacing / 2
    inside = (extra[:, 0] > bx0) & (extra[:, 0] < bx1) & (extra[:, 1] > by0) & (extra[:, 1] < by1)
    return np.vstack([centres, extra[inside]])


def recorded_di_lei(parcel, cover_codes: np.ndarray) -> str:
    """The land class a field crew records for a plot: the parcel's correct code for forest land in forest
    use (0111 / 0113 / 0141 / 0161), else by the land under the plot's centre (0230 water, 0210 farmland,
    0250 built-up, roads and village groves), as the continuous inventory records every systematic plot."""
    from .land import COVER

    use = parcel.land_use
    if use == "forest":
        return "0113" if parcel.forest_type == "moso_bamboo" else "0111"
    if use in ("young_plantation", "clearcut"):
        return {"young_plantation": "0141", "clearcut": "0161"}[use]
    centre = int(cover_codes[cover_codes.size // 2])
    if centre == COVER["water"].code:
        return "0230"
    if centre in (COVER["paddy"].code, COVER["cropland"].code):
        return "0210"
    return "0250"


def make_plots(rng, frame: Frame, parcels: gpd.GeoDataFrame, agb: np.ndarray, cover: np.ndarray,
               height_m: np.ndarray, dense_block: tuple[float, float, float, float] | None = None,
               plots_per_km2: float = 2.2, min_plots: int = 60):
    """Clustered plots and their tree lists.

    Clusters of up to five 1-mu square plots (centre and the corners of a 300 m square, as inventories
    lay out plot clusters to save walking; ``cluster`` names it) around centres on a systematic grid, twice
    as dense inside ``dense_block`` (:func:`cluster_centres`).  A
    position is kept when its square lies inside one parcel, whatever the land: plots on farmland, water,
    villages and clear-cuts are recorded with their land class (``DI_LEI``) and zero trees unless trees
    stand there (village groves: camphor, :data:`GROVE_SPECIES`).  Clear-cut plots hold no tallied trees
    (the regrowth is sprouts and shrubs).  Moso bamboo plots list culms with DBH, height and ``age`` in du
    (度; 1 du = 2 years), the columns the pipeline's bamboo equation reads (DBH and age).  Tree heights
    scale with the canopy top height over the plot (``height_m``, the height LiDAR sees).
    """
    by_key = {t.key: t for t in FOREST_TYPES}
    grove = by_key["broadleaf"]
    plots, trees = [], []
    for ci, (cx0, cy0) in enumerate(cluster_centres(rng, frame, plots_per_km2, min_plots, dense_block)):
        rot = rng.uniform(0, np.pi / 2)
        for dx, dy in CLUSTER_OFFSETS_M:
            cx = cx0 + dx * np.cos(rot) - dy * np.sin(rot)
            cy = cy0 + dx * np.sin(rot) + dy * np.cos(rot)
            sq = shapely.box(cx - PLOT_SIDE_M / 2, cy - PLOT_SIDE_M / 2, cx + PLOT_SIDE_M / 2, cy + PLOT_SIDE_M / 2)
            if not shapely.contains(shapely.box(*frame.bounds), sq):
                continue
            hit = parcels.sindex.query(sq, predicate="within")
            if hit.size != 1:
                continue  # plots are laid out inside one stand
            p = parcels.iloc[int(hit[0])]
            target_mg_ha = footprint_mean(agb, frame, sq)
            under = footprint_values(cover, frame, sq)
            plot_id = f"P{len(plots) + 1:04d}"
            plots.append({
                "plot_id": plot_id, "cluster": f"C{ci + 1:03d}", "shape": "square", "size_m2": round(sq.area, 2),
                "survey_date": (dt.date(2024, 10, 1) + dt.timedelta(days=int(rng.integers(0, 60)))).isoformat(),
                "parcel_id": p.parcel_id, "DI_LEI": recorded_di_lei(p, under), "geometry": sq,
            })
            if p.land_use == "clearcut" or target_mg_ha <= 0:
                continue  # no tallied trees: the plot is in the plots layer and nowhere in the tree list
            t = by_key.get(p.forest_type, grove)
            species = t.species if t.key in by_key and p.land_use != "village" else GROVE_SPECIES
            age = p.age if p.land_use != "village" else int(rng.integers(30, 80))
            htop = footprint_mean(height_m, frame, sq)
            trees.append(_tree_list(rng, plot_id, t, species, age, target_mg_ha, sq.area, htop))
    return gpd.GeoDataFrame(plots, crs=CRS), pd.concat(trees, ignore_index=True)


def draw_dbh_height(rng, t, age: int, htop_m: float, n: int):
    """``n`` trees of forest type ``t`` (:class:`~forestcarbon_synth.forest_types.ForestType`) at stand age
    ``age`` under a canopy top height ``htop_m``: (DBH cm, height m, culm age in du or None).

    DBH: moso bamboo N(10, 1.5) clipped to 5-16 cm; other types Gamma(8, dq/8) with the quadratic-mean-like
    scale ``dq = min(dbh_max, 3 + dbh_per_year · age)``, clipped to 1.5 cm - 1.3 ``dbh_max``.  Height:
    ``htop · (D / D95)^0.6 · N(1, 0.08)`` (at least 1.5 m), D95 the sample's 95th DBH percentile, so the
    larger trees reach the canopy top LiDAR sees.  Culm age (bamboo): 1-3 du (1 du = 2 years).  All
    synthetic; shared by the plots' tree lists (:func:`make_plots`) and the UAV windows' stem maps
    (:mod:`forestcarbon_synth.trees`)."""
    if t.key == "moso_bamboo":
        dbh = rng.normal(10.0, 1.5, n).clip(5, 16)
    else:
        dq = min(t.dbh_max, 3.0 + t.dbh_per_year * age)
        dbh = rng.gamma(8.0, dq / 8.0, n).clip(1.5, t.dbh_max * 1.3)
    htop = max(2.0, float(htop_m))
    d95 = np.quantile(dbh, 0.95)
    hgt = np.clip(htop * (dbh / d95) ** 0.6 * rng.normal(1, 0.08, dbh.size), 1.5, None)
    du = rng.integers(1, 4, dbh.size) if t.key == "moso_bamboo" else None  # culm age in du (1 du = 2 years)
    return dbh, hgt, du


def _tree_list(rng, plot_id: str, t, species: str, age: int, target_mg_ha: float, area_m2: float,
               htop_m: float) -> pd.DataFrame:
    """Trees drawn (DBH, height up to the canopy top ``htop_m``; culm age for bamboo) and kept while their
    summed true AGB comes closest to the plot's target (possibly none)."""
    target_kg = target_mg_ha * area_m2 / 10_000 * 1000
    dbh, hgt, du = draw_dbh_height(rng, t, age, htop_m, 4000)
    kg = tree_agb_kg(t.key, dbh, hgt, du)
    n = int(np.argmin(np.abs(np.concatenate([[0.0], np.cumsum(kg)]) - target_kg)))
    rows = pd.DataFrame({
        "plot_id": plot_id, "tree_id": [f"{plot_id}-{i + 1:03d}" for i in range(n)],
        "species": species, "dbh_cm": dbh[:n].round(1), "height_m": hgt[:n].round(1),
    })
    if t.key == "moso_bamboo":
        rows["age"] = du[:n]
    return rows


def make_projects(rng, frame: Frame) -> gpd.GeoDataFrame:
    """Carbon projects whose boundaries cut across parcels; ZJ-FCS-005 overlaps CCER-FM-002."""
    x0, y0, _, _ = frame.bounds
    s = frame.size_m
    specs = [
        ("CCER-AF-001", "Qujiang afforestation", "CCER afforestation", "2021-03-01", (0.25, 0.70), (0.10, 0.06), 20),
        ("CCER-FM-002", "Kecheng forest management", "CCER forest management", "2019-01-01", (0.65, 0.45), (0.14, 0.09), -35),
        ("ZJ-FCS-003", "Longyou provincial carbon sink", "Zhejiang forestry carbon sink", "2022-07-01", (0.40, 0.25), (0.08, 0.12), 60),
        ("CCER-FM-004", "Jiangshan forest management", "CCER forest management", "2023-05-01", (0.80, 0.85), (0.09, 0.07), 0),
        # a trap: registered later over part of CCER-FM-002's land (double counting the pipeline must report)
        ("ZJ-FCS-005", "Kecheng village carbon sink", "Zhejiang forestry carbon sink", "2022-09-01", (0.76, 0.50), (0.07, 0.05), 10),
    ]
    rows = []
    for pid, name, ptype, start, (fx, fy), (ax, ay), rot in specs:
        c = shapely.Point(x0 + fx * s, y0 + fy * s).buffer(1.0, quad_segs=32)
        g = affinity.rotate(affinity.scale(c, ax * s, ay * s), rot)
        g = g.simplify(5)
        rows.append({"project_id": pid, "name": name, "type": ptype, "start_date": start, "geometry": g})
    return gpd.GeoDataFrame(rows, crs=CRS)
