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


def sample(src: np.ndarray, src_affine, x: np.ndarray, y: np.ndarray, resampling: str, nodata,
           fill) -> np.ndarray:
    """Values of ``src`` (2-D, pixel-is-area ``src_affine``) at map positions (x, y): ``bilinear`` or ``nearest``.

    ``nodata`` marks source pixels without data (None: all hold data; NaN works too); positions whose
    neighbours hold no data, or that fall outside the raster, get ``fill``.
    """
    col, row = ~src_affine * (x, y)
    h, w = src.shape
    ok_src = np.ones(src.shape, bool) if nodata is None else ~((src == nodata) | np.isnan(src.astype("float64")))
    if resampling == "nearest":
        c, r = np.floor(col).astype(np.int64), np.floor(row).astype(np.int64)
        inside = (c >= 0) & (r >= 0) & (c < w) & (r < h)
        c, r = np.where(inside, c, 0), np.where(inside, r, 0)
        good = inside & ok_src[r, c]
        return np.where(good, src[r, c], fill)
    if resampling != "bilinear":
        raise ValueError(f"exact reprojection supports bilinear and nearest, not {resampling!r}")
    c, r = col - 0.5, row - 0.5  # relative to pixel centres
    c0, r0 = np.floor(c).astype(np.int64), np.floor(r).astype(np.int64)
    fc, fr = c - c0, r - r0
    acc = np.zeros(x.shape)
    wsum = np.zeros(x.shape)
    for dr, dc, wt in ((0, 0, (1 - fr) * (1 - fc)), (0, 1, (1 - fr) * fc), (1, 0, fr * (1 - fc)), (1, 1, fr * fc)):
        rr, cc = r0 + dr, c0 + dc
        inside = (cc >= 0) & (rr >= 0) & (cc < w) & (rr < h)
        rr, cc = np.where(inside, rr, 0), np.where(inside, cc, 0)
        good = inside & ok_src[rr, cc] & (wt > 0)
        acc += np.where(good, src[rr, cc] * wt, 0.0)
        wsum += np.where(good, wt, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(wsum > 1e-9, acc / wsum, fill)


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
            col, row = ~ds.transform * (x, y)
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
            win = rasterio.windows.Window(c0, r0, c1 - c0, r1 - r0)
            pix = ds.read(band, window=win)
            win_affine = ds.window_transform(win)
        out[...] = sample(pix, win_affine, x, y, cfg.resampling, src_nodata, fill).astype(out.dtype)
        return roi, out


class ExactDriver(RioDriver):
    """odc-loader reader driver with :class:`ExactReader` (GDAL environment handling as ``RioDriver``)."""

    def open(self, src, ctx) -> ExactReader:
        return ExactReader(src, ctx)
