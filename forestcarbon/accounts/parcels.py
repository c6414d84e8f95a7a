"""Parcel rows for the accounts: geometry as WKB in the parcel CRS, a geometry hash, attributes as JSON.

The hash decides whether a parcel's geometry changed (a new version): it is
the SHA-256 of the WKB of the normalised geometry (``shapely.normalize``:
canonical ring order and start vertex) with coordinates rounded to 1 mm in a
projected CRS (1e-8 degree in a geographic one), so rewriting a layer, or
reordering its rings, does not make a new version; moving a vertex by more
than ~1 mm does.
"""

from __future__ import annotations

import hashlib

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from pyproj import CRS


def crs_text(crs) -> str:
    """``AUTHORITY:CODE`` when the CRS has one (EPSG:4549), else its WKT."""
    crs = CRS.from_user_input(crs)
    auth = crs.to_authority()
    return f"{auth[0]}:{auth[1]}" if auth else crs.to_wkt()


def geometry_hashes(geoms, crs) -> np.ndarray:
    """SHA-256 (hex) per geometry of the normalised, rounded WKB (see the module docstring)."""
    decimals = 8 if CRS.from_user_input(crs).is_geographic else 3
    rounded = shapely.transform(np.asarray(geoms, dtype=object), lambda xy: np.round(xy, decimals))
    wkb = shapely.to_wkb(shapely.normalize(rounded), output_dimension=2, byte_order=1)
    return np.array([hashlib.sha256(w).hexdigest() for w in wkb], dtype=object)


def parcel_rows(gdf: gpd.GeoDataFrame, attribute_columns: list[str]) -> pd.DataFrame:
    """``parcel_id``, ``geometry_wkb``, ``crs``, ``geometry_sha256``, ``attributes`` (JSON of ``attribute_columns``)."""
    geoms = gdf.geometry.to_numpy()
    attrs = pd.DataFrame(gdf[attribute_columns])
    lines = attrs.to_json(orient="records", lines=True, force_ascii=False).splitlines() if len(attrs.columns) else []
    return pd.DataFrame({
        "parcel_id": gdf["parcel_id"].astype(str).to_numpy(),
        "geometry_wkb": shapely.to_wkb(geoms, output_dimension=2, byte_order=1),
        "crs": crs_text(gdf.crs),
        "geometry_sha256": geometry_hashes(geoms, gdf.crs),
        "attributes": lines if lines else ["{}"] * len(gdf),
    })
