"""A PNG choropleth of parcel carbon density: classes coloured as in the QGIS style, a legend in t C/ha,
a scale bar and a north arrow (projected layers in metres).

Drawn with matplotlib's object API (``Figure`` + Agg canvas, no pyplot state), the map in the left part
of the figure and legend, north arrow and scale bar in a column to its right, so none of them hides a
parcel.  The returned :class:`MapImage` carries the affine map from layer coordinates to image pixels
that matplotlib used, so a caller (or a test) can find any parcel in the image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from ..fileio import atomic_path
from .classes import DENSITY_UNIT, NO_DATA_COLOUR, Classes, check_numeric, quantile_classes


@dataclass(frozen=True)
class MapImage:
    path: Path
    classes: Classes
    width_px: int
    height_px: int
    world_to_pixel: tuple[float, float, float, float, float, float]
    """(a, b, c, d, e, f): column = a·x + b·y + c, row = d·x + e·y + f (row 0 at the top)."""

    def pixel_of(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        a, b, c, d, e, f = self.world_to_pixel
        x, y = np.asarray(x, float), np.asarray(y, float)
        return a * x + b * y + c, d * x + e * y + f


# Chinese text (project and county names) needs a CJK font: the first of these installed is added as a
# fallback behind DejaVu Sans (matplotlib >= 3.6 falls back glyph by glyph along font.family)
CJK_FONTS = ("Noto Sans CJK SC", "Source Han Sans SC", "WenQuanYi Zen Hei", "Microsoft YaHei", "SimHei", "PingFang SC")


def _font_family() -> list[str]:
    from matplotlib import font_manager

    have = {f.name for f in font_manager.fontManager.ttflist}
    return ["DejaVu Sans", *[f for f in CJK_FONTS if f in have][:1]]


def _nice_length(span: float) -> float:
    """A 1-2-5 × 10^n length near a fifth of ``span``."""
    target = span / 5
    base = 10 ** np.floor(np.log10(target))
    return float(max(m * base for m in (1, 2, 5) if m * base <= target))


def is_metric_crs(crs) -> bool:
    """A projected CRS whose first axis is in metres."""
    return crs is not None and crs.is_projected and crs.axis_info[0].unit_name in ("metre", "meter")


def write_choropleth_png(gdf: gpd.GeoDataFrame, path: Path | str, density_col: str = "carbon_t_ha",
                         k: int = 5, classes: Classes | None = None, title: str | None = None,
                         width_px: int = 1600, height_px: int = 1200, dpi: int = 100,
                         id_col: str | None = "parcel_id", edge_colour: str = "#6e6e6e",
                         edge_width: float = 0.2) -> MapImage:
    """PNG of parcels coloured by ``density_col`` classes (quantile classes unless ``classes`` is given),
    NaN parcels in grey as "no data"."""
    path = Path(path)
    values = check_numeric(gdf, density_col, str(path), id_col)
    classes = classes or quantile_classes(values, density_col, k, DENSITY_UNIT)
    with rc_context({"font.family": _font_family()}):
        return _draw(gdf, path, values, classes, title, width_px, height_px, dpi, edge_colour, edge_width)


def _draw(gdf, path, values, classes, title, width_px, height_px, dpi, edge_colour, edge_width) -> MapImage:
    fig = Figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.02, 0.03, 0.70, 0.88))
    ax.set_aspect("equal")
    ax.set_axis_off()
    gdf.plot(ax=ax, color=list(classes.colour_of(values)), edgecolor=edge_colour, linewidth=edge_width)
    minx, miny, maxx, maxy = gdf.total_bounds
    pad = 0.02 * max(maxx - minx, maxy - miny)
    ax.set_xlim(minx - pad, maxx + pad)
    ax.set_ylim(miny - pad, maxy + pad)
    if title:
        fig.suptitle(title, x=0.37, y=0.97, fontsize=14)

    handles = [Patch(facecolor=c, edgecolor=edge_colour, label=lab) for c, lab in zip(classes.colours, classes.labels)]
    if np.isnan(values).any():
        handles.append(Patch(facecolor=NO_DATA_COLOUR, edgecolor=edge_colour, label="no data"))
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(0.74, 0.55), frameon=False,
               title=f"Carbon density ({classes.unit})\n{classes.k} quantile classes", alignment="left")
    fig.text(0.80, 0.88, "N", ha="center", va="bottom", fontsize=14, fontweight="bold")
    fig.patches.append(_north_arrow(fig))

    fig.canvas.draw()  # fixes the axes box (equal aspect) before reading its transform
    if is_metric_crs(gdf.crs):
        _scale_bar(fig, ax, maxx - minx)
    t = ax.transData
    (x0, y0), (x1, y1), (x2, y2) = t.transform([(0.0, 0.0), (1.0, 0.0), (0.0, 1.0)])
    h = fig.bbox.height
    # display coordinates have their origin at the bottom left; image rows count from the top
    affine = (x1 - x0, x2 - x0, x0, -(y1 - y0), -(y2 - y0), h - y0)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    return MapImage(path, classes, int(round(fig.bbox.width)), int(round(h)), tuple(float(v) for v in affine))


def _north_arrow(fig):
    from matplotlib.patches import FancyArrow

    return FancyArrow(0.80, 0.80, 0.0, 0.075, width=0.008, head_width=0.025, head_length=0.03, color="black",
                      transform=fig.transFigure, length_includes_head=True)


def _scale_bar(fig, ax, span_m: float) -> None:
    """A bar of a round length in metres, drawn in the figure's right column at the map's scale."""
    length = _nice_length(span_m)
    (xa, _), (xb, _) = ax.transData.transform([(0.0, 0.0), (length, 0.0)])
    w = (xb - xa) / fig.bbox.width  # bar length as a fraction of the figure width
    x0, y0 = 0.74, 0.10
    fig.add_artist(_bar(fig, x0, y0, w))
    label = f"{length / 1000:g} km" if length >= 1000 else f"{length:g} m"
    fig.text(x0 + w / 2, y0 + 0.015, label, ha="center", va="bottom", fontsize=10)


def _bar(fig, x0, y0, w):
    from matplotlib.patches import Rectangle

    return Rectangle((x0, y0), w, 0.008, transform=fig.transFigure, facecolor="black", edgecolor="black")
