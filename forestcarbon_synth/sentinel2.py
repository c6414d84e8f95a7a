"""Sentinel-2 L2A scenes of the synthetic county: per-band COGs + STAC items.

Scenes are on a UTM zone 50N grid (EPSG:32650), as real L2A tiles over Quzhou
are, so that the pipeline must reproject them onto the CGCS2000 target grid.
DNs follow the L2A convention of processing baseline >= 04.00: reflectance =
(DN + BOA_ADD_OFFSET) / 10000 with BOA_ADD_OFFSET = -1000, DN 0 = nodata; one
scene carries baseline 03.01 (no offset) so readers must decide from metadata.
Forest reflects by canopy cover over soil, with each stand's own closed-canopy
spectrum (:mod:`forestcarbon_synth.structure`: species mixing, brightness, crown
shadow; cover closes near 100 Mg/ha, so reflectance saturates there); water,
roofs, roads, paddies and dry fields by their own spectra and crop calendars
(:mod:`forestcarbon_synth.land`: rice before its late-October harvest is as green
as forest); SCL marks water 6.

What L2A correction leaves behind, per scene:

* terrain illumination: Sen2Cor corrects it only in part; a share ``TERRAIN_RESIDUAL`` (0.3,
  synthetic) of the uncorrected effect ``cos i / cos z`` remains, with the sun at the 02:55 UTC
  overpass (zenith 29° in September to 55° in December here).  Sunny and shady slopes differ in
  reflectance, as in Zhao et al. 2016 (Remote Sens. 8(6):469), where stratifying by slope aspect
  improved Landsat AGB models in Zhejiang;
* aerosol: the scene's AOT (550 nm) is off by N(0, 0.04) scene-wide and again as a smooth field;
  retrieved AOT has an RMSE of about 0.07-0.1 against sun photometers (MAJA: 0.068-0.095, Rouquié et
  al. 2017, Remote Sens. 9(12):1230), and BOA reflectance of dark vegetation moves by about
  ``AOT_SENSITIVITY`` per unit AOT (blue 0.10 ... SWIR 0.005; synthetic order of magnitude);
* geolocation: the whole stack is off by N(0, 3.3 m) per axis (ESA's refined L1C: 8 m absolute
  geolocation at 95 % circular error) and each scene again by N(0, 2.0 m) (5 m multi-temporal
  co-registration at 95 %, same orbit; ESA, "Forthcoming deployment of the Copernicus Sentinel-2
  products geometric refinement", 22 March 2021), so a plot's pixels are not quite the plot's ground;
* sensor noise N(0, 0.004) and a per-band gain of 2 %.
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
from .forest_types import BANDS, SOIL
from .landscape import CENTRE_LONLAT, CRS, Frame, smooth_field

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


def land_surface(canopy_u, fc_u, cover_u, road_u, phase_u, date: str) -> np.ndarray:
    """Cloud-free surface reflectance (band, y, x) on ``date``: the stand's canopy (``canopy_u``, its closed
    canopy spectrum, :mod:`forestcarbon_synth.structure`) at its cover ``fc_u`` over soil (over slash and
    regrowth in clear-cuts), water, roofs and farmland by their own spectra and crop calendars
    (:mod:`forestcarbon_synth.land`), and each cell's road share blended in."""
    soil = np.asarray(SOIL, dtype="float32")[:, None, None]
    clear = np.asarray(landmod.clearcut_reflectance(SOIL), dtype="float32")[:, None, None]
    background = np.where(cover_u == landmod.COVER["clearcut"].code, clear, soil)
    refl = fc_u * canopy_u + (1 - fc_u) * background
    other, m = landmod.cover_reflectance(cover_u, phase_u, date, SOIL)
    refl = np.where(m, other, refl)
    road = np.asarray(landmod.ROAD, dtype="float32")[:, None, None]
    return ((1 - road_u) * refl + road_u * road).astype("float32")


# Residual errors of L2A surface reflectance (module docstring): what survives Sen2Cor's terrain and
# atmospheric correction, and the scenes' geolocation.
TERRAIN_RESIDUAL = 0.3  # share of the uncorrected illumination effect left after correction; synthetic
AOT_SD = 0.04  # error of the scene's aerosol optical thickness (550 nm): scene-wide, and again as a field
AOT_FIELD_PX = 150  # smoothing (pixels) of the AOT error field; synthetic
AOT_SENSITIVITY = (0.10, 0.07, 0.05, 0.03, 0.03, 0.01, 0.005)  # d(BOA reflectance)/d(AOT), dark vegetation; synthetic
GEOLOCATION_SD_M = 8.0 / 2.45  # absolute: 8 m at 95 % circular error (ESA 2021), per axis
COREGISTRATION_SD_M = 5.0 / 2.45  # multi-temporal, same orbit: 5 m at 95 % circular error (ESA 2021), per axis
OVERPASS_UTC_H = 2.917  # 02:55 UTC, as in the items


def sun_angles(date: str, lon: float = CENTRE_LONLAT[0], lat: float = CENTRE_LONLAT[1]) -> tuple[float, float]:
    """(zenith, azimuth clockwise from north) in radians of the sun at the overpass on ``date``
    (Cooper's declination, mean solar time; good to about a degree)."""
    doy = dt.date.fromisoformat(date).timetuple().tm_yday
    decl = np.radians(23.45) * np.sin(2 * np.pi * (284 + doy) / 365)
    hour = np.radians(15.0 * (OVERPASS_UTC_H + lon / 15.0 - 12.0))
    phi = np.radians(lat)
    cos_z = np.sin(phi) * np.sin(decl) + np.cos(phi) * np.cos(decl) * np.cos(hour)
    zen = float(np.arccos(cos_z))
    az = float(np.arctan2(np.sin(hour), np.cos(hour) * np.sin(phi) - np.tan(decl) * np.cos(phi)) + np.pi)
    return zen, az


def terrain_normals(dem: np.ndarray, res: float) -> np.ndarray:
    """(3, y, x): cos(slope), sin(slope)·sin(aspect), sin(slope)·cos(aspect) of a north-up DEM (aspect
    clockwise from north, the direction the slope faces)."""
    dz_dy, dz_dx = np.gradient(dem.astype("float64"), res)  # rows run south: dz_dy is -dz/dnorth
    gx, gn = dz_dx, -dz_dy
    norm = np.sqrt(1 + gx**2 + gn**2)
    return np.stack([1 / norm, -gx / norm, -gn / norm]).astype("float32")


def illumination(normals_u: np.ndarray, date: str) -> np.ndarray:
    """Multiplicative residual illumination error on ``date``: 1 + TERRAIN_RESIDUAL · (cos i / cos z − 1)
    with cos i the sun's incidence on each slope."""
    zen, az = sun_angles(date)
    cos_i = np.cos(zen) * normals_u[0] + np.sin(zen) * (np.sin(az) * normals_u[1] + np.cos(az) * normals_u[2])
    return np.clip(1 + TERRAIN_RESIDUAL * (np.maximum(cos_i, 0) / np.cos(zen) - 1), 0.3, None).astype("float32")


def misregister(arr: np.ndarray, shift_m: np.ndarray, order: int = 1) -> np.ndarray:
    """``arr`` ((band,) y, x, 10 m pixels) as a scene whose geolocation is off by ``shift_m`` (east, north):
    each feature appears that far east and north of where it is."""
    from scipy import ndimage

    dy, dx = -shift_m[1] / 10.0, shift_m[0] / 10.0  # content moves: north is up (row − 1)
    if arr.ndim == 2:
        return ndimage.shift(arr, (dy, dx), order=order, mode="nearest")
    return np.stack([ndimage.shift(a, (dy, dx), order=order, mode="nearest") for a in arr])


def _coarse_field(rng, shape, sigma_px: float, sd: float, factor: int = 10) -> np.ndarray:
    """A smooth random field like :func:`smooth_field`, drawn ``factor`` times coarser and interpolated
    (cheap for smoothing lengths of many pixels)."""
    from scipy import ndimage

    coarse = smooth_field(rng, (shape[0] // factor + 2, shape[1] // factor + 2), sigma_px / factor, sd)
    fine = ndimage.zoom(coarse, factor, order=1)
    return fine[: shape[0], : shape[1]].astype("float32")


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


def write_scenes(rng, frame: Frame, tcode: np.ndarray, land, structure, dem: np.ndarray, out: Path) -> list[Path]:
    transform, shape = utm_frame(frame)
    type_u = _to_utm(tcode.astype("float32") + 1, frame, transform, shape, Resampling.nearest)
    covered = type_u > 0
    fc_u = _to_utm(structure.cover, frame, transform, shape, Resampling.bilinear)
    canopy_u = np.stack([_to_utm(b, frame, transform, shape, Resampling.nearest) for b in structure.canopy])
    cover_u = _to_utm(land.cover, frame, transform, shape, Resampling.nearest).astype("uint8")
    road_u = _to_utm(land.road_share, frame, transform, shape, Resampling.bilinear)
    phase_u = _to_utm(land.phase, frame, transform, shape, Resampling.nearest)
    normals_u = np.stack([_to_utm(b, frame, transform, shape, Resampling.bilinear)
                          for b in terrain_normals(dem, frame.res)])
    normals_u[0][~covered] = 1.0
    absolute = rng.normal(0, GEOLOCATION_SD_M, 2)  # the whole stack's geolocation error (east, north), m
    paths = []
    for i, (date, cover) in enumerate(zip(DATES, CLOUD_COVER)):
        baseline = "03.01" if i == 2 else "05.10"
        offset = 0 if baseline < "04.00" else 1000
        season = 1.0 + 0.04 * np.sin(i / len(DATES) * np.pi)
        gain = season * (1 + rng.normal(0, 0.02, len(BANDS)))[:, None, None]
        base = land_surface(canopy_u, fc_u, cover_u, road_u, phase_u, date) * illumination(normals_u, date)
        aot = rng.normal(0, AOT_SD) + _coarse_field(rng, shape, AOT_FIELD_PX, AOT_SD)
        base = base + np.asarray(AOT_SENSITIVITY, dtype="float32")[:, None, None] * aot[None].astype("float32")
        shift = absolute + rng.normal(0, COREGISTRATION_SD_M, 2)
        base = misregister(base, shift)
        water = misregister((cover_u == landmod.COVER["water"].code).astype("float32"), shift) > 0.5
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
