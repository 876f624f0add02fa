"""The pre-training tasks on the tiny config with hand-built batches (the data.py contract)."""
import math

import pytest
import torch
import torch.nn.functional as F

from memodb.errors import MemoError
from memotrain import masking
from memotrain.config import preset
from memotrain.model import MemoBert
from memotrain.tasks import TASKS, Pretrainer, TaskError, TaskOutput

SPEECH = 16
MASK_ID, V_RANGE = 103, (999, 30522)


def tiny_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return MemoBert(preset("tiny", speech_dim=SPEECH, **overrides))


def pretrainer(tasks=TASKS, seed=0, **overrides):
    return Pretrainer(tiny_model(seed, **overrides), list(tasks), MASK_ID, V_RANGE)


def make_batch(seed=0, text=(9, 3, 6, 4), faces=(2, 6, 0, 4), speech=(5, 1, 3, 0),
               emo=True, soft=True, with_speech=True):
    """A collated batch: text lengths count [CLS]/[SEP]; word pieces grouped in words of 2."""
    g = torch.Generator().manual_seed(seed)
    B, T, Fw, S = len(text), max(text), max(faces), max(speech)
    ids = torch.zeros(B, T, dtype=torch.long)
    word_ids = torch.full((B, T), -1)
    emo_ids = torch.zeros(B, T, dtype=torch.long)
    for b, n in enumerate(text):
        ids[b, 0], ids[b, n - 1] = 101, 102
        ids[b, 1:n - 1] = torch.randint(999, 30522, (n - 2,), generator=g)
        word_ids[b, 1:n - 1] = torch.arange(n - 2) // 2
        if b % 2 == 0 and n > 3:  # emotion words in even examples only
            emo_ids[b, 1] = 3
    fl = torch.tensor(faces)
    real = torch.arange(Fw)[None] < fl[:, None]
    batch = {"input_ids": ids, "text_lens": torch.tensor(text), "word_ids": word_ids,
             "faces": torch.randn(B, Fw, 342, generator=g) * real[..., None],
             "face_lens": fl, "targets": None, "ids": [f"x{b}" for b in range(B)]}
    if emo:
        batch["emo_type_ids"] = emo_ids
    if soft:
        soft_labels = torch.softmax(torch.randn(B, Fw, 8, generator=g), -1)
        batch["soft_labels"] = soft_labels * real[..., None]
    if with_speech:
        sl = torch.tensor(speech)
        sreal = torch.arange(S)[None] < sl[:, None]
        batch["speech"] = torch.randn(B, S, SPEECH, generator=g) * sreal[..., None]
        batch["speech_lens"] = sl
    return batch


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("task", TASKS)
def test_every_task_gives_a_finite_loss_and_gradients(task):
    pre = pretrainer().train()
    out = pre(task, make_batch(), gen(1))
    assert isinstance(out, TaskOutput)
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    assert out.n_targets > 0
    assert all(isinstance(v, float) and math.isfinite(v) for v in out.metrics.values())
    out.loss.backward()
    grads = [p.grad for p in pre.model.encoder.parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_metrics_names():
    pre = pretrainer().eval()
    b = make_batch()
    assert "acc" in pre("mlm", b, gen()).metrics
    assert "acc" in pre("itm", b, gen()).metrics
    assert "mse" in pre("mrfr", b, gen()).metrics
    assert "mse" in pre("msrfr", b, gen()).metrics
    assert "kl" in pre("mrckl", b, gen()).metrics


def test_regression_heads_are_tied_to_the_projections():
    pre = pretrainer()
    proj = pre.model.face_embeddings.projection
    assert pre.mrfr_head.weight is proj.weight
    assert pre.mrfr_head.weight.data_ptr() == proj.weight.data_ptr()
    assert pre.msrfr_head.weight is pre.model.speech_embeddings.projection.weight
    assert pre.mrfr_head.bias.shape == (342,) and pre.mrfr_head.bias is not proj.bias
    x = torch.randn(5, 32)
    expect = pre.mrfr_head.transform(x) @ proj.weight + pre.mrfr_head.bias
    torch.testing.assert_close(pre.mrfr_head(x), expect)
    # one tensor: counted once among the parameters
    ptrs = [p.data_ptr() for p in pre.parameters()]
    assert len(ptrs) == len(set(ptrs))


def test_only_the_heads_of_the_tasks_exist():
    pre = pretrainer(["mlm", "mspanrckl"])
    assert pre.itm_head is None and pre.mrfr_head is None and pre.msrfr_head is None
    assert pre.mrckl_head is not None
    with pytest.raises(TaskError, match="not given"):
        pre("itm", make_batch(), gen())


@pytest.mark.parametrize("task", TASKS)
def test_same_seed_same_loss(task):
    pre = pretrainer().eval()
    b = make_batch()
    a, c = pre(task, b, gen(7)), pre(task, b, gen(7))
    assert a.n_targets == c.n_targets
    torch.testing.assert_close(a.loss, c.loss)


def test_the_batch_is_not_modified():
    pre = pretrainer().eval()
    b = make_batch()
    copy = {k: v.clone() for k, v in b.items() if isinstance(v, torch.Tensor)}
    for task in TASKS:
        pre(task, b, gen(3))
    for k, v in copy.items():
        assert torch.equal(b[k], v), k


def test_mlm_loss_equals_cross_entropy_by_hand():
    pre = pretrainer(["mlm"]).eval()
    b = make_batch()
    out = pre("mlm", b, gen(5))
    # redo the corruption with the same generator state
    g = gen(5)
    T = b["input_ids"].shape[1]
    pos = torch.arange(T)[None]
    cands = (pos >= 1) & (pos < b["text_lens"][:, None] - 1)
    chosen = masking.choose_tokens(cands, 0.15, g)
    corrupted, labels = masking.corrupt_tokens(b["input_ids"], chosen, MASK_ID, V_RANGE, g)
    assert chosen.any(1).all()  # every example has text here, so each has a target
    with torch.no_grad():
        m = pre.model(corrupted, b["text_lens"], b["faces"], b["face_lens"],
                      speech=b["speech"], speech_lens=b["speech_lens"])
        logits = pre.model.mlm(m.layout.text(m.hidden))  # the whole sequence
    expect = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                             ignore_index=masking.IGNORE)
    assert out.n_targets == int(chosen.sum())
    torch.testing.assert_close(out.loss, expect, rtol=1e-5, atol=1e-5)


def test_mlm_never_masks_cls_sep_or_padding():
    pre = pretrainer(["mlm"]).eval()
    b = make_batch(text=(3, 3, 3), faces=(1, 0, 2), speech=(1, 2, 0))
    # one real token each: it must be the target
    assert pre("mlm", b, gen()).n_targets == 3


def test_wwm_masks_whole_words():
    b = make_batch(text=(12, 12), faces=(1, 2), speech=(2, 1))
    T = b["input_ids"].shape[1]
    pos = torch.arange(T)[None]
    cands = (pos >= 1) & (pos < b["text_lens"][:, None] - 1)
    for s in range(20):
        chosen = masking.choose_tokens(cands, 0.15, gen(s), groups=b["word_ids"])
        for w in range(5):
            in_word = chosen[:, 1 + 2 * w: 3 + 2 * w]
            assert (in_word.all(1) | ~in_word.any(1)).all()
    out = pretrainer(["mlm_wwm"]).eval()("mlm_wwm", b, gen(0))
    assert out.n_targets % 2 == 0


def test_melm_masks_emotion_words_and_falls_back_per_example():
    pre = pretrainer(["melm"]).eval()
    b = make_batch(text=(9, 6, 6, 4))  # emotion word at position 1 of examples 0 and 2
    out = pre("melm", b, gen())
    assert out.metrics["fallback"] == 0.5  # examples 1 and 3 have none: plain mlm
    assert out.n_targets >= 4
    del b["emo_type_ids"]  # no emotion word anywhere: every example falls back to mlm
    out = pre("melm", b, gen())
    assert out.metrics["fallback"] == 1.0 and out.n_targets >= 4


def test_itm_labels_have_both_classes():
    pre = pretrainer(["itm"]).eval()
    for s in range(10):
        labels, source = masking.itm_pairs(4, gen(s))
        assert set(labels.tolist()) == {0, 1}
        assert (source[labels == 0] != torch.arange(4)[labels == 0]).all()
        out = pre("itm", make_batch(), gen(s))
        assert out.n_targets == 4 and 0 < out.metrics["pos"] < 1


def test_face_tasks_use_the_original_features_at_masked_frames():
    pre = pretrainer(["mrfr"]).eval()
    b = make_batch()
    out = pre("mrfr", b, gen(2))
    g = gen(2)
    mask = masking.choose_frames(b["face_lens"], b["faces"].shape[1], 0.15, g)
    assert out.n_targets == int(mask.sum())
    with torch.no_grad():
        m = pre.model(b["input_ids"], b["text_lens"], b["faces"], b["face_lens"], mask,
                      b["speech"], b["speech_lens"])
        pred = pre.mrfr_head(m.layout.faces(m.hidden)[mask])
    torch.testing.assert_close(out.loss, F.mse_loss(pred, b["faces"][mask]))


def test_mrckl_is_kl_of_soft_labels_batchmean():
    pre = pretrainer(["mspanrckl"]).eval()
    b = make_batch()
    out = pre("mspanrckl", b, gen(4))
    mask = masking.choose_spans(b["face_lens"], b["faces"].shape[1], 0.2, 3, gen(4))
    with torch.no_grad():
        m = pre.model(b["input_ids"], b["text_lens"], b["faces"], b["face_lens"], mask,
                      b["speech"], b["speech_lens"])
        pred = pre.mrckl_head(m.layout.faces(m.hidden)[mask])
    target = b["soft_labels"][mask]
    expect = (target * (target.log() - F.log_softmax(pred, -1))).sum() / len(target)
    assert out.n_targets == len(target) and out.loss >= 0
    torch.testing.assert_close(out.loss, expect)


@pytest.mark.parametrize("task", ["mrfr", "mrckl", "mspanrfr", "mspanrckl"])
def test_face_task_without_faces_is_a_clear_error(task):
    pre = pretrainer().eval()
    b = make_batch(faces=(0, 0, 0, 0))
    b["faces"] = torch.zeros(4, 0, 342)
    b["soft_labels"] = torch.zeros(4, 0, 8)
    with pytest.raises(TaskError, match=f"{task}.*0 faces"):
        pre(task, b, gen())
    b = make_batch(with_speech=False)
    for k in ("faces", "face_lens", "soft_labels"):
        del b[k]
    with pytest.raises(TaskError, match=f"{task}.*no faces"):
        pre(task, b, gen())


def test_other_empty_target_sets_are_clear_errors():
    pre = pretrainer().eval()
    b = make_batch(text=(2, 2, 2, 2))
    for task in ("mlm", "mlm_wwm", "melm"):
        with pytest.raises(TaskError, match=f"{task}.*empty"):
            pre(task, b, gen())
    with pytest.raises(TaskError, match="msrfr.*0 speech"):
        pre("msrfr", make_batch(speech=(0, 0, 0, 0)), gen())
    b = make_batch()
    del b["soft_labels"]
    with pytest.raises(TaskError, match="mrckl.*soft_labels"):
        pre("mrckl", b, gen())


def test_unknown_task_and_missing_modality_are_errors():
    with pytest.raises(TaskError, match="unknown.*'mlmx'.*mlm_wwm") as e:
        pretrainer(["mlm", "mlmx"])
    assert isinstance(e.value, MemoError)
    pre = pretrainer(["mlm"])
    with pytest.raises(TaskError, match="unknown.*'mrm'"):
        pre("mrm", make_batch(), gen())
    with pytest.raises(TaskError, match="'vnce' was not given to this Pretrainer"):
        pre("vnce", make_batch(), gen())
    with pytest.raises(TaskError, match="no faces"):
        Pretrainer(MemoBert(preset("tiny", face_dim=0)), ["mrfr"], MASK_ID, V_RANGE)
    with pytest.raises(TaskError, match="no speech"):
        Pretrainer(MemoBert(preset("tiny")), ["msrfr"], MASK_ID, V_RANGE)
    with pytest.raises(TaskError, match="no pre-training task"):
        Pretrainer(MemoBert(preset("tiny")), [], MASK_ID, V_RANGE)


def test_itm_skips_examples_without_any_frame_and_fails_when_none_has_one():
    pre = pretrainer(["itm"]).eval()
    b = make_batch(faces=(2, 0, 0, 4), speech=(1, 0, 0, 0))
    out = pre("itm", b, gen(0))
    assert 2 <= out.n_targets <= 4 and torch.isfinite(out.loss)
    b = make_batch(faces=(0, 0, 0, 0), speech=(0, 0, 0, 0))
    b["faces"], b["soft_labels"] = torch.zeros(4, 0, 342), torch.zeros(4, 0, 8)
    b["speech"] = torch.zeros(4, 0, SPEECH)
    with pytest.raises(TaskError, match="itm.*no example"):
        pre("itm", b, gen())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("task", TASKS)
def test_tasks_on_cuda_match_cpu(task):
    pre = pretrainer().eval()
    b = make_batch()
    cpu = pre(task, b, gen(9))
    dev = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in b.items()}
    cuda = pre.cuda()(task, dev, gen(9))
    assert cuda.n_targets == cpu.n_targets
    torch.testing.assert_close(cuda.loss.cpu(), cpu.loss, rtol=1e-3, atol=1e-3)
