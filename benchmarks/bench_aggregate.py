"""Speed of parcel SDs (forestcarbon.models.aggregate.parcel_sd) and of one county-sized window.

    python benchmarks/bench_aggregate.py [N_PARCELS] [COUNTY_SIDE_PX]

N_PARCELS elliptical parcels of 8-20 x 8-20 cells (~160 cells each, the size of Quzhou's 1.8 ha parcels at
10 m) on a 2000 x 2000 grid with random SDs, against the reference: a per-parcel numpy double sum
(distance matrix, kernel, wᵀKw) over the first 2,000 parcels; then weight_field_sd over a COUNTY_SIDE_PX
square (float32).  Prints seconds, the largest relative difference from the reference, the peak resident
memory, and a JSON line.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from forestcarbon.models.aggregate import ErrorCorrelation, parcel_sd, weight_field_sd  # noqa: E402


def parcels(n: int, rng, side: int = 2000):
    rs, cs, offs = [], [], [0]
    for _ in range(n):
        h, w = rng.integers(8, 20), rng.integers(8, 20)
        r0, c0 = rng.integers(0, side - 20), rng.integers(0, side - 20)
        rr, cc = np.mgrid[r0:r0 + h, c0:c0 + w]
        m = ((rr - r0 - h / 2) / (h / 2)) ** 2 + ((cc - c0 - w / 2) / (w / 2)) ** 2 <= 1.2
        rs.append(rr[m])
        cs.append(cc[m])
        offs.append(offs[-1] + int(m.sum()))
    r, c = np.concatenate(rs), np.concatenate(cs)
    return np.array(offs), r, c, np.ones(r.size)


def main(n: int, side: int) -> None:
    rng = np.random.default_rng(0)
    corr = ErrorCorrelation("exponential", 351.0, 0.84, 667.0, nugget_range_m=285.0)
    sd = rng.uniform(1, 20, (2000, 2000))
    off, r, c, f = parcels(n, rng)
    t = time.perf_counter()
    got = parcel_sd(off, r, c, f, sd, 10.0, corr).carbon_sd_t.to_numpy()
    fast = time.perf_counter() - t
    print(f"parcel_sd: {n} parcels, {r.size} cells ({r.size / n:.0f} per parcel): {fast:.1f} s")
    m = min(n, 2000)
    t = time.perf_counter()
    ref = np.empty(m)
    for p in range(m):
        rr, cc = r[off[p]:off[p + 1]], c[off[p]:off[p + 1]]
        w = f[off[p]:off[p + 1]] * 0.01 * sd[rr, cc]
        ref[p] = np.sqrt(w @ corr.kernel(10.0 * np.hypot(rr[:, None] - rr, cc[:, None] - cc)) @ w)
    slow = (time.perf_counter() - t) * n / m
    rel = float(np.max(np.abs(got[:m] - ref) / ref))
    print(f"reference double sum: {slow:.1f} s for {n} parcels (timed on {m}); max relative difference {rel:.1e}")
    result = {"bench": "aggregate", "parcels": n, "seconds": fast, "reference_seconds": slow,
              "ratio_reference_over_fast": slow / fast, "max_relative_difference": rel}
    if side:
        area = np.full((side, side), 0.01, dtype="float32")
        sdc = rng.uniform(1, 20, (side, side)).astype("float32")
        t = time.perf_counter()
        v = weight_field_sd(area, sdc, 10.0, corr, dtype="float32")
        result |= {"county_side_px": side, "county_seconds": time.perf_counter() - t}
        print(f"county window {side} x {side} px (float32): SD {v:,.0f} t in {result['county_seconds']:.1f} s")
    result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(f"peak RSS {result['peak_rss_gb']:.2f} GB")
    print(json.dumps(result))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20_000, int(sys.argv[2]) if len(sys.argv) > 2 else 2000)
