"""The one biomass-to-carbon conversion: carbon fractions and root-to-shoot rules, per species group.

Every carbon figure the pipeline issues -- a tree, a plot, a Monte Carlo draw,
a map pixel, a parcel, a project -- goes through one :class:`CarbonConversion`:

    belowground biomass  BGB = AGB × R(group, AGB density)
    aboveground carbon   C_above = AGB × CF_above(group)
    belowground carbon   C_below = BGB × CF_below(group)
    carbon               C = C_above + C_below,   CO2e = C × 44/12

R is chosen by the stand's AGB density (Mg/ha): a plot's for its trees, a
pixel's for the map, so that the same stand converts the same way in both.
Groups without an override take the default rule (``group = "*"``).  Each
factor carries its source (table and page) and a ``verified`` flag that
travels to every output row and raster tag.

The conversion is read from the allometry table (``defaults`` and each
group's ``carbon_fraction_*`` / ``root_shoot``), see
:func:`forestcarbon.models.allometry.load_registry`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..errors import AllometryError

CO2_PER_C = 44.0 / 12.0
"""Ratio of the molecular weights of CO2 and C, 44/12 as the IPCC 2006 Guidelines use it."""

DEFAULT_GROUP = "*"


@dataclass(frozen=True)
class Factor:
    """One conversion coefficient with where it comes from."""

    value: float
    source: str
    verified: bool = False

    def __post_init__(self):
        if not (0 < self.value < 1):
            raise AllometryError(f"carbon fraction {self.value} is not in (0, 1) ({self.source})")


@dataclass(frozen=True)
class RootShoot:
    """Root-to-shoot ratio R by stand AGB density: ``low`` up to ``threshold_agb_mg_ha`` (Mg/ha), ``high`` above.

    A single ratio has an infinite threshold.  ``verified`` is false unless the
    table says it was checked against its source.
    """

    threshold_agb_mg_ha: float
    low: float
    high: float
    source: str
    id: str = "root_shoot"
    verified: bool = False

    def __post_init__(self):
        for r in (self.low, self.high):
            if not (0 <= r < 2):
                raise AllometryError(f"root-to-shoot ratio {r} ({self.id}) is not in [0, 2)")

    def ratio(self, agb_mg_ha) -> np.ndarray:
        """R for each AGB density (Mg/ha); NaN where the density is NaN."""
        agb = np.asarray(agb_mg_ha, dtype="float64")
        return np.where(np.isnan(agb), np.nan, np.where(agb <= self.threshold_agb_mg_ha, self.low, self.high))

    def ids(self, agb_mg_ha) -> np.ndarray:
        """Id of the ratio each stand gets (``<id>_low`` / ``<id>_high``; ``<id>`` for a single ratio)."""
        if np.isinf(self.threshold_agb_mg_ha):
            return np.full(np.shape(agb_mg_ha), self.id, dtype=object)
        low = np.asarray(agb_mg_ha) <= self.threshold_agb_mg_ha
        return np.where(low, f"{self.id}_low", f"{self.id}_high").astype(object)

    @classmethod
    def from_yaml(cls, raw: dict, where: str, default_id: str) -> "RootShoot":
        if "ratio" in raw:  # one ratio whatever the density
            raw = {k: v for k, v in raw.items() if k != "ratio"} | {
                "threshold_agb_mg_ha": np.inf, "low": raw["ratio"], "high": raw["ratio"]}
        missing = [k for k in ("threshold_agb_mg_ha", "low", "high", "source") if k not in raw]
        if missing:
            raise AllometryError(f"{where}: root_shoot lacks {', '.join(missing)}")
        unknown = sorted(set(raw) - {"threshold_agb_mg_ha", "low", "high", "source", "id", "verified"})
        if unknown:
            raise AllometryError(f"{where}: root_shoot has unknown keys {unknown}")
        return cls(float(raw["threshold_agb_mg_ha"]), float(raw["low"]), float(raw["high"]), str(raw["source"]),
                   str(raw.get("id", default_id)), bool(raw.get("verified", False)))


@dataclass(frozen=True)
class GroupRule:
    """The conversion one species group gets (the default's factors where the group has none)."""

    group: str
    cf_above: Factor
    cf_below: Factor
    root_shoot: RootShoot

    @property
    def verified(self) -> bool:
        return self.cf_above.verified and self.cf_below.verified and self.root_shoot.verified


@dataclass(frozen=True)
class CarbonConversion:
    """Carbon fractions and root-to-shoot rules: a default and per-group overrides.

    ``codes`` numbers the rules for a per-pixel group layer: 0 is the default,
    then the groups with an override in table order.
    """

    default: GroupRule
    overrides: dict[str, GroupRule] = field(default_factory=dict)

    def rule(self, group: str | None) -> GroupRule:
        return self.overrides.get(group, self.default) if group is not None else self.default

    @property
    def codes(self) -> dict[str, int]:
        return {DEFAULT_GROUP: 0, **{g: i + 1 for i, g in enumerate(self.overrides)}}

    def code_of(self, groups) -> np.ndarray:
        """Rule code per group name (0, the default, for groups without an override or None)."""
        c = self.codes
        return np.array([c.get(g, 0) if isinstance(g, str) else 0 for g in groups], dtype="uint8")

    def rules_by_code(self) -> list[GroupRule]:
        return [self.default, *self.overrides.values()]

    # -- stand level (plots, pixels) -----------------------------------------
    def pools_mg_ha(self, agb_mg_ha, code=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(BGB, aboveground carbon, belowground carbon) densities for AGB densities and rule codes.

        ``code`` is an array of rule codes like ``agb_mg_ha`` (None: the default
        everywhere).  NaN AGB stays NaN.  Units follow ``agb_mg_ha`` (Mg/ha in,
        Mg/ha and Mg C/ha out).
        """
        agb = np.asarray(agb_mg_ha, dtype="float64")
        code = np.zeros(agb.shape, dtype="uint8") if code is None else np.asarray(code)
        bgb = np.full(agb.shape, np.nan)
        c_a = np.full(agb.shape, np.nan)
        c_b = np.full(agb.shape, np.nan)
        for k, rule in enumerate(self.rules_by_code()):
            m = code == k
            if not m.any():
                continue
            a = agb[m]
            bgb[m] = a * rule.root_shoot.ratio(a)
            c_a[m] = a * rule.cf_above.value
            c_b[m] = bgb[m] * rule.cf_below.value
        return bgb, c_a, c_b

    def carbon_bands(self, agb_mg_ha, code=None) -> np.ndarray:
        """(3, ...) float32: total, aboveground and belowground carbon density (Mg C/ha) -- the map's bands."""
        _, c_a, c_b = self.pools_mg_ha(agb_mg_ha, code)
        return np.stack([c_a + c_b, c_a, c_b]).astype("float32")

    # -- trees -----------------------------------------------------------------
    def tree_pools(self, agb_kg, groups, stand_agb_mg_ha) -> pd.DataFrame:
        """Per tree: ``bgb_kg``, ``carbon_above_kg``, ``carbon_below_kg``, ``root_shoot_id``, ``conversion_verified``.

        The root-to-shoot ratio is chosen by the AGB density of the stand the
        tree stands in (``stand_agb_mg_ha``; its plot's), so a plot's trees sum
        to exactly what :meth:`pools_mg_ha` gives for the plot.
        """
        agb = np.asarray(agb_kg, dtype="float64")
        groups = np.asarray(groups, dtype=object)
        dens = np.broadcast_to(np.asarray(stand_agb_mg_ha, dtype="float64"), agb.shape)
        out = pd.DataFrame({"bgb_kg": np.nan, "carbon_above_kg": np.nan, "carbon_below_kg": np.nan,
                            "root_shoot_id": None, "conversion_verified": False}, index=range(agb.size))
        for g in pd.unique(groups):
            m = groups == g
            rule = self.rule(g)
            r = rule.root_shoot.ratio(dens[m])
            out.loc[m, "bgb_kg"] = agb[m] * r
            out.loc[m, "carbon_above_kg"] = agb[m] * rule.cf_above.value
            out.loc[m, "carbon_below_kg"] = agb[m] * r * rule.cf_below.value
            out.loc[m, "root_shoot_id"] = rule.root_shoot.ids(dens[m])
            out.loc[m, "conversion_verified"] = rule.verified
        return out

    def table(self) -> pd.DataFrame:
        """One row per rule and factor: group, part, value(s), source, verified."""
        rows = []
        for rule in self.rules_by_code():
            rs = rule.root_shoot
            rows += [
                {"group": rule.group, "part": "carbon_fraction_above", "id": f"{rule.group}:cf_above",
                 "form": "carbon_fraction", "a": rule.cf_above.value, "source": rule.cf_above.source,
                 "verified": rule.cf_above.verified},
                {"group": rule.group, "part": "carbon_fraction_below", "id": f"{rule.group}:cf_below",
                 "form": "carbon_fraction", "a": rule.cf_below.value, "source": rule.cf_below.source,
                 "verified": rule.cf_below.verified},
                {"group": rule.group, "part": "root_shoot", "id": rs.id, "form": "root_shoot",
                 "a": rs.low, "b": rs.high, "c": rs.threshold_agb_mg_ha, "source": rs.source, "verified": rs.verified},
            ]
        return pd.DataFrame(rows)

    def describe(self) -> dict:
        """A JSON-able description (raster tags, report)."""
        return {str(k): {"group": r.group, "cf_above": r.cf_above.value, "cf_below": r.cf_below.value,
                         "root_shoot": [r.root_shoot.low, r.root_shoot.high, r.root_shoot.threshold_agb_mg_ha],
                         "root_shoot_id": r.root_shoot.id, "verified": r.verified,
                         "sources": sorted({r.cf_above.source, r.cf_below.source, r.root_shoot.source})}
                for k, r in enumerate(self.rules_by_code())}

    @classmethod
    def from_yaml(cls, defaults: dict, groups: dict, where: str) -> "CarbonConversion":
        """From the allometry table's ``defaults`` and per-group keys.

        ``defaults``: ``carbon_fraction`` (+ ``_source``, ``_verified``), ``root_shoot``.
        A group may set ``carbon_fraction_above`` / ``carbon_fraction_below``
        (with ``carbon_fraction_source`` and ``carbon_fraction_verified``) and ``root_shoot``; what it
        does not set is the default's.
        """
        for k in ("carbon_fraction", "carbon_fraction_source", "root_shoot"):
            if k not in defaults:
                raise AllometryError(f"{where}: defaults lack {k!r}")
        cf = Factor(float(defaults["carbon_fraction"]), str(defaults["carbon_fraction_source"]),
                    bool(defaults.get("carbon_fraction_verified", False)))
        default = GroupRule(DEFAULT_GROUP, cf, cf, RootShoot.from_yaml(defaults["root_shoot"], f"{where}: defaults",
                                                                      "default_rs"))
        overrides = {}
        for gname, g in groups.items():
            keys = ("carbon_fraction_above", "carbon_fraction_below", "root_shoot")
            if not any(g.get(k) is not None for k in keys):
                continue
            src = g.get("carbon_fraction_source")
            if (g.get("carbon_fraction_above") is not None or g.get("carbon_fraction_below") is not None) and not src:
                raise AllometryError(f"{where}: group {gname!r} gives a carbon fraction without carbon_fraction_source")
            ver = bool(g.get("carbon_fraction_verified", False))
            above = Factor(float(g["carbon_fraction_above"]), src, ver) if g.get("carbon_fraction_above") is not None else cf
            below = Factor(float(g["carbon_fraction_below"]), src, ver) if g.get("carbon_fraction_below") is not None else cf
            rs = (RootShoot.from_yaml(g["root_shoot"], f"{where}: group {gname!r}", f"{gname}_rs")
                  if g.get("root_shoot") else default.root_shoot)
            overrides[gname] = GroupRule(gname, above, below, rs)
        return cls(default, overrides)


def co2e(carbon):
    return np.asarray(carbon) * CO2_PER_C
