"""Matched support: the model learns and predicts on the same area.

A plot's AGB is a mean over its footprint (a one-mu plot: 667 m²), while a map pixel is 100 m².  Trained
on plot means and applied to single pixels, a nonlinear model sees feature values it was not trained on
(a single pixel varies more than a plot mean), and the map inherits that mismatch.  With the ``window``
support both sides use the same features: the mean of each feature over a k × k window of pixels whose
area is the nearest to the plot area (k odd, so the window is centred: 3 × 3 = 900 m² at 10 m for 667 m²
plots).  Training takes the window around the pixel holding each plot's centre; the map takes the window
around every pixel, so each pixel's AGB is the density of the plot-sized neighbourhood centred on it.

A window mean is defined only where all k² pixels hold the feature (an edge of LiDAR coverage or of a cloud
gap gives no value rather than a mean over fewer pixels, which would be another support again).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage


def window_px(plot_area_m2: float, pixel_m: float) -> int:
    """The odd window side (pixels) whose area is nearest to ``plot_area_m2`` (at least 1)."""
    side = math.sqrt(plot_area_m2) / pixel_m
    cands = [k for k in range(1, int(side) + 4, 2)]
    return min(cands, key=lambda k: (abs(k * k * pixel_m ** 2 - plot_area_m2), k))


def window_mean(a: np.ndarray, k: int) -> np.ndarray:
    """Mean over the k × k window centred on each pixel of the last two axes; NaN where any window pixel is
    NaN or the window leaves the array."""
    a = np.asarray(a, dtype="float64")
    if k == 1:
        return a.astype("float32")
    finite = np.isfinite(a)
    vals = np.where(finite, a, 0.0)
    size = (1,) * (a.ndim - 2) + (k, k)
    s = ndimage.uniform_filter(vals, size=size, mode="constant", cval=0.0)
    n = ndimage.uniform_filter(finite.astype("float64"), size=size, mode="constant", cval=0.0)
    out = np.where(n > 1 - 0.5 / (k * k), s / np.where(n > 0, n, 1), np.nan)
    h = k // 2
    out[..., :h, :] = np.nan
    out[..., -h:, :] = np.nan
    out[..., :, :h] = np.nan
    out[..., :, -h:] = np.nan
    return out.astype("float32")


def window_at(read_window, rows, cols, k: int) -> np.ndarray:
    """(n, features) window means at pixels (``rows``, ``cols``): ``read_window(r0, r1, c0, c1)`` returns the
    (features, r1 - r0, c1 - c0) array of that window (NaN outside the raster)."""
    h = k // 2
    out = []
    for r, c in zip(rows, cols):
        patch = read_window(r - h - 1, r + h + 2, c - h - 1, c + h + 2)  # one pixel beyond: the edge rule sees it
        out.append(window_mean(patch, k)[:, h + 1, h + 1])
    return np.asarray(out, dtype="float32")
