"""Parcel tables as analysts open them: a QGIS-styled GeoPackage, GeoParquet 1.1, an Excel-ready CSV.

Each writer takes a GeoDataFrame, a path and the column names, writes to a temporary file beside the
target and renames it into place (:func:`forestcarbon.fileio.atomic_path`), so a failure leaves
nothing under the final name.  Rows and attributes are written as given; only the GeoParquet file is
re-ordered (spatially).
"""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd

from .. import __version__
from ..fileio import atomic_path
from ..errors import FieldError
from .classes import DENSITY_UNIT, Classes, check_numeric, quantile_classes
from .qgis_style import add_default_style, graduated_qml


def write_styled_gpkg(gdf: gpd.GeoDataFrame, path: Path | str, density_col: str = "carbon_t_ha",
                      layer: str = "parcels_carbon", k: int = 5, id_col: str | None = "parcel_id",
                      classes: Classes | None = None, gpkg_version: str = "1.2") -> Classes:
    """GeoPackage layer ``layer`` whose default QGIS style is a graduated renderer on ``density_col``
    (carbon density, t C/ha): ``k`` quantile classes (:func:`~forestcarbon.vector.classes.quantile_classes`),
    sequential colours, legend labels with units.  Returns the classes used.

    ``gpkg_version`` 1.2 (GDAL's ``VERSION`` creation option) rather than the newest GDAL's 1.4, which
    the GDAL 3.6 of a QGIS 3.22 LTR opens only with a "may only be partially supported" warning.
    Parcels whose density is NULL match no class and QGIS's graduated renderer does not draw them."""
    path = Path(path)
    where = f"{path} (layer {layer!r})"
    values = check_numeric(gdf, density_col, where, id_col)
    classes = classes or quantile_classes(values, density_col, k, DENSITY_UNIT)
    qml = graduated_qml(classes)
    desc = (f"{classes.field}: {classes.k} quantile classes in {classes.unit} over {int(np.isfinite(values).sum())} "
            f"parcels; written by forestcarbon {__version__}")
    with atomic_path(path) as tmp:
        gdf.to_file(tmp, layer=layer, driver="GPKG", VERSION=gpkg_version)
        add_default_style(tmp, layer, qml, style_name=f"{layer} {classes.field}", description=desc)
    return classes


def write_geoparquet(gdf: gpd.GeoDataFrame, path: Path | str, row_group_size: int = 65_536,
                     hilbert_level: int = 16, compression: str = "zstd") -> Path:
    """GeoParquet 1.1.0 sorted along a Hilbert curve over the layer's extent (``GeoSeries.hilbert_distance``
    on bounding-box centres, ``hilbert_level`` bits per axis), with a ``bbox`` covering column
    (xmin, ymin, xmax, ymax per row, declared in the 'geo' metadata) and row groups of at most
    ``row_group_size`` rows, so readers can skip row groups by their bbox statistics."""
    path = Path(path)
    if row_group_size < 1:
        raise ValueError(f"row_group_size must be positive, got {row_group_size}")
    if "bbox" in gdf.columns:
        raise FieldError(f"{path}: the layer already has a field 'bbox', the name of the GeoParquet covering column")
    geom = gdf.geometry
    if (geom.isna() | geom.is_empty).any():
        raise FieldError(f"{path}: {int((geom.isna() | geom.is_empty).sum())} features have no geometry; "
                         "the Hilbert sort needs one per feature")
    order = (np.argsort(geom.hilbert_distance(level=hilbert_level).to_numpy(), kind="stable") if len(gdf)
             else np.zeros(0, int))
    out = gdf.iloc[order].reset_index(drop=True)
    with atomic_path(path) as tmp:
        out.to_parquet(tmp, index=False, compression=compression, write_covering_bbox=True, schema_version="1.1.0",
                       row_group_size=row_group_size)
    return path


def write_csv_excel(gdf, path: Path | str, columns: list[str] | None = None) -> Path:
    """The attribute table (no geometry) as CSV in UTF-8 with a byte-order mark, which Excel needs to
    read Chinese text (e.g. species 杉木) as UTF-8 rather than the system code page."""
    path = Path(path)
    df = pd.DataFrame(gdf.drop(columns=gdf.geometry.name)) if isinstance(gdf, gpd.GeoDataFrame) else gdf
    if columns is not None:
        missing = [c for c in columns if c not in df.columns]
        if missing:
            raise FieldError(f"{path}: no field(s) {missing} (fields: {list(df.columns)})")
        df = df[columns]
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, encoding="utf-8-sig")
    return path
