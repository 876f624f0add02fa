"""Input corruption of the pre-training tasks (docs/TRAINER.md "Pre-training tasks"): token,
whole-word, frame and span masks and ITM pairs, each drawn from an explicit
``torch.Generator`` and never empty where the example has a candidate.
"""
from __future__ import annotations

import math

import torch

IGNORE = -100  # label of positions without a target (torch's cross_entropy ignore_index)


def _at_least_one(chosen: torch.Tensor, candidates: torch.Tensor, gen) -> torch.Tensor:
    """Where an example has candidates but nothing chosen, choose one candidate at random."""
    empty = candidates.any(1) & ~chosen.any(1)
    if empty.any():
        scores = torch.where(candidates, torch.rand(candidates.shape, generator=gen),
                             torch.full(candidates.shape, -1.0))
        pick = scores.argmax(1)
        rows = empty.nonzero().squeeze(1)
        chosen = chosen.clone()
        chosen[rows, pick[rows]] = True
    return chosen


def choose_tokens(candidates: torch.Tensor, prob: float, gen: torch.Generator,
                  groups: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T) bool: each candidate chosen with ``prob``; with ``groups``, each whole word
    (all its pieces) is chosen or not together. At least one per example with candidates."""
    if groups is None:
        chosen = candidates & (torch.rand(candidates.shape, generator=gen) < prob)
        return _at_least_one(chosen, candidates, gen)
    n_words = int(groups.max().item()) + 1 if groups.numel() else 0
    if n_words <= 0:
        return torch.zeros_like(candidates)
    word_pick = torch.rand((groups.shape[0], n_words), generator=gen) < prob
    valid = candidates & (groups >= 0)
    chosen = valid & torch.gather(word_pick, 1, groups.clamp(min=0))
    empty = valid.any(1) & ~chosen.any(1)
    if empty.any():  # choose one whole word of each such example
        first = _at_least_one(torch.zeros_like(valid), valid, gen)
        word = torch.where(first, groups, torch.full_like(groups, -1)).max(1).values
        extra = valid & (groups == word[:, None]) & empty[:, None]
        chosen = chosen | extra
    return chosen


def corrupt_tokens(input_ids: torch.Tensor, chosen: torch.Tensor, mask_id: int,
                   v_range: tuple[int, int], gen: torch.Generator):
    """BERT's 80/10/10: chosen positions become [MASK] (80 %), a random id from ``v_range``
    (10 %) or stay (10 %). Returns (corrupted ids, labels: the original id at chosen positions,
    IGNORE elsewhere)."""
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE))
    roll = torch.rand(input_ids.shape, generator=gen)
    random_ids = torch.randint(v_range[0], v_range[1], input_ids.shape, generator=gen)
    out = torch.where(chosen & (roll < 0.8), torch.full_like(input_ids, mask_id), input_ids)
    out = torch.where(chosen & (roll >= 0.8) & (roll < 0.9), random_ids, out)
    return out, labels


def choose_frames(face_lens: torch.Tensor, n_frames: int, prob: float,
                  gen: torch.Generator) -> torch.Tensor:
    """(B, F) bool: each real frame chosen with ``prob``, at least one per example with
    frames."""
    real = torch.arange(n_frames)[None, :] < face_lens[:, None]
    chosen = real & (torch.rand(real.shape, generator=gen) < prob)
    return _at_least_one(chosen, real, gen)


def choose_spans(face_lens: torch.Tensor, n_frames: int, ratio: float, span: int,
                 gen: torch.Generator) -> torch.Tensor:
    """(B, F) bool: about ``ratio`` of each example's frames masked as spans of ``span``
    consecutive frames. An example of ``n`` frames has ``n // span`` span slots (one when
    ``n < span``) and ``k = max(1, ceil(ratio * n / span))`` of them (at most all) are masked;
    slots never overlap, so exactly ``k * span`` frames are masked, plus the ``n % span``
    trailing frames when the last slot is picked (all ``n`` frames when ``n < span``)."""
    out = torch.zeros((len(face_lens), n_frames), dtype=torch.bool)
    for b, n in enumerate(face_lens.tolist()):
        if n <= 0:
            continue
        slots = max(1, n // span)  # non-overlapping span slots
        k = min(slots, max(1, math.ceil(ratio * n / span)))
        picked = torch.randperm(slots, generator=gen)[:k]
        # slot s covers [s * span, (s + 1) * span), the last slot also the remainder
        for s in picked.tolist():
            start = s * span
            stop = n if s == slots - 1 else start + span
            out[b, start:stop] = True
    return out


def itm_pairs(batch_size: int, gen: torch.Generator, prob: float = 0.5):
    """Image-text matching: for each example, whether its faces are swapped for another
    example's (label 0) or kept (label 1), and the index whose faces it receives. At least one
    of each label when the batch holds two or more examples."""
    if batch_size < 2:
        return torch.ones(batch_size, dtype=torch.long), torch.arange(batch_size)
    swap = torch.rand(batch_size, generator=gen) < prob
    if swap.all() or not swap.any():
        swap[torch.randint(batch_size, (1,), generator=gen)] = ~swap[0]
    shift = torch.randint(1, batch_size, (1,), generator=gen).item()
    other = (torch.arange(batch_size) + shift) % batch_size  # never itself
    source = torch.where(swap, other, torch.arange(batch_size))
    return (~swap).long(), source
