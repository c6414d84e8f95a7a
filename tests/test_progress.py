"""The terminal progress bar of dask computations: it counts every task of the graph once."""

from __future__ import annotations

import io

import dask
import dask.array as da
import numpy as np
from rich.console import Console

from forestcarbon.flows.progress import RichTaskProgress, stage_progress


def test_progress_counts_every_task_and_renders():
    """The bar ends at n/n, n the tasks the scheduler ran (counted by a plain dask callback beside it: the
    optimised graph, fewer than the raw graph's keys)."""
    from dask.callbacks import Callback

    x = da.ones((40, 40), chunks=10) * 2
    total = x.sum()
    ran = []
    counter = Callback(posttask=lambda key, result, dsk, state, worker_id: ran.append(key))
    buf = io.StringIO()
    cb = RichTaskProgress("stage map", Console(file=buf, force_terminal=True, width=100))
    with dask.config.set(scheduler="threads"), cb, counter:
        assert float(total.compute()) == 3200.0
    n = len(ran)
    assert 1 < n <= len(dict(total.__dask_graph__()))
    out = buf.getvalue()
    assert "stage map" in out and f"{n}/{n}" in out and f"{n + 1}/{n}" not in out


def test_no_bar_when_stderr_is_not_a_terminal(capsys):
    with stage_progress("stage x"):
        assert int(np.asarray(da.arange(10, chunks=5).sum().compute())) == 45
    assert "stage x" not in capsys.readouterr().err
