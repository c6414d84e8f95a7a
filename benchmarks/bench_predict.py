"""Prediction benchmark: the map stage's prediction path (read feature COGs, coverage models' AGB with its
conformal interval and SD, write the prediction COG and its per-band COGs) against one ``predict`` call
of the same fitted point estimator on the same features already in memory (numpy/pandas, no I/O).

The model is the project's: ``models.fit.fit_table`` (random forests chosen by spatial-block CV; intervals
from the chosen forest's own trees, ``cqr_trees``, calibrated by nested spatial CV: point and interval from
one traversal) on a synthetic plot table whose features are drawn like the
pixels'; the full path is ``flows.stages.stage_map``'s wiring (``open_stack`` per feature COG, concat,
``map_blocks(predict_coverage_block, ...)``, ``write_cog``, the band split).

Run from the repository root: ``python benchmarks/bench_predict.py [--pixels 50000000 --features 20]``.
Prints, as its last line, a JSON object with stage, pixels_per_s, reference_pixels_per_s,
ratio_to_reference, peak_rss_mb and peak_rss_mb_by_area (full path in a fresh process at 1x, 2x, 4x a base
area).  The reference predicts ``--reference-pixels`` of the map's pixels (the first rows; all of them when
the map is smaller): a tree ensemble's cost per pixel does not depend on how many are predicted, and 50 M
pixels x 20 features would need 8 GB in memory.  It is one call of the estimator as fitted (scikit-learn
``n_jobs=None``: one thread); the full path runs the map stage's default two dask threads.
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
X0, Y0 = 500_000.0, 3_300_000.0
N_LATENT = 3


def feature_files(n_features: int) -> dict[str, list[str]]:
    """Feature COG name -> its band names, split like the pipeline's (reflectance, indices, LiDAR metrics)."""
    sizes = {"reflectance": n_features // 2, "indices": n_features // 4}
    sizes["lidar_metrics"] = n_features - sum(sizes.values())
    return {f: [f"{f}_{i:02d}" for i in range(k)] for f, k in sizes.items() if k}


def latent(x, y) -> np.ndarray:
    """(N_LATENT, ...) smooth fields of map coordinates (m): the 'forest' every feature and AGB depend on."""
    tau = 2 * np.pi
    return np.stack([np.sin(tau * x / 3000 + 0.3) + np.cos(tau * y / 4100),
                     1.4 * np.sin(tau * (x + y) / 2300) * np.cos(tau * (x - y) / 5200),
                     1.4 * np.cos(tau * x / 1700 + 1.1) * np.sin(tau * y / 2900 + 0.7)])


def loadings(n_features: int) -> np.ndarray:
    return np.random.default_rng(42).normal(size=(n_features, N_LATENT))


def features_at(x, y, n_features: int, rng) -> np.ndarray:
    """(n_features, ...) features: loadings x latent fields + noise (the same for plots and pixels)."""
    z = latent(x, y)
    f = np.tensordot(loadings(n_features), z, axes=1)
    return f + 0.3 * rng.standard_normal(f.shape)


def plot_table(n_features: int, n_plots: int = 300, clusters: int = 30, extent_m: float = 60_000, seed: int = 0):
    """Clustered plots (``clusters`` centres, ~200 m spread) with features and AGB (Mg/ha)."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    centre = rng.uniform(0, extent_m, (clusters, 2))
    which = rng.integers(0, clusters, n_plots)
    x = X0 + centre[which, 0] + rng.normal(0, 200, n_plots)
    y = Y0 - centre[which, 1] + rng.normal(0, 200, n_plots)
    names = [n for ns in feature_files(n_features).values() for n in ns]
    table = pd.DataFrame(features_at(x, y, n_features, rng).T, columns=names)
    z = latent(x, y)
    table["agb_mg_ha"] = np.clip(120 + 40 * z[0] + 25 * z[1] + 15 * z[0] * z[2] + rng.normal(0, 15, n_plots), 0, None)
    table["x"], table["y"] = x, y
    return table, names


def fit_bundle(n_features: int, path: Path, kind: str, seed: int = 0) -> dict:
    """Fit the coverage model as the model stage does (``fit_table`` on spatial blocks) and save it."""
    import joblib

    from forestcarbon.models.coverage import CoverageModel
    from forestcarbon.models.fit import fit_table

    table, names = plot_table(n_features, seed=seed)
    kinds = ("random_forest", "hist_gradient_boosting") if kind == "auto" else (kind,)
    fit = fit_table(table, "agb_mg_ha", names, block_m=5000, x=table.x, y=table.y, kinds=kinds, seed=seed)
    models = [CoverageModel("optical", fit.model, fit.intervals, tuple(fit.features))]
    joblib.dump({"models": models, "features": names}, path)
    return {"kind": fit.model.kind, "params": fit.model.params, "interval_method": fit.intervals.method}


def geobox(side: int):
    from affine import Affine
    from odc.geo.geobox import GeoBox

    return GeoBox((side, side), Affine(RES, 0, X0, 0, -RES, Y0), "EPSG:32650")


def write_features(folder: Path, side: int, n_features: int, chunk: int, seed: int = 0) -> list[tuple[str, list[str]]]:
    """The feature COGs of a ``side`` x ``side`` map (written block by block with the project's ``write_cog``)."""
    import dask.array as da

    from forestcarbon.rs.cog import write_cog

    gbox = geobox(side)
    folder.mkdir(parents=True, exist_ok=True)
    out, first = [], 0
    for fname, names in feature_files(n_features).items():
        lo, hi = first, first + len(names)
        first = hi

        def block(b, block_info=None, lo=lo, hi=hi):
            (r0, r1), (c0, c1) = block_info[0]["array-location"]
            rows, cols = np.mgrid[r0:r1, c0:c1]
            rng = np.random.default_rng([seed, r0, c0])
            f = features_at(X0 + (cols + 0.5) * RES, Y0 - (rows + 0.5) * RES, n_features, rng)[lo:hi]
            return f.astype("float32")

        template = da.empty((side, side), chunks=chunk, dtype="float32")
        arr = da.map_blocks(block, template, new_axis=0, chunks=((len(names),), *template.chunks), dtype="float32")
        path = folder / f"{fname}.tif"
        write_cog(arr, gbox, path, descriptions=names, block=chunk)
        out.append((str(path), names))
    return out


def full_path(sources: list[tuple[str, list[str]]], bundle_path: str, side: int, chunk: int, out: str,
              workers: int, cache_mb: int | None = 512) -> float:
    """The map stage's prediction wiring (``flows.stages.stage_map``, without the mask and carbon layers)."""
    import dask
    import joblib
    import xarray as xr

    from forestcarbon.flows.stages import open_stack
    from forestcarbon.models.coverage import BANDS, predict_coverage_block
    from forestcarbon.rs.cog import write_cog

    bundle = joblib.load(bundle_path)
    gbox = geobox(side)
    out = Path(out)
    from forestcarbon.rs.cog import gdal_cache

    t0 = time.perf_counter()
    with dask.config.set(scheduler="threads", num_workers=workers), gdal_cache(cache_mb):
        names = [n for _, ns in sources for n in ns]
        stack = xr.concat([open_stack(Path(p), chunk).sel(band=ns) for p, ns in sources], dim="band")
        data = stack.data.rechunk({0: -1})
        pred = data.map_blocks(predict_coverage_block, names, bundle["models"],
                               chunks=((len(BANDS),), *data.chunks[1:]), dtype="float32")
        work = write_cog(pred, gbox, out / "prediction.tif", descriptions=list(BANDS), block=chunk)
        bands = open_stack(work, chunk).data
        for i, name in enumerate(BANDS[:4]):
            write_cog(bands[i], gbox, out / f"{name}.tif", descriptions=[name], units="Mg/ha", block=chunk)
        write_cog(bands[4].astype("uint8"), gbox, out / "model_source.tif", nodata=None,
                  descriptions=["model_source"], block=chunk)
    return time.perf_counter() - t0


def reference(sources: list[tuple[str, list[str]]], bundle_path: str, side: int, pixels: int) -> tuple[float, int]:
    """(seconds, pixels) of one ``predict`` call of the served point estimator on the first rows of the map,
    read into memory beforehand."""
    import joblib
    import pandas as pd
    import rasterio
    from rasterio.windows import Window

    model = joblib.load(bundle_path)["models"][0]
    rows = max(1, min(side, pixels // side))
    cols = {}
    for p, names in sources:
        with rasterio.open(p) as src:
            a = src.read(window=Window(0, 0, side, rows))
        cols |= {n: a[i].ravel().astype("float64") for i, n in enumerate(names)}
    frame = pd.DataFrame({f: cols[f] for f in model.features})
    t0 = time.perf_counter()
    model.estimator.predict(frame)
    return time.perf_counter() - t0, rows * side


def side_for(pixels: int) -> int:
    return int(math.ceil(math.sqrt(pixels) / 16) * 16)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--pixels", type=int, default=2 ** 22, help="map pixels (a square, side rounded up to 16)")
    ap.add_argument("--features", type=int, default=20)
    ap.add_argument("--chunk", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2, help="dask threads of the full path (the map stage's default)")
    ap.add_argument("--reference-pixels", type=int, default=2 ** 21)
    ap.add_argument("--base", type=int, default=2 ** 18, help="pixels of the base area for the memory-by-area runs")
    ap.add_argument("--kind", default="random_forest", choices=("auto", "random_forest", "hist_gradient_boosting"),
                    help="point model kinds compared by fit_table (auto: both, as the map stage's model.kind auto)")
    ap.add_argument("--model", type=Path, help="reuse the model saved here by an earlier run (fit and save it if absent)")
    ap.add_argument("--no-areas", action="store_true", help="skip the memory-by-area runs")
    ap.add_argument("--gdal-cache-mb", type=int, default=512, help="GDAL block cache (the map stage's compute.gdal_cache_mb; 0: GDAL's default)")
    a = ap.parse_args(argv)
    side = side_for(a.pixels)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bundle = a.model or tmp / "model.joblib"
        if bundle.exists():
            import joblib

            est = joblib.load(bundle)["models"][0]
            chosen = {"kind": est.estimator.kind, "params": est.estimator.params, "interval_method": est.intervals.method}
        else:
            chosen = fit_bundle(a.features, bundle, a.kind)
        sources = write_features(tmp / "speed", side, a.features, a.chunk)
        ref_s, ref_px = reference(sources, str(bundle), side, a.reference_pixels)
        (tmp / "out").mkdir()
        cache = a.gdal_cache_mb or None
        secs, peak = run_isolated(full_path, sources, str(bundle), side, a.chunk, str(tmp / "out"), a.workers, cache)
        by_area = {}
        for k in () if a.no_areas else (1, 2, 4):
            s = side_for(a.base * k)
            src = write_features(tmp / f"area{k}", s, a.features, a.chunk, seed=k)
            (tmp / f"out{k}").mkdir()
            by_area[f"{k}x"] = round(run_isolated(full_path, src, str(bundle), s, a.chunk, str(tmp / f"out{k}"),
                                                  a.workers, cache)[1], 1)
    px = side * side
    result = {
        "stage": "predict",
        "workload": f"{side}x{side} = {px} pixels x {a.features} features from {len(sources)} COGs; AGB, SD, p05, "
                    f"p95, model_source written (5-band COG + 5 COGs); chunk {a.chunk}, {a.workers} dask threads, "
                    f"GDAL cache {a.gdal_cache_mb or 'default'} MB",
        "model": chosen, "pixels_per_s": round(px / secs), "reference_pixels_per_s": round(ref_px / ref_s),
        "ratio_to_reference": round((px / secs) / (ref_px / ref_s), 3), "peak_rss_mb": round(peak, 1),
        "peak_rss_mb_by_area": by_area, "seconds": round(secs, 1), "reference_seconds": round(ref_s, 1),
        "reference": f"one predict call of the served point estimator on {ref_px} of the map's pixels in memory "
                     "(DataFrame, no I/O, scikit-learn n_jobs=None: one thread)",
    }
    print(json.dumps(result))


if __name__ == "__main__":
    sys.exit(main())
