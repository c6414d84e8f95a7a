"""UAV LiDAR of the synthetic county's windows: dense LAS 1.4 / LAZ tiles (point format 6, EPSG:4549).

Pulses fall uniformly (Poisson) at ``density_per_m2`` (25 first returns per m², a UAV LiDAR flown at
60-80 m) over each window of :mod:`forestcarbon_synth.trees`.  A pulse returns first from the highest
crown surface above its (x, y) -- cones and half-ellipsoids of the stem map, rendered on a 0.25 m
lattice to find the two highest crowns over each spot, then evaluated exactly at the pulse's (x, y) --
so a tree under a taller crown gets no first return there (the trap of CHM-based detection).  With the
top crown type's gap probability (:data:`forestcarbon_synth.trees.CROWNS`, synthetic) the pulse goes on
to the next crown below (a second return) and, with that crown's gap probability, to the ground (a last
return); a pulse through no crown hits the ground.  Heights above ground are added to the DEM
interpolated bilinearly at the pulse (as :func:`forestcarbon_synth.lidar.write_tiles` does).

Classes (ASPRS LAS 1.4): ground 2; vegetation 5, or 4 where the return is under 2 m above ground (low
crowns, and shrubs under 15 % of the open pulses in forest and grove cells, 0.2-1.8 m); building roofs of
the village's built-up cells 6 (the cell's roof height, as the airborne tiles have them); water 9 on the
level water surface, four pulses in five absorbed; a few noise outliers 7 per tile (birds above, multipath
below ground).  Range noise N(0, 3 cm) on every return.  Tiles are 150 m squares named
``uav_<window>_<x0>_<y0>.laz``.
"""

from __future__ import annotations

from pathlib import Path

import laspy
import numpy as np
import pandas as pd
from pyproj import CRS as PCRS
from scipy import ndimage

from .land import COVER
from .landscape import CRS, Frame
from .trees import CROWNS, crown_surface

RENDER_RES_M = 0.25
TILE_M = 150.0
SHRUB_SHARE = 0.15
RANGE_SD_M = 0.03


class Canopy:
    """The two highest crowns over each 0.25 m lattice cell of a window (owners -1 where none)."""

    def __init__(self, t: pd.DataFrame, bounds, res: float = RENDER_RES_M):
        self.x = t["x"].to_numpy(float)
        self.y = t["y"].to_numpy(float)
        self.h = t["height_m"].to_numpy(float)
        self.r = t["crown_diameter_m"].to_numpy(float) / 2
        self.ln = t["crown_length_m"].to_numpy(float)
        self.shape = t["crown_shape"].to_numpy() == "cone"  # True: cone
        self.gap = np.array([CROWNS[k].gap for k in t["type"]]) if len(t) else np.zeros(0)
        pad = float(self.r.max()) + 1 if len(t) else 1.0
        self.x0, self.y0 = bounds[0] - pad, bounds[1] - pad
        self.res = res
        self.nx = int(np.ceil((bounds[2] - bounds[0] + 2 * pad) / res))
        self.ny = int(np.ceil((bounds[3] - bounds[1] + 2 * pad) / res))
        self.owner1, self.owner2 = self._render()

    def _render(self):
        n, res = len(self.x), self.res
        size = self.nx * self.ny
        top = np.full(size, -np.inf)
        o1 = np.full(size, -1, dtype=np.int64)
        o2 = np.full(size, -1, dtype=np.int64)
        if n == 0:
            return o1, o2
        ix0 = np.clip(np.floor((self.x - self.r - self.x0) / res).astype(int), 0, self.nx - 1)
        ix1 = np.clip(np.floor((self.x + self.r - self.x0) / res).astype(int), 0, self.nx - 1)
        iy0 = np.clip(np.floor((self.y - self.r - self.y0) / res).astype(int), 0, self.ny - 1)
        iy1 = np.clip(np.floor((self.y + self.r - self.y0) / res).astype(int), 0, self.ny - 1)
        nc, nr = ix1 - ix0 + 1, iy1 - iy0 + 1
        cnt = nc * nr
        tree = np.repeat(np.arange(n), cnt)
        k = np.arange(cnt.sum()) - np.repeat(np.cumsum(cnt) - cnt, cnt)
        ix = ix0[tree] + k % nc[tree]
        iy = iy0[tree] + k // nc[tree]
        d = np.hypot(self.x0 + (ix + 0.5) * res - self.x[tree], self.y0 + (iy + 0.5) * res - self.y[tree])
        z = crown_surface(self.shape[tree], self.h[tree], self.r[tree], self.ln[tree], d)
        ok = np.isfinite(z)
        tree, z, pix = tree[ok], z[ok], (iy * self.nx + ix)[ok]
        np.maximum.at(top, pix, z)
        is_top = z >= top[pix]
        o1[pix[is_top]] = tree[is_top]
        rest = tree != o1[pix]
        second = np.full(size, -np.inf)
        np.maximum.at(second, pix[rest], z[rest])
        is2 = rest & (z >= second[pix])
        o2[pix[is2]] = tree[is2]
        return o1, o2

    def surface(self, owner: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Height of crown ``owner`` (NaN for -1 or outside its crown) at (x, y)."""
        o = np.maximum(owner, 0)
        z = crown_surface(self.shape[o], self.h[o], self.r[o], self.ln[o], np.hypot(x - self.x[o], y - self.y[o]))
        return np.where(owner >= 0, z, np.nan)

    def layers(self, x: np.ndarray, y: np.ndarray):
        """(top height, top owner, lower height, lower owner) at each (x, y); NaN / -1 where none."""
        ix = np.clip(((x - self.x0) / self.res).astype(int), 0, self.nx - 1)
        iy = np.clip(((y - self.y0) / self.res).astype(int), 0, self.ny - 1)
        pix = iy * self.nx + ix
        a, b = self.owner1[pix], self.owner2[pix]
        za, zb = self.surface(a, x, y), self.surface(b, x, y)
        swap = np.nan_to_num(zb, nan=-np.inf) > np.nan_to_num(za, nan=-np.inf)
        top_z, top_o = np.where(swap, zb, za), np.where(swap, b, a)
        low_z, low_o = np.where(swap, za, zb), np.where(swap, a, b)
        top_o = np.where(np.isfinite(top_z), top_o, -1)
        low_o = np.where(np.isfinite(low_z), low_o, -1)
        return top_z, top_o, low_z, low_o


def _dem_at(dem: np.ndarray, frame: Frame, x, y) -> np.ndarray:
    col = (x - frame.x0) / frame.res - 0.5
    row = (frame.y0 + frame.size_m - y) / frame.res - 0.5
    return ndimage.map_coordinates(dem, [row, col], order=1, mode="nearest")


def _cell(field: np.ndarray, frame: Frame, x, y):
    col = np.clip(((x - frame.x0) / frame.res).astype(int), 0, frame.n - 1)
    row = np.clip(((frame.y0 + frame.size_m - y) / frame.res).astype(int), 0, frame.n - 1)
    return field[row, col]


def window_points(rng, frame: Frame, dem: np.ndarray, land, trees: pd.DataFrame, bounds,
                  density_per_m2: float = 25.0) -> dict:
    """Returns of one window: dict of x, y, z, classification, return_number, number_of_returns,
    intensity (arrays)."""
    x0, y0, x1, y1 = bounds
    canopy = Canopy(trees, bounds)
    n = rng.poisson(density_per_m2 * (x1 - x0) * (y1 - y0))
    px, py = rng.uniform(x0, x1, n), rng.uniform(y0, y1, n)
    top_z, top_o, low_z, low_o = canopy.layers(px, py)
    crown = top_o >= 0
    cover = _cell(land.cover, frame, px, py)
    roof = _cell(land.roof_m, frame, px, py)
    water = cover == COVER["water"].code
    # first returns
    zrel = np.where(crown, top_z, 0.0)
    cls = np.where(crown, 5, 2).astype("uint8")
    open_ = ~crown
    building = open_ & (roof > 0)
    zrel = np.where(building, roof, zrel)
    cls[building] = 6
    wooded = np.isin(cover, [COVER[c].code for c in ("forest", "clearcut", "village_trees")])
    shrub = open_ & ~building & wooded & (rng.random(n) < SHRUB_SHARE)
    zrel = np.where(shrub, rng.uniform(0.2, 1.8, n), zrel)
    cls[shrub] = 4
    cls[open_ & water & ~building] = 9
    # later returns through gaps: the next crown below, then the ground
    gap_top = canopy.gap[np.maximum(top_o, 0)]
    through = crown & (rng.random(n) < gap_top)
    has_low = through & (low_o >= 0) & (np.nan_to_num(low_z, nan=np.inf) < top_z - 0.5)
    gap_low = canopy.gap[np.maximum(low_o, 0)]
    to_ground = (through & ~has_low) | (has_low & (rng.random(n) < gap_low))
    nret = 1 + has_low.astype("uint8") + to_ground.astype("uint8")
    xs = [px, px[has_low], px[to_ground]]
    ys = [py, py[has_low], py[to_ground]]
    zr = [zrel, low_z[has_low], np.zeros(int(to_ground.sum()))]
    cl = [cls, np.full(int(has_low.sum()), 5, "uint8"), np.full(int(to_ground.sum()), 2, "uint8")]
    rn = [np.ones(n, "uint8"), np.full(int(has_low.sum()), 2, "uint8"), nret[to_ground]]
    nr = [nret, nret[has_low], nret[to_ground]]
    x, y, zrel, cls = np.concatenate(xs), np.concatenate(ys), np.concatenate(zr), np.concatenate(cl)
    rnum, nrets = np.concatenate(rn), np.concatenate(nr)
    veg = cls == 5
    cls[veg & (zrel < 2.0)] = 4
    noise = rng.normal(0, RANGE_SD_M, x.size)
    zrel = np.where(cls == 2, np.abs(noise), zrel + noise)
    z = _dem_at(dem, frame, x, y) + zrel
    keep = ~((cls == 9) & (rng.random(x.size) < 0.8))  # water absorbs four pulses in five
    inten = np.where(cls == 2, rng.normal(420, 80, x.size), np.where(cls == 6, rng.normal(600, 90, x.size),
                                                                     rng.normal(260, 60, x.size)))
    inten = inten / nrets
    return {"x": x[keep], "y": y[keep], "z": z[keep], "classification": cls[keep], "return_number": rnum[keep],
            "number_of_returns": nrets[keep], "intensity": np.clip(inten[keep], 0, 65535).astype("uint16")}


def write_windows(rng, frame: Frame, dem: np.ndarray, land, trees: pd.DataFrame, windows, out: Path,
                  density_per_m2: float = 25.0, tile_m: float = TILE_M) -> list[Path]:
    """LAZ tiles of every window into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for wi, w in enumerate(windows.itertuples()):
        b = w.geometry.bounds
        pts = window_points(rng, frame, dem, land, trees[trees["window"] == w.window], b, density_per_m2)
        ntx = int(np.ceil((b[2] - b[0]) / tile_m - 1e-9))
        kx = np.minimum(((pts["x"] - b[0]) // tile_m).astype(int), ntx - 1)
        ky = np.minimum(((pts["y"] - b[1]) // tile_m).astype(int), int(np.ceil((b[3] - b[1]) / tile_m - 1e-9)) - 1)
        key = kx * 1000 + ky
        order = np.argsort(key, kind="stable")
        uniq, start = np.unique(key[order], return_index=True)
        for u, sl in zip(uniq, np.split(order, start[1:])):
            tx, ty = b[0] + (u // 1000) * tile_m, b[1] + (u % 1000) * tile_m
            p = {k: v[sl] for k, v in pts.items()}
            nb, nl = 10, 5  # birds above, multipath below ground
            ox, oy = rng.uniform(tx, tx + tile_m, nb + nl), rng.uniform(ty, ty + tile_m, nb + nl)
            oz = _dem_at(dem, frame, ox, oy) + np.r_[rng.uniform(40, 200, nb), -rng.uniform(1, 5, nl)]
            m = len(p["x"]) + nb + nl
            header = laspy.LasHeader(point_format=6, version="1.4")
            header.offsets = np.array([tx, ty, 0.0])
            header.scales = np.array([0.01, 0.01, 0.01])
            header.add_crs(PCRS.from_user_input(CRS))
            las = laspy.LasData(header)
            las.x = np.r_[p["x"], ox]
            las.y = np.r_[p["y"], oy]
            las.z = np.r_[p["z"], oz]
            las.classification = np.r_[p["classification"], np.full(nb + nl, 7, "uint8")]
            las.return_number = np.r_[p["return_number"], np.ones(nb + nl, "uint8")]
            las.number_of_returns = np.r_[p["number_of_returns"], np.ones(nb + nl, "uint8")]
            las.intensity = np.r_[p["intensity"], np.full(nb + nl, 50, "uint16")]
            las.point_source_id = np.full(m, wi + 1, "uint16")
            path = out / f"uav_{w.window}_{int(tx)}_{int(ty)}.laz"
            las.write(path)
            paths.append(path)
    return paths
