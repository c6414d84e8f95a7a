"""Nightly mosaic update: recompute only the tiles whose scenes changed.

Each tile's composite is keyed by the scenes touching it within the window
[date − window_days, date] (ids and file sizes/mtimes) and the mosaic
settings; the keys of the last successful run are kept in
``mosaic/nightly_state.json``.  A tile whose key is unchanged is not touched,
so a run with no new scenes does no work and every output stays
byte-identical.  A tile that fails (a corrupt or truncated scene file, say)
keeps its previous mosaic and is reported; the other tiles still update.
Tile folders are swapped in whole, never half-written.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import shutil
import tempfile
from pathlib import Path

from ..config import Config
from ..errors import SceneError
from ..fileio import write_json
from ..rs import bandpass, composite
from ..rs.scenes import check_scene_files, read_scenes
from ..rs.tiles import item_touches, iter_tiles, lonlat_footprint, tile_grid, write_vrt
from .stages import Context, preflight_mosaic, write_composite

log = logging.getLogger("forestcarbon")


def _scene_fingerprint(scene) -> dict:
    files = {}
    for k, a in sorted(scene.item.assets.items()):
        p = Path(a.href)
        if p.exists():
            st = p.stat()
            files[k] = [st.st_size, st.st_mtime_ns]
    return {"id": scene.id, "files": files}


def tile_key(scenes, tile_gbox, mosaic_cfg) -> str:
    blob = json.dumps({"scenes": [_scene_fingerprint(s) for s in scenes], "tile": [list(tile_gbox.affine)[:6], list(tile_gbox.shape)],
                       "mosaic": mosaic_cfg.model_dump(mode="json", exclude={"start", "end"})}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _swap_in(new: Path, final: Path) -> None:
    old = final.with_name(f".{final.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        final.rename(old)
    new.rename(final)
    if old.exists():
        shutil.rmtree(old)


def nightly_update(cfg: Config, date: dt.date | None = None) -> dict:
    """Update the tiled mosaic for the window ending at ``date`` (default: today)."""
    ctx: Context = preflight_mosaic(cfg)
    m = cfg.mosaic
    date = date or dt.date.today()
    start = date - dt.timedelta(days=m.window_days)
    root = ctx.out.root / "mosaic"
    tiles_dir = root / "tiles"
    state_path = root / "nightly_state.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    try:
        scenes = read_scenes(cfg.inputs.stac_items, m.bands, start, date, m.asset_keys)
    except SceneError as err:
        if "no scene within" in str(err):
            log.info("nightly %s: %s", date, err)
            return {"date": date.isoformat(), "window": [start.isoformat(), date.isoformat()], "updated": [],
                    "unchanged": sorted(state), "failed": [], "empty": [], "scenes": 0}
        raise
    grid = tile_grid(ctx.gbox, m.tile_m)
    # harmonise 'auto' is decided over the whole window's scenes, not per tile: no seams between tiles
    m = m.model_copy(update={"harmonise": bandpass.resolve_mode(scenes, m.harmonise)})
    updated, unchanged, failed, empty = [], [], [], []
    new_state = dict(state)
    for name, _, tgbox in iter_tiles(grid):
        foot = lonlat_footprint(tgbox)
        touching = [s for s in scenes if item_touches(s.item.geometry, foot)]
        if not touching:
            empty.append(name)
            continue
        key = tile_key(touching, tgbox, m)
        if state.get(name) == key and (tiles_dir / name / "reflectance.tif").exists():
            unchanged.append(name)
            continue
        tiles_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=tiles_dir))
        try:
            check_scene_files(touching, m.bands)
            comp = composite.build_composite(touching, tgbox, bands=m.bands, scl_mask=m.scl_classes(), qa_flags=m.qa_flags(),
                                             method=m.method, min_valid_fraction=m.min_valid_fraction,
                                             chunk_px=cfg.compute.chunk_px, dilation_px=m.mask_dilation_px,
                                             harmonise=m.harmonise)
            write_composite(comp, tgbox, tmp, list(m.bands), cfg.compute.chunk_px)
            _swap_in(tmp, tiles_dir / name)
            new_state[name] = key
            updated.append(name)
        except Exception as err:  # one bad tile must not stop the others
            shutil.rmtree(tmp, ignore_errors=True)
            msg = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            log.error("nightly %s: tile %s failed, previous mosaic kept: %s", date, name, msg)
            failed.append({"tile": name, "error": msg})
    if updated:
        _write_layers(ctx, grid, tiles_dir, root, list(m.bands), m.method == "nearest_to_median", (start, date),
                      set(updated))
        write_json(new_state, state_path)
    return {"date": date.isoformat(), "window": [start.isoformat(), date.isoformat()], "scenes": len(scenes),
            "updated": updated, "unchanged": unchanged, "failed": failed, "empty": empty}


STAC_VERSION = "1.1.0"
PROJECTION = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"


def _window_of(item_path: Path | None, window) -> tuple[str, str]:
    """The compositing window of a tile: this run's for a tile it updated (``item_path`` None) or one without
    an item yet, else the one its item already records."""
    if item_path is not None and item_path.exists():
        try:
            props = json.loads(item_path.read_text())["properties"]
            if props.get("start_datetime") and props.get("end_datetime"):
                return props["start_datetime"], props["end_datetime"]
        except (json.JSONDecodeError, KeyError):
            pass
    return f"{window[0].isoformat()}T00:00:00Z", f"{window[1].isoformat()}T23:59:59Z"


def _write_layers(ctx: Context, grid, tiles_dir: Path, root: Path, bands: list[str], with_date: bool,
                  window: tuple[dt.date, dt.date], updated: set[str]) -> None:
    """VRTs over all tiles present, and a STAC 1.1 collection with one item per tile: ``datetime`` null with
    ``start_datetime``/``end_datetime`` the tile's compositing window (STAC's rule for composites), the
    projection extension (``proj:code``, shape, transform)."""
    present = [(name, tg) for name, _, tg in iter_tiles(grid) if (tiles_dir / name / "reflectance.tif").exists()]
    layers = [("reflectance", bands, "float32", float("nan")), ("valid_count", ["valid_count"], "uint16", None)]
    if with_date:
        layers.append(("source_date", ["source_date_days_since_1970"], "int32", -1))
    for layer, desc, dtype, nodata in layers:
        write_vrt(root / f"{layer}.vrt", ctx.gbox, [(tg, tiles_dir / n / f"{layer}.tif") for n, tg in present], desc, dtype, nodata)
    items, spans = [], []
    for name, tg in present:
        foot = lonlat_footprint(tg)
        path = tiles_dir / name / f"{name}.json"
        t0, t1 = _window_of(None if name in updated else path, window)
        spans.append((t0, t1))
        item = {
            "type": "Feature", "stac_version": STAC_VERSION, "id": name, "collection": f"{ctx.cfg.name}-mosaic",
            "stac_extensions": [PROJECTION],
            "geometry": json.loads(json.dumps(foot.__geo_interface__)), "bbox": list(foot.bounds),
            "properties": {"datetime": None, "start_datetime": t0, "end_datetime": t1,
                           "proj:code": f"EPSG:{ctx.gbox.crs.epsg}" if ctx.gbox.crs.epsg else None,
                           "proj:shape": list(tg.shape), "proj:transform": list(tg.affine)[:6]},
            "links": [{"rel": "collection", "href": "../../collection.json"}],
            "assets": {layer: {"href": f"./{layer}.tif", "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                               "roles": ["data"]} for layer, *_ in layers},
        }
        write_json(item, path)
        items.append({"rel": "item", "href": f"./tiles/{name}/{name}.json", "type": "application/geo+json"})
    interval = [min(a for a, _ in spans), max(b for _, b in spans)] if spans else [None, None]
    coll = {"type": "Collection", "stac_version": STAC_VERSION, "id": f"{ctx.cfg.name}-mosaic", "license": "proprietary",
            "description": "Cloud-free surface reflectance mosaic tiles (forestcarbon nightly)",
            "extent": {"spatial": {"bbox": [list(lonlat_footprint(ctx.gbox).bounds)]}, "temporal": {"interval": [interval]}},
            "links": items}
    write_json(coll, root / "collection.json")
