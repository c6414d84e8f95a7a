"""Land that is not forest: a river, roads, farmland, paddies, villages and ponds, clear-cuts and young
plantations, the parcels' land-class codes (地类, field ``DI_LEI``) and a WorldCover-like land-cover map.

Layout.  A river (35 m wide, synthetic) meanders west to east through a valley carved into the DEM and is
its own parcels (water, ``0230``); water lies level (each water parcel at its lowest DEM cell, river
reaches stepping down as between weirs).  A county road follows the river's north bank and township roads climb
into the hills; roads stay *inside* the parcels they cross (narrow linear features are not split out of a
小班), so forest parcels hold road cells of zero biomass.  Non-forest parcels lie mostly in the valley
(probability ∝ exp(-distance to river / 800 m)): paddy, dry cropland, villages (built-up with camphor
groves and gardens) and ponds.

True woody AGB per land use (the rule the truth raster follows; herbaceous crops, rice and grass are not
woody AGB and count 0):

* ``forest``, ``young_plantation``: the stand's growth curve (:mod:`.forest_types`) × texture;
* ``clearcut``: sprout and shrub regrowth, 0.5-2.5 Mg/ha (synthetic); inventory plots there hold no tallied
  trees, so plot AGB (0) and truth differ by that regrowth -- an inventory-definition gap, not an error;
* roads: AGB × (1 − road share of the cell), the road share measured on a 1 m grid;
* ``water``, ``paddy``, ``cropland``: 0;
* ``village``: 0 on built-up and garden cells; camphor groves (风水林, 四旁树) 60-150 Mg/ha (synthetic) --
  trees on non-forest land: real biomass that forest carbon accounts leave out.

Land-class codes (``DI_LEI``, the field name of forest-resource parcel databases, e.g. the field table
of 国家级公益林区划落界技术要求, https://www.diyifanwen.net/c2j9ah3wph5036aw5tvxo0daes3y30z00x02_1.html).
The code list is :data:`DI_LEI_CODES`, from the 林业地类分类和编码 table (appendix A.2 of a 林地年度变更调查
technical scheme, https://bubsandbeans.com/paper/305685850.html) and the identical 地类代码表 of a 二类调查
factor code table (https://m.31doc.com/p-12058144.html); both follow the land classes of GB/T 26424-2010
(森林资源规划设计调查技术规程), whose own printed table was not seen here.  Other local schemes drop the
leading zero and split classes (111 乔木纯林, 112 乔木混交林, 211 旱地, 212 水田 ...,
https://m.wenku365.com/p-44791928.html); Zhejiang's own code table was not found.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
import rasterio.features
import shapely
from affine import Affine
from rasterio.warp import Resampling, reproject, transform_bounds

from .landscape import CRS, Frame, smooth_field

# 地类 codes as written in the sources above (text, leading zero kept); the 163x codes are printed
# with four digits and no leading zero in both sources.
DI_LEI_CODES = {
    "0111": "乔木林", "0113": "竹林", "0120": "疏林地",
    "0131": "国家特别规定灌木林地", "0132": "其他灌木林地",
    "0141": "未成林造林地", "0142": "未成林封育地", "0150": "苗圃地",
    "0161": "采伐迹地", "0162": "火烧迹地",
    "1631": "其他无立木林地", "1632": "建设项目临时使用", "1633": "毁林开垦", "1634": "地震、塌方、泥石流",
    "1635": "未经审核审批建设项目使用林地",
    "0171": "宜林荒山荒地", "0172": "宜林沙荒地", "0173": "其他宜林地", "0180": "林业辅助生产用地",
    "0200": "非林地(地类不清)", "0210": "耕地", "0220": "牧草地", "0230": "水域", "0240": "未利用地",
    "0250": "建设用地", "0254": "其他用地",
}
FOREST_LAND_CODES = tuple(c for c in DI_LEI_CODES if c.startswith(("01", "16")))  # 林地: 01xx and 163x
MAY_HOLD_TREES_CODES = tuple(c for c in FOREST_LAND_CODES if c[:3] in ("011", "012", "013", "014", "015", "016"))
"""林地 whose land may carry woody biomass (乔木林, 竹林, 疏林, 灌木林, 未成林, 苗圃, 迹地): the synthetic
county's ``forest_mask.forest_codes``."""
NON_FOREST_CODES = tuple(c for c in DI_LEI_CODES if c.startswith("02"))  # 非林地

# ESA WorldCover legend (Zanaga et al. 2022, ESA WorldCover 10 m 2021 v200, doi:10.5281/zenodo.7254221;
# values as in its STAC classification:classes): the classes this county holds
WORLDCOVER = {10: "Tree cover", 20: "Shrubland", 30: "Grassland", 40: "Cropland", 50: "Built-up",
              60: "Bare / sparse vegetation", 80: "Permanent water bodies"}


@dataclass(frozen=True)
class Cover:
    """One truth land-cover class of a 10 m cell (``truth/land_cover_truth.tif``).

    ``forest``: the cell is forest land in forest use (stands, young plantations, clear-cuts awaiting
    replanting); every other cell is a non-forest truth pixel.  ``worldcover``: the ESA WorldCover class
    the cell truly is (forest cells under 10 % canopy cover are Grassland, WorldCover's tree-cover threshold).
    """

    code: int
    key: str
    forest: bool
    worldcover: int


COVERS = (
    Cover(1, "forest", True, 10),
    Cover(2, "clearcut", True, 30),
    Cover(3, "road", False, 50),
    Cover(4, "water", False, 80),
    Cover(5, "paddy", False, 40),
    Cover(6, "cropland", False, 40),
    Cover(7, "built_up", False, 50),
    Cover(8, "village_trees", False, 10),
)
COVER = {c.key: c for c in COVERS}

RIVER_WIDTH_M = 35.0  # synthetic: a mountain river of western Zhejiang
ROAD_WIDTH_M = {"county": 14.0, "township": 8.0}  # cleared corridor incl. ditches and cut slopes; synthetic
NON_FOREST_PARCEL_SHARE = 0.15  # of the upland parcels, valley-biased; synthetic
CLEARCUT_SHARE = 0.04  # of forest parcels of harvestable fir / pine (age >= 20); synthetic
LOST_ZERO_SHARE = 0.08  # DI_LEI rows whose leading zero was lost (edited as a number); synthetic


def make_river(rng, frame: Frame) -> tuple[shapely.LineString, shapely.Polygon]:
    """A meandering river crossing the frame west to east: (centre line, ``RIVER_WIDTH_M`` wide polygon)."""
    x0, y0, x1, y1 = frame.bounds
    s = frame.size_m
    x = np.linspace(x0 - 200, x1 + 200, 400)
    t = (x - x0) / s
    phase = rng.uniform(0, 2 * np.pi, 2)
    walk = np.cumsum(rng.normal(0, 1, x.size))
    walk = np.convolve(walk - walk.mean(), np.ones(40) / 40, mode="same")
    y = y0 + s * (0.38 + 0.07 * np.sin(2 * np.pi * 1.3 * t + phase[0]) + 0.03 * np.sin(2 * np.pi * 3.1 * t + phase[1])
                  + 0.004 * walk)
    centre = shapely.LineString(np.c_[x, y])
    return centre, centre.buffer(RIVER_WIDTH_M / 2, quad_segs=4)


def make_roads(rng, frame: Frame, river_centre: shapely.LineString) -> gpd.GeoDataFrame:
    """Centre lines of a county road 120-220 m north of the river and three township roads branching
    off it, two climbing north and one south across the river (a bridge), with ``road`` and ``width_m``."""
    x0, y0, x1, y1 = frame.bounds
    s = frame.size_m
    xy = shapely.get_coordinates(river_centre)
    off = 120 + 100 * (0.5 + 0.5 * np.sin(np.linspace(0, 3 * np.pi, len(xy)) + rng.uniform(0, 2 * np.pi)))
    road_xy = np.c_[xy[:, 0], xy[:, 1] + off]
    rows = [{"road": "county", "width_m": ROAD_WIDTH_M["county"], "geometry": shapely.LineString(road_xy)}]
    for fx, north in ((rng.uniform(0.15, 0.35), True), (rng.uniform(0.55, 0.8), True), (rng.uniform(0.3, 0.7), False)):
        xa = x0 + fx * s
        ya = float(np.interp(xa, road_xy[:, 0], road_xy[:, 1]))
        ys = np.linspace(ya, y1 + 100 if north else y0 - 100, 60)
        wiggle = np.cumsum(rng.normal(0, 0.012 * s, ys.size))
        rows.append({"road": "township", "width_m": ROAD_WIDTH_M["township"],
                     "geometry": shapely.LineString(np.c_[xa + wiggle - wiggle[0], ys])})
    return gpd.GeoDataFrame(rows, crs=CRS)


def carve_valley(dem: np.ndarray, frame: Frame, river: shapely.Polygon) -> np.ndarray:
    """Lower the DEM along the river: 90 m at its axis, fading over ~700 m (synthetic valley)."""
    d = distance_to(river, frame)
    return dem - 90.0 * np.exp(-((d / 700.0) ** 2))


def level_water(dem: np.ndarray, parcels: gpd.GeoDataFrame, ids: np.ndarray) -> np.ndarray:
    """Water lies level: each water parcel (a pond, or a river reach between two parcel edges, as between
    weirs) takes the lowest DEM value of its cells as its surface."""
    dem = dem.copy()
    for i in np.flatnonzero(parcels["land_use"].to_numpy() == "water"):
        sel = ids == i
        if sel.any():
            dem[sel] = dem[sel].min()
    return dem


def cell_centres(frame: Frame) -> tuple[np.ndarray, np.ndarray]:
    c = (np.arange(frame.n) + 0.5) * frame.res
    return np.meshgrid(frame.x0 + c, frame.y0 + frame.size_m - c)


def distance_to(geom, frame: Frame, step_px: int = 5) -> np.ndarray:
    """Distance (m) from each cell centre to ``geom``, computed on every ``step_px``-th cell and spread."""
    xx, yy = cell_centres(frame)
    sub = shapely.distance(geom, shapely.points(xx[::step_px, ::step_px], yy[::step_px, ::step_px]))
    full = np.repeat(np.repeat(sub, step_px, 0), step_px, 1)
    return full[: frame.n, : frame.n]


def split_out_river(parcels: gpd.GeoDataFrame, river: shapely.Polygon) -> gpd.GeoDataFrame:
    """Cut the river out of the upland parcels: each piece of river within a former cell becomes a
    water parcel, cells the river splits become separate parcels; ids are renumbered north-west to
    south-east as a cadastre numbers them."""
    land = parcels.assign(geometry=parcels.geometry.difference(river))
    water = parcels.assign(geometry=parcels.geometry.intersection(river))
    water = water[~water.geometry.is_empty].assign(forest_type="non_forest", dom_species="", age=0, land_use="water")
    out = pd.concat([land, water], ignore_index=True).explode(index_parts=False)
    out = out[out.geometry.area > 1.0].reset_index(drop=True)
    c = out.geometry.centroid
    out = out.iloc[np.lexsort((c.x.to_numpy(), -np.round(c.y.to_numpy(), -2)))].reset_index(drop=True)
    out["parcel_id"] = [f"QZ{i + 1:05d}" for i in range(len(out))]
    out["area_ha"] = out.geometry.area / 10_000
    return gpd.GeoDataFrame(out, geometry="geometry", crs=parcels.crs)


def assign_land_use(rng, parcels: gpd.GeoDataFrame, river: shapely.Polygon) -> gpd.GeoDataFrame:
    """Truth ``land_use`` per parcel (forest, young_plantation, clearcut, paddy, cropland, village, water),
    the ``land_class`` truth column (forest / non_forest) and the delivered ``DI_LEI`` code with its traps.

    Traps in ``DI_LEI`` (what went wrong is in the truth CSV, column ``di_lei_trap``):

    * ``stale``: a third of the clear-cuts were cut after the inventory and still read 0111 with their
      old species and age;
    * ``lost_zero``: ~8 % of the rows lost the leading zero (111, 113, 210 ...), as a text field does
      after a round trip through a spreadsheet as numbers;
    * ``unspecified``: a fifth of the farmland reads 0200 (非林地, 地类不清), the code table's note;
    * ``converted``: one dry-cropland parcel reads 1633 (毁林开垦): legally forest land, cleared for crops,
      no trees;
    * villages (0250) hold camphor groves: a non-forest code with real biomass.
    """
    p = parcels.copy()
    n = len(p)
    use = np.where(p["land_use"].fillna("") == "water", "water", "forest").astype(object)
    upland = np.flatnonzero(use != "water")
    d = shapely.distance(river, shapely.centroid(p.geometry.to_numpy()[upland]))
    w = np.exp(-d / 800.0)
    n_nf = int(round(NON_FOREST_PARCEL_SHARE * upland.size))
    nf = rng.choice(upland, size=n_nf, replace=False, p=w / w.sum())
    dn = shapely.distance(river, shapely.centroid(p.geometry.to_numpy()[nf]))
    for i, dist in zip(nf, dn):
        probs = np.array([0.55, 0.25, 0.15, 0.05]) if dist < 500 else np.array([0.15, 0.5, 0.3, 0.05])
        use[i] = rng.choice(["paddy", "cropland", "village", "water"], p=probs)
    forest = use == "forest"
    harvestable = forest & p["forest_type"].isin(["chinese_fir", "masson_pine"]).to_numpy() & (p["age"].to_numpy() >= 20)
    cand = np.flatnonzero(harvestable)
    cut = rng.choice(cand, size=min(cand.size, max(1, int(round(CLEARCUT_SHARE * forest.sum())))), replace=False)
    use[cut] = "clearcut"
    young = forest & p["forest_type"].isin(["chinese_fir", "masson_pine"]).to_numpy() & (p["age"].to_numpy() <= 4)
    use[young & (use == "forest")] = "young_plantation"
    non_forest = np.isin(use, ["paddy", "cropland", "village", "water"])
    p.loc[non_forest, "forest_type"] = "non_forest"
    p.loc[non_forest, "dom_species"] = ""
    p.loc[non_forest, "age"] = 0

    code = np.empty(n, dtype=object)
    trap = np.full(n, "", dtype=object)
    code[use == "forest"] = np.where(p["forest_type"].to_numpy()[use == "forest"] == "moso_bamboo", "0113", "0111")
    code[use == "young_plantation"] = "0141"
    code[use == "water"] = "0230"
    code[use == "village"] = "0250"
    farm = np.flatnonzero(np.isin(use, ["paddy", "cropland"]))
    code[farm] = "0210"
    unspecified = farm[rng.random(farm.size) < 0.2]
    code[unspecified], trap[unspecified] = "0200", "unspecified"
    dry = np.flatnonzero((use == "cropland") & (code == "0210"))
    if dry.size:
        k = rng.choice(dry)
        code[k], trap[k] = "1633", "converted"
    stale = rng.random(cut.size) < 1 / 3
    code[cut] = np.where(stale, "0111", "0161")
    trap[cut[stale]] = "stale"
    gone = cut[~stale]  # recorded clear-cuts carry no stand any more
    p.loc[p.index[gone], "dom_species"] = ""
    p.loc[p.index[gone], "age"] = 0
    lost = (rng.random(n) < LOST_ZERO_SHARE) & np.array([c.startswith("0") for c in code])
    code[lost] = [c[1:] for c in code[lost]]
    trap[lost] = np.where(trap[lost] == "", "lost_zero", trap[lost] + "+lost_zero")
    p["land_use"] = use
    p["land_class"] = np.where(non_forest | (trap == "converted"), "non_forest", "forest")
    p["DI_LEI"] = code
    p["di_lei_trap"] = trap
    p["age"] = p["age"].astype("int32")
    return p


def _fine_fraction(geoms, frame: Frame, factor: int = 10) -> np.ndarray:
    """Share (0-1) of each 10 m cell covered by ``geoms``, from a grid ``factor`` times finer."""
    n = frame.n * factor
    tr = frame.transform * Affine.scale(1 / factor)
    fine = rasterio.features.rasterize(((g, 1) for g in geoms), out_shape=(n, n), transform=tr, fill=0, dtype="uint8")
    return fine.reshape(frame.n, factor, frame.n, factor).mean(axis=(1, 3)).astype("float32")


@dataclass
class Land:
    """Per-cell land truth on the frame grid.

    ``cover``: :class:`Cover` code per cell; ``road_share``: share of the cell under road (0-1);
    ``phase``: per-parcel crop-calendar shift (−1..1) of farmland cells; ``roof_m``: building height
    (m) of built-up cells with a building, else 0.
    """

    cover: np.ndarray
    road_share: np.ndarray
    phase: np.ndarray
    roof_m: np.ndarray


def land_cells(rng, parcels: gpd.GeoDataFrame, frame: Frame, roads: gpd.GeoDataFrame, ids: np.ndarray) -> Land:
    """The cell-level truth: each parcel's land use, villages split into built-up / groves / gardens by
    a random field (~55 / 25 / 20 %, synthetic), roads where they cover at least half a cell."""
    use = parcels["land_use"].to_numpy()
    key = np.append(use, "water")[ids]  # -1 (no parcel; none expected) -> water
    cover = np.zeros(ids.shape, dtype="uint8")
    for k, c in (("forest", "forest"), ("young_plantation", "forest"), ("clearcut", "clearcut"), ("water", "water"),
                 ("paddy", "paddy"), ("cropland", "cropland"), ("village", "built_up")):
        cover[key == k] = COVER[c].code
    f = smooth_field(rng, ids.shape, 2.5)
    village = key == "village"
    cover[village & (f > 0.45)] = COVER["village_trees"].code
    cover[village & (f < -0.85)] = COVER["cropland"].code  # gardens
    road_share = _fine_fraction(roads.geometry.buffer(roads.width_m / 2, cap_style="flat"), frame)
    road_share[key == "water"] = 0.0  # bridges: the river stays water
    cover[road_share >= 0.5] = COVER["road"].code
    phase = np.append(rng.uniform(-1, 1, len(parcels)), 0.0)[ids].astype("float32")
    built = cover == COVER["built_up"].code
    roof = np.where(built & (smooth_field(rng, ids.shape, 0.8) > -0.3), 4.0 + 8.0 * rng.random(ids.shape), 0.0)
    return Land(cover, road_share, phase, roof.astype("float32"))


# ------------------------------------------------------------------ crop calendars and cover spectra
YEAR0 = dt.date(2024, 1, 1)


def crop_fractions(cover_key: str, date: str, phase: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(green, straw) cover fractions of farmland on ``date``; the rest is soil (wet soil in paddies).

    Paddy: single-season rice of the Qu River plain (synthetic calendar): green 0.9 until ~30 days before
    harvest on day 298 ± 12 (late October), ripening to 0.25 green / 0.65 straw at harvest, then stubble
    (straw 0.35) with winter green manure rising to 0.15 over 60 days -- green as forest in September.
    Dry cropland: an autumn crop at 0.6 cover harvested on day 265 ± 15, a winter crop (rape, vegetables)
    sown 20 days later, reaching 0.45 cover after 90 days.
    """
    t = (dt.date.fromisoformat(date) - YEAR0).days
    if cover_key == "paddy":
        harvest = 298 + 12 * phase
        before = t < harvest
        ripen = np.clip((harvest - t) / 30.0, 0, 1)
        green = np.where(before, 0.25 + 0.65 * ripen, np.minimum(0.05 + 0.1 * (t - harvest) / 60.0, 0.15))
        straw = np.where(before, 0.9 - green, np.maximum(0.35 - 0.3 * (t - harvest) / 90.0, 0.05))
        return green, straw
    harvest = 265 + 15 * phase
    green = np.where(t < harvest, 0.6, np.clip(0.45 * (t - harvest - 20) / 90.0, 0.0, 0.45))
    straw = np.where(t < harvest, 0.1, np.clip(0.25 - 0.25 * (t - harvest) / 60.0, 0.0, 0.25))
    return green, straw


# Surface reflectance (blue, green, red, nir, nir08, swir16, swir22), unitless.  Shapes follow the
# familiar library curves (green crop canopy: red trough, NIR plateau above forest; water: NIR and SWIR
# near zero; dry straw: no red trough; impervious: flat and bright); the levels are synthetic, not
# transcribed from a spectral library.
CROP_GREEN = (0.035, 0.085, 0.040, 0.42, 0.43, 0.22, 0.10)
STRAW = (0.060, 0.090, 0.115, 0.22, 0.23, 0.32, 0.24)
WET_SOIL = (0.050, 0.070, 0.090, 0.12, 0.13, 0.16, 0.12)
WATER = (0.055, 0.070, 0.050, 0.025, 0.020, 0.008, 0.005)
ROOF = (0.150, 0.170, 0.190, 0.23, 0.24, 0.27, 0.25)
ROAD = (0.110, 0.125, 0.135, 0.16, 0.17, 0.21, 0.19)


def cover_reflectance(cover: np.ndarray, phase: np.ndarray, date: str, soil) -> tuple[np.ndarray, np.ndarray]:
    """(band, y, x) reflectance of non-forest covers on ``date`` and the mask of cells it applies to
    (water, paddy, cropland, built-up, road; forest, clear-cut and village trees keep the canopy model)."""
    out = np.zeros((7, *cover.shape), dtype="float32")
    m = np.zeros(cover.shape, dtype=bool)
    s = np.asarray(soil, "float32")[:, None]
    for key, spec in (("water", WATER), ("built_up", ROOF), ("road", ROAD)):
        sel = cover == COVER[key].code
        out[:, sel] = np.asarray(spec, "float32")[:, None]
        m |= sel
    for key, background in (("paddy", np.asarray(WET_SOIL, "float32")[:, None]), ("cropland", s)):
        sel = cover == COVER[key].code
        g, st = crop_fractions(key, date, phase[sel])
        out[:, sel] = (g * np.asarray(CROP_GREEN, "float32")[:, None] + st * np.asarray(STRAW, "float32")[:, None]
                       + (1 - g - st) * background)
        m |= sel
    return out, m


def clearcut_reflectance(soil) -> np.ndarray:
    """Clear-cut surface: 35 % slash (dry), 35 % bare soil, 30 % green herb and sprout regrowth (synthetic)."""
    return 0.35 * np.asarray(STRAW) + 0.35 * np.asarray(soil) + 0.30 * np.asarray(CROP_GREEN)


# ------------------------------------------------------------------ WorldCover-like land-cover map
def true_worldcover(land: Land, canopy_cover: np.ndarray) -> np.ndarray:
    """The ESA WorldCover class each cell truly is: its cover's class, forest cells under 10 % canopy
    cover as Grassland (30), WorldCover's tree-cover threshold."""
    wc = np.zeros(land.cover.shape, dtype="uint8")
    for c in COVERS:
        wc[land.cover == c.code] = c.worldcover
    wc[(land.cover == COVER["forest"].code) & (canopy_cover < 0.10)] = 30
    return wc


CONFUSION = {10: 20, 20: 10, 30: 40, 40: 30, 50: 40, 60: 30, 80: 80}  # blob errors between neighbouring classes
TREE_CONFUSION = {10: 30, 20: 10, 30: 10, 40: 10, 50: 10, 60: 10, 80: 80}  # blob errors to and from tree cover


def mapped_worldcover(rng, truth_wc: np.ndarray, land: Land, blob_share: float = 0.08,
                      tree_blob_share: float = 0.04) -> np.ndarray:
    """A land-cover product's view of the truth, with the errors 10 m products make (synthetic model):
    narrow township roads lost to their surroundings (8 m under a closed canopy: Tree cover); blobs
    (~``blob_share`` of the area, a smooth random field) confused with a neighbouring class
    (:data:`CONFUSION`: tree cover ↔ shrubland, grassland ↔ cropland, built-up → cropland); and blobs
    (~``tree_blob_share``) where open land is mapped as tree cover and tree cover as grassland
    (:data:`TREE_CONFUSION`: field margins, orchards, tree-lined villages; thin canopy)."""
    wc = truth_wc.copy()
    lost_roads = (land.cover == COVER["road"].code) & (land.road_share < 0.95)
    wc[lost_roads] = 10
    for share, table in ((blob_share, CONFUSION), (tree_blob_share, TREE_CONFUSION)):
        f = smooth_field(rng, wc.shape, 4.0)
        blob = f > np.quantile(f, 1 - share)
        wc[blob] = np.vectorize(table.get, otypes=["uint8"])(truth_wc[blob])
    return wc


def write_worldcover(path, wc: np.ndarray, frame: Frame, truth_wc: np.ndarray) -> dict:
    """Write ``wc`` as a WorldCover-like GeoTIFF on WorldCover's own grid (EPSG:4326, 1/12000 degree pixels
    snapped to whole degrees, as its 3 x 3 degree tiles of 36000 px), nearest-neighbour from the frame grid;
    return its accuracy against ``truth_wc`` read back onto the frame grid (what a user sees)."""
    res = 1 / 12000
    w, s, e, n = transform_bounds(CRS, "EPSG:4326", *frame.bounds, densify_pts=51)
    w, s = np.floor(w / res) * res, np.floor(s / res) * res
    e, n = np.ceil(e / res) * res, np.ceil(n / res) * res
    width, height = int(round((e - w) / res)), int(round((n - s) / res))
    tr = Affine(res, 0, w, 0, -res, n)
    out = np.zeros((height, width), dtype="uint8")
    reproject(wc, out, src_transform=frame.transform, src_crs=CRS, dst_transform=tr, dst_crs="EPSG:4326",
              resampling=Resampling.nearest, src_nodata=0, dst_nodata=0)
    back = np.zeros_like(wc)
    reproject(out, back, src_transform=tr, src_crs="EPSG:4326", dst_transform=frame.transform, dst_crs=CRS,
              resampling=Resampling.nearest, src_nodata=0, dst_nodata=0)
    acc = accuracy(back, truth_wc)
    profile = dict(driver="GTiff", width=width, height=height, count=1, dtype="uint8", crs="EPSG:4326",
                   transform=tr, nodata=0, compress="DEFLATE", tiled=True, blockxsize=256, blockysize=256)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(out, 1)
        dst.set_band_description(1, "Map")
        dst.write_colormap(1, {10: (0, 100, 0, 255), 20: (255, 187, 34, 255), 30: (255, 255, 76, 255),
                               40: (240, 150, 255, 255), 50: (250, 0, 0, 255), 60: (180, 180, 180, 255),
                               80: (0, 100, 200, 255)})
        dst.update_tags(classes=str(WORLDCOVER), legend="ESA WorldCover (10 Tree cover ... 80 Permanent water bodies)",
                        stated_overall_accuracy=f"{acc['overall_accuracy']:.3f}",
                        stated_tree_cover_users_accuracy=f"{acc['tree_cover_users_accuracy']:.3f}",
                        stated_tree_cover_producers_accuracy=f"{acc['tree_cover_producers_accuracy']:.3f}",
                        stated_open_land_mapped_as_tree_cover=f"{acc['open_land_mapped_as_tree_cover']:.3f}",
                        synthetic="forestcarbon_synth: WorldCover-like, not an ESA product")
    return acc


def accuracy(mapped: np.ndarray, truth: np.ndarray) -> dict:
    """Overall accuracy, Tree cover (10) user's / producer's accuracy of ``mapped`` against ``truth`` and the
    share of cells truly not tree cover that are mapped as tree cover (cell counts; cells 0 in either are
    left out)."""
    ok = (mapped > 0) & (truth > 0)
    m, t = mapped[ok], truth[ok]
    tree_m, tree_t = m == 10, t == 10
    return {"overall_accuracy": float(np.mean(m == t)),
            "tree_cover_users_accuracy": float(np.mean(t[tree_m] == 10)),
            "tree_cover_producers_accuracy": float(np.mean(m[tree_t] == 10)),
            "open_land_mapped_as_tree_cover": float(np.mean(m[~tree_t] == 10)),
            "cells": int(ok.sum())}


# 龄组 (age group) codes of the forest management inventory (森林资源规划设计调查, GB/T 26424-2010 Table A.?
# as bureaus code them): 1 幼龄林, 2 中龄林, 3 近熟林, 4 成熟林, 5 过熟林.  Upper ages of groups 1-4 for
# southern plantations as the synthetic county uses them (Chinese fir / Masson pine: 10, 20, 25, 35;
# broadleaf: 20, 40, 50, 70); bamboo and oil tea carry no age group (blank).
AGE_GROUP_LIMITS = {"chinese_fir": (10, 20, 25, 35), "masson_pine": (10, 20, 30, 40),
                    "broadleaf": (20, 40, 50, 70)}


def bureau_fields(rng, parcels: gpd.GeoDataFrame, frame) -> gpd.GeoDataFrame:
    """The 小班 attributes a bureau's layer carries: the key ``XIAN`` (county code, 330803 衢江区), ``XIANG``
    (township, a 3 x 3 split of the frame), ``CUN`` (village, 2 x 2 inside a township), ``LIN_BAN`` (1 km
    compartments numbered inside the village), ``XIAO_BAN`` (parcels numbered inside the compartment, in
    the cadastre's north-west to south-east order), all text with their zero padding; ``MIAN_JI`` the
    declared area in mu (1 ha = 15 mu), rounded to 0.1 mu, with a trap: ~2 % of the parcels declare an area
    from an older survey (10-30 % off); ``YOU_SHI_SZ`` the dominant species; ``LING_ZU`` the age group.
    ``parcel_id`` becomes the composite key joined by "-" (what the pipeline builds from the five fields)."""
    x0, y0, _, _ = frame.bounds
    s = frame.size_m
    c = parcels.geometry.representative_point()
    fx = np.clip((c.x.to_numpy() - x0) / s, 0, 1 - 1e-9)
    fy = np.clip((c.y.to_numpy() - y0) / s, 0, 1 - 1e-9)
    tx, ty = (fx * 3).astype(int), (fy * 3).astype(int)
    vx, vy = (fx * 6).astype(int) % 2, (fy * 6).astype(int) % 2
    xiang = ty * 3 + tx + 1
    cun = vy * 2 + vx + 1
    km_x = ((c.x.to_numpy() - x0) // 1000).astype(int)
    km_y = ((c.y.to_numpy() - y0) // 1000).astype(int)
    out = parcels.copy()
    out["XIAN"] = "330803"
    out["XIANG"] = [f"{v:03d}" for v in xiang]
    out["CUN"] = [f"{v:03d}" for v in cun]
    village = out["XIANG"] + out["CUN"]
    compartment = pd.Series(list(zip(km_y, km_x)), index=out.index)
    lin_ban = np.zeros(len(out), int)
    for _, idx in village.groupby(village).groups.items():
        keys = sorted(set(compartment[idx]), key=lambda k: (-k[0], k[1]))
        num = {k: i + 1 for i, k in enumerate(keys)}
        lin_ban[out.index.get_indexer(idx)] = [num[k] for k in compartment[idx]]
    out["LIN_BAN"] = [f"{v:04d}" for v in lin_ban]
    out["XIAO_BAN"] = (out.groupby(["XIANG", "CUN", "LIN_BAN"]).cumcount() + 1).map(lambda v: f"{v:03d}")
    out["parcel_id"] = out["XIAN"] + "-" + out["XIANG"] + "-" + out["CUN"] + "-" + out["LIN_BAN"] + "-" + out["XIAO_BAN"]
    mu = out.geometry.area.to_numpy() / 10_000 * 15
    stale = rng.random(len(out)) < 0.02
    mu = np.where(stale, mu * rng.choice([-1, 1], len(out)) * rng.uniform(0.10, 0.30, len(out)) + mu, mu)
    out["MIAN_JI"] = np.round(mu, 1)
    out["YOU_SHI_SZ"] = out["dom_species"].fillna("")
    groups = []
    for ft, age in zip(out["forest_type"], out["age"]):
        lim = AGE_GROUP_LIMITS.get(ft)
        groups.append("" if lim is None or age <= 0 else str(1 + int(np.searchsorted(lim, age, side="left"))))
    out["LING_ZU"] = groups
    return out
