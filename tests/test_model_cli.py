"""``forestcarbon model fit``: bad inputs (one line, exit 2) and a run on a real table of lidR plot metrics
(lidaRtRee's Quatre Montagnes plots, 96 plots in 24 clusters; tests/data/README.md)."""

from __future__ import annotations

import json
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from forestcarbon.flows.cli import app

QM = Path(__file__).parent / "data" / "quatre_montagnes.csv"
FEATURES = ["zmax", "zmean", "zsd", "zq95", "pzabove2", "zentropy"]


def _run(*args):
    return CliRunner().invoke(app, ["model", "fit", *map(str, args)])


def _small(tmp_path, n=30, **cols):
    rng = np.random.default_rng(0)
    t = pd.DataFrame({"zmean": rng.uniform(5, 30, n), "agb_mg_ha": rng.uniform(50, 300, n),
                      "cluster": np.arange(n) // 3, "x": rng.uniform(0, 5000, n), "y": rng.uniform(0, 5000, n)})
    for k, v in cols.items():
        t[k] = v
    p = tmp_path / "plots.csv"
    t.to_csv(p, index=False)
    return p


@pytest.mark.parametrize("case, expect", [
    ("few_rows", "9 rows; 5-fold cross-validation needs at least 10"),
    ("few_groups", "12 rows fall in 4 groups/blocks; 5-fold grouped CV needs at least 5"),
    ("missing_feature", "features missing from the table: ['zq95']"),
    ("bad_target", "target 'agb_mg_ha' is missing or not a finite number in rows [3, 6]"),
    ("no_groups_col", "no column 'stand' (given as --groups)"),
])
def test_bad_inputs_one_line_exit_2(tmp_path, case, expect):
    out = tmp_path / "out"
    if case in ("few_rows", "few_groups"):
        r = _run("--table", _small(tmp_path, n=9 if case == "few_rows" else 12), "--target", "agb_mg_ha", "--features", "zmean", "--groups", "cluster", "--out", out)
    elif case == "missing_feature":
        r = _run("--table", _small(tmp_path), "--target", "agb_mg_ha", "--features", "zmean,zq95", "--groups", "cluster", "--out", out)
    elif case == "bad_target":
        agb = np.linspace(50, 300, 30)
        agb[1], agb[4] = np.nan, np.inf  # data rows 2 and 5 = spreadsheet rows 3 and 6
        r = _run("--table", _small(tmp_path, agb_mg_ha=agb), "--target", "agb_mg_ha", "--groups", "cluster", "--out", out)
    else:
        r = _run("--table", _small(tmp_path), "--target", "agb_mg_ha", "--groups", "stand", "--out", out)
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], r.output
    assert not out.exists()


def _rmse(obs, pred):
    return float(np.sqrt(np.mean((np.asarray(pred) - np.asarray(obs)) ** 2)))


@pytest.fixture(scope="module")
def qm_fit(tmp_path_factory):
    out = tmp_path_factory.mktemp("qm")
    r = _run("--table", QM, "--target", "G_m2_ha", "--features", ",".join(FEATURES), "--groups", "cluster_id",
             "--x-col", "X", "--y-col", "Y", "--support-m2", 706.86, "--out", out)
    assert r.exit_code == 0, r.output
    print(r.output)
    return out, r.output


def test_real_table_grouped_and_random_cv_side_by_side(qm_fit):
    out, text = qm_fit
    card = json.loads((out / "model_card.json").read_text())
    cvp = pd.read_csv(out / "cv_predictions.csv")
    table = pd.read_csv(QM)
    assert "grouped by cluster_id" in text and "random 5-fold (seed 0)" in text
    assert (cvp.observed.to_numpy() == table.G_m2_ha.to_numpy()).all() and cvp.row.tolist() == list(range(2, 98))
    # grouped folds hold out whole clusters: 24 clusters of 4 plots, none in two folds
    assert cvp.groupby("group").fold_grouped.nunique().max() == 1 and cvp.group.nunique() == 24
    for key in ("grouped", "random"):
        assert card["cv"][key]["rmse"] == pytest.approx(_rmse(cvp.observed, cvp[f"pred_{key}"]))
        for f in card["cv"][key]["per_fold"]:
            s = cvp[f"fold_{key}"] == f["fold"]
            assert f["rmse"] == pytest.approx(_rmse(cvp.observed[s], cvp[f"pred_{key}"][s]))
        obs = cvp.observed
        r2 = 1 - np.sum((cvp[f"pred_{key}"] - obs) ** 2) / np.sum((obs - obs.mean()) ** 2)
        assert card["cv"][key]["r2"] == pytest.approx(r2)
        assert f"{card['cv'][key]['rmse']:.3f}" in text
    inside = (cvp.observed >= cvp.interval_lower) & (cvp.observed <= cvp.interval_upper)
    assert card["calibration"]["overall"]["inside_fraction"] == pytest.approx(inside.mean())
    chosen = [c for c in card["selection"]["candidates"] if c["chosen"]]
    # the winner's figure on the folds that chose it is kept beside the honest (nested) one
    sel = card["selection"]
    assert len(chosen) == 1 and chosen[0]["rmse"] == pytest.approx(sel["winner_on_the_folds_that_chose_it"]["rmse"])
    assert len(sel["chosen_in_each_outer_fold"]) == len(card["cv"]["grouped"]["per_fold"])
    assert [f["chosen"] for f in card["cv"]["grouped"]["per_fold"]] == sel["chosen_in_each_outer_fold"]
    assert chosen[0]["rmse"] == min(c["rmse"] for c in card["selection"]["candidates"] if c["status"] == "ok")
    assert card["support"] == {"kind": "plot footprint mean", "area_m2": 706.86} and card["target_units"] == "m2/ha"
    bundle = joblib.load(out / "model.joblib")
    assert bundle["estimator"].predict(table[FEATURES]) == pytest.approx(
        bundle["estimator"].predict(table[FEATURES[::-1]]))


def test_real_table_loglog_coefficients_against_numpy(tmp_path):
    r = _run("--table", QM, "--target", "G_m2_ha", "--features", ",".join(FEATURES), "--groups", "cluster_id",
             "--kinds", "loglog_linear", "--out", tmp_path)
    assert r.exit_code == 0, r.output
    card = json.loads((tmp_path / "model_card.json").read_text())
    t = pd.read_csv(QM)
    A = np.column_stack([np.ones(len(t)), np.log(t[FEATURES].to_numpy())])
    b, rss, *_ = np.linalg.lstsq(A, np.log(t.G_m2_ha.to_numpy()), rcond=None)
    c = card["coefficients"]
    assert c["intercept"] == pytest.approx(b[0]) and [c["coef"][f] for f in FEATURES] == pytest.approx(b[1:])
    assert c["baskerville_factor"] == pytest.approx(np.exp(rss[0] / (len(t) - len(FEATURES) - 1) / 2))
