"""How far odc-stac's bilinear reprojection is from an exact bilinear sample, by chunk size.

Run from the repository root: ``python benchmarks/check_warp_accuracy.py [--size-km 10]``.
Makes a synthetic scene (forestcarbon_synth), loads one Sentinel-2 band onto the target
grid with odc-stac at several chunk sizes, and compares each with a numpy reference:
every target pixel centre transformed exactly (pyproj) into the source grid and
sampled bilinearly there, where all four source neighbours are valid.  Prints one
JSON line per chunk size (max and 99.9th-percentile absolute error in DN, share of
pixels off by more than 0.5 DN).  Not part of ``make bench``: a diagnostic.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import warnings
from pathlib import Path

import numpy as np


def exact_bilinear(href: str, gbox):
    """Bilinear sample of band 1 of ``href`` at the centres of ``gbox`` (exact transform), and where it is valid."""
    import rasterio
    from pyproj import Transformer

    with rasterio.open(href) as src:
        arr = src.read(1).astype("float64")
        inv = ~src.transform
        tf = Transformer.from_crs(gbox.crs.to_wkt(), src.crs, always_xy=True)
    h, w = gbox.shape
    ys, xs = np.mgrid[0:h, 0:w]
    a = gbox.affine
    sx, sy = tf.transform(a.c + (xs + 0.5) * a.a, a.f + (ys + 0.5) * a.e)
    c, r = inv * (sx, sy)
    c, r = c - 0.5, r - 0.5
    c0, r0 = np.floor(c).astype(int), np.floor(r).astype(int)
    inside = (c0 >= 0) & (r0 >= 0) & (c0 + 1 < arr.shape[1]) & (r0 + 1 < arr.shape[0])
    c0, r0 = np.where(inside, c0, 0), np.where(inside, r0, 0)
    fc, fr = c - c0, r - r0
    v = [arr[r0, c0], arr[r0, c0 + 1], arr[r0 + 1, c0], arr[r0 + 1, c0 + 1]]
    value = v[0] * (1 - fc) * (1 - fr) + v[1] * fc * (1 - fr) + v[2] * (1 - fc) * fr + v[3] * fc * fr
    return value, inside & (v[0] > 0) & (v[1] > 0) & (v[2] > 0) & (v[3] > 0)


def main(argv=None):
    import odc.stac

    from forestcarbon.config import load_config
    from forestcarbon.rs.grid import geobox_from_config
    from forestcarbon.rs.scenes import read_scenes
    from forestcarbon.rs.warp import ExactDriver
    from forestcarbon_synth import make_scene

    ap = argparse.ArgumentParser()
    ap.add_argument("--size-km", type=float, default=10.0)
    ap.add_argument("--chunks", default="2048,1024,512,256,128")
    ap.add_argument("--driver", choices=("exact", "odc"), default="exact",
                    help="exact: forestcarbon.rs.warp.ExactDriver (what the mosaic uses); odc: odc-loader's own reader")
    a = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(make_scene(Path(tmp), seed=0, size_km=a.size_km))
        gbox = geobox_from_config(cfg.grid)
        item = read_scenes(cfg.inputs.stac_items, cfg.mosaic.bands)[0].item
        ref, valid = exact_bilinear(item.assets["red"].href, gbox)
        for chunk in (int(c) for c in a.chunks.split(",")):
            driver = ExactDriver() if a.driver == "exact" else None
            got = odc.stac.load([item], bands=["red"], geobox=gbox, chunks={"x": chunk, "y": chunk},
                                resampling="bilinear", dtype="float32", driver=driver).red.isel(time=0).compute().to_numpy()
            d = np.abs(got - ref)[valid]
            print(json.dumps({"check": "warp_accuracy", "driver": a.driver, "chunk_px": chunk, "pixels": int(valid.sum()),
                              "max_abs_dn": round(float(np.nanmax(d)), 2),
                              "p99_9_abs_dn": round(float(np.nanquantile(d, 0.999)), 2),
                              "share_over_0_5_dn": round(float(np.nanmean(d > 0.5)), 4)}))


if __name__ == "__main__":
    main()
