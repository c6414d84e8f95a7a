"""Landsat OLI -> Sentinel-2A bandpass adjustment against hand computations from the printed HLS coefficients.

The coefficients typed below are read off the HLS "Bandpass adjustment" table (hls.gsfc.nasa.gov/algorithms/
bandpass-adjustment/, "coefficients of linear regression used to adjust from Sentinel-2A,B/MSI to Landsat
8/OLI", Sentinel-2A columns; Claverie et al. 2018, RSE 219:145-161): rho_OLI = slope * rho_MSI + offset, so
rho_MSI = (rho_OLI - offset) / slope.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from odc.geo.geobox import GeoBox

from forestcarbon.errors import BandpassWarning
from forestcarbon.rs import bandpass
from forestcarbon.rs.composite import build_composite, load_reflectance
from forestcarbon.rs.scenes import read_scenes

from .conftest import shared
from .test_mosaic import MASK, _tif, _write_item

# printed HLS table, Sentinel-2A columns (MSI band: slope, offset)
BLUE_B02 = (0.9778, -0.004)
RED_B04 = (0.9765, 0.0009)
NIR_B8A = (0.9983, -0.0001)
SWIR2_B12 = (1.003, -0.0012)

N = 12
TR = Affine(10, 0, 600_000, 0, -10, 3_200_000)
CLEAR = 1 << 6  # QA_PIXEL bit 6, clear


def _write_landsat(folder: Path, name: str, date: str, platform: str, dns: dict) -> None:
    """A Landsat C2 L2 STAC item on the 10 m test grid (keys blue, red, nir08, qa_pixel)."""
    folder.mkdir(parents=True)
    assets = {}
    for key, arr in {**dns, "qa_pixel": np.full((N, N), CLEAR)}.items():
        _tif(folder / f"{key}.tif", arr, TR)
        assets[key] = {"href": f"./{key}.tif", "roles": ["data"], "proj:shape": [N, N], "proj:transform": list(TR)[:6]}
    item = {"type": "Feature", "stac_version": "1.0.0", "id": name, "links": [], "assets": assets,
            "stac_extensions": ["https://stac-extensions.github.io/projection/v1.0.0/schema.json"],
            "geometry": {"type": "Polygon", "coordinates": [[[117, 29], [117.1, 29], [117.1, 29.1], [117, 29.1], [117, 29]]]},
            "bbox": [117, 29, 117.1, 29.1],
            "properties": {"datetime": f"{date}T02:30:00Z", "platform": platform, "proj:epsg": 32650}}
    (folder / f"{name}.json").write_text(json.dumps(item))


@pytest.fixture()
def mix(tmp_path):
    """One Sentinel-2 and one Landsat 8 scene of the same 12 x 12 grid, every pixel clear."""
    rng = np.random.default_rng(3)
    s2 = {b: rng.integers(1500, 4000, (N, N)) for b in ("blue", "red", "nir")}
    _write_item(tmp_path / "s2", "S2A_T", "2024-10-10", "05.10", s2, np.full((N // 2, N // 2), 4), TR, TR * Affine.scale(2))
    l8 = {b: rng.integers(8000, 20000, (N, N)) for b in ("blue", "red", "nir08")}
    _write_landsat(tmp_path / "l8", "LC08_T", "2024-10-12", "landsat-8", l8)
    return tmp_path, s2, l8


def _oli(dn):
    return dn.astype("float64") * 0.0000275 - 0.2


def test_mixed_sensors_adjust_landsat_only(mix):
    folder, s2, l8 = mix
    scenes = read_scenes(folder, ("blue", "red", "nir"))
    assert [s.sensor.name for s in scenes] == ["sentinel-2-l2a", "landsat-oli-c2-l2"]
    gbox = GeoBox((N, N), TR, "EPSG:32650")
    adj = bandpass.plan(scenes, ("blue", "red", "nir"), "auto")
    refl, _ = load_reflectance(scenes, gbox, ("blue", "red", "nir"), MASK, chunk_px=8, adjustments=adj)
    # Landsat: DN x 0.0000275 - 0.2, then (rho - offset) / slope; its nir is OLI band 5 standing in, adjusted as B8A
    for band, dn, (slope, off) in (("blue", l8["blue"], BLUE_B02), ("red", l8["red"], RED_B04), ("nir", l8["nir08"], NIR_B8A)):
        np.testing.assert_allclose(refl[band].isel(time=1).values, (_oli(dn) - off) / slope, rtol=2e-6, atol=1e-7)
    # Sentinel-2 untouched: (DN - 1000) / 10000
    for band in ("blue", "red", "nir"):
        np.testing.assert_allclose(refl[band].isel(time=0).values, (s2[band] - 1000) / 10_000, rtol=1e-6)
    # the adjustment moves blue by (rho + 0.004)/0.9778 - rho: 0.0045-0.012 for rho 0.02-0.35, far above float error
    moved = refl["blue"].isel(time=1).values - _oli(l8["blue"])
    assert 0.0045 < moved.min() and moved.max() < 0.0121


def test_modes_and_record(mix):
    folder, _, l8 = mix
    scenes = read_scenes(folder, ("blue", "red", "nir"))
    gbox = GeoBox((N, N), TR, "EPSG:32650")
    kw = dict(bands=("blue", "red", "nir"), scl_mask=MASK, qa_flags=("fill",), chunk_px=8)
    never = build_composite(scenes[1:2] + scenes[:1], gbox, harmonise="never", **kw)
    auto = build_composite(scenes, gbox, harmonise="auto", **kw)
    assert never.bandpass == ("none", "none") and never.bandpass_summary == "none"
    assert auto.bandpass == ("none", "hls_oli_to_s2a_msi")
    assert "1 Landsat OLI scene(s) to Sentinel-2A MSI" in auto.bandpass_summary
    assert "blue 0.9778/-0.004" in auto.bandpass_summary and "red 0.9765/0.0009" in auto.bandpass_summary
    # Landsat alone: auto leaves it as OLI, always adjusts it
    alone_auto = build_composite(scenes[1:], gbox, harmonise="auto", **kw)
    alone_always = build_composite(scenes[1:], gbox, harmonise="always", **kw)
    np.testing.assert_allclose(alone_auto.reflectance["red"].values, _oli(l8["red"]), rtol=2e-6)
    np.testing.assert_allclose(alone_always.reflectance["red"].values, (_oli(l8["red"]) - RED_B04[1]) / RED_B04[0], rtol=2e-6)
    assert alone_always.bandpass == ("hls_oli_to_s2a_msi",)


def test_tm_etm_scenes_in_a_mix_are_left_alone_with_a_warning(mix):
    folder, _, _ = mix
    rng = np.random.default_rng(4)
    le7 = {b: rng.integers(8000, 20000, (N, N)) for b in ("blue", "red", "nir08")}
    _write_landsat(folder / "le7", "LE07_T", "2024-10-14", "landsat-7", le7)
    scenes = read_scenes(folder, ("blue", "red", "nir"))
    with pytest.warns(BandpassWarning, match=r"1 Landsat scene\(s\) not from OLI.*LE07_T \(landsat-7\)"):
        adj = bandpass.plan(scenes, ("blue", "red", "nir"), "auto")
    assert [a.label for a in adj] == ["none", "hls_oli_to_s2a_msi", "none: no coefficients"]
    assert "1 Landsat scene(s) without coefficients left unadjusted" in bandpass.describe(adj)
    gbox = GeoBox((N, N), TR, "EPSG:32650")
    refl, _ = load_reflectance(scenes, gbox, ("red",), MASK, chunk_px=8, adjustments=adj)
    np.testing.assert_allclose(refl["red"].isel(time=2).values, _oli(le7["red"]), rtol=2e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bandpass.plan(scenes, ("red",), "never")  # nothing adjusted, nothing to warn about


L8 = "satellite/landsat8-c2l2-001062-20201031/LC08_L2SP_001062_20201031_20201106_02_T2"


def test_real_landsat8_scene_adjusted_by_hand():
    """Real data: the Landsat 8 C2 L2 product folder, DN x 0.0000275 - 0.2 then the inverted HLS line, in numpy."""
    mtl = shared(L8 + "_MTL.json")
    folder, pid = mtl.parent, mtl.name.removesuffix("_MTL.json")
    bands = ("blue", "red", "swir22")
    scenes = read_scenes(folder, bands)
    with rasterio.open(folder / f"{pid}_SR_B2.TIF") as src:
        gbox = GeoBox(src.shape, src.transform, src.crs.to_wkt())
    dn = {}
    for b, f in (("blue", "SR_B2"), ("red", "SR_B4"), ("swir22", "SR_B7")):
        with rasterio.open(folder / f"{pid}_{f}.TIF") as src:
            dn[b] = src.read(1)
    adj = bandpass.plan(scenes, bands, "always")
    refl, valid = load_reflectance(scenes, gbox, bands, (), chunk_px=128, qa_flags=("fill",), adjustments=adj)
    ok = valid.isel(time=0).values
    assert ok.mean() > 0.5
    for b, (slope, off) in (("blue", BLUE_B02), ("red", RED_B04), ("swir22", SWIR2_B12)):
        rho_oli = dn[b][ok].astype("float64") * 0.0000275 - 0.2
        np.testing.assert_allclose(refl[b].isel(time=0).values[ok], (rho_oli - off) / slope, rtol=1e-5, atol=1e-7)


def test_auto_is_decided_once_per_collection(mix):
    """The nightly tiles resolve 'auto' over the whole window: a Landsat-only tile is adjusted when the
    window also holds Sentinel-2 (no seam with its mixed neighbours), not when it holds Landsat only."""
    folder, _, l8 = mix
    both = read_scenes(folder, ("blue", "red", "nir"))
    landsat_only = [s for s in both if s.sensor.name.startswith("landsat")]
    assert bandpass.resolve_mode(both, "auto") == "always"
    assert bandpass.resolve_mode(landsat_only, "auto") == "never"
    assert bandpass.resolve_mode(landsat_only, "always") == "always" and bandpass.resolve_mode(both, "never") == "never"
    gbox = GeoBox((N, N), TR, "EPSG:32650")
    refl, _ = load_reflectance(landsat_only, gbox, ("red",), MASK, chunk_px=8,
                               adjustments=bandpass.plan(landsat_only, ("red",), bandpass.resolve_mode(both, "auto")))
    np.testing.assert_allclose(refl["red"].isel(time=0).values, (_oli(l8["red"]) - RED_B04[1]) / RED_B04[0], rtol=2e-6, atol=1e-7)
