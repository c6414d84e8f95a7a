"""Carbon lost inside a polygon between two epochs, from the epochs' carbon maps.

Method (chosen over parcel stocks × area share): the carbon inside the polygon
in each epoch is an exact zonal statistic (exactextract: every pixel weighted
by the fraction of it inside the polygon) of that epoch's carbon density map
(``maps/carbon.tif`` band 1, Mg C/ha) and of its sd map (``maps/carbon_sd.tif``),
read from the paths the epoch recorded and checked against their SHA-256.
Why not the parcel stocks: a loss polygon is usually the disturbed patch
(a clear-cut, a fire scar) inside parcels that were otherwise left standing;
spreading each parcel's stock uniformly over its area dilutes the loss by
the intact remainder of the parcel, whereas the maps locate it to the pixel.

Per epoch, with A the polygon's area (ha) in the map's CRS::

    C   = mean carbon density over the mapped pixels inside (coverage-weighted) × A
    sd  = mean carbon sd density over the same pixels × A

so unmapped pixels inside take the mean of the mapped ones (the parcel stage's
rule; the mapped fraction is reported).  The sd treats the pixel errors inside
the polygon as fully correlated (the sd of a sum of perfectly correlated terms
is the sum of their sds): model errors are spatially correlated over hundreds
of metres, and independence (sd shrinking with √n) would understate it.

Loss L = C_from − C_to (positive: carbon lost), sd from
:func:`forestcarbon.accounts.change.difference_sd` with the between-epoch
correlation ρ, a normal interval at the nominal level; CO2e by
:func:`forestcarbon.models.carbon.co2e`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
import shapely
from pyproj import CRS

from ..errors import CRSError, FieldError, LedgerError
from ..fileio import sha256
from ..models.carbon import co2e
from ..vector.zonal import zonal_table
from .change import DEFAULT_EPOCH_ERROR_CORRELATION, check_rho, difference_sd, z_of
from .store import Epoch


@dataclass(frozen=True)
class AreaCarbon:
    epoch: str
    epoch_date: str
    area_ha: float
    mapped_fraction: float
    carbon_t: float
    carbon_sd_t: float
    carbon_map: str
    carbon_sd_map: str


@dataclass(frozen=True)
class Loss:
    before: AreaCarbon
    after: AreaCarbon
    rho: float
    level: float
    loss_carbon_t: float
    loss_carbon_sd_t: float
    loss_carbon_lo_t: float
    loss_carbon_hi_t: float
    loss_co2e_t: float
    loss_co2e_sd_t: float
    loss_co2e_lo_t: float
    loss_co2e_hi_t: float

    def to_dict(self) -> dict:
        return asdict(self)


def verified_map(epoch: Epoch, role: str) -> Path:
    """The epoch's ``role`` file, after checking it exists and still has the SHA-256 the epoch recorded."""
    f = epoch.file(role)
    p = Path(f.path)
    if not p.exists():
        raise LedgerError(f"epoch {epoch.epoch!r}: its {role} map {p} is gone (recorded sha256 {f.sha256[:12]}…)")
    now = sha256(p)
    if now != f.sha256:
        raise LedgerError(f"epoch {epoch.epoch!r}: {p} has changed since the epoch was committed "
                          f"(sha256 {now[:12]}… now, {f.sha256[:12]}… recorded)")
    return p


def dissolve_area(area: gpd.GeoDataFrame, where: str) -> gpd.GeoDataFrame:
    """One polygon: the union of the layer's polygons (an error if there is none or it has no area)."""
    geom = area.geometry[~(area.geometry.isna() | area.geometry.is_empty)]
    if len(geom) == 0:
        raise FieldError(f"{where}: no polygon")
    parts = shapely.get_parts(geom.make_valid().explode(index_parts=False).to_numpy())
    polys = parts[shapely.get_type_id(parts) == 3]  # polygons only: lines and points have no area
    if len(polys) == 0:
        raise FieldError(f"{where}: the features are not polygons ({sorted(set(geom.geom_type))})")
    u = shapely.union_all(polys)
    return gpd.GeoDataFrame({"zone": ["area"]}, geometry=[u], crs=area.crs)


def area_carbon(epoch: Epoch, area: gpd.GeoDataFrame) -> AreaCarbon:
    """Carbon (t C) and its sd inside the single polygon ``area`` from the epoch's verified maps."""
    cmap, smap = verified_map(epoch, "carbon"), verified_map(epoch, "carbon_sd")
    with rasterio.open(cmap) as src:
        crs, count, tr = CRS.from_user_input(src.crs), src.count, src.transform
    if not crs.is_projected:
        raise CRSError(f"{cmap}: map CRS {crs.name} is not projected; areas need metres")
    poly = area.to_crs(crs)
    area_ha = float(poly.geometry.area.iloc[0]) / 10_000
    px_ha = abs(tr.a * tr.e - tr.b * tr.d) / 10_000
    zc = zonal_table(cmap, poly, "zone", ("mean", "count"), band_names=[f"b{i}" for i in range(count)])
    zs = zonal_table(smap, poly, "zone", ("mean",), band_names=["sd"])
    mapped = float(zc["b0_count"].iloc[0]) * px_ha / area_ha if area_ha > 0 else 0.0
    if not mapped > 0:
        raise LedgerError(f"epoch {epoch.epoch!r}: the area has no mapped pixel in {cmap}")
    return AreaCarbon(epoch.epoch, epoch.epoch_date, area_ha, min(mapped, 1.0),
                      float(zc["b0_mean"].iloc[0]) * area_ha, float(zs["sd_mean"].iloc[0]) * area_ha,
                      str(cmap), str(smap))


def carbon_loss(before: Epoch, after: Epoch, area: gpd.GeoDataFrame,
                rho: float = DEFAULT_EPOCH_ERROR_CORRELATION, level: float = 0.90) -> Loss:
    """Carbon lost inside ``area`` (its polygons united, see :func:`dissolve_area`) from ``before`` to ``after``."""
    rho = check_rho(rho)
    area = dissolve_area(area, "loss area")
    b, a = area_carbon(before, area), area_carbon(after, area)
    loss = b.carbon_t - a.carbon_t
    sd = float(difference_sd(b.carbon_sd_t, a.carbon_sd_t, rho))
    z = z_of(level)
    lo, hi = loss - z * sd, loss + z * sd
    c = [float(v) for v in co2e(np.array([loss, sd, lo, hi]))]
    return Loss(b, a, rho, level, loss, sd, lo, hi, *c)
