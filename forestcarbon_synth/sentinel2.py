"""Sentinel-2 L2A scenes of the synthetic county: per-band COGs + STAC items.

Scenes are on a UTM zone 50N grid (EPSG:32650), as real L2A tiles over Quzhou
are, so that the pipeline must reproject them onto the CGCS2000 target grid.
DNs follow the L2A convention of processing baseline >= 04.00: reflectance =
(DN + BOA_ADD_OFFSET) / 10000 with BOA_ADD_OFFSET = -1000, DN 0 = nodata; one
scene carries baseline 03.01 (no offset) so readers must decide from metadata.
Forest reflects by canopy cover over soil; water, roofs, roads, paddies and dry
fields by their own spectra and crop calendars (:mod:`forestcarbon_synth.land`:
rice before its late-October harvest is as green as forest); SCL marks water 6.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from pyproj import Transformer
from rasterio.warp import Resampling, reproject, transform_bounds

from . import land as landmod
from .forest_types import BANDS, FOREST_TYPES, SOIL, canopy_cover
from .landscape import CRS, Frame, smooth_field

UTM = "EPSG:32650"
FILES = {  # common name -> (file, native resolution m, eo band name)
    "blue": ("B02", 10), "green": ("B03", 10), "red": ("B04", 10), "nir": ("B08", 10),
    "nir08": ("B8A", 20), "swir16": ("B11", 20), "swir22": ("B12", 20),
}
WAVELENGTH = {"blue": 0.49, "green": 0.56, "red": 0.665, "nir": 0.842, "nir08": 0.865, "swir16": 1.61, "swir22": 2.19}
DATES = ("2024-09-08", "2024-09-28", "2024-10-18", "2024-11-02", "2024-11-17", "2024-12-07", "2024-12-22", "2025-01-06")
CLOUD_COVER = (0.25, 0.45, 0.10, 0.85, 0.30, 0.20, 0.55, 0.15)


def utm_frame(frame: Frame, margin_m: float = 300.0):
    x0, y0, x1, y1 = transform_bounds(CRS, UTM, *frame.bounds, densify_pts=51)
    x0, y0 = np.floor((x0 - margin_m) / 20) * 20, np.floor((y0 - margin_m) / 20) * 20
    x1, y1 = np.ceil((x1 + margin_m) / 20) * 20, np.ceil((y1 + margin_m) / 20) * 20
    w, h = int((x1 - x0) / 10), int((y1 - y0) / 10)
    return Affine(10, 0, x0, 0, -10, y1), (h, w)


def _to_utm(arr, frame: Frame, transform, shape, resampling):
    out = np.zeros(shape, dtype="float32")
    reproject(arr.astype("float32"), out, src_transform=frame.transform, src_crs=CRS,
              dst_transform=transform, dst_crs=UTM, resampling=resampling, src_nodata=None, dst_nodata=0)
    return out


def surface_reflectance(agb_utm, type_utm, background=None):
    """Cloud-free surface reflectance (band, y, x) of a canopy over ``background`` (band, y, x; bare soil
    where not given) from AGB and forest type."""
    fc = canopy_cover(agb_utm)
    veg = np.array([t.veg for t in FOREST_TYPES] + [(0.04, 0.08, 0.05, 0.30, 0.31, 0.20, 0.10)], dtype="float32")
    v = np.moveaxis(veg[type_utm.astype(int)], -1, 0)  # band, y, x
    if background is None:
        background = np.asarray(SOIL, dtype="float32")[:, None, None]
    return fc * v + (1 - fc) * background


def land_surface(agb_u, type_u, cover_u, road_u, phase_u, date: str) -> np.ndarray:
    """Cloud-free surface reflectance (band, y, x) on ``date``: the canopy model over soil (over slash and
    regrowth in clear-cuts) at the stand's own density, water, roofs and farmland by their own spectra and
    crop calendars (:mod:`forestcarbon_synth.land`), and each cell's road share blended in."""
    stand_agb = np.where(road_u < 0.95, agb_u / np.maximum(1 - road_u, 0.05), 0.0)
    soil = np.asarray(SOIL, dtype="float32")[:, None, None]
    clear = np.asarray(landmod.clearcut_reflectance(SOIL), dtype="float32")[:, None, None]
    background = np.where(cover_u == landmod.COVER["clearcut"].code, clear, soil)
    refl = surface_reflectance(stand_agb, type_u, background)
    other, m = landmod.cover_reflectance(cover_u, phase_u, date, SOIL)
    refl = np.where(m, other, refl)
    road = np.asarray(landmod.ROAD, dtype="float32")[:, None, None]
    return ((1 - road_u) * refl + road_u * road).astype("float32")


def _clouds(rng, shape, cover):
    field = smooth_field(rng, shape, 25)
    thr = np.quantile(field, 1 - cover) if cover > 0 else np.inf
    opaque = field > thr
    medium = (field > thr - 0.25) & ~opaque
    cirrus_f = smooth_field(rng, shape, 40)
    cirrus = cirrus_f > np.quantile(cirrus_f, 0.88)
    shadow = np.roll(np.roll(opaque, 25, axis=0), 35, axis=1) & ~opaque & ~medium
    return opaque, medium, cirrus, shadow, field


def _write_band(path: Path, dn: np.ndarray, transform, name: str):
    profile = dict(driver="COG", width=dn.shape[1], height=dn.shape[0], count=1, dtype="uint16",
                   crs=UTM, transform=transform, nodata=0, compress="DEFLATE", predictor=2, blocksize=512)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(dn, 1)
        dst.set_band_description(1, name)


def write_scenes(rng, frame: Frame, agb: np.ndarray, tcode: np.ndarray, land, out: Path) -> list[Path]:
    transform, shape = utm_frame(frame)
    agb_u = _to_utm(agb, frame, transform, shape, Resampling.bilinear)
    type_u = _to_utm(tcode.astype("float32") + 1, frame, transform, shape, Resampling.nearest)
    covered = type_u > 0
    type_u = np.where(covered, type_u - 1, len(FOREST_TYPES)).astype(int)
    cover_u = _to_utm(land.cover, frame, transform, shape, Resampling.nearest).astype("uint8")
    road_u = _to_utm(land.road_share, frame, transform, shape, Resampling.bilinear)
    phase_u = _to_utm(land.phase, frame, transform, shape, Resampling.nearest)
    water = cover_u == landmod.COVER["water"].code
    paths = []
    for i, (date, cover) in enumerate(zip(DATES, CLOUD_COVER)):
        baseline = "03.01" if i == 2 else "05.10"
        offset = 0 if baseline < "04.00" else 1000
        season = 1.0 + 0.04 * np.sin(i / len(DATES) * np.pi)
        gain = season * (1 + rng.normal(0, 0.02, len(BANDS)))[:, None, None]
        base = land_surface(agb_u, type_u, cover_u, road_u, phase_u, date)
        refl = base * gain + rng.normal(0, 0.004, base.shape).astype("float32")
        opaque, medium, cirrus, shadow, field = _clouds(rng, shape, cover)
        cloud_refl = 0.35 + 0.35 * np.clip(field - field.min(), 0, None) / (np.ptp(field) + 1e-9)
        refl = np.where(opaque | medium, cloud_refl * (0.8 + 0.2 * np.arange(len(BANDS))[:, None, None] / 7), refl)
        refl = np.where(cirrus & ~(opaque | medium), refl + 0.05, refl)
        refl = np.where(shadow, refl * 0.3, refl)
        ndvi = (refl[3] - refl[2]) / (refl[3] + refl[2] + 1e-6)
        scl = np.where(ndvi > 0.4, 4, 5).astype("uint8")
        scl[water] = 6
        scl[cirrus] = 10
        scl[shadow] = 3
        scl[medium] = 8
        scl[opaque] = 9
        valid = covered.copy()
        if i == 5:  # orbit edge: the western third of this acquisition is outside the swath
            valid[:, : shape[1] // 3] = False
        scl[~valid] = 0
        name = f"S2B_50RPQ_{date.replace('-', '')}_0_L2A"
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        assets = {}
        for b, band in enumerate(BANDS):
            fname, res = FILES[band]
            r = refl[b]
            tr = transform
            ok = valid
            if res == 20:
                r = r.reshape(shape[0] // 2, 2, shape[1] // 2, 2).mean(axis=(1, 3))
                ok = valid[::2, ::2]
                tr = transform * Affine.scale(2)
            dn = np.clip(np.round(r * 10_000 + offset), 1, 65535).astype("uint16")
            dn[~ok] = 0
            _write_band(folder / f"{fname}.tif", dn, tr, band)
            assets[band] = _asset(f"{fname}.tif", band, r.shape, tr)
        scl20 = scl[::2, ::2]
        tr20 = transform * Affine.scale(2)
        _write_band(folder / "SCL.tif", scl20.astype("uint16"), tr20, "scl")
        assets["scl"] = _asset("SCL.tif", None, scl20.shape, tr20)
        item = _item(name, date, baseline, float((opaque | medium | cirrus).mean() * 100), frame, assets)
        p = folder / f"{name}.json"
        p.write_text(json.dumps(item, indent=1))
        paths.append(p)
    return paths


def _asset(href, band, shape, transform):
    a = {
        "href": f"./{href}",
        "type": "image/tiff; application=geotiff; profile=cloud-optimized",
        "roles": ["data"],
        "proj:shape": [int(shape[0]), int(shape[1])],
        "proj:transform": [transform.a, transform.b, transform.c, transform.d, transform.e, transform.f],
    }
    if band:
        a["eo:bands"] = [{"name": band, "common_name": band, "center_wavelength": WAVELENGTH[band]}]
        a["title"] = f"{band} reflectance (L2A DN)"
    else:
        a["title"] = "Scene classification map (SCL)"
    return a


def _item(name, date, baseline, cloud_pct, frame: Frame, assets):
    to_ll = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True)
    x0, y0, x1, y1 = frame.bounds
    ring = [to_ll.transform(x, y) for x, y in ((x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0))]
    lons, lats = zip(*ring)
    t = dt.datetime.fromisoformat(date).replace(hour=2, minute=55, tzinfo=dt.timezone.utc)
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": [
            "https://stac-extensions.github.io/eo/v1.0.0/schema.json",
            "https://stac-extensions.github.io/projection/v1.0.0/schema.json",
        ],
        "id": name,
        "bbox": [min(lons), min(lats), max(lons), max(lats)],
        "geometry": {"type": "Polygon", "coordinates": [[list(p) for p in ring]]},
        "properties": {
            "datetime": t.isoformat().replace("+00:00", "Z"),
            "platform": "sentinel-2b",
            "constellation": "sentinel-2",
            "instruments": ["msi"],
            "eo:cloud_cover": round(cloud_pct, 3),
            "proj:epsg": 32650,
            "s2:processing_baseline": baseline,
            "s2:product_type": "S2MSI2A",
            "forestcarbon:synthetic": True,
        },
        "links": [],
        "assets": assets,
        "collection": "sentinel-2-l2a",
    }
