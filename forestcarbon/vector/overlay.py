"""Carbon projects over forest parcels: area shares and project totals.

``share`` is the fraction of a parcel's area inside a project; a project's
carbon is the sum over parcels of ``share × parcel carbon_t`` (the parcel
account is the unit of record; a uniform density within a parcel is assumed).
"""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pandas as pd

from .projects import overlay_pieces


def project_parcel_shares(projects: gpd.GeoDataFrame, parcels: gpd.GeoDataFrame, project_id: str,
                          parcel_id: str) -> pd.DataFrame:
    """Rows (project_id, parcel_id, overlap_ha, share) for every overlapping pair (no eligibility, slivers or
    conflicts: :func:`forestcarbon.vector.projects.project_accounts` applies those)."""
    p = overlay_pieces(projects, parcels, project_id, parcel_id)
    inter = pd.DataFrame({project_id: p["project_id"], parcel_id: p["parcel_id"], "overlap_ha": p["piece_m2"] / 10_000,
                          "share": np.where(p["inside"], 1.0, np.minimum(p["piece_m2"] / p["parcel_m2"], 1.0))})
    return inter.sort_values([project_id, parcel_id]).reset_index(drop=True)


def project_totals(shares: pd.DataFrame, parcel_carbon: pd.DataFrame, project_id: str, parcel_id: str) -> pd.DataFrame:
    """Per project: overlap area (ha), parcels touched, and by share the parcels' carbon pools (t):
    ``carbon_above_t``, ``carbon_below_t`` (where the parcels carry them), ``carbon_t``, ``co2e_t``."""
    pools = [c for c in ("carbon_above_t", "carbon_below_t", "carbon_t", "co2e_t") if c in parcel_carbon]
    m = shares.merge(parcel_carbon[[parcel_id, *pools]], on=parcel_id, how="left")
    for c in pools:
        m[c] = m[c] * m["share"]
    g = m.groupby(project_id)
    return pd.DataFrame({"area_ha": g["overlap_ha"].sum(), "n_parcels": g.size(),
                         **{c: g[c].sum() for c in pools}}).reset_index()
