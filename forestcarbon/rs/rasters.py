"""Plain rasters (GeoTIFF/COG, any CRS) lazily reprojected onto the target grid.

Used for inputs that arrive as ordinary rasters rather than STAC scenes:
pieces of a mosaic, pre-made canopy height or terrain models.  Reprojection
is odc-geo's Dask-aware ``xr_reproject``; nothing is read until computed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import odc.geo.xr  # noqa: F401  (registers the .odc accessor)
import rioxarray
import xarray as xr
from odc.geo.geobox import GeoBox

from ..errors import InputNotFoundError


def load_on_grid(path: Path | str, gbox: GeoBox, resampling: str = "nearest", chunk_px: int = 1024,
                 nodata: float | None = None) -> xr.DataArray:
    """(band, y, x) DataArray of ``path`` on ``gbox``; pixels outside the source get ``nodata``
    (default: the file's nodata, else 0 for integers and NaN for floats)."""
    path = Path(path)
    if not path.exists():
        raise InputNotFoundError(f"raster not found: {path}")
    src = rioxarray.open_rasterio(path, chunks={"band": -1, "x": chunk_px, "y": chunk_px})
    if nodata is None:
        nodata = src.rio.nodata
    if nodata is None:
        nodata = np.nan if np.dtype(src.dtype).kind == "f" else 0
    return src.odc.reproject(gbox, resampling=resampling, dst_nodata=nodata).assign_attrs(nodata=nodata)


def merge_first(arrays: list[xr.DataArray], nodata) -> xr.DataArray:
    """Per pixel, the first array (in list order) that holds data there (rasterio.merge's 'first')."""
    out = arrays[0]
    for a in arrays[1:]:
        empty = out.isnull() if nodata is None or (isinstance(nodata, float) and np.isnan(nodata)) else out == nodata
        out = xr.where(empty, a, out)
    return out
