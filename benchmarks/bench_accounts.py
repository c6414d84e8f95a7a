"""Parcel accounts benchmark at the bureau's size: write, rewrite and read epochs of ~489,500 parcels.

Parcels are 41-vertex polygons of ~1.8 ha (buffered points, ``quad_segs=10``) on a grid in EPSG:4549.
Timed, in one fresh process: building the parcel rows (WKB, geometry hashes), writing epoch 2023 (every
parcel a new version), rewriting 2023 (idempotent replace), writing 2024 (versions reused), reading both
epochs' stocks, the per-parcel sinks, and the export table (geometry + attributes) of one epoch.

Run from the repository root: ``python benchmarks/bench_accounts.py [--parcels 489500]``.  Prints, as its
last line, a JSON object with the seconds of each step, the database size and the peak RSS.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _isolated import run_isolated  # noqa: E402


def full_path(n: int, folder: str) -> dict:
    import geopandas as gpd
    import numpy as np
    import shapely

    from forestcarbon.accounts.change import parcel_sinks
    from forestcarbon.accounts.export import epoch_table
    from forestcarbon.accounts.parcels import parcel_rows
    from forestcarbon.accounts.sqlite_store import SQLiteStore
    from forestcarbon.accounts.store import Epoch

    t = {}
    side = int(np.ceil(np.sqrt(n)))
    x = 500_000 + (np.arange(n) % side) * 160.0
    y = 3_200_000 + (np.arange(n) // side) * 160.0
    r = np.sqrt(18_000 / np.pi)  # 1.8 ha disc
    t0 = time.perf_counter()
    gdf = gpd.GeoDataFrame({"parcel_id": [f"QZ{i:07d}" for i in range(n)], "species": "杉木",
                            "land_class": "forest"}, geometry=shapely.buffer(shapely.points(x, y), r, quad_segs=10),
                           crs="EPSG:4549")
    rows = parcel_rows(gdf, ["species", "land_class"])
    t["parcel_rows_s"] = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    rows["area_ha"] = gdf.geometry.area.to_numpy() / 10_000
    rows["valid_fraction"] = 1.0
    db = Path(folder) / "bench.sqlite"

    def epoch(label, day, carbon):
        rows["carbon_t"] = carbon
        rows["carbon_sd_t"] = 0.2 * carbon
        rows["co2e_t"] = carbon * 44 / 12
        return Epoch(label, day, ("bench",), (), None, "bench", folder)

    c23 = rng.gamma(4, 25, n)
    with SQLiteStore(db) as st:
        for key, label, day, c in (("write_2023_s", "2023", "2023-07-01", c23),
                                   ("rewrite_2023_s", "2023", "2023-07-01", c23),
                                   ("write_2024_s", "2024", "2024-07-01", c23 * 1.03)):
            e = epoch(label, day, c)
            t0 = time.perf_counter()
            st.write_epoch(e, rows)
            t[key] = time.perf_counter() - t0
        t0 = time.perf_counter()
        s1, s2 = st.stocks("2023"), st.stocks("2024")
        t["read_two_epochs_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        sinks = parcel_sinks(s1, s2, 1.0)
        t["sinks_s"] = time.perf_counter() - t0
        assert (sinks["status"] == "ok").all() and len(sinks) == n
        t0 = time.perf_counter()
        table = epoch_table(st, "2024")
        t["export_table_s"] = time.perf_counter() - t0
        assert len(table) == n
        t["stock_rows"] = st.con.execute("SELECT count(*) FROM stocks").fetchone()[0]
        t["parcel_versions"] = st.con.execute("SELECT count(*) FROM parcels").fetchone()[0]
    t["db_mb"] = db.stat().st_size / 2**20
    return t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--parcels", type=int, default=489_500)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        secs, peak = run_isolated(_timed, a.parcels, tmp)
        steps = json.loads((Path(tmp) / "steps.json").read_text())
    out = {"stage": "accounts", "parcels": a.parcels, "total_s": round(secs, 1), "peak_rss_mb": round(peak),
           **{k: (round(v, 2) if isinstance(v, float) else v) for k, v in steps.items()}}
    print(json.dumps(out))


def _timed(n, folder):
    t0 = time.perf_counter()
    steps = full_path(n, folder)
    (Path(folder) / "steps.json").write_text(json.dumps(steps))
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
