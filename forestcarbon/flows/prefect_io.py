"""What a Prefect run shows: its name and tags, forestcarbon's log lines in the run's logs, and artifacts
(a markdown summary with totals, intervals, model figures, warnings and where the outputs are; tables of
project totals, model metrics and stage timings).  Wiring only: the figures come from the stages' results
and ``report/summary.json``."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
from pathlib import Path

from ..config import load_config

log = logging.getLogger("forestcarbon")


def run_name() -> str:
    """``<config name>-<flow>-<UTC time>``: from the run's ``config_path`` parameter (Prefect calls this when a
    run starts)."""
    from prefect.runtime import flow_run

    params = flow_run.parameters or {}
    try:
        name = load_config(params["config_path"]).name
    except Exception:  # a bad config fails in the flow itself, with its own message
        name = Path(str(params.get("config_path", "forestcarbon"))).stem
    day = params.get("date")
    when = str(day) if day else dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H%M")
    return f"{name}-{flow_run.flow_name.removeprefix('forestcarbon-')}-{when}"


@contextlib.contextmanager
def api_logs():
    """forestcarbon's log lines go to the run's logs in the Prefect API while the flow runs."""
    from prefect.logging.handlers import APILogHandler

    handler = APILogHandler()
    handler.setLevel(logging.INFO)
    level = log.level
    if log.getEffectiveLevel() > logging.INFO:  # a served run has no CLI logging set up: stages' INFO lines too
        log.setLevel(logging.INFO)
    log.addHandler(handler)
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


def _fmt_t(v) -> str:
    return "–" if v is None else f"{float(v):,.0f}"


def summary_markdown(cfg_name: str, out: Path, results: dict, summary: dict | None, timings: dict) -> str:
    """The run's markdown artifact."""
    lines = [f"# forestcarbon: {cfg_name}", "", f"Outputs: `{out}`", ""]
    if summary:
        c = summary.get("county") or {}
        county = c.get("forest_parcels") or c.get("all_parcels") or {}
        sd = county.get("carbon_sd_t")
        lo, hi = county.get("carbon_p05_t"), county.get("carbon_p95_t")
        lines += ["## Totals (forest parcels)", "",
                  f"- carbon: **{_fmt_t(summary.get('total_carbon_t'))} t C**"
                  + (f" (SD {_fmt_t(sd)}, 90 % interval {_fmt_t(lo)} – {_fmt_t(hi)})" if sd is not None else ""),
                  f"- CO2e: {_fmt_t(summary.get('total_co2e_t'))} t CO2e",
                  f"- forest parcels: {summary.get('forest_parcels')}; without an estimate: "
                  f"{summary.get('forest_parcels_without_estimate')}", ""]
        models = (summary.get("model") or {}).get("models") or {}
        if models:
            lines += ["## Models (spatial-block CV)", "", "| model | R² | RMSE (Mg/ha) | bias (Mg/ha) | n |",
                      "|---|---|---|---|---|"]
            for k, m in models.items():
                cv = m.get("spatial_cv") or {}
                lines.append(f"| {k} | {cv.get('r2', float('nan')):.2f} | {cv.get('rmse', float('nan')):.1f} | "
                             f"{cv.get('bias', float('nan')):.1f} | {cv.get('n', '')} |")
            lines.append("")
        warnings = run_warnings(summary)
        if warnings:
            lines += ["## Warnings", ""] + [f"- {w}" for w in warnings] + [""]
    else:
        lines += ["## Stages", ""] + [f"- {k}: `{json.dumps(v, default=str)[:300]}`" for k, v in results.items()] + [""]
    if timings:
        lines += ["## Stage timings", "", "| stage | seconds | peak memory (MB) |", "|---|---|---|"]
        lines += [f"| {k} | {v['seconds']:.1f} | {v['peak_rss_mb']:.0f} |" for k, v in timings.items()] + [""]
    return "\n".join(lines)


def run_warnings(summary: dict) -> list[str]:
    """Decisions a reader must see: unverified equations, parcels off the map."""
    out = []
    eq = summary.get("equations") or {}
    verified = eq.get("tree_share_equation_verified")
    if verified is not None and verified < 1:
        out.append(f"{1 - verified:.0%} of the plot trees used allometric equations not verified against their "
                   "printed source")
    n = summary.get("forest_parcels_without_estimate")
    if n:
        out.append(f"{n} forest parcels ({summary.get('forest_area_ha_without_estimate', 0):,.1f} ha) have no mapped "
                   "pixel and are not in the totals")
    n = summary.get("forest_parcels_under_half_mapped")
    if n:
        out.append(f"{n} forest parcels are less than half mapped (their carbon extrapolates the mapped part)")
    return out


def publish(cfg_name: str, out: Path, results: dict, summary: dict | None, timings: dict) -> None:
    """Markdown and table artifacts of a finished run (inside a Prefect flow run)."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    key = "".join(c if c.isalnum() else "-" for c in cfg_name.lower()).strip("-")
    create_markdown_artifact(key=f"{key}-summary", markdown=summary_markdown(cfg_name, out, results, summary, timings),
                             description="forestcarbon run summary")
    if timings:
        create_table_artifact(key=f"{key}-stage-timings", table=[{"stage": k, **v} for k, v in timings.items()],
                              description="seconds and peak resident memory per stage")
    if summary and summary.get("projects"):
        create_table_artifact(key=f"{key}-projects", table=summary["projects"], description="per-project totals")


def publish_boundary(cfg_name: str, res: dict) -> None:
    """The boundary answer as a markdown artifact."""
    from prefect.artifacts import create_markdown_artifact

    key = "".join(c if c.isalnum() else "-" for c in cfg_name.lower()).strip("-")
    md = (f"# Carbon inside the boundary\n\n- epoch **{res['epoch']}** ({res['epoch_date']}), area "
          f"{res['area_ha']:,.2f} ha, mapped {res['mapped_fraction']:.0%}\n- carbon **{res['carbon_t']:,.1f} t C** "
          f"(SD {res['carbon_sd_t']:,.1f}; {res['level']:.0%} interval {res['carbon_lo_t']:,.1f} – "
          f"{res['carbon_hi_t']:,.1f})\n- CO2e {res['co2e_t']:,.1f} t ({res['co2e_lo_t']:,.1f} – "
          f"{res['co2e_hi_t']:,.1f})\n- method: {res['method']}\n- maps: `{res['carbon_map']}`, "
          f"`{res['carbon_sd_map']}`\n")
    create_markdown_artifact(key=f"{key}-boundary-carbon", markdown=md, description="carbon for this boundary")
