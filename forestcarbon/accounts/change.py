"""Stock change between two epochs with its uncertainty (the stock-difference method).

For one parcel (or one area) with stocks ``C1 ± sd1`` and ``C2 ± sd2``::

    Δ = C2 − C1,        Var(Δ) = sd1² + sd2² − 2 ρ sd1 sd2

(the variance of a difference of two correlated estimates, IPCC 2006
Guidelines Vol. 1 Ch. 3, eq. 3.2 generalised to covariance; cf. IPCC 2006
Vol. 1 Ch. 3.2.3.1 on correlated errors across years in trend uncertainty).
The sink per year is Δ / years, years = days between the epochs' dates / 365.25.

ρ is the between-epoch correlation of the stock errors.  The two epochs share
the biomass model and its training plots, so their errors are positively
correlated (ρ > 0) for stands that did not change, and less so where they did.
**Default ρ = 0** (:data:`DEFAULT_EPOCH_ERROR_CORRELATION`): for any ρ in
[0, 1] the variance is largest at ρ = 0, so the default never understates the
uncertainty of a sink or a loss that backs a credit, a loan or a damage claim
while ρ is not measured; a caller who has estimated ρ (e.g. from repeated
plots measured in both epochs) passes it, and every output records the ρ used.
A negative ρ is allowed but must be given explicitly.

Intervals are normal: Δ ± z·sd with z the standard normal quantile of the
nominal level (90 %: ±1.645 sd, matching the maps' 5 % and 95 % bounds).
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
from scipy.stats import norm

from ..errors import ConfigError
from ..models.carbon import co2e

DEFAULT_EPOCH_ERROR_CORRELATION = 0.0
"""ρ used when none is given: the conservative bound for ρ in [0, 1] (see the module docstring)."""

DAYS_PER_YEAR = 365.25  # Julian year


def check_rho(rho: float) -> float:
    if not (-1.0 <= rho <= 1.0) or np.isnan(rho):
        raise ConfigError(f"between-epoch error correlation rho {rho} is not in [-1, 1]")
    return float(rho)


def years_between(date_from: str, date_to: str) -> float:
    """Years from ``date_from`` to ``date_to`` (ISO dates); an error unless positive."""
    days = (dt.date.fromisoformat(date_to) - dt.date.fromisoformat(date_from)).days
    if days <= 0:
        raise ConfigError(f"epoch dates {date_from} -> {date_to}: the second epoch must be later than the first")
    return days / DAYS_PER_YEAR


def difference_sd(sd1, sd2, rho: float) -> np.ndarray:
    """sd of C2 − C1: sqrt(sd1² + sd2² − 2 ρ sd1 sd2); NaN where either sd is NaN."""
    sd1, sd2 = np.asarray(sd1, dtype="float64"), np.asarray(sd2, dtype="float64")
    var = sd1**2 + sd2**2 - 2.0 * check_rho(rho) * sd1 * sd2
    return np.sqrt(np.clip(var, 0.0, None))  # ρ = 1 and sd1 = sd2 give 0 up to rounding


def z_of(level: float) -> float:
    """Two-sided standard normal quantile for a nominal interval level (0.90 -> 1.645)."""
    return float(norm.ppf(0.5 + level / 2.0))


def parcel_sinks(stocks_from: pd.DataFrame, stocks_to: pd.DataFrame, years: float,
                 rho: float = DEFAULT_EPOCH_ERROR_CORRELATION, level: float = 0.90) -> pd.DataFrame:
    """Per parcel: CO2e stocks of both epochs, ``delta_co2e_t`` (to − from), its sd, and the sink per year
    ``sink_co2e_t_yr`` (positive: removal from the atmosphere) with sd and ``level`` interval.

    Stocks are :meth:`AccountStore.stocks` frames.  ``status``: ``ok``; ``no sd`` (an epoch lacks the stock
    sd, so the sink has none); ``geometry changed`` (the parcel's versions differ: stocks of two different
    areas are not a change in stock, no sink); ``no estimate`` (an epoch has no carbon for it);
    ``only in from`` / ``only in to``.
    """
    rho = check_rho(rho)
    keep = ["parcel_id", "version", "carbon_t", "carbon_sd_t"]
    m = stocks_from[keep].merge(stocks_to[keep], on="parcel_id", how="outer", suffixes=("_from", "_to"),
                                indicator=True)
    c1, c2 = co2e(m["carbon_t_from"].to_numpy(float)), co2e(m["carbon_t_to"].to_numpy(float))
    s1, s2 = co2e(m["carbon_sd_t_from"].to_numpy(float)), co2e(m["carbon_sd_t_to"].to_numpy(float))
    same = (m["version_from"] == m["version_to"]).to_numpy()
    delta = np.where(same, c2 - c1, np.nan)
    sd = np.where(same, difference_sd(s1, s2, rho), np.nan)
    z = z_of(level)
    status = np.select(
        [m["_merge"].eq("left_only"), m["_merge"].eq("right_only"), ~same, np.isnan(c1) | np.isnan(c2),
         np.isnan(s1) | np.isnan(s2)],
        ["only in from", "only in to", "geometry changed", "no estimate", "no sd"], "ok")
    pct = f"{round(level * 100):d}"
    out = pd.DataFrame({
        "parcel_id": m["parcel_id"], "version_from": m["version_from"], "version_to": m["version_to"],
        "co2e_from_t": c1, "co2e_from_sd_t": s1, "co2e_to_t": c2, "co2e_to_sd_t": s2,
        "delta_co2e_t": delta, "delta_co2e_sd_t": sd,
        "sink_co2e_t_yr": delta / years, "sink_co2e_sd_t_yr": sd / years,
        f"sink_co2e_lo{pct}_t_yr": (delta - z * sd) / years, f"sink_co2e_hi{pct}_t_yr": (delta + z * sd) / years,
        "years": years, "rho": rho, "status": status})
    return out.sort_values("parcel_id").reset_index(drop=True)
