"""Exact zonal statistics with exactextract.

exactextract weighs every pixel by the fraction of it a polygon covers, so
per-polygon sums and means are exact for the raster as given.  It warns but
does not reproject when CRSs differ, so polygons are reprojected to the
raster's CRS here, and output columns are renamed explicitly.
"""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import pandas as pd
import rasterio
from exactextract import exact_extract
from pyproj import CRS

_KEY = "__fc_zone__"  # exactextract reserves some names (e.g. "id") for itself


def zonal_table(raster: Path | str, polygons: gpd.GeoDataFrame, id_field: str, ops: tuple[str, ...],
                band_names: list[str] | None = None) -> pd.DataFrame:
    """One row per polygon (in input order): ``id_field`` and ``f"{band}_{op}"`` columns.

    ``ops`` are exactextract operations (``"sum"``, ``"mean"``, ``"count"``...);
    ``band`` comes from ``band_names`` or the raster's band descriptions.
    """
    with rasterio.open(raster) as src:
        rcrs = CRS.from_user_input(src.crs)
        names = band_names or [d or f"band{i + 1}" for i, d in enumerate(src.descriptions)]
        count = src.count
    if not CRS.from_user_input(polygons.crs).equals(rcrs):
        polygons = polygons.to_crs(rcrs)
    zones = gpd.GeoDataFrame({_KEY: range(len(polygons))}, geometry=polygons.geometry.to_numpy(), crs=rcrs)
    df = exact_extract(str(raster), zones, list(ops), include_cols=[_KEY], output="pandas")
    df = df.sort_values(_KEY).reset_index(drop=True)
    rename = {}
    for op in ops:
        if count == 1:
            rename[op] = f"{names[0]}_{op}"
        else:
            for b in range(count):
                rename[f"band_{b + 1}_{op}"] = f"{names[b]}_{op}"
    df = df.rename(columns=rename)
    df.insert(0, id_field, polygons[id_field].to_numpy())
    return df.drop(columns=[_KEY])
