"""Monte Carlo propagation of tree-level errors to plot AGB and carbon, after BIOMASS ``AGBmonteCarlo``.

Each draw perturbs every tree independently, as BIOMASS (Réjou-Méchain et al.
2017, R/AGBmonteCarlo.R) does:

* DBH: ``"chave2004"`` -- SD = 0.0062·D + 0.0904 cm for 95 % of the trees and
  4.64 cm for a random 5 % (Chave et al. 2004, Phil. Trans. R. Soc. B 359:409,
  p. 412), truncated to [0.1, 500] cm; or a fixed SD in cm; or none.
* Height: a normal error with the given SD (m), truncated to [1.3, max H + 15] m.
* Wood density: a normal error with the given SD (g/cm³), truncated to
  [0.08, 1.39] (the range of the Global Wood Density Database).
* Equation: a multiplicative log-normal residual exp(ε − σ²/2), ε ~ N(0, σ), with
  σ the residual standard error on the log scale that the equation's source
  reports (``rse_log``).  Every equation here estimates the mean (its printed
  coefficients include the log-bias correction, or the correction is applied,
  see :data:`~forestcarbon.models.allometry.LOG_BIAS`), so the residual draws are
  mean-one and the Monte Carlo mean equals the deterministic estimate.  Trees
  whose equation gives no RSE get no model error; the result says how many.
* Coefficients: where the equation carries a posterior (Chave et al. 2014 eq. 4:
  BIOMASS's ``param_4``, summarised by its mean and covariance), each draw takes
  one coefficient set θ ~ N(mean, cov) for all trees, and
  ln AGB = θ0 + θ1·ln(ρD²H) + N(0, θ2) per tree, exactly as BIOMASS
  ``AGBmonteCarlo`` does with its posterior rows (there the residual is not
  centred: θ0 is the log-scale intercept, and exp(θ0 + θ2²/2) ≈ 0.0673).
* Carbon fraction (optional): a normal relative error per tree and draw, as
  BIOMASS does with ``Carbon = TRUE`` (there 47.13 ± 2.06 %, Thomas & Martin
  2012, i.e. a relative SD of 0.0437).

Equations without a posterior (all but Chave 2014) omit coefficient
uncertainty: their sources print no covariance.  Biomass draws are evaluated with each tree's deterministic
equation; belowground biomass and carbon scale with the drawn AGB at the
tree's deterministic ratio.  Draws are seeded (numpy PCG64) and reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.special import ndtr, ndtri

from ..errors import ConfigError
from .allometry import AllometryRegistry


@dataclass(frozen=True)
class ErrorModel:
    """Measurement and model errors to propagate."""

    draws: int = 1000
    seed: int = 0
    dbh_error: str | float | None = "chave2004"  # "chave2004", an SD in cm, or None
    height_sd_m: float | None = None  # SD of measured heights, m; None: no height error
    wood_density_sd_g_cm3: float | None = None  # None: no wood-density error
    model_error: bool = True
    carbon_fraction_sd_rel: float | None = None  # relative SD of the carbon fraction per tree; None: none

    def __post_init__(self):
        if self.draws < 50:
            raise ConfigError(f"uncertainty.draws must be >= 50, not {self.draws}")
        if isinstance(self.dbh_error, str) and self.dbh_error != "chave2004":
            raise ConfigError(f"uncertainty.dbh_error must be 'chave2004', a number (cm) or null, not {self.dbh_error!r}")


def truncated_normal(rng: np.random.Generator, mean, sd, lower, upper) -> np.ndarray:
    """Normal draws truncated to [lower, upper] by inverse-CDF sampling (BIOMASS ``myrtruncnorm``)."""
    mean, sd = np.broadcast_arrays(np.asarray(mean, float), np.asarray(sd, float))
    sd_safe = np.where(sd > 0, sd, 1.0)
    lo, hi = ndtr((lower - mean) / sd_safe), ndtr((upper - mean) / sd_safe)
    u = rng.uniform(size=mean.shape)
    x = mean + sd_safe * ndtri(lo + u * (hi - lo))
    return np.where(sd > 0, x, mean)


def dbh_draw(rng: np.random.Generator, d: np.ndarray, how) -> np.ndarray:
    """One draw of measured DBH (cm): Chave et al. 2004 errors, a fixed SD (cm), or none."""
    if how is None:
        return d.copy()
    if how == "chave2004":
        sd = 0.0062 * d + 0.0904
        n_large = int(round(d.size * 5 / 100))
        if n_large:
            sd = sd.copy()
            sd[rng.choice(d.size, n_large, replace=False)] = 4.64
    else:
        sd = np.full(d.size, float(how))
    return truncated_normal(rng, d, sd, 0.1, 500.0)


def monte_carlo(trees: pd.DataFrame, registry: AllometryRegistry, errors: ErrorModel, by: str = "plot_id",
                weight: str | None = "expansion_ha", height_models: dict | None = None) -> pd.DataFrame:
    """Per group (plot) mean, SD, median and 95 % interval of AGB and carbon over the draws.

    ``trees`` is the output of :func:`~forestcarbon.models.allometry.tree_biomass`
    (with ``by`` and, when per-hectare values are wanted, ``weight`` = trees per
    hectare each tree stands for).  Units follow the weight: Mg/ha with
    ``expansion_ha``, Mg per group without.  Returns one row per group with
    ``agb_mg_ha_mc_mean``, ``..._sd``, ``..._median``, ``..._q2_5``,
    ``..._q97_5`` (and the same for ``carbon_mg_ha``), ``mc_draws`` and
    ``mc_trees_without_model_error``.

    Trees whose ``height_source`` is ``hd_model:<key>:<method>`` draw their
    height from ``height_models[key]`` at the drawn DBH, with that model's
    residual error (BIOMASS ``predictHeight(err = TRUE)``); measured heights
    get ``errors.height_sd_m``.
    """
    t = trees.reset_index(drop=True)
    rng = np.random.default_rng(errors.seed)
    d = t["dbh_cm"].to_numpy(float)
    h = t["height_m"].to_numpy(float) if "height_m" in t else np.full(len(t), np.nan)
    rho = t["wood_density_used_g_cm3"].to_numpy(float)
    age = t["age"].to_numpy(float) if "age" in t else np.full(len(t), np.nan)
    rse = t["rse_log"].to_numpy(float) if errors.model_error else np.full(len(t), np.nan)
    w = t[weight].to_numpy(float) if weight else np.ones(len(t))
    carbon_per_agb = t["carbon_kg"].to_numpy(float) / t["agb_kg"].to_numpy(float)
    codes, groups = pd.factorize(t[by])
    eq_of = _aboveground_equations(t, registry)
    h_upper = np.nanmax(h) + 15 if np.isfinite(h).any() else np.inf
    modelled = []
    if height_models and "height_source" in t:
        keys = t["height_source"].astype(str).str.extract(r"^hd_model:(.*):[^:]+$")[0]
        for key, idx in pd.Series(range(len(t))).groupby(keys.to_numpy()).indices.items():
            modelled.append((height_models[key], np.asarray(idx)))
    agb_sums = np.zeros((len(groups), errors.draws))
    c_sums = np.zeros((len(groups), errors.draws))
    for k in range(errors.draws):
        dk = dbh_draw(rng, d, errors.dbh_error)
        hk = truncated_normal(rng, h, errors.height_sd_m, 1.3, h_upper) if errors.height_sd_m else h.copy()
        for model, idx in modelled:
            hk[idx] = model.draw(rng, dk[idx])
        rk = (truncated_normal(rng, rho, errors.wood_density_sd_g_cm3, 0.08, 1.39) if errors.wood_density_sd_g_cm3
              else rho)
        agb = np.empty(len(t))
        for eq, idx in eq_of:
            if eq.posterior is not None and errors.model_error:
                theta = rng.multivariate_normal(eq.posterior.mean, eq.posterior.cov)
                x = np.log(rk[idx] * dk[idx] ** 2 * hk[idx])
                agb[idx] = np.exp(theta[0] + theta[1] * x + rng.normal(size=idx.size) * max(theta[2], 0.0))
            else:
                sd = np.nan_to_num(rse[idx])
                agb[idx] = eq.evaluate(dk[idx], hk[idx], rk[idx], age[idx]) * np.exp(rng.normal(size=idx.size) * sd
                                                                                     - sd**2 / 2)
        agb_sums[:, k] = np.bincount(codes, weights=agb * w / 1000.0, minlength=len(groups))
        cf = carbon_per_agb
        if errors.carbon_fraction_sd_rel:
            cf = cf * (1.0 + rng.normal(size=len(t)) * errors.carbon_fraction_sd_rel)
        c_sums[:, k] = np.bincount(codes, weights=agb * cf * w / 1000.0, minlength=len(groups))
    unit = "mg_ha" if weight else "mg"
    out = pd.DataFrame({by: groups})
    for name, sums in ((f"agb_{unit}", agb_sums), (f"carbon_{unit}", c_sums)):
        out[f"{name}_mc_mean"] = sums.mean(axis=1)
        out[f"{name}_mc_sd"] = sums.std(axis=1, ddof=1)
        out[f"{name}_mc_median"] = np.median(sums, axis=1)
        out[f"{name}_mc_q2_5"] = np.quantile(sums, 0.025, axis=1)
        out[f"{name}_mc_q97_5"] = np.quantile(sums, 0.975, axis=1)
    out["mc_draws"] = errors.draws
    out["mc_trees_without_model_error"] = np.bincount(codes, weights=~np.isfinite(rse), minlength=len(groups)).astype(int)
    return out


def _aboveground_equations(t: pd.DataFrame, registry: AllometryRegistry):
    """(equation, row indices) for each aboveground equation id in ``equation_id`` (group:above;below)."""
    ids = t["equation_id"].str.split(";").str[0]
    out = []
    for key, idx in pd.Series(range(len(t))).groupby(ids.to_numpy()).indices.items():
        _, eq = registry.equation(key.split(":", 1)[1])
        out.append((eq, np.asarray(idx)))
    return out
