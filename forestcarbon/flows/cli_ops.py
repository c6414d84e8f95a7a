"""``forestcarbon init``, ``validate``, ``status`` and ``--version``: the way in for a real county (Typer).

Mounted on the main app by one import line at the end of :mod:`forestcarbon.flows.cli`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer

from .. import __version__
from ..errors import ForestCarbonError
from .cli import _fail, app


def _version(value: bool):
    if value:
        from .report import _git_commit

        commit = _git_commit()
        typer.echo(f"forestcarbon {__version__}" + (f" (git {commit[:12]})" if commit else ""))
        raise typer.Exit()


@app.callback()
def main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="print the version and exit")):
    """Sky–air–ground forest carbon mapping."""


TEMPLATE = Path(__file__).resolve().parents[1] / "configs" / "county_template.yaml"


@app.command()
def init(folder: Path = typer.Argument(..., help="folder to write config.yaml into (created)"),
         force: bool = typer.Option(False, "--force", help="overwrite an existing config.yaml")):
    """Write a commented configuration for a real county (CGCS2000 / EPSG:4549, Chinese inventory headers,
    小班 fields), explaining each input; edit the paths, then `forestcarbon validate`."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.yaml"
    if path.exists() and not force:
        _fail(FileExistsError(f"{path} exists; --force overwrites it"))
    path.write_text(TEMPLATE.read_text(encoding="utf-8"), encoding="utf-8")
    typer.echo(f"wrote {path}: set the input paths (relative to {folder}), then run "
               f"`forestcarbon validate {path}`")


@app.command()
def validate(config: Path = typer.Argument(..., help="configuration YAML"),
             stage: Optional[list[str]] = typer.Option(None, "--stage", help="check only these stages' inputs")):
    """Check every input the stages need (files, layers, fields, CRSs, extents, species, asset keys, LiDAR
    headers) and print one line per problem, without computing anything."""
    from ..config import load_config
    from .pipeline import select_stages
    from .stages import preflight

    t0 = time.perf_counter()
    try:
        cfg = load_config(config)
        names = select_stages(stage)
    except ForestCarbonError as err:
        _fail(err)
    problems: list[str] = []
    try:
        preflight(cfg, names, problems)
    except ForestCarbonError as err:  # a check that could not run at all
        problems.append(str(err))
    except Exception as err:  # noqa: BLE001 -- an unreadable file the checks did not foresee: still one line
        problems.append(f"unexpected {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
    secs = time.perf_counter() - t0
    if problems:
        for p in problems:
            typer.echo(f"error: {p}", err=True)
        typer.echo(f"{config}: {len(problems)} problem{'s' if len(problems) > 1 else ''} ({secs:.1f} s)", err=True)
        raise typer.Exit(code=2)
    typer.echo(f"{config}: the inputs of {', '.join(names)} check out ({secs:.1f} s)")


@app.command()
def status(out: Path = typer.Argument(..., help="an output folder"),
           config: Optional[Path] = typer.Option(None, help="the configuration: also say which stages are stale")):
    """Which stages of an output folder finished, when, in which run, from which inputs (the hash of the
    configuration and of every input file's size and time), and (with --config) whether each is current or
    stale."""
    from .pipeline import STAGES
    from .run_state import MANIFEST, inputs_fingerprint, read_manifest, stage_key

    if not (out / MANIFEST).exists():
        _fail(FileNotFoundError(f"{out / MANIFEST} not found: no forestcarbon run has written to {out}"))
    m = read_manifest(out)
    keys = {}
    if config is not None:
        from ..config import load_config

        try:
            cfg = load_config(config).with_output(out)
        except ForestCarbonError as err:
            _fail(err)
        h = inputs_fingerprint(cfg)
        keys = {s: stage_key(s, h, m, list(STAGES)) for s in STAGES}
        typer.echo(f"{config}: inputs and configuration now {h[:16]}")
    runs = sorted({r.get("run_id") for r in m["stages"].values()})
    typer.echo(f"{out}: {len(m['stages'])} stages recorded by {len(runs)} run{'s' if len(runs) != 1 else ''}")
    for s in STAGES:
        r = m["stages"].get(s)
        if r is None:
            typer.echo(f"  {s:9s} not run")
            continue
        state = (f"finished {r['finished']} in {r.get('seconds', 0):.0f} s" if r.get("finished")
                 else f"UNFINISHED (started {r['started']}; the run stopped inside it)")
        fresh = ""
        if keys:
            fresh = "  current" if r.get("finished") and r.get("key") == keys[s] else "  STALE (inputs, configuration, " \
                "code or an earlier stage changed since)"
        typer.echo(f"  {s:9s} {state}, run {r.get('run_id')}, inputs {r.get('inputs') or '?'}{fresh}")
    if len(runs) > 1:
        typer.echo("  note: the stages come from different runs; `forestcarbon run CONFIG --out OUT` re-runs what is stale")
    typer.echo(json.dumps({"last_run_id": m.get("last_run_id")}))
