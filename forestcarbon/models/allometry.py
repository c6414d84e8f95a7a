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

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from ..errors import AllometryError, FieldError

log = logging.getLogger(__name__)

CO2_PER_C = 44.0 / 12.0
"""Molar mass ratio CO2 / C (IPCC)."""

FORMS = ("power", "chave2014", "volume_bcef", "bamboo_age")


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
    d: float = np.nan
    e: float = np.nan
    f: float = 0.0
    bcef_mg_m3: float = np.nan
    rse_log: float | None = None
    rse_source: str | None = None
    verified: bool = False
    note: str | None = None

    @property
    def uses_height(self) -> bool:
        return self.form in ("chave2014", "volume_bcef") or (self.form == "power" and self.c != 0)

    def evaluate(self, dbh_cm, height_m, wood_density_g_cm3=None, age=None) -> np.ndarray:
        """Dry biomass (kg) of each tree.

        power       : a · D^b · H^c
        chave2014   : 0.0673 · (ρ · D² · H)^0.976 (Chave et al. 2014, eq. 4; BIOMASS::computeAGB × 1000)
        volume_bcef : V · BCEF · 1000 with stem volume V = a · D^b · H^c (m³) and BCEF in Mg/m³
        bamboo_age  : a · D^b · (c·A / (d + A))^e + f per culm, A the culm age in the source's unit
        """
        dbh = np.asarray(dbh_cm, dtype="float64")
        h = np.asarray(height_m, dtype="float64")
        if self.form == "power":
            return self.a * dbh**self.b * h**self.c
        if self.form == "chave2014":
            rho = np.asarray(wood_density_g_cm3, dtype="float64")
            return 0.0673 * (rho * dbh**2 * h) ** 0.976
        if self.form == "volume_bcef":
            return self.a * dbh**self.b * h**self.c * self.bcef_mg_m3 * 1000.0
        if self.form == "bamboo_age":
            a_ = np.asarray(age, dtype="float64")
            return self.a * dbh**self.b * (self.c * a_ / (self.d + a_)) ** self.e + self.f
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
    carbon_fraction_source: str | None = None
    wood_density_g_cm3: float | None = None
    wood_density_source: str | None = None
    root_shoot: "RootShoot | None" = None  # the group's own ratio, instead of the default


@dataclass(frozen=True)
class RootShoot:
    """Root-to-shoot ratio by stand AGB density: ``low`` up to ``threshold_agb_mg_ha`` (Mg/ha), ``high`` above."""

    threshold_agb_mg_ha: float
    low: float
    high: float
    source: str
    id: str = "ipcc2019_rs"
    verified: bool = True

    def ratio(self, agb_mg_ha) -> np.ndarray:
        return np.where(np.asarray(agb_mg_ha) <= self.threshold_agb_mg_ha, self.low, self.high)

    def ids(self, agb_mg_ha) -> np.ndarray:
        """Equation id of the ratio each tree gets (``<id>_low`` / ``<id>_high``; ``<id>`` for a single ratio)."""
        if np.isinf(self.threshold_agb_mg_ha):
            return np.full(np.shape(agb_mg_ha), self.id, dtype=object)
        low = np.asarray(agb_mg_ha) <= self.threshold_agb_mg_ha
        return np.where(low, f"{self.id}_low", f"{self.id}_high").astype(object)

    @classmethod
    def from_yaml(cls, raw: dict, where: str) -> "RootShoot":
        if "ratio" in raw:  # one ratio whatever the density
            raw = {**raw, "threshold_agb_mg_ha": np.inf, "low": raw["ratio"], "high": raw["ratio"]}
        missing = [k for k in ("threshold_agb_mg_ha", "low", "high", "source") if k not in raw]
        if missing:
            raise AllometryError(f"{where}: root_shoot lacks {', '.join(missing)}")
        return cls(float(raw["threshold_agb_mg_ha"]), float(raw["low"]), float(raw["high"]), raw["source"],
                   raw.get("id", "ipcc2019_rs"), bool(raw.get("verified", True)))


@dataclass(frozen=True)
class AllometryRegistry:
    version: str
    groups: dict[str, SpeciesGroup]
    carbon_fraction: float
    carbon_fraction_source: str
    root_shoot: RootShoot
    source_path: str = ""
    species: pd.DataFrame | None = field(default=None, repr=False)
    _lookup: dict[str, str] = field(default_factory=dict, repr=False)

    def resolve(self, species: str) -> str | None:
        """Species group for a species name (Latin, Chinese, common or code), case-insensitive."""
        return self._lookup.get(str(species).strip().casefold())

    def equation(self, equation_id: str) -> tuple[str, Equation]:
        """(group, equation) of an equation id."""
        for g in self.groups.values():
            for e in (*g.aboveground, *g.belowground):
                if e.id == equation_id:
                    return g.name, e
        known = sorted({e.id for g in self.groups.values() for e in (*g.aboveground, *g.belowground)})
        raise AllometryError(f"{self.source_path}: no equation with id {equation_id!r} (known: {', '.join(known)})")

    def equations_table(self) -> pd.DataFrame:
        """One row per (group, equation): form, coefficients, DBH range, residual error, source, verified."""
        rows = []
        for g in self.groups.values():
            for part, eqs in (("aboveground", g.aboveground), ("belowground", g.belowground)):
                for e in eqs:
                    rows.append({"group": g.name, "part": part, **{k: getattr(e, k) for k in Equation.__dataclass_fields__},
                                 "wood_density_g_cm3": g.wood_density_g_cm3, "wood_density_source": g.wood_density_source,
                                 "carbon_fraction": g.carbon_fraction_above if part == "aboveground" else g.carbon_fraction_below,
                                 "carbon_fraction_source": g.carbon_fraction_source})
            if g.root_shoot is not None:
                rows.append(self._root_shoot_row(g.name, g.root_shoot))
        rows.append(self._root_shoot_row("*", self.root_shoot))
        rows.append({"group": "*", "part": "carbon", "id": "default_carbon_fraction", "form": "carbon_fraction",
                     "carbon_fraction": self.carbon_fraction, "source": self.carbon_fraction_source, "verified": True})
        return pd.DataFrame(rows)

    @staticmethod
    def _root_shoot_row(group: str, rs: "RootShoot") -> dict:
        """Root-to-shoot ratio as a table row: a = ratio up to the threshold c (Mg/ha), b = ratio above."""
        return {"group": group, "part": "belowground", "id": f"{rs.id}_low / {rs.id}_high", "form": "root_shoot",
                "a": rs.low, "b": rs.high, "c": rs.threshold_agb_mg_ha, "source": rs.source, "verified": rs.verified}


_NEEDS = {"power": ("a", "b"), "chave2014": (), "volume_bcef": ("a", "b", "bcef_mg_m3"),
          "bamboo_age": ("a", "b", "c", "d", "e")}


def _equation(raw: dict, where: str) -> Equation:
    missing = [k for k in ("id", "form", "source") if not raw.get(k)]
    if missing:
        raise AllometryError(f"{where}: equation lacks {', '.join(missing)}")
    if raw["form"] not in FORMS:
        raise AllometryError(f"{where}: equation {raw['id']!r} has unknown form {raw['form']!r} (known: {', '.join(FORMS)})")
    lacking = [k for k in _NEEDS[raw["form"]] if k not in raw]
    if lacking:
        raise AllometryError(f"{where}: {raw['form']} equation {raw['id']!r} needs coefficients {', '.join(lacking)}")
    if raw.get("rse_log") is not None and not raw.get("rse_source"):
        raise AllometryError(f"{where}: equation {raw['id']!r} gives rse_log without rse_source")
    keys = set(Equation.__dataclass_fields__)
    unknown = sorted(set(raw) - keys)
    if unknown:
        raise AllometryError(f"{where}: equation {raw['id']!r} has unknown keys {unknown}")
    return Equation(**raw)


def load_registry(path: Path | str) -> AllometryRegistry:
    """Load and check an allometry YAML file and the species table it names."""
    path = Path(path)
    if not path.is_file():
        raise AllometryError(f"allometry table not found: {path}")
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    defaults = raw.get("defaults", {})
    groups: dict[str, SpeciesGroup] = {}
    lookup: dict[str, str] = {}

    def add(name, gname, where):
        key = str(name).strip().casefold()
        if not key or key == "nan":
            return
        if key in lookup and lookup[key] != gname:
            raise AllometryError(f"{where}: name {name!r} is listed in groups {lookup[key]!r} and {gname!r}")
        lookup[key] = gname

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
            carbon_fraction_source=g.get("carbon_fraction_source"),
            root_shoot=RootShoot.from_yaml({"id": f"{gname}_rs", **g["root_shoot"]}, where) if g.get("root_shoot") else None,
            wood_density_g_cm3=g.get("wood_density_g_cm3"),
            wood_density_source=g.get("wood_density_source"),
        )
        for n in (gname, *g.get("names", [])):
            add(n, gname, path)
    species = None
    if raw.get("species_table"):
        species = read_species_table(path.parent / raw["species_table"], set(groups))
        for row in species.itertuples():
            for n in (row.species_code, row.latin_name, row.chinese_name, row.common_name):
                add(n, row.group, species.attrs["path"])
    rs = defaults["root_shoot"]
    return AllometryRegistry(
        version=str(raw.get("version", "")),
        groups=groups,
        carbon_fraction=float(defaults["carbon_fraction"]),
        carbon_fraction_source=defaults["carbon_fraction_source"],
        root_shoot=RootShoot.from_yaml(rs, f"{path}: defaults"),
        source_path=str(path),
        species=species,
        _lookup=lookup,
    )


SPECIES_COLUMNS = ("species_code", "latin_name", "chinese_name", "common_name", "group")


def read_species_table(path: Path, groups: set[str]) -> pd.DataFrame:
    """The species table: code, Latin, Chinese and common names of each species and its equation group."""
    if not path.is_file():
        raise AllometryError(f"species table not found: {path}")
    t = pd.read_csv(path, dtype=str, comment="#").fillna("")
    missing = [c for c in SPECIES_COLUMNS if c not in t.columns]
    if missing:
        raise AllometryError(f"{path}: missing columns {missing} (have {list(t.columns)})")
    bad = ~t["group"].isin(groups)
    if bad.any():
        raise AllometryError(f"{path}: rows {list(t.index[bad] + 2)[:5]} name unknown groups "
                             f"{sorted(set(t.loc[bad, 'group']))[:5]}; groups are {sorted(groups)}")
    t.attrs["path"] = str(path)
    return t


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
    """Reject impossible tree rows with a one-line message naming rows and values.

    Heights are checked later, only for trees whose equation uses height.
    """
    for col in ("species", "dbh_cm"):
        if col not in trees.columns:
            raise FieldError(f"{source}: missing column {col!r} (have {list(trees.columns)})")
    d = pd.to_numeric(trees["dbh_cm"], errors="coerce").to_numpy()
    bad = ~np.isfinite(d) | (d <= 0)
    if bad.any():
        raise FieldError(f"{source}: dbh_cm must be a positive number; rows {_rows(bad, trees.index)} have {list(trees['dbh_cm'][bad][:5])}")


def _column(trees: pd.DataFrame, col: str) -> np.ndarray:
    return pd.to_numeric(trees[col], errors="coerce").to_numpy(float) if col in trees else np.full(len(trees), np.nan)


DBH_POLICIES = ("warn", "reject")


def species_groups(species: pd.Series, registry: AllometryRegistry, fallback: dict[str, str] | None = None,
                   source: str = "trees") -> tuple[pd.Series, np.ndarray]:
    """(group of each tree, ``table`` or ``fallback``): names resolve through the registry, then ``fallback``
    (species or code → group, ``"*"`` for all others); a species nobody maps is an error naming it and its rows."""
    groups = species.map(registry.resolve)
    how = np.where(groups.isna(), "fallback", "table")
    if fallback:
        bad = sorted(set(fallback.values()) - set(registry.groups))
        if bad:
            raise AllometryError(f"fallback maps to unknown species groups {bad}; groups are {sorted(registry.groups)}")
        miss = groups.isna()
        mapped = species[miss].astype(str).map(lambda sp: fallback.get(sp, fallback.get("*")))
        groups = groups.where(~miss, mapped)
    unknown = groups.isna().to_numpy()
    if unknown.any():
        names = sorted(set(species[unknown].astype(str)))
        raise AllometryError(
            f"{source}: no allometric equation for species {names[:5]} (rows {_rows(unknown, species.index)}); "
            f"add them to {registry.source_path} or its species table, or map them to a group (allometry_fallback)"
        )
    return groups, how


def tree_biomass(
    trees: pd.DataFrame,
    registry: AllometryRegistry,
    plot_agb_mg_ha: pd.Series | np.ndarray | None = None,
    source: str = "trees",
    fallback: dict[str, str] | None = None,
    equation: str | None = None,
    dbh_out_of_range: str = "warn",
) -> pd.DataFrame:
    """Per-tree AGB, BGB, carbon and CO2e.

    Parameters
    ----------
    trees
        Columns ``species``, ``dbh_cm`` (cm); ``height_m`` (m) where an equation
        uses height; optional ``wood_density_g_cm3`` (g/cm³, overrides the
        group's value) and ``age`` (culm age for bamboo equations, in the
        equation's unit).
    plot_agb_mg_ha
        AGB density (Mg/ha) of the stand each tree stands in, aligned with
        ``trees``; selects the IPCC root-to-shoot ratio for groups without a
        belowground equation.  ``None``: the ratio for the low-density class.
    fallback
        Species (name or code) → group for species the table does not know;
        the key ``"*"`` maps every other unknown species.  Such rows get
        ``species_source = "fallback"`` so the mapping stays visible.
    equation
        An aboveground equation id applied to every tree instead of the
        species' own (belowground then by the IPCC root-to-shoot ratio).
    dbh_out_of_range
        ``"warn"``: trees outside every DBH range of their group use the
        nearest range's equation, are flagged (``dbh_in_range``) and counted in
        a warning; ``"reject"``: such trees are an error naming rows and values.

    Returns
    -------
    A copy of ``trees`` with ``species_group``, ``species_source``, ``agb_kg``, ``bgb_kg``,
    ``biomass_kg``, ``carbon_kg``, ``co2e_kg``, ``equation_id`` (above and
    below, ``;``-joined), ``equation_verified``, ``rse_log`` (aboveground
    residual standard error on the log scale, NaN where the source gives none),
    ``dbh_in_range`` and ``wood_density_used_g_cm3``.
    """
    if dbh_out_of_range not in DBH_POLICIES:
        raise AllometryError(f"dbh_out_of_range must be one of {DBH_POLICIES}, not {dbh_out_of_range!r}")
    validate_trees(trees, source)
    out = trees.copy()
    n = len(out)
    if equation is not None:
        forced_group, forced = registry.equation(equation)
        groups = pd.Series(forced_group, index=out.index)
        out["species_source"] = "forced"
    else:
        groups, out["species_source"] = species_groups(out["species"], registry, fallback, source)
    out["species_group"] = groups
    d = out["dbh_cm"].to_numpy(float)
    h = _column(out, "height_m")
    age = _column(out, "age")
    rho_tree = _column(out, "wood_density_g_cm3")
    rho_used = np.full(n, np.nan)
    agb, bgb, rse = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
    cf_a = np.full(n, registry.carbon_fraction)
    cf_b = np.full(n, registry.carbon_fraction)
    eq_ids = np.empty(n, dtype=object)
    verified = np.zeros(n, dtype=bool)
    in_range = np.ones(n, dtype=bool)
    density = np.full(n, -np.inf) if plot_agb_mg_ha is None else np.asarray(plot_agb_mg_ha, dtype=float)
    for gname, sel in out.groupby("species_group").indices.items():
        g = registry.groups[gname]
        above = (forced,) if equation is not None else g.aboveground
        below = () if equation is not None else g.belowground
        rho = rho_tree[sel].copy()
        if g.wood_density_g_cm3 is not None:
            rho = np.where(np.isfinite(rho), rho, g.wood_density_g_cm3)
        rho_used[sel] = rho
        ia = _pick(above, d[sel])
        in_range[sel] = ia >= 0
        ia = np.where(ia >= 0, ia, _nearest_range(above, d[sel]))
        ib = _pick(below, d[sel]) if below else None
        if ib is not None:
            ib = np.where(ib >= 0, ib, _nearest_range(below, d[sel]))
        _check_inputs(out, sel, [(above, ia)] + ([(below, ib)] if below else []), h, rho, age, gname, source)
        ids_a = np.array([above[i].id for i in ia], dtype=object)
        ver = np.array([above[i].verified for i in ia])
        rse[sel] = [np.nan if above[i].rse_log is None else above[i].rse_log for i in ia]
        for i, eq in enumerate(above):
            m = ia == i
            agb[sel[m]] = eq.evaluate(d[sel][m], h[sel][m], rho[m], age[sel][m])
        if below:
            ids_b = np.array([below[i].id for i in ib], dtype=object)
            ver &= np.array([below[i].verified for i in ib])
            for i, eq in enumerate(below):
                m = ib == i
                bgb[sel[m]] = eq.evaluate(d[sel][m], h[sel][m], rho[m], age[sel][m])
        else:
            rs = g.root_shoot or registry.root_shoot
            bgb[sel] = agb[sel] * rs.ratio(density[sel])
            ids_b = rs.ids(density[sel])
            ver &= rs.verified
        eq_ids[sel] = [f"{gname}:{a};{b}" for a, b in zip(ids_a, ids_b)]
        verified[sel] = ver
        if g.carbon_fraction_above is not None:
            cf_a[sel] = g.carbon_fraction_above
        if g.carbon_fraction_below is not None:
            cf_b[sel] = g.carbon_fraction_below
    if not in_range.all():
        rows = _rows(~in_range, out.index)
        msg = (f"{source}: {int((~in_range).sum())} trees have DBH outside every range of their equations "
               f"(rows {rows}, dbh_cm {list(out['dbh_cm'][~in_range][:5])})")
        if dbh_out_of_range == "reject":
            raise AllometryError(msg + "; dbh_out_of_range is 'reject'")
        log.warning("%s; the nearest range's equation is used and the rows are flagged dbh_in_range = false", msg)
    out["agb_kg"] = agb
    out["bgb_kg"] = bgb
    out["biomass_kg"] = agb + bgb
    out["carbon_kg"] = agb * cf_a + bgb * cf_b
    out["co2e_kg"] = out["carbon_kg"] * CO2_PER_C
    out["equation_id"] = eq_ids
    out["equation_verified"] = verified
    out["rse_log"] = rse
    out["dbh_in_range"] = in_range
    out["wood_density_used_g_cm3"] = rho_used  # the tree's own, else its group's (NaN where none applies)
    return out


def _check_inputs(trees, sel, picks, h, rho, age, gname, source):
    """Heights >= 1.3 m, wood densities and ages present wherever the chosen equations need them."""
    def rows_where(bad_local):
        mask = np.zeros(len(trees), dtype=bool)
        mask[sel[bad_local]] = True
        return mask

    for eqs, idx in picks:
        for i, eq in enumerate(eqs):
            m = idx == i
            if eq.uses_height:
                bad = m & ~(h[sel] >= 1.3)
                if bad.any():
                    mask = rows_where(bad)
                    raise FieldError(f"{source}: height_m must be >= 1.3 m for height-based equation {eq.id!r}; "
                                     f"rows {_rows(mask, trees.index)} have {list(trees['height_m'][mask][:5]) if 'height_m' in trees else 'no height_m column'}")
            if eq.form == "chave2014":
                bad = m & ~np.isfinite(rho)
                if bad.any():
                    raise FieldError(f"{source}: species group {gname!r} needs wood_density_g_cm3; "
                                     f"rows {_rows(rows_where(bad), trees.index)} have none")
            if eq.form == "bamboo_age":
                bad = m & ~(age[sel] > 0)
                if bad.any():
                    mask = rows_where(bad)
                    raise FieldError(f"{source}: bamboo equation {eq.id!r} needs a positive culm 'age'; "
                                     f"rows {_rows(mask, trees.index)} have {list(trees['age'][mask][:5]) if 'age' in trees else 'no age column'}")


def _nearest_range(equations: tuple[Equation, ...], dbh_cm: np.ndarray) -> np.ndarray:
    """For trees outside every range: the equation whose range is nearest (flagged by ``dbh_in_range``)."""
    gaps = np.stack([np.maximum(e.dbh_min_cm - dbh_cm, dbh_cm - e.dbh_max_cm) for e in equations])
    return np.argmin(gaps, axis=0)
