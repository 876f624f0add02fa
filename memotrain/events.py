"""TensorBoard event files next to ``metrics.jsonl``: every number of a metrics record becomes
a scalar whose tag is its path in the record (``loss``, ``tasks/mlm``, ``val/itm/acc``), at the
record's ``step``. Written only where ``tensorboard`` is installed (the ``report`` extra);
elsewhere one notice and ``metrics.jsonl`` alone.

How the recipes use it and what a resumed run writes: docs/TRAINER.md "TensorBoard".
"""
from __future__ import annotations

import logging
import time
import weakref
from pathlib import Path

log = logging.getLogger(__name__)
_told = False  # the missing-tensorboard notice, once per process


def scalars(rec: dict, prefix: str = "") -> dict[str, float]:
    """The numbers of a metrics record by tag (nested keys joined with ``/``); the top-level
    ``step`` is the x axis, not a scalar; lists (per-class scores, a confusion matrix) and
    None are left out; booleans count 0 / 1."""
    out = {}
    for k, v in rec.items():
        if not prefix and k == "step":
            continue
        tag = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(scalars(v, tag + "/"))
        elif isinstance(v, (bool, int, float)):
            out[tag] = float(v)
    return out


class EventLog:
    """One run's event files in ``log_dir`` (``enabled`` False: writes nothing, e.g. ranks
    other than 0). ``purge_step``: events of earlier writers in the folder at this step or
    later are dropped by TensorBoard's readers (TensorBoard's restart rule) — the first step a
    (resumed) run writes, so the curves continue without duplicated steps. Each record is
    flushed at once: a killed run loses no logged step; the writer closes with :meth:`close`
    or, on an error that ends the run, when the EventLog is dropped."""

    def __init__(self, log_dir, enabled: bool = True, purge_step: int | None = None):
        self.writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            global _told
            if not _told:
                log.warning("tensorboard is not installed: metrics.jsonl only, no event "
                            "files (pip install 'memo-emotion[report]' to get them)")
                _told = True
            return
        if purge_step is not None:
            _sort_last(Path(log_dir))
        self.writer = SummaryWriter(str(Path(log_dir)), purge_step=purge_step)
        self._close = weakref.finalize(self, self.writer.close)

    def add(self, rec: dict, step: int | None = None) -> None:
        """The scalars of ``rec`` at ``step`` (default: ``rec["step"]``)."""
        if self.writer is None:
            return
        step = rec["step"] if step is None else step
        for tag, value in scalars(rec).items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self._close()
            self.writer = None


def _sort_last(log_dir: Path) -> None:
    """TensorBoard reads a folder's event files in name order, and a name starts with the
    second its file was created (``events.out.tfevents.<seconds>.<host>.<pid>.<n>``): where a
    file of the folder was created in this very second, wait for the next one, so the new file
    sorts after it and its restart mark comes after the events it purges."""
    now = int(time.time())
    for f in log_dir.glob("events.out.tfevents.*"):
        try:
            created = int(f.name.split(".")[3])
        except (IndexError, ValueError):
            continue
        if created >= now:
            time.sleep(max(0.0, created + 1 - time.time()))
            return
