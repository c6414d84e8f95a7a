"""Run a benchmark's full path in a fresh process and report its time and peak memory.

A spawned process starts from a new interpreter, so its peak resident set
(``VmHWM``, which, unlike ``ru_maxrss``, is not inherited across exec) is
the full path's own.
"""

from __future__ import annotations

import multiprocessing as mp
import resource
from pathlib import Path


def peak_rss_mb() -> float:
    """Peak resident set of this process in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(fn, args, q):
    secs = fn(*args)
    # worker processes the full path started (and has joined): the largest one's peak
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    q.put((secs, peak_rss_mb(), workers))


def run_isolated(fn, *args, with_workers: bool = False):
    """(seconds returned by ``fn(*args)``, peak RSS MiB) from a spawned process.

    ``with_workers``: also the peak RSS of the largest worker process the full
    path started, (seconds, own peak, worker peak).
    """
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(fn, args, q))
    p.start()
    res = q.get()
    p.join()
    return res if with_workers else res[:2]
