"""Parcels (小班), terrain and the true AGB field of the synthetic county."""

from __future__ import annotations

from dataclasses import dataclass

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio.features
import shapely
from affine import Affine
from pyproj import Transformer
from scipy import ndimage

from .forest_types import FOREST_TYPES

CRS = "EPSG:4549"  # CGCS2000 / 3-degree Gauss-Kruger CM 120E
CENTRE_LONLAT = (118.9, 29.0)  # near Quzhou, Zhejiang


@dataclass(frozen=True)
class Frame:
    """Grid of the synthetic county (the truth grid, also the target grid)."""

    x0: float
    y0: float
    size_m: float
    res: float

    @property
    def n(self) -> int:
        return int(round(self.size_m / self.res))

    @property
    def transform(self) -> Affine:
        return Affine(self.res, 0, self.x0, 0, -self.res, self.y0 + self.size_m)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        return (self.x0, self.y0, self.x0 + self.size_m, self.y0 + self.size_m)


def make_frame(size_km: float, res: float = 10.0) -> Frame:
    x, y = Transformer.from_crs("EPSG:4490", CRS, always_xy=True).transform(*CENTRE_LONLAT)
    size_m = round(size_km * 1000 / (2 * res)) * 2 * res
    x0 = round((x - size_m / 2) / 1000) * 1000
    y0 = round((y - size_m / 2) / 1000) * 1000
    return Frame(float(x0), float(y0), float(size_m), res)


def smooth_field(rng, shape, sigma_px, sd=1.0):
    """Zero-mean Gaussian random field with unit-variance scaling times ``sd``."""
    f = ndimage.gaussian_filter(rng.standard_normal(shape), sigma_px, mode="wrap")
    return f / f.std() * sd


def make_parcels(rng, frame: Frame, mean_area_ha: float = 7.0) -> gpd.GeoDataFrame:
    """Voronoi parcels from jittered grid seeds, clipped to the frame."""
    x0, y0, x1, y1 = frame.bounds
    spacing = np.sqrt(mean_area_ha * 10_000)
    gx = np.arange(x0 + spacing / 2, x1, spacing)
    gy = np.arange(y0 + spacing / 2, y1, spacing)
    xx, yy = np.meshgrid(gx, gy)
    pts = np.c_[xx.ravel(), yy.ravel()] + rng.uniform(-0.45, 0.45, (xx.size, 2)) * spacing
    box = shapely.box(x0, y0, x1, y1)
    cells = shapely.get_parts(shapely.voronoi_polygons(shapely.multipoints(pts), extend_to=box))
    cells = shapely.intersection(cells, box)
    cells = cells[shapely.area(cells) > 100]
    # order parcels north-west to south-east, as a cadastre would number them
    c = shapely.centroid(cells)
    order = np.lexsort((shapely.get_x(c), -np.round(shapely.get_y(c), -2)))
    cells = cells[order]
    n = len(cells)
    keys = [t.key for t in FOREST_TYPES]
    shares = np.array([t.share for t in FOREST_TYPES])
    ftype = rng.choice(keys, size=n, p=shares / shares.sum())
    by_key = {t.key: t for t in FOREST_TYPES}
    age = np.array([rng.integers(*by_key[k].age_range) for k in ftype])
    gdf = gpd.GeoDataFrame(
        {
            "parcel_id": [f"QZ{i + 1:05d}" for i in range(n)],
            "forest_type": ftype,
            "dom_species": [by_key[k].species for k in ftype],
            "age": age.astype("int32"),
            "land_use": "upland",  # decided by land.assign_land_use once the river is cut out
        },
        geometry=cells,
        crs=CRS,
    )
    gdf["area_ha"] = gdf.geometry.area / 10_000
    return gdf


def make_dem(rng, frame: Frame) -> np.ndarray:
    """Hilly terrain, 150-650 m a.s.l., on the frame grid (m)."""
    n = frame.n
    broad = smooth_field(rng, (n, n), n / 6)
    hills = smooth_field(rng, (n, n), n / 40)
    dem = 400 + 120 * broad + 40 * hills
    return dem.astype("float64")


def rasterize_ids(parcels: gpd.GeoDataFrame, frame: Frame, factor: int = 1) -> np.ndarray:
    """Parcel index (0..n-1, -1 outside) per cell of the frame grid refined by ``factor``."""
    n = frame.n * factor
    tr = frame.transform * Affine.scale(1 / factor)
    shapes = ((g, i) for i, g in enumerate(parcels.geometry))
    return rasterio.features.rasterize(shapes, out_shape=(n, n), transform=tr, fill=-1, dtype="int32")


def true_agb(rng, parcels: gpd.GeoDataFrame, frame: Frame, land) -> tuple[np.ndarray, np.ndarray]:
    """True woody AGB (Mg/ha) per 10 m cell and the forest-type index per cell.

    Stands follow their type's growth curve at the parcel's age, × a stand-level site deviation
    (lognormal, SD 0.15) × within-stand texture.  ``land`` (:class:`forestcarbon_synth.land.Land`) sets the
    rest (rules in :mod:`forestcarbon_synth.land`): clear-cuts 0.5-2.5 Mg/ha of regrowth, village groves
    60-150 Mg/ha, every other non-forest cell 0, and each cell's road share removes its share of the stand.
    The type index is the forest type's position in ``FOREST_TYPES``; village groves take broadleaf's;
    cells without trees take ``len(FOREST_TYPES)`` (non-forest).
    """
    from .land import COVER

    by_key = {t.key: t for t in FOREST_TYPES}
    ids = rasterize_ids(parcels, frame)
    mean = np.array([by_key[k].agb_mg_ha(a) if k in by_key else 0.0 for k, a in zip(parcels.forest_type, parcels.age)])
    # stand-level deviation from the yield curve (site quality), then within-stand texture
    mean = mean * np.exp(rng.normal(0, 0.15, len(mean)))
    texture = np.exp(smooth_field(rng, ids.shape, 2.0, 0.22) + smooth_field(rng, ids.shape, 0.7, 0.12))
    regrowth = rng.uniform(0.5, 2.5, len(parcels))  # Mg/ha, synthetic
    grove = rng.uniform(60.0, 150.0, len(parcels))  # Mg/ha, synthetic
    agb = mean[ids] * texture
    cover = land.cover
    agb = np.where(cover == COVER["clearcut"].code, regrowth[ids] * np.sqrt(texture), agb)
    agb = np.where(cover == COVER["village_trees"].code, grove[ids] * texture, agb)
    agb = np.where(np.isin(cover, [c.code for c in (COVER["forest"], COVER["clearcut"], COVER["village_trees"],
                                                    COVER["road"])]), agb, 0.0)
    agb = agb * (1.0 - land.road_share)
    type_codes = {k: i for i, k in enumerate(by_key)}
    tcode = np.array([type_codes.get(k, len(FOREST_TYPES)) for k in parcels.forest_type])[ids]
    tcode = np.where(cover == COVER["village_trees"].code, type_codes["broadleaf"], tcode)
    tcode = np.where(agb > 0, tcode, len(FOREST_TYPES))
    return agb.astype("float32"), tcode.astype("uint8")


def stand_agb(agb: np.ndarray, road_share: np.ndarray) -> np.ndarray:
    """The stand's AGB (Mg/ha) in each cell before its road share took its part (0 on cells mostly road)."""
    return np.where(road_share < 0.95, agb / np.maximum(1 - road_share, 0.05), 0.0).astype("float32")


def parcel_truth(parcels: gpd.GeoDataFrame, frame: Frame, carbon_mg_ha: np.ndarray, factor: int = 5) -> pd.DataFrame:
    """True carbon (t) per parcel: the 10 m carbon field integrated over each
    polygon on a grid ``factor`` times finer (independent of any zonal tool)."""
    fine_ids = rasterize_ids(parcels, frame, factor)
    dens = np.repeat(np.repeat(carbon_mg_ha.astype("float64"), factor, 0), factor, 1)
    cell_ha = (frame.res / factor) ** 2 / 10_000
    ok = fine_ids >= 0
    carbon_t = np.bincount(fine_ids[ok], weights=dens[ok] * cell_ha, minlength=len(parcels))
    return pd.DataFrame({"parcel_id": parcels.parcel_id.to_numpy(), "true_carbon_t": carbon_t})
