"""Slope and aspect against hand-computed planes."""

from __future__ import annotations

import numpy as np
import pytest

from forestcarbon.rs.terrain import slope_aspect


@pytest.mark.parametrize("gx,gy,aspect", [(0.1, 0.0, 270.0), (-0.1, 0.0, 90.0), (0.0, 0.1, 180.0), (0.0, -0.1, 0.0),
                                          (0.1, 0.1, 225.0)])
def test_planes(gx, gy, aspect):
    """z = gx·east + gy·north: slope = atan(|g|); aspect faces downhill, clockwise from north."""
    res = 2.0
    rows, cols = np.mgrid[0:6, 0:7]
    east, north = cols * res, -rows * res  # rows run south
    z = 100 + gx * east + gy * north
    s, a = slope_aspect(z, res)
    inner = (slice(1, -1), slice(1, -1))
    np.testing.assert_allclose(s[inner], np.degrees(np.arctan(np.hypot(gx, gy))), rtol=1e-6)
    np.testing.assert_allclose(a[inner], aspect, atol=1e-4)
    assert np.isnan(s[0]).all() and np.isnan(s[:, -1]).all()


def test_flat_has_no_aspect():
    s, a = slope_aspect(np.full((5, 5), 7.0), 1.0)
    assert s[2, 2] == 0 and np.isnan(a[2, 2])
