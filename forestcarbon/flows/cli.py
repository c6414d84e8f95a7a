"""``forestcarbon`` command line (Typer)."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from ..errors import FieldError, ForestCarbonError, InputNotFoundError

# Prefect's temporary server migrates its database on first start, which can take
# longer than Prefect's default wait on a 2-core machine; no telemetry from here.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Sky–air–ground forest carbon mapping.")


class _OneLineForOurErrors(logging.Filter):
    """Prefect logs failed runs with a traceback; for forestcarbon's own input errors the
    message already names the file, field or value, so keep the line and drop the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], ForestCarbonError):
            record.exc_info, record.exc_text = None, None
        return True


def _setup_logging():
    import warnings

    # pixels never observed clear give NaN medians by design (reported as valid_count 0)
    warnings.filterwarnings("ignore", "All-NaN slice encountered", RuntimeWarning)
    # odc-loader warps in-memory blocks through rasterio, which warns about the missing geotransform
    warnings.filterwarnings("ignore", message="Dataset has no geotransform", module="rasterio")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("distributed", "rasterio", "fiona", "pyogrio", "httpx", "prefect.server"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    one_line = _OneLineForOurErrors()
    for root in (logging.getLogger(), logging.getLogger("prefect")):
        for h in root.handlers:
            h.addFilter(one_line)


def _fail(err: Exception) -> None:
    typer.echo(f"error: {err}", err=True)
    raise typer.Exit(code=2)


@app.command()
def synth(out: Path = typer.Option(..., help="folder to write the synthetic scene into"),
          seed: int = typer.Option(0, help="random seed"),
          size_km: float = typer.Option(10.0, help="side of the square county, km")):
    """Write a synthetic scene and a ready DIR/config.yaml."""
    _setup_logging()
    from forestcarbon_synth import make_scene  # the generator; pipeline code never imports it

    path = make_scene(out, seed=seed, size_km=size_km)
    typer.echo(f"synthetic scene written; configuration: {path}")


def _unexpected(err: Exception, folder: Path, debug: bool) -> None:
    """An error nobody planned for: one line, the traceback in a log file in ``folder`` (or shown with --debug)."""
    import datetime as dt
    import traceback

    if debug:
        raise err
    text = "".join(traceback.format_exception(err))
    try:
        folder.mkdir(parents=True, exist_ok=True)
        log = folder / f"forestcarbon-error-{dt.datetime.now():%Y%m%dT%H%M%S}.log"
        log.write_text(text, encoding="utf-8")
        where = f"traceback in {log}"
    except OSError:
        where = "traceback not written (folder not writable); rerun with --debug"
    first = (str(err).splitlines() or [""])[0]
    typer.echo(f"error: unexpected {type(err).__name__}: {first} ({where})", err=True)
    raise typer.Exit(code=1)


@app.command()
def run(config: Path = typer.Argument(..., help="configuration YAML"),
        stage: Optional[list[str]] = typer.Option(None, "--stage", help="run only these stages (repeatable)"),
        out: Optional[Path] = typer.Option(None, help="output folder (overrides the configuration)"),
        debug: bool = typer.Option(False, "--debug", help="show the traceback of an unexpected error"),
        prefect: bool = typer.Option(False, "--prefect", help="run as the Prefect flow (a temporary server unless "
                                                              "PREFECT_API_URL is set, which also implies this)"),
        force: bool = typer.Option(False, "--force", help="recompute stages whose inputs, configuration and code "
                                                          "are unchanged since they finished")):
    """Run the pipeline, or only the named stages (in this process unless --prefect or PREFECT_API_URL).
    Stages unchanged since they last finished in the output folder are skipped (resume after a crash)."""
    _setup_logging()
    try:
        result = _run(config, stage, out, prefect, force)
    except ForestCarbonError as err:
        _fail(err)
    except Exception as err:  # noqa: BLE001 -- one line, the traceback to a file
        folder = (out.resolve().parent if out is not None else config.resolve().parent)
        _unexpected(err, folder, debug)
    typer.echo(json.dumps(result, indent=1, default=str))


def _run(config: Path, stages, out, use_prefect: bool = False, force: bool = False):
    """Preflight, then the stages: in this process, or as the Prefect flow when asked (``--prefect``) or
    when a Prefect server is configured (``PREFECT_API_URL``)."""
    import os

    from ..config import load_config
    from .pipeline import pipeline_flow, run_pipeline, select_stages
    from .stages import preflight

    cfg = load_config(config)  # fail fast on bad configuration, before Prefect starts
    if out is not None:
        cfg = cfg.with_output(out)
    names = select_stages(stages)
    if not (use_prefect or os.environ.get("PREFECT_API_URL")):
        return run_pipeline(cfg, names, force=force)
    preflight(cfg, names)
    return pipeline_flow(str(config.resolve()), stages or None, str(cfg.output), force)


@app.command()
def nightly(config: Path = typer.Argument(..., help="configuration YAML"),
            date: Optional[str] = typer.Option(None, help="last day of the compositing window, YYYY-MM-DD (default today)")):
    """Update the tiled mosaic: only tiles touched by new (or expired) scenes are recomputed."""
    _setup_logging()
    import datetime as dt

    from ..config import load_config
    from .nightly import nightly_update
    from .pipeline import dask_scheduler
    from .run_state import output_lock

    try:
        cfg = load_config(config)
        day = dt.date.fromisoformat(date) if date else None
        with output_lock(Path(cfg.output)), dask_scheduler(cfg):
            report = nightly_update(cfg, day)
    except (ForestCarbonError, ValueError) as err:
        _fail(err)
    typer.echo(json.dumps(report, indent=1))
    if report["failed"]:
        raise typer.Exit(code=1)


@app.command()
def serve(config: Path = typer.Argument(..., help="configuration YAML")):
    """Serve the deployments (the nightly mosaic on its cron; the pipeline and each stage group on demand); needs
    PREFECT_API_URL of a running `prefect server start`."""
    _setup_logging()
    if not os.environ.get("PREFECT_API_URL"):
        _fail(RuntimeError("PREFECT_API_URL is not set: start `prefect server start` and export PREFECT_API_URL=http://127.0.0.1:4200/api; a temporary server cannot hold schedules"))
    from prefect import serve as prefect_serve

    from .pipeline import deployments

    try:
        deps = deployments(str(config))
    except ForestCarbonError as err:
        _fail(err)
    typer.echo(f"serving {', '.join(d.name for d in deps)} on {os.environ['PREFECT_API_URL']}")
    prefect_serve(*deps)


@app.command()
def trees(table: Path = typer.Argument(..., help="trees table: CSV, Excel (.xlsx) or GeoPackage"),
          out: Path = typer.Option(..., help="output .csv, or .gpkg when the table has x/y and --crs is given"),
          species_col: str = typer.Option("species"), dbh_col: str = typer.Option("dbh_cm"),
          height_col: str = typer.Option("height_m"),
          equation: Optional[str] = typer.Option(None, help="use this aboveground equation id for every tree"),
          fallback: Optional[list[str]] = typer.Option(None, help="SPECIES=GROUP for species the table lacks; *=GROUP for all others"),
          dbh_out_of_range: str = typer.Option("warn", help="warn (flag and count) or reject trees outside the equations' DBH ranges"),
          height_model: Optional[str] = typer.Option(None, help="fill missing heights from an H-D model fitted on the measured trees: log1, log2 or michaelis"),
          sheet: Optional[str] = typer.Option(None, help="Excel sheet or GeoPackage layer"),
          crs: Optional[str] = typer.Option(None, help="CRS of the x/y columns"),
          allometry: Optional[Path] = typer.Option(None, help="allometry table (default: the packaged one)"),
          compare_equations: bool = typer.Option(False, "--compare-equations",
                                                 help="also give each tree's AGB under every credible equation of its "
                                                      "group (columns agb_kg__<id>) and print the totals per plot")):
    """Per-tree AGB, BGB, carbon and CO2e for a register of single trees (e.g. scattered village trees)."""
    _setup_logging()
    from ..config import default_allometry_path
    from ..fileio import write_table
    from ..models.allometry import load_registry, tree_biomass
    from ..vector.inventory import read_table, rename_columns

    try:
        df = read_table(table, sheet)
        mapping = {"species": species_col, "dbh_cm": dbh_col}
        if height_col in df.columns or height_col != "height_m":
            mapping["height_m"] = height_col
        df = rename_columns(df, mapping, str(table))
        groups = dict(f.split("=", 1) for f in (fallback or []))
        registry = load_registry(allometry or default_allometry_path())
        if height_model is not None:
            from ..models.allometry import species_groups
            from ..models.height import fill_heights

            sg, _ = species_groups(df["species"], registry, groups, str(table))
            df = fill_heights(df.assign(species_group=sg), height_model)[0].drop(columns="species_group")
        res = tree_biomass(df, registry, source=str(table), fallback=groups, equation=equation,
                           dbh_out_of_range=dbh_out_of_range)
        comparison = _compare_equations(res, registry) if compare_equations else None
    except (ForestCarbonError, ValueError) as err:
        _fail(err)
    if comparison is not None:
        per_tree, per_plot = comparison
        res = res.join(per_tree)
        typer.echo(per_plot.to_string(float_format=lambda v: f"{v:,.3f}"))
    if out.suffix == ".gpkg":
        if crs is None or not {"x", "y"} <= set(res.columns):
            _fail(FieldError(f"{out}: a GeoPackage needs x/y columns in {table} and --crs"))
        import geopandas as gpd

        res = gpd.GeoDataFrame(res, geometry=gpd.points_from_xy(res.x, res.y), crs=crs)
    write_table(res, out)
    typer.echo(f"wrote {out}: {len(res)} trees, {res.carbon_kg.sum() / 1000:,.3f} t C "
               f"({(res.species_source == 'fallback').sum()} by fallback group, {(~res.equation_verified).sum()} with unverified equations, "
               f"{(~res.dbh_in_range).sum()} outside their equations' DBH ranges)")


def _compare_equations(trees, registry):
    """(per-tree AGB under each candidate equation, as columns ``agb_kg__<id>``; per plot (or the whole
    register) and candidate: AGB in Mg, difference from the table's equations in %, trees outside the
    candidate's DBH range)."""
    from ..models.allometry import candidate_agb
    from ..vector.plots import equation_spread

    cands = candidate_agb(trees, registry)
    per_tree = cands.pivot(index="tree", columns="equation_id", values="agb_kg").add_prefix("agb_kg__")
    by = trees["plot_id"].astype(str) if "plot_id" in trees else "all trees"
    long, _ = equation_spread(trees.assign(plot_id=by, expansion_ha=1.0), cands)  # weight 1: Mg per plot
    long = long.rename(columns={"agb_mg_ha": "agb_mg", "agb_mg_ha_used": "agb_mg_table"})
    return per_tree, long.drop(columns=["in_spread"]).set_index(["plot_id", "group", "equation_id"])


@app.command("lidar-metrics")
def lidar_metrics(paths: list[Path] = typer.Argument(..., help="LAS/LAZ files or folders"),
                  res: float = typer.Option(..., help="cell size, metres (tiles in feet or degrees get a grid in metres)"),
                  out: Path = typer.Option(..., help="output GeoTIFF (COG), one band per metric"),
                  normalized: Optional[bool] = typer.Option(None, "--normalized/--not-normalized",
                                                            help="heights are already above ground (default: detect from the ground returns)"),
                  crs: Optional[str] = typer.Option(None, help="CRS for files whose header has none"),
                  ground: str = typer.Option("2", help="ground classes, comma separated"),
                  chm: Optional[Path] = typer.Option(None, help="also write a canopy height model (COG) here"),
                  dtm: Optional[Path] = typer.Option(None, help="also write the ground TIN, slope and aspect (COG) here"),
                  fine_res: float = typer.Option(1.0, help="cell size of the CHM and DTM, metres"),
                  pitfree: bool = typer.Option(False, "--pitfree", help="pit-free CHM (lidR pitfree) instead of the highest return per cell")):
    """lidR stdmetrics_z per cell of a grid snapped to RES over the files' extent (and optionally CHM and DTM)."""
    _setup_logging()
    from pyproj import CRS

    from ..rs import lidar

    try:
        files = [f for p in paths for f in (lidar.find_tiles(p) if p.is_dir() else [p])]
        for f in files:
            if not f.exists():
                raise InputNotFoundError(f"LAS/LAZ file not found: {f}")
        tiles = lidar.index_tiles(files, crs)
        gbox = lidar.geobox_over_tiles(tiles, res)
        fine = lidar.geobox_over_tiles(tiles, fine_res) if (chm or dtm) else None
        opts = lidar.Options(normalized="auto" if normalized is None else normalized,
                             ground_classes=tuple(int(c) for c in ground.split(",")),
                             chm_algorithm="pitfree" if pitfree else "p2r")
        targets = lidar.Targets(metrics=gbox, chm=fine if chm else None, dtm=fine if dtm else None)
        outs = {"metrics": out, **({"chm": chm} if chm else {}), **({"dtm": dtm} if dtm else {})}
        run = lidar.lidar_products(tiles, targets, opts, outs)
    except ForestCarbonError as err:
        _fail(err)
    typer.echo(f"wrote {out}: {len(lidar.METRICS)} metrics on {gbox.shape[1]} x {gbox.shape[0]} cells of {res} m "
               f"in {CRS.from_wkt(gbox.crs.to_wkt()).name}"
               + "".join(f"; {p}" for k, p in run.files.items() if k != "metrics"))
    if dtm and "dtm" not in run.files:
        typer.echo(f"no DTM written: the heights of every tile are already above ground ({dtm})")


@app.command("trees-detect")
def trees_detect(sources: list[Path] = typer.Argument(..., help="a CHM GeoTIFF (m), or LAS/LAZ files or folders"),
                 out: Path = typer.Option(..., help="output folder (the tree register is written to OUT/trees)"),
                 field_trees: Path = typer.Option(..., help="field trees with species_group, dbh_cm, height_m, "
                                                  "height_source (the plots stage's plots/trees.csv)"),
                 config: Optional[Path] = typer.Option(None, help="a forestcarbon YAML: its trees, parcels, lidar "
                                                       "and allometry settings (defaults otherwise)"),
                 parcels: Optional[Path] = typer.Option(None, help="parcels layer (default: the config's)"),
                 villages: Optional[Path] = typer.Option(None, help="village polygons (default: the config's)"),
                 village_id: str = typer.Option("village_id", help="village id field"),
                 species: Optional[Path] = typer.Option(None, help="species polygons: a tree inside takes their "
                                                         "species' group (before the parcel's dominant species)"),
                 species_field: str = typer.Option("species", help="species field of --species"),
                 village_field_trees: Optional[Path] = typer.Option(None, help="measured open-grown trees (species, "
                                                                   "dbh_cm, height_m): DBH models for trees outside "
                                                                   "forest parcels"),
                 previous: Optional[Path] = typer.Option(None, help="an earlier epoch's trees.parquet: growth, "
                                                         "new and lost trees (OUT/trees/changes.csv)"),
                 crs: Optional[str] = typer.Option(None, help="CRS for LAS/LAZ files whose header has none")):
    """Single trees and their carbon: tops, crowns, DBH, carbon with 90 % intervals, the register
    (OUT/trees/trees.gpkg, trees.parquet), totals per parcel, village and class (tree_totals.csv)."""
    _setup_logging()
    import pandas as pd
    from pyproj import CRS

    from ..config import TreesConfig, default_allometry_path, load_config
    from ..models.allometry import load_registry
    from ..rs import lidar
    from ..vector.inventory import read_table
    from ..vector.layers import read_attribute_layer, read_layer
    from ..vector.parcels import read_parcels
    from . import single_trees as st
    from .layout import Layout

    try:
        cfg = load_config(config) if config else None
        t = cfg.trees if cfg else TreesConfig()
        det, car = st.settings(t)
        for p in [*sources, field_trees, *([previous] if previous else []),
                  *([village_field_trees] if village_field_trees else [])]:
            if not p.exists():
                raise InputNotFoundError(f"file not found: {p}")
        layout = Layout(out)
        work = layout.trees_dir / ".work"
        # the grid CRS and every layer are read and checked before any CHM is built
        chm_given = len(sources) == 1 and sources[0].suffix.lower() in (".tif", ".tiff")
        if chm_given:
            _, grid_crs, _ = st.open_chm(sources[0])
        else:
            files = [f for p in sources for f in (lidar.find_tiles(p) if p.is_dir() else [p])]
            tiles = lidar.index_tiles(files, crs)
            grid_crs = CRS.from_user_input(lidar.geobox_over_tiles(tiles[:1], 1.0).crs.to_wkt())
        registry = load_registry(cfg.allometry if cfg and cfg.allometry else default_allometry_path())
        fallback = cfg.allometry_fallback if cfg else None
        sgdf = (st.species_layer_groups(read_attribute_layer(species, None, (species_field,), grid_crs.to_wkt()),
                                        species_field, registry, f"--species {species}", fallback)
                if species is not None else None)
        parcels_path = parcels or (cfg.inputs.parcels if cfg else None)
        pgdf = None
        if parcels_path is not None:
            pgdf = (read_parcels(parcels_path, grid_crs.to_wkt(), cfg.parcels.fields(), cfg.inputs.parcels_layer).gdf
                    if cfg else read_parcels(parcels_path, grid_crs.to_wkt()).gdf)
        vpath = villages or (cfg.inputs.villages if cfg else None)
        vid = cfg.inputs.village_id if (cfg and not villages) else village_id
        vgdf = (read_layer(vpath, None, vid, grid_crs.to_wkt()).rename(columns={vid: "village_id"})
                if vpath is not None else None)
        field = pd.read_csv(field_trees)
        vmodels = (st.village_dbh_models(read_table(village_field_trees), registry, t.village_dbh_form,
                                         str(village_field_trees), fallback) if village_field_trees else None)
        noise = (tuple(cfg.lidar.noise_classes) if cfg else (7, 18)) + tuple(t.exclude_classes)
        work.mkdir(parents=True, exist_ok=True)
        try:
            if chm_given:
                srcs = [{"name": sources[0].stem, "chm": sources[0]}]
            else:
                opts = lidar.Options(chm_algorithm="pitfree", noise_classes=noise)
                srcs = st.chms_from_points(tiles, lambda sel: lidar.geobox_over_tiles(sel, t.chm_resolution_m), opts,
                                           work)
            table, crowns, totals, models = st.register(
                srcs, det, car, registry, field, t.dbh_form, grid_crs, pgdf, vgdf, noise, fallback=fallback,
                provenance={"run": "trees-detect", "dbh_models_from": str(field_trees)}, species_layer=sgdf,
                village_models=vmodels)
            changes = (st.changes_since(previous, table, t.match_distance_m, t.match_height_drop_m)
                       if previous is not None else None)
            st.write_outputs(layout, table, crowns, grid_crs, totals, models, changes,
                             chms=[s["chm"] for s in srcs if Path(s["chm"]).parent == work])
        finally:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
    except ForestCarbonError as err:
        _fail(err)
    ok = table["carbon_status"].eq("ok")
    typer.echo(f"wrote {layout.trees_gpkg}: {len(table)} trees ({int(table['village_tree'].sum())} outside forest "
               f"parcels), {table.loc[ok, 'carbon_kg'].sum() / 1000:,.2f} t C in {int(ok.sum())} trees with carbon")
    if changes is not None:
        n = changes["change"].value_counts()
        typer.echo(f"changes since {previous}: {int(n.get('matched', 0))} matched, {int(n.get('lost', 0))} lost, "
                   f"{int(n.get('new', 0))} new")


model_app = typer.Typer(no_args_is_help=True, help="Biomass models from tables of plot metrics.")
app.add_typer(model_app, name="model")

_UNITS_BY_SUFFIX = {"_mg_ha": "Mg/ha", "_m2_ha": "m2/ha", "_m3_ha": "m3/ha", "_t_ha": "t/ha", "_ha": "per ha"}


@model_app.command("fit")
def model_fit(table: Path = typer.Option(..., help="plot table: CSV, Excel or GeoPackage, one row per plot"),
              target: str = typer.Option(..., help="target column, e.g. agb_mg_ha"),
              features: Optional[str] = typer.Option(None, help="feature columns, comma separated (default: every "
                                                                "numeric column but the target, groups, x, y, coverage)"),
              groups: Optional[str] = typer.Option(None, help="hold out whole groups of this column (e.g. plot clusters)"),
              block_size: Optional[float] = typer.Option(None, help="or hold out squares of this side, metres, over --x-col/--y-col"),
              x_col: Optional[str] = typer.Option(None, help="easting column, metres (spatial blocks, residual variogram)"),
              y_col: Optional[str] = typer.Option(None, help="northing column, metres"),
              coverage_col: Optional[str] = typer.Option(None, help="coverage class per plot (e.g. lidar/optical): "
                                                                    "figures and interval calibration per class"),
              out: Path = typer.Option(..., help="output folder"),
              folds: int = typer.Option(5, help="cross-validation folds"),
              seed: int = typer.Option(0, help="random seed (random CV folds, forests)"),
              kinds: str = typer.Option("loglog_linear,random_forest,hist_gradient_boosting", help="candidate model kinds"),
              target_units: Optional[str] = typer.Option(None, help="units of the target (default: from its name, e.g. _mg_ha)"),
              support_kind: str = typer.Option("plot footprint mean", help="what a feature value summarises"),
              support_m2: Optional[float] = typer.Option(None, help="area of that support, m2 (e.g. the plot area)"),
              sheet: Optional[str] = typer.Option(None, help="Excel sheet or GeoPackage layer")):
    """Choose and fit a model by spatial or grouped CV; write DIR/model.joblib, DIR/model_card.json and the
    out-of-fold predictions; print the spatial/grouped and random CV figures side by side."""
    _setup_logging()
    import warnings

    from ..vector.inventory import read_table

    try:
        df = read_table(table, sheet)
        prep = _model_fit_inputs(df, table, target, features, groups, block_size, x_col, y_col, coverage_col)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res = _model_fit_run(df, prep, target, groups, block_size, folds, seed, kinds, table)
    except ForestCarbonError as err:
        _fail(err)
    for w in caught:
        typer.echo(f"warning: {w.message}", err=True)
    units = target_units or next((u for sfx, u in _UNITS_BY_SUFFIX.items() if target.lower().endswith(sfx)), "unknown")
    files = _model_fit_write(res, df, prep, out, table, target, units,
                             {"kind": support_kind, "area_m2": support_m2}, groups)
    typer.echo(_model_fit_report(res, units))
    typer.echo("wrote " + ", ".join(str(f) for f in files))


def _model_fit_inputs(df, table, target, features, groups, block_size, x_col, y_col, coverage_col) -> dict:
    """Check the table against the options (one-line FieldError each, rows as a spreadsheet shows them)."""
    import numpy as np
    import pandas as pd

    from ..fileio import file_rows

    named = {"--target": target, "--groups": groups, "--x-col": x_col, "--y-col": y_col, "--coverage-col": coverage_col}
    for opt, col in named.items():
        if col is not None and col not in df.columns:
            raise FieldError(f"{table}: no column {col!r} (given as {opt})")
    if groups is None and block_size is None:
        raise FieldError(f"{table}: give --groups COL or --block-size M (with --x-col/--y-col) for spatial/grouped CV")
    if groups is not None and block_size is not None:
        raise FieldError(f"{table}: give --groups or --block-size, not both")
    if block_size is not None and (x_col is None or y_col is None):
        raise FieldError(f"{table}: --block-size needs --x-col and --y-col")
    if block_size is not None and not block_size > 0:
        raise FieldError(f"{table}: --block-size must be positive, got {block_size}")
    used = {c for c in named.values() if c is not None}
    if features is None:
        feats = [c for c in df.columns if c not in used and pd.api.types.is_numeric_dtype(df[c])]
    else:
        feats = [f.strip() for f in features.split(",") if f.strip()]
        missing = [f for f in feats if f not in df.columns]
        if missing:
            raise FieldError(f"{table}: features missing from the table: {missing}")
    if not feats:
        raise FieldError(f"{table}: no numeric feature columns")
    y = pd.to_numeric(df[target], errors="coerce").to_numpy(dtype="float64")
    bad = np.flatnonzero(~np.isfinite(y))
    if bad.size:
        raise FieldError(f"{table}: target {target!r} is missing or not a finite number in rows {file_rows(bad)}")
    for col in [*feats, *(c for c in (x_col, y_col) if c is not None)]:
        vals = pd.to_numeric(df[col], errors="coerce")
        wrong = np.flatnonzero(vals.isna().to_numpy() & df[col].notna().to_numpy())
        if wrong.size:
            raise FieldError(f"{table}: column {col!r} holds non-numbers in rows {file_rows(wrong)}")
        df[col] = vals
    df[target] = y
    if groups is not None and df[groups].isna().any():
        raise FieldError(f"{table}: group column {groups!r} is empty in rows {file_rows(np.flatnonzero(df[groups].isna()))}")
    return {"features": feats, "x": None if x_col is None else df[x_col].to_numpy(float),
            "y": None if y_col is None else df[y_col].to_numpy(float),
            "coverage": None if coverage_col is None else df[coverage_col].astype(str).to_numpy()}


def _model_fit_run(df, prep, target, groups, block_size, folds, seed, kinds, table):
    from ..errors import ModelError
    from ..models.fit import fit_table

    try:
        return fit_table(df, target, prep["features"], groups=None if groups is None else df[groups].astype(str).to_numpy(),
                         group_name=groups or "group", block_m=block_size, x=prep["x"], y=prep["y"],
                         coverage=prep["coverage"], folds=folds, seed=seed,
                         kinds=[k.strip() for k in kinds.split(",") if k.strip()])
    except ModelError as err:
        raise ModelError(f"{table}: {err}") from None


def _model_fit_write(res, df, prep, out: Path, table: Path, target: str, units: str, support: dict, groups) -> list[Path]:
    import joblib
    import pandas as pd

    from ..fileio import atomic_path, sha256, write_json, write_table
    from ..models.card import build_card, frame_sha256

    out.mkdir(parents=True, exist_ok=True)
    training = df[[*prep["features"], target]]
    card = build_card(res, name=Path(table).stem, target_units=units, support=support,
                      training_sha256=frame_sha256(training), source=str(table))
    card["training_file_sha256"] = sha256(table)
    model_path, card_path = out / "model.joblib", out / "model_card.json"
    with atomic_path(model_path) as tmp:
        joblib.dump({"estimator": res.model, "features": list(res.features), "model_id": card["model_id"],
                     "intervals": res.intervals, "aoa": res.aoa, "residual_variogram": res.variogram}, tmp)
    card["model_file_sha256"] = sha256(model_path)
    write_json(card, card_path)
    cvp = pd.DataFrame({"row": df.index.to_numpy() + 2, "observed": res.honest.observed})
    if groups is not None:
        cvp["group"] = df[groups].astype(str).to_numpy()
    for key, cv in res.cv.items():
        cvp[f"fold_{key}"], cvp[f"pred_{key}"] = cv.fold, cv.predicted
    rows = res.calibration["rows"]
    cvp["interval_lower"], cvp["interval_upper"], cvp["inside_interval"] = rows["lower"], rows["upper"], rows["inside"]
    if prep["coverage"] is not None:
        cvp["coverage_class"] = prep["coverage"]
    files = [model_path, card_path, out / "cv_predictions.csv", out / "model_selection.csv"]
    write_table(cvp, files[2])
    write_table(res.selection, files[3])
    if res.variogram is not None:
        files.append(out / "residual_variogram.json")
        write_json(res.variogram.to_dict(), files[-1])
    return files


def _model_fit_report(res, units: str) -> str:
    keys = list(res.cv)
    cols = [res.cv[k].scheme for k in keys]
    w = max(24, *(len(c) + 2 for c in cols))
    lines = [f"model: {res.selection.loc[res.selection.chosen, 'candidate'].iloc[0]}, chosen by {res.scheme} RMSE "
             f"among {len(res.selection)} candidates; {len(res.honest.observed)} plots",
             f"{'':16}" + "".join(f"{c:>{w}}" for c in cols)]
    fmt = {"r2": ("R²", "{:.3f}"), "rmse": (f"RMSE ({units})", "{:.3f}"), "rrmse": ("rRMSE", "{:.1%}"),
           "bias": (f"bias ({units})", "{:+.3f}"), "n": ("plots", "{:d}")}
    for m, (label, f) in fmt.items():
        lines.append(f"{label:16}" + "".join(f"{f.format(res.cv[k].overall[m]):>{w}}" for k in keys))
    for cls in sorted(res.honest.per_class):
        for m in ("rmse", "r2", "n"):
            label, f = fmt[m]
            lines.append(f"{(cls + ' ' + label)[:16]:16}" + "".join(
                f"{f.format(res.cv[k].per_class[cls][m]):>{w}}" for k in keys))
    if res.fold_choices:
        lines.append(f"{res.cv[keys[0]].scheme}: the choice repeated inside each outer fold (chosen: "
                     f"{', '.join(res.fold_choices)}); the winner's RMSE on the folds that chose it, "
                     f"{res.selection_cv.overall['rmse']:.3f} {units}, is optimistic by the choice")
    cal = res.calibration
    lines.append(f"{cal['nominal']:.0%} intervals ({cal['method']}, nested {res.scheme} CV): "
                 f"{cal['overall']['inside_fraction']:.1%} of held-out plots inside, mean width "
                 f"{cal['overall']['mean_width']:.3f} {units}"
                 + "".join(f"; {c}: {v['inside_fraction']:.1%} of {v['n']}" for c, v in cal["per_coverage_class"].items()))
    if res.variogram is not None:
        v = res.variogram
        lines.append(f"residual variogram ({v.model}): nugget {v.nugget:.3g}, partial sill {v.partial_sill:.3g}, "
                     f"practical range {v.practical_range_m:.0f} m" + ("" if v.status == "ok" else f" ({v.status})"))
    lines += [f"note: {n}" for n in res.notes]
    return "\n".join(lines)


@app.command()
def demo(out: Path = typer.Option(Path("demo-output"), help="output folder"),
         seed: int = typer.Option(0), size_km: float = typer.Option(10.0)):
    """Synthetic scene + whole pipeline; prints where the outputs are and the accuracy against truth."""
    _setup_logging()
    from forestcarbon_synth import make_scene

    out = out.resolve()
    cfg_path = make_scene(out / "scene", seed=seed, size_km=size_km)
    try:
        _run(cfg_path, None, out / "output")
    except ForestCarbonError as err:
        _fail(err)
    summary = json.loads((out / "output" / "report" / "summary.json").read_text())
    t = summary.get("truth", {})
    lines = [
        "",
        f"outputs: {out / 'output'}",
        f"report:  {out / 'output' / 'report' / 'index.html'}",
        f"forest parcels: {summary['forest_parcels']}  total carbon: {summary['total_carbon_t']:,.0f} t C  ({summary['total_co2e_t']:,.0f} t CO2e)",
    ]
    for name, mm in summary["model"]["models"].items():
        sp, rn = mm["spatial_cv"], mm["random_cv"]
        served = "served" if name in summary["model"]["serving_order"] else "not served"
        lines.append(f"{name} model ({mm['kind']}, {served}): block-CV R2 {sp['r2']:.3f}, RMSE {sp['rmse']:.1f} Mg/ha; "
                     f"random CV R2 {rn['r2']:.3f}, RMSE {rn['rmse']:.1f}; 90 % intervals hold "
                     f"{mm['interval_inside_fraction']:.0%} of held-out plots (n {sp['n']})")
    if t:
        lines += [
            f"truth total carbon: {t['total_carbon_t']:,.0f} t C; relative error {t['total_relative_error']:+.2%}",
            f"parcel carbon relative RMSE: {t['parcel_carbon_rrmse']:.1%} (R2 {t['parcel_carbon_r2']:.3f}); pixel AGB RMSE {t['pixel_agb_rmse_mg_ha']:.1f} Mg/ha",
        ]
    typer.echo("\n".join(lines))


from . import cli_accounts  # noqa: E402,F401  (mounts `accounts` and `loss` on app)


def main():  # pragma: no cover
    sys.exit(app())
from . import cli_ops  # noqa: E402,F401  (mounts `init`, `validate`, `status` and `--version` on app)
