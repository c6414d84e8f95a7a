"""A loss assessment's map (PNG) and its one-page, self-contained HTML summary.

The HTML has no external resource: the map is embedded as base64, so the page
can be attached to a report or an expert opinion as one file.  It lists the
inputs with their SHA-256, the method, and the numbers with their intervals.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import math
from pathlib import Path

import geopandas as gpd
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import rasterio  # noqa: E402
from rasterio.windows import Window, from_bounds  # noqa: E402

from .. import __version__  # noqa: E402
from ..fileio import atomic_path  # noqa: E402
from .change import difference_sd, z_of  # noqa: E402
from .loss import Loss  # noqa: E402
from .store import Epoch  # noqa: E402


def _window(path: str, bounds) -> tuple[np.ndarray, tuple, object]:
    """Band 1 of ``path`` over ``bounds`` (in the raster's CRS), NaN outside the raster; (array, extent, crs)."""
    with rasterio.open(path) as src:
        f = from_bounds(*bounds, transform=src.transform)  # fractional: widen to whole pixels on every side
        c0, r0 = math.floor(f.col_off), math.floor(f.row_off)
        w = Window(c0, r0, max(math.ceil(f.col_off + f.width) - c0, 1), max(math.ceil(f.row_off + f.height) - r0, 1))
        a = src.read(1, window=w, boundless=True, fill_value=np.nan, masked=True).astype("float64").filled(np.nan)
        t = src.window_transform(w)
        extent = (t.c, t.c + t.a * a.shape[1], t.f + t.e * a.shape[0], t.f)
        return a, extent, src.crs


def loss_png(loss: Loss, area: gpd.GeoDataFrame, path: Path) -> Path:
    """Carbon density before, after and the change (after − before) around the area, its outline drawn."""
    with rasterio.open(loss.before.carbon_map) as src:
        crs = src.crs
    poly = area.to_crs(crs)
    x0, y0, x1, y1 = poly.total_bounds
    pad = 0.25 * max(x1 - x0, y1 - y0, 1.0)
    bounds = (x0 - pad, y0 - pad, x1 + pad, y1 + pad)
    a, ext_a, _ = _window(loss.before.carbon_map, bounds)
    b, ext_b, _ = _window(loss.after.carbon_map, bounds)
    same = a.shape == b.shape and np.allclose(ext_a, ext_b)
    fig, axes = plt.subplots(1, 3 if same else 2, figsize=(12 if same else 8, 4.2), dpi=100)
    vmax = float(np.nanpercentile(np.concatenate([a.ravel(), b.ravel()]), 99)) if np.isfinite(a).any() else 1.0
    for ax, arr, ext, ac in ((axes[0], a, ext_a, loss.before), (axes[1], b, ext_b, loss.after)):
        im = ax.imshow(arr, extent=ext, cmap="YlGn", vmin=0, vmax=vmax or 1.0)
        ax.set_title(f"{ac.epoch} ({ac.epoch_date})\ncarbon, Mg C/ha", fontsize=10)
        fig.colorbar(im, ax=ax, shrink=0.8)
    if same:
        d = b - a
        m = float(np.nanmax(np.abs(d))) if np.isfinite(d).any() else 1.0
        im = axes[2].imshow(d, extent=ext_a, cmap="RdBu", vmin=-(m or 1.0), vmax=m or 1.0)
        axes[2].set_title(f"change {loss.after.epoch} − {loss.before.epoch}\nMg C/ha", fontsize=10)
        fig.colorbar(im, ax=axes[2], shrink=0.8)
    for ax in axes:
        poly.boundary.plot(ax=ax, color="black", linewidth=1.2)
        ax.set_xlim(bounds[0], bounds[2])
        ax.set_ylim(bounds[1], bounds[3])
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def _t(v: float) -> str:
    return f"{v:,.2f}"


def loss_html(loss: Loss, before: Epoch, after: Epoch, area_file: Path, area_sha256: str, db_path: Path,
              png: Path, path: Path) -> Path:
    """The one-page summary (see the module docstring)."""
    e = html.escape
    pct = f"{loss.level:.0%}"
    img = base64.b64encode(png.read_bytes()).decode("ascii")
    b, a = loss.before, loss.after

    def epoch_rows(ep: Epoch) -> str:
        files = "".join(f"<tr><td>{e(ep.epoch)}: {e(f.role)}</td><td>{e(f.path)}</td><td><code>{f.sha256}</code></td></tr>"
                        for f in ep.files if f.role in ("carbon", "carbon_sd", "parcels", "model_card", "scenes",
                                                        "provenance"))
        return (f"<tr><td>{e(ep.epoch)}: run</td><td colspan=2>date {e(ep.epoch_date)}; model {e(', '.join(ep.model_ids))}; "
                f"configuration sha256 <code>{e(ep.config_sha256 or 'not recorded')}</code>; {e(ep.code_version)}; "
                f"{len(ep.scene_ids)} scenes; committed {e(ep.created_utc)}</td></tr>" + files)

    rows = [
        ("Area inside the polygon", f"{b.area_ha:,.4f} ha"),
        (f"Carbon {e(b.epoch)} ({e(b.epoch_date)})", f"{_t(b.carbon_t)} ± {_t(b.carbon_sd_t)} t C (sd); "
                                                    f"mapped {b.mapped_fraction:.1%} of the area"),
        (f"Carbon {e(a.epoch)} ({e(a.epoch_date)})", f"{_t(a.carbon_t)} ± {_t(a.carbon_sd_t)} t C (sd); "
                                                    f"mapped {a.mapped_fraction:.1%} of the area"),
        ("<b>Carbon lost</b>", f"<b id='loss-c'>{_t(loss.loss_carbon_t)} t C</b>, sd {_t(loss.loss_carbon_sd_t)}; "
                               f"{pct} interval <span id='loss-c-int'>[{_t(loss.loss_carbon_lo_t)}, {_t(loss.loss_carbon_hi_t)}]</span> t C"),
        ("<b>CO2 equivalent lost</b>", f"<b id='loss-co2e'>{_t(loss.loss_co2e_t)} t CO2e</b>, sd {_t(loss.loss_co2e_sd_t)}; "
                                       f"{pct} interval <span id='loss-co2e-int'>[{_t(loss.loss_co2e_lo_t)}, {_t(loss.loss_co2e_hi_t)}]</span> t CO2e"),
        ("Between-epoch error correlation ρ", f"{loss.rho:g}"),
        ("Sensitivity: sd of the carbon lost for other ρ",
         "; ".join(f"ρ = {r:g}: {_t(float(difference_sd(b.carbon_sd_t, a.carbon_sd_t, r)))} t C" for r in (0, 0.5, 0.9))),
    ]
    table = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    method = (
        "Each epoch's carbon inside the polygon is an exact zonal statistic (exactextract: each 10 m pixel weighted by "
        "the fraction of it inside the polygon) of that epoch's carbon density map (total carbon, above- and "
        "belowground, Mg C/ha), read from the file the epoch recorded after checking its SHA-256: carbon = mean "
        "density over the mapped pixels × polygon area (unmapped pixels, if any, take that mean). Its standard "
        "deviation is the mean of the epoch's per-pixel carbon sd map × area, i.e. pixel errors inside the polygon "
        "are taken as fully correlated (model errors are spatially correlated; independence would understate the "
        f"uncertainty). Loss = carbon before − carbon after; its sd = √(sd₁² + sd₂² − 2ρ·sd₁·sd₂) with ρ = {loss.rho:g} "
        "the correlation of the two epochs' errors (ρ = 0 is the largest variance for any ρ in [0, 1], the "
        f"conservative choice when ρ is not measured); the {pct} interval is loss ± {z_of(loss.level):.3f} sd (normal). "
        "CO2e = C × 44/12 (IPCC 2006). A positive loss is carbon removed from the area.")
    page = f"""<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Carbon loss assessment</title>
<style>body{{font-family:sans-serif;font-size:12px;max-width:1100px;margin:12px}}table{{border-collapse:collapse;margin:6px 0}}
td,th{{border:1px solid #bbb;padding:3px 6px;text-align:left;vertical-align:top}}code{{font-size:10px}}h1{{font-size:18px}}
h2{{font-size:14px;margin:10px 0 4px}}p{{margin:4px 0}}img{{max-width:100%}}</style></head><body>
<h1>Carbon loss assessment: {e(b.epoch)} → {e(a.epoch)}</h1>
<table>{table}</table>
<img alt="carbon density before, after and change, polygon outlined" src="data:image/png;base64,{img}">
<h2>Method</h2><p>{e(method)}</p>
<h2>Inputs</h2><table><tr><th>input</th><th>path</th><th>SHA-256 / details</th></tr>
<tr><td>polygon</td><td>{e(str(area_file))}</td><td><code>{area_sha256}</code></td></tr>
<tr><td>accounts database</td><td colspan=2>{e(str(db_path))}</td></tr>
{epoch_rows(before)}{epoch_rows(after)}</table>
<p>Produced {dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")} by forestcarbon {e(__version__)}
(<code>forestcarbon loss</code>).</p></body></html>"""
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path
