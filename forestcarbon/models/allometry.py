"""Single-tree biomass from a registry of published allometric equations.

The registry is a YAML file (default: ``forestcarbon/configs/allometry.yaml``)
listing, per species group, aboveground and belowground equations with their
DBH ranges, carbon fractions and a ``source`` for every coefficient.  Every
tree row that leaves :func:`tree_biomass` names the equations used and whether
they are verified against their source.

Units: DBH ``dbh_cm`` in cm, height ``height_m`` in m, wood density in g/cm³,
biomass in kg of dry matter, carbon in kg C, CO2e in kg (× 44/12).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from ..errors import AllometryError, FieldError

CO2_PER_C = 44.0 / 12.0
"""Molar mass ratio CO2 / C (IPCC)."""

FORMS = ("power", "chave2014")


@dataclass(frozen=True)
class Equation:
    """One allometric equation; ``evaluate`` returns kg of dry biomass."""

    id: str
    form: str
    source: str
    dbh_min_cm: float = 0.0
    dbh_max_cm: float = np.inf
    a: float = np.nan
    b: float = np.nan
    c: float = 0.0
    verified: bool = False

    def evaluate(self, dbh_cm, height_m, wood_density_g_cm3=None) -> np.ndarray:
        d = np.asarray(dbh_cm, dtype="float64")
        h = np.asarray(height_m, dtype="float64")
        if self.form == "power":
            return self.a * d**self.b * h**self.c
        if self.form == "chave2014":
            # Chave et al. 2014, eq. 4; BIOMASS::computeAGB returns this / 1000 in Mg.
            rho = np.asarray(wood_density_g_cm3, dtype="float64")
            return 0.0673 * (rho * d**2 * h) ** 0.976
        raise AllometryError(f"equation {self.id!r}: unknown form {self.form!r}")

    def in_range(self, dbh_cm) -> np.ndarray:
        d = np.asarray(dbh_cm, dtype="float64")
        return (d >= self.dbh_min_cm) & (d < self.dbh_max_cm)


@dataclass(frozen=True)
class SpeciesGroup:
    name: str
    names: tuple[str, ...]
    aboveground: tuple[Equation, ...]
    belowground: tuple[Equation, ...] = ()
    carbon_fraction_above: float | None = None
    carbon_fraction_below: float | None = None
    wood_density_g_cm3: float | None = None
    wood_density_source: str | None = None


@dataclass(frozen=True)
class RootShoot:
    threshold_agb_mg_ha: float
    low: float
    high: float
    source: str

    def ratio(self, agb_mg_ha) -> np.ndarray:
        return np.where(np.asarray(agb_mg_ha) <= self.threshold_agb_mg_ha, self.low, self.high)


@dataclass(frozen=True)
class AllometryRegistry:
    version: str
    groups: dict[str, SpeciesGroup]
    carbon_fraction: float
    carbon_fraction_source: str
    root_shoot: RootShoot
    source_path: str = ""
    _lookup: dict[str, str] = field(default_factory=dict, repr=False)

    def resolve(self, species: str) -> str | None:
        """Species group for a species name (Latin, Chinese, common or code), case-insensitive."""
        return self._lookup.get(str(species).strip().casefold())

    def equation(self, equation_id: str) -> Equation:
        for g in self.groups.values():
            for e in (*g.aboveground, *g.belowground):
                if e.id == equation_id:
                    return e
        raise AllometryError(f"{self.source_path}: no equation with id {equation_id!r}")


def _equation(raw: dict, where: str) -> Equation:
    missing = [k for k in ("id", "form", "source") if not raw.get(k)]
    if missing:
        raise AllometryError(f"{where}: equation lacks {', '.join(missing)}")
    if raw["form"] not in FORMS:
        raise AllometryError(f"{where}: equation {raw['id']!r} has unknown form {raw['form']!r} (known: {', '.join(FORMS)})")
    if raw["form"] == "power" and any(k not in raw for k in ("a", "b")):
        raise AllometryError(f"{where}: power equation {raw['id']!r} needs coefficients a and b")
    keys = {"id", "form", "source", "dbh_min_cm", "dbh_max_cm", "a", "b", "c", "verified"}
    return Equation(**{k: v for k, v in raw.items() if k in keys})


def load_registry(path: Path | str) -> AllometryRegistry:
    """Load and check an allometry YAML file."""
    path = Path(path)
    if not path.is_file():
        raise AllometryError(f"allometry table not found: {path}")
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    defaults = raw.get("defaults", {})
    groups: dict[str, SpeciesGroup] = {}
    lookup: dict[str, str] = {}
    for gname, g in (raw.get("groups") or {}).items():
        where = f"{path}: group {gname!r}"
        above = tuple(_equation(e, where) for e in g.get("aboveground", []))
        if not above:
            raise AllometryError(f"{where}: no aboveground equation")
        below = tuple(_equation(e, where) for e in g.get("belowground", []))
        groups[gname] = SpeciesGroup(
            name=gname,
            names=tuple(g.get("names", [])),
            aboveground=above,
            belowground=below,
            carbon_fraction_above=g.get("carbon_fraction_above"),
            carbon_fraction_below=g.get("carbon_fraction_below"),
            wood_density_g_cm3=g.get("wood_density_g_cm3"),
            wood_density_source=g.get("wood_density_source"),
        )
        for n in (gname, *g.get("names", [])):
            key = str(n).strip().casefold()
            if key in lookup and lookup[key] != gname:
                raise AllometryError(f"{path}: name {n!r} is listed in groups {lookup[key]!r} and {gname!r}")
            lookup[key] = gname
    rs = defaults["root_shoot"]
    return AllometryRegistry(
        version=str(raw.get("version", "")),
        groups=groups,
        carbon_fraction=float(defaults["carbon_fraction"]),
        carbon_fraction_source=defaults["carbon_fraction_source"],
        root_shoot=RootShoot(float(rs["threshold_agb_mg_ha"]), float(rs["low"]), float(rs["high"]), rs["source"]),
        source_path=str(path),
        _lookup=lookup,
    )


def _pick(equations: tuple[Equation, ...], dbh_cm: np.ndarray) -> np.ndarray:
    """Index of the first equation whose DBH range holds each tree (-1 if none)."""
    idx = np.full(dbh_cm.shape, -1, dtype=int)
    for i, eq in reversed(list(enumerate(equations))):
        idx[eq.in_range(dbh_cm)] = i
    return idx


def _rows(mask: np.ndarray, index: pd.Index, limit: int = 5) -> str:
    rows = list(index[mask][:limit])
    more = f" (+{int(mask.sum()) - limit} more)" if mask.sum() > limit else ""
    return f"{rows}{more}"


def validate_trees(trees: pd.DataFrame, source: str = "trees") -> None:
    """Reject impossible tree rows with a one-line message naming rows and values."""
    for col in ("species", "dbh_cm", "height_m"):
        if col not in trees.columns:
            raise FieldError(f"{source}: missing column {col!r} (have {list(trees.columns)})")
    d = pd.to_numeric(trees["dbh_cm"], errors="coerce").to_numpy()
    h = pd.to_numeric(trees["height_m"], errors="coerce").to_numpy()
    bad = ~np.isfinite(d) | (d <= 0)
    if bad.any():
        raise FieldError(f"{source}: dbh_cm must be a positive number; rows {_rows(bad, trees.index)} have {list(trees['dbh_cm'][bad][:5])}")
    bad = ~np.isfinite(h) | (h < 1.3)
    if bad.any():
        raise FieldError(f"{source}: height_m must be >= 1.3 m for height-based equations; rows {_rows(bad, trees.index)} have {list(trees['height_m'][bad][:5])}")


def tree_biomass(
    trees: pd.DataFrame,
    registry: AllometryRegistry,
    plot_agb_mg_ha: pd.Series | np.ndarray | None = None,
    source: str = "trees",
    fallback: dict[str, str] | None = None,
) -> pd.DataFrame:
    """Per-tree AGB, BGB, carbon and CO2e.

    Parameters
    ----------
    trees
        Columns ``species``, ``dbh_cm`` (cm), ``height_m`` (m); optional
        ``wood_density_g_cm3`` (g/cm³, overrides the group's value).
    plot_agb_mg_ha
        AGB density (Mg/ha) of the stand each tree stands in, aligned with
        ``trees``; selects the IPCC root-to-shoot ratio for groups without a
        belowground equation.  ``None``: the ratio for the low-density class.
    fallback
        Species (name or code) → group for species the table does not know;
        the key ``"*"`` maps every other unknown species.  Such rows get
        ``species_source = "fallback"`` so the mapping stays visible.

    Returns
    -------
    A copy of ``trees`` with ``species_group``, ``species_source``, ``agb_kg``, ``bgb_kg``,
    ``biomass_kg``, ``carbon_kg``, ``co2e_kg``, ``equation_id`` (above and
    below, ``;``-joined), ``equation_verified`` and ``dbh_in_range``.
    """
    validate_trees(trees, source)
    out = trees.copy()
    groups = out["species"].map(registry.resolve)
    out["species_source"] = np.where(groups.isna(), "fallback", "table")
    if fallback:
        bad = sorted(set(fallback.values()) - set(registry.groups))
        if bad:
            raise AllometryError(f"fallback maps to unknown species groups {bad}; groups are {sorted(registry.groups)}")
        miss = groups.isna()
        mapped = out.loc[miss, "species"].astype(str).map(lambda sp: fallback.get(sp, fallback.get("*")))
        groups = groups.where(~miss, mapped)
    unknown = groups.isna().to_numpy()
    if unknown.any():
        names = sorted(set(out.loc[unknown, "species"].astype(str)))
        raise AllometryError(
            f"{source}: no allometric equation for species {names[:5]} (rows {_rows(unknown, out.index)}); "
            f"add them to a group's names in {registry.source_path}"
        )
    out["species_group"] = groups
    d = out["dbh_cm"].to_numpy(float)
    h = out["height_m"].to_numpy(float)
    rho_tree = out["wood_density_g_cm3"].to_numpy(float) if "wood_density_g_cm3" in out else np.full(len(out), np.nan)
    agb = np.full(len(out), np.nan)
    bgb = np.full(len(out), np.nan)
    cf_a = np.full(len(out), registry.carbon_fraction)
    cf_b = np.full(len(out), registry.carbon_fraction)
    eq_ids = np.empty(len(out), dtype=object)
    verified = np.zeros(len(out), dtype=bool)
    in_range = np.ones(len(out), dtype=bool)
    density = (
        np.full(len(out), -np.inf) if plot_agb_mg_ha is None else np.asarray(plot_agb_mg_ha, dtype=float)
    )
    for gname, sel in out.groupby("species_group").indices.items():
        g = registry.groups[gname]
        rho = rho_tree[sel].copy()
        if g.wood_density_g_cm3 is not None:
            rho = np.where(np.isfinite(rho), rho, g.wood_density_g_cm3)
        needs_rho = any(e.form == "chave2014" for e in g.aboveground + g.belowground)
        if needs_rho and not np.all(np.isfinite(rho)):
            miss = np.zeros(len(out), dtype=bool)
            miss[sel[~np.isfinite(rho)]] = True
            raise FieldError(f"{source}: species group {gname!r} needs wood_density_g_cm3; rows {_rows(miss, out.index)} have none")
        ia = _pick(g.aboveground, d[sel])
        in_range[sel] = ia >= 0
        ia = np.where(ia >= 0, ia, _nearest_range(g.aboveground, d[sel]))
        ids_a = np.array([g.aboveground[i].id for i in ia], dtype=object)
        ver = np.array([g.aboveground[i].verified for i in ia])
        for i, eq in enumerate(g.aboveground):
            m = ia == i
            agb[sel[m]] = eq.evaluate(d[sel][m], h[sel][m], rho[m])
        if g.belowground:
            ib = _pick(g.belowground, d[sel])
            ib = np.where(ib >= 0, ib, _nearest_range(g.belowground, d[sel]))
            ids_b = np.array([g.belowground[i].id for i in ib], dtype=object)
            ver &= np.array([g.belowground[i].verified for i in ib])
            for i, eq in enumerate(g.belowground):
                m = ib == i
                bgb[sel[m]] = eq.evaluate(d[sel][m], h[sel][m], rho[m])
        else:
            r = registry.root_shoot.ratio(density[sel])
            bgb[sel] = agb[sel] * r
            ids_b = np.where(r == registry.root_shoot.low, "ipcc2019_rs_low", "ipcc2019_rs_high").astype(object)
        eq_ids[sel] = [f"{gname}:{a};{b}" for a, b in zip(ids_a, ids_b)]
        verified[sel] = ver
        if g.carbon_fraction_above is not None:
            cf_a[sel] = g.carbon_fraction_above
        if g.carbon_fraction_below is not None:
            cf_b[sel] = g.carbon_fraction_below
    out["agb_kg"] = agb
    out["bgb_kg"] = bgb
    out["biomass_kg"] = agb + bgb
    out["carbon_kg"] = agb * cf_a + bgb * cf_b
    out["co2e_kg"] = out["carbon_kg"] * CO2_PER_C
    out["equation_id"] = eq_ids
    out["equation_verified"] = verified
    out["dbh_in_range"] = in_range
    return out


def _nearest_range(equations: tuple[Equation, ...], dbh_cm: np.ndarray) -> np.ndarray:
    """For trees outside every range: the equation whose range is nearest (flagged by ``dbh_in_range``)."""
    gaps = np.stack([np.maximum(e.dbh_min_cm - dbh_cm, dbh_cm - e.dbh_max_cm) for e in equations])
    return np.argmin(gaps, axis=0)
