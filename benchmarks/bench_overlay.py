"""Overlay benchmark: projects over parcels, :func:`forestcarbon.vector.projects.overlay_pieces` (STRtree, wholly
contained parcels skip the intersection) against ``geopandas.overlay(how="intersection")`` on the same layers.

Parcels: a jittered grid of ~1.8 ha quadrilaterals (cell 134.2 m, shared vertices moved by up to ±25 m, so
they tile the plane), Quzhou-like count by default (400,000; ``--parcels`` for small runs).  Projects:
``--projects`` irregular polygons (a circle of 20-500 ha with radial noise, 48 vertices), placed at random
so some overlap.  Both overlays run in this process on the same GeoDataFrames in EPSG:4549; the pieces are
matched by (project, parcel) and their areas compared.  The full accounts (slivers, eligibility, conflicts,
totals) are timed too.  Peak RSS: the overlay path alone, in a fresh process (``_isolated.run_isolated``),
inputs included.

Run from the repository root: ``python benchmarks/bench_overlay.py [--parcels 400000 --projects 300]``.
The last line is a JSON object: stage, parcels, projects, pieces, seconds, reference_seconds,
speedup_vs_reference, max_area_difference_m2, pairs_only_in_one, accounts_seconds, peak_rss_mb.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _isolated import run_isolated  # noqa: E402

X0, Y0 = 300_000.0, 3_150_000.0  # EPSG:4549, around Quzhou
CELL = math.sqrt(18_000.0)  # 1.8 ha


def layers(n_parcels: int, n_projects: int, seed: int = 0):
    import geopandas as gpd
    import shapely

    rng = np.random.default_rng(seed)
    side = math.ceil(math.sqrt(n_parcels))
    gx, gy = np.meshgrid(np.arange(side + 1) * CELL, np.arange(side + 1) * CELL)
    jit = rng.uniform(-25, 25, (2, side + 1, side + 1))
    jit[:, [0, -1], :] = 0
    jit[:, :, [0, -1]] = 0
    vx, vy = X0 + gx + jit[0], Y0 + gy + jit[1]
    i, j = np.meshgrid(np.arange(side), np.arange(side))
    i, j = i.ravel()[:n_parcels], j.ravel()[:n_parcels]
    ring = np.stack([np.stack([vx[j, i], vy[j, i]], -1), np.stack([vx[j, i + 1], vy[j, i + 1]], -1),
                     np.stack([vx[j + 1, i + 1], vy[j + 1, i + 1]], -1), np.stack([vx[j + 1, i], vy[j + 1, i]], -1),
                     np.stack([vx[j, i], vy[j, i]], -1)], axis=1)
    parcels = gpd.GeoDataFrame({"parcel_id": np.char.add("p", np.arange(n_parcels).astype(str)).astype(object),
                                "carbon_t": rng.uniform(20, 120, n_parcels), "is_forest": rng.random(n_parcels) < 0.9},
                               geometry=shapely.polygons(ring), crs="EPSG:4549")
    parcels["carbon_sd_t"] = 0.2 * parcels["carbon_t"]
    extent = side * CELL
    area_m2 = rng.uniform(20, 500, n_projects) * 10_000
    r = np.sqrt(area_m2 / np.pi)
    cx = X0 + rng.uniform(r, extent - r)
    cy = Y0 + rng.uniform(r, extent - r)
    t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    rad = r[:, None] * (1 + 0.15 * rng.standard_normal((n_projects, 48)).clip(-2, 2))
    xy = np.stack([cx[:, None] + rad * np.cos(t), cy[:, None] + rad * np.sin(t)], -1)
    xy = np.concatenate([xy, xy[:, :1]], axis=1)
    projects = gpd.GeoDataFrame({"project_id": [f"j{k:03d}" for k in range(n_projects)],
                                 "registered": pd_dates(rng, n_projects)},
                                geometry=shapely.make_valid(shapely.polygons(xy)), crs="EPSG:4549")
    return projects, parcels


def pd_dates(rng, n):
    import pandas as pd

    return pd.Timestamp("2018-01-01") + pd.to_timedelta(rng.permutation(n) * 3, unit="D")


def ours(projects, parcels):
    from forestcarbon.vector.projects import overlay_pieces

    return overlay_pieces(projects, parcels)


def reference(projects, parcels):
    import geopandas as gpd

    out = gpd.overlay(projects[["project_id", "geometry"]], parcels[["parcel_id", "geometry"]], how="intersection",
                      keep_geom_type=True)
    out["a"] = out.geometry.area
    return out[out["a"] > 0]


def overlay_only(n_parcels, n_projects, seed) -> float:
    """Child process: build the layers, time our overlay (peak RSS measured by the parent)."""
    projects, parcels = layers(n_parcels, n_projects, seed)
    t = time.perf_counter()
    ours(projects, parcels)
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parcels", type=int, default=400_000)
    ap.add_argument("--projects", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    from forestcarbon.models.carbon import co2e
    from forestcarbon.vector.projects import project_accounts

    projects, parcels = layers(a.parcels, a.projects, a.seed)
    t = time.perf_counter()
    mine = ours(projects, parcels)
    secs = time.perf_counter() - t
    t = time.perf_counter()
    ref = reference(projects, parcels)
    ref_secs = time.perf_counter() - t
    m = mine[["project_id", "parcel_id", "piece_m2", "inside"]].merge(
        ref[["project_id", "parcel_id", "a"]], on=["project_id", "parcel_id"], how="outer", indicator=True)
    both = m[m["_merge"] == "both"]
    t = time.perf_counter()
    acc = project_accounts(projects, parcels, co2e, conflict_rule="exclude")
    acc_secs = time.perf_counter() - t
    _, peak = run_isolated(overlay_only, a.parcels, a.projects, a.seed)
    result = {
        "stage": "overlay", "parcels": len(parcels), "projects": len(projects), "pieces": len(mine),
        "pieces_whole_parcels": int(mine["inside"].sum()), "conflicts": len(acc.conflicts),
        "seconds": round(secs, 2), "reference_seconds": round(ref_secs, 2),
        "speedup_vs_reference": round(ref_secs / secs, 2),
        "max_area_difference_m2": float(np.abs(both["piece_m2"] - both["a"]).max()),
        "pairs_only_in_one": int((m["_merge"] != "both").sum()),
        "accounts_seconds": round(acc_secs, 2), "peak_rss_mb": round(peak, 1),
        "reference": "geopandas.overlay(projects, parcels, how='intersection', keep_geom_type=True) + area, same process",
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
