"""Stage 1: the cloud-free mosaic of the scenes (reflectance, indices, valid count, source date)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from odc.geo.geobox import GeoBox

from ...errors import SceneError
from ...fileio import write_table
from ...rs import composite
from ...rs.cog import write_cog
from ...rs.scenes import check_scene_files, read_scenes, select_overlapping
from ...rs.tiles import lonlat_footprint
from .context import Context, open_stack

def stage_mosaic(ctx: Context) -> dict:
    cfg, m = ctx.cfg, ctx.cfg.mosaic
    scenes = select_overlapping(read_scenes(cfg.inputs.stac_items, m.bands, m.start, m.end, m.asset_keys),
                                lonlat_footprint(ctx.gbox))
    if not scenes:
        raise SceneError(f"{cfg.inputs.stac_items}: no scene within {m.start}..{m.end} intersects the area of interest")
    check_scene_files(scenes, m.bands)
    comp = composite.build_composite(scenes, ctx.gbox, bands=m.bands, scl_mask=m.scl_classes(), qa_flags=m.qa_flags(),
                                     method=m.method, min_valid_fraction=m.min_valid_fraction, chunk_px=cfg.compute.chunk_px,
                                     dilation_px=m.mask_dilation_px, harmonise=m.harmonise)
    write_composite(comp, ctx.gbox, ctx.out.root / "mosaic", list(m.bands), cfg.compute.chunk_px)
    written = open_stack(ctx.out.reflectance, cfg.compute.chunk_px)
    idx = composite.spectral_indices(written.to_dataset("band"))
    write_cog(idx.to_array("band").data, ctx.gbox, ctx.out.indices, descriptions=list(idx.data_vars), block=cfg.compute.chunk_px)
    write_table(scene_table(scenes, comp), ctx.out.scenes)
    return {"scenes": len(comp.scenes_used), "scenes_skipped": len(scenes) - len(comp.scenes_used),
            "bandpass_adjustment": comp.bandpass_summary}


def write_composite(comp: "composite.Composite", gbox: GeoBox, folder: Path, bands: list[str], chunk_px: int) -> None:
    """reflectance.tif, valid_count.tif (and source_date.tif) of a composite into ``folder``."""
    tags = {"scenes": ",".join(comp.scenes_used), "method": comp.method, "bandpass_adjustment": comp.bandpass_summary}
    write_cog(comp.reflectance[bands].to_array("band").data, gbox, folder / "reflectance.tif", descriptions=bands,
              units="surface reflectance", tags=tags, block=chunk_px)
    write_cog(comp.valid_count.data, gbox, folder / "valid_count.tif", nodata=None, descriptions=["valid_count"], block=chunk_px)
    if comp.source_date is not None:
        write_cog(comp.source_date.data, gbox, folder / "source_date.tif", nodata=-1,
                  descriptions=["source_date_days_since_1970"], block=chunk_px)


def scene_table(scenes, comp: "composite.Composite") -> pd.DataFrame:
    used = set(comp.scenes_used)
    return pd.DataFrame({
        "scene_id": [s.id for s in scenes], "sensor": [s.sensor.name for s in scenes],
        "datetime": [s.datetime.isoformat() for s in scenes],
        "processing_baseline": [s.item.properties.get("s2:processing_baseline") for s in scenes],
        "boa_add_offset": [s.boa_add_offset for s in scenes], "scale": [s.scale for s in scenes],
        "offset": [s.offset for s in scenes], "valid_fraction": np.round(comp.valid_fraction, 4),
        "used": [s.id in used for s in scenes], "bandpass": list(comp.bandpass) or ["none"] * len(scenes),
    })
