"""Carbon for this boundary: an uploaded polygon → the carbon inside it, with SD and 90 % interval, from an
epoch of the carbon accounts (the latest by default).  The computation is
:func:`forestcarbon.accounts.loss.area_carbon` (exact coverage-weighted zonal means of the epoch's verified
carbon and SD maps; pixel errors inside the polygon taken as fully correlated, see that module); this module
reads the polygon (a file or GeoJSON text), picks the epoch and shapes the answer."""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict
from pathlib import Path

import geopandas as gpd

from ..accounts.change import z_of
from ..accounts.loss import area_carbon, dissolve_area
from ..errors import FieldError, InputNotFoundError
from ..models.carbon import co2e


def read_boundary(boundary: str) -> gpd.GeoDataFrame:
    """A polygon layer from a file path, or from GeoJSON text (a Feature, FeatureCollection or geometry; WGS 84
    or CGCS2000 geographic unless it names a CRS), as an upload form delivers it."""
    text = boundary.strip()
    if text.startswith("{"):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as err:
            raise FieldError(f"boundary: not valid GeoJSON ({err.msg} at character {err.pos})") from None
        if obj.get("type") not in ("FeatureCollection", "Feature"):
            obj = {"type": "Feature", "geometry": obj, "properties": {}}
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / "boundary.geojson"
            p.write_text(json.dumps(obj))
            gdf = gpd.read_file(p)
        return gdf if gdf.crs is not None else gdf.set_crs("EPSG:4326")
    p = Path(boundary)
    if not p.exists():
        raise InputNotFoundError(f"boundary: file not found: {p}")
    gdf = gpd.read_file(p)
    if gdf.crs is None:
        raise FieldError(f"boundary: {p} has no CRS")
    return gdf


def boundary_carbon(store, boundary: str, epoch: str | None = None, level: float = 0.90) -> dict:
    """Carbon (t C) and CO2e inside ``boundary`` in ``epoch`` (default: the latest) with SD and interval."""
    epochs = store.epochs()
    if not epochs:
        raise FieldError("the accounts hold no epoch yet: `forestcarbon accounts commit OUT --epoch ...` first")
    e = store.epoch(epoch) if epoch else epochs[-1]
    area = dissolve_area(read_boundary(boundary), "boundary")
    a = area_carbon(e, area)
    z = z_of(level)
    lo, hi = max(a.carbon_t - z * a.carbon_sd_t, 0.0), a.carbon_t + z * a.carbon_sd_t
    return {**asdict(a), "level": level, "carbon_lo_t": lo, "carbon_hi_t": hi,
            "co2e_t": float(co2e(a.carbon_t)), "co2e_sd_t": float(co2e(a.carbon_sd_t)),
            "co2e_lo_t": float(co2e(lo)), "co2e_hi_t": float(co2e(hi)),
            "method": "exact coverage-weighted zonal means of the epoch's carbon and SD maps; pixel errors inside "
                      "the polygon fully correlated (forestcarbon.accounts.loss)"}
