"""A fixed tile grid over the target grid, and the VRT that presents tiles as one layer.

Tiles are odc-geo ``GeoboxTiles`` of the one target GeoBox, so every tile is
an exact window of it; a tile is named ``rRRRcCCC`` by its row and column.
"""

from __future__ import annotations

import html
import os
from pathlib import Path

import numpy as np
import shapely.geometry
from odc.geo.geobox import GeoBox, GeoboxTiles

from ..fileio import atomic_path

_VRT_TYPES = {"float32": "Float32", "float64": "Float64", "uint8": "Byte", "uint16": "UInt16", "int16": "Int16",
              "int32": "Int32", "uint32": "UInt32"}


def tile_grid(gbox: GeoBox, tile_m: float) -> GeoboxTiles:
    px = max(1, int(round(tile_m / abs(gbox.affine.a))))
    return GeoboxTiles(gbox, (px, px))


def tile_name(iy: int, ix: int) -> str:
    return f"r{iy:03d}c{ix:03d}"


def iter_tiles(tiles: GeoboxTiles):
    """(name, (iy, ix), tile GeoBox) for every tile, row by row."""
    ny, nx = tiles.shape.y, tiles.shape.x
    for iy in range(ny):
        for ix in range(nx):
            yield tile_name(iy, ix), (iy, ix), tiles[iy, ix]


def lonlat_footprint(gbox: GeoBox):
    """The GeoBox's extent as a shapely polygon in EPSG:4326 (lon, lat)."""
    return gbox.extent.to_crs("EPSG:4326").geom


def item_touches(item_geometry: dict | None, footprint) -> bool:
    """True when a STAC item's geometry (GeoJSON, lon/lat) intersects ``footprint``; no geometry: assume it does."""
    if not item_geometry:
        return True
    return shapely.geometry.shape(item_geometry).intersects(footprint)


def write_vrt(path: Path, gbox: GeoBox, sources: list[tuple[GeoBox, Path]], descriptions: list[str], dtype: str,
              nodata, *, overlapping: bool = False) -> Path:
    """A GDAL VRT mosaicking same-grid tile rasters (paths relative to the VRT).

    ``overlapping``: sources may overlap, each holding ``nodata`` where it has
    no value; they are then ComplexSources with that nodata, so a source's
    nodata never covers another's values.
    """
    path = Path(path)
    a = gbox.affine
    nd_text = "" if nodata is None else ("nan" if isinstance(nodata, float) and np.isnan(nodata) else str(nodata))
    nd = "" if nodata is None else f"<NoDataValue>{nd_text}</NoDataValue>"
    bands = []
    for b, desc in enumerate(descriptions, start=1):
        srcs = []
        for tg, tp in sources:
            ta = tg.affine
            xoff = int(round((ta.c - a.c) / a.a))
            yoff = int(round((ta.f - a.f) / a.e))
            h, w = tg.shape
            rel = html.escape(os.path.relpath(Path(tp).resolve(), path.parent.resolve()))
            kind = "ComplexSource" if overlapping else "SimpleSource"
            src_nd = f"<NODATA>{nd_text}</NODATA>" if overlapping and nodata is not None else ""
            srcs.append(
                f'<{kind}><SourceFilename relativeToVRT="1">{rel}</SourceFilename><SourceBand>{b}</SourceBand>'
                f'<SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/><DstRect xOff="{xoff}" yOff="{yoff}" xSize="{w}" ySize="{h}"/>'
                f'{src_nd}</{kind}>'
            )
        bands.append(f'<VRTRasterBand dataType="{_VRT_TYPES[dtype]}" band="{b}">{nd}<Description>{html.escape(desc)}</Description>'
                     + "".join(srcs) + "</VRTRasterBand>")
    gt = f"{a.c!r}, {a.a!r}, {a.b!r}, {a.f!r}, {a.d!r}, {a.e!r}"
    xml = (f'<VRTDataset rasterXSize="{gbox.shape[1]}" rasterYSize="{gbox.shape[0]}">'
           f'<SRS dataAxisToSRSAxisMapping="1,2">{html.escape(gbox.crs.to_wkt())}</SRS><GeoTransform>{gt}</GeoTransform>'
           + "".join(bands) + "</VRTDataset>\n")
    with atomic_path(path) as tmp:
        tmp.write_text(xml, encoding="utf-8")
    return path
