"""Single-tree benchmark: the whole CHM file → register path (tops, crowns, heights, DBH, Monte Carlo carbon,
totals, the register's GeoPackage and GeoParquet) against a plain scipy reference on the same CHM.

    python benchmarks/bench_trees.py [--side-px 2000 --res 0.5 --tile-px 512]

The CHM is a synthetic forest of paraboloid crowns (heights 8-30 m, crown radius 0.15 h + 1 m, Poisson
positions, NaN gaps), written once as a GeoTIFF in EPSG:4549.  The project's path
(:func:`forestcarbon.flows.single_trees.register` + ``write_outputs``) reads it tile by tile.  The reference is
the textbook local-maximum filter on the whole array in memory: a cell is a top when it equals
``scipy.ndimage.maximum_filter`` over a disc of the window at its height class (one pass per class of the
variable window, rounded to whole cells) and is >= hmin; no tie rule, no crowns, no carbon.  Each path runs in
a fresh process (peak resident memory of its own); the project's path also on a quarter of the area with the
same tiles, and its memory beyond the trees' own table is what should not grow with the area.  Printed: tree
counts, trees per second and CHM megapixels per second of both, the ratio of seconds, km² per hour, peak
memory.  Last line: JSON.
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


def write_chm(path: Path, side_px: int, res: float) -> None:
    import rasterio
    from rasterio.transform import from_origin

    chm = forest_chm(side_px, res).astype("float32")
    with rasterio.open(path, "w", driver="GTiff", width=side_px, height=side_px, count=1, dtype="float32",
                       crs="EPSG:4549", transform=from_origin(500_000.0, 3_200_000.0 + side_px * res, res, res),
                       nodata=float("nan"), tiled=True, blockxsize=256, blockysize=256, compress="deflate") as dst:
        dst.write(chm, 1)


def field_trees(seed: int = 1) -> "object":
    """Field trees for the DBH model: ln D = 0.3 + 1.0 ln H + N(0, 0.25) (a synthetic broadleaf relation)."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    h = rng.uniform(5, 32, 400)
    return pd.DataFrame({"species_group": "evergreen_broadleaf", "height_m": h, "status": "alive",
                         "height_source": "measured", "dbh_cm": np.exp(0.3 + np.log(h) + rng.normal(0, 0.25, h.size))})


def _run(kind: str, chm_path: str, res: float, tile_px: int, out: str):
    import rasterio

    t0 = time.perf_counter()
    if kind == "reference":
        with rasterio.open(chm_path) as src:
            chm = src.read(1).astype("float64")
        n = reference_tops(chm, res)
    else:
        from pyproj import CRS

        from forestcarbon.config import default_allometry_path
        from forestcarbon.flows import single_trees as st
        from forestcarbon.flows.layout import Layout
        from forestcarbon.models.allometry import load_registry

        det = st.Detection(window_m=WINDOW, min_height_m=HMIN, smooth="median", smooth_px=3, tile_px=tile_px)
        car = st.CarbonSettings()
        table, crowns, totals, models = st.register([{"name": "bench", "chm": Path(chm_path)}], det, car,
                                                    load_registry(default_allometry_path()), field_trees(), "log_h",
                                                    CRS.from_epsg(4549), None, None)
        st.write_outputs(Layout(Path(out)), table, crowns, CRS.from_epsg(4549), totals, models)
        n = len(table)
    return time.perf_counter() - t0, n


def main(argv=None) -> int:
    import tempfile

    ap = argparse.ArgumentParser()
    ap.add_argument("--side-px", type=int, default=2000)
    ap.add_argument("--res", type=float, default=0.5)
    ap.add_argument("--tile-px", type=int, default=512)
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        runs = {}
        for tag, side in (("full", a.side_px), ("quarter", a.side_px // 2)):
            chm = tmp / f"chm_{tag}.tif"
            write_chm(chm, side, a.res)
            kinds = ("reference", "register") if tag == "full" else ("register",)
            for k in kinds:
                (secs_n, peak) = run_isolated(_run, k, str(chm), a.res, a.tile_px, str(tmp / f"out_{tag}_{k}"))
                runs[(tag, k)] = {"seconds": secs_n[0], "trees": secs_n[1], "peak_rss_mb": peak,
                                  "mpx": side * side / 1e6, "km2": (side * a.res) ** 2 / 1e6}
    full, ref, quarter = runs[("full", "register")], runs[("full", "reference")], runs[("quarter", "register")]
    out = {"side_px": a.side_px, "res_m": a.res, "tile_px": a.tile_px, "area_km2": full["km2"], "chm_mpx": full["mpx"],
           "trees": full["trees"], "reference_tops": ref["trees"],
           "seconds": {"register": full["seconds"], "reference": ref["seconds"]},
           "trees_per_s": {"register": full["trees"] / full["seconds"], "reference": ref["trees"] / ref["seconds"]},
           "chm_mpx_per_s": {"register": full["mpx"] / full["seconds"], "reference": ref["mpx"] / ref["seconds"]},
           "ratio_register_to_reference": full["seconds"] / ref["seconds"],
           "km2_per_hour": full["km2"] / full["seconds"] * 3600,
           "peak_rss_mb": {"register": full["peak_rss_mb"], "reference": ref["peak_rss_mb"],
                           "register_quarter_area": quarter["peak_rss_mb"]},
           "trees_quarter_area": quarter["trees"]}
    print(f"{a.side_px} x {a.side_px} px at {a.res} m ({full['km2']:.2f} km2, {full['mpx']:.1f} Mpx), tiles of "
          f"{a.tile_px} px")
    print(f"  register (tops, crowns, DBH, carbon, files): {full['trees']} trees in {full['seconds']:.1f} s = "
          f"{out['trees_per_s']['register']:.0f} trees/s, {out['chm_mpx_per_s']['register']:.2f} Mpx/s, "
          f"peak {full['peak_rss_mb']:.0f} MB")
    print(f"  reference (scipy maximum_filter tops only): {ref['trees']} tops in {ref['seconds']:.1f} s = "
          f"{out['trees_per_s']['reference']:.0f} tops/s, {out['chm_mpx_per_s']['reference']:.2f} Mpx/s, "
          f"peak {ref['peak_rss_mb']:.0f} MB")
    print(f"  ratio {out['ratio_register_to_reference']:.1f}; {out['km2_per_hour']:.1f} km2/h; quarter area: "
          f"{quarter['trees']} trees, peak {quarter['peak_rss_mb']:.0f} MB")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
