"""Carbon of single LiDAR-detected trees, with a Monte Carlo of the errors, summed by any label.

Chain per tree (deterministic):

1. DBH from the detected height (and crown diameter) by the group's DBH model
   (:mod:`forestcarbon.models.tree_dbh`, Baskerville-corrected mean; key ``*`` for
   groups without their own model); ``dbh_extrapolated`` flags trees outside the
   fitted range.
2. AGB by the group's allometric equation (:func:`~forestcarbon.models.allometry.tree_agb`,
   the species column set to the group's name, which the registry resolves).
3. BGB, carbon and CO2e by the registry's one conversion
   (:func:`~forestcarbon.models.allometry.with_carbon`) with ``stand_agb_mg_ha=None``:
   a detected tree is converted as a tree standing alone (the low-density
   root-to-shoot class), the same for a village tree and a forest tree.

Monte Carlo (after BIOMASS ``AGBmonteCarlo``, Réjou-Méchain et al. 2017, R/AGBmonteCarlo.R,
as in :mod:`forestcarbon.models.uncertainty`), per draw k:

* height: H ~ N(H_detected, height_sd_m) truncated to [1.3 m, ∞) (``truncated_normal``), per tree;
* DBH-model coefficients: one set β_k ~ N(coef, cov) per model and draw, **shared** by every tree
  the model serves (``dbh_coef_error``);
* DBH: D = exp(β_k·x(H) + ε), ε ~ N(0, rse) per tree (``dbh_error``; without it
  D = exp(β_k·x(H) + rse²/2), the mean);
* AGB: the tree's deterministic equation at (D, H) times exp(ε − σ²/2), ε ~ N(0, rse_log) per
  tree; where the equation has a coefficient posterior (Chave et al. 2014 eq. 4), one
  θ_k ~ N(mean, cov) per draw shared by all its trees and ln AGB = θ0 + θ1 ln(ρD²H) + N(0, θ2)
  (``model_error``; as :func:`~forestcarbon.models.uncertainty.monte_carlo`);
* carbon = AGB × the tree's deterministic carbon-per-AGB (fractions and root-to-shoot ratio).

Label totals (``totals_by``) are statistics of the per-draw SUMS over a label's trees, so the
shared errors (DBH-model and equation coefficients) add up coherently instead of averaging out
as sqrt(Σ variances) would assume.  Per-tree statistics are over the same draws.

The reported ``agb_kg``, ``bgb_kg``, ``carbon_kg`` and ``co2e_kg`` are the Monte Carlo means: the
expected biomass of a tree of that detected height.  AGB is convex in D (E[D^b] > E[D]^b for b > 1), so
the allometry evaluated at the expected DBH (kept as ``*_plugin``) is biased low by about
exp(b(b-1)s^2/2) -- 16 % for b = 2.4 and a DBH-model residual SE s = 0.3 on the log scale -- and a total of
plug-in values can fall outside its own Monte Carlo interval.

Memory: draws are made for ``batch_trees`` trees at a time (arrays of draws × batch); only the
label sums (labels × draws) are kept whole.  Batches get their own seeded streams
(``SeedSequence(seed).spawn``), so results depend on ``seed`` and ``batch_trees``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import sparse

from ..errors import AllometryError, FieldError, ModelError
from .allometry import AllometryRegistry, tree_agb, with_carbon
from .carbon import CO2_PER_C
from .tree_dbh import DbhModel
from .uncertainty import _aboveground_equations, truncated_normal

QUANTILES = (0.05, 0.95)


def _groups(trees: pd.DataFrame, group_col: str, registry: AllometryRegistry) -> np.ndarray:
    if group_col not in trees:
        raise FieldError(f"detected trees lack column {group_col!r} (have {list(trees.columns)})")
    raw = trees[group_col].astype(object).to_numpy()
    out = np.empty(len(raw), dtype=object)
    for g in pd.unique(raw):
        name = g if g in registry.groups else (registry.resolve(g) if isinstance(g, str) else None)
        if name is None:
            rows = np.flatnonzero(raw == g)[:5] + 1
            raise AllometryError(f"detected trees: {group_col} {g!r} (rows {rows.tolist()}) is not a species group of "
                                 f"{registry.source_path}; groups are {sorted(registry.groups)}")
        out[raw == g] = name
    return out


def _model_keys(groups: np.ndarray, dbh_models: dict[str, DbhModel], prefixes=None) -> np.ndarray:
    """The DBH model of each tree: ``<prefix><group>``, else ``<prefix>*``, else ``*`` (pooled)."""
    pre = np.full(len(groups), "", dtype=object) if prefixes is None else np.asarray(prefixes, dtype=object)
    keys = np.empty(len(groups), dtype=object)
    for p, g in set(zip(pre, groups)):
        k = next((c for c in (f"{p}{g}", f"{p}*", "*") if c in dbh_models), None)
        if k is None:
            raise ModelError(f"no DBH model for species group {g!r}{f' (set {p!r})' if p else ''} and no pooled model "
                             f"'*' (models: {sorted(dbh_models)})")
        keys[(pre == p) & (groups == g)] = k
    return keys


def tree_carbon(trees: pd.DataFrame, registry: AllometryRegistry, dbh_models: dict[str, DbhModel], *,
                height_sd_m: float, group_col: str = "species_group", draws: int = 500, seed: int = 0,
                totals_by=None, dbh_error: bool = True, dbh_coef_error: bool = True, model_error: bool = True,
                batch_trees: int = 2000, dbh_set_col: str | None = None):
    """Per-tree DBH, AGB, BGB, carbon and CO2e with Monte Carlo intervals; optional totals by label.

    Parameters
    ----------
    trees
        Detected trees: ``height_m`` (m, >= 1.3), ``group_col`` (a species group or a name the
        registry resolves to one), ``crown_diameter_m`` where a DBH model uses it; optional
        ``age`` (bamboo equations) and ``wood_density_g_cm3``.
    dbh_models
        From :func:`~forestcarbon.models.tree_dbh.fit_dbh_models` (group → model, ``"*"`` pooled); with
        ``dbh_set_col``, also models of other sets of field trees under ``<set><group>`` and ``<set>*``.
    dbh_set_col
        A column naming the set of DBH models each tree takes (e.g. ``"village:"`` for open-grown trees,
        whose stems are thicker at a given height than forest-grown ones); empty for the plain keys.
    height_sd_m
        SD (m) of a detected tree's height error, per tree and draw; 0 for none.
    totals_by
        A label per tree (parcel, village...), or a DataFrame with one column of labels per level (a tree
        counts once in each level); NaN/None labels are left out of the totals.

    Returns
    -------
    The trees with ``dbh_cm``, ``dbh_source`` (``dbh_model:<key>:<form>``), ``dbh_extrapolated``,
    ``agb_kg``, ``bgb_kg``, ``carbon_kg``, ``co2e_kg`` (Monte Carlo means) and the same at the expected DBH
    (``*_plugin``), ``equation_id``, ``equation_verified``, ``dbh_in_range`` and, for carbon and CO2e,
    ``*_sd``, ``*_p05``, ``*_p95`` (90 % interval).  With ``totals_by``: (trees, totals), totals one row
    per label with ``label``, ``n_trees``, ``carbon_kg_plugin`` (sum of plug-in values), and ``carbon_kg``,
    ``co2e_kg`` with SD and interval computed from the per-draw sums (with a DataFrame ``totals_by``, a first column ``level``: its
    column name).
    """
    if draws < 50:
        raise ModelError(f"tree_carbon needs at least 50 draws, not {draws}")
    if not height_sd_m >= 0:
        raise ModelError(f"height_sd_m must be >= 0, not {height_sd_m}")
    if "height_m" not in trees:
        raise FieldError(f"detected trees lack column 'height_m' (have {list(trees.columns)})")
    t = trees.reset_index(drop=True)
    n = len(t)
    h = pd.to_numeric(t["height_m"], errors="coerce").to_numpy(float)
    bad = ~(h >= 1.3)
    if bad.any():
        raise FieldError(f"detected trees: height_m must be >= 1.3 m (breast height); rows "
                         f"{(np.flatnonzero(bad)[:5] + 1).tolist()} have {h[bad][:5].tolist()}")
    groups = _groups(t, group_col, registry)
    keys = _model_keys(groups, dbh_models, t[dbh_set_col].fillna("").astype(str).to_numpy(object)
                       if dbh_set_col is not None and dbh_set_col in t else None)
    needs_cd = any(dbh_models[k].form == "log_h_cd" for k in set(keys))
    if needs_cd and "crown_diameter_m" not in t:
        raise FieldError("detected trees lack column 'crown_diameter_m', which a log_h_cd DBH model needs")
    cd = (pd.to_numeric(t["crown_diameter_m"], errors="coerce").to_numpy(float) if "crown_diameter_m" in t
          else np.full(n, np.nan))
    dbh, extrap = np.full(n, np.nan), np.zeros(n, dtype=bool)
    key_idx = pd.Series(range(n)).groupby(keys).indices if n else {}
    for key, idx in key_idx.items():
        m = dbh_models[key]
        if m.form == "log_h_cd" and not (cd[idx] > 0).all():
            bad = idx[~(cd[idx] > 0)]
            raise FieldError(f"detected trees: crown_diameter_m must be > 0 for the log_h_cd DBH model {key!r}; rows "
                             f"{(bad[:5] + 1).tolist()} have {cd[bad][:5].tolist()}")
        dbh[idx], extrap[idx] = m.predict(h[idx], cd[idx] if m.form == "log_h_cd" else None)

    frame = pd.DataFrame({"species": groups, "dbh_cm": dbh, "height_m": h})
    for col in ("age", "wood_density_g_cm3"):
        if col in t:
            frame[col] = t[col].to_numpy()
    # predicted DBH is not an entry to check for units: its plausibility is the model's range (``dbh_extrapolated``)
    agb = with_carbon(tree_agb(frame, registry, source="detected trees", dbh_range_cm=(0.0, np.inf)),
                      registry.conversion, None)

    out = t.copy()
    out[group_col] = groups
    out["dbh_cm"] = dbh
    out["dbh_source"] = [f"dbh_model:{k}:{dbh_models[k].form}" for k in keys]
    out["dbh_extrapolated"] = extrap
    for col in ("agb_kg", "bgb_kg", "carbon_kg", "co2e_kg", "equation_id", "equation_verified", "dbh_in_range",
                "rse_log", "conversion_verified"):
        out[col] = agb[col].to_numpy()

    carbon_per_agb = agb["carbon_kg"].to_numpy(float) / agb["agb_kg"].to_numpy(float)
    rho = agb["wood_density_used_g_cm3"].to_numpy(float)
    age = pd.to_numeric(t["age"], errors="coerce").to_numpy(float) if "age" in t else np.full(n, np.nan)
    eqs = _aboveground_equations(agb, registry) if n else []
    eq_code = np.empty(n, dtype=int)
    for k, (_, idx) in enumerate(eqs):
        eq_code[idx] = k
    key_names = sorted(key_idx)
    key_code = pd.Series(keys).map({k: i for i, k in enumerate(key_names)}).to_numpy(int) if n else np.zeros(0, int)

    root = np.random.SeedSequence(seed)
    shared_rng = np.random.default_rng(root.spawn(1)[0])
    # shared draws: one coefficient set per model (equation) and draw, used by all its trees in every batch
    beta = []
    for key in key_names:
        m = dbh_models[key]
        if dbh_coef_error and m.cov is not None:
            beta.append(shared_rng.multivariate_normal(m.coef, np.asarray(m.cov), size=draws))
        else:
            beta.append(np.tile(np.asarray(m.coef, float), (draws, 1)))
    theta = [shared_rng.multivariate_normal(eq.posterior.mean, np.asarray(eq.posterior.cov), size=draws)
             if (eq.posterior is not None and model_error) else None for eq, _ in eqs]

    labels = None
    if totals_by is not None:
        levels, codes, labels = _label_sets(totals_by, n)
        sums = np.zeros((len(labels), draws))

    stats = {name: np.full(n, np.nan) for name in ("mean", "sd", "p05", "p95")}
    starts = range(0, n, batch_trees)
    for start, ss in zip(starts, root.spawn(len(starts))):
        rng = np.random.default_rng(ss)
        sel = np.arange(start, min(start + batch_trees, n))
        c = _draw_batch(rng, sel, h, cd, height_sd_m, key_code, key_names, dbh_models, beta, eq_code, eqs, theta,
                        rse=agb["rse_log"].to_numpy(float), rho=rho, age=age, dbh_error=dbh_error,
                        model_error=model_error, draws=draws) * carbon_per_agb[sel]
        stats["mean"][sel] = c.mean(axis=0)
        stats["sd"][sel] = c.std(axis=0, ddof=1)
        stats["p05"][sel], stats["p95"][sel] = np.quantile(c, QUANTILES, axis=0)
        if labels is not None:
            cb = codes[:, sel]  # one row of label codes per level; a tree counts once in each level
            r, t_ = np.nonzero(cb >= 0)
            if r.size:
                onehot = sparse.csr_matrix((np.ones(r.size), (cb[r, t_], t_)), shape=(len(labels), sel.size))
                sums += onehot @ c.T
        del c

    # the estimate is the expectation over the draws (see the module docstring: E[AGB | H] exceeds the
    # allometry at the expected DBH); the plug-in values stay beside it for the record
    for col in ("agb_kg", "bgb_kg", "carbon_kg", "co2e_kg"):
        out[f"{col}_plugin"] = out[col].to_numpy(float)
    ratio = np.divide(stats["mean"], out["carbon_kg_plugin"].to_numpy(float),
                      out=np.ones(n), where=out["carbon_kg_plugin"].to_numpy(float) > 0)
    for col in ("agb_kg", "bgb_kg"):
        out[col] = out[f"{col}_plugin"] * ratio
    for unit, f in (("carbon_kg", 1.0), ("co2e_kg", CO2_PER_C)):
        out[unit] = stats["mean"] * f
        out[f"{unit}_sd"] = stats["sd"] * f
        out[f"{unit}_p05"] = stats["p05"] * f
        out[f"{unit}_p95"] = stats["p95"] * f
    out["mc_draws"] = draws
    if labels is None:
        return out
    r, t_ = np.nonzero(codes >= 0)
    tot = pd.DataFrame({"label": [lab for _, lab in labels],
                        "n_trees": np.bincount(codes[r, t_], minlength=len(labels)),
                        "carbon_kg_plugin": np.bincount(codes[r, t_], weights=out["carbon_kg_plugin"].to_numpy(float)[t_],
                                                        minlength=len(labels))})
    if levels is not None:
        tot.insert(0, "level", [lev for lev, _ in labels])
    for unit, f in (("carbon_kg", 1.0), ("co2e_kg", CO2_PER_C)):
        tot[unit] = sums.mean(axis=1) * f
        tot[f"{unit}_sd"] = sums.std(axis=1, ddof=1) * f
        lo, hi = np.quantile(sums, QUANTILES, axis=1)
        tot[f"{unit}_p05"], tot[f"{unit}_p95"] = lo * f, hi * f
    tot["mc_draws"] = draws
    return out, tot


def _label_sets(totals_by, n: int):
    """(level names or None, codes (levels × trees, -1 = no label), [(level, label)]) of ``totals_by``: one
    label per tree, or a DataFrame with one column of labels per level (parcel, village, ...)."""
    frame = totals_by if isinstance(totals_by, pd.DataFrame) else pd.DataFrame({None: np.asarray(totals_by, dtype=object)})
    if len(frame) != n:
        raise FieldError(f"totals_by has {len(frame)} labels for {n} trees")
    codes, labels = np.full((frame.shape[1], n), -1, dtype=np.int64), []
    for i, col in enumerate(frame.columns):
        c, uniq = pd.factorize(pd.Series(frame[col].to_numpy(dtype=object)), use_na_sentinel=True)
        codes[i] = np.where(c >= 0, c + len(labels), -1)
        labels += [(col, u) for u in uniq]
    return (list(frame.columns) if isinstance(totals_by, pd.DataFrame) else None), codes, labels


def _draw_batch(rng, sel, h, cd, height_sd_m, key_code, key_names, dbh_models, beta, eq_code, eqs, theta, *,
                rse, rho, age, dbh_error, model_error, draws) -> np.ndarray:
    """AGB draws (draws × trees of ``sel``)."""
    shape = (draws, sel.size)
    hk = (truncated_normal(rng, np.broadcast_to(h[sel], shape), height_sd_m, 1.3, np.inf) if height_sd_m > 0
          else np.broadcast_to(h[sel], shape).copy())
    dk = np.empty(shape)
    for kc in np.unique(key_code[sel]):
        loc = np.flatnonzero(key_code[sel] == kc)
        m = dbh_models[key_names[kc]]
        lm = m.log_mean(hk[:, loc], cd[sel][loc] if m.form == "log_h_cd" else None, beta[kc][:, None, :])
        dk[:, loc] = np.exp(lm + (rng.normal(size=lm.shape) * m.rse if dbh_error else 0.5 * m.rse**2))
    agb = np.empty(shape)
    for ec in np.unique(eq_code[sel]):
        loc = np.flatnonzero(eq_code[sel] == ec)
        g = sel[loc]
        eq = eqs[ec][0]
        d, hh = dk[:, loc], hk[:, loc]
        if theta[ec] is not None:
            th = theta[ec]
            x = np.log(rho[g] * d**2 * hh)
            agb[:, loc] = np.exp(th[:, :1] + th[:, 1:2] * x + rng.normal(size=x.shape) * np.maximum(th[:, 2:3], 0.0))
        else:
            a = eq.evaluate(d, hh, rho[g], age[g])
            s = np.nan_to_num(rse[g]) if model_error else np.zeros(loc.size)
            agb[:, loc] = a * np.exp(rng.normal(size=a.shape) * s - s**2 / 2)
    return agb
