"""The self-contained HTML map, run in real headless Chromium.

The page's script must build one SVG path per parcel; the DOM Chromium serialises after running it is
checked against the GeoDataFrame: ids, class colours from ``numpy.quantile`` and QGIS's range rule,
displayed values, and outlines decoded back to coordinates (Hausdorff distance to the input polygons).
"""

from __future__ import annotations

import json
import re
import subprocess
from functools import reduce
from html.parser import HTMLParser
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely

from forestcarbon.errors import FieldError
from forestcarbon.vector.classes import NO_DATA_COLOUR
from forestcarbon.vector.webmap import simplify_parcels, write_webmap_html

from .test_outputs import qgis_class

CHROMIUM = Path("/usr/bin/chromium")
X0, Y0 = 500_000.0, 3_200_000.0


def wiggly_coverage(n: int, seed: int = 0, ha: float = 1.8, spacing: float = 5.0, wiggle: float = 1.0) -> np.ndarray:
    """About ``n`` parcels of ~``ha`` hectares tiling a square: Voronoi cells whose shared edges are
    densified every ``spacing`` m and jittered once per edge, then polygonised, so neighbours share
    identical vertices (a valid polygonal coverage) and outlines have vertices to simplify."""
    rng = np.random.default_rng(seed)
    side = np.sqrt(n * ha * 10_000)
    seeds = shapely.multipoints(np.column_stack([rng.uniform(X0, X0 + side, n), rng.uniform(Y0, Y0 + side, n)]))
    box = shapely.box(X0, Y0, X0 + side, Y0 + side)
    cells = shapely.intersection(np.asarray(shapely.voronoi_polygons(seeds, extend_to=box).geoms), box)
    edges = shapely.get_parts(shapely.line_merge(shapely.union_all(shapely.boundary(cells))))
    lines = []
    for e in edges:
        c = np.asarray(shapely.segmentize(e, spacing).coords)
        c[1:-1] += rng.normal(0, wiggle, (len(c) - 2, 2))
        lines.append(shapely.linestrings(c))
    return shapely.get_parts(shapely.polygonize(lines))


def parcels_frame(geoms: np.ndarray, seed: int = 0) -> gpd.GeoDataFrame:
    rng = np.random.default_rng(seed)
    n = len(geoms)
    dens = rng.gamma(3.0, 15.0, n)
    area = shapely.area(geoms) / 10_000
    carbon = dens * area
    return gpd.GeoDataFrame({"parcel_id": [f"衢江-{i:05d}" for i in range(n)], "area_ha": area, "carbon_t_ha": dens,
                             "carbon_t": carbon, "sd_t": 0.18 * carbon, "lo_t": 0.7 * carbon, "hi_t": 1.35 * carbon},
                            geometry=geoms, crs="EPSG:4549")


class _Dom(HTMLParser):
    """Paths (attributes and <title> text), legend rows and <body> attributes of a serialised DOM."""

    def __init__(self):
        super().__init__()
        self.paths, self.legend, self.swatches, self.body = [], [], [], {}
        self._in_title = self._in_legend = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "path":
            self.paths.append({**a, "title": ""})
        elif tag == "title" and self.paths and "d" in self.paths[-1] and not self.paths[-1]["title"]:
            self._in_title = True
        elif tag == "div" and a.get("class") == "legend-item":
            self.legend.append("")
            self._in_legend = True
        elif tag == "span" and a.get("class") == "sw":
            self.swatches.append(a.get("style", ""))
        elif tag == "body":
            self.body = a

    def handle_endtag(self, tag):
        if tag == "title":
            self._in_title = False
        if tag == "div":
            self._in_legend = False

    def handle_data(self, data):
        if self._in_title:
            self.paths[-1]["title"] += data
        elif self._in_legend:
            self.legend[-1] += data


def run_chromium(html: Path, tmp_path: Path) -> _Dom:
    if not CHROMIUM.exists():
        pytest.skip(f"headless Chromium not found at {CHROMIUM}: the HTML map's script cannot be run")
    r = subprocess.run([str(CHROMIUM), "--headless=new", "--disable-gpu", "--no-sandbox",
                        f"--user-data-dir={tmp_path / 'chromium-profile'}", "--virtual-time-budget=10000",
                        "--dump-dom", html.as_uri()], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    dom = _Dom()
    dom.feed(r.stdout)
    return dom


def decode_path(d: str, x0: float, y0: float, step: float):
    """Polygon of an SVG path of "M x y l dx dy … z" rings under the even-odd fill rule (rings XORed)."""
    rings = []
    for part in re.findall(r"M[^z]*z", d):
        n = np.array(re.findall(r"-?\d+", part), dtype=np.int64).reshape(-1, 2)
        xy = np.cumsum(n, axis=0)
        rings.append(shapely.Polygon(np.column_stack([x0 + xy[:, 0] * step, y0 - xy[:, 1] * step])))
    return reduce(shapely.symmetric_difference, rings)


def _number(title: str, key: str) -> float | None:
    m = re.search(rf"^{key}: (n/a|[-\d.]+)", title, re.M)
    assert m, f"{key!r} not in {title!r}"
    return None if m.group(1) == "n/a" else float(m.group(1))


def test_html_map_in_chromium_one_shape_per_parcel_with_values(tmp_path):
    g = parcels_frame(wiggly_coverage(40, seed=5), seed=5)
    g.loc[4, "carbon_t_ha"] = np.nan  # an unmapped parcel: no class, "no data"
    k, step = 5, 1.0
    html = tmp_path / "project.html"
    summary = write_webmap_html(g, html, sd_col="sd_t", lo_col="lo_t", hi_col="hi_t", k=k, tolerance_m=0.0,
                                precision_m=step, title="Project <QZ-01>")
    raw = html.read_text(encoding="utf-8")
    assert not re.search(r"https?://", raw)  # no network: no CDN, tiles, fonts or namespaces by URL
    assert "src=" not in raw and "<link" not in raw
    assert summary["bytes"] == len(raw.encode("utf-8")) and summary["parcels"] == len(g)

    dom = run_chromium(html, tmp_path)
    n = len(g)
    assert dom.body.get("data-parcels-drawn") == str(n)
    assert len(dom.paths) == n
    assert [p["data-id"] for p in dom.paths] == list(g["parcel_id"])
    v = g["carbon_t_ha"].to_numpy()
    edges = np.quantile(v[np.isfinite(v)], np.linspace(0, 1, k + 1))
    colours = sorted({p["fill"] for p in dom.paths} - {NO_DATA_COLOUR})
    assert len(colours) == k
    # parcels of one class (QGIS's rule on numpy's quantiles) share one colour, each class its own
    by_class = {}
    for i, p in enumerate(dom.paths):
        cls = qgis_class(v[i], edges) if np.isfinite(v[i]) else -1
        by_class.setdefault(cls, set()).add(p["fill"])
    assert by_class[-1] == {NO_DATA_COLOUR}
    assert all(len(by_class[c]) == 1 for c in range(k)) and len({next(iter(by_class[c])) for c in range(k)}) == k
    # the legend's c-th swatch has class c's colour (Chromium serialises the style as rgb(r, g, b))
    swatch_rgb = [tuple(int(x) for x in re.findall(r"\d+", st)[:3]) for st in dom.swatches]
    class_rgb = [tuple(int(next(iter(by_class[c]))[j:j + 2], 16) for j in (1, 3, 5)) for c in (*range(k), -1)]
    assert swatch_rgb == class_rgb
    assert len(dom.legend) == k + 1 and dom.legend[-1] == "no data"
    for c in range(k):  # the legend label of class c spans numpy's quantile edges c, c+1
        lo, hi = map(float, re.findall(r"[\d.]+", dom.legend[c])[:2])
        assert lo == pytest.approx(edges[c], abs=0.05) and hi == pytest.approx(edges[c + 1], abs=0.05)
        assert dom.legend[c].endswith("t C/ha")

    for i, p in enumerate(dom.paths):
        t = p["title"]
        assert t.startswith(f"Parcel: {g.parcel_id[i]}\n")
        assert _number(t, "Area") == pytest.approx(g.area_ha[i], abs=0.005 + 1e-9)
        assert _number(t, "Carbon") == pytest.approx(g.carbon_t[i], abs=0.05 + 1e-9)
        assert _number(t, "SD") == pytest.approx(g.sd_t[i], abs=0.05 + 1e-9)
        lo, hi = map(float, re.search(r"90 % interval: ([\d.]+) t C to ([\d.]+) t C", t).groups())
        assert lo == pytest.approx(g.lo_t[i], abs=0.05 + 1e-9) and hi == pytest.approx(g.hi_t[i], abs=0.05 + 1e-9)
        dens = _number(t, "Density")
        assert dens is None if i == 4 else dens == pytest.approx(v[i], abs=0.05 + 1e-9)

    # outlines: quantised to a 1 m grid from the layer's top-left corner, nothing simplified
    minx, _, _, maxy = g.total_bounds
    for p, geom in zip(dom.paths, g.geometry):
        back = decode_path(p["d"], minx, maxy, step)
        assert shapely.hausdorff_distance(back, geom) <= step * np.sqrt(2) / 2 + 1e-6
        assert abs(back.area - geom.area) / geom.area < 0.01


def test_html_map_of_5000_parcels_stays_small(tmp_path):
    g = parcels_frame(wiggly_coverage(5000, seed=1), seed=1)
    html = tmp_path / "county.html"
    summary = write_webmap_html(g, html, sd_col="sd_t", lo_col="lo_t", hi_col="hi_t")  # default 5 m, 1 m grid
    print(f"\n{len(g)} parcels: {summary['bytes'] / 1e6:.2f} MB, {summary['bytes'] / len(g):.0f} B/parcel, "
          f"vertices {summary['vertices_in']} -> {summary['vertices_out']} ({summary['simplification']})")
    assert summary["simplification"] == "coverage"
    assert summary["outline_fallbacks"] == 0
    assert summary["bytes"] < 250 * len(g)
    # the simplified parcels still tile without gaps or overlaps and are each valid
    simple, _ = simplify_parcels(g.geometry.to_numpy(), 5.0)
    assert shapely.coverage_is_valid(simple) and shapely.is_valid(simple).all()
    assert shapely.area(simple).sum() == pytest.approx(shapely.area(g.geometry.to_numpy()).sum(), rel=1e-3)
    dom = run_chromium(html, tmp_path)
    assert len(dom.paths) == len(g) == int(dom.body["data-parcels-drawn"])
    assert len({p["data-id"] for p in dom.paths}) == len(g)


def _embedded(html: Path) -> dict:
    m = re.search(r'<script id="fc-data" type="application/json">(.*?)</script>', html.read_text(encoding="utf-8"), re.S)
    return json.loads(m.group(1))


def test_overlapping_geographic_parcels_are_reprojected_and_simplified_one_by_one(tmp_path):
    geoms = [shapely.box(X0 + 60 * i, Y0, X0 + 60 * i + 100, Y0 + 100).buffer(3, quad_segs=16) for i in range(6)]
    g = parcels_frame(np.array(geoms)).to_crs("EPSG:4490")
    g.loc[2, "parcel_id"] = 'x</script><b id="y">&'  # must neither end the data block nor become markup
    summary = write_webmap_html(g, tmp_path / "m.html", tolerance_m=1.0)
    assert summary["simplification"] == "per-polygon"
    assert summary["vertices_out"] < summary["vertices_in"]
    data = _embedded(tmp_path / "m.html")
    assert [p[0] for p in data["p"]] == list(g["parcel_id"]) and all(p[8].startswith("M") for p in data["p"])
    # drawn in metres, in a projected CRS: the extent there on the 1 m grid
    crs = gpd.GeoSeries(g.geometry).to_crs(summary["crs"])
    assert crs.crs.is_projected and crs.crs.axis_info[0].unit_name == "metre"
    minx, miny, maxx, maxy = crs.total_bounds
    assert abs(data["w"] - (maxx - minx)) <= 2 and abs(data["h"] - (maxy - miny)) <= 2


def test_bad_columns_are_named(tmp_path):
    g = parcels_frame(wiggly_coverage(10, seed=2))
    with pytest.raises(FieldError, match="'carbon_sd'"):
        write_webmap_html(g, tmp_path / "m.html", sd_col="carbon_sd")
    dup = g.assign(parcel_id=["a"] * len(g))
    with pytest.raises(FieldError, match="duplicated"):
        write_webmap_html(dup, tmp_path / "m.html")
    assert not (tmp_path / "m.html").exists()
