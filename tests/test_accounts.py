"""Parcel carbon accounts on a real SQLite file: epochs, sinks against hand computations, idempotent rewrites,
geometry versions, a writer killed with SIGKILL mid-transaction, and the `forestcarbon accounts` commands."""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from statistics import NormalDist

import geopandas as gpd
import pandas as pd
import pytest
import shapely
from typer.testing import CliRunner

from forestcarbon.accounts.change import parcel_sinks, years_between
from forestcarbon.accounts.sqlite_store import SQLiteStore
from forestcarbon.errors import LedgerError
from forestcarbon.flows.cli import app

from .accounts_outputs import make_output, squares

REPO = Path(__file__).resolve().parents[1]
CO2_PER_C = (12.0 + 2 * 16.0) / 12.0  # molecular weights of CO2 and C (IPCC 2006 rounds to 12 and 16)


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def commit(out, epoch, db, *extra):
    r = run("accounts", "commit", out, "--epoch", epoch, "--db", db, *extra)
    assert r.exit_code == 0, r.output
    return r


def count(db, sql, *params):
    con = sqlite3.connect(db)  # independent of the store: plain sqlite3
    try:
        return con.execute(sql, params).fetchone()[0]
    finally:
        con.close()


@pytest.fixture()
def two_epochs(tmp_path):
    db = tmp_path / "acc.sqlite"
    o1 = make_output(tmp_path / "o2023", squares(), [10.0, 20.0], sd_t=[3.0, 4.0],
                     scene_dates=("2023-06-20", "2023-07-01", "2023-08-15"))
    o2 = make_output(tmp_path / "o2024", squares(), [12.5, 18.0], sd_t=[2.0, 5.0],
                     scene_dates=("2024-06-01", "2024-07-01", "2024-09-01"))
    commit(o1, "2023", db)
    commit(o2, "2024", db)
    return db


def test_sinks_between_two_epochs_equal_a_hand_computation(two_epochs):
    with SQLiteStore(two_epochs, create=False) as st:
        eps = st.epochs()
        s1, s2 = st.stocks("2023"), st.stocks("2024")
    # epoch dates: the median acquisition date of the used scenes
    assert [(e.epoch, e.epoch_date) for e in eps] == [("2023", "2023-07-01"), ("2024", "2024-07-01")]
    years = 366 / 365.25  # 2023-07-01 -> 2024-07-01 spans 29 Feb 2024
    assert years_between("2023-07-01", "2024-07-01") == pytest.approx(years)
    # CO2e is recomputed from carbon_t (the table's co2e_t column was deliberately wrong)
    assert s1.set_index("parcel_id").loc["A", "co2e_t"] == pytest.approx(10.0 * CO2_PER_C)
    for rho in (0.0, 0.6):
        sinks = parcel_sinks(s1, s2, years, rho).set_index("parcel_id")
        # A: 10 +- 3 -> 12.5 +- 2;  B: 20 +- 4 -> 18 +- 5 (t C)
        for pid, (c1, sd1, c2, sd2) in {"A": (10, 3, 12.5, 2), "B": (20, 4, 18, 5)}.items():
            d = (c2 - c1) * CO2_PER_C / years
            sd = math.sqrt(sd1**2 + sd2**2 - 2 * rho * sd1 * sd2) * CO2_PER_C / years
            assert sinks.loc[pid, "sink_co2e_t_yr"] == pytest.approx(d, rel=1e-12)
            assert sinks.loc[pid, "sink_co2e_sd_t_yr"] == pytest.approx(sd, rel=1e-12)
            z = NormalDist().inv_cdf(0.95)  # stdlib, independent of scipy used by the code
            assert sinks.loc[pid, "sink_co2e_lo90_t_yr"] == pytest.approx(d - z * sd, rel=1e-9)
            assert sinks.loc[pid, "status"] == "ok"
            assert sinks.loc[pid, "rho"] == rho


def test_show_prints_history_and_sink(two_epochs):
    r = run("accounts", "show", "A", "--db", two_epochs)
    assert r.exit_code == 0, r.output
    sink = (12.5 - 10) * CO2_PER_C / (366 / 365.25)
    sd = math.sqrt(3**2 + 2**2) * CO2_PER_C / (366 / 365.25)
    assert f"{sink:+,.3f} t CO2e/yr, sd {sd:,.3f}" in r.output
    assert "rho 0" in r.output
    assert "10.000" in r.output and "12.500" in r.output


def test_same_epoch_twice_replaces_never_duplicates(tmp_path, two_epochs):
    db = two_epochs
    again = make_output(tmp_path / "o2024b", squares(), [30.0, 40.0], sd_t=[1.0, 1.0],
                        scene_dates=("2024-07-01",), model_id="county-second")
    commit(again, "2024", db)
    commit(again, "2024", db)
    assert count(db, "SELECT count(*) FROM stocks WHERE epoch = '2024'") == 2
    assert count(db, "SELECT count(*) FROM epochs") == 2
    assert count(db, "SELECT count(*) FROM parcels") == 2  # same geometries: no new version
    assert count(db, "SELECT carbon_t FROM stocks WHERE epoch = '2024' AND parcel_id = 'B'") == 40.0
    assert count(db, "SELECT model_ids FROM epochs WHERE epoch = '2024'") == '["county-second", "county-second-optical"]'
    assert count(db, "SELECT count(*) FROM epoch_files WHERE epoch = '2024' AND role = 'parcels'") == 1
    assert count(db, "SELECT carbon_t FROM stocks WHERE epoch = '2023' AND parcel_id = 'B'") == 20.0


def test_geometry_change_makes_a_new_version_and_no_sink(tmp_path):
    db = tmp_path / "acc.sqlite"
    p1 = squares()
    commit(make_output(tmp_path / "a", p1, [10.0, 20.0], sd_t=[1, 1], scene_dates=("2023-07-01",)), "2023", db)
    p2 = p1.copy()
    # A: the same square with rings starting at another vertex and 0.1 mm noise -> the same geometry
    p2.loc[0, "geometry"] = shapely.Polygon([(500_020.0001, 3_200_000), (500_020, 3_200_020), (500_000, 3_200_020),
                                             (500_000, 3_200_000)])
    # B: grown by 5 m to the east -> a new version
    p2.loc[1, "geometry"] = shapely.box(500_020, 3_200_000, 500_045, 3_200_020)
    commit(make_output(tmp_path / "b", p2, [11.0, 26.0], sd_t=[1, 1], scene_dates=("2024-07-01",)), "2024", db)
    with SQLiteStore(db, create=False) as st:
        va, vb = st.parcel_versions(parcel_id="A"), st.parcel_versions(parcel_id="B")
        s = parcel_sinks(st.stocks("2023"), st.stocks("2024"), 1.0).set_index("parcel_id")
        b24 = st.stocks("2024").set_index("parcel_id").loc["B"]
    assert list(va["version"]) == [1]
    assert list(vb["version"]) == [1, 2] and list(vb["valid_from_epoch"]) == ["2023", "2024"]
    assert shapely.from_wkb(vb["geometry_wkb"].iloc[0]).equals(p1.geometry[1])  # the old version is kept
    assert shapely.from_wkb(vb["geometry_wkb"].iloc[1]).equals(p2.geometry[1])
    assert vb["area_ha"].tolist() == pytest.approx([0.04, 0.05])
    assert b24["version"] == 2 and b24["area_ha"] == pytest.approx(0.05)
    assert s.loc["B", "status"] == "geometry changed" and math.isnan(s.loc["B", "sink_co2e_t_yr"])
    assert s.loc["A", "status"] == "ok"
    # rewriting 2023 with its original geometry reuses version 1, no version is lost or renumbered
    commit(make_output(tmp_path / "a2", p1, [10.0, 20.0], sd_t=[1, 1], scene_dates=("2023-07-01",)), "2023", db)
    con = sqlite3.connect(db)
    assert con.execute("SELECT version, valid_from_epoch FROM parcels WHERE parcel_id = 'B' ORDER BY version").fetchall() \
        == [(1, "2023"), (2, "2024")]
    con.close()


def test_missing_uncertainty_columns_are_stored_null_and_said(tmp_path):
    db = tmp_path / "acc.sqlite"
    r = commit(make_output(tmp_path / "o", squares(), [10.0, 20.0]), "2024", db)
    assert "no field 'carbon_sd_t', 'carbon_p05_t', 'carbon_p95_t': stored NULL" in r.output
    assert count(db, "SELECT count(*) FROM stocks WHERE carbon_sd_t IS NULL AND carbon_p95_t IS NULL") == 2
    assert "no field 'carbon_sd_t'" in count(db, "SELECT notes FROM epochs")
    with SQLiteStore(db, create=False) as st:
        s = parcel_sinks(st.stocks("2024"), st.stocks("2024").assign(carbon_t=[11.0, 21.0]), 1.0)
    assert list(s["status"]) == ["no sd", "no sd"] and s["sink_co2e_t_yr"].tolist() == pytest.approx([CO2_PER_C] * 2)


def test_provenance_traces_each_stock_row(tmp_path):
    db = tmp_path / "acc.sqlite"
    prov = {"forestcarbon": "0.1.0", "git_commit": "abc123", "config": {"name": "quzhou", "grid": {"crs": "EPSG:4549"}}}
    out = make_output(tmp_path / "o", squares(), [10.0, 20.0], provenance=prov)
    commit(out, "2024", db)
    cfg = hashlib.sha256(json.dumps(prov["config"], sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    row = sqlite3.connect(db).execute(
        "SELECT e.config_sha256, e.code_version, f.sha256 FROM stocks s JOIN epochs e USING (epoch) "
        "JOIN epoch_files f ON f.epoch = e.epoch AND f.role = 'parcels' WHERE s.parcel_id = 'A'").fetchone()
    assert row[0] == cfg and "abc123" in row[1]
    assert row[2] == hashlib.sha256((out / "parcels" / "parcels_carbon.gpkg").read_bytes()).hexdigest()


@pytest.mark.parametrize("fmt", ["gpkg", "parquet", "csv"])
def test_export_round_trip(two_epochs, tmp_path, fmt):
    path = tmp_path / f"e.{fmt}"
    r = run("accounts", "export", "--epoch", "2024", "--format", fmt, "--out", path, "--db", two_epochs)
    assert r.exit_code == 0, r.output
    t = pd.read_csv(path) if fmt == "csv" else gpd.read_parquet(path) if fmt == "parquet" else gpd.read_file(path)
    t = t.set_index("parcel_id")
    assert t.loc[["A", "B"], "carbon_t"].tolist() == [12.5, 18.0]
    assert t.loc[["A", "B"], "carbon_sd_t"].tolist() == [2.0, 5.0]
    assert t.loc["B", "species"] == "马尾松" and t.loc["A", "epoch"] in ("2024", 2024)
    if fmt != "csv":
        assert t.crs.to_epsg() == 4549
        assert t.loc["A", "geometry"].equals(squares().geometry[0])


def test_cli_errors_are_one_line(tmp_path, two_epochs):
    cases = [
        (["accounts", "commit", tmp_path / "nothing", "--epoch", "2024", "--db", two_epochs], "no parcel table"),
        (["accounts", "show", "ZZ9", "--db", two_epochs], "parcel 'ZZ9' is not in the accounts"),
        (["accounts", "export", "--epoch", "1999", "--out", tmp_path / "x.csv", "--format", "csv", "--db", two_epochs],
         "epoch '1999' is not in the accounts (epochs: ['2023', '2024'])"),
        (["accounts", "show", "A", "--db", tmp_path / "none.sqlite"], "no accounts database at"),
        (["accounts", "show", "A", "--rho", "1.5", "--db", two_epochs], "rho 1.5 is not in [-1, 1]"),
    ]
    for args, msg in cases:
        r = run(*args)
        assert r.exit_code == 2, r.output
        lines = r.output.strip().splitlines()
        assert len(lines) == 1 and msg in lines[0], r.output
    assert not (tmp_path / "none.sqlite").exists()


def test_bad_parcel_values_rejected_before_writing(tmp_path, two_epochs):
    out = make_output(tmp_path / "neg", squares(), [10.0, -1.0])
    r = run("accounts", "commit", out, "--epoch", "2025", "--db", two_epochs)
    assert r.exit_code == 2 and "field 'carbon_t' is negative at rows [3]" in r.output
    assert count(two_epochs, "SELECT count(*) FROM epochs") == 2


# -- crash safety --------------------------------------------------------------------------------------------
_WRITER = textwrap.dedent("""
    import sys, time
    import numpy as np, pandas as pd, shapely
    from forestcarbon.accounts.sqlite_store import SQLiteStore
    from forestcarbon.accounts.store import Epoch
    from forestcarbon.accounts.parcels import parcel_rows
    import geopandas as gpd

    db, label, journal, marker, n = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
    x = np.arange(n) % 1000 * 100.0
    y = np.arange(n) // 1000 * 100.0
    gdf = gpd.GeoDataFrame({"parcel_id": [f"P{i:07d}" for i in range(n)]},
                           geometry=shapely.box(x, y, x + 90, y + 90), crs="EPSG:4549")
    rows = parcel_rows(gdf, [])
    rows["area_ha"] = 0.81
    rows["carbon_t"] = 99.0
    rows["valid_fraction"] = 1.0
    ep = Epoch(label, "2030-01-01", ("big",), (), None, "test", "writer")

    def progress(done, total):
        if done >= total // 2:  # half the rows are inserted, the transaction is open: say so and wait
            open(marker, "w").write(str(done))
            time.sleep(600)

    with SQLiteStore(db, journal=journal) as st:
        st.write_epoch(ep, rows, progress)
""")


@pytest.mark.parametrize("label,journal", [("2025", "wal"), ("2023", "delete")])
def test_sigkill_mid_transaction_leaves_the_previous_state(tmp_path, label, journal):
    db = tmp_path / "acc.sqlite"
    commit(make_output(tmp_path / "o", squares(), [10.0, 20.0], sd_t=[3.0, 4.0], scene_dates=("2023-07-01",)),
           "2023", db)
    marker = tmp_path / "started"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(db), label, journal, str(marker), "200000"], env=env,
                            stderr=subprocess.PIPE)
    for _ in range(1200):  # up to 120 s for the child to build and half-insert 200k rows
        if marker.exists() or proc.poll() is not None:
            break
        time.sleep(0.1)
    assert marker.exists(), proc.stderr.read().decode() if proc.poll() is not None else "writer did not start"
    # the open transaction had reached the disk: WAL frames, or (rollback journal) pages spilled into the file
    if journal == "wal":
        assert Path(f"{db}-wal").stat().st_size > 1_000_000
    else:
        assert Path(f"{db}-journal").exists() and db.stat().st_size > 1_000_000
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert con.execute("PRAGMA foreign_key_check").fetchall() == []
    assert con.execute("SELECT epoch, n_parcels FROM epochs").fetchall() == [("2023", 2)]
    assert con.execute("SELECT parcel_id, carbon_t, carbon_sd_t FROM stocks ORDER BY parcel_id").fetchall() == [
        ("A", 10.0, 3.0), ("B", 20.0, 4.0)]
    assert con.execute("SELECT count(*) FROM parcels").fetchone()[0] == 2
    con.close()
    with SQLiteStore(db, create=False) as st:  # and the store opens and writes again
        assert st.integrity_check() == "ok"
        assert [e.epoch for e in st.epochs()] == ["2023"]


def test_not_a_database(tmp_path):
    p = tmp_path / "junk.sqlite"
    p.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(LedgerError, match="not a usable accounts database"):
        SQLiteStore(p)


def test_sinks_command_writes_every_parcel(two_epochs, tmp_path):
    out = tmp_path / "sinks.csv"
    r = run("accounts", "sinks", "--from", "2023", "--to", "2024", "--out", out, "--rho", "0.5", "--db", two_epochs)
    assert r.exit_code == 0, r.output
    t = pd.read_csv(out).set_index("parcel_id")
    years = 366 / 365.25
    assert t.loc["B", "sink_co2e_t_yr"] == pytest.approx((18 - 20) * CO2_PER_C / years)
    assert t.loc["B", "sink_co2e_sd_t_yr"] == pytest.approx(math.sqrt(16 + 25 - 2 * 0.5 * 4 * 5) * CO2_PER_C / years)
    total = ((12.5 - 10) + (18 - 20)) * CO2_PER_C / years
    assert f"total {total:+,.1f} t CO2e/yr (rho 0.5)" in r.output


def test_a_second_writer_fails_cleanly_while_the_first_holds_the_lock(tmp_path, two_epochs):
    from forestcarbon.flows.epoch_input import read_epoch

    record, rows = read_epoch(make_output(tmp_path / "o25", squares(), [1.0, 2.0], scene_dates=("2025-07-01",)), "2025")
    holder = sqlite3.connect(two_epochs, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process writing
    try:
        with SQLiteStore(two_epochs, create=False, timeout_s=0.2) as st:
            with pytest.raises(LedgerError, match="epoch '2025' not written .*locked.*the accounts are unchanged"):
                st.write_epoch(record, rows)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert count(two_epochs, "SELECT count(*) FROM epochs") == 2
