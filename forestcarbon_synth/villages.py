"""Administrative villages (行政村) of the synthetic county: the parcels' township + village codes dissolved.

Each parcel carries ``XIANG`` (township) and ``CUN`` (village) (:func:`forestcarbon_synth.land.bureau_fields`);
a village polygon is the union of its parcels, so villages cover forest and non-forest land alike and
tile the county.  ``village_id`` is the 12-digit code of the statistical division scheme (统计用区划代码:
county 330803 + township 3 digits + village 3 digits, e.g. ``330803001002``); ``name`` is synthetic
(a township name + a direction + 村); ``XIANG`` and ``CUN`` are kept for the join with the parcels.
"""

from __future__ import annotations

import geopandas as gpd
import shapely

TOWNSHIP_NAMES = ("湖南", "杜泽", "莲花", "峡川", "高家", "全旺", "大洲", "云溪", "横路")  # synthetic labels
VILLAGE_WORDS = ("上", "下", "东", "西")


def make_villages(parcels: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """One polygon per (XIAN, XIANG, CUN) of ``parcels``: ``village_id``, ``name``, ``XIANG``, ``CUN``."""
    p = parcels[["XIAN", "XIANG", "CUN", "geometry"]].copy()
    p["geometry"] = shapely.make_valid(p.geometry.to_numpy())
    v = p.dissolve(by=["XIAN", "XIANG", "CUN"], as_index=False)
    v["geometry"] = shapely.make_valid(v.geometry.to_numpy())
    v["village_id"] = v["XIAN"] + v["XIANG"] + v["CUN"]
    v["name"] = [f"{TOWNSHIP_NAMES[(int(x) - 1) % len(TOWNSHIP_NAMES)]}{VILLAGE_WORDS[(int(c) - 1) % 4]}村"
                 for x, c in zip(v["XIANG"], v["CUN"])]
    return v[["village_id", "name", "XIANG", "CUN", "geometry"]].sort_values("village_id").reset_index(drop=True)
