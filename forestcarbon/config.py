"""The one configuration schema (pydantic), loaded from YAML.

Relative paths in a configuration file are resolved against the folder the
file lives in, so a scene folder with its ``config.yaml`` can be moved as a
whole.  :func:`load_config` turns every validation problem into a one-line
:class:`~forestcarbon.errors.ConfigError` naming the key and the bad value.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BeforeValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError, CRSError, ForestCarbonError

DEFAULT_SCL_MASK = (0, 1, 3, 8, 9, 10)
"""SCL classes masked by default: no data, saturated/defective, cloud shadow,
cloud medium/high probability, thin cirrus (Sentinel-2 L2A product spec)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GridConfig(_Strict):
    """The target grid every stage writes onto."""

    crs: str = "EPSG:4549"
    resolution_m: float = Field(10.0, gt=0)
    bounds: tuple[float, float, float, float] | None = None
    aoi: Path | None = None
    origin: tuple[float, float] | None = None  # a point where pixel edges meet: align to a sensor's grid
    like: Path | None = None  # a raster whose CRS, resolution and pixel edges the grid takes

    @field_validator("crs")
    @classmethod
    def _crs_parses(cls, v: str) -> str:
        from pyproj import CRS
        from pyproj.exceptions import CRSError as PyprojCRSError

        try:
            crs = CRS.from_user_input(v)
        except PyprojCRSError:
            raise CRSError(f"grid.crs: {v!r} is not a CRS that parses") from None
        from .rs.grid import require_metres

        require_metres(crs, f"grid.crs: {v!r}")
        return v

    @model_validator(mode="after")
    def _extent_given(self) -> "GridConfig":
        if self.bounds is None and self.aoi is None:
            raise ValueError("give grid.bounds [xmin, ymin, xmax, ymax] or grid.aoi")
        if self.bounds is not None:
            x0, y0, x1, y1 = self.bounds
            if not (x1 > x0 and y1 > y0):
                raise ValueError(f"grid.bounds {list(self.bounds)} must be [xmin, ymin, xmax, ymax] with xmax>xmin, ymax>ymin")
        return self


class InputsConfig(_Strict):
    """Input files; each stage reads only its own, and preflight requires only those of the stages run
    (:data:`forestcarbon.flows.stages.STAGE_NEEDS`)."""

    stac_items: Path | None = None
    laz: Path | None = None
    lidar_metrics_raster: Path | None = None  # pre-made metrics (bands named zmax, zq95, ...) instead of points
    lidar_normalized: bool | Literal["auto"] = "auto"
    lidar_crs: str | None = None
    landcover: Path | None = None  # a land-cover raster for the forest mask (forest_mask.landcover_forest_classes)
    dem: Path | None = None  # a DEM (m above sea level) for the terrain features; else the LiDAR DTM where flown
    ground_classes: tuple[int, ...] = (2,)
    plots: Path | None = None
    plots_layer: str | None = None
    plot_id: str = "plot_id"
    trees: Path | None = None
    parcels: Path | None = None
    parcels_layer: str | None = None
    parcel_id: str = "parcel_id"
    projects: Path | None = None
    projects_layer: str | None = None
    project_id: str = "project_id"
    tree_lidar: Path | None = None  # dense point clouds (LAS/LAZ folder, e.g. UAV LiDAR) for the trees stage's CHM
    tree_chm: Path | None = None  # a CHM raster (m) for the trees stage instead of points
    villages: Path | None = None  # village (村) polygons: per-village tree counts and carbon
    villages_layer: str | None = None
    village_id: str = "village_id"
    village_field_trees: Path | None = None  # measured open-grown trees (species, dbh_cm, height_m): DBH models of village trees
    tree_species: Path | None = None  # species polygons for single trees (before the parcels' dominant species)
    tree_species_layer: str | None = None
    tree_species_field: str = "species"


class MosaicConfig(_Strict):
    method: Literal["median", "nearest_to_median"] = "median"
    start: dt.date | None = None
    end: dt.date | None = None
    bands: tuple[str, ...] = ("blue", "green", "red", "nir", "nir08", "swir16", "swir22")
    scl_mask: tuple[int, ...] = DEFAULT_SCL_MASK
    landsat_qa_mask: tuple[Literal["fill", "dilated_cloud", "cirrus", "cloud", "cloud_shadow", "snow", "water"], ...] = (
        "fill", "dilated_cloud", "cirrus", "cloud", "cloud_shadow", "snow")
    min_valid_fraction: float = Field(0.02, ge=0, le=1)
    mask_dilation_px: int = Field(1, ge=0, le=50)  # chosen from benchmarks/check_mask_dilation.py, see README
    tile_m: float = Field(10_000.0, gt=0)
    window_days: int = Field(120, ge=1)
    nightly_cron: str = "0 2 * * *"
    nightly_timezone: str = "Asia/Shanghai"
    asset_keys: dict[str, str] = {}  # harmonised band name -> the catalogue's asset key, where neither names nor ids match
    mask_snow: bool = True  # snow/ice masked for every sensor: Sentinel-2 SCL 11 and Landsat QA_PIXEL bit 5
    harmonise: Literal["auto", "always", "never"] = "auto"  # Landsat OLI -> Sentinel-2A bandpass (rs.bandpass)

    def scl_classes(self) -> tuple[int, ...]:
        """SCL classes masked: ``scl_mask`` with snow/ice (11) added or removed by ``mask_snow``."""
        return tuple(sorted(set(self.scl_mask) - {11} | ({11} if self.mask_snow else set())))

    def qa_flags(self) -> tuple[str, ...]:
        """Landsat QA_PIXEL flags masked: ``landsat_qa_mask`` with ``snow`` added or removed by ``mask_snow``."""
        flags = [f for f in self.landsat_qa_mask if f != "snow"]
        return tuple(flags + (["snow"] if self.mask_snow else []))


class SubplotConfig(_Strict):
    """One ring of a nested plot design: trees from ``min_dbh_cm`` (up to the next ring's threshold) are
    measured in a circle of ``radius_m`` or a square of ``size_m2`` around the plot centre."""

    min_dbh_cm: float = Field(ge=0)
    radius_m: float | None = Field(None, gt=0)
    size_m2: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _one_size(self):
        if (self.radius_m is None) == (self.size_m2 is None):
            raise ValueError("a subplot needs exactly one of radius_m or size_m2")
        return self


class UncertaintyConfig(_Strict):
    """Monte Carlo error propagation for plot AGB/carbon (after BIOMASS AGBmonteCarlo)."""

    draws: int = Field(1000, ge=50, le=100_000)
    seed: int = 0
    dbh_error: Literal["chave2004"] | float | None = "chave2004"
    height_sd_m: float | None = Field(None, ge=0)
    wood_density_sd_g_cm3: float | None = Field(None, ge=0)
    model_error: bool = True
    carbon_fraction_sd_rel: float | None = Field(None, ge=0, lt=1)


class GroundConfig(_Strict):
    """Inventory tables and plot designs.

    ``trees_columns`` / ``plots_columns`` map our column names to the file's
    (e.g. ``{dbh_cm: 胸径, height_m: 树高, species: 树种}``).  ``designs`` are
    named nested-subplot designs that a plot selects in its ``design`` column.
    Plot radius/size given along a slope (``slope_deg`` column) is reduced to
    horizontal area by cos(slope) when ``plot_size_on_slope`` is true;
    ``area_fraction`` (0-1] marks plots cut by a stand edge.
    ``height_model`` fills missing tree heights from H-D models fitted on the
    measured trees (per species group with >= 10 of them, else pooled).
    ``plausible_dbh_cm``, ``plausible_height_m`` and ``max_plot_agb_mg_ha`` are plausibility limits checked
    before any stage runs: beyond them a value is an error naming rows and the likely unit mistake (the
    largest trees of subtropical China stay inside; subtropical forests rarely exceed ~600 Mg/ha AGB).
    """

    trees_columns: dict[str, str] = {}
    plots_columns: dict[str, str] = {}
    trees_sheet: str | None = None
    plots_crs: str | None = None
    dbh_out_of_range: Literal["warn", "reject"] = "warn"
    height_model: Literal["log1", "log2", "michaelis"] | None = None
    designs: dict[str, list[SubplotConfig]] = {}
    plot_size_on_slope: bool = True
    uncertainty: UncertaintyConfig = UncertaintyConfig()
    plausible_dbh_cm: tuple[float, float] = (0.5, 300.0)
    plausible_height_m: tuple[float, float] = (1.3, 80.0)
    max_plot_agb_mg_ha: float = Field(600.0, gt=0)

    @model_validator(mode="after")
    def _designs_sorted(self):
        for name, rings in self.designs.items():
            if not rings:
                raise ValueError(f"ground.designs.{name}: no subplots")
            th = [r.min_dbh_cm for r in rings]
            if th != sorted(th) or len(set(th)) != len(th):
                raise ValueError(f"ground.designs.{name}: min_dbh_cm must increase from ring to ring, got {th}")
        return self


class LidarConfig(_Strict):
    chm_resolution_m: float = Field(1.0, gt=0)
    chm_algorithm: Literal["p2r", "pitfree"] = "p2r"
    pitfree_thresholds_m: tuple[float, ...] = (0.0, 2.0, 5.0, 10.0, 15.0)
    pitfree_max_edge_m: tuple[float, float] = (0.0, 1.0)
    max_height_m: float = Field(80.0, gt=0)
    min_height_m: float = -2.0
    buffer_m: float = Field(30.0, ge=0)
    noise_classes: tuple[int, ...] = (7, 18)  # ASPRS: 7 low point (noise), 18 high noise; dropped by class, counted
    tiles_without_ground: Literal["error", "neighbours"] = "error"


class TreesConfig(_Strict):
    """Single-tree detection and carbon (stage ``trees``; :mod:`forestcarbon.rs.lidar.trees`,
    :mod:`forestcarbon.models.tree_carbon`).

    The CHM is ``inputs.tree_chm``, else a pit-free CHM at ``chm_resolution_m`` from ``inputs.tree_lidar``,
    else, with ``from_lidar_stage: true``, the LiDAR stage's CHM; with none of them the stage finds no trees
    (county-wide detection is opt-in: at 0.5 m it runs at roughly 130 km²/h, see benchmarks/bench_trees.py).  ``window_m``: the local-maximum window diameter (m), a number or
    ``[a, b, min, max]`` for ws = a + b·height clipped to [min, max] (lidR ``lmf(ws = f)``).
    ``species_group``: the group of trees outside any parcel whose dominant species names one (the
    parcels' ``species_field``); ``no_single_tree_groups``: groups whose LiDAR tops are not single stems
    (bamboo culms grow in clumps and need a culm age): their tops are listed without carbon.
    ``height_sd_m``: SD of a detected tree's height (m), drawn in the Monte Carlo; 1 m after the
    international ALS tree-detection benchmark (Kaartinen et al. 2012, Remote Sens. 4:950, Table 5: height
    RMSE 0.5-1.5 m for the better methods) and the chablais3 check in the README.
    ``previous_register``: an earlier run's ``trees/trees.parquet``; trees are matched one to one by position
    within ``match_distance_m`` unless the height dropped by more than ``match_height_drop_m``.
    ``dbh_form``: ``log_h`` (ln D ~ ln H) or ``log_h_cd`` (with the crown diameter, which the field trees
    must then carry as ``crown_diameter_m``); ``village_dbh_form`` the same for the models fitted on
    ``inputs.village_field_trees`` (measured open-grown trees), which the trees outside forest parcels take.
    ``exclude_classes``: ASPRS classes left out of the CHM built from points besides the LiDAR noise classes
    (building 6, water 9, bridge deck 17: a roof is a local maximum too)."""

    chm_resolution_m: float = Field(0.5, gt=0, le=2.0)
    from_lidar_stage: bool = False
    smooth: Literal["none", "median", "gaussian"] = "median"
    smooth_px: int = Field(3, ge=3)
    window_m: float | tuple[float, float, float, float] = (1.0, 0.15, 2.0, 8.0)
    min_height_m: float = Field(5.0, ge=0)
    segmentation: Literal["dalponte2016", "watershed"] = "dalponte2016"
    max_crown_m: float = Field(5.0, gt=0)
    species_group: str = "evergreen_broadleaf"
    no_single_tree_groups: tuple[str, ...] = ("moso_bamboo",)
    dbh_form: Literal["log_h", "log_h_cd"] = "log_h"
    village_dbh_form: Literal["log_h", "log_h_cd"] = "log_h"
    exclude_classes: tuple[int, ...] = (6, 9, 17)
    height_sd_m: float = Field(1.0, ge=0)
    draws: int = Field(500, ge=50, le=100_000)
    seed: int = 0
    previous_register: Path | None = None  # an earlier epoch's trees.parquet: growth, new and lost trees
    match_distance_m: float = Field(2.0, gt=0)
    match_height_drop_m: float = Field(3.0, gt=0)
    tile_px: int = Field(2048, ge=64)


class ModelConfig(_Strict):
    """``kind``: ``auto`` chooses among random forest (a small grid), HistGradientBoosting and the log-log
    linear baseline by spatial-block CV RMSE; or one of them.  ``rf_grid``: the random-forest settings
    compared (scikit-learn parameter names).  ``support``: ``plot_mean`` trains on the plot-footprint mean of
    each feature and predicts single pixels; ``window`` trains and predicts on the mean over a k x k window of
    about the plot's area (``window_px``, odd; default from the median plot area, :mod:`..models.support`).
    ``plots_without_features``: plots without the mosaic's features (persistent cloud, outside the mosaic) are
    dropped with a count and named in the card, or an ``error``.  ``interval_alpha``: 1 - the nominal coverage
    of the per-pixel intervals (0.10: p05-p95)."""

    kind: Literal["auto", "hist_gradient_boosting", "random_forest", "loglog_linear"] = "auto"
    support: Literal["plot_mean", "window"] = "plot_mean"
    plots_without_features: Literal["drop", "error"] = "drop"
    window_px: int | None = Field(None, ge=1)
    rf_grid: dict[str, tuple[float, ...]] = {"min_samples_leaf": (1, 5), "max_features": (1 / 3, 1.0)}
    interval_alpha: float = Field(0.10, gt=0, lt=0.5)
    cv_block_m: float = Field(1000.0, gt=0)
    cv_folds: int = Field(5, ge=2)
    seed: int = 0
    use_lidar: bool = True


class CarbonConfig(_Strict):
    """Where the map finds each pixel's species group for the carbon conversion.

    The conversion itself (carbon fractions, root-to-shoot rules, per-group
    overrides, each with its source) lives in the allometry table, so that
    trees, plots, the Monte Carlo, the map and the parcels share it.
    ``group_field`` names the parcels' dominant-species field (e.g. the
    inventory's ``YOU_SHI_SZ``, 优势树种); its names resolve to groups like tree
    species do, and pixels outside parcels or with an unknown species take the
    default rule.  ``None``: the default rule everywhere.
    """

    group_field: str | None = None


LandClassCodes = Annotated[tuple[str, ...], BeforeValidator(
    lambda v: tuple(str(c).strip() for c in v) if isinstance(v, (list, tuple)) else v)]
"""Land-class codes as text (an unquoted 0111 in YAML is the number 111: the codes are compared as text)."""


class ForestMaskConfig(_Strict):
    """Where the map may hold biomass (:mod:`forestcarbon.rs.forest_mask`); nothing configured: everywhere.

    ``parcel_field`` names the parcels' land-class field (地类, e.g. ``DI_LEI``) and ``forest_codes`` its values
    that are forest land with trees; ``outside_parcels``: pixels outside every parcel are ``non_forest`` or
    decided by the ``evidence`` of the other sources.  ``landcover_never_forest_classes``: classes of
    ``inputs.landcover`` that zero a pixel anywhere (ESA WorldCover: 50 built-up, 80 water);
    ``landcover_forest_classes``: those that are forest where no parcel decides (WorldCover: 10).
    ``ndvi_min``: pixels of the mosaic whose NDVI is lower are non-forest.  ``non_forest_agb_mg_ha``: what non-forest pixels get (0).
    """

    parcel_field: str | None = None
    forest_codes: LandClassCodes = ()
    outside_parcels: Literal["non_forest", "evidence"] = "non_forest"
    landcover_forest_classes: tuple[int, ...] = (10,)
    landcover_never_forest_classes: tuple[int, ...] = (50, 80)
    ndvi_min: float | None = Field(None, ge=-1, le=1)
    non_forest_agb_mg_ha: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _codes_with_field(self) -> "ForestMaskConfig":
        if self.parcel_field and not self.forest_codes:
            raise ValueError(f"forest_mask.parcel_field {self.parcel_field!r} needs forest_mask.forest_codes "
                             "(the land-class values that are forest)")
        return self

    @property
    def configured(self) -> bool:
        return bool(self.parcel_field) or self.ndvi_min is not None


class ParcelsConfig(_Strict):
    """How a bureau's parcel (小班) layer maps to the standard parcel columns
    (:func:`forestcarbon.vector.parcels.read_parcels`).

    ``id_fields``: one field holding the parcel id, or the composite key, usually
    ``[XIAN, XIANG, CUN, LIN_BAN, XIAO_BAN]`` (县, 乡, 村, 林班, 小班), joined by ``id_separator``; values are
    kept as text (zero padding survives); ``id_widths`` zero-pads integer-typed key fields (e.g. ``{XIAO_BAN: 3}``).
    ``area_field``: the declared area (e.g. ``MIAN_JI`` 面积) in ``area_unit`` (``mu``: 1 ha = 15 mu; ``ha``; ``m2``).
    ``land_class_field``: the land class (e.g. ``DI_LEI`` 地类) and ``forest_codes`` its values that make
    ``is_forest`` true (e.g. 0111 乔木林地, 0131 竹林地: the bureau's own code list; quote them in YAML,
    ``["0111"]``: an unquoted 0111 is not the text "0111").
    ``species_field`` (e.g. ``YOU_SHI_SZ`` 优势树种), ``age_group_field`` (e.g. ``LING_ZU`` 龄组).
    ``encoding``: the text encoding of a shapefile's DBF (e.g. ``GBK``); overrides its ``.cpg``; needed when
    a shapefile has no ``.cpg`` and holds Chinese text.
    ``max_areal_scale_error``: the grid CRS is refused when it distorts areas by more than this at the
    parcels' extent (0.001 = 0.1 %).  ``area_tolerance_rel``: declared and geometric areas differing by more
    than this fraction flag the parcel (reported, not an error).
    """

    id_fields: tuple[str, ...] = ("parcel_id",)
    id_separator: str = "-"
    id_widths: dict[str, int] = {}
    area_field: str | None = None
    area_unit: Literal["mu", "ha", "m2"] = "mu"
    land_class_field: str | None = None
    forest_codes: LandClassCodes = ()
    species_field: str | None = None
    age_group_field: str | None = None
    encoding: str | None = None
    max_areal_scale_error: float = Field(0.001, gt=0, lt=0.1)
    area_tolerance_rel: float = Field(0.05, gt=0)

    @model_validator(mode="after")
    def _codes_with_field(self) -> "ParcelsConfig":
        if not self.id_fields:
            raise ValueError("parcels.id_fields: name at least one field")
        if self.land_class_field and not self.forest_codes:
            raise ValueError(f"parcels.land_class_field {self.land_class_field!r} needs parcels.forest_codes")
        return self

    def fields(self):
        """The mapping as :class:`forestcarbon.vector.parcels.ParcelFields`."""
        from .vector.parcels import ParcelFields

        keys = ("id_fields", "id_separator", "id_widths", "area_field", "area_unit", "land_class_field",
                "forest_codes", "species_field", "age_group_field", "encoding")
        return ParcelFields(**{k: getattr(self, k) for k in keys})


class ProjectsConfig(_Strict):
    """Rules for carbon projects over parcels (:func:`forestcarbon.vector.projects.project_accounts`).

    ``eligible_field``: the parcel column that must be true for its area to count (``is_forest`` from
    parcel ingest); ``None``: all land counts.  ``min_piece_m2``: parts of a project ∩ parcel piece cut by the
    project boundary smaller than this are slivers, excluded and reported; ``min_piece_m2_early`` applies to
    projects whose ``start_date_field`` is on or before ``early_until`` (400 m² and 667 m² = 1 mu as the
    brief reads CCER-14-001-V01, 造林碳汇; the methodology text itself was not available to check).
    ``conflict_rule``: area two projects claim counts for neither (``exclude``) or for the earlier
    ``registration_field`` date (``first_registered``).  ``interval_alpha``: 1 - the interval's coverage.
    Deduction when the relative half-width exceeds ``deduction_threshold_rel``: ``report`` only, or
    ``proportional`` (fraction = coefficient × rel. half-width; ART TREES v2.0 (2021) §8 Eq. 10-11:
    0.524417 / 1.645006 = 0.318794), or ``excess`` (fraction = coefficient × (rel. half-width - threshold));
    ``deduction_source`` names the standard and equation and travels to every output row.
    """

    eligible_field: str | None = "is_forest"
    min_piece_m2: float = Field(400.0, ge=0)
    min_piece_m2_early: float = Field(667.0, ge=0)
    start_date_field: str | None = None
    early_until: dt.date = dt.date(2019, 12, 31)
    conflict_rule: Literal["exclude", "first_registered"] = "exclude"
    registration_field: str | None = None
    interval_alpha: float = Field(0.10, gt=0, lt=0.5)
    deduction_rule: Literal["report", "proportional", "excess"] = "report"
    deduction_threshold_rel: float = Field(0.10, ge=0)
    deduction_coefficient: float = Field(1.0, gt=0)
    deduction_source: str = ""

    @model_validator(mode="after")
    def _rule_needs(self) -> "ProjectsConfig":
        if self.conflict_rule == "first_registered" and not self.registration_field:
            raise ValueError("projects.conflict_rule 'first_registered' needs projects.registration_field")
        if self.deduction_rule != "report" and not self.deduction_source.strip():
            raise ValueError(f"projects.deduction_rule {self.deduction_rule!r} needs projects.deduction_source "
                             "(the standard, section and equation)")
        return self

    def deduction(self):
        """The deduction as :class:`forestcarbon.vector.projects.Deduction`."""
        from .vector.projects import Deduction

        return Deduction(self.deduction_rule, self.deduction_threshold_rel, self.deduction_coefficient,
                         self.deduction_source)


class ComputeConfig(_Strict):
    """``gdal_cache_mb``: GDAL's raster block cache for the run (GDAL's default is 5 % of RAM, 1.2 GB on a
    24 GB machine, and it fills as COGs are read and written: peak memory then grows with the map's area;
    64 MB made multi-band reads ~100x slower here); ``None`` leaves GDAL's setting alone."""

    chunk_px: int = Field(1024, ge=64)
    dask_address: str | None = None
    workers: int = Field(2, ge=1)
    gdal_cache_mb: int | None = Field(512, ge=128)


class TruthConfig(_Strict):
    """Truth of a synthetic scene, read only by the report stage."""

    agb: Path
    parcels: Path
    trees: Path | None = None  # the true tree list (x, y, height_m, dbh_cm, carbon_kg) for the trees stage's scores


class Config(_Strict):
    name: str = "forestcarbon"
    grid: GridConfig
    inputs: InputsConfig
    allometry: Path | None = None
    allometry_fallback: dict[str, str] = {}
    ground: GroundConfig = GroundConfig()
    mosaic: MosaicConfig = MosaicConfig()
    lidar: LidarConfig = LidarConfig()
    trees: TreesConfig = TreesConfig()
    model: ModelConfig = ModelConfig()
    carbon: CarbonConfig = CarbonConfig()
    forest_mask: ForestMaskConfig = ForestMaskConfig()
    compute: ComputeConfig = ComputeConfig()
    parcels: ParcelsConfig = ParcelsConfig()
    projects: ProjectsConfig = ProjectsConfig()
    output: Path = Path("output")
    truth: TruthConfig | None = None

    @model_validator(mode="before")
    @classmethod
    def _one_source_per_parcel_field(cls, data):
        """Each parcel field is named once.  ``inputs.parcel_id`` is the short form of a one-field
        ``parcels.id_fields``; the forest mask and the carbon conversion take the land class, its forest codes
        and the species field from ``parcels`` unless given their own (the land-class codes may not differ:
        every total uses one list)."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        parcels = dict(data.get("parcels") or {})
        inputs = data.get("inputs") or {}
        if "id_fields" not in parcels and isinstance(inputs, dict) and inputs.get("parcel_id"):
            parcels["id_fields"] = [inputs["parcel_id"]]
        fm = dict(data.get("forest_mask") or {})
        if parcels.get("land_class_field"):
            if fm.get("parcel_field") is None:
                fm["parcel_field"] = parcels["land_class_field"]
                fm.setdefault("forest_codes", parcels.get("forest_codes", ()))
            elif (fm["parcel_field"] != parcels["land_class_field"]
                  or {str(c) for c in fm.get("forest_codes", ())} != {str(c) for c in parcels.get("forest_codes", ())}):
                raise ValueError("forest_mask.parcel_field/forest_codes differ from parcels.land_class_field/forest_codes:"
                                 " name the land class and its forest codes once, in parcels")
        elif fm.get("parcel_field"):  # the mask's land class is the parcels' too
            parcels["land_class_field"] = fm["parcel_field"]
            parcels["forest_codes"] = fm.get("forest_codes", ())
        carbon = dict(data.get("carbon") or {})
        if carbon.get("group_field") is None and parcels.get("species_field"):
            carbon["group_field"] = parcels["species_field"]
        data.update(parcels=parcels, forest_mask=fm, carbon=carbon)
        return data

    def with_output(self, out: Path | str) -> "Config":
        return self.model_copy(update={"output": Path(out).resolve()})


def default_allometry_path() -> Path:
    return Path(__file__).parent / "configs" / "allometry.yaml"


def _resolve_paths(node, base: Path):
    """Resolve relative path-valued keys of the raw YAML tree against ``base``."""
    path_keys = {
        "aoi", "like", "stac_items", "laz", "lidar_metrics_raster", "dem", "landcover", "plots", "trees", "parcels", "projects",
        "allometry", "output", "agb", "tree_lidar", "tree_chm", "villages", "tree_species", "village_field_trees",
        "previous_register",
    }
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k in path_keys and isinstance(v, str) and not Path(v).is_absolute():
                out[k] = str((base / v).resolve())
            else:
                out[k] = _resolve_paths(v, base) if isinstance(v, dict) else v
        return out
    return node


def _one_line(err: ValidationError) -> str:
    e = err.errors()[0]
    key = ".".join(str(p) for p in e["loc"]) or "(top level)"
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] == "missing":
        return f"missing key {key!r}"
    value = e.get("input")
    shown = "" if isinstance(value, dict) else f" (got {value!r})"
    more = f" [+{len(err.errors()) - 1} more]" if len(err.errors()) > 1 else ""
    return f"key {key!r}: {msg}{shown}{more}"


def config_from_dict(raw: dict, base: Path | None = None, source: str = "<dict>") -> Config:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    if base is not None:
        raw = _resolve_paths(raw, base)
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        cause = (err.errors()[0].get("ctx") or {}).get("error")
        if isinstance(cause, ForestCarbonError):  # keep the specific type (e.g. CRSError)
            raise type(cause)(f"{source}: {cause}") from None
        raise ConfigError(f"{source}: {_one_line(err)}") from None


def load_config(path: Path | str) -> Config:
    """Read and validate a YAML configuration file."""
    path = Path(path)
    if not path.is_file():
        from .errors import InputNotFoundError

        raise InputNotFoundError(f"configuration file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    return config_from_dict(raw, base=path.parent.resolve(), source=str(path))
