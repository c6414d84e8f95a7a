"""Plots, model, map and projects stages on real sample data (../shared/data)."""

from __future__ import annotations

import dask.array as da
import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
import shapely
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.metrics import r2_score
from sklearn.model_selection import cross_val_predict

from forestcarbon.config import default_allometry_path
from forestcarbon.models.allometry import load_registry
from forestcarbon.models.coverage import CoverageModel, predict_coverage_block
from forestcarbon.models.estimator import AGBRegressor
from forestcarbon.models.intervals import fit_intervals
from forestcarbon.models.regressor import spatial_blocks
from forestcarbon.models.validation import cross_validate, make_splits
from forestcarbon.vector.overlay import project_parcel_shares
from forestcarbon.models.plots import plot_biomass

from .conftest import shared


def test_nouragues_plots_per_hectare():
    """BIOMASS NouraguesPlot.csv: four 1-ha plots; per-plot Mg/ha, stems/ha, basal area by hand."""
    df = pd.read_csv(shared("plots/BIOMASS/NouraguesPlot.csv"))
    trees = pd.DataFrame({"plot_id": df["plot"], "tree_id": np.arange(len(df)).astype(str),
                          "species": "tropical_measured_wd", "dbh_cm": df.D, "height_m": df.H, "wood_density_g_cm3": df.WD})
    ids = sorted(df["plot"].unique())
    plots = gpd.GeoDataFrame({"plot_id": ids, "area_ha": 1.0},
                             geometry=[shapely.box(i * 200, 0, i * 200 + 100, 100) for i in range(len(ids))], crs="EPSG:32622")
    t, p = plot_biomass(trees, plots, load_registry(default_allometry_path()))
    p = p.set_index("plot_id")
    agb = 0.0673 * (df.WD * df.H * df.D**2) ** 0.976 / 1000
    np.testing.assert_allclose(p.loc[ids, "agb_mg_ha"], agb.groupby(df["plot"]).sum().loc[ids], rtol=1e-9)
    np.testing.assert_allclose(p.loc[ids, "stems_ha"], df.groupby("plot").size().loc[ids], rtol=1e-12)
    ba = (np.pi / 4 * (df.D / 100) ** 2).groupby(df["plot"]).sum()
    np.testing.assert_allclose(p.loc[ids, "basal_area_m2_ha"], ba.loc[ids], rtol=1e-9)
    lorey = (np.pi / 4 * (df.D / 100) ** 2 * df.H).groupby(df["plot"]).sum() / ba
    np.testing.assert_allclose(p.loc[ids, "lorey_height_m"], lorey.loc[ids], rtol=1e-9)
    # tropical moist forest is above 125 t/ha: the IPCC high root-to-shoot ratio is used
    assert (p.agb_mg_ha > 125).all() and t.equation_id.str.endswith("ipcc2019_rs_high").all()


def test_block_cv_on_real_trees_matches_sklearn():
    """Model machinery on real trees: AGB from D, H, WD with 25 m spatial blocks inside the plots."""
    df = pd.read_csv(shared("plots/BIOMASS/NouraguesPlot.csv"))
    df["agb_mg"] = 0.0673 * (df.WD * df.H * df.D**2) ** 0.976 / 1000
    x = df.xRel + 1000 * pd.factorize(df["plot"])[0]
    groups = spatial_blocks(x, df.yRel, 25.0)
    splits = make_splits(len(df), groups=groups, folds=5, seed=0)
    est = AGBRegressor("hist_gradient_boosting")
    res = cross_validate(est, df[["D", "H", "WD"]], df.agb_mg.to_numpy(), splits, scheme="blocks 25 m")
    # the same folds through scikit-learn itself, with the estimator AGBRegressor wraps
    ref = cross_val_predict(HistGradientBoostingRegressor(**est.fit(df[["D", "H", "WD"]], df.agb_mg).estimator_.get_params()),
                            df[["D", "H", "WD"]].to_numpy(), df.agb_mg.to_numpy(), cv=splits)
    assert res.overall["r2"] == pytest.approx(r2_score(df.agb_mg, ref), rel=1e-9)
    assert res.overall["r2"] > 0.3  # heavy-tailed tropical AGB: a few giants dominate held-out blocks


def test_blockwise_prediction_equals_in_memory_on_real_scene():
    """Map stage machinery on the real Sentinel-2 scene: the coverage block over Dask chunks == one big predict."""
    folder = shared("satellite/sentinel2-l2a-29RKH-20200219")
    bands = []
    for b in ("B02", "B04", "B08"):
        with rasterio.open(folder / f"{b}.tif") as src:
            bands.append(src.read(1, window=rasterio.windows.Window(0, 0, 300, 260)).astype("float64") / 10_000)
    stack = np.stack(bands)
    stack[0, :7, :9] = np.nan
    rng = np.random.default_rng(0)
    X = stack.reshape(3, -1).T[rng.choice(300 * 260, 500, replace=False)]
    X = X[np.isfinite(X).all(axis=1)]
    y = 300 * (X[:, 2] - X[:, 1]) / (X[:, 2] + X[:, 1]) + rng.normal(0, 3, len(X))
    feats = ["blue", "red", "nir"]
    Xf = pd.DataFrame(X, columns=feats)
    est = AGBRegressor("hist_gradient_boosting").fit(Xf, y)
    iv = fit_intervals(Xf, y, make_splits(len(Xf), folds=5, seed=0), method="absolute",
                       point_estimator=AGBRegressor("hist_gradient_boosting"))
    model = CoverageModel("optical", est, iv, tuple(feats))
    lazy = da.from_array(stack, chunks=(3, 64, 50))
    got = lazy.map_blocks(predict_coverage_block, feats, [model], chunks=((5,), *lazy.chunks[1:]),
                          dtype="float32").compute()[0]
    flat = stack.reshape(3, -1).T
    ok = np.isfinite(flat).all(axis=1)
    ref = np.full(flat.shape[0], np.nan)
    ref[ok] = np.clip(est.estimator_.predict(flat[ok]), 0, None)  # scikit-learn's own predict, in memory
    np.testing.assert_allclose(got.ravel(), ref, rtol=1e-6, equal_nan=True)
    assert np.isnan(got[:7, :9]).all()


def test_project_shares_on_real_plot_circles():
    """lidR efi_plot.shp: 5 plot centres, 11.28 m radius (400 m2) as projects over a 10 m parcel grid."""
    pts = gpd.read_file(shared("lidar/lidR/efi_plot.shp"))
    circles = gpd.GeoDataFrame({"project_id": [f"E{i}" for i in range(len(pts))]},
                               geometry=pts.geometry.buffer(11.28, quad_segs=256), crs=pts.crs)
    x0, y0, x1, y1 = circles.total_bounds
    xs, ys = np.arange(np.floor(x0 / 10) * 10, x1, 10), np.arange(np.floor(y0 / 10) * 10, y1, 10)
    cells = [shapely.box(x, y, x + 10, y + 10) for x in xs for y in ys]
    parcels = gpd.GeoDataFrame({"parcel_id": [f"c{i}" for i in range(len(cells))]}, geometry=cells, crs=pts.crs)
    sh = project_parcel_shares(circles, parcels, "project_id", "parcel_id")
    per_project = sh.groupby("project_id").overlap_ha.sum()
    np.testing.assert_allclose(per_project, np.pi * 11.28**2 / 10_000, rtol=1e-4)
    np.testing.assert_allclose(sh.share, sh.overlap_ha / 0.01, rtol=1e-9)
