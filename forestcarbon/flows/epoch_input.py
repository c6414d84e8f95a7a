"""An epoch for the parcel accounts from a pipeline output folder (``forestcarbon accounts commit``).

Reads ``parcels/parcels_carbon.gpkg`` (layer ``parcels_carbon``), ``model/model_card.json``,
``mosaic/scenes.csv`` and, when present, ``report/provenance.json``; fingerprints
the files the stocks came from (parcel table, model card, scene table, carbon
and AGB maps with their uncertainty layers).  Checks everything before the
accounts are touched.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd

from .. import __version__
from ..accounts.parcels import parcel_rows
from ..accounts.store import Epoch, EpochFile
from ..errors import FieldError, InputNotFoundError
from ..fileio import file_rows, sha256
from ..models.carbon import co2e
from ..vector.layers import check_features, check_layer
from .layout import Layout
from .report import _git_commit

LAYER = "parcels_carbon"
REQUIRED = ("parcel_id", "carbon_t", "area_ha")
OPTIONAL_STOCKS = ("carbon_sd_t", "carbon_p05_t", "carbon_p95_t", "carbon_above_t", "carbon_below_t", "valid_fraction")
DERIVED = {"carbon_t_ha", "carbon_t_mapped", "co2e_t", "co2e_sd_t", "agb_mg_ha", "model_id", "carbon_rule",
           "carbon_rule_coverage", "geometry", "parcel_id", "area_ha", "carbon_t", *OPTIONAL_STOCKS}
"""Columns the parcels stage computes; every other column is a parcel attribute."""

MAP_ROLES = ("carbon", "carbon_sd", "carbon_p05", "carbon_p95", "agb", "agb_sd", "forest_mask")


def read_epoch(out: Path | str, label: str, epoch_date: str | None = None) -> tuple[Epoch, pd.DataFrame]:
    """(the epoch record, one row per parcel for :meth:`AccountStore.write_epoch`) from output folder ``out``.

    ``epoch_date`` (ISO) defaults to the median acquisition date of the scenes the mosaic used.  Missing
    uncertainty columns are stored as NULL and said so in the epoch's notes.
    """
    lay = Layout(Path(out))
    if not lay.parcels_gpkg.exists():
        raise InputNotFoundError(f"{out}: no parcel table {lay.parcels_gpkg} (run the pipeline's parcels stage first)")
    for p, what in ((lay.model_card, "model card"), (lay.scenes, "scene table")):
        if not p.exists():
            raise InputNotFoundError(f"{out}: no {what} {p}; an epoch needs it for its provenance")
    where = f"{lay.parcels_gpkg} (layer {LAYER!r})"
    check_layer(lay.parcels_gpkg, LAYER, REQUIRED)
    gdf = gpd.read_file(lay.parcels_gpkg, layer=LAYER)
    check_features(gdf, where, "parcel_id")
    card = json.loads(lay.model_card.read_text(encoding="utf-8"))
    model_ids = _model_ids(card, gdf, where, lay.model_card)
    scene_ids, median_date = _scenes(lay.scenes)
    label = str(label).strip()
    if not label:
        raise FieldError("epoch label is empty")
    epoch_date = epoch_date or median_date
    try:
        epoch_date = dt.date.fromisoformat(epoch_date).isoformat()
    except (TypeError, ValueError):
        raise FieldError(f"epoch date {epoch_date!r} is not an ISO date (YYYY-MM-DD)") from None
    rows, notes = _stock_rows(gdf, where)
    config_sha, code_version, prov_note = _run_provenance(lay)
    notes += prov_note
    files = [EpochFile("parcels", str(lay.parcels_gpkg.resolve()), sha256(lay.parcels_gpkg)),
             EpochFile("model_card", str(lay.model_card.resolve()), sha256(lay.model_card)),
             EpochFile("scenes", str(lay.scenes.resolve()), sha256(lay.scenes))]
    for role in MAP_ROLES:
        p = getattr(lay, role)
        if p.exists():
            files.append(EpochFile(role, str(p.resolve()), sha256(p)))
    if (lay.report_dir / "provenance.json").exists():
        p = lay.report_dir / "provenance.json"
        files.append(EpochFile("provenance", str(p.resolve()), sha256(p)))
    epoch = Epoch(label, epoch_date, tuple(model_ids), tuple(scene_ids), config_sha, code_version,
                  str(Path(out).resolve()), tuple(files), tuple(notes),
                  dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), len(rows))
    return epoch, rows


def _model_ids(card: dict, gdf: pd.DataFrame, where: str, card_path: Path) -> list[str]:
    if "model_id" not in card:
        raise FieldError(f"{card_path}: no model_id")
    ids = [card["model_id"]] + [m["model_id"] for m in card.get("models", {}).values() if "model_id" in m]
    if "model_id" in gdf:
        used = set(gdf["model_id"].dropna().astype(str)) - {""}
        if used and used != {card["model_id"]}:
            raise FieldError(f"{where}: field 'model_id' holds {sorted(used)[:3]} but {card_path} is model "
                             f"{card['model_id']!r}: the parcel table and the model card are from different runs")
    return ids


def _scenes(path: Path) -> tuple[list[str], str | None]:
    df = pd.read_csv(path)
    if "scene_id" not in df:
        raise FieldError(f"{path}: no field 'scene_id'")
    used = df[df["used"].astype(str).str.lower().eq("true")] if "used" in df else df
    date = None
    if "datetime" in used and len(used):
        t = pd.to_datetime(used["datetime"], utc=True, errors="coerce").dropna()
        if len(t):
            date = t.sort_values().iloc[(len(t) - 1) // 2].date().isoformat()  # the lower median: a real scene date
    return used["scene_id"].astype(str).tolist(), date


def _stock_rows(gdf: gpd.GeoDataFrame, where: str) -> tuple[pd.DataFrame, list[str]]:
    notes = []
    area = pd.to_numeric(gdf["area_ha"], errors="coerce")
    bad = ~(area > 0)
    if bad.any():
        raise FieldError(f"{where}: field 'area_ha' is not positive at rows {file_rows(np.flatnonzero(bad))}")
    rows = parcel_rows(gdf, [c for c in gdf.columns if c not in DERIVED])
    rows["area_ha"] = area.to_numpy(float)
    rows["carbon_t"] = _nonnegative(gdf, "carbon_t", where)
    for c in OPTIONAL_STOCKS:
        if c in gdf:
            rows[c] = _nonnegative(gdf, c, where) if c != "valid_fraction" else pd.to_numeric(gdf[c]).to_numpy(float)
        else:
            rows[c] = np.nan
    absent = [c for c in ("carbon_sd_t", "carbon_p05_t", "carbon_p95_t") if c not in gdf]
    if absent:
        notes.append(f"{where} has no field {', '.join(repr(c) for c in absent)}: stored NULL "
                     "(these stocks have no uncertainty, their sinks none either)")
    vf = rows["valid_fraction"]
    if ((vf < 0) | (vf > 1)).any():
        raise FieldError(f"{where}: field 'valid_fraction' outside [0, 1] at rows {file_rows(np.flatnonzero((vf < 0) | (vf > 1)))}")
    rows["co2e_t"] = co2e(rows["carbon_t"].to_numpy())
    rows["co2e_sd_t"] = co2e(rows["carbon_sd_t"].to_numpy())
    return rows, notes


def _nonnegative(gdf, col: str, where: str) -> np.ndarray:
    v = pd.to_numeric(gdf[col], errors="coerce").to_numpy(float)
    bad = v < 0
    if bad.any():
        raise FieldError(f"{where}: field {col!r} is negative at rows {file_rows(np.flatnonzero(bad))} "
                         f"(first value {v[bad][0]:g})")
    return v


def _run_provenance(lay: Layout) -> tuple[str | None, str, list[str]]:
    """(SHA-256 of the run's configuration, code version of the run, notes) from ``report/provenance.json``;
    without it no configuration hash and the committing code's version, said in a note."""
    p = lay.report_dir / "provenance.json"
    if p.exists():
        prov = json.loads(p.read_text(encoding="utf-8"))
        cfg = json.dumps(prov.get("config"), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return (hashlib.sha256(cfg.encode()).hexdigest(),
                f"forestcarbon {prov.get('forestcarbon')} git {prov.get('git_commit') or 'unknown'}", [])
    return (None, f"forestcarbon {__version__} git {_git_commit() or 'unknown'} (committing process)",
            [f"{p} not found: no configuration hash; code version is the committing process's, not the run's"])

