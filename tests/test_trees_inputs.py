"""Bad and awkward input to the single-tree chain (``forestcarbon trees-detect``): each one line or a logged
count, before heavy work, and nothing half-written.

The CHMs are drawn here: paraboloid crowns at known positions, so which tree stands in which polygon is
known without running the chain.
"""

from __future__ import annotations

import logging

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
import shapely
from rasterio.transform import from_origin
from typer.testing import CliRunner

from forestcarbon.flows.cli import app

RES = 0.5
X0, Y0 = 500_000.0, 3_200_000.0  # EPSG:4549 (CGCS2000 / 3-degree GK CM 120E) metres
# (x, y, height, crown radius): well apart, apexes at cell centres (an apex on a cell corner makes a
# plateau of equal cells after smoothing, which lidR's rule may count twice when wider than the window)
TREES = [(X0 + 10.25, Y0 - 10.25, 18.0, 3.0), (X0 + 30.25, Y0 - 12.25, 12.0, 2.5), (X0 + 20.25, Y0 - 30.25, 24.0, 3.5)]


def _chm(tmp_path, name="chm.tif", crs="EPSG:4549", flat=None, transform=None, trees=None):
    n = 80
    yy, xx = np.mgrid[0:n, 0:n]
    x = X0 + (xx + 0.5) * RES
    y = Y0 - (yy + 0.5) * RES
    chm = np.zeros((n, n), "float32")
    for tx, ty, h, r in (TREES if trees is None else trees):
        d2 = (x - tx) ** 2 + (y - ty) ** 2
        chm = np.maximum(chm, np.where(d2 < r * r, h * (1 - 0.3 * d2 / (r * r)), 0))
    if flat is not None:
        chm[:] = flat
    path = tmp_path / name
    with rasterio.open(path, "w", driver="GTiff", width=n, height=n, count=1, dtype="float32", crs=crs,
                       transform=transform or from_origin(X0, Y0, RES, RES), nodata=-9999) as dst:
        dst.write(chm, 1)
    return path


def _field(tmp_path):
    """Field trees of one group with a known ln D - ln H relation (enough for a group model)."""
    rng = np.random.default_rng(3)
    h = rng.uniform(6, 28, 60)
    d = np.exp(0.3 + 1.0 * np.log(h) + rng.normal(0, 0.1, h.size))
    path = tmp_path / "field.csv"
    pd.DataFrame({"species_group": "evergreen_broadleaf", "dbh_cm": d.round(1), "height_m": h.round(1),
                  "status": "alive", "height_source": "measured"}).to_csv(path, index=False)
    return path


def _run(args):
    return CliRunner().invoke(app, ["trees-detect", *map(str, args)])


def test_chm_without_trees_writes_an_empty_register_and_says_so(tmp_path, caplog):
    chm = _chm(tmp_path, flat=1.0)
    with caplog.at_level(logging.WARNING, logger="forestcarbon"):
        res = _run([chm, "--out", tmp_path / "out", "--field-trees", _field(tmp_path)])
    assert res.exit_code == 0, res.output
    msgs = [r.getMessage() for r in caplog.records if "no tree top" in r.getMessage()]
    assert len(msgs) == 1 and "highest CHM cell 1.0 m" in msgs[0] and str(chm) in msgs[0]
    trees = pd.read_parquet(tmp_path / "out" / "trees" / "trees.parquet")
    assert len(trees) == 0
    assert "0 trees" in res.output


def test_chm_in_geographic_coordinates_is_refused_in_one_line(tmp_path):
    chm = _chm(tmp_path, crs="EPSG:4490", transform=from_origin(118.5, 29.0, 5e-6, 5e-6))
    res = _run([chm, "--out", tmp_path / "out", "--field-trees", _field(tmp_path)])
    assert res.exit_code == 2
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and str(chm) in lines[0] and "projected grid in metres" in lines[0]
    assert not (tmp_path / "out" / "trees" / "trees.parquet").exists()


def _species(tmp_path, names):
    # one polygon around each of the first trees, in the order given
    polys = [shapely.Point(tx, ty).buffer(4.0) for tx, ty, _, _ in TREES[:len(names)]]
    path = tmp_path / "species.gpkg"
    gpd.GeoDataFrame({"species": names}, geometry=polys, crs="EPSG:4549").to_file(path, layer="species")
    return path


def test_species_layer_with_a_name_no_group_knows_fails_naming_the_feature(tmp_path):
    sp = _species(tmp_path, ["马尾松", "Quercus imaginaria"])
    res = _run([_chm(tmp_path), "--out", tmp_path / "out", "--field-trees", _field(tmp_path), "--species", sp])
    assert res.exit_code == 2
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1
    assert "Quercus imaginaria" in lines[0] and "features [2]" in lines[0] and "'species'" in lines[0]
    assert not (tmp_path / "out" / "trees").exists()  # refused before any CHM work


def test_species_layer_gives_the_group_inside_and_the_default_elsewhere(tmp_path):
    sp = _species(tmp_path, ["马尾松"])  # Masson pine, around the first tree only
    res = _run([_chm(tmp_path), "--out", tmp_path / "out", "--field-trees", _field(tmp_path), "--species", sp])
    assert res.exit_code == 0, res.output
    trees = pd.read_parquet(tmp_path / "out" / "trees" / "trees.parquet")
    assert len(trees) == len(TREES)
    first = np.hypot(trees["x"] - TREES[0][0], trees["y"] - TREES[0][1]) < 1.0
    assert first.sum() == 1
    assert trees.loc[first, "species_group"].item() == "masson_pine"
    assert trees.loc[first, "group_source"].item() == "species_layer"
    assert (trees.loc[~first, "group_source"] == "default").all()
    assert (trees.loc[~first, "species_group"] == "evergreen_broadleaf").all()
    # the Masson pine tree has no field trees of its group: its DBH comes from the pooled model, and says so
    assert trees.loc[first, "dbh_source"].item().startswith("dbh_model:*:")
    # heights: the apex of each drawn paraboloid lies inside one 0.5 m cell of it (within the 30 % fall-off)
    h = trees.set_index(np.argmin(np.hypot(trees["x"].to_numpy()[:, None] - np.array([t[0] for t in TREES]),
                                           trees["y"].to_numpy()[:, None] - np.array([t[1] for t in TREES])),
                                  axis=1))["height_m"].sort_index()
    for k, (_, _, top, r) in enumerate(TREES):
        assert top * (1 - 0.3 * (RES / r) ** 2) <= h[k] <= top


@pytest.mark.parametrize("tile_px", [64, 4096])
def test_trees_on_tile_edges_found_once(tmp_path, tile_px):
    """Tiles of 64 cells (32 m) cut through the second tree's crown (x 27.75-32.75 m): still one top each."""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"grid: {{crs: 'EPSG:4549', resolution_m: 10, bounds: [{X0}, {Y0 - 40}, {X0 + 40}, {Y0}]}}\n"
                   f"inputs: {{}}\ntrees: {{tile_px: {tile_px}}}\n")
    res = _run([_chm(tmp_path), "--out", tmp_path / "out", "--field-trees", _field(tmp_path), "--config", cfg])
    assert res.exit_code == 0, res.output
    trees = pd.read_parquet(tmp_path / "out" / "trees" / "trees.parquet")
    d = np.hypot(trees["x"].to_numpy()[:, None] - np.array([t[0] for t in TREES]),
                 trees["y"].to_numpy()[:, None] - np.array([t[1] for t in TREES]))
    assert len(trees) == len(TREES) and (d.min(axis=0) < 1.0).all()


@pytest.mark.parametrize("smooth,rough_m", [("median", 0.4), ("none", 3.0)])
def test_streamed_file_detection_equals_the_in_memory_chain(tmp_path, smooth, rough_m):
    """detect_file reads tiles of 64 cells through rasterio windows; the trees, heights, crown areas and
    outlines equal detect_trees on the whole array with its labels (crown_table, crown_polygons).  The rough
    unsmoothed case has lower tops within a higher one's window across tile edges: a pass-1 buffer short of
    the largest window keeps them (1,060 tops against 1,013 on uniform noise before the fix)."""
    from forestcarbon.flows.single_trees import Detection, detect_file, top_heights
    from forestcarbon.rs.lidar.crowns import crown_polygons, crown_table
    from forestcarbon.rs.lidar.trees import detect_trees

    rng = np.random.default_rng(11)
    n = 300
    yy, xx = np.mgrid[0:n, 0:n] * RES
    chm = np.zeros((n, n))
    for tx, ty, h in zip(rng.uniform(0, n * RES, 160), rng.uniform(0, n * RES, 160), rng.uniform(6, 30, 160)):
        r = 0.15 * h + 1.0
        chm = np.maximum(chm, h * (1 - ((xx - tx) ** 2 + (yy - ty) ** 2) / r**2))
    chm = np.round(np.clip(chm + rng.normal(0, rough_m, chm.shape), 0, None), 1)
    tf = from_origin(X0, Y0, RES, RES)
    path = tmp_path / "forest.tif"
    with rasterio.open(path, "w", driver="GTiff", width=n, height=n, count=1, dtype="float32", crs="EPSG:4549",
                       transform=tf) as dst:
        dst.write(chm.astype("float32"), 1)
    chm = chm.astype("float32").astype("float64")
    det = Detection(tile_px=64, smooth=smooth)
    trees, polys, _ = detect_file(path, det)
    ref, labels = detect_trees(chm, tf, det.window_m, det.min_height_m, tile_px=10_000,
                               smooth={"size_px": 3, "method": "median"} if smooth == "median" else None,
                               max_cr_m=det.max_crown_m)
    assert len(trees) == len(ref) > 100
    np.testing.assert_array_equal(trees[["x", "y"]].to_numpy(), ref[["x", "y"]].to_numpy())
    size = 3 if smooth == "median" else 1
    np.testing.assert_allclose(trees["height_m"], top_heights(chm, ref["row"].to_numpy(), ref["col"].to_numpy(), size))
    ct = crown_table(labels, chm, tf).set_index("label")
    np.testing.assert_allclose(trees["crown_area_m2"], ct["crown_area_m2"].reindex(ref["tree_index"] + 1).fillna(0))
    cp = crown_polygons(labels, tf).set_index("label").geometry
    for k, g in zip(ref["tree_index"].to_numpy(), polys):
        assert g.symmetric_difference(cp[k + 1]).area < 1e-6


def test_two_epochs_growth_new_and_lost_trees(tmp_path):
    """Epoch 2: the first tree grew 1.5 m, the second was felled, a new one stands at (x0 + 32, y0 - 32)."""
    field = _field(tmp_path)
    one = _run([_chm(tmp_path, "e1.tif"), "--out", tmp_path / "e1", "--field-trees", field])
    assert one.exit_code == 0, one.output
    later = [(TREES[0][0], TREES[0][1], TREES[0][2] + 1.5, TREES[0][3]), TREES[2], (X0 + 32.25, Y0 - 32.25, 15.0, 2.5)]
    prev = tmp_path / "e1" / "trees" / "trees.parquet"
    two = _run([_chm(tmp_path, "e2.tif", trees=later), "--out", tmp_path / "e2", "--field-trees", field,
                "--previous", prev])
    assert two.exit_code == 0, two.output
    assert "2 matched, 1 lost, 1 new" in two.output
    a, b = pd.read_parquet(prev), pd.read_parquet(tmp_path / "e2" / "trees" / "trees.parquet")
    ch = pd.read_csv(tmp_path / "e2" / "trees" / "changes.csv")

    def near(df, xy):
        return df.loc[np.hypot(df["x"] - xy[0], df["y"] - xy[1]) < 1.0, "tree_id"].item()

    m = ch[ch["change"] == "matched"].set_index("id_a")
    grown, still = near(a, TREES[0]), near(a, TREES[2])
    assert m.loc[grown, "id_b"] == near(b, TREES[0]) and m.loc[still, "id_b"] == near(b, TREES[2])
    assert m.loc[grown, "id_b"] == grown  # ids come from positions: same place, same id
    # the apex cell holds the drawn top (apexes at cell centres), so the change is the drawn 1.5 m
    assert m.loc[grown, "dheight_m"] == pytest.approx(1.5, abs=1e-4)
    assert m.loc[still, "dheight_m"] == pytest.approx(0.0, abs=1e-4)
    assert m.loc[grown, "dcarbon_kg"] > 0
    assert ch.loc[ch["change"] == "lost", "id_a"].tolist() == [near(a, TREES[1])]
    assert ch.loc[ch["change"] == "new", "id_b"].tolist() == [near(b, later[2])]
