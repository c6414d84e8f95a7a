"""Stem maps of the synthetic county's UAV windows: every tree (DBH >= 5 cm) that UAV LiDAR can see or miss.

A few square windows (:func:`choose_windows`, 300 m a side, one in a county under 5 km, three in larger
ones) are placed where forest stands meet village and farmland parcels.  Inside each window every tree is
drawn (:func:`stem_map`) with the county's own equations, never the pipeline's:

* **forest stands** (parcels in forest use or young plantations; clear-cuts, water and paddy hold none):
  DBH, height and culm age from the same distributions as the plots' tree lists
  (:func:`forestcarbon_synth.ground.draw_dbh_height`, truncated at 5 cm), heights scaled to the canopy top
  height of the 10 m cell the stem stands in (:mod:`forestcarbon_synth.structure`), as many trees as make
  the stand's summed true AGB (:func:`forestcarbon_synth.ground.tree_agb_kg`) equal the true AGB field
  integrated over the parcel's part inside the window (on a 1 m point grid).  Stems < 5 cm are not drawn:
  in the windows the AGB field is carried by the trees >= 5 cm (the plots' lists also tally smaller stems).
  Stem density follows the AGB field inside the stand (candidate positions thinned by the cell's AGB, so
  roads and low-biomass patches hold fewer stems).  Positions: plantations (Chinese fir, Masson pine,
  oil tea) on a jittered planting grid at a random bearing; broadleaf stands clustered (Thomas process:
  clusters of 6 stems, SD 3 m -- clumped crowns merge); moso bamboo in dense clumps (25 culms, SD 1.5 m).
* **village trees** (四旁树, the trees a bureau sells one by one as carbon assets): in village grove cells
  (cover ``village_trees``) as many trees as make the grove cells' true AGB, loosely clustered (3 stems,
  SD 6 m); a few isolated field-margin trees (0.6 per ha of cropland or paddy, within 4 m of the parcel's
  edge) that the AGB raster does not hold (its farmland cells are 0 by the area truth's rule: a known,
  documented difference of a few trees).  Species :data:`VILLAGE_SPECIES` (camphor 樟树 mostly; all of
  them species the pipeline's table knows as broadleaf), DBH lognormal (median 32 cm, SD 0.4 in log,
  15-80 cm), height from their own height-diameter curve :func:`village_height_m`, AGB by the county's
  broadleaf equation.

Crowns (:data:`CROWNS`): crown diameter ``CD = (a + b·D) · exp(e - s²/2)``, ``e ~ N(0, s)``, linear in DBH
as most crown-width studies of Chinese plantations fit it; the coefficients are synthetic, chosen for
plausible crowns (3 m for a 20 cm Chinese fir, 11 m for a 40 cm camphor), not transcribed from a
publication.  Crown length is a share of the height; conifers (Chinese fir, Masson pine) have cones,
the others half-ellipsoids.  ``visible``: no other crown rises above the tree's apex within 0.5 m of its
stem (:func:`visibility`): a tree hidden under a taller crown is a real trap for CHM-based detection.

Truth per tree (:func:`truth_table`): the pipeline's carbon conversion (``registry.conversion``, rule by
the tree's species' group) applied to its true AGB, the root-to-shoot ratio picked by the true AGB
density (Mg/ha) of the 10 m cell holding its stem, as :func:`forestcarbon_synth.scene.true_carbon_mg_ha`
does for that cell.
"""

from __future__ import annotations

from dataclasses import dataclass

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from scipy.spatial import cKDTree

from . import ground
from .forest_types import FOREST_TYPES
from .land import COVER
from .landscape import CRS, Frame

WINDOW_M = 300.0  # side of a UAV window (m); synthetic: a UAV LiDAR flight of a few minutes
MIN_DBH_CM = 5.0  # the tally threshold of the stem maps
PLANTATIONS = ("chinese_fir", "masson_pine", "camellia_oleifera")
VILLAGE_SPECIES = (("樟树", 0.70), ("枫香", 0.12), ("苦槠", 0.10), ("木荷", 0.08))  # synthetic mix
FIELD_MARGIN_TREES_PER_HA = 0.6  # isolated trees on farmland edges; synthetic
VISIBLE_RADIUS_M = 0.5


@dataclass(frozen=True)
class Crown:
    """Crown of one tree type: diameter ``(a + b·DBH_cm) · lognormal(sd)`` (m), length ``length_share`` of
    the height, ``shape`` ``cone`` or ``ellipsoid`` (upper half), ``gap``: probability that a pulse hitting
    the crown also returns from below it (the UAV cloud's penetration).  All synthetic."""

    a: float
    b: float
    sd: float
    length_share: float
    shape: str
    gap: float


CROWNS = {
    "chinese_fir": Crown(0.8, 0.11, 0.15, 0.55, "cone", 0.30),
    "masson_pine": Crown(1.0, 0.14, 0.15, 0.45, "cone", 0.35),
    "moso_bamboo": Crown(1.5, 0.15, 0.15, 0.45, "ellipsoid", 0.25),
    "camellia_oleifera": Crown(0.8, 0.20, 0.15, 0.75, "ellipsoid", 0.15),
    "broadleaf": Crown(1.2, 0.20, 0.15, 0.60, "ellipsoid", 0.15),
    "village": Crown(2.0, 0.22, 0.15, 0.65, "ellipsoid", 0.10),
}
PATTERN = {"chinese_fir": ("grid",), "masson_pine": ("grid",), "camellia_oleifera": ("grid",),
           "broadleaf": ("cluster", 6.0, 3.0), "moso_bamboo": ("cluster", 25.0, 1.5), "village": ("cluster", 3.0, 6.0)}


def village_height_m(dbh_cm):
    """Height-diameter curve of the village trees (synthetic Chapman-Richards form, not a published fit):
    ``H = 1.3 + 20 (1 - exp(-0.04 D))`` -- 10 m at 15 cm, 15 m at 30 cm, 20.5 m at 80 cm."""
    return 1.3 + 20.0 * (1.0 - np.exp(-0.04 * np.asarray(dbh_cm, float)))


def crown_surface(shape, height_m, radius_m, length_m, r):
    """Height (m above ground) of a crown's top surface at horizontal distance ``r`` from the stem; NaN
    outside the crown (``r >= radius``); ``shape``: ``"cone"`` / ``"ellipsoid"``, or True for a cone.  Cone: ``H - L r / R``; half-ellipsoid: ``H - L + L sqrt(1 -
    (r/R)²)``."""
    q = np.asarray(r, float) / radius_m
    shape = np.asarray(shape)
    is_cone = shape if shape.dtype == bool else shape == "cone"
    z = np.where(is_cone, height_m - length_m * q, height_m - length_m + length_m * np.sqrt(np.clip(1 - q * q, 0, None)))
    return np.where(q < 1, z, np.nan)


# ------------------------------------------------------------------ windows
def n_windows(size_km: float) -> int:
    return 1 if size_km < 5 else 3


def choose_windows(frame: Frame, cover: np.ndarray, n: int, side_m: float = WINDOW_M,
                   tcode: np.ndarray | None = None) -> gpd.GeoDataFrame:
    """``n`` non-overlapping square windows (snapped to the 10 m grid, so to whole metres) that hold both
    forest and open land (farmland, built-up, village groves), with village groves where the county has
    them and several forest types (``tcode``, the forest-type index per cell): score = min(forest share,
    open share) + grove share + 0.5 if any grove + 0.15 per forest type covering >= 5 % of the window,
    best first, at least 100 m apart."""
    k = int(round(side_m / frame.res))
    forest = cover == COVER["forest"].code
    grove = cover == COVER["village_trees"].code
    open_ = np.isin(cover, [COVER[c].code for c in ("paddy", "cropland", "built_up", "village_trees")])

    def sums(a):
        s = np.zeros((a.shape[0] + 1, a.shape[1] + 1))
        s[1:, 1:] = a.cumsum(0).cumsum(1)
        return s[k:, k:] - s[:-k, k:] - s[k:, :-k] + s[:-k, :-k]  # window sums, top-left at (row, col)

    cells = k * k
    f, o, g = sums(forest) / cells, sums(open_) / cells, sums(grove) / cells
    score = np.minimum(f, o) + g + 0.5 * (g > 0.01)
    if tcode is not None:
        for i, _ in enumerate(FOREST_TYPES):
            score += 0.15 * (sums(forest & (tcode == i)) / cells >= 0.05)
    margin = 2  # cells kept clear of the frame's edge
    rows, cols = np.meshgrid(np.arange(score.shape[0]), np.arange(score.shape[1]), indexing="ij")
    ok = (rows >= margin) & (cols >= margin) & (rows <= score.shape[0] - 1 - margin) & (cols <= score.shape[1] - 1 - margin)
    ok &= (rows % 5 == 0) & (cols % 5 == 0)
    order = np.argsort(-np.where(ok, score, -np.inf), axis=None)
    chosen = []
    gap = int(round(100 / frame.res))
    for idx in order:
        r, c = np.unravel_index(idx, score.shape)
        if not ok[r, c]:
            break
        if all(abs(r - r2) >= k + gap or abs(c - c2) >= k + gap for r2, c2 in chosen):
            chosen.append((r, c))
        if len(chosen) == n:
            break
    top = frame.y0 + frame.size_m
    rows_out = []
    for i, (r, c) in enumerate(chosen):
        x0, y1 = frame.x0 + c * frame.res, top - r * frame.res
        rows_out.append({"window": f"W{i + 1}", "forest_share": round(float(f[r, c]), 3),
                         "open_share": round(float(o[r, c]), 3), "grove_share": round(float(g[r, c]), 3),
                         "geometry": shapely.box(x0, y1 - side_m, x0 + side_m, y1)})
    return gpd.GeoDataFrame(rows_out, crs=CRS)


# ------------------------------------------------------------------ positions
def _field_at(field: np.ndarray, frame: Frame, x, y) -> np.ndarray:
    col = np.clip(((np.asarray(x) - frame.x0) / frame.res).astype(int), 0, frame.n - 1)
    row = np.clip(((frame.y0 + frame.size_m - np.asarray(y)) / frame.res).astype(int), 0, frame.n - 1)
    return field[row, col]


def _unit_points(geom, step: float = 1.0):
    """Centres of the 1 m cells inside ``geom`` (x, y)."""
    x0, y0, x1, y1 = geom.bounds
    xs = np.arange(np.floor(x0) + step / 2, x1, step)
    ys = np.arange(np.floor(y0) + step / 2, y1, step)
    xx, yy = np.meshgrid(xs, ys)
    inside = shapely.contains_xy(geom, xx, yy)
    return xx[inside], yy[inside]


def _candidates(rng, pattern, geom, lam: float) -> np.ndarray:
    """Candidate stems at ``lam`` per m² over ``geom``'s bounding box (grid or Thomas cluster process)."""
    x0, y0, x1, y1 = geom.bounds
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if pattern[0] == "grid":
        s = 1 / np.sqrt(lam)
        half = np.hypot(x1 - x0, y1 - y0) / 2 + s
        u = np.arange(-half, half, s) + rng.uniform(0, s)
        uu, vv = np.meshgrid(u, u)
        th = rng.uniform(0, np.pi / 2)
        x = cx + uu.ravel() * np.cos(th) - vv.ravel() * np.sin(th)
        y = cy + uu.ravel() * np.sin(th) + vv.ravel() * np.cos(th)
        x, y = x + rng.normal(0, 0.1 * s, x.size), y + rng.normal(0, 0.1 * s, x.size)
    else:
        _, mu, sd = pattern
        pad = 3 * sd
        area = (x1 - x0 + 2 * pad) * (y1 - y0 + 2 * pad)
        k = rng.poisson(lam / mu * area)
        px, py = rng.uniform(x0 - pad, x1 + pad, k), rng.uniform(y0 - pad, y1 + pad, k)
        m = rng.poisson(mu, k)
        x = np.repeat(px, m) + rng.normal(0, sd, m.sum())
        y = np.repeat(py, m) + rng.normal(0, sd, m.sum())
    keep = (x > x0) & (x < x1) & (y > y0) & (y < y1)
    return np.c_[x[keep], y[keep]]


def _positions(rng, pattern, geom, n: int, weight, area_weight: float) -> np.ndarray:
    """``n`` stems inside ``geom`` by ``pattern``, candidates thinned by ``weight(x, y)`` (0-1), whose
    integral over ``geom`` is ``area_weight`` (m²)."""
    if n == 0:
        return np.zeros((0, 2))
    lam = 1.2 * n / max(area_weight, 1.0)
    for _ in range(8):
        c = _candidates(rng, pattern, geom, lam)
        c = c[shapely.contains_xy(geom, c[:, 0], c[:, 1])] if len(c) else c
        c = c[rng.random(len(c)) < weight(c[:, 0], c[:, 1])] if len(c) else c
        if len(c) >= n:
            return c[np.sort(rng.choice(len(c), n, replace=False))]
        lam *= 1.3 * n / max(len(c), 1)
    raise RuntimeError(f"could not place {n} stems in a {geom.area:.0f} m² stand")


def _take_to_target(kg: np.ndarray, target_kg: float) -> int:
    """How many trees (in draw order) sum closest to ``target_kg``."""
    return int(np.argmin(np.abs(np.concatenate([[0.0], np.cumsum(kg)]) - target_kg)))


def _draw_enough(draw, target_kg: float):
    """Call ``draw(n)`` -> (dbh, hgt, du, kg) with n large enough that its trees >= 5 cm reach the target."""
    n = 4000
    while True:
        dbh, hgt, du, kg = draw(n)
        ge5 = dbh >= MIN_DBH_CM
        if kg[ge5].sum() >= 1.05 * target_kg or n > 2_000_000:
            return dbh[ge5], hgt[ge5], (du[ge5] if du is not None else None), kg[ge5]
        mean = kg[ge5].mean() if ge5.any() else np.inf
        if not np.isfinite(mean):
            return dbh[ge5], hgt[ge5], None, kg[ge5]
        n = int(1.3 * target_kg / mean / ge5.mean()) + 1000


def _rows(x, y, ftype, species, dbh, hgt, parcel_id, window):
    return pd.DataFrame({"x": x, "y": y, "window": window, "type": ftype, "species": species,
                         "dbh_cm": dbh, "height_m": hgt, "parcel_id": parcel_id})


def _stand_trees(rng, t, age, part, frame, agb, height_m, parcel_id, window) -> pd.DataFrame:
    px, py = _unit_points(part)
    a = _field_at(agb, frame, px, py).astype(float)
    target_kg = a.sum() * 0.1  # Mg/ha × 1 m² (1e-4 ha) × 1000 kg/Mg
    if target_kg <= 0 or a.max() <= 0:
        return pd.DataFrame()
    htop_cells = _field_at(height_m, frame, px, py).astype(float)
    htop_stand = float(htop_cells[a > 0].mean())

    def draw(n):
        dbh, hgt, du = ground.draw_dbh_height(rng, t, age, htop_stand, n)
        return dbh, hgt, du, ground.tree_agb_kg(t.key, dbh, hgt, du)

    dbh, hgt, du, kg = _draw_enough(draw, target_kg)
    n = _take_to_target(kg, target_kg)
    amax = a.max()
    xy = _positions(rng, PATTERN[t.key], part, n, lambda x, y: _field_at(agb, frame, x, y) / amax, a.sum() / amax)
    dbh, hgt = dbh[:n], hgt[:n]
    local = _field_at(height_m, frame, xy[:, 0], xy[:, 1]).astype(float)
    # the canopy top of the stem's cell (within 0.6-1.4 of the stand's: an edge cell may be the neighbour's)
    hgt = np.clip(hgt * np.clip(np.where(local > 0, local, htop_stand) / htop_stand, 0.6, 1.4), 1.5, None)
    out = _rows(xy[:, 0], xy[:, 1], t.key, t.species, dbh, hgt, parcel_id, window)
    out["age_du"] = du[:n] if du is not None else np.nan
    return out


def village_survey(rng, n: int = 60) -> pd.DataFrame:
    """A field survey of village trees elsewhere in the county (the bureau measures a sample of the trees it
    registers): trees drawn from the same population as the windows' village trees, measured as a crew
    would -- DBH by tape to 0.1 cm (SD 0.3 cm), height by hypsometer (SD 4 % of the height), crown diameter
    as the mean of two perpendicular tape readings (SD 0.5 m); all error levels synthetic."""
    dbh, hgt, species = _village_draw(rng, n)
    c = CROWNS["village"]
    cd = (c.a + c.b * dbh) * np.exp(rng.normal(0, c.sd, n))
    return pd.DataFrame({
        "tree_id": [f"VS{i + 1:03d}" for i in range(n)], "species": species,
        "dbh_cm": (dbh + rng.normal(0, 0.3, n)).round(1),
        "height_m": (hgt * (1 + rng.normal(0, 0.04, n))).round(1),
        "crown_diameter_m": (cd + rng.normal(0, 0.5, n)).clip(0.5).round(1),
    })


def _village_draw(rng, n):
    dbh = np.clip(np.exp(rng.normal(np.log(32.0), 0.4, n)), 15.0, 80.0)
    hgt = np.clip(village_height_m(dbh) * rng.normal(1, 0.08, n), 3.0, None)
    names, p = zip(*VILLAGE_SPECIES)
    species = rng.choice(np.array(names, dtype=object), n, p=np.array(p) / sum(p))
    return dbh, hgt, species


def _grove_trees(rng, part, frame, agb, cover, parcel_id, window) -> pd.DataFrame:
    px, py = _unit_points(part)
    grove = _field_at(cover, frame, px, py) == COVER["village_trees"].code
    a = np.where(grove, _field_at(agb, frame, px, py), 0.0).astype(float)
    target_kg = a.sum() * 0.1
    if target_kg <= 0:
        return pd.DataFrame()
    n_draw = int(2 * target_kg / 800) + 50
    while True:
        dbh, hgt, species = _village_draw(rng, n_draw)
        kg = ground.tree_agb_kg("broadleaf", dbh, hgt)
        if kg.sum() >= 1.05 * target_kg:
            break
        n_draw *= 2
    n = _take_to_target(kg, target_kg)
    amax = a.max()

    def weight(x, y):
        return np.where(_field_at(cover, frame, x, y) == COVER["village_trees"].code,
                        _field_at(agb, frame, x, y) / amax, 0.0)

    xy = _positions(rng, PATTERN["village"], part, n, weight, a.sum() / amax)
    return _rows(xy[:, 0], xy[:, 1], "village", species[:n], dbh[:n], hgt[:n], parcel_id, window)


def _margin_trees(rng, part, parcel_geom, parcel_id, window) -> pd.DataFrame:
    n = rng.poisson(FIELD_MARGIN_TREES_PER_HA * part.area / 10_000)
    if n == 0:
        return pd.DataFrame()
    x0, y0, x1, y1 = part.bounds
    ring = parcel_geom.boundary
    got = np.zeros((0, 2))
    for _ in range(50):
        c = np.c_[rng.uniform(x0, x1, 400), rng.uniform(y0, y1, 400)]
        c = c[shapely.contains_xy(part, c[:, 0], c[:, 1])]
        c = c[(shapely.distance(ring, shapely.points(c)) > 1.0) & (shapely.distance(ring, shapely.points(c)) < 4.0)]
        got = np.vstack([got, c])
        if len(got) >= n:
            break
    got = got[:n]
    dbh, hgt, species = _village_draw(rng, len(got))
    return _rows(got[:, 0], got[:, 1], "village", species, dbh, hgt, parcel_id, window)


def stem_map(rng, frame: Frame, windows: gpd.GeoDataFrame, parcels: gpd.GeoDataFrame, agb: np.ndarray,
             cover: np.ndarray, height_m: np.ndarray) -> pd.DataFrame:
    """Every tree >= 5 cm inside the windows (see the module docstring): x, y, window, type, species,
    dbh_cm, height_m, parcel_id, age_du (bamboo culm age), crown_diameter_m, crown_length_m,
    crown_shape, agb_kg, stand_agb_mg_ha (the true AGB of the stem's 10 m cell)."""
    by_key = {t.key: t for t in FOREST_TYPES}
    parts = []
    for w in windows.itertuples():
        for i in parcels.sindex.query(w.geometry, predicate="intersects"):
            p = parcels.iloc[int(i)]
            part = shapely.intersection(p.geometry, w.geometry)
            if part.is_empty or part.area < 1.0:
                continue
            if p.land_use in ("forest", "young_plantation") and p.forest_type in by_key:
                parts.append(_stand_trees(rng, by_key[p.forest_type], int(p.age), part, frame, agb, height_m,
                                          p.parcel_id, w.window))
            elif p.land_use == "village":
                parts.append(_grove_trees(rng, part, frame, agb, cover, p.parcel_id, w.window))
            elif p.land_use in ("cropland", "paddy"):
                parts.append(_margin_trees(rng, part, p.geometry, p.parcel_id, w.window))
    parts = [d for d in parts if len(d)]
    t = pd.concat(parts, ignore_index=True) if parts else _rows([], [], "", "", [], [], "", "")
    if "age_du" not in t:
        t["age_du"] = np.nan
    t["x"], t["y"] = t["x"].round(2), t["y"].round(2)
    t["dbh_cm"], t["height_m"] = t["dbh_cm"].round(1), t["height_m"].round(2)
    crowns = [CROWNS[k] for k in t["type"]]
    a, b, sd = (np.array([getattr(c, f) for c in crowns]) for f in ("a", "b", "sd"))
    cd = (a + b * t["dbh_cm"].to_numpy()) * np.exp(rng.normal(0, 1, len(t)) * sd - sd**2 / 2)
    t["crown_diameter_m"] = cd.round(2)
    t["crown_length_m"] = (t["height_m"] * np.array([c.length_share for c in crowns])).round(2)
    t["crown_shape"] = [c.shape for c in crowns]
    kg = np.zeros(len(t))
    for k in t["type"].unique():
        m = (t["type"] == k).to_numpy()
        key = "broadleaf" if k == "village" else k
        du = t.loc[m, "age_du"].to_numpy() if k == "moso_bamboo" else None
        kg[m] = ground.tree_agb_kg(key, t.loc[m, "dbh_cm"].to_numpy(), t.loc[m, "height_m"].to_numpy(), du)
    t["agb_kg"] = kg.round(3)
    t["stand_agb_mg_ha"] = _field_at(agb, frame, t["x"].to_numpy(), t["y"].to_numpy()).astype(float).round(3)
    t["age_du"] = t["age_du"].astype("Int64")
    return t


# ------------------------------------------------------------------ visibility and truth
def visibility(t: pd.DataFrame, radius_m: float = VISIBLE_RADIUS_M) -> np.ndarray:
    """True where no other crown's surface rises above the tree's apex within ``radius_m`` of its stem:
    for every other tree j whose crown reaches that disc, j's highest surface point on the disc (at
    distance max(d - radius, 0) from j's stem) is at most the tree's height."""
    n = len(t)
    if n == 0:
        return np.zeros(0, bool)
    xy = t[["x", "y"]].to_numpy(float)
    h = t["height_m"].to_numpy(float)
    r = t["crown_diameter_m"].to_numpy(float) / 2
    ln = t["crown_length_m"].to_numpy(float)
    shape = t["crown_shape"].to_numpy()
    tree = cKDTree(xy)
    lists = tree.query_ball_point(xy, r + radius_m)
    cnt = np.array([len(v) for v in lists])
    j = np.repeat(np.arange(n), cnt)
    i = np.concatenate(lists).astype(int)
    other = i != j
    i, j = i[other], j[other]
    d = np.hypot(*(xy[i] - xy[j]).T)
    top = crown_surface(shape[j], h[j], r[j], ln[j], np.maximum(d - radius_m, 0.0))
    hidden = np.zeros(n, bool)
    hidden[i[np.nan_to_num(top, nan=-1.0) > h[i]]] = True
    return ~hidden


def villages_of(xy: np.ndarray, villages: gpd.GeoDataFrame, field: str = "village_id") -> np.ndarray:
    pts = gpd.GeoDataFrame(geometry=gpd.points_from_xy(xy[:, 0], xy[:, 1]), crs=villages.crs)
    j = gpd.sjoin(pts, villages[[field, "geometry"]], how="left", predicate="within")
    j = j[~j.index.duplicated()]
    return j[field].to_numpy(dtype=object)


def truth_table(t: pd.DataFrame, parcels: gpd.GeoDataFrame, villages: gpd.GeoDataFrame, registry) -> pd.DataFrame:
    """The truth CSV: tree_id, x, y, window, type, species, dbh_cm, height_m, crown_diameter_m, agb_kg,
    carbon_kg, parcel_id, village_tree, village_id, visible, then the crown length and shape, the stand
    AGB density that picked the root-to-shoot ratio, and the bamboo culm age."""
    out = t.copy()
    out.insert(0, "tree_id", [f"T{i + 1:06d}" for i in range(len(out))])
    conv = registry.conversion
    groups = np.array([registry.resolve(s) for s in out["species"]], dtype=object)
    pools = conv.tree_pools(out["agb_kg"].to_numpy(float), groups, out["stand_agb_mg_ha"].to_numpy(float))
    out["carbon_kg"] = (pools["carbon_above_kg"].to_numpy(float) + pools["carbon_below_kg"].to_numpy(float)).round(3)
    forest_ids = set(parcels.loc[parcels["land_class"] == "forest", "parcel_id"])
    out["parcel_id"] = out["parcel_id"].replace("", None)
    out["village_tree"] = ~out["parcel_id"].isin(forest_ids).to_numpy()
    out["village_id"] = villages_of(out[["x", "y"]].to_numpy(float), villages)
    out["visible"] = visibility(out)
    cols = ["tree_id", "x", "y", "window", "type", "species", "dbh_cm", "height_m", "crown_diameter_m", "agb_kg",
            "carbon_kg", "parcel_id", "village_tree", "village_id", "visible", "crown_length_m", "crown_shape",
            "stand_agb_mg_ha", "age_du"]
    return out[cols]
