"""Analyst outputs: QGIS-styled GeoPackage, GeoParquet 1.1, UTF-8-BOM CSV, PNG choropleth.

References: the ``layer_styles`` schema as QGIS's OGR provider creates it (QgsOgrProviderMetadata::saveStyle),
GDAL reading the table back (pyogrio), class breaks from ``numpy.quantile``, bounding boxes from shapely,
Hilbert-curve adjacency (consecutive cells of a Hilbert order on a 2^n grid are edge neighbours), Excel's
BOM convention, and pixel colours read back from the PNG with Pillow.
"""

from __future__ import annotations

import csv
import json
import os
import sqlite3
import subprocess
import xml.etree.ElementTree as ET

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pyogrio
import pytest
import shapely
from matplotlib.colors import to_rgb

from forestcarbon.errors import FieldError
from forestcarbon.vector.choropleth import write_choropleth_png
from forestcarbon.vector.classes import NO_DATA_COLOUR
from forestcarbon.vector.outputs import write_csv_excel, write_geoparquet, write_styled_gpkg

SYSTEM_PYTHON = "/usr/bin/python3"  # PyQGIS comes with the distribution's Python (Debian: python3-qgis)

X0, Y0 = 500_000.0, 3_200_000.0


def grid_parcels(nx=10, ny=6, cell=100.0, seed=0) -> gpd.GeoDataFrame:
    rng = np.random.default_rng(seed)
    geoms, ids = [], []
    for j in range(ny):
        for i in range(nx):
            geoms.append(shapely.box(X0 + i * cell, Y0 + j * cell, X0 + (i + 1) * cell, Y0 + (j + 1) * cell))
            ids.append(f"QZ-{j:02d}-{i:02d}")
    n = len(geoms)
    dens = rng.gamma(3.0, 15.0, n)
    area = np.array([g.area for g in geoms]) / 10_000
    species = np.array(["杉木", "马尾松", "阔叶混交林"])[rng.integers(0, 3, n)]
    return gpd.GeoDataFrame({"parcel_id": ids, "species": species, "area_ha": area, "carbon_t_ha": dens,
                             "carbon_t": dens * area, "sd_t": 0.2 * dens * area}, geometry=geoms, crs="EPSG:4549")


def qgis_class(v: float, edges: np.ndarray) -> int:
    """The range QGIS's graduated renderer draws a value with: the first [lower, upper] holding it."""
    for i in range(len(edges) - 1):
        if edges[i] <= v <= edges[i + 1]:
            return i
    return -1


# ------------------------------------------------------------------ GeoPackage + QGIS style
# the columns and declared types of layer_styles as QGIS's OGR provider creates it through GDAL
# (QgsOgrProviderMetadata::saveStyle: OFTString width 256/30, OFSTBoolean, OFTDateTime)
QGIS_LAYER_STYLES = [("id", "INTEGER"), ("f_table_catalog", "TEXT(256)"), ("f_table_schema", "TEXT(256)"),
                     ("f_table_name", "TEXT(256)"), ("f_geometry_column", "TEXT(256)"), ("styleName", "TEXT(30)"),
                     ("styleQML", "TEXT"), ("styleSLD", "TEXT"), ("useAsDefault", "BOOLEAN"), ("description", "TEXT"),
                     ("owner", "TEXT(30)"), ("ui", "TEXT(30)"), ("update_time", "DATETIME")]


def test_gpkg_layer_styles_table_as_qgis_writes_it(tmp_path):
    g = grid_parcels()
    p = tmp_path / "parcels.gpkg"
    write_styled_gpkg(g, p, "carbon_t_ha", layer="parcels_carbon")
    con = sqlite3.connect(p)
    cols = [(r[1], r[2]) for r in con.execute("PRAGMA table_info(layer_styles)")]
    assert cols == QGIS_LAYER_STYLES
    assert con.execute("SELECT data_type FROM gpkg_contents WHERE table_name='layer_styles'").fetchone() == ("attributes",)
    geom_col = con.execute("SELECT column_name FROM gpkg_geometry_columns WHERE table_name='parcels_carbon'").fetchone()[0]
    rows = con.execute("SELECT f_table_catalog, f_table_schema, f_table_name, f_geometry_column, useAsDefault "
                       "FROM layer_styles").fetchall()
    # QGIS's loadStyle selects f_table_schema='' (empty, not NULL) AND f_table_name AND f_geometry_column
    assert rows == [("", "", "parcels_carbon", geom_col, 1)]
    con.close()
    # GDAL sees the same table: FID column id, useAsDefault a boolean, update_time a datetime, one row
    info = pyogrio.read_info(p, layer="layer_styles")
    assert info["fid_column"] == "id" and info["features"] == 1 and info["geometry_type"] is None
    assert list(info["fields"]) == [c for c, _ in QGIS_LAYER_STYLES[1:]]
    assert info["ogr_subtypes"][list(info["fields"]).index("useAsDefault")] == "OFSTBoolean"
    assert info["ogr_types"][list(info["fields"]).index("update_time")] == "OFTDateTime"
    styles = pyogrio.read_dataframe(p, layer="layer_styles")
    assert bool(styles.loc[0, "useAsDefault"]) and pd.notna(styles.loc[0, "update_time"])


@pytest.mark.parametrize("k", [4, 5, 7])
def test_qml_names_the_field_and_breaks_are_numpy_quantiles(tmp_path, k):
    g = grid_parcels(seed=k)
    p = tmp_path / "parcels.gpkg"
    write_styled_gpkg(g, p, "carbon_t_ha", k=k)
    qml = sqlite3.connect(p).execute("SELECT styleQML FROM layer_styles WHERE useAsDefault = 1").fetchone()[0]
    root = ET.fromstring(qml)  # well-formed XML (the DOCTYPE line included)
    assert root.tag == "qgis"
    r = root.find("renderer-v2")
    assert r.get("type") == "graduatedSymbol" and r.get("attr") == "carbon_t_ha"
    ranges = r.findall("ranges/range")
    expect = np.quantile(g["carbon_t_ha"].to_numpy(), np.linspace(0, 1, k + 1))
    got = np.array([float(x.get("lower")) for x in ranges] + [float(ranges[-1].get("upper"))])
    np.testing.assert_allclose(got, expect, rtol=1e-13)
    for a, b in zip(ranges[:-1], ranges[1:]):
        assert a.get("upper") == b.get("lower")  # contiguous classes
    assert all(x.get("label").endswith("t C/ha") for x in ranges)
    # every range's symbol exists and is a fill with a distinct colour
    symbols = {s.get("name"): s for s in r.findall("symbols/symbol")}
    colours = [symbols[x.get("symbol")].find("layer/prop[@k='color']").get("v") for x in ranges]
    assert all(symbols[x.get("symbol")].get("type") == "fill" for x in ranges)
    assert len(set(colours)) == k
    assert r.find("classificationMethod").get("id") == "Quantile"


def test_gpkg_reads_back_identical(tmp_path):
    g = grid_parcels()
    p = tmp_path / "parcels.gpkg"
    write_styled_gpkg(g, p, "carbon_t_ha", layer="parcels_carbon")
    assert sorted(pyogrio.list_layers(p)[:, 0]) == ["layer_styles", "parcels_carbon"]
    back = gpd.read_file(p, layer="parcels_carbon")
    pd.testing.assert_frame_equal(pd.DataFrame(back.drop(columns="geometry")), pd.DataFrame(g.drop(columns="geometry")))
    assert shapely.equals_exact(back.geometry.to_numpy(), g.geometry.to_numpy(), tolerance=0).all()
    assert back.crs.to_epsg() == 4549


def test_gpkg_failed_write_leaves_the_old_file(tmp_path):
    g = grid_parcels()
    p = tmp_path / "parcels.gpkg"
    write_styled_gpkg(g, p, "carbon_t_ha")
    before = p.read_bytes()
    bad = g.assign(carbon_t_ha=g["carbon_t_ha"].astype(object))
    bad.loc[3, "carbon_t_ha"] = "n/a"
    with pytest.raises(FieldError, match="carbon_t_ha"):
        write_styled_gpkg(bad, p, "carbon_t_ha")
    neg = g.assign(carbon_t_ha=g["carbon_t_ha"].where(g.index != 7, -1.0))
    with pytest.raises(FieldError, match=r"QZ-00-07.*-1\.0"):
        write_styled_gpkg(neg, p, "carbon_t_ha")
    unwritable = g.assign(extra=1 + 2j)  # GDAL has no complex field type: fails after creating the file
    with pytest.raises(NotImplementedError):
        write_styled_gpkg(unwritable, p, "carbon_t_ha")
    assert p.read_bytes() == before
    assert [q.name for q in tmp_path.iterdir()] == ["parcels.gpkg"]


QGIS_PROBE = """
import json, os, sys
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
from qgis.core import Qgis, QgsApplication, QgsRenderContext, QgsVectorLayer
app = QgsApplication([], False)
app.initQgis()
lyr = QgsVectorLayer(sys.argv[1] + "|layername=" + sys.argv[2], "parcels", "ogr")  # default style loads here
r = lyr.renderer()
out = {"qgis": Qgis.version(), "valid": lyr.isValid(), "renderer": r.type()}
if r.type() == "graduatedSymbol":
    out["attr"] = r.classAttribute()
    out["method"] = r.classificationMethod().id()
    out["ranges"] = [[x.lowerValue(), x.upperValue(), x.label()] for x in r.ranges()]
    ctx = QgsRenderContext()
    r.startRender(ctx, lyr.fields())
    out["colours"] = {}
    for f in lyr.getFeatures():
        s = r.symbolForFeature(f, ctx)
        out["colours"][f[sys.argv[3]]] = s.color().name() if s else None
    r.stopRender(ctx)
print(json.dumps(out), flush=True)
os._exit(0)  # QgsApplication.exitQgis() with layers still alive crashes PyQGIS 3.22 at exit
"""


def test_qgis_opens_the_layer_with_the_style_and_draws_each_parcel_in_its_class_colour(tmp_path):
    """Real QGIS (PyQGIS, run by the system Python): the layer opens with the graduated renderer from
    layer_styles, and the colour QGIS picks for each parcel is its numpy-quantile class's colour."""
    if not os.path.exists(SYSTEM_PYTHON) or subprocess.run([SYSTEM_PYTHON, "-c", "import qgis.core"],
                                                           capture_output=True).returncode != 0:
        pytest.skip(f"PyQGIS is not importable by {SYSTEM_PYTHON} (Debian: apt-get install python3-qgis)")
    g = grid_parcels(seed=11)
    g.loc[5, "carbon_t_ha"] = np.nan
    k = 5
    p = tmp_path / "parcels.gpkg"
    classes = write_styled_gpkg(g, p, "carbon_t_ha", layer="parcels_carbon", k=k)
    (tmp_path / "probe.py").write_text(QGIS_PROBE)
    r = subprocess.run([SYSTEM_PYTHON, str(tmp_path / "probe.py"), str(p), "parcels_carbon", "parcel_id"],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["valid"] and out["renderer"] == "graduatedSymbol", out
    assert out["attr"] == "carbon_t_ha" and out["method"] == "Quantile"
    v = g["carbon_t_ha"].to_numpy()
    edges = np.quantile(v[np.isfinite(v)], np.linspace(0, 1, k + 1))
    np.testing.assert_allclose([x[0] for x in out["ranges"]] + [out["ranges"][-1][1]], edges, rtol=1e-13)
    assert all(x[2].endswith("t C/ha") for x in out["ranges"])
    for i, pid in enumerate(g["parcel_id"]):
        want = classes.colours[qgis_class(v[i], edges)] if np.isfinite(v[i]) else None  # NULL: not drawn
        assert out["colours"][pid] == want, pid


# ------------------------------------------------------------------ GeoParquet
def test_geoparquet_metadata_bbox_and_row_groups(tmp_path):
    g = grid_parcels()
    p = tmp_path / "parcels.parquet"
    write_geoparquet(g, p, row_group_size=16)
    geo = json.loads(pq.read_schema(p).metadata[b"geo"])
    assert geo["version"] == "1.1.0"
    assert geo["columns"]["geometry"]["covering"] == {
        "bbox": {"xmin": ["bbox", "xmin"], "ymin": ["bbox", "ymin"], "xmax": ["bbox", "xmax"], "ymax": ["bbox", "ymax"]}}
    meta = pq.ParquetFile(p).metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [16, 16, 16, 12]
    t = pq.read_table(p, columns=["parcel_id", "bbox"]).to_pandas()
    bounds = dict(zip(g["parcel_id"], shapely.bounds(g.geometry.to_numpy())))
    got = np.array([[b["xmin"], b["ymin"], b["xmax"], b["ymax"]] for b in t["bbox"]])
    np.testing.assert_array_equal(got, np.array([bounds[i] for i in t["parcel_id"]]))
    back = gpd.read_parquet(p).sort_values("parcel_id").reset_index(drop=True)
    ref = g.sort_values("parcel_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(pd.DataFrame(back.drop(columns=["geometry", "bbox"], errors="ignore")),
                                  pd.DataFrame(ref.drop(columns="geometry")))
    assert shapely.equals_exact(back.geometry.to_numpy(), ref.geometry.to_numpy(), tolerance=0).all()
    assert back.crs.to_epsg() == 4549


def test_geoparquet_rows_follow_a_hilbert_curve(tmp_path):
    """On an 8 x 8 grid a Hilbert order visits every cell once moving to an edge neighbour each step
    (row-major, Z-order or a random order all jump)."""
    g = grid_parcels(nx=8, ny=8).sample(frac=1.0, random_state=3)
    p = tmp_path / "h.parquet"
    write_geoparquet(g, p)
    c = gpd.read_parquet(p).geometry.centroid
    ij = np.column_stack([(c.x - X0) // 100, (c.y - Y0) // 100]).astype(int)
    assert len({tuple(x) for x in ij}) == 64
    steps = np.abs(np.diff(ij, axis=0)).sum(axis=1)
    assert (steps == 1).all()
    assert tuple(ij[0]) in {(0, 0), (0, 7), (7, 0), (7, 7)}  # a Hilbert curve starts in a corner


# ------------------------------------------------------------------ CSV
def test_csv_utf8_bom_without_geometry(tmp_path):
    g = grid_parcels()
    p = tmp_path / "parcels.csv"
    write_csv_excel(g, p)
    raw = p.read_bytes()
    assert raw[:3] == b"\xef\xbb\xbf"  # the byte-order mark Excel needs to take the file as UTF-8
    assert "杉木".encode("utf-8") in raw
    with open(p, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == [c for c in g.columns if c != "geometry"]
    assert [r["species"] for r in rows] == list(g["species"])
    assert [float(r["carbon_t"]) for r in rows] == list(g["carbon_t"])  # full precision round trip
    write_csv_excel(g, p, columns=["parcel_id", "species"])
    assert p.read_text(encoding="utf-8-sig").splitlines()[:2] == ["parcel_id,species", f"QZ-00-00,{g.species[0]}"]
    with pytest.raises(FieldError, match="no_such"):
        write_csv_excel(g, p, columns=["parcel_id", "no_such"])


# ------------------------------------------------------------------ PNG choropleth
def test_png_size_and_class_colours_at_parcel_centroids(tmp_path):
    from PIL import Image

    g = grid_parcels()
    g.loc[11, "carbon_t_ha"] = np.nan  # an unmapped parcel
    k = 5
    img = write_choropleth_png(g, tmp_path / "map.png", "carbon_t_ha", k=k, title="Test county", width_px=1200,
                               height_px=800, dpi=100)
    im = np.asarray(Image.open(tmp_path / "map.png").convert("RGB"))
    assert im.shape == (800, 1200, 3) and (img.width_px, img.height_px) == (1200, 800)
    v = g["carbon_t_ha"].to_numpy()
    edges = np.quantile(v[np.isfinite(v)], np.linspace(0, 1, k + 1))
    np.testing.assert_allclose(img.classes.edges, edges, rtol=1e-13)
    c = g.geometry.centroid
    col, row = img.pixel_of(c.x.to_numpy(), c.y.to_numpy())
    col, row = np.rint(col).astype(int), np.rint(row).astype(int)
    assert (col > 0).all() and (col < 1200).all() and (row > 0).all() and (row < 800).all()
    seen = set()
    for i in range(len(g)):
        cls = qgis_class(v[i], edges) if np.isfinite(v[i]) else -1
        want = NO_DATA_COLOUR if cls < 0 else img.classes.colours[cls]
        got = im[row[i], col[i]]
        np.testing.assert_array_equal(got, np.rint(np.array(to_rgb(want)) * 255), err_msg=f"parcel {g.parcel_id[i]}")
        seen.add(cls)
    assert seen == {-1, *range(k)}
    # a sequential ramp: relative luminance (ITU-R BT.709) falls from the lowest class to the highest
    lum = [np.dot(to_rgb(h), (0.2126, 0.7152, 0.0722)) for h in img.classes.colours]
    assert all(a > b for a, b in zip(lum[:-1], lum[1:]))


def test_full_disk_is_one_line_naming_the_file_and_leaves_nothing(tmp_path):
    """ENOSPC while an output is written (raised here where the write would fail): one line naming the file,
    what was written and the space left; no partial file under any name."""
    import errno as _errno

    from forestcarbon.errors import DiskFullError
    from forestcarbon.fileio import atomic_path

    target = tmp_path / "maps" / "agb.tif"
    with pytest.raises(DiskFullError) as e:
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"x" * 3 * 2**20)
            raise OSError(_errno.ENOSPC, "No space left on device")
    msg = str(e.value)
    assert str(target) in msg and "3.0 MB of it written" in msg and "MB free" in msg and "\n" not in msg
    assert isinstance(e.value, OSError)
    assert list((tmp_path / "maps").iterdir()) == []
