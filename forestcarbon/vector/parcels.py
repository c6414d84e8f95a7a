"""Forest parcels (小班) as forestry bureaus deliver them, into one standard table.

:func:`read_parcels` reads a GeoPackage, Shapefile (``.cpg``/``.prj`` honoured;
a configured encoding, e.g. GBK, for shapefiles without ``.cpg``), GeoParquet
or FlatGeobuf in any CRS, maps the bureau's fields to standard columns and
checks the features before anything heavy runs.  Every problem is ONE line
naming the file, layer, field and the offending ids or 1-based feature rows.

Standard columns (the original attributes follow them unchanged; one named like a standard column gets
the suffix ``_source``):

``parcel_id``         text; one field, or the usual 小班 key fields (XIAN 县, XIANG 乡, CUN 村,
                      LIN_BAN 林班, XIAO_BAN 小班) joined by a separator.  Values are kept as the
                      file's text, so zero padding ("007") survives; integer fields are written
                      without decimals and may be left-padded to a configured width.
``declared_area_ha``  the declared area field (MIAN_JI 面积) converted from mu, ha or m².
``land_class``        the land-class code (DI_LEI 地类) as text; ``is_forest`` is true where it is
                      one of the configured forest codes.
``species``           the dominant species (YOU_SHI_SZ 优势树种), ``age_group`` (LING_ZU 龄组).
``area_ha``           geometric area in the target CRS (after :func:`~.area_crs.require_area_crs`).
``area_diff_rel``     (area_ha - declared_area_ha) / declared_area_ha; ``area_flag`` where its
                      magnitude exceeds the tolerance.

Unit: 1 mu (亩) = 10000/15 m² = 666.67 m², i.e. 1 ha = 15 mu: the ratio fixed when China's
land-area statistics changed from 亩 to 公顷 (国家土地管理局、国家技术监督局、农业部, 1990,
《关于改革全国土地面积计量单位的通知》: "1 公顷 = 15 亩"; the 市制 亩 = 6000 平方市尺 =
60 平方丈, with 1 市尺 = 1/3 m, gives the same 6000/9 m²).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import shapely
from pyproj import CRS

from ..errors import CRSError, FieldError, InputNotFoundError
from .area_crs import MAX_AREAL_SCALE_ERROR, require_area_crs
from .layers import _where, feature_rows as _rows
from .layers import listing

M2_PER_UNIT = {"m2": 1.0, "ha": 10_000.0, "mu": 10_000.0 / 15.0}
"""Square metres per declared-area unit (亩: 1 ha = 15 mu, see the module docstring)."""

STANDARD_COLUMNS = ("parcel_id", "declared_area_ha", "land_class", "is_forest", "species", "age_group", "area_ha",
                    "area_diff_rel", "area_flag")

XIAOBAN_KEY = ("XIAN", "XIANG", "CUN", "LIN_BAN", "XIAO_BAN")
"""The usual composite key of a 小班 in forest management inventory (二类调查) layers: county, township,
village, compartment (林班), sub-compartment (小班)."""


@dataclass(frozen=True)
class ParcelFields:
    """How a bureau's layer maps to the standard columns (plain values; see :class:`forestcarbon.config.ParcelsConfig`)."""

    id_fields: tuple[str, ...] = ("parcel_id",)
    id_separator: str = "-"
    id_widths: dict = field(default_factory=dict)  # field -> zero-pad width for integer-typed key fields
    area_field: str | None = None
    area_unit: str = "mu"
    land_class_field: str | None = None
    forest_codes: tuple[str, ...] = ()
    species_field: str | None = None
    age_group_field: str | None = None
    encoding: str | None = None  # text encoding of a shapefile's DBF; overrides its .cpg

    def required(self) -> tuple[str, ...]:
        opt = (self.area_field, self.land_class_field, self.species_field, self.age_group_field)
        return tuple(dict.fromkeys([*self.id_fields, *(f for f in opt if f)]))


@dataclass
class Parcels:
    """The standard parcel table and what ingest did to it."""

    gdf: gpd.GeoDataFrame
    repaired_ids: list = field(default_factory=list)  # invalid geometries repaired (make_valid, polygonal parts kept)
    area_flagged_ids: list = field(default_factory=list)
    max_areal_scale_error: float = 0.0

    @property
    def report(self) -> dict:
        return {"parcels": len(self.gdf), "repaired_geometries": len(self.repaired_ids),
                "repaired_ids": self.repaired_ids[:20], "area_flagged": len(self.area_flagged_ids),
                "area_flagged_ids": self.area_flagged_ids[:20], "max_areal_scale_error": self.max_areal_scale_error}


def land_class_text(values, codes) -> np.ndarray:
    """Land-class values as text comparable with ``codes``: 111.0 -> '111'; and when every code is the same
    number of digits, shorter all-digit values are zero-padded to it ('111' -> '0111': a code field saved as
    a number loses its leading zero).  The one normaliser the forest mask and every parcel total use."""
    codes = [str(c).strip() for c in codes]
    widths = {len(c) for c in codes if c.isdigit()}
    width = widths.pop() if len(widths) == 1 and all(c.isdigit() for c in codes) else None

    def one(v) -> str:
        if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA:
            return ""
        t = str(int(v)) if isinstance(v, float) and v.is_integer() else str(v).strip()
        return t.zfill(width) if width and t.isdigit() and len(t) < width else t

    return pd.Series(values).map(one).to_numpy(object)


def as_text(values: pd.Series, width: int | None = None) -> pd.Series:
    """Field values as stripped text, integers without a decimal part, optionally zero-padded to ``width``;
    NaN/None stay missing.  Text stays as written ("007" is not 7)."""
    s = pd.Series(values, copy=False)
    if pd.api.types.is_float_dtype(s):
        whole = s.dropna()
        if (whole == np.round(whole)).all():
            s = s.astype("Int64")
    out = s.astype("string").str.strip()
    out = out.mask(out == "")
    if width:
        out = out.str.zfill(int(width))
    return out


def _shapefile_undeclared(path: Path, info: dict) -> bool:
    """A shapefile with neither a .cpg nor a code page in its DBF header: GDAL reads its bytes as Latin-1."""
    return path.suffix.lower() == ".shp" and not path.with_suffix(".cpg").exists() and \
        not path.with_suffix(".CPG").exists() and str(info.get("encoding", "")).upper() in ("ISO-8859-1", "")


def _check_schema(path: Path, layer, fields: ParcelFields, where: str) -> dict:
    """From the schema alone: the layer opens, holds the mapped fields and (but for GeoParquet, whose CRS is
    checked on reading) has a CRS.  Returns the driver's layer info ({} for GeoParquet)."""
    parquet = path.suffix.lower() in (".parquet", ".geoparquet")
    try:
        if parquet:
            import pyarrow.parquet as pq

            have, info = [n for n in pq.read_schema(path).names], {}
        else:
            info = pyogrio.read_info(path, layer=layer)
            have = list(info["fields"])
    except Exception as err:
        raise FieldError(f"{where}: cannot read layer ({str(err).splitlines()[0]})") from None
    for f in fields.required():
        if f not in have:
            raise FieldError(f"{where}: no field {f!r} (fields: {[h for h in have if h != 'geometry']})")
    if not parquet and info.get("crs") is None:
        raise CRSError(f"{where}: layer has no CRS (a shapefile needs its .prj; declare CGCS2000, e.g. EPSG:4490 "
                       "or EPSG:4549, in the file)")
    return info


def _read_checked(path: Path, layer, fields: ParcelFields, where: str) -> gpd.GeoDataFrame:
    """The layer's features after :func:`_check_schema`; text decoded with the configured encoding for
    shapefiles, and non-ASCII text in a shapefile of undeclared encoding refused."""
    info = _check_schema(path, layer, fields, where)
    parquet = path.suffix.lower() in (".parquet", ".geoparquet")
    enc = fields.encoding if path.suffix.lower() == ".shp" else None
    gdf = gpd.read_parquet(path) if parquet else pyogrio.read_dataframe(path, layer=layer, encoding=enc)
    if gdf.crs is None:
        raise CRSError(f"{where}: layer has no CRS (GeoParquet 'crs' is null)")
    if len(gdf) == 0:
        raise FieldError(f"{where}: the layer has no features")
    if enc is None and _shapefile_undeclared(path, info):
        for c in [c for c in gdf.columns if c != "geometry" and pd.api.types.is_string_dtype(gdf[c])]:
            s = gdf[c].dropna().astype(str)
            bad = ~s.map(str.isascii)
            if bad.any():
                raise FieldError(f"{where}: field {c!r} holds non-ASCII text but the shapefile has no .cpg and no "
                                 f"code page; set the parcels encoding (e.g. GBK) (rows {_rows(gdf.index.isin(s.index[bad]))})")
    return gdf


def check_parcels(path: Path | str, fields: ParcelFields = ParcelFields(), layer: str | None = None) -> None:
    """Preflight, before any stage runs: the schema (:func:`_check_schema`) and the parcel ids (no nulls, no
    duplicates, composite keys included), reading only the id fields."""
    path = Path(path)
    where = _where(path, layer)
    if not path.exists():
        raise InputNotFoundError(f"vector file not found: {path}")
    _check_schema(path, layer, fields, where)
    cols = list(fields.id_fields)
    if path.suffix.lower() in (".parquet", ".geoparquet"):
        df = gpd.read_parquet(path, columns=[*cols, "geometry"])
    else:
        enc = fields.encoding if path.suffix.lower() == ".shp" else None
        df = pyogrio.read_dataframe(path, layer=layer, columns=cols, encoding=enc)
    ids = _parcel_ids(df, fields, where)
    geom = np.asarray(df.geometry.array)
    missing = shapely.is_missing(geom) | shapely.is_empty(geom)
    if missing.any():
        raise FieldError(f"{where}: {int(missing.sum())} features have no geometry: parcel ids "
                         f"{listing(ids[missing])} (rows {_rows(missing)})")


def read_parcels(path: Path | str, to_crs, fields: ParcelFields = ParcelFields(), layer: str | None = None,
                 max_areal_scale_error: float = MAX_AREAL_SCALE_ERROR, area_tolerance_rel: float = 0.05) -> Parcels:
    """Read, check and standardise a parcels layer (see the module docstring).

    ``to_crs``: the grid's CRS, where areas are measured; refused (one line) when its areal scale error at
    the parcels' extent exceeds ``max_areal_scale_error``.  ``area_tolerance_rel``: the relative difference
    between declared and geometric area beyond which a parcel is flagged (not an error).
    """
    path = Path(path)
    where = _where(path, layer)
    if not path.exists():
        raise InputNotFoundError(f"vector file not found: {path}")
    if fields.area_field and fields.area_unit not in M2_PER_UNIT:
        raise FieldError(f"{where}: area unit {fields.area_unit!r} of field {fields.area_field!r} is not one of "
                         f"{sorted(M2_PER_UNIT)}")
    if fields.land_class_field and not fields.forest_codes:
        raise FieldError(f"{where}: land-class field {fields.land_class_field!r} given without forest codes")
    gdf = _read_checked(path, layer, fields, where)
    ids = _parcel_ids(gdf, fields, where)
    geom = gdf.geometry.array
    missing = shapely.is_missing(np.asarray(geom)) | shapely.is_empty(np.asarray(geom))
    if missing.any():
        raise FieldError(f"{where}: {int(missing.sum())} features have no geometry: parcel ids "
                         f"{listing(ids[missing])} (rows {_rows(missing)})")
    kind = shapely.get_type_id(np.asarray(geom))
    not_poly = ~np.isin(kind, (3, 6))  # Polygon, MultiPolygon
    if not_poly.any():
        raise FieldError(f"{where}: {int(not_poly.sum())} features are not polygons "
                         f"({sorted(set(gdf.geometry[not_poly].geom_type))}): parcel ids {listing(ids[not_poly])} "
                         f"(rows {_rows(not_poly)})")

    src = CRS.from_user_input(gdf.crs)
    target = CRS.from_user_input(to_crs)
    scale_error = require_area_crs(target, gdf.total_bounds, src, max_areal_scale_error, where=f"{where}: grid CRS")
    if not src.equals(target):
        gdf = gdf.to_crs(target)

    geoms, repaired = repair_polygons(np.asarray(gdf.geometry.array))
    lost = repaired & shapely.is_empty(geoms)
    if lost.any():
        raise FieldError(f"{where}: {int(lost.sum())} invalid geometries have no polygonal part after repair: "
                         f"parcel ids {listing(ids[lost])} (rows {_rows(lost)})")
    area_ha = shapely.area(geoms) / 10_000.0

    std = pd.DataFrame({"parcel_id": ids.to_numpy(object)}, index=gdf.index)
    if fields.area_field:
        declared = pd.to_numeric(gdf[fields.area_field], errors="coerce")
        bad = declared.isna() & gdf[fields.area_field].notna() | (declared < 0)
        if bad.any():
            raise FieldError(f"{where}: field {fields.area_field!r} holds values that are not areas "
                             f"{listing(gdf[fields.area_field][bad])} (parcel ids {listing(ids[bad])})")
        std["declared_area_ha"] = declared.to_numpy("float64") * M2_PER_UNIT[fields.area_unit] / 10_000.0
    else:
        std["declared_area_ha"] = np.nan
    if fields.land_class_field:
        lc = land_class_text(gdf[fields.land_class_field], fields.forest_codes)
        codes = {str(c).strip() for c in fields.forest_codes}
        std["land_class"] = lc
        std["is_forest"] = np.isin(lc, list(codes))
    else:
        std["land_class"] = None
        std["is_forest"] = True
    std["species"] = as_text(gdf[fields.species_field]).to_numpy(object) if fields.species_field else None
    std["age_group"] = as_text(gdf[fields.age_group_field]).to_numpy(object) if fields.age_group_field else None
    std["area_ha"] = area_ha
    with np.errstate(divide="ignore", invalid="ignore"):
        diff = (area_ha - std["declared_area_ha"].to_numpy()) / std["declared_area_ha"].to_numpy()
    std["area_diff_rel"] = diff
    std["area_flag"] = np.abs(np.nan_to_num(diff, nan=0.0)) > area_tolerance_rel

    originals = gdf.drop(columns="geometry")
    originals = originals.rename(columns={c: f"{c}_source" for c in STANDARD_COLUMNS if c in originals.columns})
    out = gpd.GeoDataFrame(pd.concat([std, originals], axis=1), geometry=geoms, crs=target).reset_index(drop=True)
    return Parcels(out, repaired_ids=ids[repaired].tolist(), area_flagged_ids=out.loc[out["area_flag"], "parcel_id"].tolist(),
                   max_areal_scale_error=scale_error)


def _parcel_ids(gdf: pd.DataFrame, fields: ParcelFields, where: str) -> pd.Series:
    """The parcel id of each feature: one field as text, or the key fields joined; nulls and duplicates are
    one-line errors naming the field, ids and rows."""
    parts = []
    for f in fields.id_fields:
        s = as_text(gdf[f], fields.id_widths.get(f))
        empty = s.isna()
        if empty.any():
            raise FieldError(f"{where}: id field {f!r} is empty in {int(empty.sum())} features (rows {_rows(empty)})")
        parts.append(s)
    ids = parts[0] if len(parts) == 1 else parts[0].str.cat(parts[1:], sep=fields.id_separator)
    ids = ids.astype(object)
    dup = ids.duplicated(keep=False)
    if dup.any():
        name = fields.id_fields[0] if len(fields.id_fields) == 1 else "+".join(fields.id_fields)
        raise FieldError(f"{where}: id field {name!r} has duplicated values {listing(pd.unique(ids[dup]))} "
                         f"(rows {_rows(dup)})")
    return ids


def repair_polygons(geoms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Invalid geometries repaired with ``make_valid`` (GEOS, 'linework' method), keeping only their polygonal
    parts as one (Multi)Polygon; returns the geometries and the mask of those repaired."""
    geoms = np.asarray(geoms, dtype=object).copy()
    invalid = ~shapely.is_valid(geoms)
    for i in np.flatnonzero(invalid):
        fixed = shapely.make_valid(geoms[i])
        polys = [p for p in shapely.get_parts(fixed) if p.geom_type in ("Polygon", "MultiPolygon")]
        polys = [q for p in polys for q in shapely.get_parts(p)]
        geoms[i] = (polys[0] if len(polys) == 1 else shapely.MultiPolygon(polys)) if polys else shapely.Polygon()
    return geoms, invalid
