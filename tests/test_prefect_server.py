"""Served deployments against a real Prefect server: ``prefect server start`` on a free loopback port with a
temporary PREFECT_HOME, ``forestcarbon serve`` in a subprocess, the scheduler creating the nightly runs at
02:00 Asia/Shanghai, and runs triggered through the API that complete and write their outputs.

Everything goes through the server's REST API (httpx), as the UI does.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest
import yaml

from .procs import free_port, stop

BIN = Path(sys.executable).parent


def _wait(pred, timeout: float, what: str, step: float = 1.0, procs=()):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = pred()
        if got:
            return got
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(f"{what}: process {p.args[:2]} exited with {p.returncode}")
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect_home")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({"PREFECT_HOME": str(home), "PREFECT_API_URL": api, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PREFECT_SERVER_UI_ENABLED": "false", "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",
                "PREFECT_RUNNER_POLL_FREQUENCY": "2", "PREFECT_LOGGING_LEVEL": "INFO"})
    log = open(home / "server.log", "w")
    proc = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def healthy():
            try:
                return httpx.get(f"{api}/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False
        _wait(healthy, 120, "the Prefect server's /api/health", procs=[proc])
        yield api, env, home
    finally:
        stop(proc)
        log.close()


@pytest.fixture(scope="module")
def served(server, small_scene, tmp_path_factory):
    """``forestcarbon serve`` on a copy of the small scene's config writing into a temporary folder."""
    api, env, home = server
    out = tmp_path_factory.mktemp("served_out")
    raw = yaml.safe_load(small_scene.read_text())
    for k, v in raw["inputs"].items():
        if isinstance(v, str) and not k.endswith(("_layer", "_id", "_field", "_crs")) and (small_scene.parent / v).exists():
            raw["inputs"][k] = str(small_scene.parent / v)
    raw["truth"] = {k: str(small_scene.parent / v) for k, v in raw["truth"].items()}
    raw["output"] = str(out)
    raw["mosaic"] = {**raw.get("mosaic", {}), "tile_m": 1000.0, "window_days": 150}
    cfg = out.parent / "served.yaml"
    cfg.write_text(yaml.safe_dump(raw, allow_unicode=True))
    log = open(home / "serve.log", "w")
    proc = subprocess.Popen([str(BIN / "forestcarbon"), "serve", str(cfg)], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path_factory.mktemp("cwd"))
    try:
        def deployments():
            r = httpx.post(f"{api}/deployments/filter", json={}, timeout=10)
            r.raise_for_status()
            got = {d["name"]: d for d in r.json()}
            return got if len(got) >= 6 else None
        deps = _wait(deployments, 120, "forestcarbon serve to register its deployments", procs=[proc])
        yield api, deps, out, raw["name"], home
    finally:
        stop(proc)
        log.close()


def _run_and_wait(api: str, dep: dict, parameters: dict, timeout: float, home: Path) -> dict:
    r = httpx.post(f"{api}/deployments/{dep['id']}/create_flow_run", json={"parameters": parameters}, timeout=10)
    r.raise_for_status()
    run_id = r.json()["id"]

    def final():
        fr = httpx.get(f"{api}/flow_runs/{run_id}", timeout=10).json()
        return fr if fr["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") else None
    fr = _wait(final, timeout, f"flow run of {dep['name']}", step=2)
    if fr["state"]["type"] != "COMPLETED":
        logs = httpx.post(f"{api}/logs/filter", json={"logs": {"flow_run_id": {"any_": [run_id]}}}, timeout=10).json()
        tail = "\n".join(x["message"] for x in logs[-15:])
        serve_log = (home / "serve.log").read_text()[-3000:]
        raise AssertionError(f"{dep['name']} ended {fr['state']['type']}: {fr['state'].get('message')}\n{tail}\n"
                             f"serve log:\n{serve_log}")
    return fr


def test_deployments_registered_by_module_path_with_typed_parameters(served):
    api, deps, _, name, _ = served
    assert set(deps) == {f"{name}-{k}" for k in ("nightly", "pipeline", "inputs", "estimate", "accounts",
                                                 "boundary-carbon")}
    for d in deps.values():  # a module path (Prefect writes module.function), never a file path
        assert d["entrypoint"] in ("forestcarbon.flows.pipeline.pipeline_flow", "forestcarbon.flows.pipeline.nightly_flow",
                                   "forestcarbon.flows.pipeline.boundary_flow"), d["entrypoint"]
    stages = deps[f"{name}-pipeline"]["parameter_openapi_schema"]["properties"]["stages"]
    assert "mosaic" in str(stages) and "report" in str(stages)  # the UI renders a stage picker
    assert deps[f"{name}-estimate"]["parameters"]["stages"] == ["model", "map"]


def test_scheduler_creates_the_nightly_runs_at_two_in_shanghai(served):
    api, deps, _, name, _ = served
    dep = deps[f"{name}-nightly"]
    sched = httpx.get(f"{api}/deployments/{dep['id']}/schedules", timeout=10).json()
    assert [(s["schedule"]["cron"], s["schedule"]["timezone"], s["active"]) for s in sched] == [
        ("0 2 * * *", "Asia/Shanghai", True)]

    def scheduled():
        r = httpx.post(f"{api}/flow_runs/filter", json={"flow_runs": {
            "deployment_id": {"any_": [dep["id"]]}, "state": {"type": {"any_": ["SCHEDULED"]}}}}, timeout=10)
        return r.json() or None
    runs = _wait(scheduled, 90, "the scheduler to create the nightly's scheduled runs", step=2)
    for r in runs:
        start = dt.datetime.fromisoformat(r["expected_start_time"].replace("Z", "+00:00"))
        local = start.astimezone(ZoneInfo("Asia/Shanghai"))
        assert (local.hour, local.minute) == (2, 0) and start > dt.datetime.now(dt.timezone.utc)


def test_triggered_runs_complete_and_write_their_outputs(served):
    api, deps, out, name, home = served
    _run_and_wait(api, deps[f"{name}-nightly"], {"date": "2025-01-10"}, 600, home)
    tiles = list((out / "mosaic" / "tiles").glob("*/*.json"))
    assert tiles, "the nightly run wrote no mosaic tile"
    fr = _run_and_wait(api, deps[f"{name}-pipeline"], {"stages": ["plots"]}, 600, home)
    assert (out / "plots" / "plots.gpkg").exists() and (out / "plots" / "trees.csv").exists()
    assert fr["deployment_id"] == deps[f"{name}-pipeline"]["id"]
    # what the UI shows: the run named from the config, forestcarbon's own log lines, the summary artifacts
    assert fr["name"].startswith(f"{name}-pipeline-"), fr["name"]
    logs = httpx.post(f"{api}/logs/filter", json={"logs": {"flow_run_id": {"any_": [fr["id"]]}}, "limit": 200},
                      timeout=10).json()
    assert any("stage plots: done" in x["message"] for x in logs), [x["message"] for x in logs][:20]
    arts = httpx.post(f"{api}/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [fr["id"]]}}},
                      timeout=10).json()
    kinds = {a["key"]: a["type"] for a in arts}
    key = "".join(c if c.isalnum() else "-" for c in name.lower())
    assert kinds.get(f"{key}-summary") == "markdown" and kinds.get(f"{key}-stage-timings") == "table", kinds
    md = next(a["data"] for a in arts if a["key"] == f"{key}-summary")
    assert "| plots |" in md and str(out) in md


def test_carbon_for_an_uploaded_boundary(served, tmp_path):
    """The boundary deployment with GeoJSON text pasted in its form: the run's artifact gives the carbon inside
    from the latest epoch of an accounts database (the loss tests' 4 x 4 grid, computed here by hand)."""
    import geopandas as gpd
    import numpy as np
    import shapely
    from typer.testing import CliRunner

    from forestcarbon.flows.cli import app

    from .accounts_outputs import CRS, X0, Y0, make_output, squares

    api, deps, _, name, home = served
    c = np.arange(16, dtype=float).reshape(4, 4) + 50.0  # Mg C/ha
    db = tmp_path / "acc.sqlite"
    out = make_output(tmp_path / "o", squares(), [10.0, 20.0], sd_t=[1.0, 1.0], scene_dates=("2024-07-01",),
                      carbon_mg_ha=c, carbon_sd_mg_ha=0.1 * c)
    r = CliRunner().invoke(app, ["accounts", "commit", str(out), "--epoch", "2024", "--db", str(db)])
    assert r.exit_code == 0, r.output
    poly = shapely.box(X0, Y0 - 40, X0 + 20, Y0 - 20)  # the bottom-left 2 x 2 pixels
    expect_t = (c[2, 0] + c[2, 1] + c[3, 0] + c[3, 1]) * 0.01  # Mg C/ha x 0.01 ha per pixel
    geojson = gpd.GeoSeries([poly], crs=CRS).to_crs("EPSG:4326").to_json()
    fr = _run_and_wait(api, deps[f"{name}-boundary-carbon"], {"boundary": geojson, "accounts_db": str(db)}, 300,
                       home)
    arts = httpx.post(f"{api}/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [fr["id"]]}}},
                      timeout=10).json()
    md = next(a["data"] for a in arts if a["key"].endswith("-boundary-carbon"))
    assert f"**{expect_t:,.1f} t C**" in md and "epoch **2024**" in md, md
