"""Zonal benchmark: the one-pass engine (``vector.zonal_engine.zonal_stats``: exactextract coverage fractions
once per parcel set, reused for every band of every layer, Hilbert partitions as dask tasks) against
exactextract's ``sum`` called once per layer file on the same parcels and files, as ``vector.zonal.zonal_table``
calls it (a GeoDataFrame in, ``output="pandas"``).

Workload: a Voronoi tessellation of ``--parcels`` random points clipped to a square 10 m raster in EPSG:4549
whose side gives ~``--parcel-ha`` ha per parcel; three layer files on that grid (tiled, deflate GeoTIFFs,
float32): ``agb`` (1 band, nodata NaN), ``carbon`` (3 bands, nodata -9999), ``sd`` (1 band, nodata NaN), with
a smooth field plus noise and ~12 % nodata ("non-forest") patches, plus NaN holes in ``carbon``.

The engine runs in a fresh process (``_isolated.run_isolated``) so its peak RSS is its own; it runs again at
other partition sizes (``--rss-partition-sizes``) to show that memory follows the partition.
``reference_wkb_seconds`` is exactextract's ``sum`` per layer again, but fed the parcels as WKB through the
engine's feature source: it separates the gain of computing coverage once from the gain of not serialising
every parcel to GeoJSON text.

Run from the repository root: ``python benchmarks/bench_zonal.py [--parcels 400000]`` (``--parcels 20000`` for a
quick run).  Prints, as its last line, a JSON object: stage, parcels, layers, bands, seconds,
reference_seconds, speedup_vs_reference, max_relative_difference, peak_rss_mb, peak_rss_mb_by_partition_size,
and ``overlay`` (null here; ``benchmarks/bench_overlay.py`` reports the overlay figures).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _isolated import run_isolated  # noqa: E402

RES = 10.0
X0, Y1 = 500_000.0, 3_250_000.0
CRS = "EPSG:4549"
LAYERS = {"agb": (["agb_mg_ha"], float("nan")), "carbon": (["carbon_t_ha", "carbon_above_t_ha", "carbon_below_t_ha"],
                                                              -9999.0),
          "sd": (["agb_sd_mg_ha"], float("nan"))}
BLOCK = 512


def side_for(parcels: int, parcel_ha: float) -> int:
    return int(math.ceil(math.sqrt(parcels * parcel_ha * 10_000) / RES / 16) * 16)


def write_layers(folder: Path, side: int, seed: int = 0) -> list[str]:
    """The layer files, written block by block (bounded memory)."""
    import rasterio
    from affine import Affine
    from rasterio.windows import Window

    folder.mkdir(parents=True, exist_ok=True)
    tr = Affine(RES, 0, X0, 0, -RES, Y1)
    paths, tau = [], 2 * np.pi
    for k, (name, (bands, nodata)) in enumerate(LAYERS.items()):
        path = folder / f"{name}.tif"
        with rasterio.open(path, "w", driver="GTiff", width=side, height=side, count=len(bands), dtype="float32",
                           crs=CRS, transform=tr, nodata=nodata, tiled=True, blockxsize=BLOCK, blockysize=BLOCK,
                           compress="deflate", predictor=3, BIGTIFF="IF_SAFER") as dst:
            for r0 in range(0, side, BLOCK):
                for c0 in range(0, side, BLOCK):
                    h, w = min(BLOCK, side - r0), min(BLOCK, side - c0)
                    rows, cols = np.mgrid[r0:r0 + h, c0:c0 + w]
                    x, y = cols * RES, rows * RES
                    rng = np.random.default_rng([seed, k, r0, c0])
                    field = 120 + 40 * np.sin(tau * x / 3000 + k) * np.cos(tau * y / 4100)
                    forest = np.sin(tau * x / 1300) + np.cos(tau * y / 1700 + 0.5) > -1.4  # ~12 % non-forest
                    out = np.empty((len(bands), h, w), "float32")
                    for b in range(len(bands)):
                        v = (field * (1 - 0.3 * b) + rng.normal(0, 15, (h, w))).astype("float32")
                        v[~forest] = nodata
                        if name == "carbon":
                            v[rng.random((h, w)) < 0.002] = np.nan  # stray NaN holes beside the nodata value
                        out[b] = v
                    dst.write(out, window=Window(c0, r0, w, h))
                    for b, n in enumerate(bands):
                        dst.set_band_description(b + 1, n)
        paths.append(str(path))
    return paths


def write_parcels(path: Path, parcels: int, side: int, seed: int = 0) -> int:
    """A Voronoi tessellation of ``parcels`` random points clipped to the raster, as GeoParquet."""
    import geopandas as gpd
    import shapely

    rng = np.random.default_rng(seed)
    ext = side * RES
    box = shapely.box(X0, Y1 - ext, X0 + ext, Y1)
    pts = shapely.points(rng.uniform([X0, Y1 - ext], [X0 + ext, Y1], (parcels, 2)))
    cells = shapely.get_parts(shapely.voronoi_polygons(shapely.multipoints(pts), extend_to=box))
    cells = shapely.intersection(cells, box)
    rng.shuffle(cells)  # input order unrelated to space, as a parcel layer's usually is
    gdf = gpd.GeoDataFrame({"parcel_id": [f"P{i:07d}" for i in range(len(cells))]}, geometry=cells, crs=CRS)
    gdf.to_parquet(path)
    return len(gdf)


def engine(parcels_path: str, layers: list[str], partition_size: int, workers: int, cache_mb: int,
           out: str | None = None) -> float:
    """The full path: ``zonal_stats`` over the parcels (read beforehand) and all layers; saves the table."""
    import dask
    import geopandas as gpd

    from forestcarbon.vector.zonal_engine import zonal_stats

    parcels = gpd.read_parquet(parcels_path)
    t0 = time.perf_counter()
    with dask.config.set(scheduler="threads" if workers > 1 else "synchronous", num_workers=workers):
        df = zonal_stats(parcels, layers, id_field="parcel_id", partition_size=partition_size, cache_mb=cache_mb)
    secs = time.perf_counter() - t0
    if out:
        df.to_parquet(out)
    return secs


def reference(parcels_path: str, layers: list[str], wkb: bool = False) -> tuple[float, dict]:
    """(seconds, {band: sums}) of exactextract ``sum`` once per layer file."""
    import geopandas as gpd
    import shapely
    from exactextract import exact_extract

    from forestcarbon.vector.coverage import _WkbSource

    parcels = gpd.read_parquet(parcels_path)
    vec = _WkbSource(list(shapely.to_wkb(parcels.geometry.values)), parcels.crs.to_wkt()) if wkb else parcels
    sums, t0 = {}, time.perf_counter()
    for path, (bands, _) in zip(layers, LAYERS.values()):
        df = exact_extract(path, vec, ["sum"], output="pandas")
        for i, b in enumerate(bands):
            sums[b] = df["sum" if len(bands) == 1 else f"band_{i + 1}_sum"].to_numpy()
    return time.perf_counter() - t0, sums


def max_rel_diff(got, ref: dict) -> float:
    worst = 0.0
    for b, r in ref.items():
        g = got[f"{b}_sum"].to_numpy()
        d = np.abs(g - r)
        nz = r != 0
        worst = max(worst, float(np.max(d[nz] / np.abs(r[nz]), initial=0.0)), np.inf if np.any(d[~nz] > 0) else 0.0)
    return worst


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--parcels", type=int, default=400_000)
    ap.add_argument("--parcel-ha", type=float, default=1.8)
    ap.add_argument("--partition-size", type=int, default=10_000)
    ap.add_argument("--rss-partition-sizes", default="2500,40000",
                    help="run the engine again at these partition sizes for peak RSS ('': skip)")
    ap.add_argument("--workers", type=int, default=1, help="dask threads of the engine (1: synchronous)")
    ap.add_argument("--cache-mb", type=int, default=64, help="GDAL block cache per task (MB)")
    ap.add_argument("--no-wkb-reference", action="store_true")
    ap.add_argument("--no-reference", action="store_true", help="engine only (no exactextract runs)")
    ap.add_argument("--data", type=Path, help="keep the rasters and parcels here; reuse them if present")
    a = ap.parse_args(argv)
    import pandas as pd

    side = side_for(a.parcels, a.parcel_ha)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = a.data or tmp
        t0 = time.perf_counter()
        if (data / "parcels.parquet").exists():
            import pyarrow.parquet as pq

            layers = [str(data / "rasters" / f"{k}.tif") for k in LAYERS]
            n = pq.ParquetFile(data / "parcels.parquet").metadata.num_rows
        else:
            layers = write_layers(data / "rasters", side)
            n = write_parcels(data / "parcels.parquet", a.parcels, side)
        setup_s = time.perf_counter() - t0
        log(f"setup {setup_s:.1f} s: {n} parcels, {side}x{side} grid")
        out = str(tmp / "zonal.parquet")
        secs, peak = run_isolated(engine, str(data / "parcels.parquet"), layers, a.partition_size, a.workers,
                                  a.cache_mb, out)
        by_part = {str(a.partition_size): round(peak, 1)}
        for size in [int(x) for x in a.rss_partition_sizes.split(",") if x]:
            by_part[str(size)] = round(run_isolated(
                engine, str(data / "parcels.parquet"), layers, size, a.workers, a.cache_mb)[1], 1)
        by_part = dict(sorted(by_part.items(), key=lambda kv: int(kv[0])))
        log(f"engine {secs:.1f} s, peak RSS {by_part} MB")
        got = pd.read_parquet(out)
        ref_s, ref = (None, None) if a.no_reference else reference(str(data / "parcels.parquet"), layers)
        log(f"reference {ref_s} s")
        wkb_s = None if a.no_wkb_reference or a.no_reference else \
            reference(str(data / "parcels.parquet"), layers, wkb=True)[0]
        disk_mb = sum(Path(p).stat().st_size for p in layers) / 2**20
    bands = sum(len(b) for b, _ in LAYERS.values())
    result = {
        "stage": "zonal",
        "workload": f"{n} Voronoi parcels (~{a.parcel_ha} ha) on a {side}x{side} 10 m grid ({CRS}); {len(layers)} "
                    f"layer files, {bands} float32 bands ({disk_mb:.0f} MB deflate); partitions of "
                    f"{a.partition_size}, {a.workers} dask thread(s), GDAL cache {a.cache_mb} MB; setup "
                    f"{setup_s:.0f} s",
        "parcels": n, "layers": len(layers), "bands": bands,
        "seconds": round(secs, 1), "reference_seconds": None if ref_s is None else round(ref_s, 1),
        "speedup_vs_reference": None if ref_s is None else round(ref_s / secs, 2),
        "reference_wkb_seconds": None if wkb_s is None else round(wkb_s, 1),
        "speedup_vs_reference_wkb": None if wkb_s is None else round(wkb_s / secs, 2),
        "max_relative_difference": None if ref is None else max_rel_diff(got, ref),
        "peak_rss_mb": round(peak, 1), "peak_rss_mb_by_partition_size": by_part,
        "reference": "exactextract sum once per layer file (GeoDataFrame in, output='pandas', as "
                     "vector.zonal.zonal_table calls it); reference_wkb: the same with WKB features",
        "overlay": None,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    sys.exit(main())
