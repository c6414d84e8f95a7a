"""Mosaic benchmark: the full path (read L2A COGs via STAC, mask, reproject, composite,
write COG) against numpy's nanmedian over the already-aligned in-memory stack (no I/O).

Run from the repository root: ``python benchmarks/bench_mosaic.py [--size 2048 --dates 12]``.
Prints, as its last line, a JSON object with stage, megapixels_per_s,
reference_megapixels_per_s, speedup_vs_reference, peak_rss_mb and
peak_rss_mb_by_area (full path in a fresh process at 1x, 2x, 4x a base area).
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

BANDS = ("blue", "red", "nir", "swir16")
MASK = (0, 1, 3, 8, 9, 10)


def make_stack(folder: Path, size: int, dates: int, seed: int = 0):
    """Write ``dates`` scenes of 4 bands (10 m, UTM 50N) with ~30 % cloud; return the in-memory stack."""
    import rasterio
    from affine import Affine
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    tr = Affine(10, 0, 300_000, 0, -10, 3_300_000)
    stack = np.empty((dates, len(BANDS), size, size), dtype="float32")
    small = max(size // 8, 16)
    for t in range(dates):
        d = folder / f"S{t:02d}"
        d.mkdir(parents=True)
        f = ndimage.zoom(rng.standard_normal((small, small)), size / small, order=1)[:size, :size]
        cloud = f > np.quantile(f, 0.7)
        scl = np.where(cloud, 9, 4).astype("uint16")
        assets = {}
        for b, band in enumerate(BANDS):
            dn = rng.integers(1100, 6000, (size, size)).astype("uint16")
            stack[t, b] = np.where(cloud, np.nan, (dn.astype("float32") - 1000) / 10_000)
            with rasterio.open(d / f"{band}.tif", "w", driver="COG", width=size, height=size, count=1, dtype="uint16",
                               crs="EPSG:32650", transform=tr, nodata=0, compress="DEFLATE", blocksize=512) as dst:
                dst.write(dn, 1)
            assets[band] = {"href": f"./{band}.tif", "roles": ["data"], "proj:shape": [size, size],
                            "proj:transform": list(tr)[:6], "eo:bands": [{"name": band, "common_name": band}]}
        with rasterio.open(d / "SCL.tif", "w", driver="COG", width=size, height=size, count=1, dtype="uint16",
                           crs="EPSG:32650", transform=tr, nodata=0, compress="DEFLATE", blocksize=512) as dst:
            dst.write(scl, 1)
        assets["scl"] = {"href": "./SCL.tif", "roles": ["data"], "proj:shape": [size, size], "proj:transform": list(tr)[:6]}
        item = {"type": "Feature", "stac_version": "1.0.0", "id": f"S{t:02d}",
                "stac_extensions": ["https://stac-extensions.github.io/projection/v1.0.0/schema.json",
                                    "https://stac-extensions.github.io/eo/v1.0.0/schema.json"],
                "geometry": {"type": "Polygon", "coordinates": [[[117, 29], [118, 29], [118, 30], [117, 30], [117, 29]]]},
                "bbox": [117, 29, 118, 30], "links": [], "assets": assets,
                "properties": {"datetime": f"2024-10-{t + 1:02d}T03:00:00Z", "proj:epsg": 32650, "s2:processing_baseline": "05.10"}}
        (d / f"S{t:02d}.json").write_text(json.dumps(item))
    return stack, tr


def full_path(folder: str, size: int, chunk: int, out: str) -> float:
    import dask
    from odc.geo.geobox import GeoBox

    from forestcarbon.rs.cog import write_cog
    from forestcarbon.rs.composite import load_reflectance, median_composite
    from forestcarbon.rs.scenes import read_scenes
    from affine import Affine

    t0 = time.perf_counter()
    gbox = GeoBox((size, size), Affine(10, 0, 300_000, 0, -10, 3_300_000), "EPSG:32650")
    with dask.config.set(scheduler="threads", num_workers=2):
        scenes = read_scenes(folder, BANDS)
        refl, valid = load_reflectance(scenes, gbox, BANDS, MASK, chunk_px=chunk)
        comp, _ = median_composite(refl, valid)
        write_cog(comp.to_array("band").data, gbox, out, descriptions=list(BANDS), block=chunk)
    return time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--dates", type=int, default=12)
    ap.add_argument("--chunk", type=int, default=512)
    ap.add_argument("--base", type=int, default=1024, help="side of the base area for the memory-by-area runs")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        stack, _ = make_stack(tmp / "speed", a.size, a.dates)
        t0 = time.perf_counter()
        ref = np.nanmedian(stack, axis=0)
        ref_s = time.perf_counter() - t0
        del stack, ref
        secs, peak = run_isolated(full_path, str(tmp / "speed"), a.size, a.chunk, str(tmp / "speed.tif"))
        by_area = {}
        for k in (1, 2, 4):
            side = int(round(a.base * np.sqrt(k)))
            s, _ = make_stack(tmp / f"area{k}", side, a.dates, seed=k)
            del s
            by_area[f"{k}x"] = round(run_isolated(full_path, str(tmp / f"area{k}"), side, a.chunk, str(tmp / f"area{k}.tif"))[1], 1)
    mpx = a.dates * a.size * a.size / 1e6  # megapixels of input time series per band stack
    result = {
        "stage": "mosaic", "workload": f"{a.dates} dates x {len(BANDS)} bands x {a.size}^2, ~30% cloud",
        "megapixels_per_s": round(mpx / secs, 2), "reference_megapixels_per_s": round(mpx / ref_s, 2),
        "speedup_vs_reference": round(ref_s / secs, 3), "peak_rss_mb": round(peak, 1),
        "peak_rss_mb_by_area": by_area, "reference": "numpy.nanmedian over the aligned in-memory stack (no I/O)",
    }
    print(json.dumps(result))


if __name__ == "__main__":
    sys.exit(main())
