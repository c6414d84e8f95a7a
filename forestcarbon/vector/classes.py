"""Classes of a numeric parcel field for maps: quantile breaks, a sequential colour ramp, legend labels.

Every map output (the QGIS style in the GeoPackage, the PNG, the HTML map) takes its classes from
:func:`quantile_classes`, so a parcel has the same class and colour in all of them.

Breaks follow QGIS's "Quantile (Equal Count)" method (``QgsClassificationQuantile::calculateBreaks``,
qgis/QGIS src/core/symbology/classification/qgsclassificationquantile.cpp): the i-th break is the
quantile q = i/k interpolated linearly between order statistics at position q·(n−1), which is
numpy's default (``method="linear"``, Hyndman & Fan 1996 type 7).  A value belongs to the first
class whose closed interval [lower, upper] holds it, as ``QgsGraduatedSymbolRenderer::rangeForValue``
decides, so a value equal to a break falls in the lower class.

Colours: ColorBrewer sequential YlGn (Brewer, Harrower & The Pennsylvania State University 2002,
colorbrewer2.org) as matplotlib's ``YlGn`` colormap, sampled from its light to its dark end; the
palest end is skipped so the lowest class still stands out from a white background.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import FieldError

DENSITY_UNIT = "t C/ha"
NO_DATA_COLOUR = "#d9d9d9"


@dataclass(frozen=True)
class Classes:
    """``edges`` (k+1 increasing values: lower bound of class 0, then each class's upper bound),
    one ``colours`` hex string and one legend ``labels`` string per class."""

    field: str
    edges: tuple[float, ...]
    colours: tuple[str, ...]
    labels: tuple[str, ...]
    unit: str

    @property
    def k(self) -> int:
        return len(self.colours)

    def classify(self, values) -> np.ndarray:
        """Class index of each value (0 … k−1); −1 for NaN or values outside [edges[0], edges[-1]]."""
        v = np.asarray(values, dtype="float64")
        e = np.asarray(self.edges)
        idx = np.searchsorted(e[1:], v, side="left")
        out = ~np.isfinite(v) | (v < e[0]) | (v > e[-1])
        return np.where(out, -1, idx).astype("int64")

    def colour_of(self, values) -> np.ndarray:
        """Hex colour of each value; :data:`NO_DATA_COLOUR` where unclassified."""
        lut = np.array([*self.colours, NO_DATA_COLOUR], dtype=object)
        return lut[self.classify(values)]  # index −1 picks the no-data colour


def check_numeric(df: pd.DataFrame, column: str, where: str, id_field: str | None = None,
                  minimum: float | None = 0.0) -> np.ndarray:
    """The column as float64 (NaN allowed: unmapped parcels); an error naming the rows for a missing or
    non-numeric column, infinite values, or values below ``minimum``."""
    if column not in df.columns:
        raise FieldError(f"{where}: no field {column!r} (fields: {[c for c in df.columns if c != 'geometry']})")
    s = df[column]
    if not (pd.api.types.is_numeric_dtype(s) or s.isna().all()) or pd.api.types.is_bool_dtype(s):
        raise FieldError(f"{where}: field {column!r} is not numeric (dtype {s.dtype})")
    v = s.to_numpy(dtype="float64", na_value=np.nan)
    bad = np.isinf(v) | ((v < minimum) if minimum is not None else np.zeros(len(v), bool))
    if bad.any():
        rows = np.flatnonzero(bad)
        names = (f"{id_field} {list(df[id_field].iloc[rows[:5]].astype(str))}" if id_field in df.columns
                 else f"rows {list(rows[:5] + 1)} (1-based)")
        what = "infinite or negative" if minimum == 0 else f"infinite or below {minimum}"
        raise FieldError(f"{where}: field {column!r} is {what} at {names}, value(s) {list(v[rows[:5]])} "
                         f"({len(rows)} in all)")
    return v


def ramp_colours(k: int, cmap: str = "YlGn") -> tuple[str, ...]:
    """``k`` colours from a matplotlib colormap, light to dark (see module docstring)."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    pos = np.linspace(0.2, 0.95, k) if k > 1 else np.array([0.6])
    return tuple(to_hex(colormaps[cmap](p)) for p in pos)


def quantile_classes(values, field: str, k: int = 5, unit: str = DENSITY_UNIT, decimals: int = 1,
                     cmap: str = "YlGn") -> Classes:
    """Quantile classes of the finite ``values`` (QGIS's method, see the module docstring).  Tied breaks
    are merged, so a field with few distinct values gets fewer than ``k`` classes."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    v = np.asarray(values, dtype="float64")
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise FieldError(f"field {field!r} has no finite values to classify")
    q = np.arange(k + 1) / k  # i/k exactly, as QGIS computes q
    edges = np.unique(np.quantile(v, q))
    if edges.size == 1:
        edges = np.array([edges[0], edges[0]])
    n = edges.size - 1
    labels = tuple(f"{lo:.{decimals}f} – {hi:.{decimals}f} {unit}" for lo, hi in zip(edges[:-1], edges[1:]))
    return Classes(field, tuple(float(e) for e in edges), ramp_colours(n, cmap), labels, unit)
