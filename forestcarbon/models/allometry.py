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
from ..fileio import file_rows
from .carbon import CO2_PER_C, CarbonConversion

log = logging.getLogger(__name__)

FORMS = ("power", "ln_power", "log10_power", "power_d2h", "ln_d2h", "chave2014", "volume_bcef", "bamboo_age")


LOG_BIAS = ("included", "corrected", "none", "unknown")
"""How an equation's printed coefficients relate to the log back-transformation bias:

* ``included``  -- the coefficients already give the mean (e.g. Chave et al. 2014's 0.0673
  = exp(-2.7616 + 0.3574²/2) with BIOMASS's posterior intercept -2.7616, residual SD 0.3574);
* ``corrected`` -- fitted on the log scale, the source prints a correction factor
  (``bias_correction_factor``, e.g. Baskerville 1972 exp(SEE²/2)); it is applied here;
* ``none``      -- fitted on the original scale (nonlinear least squares): no back-transformation;
* ``unknown``   -- the source does not say; nothing is applied and outputs say so.

Every evaluated equation therefore estimates mean biomass (except ``unknown``), and the
Monte Carlo's residual draws are mean-one: exp(ε − σ²/2).
"""


@dataclass(frozen=True)
class Component:
    """One additive part of an equation (e.g. stem, branches, foliage), in the equation's form, with the
    log-bias correction factor its source prints for it (applied when the equation's ``log_bias`` is
    ``corrected``: each part's log model is back-transformed on its own before the parts are summed)."""

    part: str
    a: float
    b: float
    c: float = 0.0
    bias_correction_factor: float = 1.0


@dataclass(frozen=True)
class Posterior:
    """Multivariate-normal summary of a coefficient posterior on the log scale:
    ln AGB = θ0 + θ1·ln(x) + N(0, θ2) (Chave et al. 2014 eq. 4 with x = ρD²H, as BIOMASS ``AGBmonteCarlo``)."""

    mean: tuple[float, float, float]
    cov: tuple[tuple[float, float, float], ...]
    source: str


@dataclass(frozen=True)
class Equation:
    """One allometric equation; ``evaluate`` returns kg of dry biomass (mean estimate, see :data:`LOG_BIAS`)."""

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
    components: tuple[Component, ...] = ()
    log_bias: str = "unknown"
    bias_correction_factor: float | None = None
    rse_log: float | None = None
    rse_source: str | None = None
    posterior: Posterior | None = None
    n_trees: int | None = None
    region: str | None = None
    biomass_parts: str | None = None
    verified: bool = False
    note: str | None = None

    @property
    def uses_height(self) -> bool:
        if self.form in ("chave2014", "volume_bcef", "power_d2h", "ln_d2h"):
            return True
        if self.form in ("power", "ln_power", "log10_power"):
            return any(k.c != 0 for k in self.components) if self.components else self.c != 0
        return False

    @property
    def correction(self) -> float:
        """Factor applied to the whole printed equation (the source's log-bias correction where ``corrected``
        and given for the equation; per-part factors are applied to their parts)."""
        ok = self.log_bias == "corrected" and self.bias_correction_factor is not None
        return float(self.bias_correction_factor) if ok else 1.0

    def _printed(self, a, b, c, dbh, h, rho, age):
        if self.form == "power":
            return a * dbh**b * h**c if c else a * dbh**b
        if self.form == "ln_power":
            return np.exp(a + b * np.log(dbh) + (c * np.log(h) if c else 0.0))
        if self.form == "log10_power":
            return 10.0 ** (a + b * np.log10(dbh) + (c * np.log10(h) if c else 0.0))
        if self.form == "power_d2h":
            return a * (dbh**2 * h) ** b
        if self.form == "ln_d2h":
            return np.exp(a + b * np.log(dbh**2 * h))
        if self.form == "chave2014":
            return 0.0673 * (rho * dbh**2 * h) ** 0.976
        if self.form == "volume_bcef":
            return a * dbh**b * h**c * self.bcef_mg_m3 * 1000.0
        if self.form == "bamboo_age":
            return a * dbh**b * (c * age / (self.d + age)) ** self.e + self.f
        raise AllometryError(f"equation {self.id!r}: unknown form {self.form!r}")

    def evaluate(self, dbh_cm, height_m, wood_density_g_cm3=None, age=None) -> np.ndarray:
        """Dry biomass (kg) of each tree: the printed equation (summed over ``components``) × ``correction``.

        power       : a · D^b · H^c
        ln_power    : exp(a + b·ln D + c·ln H)
        log10_power : 10^(a + b·log10 D + c·log10 H)
        power_d2h   : a · (D²·H)^b
        ln_d2h      : exp(a + b·ln(D²·H))
        chave2014   : 0.0673 · (ρ · D² · H)^0.976 (Chave et al. 2014, eq. 4; BIOMASS::computeAGB × 1000)
        volume_bcef : V · BCEF · 1000 with stem volume V = a · D^b · H^c (m³) and BCEF in Mg/m³
        bamboo_age  : a · D^b · (c·A / (d + A))^e + f per culm, A the culm age in the source's unit
        """
        dbh = np.asarray(dbh_cm, dtype="float64")
        h = np.asarray(height_m, dtype="float64")
        rho = np.asarray(wood_density_g_cm3 if wood_density_g_cm3 is not None else np.nan, dtype="float64")
        age_ = np.asarray(age if age is not None else np.nan, dtype="float64")
        if self.components:
            per_part = self.log_bias == "corrected" and self.bias_correction_factor is None
            return sum(self._printed(k.a, k.b, k.c, dbh, h, rho, age_) * (k.bias_correction_factor if per_part else 1.0)
                       for k in self.components) * self.correction
        else:
            total = self._printed(self.a, self.b, self.c, dbh, h, rho, age_)
        return total * self.correction

    def in_range(self, dbh_cm) -> np.ndarray:
        d = np.asarray(dbh_cm, dtype="float64")
        return (d >= self.dbh_min_cm) & (d < self.dbh_max_cm)


@dataclass(frozen=True)
class SpeciesGroup:
    name: str
    names: tuple[str, ...]
    aboveground: tuple[Equation, ...]
    belowground: tuple[Equation, ...] = ()
    alternatives: tuple[Equation, ...] = ()  # other credible aboveground equations, for the equation spread
    wood_density_g_cm3: float | None = None
    wood_density_source: str | None = None


@dataclass(frozen=True)
class AllometryRegistry:
    version: str
    groups: dict[str, SpeciesGroup]
    conversion: CarbonConversion
    source_path: str = ""
    species: pd.DataFrame | None = field(default=None, repr=False)
    _lookup: dict[str, str] = field(default_factory=dict, repr=False)

    def resolve(self, species: str) -> str | None:
        """Species group for a species name (Latin, Chinese, common or code), case-insensitive."""
        return resolve_name(self._lookup, species)[0]

    def equation(self, equation_id: str) -> tuple[str, Equation]:
        """(group, equation) of an equation id."""
        for g in self.groups.values():
            for e in (*g.aboveground, *g.belowground, *g.alternatives):
                if e.id == equation_id:
                    return g.name, e
        known = sorted({e.id for g in self.groups.values() for e in (*g.aboveground, *g.belowground, *g.alternatives)})
        raise AllometryError(f"{self.source_path}: no equation with id {equation_id!r} (known: {', '.join(known)})")

    def equations_table(self) -> pd.DataFrame:
        """One row per (group, equation): form, coefficients, DBH range, residual error, log-bias rule, source,
        verified; then the carbon conversion's factors (:meth:`CarbonConversion.table`)."""
        rows = []
        skip = {"components", "posterior"}
        for g in self.groups.values():
            for part, eqs in (("aboveground", g.aboveground), ("belowground", g.belowground),
                              ("aboveground_alternative", g.alternatives)):
                for e in eqs:
                    row = {"group": g.name, "part": part, **{k: getattr(e, k) for k in Equation.__dataclass_fields__
                                                             if k not in skip}}
                    row["components"] = "; ".join(f"{k.part}: a={k.a:g} b={k.b:g}" + (f" c={k.c:g}" if k.c else "")
                                                  for k in e.components)
                    row["posterior"] = e.posterior.source if e.posterior else None
                    row["wood_density_g_cm3"] = g.wood_density_g_cm3
                    row["wood_density_source"] = g.wood_density_source
                    rows.append(row)
        return pd.concat([pd.DataFrame(rows), self.conversion.table()], ignore_index=True)


_NEEDS = {"power": ("a", "b"), "ln_power": ("a", "b"), "log10_power": ("a", "b"), "power_d2h": ("a", "b"),
          "ln_d2h": ("a", "b"),
          "chave2014": (), "volume_bcef": ("a", "b", "bcef_mg_m3"), "bamboo_age": ("a", "b", "c", "d", "e")}


def _equation(raw: dict, where: str) -> Equation:
    raw = dict(raw)
    missing = [k for k in ("id", "form", "source") if not raw.get(k)]
    if missing:
        raise AllometryError(f"{where}: equation lacks {', '.join(missing)}")
    eid = raw["id"]
    if raw["form"] not in FORMS:
        raise AllometryError(f"{where}: equation {eid!r} has unknown form {raw['form']!r} (known: {', '.join(FORMS)})")
    comps = raw.pop("components", None) or []
    keys = {"part", "a", "b", "c", "bias_correction_factor"}
    if comps:
        bad = [k for k in comps if not isinstance(k, dict) or not {"part", "a", "b"} <= set(k) or set(k) - keys]
        if bad:
            raise AllometryError(f"{where}: equation {eid!r}: each component needs part, a, b (optional c, "
                                 f"bias_correction_factor), got {bad[0]}")
        for k in comps:
            for key in keys - {"part"}:
                if key in k:
                    k[key] = _number(k[key], f"{where}: equation {eid!r} component {k['part']!r}", key)
        raw["components"] = tuple(Component(str(k["part"]), k["a"], k["b"], k.get("c", 0.0),
                                            k.get("bias_correction_factor", 1.0)) for k in comps)
    else:
        lacking = [k for k in _NEEDS[raw["form"]] if k not in raw]
        if lacking:
            raise AllometryError(f"{where}: {raw['form']} equation {eid!r} needs coefficients {', '.join(lacking)}")
    for key in _NUMERIC:
        if raw.get(key) is not None:
            raw[key] = _number(raw[key], f"{where}: equation {eid!r}", key)
    if raw.get("dbh_min_cm", 0.0) >= raw.get("dbh_max_cm", np.inf):
        raise AllometryError(f"{where}: equation {eid!r}: dbh_min_cm {raw.get('dbh_min_cm')} is not below "
                             f"dbh_max_cm {raw.get('dbh_max_cm')}")
    if raw.get("rse_log") is not None and not raw.get("rse_source"):
        raise AllometryError(f"{where}: equation {eid!r} gives rse_log without rse_source")
    lb = raw.get("log_bias", "unknown")
    if lb not in LOG_BIAS:
        raise AllometryError(f"{where}: equation {eid!r}: log_bias must be one of {LOG_BIAS}, not {lb!r}")
    part_factors = [k.bias_correction_factor for k in raw.get("components", ()) if k.bias_correction_factor != 1.0]
    given = raw.get("bias_correction_factor") is not None
    if lb == "corrected" and not (given or (raw.get("components") and len(part_factors) == len(raw["components"]))):
        raise AllometryError(f"{where}: equation {eid!r}: log_bias 'corrected' needs bias_correction_factor, for the "
                             "equation or for every component")
    if lb != "corrected" and (given or part_factors):
        raise AllometryError(f"{where}: equation {eid!r}: bias_correction_factor goes with log_bias 'corrected' only")
    for f in part_factors + ([raw["bias_correction_factor"]] if given else []):
        if not (1.0 <= f < 2.0):
            raise AllometryError(f"{where}: equation {eid!r}: bias_correction_factor {f} is not in [1, 2)")
    if raw.get("posterior") is not None:
        p = raw["posterior"]
        try:
            mean = tuple(float(v) for v in p["mean"])
            cov = tuple(tuple(float(v) for v in row) for row in p["cov"])
            src = str(p["source"])
        except (KeyError, TypeError, ValueError):
            raise AllometryError(f"{where}: equation {eid!r}: posterior needs mean [3], cov [3x3] and source") from None
        if len(mean) != 3 or np.shape(cov) != (3, 3) or np.any(np.linalg.eigvalsh(np.array(cov)) < -1e-15):
            raise AllometryError(f"{where}: equation {eid!r}: posterior mean must have 3 values and cov be a 3x3 "
                                 "positive semi-definite matrix")
        if raw["form"] != "chave2014":
            raise AllometryError(f"{where}: equation {eid!r}: a coefficient posterior is supported for chave2014 only")
        raw["posterior"] = Posterior(mean, cov, src)
    keys = set(Equation.__dataclass_fields__)
    unknown = sorted(set(raw) - keys)
    if unknown:
        raise AllometryError(f"{where}: equation {eid!r} has unknown keys {unknown}")
    return Equation(**raw)


_NUMERIC = ("a", "b", "c", "d", "e", "f", "bcef_mg_m3", "dbh_min_cm", "dbh_max_cm", "bias_correction_factor",
            "rse_log", "n_trees")


def _number(value, where: str, key: str) -> float:
    """A coefficient as a float; anything else is an error naming the file, equation and key."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise AllometryError(f"{where}: {key} must be a number, not {value!r}")
    if not np.isfinite(value) and key != "dbh_max_cm":
        raise AllometryError(f"{where}: {key} must be finite, not {value!r}")
    return float(value) if key != "n_trees" else int(value)


_GROUP_KEYS = {"names", "aboveground", "belowground", "alternatives", "wood_density_g_cm3", "wood_density_source",
               "carbon_fraction_above", "carbon_fraction_below", "carbon_fraction_source", "carbon_fraction_verified",
               "root_shoot"}


def load_registry(path: Path | str) -> AllometryRegistry:
    """Load and check an allometry YAML file, the species table it names and its carbon conversion."""
    path = Path(path)
    if not path.is_file():
        raise AllometryError(f"allometry table not found: {path}")
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    groups: dict[str, SpeciesGroup] = {}
    lookup: dict[str, str] = {}

    def add(name, gname, where):
        key = normalise_name(name)
        if not key or key == "nan":
            return
        if key in lookup and lookup[key] != gname:
            raise AllometryError(f"{where}: name {name!r} is listed in groups {lookup[key]!r} and {gname!r}")
        lookup[key] = gname

    raw_groups = raw.get("groups") or {}
    for gname, g in raw_groups.items():
        where = f"{path}: group {gname!r}"
        unknown = sorted(set(g) - _GROUP_KEYS)
        if unknown:
            raise AllometryError(f"{where}: unknown keys {unknown}")
        for key in ("names", "aboveground", "belowground", "alternatives"):
            if key in g and not isinstance(g[key], list):
                raise AllometryError(f"{where}: {key} must be a list, not {g[key]!r}")
        above = tuple(_equation(e, where) for e in g.get("aboveground", []))
        if not above:
            raise AllometryError(f"{where}: no aboveground equation")
        groups[gname] = SpeciesGroup(
            name=gname,
            names=tuple(g.get("names", [])),
            aboveground=above,
            belowground=tuple(_equation(e, where) for e in g.get("belowground", [])),
            alternatives=tuple(_equation(e, where) for e in g.get("alternatives", [])),
            wood_density_g_cm3=g.get("wood_density_g_cm3"),
            wood_density_source=g.get("wood_density_source"),
        )
        for n in (gname, *g.get("names", [])):
            add(n, gname, path)
    ids = [e.id for g in groups.values() for e in (*g.aboveground, *g.belowground, *g.alternatives)]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise AllometryError(f"{path}: equation ids {dup} are used twice")
    species = None
    if raw.get("species_table"):
        species = read_species_table(path.parent / raw["species_table"], set(groups))
        for row in species.itertuples():
            names = [row.species_code, row.latin_name, row.chinese_name, row.common_name,
                     *str(getattr(row, "other_names", "") or "").split("|")]
            for n in names:
                add(n, row.group, species.attrs["path"])
    return AllometryRegistry(
        version=str(raw.get("version", "")),
        groups=groups,
        conversion=CarbonConversion.from_yaml(raw.get("defaults") or {}, raw_groups, str(path)),
        source_path=str(path),
        species=species,
        _lookup=lookup,
    )


def normalise_name(name) -> str:
    """A species name as looked up: stripped, case-folded, inner white space (also full-width) single."""
    return " ".join(str(name).replace("\u3000", " ").split()).casefold()


def resolve_name(lookup: dict[str, str], name) -> tuple[str | None, str]:
    """(group, route) of a species name: ``table`` when the name is listed; ``binomial`` when its first two
    words are (a Latin name written with its authority, "Pinus massoniana Lamb."); else (None, "")."""
    key = normalise_name(name)
    if key in lookup:
        return lookup[key], "table"
    words = key.split(" ")
    if len(words) > 2 and words[0].isascii() and words[0].isalpha():
        two = " ".join(words[:2])
        if two in lookup:
            return lookup[two], "binomial"
    return None, ""


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


def _rows(mask: np.ndarray, index: pd.Index) -> str:
    """File row numbers (header = row 1) of the masked rows, from the table's index labels."""
    return file_rows(index[np.asarray(mask, dtype=bool)])


def validate_trees(trees: pd.DataFrame, source: str = "trees", dbh_range_cm: tuple[float, float] = (0.5, 300.0),
                   height_range_m: tuple[float, float] = (1.3, 80.0)) -> None:
    """Reject impossible and implausible tree rows with a one-line message naming rows, values and the
    likely cause.

    ``dbh_range_cm`` / ``height_range_m`` are plausibility limits (configurable; the defaults allow the
    largest trees of subtropical China): a DBH above the maximum usually means millimetres, a height
    above it decimetres or feet.  Missing heights pass (equations that need one check later).
    """
    for col in ("species", "dbh_cm"):
        if col not in trees.columns:
            raise FieldError(f"{source}: missing column {col!r} (have {list(trees.columns)})")
    d = pd.to_numeric(trees["dbh_cm"], errors="coerce").to_numpy()
    bad = ~np.isfinite(d) | (d <= 0)
    if bad.any():
        raise FieldError(f"{source}: dbh_cm must be a positive number; rows {_rows(bad, trees.index)} have {list(trees['dbh_cm'][bad][:5])}")
    lo, hi = dbh_range_cm
    for mask, what, cause in ((d > hi, f"above {hi:g} cm", "DBH entered in millimetres?"),
                              (d < lo, f"below {lo:g} cm", "DBH entered in metres or decimetres?")):
        if mask.any():
            raise FieldError(f"{source}: column 'dbh_cm' has {int(mask.sum())} values {what} (rows {_rows(mask, trees.index)}: "
                             f"{d[mask][:5].tolist()}); {cause} Set ground.plausible_dbh_cm to accept them")
    if "height_m" in trees.columns:
        h = pd.to_numeric(trees["height_m"], errors="coerce").to_numpy()
        lo, hi = height_range_m
        for mask, what, cause in ((h > hi, f"above {hi:g} m", "heights in decimetres or feet?"),
                                  (h <= 0, "at or below 0 m", "a missing height written as 0?")):
            if mask.any():
                raise FieldError(f"{source}: column 'height_m' has {int(mask.sum())} values {what} (rows "
                                 f"{_rows(mask, trees.index)}: {h[mask][:5].tolist()}); {cause} Set "
                                 "ground.plausible_height_m to accept them")


def _column(trees: pd.DataFrame, col: str) -> np.ndarray:
    return pd.to_numeric(trees[col], errors="coerce").to_numpy(float) if col in trees else np.full(len(trees), np.nan)


DBH_POLICIES = ("warn", "reject")


def resolve_fallback(fallback: dict[str, str], registry: AllometryRegistry) -> dict[str, str]:
    """``allometry_fallback`` with each target as a group: a group name, or any name the table resolves
    (``broadleaf``, ``阔叶树``); an unknown target is an error naming it."""
    out = {}
    for sp, target in fallback.items():
        group = target if target in registry.groups else registry.resolve(target)
        if group is None:
            raise AllometryError(f"allometry_fallback: {sp!r} maps to {target!r}, which is neither a species group "
                                 f"nor a name the table resolves; groups are {sorted(registry.groups)}")
        out[sp] = group
    return out


def resolve_species(species: pd.Series, registry: AllometryRegistry,
                    fallback: dict[str, str] | None = None) -> tuple[pd.Series, np.ndarray]:
    """(group of each name, how it resolved): ``table`` (a listed name or code), ``binomial`` (a Latin name
    with its authority, matched on genus and species), ``fallback`` (species or code → group, ``"*"`` for
    all others); the group is None (how ``""``) where nothing maps an empty or unknown name."""
    s = species.fillna("").astype(str).str.strip()
    fb = resolve_fallback(fallback or {}, registry)
    found = {}
    for sp in pd.unique(s):
        group, how = resolve_name(registry._lookup, sp) if sp else (None, "")
        if group is None and sp:
            group = fb.get(sp, fb.get("*"))
            how = "fallback" if group is not None else ""
        found[sp] = (group, how)
    return s.map(lambda sp: found[sp][0]), s.map(lambda sp: found[sp][1]).to_numpy(dtype=object)


def species_groups(species: pd.Series, registry: AllometryRegistry, fallback: dict[str, str] | None = None,
                   source: str = "trees") -> tuple[pd.Series, np.ndarray]:
    """:func:`resolve_species` for tree lists: a species nobody maps is an error naming it and its rows."""
    groups, how = resolve_species(species, registry, fallback)
    unknown = groups.isna().to_numpy()
    if unknown.any():
        names = sorted(set(species[unknown].astype(str)))
        raise AllometryError(
            f"{source}: no allometric equation for species {names[:5]} (rows {_rows(unknown, species.index)}); "
            f"add them to {registry.source_path} or its species table, or map them to a group (allometry_fallback)"
        )
    return groups, how


def tree_agb(
    trees: pd.DataFrame,
    registry: AllometryRegistry,
    source: str = "trees",
    fallback: dict[str, str] | None = None,
    equation: str | None = None,
    dbh_out_of_range: str = "warn",
    dbh_range_cm: tuple[float, float] = (0.5, 300.0),
    height_range_m: tuple[float, float] = (1.3, 80.0),
) -> pd.DataFrame:
    """Per-tree AGB by the group's equations.

    Parameters
    ----------
    trees
        Columns ``species``, ``dbh_cm`` (cm); ``height_m`` (m) where an equation
        uses height; optional ``wood_density_g_cm3`` (g/cm³, overrides the
        group's value) and ``age`` (culm age for bamboo equations, in the
        equation's unit).
    fallback
        Species (name or code) → group for species the table does not know;
        the key ``"*"`` maps every other unknown species.  Such rows get
        ``species_source = "fallback"`` so the mapping stays visible.
    equation
        An aboveground equation id applied to every tree instead of the
        species' own.
    dbh_range_cm, height_range_m
        Plausibility limits (:func:`validate_trees`).
    dbh_out_of_range
        ``"warn"``: trees outside every DBH range of their group use the
        nearest range's equation, are flagged (``dbh_in_range``) and counted in
        a warning; ``"reject"``: such trees are an error naming rows and values.

    Returns
    -------
    A copy of ``trees`` with ``species_group``, ``species_source`` (``table``, ``binomial``, ``fallback``
    or ``forced``), ``agb_kg``, ``equation_id`` (``group:aboveground``),
    ``equation_verified`` (the aboveground equation), ``log_bias``, ``rse_log`` (aboveground residual
    standard error on the log scale, NaN where the source gives none), ``dbh_in_range``,
    ``wood_density_used_g_cm3`` and, where the group has belowground equations, ``bgb_kg_equation``
    (what those give, beside the conversion's ratio).
    """
    if dbh_out_of_range not in DBH_POLICIES:
        raise AllometryError(f"dbh_out_of_range must be one of {DBH_POLICIES}, not {dbh_out_of_range!r}")
    validate_trees(trees, source, dbh_range_cm, height_range_m)
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
    agb, bgb_eq, rse = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
    eq_ids = np.empty(n, dtype=object)
    log_bias = np.empty(n, dtype=object)
    verified = np.zeros(n, dtype=bool)
    in_range = np.ones(n, dtype=bool)
    for gname, sel in out.groupby("species_group").indices.items():
        g = registry.groups[gname]
        above = (forced,) if equation is not None else g.aboveground
        rho = rho_tree[sel].copy()
        if g.wood_density_g_cm3 is not None:
            rho = np.where(np.isfinite(rho), rho, g.wood_density_g_cm3)
        rho_used[sel] = rho
        ia = _pick(above, d[sel])
        in_range[sel] = ia >= 0
        ia = np.where(ia >= 0, ia, _nearest_range(above, d[sel]))
        picks = [(above, ia)]
        if g.belowground:
            ib = _pick(g.belowground, d[sel])
            picks.append((g.belowground, np.where(ib >= 0, ib, _nearest_range(g.belowground, d[sel]))))
        _check_inputs(out, sel, picks, h, rho, age, gname, source)
        agb[sel] = _evaluate_picked(above, ia, d[sel], h[sel], rho, age[sel])
        if g.belowground:
            bgb_eq[sel] = _evaluate_picked(g.belowground, picks[1][1], d[sel], h[sel], rho, age[sel])
        eq_ids[sel] = [above[i].id for i in ia]
        log_bias[sel] = [above[i].log_bias for i in ia]
        verified[sel] = [above[i].verified for i in ia]
        rse[sel] = [np.nan if above[i].rse_log is None else above[i].rse_log for i in ia]
    if not in_range.all():
        rows = _rows(~in_range, out.index)
        msg = (f"{source}: {int((~in_range).sum())} trees have DBH outside every range of their equations "
               f"(rows {rows}, dbh_cm {list(out['dbh_cm'][~in_range][:5])})")
        if dbh_out_of_range == "reject":
            raise AllometryError(msg + "; dbh_out_of_range is 'reject'")
        log.warning("%s; the nearest range's equation is used and the rows are flagged dbh_in_range = false", msg)
    out["agb_kg"] = agb
    out["equation_id"] = [f"{g}:{a}" for g, a in zip(groups, eq_ids)]
    out["equation_verified"] = verified
    out["log_bias"] = log_bias
    out["rse_log"] = rse
    out["dbh_in_range"] = in_range
    out["wood_density_used_g_cm3"] = rho_used  # the tree's own, else its group's (NaN where none applies)
    if np.isfinite(bgb_eq).any():
        out["bgb_kg_equation"] = bgb_eq
    return out


def with_carbon(trees: pd.DataFrame, conversion: CarbonConversion, stand_agb_mg_ha=None) -> pd.DataFrame:
    """Trees from :func:`tree_agb` with ``bgb_kg``, ``biomass_kg``, ``carbon_above_kg``, ``carbon_below_kg``,
    ``carbon_kg``, ``co2e_kg`` and ``conversion_verified`` by the one carbon conversion; the root-to-shoot
    rule's id is appended to ``equation_id`` (``group:aboveground;rule``).

    ``stand_agb_mg_ha``: AGB density (Mg/ha) of each tree's stand, which picks the ratio; ``None``: the
    low-density class (a tree standing alone).
    """
    out = trees.copy()
    agb = out["agb_kg"].to_numpy(float)
    density = np.full(len(out), -np.inf) if stand_agb_mg_ha is None else np.asarray(stand_agb_mg_ha, dtype=float)
    pools = conversion.tree_pools(agb, out["species_group"].to_numpy(), density)
    out["bgb_kg"] = pools["bgb_kg"].to_numpy(float)
    out["biomass_kg"] = agb + out["bgb_kg"]
    out["carbon_above_kg"] = pools["carbon_above_kg"].to_numpy(float)
    out["carbon_below_kg"] = pools["carbon_below_kg"].to_numpy(float)
    out["carbon_kg"] = out["carbon_above_kg"] + out["carbon_below_kg"]
    out["co2e_kg"] = out["carbon_kg"] * CO2_PER_C
    out["equation_id"] = [f"{e};{r}" for e, r in zip(out["equation_id"], pools["root_shoot_id"])]
    out["conversion_verified"] = pools["conversion_verified"].to_numpy(bool)
    return out


def tree_biomass(trees: pd.DataFrame, registry: AllometryRegistry, plot_agb_mg_ha=None, **kw) -> pd.DataFrame:
    """Per-tree AGB (:func:`tree_agb`), then BGB, carbon and CO2e (:func:`with_carbon`) with the ratio picked
    by ``plot_agb_mg_ha``, the AGB density (Mg/ha) of each tree's stand (``None``: the low-density class)."""
    return with_carbon(tree_agb(trees, registry, **kw), registry.conversion, plot_agb_mg_ha)


def _evaluate_picked(equations, idx, d, h, rho, age) -> np.ndarray:
    """Biomass (kg) of each tree by the equation ``idx`` picks for it."""
    res = np.full(d.shape, np.nan)
    for i, eq in enumerate(equations):
        m = idx == i
        if m.any():
            res[m] = eq.evaluate(d[m], h[m], rho[m], age[m])
    return res


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


def candidate_agb(trees: pd.DataFrame, registry: AllometryRegistry) -> pd.DataFrame:
    """AGB (kg) of each tree under every credible equation of its group: its own set and each alternative.

    ``trees`` is the output of :func:`tree_biomass` (``species_group``, ``dbh_cm``, ``height_m``,
    ``wood_density_used_g_cm3``, ``age``).  One row per (tree, candidate): ``tree`` (the tree's row
    label), ``group``, ``equation_id`` (the group's own set is named by its equation ids joined with
    ``+``), ``agb_kg``, ``in_range`` (the tree's DBH inside the candidate's range; outside it the
    equation is extrapolated), ``verified`` and ``own`` (the group's own set).  Candidates that need a height a tree lacks give NaN.
    """
    d = trees["dbh_cm"].to_numpy(float)
    h = _column(trees, "height_m")
    rho = _column(trees, "wood_density_used_g_cm3")
    age = _column(trees, "age")
    parts = []
    for gname, sel in trees.groupby("species_group").indices.items():
        g = registry.groups[gname]
        own = "+".join(e.id for e in g.aboveground)
        ia = _pick(g.aboveground, d[sel])
        in_own = ia >= 0
        ia = np.where(in_own, ia, _nearest_range(g.aboveground, d[sel]))
        cands = [(own, _evaluate_picked(g.aboveground, ia, d[sel], h[sel], rho[sel], age[sel]), in_own,
                  all(e.verified for e in g.aboveground))]
        for e in g.alternatives:
            with np.errstate(invalid="ignore", divide="ignore"):
                v = e.evaluate(d[sel], h[sel], rho[sel], age[sel])
            cands.append((e.id, np.where(np.isfinite(v), v, np.nan), e.in_range(d[sel]), e.verified))
        for k, (eid, agb, rng, ver) in enumerate(cands):
            parts.append(pd.DataFrame({"tree": trees.index[sel], "group": gname, "equation_id": eid,
                                       "agb_kg": agb, "in_range": rng, "verified": ver, "own": k == 0}))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=["tree", "group", "equation_id", "agb_kg", "in_range", "verified", "own"])
