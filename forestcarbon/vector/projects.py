"""Carbon projects over forest parcels, with no area or carbon counted twice.

The parcel (小班) account is the unit of record: a project's carbon is the sum
over parcels of ``share × parcel carbon_t`` (uniform density within a parcel
assumed), ``share`` being the fraction of the parcel's area the project
*counts*.  :func:`project_accounts` goes, per project and parcel:

1. overlay (:func:`overlay_pieces`): a shapely STRtree over the parcels finds
   the parcels each project touches; a parcel the project contains wholly
   keeps its own geometry and area (share exactly 1, no intersection
   computed); the others are intersected;
2. slivers: the connected parts of a *cut* piece (project ∩ parcel, parcel not
   wholly inside) smaller than ``min_piece_m2`` are excluded and reported
   (whole parcels are the bureau's mapped units and never slivers);
3. eligibility: only parcels whose ``eligible_field`` (``is_forest``) is true
   count; the rest is reported per project as ineligible area;
4. double counting: eligible area claimed by two or more projects is a
   conflict, listed with the overlap area and the carbon at stake; rule
   ``exclude`` counts it for none of them, ``first_registered`` for the one
   with the earliest registration date (ties are an error);
5. totals: area, parcels, carbon and CO2e; the SD of the sum from the
   ``total_sd`` function (default :func:`correlated_sd`, Σ w·sd: perfectly
   correlated parcel errors, an upper bound for non-negative correlations);
   a normal interval at ``1 - alpha`` and the relative half-width;
6. a conservative deduction where the relative half-width exceeds a threshold
   (:class:`Deduction`: its formula and source come from the configuration).

Areas are planar m² in the layers' common projected CRS (the grid's, checked by
:func:`forestcarbon.vector.area_crs.require_area_crs` at parcel ingest).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Callable, Literal

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from pyproj import CRS

from ..errors import ConfigError, CRSError, FieldError
from .layers import feature_rows, listing


def _check_layers(projects: gpd.GeoDataFrame, parcels: gpd.GeoDataFrame, project_id: str, parcel_id: str) -> None:
    for name, gdf, col in (("projects", projects, project_id), ("parcels", parcels, parcel_id)):
        if col not in gdf.columns:
            raise FieldError(f"{name}: no field {col!r} (fields: {[c for c in gdf.columns if c != 'geometry']})")
        dup = gdf[col].duplicated(keep=False) | gdf[col].isna()
        if dup.any():
            raise FieldError(f"{name}: field {col!r} is empty or duplicated in rows "
                             f"{feature_rows(dup.to_numpy())} (values {listing(gdf[col][dup].unique().tolist())})")
    if projects.crs is None or parcels.crs is None:
        raise CRSError(f"{'projects' if projects.crs is None else 'parcels'}: layer has no CRS")
    a, b = CRS.from_user_input(projects.crs), CRS.from_user_input(parcels.crs)
    if not a.equals(b):
        raise CRSError(f"projects CRS {a.name!r} differs from parcels CRS {b.name!r}: reproject both to the grid CRS")
    if not a.is_projected:
        raise CRSError(f"projects and parcels are in {a.name!r}, not a projected CRS: areas need metres")


def overlay_pieces(projects: gpd.GeoDataFrame, parcels: gpd.GeoDataFrame, project_id: str = "project_id",
                   parcel_id: str = "parcel_id") -> gpd.GeoDataFrame:
    """Every project ∩ parcel piece of positive area: columns ``project_id``, ``parcel_id`` (the given id
    fields, renamed), ``i_project`` / ``i_parcel`` (row positions), ``inside`` (the project contains the
    parcel: piece = parcel, no intersection computed), ``parcel_m2``, ``piece_m2``, and the piece geometry.
    Same pieces as ``geopandas.overlay(how="intersection")`` (benchmarks/bench_overlay.py)."""
    _check_layers(projects, parcels, project_id, parcel_id)
    P = np.asarray(projects.geometry.array, dtype=object)
    Q = np.asarray(parcels.geometry.array, dtype=object)
    tree = shapely.STRtree(Q)
    pi, qi = tree.query(P, predicate="intersects")
    shapely.prepare(P)
    inside = shapely.contains(P[pi], Q[qi])
    piece = Q[qi].copy()
    cut = ~inside
    piece[cut] = shapely.intersection(P[pi[cut]], Q[qi[cut]])
    parcel_m2 = shapely.area(Q[qi])
    piece_m2 = parcel_m2.copy()
    piece_m2[cut] = shapely.area(piece[cut])
    keep = piece_m2 > 0
    out = gpd.GeoDataFrame({
        "project_id": projects[project_id].to_numpy()[pi[keep]], "parcel_id": parcels[parcel_id].to_numpy()[qi[keep]],
        "i_project": pi[keep], "i_parcel": qi[keep], "inside": inside[keep], "parcel_m2": parcel_m2[keep],
        "piece_m2": piece_m2[keep]}, geometry=piece[keep], crs=parcels.crs)
    return out.reset_index(drop=True)


def min_piece_by_start(start_dates: pd.Series, min_piece_m2: float, min_piece_m2_early: float,
                       early_until: str = "2019-12-31") -> dict:
    """Per project (the Series' index) the sliver threshold: ``min_piece_m2_early`` for projects started on or
    before ``early_until``, else ``min_piece_m2`` (the brief's reading of CCER-14-001-V01: 400 m², 667 m² =
    1 mu for projects started in 2019 or earlier; the methodology text was not found to verify it)."""
    d = pd.to_datetime(start_dates)
    if d.isna().any():
        raise FieldError(f"projects {listing(d.index[d.isna()])} have no start date")
    return {k: (min_piece_m2_early if v <= pd.Timestamp(early_until) else min_piece_m2) for k, v in d.items()}


def remove_slivers(pieces: gpd.GeoDataFrame, min_piece_m2: float | dict) -> gpd.GeoDataFrame:
    """``pieces`` with the connected polygon parts of cut pieces smaller than ``min_piece_m2`` (one value, or
    per project id) removed: adds ``sliver_m2`` (area removed) and ``kept_m2``; the geometry becomes the kept
    parts (empty when all are slivers).  Whole parcels inside a project are left whole."""
    out = pieces.copy()
    geoms = np.asarray(out.geometry.array, dtype=object).copy()
    kept_m2 = out["piece_m2"].to_numpy("float64").copy()
    sliver = np.zeros(len(out))
    if isinstance(min_piece_m2, dict):
        missing = set(out["project_id"]) - set(min_piece_m2)
        if missing:
            raise FieldError(f"projects {listing(sorted(map(str, missing)))} have no minimum piece area")
        thr = out["project_id"].map(min_piece_m2).to_numpy("float64")
    else:
        thr = np.full(len(out), float(min_piece_m2))
    if (thr > 0).any():
        cut = np.flatnonzero(~out["inside"].to_numpy())
        parts, owner = shapely.get_parts(geoms[cut], return_index=True)
        parts, sub = shapely.get_parts(parts, return_index=True)  # collections may hold multipolygons
        owner = owner[sub]
        polys = np.isin(shapely.get_type_id(parts), (3,))
        parts, owner = parts[polys], owner[polys]
        a = shapely.area(parts)
        small = a < thr[cut][owner]
        touched = np.unique(owner[small])
        for k in touched:
            mine = owner == k
            big = parts[mine & ~small]
            i = cut[k]
            geoms[i] = shapely.multipolygons(big) if len(big) else shapely.Polygon()
            sliver[i] = a[mine & small].sum()
            kept_m2[i] = a[mine & ~small].sum()
    out["sliver_m2"] = sliver
    out["kept_m2"] = kept_m2
    out = out.set_geometry(gpd.GeoSeries(geoms, index=out.index, crs=pieces.crs))
    return out


def resolve_conflicts(pieces: gpd.GeoDataFrame, rule: Literal["exclude", "first_registered"] = "exclude",
                      registered: pd.Series | None = None) -> tuple[np.ndarray, pd.DataFrame]:
    """Area each piece counts after conflicts, and the conflict table.

    ``pieces``: eligible, sliver-free pieces (``project_id``, ``parcel_id``, ``kept_m2``, geometry).  Within a
    parcel claimed by several projects, project A counts ``A − ∪ B`` over the competitors B: all other
    claimants (``exclude``) or those registered earlier (``first_registered``, ``registered`` maps project id
    to date).  Returns (counted m² per piece, conflicts with ``project_a``, ``project_b``, ``parcel_id``,
    ``overlap_m2``, ``awarded_to``) -- one row per pair of projects overlapping in a parcel."""
    counted = pieces["kept_m2"].to_numpy("float64").copy()
    rows = []
    multi = pieces["parcel_id"].duplicated(keep=False).to_numpy() & (counted > 0)
    if not multi.any():
        return counted, pd.DataFrame(columns=["project_a", "project_b", "parcel_id", "overlap_m2", "awarded_to"])
    geoms = np.asarray(pieces.geometry.array, dtype=object)
    order = None
    if rule == "first_registered":
        if registered is None:
            raise ConfigError("conflict rule 'first_registered' needs the projects' registration dates")
        order = pd.to_datetime(registered)
    elif rule != "exclude":
        raise ConfigError(f"conflict rule {rule!r} is not 'exclude' or 'first_registered'")
    pids = pieces["parcel_id"].to_numpy()
    project_ids = pieces["project_id"].to_numpy()
    positions = np.flatnonzero(multi)
    for pid, idx in pd.Series(positions).groupby(pids[positions], sort=False):
        idx = idx.to_numpy()  # row positions in ``pieces``
        projs = project_ids[idx]
        g = geoms[idx]
        overlaps = {}
        for a in range(len(idx)):
            for b in range(a + 1, len(idx)):
                o = shapely.area(shapely.intersection(g[a], g[b]))
                if o > 0:
                    overlaps[(a, b)] = o
        if not overlaps:
            continue
        for (a, b), o in overlaps.items():
            winner = None
            if order is not None:
                da_, db_ = order.get(projs[a]), order.get(projs[b])
                if pd.isna(da_) or pd.isna(db_) or da_ == db_:
                    raise FieldError(f"projects {projs[a]!r} and {projs[b]!r} overlap in parcel {pid!r} but their "
                                     f"registration dates ({_day(da_)}, {_day(db_)}) do not say which came first")
                winner = projs[a] if da_ < db_ else projs[b]
            rows.append({"project_a": projs[a], "project_b": projs[b], "parcel_id": pid, "overlap_m2": o,
                         "awarded_to": winner})
        for a in range(len(idx)):
            rivals = [b for b in range(len(idx)) if b != a and (min(a, b), max(a, b)) in overlaps
                      and (order is None or order[projs[b]] < order[projs[a]])]
            if rivals:
                counted[idx[a]] = shapely.area(shapely.difference(g[a], shapely.union_all(g[rivals])))
    return counted, pd.DataFrame(rows, columns=["project_a", "project_b", "parcel_id", "overlap_m2", "awarded_to"])


def _day(t) -> str:
    return "missing" if t is None or pd.isna(t) else f"{pd.Timestamp(t):%Y-%m-%d}"


def correlated_sd(rows: pd.DataFrame) -> float:
    """SD of Σ w·carbon over parcels with perfectly correlated errors: Σ w·sd.  An upper bound on the SD of
    the sum whenever the parcels' error correlations are non-negative (Var(Σ X_i) = Σ_i Σ_j ρ_ij σ_i σ_j ≤
    (Σ σ_i)²).  ``rows``: ``parcel_id``, ``weight``, ``carbon_t``, ``carbon_sd_t``, ``x``, ``y``."""
    return float(np.sum(rows["weight"].to_numpy() * rows["carbon_sd_t"].to_numpy()))


@dataclass(frozen=True)
class Deduction:
    """Conservative deduction when a project's relative half-width (``z·SD / total``) exceeds ``threshold_rel``.

    ``rule``: ``report`` (flag only, deduct nothing); ``proportional``: fraction = ``coefficient × rel_hw``
    (ART TREES v2.0 (2021) §8 Eq. 10-11: UA = 0.524417 × HW90% / 1.645006, i.e. coefficient 0.318794);
    ``excess``: fraction = ``coefficient × (rel_hw − threshold_rel)``.  ``source``: where the formula and its
    numbers come from, copied to every output row."""

    rule: Literal["report", "proportional", "excess"] = "report"
    threshold_rel: float = 0.10
    coefficient: float = 1.0
    source: str = ""

    def fraction(self, rel_half_width) -> np.ndarray:
        u = np.asarray(rel_half_width, dtype="float64")
        over = u > self.threshold_rel
        if self.rule == "report":
            f = np.zeros_like(u)
        elif self.rule == "proportional":
            f = self.coefficient * u
        elif self.rule == "excess":
            f = self.coefficient * (u - self.threshold_rel)
        else:
            raise ConfigError(f"deduction rule {self.rule!r} is not 'report', 'proportional' or 'excess'")
        return np.where(over, np.clip(f, 0.0, 1.0), 0.0)


@dataclass
class ProjectAccounts:
    """Outputs of :func:`project_accounts`: the per-project parcel table (fit for a project design document),
    the conflict table and the per-project totals."""

    parcels: pd.DataFrame
    conflicts: pd.DataFrame
    totals: pd.DataFrame
    settings: dict = field(default_factory=dict)


PARCEL_COLUMNS = ("land_class", "species", "age_group")


def _eligible(parcels: pd.DataFrame, field: str | None) -> np.ndarray:
    """The parcels' eligibility flags: a boolean field (or 0/1), else a one-line error (text such as "False"
    would read as true)."""
    if field is None:
        return np.ones(len(parcels), bool)
    v = parcels[field]
    if pd.api.types.is_bool_dtype(v):
        return v.to_numpy(bool)
    ok = v.isin([0, 1, True, False])
    if not ok.all():
        raise FieldError(f"parcels: eligibility field {field!r} must be true/false, rows {feature_rows(~ok.to_numpy())} "
                         f"hold {listing(v[~ok].unique().tolist())}")
    return v.astype(bool).to_numpy()


def project_accounts(projects: gpd.GeoDataFrame, parcels: gpd.GeoDataFrame, to_co2e: Callable, *,
                     project_id: str = "project_id", parcel_id: str = "parcel_id",
                     eligible_field: str | None = "is_forest", min_piece_m2: float | dict = 400.0,
                     conflict_rule: Literal["exclude", "first_registered"] = "exclude",
                     registration_field: str | None = None,
                     total_sd: Callable[[pd.DataFrame], float] = correlated_sd, alpha: float = 0.10,
                     deduction: Deduction = Deduction()) -> ProjectAccounts:
    """Per-project parcel table, conflicts and totals (see the module docstring for the steps).

    ``parcels`` needs ``parcel_id``, ``carbon_t`` and ``carbon_sd_t`` (t C per parcel) and, unless
    ``eligible_field`` is None, that boolean field; ``land_class``, ``species``, ``age_group`` are carried
    when present.  ``to_co2e``: the C -> CO2e conversion (``forestcarbon.models.carbon.co2e``; vector does
    not import models).  ``total_sd(rows)`` gets one project's rows (``parcel_id``, ``weight`` = share,
    ``carbon_t`` and ``carbon_sd_t`` of the whole parcel, ``x``, ``y`` its centroid) and returns the SD of
    Σ weight·carbon_t.  Intervals are normal, ``total ± z(1 - alpha/2)·SD``.
    """
    for c in ("carbon_t", "carbon_sd_t", *([eligible_field] if eligible_field else [])):
        if c not in parcels.columns:
            raise FieldError(f"parcels: no field {c!r} (fields: {[k for k in parcels.columns if k != 'geometry']})")
    if registration_field and registration_field not in projects.columns:
        raise FieldError(f"projects: no registration-date field {registration_field!r}")
    if conflict_rule == "first_registered" and not registration_field:
        raise ConfigError("conflict rule 'first_registered' needs the projects' registration_field")
    pieces = remove_slivers(overlay_pieces(projects, parcels, project_id, parcel_id), min_piece_m2)

    eligible = _eligible(parcels, eligible_field)[pieces["i_parcel"].to_numpy()]
    kept = pieces["kept_m2"].to_numpy()
    pieces["eligible_m2"] = np.where(eligible, kept, 0.0)
    pieces["ineligible_m2"] = np.where(eligible, 0.0, kept)

    claim = pieces[eligible & (kept > 0)]
    registered = (pd.Series(pd.to_datetime(projects[registration_field]).to_numpy(), index=projects[project_id].to_numpy())
                  if registration_field else None)
    counted_claim, conflicts = resolve_conflicts(claim, conflict_rule, registered)
    counted = np.zeros(len(pieces))
    counted[claim.index.to_numpy()] = counted_claim
    pieces["counted_m2"] = counted
    pieces["contested_m2"] = pieces["eligible_m2"] - counted

    parcel_m2 = pieces["parcel_m2"].to_numpy()
    whole = pieces["inside"].to_numpy() & (counted == parcel_m2)
    share = np.where(whole, 1.0, counted / parcel_m2)
    pc = parcels.iloc[pieces["i_parcel"].to_numpy()]
    c_t, sd_t = pc["carbon_t"].to_numpy("float64"), pc["carbon_sd_t"].to_numpy("float64")
    bad = (share > 0) & ~(np.isfinite(c_t) & np.isfinite(sd_t) & (sd_t >= 0))
    if bad.any():
        raise FieldError(f"parcels {listing(pd.unique(pieces['parcel_id'][bad]))} counted in projects have no finite "
                         f"carbon_t / carbon_sd_t ({int(bad.sum())} pieces)")

    z = NormalDist().inv_cdf(1 - alpha / 2)
    cent = shapely.centroid(np.asarray(pc.geometry.array, dtype=object))
    table = pd.DataFrame({
        "project_id": pieces["project_id"].to_numpy(), "parcel_id": pieces["parcel_id"].to_numpy(),
        "parcel_area_ha": parcel_m2 / 1e4, "inside_ha": pieces["piece_m2"].to_numpy() / 1e4,
        "sliver_ha": pieces["sliver_m2"].to_numpy() / 1e4, "eligible_ha": pieces["eligible_m2"].to_numpy() / 1e4,
        "ineligible_ha": pieces["ineligible_m2"].to_numpy() / 1e4, "contested_ha": pieces["contested_m2"].to_numpy() / 1e4,
        "counted_ha": counted / 1e4, "share": share, "whole_parcel": pieces["inside"].to_numpy(),
        **{c: pc[c].to_numpy() for c in PARCEL_COLUMNS if c in pc.columns},
        "is_eligible": eligible,
        "parcel_carbon_t": c_t, "parcel_carbon_sd_t": sd_t,
        "carbon_t": share * c_t, "carbon_sd_t": share * sd_t,
    })
    table["co2e_t"] = to_co2e(table["carbon_t"].to_numpy())
    table["carbon_lo_t"] = (table["carbon_t"] - z * table["carbon_sd_t"]).clip(lower=0.0)
    table["carbon_hi_t"] = table["carbon_t"] + z * table["carbon_sd_t"]
    table["_x"], table["_y"] = shapely.get_x(cent), shapely.get_y(cent)

    carbon_of = dict(zip(parcels[parcel_id], parcels["carbon_t"]))
    if len(conflicts):
        area_of = dict(zip(pieces["parcel_id"], parcel_m2))
        conflicts["overlap_ha"] = conflicts["overlap_m2"] / 1e4
        conflicts["carbon_at_stake_t"] = [o / area_of[p] * carbon_of[p] for o, p in
                                          zip(conflicts["overlap_m2"], conflicts["parcel_id"])]
        conflicts["co2e_at_stake_t"] = to_co2e(conflicts["carbon_at_stake_t"].to_numpy())
        conflicts["rule"] = conflict_rule
        conflicts = conflicts.drop(columns="overlap_m2")
    else:
        conflicts = pd.DataFrame(columns=["project_a", "project_b", "parcel_id", "overlap_ha", "awarded_to",
                                          "carbon_at_stake_t", "co2e_at_stake_t", "rule"])

    totals = []
    by_project = dict(tuple(table.groupby("project_id", sort=False)))
    n_conflicts = pd.concat([conflicts["project_a"], conflicts["project_b"]]).value_counts()
    for pid in projects[project_id]:
        t = by_project.get(pid, table.iloc[:0])
        counts = t[t["share"] > 0]
        carbon = float(counts["carbon_t"].sum())
        rows = pd.DataFrame({"parcel_id": counts["parcel_id"], "weight": counts["share"],
                             "carbon_t": counts["parcel_carbon_t"], "carbon_sd_t": counts["parcel_carbon_sd_t"],
                             "x": counts["_x"], "y": counts["_y"]})
        sd = float(total_sd(rows)) if len(rows) else 0.0
        rel = z * sd / carbon if carbon > 0 else (0.0 if sd == 0 else np.inf)
        frac = float(deduction.fraction(rel))
        totals.append({
            "project_id": pid, "area_ha": float(counts["counted_ha"].sum()), "n_parcels": int(len(counts)),
            "inside_ha": float(t["inside_ha"].sum()), "sliver_ha": float(t["sliver_ha"].sum()),
            "ineligible_ha": float(t["ineligible_ha"].sum()), "contested_ha": float(t["contested_ha"].sum()),
            "n_conflicts": int(n_conflicts.get(pid, 0)),
            "carbon_t": carbon, "co2e_t": float(to_co2e(carbon)), "carbon_sd_t": sd,
            "carbon_lo_t": max(carbon - z * sd, 0.0), "carbon_hi_t": carbon + z * sd, "rel_half_width": rel,
            "exceeds_precision": bool(rel > deduction.threshold_rel), "deduction_rule": deduction.rule,
            "deduction_fraction": frac, "deduction_t": carbon * frac, "carbon_credited_t": carbon * (1 - frac),
            "co2e_credited_t": float(to_co2e(carbon * (1 - frac))), "deduction_source": deduction.source,
        })
    table = table.drop(columns=["_x", "_y"]).sort_values(["project_id", "parcel_id"]).reset_index(drop=True)
    settings = {"min_piece_m2": min_piece_m2, "eligible_field": eligible_field, "conflict_rule": conflict_rule,
                "registration_field": registration_field, "alpha": alpha, "z": z,
                "total_sd": getattr(total_sd, "__name__", str(total_sd)), "deduction": deduction.__dict__}
    return ProjectAccounts(table, conflicts.reset_index(drop=True), pd.DataFrame(totals), settings)
