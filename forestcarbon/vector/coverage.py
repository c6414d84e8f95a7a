"""Coverage fractions of polygons on a raster grid, computed once and reused for every layer and band.

For each polygon: the flat indices (``row * width + col``) of the grid cells it touches and the fraction of
each cell's area it covers.  The fractions are exactextract's own (its ``cell_id`` and ``coverage``
operations; Baston, exactextract, https://isciences.github.io/exactextract/operations.html), computed
against a constant all-valid source on the grid, so no raster is read here and no cell is dropped for being
nodata in some layer.  exactextract stores fractions as single-precision floats; reusing its values is what
makes sums computed from them equal its ``sum`` to rounding.

Polygons go to exactextract as WKB through a small feature source and come back through a writer that keeps
only the two arrays: its GeoPandas source serialises every feature to GeoJSON text, which costs more than
the coverage itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import rasterio
from affine import Affine
from exactextract import exact_extract
from exactextract.feature import Feature, FeatureSource
from exactextract.raster import NumPyRasterSource
from exactextract.writer import Writer
from pyproj import CRS

from ..errors import CRSError


@dataclass(frozen=True)
class Grid:
    """A north-up raster grid: affine ``transform``, ``width`` x ``height`` cells, ``crs`` (WKT)."""

    transform: Affine
    width: int
    height: int
    crs: str

    @classmethod
    def of(cls, path) -> Grid:
        with rasterio.open(path) as src:
            if src.crs is None:
                raise CRSError(f"{path}: raster has no CRS")
            t = src.transform
            if t.b != 0 or t.d != 0 or t.e >= 0:
                raise CRSError(f"{path}: raster grid is rotated or not north-up ({tuple(t)[:6]})")
            return cls(t, src.width, src.height, src.crs.to_wkt())

    def same_as(self, other: Grid) -> bool:
        return (self.width, self.height) == (other.width, other.height) and \
            self.transform.almost_equals(other.transform, precision=1e-9) and \
            CRS.from_user_input(self.crs).equals(CRS.from_user_input(other.crs))

    @property
    def cell_area_m2(self) -> float:
        """Area of one cell in CRS units squared (m² in a projected CRS in metres)."""
        return abs(self.transform.a * self.transform.e - self.transform.b * self.transform.d)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        t = self.transform
        return t.c, t.f + t.e * self.height, t.c + t.a * self.width, t.f


@dataclass
class Coverage:
    """Cells touched by each polygon: parallel arrays ``polygon`` (0-based position in the input),
    ``cell`` (``row * width + col``) and ``fraction`` (of the cell's area inside the polygon; float32, as
    exactextract computes it, so halving memory loses nothing), polygon by polygon in input order, each
    polygon's cells in row-major order."""

    polygon: np.ndarray
    cell: np.ndarray
    fraction: np.ndarray


class _WkbFeature(Feature):
    def __init__(self, position: int, wkb: bytes):
        Feature.__init__(self)
        self.position = position
        self.wkb = wkb

    def geometry(self):
        return self.wkb

    def set_geometry_format(self):
        return "wkb"

    def get(self, name):
        return self.position

    def fields(self):
        return ["position"]


class _WkbSource(FeatureSource):
    def __init__(self, wkbs, crs_wkt: str):
        super().__init__()
        self.wkbs = wkbs
        self.crs_wkt = crs_wkt

    def count(self):
        return len(self.wkbs)

    def __iter__(self):
        for i, w in enumerate(self.wkbs):
            yield _WkbFeature(i, w)

    def srs_wkt(self):
        return self.crs_wkt


class _Sink(Feature):
    def __init__(self):
        Feature.__init__(self)
        self.values = {}

    def set(self, name, value):
        self.values[name] = value

    def set_geometry_format(self):
        return "wkb"

    def set_geometry(self, geometry):
        pass


class _CoverageWriter(Writer):
    def __init__(self):
        super().__init__()
        self.position, self.cells, self.fractions = [], [], []

    def add_operation(self, op):
        pass

    def add_column(self, col_name):
        pass

    def write(self, feature):
        sink = _Sink()
        feature.copy_to(sink)
        v = sink.values
        self.position.append(v["position"])
        self.cells.append(v["cell_id"])
        fraction = v["coverage"]
        single = fraction.astype(np.float32)
        if len(self.fractions) < 100 and not np.array_equal(single, fraction):
            # exactextract computes fractions as floats; were that to change, halving them would lose digits
            raise RuntimeError("exactextract coverage fractions are not single-precision floats")
        self.fractions.append(single)

    def features(self):
        return None


def coverage_fractions(wkbs, grid: Grid) -> Coverage:
    """Coverage of each polygon (WKB, in ``grid.crs``) on ``grid``; polygons off the grid touch no cell."""
    ones = np.broadcast_to(np.float32(1), (grid.height, grid.width))
    source = NumPyRasterSource(ones, *grid.bounds, srs_wkt=grid.crs)
    writer = _CoverageWriter()
    exact_extract(source, _WkbSource(list(wkbs), grid.crs), ["cell_id", "coverage"], include_cols=["position"],
                  output=writer)
    counts = np.fromiter((len(c) for c in writer.cells), dtype=np.int64, count=len(writer.cells))
    polygon = np.repeat(np.asarray(writer.position, dtype=np.int32), counts)
    if counts.sum() == 0:
        return Coverage(polygon, np.zeros(0, np.int64), np.zeros(0, np.float32))
    fraction = np.concatenate(writer.fractions)
    writer.fractions.clear()
    return Coverage(polygon, np.concatenate(writer.cells).astype(np.int64, copy=False), fraction)
