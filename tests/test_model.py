"""The cross-modal BERT on a tiny config: layout, masking, length checks, tied MLM head."""
import json

import pytest
import torch

from memodb.errors import MemoError
from memotrain.config import ConfigError, ModelConfig, load_config, preset
from memotrain.model import InputError, MemoBert

SPEECH = 16


def tiny_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return MemoBert(preset("tiny", **overrides)).eval()


def batch(seed=0, B=4, Lt=9, F=6, S=5, text=(9, 3, 6, 4), faces=(2, 6, 0, 4),
          speech=(5, 1, 3, 0)):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(999, 30522, (B, Lt), generator=g)
    ids[:, 0] = 101
    for b, n in enumerate(text):
        ids[b, n - 1] = 102
        ids[b, n:] = 0
    return {"input_ids": ids, "text_lens": torch.tensor(text),
            "faces": torch.randn(B, F, 342, generator=g), "face_lens": torch.tensor(faces),
            "speech": torch.randn(B, S, SPEECH, generator=g), "speech_lens": list(speech)}


def alone(x, b):
    """Example ``b`` of a batch, unpadded, as a batch of one."""
    tl, fl, sl = int(x["text_lens"][b]), int(x["face_lens"][b]), x["speech_lens"][b]
    return {"input_ids": x["input_ids"][b:b + 1, :tl], "faces": x["faces"][b:b + 1, :fl],
            "speech": x["speech"][b:b + 1, :sl]}


@torch.no_grad()
def test_batched_slices_equal_each_example_alone():
    model = tiny_model(speech_dim=SPEECH)
    x = batch()
    out = model(**x)
    assert out.hidden.shape == (4, 9 + 2 + 5, 32)  # the longest example: 9 + 2 + 5
    assert out.attention_mask.sum(1).tolist() == [16, 10, 9, 8]
    per = out.layout.split(out.hidden)
    padded = {m: out.layout.select(out.hidden, m) for m in ("text", "faces", "speech")}
    for b in range(4):
        one = model(**alone(x, b))
        ref = one.layout.split(one.hidden)[0]
        for m in ("text", "faces", "speech"):
            n = (x["text_lens"], x["face_lens"], x["speech_lens"])[
                ("text", "faces", "speech").index(m)][b]
            assert per[b][m].shape == (n, 32) == ref[m].shape
            torch.testing.assert_close(per[b][m], ref[m], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(padded[m][b, :n], ref[m], atol=1e-5, rtol=1e-5)
            assert not padded[m][b, n:].any()  # padding of the per-modality view is zero
        torch.testing.assert_close(out.pooled[b], one.pooled[0], atol=1e-5, rtol=1e-5)


def test_compact_order_text_faces_speech_then_pad():
    model = tiny_model(speech_dim=SPEECH)
    x = batch()
    lay = model.layout(**x)
    Lt, F = 9, 6  # padded widths: faces start at Lt, speech at Lt + F in the concatenation
    # example 1: text 3, faces 6, speech 1 -> compact 0..2 text, 3..8 faces, 9 speech, pad
    assert lay.index[1, :10].tolist() == [0, 1, 2] + [Lt + j for j in range(6)] + [Lt + F]
    assert lay.attention_mask[1].tolist() == [True] * 10 + [False] * 6
    # example 2: no faces -> speech right after the text
    assert lay.index[2, 6:9].tolist() == [Lt + F + j for j in range(3)]
    assert lay.offsets("faces").tolist() == [9, 3, 6, 4]
    assert lay.offsets("speech").tolist() == [11, 9, 6, 8]


@torch.no_grad()
def test_embeddings_land_at_the_right_positions():
    model = tiny_model(speech_dim=SPEECH)
    x = batch()
    out = model(**x, output_hidden_states=True)
    assert len(out.hidden_states) == 3  # embeddings + 2 layers
    emb = out.hidden_states[0]
    text = model.embeddings(x["input_ids"])
    type1 = model.embeddings.token_type_embeddings.weight[1]
    faces = model.face_embeddings(x["faces"], None, type1)
    speech = model.speech_embeddings(x["speech"], None, type1)
    for b in range(4):
        tl, fl, sl = int(x["text_lens"][b]), int(x["face_lens"][b]), x["speech_lens"][b]
        torch.testing.assert_close(emb[b, :tl], text[b, :tl])
        torch.testing.assert_close(emb[b, tl:tl + fl], faces[b, :fl])
        torch.testing.assert_close(emb[b, tl + fl:tl + fl + sl], speech[b, :sl])


@torch.no_grad()
def test_face_mask_vector_only_at_masked_frames():
    model = tiny_model()
    fe = model.face_embeddings
    type1 = model.embeddings.token_type_embeddings.weight[1]
    feats = torch.randn(2, 5, 342)
    mask = torch.tensor([[False, True, False, False, True], [False] * 5])
    masked = fe(feats, mask, type1)
    plain = fe(feats, None, type1)
    torch.testing.assert_close(masked[~mask], plain[~mask])
    assert not torch.allclose(masked[mask], plain[mask])
    # a masked frame is the mask vector, whatever its features were (they are zeroed)
    replaced = feats.clone()
    replaced[mask] = fe.mask_embedding
    torch.testing.assert_close(masked, fe(replaced, None, type1))
    other = feats.clone()
    other[mask] = 123.0
    torch.testing.assert_close(masked, fe(other, mask, type1))
    # through the model: masking frame 1 of example 0 changes its outputs
    ids = torch.tensor([[101, 2023, 102], [101, 2023, 102]])
    a = model(ids, faces=feats, face_mask=mask).hidden
    b = model(ids, faces=feats).hidden
    assert not torch.allclose(a[0], b[0]) and torch.allclose(a[1], b[1])


def test_too_long_inputs_raise_a_clear_error():
    model = tiny_model(max_text_positions=8, max_face_positions=4)
    ids = torch.full((2, 10), 2023)
    with pytest.raises(InputError, match=r"example 1 .* text 10 > max_text_positions 8") as e:
        model(ids, text_lens=[5, 10])
    assert isinstance(e.value, MemoError) and "[CLS] and [SEP]" in str(e.value)
    model(ids, text_lens=[5, 8])  # padding beyond the table is fine; only real tokens count
    with pytest.raises(InputError, match=r"faces 5 > max_face_positions 4"):
        model(ids[:, :3], faces=torch.zeros(2, 6, 342), face_lens=[5, 1])
    with pytest.raises(InputError, match="outside the vocabulary"):
        model(torch.tensor([[101, 30522, 102]]))
    with pytest.raises(InputError, match=r"must be \(batch 1, frames, 342\)"):
        model(ids[:1, :3], faces=torch.zeros(1, 2, 300))
    with pytest.raises(InputError, match="no speech modality"):
        model(ids[:1, :3], speech=torch.zeros(1, 2, 16))
    with pytest.raises(InputError, match=r"faces length 7 is outside \[0, 6\]"):
        model(ids[:, :3], faces=torch.zeros(2, 6, 342), face_lens=[7, 1])
    with pytest.raises(InputError, match=r"text length 0 is outside \[1, 10\]"):
        model(ids, text_lens=[0, 1])


def test_mlm_head_is_tied_to_the_word_embeddings():
    model = tiny_model()
    assert model.mlm.decoder.weight is model.embeddings.word_embeddings.weight
    out = model(torch.tensor([[101, 2023, 2003, 102]]))
    logits = model.mlm(model.layout(torch.tensor([[101, 2023, 2003, 102]])).text(out.hidden))
    assert logits.shape == (1, 4, 30522)
    n_unique = len({p.data_ptr() for p in model.parameters()})
    assert n_unique == len(list(model.parameters()))  # parameters() lists the tied one once


def test_speech_only_model_and_own_speech_type():
    with_faces = tiny_model(speech_dim=SPEECH)
    assert with_faces.speech_embeddings.type_embedding is not None
    text_speech = tiny_model(face_dim=0, speech_dim=SPEECH)
    assert text_speech.face_embeddings is None
    assert text_speech.speech_embeddings.type_embedding is None  # type 1 of the shared table
    out = text_speech(torch.tensor([[101, 102]]), speech=torch.randn(1, 3, SPEECH))
    assert out.hidden.shape == (1, 5, 32)
    with pytest.raises(InputError, match="no faces modality"):
        text_speech(torch.tensor([[101, 102]]), faces=torch.randn(1, 3, 342))


def test_training_step_reaches_every_modality():
    model = tiny_model(speech_dim=SPEECH).train()
    x = batch()
    mask = torch.zeros(4, 6, dtype=torch.bool)
    mask[0, 1] = True
    out = model(**x, face_mask=mask)
    loss = out.pooled.sum() + model.mlm(out.layout.text(out.hidden)[:, 1]).logsumexp(-1).sum()
    loss.backward()
    for name in ("embeddings.word_embeddings.weight", "face_embeddings.projection.weight",
                 "face_embeddings.mask_embedding", "speech_embeddings.type_embedding",
                 "encoder.layer.1.output.dense.weight", "mlm.bias"):
        assert model.get_parameter(name).grad.abs().sum() > 0, name


def test_config_dicts_presets_and_errors(tmp_path):
    cfg = preset("tiny", speech_dim=SPEECH)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert preset("base").hidden == 768 and preset("small").layers == 6
    with pytest.raises(ConfigError, match=r"unknown model config key\(s\): hiden"):
        ModelConfig.from_dict({"hiden": 32})
    with pytest.raises(ConfigError, match="not a multiple of heads"):
        ModelConfig(hidden=30, heads=4)
    with pytest.raises(ConfigError, match="unknown model preset 'huge'"):
        preset("huge")
    assert isinstance(ConfigError("x"), MemoError)
    hf = {"vocab_size": 100, "hidden_size": 64, "num_hidden_layers": 3,
          "num_attention_heads": 4, "intermediate_size": 128, "max_position_embeddings": 40,
          "hidden_act": "gelu", "model_type": "bert", "architectures": ["BertModel"]}
    c = ModelConfig.from_hf_config(hf, face_dim=300)
    assert (c.vocab_size, c.hidden, c.layers, c.heads, c.intermediate, c.max_text_positions,
            c.face_dim) == (100, 64, 3, 4, 128, 40, 300)
    (tmp_path / "hf.json").write_text(json.dumps(hf))
    (tmp_path / "memo.json").write_text(json.dumps(cfg.to_dict()))
    assert load_config(tmp_path / "hf.json").hidden == 64
    assert load_config(str(tmp_path / "memo.json")) == cfg
    with pytest.raises(ConfigError, match="neither a preset"):
        load_config(tmp_path / "nope.json")
    with pytest.raises(ConfigError, match="model_type 'roberta'"):
        ModelConfig.from_hf_config({**hf, "model_type": "roberta"})
