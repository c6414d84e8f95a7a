"""Airborne LiDAR of the synthetic county: LAS 1.4 / LAZ tiles in EPSG:4549.

Ground returns (class 2) lie on a hilly DEM; vegetation returns (classes 3-5)
come from a canopy whose top height and cover are the stand's structure
(:mod:`forestcarbon_synth.structure`: height from biomass and stocking, cover
from biomass and crown closure; at the stand's density beside roads, which take
their share of each cell's pulses to the ground).  Village roofs return as buildings (class 6, 4-12 m above ground),
and water absorbs most pulses: four in five over the river and ponds return
nothing, the rest lie on the surface as class 9 (ASPRS LAS 1.4 classes).  A
flight block covers about half the county (:func:`lidar_block`); a few high outliers ("birds",
class 1) are added per tile so that the pipeline's outlier filter has work to do.
"""

from __future__ import annotations

from pathlib import Path

import laspy
import numpy as np
from pyproj import CRS as PCRS
from scipy import ndimage

from .land import COVER
from .landscape import CRS, Frame


BLOCK_SHARE = (0.5, 0.4)  # of the county's side, west-east and south-north; synthetic


def lidar_block(frame: Frame) -> tuple[float, float, float, float]:
    """Extent of the flight block, snapped to 1 km tiles and at least 2 km a side: 5 km × 4 km of a 10 km
    county (20 % of its area), 2 km × 2 km of a 3 km test county.  Bureaus fly LiDAR over large contiguous
    blocks and lay calibration plots inside them (:func:`forestcarbon_synth.ground.cluster_centres` doubles
    the plot grid there), so a third of the plots lie under LiDAR, spread over about twenty 1 km squares --
    the pipeline's default spatial CV block -- and a LiDAR + optical model can be fitted and tested under
    spatial CV.  (A larger block costs the demo about 6 s of LiDAR processing per 1 km tile.)"""
    s = frame.size_m
    w, h = (max(2000.0, round(f * s / 1000) * 1000) for f in BLOCK_SHARE)
    x0 = frame.x0 + round(0.25 * s / 1000) * 1000
    y0 = frame.y0 + round(0.15 * s / 1000) * 1000
    return (x0, y0, min(x0 + w, frame.x0 + s), min(y0 + h, frame.y0 + s))


def write_tiles(rng, frame: Frame, dem: np.ndarray, structure, land, out: Path,
                density_per_m2: float = 0.5, tile_m: float = 1000.0) -> list[Path]:
    """Tiles over :func:`lidar_block`; canopy top height and cover from ``structure``
    (:class:`forestcarbon_synth.structure.Structure`)."""
    out.mkdir(parents=True, exist_ok=True)
    htop = structure.height_m
    cover = structure.cover * 0.9 * (1 - land.road_share)
    water = land.cover == COVER["water"].code
    bx0, by0, bx1, by1 = lidar_block(frame)
    paths = []
    top = frame.y0 + frame.size_m
    for tx in np.arange(bx0, bx1, tile_m):
        for ty in np.arange(by0, by1, tile_m):
            n = int(density_per_m2 * tile_m * tile_m)
            x = tx + rng.uniform(0, tile_m, n)
            y = ty + rng.uniform(0, tile_m, n)
            col = (x - frame.x0) / frame.res - 0.5
            row = (top - y) / frame.res - 0.5
            ground = ndimage.map_coordinates(dem, [row, col], order=1, mode="nearest")
            ci = np.clip(row.round().astype(int), 0, frame.n - 1), np.clip(col.round().astype(int), 0, frame.n - 1)
            hit = rng.random(n) < cover[ci]
            zrel = np.where(hit, htop[ci] * rng.beta(4.0, 1.6, n), np.abs(rng.normal(0, 0.04, n)))
            under = ~hit & (rng.random(n) < 0.15)
            zrel = np.where(under, rng.uniform(0.2, 1.8, n), zrel)
            cls = np.where(~hit & ~under, 2, np.where(zrel < 0.5, 3, np.where(zrel < 2, 4, 5))).astype("uint8")
            roof = land.roof_m[ci]
            building = ~hit & (roof > 0)
            zrel = np.where(building, roof + rng.normal(0, 0.1, n), zrel)
            cls[building] = 6
            on_water = water[ci]
            zrel = np.where(on_water, np.abs(rng.normal(0, 0.03, n)), zrel)
            cls[on_water] = 9
            z = ground + zrel
            nb = 20  # birds and multipath outliers
            z[:nb] = ground[:nb] + rng.uniform(150, 400, nb)
            cls[:nb] = 1
            header = laspy.LasHeader(point_format=6, version="1.4")
            header.offsets = np.array([tx, ty, 0.0])
            header.scales = np.array([0.01, 0.01, 0.01])
            header.add_crs(PCRS.from_user_input(CRS))
            keep = ~on_water | (rng.random(n) < 0.2)  # water absorbs four pulses in five
            keep[:nb] = True
            x, y, z, cls, n = x[keep], y[keep], z[keep], cls[keep], int(keep.sum())
            las = laspy.LasData(header)
            las.x, las.y, las.z = x, y, z
            las.classification = cls
            las.return_number = np.ones(n, dtype="uint8")
            las.number_of_returns = np.ones(n, dtype="uint8")
            las.intensity = np.clip(rng.normal(300, 60, n), 0, 65535).astype("uint16")
            p = out / f"tile_{int(tx / 1000)}_{int(ty / 1000)}.laz"
            las.write(p)
            paths.append(p)
    return paths
