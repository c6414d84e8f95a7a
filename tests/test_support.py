"""Matched support: window means of the features, the same for training plots and map pixels."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from forestcarbon.models.support import window_at, window_mean, window_px


def _loop_mean(a, k):
    """Direct definition: the mean of the k x k window when all of it lies in the array and is finite."""
    h = k // 2
    out = np.full(a.shape, np.nan)
    for i in range(h, a.shape[-2] - h):
        for j in range(h, a.shape[-1] - h):
            w = a[..., i - h:i + h + 1, j - h:j + h + 1]
            ok = np.isfinite(w).all(axis=(-2, -1))
            out[..., i, j] = np.where(ok, np.nanmean(np.where(np.isfinite(w), w, np.nan), axis=(-2, -1)), np.nan)
    return out


def test_window_side_nearest_to_the_plot_area():
    assert window_px(667.0, 10.0) == 3  # 900 m² is nearer than 100 or 2,500
    assert window_px(400.0, 10.0) == 1  # 100 m² (off by 300) is nearer than 900 m² (off by 500)
    assert window_px(2000.0, 10.0) == 5 and window_px(667.0, 30.0) == 1


def test_window_mean_equals_the_direct_definition():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(3, 17, 23))
    a[1, 5, 7] = np.nan  # a gap: every window holding it has no value
    got = window_mean(a, 3)
    want = _loop_mean(a, 3)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert np.isnan(got[1, 4:7, 6:9]).all() and np.isfinite(got[0, 4:7, 6:9]).all()


def test_training_windows_equal_the_map_windows_and_chunks_do_not_matter():
    rng = np.random.default_rng(2)
    a = rng.gamma(2.0, 30.0, size=(4, 40, 50)).astype("float32")
    full = window_mean(a, 3)
    lazy = da.from_array(a, chunks=(4, 13, 17)).map_overlap(window_mean, k=3, depth={0: 0, 1: 1, 2: 1},
                                                             boundary=np.nan, dtype="float32").compute()
    np.testing.assert_allclose(lazy, full, rtol=1e-6)

    def read(r0, r1, c0, c1):  # boundless read, NaN outside
        out = np.full((4, r1 - r0, c1 - c0), np.nan)
        rr0, cc0 = max(r0, 0), max(c0, 0)
        rr1, cc1 = min(r1, a.shape[1]), min(c1, a.shape[2])
        out[:, rr0 - r0:rr1 - r0, cc0 - c0:cc1 - c0] = a[:, rr0:rr1, cc0:cc1]
        return out

    rows, cols = np.array([5, 20, 0, 39]), np.array([7, 33, 10, 49])
    got = window_at(read, rows, cols, 3)
    np.testing.assert_allclose(got[:2], full[:, rows[:2], cols[:2]].T, rtol=1e-6)
    assert np.isnan(got[2:]).all()  # windows leaving the raster have no value, as on the map's edge
