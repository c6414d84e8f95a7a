"""Each stage is checked for its own inputs only, and the CLI runs in-process unless Prefect is asked for."""

from __future__ import annotations

import pytest
import yaml

from forestcarbon.config import load_config
from forestcarbon.errors import ConfigError

from .test_pipeline import _cli


def _mosaic_only(scene_cfg, tmp_path):
    raw = yaml.safe_load(scene_cfg.read_text())
    cfg = {"name": "mosaic-only", "grid": raw["grid"], "inputs": {"stac_items": str(scene_cfg.parent / "sentinel2")},
           "mosaic": raw["mosaic"], "output": str(tmp_path / "out")}
    p = tmp_path / "mosaic.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_a_mosaic_only_run_needs_only_the_scenes(small_scene, tmp_path):
    p = _mosaic_only(small_scene, tmp_path)
    res = _cli("run", str(p), "--stage", "mosaic")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "out/mosaic/reflectance.tif").exists()
    assert "Starting temporary server" not in res.stderr  # in-process, no Prefect server
    # the other stages say what they lack, in one line
    res = _cli("run", str(p), "--stage", "plots")
    assert res.returncode == 2 and res.stderr.strip().splitlines()[-1] == "error: inputs.plots is required by stage 'plots'"


def test_preflight_checks_only_the_requested_stages(small_scene, tmp_path):
    from forestcarbon.flows.stages import preflight

    cfg = load_config(_mosaic_only(small_scene, tmp_path))
    preflight(cfg, ["mosaic"])
    for stage, key in (("parcels", "parcels"), ("plots", "plots")):
        with pytest.raises(ConfigError, match=f"inputs.{key} is required by stage '{stage}'"):
            preflight(cfg, [stage])
