"""Single-tree detection benchmark: the project's tree tops (lidR ``lmf`` transcription, variable window,
tiled with buffers) and crowns (lidR ``dalponte2016``) against a plain scipy reference.

    python benchmarks/bench_trees.py [--side-px 2000 --res 0.5]

The CHM is a synthetic forest of paraboloid crowns (heights 8-30 m, crown radius 0.15 h + 1 m, Poisson
positions, NaN gaps).  The reference is the textbook local-maximum filter: a cell is a top when it equals
``scipy.ndimage.maximum_filter`` over a disc of the window at its height class (one pass per class of the
variable window, rounded to whole cells) and is >= hmin; it has no tie rule and no crowns.  Printed: top
counts of both, the share of the project's tops the reference also finds, seconds of detection alone and of
detection + crowns, the ratio to the reference, the throughput in km2 per hour at 0.5 m, and the peak memory
of each path in a fresh process (it should grow with the tile, not the CHM).  Last line: JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _isolated import run_isolated  # noqa: E402

WINDOW = (1.0, 0.15, 2.0, 8.0)  # the trees config's default rule: ws = 1 + 0.15 h in [2, 8] m
HMIN = 5.0


def forest_chm(side_px: int, res: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    area = (side_px * res) ** 2
    n = rng.poisson(area / 40.0)  # ~250 trees per ha
    tx, ty = rng.uniform(0, side_px * res, n), rng.uniform(0, side_px * res, n)
    th = rng.uniform(8, 30, n)
    tr = 0.15 * th + 1.0
    chm = np.zeros((side_px, side_px))
    for x, y, h, r in zip(tx, ty, th, tr):
        c0, c1 = int(max((x - r) / res, 0)), int(min((x + r) / res + 1, side_px))
        r0, r1 = int(max((y - r) / res, 0)), int(min((y + r) / res + 1, side_px))
        if c1 <= c0 or r1 <= r0:
            continue
        cx = (np.arange(c0, c1) + 0.5) * res
        cy = (np.arange(r0, r1) + 0.5) * res
        d2 = (cx[None, :] - x) ** 2 + (cy[:, None] - y) ** 2
        z = h * (1 - d2 / r**2)
        np.maximum(chm[r0:r1, c0:c1], np.where(z > 0, z, 0), out=chm[r0:r1, c0:c1])
    chm += rng.normal(0, 0.05, chm.shape)
    chm[rng.random(chm.shape) < 0.002] = np.nan
    return chm


def reference_tops(chm: np.ndarray, res: float) -> int:
    from scipy import ndimage

    filled = np.where(np.isfinite(chm), chm, -np.inf)
    ws = np.clip(WINDOW[0] + WINDOW[1] * filled, WINDOW[2], WINDOW[3])
    tops = np.zeros(chm.shape, bool)
    for w in np.unique(np.round(ws[np.isfinite(ws)] / res) * res):
        r = int(np.floor(w / 2 / res + 1e-9))
        yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
        disc = (xx * res) ** 2 + (yy * res) ** 2 <= (w / 2) ** 2 + 1e-8
        mx = ndimage.maximum_filter(filled, footprint=disc, mode="constant", cval=-np.inf)
        sel = np.abs(np.round(ws / res) * res - w) < 1e-9
        tops |= sel & (filled >= mx) & (filled >= HMIN)
    return int(tops.sum())


def _run(kind: str, side_px: int, res: float, tile_px: int) -> float:
    from rasterio.transform import from_origin

    from forestcarbon.rs.lidar.trees import detect_trees

    chm = forest_chm(side_px, res)
    t0 = time.perf_counter()
    if kind == "reference":
        reference_tops(chm, res)
    else:
        detect_trees(chm, from_origin(0, side_px * res, res, res), WINDOW, HMIN, tile_px=tile_px,
                     smooth=None, segmentation="dalponte2016" if kind == "crowns" else None, max_cr_m=5.0)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--side-px", type=int, default=2000)
    ap.add_argument("--res", type=float, default=0.5)
    ap.add_argument("--tile-px", type=int, default=1024)
    a = ap.parse_args(argv)
    from rasterio.transform import from_origin

    from forestcarbon.rs.lidar.trees import detect_trees

    chm = forest_chm(a.side_px, a.res)
    tf = from_origin(0, a.side_px * a.res, a.res, a.res)
    tops, _ = detect_trees(chm, tf, WINDOW, HMIN, tile_px=a.tile_px, segmentation=None)
    n_ref = reference_tops(chm, a.res)
    del chm
    t = {k: run_isolated(_run, k, a.side_px, a.res, a.tile_px) for k in ("reference", "tops", "crowns")}
    # peak memory against the CHM's size: the same tiles on a quarter of the area
    small = {k: run_isolated(_run, k, a.side_px // 2, a.res, a.tile_px)[1] for k in ("tops", "crowns")}
    km2 = (a.side_px * a.res) ** 2 / 1e6
    out = {"side_px": a.side_px, "res_m": a.res, "area_km2": km2, "tops": int(len(tops)), "reference_tops": n_ref,
           "seconds": {k: v[0] for k, v in t.items()}, "peak_rss_mb": {k: v[1] for k, v in t.items()},
           "peak_rss_mb_quarter_area": small,
           "ratio_tops_to_reference": t["tops"][0] / t["reference"][0],
           "ratio_tops_and_crowns_to_reference": t["crowns"][0] / t["reference"][0],
           "km2_per_hour_tops_and_crowns": km2 / t["crowns"][0] * 3600}
    print(f"{a.side_px} x {a.side_px} px at {a.res} m ({km2:.2f} km2): {out['tops']} tops (scipy maximum_filter "
          f"reference: {n_ref})")
    for k, (s, m) in t.items():
        print(f"  {k:10s} {s:7.2f} s  peak {m:7.0f} MB")
    print(f"ratio to reference: tops {out['ratio_tops_to_reference']:.2f}, tops + crowns "
          f"{out['ratio_tops_and_crowns_to_reference']:.2f}; {out['km2_per_hour_tops_and_crowns']:.1f} km2/h with crowns")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
