"""Nightly tiled mosaic: no-op reruns, incremental updates, failing tiles, the deployment."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio

from forestcarbon.config import load_config
from forestcarbon.flows.nightly import nightly_update

DAY = dt.date(2025, 1, 10)


def _digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture()
def scene_copy(small_scene, tmp_path):
    """A private copy of the small scene's satellite folder (tests add and break scenes)."""
    s2 = tmp_path / "s2"
    shutil.copytree(small_scene.parent / "sentinel2", s2)
    cfg = load_config(small_scene).with_output(tmp_path / "out")
    inputs = cfg.inputs.model_copy(update={"stac_items": s2})
    mosaic = cfg.mosaic.model_copy(update={"tile_m": 1000.0, "window_days": 150})
    return cfg.model_copy(update={"inputs": inputs, "mosaic": mosaic}), s2


def _add_scene(s2: Path, src_name: str, new_id: str, date: str, lonlat_box) -> Path:
    """A new acquisition: a copy of an existing one with a new id, date and a footprint over one tile."""
    src = s2 / src_name
    dst = s2 / new_id
    shutil.copytree(src, dst)
    (dst / f"{src_name}.json").unlink()
    item = json.loads((src / f"{src_name}.json").read_text())
    item["id"] = new_id
    item["properties"]["datetime"] = f"{date}T02:55:00Z"
    x0, y0, x1, y1 = lonlat_box
    item["geometry"] = {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]}
    item["bbox"] = [x0, y0, x1, y1]
    (dst / f"{new_id}.json").write_text(json.dumps(item))
    return dst


def _tile_box(out: Path, name: str, shrink=0.3):
    item = json.loads((out / "mosaic" / "tiles" / name / f"{name}.json").read_text())
    x0, y0, x1, y1 = item["bbox"]
    dx, dy = (x1 - x0) * shrink, (y1 - y0) * shrink
    return (x0 + dx, y0 + dy, x1 - dx, y1 - dy)


def test_nightly_noop_incremental_and_failure(scene_copy):
    cfg, s2 = scene_copy
    out = Path(cfg.output)
    first = nightly_update(cfg, DAY)
    assert len(first["updated"]) == 9 and not first["failed"]
    before = _digest(out)

    second = nightly_update(cfg, DAY)  # nothing new: no work, byte-identical outputs
    assert second["updated"] == [] and len(second["unchanged"]) == 9
    assert _digest(out) == before

    # the VRT presents the tiles as one layer on the target grid
    with rasterio.open(out / "mosaic" / "reflectance.vrt") as vrt, \
         rasterio.open(out / "mosaic" / "tiles" / "r001c001" / "reflectance.tif") as tile:
        w = vrt.window(*tile.bounds)
        np.testing.assert_array_equal(vrt.read(window=w), tile.read())
        assert vrt.descriptions[:3] == ("blue", "green", "red")

    # a new scene over the centre tile only: only that tile is recomputed
    src_name = sorted(p.name for p in s2.iterdir())[0]
    _add_scene(s2, src_name, "S2B_NEW_20250105_0_L2A", "2025-01-05", _tile_box(out, "r001c001"))
    third = nightly_update(cfg, DAY)
    assert third["updated"] == ["r001c001"] and not third["failed"]
    after = _digest(out)
    changed = {k for k in after if after[k] != before.get(k)}
    assert "mosaic/tiles/r001c001/reflectance.tif" in changed
    assert all(k.startswith("mosaic/tiles/r001c001/") or k == "mosaic/nightly_state.json" for k in changed), changed

    # a corrupt (truncated) scene file: its tile keeps the previous mosaic and is reported
    bad = _add_scene(s2, src_name, "S2B_BAD_20250107_0_L2A", "2025-01-07", _tile_box(out, "r000c000"))
    blob = (bad / "B04.tif").read_bytes()
    (bad / "B04.tif").write_bytes(blob[: len(blob) // 3])
    snapshot = _digest(out)
    fourth = nightly_update(cfg, DAY)
    assert [f["tile"] for f in fourth["failed"]] == ["r000c000"] and fourth["updated"] == []
    assert _digest(out) == snapshot  # previous mosaic kept, nothing half-written
    assert not list((out / "mosaic" / "tiles").glob(".*"))


def test_nightly_deployment_schedule(small_scene):
    from forestcarbon.flows.pipeline import nightly_deployment

    dep = nightly_deployment(str(small_scene))
    sched = dep.schedules[0].schedule
    assert sched.cron == "0 2 * * *" and sched.timezone == "Asia/Shanghai"
    assert dep.parameters["config_path"] == str(small_scene.resolve())


def test_serve_needs_a_real_server(small_scene, monkeypatch):
    import subprocess
    import sys

    env = {k: v for k, v in __import__("os").environ.items() if k != "PREFECT_API_URL"}
    exe = Path(sys.executable).parent / "forestcarbon"
    res = subprocess.run([str(exe), "serve", str(small_scene)], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 2
    assert "PREFECT_API_URL is not set" in res.stderr and "Traceback" not in res.stderr


def test_nightly_stac_items_valid_with_their_window(scene_copy):
    """Every tile item and the collection validate against the STAC 1.1.0 core schemas pystac ships (offline;
    the projection extension's schema is remote, so its fields are checked here by hand): datetime null with
    start/end the compositing window, proj:code, shape and transform those of the tile's COG."""
    from pystac.validation import validate_dict

    cfg, _ = scene_copy
    out = Path(cfg.output)
    nightly_update(cfg, DAY)
    start = (DAY - dt.timedelta(days=cfg.mosaic.window_days)).isoformat()
    items = sorted((out / "mosaic" / "tiles").glob("*/*.json"))
    assert len(items) == 9
    for p in items:
        item = json.loads(p.read_text())
        core = {**item, "stac_extensions": []}
        assert validate_dict(core, href=str(p))
        pr = item["properties"]
        assert pr["datetime"] is None
        assert pr["start_datetime"] == f"{start}T00:00:00Z" and pr["end_datetime"] == f"{DAY.isoformat()}T23:59:59Z"
        with rasterio.open(p.parent / "reflectance.tif") as src:
            assert pr["proj:code"] == f"EPSG:{src.crs.to_epsg()}"
            assert pr["proj:shape"] == [src.height, src.width]
            assert pr["proj:transform"] == list(src.transform)[:6]
    coll = json.loads((out / "mosaic" / "collection.json").read_text())
    assert validate_dict({**coll, "stac_extensions": []}, href=str(out / "mosaic" / "collection.json"))
    assert coll["extent"]["temporal"]["interval"] == [[f"{start}T00:00:00Z", f"{DAY.isoformat()}T23:59:59Z"]]
