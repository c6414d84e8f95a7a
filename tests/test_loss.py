"""`forestcarbon loss`: carbon lost inside a polygon between two epochs, against hand computations on squares
of a 4 x 4 grid of 10 m pixels; the HTML summary rendered by headless Chromium."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import subprocess
from pathlib import Path
from statistics import NormalDist

import geopandas as gpd
import numpy as np
import pytest
import shapely
from typer.testing import CliRunner

from forestcarbon.accounts.loss import carbon_loss, dissolve_area
from forestcarbon.accounts.sqlite_store import SQLiteStore
from forestcarbon.flows.cli import app

from .accounts_outputs import CRS, X0, Y0, make_output, squares

CO2_PER_C = (12.0 + 2 * 16.0) / 12.0  # molecular weights of CO2 and C (IPCC 2006 rounds to 12 and 16)
PX_HA = 10 * 10 / 10_000

C1 = np.arange(16, dtype=float).reshape(4, 4) + 50.0     # Mg C/ha, epoch 2023
SD1 = 0.1 * C1
C2 = C1.copy()
C2[3, 0] = 5.0                                            # clear-cut pixel (bottom-left)
C2[2, 1] = 10.0                                           # and the one diagonally above it
SD2 = np.full((4, 4), 2.0)
# box(X0, Y0-40, X0+15, Y0-25) covers pixel (row 3, col 0) fully, (3, 1) and (2, 0) half, (2, 1) a quarter
FRACTIONS = {(3, 0): 1.0, (3, 1): 0.5, (2, 0): 0.5, (2, 1): 0.25}
POLY = shapely.box(X0, Y0 - 40, X0 + 15, Y0 - 25)


def hand(rho: float):
    c1 = sum(f * C1[k] for k, f in FRACTIONS.items()) * PX_HA
    c2 = sum(f * C2[k] for k, f in FRACTIONS.items()) * PX_HA
    s1 = sum(f * SD1[k] for k, f in FRACTIONS.items()) * PX_HA  # errors fully correlated inside the polygon
    s2 = sum(f * SD2[k] for k, f in FRACTIONS.items()) * PX_HA
    sd = math.sqrt(s1**2 + s2**2 - 2 * rho * s1 * s2)
    return c1, c2, s1, s2, c1 - c2, sd


@pytest.fixture()
def db(tmp_path):
    path = tmp_path / "acc.sqlite"
    for label, c, sd, day in (("2023", C1, SD1, "2023-07-01"), ("2024", C2, SD2, "2024-07-01")):
        out = make_output(tmp_path / f"o{label}", squares(), [10.0, 20.0], sd_t=[1.0, 1.0], scene_dates=(day,),
                          carbon_mg_ha=c, carbon_sd_mg_ha=sd)
        r = CliRunner().invoke(app, ["accounts", "commit", str(out), "--epoch", label, "--db", str(path)])
        assert r.exit_code == 0, r.output
    return path


def area_file(tmp_path, geom=POLY, crs=CRS):
    p = tmp_path / "area.gpkg"
    gpd.GeoDataFrame({"name": ["cut"]}, geometry=[geom], crs=CRS).to_crs(crs).to_file(p, driver="GPKG")
    return p


@pytest.mark.parametrize("rho", [0.0, 0.4])
def test_loss_against_hand_computation(db, rho):
    c1, c2, s1, s2, loss, sd = hand(rho)
    with SQLiteStore(db, create=False) as st:
        res = carbon_loss(st.epoch("2023"), st.epoch("2024"), dissolve_area(
            gpd.GeoDataFrame(geometry=[POLY], crs=CRS), "poly"), rho=rho)
    assert res.before.area_ha == pytest.approx(0.0225) and res.before.mapped_fraction == pytest.approx(1.0)
    assert res.before.carbon_t == pytest.approx(c1, rel=1e-6)
    assert res.after.carbon_t == pytest.approx(c2, rel=1e-6)
    assert res.before.carbon_sd_t == pytest.approx(s1, rel=1e-6)
    assert res.after.carbon_sd_t == pytest.approx(s2, rel=1e-6)
    assert res.loss_carbon_t == pytest.approx(loss, rel=1e-6)
    assert res.loss_carbon_sd_t == pytest.approx(sd, rel=1e-6)
    z = NormalDist().inv_cdf(0.95)
    assert res.loss_carbon_lo_t == pytest.approx(loss - z * sd, rel=1e-6)
    assert res.loss_co2e_hi_t == pytest.approx((loss + z * sd) * CO2_PER_C, rel=1e-6)


def test_the_clear_cut_pixel_is_not_diluted_by_its_parcel(db):
    """The loss polygon is the clear-cut pixel inside parcel A (4 pixels): the maps find its whole loss, where
    parcel stock x area share would find a quarter of the parcel's loss (the reason the maps are used)."""
    pixel = shapely.box(X0, Y0 - 40, X0 + 10, Y0 - 30)
    with SQLiteStore(db, create=False) as st:
        res = carbon_loss(st.epoch("2023"), st.epoch("2024"), gpd.GeoDataFrame(geometry=[pixel], crs=CRS))
    assert res.loss_carbon_t == pytest.approx((C1[3, 0] - C2[3, 0]) * PX_HA, rel=1e-6)
    parcel_a_loss = (C1[2:, :2] - C2[2:, :2]).sum() * PX_HA
    assert parcel_a_loss * 0.25 < 0.6 * res.loss_carbon_t


def test_cli_loss_writes_json_png_html_and_chromium_shows_the_numbers(db, tmp_path):
    area = area_file(tmp_path, crs="EPSG:4490")  # the polygon in geographic CGCS2000: reprojected to the maps
    out = tmp_path / "loss"
    r = CliRunner().invoke(app, ["loss", "--area", str(area), "--from", "2023", "--to", "2024", "--db", str(db),
                                 "--out", str(out)])
    assert r.exit_code == 0, r.output
    c1, c2, s1, s2, loss, sd = hand(0.0)
    got = json.loads((out / "loss.json").read_text())
    assert got["loss_carbon_t"] == pytest.approx(loss, rel=1e-4)  # the polygon went through EPSG:4490
    assert got["loss_carbon_sd_t"] == pytest.approx(sd, rel=1e-4)
    assert got["rho"] == 0.0
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    chromium = "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else shutil.which("chromium")
    if chromium is None:
        pytest.skip("headless Chromium not installed (/usr/bin/chromium): the HTML was written but not rendered")
    dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                          (out / "loss.html").resolve().as_uri()], capture_output=True, text=True, timeout=120).stdout
    z = NormalDist().inv_cdf(0.95)
    assert f"{got['loss_carbon_t']:,.2f} t C" in dom
    assert f"[{got['loss_carbon_t'] - z * got['loss_carbon_sd_t']:,.2f}, " in dom
    assert f"{got['loss_carbon_t'] * CO2_PER_C:,.2f} t CO2e" in dom
    assert 'src="data:image/png;base64,' in dom and "http" not in dom.split("<body")[1].split("Produced")[0]
    assert hashlib.sha256(area.read_bytes()).hexdigest() in dom
    with SQLiteStore(db, create=False) as st:
        assert st.epoch("2024").file("carbon").sha256 in dom


def test_changed_map_is_refused(db, tmp_path):
    with SQLiteStore(db, create=False) as st:
        carbon = st.epoch("2024").file("carbon").path
    with open(carbon, "ab") as f:
        f.write(b"\0")
    r = CliRunner().invoke(app, ["loss", "--area", str(area_file(tmp_path)), "--from", "2023", "--to", "2024",
                                 "--db", str(db), "--out", str(tmp_path / "l")])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1
    assert "has changed since the epoch was committed" in r.output and not (tmp_path / "l").exists()


def test_area_outside_the_maps_is_an_error(db, tmp_path):
    far = area_file(tmp_path, shapely.box(X0 + 1000, Y0 + 1000, X0 + 1010, Y0 + 1010))
    r = CliRunner().invoke(app, ["loss", "--area", str(far), "--from", "2023", "--to", "2024", "--db", str(db)])
    assert r.exit_code == 2 and "the area has no mapped pixel" in r.output


def test_epoch_without_maps_is_a_one_line_error(db, tmp_path):
    out = make_output(tmp_path / "nomaps", squares(), [10.0, 20.0], scene_dates=("2025-07-01",))
    assert CliRunner().invoke(app, ["accounts", "commit", str(out), "--epoch", "2025", "--db", str(db)]).exit_code == 0
    r = CliRunner().invoke(app, ["loss", "--area", str(area_file(tmp_path)), "--from", "2024", "--to", "2025",
                                 "--db", str(db), "--out", str(tmp_path / "l")])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1
    assert "epoch '2025' records no carbon file" in r.output


def test_area_of_lines_is_an_error(db, tmp_path):
    p = tmp_path / "line.gpkg"
    gpd.GeoDataFrame(geometry=[shapely.LineString([(X0, Y0 - 40), (X0 + 10, Y0 - 30)])], crs=CRS).to_file(p)
    r = CliRunner().invoke(app, ["loss", "--area", str(p), "--from", "2023", "--to", "2024", "--db", str(db)])
    assert r.exit_code == 2 and "the features are not polygons (['LineString'])" in r.output


def test_carbon_for_a_boundary_from_the_latest_epoch_or_a_named_one(db, tmp_path):
    """The 'carbon for this boundary' answer: the latest epoch by default (2024), or the one named; the
    boundary as a file or as GeoJSON text in WGS 84 (as an upload form sends it)."""
    from forestcarbon.flows.boundary import boundary_carbon

    c1, c2, s1, s2, _, _ = hand(0.0)
    z = NormalDist().inv_cdf(0.95)
    geojson = gpd.GeoSeries([POLY], crs=CRS).to_crs("EPSG:4326").to_json()
    with SQLiteStore(db, create=False) as st:
        latest = boundary_carbon(st, geojson)
        named = boundary_carbon(st, str(area_file(tmp_path)), epoch="2023")
    assert latest["epoch"] == "2024" and named["epoch"] == "2023"
    assert latest["carbon_t"] == pytest.approx(c2, rel=1e-6) and latest["carbon_sd_t"] == pytest.approx(s2, rel=1e-6)
    assert latest["carbon_lo_t"] == pytest.approx(max(c2 - z * s2, 0), rel=1e-6)
    assert latest["carbon_hi_t"] == pytest.approx(c2 + z * s2, rel=1e-6)
    assert latest["co2e_t"] == pytest.approx(c2 * CO2_PER_C, rel=1e-9)
    assert named["carbon_t"] == pytest.approx(c1, rel=1e-6) and named["carbon_sd_t"] == pytest.approx(s1, rel=1e-6)
