"""Length-bucketing batch sampler with two named limits (``batch_size``, ``max_tokens``),
distributed and resumable: :class:`BucketBatchSampler`. The epoch plan, the rank shares and the
resume position: docs/TRAINER.md "Batches by length".
"""
from __future__ import annotations

import hashlib
import math

import numpy as np

from memodb.errors import MemoError

STATE_VERSION = 1


class BatchLimitError(MemoError):
    """The batch limits are invalid, or an example cannot fit in any batch under them."""


class SamplerStateError(MemoError):
    """A saved sampler state does not belong to this data or these settings."""


class BucketBatchSampler:
    """See docs/TRAINER.md "Batches by length". ``lengths``: tokens per example (numpy int array);
    ``ids``: optional sequence / callable naming example ``i`` in error messages."""

    def __init__(self, lengths, *, batch_size: int | None, max_tokens: int | None,
                 seed: int = 0, epoch: int = 0, rank: int = 0, world_size: int = 1,
                 drop_last: bool = False, shuffle: bool = True, pool_size: int = 8192,
                 start: int = 0, ids=None):
        lengths = np.asarray(lengths)
        if lengths.ndim != 1 or not np.issubdtype(lengths.dtype, np.integer):
            raise BatchLimitError(f"lengths must be a 1-D integer array, not {lengths.dtype} "
                                  f"{lengths.shape}")
        if len(lengths) == 0:
            raise BatchLimitError("no example to batch (the dataset is empty)")
        self.lengths = lengths.astype(np.int64)
        self._name = ids
        for what, v in (("batch_size", batch_size), ("max_tokens", max_tokens)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer))):
                raise BatchLimitError(f"{what} must be an integer or None, not {v!r}")
        if batch_size is None and max_tokens is None:
            raise BatchLimitError("give batch_size (examples per batch), max_tokens (token "
                                  "budget per batch) or both")
        if batch_size is not None and batch_size < 1:
            raise BatchLimitError(f"batch_size (examples per batch) is {batch_size}; it must "
                                  "be at least 1")
        if max_tokens is not None and max_tokens < 1:
            raise BatchLimitError(f"max_tokens (token budget per batch) is {max_tokens}; it "
                                  "must be at least 1")
        if (self.lengths < 1).any():
            i = int(np.flatnonzero(self.lengths < 1)[0])
            raise BatchLimitError(f"example {self._describe(i)} has length "
                                  f"{self.lengths[i]}; every example has at least 1 token")
        self.batch_size = None if batch_size is None else int(batch_size)
        self.max_tokens = None if max_tokens is None else int(max_tokens)
        if self.max_tokens is not None:
            over = np.flatnonzero(self.lengths > self.max_tokens)
            if len(over):
                i = int(over[np.argmax(self.lengths[over])])
                raise BatchLimitError(
                    f"max_tokens (token budget per batch) {self.max_tokens} is smaller than "
                    f"example {self._describe(i)} alone ({self.lengths[i]} tokens = text + "
                    f"[CLS]/[SEP] + faces + speech); {len(over)} example(s) exceed it. Raise "
                    "max_tokens (it is a token budget, not an example count: see batch_size) "
                    "or drop long examples (max_text_len, max_faces)")
        if int(world_size) < 1 or not 0 <= int(rank) < int(world_size):
            raise BatchLimitError(f"rank {rank} / world_size {world_size}: need "
                                  "0 <= rank < world_size")
        if int(pool_size) < 1:
            raise BatchLimitError(f"pool_size {pool_size} must be at least 1")
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.drop_last, self.shuffle, self.pool_size = bool(drop_last), bool(shuffle), \
            int(pool_size)
        self._fingerprint = hashlib.sha256(self.lengths.tobytes()).hexdigest()[:16]
        self._plan_cache = None
        self.epoch = int(epoch)
        self.start = 0
        self._yielded = 0
        self._rank_batches()  # fail at start-up when no batch can be formed for this many ranks
        self.start = self._check_start(int(start))

    # -- naming -------------------------------------------------------------------------------

    def _describe(self, i: int) -> str:
        name = None
        if callable(self._name):
            name = self._name(i)
        elif self._name is not None:
            name = self._name[i]
        return f"{i} ({name})" if name is not None else str(i)

    # -- the plan -----------------------------------------------------------------------------

    def _global_plan(self):
        """(order, batch offsets, batch sequence) of the current epoch, cached."""
        if self._plan_cache is not None and self._plan_cache[0] == self.epoch:
            return self._plan_cache[1]
        n = len(self.lengths)
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        cap_rows = self.batch_size or n
        starts = []
        for p in range(0, n, self.pool_size):
            pool = order[p:p + self.pool_size]
            # longest first (stable): each batch's first example is its longest
            pool = pool[np.argsort(-self.lengths[pool], kind="stable")]
            order[p:p + len(pool)] = pool
            lens = self.lengths[pool]
            s = 0
            while s < len(pool):
                rows = min(cap_rows, len(pool) - s)
                if self.max_tokens is not None:
                    rows = min(rows, self.max_tokens // int(lens[s]))
                starts.append(p + s)  # rows >= 1: lens[s] <= max_tokens was checked
                s += rows
        offsets = np.append(np.asarray(starts, dtype=np.int64), n)
        seq = rng.permutation(len(starts)) if self.shuffle else np.arange(len(starts))
        plan = (order, offsets, seq)
        self._plan_cache = (self.epoch, plan)
        return plan

    def _rank_batches(self) -> np.ndarray:
        """Global batch numbers of this rank for the current epoch (padded or dropped)."""
        _, _, seq = self._global_plan()
        W = self.world_size
        total = len(seq)
        if self.drop_last:
            per_rank = total // W
            if per_rank == 0:
                raise BatchLimitError(
                    f"epoch {self.epoch} forms only {total} batch(es) for {W} ranks and "
                    "drop_last is set, so no rank would get a batch; use drop_last=False, "
                    "fewer ranks or smaller batches")
            seq = seq[:per_rank * W]
        else:
            per_rank = math.ceil(total / W)
            seq = np.resize(seq, per_rank * W)  # repeats the first batches as padding
        return seq[self.rank::W]

    @property
    def num_batches(self) -> int:
        """Batches this rank gets in the current epoch (the same on every rank)."""
        return len(self._rank_batches())

    def __len__(self) -> int:
        """Batches the next iteration yields (from ``start``)."""
        return self.num_batches - self.start

    def batches(self) -> list[list[int]]:
        """This rank's remaining batches of the current epoch."""
        return list(self)

    def __iter__(self):
        order, offsets, _ = self._global_plan()
        mine = self._rank_batches()
        self._yielded = self.start
        for b in mine[self.start:]:
            self._yielded += 1
            yield order[offsets[b]:offsets[b + 1]].tolist()

    # -- epochs and resume ----------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` from its first batch."""
        self.epoch = int(epoch)
        self.start = 0
        self._yielded = 0

    def _check_start(self, start: int) -> int:
        total = self.num_batches
        if not 0 <= start <= total:
            raise SamplerStateError(f"position {start} is outside epoch {self.epoch}'s "
                                    f"{total} batches for this rank")
        return start

    def _settings(self) -> dict:
        return {"batch_size": self.batch_size, "max_tokens": self.max_tokens,
                "drop_last": self.drop_last, "shuffle": self.shuffle,
                "pool_size": self.pool_size, "examples": len(self.lengths),
                "lengths_sha256": self._fingerprint}

    def state_dict(self, position: int | None = None) -> dict:
        """Seed, epoch and ``position`` (batches this rank consumed this epoch; default: how
        many the latest iterator yielded, which runs ahead of the loop under a DataLoader with
        workers: pass the loop's own count there)."""
        position = self._yielded if position is None else int(position)
        return {"version": STATE_VERSION, "seed": self.seed, "epoch": self.epoch,
                "position": position, "world_size": self.world_size,
                "global_position": position * self.world_size, **self._settings()}

    def load_state_dict(self, state: dict) -> None:
        """Continue where ``state`` left off (checks that it belongs to this data)."""
        if state.get("version") != STATE_VERSION:
            raise SamplerStateError(f"sampler state version {state.get('version')!r}; this "
                                    f"memo reads {STATE_VERSION}")
        mine = {"seed": self.seed, **self._settings()}
        diff = [f"{k} {state.get(k)!r} -> {v!r}" for k, v in mine.items() if state.get(k) != v]
        if diff:
            raise SamplerStateError("the saved sampler state belongs to other data or settings "
                                    f"({'; '.join(diff)}); the order cannot be resumed exactly")
        glob = int(state["global_position"])
        if glob % self.world_size:
            raise SamplerStateError(
                f"the run stopped after {glob} batches over {state['world_size']} ranks, which "
                f"{self.world_size} ranks cannot continue exactly; resume with "
                f"{state['world_size']} ranks (or a divisor of {glob})")
        self.set_epoch(int(state["epoch"]))
        self.start = self._check_start(glob // self.world_size)
        self._yielded = self.start
