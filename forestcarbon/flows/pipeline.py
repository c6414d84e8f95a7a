"""Prefect flow of the whole pipeline: preflight, then the stages in order.

The flow only wires stages together: each stage is a Prefect task around a
plain function of :mod:`forestcarbon.flows.stages`, and stages hand each
other files in the output folder, not objects.  Caching is off: carbon
figures must come from this run's inputs, never from a stored result.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import time
from pathlib import Path
from typing import Literal, get_args

import dask
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from ..config import Config, load_config
from ..errors import ConfigError, ForestCarbonError
from ..fileio import write_json
from ..rs.cog import gdal_cache
from . import prefect_io, run_state
from .layout import Layout
from .progress import stage_progress
from .stages import STAGES, Context, preflight

log = logging.getLogger("forestcarbon")


def _transient_io(task, task_run, state) -> bool:
    """Retry a stage only for I/O errors that may pass (network file systems, object stores), never for
    forestcarbon's own input errors or a full disk."""
    try:
        state.result()
    except ForestCarbonError:
        return False
    except OSError:
        return True
    except Exception:
        return False
    return False


@task(cache_policy=NO_CACHE, persist_result=False, retries=2, retry_delay_seconds=[10, 60],
      retry_condition_fn=_transient_io)
def run_stage(name: str, ctx: Context) -> dict:
    log.info("stage %s: start", name)
    result = STAGES[name](ctx)
    log.info("stage %s: done %s", name, result)
    return result


@contextlib.contextmanager
def dask_scheduler(cfg: Config):
    """Local threads by default; an existing Dask cluster when compute.dask_address is set."""
    if cfg.compute.dask_address:
        from distributed import Client

        with Client(cfg.compute.dask_address) as client:
            log.info("dask: using cluster %s", client.dashboard_link)
            yield
    else:
        with dask.config.set(scheduler="threads", num_workers=cfg.compute.workers), gdal_cache(cfg.compute.gdal_cache_mb):
            yield


def select_stages(stages: list[str] | None) -> list[str]:
    if not stages:
        return list(STAGES)
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ConfigError(f"unknown stage(s) {unknown}; stages are {list(STAGES)}")
    return [s for s in STAGES if s in stages]


def _plain(name: str, ctx: Context) -> dict:
    return STAGES[name](ctx)


def _peak_rss_mb(reset: bool = False) -> float:
    """This process's peak resident set (MiB); ``reset`` starts a new peak (Linux ``clear_refs`` 5)."""
    import resource

    try:
        status = Path("/proc/self/status").read_text()
        peak = next(int(ln.split()[1]) / 1024 for ln in status.splitlines() if ln.startswith("VmHWM:"))
    except (OSError, StopIteration):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if reset:
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")
    return peak


def run_pipeline(cfg: Config, stages: list[str] | None = None, runner=_plain, force: bool = False) -> dict:
    """Run (some) stages in order.  The default runner is plain Python (no Prefect).

    The run holds the output folder's lock, removes staging files an unfinished run left, and skips a stage
    whose manifest entry has the same key (inputs, configuration, code, earlier stages: :mod:`.run_state`)
    and a finish time, unless ``force``.  Each stage's seconds and peak memory of this process are in the
    result's ``timings`` and, when the report ran, in ``report/summary.json`` (``stages``)."""
    import uuid

    names = select_stages(stages)
    ctx = preflight(cfg, names)
    results, timings = {}, {}
    with run_state.output_lock(ctx.out.root):
        run_state.clean_staging(ctx.out.root, keep=[ctx.out.lidar_work] if "lidar" in names else [])
        manifest = run_state.Manifest(ctx.out.root, uuid.uuid4().hex[:12])
        inputs_hash = run_state.inputs_fingerprint(cfg)
        ran = False
        with dask_scheduler(cfg):
            for name in names:
                key = run_state.stage_key(name, inputs_hash, manifest.data, list(STAGES))
                rec = None if (force or ran) else manifest.unchanged(name, key)
                if rec is not None:
                    log.info("stage %s: unchanged since %s (key %s), skipped; --force recomputes", name,
                             rec["finished"], key)
                    results[name] = rec.get("result")
                    continue
                ran = True
                ctx.stage_keys[name] = key
                manifest.start(name, key, inputs_hash)
                _peak_rss_mb(reset=True)
                t0 = time.perf_counter()
                with stage_progress(f"stage {name}"):
                    results[name] = runner(name, ctx)
                timings[name] = {"seconds": round(time.perf_counter() - t0, 2),
                                 "peak_rss_mb": round(_peak_rss_mb(), 1)}
                manifest.finish(name, results[name], timings[name]["seconds"])
        if "report" in timings and ctx.out.summary.exists():
            summary = json.loads(ctx.out.summary.read_text())
            summary["stages"] = timings
            write_json(summary, ctx.out.summary)
    results["timings"] = timings
    return results


def _as_task(name: str, ctx: Context) -> dict:
    return run_stage.with_options(name=f"stage-{name}")(name, ctx)


StageName = Literal["mosaic", "lidar", "terrain", "plots", "model", "map", "parcels", "projects", "trees", "report"]
if set(get_args(StageName)) != set(STAGES):  # the UI's stage picker must list exactly the stages
    raise ImportError(f"StageName {get_args(StageName)} differs from the stages {list(STAGES)}")


@flow(name="forestcarbon-pipeline", persist_result=False, log_prints=True, flow_run_name=prefect_io.run_name)
def pipeline_flow(config_path: str, stages: list[StageName] | None = None, out: str | None = None,
                  force: bool = False) -> dict:
    """Prefect flow: load the configuration at ``config_path`` and run the stages."""
    cfg = load_config(config_path)
    if out is not None:
        cfg = cfg.with_output(Path(out))
    with prefect_io.api_logs():
        results = run_pipeline(cfg, stages, runner=_as_task, force=force)
    layout = Layout(cfg.output)
    summary = json.loads(layout.summary.read_text()) if "report" in results["timings"] else None
    prefect_io.publish(cfg.name, layout.root, results, summary, results["timings"])
    return results


@flow(name="forestcarbon-nightly-mosaic", persist_result=False, log_prints=True, flow_run_name=prefect_io.run_name)
def nightly_flow(config_path: str, date: dt.date | None = None) -> dict:
    """Prefect flow: update the tiled mosaic for the window ending at ``date`` (default today)."""
    from .nightly import nightly_update

    cfg = load_config(config_path)
    day = dt.date.fromisoformat(date) if isinstance(date, str) else date
    with prefect_io.api_logs(), run_state.output_lock(Path(cfg.output)), dask_scheduler(cfg):
        report = nightly_update(cfg, day)
    log.info("nightly: %d tiles updated, %d unchanged, %d failed", len(report["updated"]), len(report["unchanged"]), len(report["failed"]))
    return report


STAGE_GROUPS = {
    "inputs": ["mosaic", "lidar", "terrain", "plots"],
    "estimate": ["model", "map"],
    "accounts": ["parcels", "projects", "trees", "report"],
}


def _deployment(fl, name: str, parameters: dict, description: str, tags: list[str], schedule=None):
    """A runner deployment whose runs import the flow by module path (``forestcarbon.flows.pipeline:...``):
    a served run loads its entrypoint afresh, and a file path with the package's relative imports fails."""
    from prefect.deployments.runner import EntrypointType

    return fl.to_deployment(name=name, parameters=parameters, description=description, tags=tags,
                            entrypoint_type=EntrypointType.MODULE_PATH,
                            **({"schedule": schedule} if schedule is not None else {}))


@flow(name="forestcarbon-boundary-carbon", persist_result=False, log_prints=True, flow_run_name=prefect_io.run_name)
def boundary_flow(config_path: str, boundary: str, accounts_db: str | None = None, epoch: str | None = None,
                  level: float = 0.90) -> dict:
    """Prefect flow: carbon (t C, CO2e) inside ``boundary`` (a polygon file path, or GeoJSON text pasted into
    the form) with SD and interval, from ``epoch`` of the carbon accounts (default: the latest).
    ``accounts_db``: the accounts database (default: ``$FORESTCARBON_ACCOUNTS_DB``, else
    ``forestcarbon-accounts.sqlite`` beside the configuration)."""
    import os

    from ..accounts.sqlite_store import SQLiteStore
    from .boundary import boundary_carbon

    cfg_path = Path(config_path)
    db = Path(accounts_db or os.environ.get("FORESTCARBON_ACCOUNTS_DB")
              or cfg_path.resolve().parent / "forestcarbon-accounts.sqlite")
    if not db.exists():
        raise ConfigError(f"accounts database not found: {db}; commit an epoch first "
                          "(forestcarbon accounts commit OUT --epoch ... --db DB)")
    with prefect_io.api_logs(), SQLiteStore(db, create=False) as store:
        res = boundary_carbon(store, boundary, epoch, level)
    log.info("boundary: %.1f t C (%.0f %% interval %.1f - %.1f) in %.2f ha, epoch %s", res["carbon_t"],
             100 * res["level"], res["carbon_lo_t"], res["carbon_hi_t"], res["area_ha"], res["epoch"])
    prefect_io.publish_boundary(load_config(config_path).name, res)
    return res


def nightly_deployment(config_path: str):
    """The nightly flow as a deployment with the configured cron schedule (default 02:00 Asia/Shanghai)."""
    from prefect.schedules import Cron

    cfg = load_config(config_path)
    return _deployment(nightly_flow, f"{cfg.name}-nightly", {"config_path": str(Path(config_path).resolve())},
                       "Nightly cloud-free mosaic update (only tiles with new scenes are recomputed)",
                       ["forestcarbon", "mosaic", "nightly"],
                       Cron(cfg.mosaic.nightly_cron, timezone=cfg.mosaic.nightly_timezone))


def deployments(config_path: str) -> list:
    """Everything ``forestcarbon serve`` serves: the nightly mosaic on its cron, and on demand the whole
    pipeline, each stage group (:data:`STAGE_GROUPS`) and the carbon inside an uploaded boundary."""
    cfg = load_config(config_path)
    path = str(Path(config_path).resolve())
    out = [nightly_deployment(config_path),
           _deployment(pipeline_flow, f"{cfg.name}-pipeline", {"config_path": path},
                       "The whole pipeline: mosaic, LiDAR, plots, model, map, parcels, projects, trees, report",
                       ["forestcarbon", "pipeline"])]
    out.append(_deployment(boundary_flow, f"{cfg.name}-boundary-carbon", {"config_path": path},
                           "Carbon for this boundary: an uploaded polygon -> its carbon with SD and interval, "
                           "from the latest epoch of the carbon accounts", ["forestcarbon", "accounts", "boundary"]))
    for group, stages in STAGE_GROUPS.items():
        out.append(_deployment(pipeline_flow, f"{cfg.name}-{group}", {"config_path": path, "stages": stages},
                               f"Stages {', '.join(stages)}", ["forestcarbon", "pipeline", group]))
    return out
