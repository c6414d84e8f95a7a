"""Sentinel-2 L2A product layouts built at test time from one scene's band files and STAC item.

The real scene (S2A 29RKH 2020-02-19, ../shared/data/satellite/sentinel2-l2a-29RKH-20200219: Earth Search's
COGs downsampled to 100/200 m, and its STAC item) is written as each catalogue or product layout delivers it:
the STAC item with Earth Search keys (localised), the same item rekeyed, a SAFE folder and an AWS
``sentinel-s2-l2a`` tile folder (``tileInfo.json``, ``metadata.xml``, ``productInfo.json``, ``R10m/B02.jp2``...),
with the metadata values taken from the item.  Nothing is copied into the repository.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pystac
import rasterio
from rasterio.enums import Resampling

# band id -> resolution group (m) of the ESA/AWS products (sentinelhub-py AwsConstants.S2_L2A_BAND_MAP: R10m holds
# B02 B03 B04 B08; R20m B02-B07 B8A B11 B12 SCL, i.e. the 10 m bands again, resampled)
NATIVE_RES_M = {"B02": 10, "B03": 10, "B04": 10, "B08": 10, "B05": 20, "B06": 20, "B07": 20, "B8A": 20, "B11": 20,
                "B12": 20, "SCL": 20}
ALSO_AT_20M = ("B02", "B03", "B04")
REAL_S2 = "satellite/sentinel2-l2a-29RKH-20200219"
REAL_S2_ITEM = "S2A_29RKH_20200219_0_L2A.json"


def localise(item_path: Path, folder: Path) -> pystac.Item:
    """The real item with hrefs rewritten to the local, downsampled COGs (and their grids)."""
    d = json.loads(item_path.read_text())
    assets = {}
    for key, a in d["assets"].items():
        fname = Path(a["href"]).name
        if key.endswith("-jp2") or not (folder / fname).exists():
            continue
        a = copy.deepcopy(a)
        a["href"] = str(folder / fname)
        with rasterio.open(folder / fname) as src:
            a["proj:shape"] = [src.height, src.width]
            a["proj:transform"] = list(src.transform)[:6]
        assets[key] = a
    d["assets"] = assets
    d["links"] = []  # the self link points to the cloud bucket
    return pystac.Item.from_dict(d)


def write_band(src_path: Path, dst: Path, decimate: int = 1) -> None:
    """Copy a band file to ``dst`` (GeoTIFF, or lossless JPEG 2000 as ESA delivers for a ``.jp2`` name, with no
    nodata declared, as ESA's have none), optionally averaged ``decimate`` x ``decimate`` onto a coarser grid."""
    with rasterio.open(src_path) as src:
        h, w = src.height // decimate, src.width // decimate
        data = src.read(out_shape=(src.count, h, w), resampling=Resampling.average if decimate > 1 else Resampling.nearest)
        prof = src.profile | {"height": h, "width": w, "transform": src.transform * src.transform.scale(decimate)}
    if dst.suffix == ".jp2":
        prof = prof | {"driver": "JP2OpenJPEG", "QUALITY": "100", "REVERSIBLE": "YES", "nodata": None}
        for k in ("blockxsize", "blockysize", "tiled", "compress", "predictor", "interleave"):
            prof.pop(k, None)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(dst, "w", **prof) as out:
        out.write(data)
    for aux in dst.parent.glob(dst.name + ".aux.xml"):  # no sidecar declaring nodata either
        aux.unlink()


def reproject_in_place(f: Path, crs: str) -> None:
    """Rewrite band file ``f`` reprojected to ``crs`` (a reprojected copy, or a neighbouring tile's file, slipped in)."""
    from rasterio.warp import calculate_default_transform, reproject

    with rasterio.open(f) as src:
        tr, w, h = calculate_default_transform(src.crs, crs, src.width, src.height, *src.bounds)
        prof, data, s_tr, s_crs = src.profile | {"crs": crs, "transform": tr, "width": w, "height": h}, \
            src.read(1), src.transform, src.crs
    out = np.zeros((h, w), dtype=data.dtype)
    reproject(data, out, src_transform=s_tr, src_crs=s_crs, dst_transform=tr, dst_crs=crs)
    with rasterio.open(f, "w", **prof) as dst:
        dst.write(out, 1)


def boa_offset_for(baseline: str) -> int:
    """BOA_ADD_OFFSET as ESA states it in the product metadata: -1000 from processing baseline 04.00, none before."""
    return -1000 if int(baseline.split(".")[0]) >= 4 else 0


def mtd_msil2a_xml(start: str, baseline: str, spacecraft: str = "Sentinel-2A") -> str:
    """A minimal product metadata file (MTD_MSIL2A.xml) with the fields the reader uses."""
    offsets = (f"<Product_Image_Characteristics><BOA_ADD_OFFSET_VALUES_LIST><BOA_ADD_OFFSET band_id='0'>"
               f"{boa_offset_for(baseline)}</BOA_ADD_OFFSET></BOA_ADD_OFFSET_VALUES_LIST></Product_Image_Characteristics>"
               if boa_offset_for(baseline) else "")
    return (f"<n1:Level-2A_User_Product xmlns:n1='https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-2A.xsd'>"
            f"<n1:General_Info><Product_Info><PRODUCT_START_TIME>{start}</PRODUCT_START_TIME>"
            f"<PROCESSING_BASELINE>{baseline}</PROCESSING_BASELINE><Datatake><SPACECRAFT_NAME>{spacecraft}</SPACECRAFT_NAME>"
            f"</Datatake></Product_Info>{offsets}</n1:General_Info></n1:Level-2A_User_Product>")


def mtd_tl_xml(item: dict) -> str:
    """The tile metadata (MTD_TL.xml; ``metadata.xml`` in an AWS tile) for a real STAC item: tile and datastrip ids,
    sensing time, EPSG and the 10/20/60 m grids of its assets (ESA PSD, Level-2A tile metadata)."""
    p = item["properties"]
    grids = ""
    for res, key in ((10, "blue"), (20, "nir08"), (60, "coastal")):
        (rows, cols), t = item["assets"][key]["proj:shape"], item["assets"][key]["proj:transform"]
        grids += (f"<Size resolution='{res}'><NROWS>{rows}</NROWS><NCOLS>{cols}</NCOLS></Size>"
                  f"<Geoposition resolution='{res}'><ULX>{t[2]:g}</ULX><ULY>{t[5]:g}</ULY><XDIM>{t[0]:g}</XDIM>"
                  f"<YDIM>{t[4]:g}</YDIM></Geoposition>")
    return (f"<?xml version='1.0' encoding='UTF-8'?>"
            f"<n1:Level-2A_Tile_ID xmlns:n1='https://psd-14.sentinel2.eo.esa.int/PSD/S2_PDI_Level-2A_Tile_Metadata.xsd'>"
            f"<n1:General_Info><TILE_ID>{p['s2:granule_id']}</TILE_ID><DATASTRIP_ID>{p['s2:datastrip_id']}</DATASTRIP_ID>"
            f"<SENSING_TIME>{p['datetime']}</SENSING_TIME></n1:General_Info>"
            f"<n1:Geometric_Info><Tile_Geocoding><HORIZONTAL_CS_CODE>EPSG:{p['proj:epsg']}</HORIZONTAL_CS_CODE>"
            f"{grids}</Tile_Geocoding></n1:Geometric_Info></n1:Level-2A_Tile_ID>")


def tile_info_json(item: dict) -> dict:
    """``tileInfo.json`` as the AWS bucket holds it, from the item's MGRS, datastrip and product fields."""
    p = item["properties"]
    product = p["s2:product_uri"].removesuffix(".SAFE")
    when = p["datetime"][:10].split("-")
    (rows, cols), t = item["assets"]["blue"]["proj:shape"], item["assets"]["blue"]["proj:transform"]
    x0, y1 = t[2], t[5]
    x1, y0 = x0 + cols * t[0], y1 + rows * t[4]
    crs = {"type": "name", "properties": {"name": f"urn:ogc:def:crs:EPSG:8.8.1:{p['proj:epsg']}"}}
    product_path = f"products/{int(when[0])}/{int(when[1])}/{int(when[2])}/{product}"
    return {"path": f"tiles/{p['mgrs:utm_zone']}/{p['mgrs:latitude_band']}/{p['mgrs:grid_square']}/"
                    f"{int(when[0])}/{int(when[1])}/{int(when[2])}/{p['s2:sequence']}",
            "timestamp": p["datetime"], "utmZone": p["mgrs:utm_zone"], "latitudeBand": p["mgrs:latitude_band"],
            "gridSquare": p["mgrs:grid_square"],
            "datastrip": {"id": p["s2:datastrip_id"], "path": f"{product_path}/datastrip/0"},
            "tileGeometry": {"type": "Polygon", "crs": crs,
                             "coordinates": [[[x0, y1], [x1, y1], [x1, y0], [x0, y0], [x0, y1]]]},
            "tileOrigin": {"type": "Point", "crs": crs, "coordinates": [x0, y1]},
            "dataCoveragePercentage": 100 - p["s2:nodata_pixel_percentage"], "cloudyPixelPercentage": p["eo:cloud_cover"],
            "productName": product, "productPath": product_path}


def write_aws_tile(item_path: Path, root: Path, ext: str = "jp2", flat: bool = False, metadata_xml: bool = True) -> Path:
    """The scene as an AWS ``sentinel-s2-l2a`` tile folder below ``root``: ``tiles/29/R/KH/2020/2/19/0/`` with
    tileInfo.json, productInfo.json, metadata.xml (unless ``metadata_xml`` is false) and ``R10m/B02.jp2`` ...
    ``R20m/SCL.jp2`` (B02-B04 also at 20 m, averaged, as the bucket has them), or the bands flat in the folder."""
    src = item_path.parent
    item = json.loads(item_path.read_text())
    info = tile_info_json(item)
    tile = root / info["path"]
    tile.mkdir(parents=True)
    (tile / "tileInfo.json").write_text(json.dumps(info, indent=2))
    (tile / "productInfo.json").write_text(json.dumps({
        "name": info["productName"], "path": info["productPath"], "timestamp": info["timestamp"],
        "datatakeIdentifier": item["properties"]["s2:datatake_id"], "datastrips": [info["datastrip"]],
        "tiles": [{k: info[k] for k in ("path", "timestamp", "utmZone", "latitudeBand", "gridSquare", "datastrip")}]}))
    if metadata_xml:
        (tile / "metadata.xml").write_text(mtd_tl_xml(item))
    for band, res in NATIVE_RES_M.items():
        write_band(src / f"{band}.tif", tile / ("" if flat else f"R{res}m") / f"{band}.{ext}")
        if band in ALSO_AT_20M and not flat:
            write_band(src / f"{band}.tif", tile / "R20m" / f"{band}.{ext}", decimate=2)
    (tile / "qi").mkdir()
    return tile


def write_safe(item_path: Path, root: Path, ext: str = "jp2") -> Path:
    """The scene as a SAFE folder below ``root`` (MTD_MSIL2A.xml, GRANULE/*/MTD_TL.xml, IMG_DATA/R10m|R20m)."""
    src = item_path.parent
    item = json.loads(item_path.read_text())
    p = item["properties"]
    safe = root / p["s2:product_uri"]
    tile, start = f"T{p['mgrs:utm_zone']}{p['mgrs:latitude_band']}{p['mgrs:grid_square']}", p["s2:product_uri"].split("_")[2]
    granule = safe / "GRANULE" / f"L2A_{tile}_A000000_{start}"
    for band, res in NATIVE_RES_M.items():
        write_band(src / f"{band}.tif", granule / "IMG_DATA" / f"R{res}m" / f"{tile}_{start}_{band}_{res}m.{ext}")
    (safe / "MTD_MSIL2A.xml").write_text(mtd_msil2a_xml(p["datetime"], p["s2:processing_baseline"]))
    (granule / "MTD_TL.xml").write_text(mtd_tl_xml(item))
    return safe


def rekeyed_item(item: pystac.Item, dst: Path, rename, keep_eo: bool) -> Path:
    """``item`` written to ``dst`` with its assets under other keys (files shared); eo:bands dropped unless kept."""
    d = item.to_dict()
    assets = {}
    for k, a in d["assets"].items():
        a = dict(a)
        if not keep_eo:
            a.pop("eo:bands", None)
        assets[rename(k)] = a
    d["assets"] = assets
    dst.mkdir(parents=True)
    (dst / f"{item.id}.json").write_text(json.dumps(d))
    return dst
