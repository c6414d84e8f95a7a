"""An epoch's stocks as one table: parcel id, geometry version, stocks, attributes and geometry."""

from __future__ import annotations

import json

import geopandas as gpd
import pandas as pd
import shapely

from .store import AccountStore


def epoch_table(store: AccountStore, epoch: str) -> gpd.GeoDataFrame:
    """One row per parcel of ``epoch``: ``epoch``, ``parcel_id``, ``version``, ``valid_from_epoch``, the stock
    columns, ``geometry_sha256``, the version's attributes as columns, and its geometry (versions stored in
    another CRS than the most frequent one are reprojected to it)."""
    stocks = store.stocks(epoch)
    vers = store.parcel_versions(epoch=epoch).drop(columns=["area_ha"])
    m = stocks.merge(vers, on=["parcel_id", "version"], how="left", validate="one_to_one")
    attrs = pd.DataFrame([json.loads(a) for a in m["attributes"]], index=m.index)
    attrs = attrs[[c for c in attrs.columns if c not in m.columns]]
    crs_main = m["crs"].mode().iloc[0]
    geoms = gpd.GeoSeries(shapely.from_wkb(m["geometry_wkb"].to_numpy()), index=m.index, crs=crs_main)
    for crs in set(m["crs"]) - {crs_main}:
        sel = m["crs"].eq(crs)
        geoms[sel] = gpd.GeoSeries(geoms[sel].to_numpy(), crs=crs).to_crs(crs_main).to_numpy()
    table = pd.concat([m.drop(columns=["geometry_wkb", "attributes", "crs"]), attrs], axis=1)
    table.insert(0, "epoch", epoch)
    return gpd.GeoDataFrame(table, geometry=geoms, crs=crs_main)
