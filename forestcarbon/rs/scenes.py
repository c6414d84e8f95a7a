"""Satellite scenes: Sentinel-2 L2A and Landsat 8/9 Collection 2 Level-2.

A :class:`Scene` is a STAC item whose asset keys are harmonised band names
(:mod:`forestcarbon.rs.sensors`) plus its mask band (``scl`` or
``qa_pixel``), with the scale and offset that turn its DNs into surface
reflectance.  Scenes come from STAC item JSON files or from plain Landsat
product folders (per-band GeoTIFFs with the ``*_MTL.json``), which are
described as STAC items on the fly so that one loader serves both.

Sentinel-2: reflectance = (DN + BOA_ADD_OFFSET) / 10000, BOA_ADD_OFFSET = −1000
from processing baseline 04.00 (ESA product format change of 25 Jan 2022),
decided from each item's ``s2:processing_baseline``, never from its date.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pystac
import rasterio
import rasterio.errors
from rasterio.warp import transform_bounds

from ..errors import InputNotFoundError, SceneError
from .sensors import (LANDSAT, MEDIAN_REFLECTANCE_RANGE, MIN_BRIGHTEST_REFLECTANCE, SENTINEL2_L2A, Sensor,
                      landsat_sensor)

log = logging.getLogger(__name__)

BOA_ADD_OFFSET_FROM_BASELINE_04 = -1000
L2A_QUANTIFICATION = 10_000.0
MASK_BAND = {SENTINEL2_L2A.name: "scl", **{s.name: "qa_pixel" for s in LANDSAT}}


@dataclass(frozen=True)
class Scene:
    """One acquisition: its STAC item and how to turn its DNs into reflectance."""

    item: pystac.Item
    path: Path
    sensor: Sensor
    scale: float
    offset: float
    boa_add_offset: int | None = None  # Sentinel-2 only, for the record

    @property
    def datetime(self) -> dt.datetime:
        return self.item.datetime

    @property
    def id(self) -> str:
        return self.item.id

    @property
    def mask_band(self) -> str:
        return MASK_BAND[self.sensor.name]


def parse_baseline(value, where: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d{1,2})\.(\d{1,2})\s*", str(value)) if value is not None else None
    if not m:
        raise SceneError(f"{where}: unknown processing baseline {value!r} (s2:processing_baseline); cannot decide BOA_ADD_OFFSET")
    return int(m.group(1)), int(m.group(2))


def boa_add_offset(item: pystac.Item, where: str = "") -> int:
    """BOA_ADD_OFFSET (DN) still to apply to an L2A item's DNs.

    Earth Search marks items whose DNs already carry the offset with ``earthsearch:boa_offset_applied``:
    those get 0 -- the flag is the truth, per Element 84 (earth-search issue #9: ``raster:bands`` offset
    "may be incorrectly set to -0.1 even when it has been applied"), so an item that also states an
    offset is logged and not offset twice.  Otherwise an explicit ``s2:boa_add_offset`` wins, else the
    processing baseline decides (−1000 from 04.00).
    """
    props = item.properties
    where = where or item.id
    if props.get("earthsearch:boa_offset_applied") is True:
        if props.get("s2:boa_add_offset") not in (None, 0):
            log.warning("%s: earthsearch:boa_offset_applied is true and s2:boa_add_offset is %s; the offset is "
                        "already in the DNs and is not applied again", where, props["s2:boa_add_offset"])
        return 0
    if "s2:boa_add_offset" in props:  # explicit metadata wins
        return int(props["s2:boa_add_offset"])
    major, _ = parse_baseline(props.get("s2:processing_baseline"), where)
    return BOA_ADD_OFFSET_FROM_BASELINE_04 if major >= 4 else 0


def props_applied(item: pystac.Item) -> bool:
    return item.properties.get("earthsearch:boa_offset_applied") is True


def raster_scale_offset(item: pystac.Item, band_keys) -> tuple[float, float] | None:
    """(scale, offset) the item's ``raster:bands`` give its reflectance assets (reflectance = DN × scale +
    offset), None where none does; assets that disagree are an error."""
    found = set()
    for key in band_keys:
        a = item.assets.get(key)
        rb = (a.extra_fields.get("raster:bands") or [{}])[0] if a is not None else {}
        if "scale" in rb or "offset" in rb:
            found.add((float(rb.get("scale", 1.0)), float(rb.get("offset", 0.0))))
    if len(found) > 1:
        raise SceneError(f"item {item.id}: its assets' raster:bands give different scale/offset pairs {sorted(found)}")
    return found.pop() if found else None


def sensor_of(item: pystac.Item) -> Sensor:
    p = item.properties
    platform = str(p.get("platform", p.get("eo:platform", ""))).lower()
    if "s2:processing_baseline" in p or platform.startswith("sentinel-2") or p.get("constellation") == "sentinel-2":
        return SENTINEL2_L2A
    if platform.startswith("landsat") or "qa_pixel" in item.assets:
        sensor = landsat_sensor(platform, item.id)
        if sensor is None:
            raise SceneError(f"item {item.id}: a Landsat item whose sensor cannot be told (platform {platform!r}, id "
                             "not LC08/LC09/LE07/LT05/LT04...): OLI and TM/ETM+ number their bands differently")
        return sensor
    raise SceneError(f"item {item.id}: cannot tell the sensor (platform {platform!r}); Sentinel-2 L2A and Landsat C2 L2 are supported")


def scene_from_item(item: pystac.Item, path: Path) -> Scene:
    sensor = sensor_of(item)
    if sensor is SENTINEL2_L2A:
        boa = boa_add_offset(item, str(path))
        declared = raster_scale_offset(item, ("blue", "green", "red", "nir", "nir08", "swir16", "swir22"))
        if declared is not None and props_applied(item) and declared[1] != 0:
            log.warning("%s: earthsearch:boa_offset_applied is true but raster:bands gives offset %s; the offset "
                        "is already in the DNs and is not applied again", path, declared[1])
            declared = (declared[0], 0.0)
        if declared is not None:  # the catalogue's own scale and offset (they include any BOA offset)
            return Scene(item, path, sensor, declared[0], declared[1], None)
        return Scene(item, path, sensor, 1.0 / L2A_QUANTIFICATION, boa / L2A_QUANTIFICATION, boa)
    return Scene(item, path, sensor, sensor.scale, sensor.offset)


def _asset_from_file(path: Path, title: str) -> tuple[pystac.Asset, int | None, tuple]:
    with rasterio.open(path) as src:
        epsg = src.crs.to_epsg() if src.crs else None
        asset = pystac.Asset(str(path.resolve()), media_type="image/tiff; application=geotiff", roles=["data"], title=title,
                             extra_fields={"proj:shape": [src.height, src.width], "proj:transform": list(src.transform)[:6],
                                           "proj:epsg": epsg})
        ll = transform_bounds(src.crs, "EPSG:4326", *src.bounds) if src.crs else None
    return asset, epsg, ll


def _footprint_item(item_id: str, when: dt.datetime, ll: tuple, properties: dict, assets: dict) -> pystac.Item:
    """A STAC item for a product read from files: its lon/lat bounding box as geometry, ``assets`` added."""
    x0, y0, x1, y1 = ll
    item = pystac.Item(id=item_id, bbox=[x0, y0, x1, y1], datetime=when, properties=properties,
                       geometry={"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]})
    for k, a in assets.items():
        item.add_asset(k, a)
    return item


def landsat_item_from_folder(folder: Path) -> pystac.Item:
    """A STAC item for a Landsat C2 L2 product folder (``*_MTL.json`` + ``*_SR_B*.TIF``)."""
    mtls = sorted(folder.glob("*_MTL.json"))
    meta = json.loads(mtls[0].read_text())["LANDSAT_METADATA_FILE"]
    pid = meta["PRODUCT_CONTENTS"]["LANDSAT_PRODUCT_ID"]
    attrs = meta["IMAGE_ATTRIBUTES"]
    if meta["PRODUCT_CONTENTS"].get("PROCESSING_LEVEL", "L2SP") not in ("L2SP", "L2SR"):
        raise SceneError(f"{mtls[0]}: processing level {meta['PRODUCT_CONTENTS'].get('PROCESSING_LEVEL')!r} is not Level-2")
    when = dt.datetime.fromisoformat(f"{attrs['DATE_ACQUIRED']}T{attrs['SCENE_CENTER_TIME'][:15]}").replace(tzinfo=dt.timezone.utc)
    assets, ll, epsg = {}, None, None
    sensor = landsat_sensor(attrs.get("SPACECRAFT_ID", ""), pid)
    if sensor is None:
        raise SceneError(f"{mtls[0]}: unknown Landsat spacecraft {attrs.get('SPACECRAFT_ID')!r} ({pid})")
    for name, band in (*sensor.bands.items(), ("qa_pixel", "QA_PIXEL"), ("qa_radsat", "QA_RADSAT")):
        f = folder / f"{pid}_{band}.TIF"
        if not f.exists():
            raise SceneError(f"{folder}: Landsat product {pid} lacks band file {f.name}")
        assets[name], epsg, ll = _asset_from_file(f, band)
    props = {"platform": attrs["SPACECRAFT_ID"].lower().replace("_", "-"), "proj:epsg": epsg,
             "eo:cloud_cover": float(attrs.get("CLOUD_COVER", "nan")), "forestcarbon:source": str(mtls[0])}
    return _footprint_item(pid, when, ll, props, assets)


_S2_BAND = r"(B0[1-9]|B1[0-2]|B8A|SCL)"
_S2_FILE = re.compile(rf"_{_S2_BAND}_(10|20|60)m\.(jp2|tif|tiff)$", re.IGNORECASE)  # SAFE: T29RKH_..._B02_10m.jp2
_AWS_FILE = re.compile(rf"^{_S2_BAND}\.(jp2|tif|tiff)$", re.IGNORECASE)  # AWS tile: R10m/B02.jp2, or B02.jp2 flat
_AWS_RES_DIR = re.compile(r"^R(10|20|60)m$")
_S2_BY_BAND = {v: k for k, v in SENTINEL2_L2A.bands.items()} | {"SCL": "scl"}


def _xml_text(root, tag: str) -> str | None:
    el = next((e for e in root.iter() if e.tag.split("}")[-1] == tag), None)
    return el.text.strip() if el is not None and el.text else None


def _xml_boa_add_offset(root) -> int | None:
    """BOA_ADD_OFFSET (DN) a Level-2A product metadata file states (the first band's; ESA gives one per band,
    all equal: -1000 from processing baseline 04.00), None where it states none (baselines before 04.00)."""
    offsets = [e for e in root.iter() if e.tag.split("}")[-1] == "BOA_ADD_OFFSET"]
    return int(float(offsets[0].text)) if offsets else None


@dataclass(frozen=True)
class TileGrid:
    """What a tile's metadata declares about its grid: EPSG code and bounds (CRS units), and where it said so."""

    epsg: int
    bounds: tuple[float, float, float, float] | None
    source: str


def tile_grid_from_mtd_tl(root, source: str) -> TileGrid | None:
    """EPSG and bounds from a Level-2A tile metadata file (MTD_TL.xml in a SAFE granule, ``metadata.xml`` in an
    AWS tile): ``Tile_Geocoding/HORIZONTAL_CS_CODE`` and the 10 m ``Geoposition`` (ULX, ULY) and ``Size``
    (NROWS, NCOLS) -- ESA, Sentinel-2 Products Specification Document (S2-PDGS-TAS-DI-PSD), Level-2A tile
    metadata, Geometric_Info/Tile_Geocoding.  None where the file has no HORIZONTAL_CS_CODE."""
    code = _xml_text(root, "HORIZONTAL_CS_CODE")
    if code is None:
        return None
    m = re.fullmatch(r"EPSG:(\d+)", code)
    if not m:
        raise SceneError(f"{source}: HORIZONTAL_CS_CODE {code!r} is not an EPSG code")
    geo = {e.get("resolution"): e for e in root.iter() if e.tag.split("}")[-1] == "Geoposition"}
    size = {e.get("resolution"): e for e in root.iter() if e.tag.split("}")[-1] == "Size"}
    bounds = None
    if "10" in geo and "10" in size:
        ulx, uly = float(_xml_text(geo["10"], "ULX")), float(_xml_text(geo["10"], "ULY"))
        xdim, ydim = float(_xml_text(geo["10"], "XDIM")), float(_xml_text(geo["10"], "YDIM"))
        rows, cols = int(_xml_text(size["10"], "NROWS")), int(_xml_text(size["10"], "NCOLS"))
        bounds = (ulx, uly + rows * ydim, ulx + cols * xdim, uly)
    return TileGrid(int(m.group(1)), bounds, source)


def _finest_band_files(folder: Path, found) -> dict[str, Path]:
    """Band id -> file at the finest resolution, from (band id, resolution m, path) triples; two files
    for one band at one resolution are an error naming both."""
    best: dict[str, tuple[int, Path]] = {}
    for band, res, f in found:
        band = band.upper()
        if band in best and best[band][0] == res:
            raise SceneError(f"{folder}: two files for band {band}: {best[band][1].relative_to(folder)} and "
                             f"{f.relative_to(folder)}")
        if band not in best or res < best[band][0]:
            best[band] = (res, f)
    return {b: f for b, (_, f) in sorted(best.items())}


def _tile_band_assets(folder: Path, files: dict[str, Path], declared: TileGrid | None = None) -> tuple[dict, int, tuple]:
    """Assets (under harmonised names) for a Sentinel-2 tile's band files, its EPSG and lon/lat bounds.

    A tile's band files share one CRS and footprint: a file in another CRS than the tile metadata
    declares (or than the first file, where nothing is declared), or covering other ground, is an error
    naming it -- a product folder that mixes tiles or holds a reprojected copy.
    """
    assets, ll, epsg, first = {}, None, None, None
    for band, f in files.items():
        if band not in _S2_BY_BAND:
            continue
        assets[_S2_BY_BAND[band]], e, lb = _asset_from_file(f, band)
        name = f.relative_to(folder)
        if declared is not None and e != declared.epsg:
            raise SceneError(f"{folder}: band file {name} is in EPSG:{e}, {declared.source} says EPSG:{declared.epsg}; "
                             "the product folder mixes tiles or reprojected files")
        if declared is not None and declared.bounds is not None:
            a = assets[_S2_BY_BAND[band]].extra_fields
            (h, w), t = a["proj:shape"], a["proj:transform"]
            fb = (t[2], t[5] + h * t[4], t[2] + w * t[0], t[5])
            if max(abs(x - y) for x, y in zip(fb, declared.bounds)) > abs(t[0]) / 2:
                raise SceneError(f"{folder}: band file {name} covers {tuple(round(v) for v in fb)}, {declared.source} "
                                 f"declares the tile {tuple(round(v) for v in declared.bounds)}; the folder mixes tiles")
        if first is None:
            first, epsg, ll = name, e, lb
        elif e != epsg:
            raise SceneError(f"{folder}: band file {name} is in EPSG:{e}, {first} in EPSG:{epsg}; "
                             "the product folder mixes tiles or reprojected files")
        elif max(abs(a - b) for a, b in zip(lb, ll)) > 0.01:
            raise SceneError(f"{folder}: band file {name} covers {tuple(round(v, 4) for v in lb)}, "
                             f"{first} {tuple(round(v, 4) for v in ll)}; the product folder mixes tiles")
    if not assets:
        raise SceneError(f"{folder}: Sentinel-2 product without band files (*_B02_10m.jp2, R10m/B02.jp2 or B02.jp2 ...)")
    return assets, epsg, ll


def _s2_properties(platform: str | None, epsg: int, baseline: str | None, boa: int | None, source: Path) -> dict:
    props = {"platform": (platform or "sentinel-2").lower(), "constellation": "sentinel-2", "proj:epsg": epsg,
             "s2:processing_baseline": baseline, "forestcarbon:source": str(source)}
    if boa is not None:
        props["s2:boa_add_offset"] = boa
    return props


def sentinel2_item_from_safe(folder: Path) -> pystac.Item:
    """A STAC item for a Sentinel-2 L2A product folder (``MTD_MSIL2A.xml`` + ``IMG_DATA/R10m|R20m|R60m``).

    Band files may be JP2 or GeoTIFF; each band is taken at its finest
    resolution.  The processing baseline and, when present, BOA_ADD_OFFSET
    come from the product metadata; a granule's ``MTD_TL.xml``, where present,
    declares the CRS and bounds every band file must have.
    """
    import xml.etree.ElementTree as ET

    mtd = folder / "MTD_MSIL2A.xml"
    root = ET.parse(mtd).getroot()
    start = _xml_text(root, "PRODUCT_START_TIME") or _xml_text(root, "DATATAKE_SENSING_START")
    if start is None:
        raise SceneError(f"{mtd}: no PRODUCT_START_TIME")
    when = dt.datetime.fromisoformat(start.replace("Z", "+00:00"))
    tl = sorted(folder.glob("GRANULE/*/MTD_TL.xml"))
    declared = tile_grid_from_mtd_tl(ET.parse(tl[0]).getroot(), str(tl[0].relative_to(folder))) if len(tl) == 1 else None
    found = [(m.group(1), int(m.group(2)), f) for f in folder.rglob("*") if (m := _S2_FILE.search(f.name))]
    assets, epsg, ll = _tile_band_assets(folder, _finest_band_files(folder, found), declared)
    props = _s2_properties(_xml_text(root, "SPACECRAFT_NAME"), epsg, _xml_text(root, "PROCESSING_BASELINE"),
                           _xml_boa_add_offset(root), mtd)
    return _footprint_item(folder.name.removesuffix(".SAFE"), when, ll, props, assets)


_BASELINE_IN_NAME = re.compile(r"_N(\d{2})\.?(\d{2})(?:_|$)")  # product N0214, tile/datastrip id ..._N02.14


def _baseline_in(name: str | None) -> str | None:
    """Processing baseline in an ESA product, datastrip or tile identifier: ``S2A_MSIL2A_20200219T112111_N0214_R037_
    T29RKH_...`` or ``S2A_OPER_MSI_L2A_TL_MPS__..._T29RKH_N02.14`` give ``02.14`` (ESA Sentinel-2 naming
    convention; sentinelhub-py's AWS reader reads it the same way).  None where the name carries none."""
    m = _BASELINE_IN_NAME.search(name or "")
    return f"{m.group(1)}.{m.group(2)}" if m else None


def _is_tile_metadata(path: Path) -> bool:
    """Is ``path`` a Sentinel-2 tile metadata file (root ``Level-2A_Tile_ID`` / ``Level-1C_Tile_ID``)?"""
    import xml.etree.ElementTree as ET

    try:
        _, el = next(ET.iterparse(path, events=("start",)))
    except (ET.ParseError, StopIteration, OSError):
        return False
    return el.tag.split("}")[-1].endswith("_Tile_ID")


def sentinel2_item_from_aws_tile(folder: Path) -> pystac.Item:
    """A STAC item for a Sentinel-2 L2A tile in the AWS ``sentinel-s2-l2a`` layout (``tiles/29/R/KH/2020/2/19/0/``).

    The folder holds ``tileInfo.json`` (``productName``, ``datastrip.id``, ``timestamp``, ``tileGeometry``
    with its CRS), ``metadata.xml`` (the tile metadata, ESA's MTD_TL.xml: ``SENSING_TIME``, ``TILE_ID``,
    ``Tile_Geocoding/HORIZONTAL_CS_CODE``), optionally ``productInfo.json`` (``name``, ``datastrips``), and
    the bands as ``R10m/B02.jp2`` ... ``R20m/SCL.jp2`` ... ``R60m/``, or flat (``B02.jp2`` / ``B02.tif`` in the
    folder itself, as Earth Search's ``*-jp2`` assets address them); each band at its finest resolution.

    The processing baseline comes from the identifiers these files carry (product name ``_N0214_``, tile
    and datastrip ids ``_N02.14``); they must agree, and one must be there -- never guessed from the date.
    A top-level XML that states BOA_ADD_OFFSET (ESA's product metadata, where it was saved with the tile)
    gives the offset itself.  Every band file must be in the CRS the metadata declares and cover the tile.
    """
    import xml.etree.ElementTree as ET

    def load_json(name):
        p = folder / name
        if not p.exists():
            return {}
        try:
            return json.loads(p.read_text(encoding="utf-8"))
        except ValueError as err:
            raise SceneError(f"{p}: not JSON ({err})") from None

    info, product = load_json("tileInfo.json"), load_json("productInfo.json")
    roots = {}
    for p in sorted(folder.glob("*.xml")):
        try:
            roots[p.name] = ET.parse(p).getroot()
        except ET.ParseError as err:
            raise SceneError(f"{p}: not XML ({err})") from None
    tile_md = roots.get("metadata.xml")
    product_name = info.get("productName") or product.get("name")
    if "_MSIL1C_" in str(product_name) or (tile_md is not None and tile_md.tag.split("}")[-1].startswith("Level-1C")):
        raise SceneError(f"{folder}: a Level-1C tile (top-of-atmosphere, {product_name or 'metadata.xml'}); "
                         "surface reflectance needs Level-2A")
    baselines = {}
    for where, name in (("tileInfo.json productName", info.get("productName")),
                        ("tileInfo.json datastrip.id", (info.get("datastrip") or {}).get("id")),
                        ("productInfo.json name", product.get("name")),
                        ("metadata.xml TILE_ID", _xml_text(tile_md, "TILE_ID") if tile_md is not None else None),
                        ("metadata.xml DATASTRIP_ID", _xml_text(tile_md, "DATASTRIP_ID") if tile_md is not None else None)):
        if _baseline_in(name):
            baselines[where] = _baseline_in(name)
    for name, root in roots.items():  # ESA's product metadata, where it was saved with the tile
        if (stated := _xml_text(root, "PROCESSING_BASELINE")) is not None:
            baselines[f"{name} PROCESSING_BASELINE"] = stated
    if len(set(baselines.values())) > 1:
        raise SceneError(f"{folder}: the tile's files disagree on the processing baseline: "
                         + ", ".join(f"{k} {v}" for k, v in baselines.items()))
    boa = next((o for r in roots.values() if (o := _xml_boa_add_offset(r)) is not None), None)
    if not baselines and boa is None:
        raise SceneError(f"{folder}: no processing baseline in tileInfo.json (productName), productInfo.json or "
                         "metadata.xml (TILE_ID); cannot decide BOA_ADD_OFFSET")
    start = (_xml_text(tile_md, "SENSING_TIME") if tile_md is not None else None) or info.get("timestamp")
    if start is None:
        raise SceneError(f"{folder}: no SENSING_TIME in metadata.xml nor timestamp in tileInfo.json")
    when = dt.datetime.fromisoformat(start.replace("Z", "+00:00"))
    declared = tile_grid_from_mtd_tl(tile_md, "metadata.xml") if tile_md is not None else None
    if declared is None and "tileGeometry" in info:
        g = info["tileGeometry"]
        m = re.search(r"EPSG:[\d.]*:(\d+)$|EPSG::?(\d+)$", str(((g.get("crs") or {}).get("properties") or {}).get("name", "")))
        if m:
            xs, ys = zip(*g["coordinates"][0])
            declared = TileGrid(int(m.group(1) or m.group(2)), (min(xs), min(ys), max(xs), max(ys)), "tileInfo.json")
    found = [(m.group(1), 0, f) for f in folder.iterdir() if (m := _AWS_FILE.match(f.name))]
    for d in folder.iterdir():
        if d.is_dir() and (r := _AWS_RES_DIR.match(d.name)):
            found += [(m.group(1), int(r.group(1)), f) for f in d.iterdir() if (m := _AWS_FILE.match(f.name))]
    assets, epsg, ll = _tile_band_assets(folder, _finest_band_files(folder, found), declared)
    spacecraft = {"S2A": "sentinel-2a", "S2B": "sentinel-2b", "S2C": "sentinel-2c"}.get(str(product_name)[:3])
    item_id = (_xml_text(tile_md, "TILE_ID") if tile_md is not None else None) or product_name or folder.name
    source = folder / ("metadata.xml" if tile_md is not None else "tileInfo.json")
    props = _s2_properties(spacecraft, epsg, next(iter(baselines.values()), None), boa, source)
    return _footprint_item(item_id, when, ll, props, assets)


def _aws_tile_dirs(folder: Path) -> set[Path]:
    """Folders below ``folder`` in the AWS tile layout: a ``tileInfo.json``, or a ``metadata.xml`` that is tile
    metadata."""
    dirs = {p.parent for p in folder.rglob("tileInfo.json")}
    return dirs | {p.parent for p in folder.rglob("metadata.xml") if p.parent not in dirs and _is_tile_metadata(p)}


def _candidates(folder: Path):
    """(path, item) for STAC item files and Landsat / Sentinel-2 (SAFE, AWS tile) product folders below ``folder``."""
    product_dirs = {p.parent for p in folder.rglob("*_MTL.json")}
    tile_dirs = _aws_tile_dirs(folder)
    safe_dirs = {p.parent for p in folder.rglob("MTD_MSIL2A.xml")} - tile_dirs
    for d in sorted(product_dirs):
        yield d, landsat_item_from_folder(d)
    for d in sorted(safe_dirs):
        yield d, sentinel2_item_from_safe(d)
    for d in sorted(tile_dirs):
        yield d, sentinel2_item_from_aws_tile(d)
    for p in sorted(folder.rglob("*.json")):
        if p.parent in product_dirs or any(d in p.parents for d in safe_dirs | tile_dirs) or p.name.endswith("_MTL.json"):
            continue
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
            if d.get("type") == "FeatureCollection":  # a STAC ItemCollection
                items = list(pystac.ItemCollection.from_dict(d))
                for it in items:
                    it.set_self_href(str(p))
            else:
                items = [pystac.Item.from_file(str(p))]
        except Exception as err:  # pystac raises several types for bad JSON
            raise SceneError(f"{p}: not a STAC item or ItemCollection ({type(err).__name__}: {err})") from None
        for item in items:
            item.make_asset_hrefs_absolute()
            yield p, item


MASK_KEYS = {"scl": ("SCL", "SCL_20m", "scl"), "qa_pixel": ("QA_PIXEL", "qa_pixel"), "qa_radsat": ("QA_RADSAT", "qa_radsat")}


def _common_names(asset: pystac.Asset) -> set[str]:
    """Common names an asset declares: ``eo:bands`` (STAC 1.0) or ``bands`` with ``eo:common_name`` (STAC 1.1)."""
    out = set()
    for b in asset.extra_fields.get("eo:bands") or []:
        if b.get("common_name"):
            out.add(str(b["common_name"]).lower())
    for b in asset.extra_fields.get("bands") or []:
        if b.get("eo:common_name"):
            out.add(str(b["eo:common_name"]).lower())
    return out


def alias_assets(item: pystac.Item, sensor: Sensor, wanted, mapping: dict[str, str] | None = None) -> None:
    """Give ``item`` an asset under each wanted harmonised name (``blue``, ``nir08``, ``scl``...) that it
    holds under another key: the configured key (``mosaic.asset_keys``), else the asset whose
    ``eo:bands``/``bands`` common name it is, else the product's band id (ESA ``B02``, ``B8A``, ``SCL``,
    with or without a ``_10m``/``_20m`` suffix, the finest first; USGS ``SR_B4``, ``QA_PIXEL``), case
    ignored.  Names already present and keys not found are left alone (the caller reports them).
    """
    mapping = mapping or {}
    lower = {k.lower(): k for k in item.assets}
    for name in wanted:
        if name in item.assets:
            continue
        key = mapping.get(name)
        if key is not None:
            if key not in item.assets:
                raise SceneError(f"item {item.id}: mosaic.asset_keys maps {name!r} to {key!r}, which is not an asset "
                                 f"(assets: {sorted(item.assets)})")
        else:
            by_name = [k for k, a in item.assets.items() if name in _common_names(a) and "jp2" not in k.lower()]
            ids = [sensor.bands.get(name)] if name in sensor.bands else list(MASK_KEYS.get(name, ()))
            candidates = [lower.get(c.lower()) for i in ids if i for c in (i, f"{i}_10m", f"{i}_20m", f"{i}_60m")]
            key = (by_name or [c for c in candidates if c])[:1]
            key = key[0] if key else None
        if key is not None:
            item.add_asset(name, item.assets[key].clone())


def read_scenes(folder: Path | str, bands: tuple[str, ...], start: dt.date | None = None, end: dt.date | None = None,
                asset_keys: dict[str, str] | None = None) -> list[Scene]:
    """All scenes below ``folder`` within [start, end], sorted by time.

    Every requested band and the sensor's mask band must be an asset of every
    item (Landsat has no broad ``nir`` band: its ``nir08`` serves for it);
    local hrefs must exist.
    """
    folder = Path(folder)
    if not folder.exists():
        raise InputNotFoundError(f"scenes folder not found: {folder}")
    scenes = []
    for p, item in _candidates(folder):
        if item.datetime is None:
            raise SceneError(f"{p}: item {item.id} has no datetime")
        d = item.datetime.date()
        if (start and d < start) or (end and d > end):
            log.info("skip %s: %s outside the window %s..%s", item.id, d, start, end)
            continue
        sensor = sensor_of(item)
        alias_assets(item, sensor, (*bands, "scl" if sensor is SENTINEL2_L2A else "qa_pixel", "qa_radsat"), asset_keys)
        scene = scene_from_item(item, p)
        if scene.sensor in LANDSAT and "nir" not in item.assets and "nir08" in item.assets:
            item.add_asset("nir", item.assets["nir08"].clone())
        for band in (*bands, scene.mask_band):
            if band not in item.assets:
                raise SceneError(f"{p}: item {item.id} has no asset {band!r} under that key, its eo:bands common name "
                                 f"or its band id (has {sorted(item.assets)}); map it in mosaic.asset_keys")
            href = item.assets[band].href
            if "://" not in href and not Path(href).exists():
                raise SceneError(f"{p}: asset {band!r} file not found: {href}")
            if band != scene.mask_band:
                item.assets[band].href = with_declared_nodata(href, scene.sensor.nodata)
        scenes.append(scene)
    if not scenes:
        raise SceneError(f"{folder}: no scene within {start}..{end}")
    return sorted(scenes, key=lambda s: s.datetime)


def with_declared_nodata(href: str, nodata: int) -> str:
    """``href`` itself when the file declares its nodata; else a GDAL ``vrt://`` connection that does.

    Sentinel-2 JPEG 2000 bands carry no nodata value although DN 0 is nodata;
    unless GDAL knows it, bilinear reprojection blends those zeros into valid
    edge pixels (seen: errors of 4000 DN next to swath edges).
    """
    if "://" in href:
        return href
    # what the loader will see: odc-stac reads with GDAL_DISABLE_READDIR_ON_OPEN=EMPTY_DIR (no .aux.xml)
    with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"), rasterio.open(href) as src:
        declared = src.nodata
    return href if declared is not None else f"vrt://{Path(href).resolve()}?a_nodata={nodata}"


def _local_path(href: str) -> Path | None:
    if href.startswith("vrt://"):
        return Path(href.removeprefix("vrt://").split("?", 1)[0])
    return None if "://" in href else Path(href)


VALUE_SAMPLE_PX = 512
"""Band values are checked on a read decimated to at most this many pixels a side (GDAL serves it from the
file's overviews or JPEG 2000 resolution levels), not on the full band."""


def sample_dns(src, max_px: int = VALUE_SAMPLE_PX) -> tuple[np.ndarray, int]:
    """A nearest-neighbour read of band 1 decimated to at most ``max_px`` a side, and the step in pixels."""
    step = max(1, -(-max(src.height, src.width) // max_px))
    return src.read(1, out_shape=(-(-src.height // step), -(-src.width // step))), step


def dn_range_problem(dns: np.ndarray, scale: float, offset: float, nodata: int) -> str | None:
    """Why sampled DNs cannot be the product's reflectance DNs, or None.

    The median valid reflectance (DN × scale + offset, nodata excluded) must lie in
    :data:`~forestcarbon.rs.sensors.MEDIAN_REFLECTANCE_RANGE` and the brightest reach
    :data:`~forestcarbon.rs.sensors.MIN_BRIGHTEST_REFLECTANCE`; a sample without valid pixels passes (the
    composite skips such scenes by their valid fraction).
    """
    valid = dns[dns != nodata].astype("float64")
    if valid.size == 0:
        return None
    med, top = np.median(valid), valid.max()
    lo, hi = MEDIAN_REFLECTANCE_RANGE
    if med * scale + offset > hi:
        return (f"median valid reflectance {med * scale + offset:.2f} (DN {med:.0f}) is above {hi}; "
                "DNs scaled twice (x 10)?")
    if med * scale + offset < lo:
        return (f"median valid reflectance {med * scale + offset:.3f} (DN {med:.0f}) is below {lo}; "
                "DNs of another scaling (e.g. Collection 1 reflectance x 10000)?")
    if top * scale + offset < MIN_BRIGHTEST_REFLECTANCE:
        return (f"the brightest valid pixel has reflectance {top * scale + offset:.4f} (DN {top:.0f}), below "
                f"{MIN_BRIGHTEST_REFLECTANCE}; reflectance delivered as integers 0/1 or percent?")
    return None


def check_scene_files(scenes: list[Scene], bands: tuple[str, ...]) -> None:
    """Open every local band and mask file and check its tiles lie inside the file and its values are DNs.

    Catches, before any heavy work, with a one-line error naming file and band: missing, unreadable and
    truncated GeoTIFF/COG files (GDAL's TIFF block offsets and sizes; no pixel is decoded); bands delivered
    as float (reflectance instead of the product's integer DNs) or as another integer type than the
    product's (``uint16``: an 8-bit preview, a signed re-export); and reflectance bands whose values, read
    decimated (:func:`sample_dns`), cannot be the product's DNs (:func:`dn_range_problem`).
    """
    for sc in scenes:
        for band in (*bands, sc.mask_band):
            path = _local_path(sc.item.assets[band].href)
            if path is None:
                continue
            try:
                size = path.stat().st_size
                with rasterio.open(path) as src:
                    dtype = src.dtypes[0]
                    if not np.issubdtype(np.dtype(dtype), np.integer):
                        raise SceneError(f"{path}: band {band!r} of scene {sc.id} holds {dtype} values, not the "
                                         f"product's integer DNs; reflectance delivered as float? (scale "
                                         f"{sc.scale:g}, offset {sc.offset:g} would be applied to it)")
                    if band != sc.mask_band and dtype != sc.sensor.dtype:
                        raise SceneError(f"{path}: band {band!r} of scene {sc.id} holds {dtype} values, the product's "
                                         f"reflectance DNs are {sc.sensor.dtype}; an 8-bit preview or a re-export?")
                    end = _tiff_tiles_end(src)
            except (OSError, rasterio.errors.RasterioError) as err:
                raise SceneError(f"{path}: unreadable band file of scene {sc.id} ({err})") from None
            if end > size:
                raise SceneError(f"{path}: truncated file of scene {sc.id} ({size} bytes, its tiles need {end})")
            if band == sc.mask_band:
                continue
            try:
                with rasterio.open(path) as src:
                    dns, step = sample_dns(src)
            except (OSError, rasterio.errors.RasterioError) as err:
                raise SceneError(f"{path}: unreadable band file of scene {sc.id} ({err})") from None
            problem = dn_range_problem(dns, sc.scale, sc.offset, sc.sensor.nodata)
            if problem:
                raise SceneError(f"{path}: band {band!r} of scene {sc.id} (sampled every {step} px): {problem}")


def _tiff_tiles_end(src) -> int:
    """The byte just past a GeoTIFF's last tile or strip (0 for other drivers)."""
    if src.driver != "GTiff":
        return 0
    h, w = src.block_shapes[0]
    end = 0
    for r in range((src.height + h - 1) // h):
        for c in range((src.width + w - 1) // w):
            off = src.get_tag_item(f"BLOCK_OFFSET_{c}_{r}", "TIFF", bidx=1)
            n = src.get_tag_item(f"BLOCK_SIZE_{c}_{r}", "TIFF", bidx=1)
            if off and n:
                end = max(end, int(off) + int(n))
    return end


def select_overlapping(scenes: list[Scene], footprint) -> list[Scene]:
    """Scenes whose footprint (item geometry, lon/lat) intersects ``footprint``; the others are logged and skipped."""
    import shapely.geometry

    keep = []
    for sc in scenes:
        geom = sc.item.geometry
        if geom and not shapely.geometry.shape(geom).intersects(footprint):
            log.info("skip %s: outside the area of interest", sc.id)
            continue
        keep.append(sc)
    return keep
