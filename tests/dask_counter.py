"""A worker plugin that counts the tasks each worker of a real cluster finished (tests/test_pipeline.py)."""

from __future__ import annotations

from dask.utils import key_split
from distributed.diagnostics.plugin import WorkerPlugin


class TaskCounter(WorkerPlugin):
    name = "forestcarbon-task-counter"

    def setup(self, worker):
        self.prefixes: dict[str, int] = {}

    def transition(self, key, start, finish, **kwargs):
        if start == "executing" and finish == "memory":
            prefix = key_split(key)
            self.prefixes[prefix] = self.prefixes.get(prefix, 0) + 1


def counts(dask_worker) -> dict[str, int]:
    plugin = dask_worker.plugins.get(TaskCounter.name)
    return dict(plugin.prefixes) if plugin is not None else {}
