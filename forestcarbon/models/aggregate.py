"""Uncertainty of carbon totals over parcels, projects and the county, with spatially correlated pixel errors.

A total over an area is T = Σ_i a_i c_i (a_i: the area of pixel i the area covers, ha; c_i: carbon density,
t C/ha).  With pixel errors of SD σ_i (the map's ``carbon_sd`` layer) that are correlated in space,

    Var(T) = Σ_i Σ_j a_i a_j σ_i σ_j ρ(d_ij).

Correlation.  ρ comes from the residual variogram of the out-of-fold plot residuals
(:class:`~.validation.ResidualVariogram`: nugget c0, partial sill c1, structure k(h) exponential exp(−h/a) or
spherical 1 − 1.5 h/a + 0.5 (h/a)³ for h <= a, 0 beyond; Webster & Oliver 2007, Geostatistics for
Environmental Scientists, 2nd ed., §6.3), as in Araza et al. 2022 (Remote Sens. Environ. 272:112917: spatial
correlation of cross-validated residuals assessed before pixel predictions are aggregated to accounting
units).  Only the variogram's SHAPE is used; the variance level is each pixel's own σ_i (from its calibrated
90 % interval, ``intervals.py``).  At lags the plots observed, ρ(h) = C(h)/C(0) = (1 − ν) k(h) with
ν = c0 / (c0 + c1) the nugget share.

The nugget.  c0 is the variogram extrapolated below the shortest lag with plot pairs (the first lag,
``lag_m[0]``: ~200-300 m on the synthetic county, where no two plots are closer than 200 m).  Below that lag
the plots say nothing, yet parcels (1.8 ha ~ 130 m across) lie entirely below it.  Two readings:

* ``nugget="unresolved"`` (default): the nugget is structure shorter than the first lag h₁: a spherical
  correlation s(h) of range h₁ (0 at and beyond h₁, as the variogram sees it; a valid correlation in 2-D),
  ρ(h) = (1 − ν) k(h) + ν s(h).  Stand-level errors (a stand the features misjudge is misjudged in all its
  pixels) look like nugget to plots in different stands and are correlated inside a parcel.  The
  plots saw this structure averaged over their footprint (667 m², mean distance between its points ~14 m,
  where s ≈ 0.93 for a 285 m range), so its point-support sill is ~7 % above c0 (3.5 % in SD): corrected by
  the point-variance factor below.
* ``nugget="white"``: white noise.  The variogram was fitted to plot means (support A_p, 667 m²), so c0 is
  the variance of white noise averaged over A_p; averaged over an area A it has variance ∝ 1/A
  (regularisation of a pure nugget: Journel & Huijbregts 1978, Mining Geostatistics, §II.C; Webster &
  Oliver 2007 §10.1): intensity ν σ² A_p, so the covered part a_i of pixel i adds ν σ_i² A_p a_i to Var(T)
  (not ν σ_i² a_i², the "nugget on the diagonal at pixel support", 6.7 times less for 10 m pixels).

When the fitted structure's practical range is itself shorter than the first lag (a fit that put its
partial sill below every lag, e.g. range 4.8 m), it is unresolved too: ν = 1.  On the synthetic county
(``benchmarks/check_parcel_intervals.py``, README) the white reading puts 60 % (seed 0) and 20 % (seed 1)
of forest parcels' true carbon inside their 90 % interval, the unresolved reading 87 % and 85 %.

The level.  The covariance above has no part shared by all pixels, yet the map's level is calibrated on n
plots: every pixel a model serves shares its error of level, SD s_e/√n (:func:`level_offset_sd`).  A
parcel hardly feels it; a county total is dominated by it (SD 8,800 of 10,400 t C on the synthetic
county).  It enters as a fully correlated term, √(SD² + (Σ_i a_i r_i · s_e/√n)²) (:func:`level_linear`),
per serving model, the models' offsets independent.

Support.  σ_i is calibrated on plots (conformal intervals on plot AGB), so it is the SD at the plots'
support; the cells are summed as points.  The structured part of a point's variance is larger than at the
plot's support by g = (1 − ν_w) / K̄(A_p), K̄(A_p) the mean of K over pairs of points in a plot
(:attr:`ErrorCorrelation.point_variance_factor`; Journel & Huijbregts 1978 §II.C).

Whether the plots resolved any structure at all is decided when the variogram is fitted
(:func:`~.validation.residual_variogram`: an F test against a pure nugget); without one the partial sill is
0, ν = 1, and all the correlation is the unresolved nugget's.  On the synthetic county both served models'
variograms are flat between the lags (p 0.46 and 0.58, seed 0).

So Var(T) = g wᵀKw + Σ_i ν_w σ_i² A_p a_i with w_i = a_i σ_i, K_ij = ρ(d_ij) less the white part on the
diagonal (K(0) = 1 − ν_w), ν_w = ν for the white reading, else 0 (:meth:`ErrorCorrelation.kernel`,
:meth:`ErrorCorrelation.covariance` = g K).

Computation.  d_ij on a grid depends only on the row/column offset, so wᵀKw is an exact double sum computed
through the FFT: zero-padded to >= 2n − 1 per axis the circular autocorrelation of w is the linear one, and
by Parseval wᵀKw = Σ_f |ŵ(f)|² K̂(f) / N (:func:`window_variances`), in batches of parcels whose windows share
a padded size (:func:`parcel_sd`: ~1.6 s per 20,000 parcels of 160 cells on this machine,
``benchmarks/bench_aggregate.py``).  A project or the county is one window of all its cells with their
weights (:func:`weighted_cells_sd`, :func:`weight_field_sd`), cross-parcel pairs included.

Intervals (:func:`interval`).  A total's error is taken as normal with mean 0 and the SD above; the 90 %
interval is T ± z₀.₉₅ SD with the lower end clipped at 0 (carbon is not negative).

Sums of parcels from parcel rows alone (:func:`total_sd`; projects: weights are parcel shares) use
Cov(T_p, T_q) ≈ L_p L_q g K(d_pq) for p ≠ q at centroid distance d_pq, L_p = Σ_i a_i σ_i
(``carbon_sd_linear_t`` from :func:`parcel_sd`): exact when both parcels are small against the correlation
ranges; for adjacent parcels the centroid distance overstates their cells' distances and the SD comes out
low (4-7 % on the synthetic county's projects): prefer :func:`weighted_cells_sd` where the cells are at hand.
Without ``carbon_sd_linear_t``, L_p = carbon_sd_t.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.fft
from scipy.stats import norm

from ..errors import FieldError, ModelError

__all__ = ["ErrorCorrelation", "error_correlation", "map_error_correlation", "structure", "offset_kernel",
           "window_variances", "parcel_sd", "weighted_cells_sd", "weight_field_sd", "level_offset_sd", "level_linear",
           "interval", "scaled_interval", "total_sd", "cells_from_coverage"]


def structure(h, model: str, range_param_m: float) -> np.ndarray:
    """k(h): the variogram's structured correlation, 1 at h = 0: exponential exp(−h/a); spherical
    1 − 1.5 h/a + 0.5 (h/a)³ for h <= a and 0 beyond (Webster & Oliver 2007 §6.3)."""
    h = np.abs(np.asarray(h, dtype="float64"))
    if model == "exponential":
        return np.exp(-h / range_param_m)
    if model == "spherical":
        r = np.minimum(h / range_param_m, 1.0)
        return 1.0 - 1.5 * r + 0.5 * r**3
    raise ModelError(f"variogram model must be 'exponential' or 'spherical', not {model!r}")


@dataclass(frozen=True)
class ErrorCorrelation:
    """Pixel-error correlation: structure ``model``/``range_param_m`` (m), nugget share ν, the support area (m²)
    of the data the variogram was fitted on (plot area), and how the nugget is read: ``nugget_range_m`` None
    for white noise (regularised to the support), else a spherical structure of that range (module
    docstring)."""

    model: str
    range_param_m: float
    nugget_share: float
    support_m2: float
    nugget_range_m: float | None = None

    @property
    def white_share(self) -> float:
        """The share of the pixel variance that is white noise (ν when the nugget is read as white, else 0)."""
        return self.nugget_share if self.nugget_range_m is None else 0.0

    def kernel(self, h) -> np.ndarray:
        """K(h): correlation of the non-white part between points h metres apart, K(0) = 1 − white share:
        (1 − ν) k(h) [+ ν s(h), s spherical of range ``nugget_range_m``]."""
        h = np.asarray(h, dtype="float64")
        out = (1.0 - self.nugget_share) * structure(h, self.model, self.range_param_m)
        if self.nugget_range_m is not None:
            out = out + self.nugget_share * structure(h, "spherical", self.nugget_range_m)
        return out

    @property
    def point_variance_factor(self) -> float:
        """g = (1 − white share) / K̄(A_p): the pixel SDs σ_i are calibrated on plots, i.e. at the plots'
        support A_p (``support_m2``), where the structured part of the variance is σ²_pt K̄(A_p), K̄(A) the
        mean of K over pairs of points in A (a square of area A_p, as the 0.0667 ha plots of China's forest
        inventories; point-support regularisation, Journel & Huijbregts 1978 §II.C; Webster & Oliver 2007
        §10.1).  Between points (10 m cells, taken at their centres) the structured covariance is
        g σ_i σ_j K(d), not σ_i σ_j K(d): ~7 % more variance for a 285 m spherical structure and 667 m²
        plots.  Mean over a 48 x 48 midpoint grid of the square."""
        return point_variance_factor(self)

    def covariance(self, h) -> np.ndarray:
        """g K(h): the structured covariance of point errors in units of σ_i σ_j at the plots' support (what
        the aggregation sums)."""
        return self.point_variance_factor * self.kernel(h)

    def rho(self, h) -> np.ndarray:
        """ρ(h) = C(h)/C(0) at point support: 1 at h = 0, K(h) for h > 0."""
        h = np.asarray(h, dtype="float64")
        return np.where(h > 0, self.kernel(h), 1.0)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def mean_kernel_over_square(corr: ErrorCorrelation, area_m2: float, n: int = 48) -> float:
    """K̄: the mean of ``corr.kernel`` over pairs of points in a square of ``area_m2``, on an n x n midpoint
    grid (offset (i, j) cells apart occurs (n − |i|)(n − |j|) times among the n⁴ ordered pairs)."""
    step = np.sqrt(float(area_m2)) / n
    k = np.arange(-(n - 1), n)
    count = (n - np.abs(k)).astype("float64")
    h = step * np.hypot(k[:, None], k[None, :])
    return float(np.sum(corr.kernel(h) * count[:, None] * count[None, :]) / float(n) ** 4)


def point_variance_factor(corr: ErrorCorrelation) -> float:
    """See :attr:`ErrorCorrelation.point_variance_factor`."""
    structured = 1.0 - corr.white_share
    if structured <= 0:
        return 1.0
    return structured / mean_kernel_over_square(corr, corr.support_m2)


NUGGETS = ("unresolved", "white")


def error_correlation(variogram, support_m2: float, nugget: str = "unresolved") -> ErrorCorrelation:
    """The correlation model of a fitted :class:`~.validation.ResidualVariogram` (or its ``to_dict``) whose
    residuals are means over ``support_m2`` (the plots' area).  ``nugget``: ``"unresolved"`` (default) reads
    the nugget as structure below the shortest lag the plots observed (spherical, range = the first lag's
    mean pair distance ``lag_m[0]``), and so the partial sill too when the fitted practical range is shorter
    than that lag (a structure the plots never saw: ν = 1); ``"white"`` as white noise at the plots' support.
    Refuses a failed fit."""
    v = variogram if isinstance(variogram, dict) else variogram.to_dict()
    c0, c1, a = (float(v[k]) for k in ("nugget", "partial_sill", "range_param_m"))
    if not (np.isfinite(c0) and np.isfinite(c1) and np.isfinite(a) and c0 >= 0 and c1 >= 0 and c0 + c1 > 0 and a > 0):
        raise ModelError(f"residual variogram unusable for aggregation: nugget {c0}, partial sill {c1}, range {a} m "
                         f"({v.get('status', '')})")
    if not support_m2 > 0:
        raise ModelError(f"variogram support area must be > 0 m², not {support_m2}")
    if nugget not in NUGGETS:
        raise ModelError(f"nugget must be one of {list(NUGGETS)}, not {nugget!r}")
    structure(0.0, v["model"], a)  # refuses an unknown model
    first = None
    if nugget == "unresolved":
        lags = [float(x) for x in (v.get("lag_m") or []) if np.isfinite(x) and x > 0]
        if not lags:
            raise ModelError("residual variogram has no lags: the nugget's range is unknown (use nugget='white')")
        first = lags[0]
        practical = float(v.get("practical_range_m", np.nan))
        if np.isfinite(practical) and practical < first:  # the whole fitted structure lies below the first lag
            return ErrorCorrelation(str(v["model"]), a, 1.0, float(support_m2), first)
    return ErrorCorrelation(str(v["model"]), a, c0 / (c0 + c1), float(support_m2), first)


def map_error_correlation(card: dict, nugget: str = "unresolved") -> tuple[str, ErrorCorrelation]:
    """(model name, correlation) for a whole map from its model card (``model/model_card.json``) at the support
    of its plots (``support.area_m2``): the variogram of the served model that serves the map wall to wall
    (the last in ``serving_order``: the optical model, ~85 % of the forest area on the synthetic county),
    when its fit is usable and its status is ``ok``; else the first such fit of the other served models
    (from the last); else any usable fit.  One correlation for all pixels keeps the covariance positive
    definite where LiDAR- and optically-served pixels meet; each pixel keeps its own SD."""
    found = []
    for name in reversed(card.get("serving_order", [])):
        m = card["models"][name]
        v = m.get("residual_variogram")
        if not v:
            continue
        try:
            found.append((v.get("status") == "ok", name, error_correlation(v, float(m["support"]["area_m2"]), nugget)))
        except ModelError:
            continue
    if not found:
        raise ModelError(f"model card {card.get('model_id', '')}: no served model has a usable residual variogram")
    ok = [f for f in found if f[0]]
    _, name, corr = (ok or found)[0]
    return name, corr


def offset_kernel(shape: tuple[int, int], res_m: float, corr: ErrorCorrelation, dtype="float64") -> np.ndarray:
    """g K (:meth:`ErrorCorrelation.covariance`) at every row/column offset of a circular grid of ``shape`` (offsets past the middle wrap to negative),
    as used for the FFT convolution; only offsets |d| < n/2 along each axis are meaningful.  Built in row
    blocks of ~1 M values (a county-sized grid holds no float64 temporaries)."""
    P, Q = shape
    di = np.fft.fftfreq(P, 1.0 / P)  # 0, 1, ..., -1
    dj = np.fft.fftfreq(Q, 1.0 / Q)[None, :]
    out = np.empty((P, Q), dtype=dtype)
    step = max(1, 1_000_000 // Q)
    for i in range(0, P, step):
        out[i:i + step] = corr.covariance(res_m * np.hypot(di[i:i + step, None], dj))
    return out


_SIZES = np.array(sorted({int(b * 2**e) for e in range(0, 16) for b in (2, 3)}))  # 2, 3, 4, 6, 8, 12, ...


def _padded_sizes(n) -> np.ndarray:
    """Smallest sizes in 2^k or 3·2^k that are >= 2n − 1 (a linear convolution through a circular one)."""
    return _SIZES[np.searchsorted(_SIZES, np.maximum(2 * np.asarray(n) - 1, 1))]


def _padded(n: int) -> int:
    return int(_padded_sizes(n))


def window_variances(windows: np.ndarray, res_m: float, corr: ErrorCorrelation, *, dtype="float64",
                     max_batch_values: int = 4_000_000) -> np.ndarray:
    """wᵀKw for each weight window in ``windows`` ((n, H, W) or (H, W); NaN counts as 0), with
    K_ij = ``corr.covariance``(d_ij) (g K), d the distance between cell centres on a square grid of ``res_m`` metres:
    the exact double sum.  Zero-padded to P >= 2H − 1, Q >= 2W − 1 the circular autocorrelation of w equals
    the linear one, so by Parseval wᵀKw = Σ_f |ŵ(f)|² K̂(f) / (PQ) over the 2-D DFT (K̂ real: K is even);
    with the real FFT each column but the first (and the Nyquist one) stands for two.  Batched
    ``max_batch_values`` padded values at a time; ``dtype`` float32 halves the memory of a county-sized
    window (about 2 × 4PQ bytes then) at ~1e-6 relative precision."""
    w = np.asarray(windows, dtype=dtype)
    single = w.ndim == 2
    w = np.nan_to_num(w[None] if single else w)
    n, H, W = w.shape
    P, Q = scipy.fft.next_fast_len(2 * H - 1, real=True), scipy.fft.next_fast_len(2 * W - 1, real=True)
    khat = scipy.fft.rfft2(offset_kernel((P, Q), res_m, corr, dtype), workers=-1, overwrite_x=True).real.copy()
    khat *= np.where((np.arange(khat.shape[1]) == 0) | ((Q % 2 == 0) & (np.arange(khat.shape[1]) == Q // 2)), 1, 2)
    khat /= P * Q
    out = np.empty(n)
    step = max(1, max_batch_values // (P * Q))
    for s in range(0, n, step):
        spec = scipy.fft.rfft2(w[s:s + step], s=(P, Q), workers=-1)
        power = np.abs(spec)
        del spec
        power *= power
        out[s:s + step] = np.einsum("nij,ij->n", power, khat, dtype="float64")
    return out[0] if single else out


def weighted_cells_sd(offsets, rows, cols, fraction, parcel_weight, sd_mg_ha: np.ndarray, res_m: float,
                      corr: ErrorCorrelation, *, dtype="float64") -> float:
    """SD (t C) of Σ_p g_p T_p, T_p as in :func:`parcel_sd` (cells as there, ``parcel_weight`` g_p per parcel,
    e.g. a project's parcel shares, or 1 for the county; the same parcel-to-area scaling can be folded into
    g_p): the exact double sum over all cells of all parcels, cross-parcel pairs included, on the bounding
    window of the cells with g_p > 0."""
    rows, cols = np.asarray(rows, dtype="int64"), np.asarray(cols, dtype="int64")
    fraction, offsets = np.asarray(fraction, dtype="float64"), np.asarray(offsets, dtype="int64")
    sd_mg_ha = np.asarray(sd_mg_ha)
    _check_cells(offsets, rows, cols, fraction, sd_mg_ha.shape)
    g = np.asarray(parcel_weight, dtype="float64")
    if g.shape != (offsets.size - 1,) or not np.all(np.isfinite(g)) or np.any(g < 0):
        raise FieldError(f"parcel weights must be {offsets.size - 1} finite values >= 0")
    gc = np.repeat(g, np.diff(offsets))
    m = gc > 0
    if not m.any():
        return 0.0
    r, c = rows[m], cols[m]
    r0, c0 = r.min(), c.min()
    shape = (int(r.max() - r0 + 1), int(c.max() - c0 + 1))
    a = fraction[m] * res_m * res_m / 10_000
    sigma = np.asarray(sd_mg_ha, dtype="float64")[r, c]
    sigma = np.where(np.isfinite(sigma), sigma, 0.0)
    w = np.bincount((r - r0) * shape[1] + (c - c0), weights=gc[m] * a * sigma,
                    minlength=shape[0] * shape[1]).reshape(shape)
    structured = max(float(window_variances(w, res_m, corr, dtype=dtype)), 0.0)
    # white part: a parcel's share g of its own white noise (disjoint parts of a cell are independent)
    white = float(np.sum(corr.white_share * sigma**2 * corr.support_m2 / 10_000 * gc[m] ** 2 * a))
    return float(np.sqrt(structured + white))


def _check_cells(offsets, rows, cols, fraction, shape) -> None:
    offsets = np.asarray(offsets)
    if offsets.ndim != 1 or offsets.size < 1 or offsets[0] != 0 or np.any(np.diff(offsets) < 0) \
            or offsets[-1] != len(rows):
        raise FieldError(f"cell offsets must start at 0, not decrease and end at the number of cells ({len(rows)})")
    if not (len(rows) == len(cols) == len(fraction)):
        raise FieldError(f"rows, cols and fraction differ in length: {len(rows)}, {len(cols)}, {len(fraction)}")
    bad = (rows < 0) | (rows >= shape[0]) | (cols < 0) | (cols >= shape[1])
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise FieldError(f"cell {k + 1} (row {rows[k]}, col {cols[k]}) lies outside the SD raster {shape}")
    f = np.asarray(fraction, dtype="float64")
    badf = ~np.isfinite(f) | (f < 0) | (f > 1 + 1e-9)
    if badf.any():
        k = int(np.flatnonzero(badf)[0])
        raise FieldError(f"cell {k + 1}: coverage fraction {f[k]} is not in [0, 1]")


def parcel_sd(offsets, rows, cols, fraction, sd_mg_ha: np.ndarray, res_m: float, corr: ErrorCorrelation, *,
              max_batch_values: int = 4_000_000) -> pd.DataFrame:
    """SD (t C) of T_p = Σ_i a_i c_i over each parcel's cells.

    Cells as a zonal engine gives them (computed once, reused for every raster): parcel p owns cells
    ``offsets[p]:offsets[p+1]`` of ``rows``, ``cols`` (indices into ``sd_mg_ha``, the carbon SD raster or a
    window of it) and ``fraction`` (share of the cell the parcel covers, 0-1).  Cells whose SD is NaN
    (unmapped) are left out; ``covered_ha`` says how much area remains (a total scaled to the parcel's full
    area, as the pipeline's ``carbon_t`` is, scales its SD by the same ratio).  A cell listed twice for a
    parcel counts with its fractions summed.  Returns, per parcel in order, ``carbon_sd_t`` (√Var(T)),
    ``carbon_sd_structured_t`` (√ of wᵀKw), ``carbon_sd_nugget_t`` (the white part; 0 unless
    ``corr.nugget_range_m`` is None), ``carbon_sd_linear_t`` (L_p = Σ a_i σ_i, for :func:`total_sd`) and
    ``covered_ha``.  Parcels are batched by the padded size of their cells' bounding window; a parcel
    spanning a whole county makes one large FFT (memory ~ 3 × 4 × rows × cols × 8 bytes)."""
    rows, cols = np.asarray(rows, dtype="int64"), np.asarray(cols, dtype="int64")
    fraction = np.asarray(fraction, dtype="float64")
    offsets = np.asarray(offsets, dtype="int64")
    sd_mg_ha = np.asarray(sd_mg_ha)
    _check_cells(offsets, rows, cols, fraction, sd_mg_ha.shape)
    n = offsets.size - 1
    sigma = sd_mg_ha[rows, cols].astype("float64")
    if np.any(sigma[np.isfinite(sigma)] < 0):
        raise FieldError("the SD raster holds negative values")
    ok = np.isfinite(sigma)
    px_ha = res_m * res_m / 10_000
    a = np.where(ok, fraction * px_ha, 0.0)
    sigma = np.where(ok, sigma, 0.0)
    nu, ap_ha = corr.white_share, corr.support_m2 / 10_000
    w = a * sigma
    pid = np.repeat(np.arange(n), np.diff(offsets))
    nugget = np.bincount(pid, weights=nu * sigma**2 * ap_ha * a, minlength=n)
    linear = np.bincount(pid, weights=w, minlength=n)
    covered = np.bincount(pid, weights=a, minlength=n)
    structured = np.zeros(n)
    has = np.diff(offsets) > 0
    if has.any():
        starts = offsets[:-1][has]
        r0, c0 = np.zeros(n, dtype="int64"), np.zeros(n, dtype="int64")
        r0[has], c0[has] = np.minimum.reduceat(rows, starts), np.minimum.reduceat(cols, starts)
        H, W = np.zeros(n, dtype="int64"), np.zeros(n, dtype="int64")
        H[has] = np.maximum.reduceat(rows, starts) - r0[has] + 1
        W[has] = np.maximum.reduceat(cols, starts) - c0[has] + 1
        key = _padded_sizes(H) * 1_000_000 + _padded_sizes(W)
        lr, lc = rows - r0[pid], cols - c0[pid]
        porder = np.flatnonzero(has)[np.argsort(key[has], kind="stable")]  # parcels grouped by padded size
        pkeys, pstart = np.unique(key[porder], return_index=True)
        rank = np.zeros(n, dtype="int64")
        rank[porder] = np.arange(porder.size) - np.repeat(pstart, np.diff(np.append(pstart, porder.size)))
        corder = np.argsort(key[pid], kind="stable")  # cells grouped likewise (empty parcels own no cells)
        cstart = np.searchsorted(key[pid][corder], pkeys)
        cend = np.append(cstart[1:], corder.size)
        for g in range(pkeys.size):
            members = porder[pstart[g]:(pstart[g + 1] if g + 1 < pkeys.size else porder.size)]
            cs = corder[cstart[g]:cend[g]]
            hmax, wmax = int(H[members].max()), int(W[members].max())
            flat = (rank[pid[cs]] * hmax + lr[cs]) * wmax + lc[cs]  # bincount: repeated cells add up
            win = np.bincount(flat, weights=w[cs], minlength=members.size * hmax * wmax)
            structured[members] = window_variances(win.reshape(members.size, hmax, wmax), res_m, corr,
                                                   max_batch_values=max_batch_values)
    structured = np.maximum(structured, 0.0)  # FFT rounding on all-zero windows
    return pd.DataFrame({"carbon_sd_t": np.sqrt(structured + nugget), "carbon_sd_structured_t": np.sqrt(structured),
                         "carbon_sd_nugget_t": np.sqrt(nugget), "carbon_sd_linear_t": linear,
                         "covered_ha": covered})


def weight_field_sd(area_ha: np.ndarray, sd_mg_ha: np.ndarray, res_m: float, corr: ErrorCorrelation, *,
                    dtype="float64") -> float:
    """SD (t C) of Σ_i a_i c_i over a whole grid (a project or the county): ``area_ha`` per cell the area
    counted (e.g. Σ over parcels of their covered area, or share-weighted), ``sd_mg_ha`` the carbon SD;
    NaN SD cells count as 0.  One FFT window (module docstring)."""
    a = np.nan_to_num(np.asarray(area_ha, dtype="float64"))
    s = np.asarray(sd_mg_ha, dtype="float64")
    if a.shape != s.shape:
        raise FieldError(f"area grid {a.shape} and SD grid {s.shape} differ in shape")
    s = np.where(np.isfinite(s), s, 0.0)
    nu, ap_ha = corr.white_share, corr.support_m2 / 10_000
    rows = np.flatnonzero(a.any(axis=1))
    cols = np.flatnonzero(a.any(axis=0))
    if rows.size == 0:
        return 0.0
    win = (a * s)[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    structured = max(float(window_variances(win, res_m, corr, dtype=dtype)), 0.0)
    return float(np.sqrt(structured + float(np.sum(nu * s**2 * ap_ha * a))))


def level_offset_sd(cv: dict) -> float:
    """SD (target units, Mg/ha) of the error in the map's level that every pixel shares: the residual mean is
    known from n plots only, to ± s_e/√n, s_e² = Σ (e_i − ē)² / (n − 1) = (RMSE² − bias²) n / (n − 1) of the
    (spatial-)CV residuals (``cv``: a card's ``cv.spatial`` with ``rmse``, ``bias``, ``n``): the variance of
    a model-assisted (difference / GREG) estimate of a mean, s_e²/n (Särndal, Swensson & Wretman 1992, Model
    Assisted Survey Sampling, §6.5), here with out-of-fold residuals.  A short-range correlation
    model cannot carry it: over a county its share of Var(T) is the largest."""
    rmse, bias, n = float(cv["rmse"]), float(cv.get("bias", 0.0)), int(cv["n"])
    if not (np.isfinite(rmse) and rmse >= 0 and n >= 2):
        raise ModelError(f"CV summary unusable for the level offset: rmse {rmse}, n {n}")
    return float(np.sqrt(max(rmse**2 - bias**2, 0.0) * n / (n - 1) / n))


def level_linear(offsets, rows, cols, fraction, carbon_per_agb: np.ndarray, res_m: float) -> np.ndarray:
    """Per parcel Σ_i a_i r_i (ha · t C/Mg), r_i = a pixel's carbon per unit AGB (its ``carbon_sd`` / ``agb_sd``;
    0 where the map is fixed, e.g. masked to 0): a shared AGB offset δ moves T_p by δ Σ_i a_i r_i, so its
    SD over parcels weighted g_p is |Σ_p g_p Σ_i a_i r_i| × :func:`level_offset_sd` (fully correlated: a
    linear sum), to combine with the correlated part as √(SD² + SD_level²)."""
    rows, cols = np.asarray(rows, dtype="int64"), np.asarray(cols, dtype="int64")
    fraction, offsets = np.asarray(fraction, dtype="float64"), np.asarray(offsets, dtype="int64")
    _check_cells(offsets, rows, cols, fraction, np.shape(carbon_per_agb))
    r = np.nan_to_num(np.asarray(carbon_per_agb, dtype="float64")[rows, cols])
    pid = np.repeat(np.arange(offsets.size - 1), np.diff(offsets))
    return np.bincount(pid, weights=fraction * res_m * res_m / 10_000 * r, minlength=offsets.size - 1)


def interval(total_t, sd_t, alpha: float = 0.10) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) central 1 − α interval of a total under a normal error with SD ``sd_t``; lower end
    clipped at 0 (module docstring)."""
    t, s = np.asarray(total_t, dtype="float64"), np.asarray(sd_t, dtype="float64")
    z = norm.ppf(1 - alpha / 2)
    return np.maximum(t - z * s, 0.0), t + z * s


def scaled_interval(carbon_t, area_ha, sd: pd.DataFrame, alpha: float = 0.10) -> pd.DataFrame:
    """Per parcel: ``carbon_sd_t`` and the 1 − α interval (``carbon_lower_t``, ``carbon_upper_t``) of a total
    ``carbon_t`` that fills unmapped cells with the parcel's mean density (the pipeline's ``carbon_t`` =
    mean density × ``area_ha``): the SD from :func:`parcel_sd` (``sd``, over the ``covered_ha`` mapped) times
    area_ha / covered_ha; NaN where nothing is mapped."""
    area = np.asarray(area_ha, dtype="float64")
    covered = sd["covered_ha"].to_numpy(dtype="float64")
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(covered > 0, sd["carbon_sd_t"].to_numpy() * area / covered, np.nan)
    lo, hi = interval(carbon_t, s, alpha)
    return pd.DataFrame({"carbon_sd_t": s, "carbon_lower_t": lo, "carbon_upper_t": hi})


TOTAL_COLUMNS = ("parcel_id", "weight", "carbon_t", "carbon_sd_t", "x", "y")


def total_sd(rows: pd.DataFrame, corr: ErrorCorrelation, *, max_pairs: int = 50_000_000) -> float:
    """SD (t C) of Σ_p weight_p T_p over the parcels in ``rows`` (columns ``TOTAL_COLUMNS``; x, y parcel
    centroids in metres of a projected CRS; optional ``carbon_sd_linear_t`` L_p and ``carbon_sd_level_t`` V_p,
    the parcel's share of a level offset all parcels share (:func:`level_linear` × :func:`level_offset_sd`),
    both in t C, see the module docstring):
    Var = Σ_p g_p² sd_p² + Σ_{p≠q} g_p g_q (L_p L_q g K(d_pq) + V_p V_q), sd_p including V_p.  Exact double sum
    over parcel pairs, in row blocks; refuses more than ``max_pairs`` pairs.  Approximate for adjacent parcels
    (centroid distances): :func:`weighted_cells_sd` is exact where the cells are at hand."""
    missing = [c for c in TOTAL_COLUMNS if c not in rows.columns]
    if missing:
        raise FieldError(f"total_sd: rows lack columns {missing} (need {list(TOTAL_COLUMNS)})")
    g = rows["weight"].to_numpy(dtype="float64")
    sd = rows["carbon_sd_t"].to_numpy(dtype="float64")
    lin = rows["carbon_sd_linear_t"].to_numpy(dtype="float64") if "carbon_sd_linear_t" in rows else sd
    lev = rows["carbon_sd_level_t"].to_numpy(dtype="float64") if "carbon_sd_level_t" in rows else np.zeros(g.size)
    xy = rows[["x", "y"]].to_numpy(dtype="float64")
    checks = (("weight", g), ("carbon_sd_t", sd), ("carbon_sd_linear_t", lin), ("carbon_sd_level_t", lev),
              ("x", xy[:, 0]), ("y", xy[:, 1]))
    for name, v in checks:
        bad = ~np.isfinite(v) | ((v < 0) if name not in ("x", "y") else False)
        if np.any(bad):
            k = int(np.flatnonzero(bad)[0])
            raise FieldError(f"total_sd: row {k + 1} (parcel {rows['parcel_id'].iloc[k]}): {name} = {v[k]}")
    n = g.size
    if n * n > max_pairs:
        raise ModelError(f"total_sd: {n} parcels make {n * n} pairs (> {max_pairs}); sum on the cells "
                         "(weighted_cells_sd) instead")
    u = g * lin
    var = float(np.sum((g * sd) ** 2)) + float(g @ lev) ** 2 - float(np.sum((g * lev) ** 2))
    step = max(1, max_pairs // max(n, 1) // 10)
    for s in range(0, n, step):
        d = np.hypot(xy[s:s + step, 0:1] - xy[None, :, 0], xy[s:s + step, 1:2] - xy[None, :, 1])
        k = corr.covariance(d)
        k[np.arange(k.shape[0]), np.arange(s, s + k.shape[0])] = 0.0  # the diagonal is sd_p² itself
        var += float(u[s:s + step] @ k @ u)
    return float(np.sqrt(var))


def cells_from_coverage(parcel_index, rows, cols, fraction, n_parcels: int):
    """(offsets, rows, cols, fraction) in parcel order from an unsorted long table of (parcel_index 0-based,
    row, col, fraction), e.g. exactextract's ``cell_id``/``coverage`` output, for :func:`parcel_sd`."""
    p = np.asarray(parcel_index, dtype="int64")
    if p.size and (p.min() < 0 or p.max() >= n_parcels):
        raise FieldError(f"parcel index outside 0..{n_parcels - 1}")
    order = np.argsort(p, kind="stable")
    offsets = np.concatenate([[0], np.cumsum(np.bincount(p, minlength=n_parcels))])
    return offsets, np.asarray(rows)[order], np.asarray(cols)[order], np.asarray(fraction, dtype="float64")[order]


def parcel_uncertainty(offsets, rows, cols, fraction, sd_mg_ha: np.ndarray, carbon_per_agb: np.ndarray,
                       source: np.ndarray, res_m: float, corr: ErrorCorrelation,
                       level_sd_by_source: dict) -> pd.DataFrame:
    """Per parcel, over its MAPPED cells (cells as in :func:`parcel_sd`; rasters: the carbon SD, the carbon per
    unit AGB r_i = carbon_sd / agb_sd, and the serving model's code per cell): ``carbon_sd_mapped_t`` =
    √(parcel_sd² + Σ_m level_m²), ``carbon_sd_linear_t`` (for :func:`total_sd`), ``carbon_sd_level_<code>_t``
    = :func:`level_linear` over the cells model ``code`` serves × its ``level_sd_by_source[code]`` (Mg/ha,
    :func:`level_offset_sd`; the models' level errors independent of each other, each shared by all the
    cells it serves), ``covered_ha`` (mapped area).  Scale to a parcel's full area with
    :func:`scaled_interval`."""
    ps = parcel_sd(offsets, rows, cols, fraction, sd_mg_ha, res_m, corr)
    src = np.asarray(source, dtype="float64")
    ratio = np.asarray(carbon_per_agb, dtype="float64")
    out = pd.DataFrame({"carbon_sd_linear_t": ps["carbon_sd_linear_t"], "covered_ha": ps["covered_ha"]})
    level2 = np.zeros(len(ps))
    for code, s in level_sd_by_source.items():
        v = level_linear(offsets, rows, cols, fraction, np.where(src == code, ratio, 0.0), res_m) * float(s)
        out[f"carbon_sd_level_{code}_t"] = v
        level2 += v**2
    out.insert(0, "carbon_sd_mapped_t", np.sqrt(ps["carbon_sd_t"].to_numpy() ** 2 + level2))
    return out
