"""Masking invariants of the pre-training tasks (memotrain/masking.py)."""
from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from memotrain.masking import (IGNORE, choose_frames, choose_spans, choose_tokens, corrupt_tokens,
                               itm_pairs)

MASK, V_RANGE = 103, (999, 30522)


def text_batch(lens, width=None):
    """input_ids [CLS] t.. [SEP] pad, candidates = the real text tokens."""
    width = width or max(lens) + 2
    ids = torch.zeros((len(lens), width), dtype=torch.long)
    cand = torch.zeros((len(lens), width), dtype=torch.bool)
    for b, n in enumerate(lens):
        ids[b, 0], ids[b, n + 1] = 101, 102
        ids[b, 1:n + 1] = torch.arange(2000, 2000 + n)
        cand[b, 1:n + 1] = True
    return ids, cand


@settings(max_examples=60, deadline=None)
@given(lens=st.lists(st.integers(0, 30), min_size=1, max_size=8), seed=st.integers(0, 10**6),
       prob=st.sampled_from([0.0, 0.15, 0.5, 1.0]))
def test_every_example_with_text_has_a_target_and_only_text_is_touched(lens, seed, prob):
    ids, cand = text_batch(lens)
    gen = torch.Generator().manual_seed(seed)
    chosen = choose_tokens(cand, prob, gen)
    assert not (chosen & ~cand).any()
    for b, n in enumerate(lens):
        assert chosen[b].any() == (n > 0)
    out, labels = corrupt_tokens(ids, chosen, MASK, V_RANGE, gen)
    assert torch.equal(labels != IGNORE, chosen)
    assert torch.equal(labels[chosen], ids[chosen])
    assert torch.equal(out[~chosen], ids[~chosen])  # [CLS], [SEP], pad and others unchanged


def test_80_10_10_proportions():
    ids, cand = text_batch([200] * 50)
    gen = torch.Generator().manual_seed(0)
    chosen = cand.clone()
    out, _ = corrupt_tokens(ids, chosen, MASK, V_RANGE, gen)
    n = chosen.sum().item()
    masked = (out[chosen] == MASK).sum().item() / n
    kept = (out[chosen] == ids[chosen]).sum().item() / n
    assert abs(masked - 0.8) < 0.02 and abs(kept - 0.1) < 0.02
    rnd = out[chosen & (out != MASK) & (out != ids)]
    assert ((rnd >= V_RANGE[0]) & (rnd < V_RANGE[1])).all()


@settings(max_examples=60, deadline=None)
@given(words=st.lists(st.lists(st.integers(1, 4), min_size=0, max_size=8), min_size=1,
                      max_size=6), seed=st.integers(0, 10**6))
def test_whole_words_are_masked_together(words, seed):
    lens = [sum(w) for w in words]
    ids, cand = text_batch(lens)
    groups = torch.full(ids.shape, -1, dtype=torch.long)
    for b, pieces in enumerate(words):
        pos = 1
        for k, n in enumerate(pieces):
            groups[b, pos:pos + n] = k
            pos += n
    chosen = choose_tokens(cand, 0.15, torch.Generator().manual_seed(seed), groups)
    for b, pieces in enumerate(words):
        assert chosen[b].any() == bool(pieces)
        for k in range(len(pieces)):
            sel = chosen[b][groups[b] == k]
            assert sel.all() or not sel.any()  # all pieces of a word, or none


@settings(max_examples=60, deadline=None)
@given(lens=st.lists(st.integers(0, 40), min_size=1, max_size=8), seed=st.integers(0, 10**6))
def test_frames_masked_only_where_real_and_never_none(lens, seed):
    face_lens = torch.tensor(lens)
    chosen = choose_frames(face_lens, max(lens), 0.15, torch.Generator().manual_seed(seed))
    for b, n in enumerate(lens):
        assert not chosen[b, n:].any()
        assert chosen[b].any() == (n > 0)


@settings(max_examples=60, deadline=None)
@given(lens=st.lists(st.integers(0, 64), min_size=1, max_size=8), seed=st.integers(0, 10**6))
def test_spans_do_not_overlap_into_fewer_frames(lens, seed):
    face_lens = torch.tensor(lens)
    chosen = choose_spans(face_lens, max(lens), 0.2, 3, torch.Generator().manual_seed(seed))
    for b, n in enumerate(lens):
        assert not chosen[b, n:].any()
        if n == 0:
            continue
        got = int(chosen[b].sum())
        k = min(max(1, n // 3), max(1, math.ceil(0.2 * n / 3)))
        assert got == n if n < 3 else got in (3 * k, 3 * k + n % 3)
        runs = torch.diff(torch.cat([torch.zeros(1), chosen[b].float(), torch.zeros(1)]))
        assert all(length >= min(n, 3) for length in
                   ((runs == -1).nonzero().squeeze(1) - (runs == 1).nonzero().squeeze(1)).tolist())


def test_itm_has_both_labels_and_never_pairs_an_example_with_itself():
    for seed in range(50):
        labels, source = itm_pairs(6, torch.Generator().manual_seed(seed))
        assert set(labels.tolist()) == {0, 1}
        swapped = labels == 0
        assert (source[swapped] != torch.arange(6)[swapped]).all()
        assert (source[~swapped] == torch.arange(6)[~swapped]).all()
