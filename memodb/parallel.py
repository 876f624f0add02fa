"""Ordered, memory-bounded parallel map over worker processes, and work run in a child
process whose death cannot take the caller down.

:func:`ordered_map`: results come back in task order (so output is deterministic whatever the
number of workers) and at most ``window`` tasks are in flight, so a slow consumer never lets
results pile up; a worker that dies (a signal, e.g. an assertion inside a C library) raises
:class:`WorkerDied` instead of leaving the caller waiting forever.
:func:`run_isolated`: one call in a forked child; its death or exception becomes a
:class:`WorkerDied` (``memo db check`` reads each database this way: a damaged LMDB page can
abort the process that walks it).
"""
from __future__ import annotations

import faulthandler
import multiprocessing as mp
import os
import signal
import traceback
from collections import deque

from .errors import MemoError

POLL_S = 0.2  # how often a wait for a result looks for dead workers


class WorkerDied(MemoError):
    """A worker or child process died, or the work it ran raised."""


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
    ctx = _context()
    started = ctx.Value("i", 0)  # worker processes started: more than ``workers``: one died
    with ctx.Pool(workers, initializer=_count_start, initargs=(started,)) as pool:
        pending: deque = deque()
        for t in tasks:
            pending.append(pool.apply_async(func, (t,)))
            if len(pending) >= window:
                yield _result(pending.popleft(), started, workers)
        while pending:
            yield _result(pending.popleft(), started, workers)


def _context():
    return mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()


def _count_start(started) -> None:
    with started.get_lock():
        started.value += 1


def _result(res, started, workers: int):
    """The task's result. The pool replaces a worker only when one dies (workers are never
    retired), and a dead worker's task never completes: a replacement means it died."""
    while True:
        try:
            return res.get(POLL_S)
        except mp.TimeoutError:
            if started.value > workers:
                raise WorkerDied("a worker process died (killed by a signal, e.g. a crash "
                                 "inside a C library on damaged data)") from None


def run_isolated(func, *args):
    """``func(*args)`` run in a forked child process; its result comes back pickled. The
    child's death (a signal, an exit) or an exception raised in it is a :class:`WorkerDied`
    naming what happened; nothing the child does can take this process down."""
    ctx = _context()
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_isolated_child, args=(send, func, args))
    proc.start()
    send.close()
    try:
        status, value = recv.recv()
    except EOFError:
        proc.join()
        raise WorkerDied(f"the process died ({exit_reason(proc.exitcode)})") from None
    finally:
        recv.close()
    proc.join()
    if status != "ok":
        raise WorkerDied(value)
    return value


def _isolated_child(send, func, args) -> None:
    # a death here is reported by the parent; no interpreter dump on stderr (its pool
    # workers, forked from here, inherit this)
    faulthandler.disable()
    try:
        out = ("ok", func(*args))
    except BaseException as exc:  # noqa: BLE001 - everything goes back to the parent
        last = traceback.extract_tb(exc.__traceback__)[-1:]
        where = f" at {os.path.basename(last[0].filename)}:{last[0].lineno}" if last else ""
        out = ("error", f"{type(exc).__name__}: {exc}{where}")
    try:
        send.send(out)
    except Exception as exc:  # noqa: BLE001 - a result that cannot be pickled
        send.send(("error", f"the result could not be sent back ({type(exc).__name__}: {exc})"))
    send.close()


def exit_reason(code) -> str:
    """A child's exit code in words: "killed by SIGABRT", "exit code 3"."""
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def chunked(items, size: int):
    """Split a list into consecutive chunks of at most ``size`` (fixed: output never depends
    on the number of workers)."""
    return [items[i:i + size] for i in range(0, len(items), size)]
