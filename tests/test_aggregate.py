"""Parcel / project / county carbon SD with correlated pixel errors (forestcarbon.models.aggregate) against
brute-force double sums, hand-computed correlations and a Monte Carlo simulation."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import chi2

from forestcarbon.errors import FieldError, ModelError
from forestcarbon.models.aggregate import (ErrorCorrelation, cells_from_coverage, error_correlation, interval,
                                           map_error_correlation, scaled_interval,
                                           level_linear, level_offset_sd,
                                           parcel_sd, total_sd, weight_field_sd, weighted_cells_sd,
                                           window_variances)
from forestcarbon.models.validation import ResidualVariogram
from scipy.integrate import quad


def _mean_over_square(kernel, area_m2: float) -> float:
    """Mean of kernel(distance) over pairs of independent uniform points in a square of area ``area_m2``,
    integrated against the distance density in the unit square (Ghosh 1951, Ann. Math. Stat. 22:... ;
    Philip 2007, KTH TRITA-MAT 07-MA-17): f(t) = 2t(π − 4t + t²) on [0, 1],
    2t(4√(t² − 1) − (t² + 2 − π) − 4 arcsec t) on [1, √2]."""
    side = math.sqrt(area_m2)

    def f(t):
        if t <= 1:
            return 2 * t * (math.pi - 4 * t + t * t)
        return 2 * t * (4 * math.sqrt(t * t - 1) - (t * t + 2 - math.pi) - 4 * math.acos(1 / t))

    assert quad(f, 0, 1)[0] + quad(f, 1, math.sqrt(2))[0] == pytest.approx(1.0, abs=1e-9)
    g = lambda t: float(kernel(side * t)) * f(t)  # noqa: E731
    return quad(g, 0, 1, epsabs=1e-12, limit=200)[0] + quad(g, 1, math.sqrt(2), epsabs=1e-12, limit=200)[0]


def _vg(model="exponential", c0=30.0, c1=70.0, a=150.0, lags=(210.0, 400.0)) -> ResidualVariogram:
    return ResidualVariogram(list(lags), [1.0] * len(lags), [10] * len(lags), model, c0, c1, a,
                             a * (3 if model == "exponential" else 1))


def _brute_k(rows, cols, res, model, a):
    """k(d_ij) for all cell pairs, written out from the textbook formulas."""
    y, x = rows * res, cols * res
    d = np.sqrt((y[:, None] - y[None, :]) ** 2 + (x[:, None] - x[None, :]) ** 2)
    if model == "exponential":
        return np.exp(-d / a)
    r = np.minimum(d / a, 1)
    return 1 - 1.5 * r + 0.5 * r**3


# ----------------------------------------------------------- variogram -> correlation
def test_correlation_from_variogram_by_hand():
    corr = error_correlation(_vg(c0=30, c1=70, a=150), support_m2=667, nugget="white")
    assert corr.nugget_share == pytest.approx(0.3)
    # C(h)/C(0) with C(h) = c0 + c1 - gamma(h): at h = 150 m exponential gamma = 30 + 70 (1 - e^-1)
    gamma = 30 + 70 * (1 - math.exp(-1))
    assert corr.rho(150.0) == pytest.approx((100 - gamma) / 100, rel=1e-12)
    assert corr.rho(150.0) == pytest.approx(float(_vg().covariance(150.0)) / 100, rel=1e-12)
    assert corr.rho(0.0) == 1.0
    assert corr.rho(1e-6) == pytest.approx(0.7, rel=1e-6)  # the nugget jump just off 0
    sph = error_correlation(_vg("spherical", 10, 30, 200), support_m2=400, nugget="white")
    assert sph.rho(100.0) == pytest.approx(0.75 * (1 - 1.5 * 0.5 + 0.5 * 0.125))
    assert sph.rho(250.0) == 0.0


def test_unresolved_nugget_by_hand():
    """Default reading: the nugget is a spherical structure reaching 0 at the first lag (210 m here)."""
    corr = error_correlation(_vg(c0=30, c1=70, a=150, lags=(210.0, 400.0)), support_m2=667)
    assert corr.nugget_range_m == 210.0 and corr.white_share == 0.0
    r = 105 / 210
    assert corr.rho(105.0) == pytest.approx(0.7 * math.exp(-105 / 150) + 0.3 * (1 - 1.5 * r + 0.5 * r**3), rel=1e-12)
    assert corr.rho(210.0) == pytest.approx(0.7 * math.exp(-210 / 150), rel=1e-12)
    assert corr.rho(1e-9) == pytest.approx(1.0, abs=1e-9)  # continuous at 0: no white part left


def test_unresolved_nugget_parcel_sd_double_sum():
    rng = np.random.default_rng(6)
    sd = rng.uniform(1, 20, size=(25, 25))
    corr = error_correlation(_vg(c0=60, c1=40, a=90, lags=(120.0,)), support_m2=667)
    r, c = np.nonzero(rng.uniform(size=(25, 25)) < 0.4)
    f = rng.uniform(0.1, 1, size=r.size)
    got = parcel_sd([0, r.size], r, c, f, sd, 10.0, corr).carbon_sd_t[0]
    d = 10.0 * np.hypot(r[:, None] - r[None, :], c[:, None] - c[None, :])
    q = np.minimum(d / 120.0, 1)
    K = 0.4 * np.exp(-d / 90.0) + 0.6 * (1 - 1.5 * q + 0.5 * q**3)
    w = f * 0.01 * sd[r, c]
    # σ is the SD at the 667 m² plots' support: between points the covariance is σσK / K̄(plot)
    kbar = _mean_over_square(lambda h: 0.4 * math.exp(-h / 90.0) + 0.6 * (1 - 1.5 * min(h / 120, 1)
                                                                           + 0.5 * min(h / 120, 1) ** 3), 667)
    assert got == pytest.approx(math.sqrt(w @ K @ w / kbar), rel=1e-4)


@pytest.mark.parametrize("nugget", ["unresolved", "white"])
def test_point_variance_factor_against_distance_density(nugget):
    """g = (1 − white share) / K̄(plot), K̄ integrated against the exact distance density of two points in a
    square (independent of the code's midpoint grid)."""
    corr = error_correlation(_vg(c0=50, c1=50, a=20, lags=(60.0, 400.0)), support_m2=667, nugget=nugget)
    if nugget == "white":
        expected = 1 / _mean_over_square(lambda h: math.exp(-h / 20), 667)
    else:
        expected = 1 / _mean_over_square(lambda h: 0.5 * math.exp(-h / 20) + 0.5 * (
            1 - 1.5 * min(h / 60, 1) + 0.5 * min(h / 60, 1) ** 3), 667)
    assert expected > 1.1  # a short structure: the plots averaged a good part of the point variance away
    assert corr.point_variance_factor == pytest.approx(expected, rel=3e-4)  # 48 x 48 midpoint grid
    assert corr.covariance(35.0) == pytest.approx(expected * corr.kernel(35.0), rel=3e-4)


def test_map_correlation_from_card():
    card = {"serving_order": ["lidar", "optical"], "models": {
        "lidar": {"support": {"area_m2": 667.0}, "residual_variogram": _vg(c0=0, c1=400, a=1114).to_dict()},
        "optical": {"support": {"area_m2": 500.0}, "residual_variogram": _vg(c0=870, c1=168, a=351).to_dict()},
        "unserved": {"support": {"area_m2": 667.0}, "residual_variogram": _vg(c0=0, c1=1, a=9999).to_dict()}}}
    name, corr = map_error_correlation(card)
    assert name == "optical"  # the wall-to-wall model, whatever the other's range
    assert corr.nugget_share == pytest.approx(870 / 1038) and corr.support_m2 == 500.0
    card["models"]["optical"]["residual_variogram"]["status"] = "practical range beyond the largest lag"
    assert map_error_correlation(card)[0] == "lidar"  # a fit marked ok is preferred
    card["models"]["lidar"]["residual_variogram"]["nugget"] = float("nan")  # a failed fit is skipped
    assert map_error_correlation(card)[0] == "optical"


def test_structure_below_first_lag_is_unresolved():
    """A fitted practical range (3 x 4.8 m) shorter than the first lag (290 m): the plots never saw it, so all
    of the variance is read as the unresolved structure of range 290 m."""
    corr = error_correlation(_vg(c0=1034, c1=378, a=4.8, lags=(290.0, 850.0)), support_m2=667)
    assert corr.nugget_share == 1.0 and corr.nugget_range_m == 290.0
    assert corr.rho(145.0) == pytest.approx(1 - 1.5 * 0.5 + 0.5 * 0.125, rel=1e-12)


def test_failed_variogram_refused():
    with pytest.raises(ModelError, match="unusable"):
        error_correlation(_vg(c0=float("nan")), support_m2=667)


# ------------------------------------------------------------- FFT vs double sum
@pytest.mark.parametrize("model,a", [("exponential", 35.0), ("spherical", 42.0), ("exponential", 5000.0)])
def test_window_variance_equals_double_sum(model, a):
    rng = np.random.default_rng(1)
    corr = ErrorCorrelation(model, a, 0.2, 667)
    win = rng.uniform(0, 2, size=(3, 7, 11))
    win[1, 2:5, 3:9] = 0
    for n in range(3):
        r, c = np.nonzero(np.ones((7, 11)))
        w = win[n].ravel()
        brute = corr.point_variance_factor * 0.8 * (w @ _brute_k(r, c, 10.0, model, a) @ w)
        assert window_variances(win, 10.0, corr)[n] == pytest.approx(brute, rel=1e-9)


def test_parcel_sd_equals_double_sum():
    """Irregular parcels with partial cells: the full formula written as an explicit double sum."""
    rng = np.random.default_rng(2)
    sd = rng.uniform(1, 20, size=(30, 40))
    sd[5, 5] = np.nan  # unmapped cell: left out
    parcels, res, corr = [], 10.0, ErrorCorrelation("exponential", 60.0, 0.35, 667.0)
    for p in range(12):
        n = int(rng.integers(1, 60))
        r0, c0 = rng.integers(0, 20), rng.integers(0, 25)
        cells = {(int(r0 + rng.integers(0, 10)), int(c0 + rng.integers(0, 15))) for _ in range(n)}
        if p == 3:
            cells |= {(5, 5)}
        rr, cc = map(np.array, zip(*sorted(cells)))
        parcels.append((rr, cc, rng.uniform(0.05, 1.0, size=rr.size)))
    parcels.append((np.array([], int), np.array([], int), np.array([])))  # a parcel with no cells
    offsets = np.concatenate([[0], np.cumsum([p[0].size for p in parcels])])
    rows, cols, frac = (np.concatenate([p[i] for p in parcels]) for i in range(3))
    got = parcel_sd(offsets, rows, cols, frac, sd, res, corr)
    ap = 667.0 / 10_000
    for p, (rr, cc, ff) in enumerate(parcels):
        s = sd[rr, cc] if rr.size else np.array([])
        ok = np.isfinite(s)
        rr, cc, ff, s = rr[ok], cc[ok], ff[ok], s[ok]
        a = ff * 0.01
        if rr.size == 0:
            assert got.carbon_sd_t[p] == 0
            continue
        K = _brute_k(rr, cc, res, "exponential", 60.0)
        var = corr.point_variance_factor * sum(a[i] * a[j] * s[i] * s[j] * 0.65 * K[i, j]
                                               for i in range(a.size) for j in range(a.size))
        var += sum(0.35 * s[i] ** 2 * ap * a[i] for i in range(a.size))
        assert got.carbon_sd_t[p] == pytest.approx(math.sqrt(var), rel=1e-9)
        assert got.carbon_sd_linear_t[p] == pytest.approx(float(np.sum(a * s)), rel=1e-12)
        assert got.covered_ha[p] == pytest.approx(a.sum(), rel=1e-12)


def test_weight_field_is_sum_of_parcels_with_cross_terms():
    """The county SD from the summed weight field = the double sum over all parcels' cells, cross terms too."""
    rng = np.random.default_rng(3)
    sd = rng.uniform(1, 20, size=(12, 9))
    area = rng.uniform(0, 0.01, size=sd.shape)
    area[:2] = 0
    corr = ErrorCorrelation("spherical", 45.0, 0.25, 500.0)
    r, c = np.nonzero(area > 0)
    a, s = area[r, c], sd[r, c]
    w = a * s * 0.75**0.5
    var = corr.point_variance_factor * (w @ _brute_k(r, c, 10.0, "spherical", 45.0) @ w) + np.sum(0.25 * s**2 * 0.05 * a)
    assert weight_field_sd(area, sd, 10.0, corr) == pytest.approx(math.sqrt(var), rel=1e-9)


def test_weighted_cells_sd_includes_cross_parcel_pairs():
    """Two parcels sharing a partial cell, weights 0.5 and 2: the double sum over every cell pair."""
    rng = np.random.default_rng(7)
    sd = rng.uniform(1, 9, size=(8, 8))
    corr = ErrorCorrelation("exponential", 40.0, 0.3, 600.0, nugget_range_m=100.0)
    r = np.array([1, 1, 2, 2, 2, 2, 5, 6])
    c = np.array([1, 2, 1, 2, 3, 3, 3, 3])
    f = np.array([1, 0.5, 1, 1, 0.4, 0.6, 1, 0.7])
    got = weighted_cells_sd([0, 5, 8], r, c, f, [0.5, 2.0], sd, 10.0, corr)
    a = f * 0.01 * np.array([0.5] * 5 + [2.0] * 3)
    w = a * sd[r, c]
    d = 10.0 * np.hypot(r[:, None] - r[None, :], c[:, None] - c[None, :])
    q = np.minimum(d / 100.0, 1)
    K = 0.7 * np.exp(-d / 40.0) + 0.3 * (1 - 1.5 * q + 0.5 * q**3)
    assert got == pytest.approx(math.sqrt(corr.point_variance_factor * (w @ K @ w)), rel=1e-9)
    white = ErrorCorrelation("exponential", 40.0, 0.3, 600.0)  # white nugget: g_p² of each parcel's own part
    g = np.array([0.5] * 5 + [2.0] * 3)
    var = white.point_variance_factor * 0.7 * (w @ np.exp(-d / 40.0) @ w) + np.sum(0.3 * sd[r, c] ** 2 * 0.06 * g**2 * f * 0.01)
    assert weighted_cells_sd([0, 5, 8], r, c, f, [0.5, 2.0], sd, 10.0, white) == pytest.approx(math.sqrt(var), rel=1e-9)


def test_cells_from_coverage_orders_by_parcel():
    off, r, c, f = cells_from_coverage([2, 0, 2, 1], [5, 6, 7, 8], [1, 2, 3, 4], [0.1, 0.2, 0.3, 0.4], 4)
    assert off.tolist() == [0, 1, 2, 4, 4]
    assert r.tolist() == [6, 8, 5, 7] and f.tolist() == [0.2, 0.4, 0.1, 0.3]


def test_bad_cells_named():
    sd = np.ones((3, 3))
    with pytest.raises(FieldError, match="cell 2 .row 3, col 0. lies outside"):
        parcel_sd([0, 2], [0, 3], [0, 0], [1, 1], sd, 10.0, ErrorCorrelation("exponential", 10, 0, 100))
    with pytest.raises(FieldError, match="fraction 1.5"):
        parcel_sd([0, 1], [0], [0], [1.5], sd, 10.0, ErrorCorrelation("exponential", 10, 0, 100))


# ---------------------------------------------------------------- Monte Carlo
@pytest.mark.parametrize("nugget_range_m", [None, 60.0])
def test_monte_carlo_parcel_sum_sd(nugget_range_m):
    """Simulate pixel errors with covariance σ_iσ_j(1−ν)k(d_ij) + nugget (Cholesky), sum them over a parcel
    and compare the sample variance with parcel_sd's.  With N independent draws, (N−1)s²/σ² ~ χ²(N−1): the
    check uses its 0.0005 and 0.9995 quantiles (a false failure 1 time in 1000; the seed is fixed)."""
    rng = np.random.default_rng(4)
    H, W, res = 12, 14, 10.0
    sd = rng.uniform(2, 15, size=(H, W))
    r, c = np.nonzero(np.ones((H, W)))
    inside = (r - 6) ** 2 / 30 + (c - 7) ** 2 / 40 <= 1  # an elliptical parcel
    frac = np.where(inside, 1.0, 0.0)
    frac[(r == 6) & (c == 0)] = 0.4
    keep = frac > 0
    rr, cc, ff = r[keep], c[keep], frac[keep]
    a, s = ff * 0.01, sd[rr, cc]
    nu, ap = 0.3, 0.0667
    k = np.exp(-np.hypot((rr[:, None] - rr) * res, (cc[:, None] - cc) * res) / 80.0)
    d = np.hypot((rr[:, None] - rr) * res, (cc[:, None] - cc) * res)
    # σ is the SD at the plots' support (A_p = 667 m²): the structured covariance between points is σσK / K̄(A_p)
    if nugget_range_m is None:
        # the nugget as white noise at its intensity: the covered part a_i of cell i has variance ν σ_i² A_p / a_i
        g = 1 / _mean_over_square(lambda h: math.exp(-h / 80.0), ap * 10_000)
        cov = np.outer(s, s) * (1 - nu) * k * g + np.diag(nu * s**2 * ap / a)
    else:  # the nugget as a spherical structure of range 60 m
        q = np.minimum(d / nugget_range_m, 1)
        g = 1 / _mean_over_square(lambda h: (1 - nu) * math.exp(-h / 80.0) + nu * (
            1 - 1.5 * min(h / nugget_range_m, 1) + 0.5 * min(h / nugget_range_m, 1) ** 3), ap * 10_000)
        cov = np.outer(s, s) * ((1 - nu) * k + nu * (1 - 1.5 * q + 0.5 * q**3)) * g
    L = np.linalg.cholesky(cov)
    N = 4000
    e = L @ rng.standard_normal((a.size, N))
    totals = a @ e
    sample_var = totals.var(ddof=1)
    model = parcel_sd([0, a.size], rr, cc, ff, sd, res,
                      ErrorCorrelation("exponential", 80.0, nu, ap * 10_000, nugget_range_m=nugget_range_m))
    v = model.carbon_sd_t[0] ** 2
    lo, hi = chi2.ppf([0.0005, 0.9995], N - 1) / (N - 1)
    assert lo * v <= sample_var <= hi * v
    assert abs(totals.mean()) < 3.5 * math.sqrt(v / N)


# -------------------------------------------------------------------- intervals
def test_interval_normal_and_clipped():
    lo, hi = interval([100.0, 5.0], [10.0, 10.0])
    assert lo[0] == pytest.approx(100 - 1.6448536269514722 * 10) and hi[0] == pytest.approx(100 + 16.448536269514722)
    assert lo[1] == 0.0


def test_scaled_interval_by_hand():
    sd = pd.DataFrame({"carbon_sd_t": [4.0, 1.0, 0.0], "covered_ha": [1.5, 0.0, 2.0]})
    out = scaled_interval([30.0, 5.0, 0.0], [2.0, 1.0, 2.0], sd)
    assert out.carbon_sd_t[0] == pytest.approx(4.0 * 2.0 / 1.5)  # half a hectare unmapped: filled at the mean
    assert out.carbon_upper_t[0] == pytest.approx(30 + 1.6448536269514722 * 16 / 3)
    assert np.isnan(out.carbon_sd_t[1]) and out.carbon_lower_t[2] == 0 and out.carbon_upper_t[2] == 0


def test_level_offset_sd_is_standard_error_of_mean_residual():
    e = np.array([3.0, -1.0, 4.0, 1.0, -5.0, 9.0, 2.0, -6.0])
    cv = {"rmse": float(np.sqrt(np.mean(e**2))), "bias": float(e.mean()), "n": e.size}
    assert level_offset_sd(cv) == pytest.approx(np.std(e, ddof=1) / np.sqrt(e.size), rel=1e-12)


def test_level_linear_by_hand():
    ratio = np.array([[0.5, 0.6], [np.nan, 0.0]])
    got = level_linear([0, 2, 3], [0, 0, 1], [0, 1, 0], [1.0, 0.5, 1.0], ratio, 10.0)
    assert got.tolist() == pytest.approx([0.01 * 0.5 + 0.005 * 0.6, 0.0])


# -------------------------------------------------------------------- total_sd
def test_total_sd_double_sum_over_parcels():
    rows = pd.DataFrame({"parcel_id": ["a", "b", "c"], "weight": [1.0, 0.5, 0.25], "carbon_t": [10.0, 20, 30],
                         "carbon_sd_t": [2.0, 3.0, 4.0], "x": [0.0, 100, 0], "y": [0.0, 0, 300],
                         "carbon_sd_linear_t": [1.5, 2.5, 3.5]})
    corr = ErrorCorrelation("exponential", 100.0, 0.4, 667)
    g, sd, L = np.array([1, 0.5, 0.25]), np.array([2.0, 3, 4]), np.array([1.5, 2.5, 3.5])
    d = {(0, 1): 100.0, (0, 2): 300.0, (1, 2): math.hypot(100, 300)}
    var = float(np.sum((g * sd) ** 2)) + 2 * sum(g[i] * g[j] * L[i] * L[j] * corr.point_variance_factor * 0.6 * math.exp(-dd / 100)
                                                 for (i, j), dd in d.items())
    assert total_sd(rows, corr) == pytest.approx(math.sqrt(var), rel=1e-12)
    rows["carbon_sd_level_t"] = [0.5, 1.0, 0.0]  # a shared level offset: fully correlated between parcels
    assert total_sd(rows, corr) == pytest.approx(math.sqrt(var + 2 * 1.0 * 0.5 * 0.5 * 1.0), rel=1e-12)


def test_total_sd_matches_pixel_grid_for_small_parcels():
    """Parcels of one cell each: total_sd with L_p from parcel_sd equals the pixel-grid county SD exactly."""
    rng = np.random.default_rng(5)
    sd = rng.uniform(1, 10, size=(6, 6))
    corr = ErrorCorrelation("exponential", 30.0, 0.2, 667)
    r, c = np.nonzero(np.ones((6, 6)))
    ps = parcel_sd(np.arange(37), r, c, np.ones(36), sd, 10.0, corr)
    rows = pd.DataFrame({"parcel_id": np.arange(36), "weight": 1.0, "carbon_t": 1.0, "carbon_sd_t": ps.carbon_sd_t,
                         "carbon_sd_linear_t": ps.carbon_sd_linear_t, "x": c * 10.0, "y": -r * 10.0})
    assert total_sd(rows, corr) == pytest.approx(weight_field_sd(np.full((6, 6), 0.01), sd, 10.0, corr), rel=1e-9)


def test_total_sd_names_bad_row():
    rows = pd.DataFrame({"parcel_id": ["a", "b"], "weight": [1.0, -1], "carbon_t": [1.0, 1], "carbon_sd_t": [1.0, 1],
                         "x": [0.0, 1], "y": [0.0, 1]})
    with pytest.raises(FieldError, match=r"row 2 \(parcel b\): weight = -1"):
        total_sd(rows, ErrorCorrelation("exponential", 10, 0, 100))


def test_parcel_uncertainty_level_terms_by_hand():
    """Two parcels on a 2 x 2 grid of 10 m cells (0.01 ha): parcel 0 holds cells (0,0) whole and (0,1) half,
    served by models 1 and 2; parcel 1 holds (1,1) whole, model 2.  Level term of model m = Σ a_i r_i s_m over
    the cells m serves; the total SD is √(parcel_sd² + Σ_m level_m²)."""
    from forestcarbon.models.aggregate import error_correlation, parcel_sd, parcel_uncertainty

    offsets = np.array([0, 2, 3])
    rows, cols, frac = np.array([0, 0, 1]), np.array([0, 1, 1]), np.array([1.0, 0.5, 1.0])
    sd = np.array([[4.0, 2.0], [1.0, 3.0]])
    ratio = np.array([[0.5, 0.4], [0.5, 0.45]])
    source = np.array([[1, 2], [2, 2]])
    corr = error_correlation({"model": "exponential", "nugget": 10.0, "partial_sill": 30.0, "range_param_m": 50.0,
                              "practical_range_m": 150.0, "lag_m": [100.0], "gamma": [1.0], "pairs": [10],
                              "status": "ok"}, 667.0)
    got = parcel_uncertainty(offsets, rows, cols, frac, sd, ratio, source, 10.0, corr, {1: 2.0, 2: 3.0})
    lev1 = np.array([0.01 * 1.0 * 0.5 * 2.0, 0.0])
    lev2 = np.array([0.01 * 0.5 * 0.4 * 3.0, 0.01 * 1.0 * 0.45 * 3.0])
    np.testing.assert_allclose(got["carbon_sd_level_1_t"], lev1, rtol=1e-12)
    np.testing.assert_allclose(got["carbon_sd_level_2_t"], lev2, rtol=1e-12)
    base = parcel_sd(offsets, rows, cols, frac, sd, 10.0, corr)["carbon_sd_t"].to_numpy()
    np.testing.assert_allclose(got["carbon_sd_mapped_t"], np.sqrt(base**2 + lev1**2 + lev2**2), rtol=1e-12)
    np.testing.assert_allclose(got["covered_ha"], [0.015, 0.01], rtol=1e-12)
