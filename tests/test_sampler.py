"""BucketBatchSampler: two named limits, never an empty or over-limit batch, disjoint equal
rank shares, deterministic and resumable order (property tests over random configs)."""
from __future__ import annotations

import collections

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memodb.errors import MemoError
from memotrain.sampler import BatchLimitError, BucketBatchSampler, SamplerStateError


@st.composite
def configs(draw):
    n = draw(st.integers(1, 120))
    lengths = np.array(draw(st.lists(st.integers(1, 60), min_size=n, max_size=n)))
    batch_size = draw(st.one_of(st.none(), st.integers(1, 40)))
    longest = int(lengths.max())
    max_tokens = draw(st.one_of(st.none(), st.integers(longest, longest * 12)))
    if batch_size is None and max_tokens is None:
        batch_size = draw(st.integers(1, 40))
    return {"lengths": lengths, "batch_size": batch_size, "max_tokens": max_tokens,
                "seed": draw(st.integers(0, 2**31)), "epoch": draw(st.integers(0, 5)),
                "world_size": draw(st.integers(1, 4)), "drop_last": draw(st.booleans()),
                "pool_size": draw(st.sampled_from([1, 7, 32, 8192])),
                "shuffle": draw(st.booleans())}


def rank_samplers(cfg, **extra):
    kw = {k: v for k, v in cfg.items() if k != "lengths"}
    return [BucketBatchSampler(cfg["lengths"], rank=r, **kw, **extra)
            for r in range(cfg["world_size"])]


def epoch_of(cfg):
    try:
        return [s.batches() for s in rank_samplers(cfg)]
    except BatchLimitError as exc:  # only: fewer batches than ranks with drop_last
        assert cfg["drop_last"] and "drop_last" in str(exc)
        return None


@settings(max_examples=300, deadline=None)
@given(configs())
def test_batches_respect_both_limits_and_cover_the_epoch(cfg):
    shares = epoch_of(cfg)
    if shares is None:
        return
    lengths, bs, mt, W = cfg["lengths"], cfg["batch_size"], cfg["max_tokens"], \
        cfg["world_size"]
    assert len({len(s) for s in shares}) == 1, "ranks got different batch counts"
    assert len(shares[0]) >= 1
    for share in shares:
        for batch in share:
            assert batch, "empty batch"
            assert bs is None or len(batch) <= bs
            assert mt is None or len(batch) * int(lengths[batch].max()) <= mt
    seen = collections.Counter(i for share in shares for b in share for i in b)
    n = len(lengths)
    total_batches = sum(len(s) for s in shares)
    one_rank = rank_samplers({**cfg, "world_size": 1, "drop_last": False})[0]
    global_batches = one_rank.num_batches
    if W == 1 or global_batches % W == 0:  # no padding, no dropping: each example once
        assert sorted(seen) == list(range(n)) and set(seen.values()) == {1}
    elif cfg["drop_last"]:  # disjoint, the remainder batches left out
        assert set(seen.values()) == {1} and total_batches == global_batches // W * W
    else:  # padded by repeating batches: all examples, a few twice
        assert sorted(seen) == list(range(n)) and total_batches == -(-global_batches // W) * W
    if not (not cfg["drop_last"] and global_batches % W):
        ranks_of = [{i for b in share for i in b} for share in shares]
        for a in range(W):
            for b in range(a + 1, W):
                assert not ranks_of[a] & ranks_of[b], "ranks overlap"


@settings(max_examples=150, deadline=None)
@given(configs(), st.integers(0, 1000))
def test_same_seed_and_epoch_same_order_and_resume_gives_the_tail(cfg, k):
    shares = epoch_of(cfg)
    if shares is None:
        return
    assert epoch_of(cfg) == shares
    for r, sampler in enumerate(rank_samplers(cfg)):
        full = shares[r]
        pos = k % (len(full) + 1)
        resumed = BucketBatchSampler(cfg["lengths"], rank=r, start=pos,
                                     **{x: v for x, v in cfg.items() if x != "lengths"})
        assert len(resumed) == len(full) - pos
        assert resumed.batches() == full[pos:]
        # through state_dict / load_state_dict, from a sampler at another epoch
        other = BucketBatchSampler(cfg["lengths"], rank=r,
                                   **{x: v for x, v in cfg.items()
                                      if x not in ("lengths", "epoch")}, epoch=99)
        other.load_state_dict(sampler.state_dict(pos))
        assert other.epoch == cfg["epoch"] and other.batches() == full[pos:]


def test_state_dict_counts_what_the_iterator_yielded_and_set_epoch_restarts():
    lengths = np.random.default_rng(0).integers(1, 50, size=500)
    s = BucketBatchSampler(lengths, batch_size=16, max_tokens=400, seed=3, epoch=2)
    full = s.batches()
    it = iter(s)
    head = [next(it) for _ in range(5)]
    state = s.state_dict()
    assert state["position"] == 5 and state["epoch"] == 2 and head == full[:5]
    s2 = BucketBatchSampler(lengths, batch_size=16, max_tokens=400, seed=3)
    s2.load_state_dict(state)
    assert s2.batches() == full[5:]
    s2.set_epoch(2)
    assert s2.batches() == full
    s2.set_epoch(3)
    assert s2.batches() != full
    assert sorted(i for b in s2.batches() for i in b) == list(range(500))


def test_resume_with_another_world_size_continues_the_global_order():
    lengths = np.random.default_rng(1).integers(1, 30, size=400)
    kw = {"batch_size": 8, "max_tokens": 200, "seed": 5, "epoch": 1}
    single = BucketBatchSampler(lengths, **kw).batches()
    four = [BucketBatchSampler(lengths, rank=r, world_size=4, **kw) for r in range(4)]
    state = four[0].state_dict(3)  # 3 steps x 4 ranks = 12 global batches
    two = [BucketBatchSampler(lengths, rank=r, world_size=2, **kw) for r in range(2)]
    for s in two:
        s.load_state_dict(state)
    assert two[0].batches()[:3] == single[12:18:2] and two[1].batches()[:3] == single[13:19:2]
    three = BucketBatchSampler(lengths, world_size=3, **kw)
    with pytest.raises(SamplerStateError, match="20 batches over 4 ranks"):
        three.load_state_dict(four[0].state_dict(5))


def test_state_of_other_data_or_settings_is_refused():
    lengths = np.arange(1, 101)
    state = BucketBatchSampler(lengths, batch_size=4, max_tokens=None).state_dict(2)
    with pytest.raises(SamplerStateError, match="batch_size 4 -> 5"):
        BucketBatchSampler(lengths, batch_size=5, max_tokens=None).load_state_dict(state)
    with pytest.raises(SamplerStateError, match="lengths_sha256"):
        BucketBatchSampler(lengths[::-1].copy(), batch_size=4,
                           max_tokens=None).load_state_dict(state)


def test_buckets_group_similar_lengths():
    lengths = np.random.default_rng(2).integers(1, 200, size=4000)
    s = BucketBatchSampler(lengths, batch_size=64, max_tokens=None, pool_size=4000)
    spread = np.mean([np.ptp(lengths[b]) for b in s.batches()])
    assert spread < 10  # unbucketed random batches of 64 would spread over ~190


def test_token_budget_fills_batches_with_short_examples():
    lengths = np.array([100] * 10 + [10] * 100)
    s = BucketBatchSampler(lengths, batch_size=1000, max_tokens=1000, shuffle=False)
    sizes = sorted(len(b) for b in s.batches())
    assert sizes == [10, 100]


def test_epochs_differ_and_unshuffled_order_is_fixed():
    lengths = np.random.default_rng(3).integers(1, 40, size=300)
    a = BucketBatchSampler(lengths, batch_size=10, max_tokens=None, epoch=0).batches()
    b = BucketBatchSampler(lengths, batch_size=10, max_tokens=None, epoch=1).batches()
    assert a != b
    u0 = BucketBatchSampler(lengths, batch_size=10, max_tokens=None, shuffle=False)
    u1 = BucketBatchSampler(lengths, batch_size=10, max_tokens=None, shuffle=False, epoch=7)
    assert u0.batches() == u1.batches()


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(1, 80), min_size=1, max_size=50), st.integers(1, 79))
def test_an_example_over_the_token_budget_is_a_clear_error(lens, budget):
    lengths = np.array(lens)
    if lengths.max() <= budget:
        BucketBatchSampler(lengths, batch_size=4, max_tokens=budget)
        return
    worst = int(np.argmax(lengths))
    with pytest.raises(BatchLimitError) as err:
        BucketBatchSampler(lengths, batch_size=4, max_tokens=budget,
                           ids=lambda i: f"seg_{i}")
    msg = str(err.value)
    assert "max_tokens" in msg and f"example {worst} (seg_{worst})" in msg
    assert f"{lengths[worst]} tokens" in msg
    assert isinstance(err.value, MemoError)


@pytest.mark.parametrize("kw, words", [
    ({"batch_size": 0, "max_tokens": 100}, "batch_size"),
    ({"batch_size": -3, "max_tokens": None}, "batch_size"),
    ({"batch_size": 4, "max_tokens": 0}, "max_tokens"),
    ({"batch_size": None, "max_tokens": None}, "batch_size"),
    ({"batch_size": 4.0, "max_tokens": None}, "batch_size must be an integer"),
    ({"batch_size": 4, "max_tokens": 100, "rank": 2, "world_size": 2}, "rank"),
])
def test_invalid_limits_name_the_limit(kw, words):
    with pytest.raises(BatchLimitError, match=words):
        BucketBatchSampler(np.array([3, 4, 5]), **kw)


def test_budget_read_as_example_count_fails_at_start_up():
    """A token budget swapped with the example count (the original's empty-batch bug)."""
    lengths = np.full(50, 60)
    with pytest.raises(BatchLimitError, match="not an example count"):
        BucketBatchSampler(lengths, batch_size=10240, max_tokens=32)


def test_drop_last_with_fewer_batches_than_ranks_is_an_error():
    with pytest.raises(BatchLimitError, match="drop_last"):
        BucketBatchSampler(np.array([5, 5, 5]), batch_size=2, max_tokens=None,
                           world_size=4, drop_last=True)
    padded = [BucketBatchSampler(np.array([5, 5, 5]), batch_size=2, max_tokens=None,
                                 world_size=4, rank=r).batches() for r in range(4)]
    assert all(len(p) == 1 and p[0] for p in padded)


def test_empty_or_bad_lengths_are_refused():
    with pytest.raises(BatchLimitError, match="empty"):
        BucketBatchSampler(np.array([], dtype=np.int64), batch_size=2, max_tokens=None)
    with pytest.raises(BatchLimitError, match="integer"):
        BucketBatchSampler(np.array([1.5, 2.0]), batch_size=2, max_tokens=None)
    with pytest.raises(BatchLimitError, match="at least 1 token"):
        BucketBatchSampler(np.array([3, 0]), batch_size=2, max_tokens=None)
