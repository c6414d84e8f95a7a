"""LiDAR products for a set of tiles: metric, CHM and DTM COGs and plot-footprint metrics.

Tiles are processed in batches in spatial order, each tile a Dask task that
opens its own files and writes its own window rasters; the main process only
keeps small per-tile summaries, and the windows are mosaicked into COGs by
GDAL block by block.  Memory is therefore bounded by the tile (and batch)
size, not by the number of tiles.  Decoded points spilled for neighbours are
deleted as soon as every tile that needs them is done.

The triangulation holds the GIL, so on the local threaded scheduler tiles run
in a pool of worker processes instead (loky, as joblib uses); on a distributed cluster (a
``distributed.Client`` is active) they run on its workers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import pickle
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import dask
import numpy as np
import pandas as pd
import shapely
from joblib.externals.loky import get_reusable_executor
from pyproj import CRS

from ..cog import cog_from_windows
from .blocks import Options, Targets, TileResult, expand, process_tile, spill_tile
from .io import TileInfo, tile_bounds_in
from .metrics import METRICS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Plan:
    """Tile bounds in the grid CRS, each tile's neighbours within the buffer, and a spatial processing order."""

    bounds: list
    near: list  # list[list[int]]: the tiles within each tile's buffer, itself included
    users: list  # list[list[int]]: the other tiles whose buffer reaches each tile
    order: list

    @classmethod
    def of(cls, tiles: list[TileInfo], crs: CRS, buffer_m: float) -> "Plan":
        """Neighbours from an R-tree of the tile boxes (O(n log n), for tens of thousands of tiles)."""
        b = tile_bounds_in(tiles, crs)
        arr = np.asarray(b, dtype="float64").reshape(-1, 4)
        grown = arr + np.array([-buffer_m, -buffer_m, buffer_m, buffer_m])
        tree = shapely.STRtree(shapely.box(*arr.T))
        i_idx, j_idx = tree.query(shapely.box(*grown.T), predicate="intersects") if len(b) else (np.empty(0, int),) * 2
        strict = (arr[j_idx, 0] < grown[i_idx, 2]) & (grown[i_idx, 0] < arr[j_idx, 2]) & \
                 (arr[j_idx, 1] < grown[i_idx, 3]) & (grown[i_idx, 1] < arr[j_idx, 3])  # open overlap: touching is not near
        near = [{i} for i in range(len(b))]
        for i, j in zip(i_idx[strict].tolist(), j_idx[strict].tolist()):
            near[i].add(j)
        near = [sorted(s) for s in near]
        users = [[] for _ in b]
        for i, ns in enumerate(near):
            for j in ns:
                if j != i:
                    users[j].append(i)
        order = sorted(range(len(b)), key=lambda i: (-round(b[i][3], 3), b[i][0]))  # north to south, west to east
        return cls(b, near, users, order)


@dataclass
class LidarRun:
    """Summary of a run: points, outlier returns dropped, tiles taken as normalised, written files."""

    tiles: int = 0
    points: int = 0
    dropped: int = 0
    noise: int = 0
    no_ground: int = 0
    normalized_tiles: int = 0
    files: dict = field(default_factory=dict)
    plot_metrics: pd.DataFrame | None = None


@contextlib.contextmanager
def _tile_scheduler(n_tiles: int):
    """Dask compute kwargs for tile tasks: the active cluster, else a process pool, else in-process."""
    workers = int(dask.config.get("num_workers", None) or os.cpu_count() or 1)
    name = dask.config.get("scheduler", None)
    if name == "dask.distributed":  # a distributed.Client is the default: its workers run the tiles
        yield {}, workers
        return
    if name in ("sync", "synchronous", "single-threaded") or n_tiles < 2 or workers < 2:
        yield {"scheduler": "sync"}, 1
        return
    workers = min(workers, n_tiles)
    # loky's pool: fresh interpreters that never re-run the caller's __main__ (scripts without a main
    # guard, notebooks and stdin work), shut down when the run ends
    pool = get_reusable_executor(max_workers=workers, timeout=300)
    try:
        yield {"scheduler": "processes", "pool": pool, "chunksize": 1}, workers  # one tile per submission
    finally:
        pool.shutdown(wait=True)


def _finished_tiles(work: Path, resume_key: str | None) -> dict[int, TileResult]:
    """Tiles an earlier, interrupted run with the same ``resume_key`` finished in ``work`` (their results and
    window rasters intact); any other content of ``work`` is removed and the key recorded."""
    key_file, res_dir = work / "RESUME_KEY", work / "results"
    done: dict[int, TileResult] = {}
    if resume_key and key_file.exists() and key_file.read_text() == resume_key and res_dir.is_dir():
        for p in sorted(res_dir.glob("tile_*.pkl")):
            try:
                r = pickle.loads(p.read_bytes())
            except Exception:  # a result cut short by the kill: the tile runs again
                continue
            if all(Path(f).exists() for f, _ in r.files.values()):
                done[r.index] = r
    else:
        for p in list(work.iterdir()) if work.exists() else []:
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    res_dir.mkdir(exist_ok=True)
    if resume_key:
        key_file.write_text(resume_key)
    return done


def lidar_products(tiles: list[TileInfo], targets: Targets, opts: Options, out: dict[str, Path],
                   workdir: Path | str | None = None, batch: int | None = None,
                   resume_key: str | None = None) -> LidarRun:
    """Run every tile and write the COGs named in ``out`` (keys ``metrics``, ``chm``, ``dtm``).

    ``metrics``: one band per lidR stdmetrics_z metric on ``targets.metrics``;
    ``chm``: highest normalised return per cell on ``targets.chm`` (m);
    ``dtm``: ground TIN at cell centres, slope and aspect (deg) on ``targets.dtm``.
    Plot-footprint metrics (one row per plot with returns) come back in the summary.
    ``resume_key``: with a ``workdir`` kept from an interrupted run under the same key (the stage's key:
    same inputs, configuration and code), the tiles it finished are not run again.
    """
    gbox = targets.metrics or targets.chm or targets.dtm
    crs = CRS.from_user_input(gbox.crs.to_wkt())
    wkt = crs.to_wkt()
    extent = max([0.0] + [max(g.bounds[2] - g.bounds[0], g.bounds[3] - g.bounds[1]) for _, g in targets.plots])
    cell = max([abs(g.affine.a) for g in (targets.metrics, targets.chm, targets.dtm) if g is not None])
    # every point of an owned cell or plot must be read
    opts = dataclasses.replace(opts, buffer_m=max(opts.buffer_m, 1.5 * cell, extent))
    plan = Plan.of(tiles, crs, opts.buffer_m)
    run = LidarRun(tiles=len(tiles))
    results: list[TileResult] = []
    with contextlib.ExitStack() as stack:
        work = Path(workdir) if workdir else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lidar-")))
        finished = _finished_tiles(work, resume_key) if workdir else {}
        if finished:
            log.info("LiDAR: %d of %d tiles finished by an interrupted run with the same inputs: not run again",
                     len(finished), len(tiles))
        results.extend(finished[i] for i in sorted(finished))
        order = [i for i in plan.order if i not in finished]
        spill_dir, win_dir, res_dir = work / "points", work / "windows", work / "results"
        spill_dir.mkdir(parents=True, exist_ok=True)
        win_dir.mkdir(parents=True, exist_ok=True)
        res_dir.mkdir(parents=True, exist_ok=True)
        kw, workers = stack.enter_context(_tile_scheduler(len(order)))
        batch = batch or max(8, 16 * workers)  # tiles per graph: spilled points live at most a batch long
        needs = {j: sum(u not in finished for u in plan.users[j]) + (len(plan.near[j]) > 1)
                 for j in range(len(tiles))}
        plots_of = _plots_by_tile(targets.plots, plan, opts.buffer_m)
        spilled: dict = {}
        for k in range(0, len(order), batch):
            todo = order[k:k + batch]
            spill_tasks = {}
            for i in todo:
                if len(plan.near[i]) > 1:
                    for j in plan.near[i]:
                        if j not in spilled and j not in spill_tasks:
                            shared = [expand(plan.bounds[m], opts.buffer_m) for m in plan.users[j]]
                            spill_tasks[j] = dask.delayed(spill_tile)(j, tiles[j], wkt, shared, str(spill_dir))
            tasks = []
            for i in todo:
                sp = {j: spilled.get(j, spill_tasks.get(j)) for j in plan.near[i]} if len(plan.near[i]) > 1 else {}
                near_b = [plan.bounds[j] for j in plan.near[i]]
                tile_targets = dataclasses.replace(targets, plots=plots_of.get(i, ()))
                tasks.append(dask.delayed(process_tile)(i, tiles[i], near_b, plan.near[i].index(i), sp, wkt, tile_targets,
                                                        opts, str(win_dir)))
            keys = list(spill_tasks)
            done = dask.compute(*[spill_tasks[j] for j in keys], *tasks, **kw)
            spilled.update(zip(keys, done[:len(keys)]))
            results.extend(done[len(keys):])
            for r in done[len(keys):]:  # each finished tile survives a kill (written whole, then renamed)
                tmp = res_dir / f".tile_{r.index}.pkl"
                tmp.write_bytes(pickle.dumps(r))
                os.replace(tmp, res_dir / f"tile_{r.index}.pkl")
            for i in todo:  # points no remaining tile needs are deleted
                if len(plan.near[i]) > 1:
                    for j in plan.near[i]:
                        needs[j] -= 1
                        if needs[j] == 0 and j in spilled:
                            Path(spilled.pop(j).path).unlink(missing_ok=True)
        for r in results:
            run.points += r.points
            run.dropped += r.dropped
            run.noise += r.noise
            run.no_ground += r.no_ground
            run.normalized_tiles += r.normalized
        _mosaic(results, targets, out, run, opts)
    if run.dropped:
        log.warning("LiDAR: dropped %d returns with heights outside [%g, %g] m (outlier filter)",
                    run.dropped, opts.min_height_m, opts.max_height_m)
    if run.no_ground:
        log.warning("LiDAR: dropped %d returns outside the ground hull with no ground return within 50 m "
                    "(no height: lidR's knnidw(3, 1, 50) gives none)", run.no_ground)
    if run.noise:
        log.info("LiDAR: dropped %d returns of the noise classes %s", run.noise, list(opts.noise_classes))
    if targets.plots:
        rows = [{"plot_id": pid, **vals} for r in results for pid, vals in r.plots]
        run.plot_metrics = pd.DataFrame(rows, columns=["plot_id", *METRICS])
    return run


def _plots_by_tile(plots: tuple, plan: Plan, buffer_m: float) -> dict[int, tuple]:
    """The plots each tile may own: those whose centroid lies within its buffer (the tile decides ownership)."""
    if not plots:
        return {}
    cents = shapely.centroid(np.array([g for _, g in plots], dtype=object))
    tree = shapely.STRtree(cents)
    out: dict[int, tuple] = {}
    for i, b in enumerate(plan.bounds):
        hit = tree.query(shapely.box(*expand(b, buffer_m)))
        if len(hit):
            out[i] = tuple(plots[k] for k in sorted(hit.tolist()))
    return out


_PRODUCTS = {
    "metrics": (list(METRICS), None, {"definitions": "lidR stdmetrics_z(z, dz=1, th=2) over all returns after height normalisation"}),
    "chm": (["chm_m"], "m", {"method": "highest normalised return per cell (lidR p2r)"}),
    "dtm": (["dtm_m", "slope_deg", "aspect_deg"], None,
            {"method": "ground TIN (Delaunay, startinpy) at cell centres, outside the hull lidR knnidw(k=3, p=1, rmax=50 m); "
                       "slope/aspect Horn 1981"}),
}


def _mosaic(results: list[TileResult], targets: Targets, out: dict, run: LidarRun, opts: Options) -> None:
    for name, (descr, units, tags) in _PRODUCTS.items():
        if name == "chm" and opts.chm_algorithm == "pitfree":
            tags = {"method": f"pit-free CHM (Khosravipour et al. 2014, as lidR pitfree): first returns, thresholds "
                              f"{list(opts.pitfree_thresholds_m)} m, max edge {list(opts.pitfree_max_edge_m)} m"}
        gbox = getattr(targets, name)
        if gbox is None or name not in out:
            continue
        srcs = [(gbox[r0:r1, c0:c1], p) for r in results if name in r.files for p, (r0, r1, c0, c1) in [r.files[name]]]
        if name == "dtm" and not srcs:
            continue  # heights already normalised: no terrain
        run.files[name] = cog_from_windows(out[name], gbox, srcs, descr, units=units,
                                           tags={**tags, "tiles": run.tiles})
