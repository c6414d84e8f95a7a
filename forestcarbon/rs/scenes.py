"""Sentinel-2 L2A scenes described by STAC items.

Band names are STAC ``eo`` common names (blue, green, red, rededge1-3, nir,
nir08, swir16, swir22) plus ``scl``.  Surface reflectance of L2A products is
``(DN + BOA_ADD_OFFSET) / 10000``; BOA_ADD_OFFSET is -1000 from processing
baseline 04.00 on (ESA, Sentinel-2 L2A product format change of 25 Jan 2022)
and 0 before.  The offset is decided from each item's
``s2:processing_baseline``, never from its date.  DN 0 is nodata.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import pystac

from ..errors import InputNotFoundError, SceneError

log = logging.getLogger(__name__)

BOA_ADD_OFFSET_FROM_BASELINE_04 = -1000
L2A_QUANTIFICATION = 10_000.0


@dataclass(frozen=True)
class Scene:
    """One acquisition: its STAC item and how to turn its DNs into reflectance."""

    item: pystac.Item
    path: Path
    boa_add_offset: int

    @property
    def datetime(self) -> dt.datetime:
        return self.item.datetime

    @property
    def id(self) -> str:
        return self.item.id


def parse_baseline(value, where: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d{1,2})\.(\d{1,2})\s*", str(value)) if value is not None else None
    if not m:
        raise SceneError(f"{where}: unknown processing baseline {value!r} (s2:processing_baseline); cannot decide BOA_ADD_OFFSET")
    return int(m.group(1)), int(m.group(2))


def boa_add_offset(item: pystac.Item, where: str = "") -> int:
    """BOA_ADD_OFFSET (DN) for an L2A item, from its processing baseline."""
    props = item.properties
    if "s2:boa_add_offset" in props:  # explicit metadata wins
        return int(props["s2:boa_add_offset"])
    major, _ = parse_baseline(props.get("s2:processing_baseline"), where or item.id)
    return BOA_ADD_OFFSET_FROM_BASELINE_04 if major >= 4 else 0


def read_scenes(folder: Path | str, bands: tuple[str, ...], start: dt.date | None = None, end: dt.date | None = None) -> list[Scene]:
    """All STAC items (``*.json``) below ``folder`` within [start, end], sorted by time.

    Every requested band and ``scl`` must be an asset of every item; hrefs
    are made absolute and must exist when local.
    """
    folder = Path(folder)
    if not folder.exists():
        raise InputNotFoundError(f"STAC items folder not found: {folder}")
    scenes = []
    for p in sorted(folder.rglob("*.json")):
        try:
            item = pystac.Item.from_file(str(p))
        except Exception as err:  # pystac raises several types for bad JSON
            raise SceneError(f"{p}: not a STAC item ({type(err).__name__}: {err})") from None
        item.make_asset_hrefs_absolute()
        for band in (*bands, "scl"):
            if band not in item.assets:
                raise SceneError(f"{p}: item {item.id} has no asset {band!r} (has {sorted(item.assets)})")
            href = item.assets[band].href
            if "://" not in href and not Path(href).exists():
                raise SceneError(f"{p}: asset {band!r} file not found: {href}")
        if item.datetime is None:
            raise SceneError(f"{p}: item {item.id} has no datetime")
        d = item.datetime.date()
        if (start and d < start) or (end and d > end):
            log.info("skip %s: %s outside the window %s..%s", item.id, d, start, end)
            continue
        scenes.append(Scene(item, p, boa_add_offset(item, str(p))))
    if not scenes:
        raise SceneError(f"{folder}: no STAC item within {start}..{end}")
    return sorted(scenes, key=lambda s: s.datetime)
