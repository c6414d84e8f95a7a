"""Exact, chunk-independent reprojection for odc-stac loads.

odc-loader's own reader reprojects each Dask chunk through GDAL's warper, whose
approximate transformer interpolates coordinates linearly across the chunk
(error threshold 0.125 px; rasterio 1.4 does not pass a smaller one), so a
pixel's value depends on the chunk it falls in: measured here up to 40.6 DN at
1024-px chunks, 0.7 DN at 128 px (``benchmarks/check_warp_accuracy.py --driver odc``).

:class:`ExactDriver` is an odc-loader reader driver that computes, for every
target pixel centre, its exact position in the source raster (pyproj, the same
PROJ pipeline GDAL uses) and samples there: bilinear from the four surrounding
source pixel centres, weights renormalised over those that hold data (as GDAL
does with a nodata value); nearest for masks.  Each output pixel depends only on
its own centre, so the result is the same for every chunk size.  Target pixels
larger than the source's get the bilinear sample at their centre, not an
average (the composites here are 10 m from 10-30 m bands).

Pass it as ``odc.stac.load(..., driver=ExactDriver())``.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import rasterio
from odc.geo.geobox import GeoBox
from odc.loader import RioDriver, resolve_dst_nodata, resolve_src_nodata
from pyproj import Transformer


@lru_cache(maxsize=16)  # 16 chunks x 2 x 8 MB at 1024 px
def _centres_in(src_crs_wkt: str, dst_crs_wkt: str, affine, shape: tuple[int, int]):
    """Target pixel centres in the source CRS, (x, y) arrays of ``shape`` (cached: all bands of a scene share them)."""
    h, w = shape
    cols = affine.c + (np.arange(w) + 0.5) * affine.a
    rows = affine.f + (np.arange(h) + 0.5) * affine.e
    xx, yy = np.meshgrid(cols, rows)
    if src_crs_wkt == dst_crs_wkt:
        return xx, yy
    tf = Transformer.from_crs(dst_crs_wkt, src_crs_wkt, always_xy=True)
    return tf.transform(xx, yy)


def _to_pixel(affine, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map coordinates to (col, row) pixel coordinates of ``affine`` (plain numpy; affine's operator is slow)."""
    inv = ~affine
    return inv.a * x + inv.b * y + inv.c, inv.d * x + inv.e * y + inv.f


def sample(src: np.ndarray, col: np.ndarray, row: np.ndarray, resampling: str, nodata, fill) -> np.ndarray:
    """Values of ``src`` (2-D) at pixel coordinates (col, row) (pixel-is-area: centres at +0.5):
    ``bilinear`` from the four surrounding centres, weights renormalised over those holding data (as
    GDAL does with a nodata value), or ``nearest``.  ``nodata`` marks source pixels without data (None:
    all hold data; NaN works too); positions with no data around them, or outside, get ``fill``."""
    h, w = src.shape
    ok = np.ones(src.shape, bool) if nodata is None else (src != nodata)
    if src.dtype.kind == "f":
        ok &= ~np.isnan(src)
    flat, okf = src.ravel(), ok.ravel()
    if resampling == "nearest":
        c, r = np.floor(col).astype(np.int64), np.floor(row).astype(np.int64)
        inside = (c >= 0) & (r >= 0) & (c < w) & (r < h)
        idx = np.clip(r, 0, h - 1) * w + np.clip(c, 0, w - 1)
        return np.where(inside & okf[idx], flat[idx], fill)
    if resampling != "bilinear":
        raise ValueError(f"exact reprojection supports bilinear and nearest, not {resampling!r}")
    c, r = col - 0.5, row - 0.5  # relative to pixel centres
    c0, r0 = np.floor(c), np.floor(r)
    fc, fr = (c - c0).astype("float32"), (r - r0).astype("float32")
    c0, r0 = c0.astype(np.int64), r0.astype(np.int64)
    acc = np.zeros(col.shape, "float64")
    wsum = np.zeros(col.shape, "float32")
    for dr, dc in ((0, 0), (0, 1), (1, 0), (1, 1)):
        rr, cc = r0 + dr, c0 + dc
        inside = (cc >= 0) & (rr >= 0) & (cc < w) & (rr < h)
        idx = np.clip(rr, 0, h - 1) * w + np.clip(cc, 0, w - 1)
        wt = (fr if dr else 1 - fr) * (fc if dc else 1 - fc)
        wt = np.where(inside & okf[idx], wt, 0)
        acc += flat[idx] * wt
        wsum += wt
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(wsum > 1e-6, acc / wsum, fill)


class ExactReader:
    """Reads one band of one source onto a destination GeoBox (a chunk), exactly (see the module)."""

    def __init__(self, src, ctx) -> None:
        self._src = src
        self._ctx = ctx

    def read(self, cfg, dst_geobox: GeoBox, *, dst: np.ndarray | None = None, selection=None):
        band = self._src.band
        roi = (slice(0, dst_geobox.shape[0]), slice(0, dst_geobox.shape[1]))
        with rasterio.open(self._src.uri) as ds:
            dtype = np.dtype(cfg.dtype or ds.dtypes[band - 1])
            out = dst[roi] if dst is not None else np.empty(dst_geobox.shape, dtype=dtype)
            src_nodata = resolve_src_nodata(ds.nodatavals[band - 1], cfg)
            dst_nodata = resolve_dst_nodata(out.dtype, cfg, src_nodata)
            fill = dst_nodata if dst_nodata is not None else 0
            x, y = _centres_in(ds.crs.to_wkt(), dst_geobox.crs.to_wkt(), dst_geobox.affine, tuple(dst_geobox.shape))
            col, row = _to_pixel(ds.transform, x, y)
            ok = np.isfinite(col) & np.isfinite(row)
            if not ok.any():
                out[...] = fill
                return roi, out
            # the source window the chunk needs, with one pixel for the kernel
            c0 = int(max(np.floor(col[ok].min()) - 1, 0))
            r0 = int(max(np.floor(row[ok].min()) - 1, 0))
            c1 = int(min(np.ceil(col[ok].max()) + 2, ds.width))
            r1 = int(min(np.ceil(row[ok].max()) + 2, ds.height))
            if c1 <= c0 or r1 <= r0:
                out[...] = fill
                return roi, out
            pix = ds.read(band, window=rasterio.windows.Window(c0, r0, c1 - c0, r1 - r0))
        out[...] = sample(pix, col - c0, row - r0, cfg.resampling, src_nodata, fill).astype(out.dtype)
        return roi, out


class ExactDriver(RioDriver):
    """odc-loader reader driver with :class:`ExactReader` (GDAL environment handling as ``RioDriver``)."""

    def open(self, src, ctx) -> ExactReader:
        return ExactReader(src, ctx)
