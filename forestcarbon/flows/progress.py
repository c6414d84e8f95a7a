"""Progress bars on the terminal for the minutes-long steps: every dask computation a stage runs (scenes
composited block by block, LiDAR tiles, map blocks, zonal partitions) shows a rich progress bar of its tasks
on stderr, labelled with the stage.  Only for local schedulers (threads, processes): a distributed cluster has
its own dashboard, whose link the run logs."""

from __future__ import annotations

import contextlib
import sys
import threading

from dask.callbacks import Callback


class RichTaskProgress(Callback):
    """A dask callback drawing one rich bar per ``compute`` (tasks done / tasks), named ``label``."""

    def __init__(self, label: str = "working", console=None):
        super().__init__()
        self.label = label
        self._console = console
        self._lock = threading.Lock()
        self._progress = None
        self._task = None

    def _start_state(self, dsk, state):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        total = sum(len(state[k]) for k in ("ready", "waiting", "running")) + len(state.get("finished", ()))
        self._progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), console=self._console, transient=True)
        self._progress.start()
        self._task = self._progress.add_task(self.label, total=max(total, 1))

    def _posttask(self, key, result, dsk, state, worker_id):
        with self._lock:
            if self._progress is not None:
                self._progress.advance(self._task)

    def _finish(self, dsk, state, errored):
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


@contextlib.contextmanager
def stage_progress(label: str, enabled: bool | None = None):
    """Progress bars for the dask computations inside the block; by default only when stderr is a terminal."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        yield
        return
    from rich.console import Console

    with RichTaskProgress(label, Console(stderr=True)):
        yield
