"""Compare model supports on the synthetic county against its truth.

    python benchmarks/check_support.py SCENE_DIR OUTPUT_A OUTPUT_B [...]

Each OUTPUT is a pipeline output folder of the same scene run with a different ``model.support``
(``plot_mean``: trained on plot-footprint means, applied to single pixels; ``window``: trained and applied
on window means of about the plot's area).  Printed per output: the support, both models' spatial-block
CV, the served model's pixel AGB error against the 10 m truth and against the truth averaged over the
same 3 x 3 window (the quantity a window-support pixel estimates), over forest truth pixels, and the
forest-parcel carbon error (the report's truth comparison).  Last line: JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import rasterio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from forestcarbon.models.support import window_mean  # noqa: E402


def _read(path):
    with rasterio.open(path) as src:
        return src.read(1, masked=True).astype("float64").filled(np.nan)


def errors(pred, truth, mask):
    ok = mask & np.isfinite(pred) & np.isfinite(truth)
    d = pred[ok] - truth[ok]
    return {"rmse_mg_ha": float(np.sqrt(np.mean(d ** 2))), "bias_mg_ha": float(d.mean()),
            "rrmse": float(np.sqrt(np.mean(d ** 2)) / truth[ok].mean()), "pixels": int(ok.sum())}


def main(scene: Path, outputs: list[Path]) -> dict:
    truth = _read(scene / "truth/agb_truth.tif")
    cover = _read(scene / "truth/land_cover_truth.tif")
    forest = cover == 1  # forestcarbon_synth.land: 1 forest
    truth3 = window_mean(truth, 3).astype("float64")
    rows = {}
    for out in outputs:
        card = json.loads((out / "model/model_card.json").read_text())
        summary = json.loads((out / "report/summary.json").read_text())
        agb = _read(out / "maps/agb.tif")
        rows[str(out)] = {
            "support": card["models"]["optical"]["support"],
            "served": card["serving_order"],
            "spatial_cv": {n: {k: c["cv"]["spatial"][k] for k in ("r2", "rmse", "rrmse")} for n, c in card["models"].items()},
            "pixel_vs_truth_10m": errors(agb, truth, forest),
            "pixel_vs_truth_3x3_mean": errors(agb, truth3, forest),
            "parcel_carbon_rrmse": summary["truth"]["parcel_carbon_rrmse"],
            "total_relative_error": summary["truth"]["total_relative_error"],
        }
        r = rows[str(out)]
        print(f"{out}: support {r['support']['kind']}; served {r['served']}; optical spatial CV "
              f"R² {r['spatial_cv']['optical']['r2']:.3f} RMSE {r['spatial_cv']['optical']['rmse']:.1f}; pixel RMSE "
              f"{r['pixel_vs_truth_10m']['rmse_mg_ha']:.1f} (10 m truth), {r['pixel_vs_truth_3x3_mean']['rmse_mg_ha']:.1f} "
              f"(3x3 truth); parcel carbon RRMSE {r['parcel_carbon_rrmse']:.1%}; total {r['total_relative_error']:+.2%}")
    print(json.dumps(rows))
    return rows


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), [Path(a) for a in sys.argv[2:]])
