"""A QGIS default style inside a GeoPackage: graduated-colour QML and the ``layer_styles`` table.

QGIS looks for a layer's default style in a table ``layer_styles`` of the same GeoPackage and applies
the row with ``useAsDefault`` set when the layer is opened.  The table is created here as QGIS's OGR
provider creates it (``QgsOgrProviderMetadata::saveStyle``, qgis/QGIS
src/core/providers/ogr/qgsogrprovidermetadata.cpp): a GDAL attribute table with FID column ``id`` and
fields f_table_catalog TEXT(256), f_table_schema TEXT(256), f_table_name TEXT(256),
f_geometry_column TEXT(256), styleName TEXT(30), styleQML TEXT, styleSLD TEXT, useAsDefault BOOLEAN,
description TEXT, owner TEXT(30), ui TEXT(30), update_time DATETIME DEFAULT CURRENT_TIMESTAMP, in
the column types GDAL's GPKG driver writes for those OGR field definitions.  QGIS selects the row with
``f_table_schema=''`` (the empty string, not NULL), ``f_table_name`` = the layer and
``f_geometry_column`` = its geometry column (``loadStyle``), so those are filled exactly so.

The QML is the ``graduatedSymbol`` renderer as QGIS 3.22 saves it (``QgsGraduatedSymbolRenderer::save``,
src/core/symbology/qgsgraduatedsymbolrenderer.cpp): ``<ranges>`` of lower/upper/label/symbol,
``<symbols>`` of SimpleFill symbols whose properties are written both as an ``<Option type="Map">``
(read by QGIS ≥ 3.20) and as ``<prop k v>`` (read by every QGIS 3), a preset ``[source]`` colour ramp
holding the class colours, and ``<classificationMethod id="Quantile">`` plus the older
``<mode name="quantile"/>`` so QGIS re-classifies the same way when a user changes the class count.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import xml.etree.ElementTree as ET
from pathlib import Path

from matplotlib.colors import to_rgba

from ..errors import FieldError
from .classes import Classes

QML_VERSION = "3.22.0-Białowieża"
QML_DOCTYPE = "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>"

LAYER_STYLES_DDL = (
    'CREATE TABLE "layer_styles" ( "id" INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, '
    '"f_table_catalog" TEXT(256), "f_table_schema" TEXT(256), "f_table_name" TEXT(256), '
    '"f_geometry_column" TEXT(256), "styleName" TEXT(30), "styleQML" TEXT, "styleSLD" TEXT, '
    '"useAsDefault" BOOLEAN, "description" TEXT, "owner" TEXT(30), "ui" TEXT(30), '
    "\"update_time\" DATETIME DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')))"
)
# GDAL keeps gpkg_ogr_contents.feature_count current for other writers through these triggers
_COUNT_TRIGGERS = (
    'CREATE TRIGGER "trigger_insert_feature_count_layer_styles" AFTER INSERT ON "layer_styles" BEGIN '
    "UPDATE gpkg_ogr_contents SET feature_count = feature_count + 1 WHERE lower(table_name) = lower('layer_styles'); END",
    'CREATE TRIGGER "trigger_delete_feature_count_layer_styles" AFTER DELETE ON "layer_styles" BEGIN '
    "UPDATE gpkg_ogr_contents SET feature_count = feature_count - 1 WHERE lower(table_name) = lower('layer_styles'); END",
)


def _rgba(colour: str) -> str:
    r, g, b, a = (round(c * 255) for c in to_rgba(colour))
    return f"{r},{g},{b},{a}"


def _props(parent: ET.Element, props: dict[str, str]) -> None:
    """Symbol-layer or ramp properties in both QML spellings (Option map, then prop k/v)."""
    m = ET.SubElement(parent, "Option", type="Map")
    for k, v in props.items():
        ET.SubElement(m, "Option", type="QString", name=k, value=v)
    for k, v in props.items():
        ET.SubElement(parent, "prop", k=k, v=v)


def _no_data_defined(parent: ET.Element) -> None:
    dd = ET.SubElement(ET.SubElement(parent, "data_defined_properties"), "Option", type="Map")
    ET.SubElement(dd, "Option", type="QString", name="name", value="")
    ET.SubElement(dd, "Option", name="properties")
    ET.SubElement(dd, "Option", type="QString", name="type", value="collection")


def _fill_symbol(parent: ET.Element, name: str, colour: str, outline: str, outline_mm: float) -> None:
    sym = ET.SubElement(parent, "symbol", alpha="1", clip_to_extent="1", force_rhr="0", type="fill", name=name)
    _no_data_defined(sym)
    layer = ET.SubElement(sym, "layer", {"class": "SimpleFill", "locked": "0", "enabled": "1", "pass": "0"})
    _props(layer, {
        "border_width_map_unit_scale": "3x:0,0,0,0,0,0", "color": _rgba(colour), "joinstyle": "bevel",
        "offset": "0,0", "offset_map_unit_scale": "3x:0,0,0,0,0,0", "offset_unit": "MM",
        "outline_color": _rgba(outline), "outline_style": "solid", "outline_width": f"{outline_mm:g}",
        "outline_width_unit": "MM", "style": "solid",
    })
    _no_data_defined(layer)


def graduated_qml(classes: Classes, outline: str = "#6e6e6e", outline_mm: float = 0.1, decimals: int = 1) -> str:
    """QML text of a graduated-colour polygon renderer on ``classes.field`` with ``classes``' breaks,
    colours and legend labels (see the module docstring for the QGIS source it follows)."""
    root = ET.Element("qgis", version=QML_VERSION, styleCategories="Symbology")
    r = ET.SubElement(root, "renderer-v2", type="graduatedSymbol", attr=classes.field,
                      graduatedMethod="GraduatedColor", symbollevels="0", forceraster="0", enableorderby="0",
                      referencescale="-1")
    ranges = ET.SubElement(r, "ranges")
    e = classes.edges
    for i, label in enumerate(classes.labels):
        # repr: the shortest decimal that reads back to the same double, so breaks survive the round trip
        ET.SubElement(ranges, "range", lower=repr(e[i]), upper=repr(e[i + 1]), symbol=str(i), label=label,
                      render="true")
    symbols = ET.SubElement(r, "symbols")
    for i, colour in enumerate(classes.colours):
        _fill_symbol(symbols, str(i), colour, outline, outline_mm)
    _fill_symbol(ET.SubElement(r, "source-symbol"), "0", classes.colours[0], outline, outline_mm)
    ramp = ET.SubElement(r, "colorramp", type="preset", name="[source]")
    ramp_props = {f"preset_color_{i}": _rgba(c) for i, c in enumerate(classes.colours)}
    ramp_props |= {f"preset_color_name_{i}": c for i, c in enumerate(classes.colours)}
    _props(ramp, ramp_props | {"rampType": "preset"})
    ET.SubElement(r, "mode", name="quantile")
    method = ET.SubElement(r, "classificationMethod", id="Quantile")
    ET.SubElement(method, "symmetricMode", enabled="0", symmetrypoint="0", astride="0")
    ET.SubElement(method, "labelFormat", format=f"%1 – %2 {classes.unit}", labelprecision=str(decimals),
                  trimtrailingzeroes="0")
    ET.SubElement(ET.SubElement(method, "parameters"), "Option")
    ET.SubElement(method, "extraInformation")
    ET.SubElement(r, "rotation")
    ET.SubElement(r, "sizescale")
    ET.SubElement(root, "blendMode").text = "0"
    ET.SubElement(root, "featureBlendMode").text = "0"
    ET.SubElement(root, "layerOpacity").text = "1"
    ET.SubElement(root, "legend", type="default-vector", showLabelLegend="0")
    ET.SubElement(root, "layerGeometryType").text = "2"  # polygon
    ET.indent(root, space="  ")
    return QML_DOCTYPE + "\n" + ET.tostring(root, encoding="unicode") + "\n"


def add_default_style(gpkg: Path | str, layer: str, qml: str, style_name: str | None = None,
                      description: str = "") -> None:
    """Store ``qml`` as the default QGIS style of ``layer`` in ``gpkg`` (creating ``layer_styles`` as
    QGIS does when missing; an earlier default of the layer is unset, as QGIS's saveStyle does)."""
    con = sqlite3.connect(gpkg)
    try:
        with con:
            row = con.execute("SELECT column_name FROM gpkg_geometry_columns WHERE table_name = ?", (layer,)).fetchone()
            if row is None:
                raise FieldError(f"{gpkg}: no feature layer {layer!r} to style")
            if con.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='layer_styles'").fetchone() is None:
                con.execute(LAYER_STYLES_DDL)
                con.execute("INSERT INTO gpkg_contents (table_name, data_type, identifier, description, last_change, "
                            "srs_id) VALUES ('layer_styles', 'attributes', 'layer_styles', '', "
                            "strftime('%Y-%m-%dT%H:%M:%fZ','now'), 0)")
                if con.execute("SELECT 1 FROM sqlite_master WHERE name='gpkg_ogr_contents'").fetchone():
                    con.execute("INSERT INTO gpkg_ogr_contents (table_name, feature_count) VALUES ('layer_styles', 0)")
                    for t in _COUNT_TRIGGERS:
                        con.execute(t)
            con.execute("UPDATE layer_styles SET useAsDefault = 0 WHERE f_table_schema = '' AND f_table_name = ? "
                        "AND f_geometry_column = ?", (layer, row[0]))
            now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
            con.execute("INSERT INTO layer_styles (f_table_catalog, f_table_schema, f_table_name, f_geometry_column, "
                        "styleName, styleQML, styleSLD, useAsDefault, description, owner, ui, update_time) "
                        "VALUES ('', '', ?, ?, ?, ?, '', 1, ?, '', NULL, ?)",
                        (layer, row[0], (style_name or layer)[:30], qml, description, now))
    finally:
        con.close()
