"""Polygon attributes burnt onto the target grid, block by block.

A pixel takes the value of the polygon that contains its centre (GDAL's
default rasterisation rule, as ``rasterio.features.rasterize`` without
``all_touched``); pixels outside every polygon take ``fill``.  Each Dask block
queries the polygons' spatial index for its own window only, so memory is
bounded by the block and the polygons that touch it, not by the area.
"""

from __future__ import annotations

import dask.array as da
import geopandas as gpd
import numpy as np
from odc.geo.geobox import GeoBox
from rasterio.features import rasterize


def _burn_block(polygons: gpd.GeoDataFrame, values: np.ndarray, gbox: GeoBox, fill: int, dtype,
                block_info=None) -> np.ndarray:
    (r0, r1), (c0, c1) = block_info[None]["array-location"]
    sub = gbox[r0:r1, c0:c1]
    out_shape = (r1 - r0, c1 - c0)
    hits = polygons.sindex.query(sub.extent.geom, predicate="intersects") if len(polygons) else []
    if len(hits) == 0:
        return np.full(out_shape, fill, dtype=dtype)
    hits = np.sort(hits)  # file order: where polygons overlap, the later one wins (as rasterio burns)
    shapes = zip(polygons.geometry.to_numpy()[hits], values[hits])
    return rasterize(shapes, out_shape=out_shape, transform=sub.affine, fill=fill, dtype=dtype)


def burn_values(polygons: gpd.GeoDataFrame, values, gbox: GeoBox, *, fill: int = 0, dtype="uint8",
                chunk_px: int = 1024) -> da.Array:
    """A lazy (y, x) array on ``gbox`` with each polygon's value at the pixels whose centre it contains.

    ``polygons`` are reprojected to the grid's CRS; ``values`` align with them.
    """
    if not polygons.crs.equals(gbox.crs.to_wkt()):
        polygons = polygons.to_crs(gbox.crs.to_wkt())
    polygons = polygons.reset_index(drop=True)
    values = np.asarray(values, dtype=dtype)
    template = da.empty(tuple(gbox.shape), chunks=chunk_px, dtype=dtype)
    return template.map_blocks(lambda _, block_info=None: _burn_block(polygons, values, gbox, fill, dtype, block_info),
                               dtype=dtype)
