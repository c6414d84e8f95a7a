"""``forestcarbon accounts ...`` (the parcel carbon ledger) and ``forestcarbon loss`` (Typer).

Mounted on the main app by one import line at the end of :mod:`forestcarbon.flows.cli`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..accounts.change import DEFAULT_EPOCH_ERROR_CORRELATION
from ..errors import ForestCarbonError
from .cli import _fail, app

accounts_app = typer.Typer(no_args_is_help=True, help="Parcel carbon accounts over epochs (the ledger).")
app.add_typer(accounts_app, name="accounts")

DB_HELP = "accounts database (SQLite file)"
DB_ENV = "FORESTCARBON_ACCOUNTS_DB"
DEFAULT_DB = Path("forestcarbon-accounts.sqlite")
RHO_HELP = ("between-epoch correlation of the stock errors, in [-1, 1]; the default 0 is the largest variance "
            "for any rho in [0, 1] (see forestcarbon.accounts.change)")


def _store(db: Path, create: bool = False):
    from ..accounts.sqlite_store import SQLiteStore

    return SQLiteStore(db, create=create)


@accounts_app.command("commit")
def commit(out: Path = typer.Argument(..., help="pipeline output folder"),
           epoch: str = typer.Option(..., help="epoch label, e.g. 2024"),
           date: Optional[str] = typer.Option(None, help="date the stocks refer to, YYYY-MM-DD (default: the median "
                                                         "acquisition date of the scenes the mosaic used)"),
           db: Path = typer.Option(DEFAULT_DB, envvar=DB_ENV, help=DB_HELP)):
    """Write (or replace) an epoch's parcel stocks from a pipeline output folder, in one transaction."""
    from .epoch_input import read_epoch

    try:
        record, rows = read_epoch(out, epoch, date)
        with _store(db, create=True) as store:
            counts = store.write_epoch(record, rows)
    except ForestCarbonError as err:
        _fail(err)
    typer.echo(f"epoch {record.epoch} ({record.epoch_date}) written to {db}: {counts['stocks']} parcel stocks, "
               f"{counts['new_versions']} new parcel versions; model {record.model_ids[0]}")
    for note in record.notes:
        typer.echo(f"note: {note}")


@accounts_app.command("epochs")
def epochs(db: Path = typer.Option(DEFAULT_DB, envvar=DB_ENV, help=DB_HELP)):
    """List the epochs and their provenance."""
    try:
        with _store(db) as store:
            eps = store.epochs()
    except ForestCarbonError as err:
        _fail(err)
    for e in eps:
        typer.echo(f"{e.epoch}\t{e.epoch_date}\t{e.n_parcels} parcels\tmodel {', '.join(e.model_ids)}\t{e.code_version}"
                   f"\tconfig {e.config_sha256 or 'not recorded'}\tcommitted {e.created_utc}")


@accounts_app.command("show")
def show(parcel_id: str = typer.Argument(..., help="parcel id"),
         rho: float = typer.Option(DEFAULT_EPOCH_ERROR_CORRELATION, help=RHO_HELP),
         db: Path = typer.Option(DEFAULT_DB, envvar=DB_ENV, help=DB_HELP)):
    """A parcel's stock history and its sinks between consecutive epochs."""
    import pandas as pd

    from ..accounts.change import parcel_sinks, years_between

    try:
        with _store(db) as store:
            hist = store.parcel_history(parcel_id)
            versions = store.parcel_versions(parcel_id=parcel_id)
        lines = [f"parcel {parcel_id}: {len(hist)} epochs, {len(versions)} geometry versions",
                 f"{'epoch':10}{'date':12}{'version':>8}{'area_ha':>10}{'carbon_t':>12}{'sd_t':>10}{'co2e_t':>12}"
                 f"{'valid':>7}"]
        for r in hist.itertuples():
            lines.append(f"{r.epoch:10}{r.epoch_date:12}{r.version:>8d}{r.area_ha:>10.3f}{_f(r.carbon_t):>12}"
                         f"{_f(r.carbon_sd_t):>10}{_f(r.co2e_t):>12}{_f(r.valid_fraction, '.2f'):>7}")
        one = [pd.DataFrame([r]).assign(parcel_id=parcel_id) for _, r in hist.iterrows()]
        for i in range(1, len(hist)):
            r1, r2 = hist.iloc[i - 1], hist.iloc[i]
            s = parcel_sinks(one[i - 1], one[i], years_between(r1.epoch_date, r2.epoch_date), rho).iloc[0]
            lines.append(f"sink {r1.epoch} -> {r2.epoch} ({s.years:.2f} years, rho {rho:g}): "
                         + (f"{s.sink_co2e_t_yr:+,.3f} t CO2e/yr, sd {_f(s.sink_co2e_sd_t_yr)}, 90 % interval "
                            f"[{_f(s.sink_co2e_lo90_t_yr)}, {_f(s.sink_co2e_hi90_t_yr)}]"
                            if s.status in ("ok", "no sd") else "none") + f" ({s.status})")
    except ForestCarbonError as err:
        _fail(err)
    typer.echo("\n".join(lines))


def _f(v, fmt: str = ",.3f") -> str:
    return "NULL" if v is None or v != v else format(v, fmt)


@accounts_app.command("sinks")
def sinks(from_epoch: str = typer.Option(..., "--from", help="earlier epoch"),
          to_epoch: str = typer.Option(..., "--to", help="later epoch"),
          out: Path = typer.Option(..., help="output .csv or .parquet"),
          rho: float = typer.Option(DEFAULT_EPOCH_ERROR_CORRELATION, help=RHO_HELP),
          db: Path = typer.Option(DEFAULT_DB, envvar=DB_ENV, help=DB_HELP)):
    """Every parcel's sink (t CO2e per year) between two epochs with its sd and 90 % interval."""
    from ..accounts.change import parcel_sinks, years_between
    from ..fileio import write_table

    if out.suffix not in (".csv", ".parquet"):
        _fail(ValueError(f"--out {out}: use a .csv or .parquet file"))
    try:
        with _store(db) as store:
            e1, e2 = store.epoch(from_epoch), store.epoch(to_epoch)
            table = parcel_sinks(store.stocks(from_epoch), store.stocks(to_epoch),
                                 years_between(e1.epoch_date, e2.epoch_date), rho)
    except ForestCarbonError as err:
        _fail(err)
    write_table(table.assign(epoch_from=from_epoch, epoch_to=to_epoch), out)
    ok = table["status"].isin(["ok", "no sd"])
    typer.echo(f"wrote {out}: {len(table)} parcels, {int(ok.sum())} with a sink; total "
               f"{table.loc[ok, 'sink_co2e_t_yr'].sum():+,.1f} t CO2e/yr (rho {rho:g}); by status: "
               + ", ".join(f"{k} {v}" for k, v in table["status"].value_counts().items()))


@accounts_app.command("export")
def export(epoch: str = typer.Option(..., help="epoch label"),
           format: str = typer.Option("gpkg", "--format", help="gpkg, parquet or csv (csv: no geometry)"),
           out: Path = typer.Option(..., help="output file"),
           db: Path = typer.Option(DEFAULT_DB, envvar=DB_ENV, help=DB_HELP)):
    """Write an epoch's parcel stocks with their geometry versions and attributes."""
    from ..accounts.export import epoch_table
    from ..fileio import write_table

    if format not in ("gpkg", "parquet", "csv"):
        _fail(ValueError(f"--format {format!r}: use gpkg, parquet or csv"))
    try:
        with _store(db) as store:
            table = epoch_table(store, epoch)
    except ForestCarbonError as err:
        _fail(err)
    path = out if out.suffix == f".{format}" else out.with_name(out.name + f".{format}")
    if format == "csv":
        table = table.drop(columns="geometry")
    write_table(table, path, **({"layer": f"stocks_{epoch}"} if format == "gpkg" else {}))
    typer.echo(f"wrote {path}: {len(table)} parcels of epoch {epoch}")


@app.command("loss")
def loss(area: Path = typer.Option(..., help="polygon file (GeoPackage, Shapefile, GeoJSON ...); all its polygons "
                                             "are united"),
         from_epoch: str = typer.Option(..., "--from", help="epoch before"),
         to_epoch: str = typer.Option(..., "--to", help="epoch after"),
         layer: Optional[str] = typer.Option(None, help="layer of the polygon file"),
         rho: float = typer.Option(DEFAULT_EPOCH_ERROR_CORRELATION, help=RHO_HELP),
         out: Optional[Path] = typer.Option(None, help="output folder (default ./loss-FROM-TO)"),
         db: Path = typer.Option(DEFAULT_DB, envvar=DB_ENV, help=DB_HELP)):
    """Carbon lost inside a polygon between two epochs, from the epochs' carbon maps: a JSON, a PNG map and a
    one-page HTML summary."""
    import geopandas as gpd

    from ..accounts.loss import carbon_loss, dissolve_area
    from ..accounts.loss_report import loss_html, loss_png
    from ..fileio import sha256, write_json
    from ..vector.layers import check_layer

    out = out or Path(f"loss-{from_epoch}-{to_epoch}")
    try:
        check_layer(area, layer)
        with _store(db) as store:
            before, after = store.epoch(from_epoch), store.epoch(to_epoch)
        poly = dissolve_area(gpd.read_file(area, layer=layer), str(area))
        result = carbon_loss(before, after, poly, rho)
    except ForestCarbonError as err:
        _fail(err)
    area_sha = sha256(area)
    png = loss_png(result, poly, out / "loss.png")
    page = loss_html(result, before, after, area.resolve(), area_sha, db.resolve(), png, out / "loss.html")
    write_json({**result.to_dict(), "area_file": str(area.resolve()), "area_sha256": area_sha,
                "db": str(db.resolve())}, out / "loss.json")
    typer.echo(f"carbon lost {from_epoch} -> {to_epoch}: {result.loss_carbon_t:,.1f} t C "
               f"({result.level:.0%} interval {result.loss_carbon_lo_t:,.1f} to {result.loss_carbon_hi_t:,.1f}), "
               f"{result.loss_co2e_t:,.1f} t CO2e; rho {result.rho:g}; mapped share of the area "
               f"{result.before.mapped_fraction:.1%} / {result.after.mapped_fraction:.1%}; page {page}")
