"""Bad satellite inputs: a one-line error or a logged skip, never a half-written COG."""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
from pathlib import Path

import pytest
import rasterio

from forestcarbon.config import load_config
from forestcarbon.errors import SceneError
from forestcarbon.flows.stages import preflight, stage_mosaic


@pytest.fixture()
def setup(small_scene, tmp_path):
    s2 = tmp_path / "s2"
    shutil.copytree(small_scene.parent / "sentinel2", s2)
    cfg = load_config(small_scene).with_output(tmp_path / "out")
    cfg = cfg.model_copy(update={"inputs": cfg.inputs.model_copy(update={"stac_items": s2})})
    return cfg, s2, tmp_path / "out"


def _items(s2: Path):
    return sorted(s2.glob("*/*.json"))


def _edit(path: Path, fn):
    d = json.loads(path.read_text())
    fn(d)
    path.write_text(json.dumps(d))


def _run(cfg):
    return stage_mosaic(preflight(cfg))


def _no_output(out: Path):
    assert not (out / "mosaic" / "reflectance.tif").exists()
    assert not list(out.rglob(".*.tif"))


def test_truncated_cog(setup):
    cfg, s2, out = setup
    f = _items(s2)[2].parent / "B11.tif"
    blob = f.read_bytes()
    f.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(SceneError, match=r"B11\.tif: truncated file of scene"):
        _run(cfg)
    _no_output(out)


def test_missing_band_asset(setup):
    cfg, s2, out = setup
    _edit(_items(s2)[1], lambda d: d["assets"].pop("swir16"))
    with pytest.raises(SceneError, match=r"has no asset 'swir16'"):
        _run(cfg)
    _no_output(out)


def test_unknown_processing_baseline(setup):
    cfg, s2, out = setup
    _edit(_items(s2)[0], lambda d: d["properties"].__setitem__("s2:processing_baseline", "N/A"))
    with pytest.raises(SceneError, match=r"unknown processing baseline 'N/A'"):
        _run(cfg)
    _no_output(out)


def test_empty_time_window(setup):
    cfg, s2, out = setup
    cfg = cfg.model_copy(update={"mosaic": cfg.mosaic.model_copy(update={"start": dt.date(2030, 1, 1), "end": dt.date(2030, 2, 1)})})
    with pytest.raises(SceneError, match=r"no scene within 2030-01-01\.\.2030-02-01"):
        _run(cfg)
    _no_output(out)


def test_item_outside_aoi_and_all_cloud_scene_are_skipped(setup, caplog):
    cfg, s2, out = setup
    items = _items(s2)
    far = [[[100.0, 10.0], [100.1, 10.0], [100.1, 10.1], [100.0, 10.1], [100.0, 10.0]]]
    _edit(items[0], lambda d: d.__setitem__("geometry", {"type": "Polygon", "coordinates": far}))
    outside_id = items[0].stem
    # the 2024-11-02 synthetic acquisition is 85 % cloud; demand more valid area than it has
    cfg = cfg.model_copy(update={"mosaic": cfg.mosaic.model_copy(update={"min_valid_fraction": 0.05})})
    with caplog.at_level(logging.INFO):
        res = _run(cfg)
    assert f"skip {outside_id}: outside the area of interest" in caplog.text
    assert "valid fraction" in caplog.text and res["scenes_skipped"] >= 1
    assert (out / "mosaic" / "reflectance.tif").exists()


def test_cli_reports_a_stage_error_in_one_line(setup, tmp_path):
    """Through the CLI and Prefect: the truncated file is named on one `error:` line, with no traceback."""
    import subprocess
    import sys

    import yaml

    cfg, s2, out = setup
    f = _items(s2)[2].parent / "B12.tif"
    f.write_bytes(f.read_bytes()[:4000])
    raw = json.loads(cfg.model_dump_json())
    raw.pop("truth")
    raw["output"] = str(tmp_path / "cli-out")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    exe = Path(sys.executable).parent / "forestcarbon"
    res = subprocess.run([str(exe), "run", str(tmp_path / "c.yaml"), "--stage", "mosaic"], capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 2
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "B12.tif: truncated file of scene" in errors[0]
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "cli-out" / "mosaic" / "reflectance.tif").exists()


def test_float_reflectance_instead_of_dn(setup):
    """A band rewritten as float reflectance (DN / 10000) would be scaled again: refused, naming file and band."""
    cfg, s2, out = setup
    f = _items(s2)[1].parent / "B04.tif"
    with rasterio.open(f) as src:
        prof, arr = src.profile, src.read(1)
    prof.update(dtype="float32", predictor=1)
    with rasterio.open(f, "w", **prof) as dst:
        dst.write((arr / 10_000.0).astype("float32"), 1)
    with pytest.raises(SceneError, match=r"B04\.tif: band 'red' of scene .* holds float32 values"):
        _run(cfg)
    _no_output(out)


def test_mixed_crs_aws_tile_folder_fails_at_preflight(tmp_path):
    """Real data: the 29RKH scene as an AWS tile folder whose R10m/B03.jp2 was reprojected to UTM 28N: the
    mosaic-only CLI run stops at preflight with one line naming that file and both CRSs; nothing is written."""
    import subprocess
    import sys
    import time

    import yaml

    from .conftest import shared
    from .s2_layouts import REAL_S2, REAL_S2_ITEM, reproject_in_place, write_aws_tile

    tile = write_aws_tile(shared(REAL_S2) / REAL_S2_ITEM, tmp_path / "scenes")
    reproject_in_place(tile / "R10m" / "B03.jp2", "EPSG:32628")
    cfg = {"grid": {"crs": "EPSG:32629", "resolution_m": 100, "bounds": [230_000, 2_720_000, 270_000, 2_760_000]},
           "inputs": {"stac_items": str(tmp_path / "scenes")}, "output": str(tmp_path / "out")}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    exe = Path(sys.executable).parent / "forestcarbon"
    t0 = time.monotonic()
    res = subprocess.run([str(exe), "run", str(tmp_path / "c.yaml"), "--stage", "mosaic"], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 2, res.stderr
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "band file R10m/B03.jp2 is in EPSG:32628, metadata.xml says EPSG:32629" in errors[0]
    assert "Traceback" not in res.stderr and time.monotonic() - t0 < 60
    assert not (tmp_path / "out").exists()
