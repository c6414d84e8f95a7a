"""LiDAR benchmark: the full path (read, normalise, metrics, CHM, DTM, write COGs) against
bare LAZ decompression (laspy + lazrs reading the same files, nothing else).

Run from the repository root: ``python benchmarks/bench_lidar.py [--tiles 20 --points-per-tile 1000000]``.
Prints, as its last line, a JSON object with stage, points_per_s, decode_points_per_s,
ratio_to_decode, peak_rss_mb and peak_rss_mb_by_tiles (full path in a fresh process on
a quarter of the tiles and on all of them: memory should not grow with the tile count).
Peak memory is the main process's peak plus twice the largest tile worker's (two
workers run at once), an upper bound of the total.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _isolated import run_isolated  # noqa: E402


def make_tiles(folder: Path, n_tiles: int, points: int, tile_m: float = 500.0, seed: int = 0) -> list[Path]:
    """Tiles in a row-major block, EPSG:4549: ground on a gentle slope (30 %), canopy returns above it."""
    import laspy
    from pyproj import CRS

    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n_tiles)))
    paths = []
    for k in range(n_tiles):
        x0 = 400_000.0 + (k % side) * tile_m
        y0 = 3_200_000.0 + (k // side) * tile_m
        x = x0 + rng.uniform(0, tile_m, points)
        y = y0 + rng.uniform(0, tile_m, points)
        ground = 300 + 0.05 * (x - 400_000) + 10 * np.sin(y / 150.0)
        is_g = rng.random(points) < 0.3
        h = np.where(is_g, 0.0, 25 * rng.beta(4, 1.6, points))
        hdr = laspy.LasHeader(point_format=6, version="1.4")
        hdr.offsets = np.array([x0, y0, 0.0])
        hdr.scales = np.array([0.01, 0.01, 0.01])
        hdr.add_crs(CRS.from_epsg(4549))
        las = laspy.LasData(hdr)
        las.x, las.y, las.z = x, y, ground + h
        las.classification = np.where(is_g, 2, 5).astype("uint8")
        p = folder / f"t{k:03d}.laz"
        las.write(p)
        paths.append(p)
    return paths


def decode_only(paths) -> float:
    import laspy

    t0 = time.perf_counter()
    for p in paths:
        with laspy.open(p) as f:
            for pts in f.chunk_iterator(2_000_000):
                _ = (pts.x, pts.y, pts.z, pts.classification)
    return time.perf_counter() - t0


def full_path(paths: list[str], out: str) -> float:
    import dask

    from forestcarbon.rs import lidar

    t0 = time.perf_counter()
    with dask.config.set(scheduler="threads", num_workers=2):
        tiles = lidar.index_tiles([Path(p) for p in paths])
        gbox = lidar.geobox_over_tiles(tiles, 10.0)
        fine = lidar.geobox_over_tiles(tiles, 1.0)
        out = Path(out)
        lidar.lidar_products(tiles, lidar.Targets(metrics=gbox, chm=fine, dtm=fine), lidar.Options(),
                             {k: out / f"{k}.tif" for k in ("metrics", "chm", "dtm")}, workdir=out / "work")
    return time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiles", type=int, default=20)
    ap.add_argument("--points-per-tile", type=int, default=1_000_000)
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = make_tiles(tmp, a.tiles, a.points_per_tile)
        n = a.tiles * a.points_per_tile
        dec = decode_only(paths)
        quarter = max(1, a.tiles // 4)
        (tmp / "o1").mkdir()
        (tmp / "o2").mkdir()
        _, main_q, worker_q = run_isolated(full_path, [str(x) for x in paths[:quarter]], str(tmp / "o1"), with_workers=True)
        secs, main, worker = run_isolated(full_path, [str(x) for x in paths], str(tmp / "o2"), with_workers=True)
    # the main process and two tile workers run at once: their peaks added bound the total
    peak_q, peak = main_q + 2 * worker_q, main + 2 * worker
    result = {
        "stage": "lidar", "workload": f"{a.tiles} LAZ tiles x {a.points_per_tile} points (30 % ground), 10 m metrics + 1 m CHM/DTM",
        "points_per_s": round(n / secs), "decode_points_per_s": round(n / dec), "ratio_to_decode": round(dec / secs, 3),
        "peak_rss_mb": round(peak, 1), "peak_rss_mb_by_tiles": {str(quarter): round(peak_q, 1), str(a.tiles): round(peak, 1)},
        "peak_rss_mb_main_and_worker": [round(main, 1), round(worker, 1)],
        "reference": "laspy + lazrs decoding the same files (x, y, z, classification), nothing else",
    }
    print(json.dumps(result))


if __name__ == "__main__":
    sys.exit(main())
