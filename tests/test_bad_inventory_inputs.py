"""Bad data that used to pass or fail late: each is one line naming file, field, rows (as a spreadsheet
numbers them) or value, before any stage runs, and nothing is written."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest

from forestcarbon.config import load_config
from forestcarbon.errors import ConfigError, FieldError
from forestcarbon.flows.stages import preflight

from .test_pipeline import _cli, _edited


def _copy_trees(scene_cfg, tmp_path, edit):
    t = pd.read_csv(scene_cfg.parent / "ground/trees.csv", dtype={"plot_id": str, "tree_id": str})
    p = tmp_path / "trees.csv"
    edit(t).to_csv(p, index=False)
    return p


def _copy_parcels(scene_cfg, tmp_path, edit):
    g = gpd.read_file(scene_cfg.parent / "parcels/parcels.gpkg")
    p = tmp_path / "parcels.gpkg"
    edit(g).to_file(p)
    return p


CASES = {
    # DBH recorded in millimetres: every tree 10x, plots ~200x their AGB
    "dbh_in_mm": (lambda s, t: {"trees": _copy_trees(s, t, lambda d: d.assign(dbh_cm=d.dbh_cm * 10))},
                  FieldError, ["'dbh_cm' has", "above 300 cm", "millimetres"]),
    # ... where no single tree looks impossible (all below 300 "cm"), the plots' AGB does
    "dbh_in_mm_small_trees": (lambda s, t: {"trees": _copy_trees(s, t, lambda d: d.assign(
        dbh_cm=(d.dbh_cm * 10).clip(upper=290)))}, FieldError, ["Mg/ha of live AGB, above the 600", "millimetres"]),
    "header_only_trees": (lambda s, t: {"trees": _copy_trees(s, t, lambda d: d.iloc[:0])},
                          FieldError, ["has no data rows"]),
    "height_in_dm": (lambda s, t: {"trees": _copy_trees(s, t, lambda d: d.assign(height_m=d.height_m * 10))},
                     FieldError, ["'height_m' has", "decimetres or feet"]),
    # the 小班 key XIAN+XIANG+CUN+LIN_BAN+XIAO_BAN: row 6 given row 5's key
    "duplicate_parcel_ids": (lambda s, t: {"parcels": _copy_parcels(s, t, lambda g: g.assign(**{
        k: g[k].where(g.index != 5, g[k][4]) for k in ("XIAN", "XIANG", "CUN", "LIN_BAN", "XIAO_BAN")}))},
        FieldError, ["'XIAN+XIANG+CUN+LIN_BAN+XIAO_BAN' has duplicated values", "(rows [5, 6])"]),
    "parcel_without_geometry": (lambda s, t: {"parcels": _copy_parcels(s, t, lambda g: g.set_geometry(
        g.geometry.where(g.index != 3, None)))}, FieldError, ["have no geometry"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_inventory_fails_before_any_stage(small_scene, tmp_path, case):
    make, err, words = CASES[case]
    files = make(small_scene, tmp_path)
    bad = _edited(small_scene, tmp_path, lambda r: r["inputs"].update({k: str(v) for k, v in files.items()}))
    with pytest.raises(err) as info:
        preflight(load_config(bad))
    assert all(w in str(info.value) for w in words), str(info.value)
    res = _cli("run", str(bad))
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]  # logged warnings may precede it
    assert res.returncode == 2 and len(errors) == 1 and "Traceback" not in res.stderr, res.stderr
    assert all(w in errors[0] for w in words)
    assert not (tmp_path / "never-written").exists()


def test_rows_are_numbered_as_a_spreadsheet_shows_them(small_scene, tmp_path):
    """The 4th data row is row 5 of the file (header = row 1), in the tables' and the allometry's messages."""
    p = _copy_trees(small_scene, tmp_path, lambda d: d.assign(dbh_cm=d.dbh_cm.where(d.index != 3, -1)))
    bad = _edited(small_scene, tmp_path, lambda r: r["inputs"].update(trees=str(p)))
    with pytest.raises(FieldError, match=r"rows \[5\] have \[-1\.0\]"):
        preflight(load_config(bad))
    assert pd.read_csv(p).dbh_cm.iloc[3] == -1  # pandas row 3 is the file's line 5


def test_plots_off_the_grid_are_named(small_scene, tmp_path):
    g = gpd.read_file(small_scene.parent / "ground/plots.gpkg")
    g.loc[[0, 1], "geometry"] = g.geometry[[0, 1]].translate(50_000, 0)
    p = tmp_path / "plots.gpkg"
    g.to_file(p)
    bad = _edited(small_scene, tmp_path, lambda r: r["inputs"].update(plots=str(p)))
    with pytest.raises(FieldError, match=rf"2 of {len(g)} plots lie outside the grid .*\['{g.plot_id[0]}', '{g.plot_id[1]}'\]"):
        preflight(load_config(bad))


def test_output_folder_may_not_be_an_input(small_scene, tmp_path):
    scene = small_scene.parent
    for out, words in ((scene / "sentinel2", "is the input"), (scene / "lidar" / "out", "lies inside the input"),
                       (scene, "holds the input")):
        cfg = load_config(small_scene).with_output(out)
        with pytest.raises(ConfigError, match=words):
            preflight(cfg)


def test_missing_aoi_is_one_line(small_scene, tmp_path):
    def edit(r):
        r["grid"].pop("bounds")
        r["grid"]["aoi"] = str(tmp_path / "nowhere.gpkg")
    bad = _edited(small_scene, tmp_path, edit)
    res = _cli("run", str(bad))
    assert res.returncode == 2 and "grid.aoi: file not found" in res.stderr and "Traceback" not in res.stderr


def test_unexpected_errors_are_one_line_with_a_logged_traceback(small_scene, tmp_path, monkeypatch):
    """An error nobody planned for ends as one line naming the log file that holds the traceback, in the
    output folder's parent; --debug shows it instead."""
    from typer.testing import CliRunner

    from forestcarbon.flows import cli

    def broken(*a, **k):
        raise KeyError("band_7")

    monkeypatch.setattr(cli, "_run", broken)
    out = tmp_path / "runs" / "out"
    res = CliRunner().invoke(cli.app, ["run", str(small_scene), "--out", str(out)])
    assert res.exit_code == 1
    lines = [ln for ln in res.output.strip().splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1 and "unexpected KeyError: 'band_7'" in lines[0]
    logs = list((tmp_path / "runs").glob("forestcarbon-error-*.log"))
    assert len(logs) == 1 and "Traceback" in logs[0].read_text() and str(logs[0]) in lines[0]
    res = CliRunner().invoke(cli.app, ["run", str(small_scene), "--out", str(out), "--debug"])
    assert isinstance(res.exception, KeyError)


def test_lidar_tiles_off_the_grid_are_named(small_scene, tmp_path):
    """A LiDAR tile 100 km away is refused at preflight, named, instead of stretching the CHM over the gap."""
    import shutil

    import laspy

    from forestcarbon.errors import LidarError

    src = sorted((small_scene.parent / "lidar").glob("*.la[sz]"))[0]
    folder = tmp_path / "lidar"
    shutil.copytree(small_scene.parent / "lidar", folder)
    las = laspy.read(src)
    las.header.offsets = las.header.offsets + np.array([100_000.0, 0.0, 0.0])
    las.x = np.asarray(las.x) + 100_000.0
    las.write(folder / "far_away.laz")
    bad = _edited(small_scene, tmp_path, lambda r: r["inputs"].update(laz=str(folder)))
    with pytest.raises(LidarError, match=r"1 of \d+ LiDAR tiles lie outside the grid .*far_away.laz"):
        preflight(load_config(bad))
