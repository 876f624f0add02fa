"""Ordered, memory-bounded parallel map over worker processes.

Results come back in task order (so output is deterministic whatever the number of workers)
and at most ``window`` tasks are in flight, so a slow consumer never lets results pile up.
"""
from __future__ import annotations

import multiprocessing as mp
import os
from collections import deque


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def ordered_map(func, tasks, workers: int | None = None, window: int | None = None):
    """Yield ``func(task)`` for each task, in order, using ``workers`` processes.

    With ``workers == 1`` everything runs in this process (no fork).
    """
    workers = default_workers() if not workers or workers < 1 else workers
    if workers == 1:
        for t in tasks:
            yield func(t)
        return
    window = window or workers * 3
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
    with ctx.Pool(workers) as pool:
        pending: deque = deque()
        for t in tasks:
            pending.append(pool.apply_async(func, (t,)))
            if len(pending) >= window:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def chunked(items, size: int):
    """Split a list into consecutive chunks of at most ``size`` (fixed: output never depends
    on the number of workers)."""
    return [items[i:i + size] for i in range(0, len(items), size)]
