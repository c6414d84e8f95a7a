"""A self-contained interactive HTML map of a project's parcels (no network: no CDN, no tiles).

One HTML file holds the parcels as SVG path strings in an inline JSON block and a short inline script
that builds one ``<path>`` per parcel in an inline ``<svg>``, coloured by carbon-density class (the
classes of :mod:`forestcarbon.vector.classes`, so colours agree with the QGIS style and the PNG), with a
legend, a tooltip and an info panel (hover shows a parcel, click pins it) giving the parcel id, area,
carbon, density, SD and interval, and wheel zoom / drag pan.  The SVG namespace is taken from the
inline ``<svg>`` element, so the file holds no URL at all.

Size: geometries are simplified and coordinates quantised before encoding.
- Simplification is GEOS's coverage simplifier (``shapely.coverage_simplify``: Visvalingam-Whyatt,
  ``tolerance_m`` roughly the square root of the area of the triangles removed, in m²; every output
  polygon valid).  When the parcels form a valid polygonal coverage (no overlaps, identical vertices on
  shared edges; ``shapely.coverage_is_valid``) they are simplified together, so a shared boundary stays
  shared and neighbours get no gaps or overlaps; otherwise each parcel is simplified alone, which may
  open slivers between neighbours.  The returned summary says which ("coverage" / "per-polygon").
- Coordinates are rounded to a grid of ``precision_m`` metres from the layer's top-left corner and each
  ring written as an SVG path of relative integer moves ("M x y l dx dy … z").
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import shapely

from ..errors import CRSError, FieldError
from ..fileio import atomic_path
from .choropleth import is_metric_crs
from .classes import DENSITY_UNIT, NO_DATA_COLOUR, Classes, check_numeric, quantile_classes
from .layers import check_features


def _ring_path(coords: np.ndarray, x0: float, y0: float, step: float) -> str:
    q = np.rint(np.column_stack([(coords[:, 0] - x0) / step, (y0 - coords[:, 1]) / step])).astype(np.int64)
    keep = np.ones(len(q), bool)
    keep[1:] = np.any(q[1:] != q[:-1], axis=1)
    q = q[keep]
    if len(q) > 1 and (q[0] == q[-1]).all():
        q = q[:-1]  # the closing vertex: "z" closes the ring
    if len(q) < 3:
        return ""
    d = np.diff(q, axis=0).ravel()
    moves = " ".join(map(str, d)).replace(" -", "-")  # SVG needs no separator before a minus sign
    return f"M{q[0, 0]} {q[0, 1]}l{moves}z"


def geometry_path(geom, x0: float, y0: float, step: float) -> str:
    """SVG path data of a (multi)polygon: every ring in quantised relative moves (see module docstring)."""
    parts = []
    for poly in getattr(geom, "geoms", [geom]):
        for ring in (poly.exterior, *poly.interiors):
            parts.append(_ring_path(np.asarray(ring.coords), x0, y0, step))
    return "".join(parts)


def simplify_parcels(geoms: np.ndarray, tolerance_m: float) -> tuple[np.ndarray, str]:
    """Simplified geometries and the method used ("coverage", "per-polygon" or "none")."""
    if tolerance_m <= 0:
        return geoms, "none"
    if shapely.coverage_is_valid(geoms):
        return shapely.coverage_simplify(geoms, tolerance_m), "coverage"
    # each polygon alone is a valid coverage: the same simplifier and tolerance, shared edges not kept shared
    return np.array([shapely.coverage_simplify(g, tolerance_m) for g in geoms], dtype=object), "per-polygon"


def _num(v: np.ndarray, decimals: int) -> list:
    return [None if not np.isfinite(x) else round(float(x), decimals) for x in v]


def write_webmap_html(gdf: gpd.GeoDataFrame, path: Path | str, id_col: str = "parcel_id",
                      density_col: str = "carbon_t_ha", area_col: str = "area_ha", carbon_col: str = "carbon_t",
                      sd_col: str | None = None, lo_col: str | None = None, hi_col: str | None = None,
                      interval_label: str = "90 % interval", title: str = "Parcel carbon", k: int = 5,
                      classes: Classes | None = None, tolerance_m: float = 5.0, precision_m: float = 1.0,
                      decimals: int = 1) -> dict:
    """Write the HTML map; return a summary: parcels, bytes, the CRS drawn in (the layer's when projected in
    metres, else its UTM zone), simplification method, vertices before/after, parcels whose simplified
    outline vanished at ``precision_m`` (drawn from the unsimplified outline).

    ``carbon_col``, ``sd_col`` (its standard deviation) and ``lo_col``/``hi_col`` (the bounds of its
    ``interval_label`` interval) are the parcel's carbon in t C, ``density_col`` in t C/ha, ``area_col`` in ha.
    Displayed values are rounded: area to 0.01 ha, carbon, density, SD and interval to ``decimals``."""
    path = Path(path)
    where = str(path)
    if id_col not in gdf.columns:
        raise FieldError(f"{where}: no field {id_col!r} (fields: {[c for c in gdf.columns if c != 'geometry']})")
    check_features(gdf, where, id_col)
    if precision_m <= 0:
        raise ValueError(f"precision_m must be positive, got {precision_m}")
    if gdf.crs is None:
        raise CRSError(f"{where}: the parcels have no CRS")
    if not is_metric_crs(gdf.crs):
        gdf = gdf.to_crs(gdf.estimate_utm_crs())  # tolerances and the drawing need metres
    cols = {"area": area_col, "carbon": carbon_col, "density": density_col, "sd": sd_col, "lo": lo_col, "hi": hi_col}
    vals = {k_: check_numeric(gdf, c, where, id_col) for k_, c in cols.items() if c is not None}
    classes = classes or quantile_classes(vals["density"], density_col, k, DENSITY_UNIT, decimals)

    geoms = gdf.geometry.to_numpy()
    simple, method = simplify_parcels(geoms, tolerance_m)
    minx, miny, maxx, maxy = gdf.total_bounds
    paths, fallback = [], 0
    for g, s in zip(geoms, simple):
        d = geometry_path(s, minx, maxy, precision_m) if s is not None and not s.is_empty else ""
        if not d:
            fallback += 1
            d = geometry_path(g, minx, maxy, precision_m)
        paths.append(d)

    n = len(gdf)
    rows = {k_: _num(v, 2 if k_ == "area" else decimals) for k_, v in vals.items()}
    none = [None] * n
    cls = classes.classify(vals["density"])
    ids = gdf[id_col].astype(str).tolist()
    parcels = [list(r) for r in zip(ids, rows["area"], rows["carbon"], rows["density"], rows.get("sd", none),
                                    rows.get("lo", none), rows.get("hi", none), cls.tolist(), paths)]
    data = {
        "w": int(np.ceil((maxx - minx) / precision_m)) + 1, "h": int(np.ceil((maxy - miny) / precision_m)) + 1,
        "classes": [{"c": c, "l": lab} for c, lab in zip(classes.colours, classes.labels)],
        "nodata": NO_DATA_COLOUR, "unit": classes.unit, "interval": interval_label,
        "p": parcels,
    }
    blob = json.dumps(data, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")
    page = (_TEMPLATE.replace("%TITLE%", html.escape(title))
            .replace("%LEGEND_TITLE%", html.escape(f"Carbon density ({classes.unit}), {classes.k} quantile classes"))
            .replace("%DATA%", blob))
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return {"parcels": n, "bytes": path.stat().st_size, "crs": gdf.crs.to_string(), "simplification": method, "tolerance_m": tolerance_m,
            "precision_m": precision_m, "vertices_in": int(shapely.get_num_coordinates(geoms).sum()),
            "vertices_out": int(shapely.get_num_coordinates(simple).sum()), "outline_fallbacks": fallback}


_TEMPLATE = """<!DOCTYPE html>
<html lang="zh-CN"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>%TITLE%</title>
<style>
html,body{margin:0;height:100%;font:13px/1.4 system-ui,sans-serif;color:#222}
#wrap{display:flex;height:100%}
#map{flex:1;background:#fff;cursor:grab;touch-action:none}
#side{width:260px;padding:10px 12px;border-left:1px solid #ccc;overflow:auto}
h1{font-size:16px;margin:0 0 8px}
.parcel{stroke:#6e6e6e;stroke-width:0.5;vector-effect:non-scaling-stroke;fill-rule:evenodd}
.parcel:hover,.parcel.sel{stroke:#d7301f;stroke-width:2}
.sw{display:inline-block;width:18px;height:12px;border:1px solid #6e6e6e;margin-right:6px;vertical-align:middle}
#info{margin-top:12px;padding:8px;border:1px solid #ccc;min-height:6em;white-space:pre-line}
</style></head>
<body><div id="wrap">
<svg id="map" preserveAspectRatio="xMidYMid meet"><g id="parcels"></g></svg>
<div id="side"><h1>%TITLE%</h1><div id="legend"><b>%LEGEND_TITLE%</b></div>
<div id="info">Hover over a parcel; click to pin it.</div></div></div>
<script id="fc-data" type="application/json">%DATA%</script>
<script>
(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("fc-data").textContent);
  var svg = document.getElementById("map"), NS = svg.namespaceURI, g = document.getElementById("parcels");
  var info = document.getElementById("info"), legend = document.getElementById("legend");
  var vb = [0, 0, D.w, D.h], pinned = null;
  function setVB() { svg.setAttribute("viewBox", vb.join(" ")); }
  function val(v, unit) { return v === null ? "n/a" : v + " " + unit; }
  function describe(p) {
    var s = "Parcel: " + p[0] + "\\nArea: " + val(p[1], "ha") + "\\nCarbon: " + val(p[2], "t C") +
      "\\nDensity: " + val(p[3], D.unit) + "\\nSD: " + val(p[4], "t C");
    if (p[5] !== null || p[6] !== null) s += "\\n" + D.interval + ": " + val(p[5], "t C") + " to " + val(p[6], "t C");
    return s + "\\nClass: " + (p[7] < 0 ? "no data" : D.classes[p[7]].l);
  }
  var frag = document.createDocumentFragment(), hasNoData = false;
  D.p.forEach(function (p, i) {
    var e = document.createElementNS(NS, "path");
    e.setAttribute("d", p[8]);
    e.setAttribute("class", "parcel");
    e.setAttribute("fill", p[7] < 0 ? D.nodata : D.classes[p[7]].c);
    e.setAttribute("data-i", i);
    e.setAttribute("data-id", p[0]);
    var t = document.createElementNS(NS, "title");
    t.textContent = describe(p);
    e.appendChild(t);
    frag.appendChild(e);
    if (p[7] < 0) hasNoData = true;
  });
  g.appendChild(frag);
  var items = D.classes.slice();
  if (hasNoData) items.push({c: D.nodata, l: "no data"});
  items.forEach(function (c) {
    var row = document.createElement("div"), sw = document.createElement("span");
    sw.className = "sw"; sw.style.background = c.c;
    row.className = "legend-item"; row.appendChild(sw); row.appendChild(document.createTextNode(c.l));
    legend.appendChild(row);
  });
  function parcelOf(ev) { var e = ev.target; return e.classList && e.classList.contains("parcel") ? e : null; }
  g.addEventListener("mouseover", function (ev) {
    var e = parcelOf(ev); if (e && !pinned) info.textContent = describe(D.p[+e.getAttribute("data-i")]);
  });
  g.addEventListener("click", function (ev) {
    var e = parcelOf(ev); if (!e) return;
    if (pinned) pinned.classList.remove("sel");
    pinned = pinned === e ? null : e;
    if (pinned) pinned.classList.add("sel");
    info.textContent = describe(D.p[+e.getAttribute("data-i")]);
  });
  function toMap(ev) {
    var r = svg.getBoundingClientRect(), s = Math.max(vb[2] / r.width, vb[3] / r.height);
    return [vb[0] + (ev.clientX - r.left - (r.width - vb[2] / s) / 2) * s,
            vb[1] + (ev.clientY - r.top - (r.height - vb[3] / s) / 2) * s, s];
  }
  svg.addEventListener("wheel", function (ev) {
    ev.preventDefault();
    var m = toMap(ev), f = ev.deltaY > 0 ? 1.25 : 0.8;
    vb = [m[0] - (m[0] - vb[0]) * f, m[1] - (m[1] - vb[1]) * f, vb[2] * f, vb[3] * f]; setVB();
  }, {passive: false});
  var drag = null;
  svg.addEventListener("pointerdown", function (ev) { drag = [ev.clientX, ev.clientY, vb[0], vb[1], toMap(ev)[2]]; });
  window.addEventListener("pointerup", function () { drag = null; });
  svg.addEventListener("pointermove", function (ev) {
    if (!drag) return;
    vb[0] = drag[2] - (ev.clientX - drag[0]) * drag[4]; vb[1] = drag[3] - (ev.clientY - drag[1]) * drag[4]; setVB();
  });
  setVB();
  document.body.setAttribute("data-parcels-drawn", String(g.childElementCount));
})();
</script></body></html>
"""
