"""Reading vector layers with checks that name the file, layer and field.

:func:`check_layer` reads only the schema (pyogrio ``read_info``), so it can
run before any heavy work; :func:`read_layer` reads the features and
reprojects them to the target CRS.
"""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
from pyproj import CRS

from ..errors import CRSError, FieldError, InputNotFoundError


def _where(path, layer) -> str:
    return f"{path}" + (f" (layer {layer!r})" if layer else "")


def listing(values, limit: int = 5) -> str:
    """At most ``limit`` values for a one-line message, and how many more there are."""
    values = [v.item() if isinstance(v, np.generic) else v for v in values]  # no np.str_('...') reprs
    more = f" (+{len(values) - limit} more)" if len(values) > limit else ""
    return f"{values[:limit]}{more}"


def feature_rows(mask, limit: int = 5) -> str:
    """1-based feature rows (the first feature is row 1) where ``mask`` is true, for a one-line message."""
    return listing((np.flatnonzero(np.asarray(mask)) + 1).tolist(), limit)


def check_layer(path: Path | str, layer: str | None = None, fields: tuple[str, ...] = ()) -> dict:
    """Check a vector layer exists, has a CRS and holds ``fields``; return its info."""
    path = Path(path)
    if not path.exists():
        raise InputNotFoundError(f"vector file not found: {path}")
    try:
        info = pyogrio.read_info(path, layer=layer)
    except Exception as err:
        raise FieldError(f"{_where(path, layer)}: cannot read layer ({str(err).splitlines()[0]})") from None
    have = list(info["fields"])
    for f in fields:
        if f not in have:
            raise FieldError(f"{_where(path, layer)}: no field {f!r} (fields: {have})")
    if info.get("crs") is None:
        raise CRSError(f"{_where(path, layer)}: layer has no CRS")
    return info


def check_features(gdf: gpd.GeoDataFrame, where: str, id_field: str) -> None:
    """Features present, ids non-null and unique, geometries present: each an error naming the ids."""
    if len(gdf) == 0:
        raise FieldError(f"{where}: the layer has no features")
    ids = gdf[id_field]
    if ids.isna().any():
        raise FieldError(f"{where}: field {id_field!r} is empty in {int(ids.isna().sum())} features")
    dup = ids[ids.duplicated()]
    if len(dup):
        raise FieldError(f"{where}: field {id_field!r} has duplicated values {list(dup.astype(str).unique()[:5])} "
                         f"({len(dup)} duplicates)")
    bad = gdf.geometry.isna() | gdf.geometry.is_empty
    if bad.any():
        raise FieldError(f"{where}: features {list(ids[bad].astype(str)[:5])} have no geometry ({int(bad.sum())} in all)")


def check_layer_contents(path: Path | str, layer: str | None, id_field: str) -> None:
    """:func:`check_layer` plus the features' ids and geometries (read without other attributes), for preflight."""
    check_layer(path, layer, (id_field,))
    gdf = pyogrio.read_dataframe(path, layer=layer, columns=[id_field])
    check_features(gdf, _where(path, layer), id_field)


def read_layer(path: Path | str, layer: str | None, id_field: str, to_crs) -> gpd.GeoDataFrame:
    """Features of a layer in ``to_crs``, with a unique, non-null ``id_field`` and a geometry each
    (invalid geometries are repaired with ``make_valid``)."""
    check_layer(path, layer, (id_field,))
    gdf = gpd.read_file(path, layer=layer)
    check_features(gdf, _where(path, layer), id_field)
    return _in_crs_repaired(gdf, to_crs)


def _in_crs_repaired(gdf: gpd.GeoDataFrame, to_crs) -> gpd.GeoDataFrame:
    """``gdf`` in ``to_crs`` (reprojected only when the CRS differs), invalid geometries repaired by
    ``make_valid``."""
    target = CRS.from_user_input(to_crs)
    if not CRS.from_user_input(gdf.crs).equals(target):
        gdf = gdf.to_crs(target)
    invalid = ~gdf.geometry.is_valid
    if invalid.any():
        gdf.loc[invalid, "geometry"] = gdf.geometry[invalid].make_valid()
    return gdf


def read_attribute_layer(path: Path | str, layer: str | None, fields: tuple[str, ...], to_crs) -> gpd.GeoDataFrame:
    """Polygons of a layer keyed by attributes rather than ids (a species or stratum layer): ``fields`` and the
    geometry, in ``to_crs``, empty geometries dropped and invalid ones repaired; an error when no feature is
    left."""
    check_layer(path, layer, fields)
    gdf = gpd.read_file(path, layer=layer, columns=list(fields))
    gdf = gdf[gdf.geometry.notna() & ~gdf.geometry.is_empty]
    if not len(gdf):
        raise FieldError(f"{_where(path, layer)}: the layer has no features with a geometry")
    return _in_crs_repaired(gdf, to_crs)
