"""Cloud-masked median composites of Sentinel-2 L2A scenes on the target grid.

:func:`load_reflectance` reprojects every scene lazily onto the target
GeoBox with odc-stac and an exact, chunk-independent reader (:mod:`.warp`;
bilinear for reflectance, nearest for SCL), scales DNs
to reflectance and masks SCL classes; :func:`median_composite` reduces over
time.  Everything stays a Dask graph until written block by block.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np
import odc.stac
import xarray as xr
from odc.geo.geobox import GeoBox

from ..errors import SceneError
from . import bandpass, qa
from .scenes import Scene
from .sensors import REFLECTANCE_RANGE, SENTINEL2_L2A
from .warp import ExactDriver

log = logging.getLogger(__name__)

_STAC_CFG = {"*": {"assets": {"*": {"nodata": 0, "data_type": "uint16"}}}}


def _invalid(scenes: list[Scene], ds: xr.Dataset, bands: tuple[str, ...], scl_mask, qa_flags
             ) -> tuple[xr.DataArray, xr.DataArray]:
    """Per-pixel 'do not use' masks from the sensor's quality band(s): cloud and shadow (the classes or flags
    :data:`.qa.CLOUD_SCL_CLASSES` / :data:`.qa.CLOUD_QA_FLAGS` that are masked), and everything else masked
    (no data, fill, snow, saturation, other classes)."""
    sensor = scenes[0].sensor
    mask = ds[scenes[0].mask_band].fillna(0)  # nodata (0) may arrive as NaN from the float load
    if sensor is SENTINEL2_L2A:
        def part(m, i):
            return qa.scl_cloud_and_other(m, tuple(scl_mask))[i]
    else:
        def part(m, i):
            m = m.astype("uint16")
            return qa.qa_pixel_cloud_and_other(m, tuple(qa_flags))[i] | ((m == 0) & (i == 1))
    cloud, other = (xr.apply_ufunc(part, mask, kwargs={"i": i}, dask="parallelized", output_dtypes=[bool])
                    for i in (0, 1))
    if "qa_radsat" in ds:  # each scene's own band numbers: OLI blue is band 2, TM/ETM+ blue band 1
        bits = xr.DataArray(np.array([qa.radsat_bits(tuple(int(s.sensor.bands["nir08" if b == "nir" else b]
                                                                  .removeprefix("SR_B")) for b in bands))
                                      for s in scenes], dtype="uint16"), dims="time")
        other = other | ((ds["qa_radsat"].fillna(0).astype("uint16") & bits) != 0)
    return cloud, other


def _dilated(invalid: xr.DataArray, px: int) -> xr.DataArray:
    """Grow the (time, y, x) invalid mask by ``px`` pixels in y and x, across chunk edges."""
    if px <= 0:
        return invalid
    data = invalid.data.map_overlap(lambda b: qa.dilate(b, px), depth={0: 0, 1: px, 2: px}, boundary=False,
                                    dtype=bool)
    return invalid.copy(data=data)


def masked(cloud: xr.DataArray, other: xr.DataArray, dilation_px: int) -> xr.DataArray:
    """What the mosaic does not use: cloud and shadow grown by ``dilation_px`` (``mosaic.mask_dilation_px``),
    and the other masked pixels as they are (growing fill would eat Landsat 7 SLC-off stripes and swath
    edges, growing snow would not remove cloud)."""
    return _dilated(cloud, dilation_px) | other


def _load_group(scenes: list[Scene], gbox: GeoBox, bands, scl_mask, qa_flags, chunk_px, dilation_px=0,
                adjustments: list[bandpass.SceneAdjustment] | None = None):
    mask_band = scenes[0].mask_band
    extra = ["qa_radsat"] if all("qa_radsat" in s.item.assets for s in scenes) and mask_band == "qa_pixel" else []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)
        ds = odc.stac.load(
            [s.item for s in scenes], bands=[*bands, mask_band, *extra], geobox=gbox,
            chunks={"x": chunk_px, "y": chunk_px},
            resampling={"*": "bilinear", mask_band: "nearest", "qa_radsat": "nearest"}, dtype="float32",
            stac_cfg=_STAC_CFG, groupby="id", preserve_original_order=True, driver=ExactDriver(),
        )
    if ds.sizes["time"] != len(scenes):
        raise SceneError(f"loaded {ds.sizes['time']} time steps from {len(scenes)} scenes; items must have distinct ids")
    valid = ~masked(*_invalid(scenes, ds, bands, scl_mask, qa_flags), dilation_px)
    for b in bands:  # an observation is used only where every band has data
        valid = valid & (ds[b] > 0)
    scale = xr.DataArray(np.array([s.scale for s in scenes], dtype="float64"), dims="time")
    offset = xr.DataArray(np.array([s.offset for s in scenes], dtype="float64"), dims="time")
    out = xr.Dataset(coords=ds.coords)
    adjustments = adjustments or [bandpass.NONE] * len(scenes)
    for b in bands:
        refl = ds[b] * scale + offset
        if any(b in a.rows for a in adjustments):  # HLS line inverted, per scene (slope 1, offset 0: unchanged)
            slope, off = (xr.DataArray(np.array([a.rows.get(b, (1.0, 0.0))[i] for a in adjustments]), dims="time")
                          for i in (0, 1))
            refl = bandpass.oli_to_msi(refl, slope, off)
        out[b] = refl.where(valid).astype("float32")
    return out, valid


def load_reflectance(scenes: list[Scene], gbox: GeoBox, bands: tuple[str, ...], scl_mask: tuple[int, ...],
                     chunk_px: int = 1024, qa_flags: tuple[str, ...] = qa.DEFAULT_QA_MASK,
                     dilation_px: int = 0, adjustments: list[bandpass.SceneAdjustment] | None = None
                     ) -> tuple[xr.Dataset, xr.DataArray]:
    """Masked surface reflectance (time, y, x) per band, and the validity mask.

    Scenes of different sensors are loaded per sensor and put back in the
    order given.  ``adjustments`` (one per scene, :func:`.bandpass.plan`)
    bring Landsat OLI reflectance to Sentinel-2A's bandpasses; none by default.
    Returns float32 reflectances (NaN where nodata or masked) and the boolean
    ``valid`` DataArray.
    """
    adjustments = adjustments or [bandpass.NONE] * len(scenes)
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(scenes):
        groups.setdefault(s.sensor.name, []).append(i)
    parts = [_load_group([scenes[i] for i in idx], gbox, bands, scl_mask, qa_flags, chunk_px, dilation_px,
                         [adjustments[i] for i in idx])
             for idx in groups.values()]
    order = np.argsort(np.concatenate([np.asarray(idx) for idx in groups.values()]), kind="stable")
    refl = xr.concat([p[0] for p in parts], dim="time", coords="minimal", compat="override").isel(time=order)
    valid = xr.concat([p[1] for p in parts], dim="time", coords="minimal", compat="override").isel(time=order)
    refl = refl.assign_coords(scene_id=("time", [s.id for s in scenes]))
    return refl, valid


def scene_valid_fractions(valid: xr.DataArray) -> np.ndarray:
    """Fraction of target-grid pixels that are valid, per scene."""
    return valid.mean(("y", "x")).compute().to_numpy()


def nanmedian_last_axis(a: np.ndarray) -> np.ndarray:
    """Median over the last axis ignoring NaN; NaN where nothing is valid.

    Same definition as ``numpy.nanmedian`` (mean of the two middle values for an
    even count) but by one sort: NaNs sort to the end, so the valid values of
    each pixel are its first ``n`` sorted entries.  Several times faster than
    ``numpy.nanmedian``, which goes through masked arrays for short axes.
    """
    s = np.sort(a, axis=-1)
    n = np.count_nonzero(~np.isnan(a), axis=-1)
    lo = np.maximum((n - 1) // 2, 0)[..., None]
    hi = np.maximum(n // 2, 0)[..., None]
    lo_v = np.take_along_axis(s, lo, axis=-1)[..., 0]
    hi_v = np.take_along_axis(s, hi, axis=-1)[..., 0]
    med = (lo_v + hi_v) / np.asarray(2, dtype=a.dtype)
    return np.where(n > 0, med, np.asarray(np.nan, dtype=a.dtype))


def median_composite(refl: xr.Dataset, valid: xr.DataArray) -> tuple[xr.Dataset, xr.DataArray]:
    """Per-band median over time of valid observations, and the valid count.

    The time axis is made one chunk (the spatial chunks bound memory).
    """
    refl = refl.chunk({"time": -1})
    comp = xr.apply_ufunc(nanmedian_last_axis, refl, input_core_dims=[["time"]], dask="parallelized",
                          output_dtypes=["float32"], keep_attrs=True)
    count = valid.sum("time").astype("uint16")
    return comp, count


def spectral_indices(comp: xr.Dataset) -> xr.Dataset:
    """NDVI (Rouse 1974), EVI (Huete et al. 2002), NDMI (Gao 1996, nir08/swir16), NBR (Key & Benson 2006).

    Computed only where every reflectance the index uses lies in :data:`REFLECTANCE_RANGE` (else NaN), so
    NDVI, NDMI and NBR stay within [-1, 1]; EVI is NaN where its denominator (L + NIR + 6 red − 7.5 blue,
    L = 1) is not positive or its value falls outside [-1, 1].
    """
    lo, hi = REFLECTANCE_RANGE
    ok = {k: (comp[k] > lo) & (comp[k] <= hi) for k in ("blue", "red", "nir", "nir08", "swir16", "swir22")}
    b, r, n = comp["blue"], comp["red"], comp["nir"]
    out = xr.Dataset(coords=comp.coords)
    out["ndvi"] = ((n - r) / (n + r)).where(ok["nir"] & ok["red"])
    den = n + 6 * r - 7.5 * b + 1
    evi = 2.5 * (n - r) / den
    out["evi"] = evi.where(ok["nir"] & ok["red"] & ok["blue"] & (den > 0) & (abs(evi) <= 1))
    out["ndmi"] = ((comp["nir08"] - comp["swir16"]) / (comp["nir08"] + comp["swir16"])).where(ok["nir08"] & ok["swir16"])
    out["nbr"] = ((n - comp["swir22"]) / (n + comp["swir22"])).where(ok["nir"] & ok["swir22"])
    return out.astype("float32")


def nearest_to_median_block(stack: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-consistent choice over a (band, time, y, x) block.

    For every pixel, the valid acquisition (all bands finite) whose band vector
    is closest (Euclidean) to the per-band median vector of the valid
    acquisitions; ties go to the earlier one.  Returns the chosen reflectances
    (band, y, x) and the chosen time index (y, x), −1 where nothing is valid.
    """
    s64 = stack.astype("float64")
    med = nanmedian_last_axis(np.moveaxis(s64, 1, -1))  # (band, y, x)
    d2 = np.sum((s64 - med[:, None]) ** 2, axis=0)  # (time, y, x); NaN where invalid
    d2 = np.where(np.isfinite(d2), d2, np.inf)
    idx = np.argmin(d2, axis=0)
    none = ~np.isfinite(np.min(d2, axis=0))
    chosen = np.take_along_axis(stack, idx[None, None], axis=1)[:, 0]
    chosen[:, none] = np.nan
    return chosen.astype(stack.dtype), np.where(none, -1, idx).astype("int16")


def nearest_to_median_composite(refl: xr.Dataset) -> tuple[xr.Dataset, xr.DataArray]:
    """Pixel-consistent composite (all bands from one acquisition) and the source date.

    The source date is returned as days since 1970-01-01 (int32, −1 where no
    valid observation).
    """
    bands = list(refl.data_vars)
    arr = refl.to_array("band").chunk({"band": -1, "time": -1}).data  # (band, time, y, x)
    days = (refl.time.values.astype("datetime64[D]").astype("int64")).astype("int32")

    def block(a):
        c, i = nearest_to_median_block(a)
        d = np.where(i >= 0, days[np.maximum(i, 0)], -1).astype("float32")
        return np.concatenate([c, d[None]], axis=0)[:, None]

    import dask.array as dsa

    out = dsa.map_blocks(block, arr, dtype="float32", chunks=((len(bands) + 1,), (1,), *arr.chunks[2:]))[:, 0]
    coords = {k: v for k, v in refl.coords.items() if "time" not in v.dims}
    comp = xr.Dataset({b: (("y", "x"), out[i]) for i, b in enumerate(bands)}, coords=coords)
    date = xr.DataArray(out[len(bands)].astype("int32"), dims=("y", "x"), coords=coords, name="source_date")
    return comp, date


@dataclass(frozen=True)
class Composite:
    """A composite on one GeoBox, lazy until written."""

    reflectance: xr.Dataset
    valid_count: xr.DataArray
    source_date: xr.DataArray | None
    scenes_used: tuple[str, ...]
    valid_fraction: tuple[float, ...]  # per input scene, over the GeoBox
    method: str
    bandpass: tuple[str, ...] = ()  # per input scene: the adjustment's label (.bandpass.SceneAdjustment)
    bandpass_summary: str = "none"  # .bandpass.describe of the adjustments


def build_composite(scenes: list[Scene], gbox: GeoBox, *, bands, scl_mask, qa_flags, method: str = "median",
                    min_valid_fraction: float = 0.0, chunk_px: int = 1024, dilation_px: int = 0,
                    harmonise: str = "auto") -> Composite:
    """Load, mask and composite ``scenes`` on ``gbox``; scenes with too little valid area are skipped.

    ``harmonise`` (``mosaic.harmonise``) decides the Landsat bandpass adjustment (:func:`.bandpass.plan`).
    """
    adjustments = bandpass.plan(scenes, tuple(bands), harmonise)
    refl, valid = load_reflectance(scenes, gbox, tuple(bands), tuple(scl_mask), chunk_px, tuple(qa_flags), dilation_px,
                                   adjustments)
    frac = scene_valid_fractions(valid)
    keep = frac >= min_valid_fraction
    for s, f, k in zip(scenes, frac, keep):
        if not k:
            log.info("mosaic: skip %s, valid fraction %.3f < %.3f", s.id, f, min_valid_fraction)
    if not keep.any():
        raise SceneError(f"no scene has a valid fraction >= {min_valid_fraction} over the grid {tuple(gbox.shape)}")
    sel = np.flatnonzero(keep)
    refl, valid = refl.isel(time=sel), valid.isel(time=sel)
    comp, count = median_composite(refl, valid)
    date = None
    if method == "nearest_to_median":
        comp, date = nearest_to_median_composite(refl)
    elif method != "median":
        raise ValueError(f"unknown compositing method {method!r}")
    return Composite(comp, count, date, tuple(scenes[i].id for i in sel), tuple(float(f) for f in frac), method,
                     tuple(a.label for a in adjustments), bandpass.describe([adjustments[i] for i in sel]))
