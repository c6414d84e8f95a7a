"""The synthetic county's stand structure, L2A residual errors and LiDAR block (forestcarbon_synth)."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest

from forestcarbon_synth import sentinel2, structure
from forestcarbon_synth.forest_types import FOREST_TYPES
from forestcarbon_synth.landscape import make_frame
from forestcarbon_synth.lidar import lidar_block


def _stand(agb: float, n: int = 40, seed: int = 0):
    """One fir stand of uniform AGB over an n x n grid (one parcel, id 0)."""
    ids = np.zeros((n, n), dtype="int32")
    tcode = np.zeros((n, n), dtype="uint8")  # FOREST_TYPES[0]: Chinese fir
    return structure.stand_structure(np.random.default_rng(seed), ids, np.full((n, n), agb, "float32"), tcode)


def test_height_and_stocking_give_back_the_biomass():
    """AGB = s · (H / h_coef)^(1/0.45), cell by cell: what an area-based LiDAR model can learn from height."""
    st = _stand(150.0)
    h_coef = FOREST_TYPES[0].h_coef
    np.testing.assert_allclose(st.stocking * (st.height_m / h_coef) ** (1 / 0.45), 150.0, rtol=1e-4)


def test_reflectance_saturates_where_height_does_not():
    """From 100 to 200 Mg/ha (same stand draws) canopy cover gains only a few per cent, so reflectance
    barely moves, while canopy height grows by 2^0.45 = 1.37."""
    lo, hi = _stand(100.0), _stand(200.0)
    assert float(np.mean(hi.cover - lo.cover)) < 0.06
    np.testing.assert_allclose(hi.height_m / lo.height_m, 2**0.45, rtol=1e-5)
    # tall canopies are darker in NIR (crown shadow): the weak optical signal past closure
    assert float(np.mean(hi.canopy[3])) < float(np.mean(lo.canopy[3]))


def test_no_trees_no_structure():
    ids = np.zeros((5, 5), dtype="int32")
    tcode = np.full((5, 5), len(FOREST_TYPES), dtype="uint8")
    st = structure.stand_structure(np.random.default_rng(1), ids, np.zeros((5, 5), "float32"), tcode)
    assert (st.height_m == 0).all() and (st.cover == 0).all()


def test_terrain_illumination_by_hand():
    """Flat ground: factor 1.  A 20 % slope facing due south at 29° N in December is lit more than flat
    ground, one facing north less; by TERRAIN_RESIDUAL × (cos i / cos z − 1), computed here from the
    sun vector."""
    n = 20
    flat = sentinel2.terrain_normals(np.zeros((n, n)), 10.0)
    np.testing.assert_allclose(sentinel2.illumination(flat, "2024-12-07"), 1.0, rtol=1e-6)
    rows = np.arange(n)[:, None] * np.ones((1, n))
    south = sentinel2.terrain_normals(-rows * 10.0 * 0.2, 10.0)  # rows run south; rising northwards: faces south
    zen, az = sentinel2.sun_angles("2024-12-07")
    assert 0.9 < zen < 1.05 and np.pi / 2 < az < np.pi  # ~55°, from the south-east before noon
    normal = np.array([0.0, -0.2, 1.0]) / np.sqrt(1.04)  # east, north, up
    sun = np.array([np.sin(zen) * np.sin(az), np.sin(zen) * np.cos(az), np.cos(zen)])
    expected = 1 + sentinel2.TERRAIN_RESIDUAL * (normal @ sun / np.cos(zen) - 1)
    np.testing.assert_allclose(sentinel2.illumination(south, "2024-12-07")[5:-5, 5:-5], expected, rtol=1e-5)
    north = sentinel2.terrain_normals(rows * 10.0 * 0.2, 10.0)
    assert expected > 1 > float(sentinel2.illumination(north, "2024-12-07")[10, 10])


def test_misregistration_moves_the_ground():
    """A scene whose geolocation is off by +10 m east, +10 m north shows each feature one pixel east and
    one pixel north (one row up) of where it is."""
    a = np.zeros((7, 7), "float32")
    a[3, 3] = 1.0
    b = sentinel2.misregister(a, np.array([10.0, 10.0]))
    assert b[2, 4] == pytest.approx(1.0) and b.sum() == pytest.approx(1.0)


def test_lidar_block_holds_a_share_of_the_plots(small_scene):
    """The flight block (2 × 2 km of the 3 km county) holds its doubled plot grid: more than its area
    share of the plots, over several 1 km CV blocks; and 20 % of the 10 km demo county."""
    scene = Path(small_scene).parent
    plots = gpd.read_file(scene / "ground/plots.gpkg")
    x0, y0, x1, y1 = lidar_block(make_frame(3))
    c = plots.geometry.centroid
    inside = (c.x > x0) & (c.x < x1) & (c.y > y0) & (c.y < y1)
    area_share = (x1 - x0) * (y1 - y0) / 3000**2
    assert inside.mean() > area_share
    assert len(set(zip((c.x[inside] // 1000).astype(int), (c.y[inside] // 1000).astype(int)))) >= 3
    f10 = make_frame(10)
    b = lidar_block(f10)
    assert (b[2] - b[0]) * (b[3] - b[1]) / f10.size_m**2 == pytest.approx(0.2)
