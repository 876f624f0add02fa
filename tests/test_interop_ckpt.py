"""Original MEmoBERT / UNITER checkpoints both ways: convert-ckpt reproduces the original
model's outputs (a reference forward written here from the original's equations, not memo's
modules), export-ckpt gives back the same tensors, refusals, emotion types and empty faces."""
import json
import math

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from memo.cli import main
from memotrain.checkpoint import CheckpointError, load_checkpoint, load_model
from memotrain.classifier import load_classifier
from memotrain.config import ConfigError, ModelConfig
from memotrain.interop import convert_checkpoint, export_original
from memotrain.tasks import Pretrainer

pytestmark = pytest.mark.usefixtures("one_thread")

ATOL = 1e-5  # fp32, eval mode
EPS = 1e-12  # the original's LayerNorm epsilon
# tiny sizes: vocab, hidden, layers, attention heads, intermediate, position tables, face
# width, speech width, emotion types, soft labels, fine-tuned classes
V, H, L, NH, I, P, D, S, K, C, N = 50, 32, 2, 4, 64, 40, 12, 10, 5, 8, 4

# The original checkpoint's keys and shapes (a bare state dict), in the size names of SIZES.
# "LN" expands to .weight and .bias (H,) ("LN2": (2H,)); ("Lin", o, i) to .weight (o, i) and
# .bias (o,). Groups: the model, the emotion-type table (emotion-type MELM), speech
# (three-modality), pre-training heads, fine-tuned heads (emocls, vqa).
SIZES = {"V": V, "H": H, "I": I, "P": P, "D": D, "S": S, "K": K, "C": C, "N": N, "2H": 2 * H,
         "1": 1, "2": 2}
MODEL = {
    "uniter.embeddings.word_embeddings.weight": ("V", "H"),
    "uniter.embeddings.position_embeddings.weight": ("P", "H"),
    "uniter.embeddings.token_type_embeddings.weight": ("2", "H"),
    "uniter.embeddings.LayerNorm": "LN",
    "uniter.img_embeddings.img_linear": ("Lin", "H", "D"),
    "uniter.img_embeddings.img_layer_norm": "LN",
    "uniter.img_embeddings.position_embeddings.weight": ("P", "H"),
    "uniter.img_embeddings.LayerNorm": "LN",
    "uniter.img_embeddings.mask_embedding.weight": ("2", "D"),
    **{f"uniter.encoder.layer.{n}.{k}": v for n in range(L) for k, v in {
        "attention.self.query": ("Lin", "H", "H"), "attention.self.key": ("Lin", "H", "H"),
        "attention.self.value": ("Lin", "H", "H"), "attention.output.dense": ("Lin", "H", "H"),
        "attention.output.LayerNorm": "LN", "intermediate.dense": ("Lin", "I", "H"),
        "output.dense": ("Lin", "H", "I"), "output.LayerNorm": "LN"}.items()},
    "uniter.pooler.dense": ("Lin", "H", "H"),
}
EMO = {"uniter.embeddings.emo_type_embeddings.weight": ("K", "H")}
SPEECH = {
    "uniter.speech_embeddings.speech_linear": ("Lin", "H", "S"),
    "uniter.speech_embeddings.speech_layer_norm": "LN",
    "uniter.speech_embeddings.position_embeddings.weight": ("P", "H"),
    "uniter.speech_embeddings.LayerNorm": "LN",
    "uniter.speech_embeddings.mask_embedding.weight": ("2", "S"),
    "uniter.speech_embeddings.token_type_embeddings.weight": ("1", "H"),
}
PRETRAIN = {  # cls.predictions.decoder.weight and feat_regress.weight: tied (added below)
    "cls.predictions.transform.dense": ("Lin", "H", "H"),
    "cls.predictions.transform.LayerNorm": "LN",
    "cls.predictions.bias": ("V",),
    "itm_output": ("Lin", "2", "H"),
    "feat_regress.net.0": ("Lin", "H", "H"), "feat_regress.net.2": "LN",
    "feat_regress.bias": ("D",),
    "region_classifier.net.0": ("Lin", "H", "H"), "region_classifier.net.2": "LN",
    "region_classifier.net.3": ("Lin", "C", "H"),
}
SPEECH_HEAD = {"speech_feat_regress.net.0": ("Lin", "H", "H"),
               "speech_feat_regress.net.2": "LN", "speech_feat_regress.bias": ("S",)}
EMOCLS = {"output.1": ("Lin", "N", "H")}  # Dropout, Linear
VQA = {"output.0": ("Lin", "2H", "H"), "output.2": "LN2", "output.3": ("Lin", "N", "2H")}


def original(*groups, seed=0, **sizes) -> dict:
    """Random weights for the keys of ``groups`` (LayerNorm weights around 1); ``sizes``
    change SIZES."""
    g = torch.Generator().manual_seed(seed)
    size = {**SIZES, **sizes}

    def rnd(*names, mean=0.0):
        return mean + 0.2 * torch.randn(*(size[n] for n in names), generator=g)

    sd = {}
    for group in groups:
        for key, spec in group.items():
            if spec in ("LN", "LN2"):
                w = "H" if spec == "LN" else "2H"
                sd[key + ".weight"], sd[key + ".bias"] = rnd(w, mean=1.0), rnd(w)
            elif spec[0] == "Lin":
                sd[key + ".weight"], sd[key + ".bias"] = rnd(spec[1], spec[2]), rnd(spec[1])
            else:
                sd[key] = rnd(*spec)
    if "cls.predictions.bias" in sd:  # tied, as the original saves them
        sd["cls.predictions.decoder.weight"] = sd["uniter.embeddings.word_embeddings.weight"]
        sd["feat_regress.weight"] = sd["uniter.img_embeddings.img_linear.weight"]
        if "speech_feat_regress.bias" in sd:
            sd["speech_feat_regress.weight"] = sd["uniter.speech_embeddings.speech_linear.weight"]
    return {k: v.clone() for k, v in sd.items()}


def uniter_json(**changes) -> dict:
    return {"vocab_size": V, "hidden_size": H, "num_hidden_layers": L,
            "num_attention_heads": NH, "intermediate_size": I, "hidden_act": "gelu",
            "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
            "max_position_embeddings": P, "type_vocab_size": 2, "initializer_range": 0.02,
            **changes}


def save_original(folder, sd, config=True, name="model_step_100.pt"):
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(sd, folder / name)
    if config:
        (folder / "config.json").write_text(json.dumps(uniter_json() if config is True
                                                       else config))
    return folder / name


# ----------------------------------------------------------------------------- the reference

def ln(sd, x, p, eps=EPS):
    return F.layer_norm(x, x.shape[-1:], sd[p + ".weight"], sd[p + ".bias"], eps)


def lin(sd, x, p):
    return x @ sd[p + ".weight"].t() + sd[p + ".bias"]


def gelu(x):  # erf GELU, as the original writes it
    return x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def frames(sd, feats, mask, p, lin_name, norm_name, type_vec):
    """The original's image / speech embedding: mask vector (row 0 zeroed), Linear, LayerNorm,
    + position (from 0) + type, LayerNorm."""
    m = sd[p + "mask_embedding.weight"].clone()
    m[0] = 0
    x = feats.masked_fill(mask[:, None], 0) + m[mask.long()]
    x = ln(sd, lin(sd, x, p + lin_name), p + norm_name)
    x = x + sd[p + "position_embeddings.weight"][: len(feats)] + type_vec
    return ln(sd, x, p + "LayerNorm")


def reference(sd, ids, faces=None, fmask=None, speech=None, smask=None, emo=None, heads=NH):
    """One example, unpadded (the original's batch gives the same at real positions: its
    additive -10000 mask on padding): embeddings, last layer and pooled [CLS]."""
    e = "uniter.embeddings."
    x = (sd[e + "word_embeddings.weight"][ids] + sd[e + "position_embeddings.weight"][
        : len(ids)] + sd[e + "token_type_embeddings.weight"][0])
    if emo is not None:
        x = x + sd[e + "emo_type_embeddings.weight"][emo]
    parts = [ln(sd, x, e + "LayerNorm")]
    if faces is not None:
        if len(faces) == 0:  # the original's input for a segment without a face
            faces, fmask = torch.zeros(1, faces.shape[1]), torch.zeros(1, dtype=torch.bool)
        parts.append(frames(sd, faces, fmask, "uniter.img_embeddings.", "img_linear",
                            "img_layer_norm", sd[e + "token_type_embeddings.weight"][1]))
    if speech is not None:
        p = "uniter.speech_embeddings."
        parts.append(frames(sd, speech, smask, p, "speech_linear", "speech_layer_norm",
                            sd[p + "token_type_embeddings.weight"][0]))
    emb = x = torch.cat(parts)
    T, dh = len(x), H // heads
    for n in range(L):
        p = f"uniter.encoder.layer.{n}."
        q, k, v = (lin(sd, x, p + "attention.self." + w).view(T, heads, dh).transpose(0, 1)
                   for w in ("query", "key", "value"))
        probs = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(dh), dim=-1)
        ctx = (probs @ v).transpose(0, 1).reshape(T, H)
        a = ln(sd, lin(sd, ctx, p + "attention.output.dense") + x, p + "attention.output.LayerNorm")
        x = ln(sd, lin(sd, gelu(lin(sd, a, p + "intermediate.dense")), p + "output.dense") + a,
               p + "output.LayerNorm")
    return emb, x, torch.tanh(lin(sd, x[0], "uniter.pooler.dense"))


def ref_regress(sd, h, p, weight):
    return ln(sd, gelu(lin(sd, h, p + "net.0")), p + "net.2") @ sd[weight] + sd[p + "bias"]


# ----------------------------------------------------------------------------- inputs

def batch(speech=False, empty=True, seed=1):
    """Three examples of different lengths, padded; the second has no face when ``empty``;
    frame masks on some faces and speech frames."""
    g = torch.Generator().manual_seed(seed)
    tl, fl, sl = [7, 4, 5], [3, 0 if empty else 2, 5], [4, 2, 3]
    ids = torch.zeros(3, max(tl), dtype=torch.long)
    for b, n in enumerate(tl):
        ids[b, :n] = torch.randint(1, V, (n,), generator=g)
    faces = torch.zeros(3, max(fl), D)
    fmask = torch.zeros(3, max(fl), dtype=torch.bool)
    for b, n in enumerate(fl):
        faces[b, :n] = torch.randn(n, D, generator=g)
    fmask[0, 1] = fmask[2, 4] = True
    out = {"input_ids": ids, "text_lens": torch.tensor(tl), "faces": faces,
           "face_lens": torch.tensor(fl), "face_mask": fmask}
    if speech:
        sp = torch.zeros(3, max(sl), S)
        for b, n in enumerate(sl):
            sp[b, :n] = torch.randn(n, S, generator=g)
        smask = torch.zeros(3, max(sl), dtype=torch.bool)
        smask[1, 0] = True
        out.update(speech=sp, speech_lens=torch.tensor(sl), speech_mask=smask)
    return out


def example(bt, b):
    tl, fl = int(bt["text_lens"][b]), int(bt["face_lens"][b])
    kw = {"ids": bt["input_ids"][b, :tl], "faces": bt["faces"][b, :fl],
          "fmask": bt["face_mask"][b, :fl]}
    if "speech" in bt:
        sl = int(bt["speech_lens"][b])
        kw.update(speech=bt["speech"][b, :sl], smask=bt["speech_mask"][b, :sl])
    return kw


@torch.no_grad()
def run_memo(model, bt, **kw):
    model.eval()
    out = model(bt["input_ids"], bt["text_lens"], bt["faces"], bt["face_lens"],
                bt["face_mask"], bt.get("speech"), bt.get("speech_lens"), bt.get("speech_mask"),
                output_hidden_states=True, **kw)
    return out, out.layout.split(out.hidden_states[0]), out.layout.split(out.hidden)


def close(a, b):
    diff = (a - b).abs().max().item()
    assert diff <= ATOL, diff
    return True


def cat(d):
    return torch.cat([d["text"], d["faces"], d["speech"]])


# ----------------------------------------------------------------------------- import

@pytest.mark.parametrize("speech", [False, True], ids=["uniter", "uniter3m"])
def test_pretraining_checkpoint_reproduces_model_and_every_head(tmp_path, speech):
    groups = [MODEL, PRETRAIN] + ([SPEECH, SPEECH_HEAD] if speech else [])
    sd = original(*groups)
    conv = convert_checkpoint(save_original(tmp_path / "ckpt", sd), tmp_path / "memo.pt")
    assert conv.source["format"] == ("uniter3m" if speech else "uniter")
    assert conv.source["config"].endswith("config.json") and conv.unexpected == []
    assert conv.source["fresh"] == []
    ckpt = load_checkpoint(tmp_path / "memo.pt")
    cfg = ModelConfig.from_dict(ckpt["config"])
    assert (cfg.hidden, cfg.layers, cfg.heads, cfg.face_dim, cfg.speech_dim) == \
        (H, L, NH, D, S if speech else 0)
    assert cfg.empty_face_frame and cfg.max_face_positions == P
    model = load_model(ckpt)
    tasks = ["mlm", "itm", "mrfr", "mrckl"] + (["msrfr"] if speech else [])
    pre = Pretrainer(model, tasks, 1, (1, V))
    assert pre.load_heads(ckpt["heads"]) == ["itm_head", "mrfr_head", "mrckl_head"] + (
        ["msrfr_head"] if speech else [])
    bt = batch(speech)
    out, embs, lasts = run_memo(model, bt)
    with torch.no_grad():
        for b in range(3):
            kw = example(bt, b)
            emb, last, pooled = reference(sd, **kw)
            assert close(cat(embs[b]), emb) and close(cat(lasts[b]), last)
            assert close(out.pooled[b], pooled)
            text, face = lasts[b]["text"], lasts[b]["faces"]
            tl = len(text)
            mlm = ln(sd, gelu(lin(sd, last[:tl], "cls.predictions.transform.dense")),
                     "cls.predictions.transform.LayerNorm") @ sd[
                "cls.predictions.decoder.weight"].t() + sd["cls.predictions.bias"]
            assert close(model.mlm(text), mlm)
            assert close(pre.itm_head(out.pooled[b]), lin(sd, pooled, "itm_output"))
            fh = last[tl:tl + len(face)]
            assert close(pre.mrfr_head(face), ref_regress(sd, fh, "feat_regress.",
                                                          "feat_regress.weight"))
            mrc = lin(sd, ln(sd, gelu(lin(sd, fh, "region_classifier.net.0")),
                             "region_classifier.net.2"), "region_classifier.net.3")
            assert close(pre.mrckl_head(face), mrc)
            if speech:
                sh = last[tl + len(face):]
                assert close(pre.msrfr_head(lasts[b]["speech"]), ref_regress(
                    sd, sh, "speech_feat_regress.", "speech_feat_regress.weight"))
    assert len(lasts[1]["faces"]) == 1  # the empty segment's one zero frame


@pytest.mark.parametrize("head", ["emocls", "vqa"])
def test_finetuned_checkpoint_gives_a_classifier(tmp_path, head):
    sd = original(MODEL, EMOCLS if head == "emocls" else VQA, seed=2)
    conv = convert_checkpoint(save_original(tmp_path / "ckpt", sd), tmp_path / "best.pt",
                              labels=["neu", "hap", "sad", "ang"])
    assert conv.source["head"] == head and conv.source["fresh"] == ["mlm"]
    clf, info = load_classifier(tmp_path / "best.pt")
    assert info["labels"] == ["neu", "hap", "sad", "ang"] and clf.kind == head
    bt = batch()
    bt["face_mask"][:] = False  # a classifier masks no face
    clf.eval()
    with torch.no_grad():
        logits = clf(bt)
        for b in range(3):
            _, _, pooled = reference(sd, **example(bt, b))
            if head == "emocls":
                ref = lin(sd, pooled, "output.1")
            else:
                ref = lin(sd, ln(sd, gelu(lin(sd, pooled, "output.0")), "output.2"), "output.3")
            assert close(logits[b], ref)


def test_emotion_type_checkpoint_reproduces_melm_input(tmp_path):
    sd = original(MODEL, EMO, PRETRAIN, seed=3)
    conv = convert_checkpoint(save_original(tmp_path / "ckpt", sd), tmp_path / "memo.pt")
    assert conv.config.emo_type_size == K
    model = load_model(tmp_path / "memo.pt")
    bt = batch(seed=4)
    emo = torch.randint(0, K, bt["input_ids"].shape, generator=torch.Generator().manual_seed(0))
    _, embs, lasts = run_memo(model, bt, emo_type_ids=emo)
    with torch.no_grad():
        for b in range(3):
            kw = example(bt, b)
            emb, last, _ = reference(sd, emo=emo[b, :len(kw["ids"])], **kw)
            assert close(cat(embs[b]), emb) and close(cat(lasts[b]), last)
    # MELM hands the batch's emotion types to the model; the other tasks do not
    seen = []
    real_forward = model.forward
    model.forward = lambda *a, **k: seen.append(k.get("emo_type_ids")) or real_forward(*a, **k)
    pre = Pretrainer(model, ["melm", "mlm"], 1, (1, V))
    emo_batch = {**bt, "emo_type_ids": emo}
    del emo_batch["face_mask"]
    gen = torch.Generator().manual_seed(0)
    pre("melm", emo_batch, gen)
    pre("mlm", emo_batch, gen)
    assert seen[0] is emo and seen[1] is None
    too_many = {**emo_batch, "emo_type_ids": emo + K}
    with pytest.raises(Exception, match="outside the model's emotion types"):
        pre("melm", too_many, gen)


def test_empty_face_option_is_off_by_default(tmp_path):
    sd = original(MODEL, seed=5)
    convert_checkpoint(save_original(tmp_path / "ckpt", sd), tmp_path / "memo.pt")
    ckpt = load_checkpoint(tmp_path / "memo.pt")
    ckpt["config"]["empty_face_frame"] = False  # memo's own input: no face frame at all
    model = load_model(ckpt)
    bt = batch()
    _, _, lasts = run_memo(model, bt)
    assert len(lasts[1]["faces"]) == 0
    kw = example(bt, 1)
    kw.pop("faces"), kw.pop("fmask")
    with torch.no_grad():
        _, last, _ = reference(sd, **kw)
    assert close(cat(lasts[1]), last)
    assert ModelConfig().empty_face_frame is False
    # a batch whose faces are all missing (width 0) gets its zero frames too
    ckpt["config"]["empty_face_frame"] = True
    model = load_model(ckpt)
    none = {**bt, "faces": bt["faces"][:, :0], "face_lens": torch.zeros(3, dtype=torch.long),
            "face_mask": bt["face_mask"][:, :0]}
    _, _, lasts = run_memo(model, none)
    with torch.no_grad():
        _, last, _ = reference(sd, bt["input_ids"][0, :7], torch.zeros(0, D))
    assert close(cat(lasts[0]), last)


def test_config_from_shapes_json_and_override(tmp_path):
    sd = original(MODEL, PRETRAIN, seed=6)
    # no config beside: sizes from the shapes, heads hidden / 64 (BERT's convention)
    conv = convert_checkpoint(save_original(tmp_path / "a", sd, config=False),
                              tmp_path / "a.pt")
    assert conv.source["config"] == "shapes" and conv.config.heads == 1
    model = load_model(tmp_path / "a.pt")
    bt = batch()
    _, _, lasts = run_memo(model, bt)
    with torch.no_grad():
        _, last, _ = reference(sd, heads=1, **example(bt, 0))
    assert close(cat(lasts[0]), last)
    # --config overrides; the original run's log/model.json is found beside ckpt/
    (tmp_path / "b" / "log").mkdir(parents=True)
    (tmp_path / "b" / "log" / "model.json").write_text(json.dumps(uniter_json(
        num_attention_heads=2)))
    src = save_original(tmp_path / "b" / "ckpt", sd, config=False)
    assert convert_checkpoint(src, tmp_path / "b.pt").config.heads == 2
    (tmp_path / "c.json").write_text(json.dumps(uniter_json(num_attention_heads=8)))
    conv = convert_checkpoint(src, tmp_path / "c.pt", config=tmp_path / "c.json")
    assert conv.config.heads == 8 and conv.source["config"] == str(tmp_path / "c.json")
    # a config that disagrees with the weights is refused, naming the key
    (tmp_path / "d.json").write_text(json.dumps(uniter_json(hidden_size=64)))
    with pytest.raises(ConfigError, match="hidden_size 64, the weights have 32"):
        convert_checkpoint(src, tmp_path / "d.pt", config=tmp_path / "d.json")
    assert not (tmp_path / "d.pt").exists()


def test_incomplete_original_is_refused(tmp_path):
    sd = original(MODEL, PRETRAIN, seed=7)
    del sd["uniter.encoder.layer.1.output.dense.bias"]
    with pytest.raises(CheckpointError, match="uniter.encoder.layer.1.output.dense.bias"):
        convert_checkpoint(save_original(tmp_path / "a", sd), tmp_path / "a.pt")
    sd = original(MODEL, PRETRAIN, seed=7)
    del sd["region_classifier.net.3.bias"]
    with pytest.raises(CheckpointError, match="region_classifier.net.3.bias missing"):
        convert_checkpoint(save_original(tmp_path / "b", sd), tmp_path / "b.pt")
    assert not (tmp_path / "a.pt").exists() and not (tmp_path / "b.pt").exists()


# ----------------------------------------------------------------------------- export

@pytest.mark.parametrize("groups,to", [((MODEL, PRETRAIN), "uniter"),
                                       ((MODEL, EMO, SPEECH, PRETRAIN, SPEECH_HEAD), "uniter3m"),
                                       ((MODEL, VQA), "uniter")],
                         ids=["uniter", "uniter3m-emo", "finetuned"])
def test_round_trip_gives_back_every_tensor(tmp_path, groups, to):
    sd = original(*groups, seed=8)
    src = save_original(tmp_path / "ckpt", sd)
    convert_checkpoint(src, tmp_path / "memo.pt")
    r = export_original(tmp_path / "memo.pt", tmp_path / "back" / "model_step_100.pt", to=to)
    back = torch.load(r.out, weights_only=True)
    assert sorted(back) == sorted(sd)
    for k in sd:
        assert torch.equal(back[k], sd[k]), k
    conf = json.loads(r.config_file.read_text())
    assert {k: conf[k] for k in uniter_json()} == uniter_json()
    assert conf["img_dim"] == D and conf.get("speech_dim", 0) == (S if to == "uniter3m" else 0)
    # and the exported pair converts again (the .json beside it is found)
    again = convert_checkpoint(r.out, tmp_path / "again.pt")
    assert again.source["config"] == str(r.config_file.resolve())


def test_memo_model_exports_with_padded_position_tables(tmp_path):
    from memotrain.checkpoint import save_checkpoint
    from memotrain.model import MemoBert

    cfg = ModelConfig(vocab_size=V, hidden=H, layers=L, heads=NH, intermediate=I,
                      max_text_positions=P, face_dim=D, max_face_positions=16)
    save_checkpoint(tmp_path / "memo.pt", MemoBert(cfg))
    r = export_original(tmp_path / "memo.pt", tmp_path / "out.pt", to="uniter")
    back = torch.load(r.out, weights_only=True)
    assert back["uniter.img_embeddings.position_embeddings.weight"].shape == (P, H)
    assert back["uniter.img_embeddings.position_embeddings.weight"][16:].abs().sum() == 0
    assert torch.equal(back["cls.predictions.decoder.weight"],
                       back["uniter.embeddings.word_embeddings.weight"])
    assert any("padded" in n for n in r.notes) and any("empty_face_frame" in n for n in r.notes)
    assert r.heads == []  # a memo model without stored heads: only the model and the MLM head


@pytest.mark.parametrize("change,to,message", [
    ({"face_backbone": {"blocks": [1, 1, 1]}}, "uniter", "joint face CNN"),
    ({"hidden_act": "relu"}, "uniter", "erf GELU only"),
    ({"layer_norm_eps": 1e-5}, "uniter", "LayerNorms use 1e-12"),
    ({"speech_dim": S}, "uniter", "fix: --to uniter3m"),
    ({}, "uniter3m", "fix: --to uniter"),
    ({"face_dim": 0}, "uniter", "always has them"),
    ("prompt", "uniter", "prompt head"),
])
def test_export_refusals(tmp_path, change, to, message):
    cfg = ModelConfig(vocab_size=V, hidden=H, layers=L, heads=NH, intermediate=I,
                      max_text_positions=P, face_dim=D, max_face_positions=16)
    ckpt = {"model": {}, "config": cfg.to_dict()}
    if change == "prompt":
        ckpt["finetune"] = {"head": "prompt", "labels": ["a", "b"], "head_state": None}
    else:
        ckpt["config"].update(change)
    torch.save(ckpt, tmp_path / "memo.pt")
    res = CliRunner().invoke(main, ["train", "export-ckpt", str(tmp_path / "memo.pt"),
                                    str(tmp_path / "out.pt"), "--to", to])
    assert res.exit_code == 1 and message in res.output, res.output
    assert "cannot export" in res.output
    assert not (tmp_path / "out.pt").exists() and not (tmp_path / "out.json").exists()


# ----------------------------------------------------------------------------- CLI

def test_cli_convert_and_export(tmp_path):
    sd = original(MODEL, PRETRAIN, seed=9)
    sd["emomelm_classifier.weight"] = torch.zeros(3, H)  # an experimental head: no counterpart
    src = save_original(tmp_path / "ckpt", sd)
    run = CliRunner()
    res = run.invoke(main, ["train", "convert-ckpt", str(src), str(tmp_path / "memo.pt")])
    assert res.exit_code == 0, res.output
    assert "original uniter checkpoint" in res.output
    assert "heads: itm_head, mrfr_head, mrckl_head" in res.output
    assert "1 key(s) of SRC not used: emomelm_classifier.weight" in res.output
    assert load_checkpoint(tmp_path / "memo.pt")["source"]["unexpected"] == [
        "emomelm_classifier.weight"]
    res = run.invoke(main, ["train", "convert-ckpt", str(src), str(tmp_path / "memo.pt")])
    assert res.exit_code == 1 and "already exists" in res.output
    res = run.invoke(main, ["train", "convert-ckpt", str(src), str(tmp_path / "x.pt"),
                            "--labels", "a,b"])
    assert res.exit_code == 1 and "has none" in res.output and not (tmp_path / "x.pt").exists()
    res = run.invoke(main, ["train", "export-ckpt", str(tmp_path / "memo.pt"),
                            str(tmp_path / "out.pt"), "--to", "uniter"])
    assert res.exit_code == 0, res.output
    assert "heads: feat_regress, itm_output, region_classifier" in res.output
    assert (tmp_path / "out.json").is_file()
    ft = save_original(tmp_path / "ft", original(MODEL, VQA, seed=12))
    res = run.invoke(main, ["train", "convert-ckpt", str(ft), str(tmp_path / "best.pt"),
                            "--labels", "neu,hap,sad,ang"])
    assert res.exit_code == 0 and "heads: vqa" in res.output and "random (seed 0): mlm" in \
        res.output, res.output
    assert load_classifier(tmp_path / "best.pt")[1]["labels"] == ["neu", "hap", "sad", "ang"]
    res = run.invoke(main, ["train", "convert-ckpt", str(ft), str(tmp_path / "b3.pt"),
                            "--labels", "a,b,c"])
    assert res.exit_code == 1 and "4 classes, 3 label names" in res.output
    res = run.invoke(main, ["train", "export-ckpt", "--help"])
    assert res.exit_code == 0 and "uniter3m" in res.output


def test_pretraining_starts_from_the_imported_heads(pretrain_corpus, tmp_path):
    from memotrain.recipes.pretrain import pretrain

    sd = original(MODEL, PRETRAIN, seed=10, V=30522, D=342)  # the corpus's vocabulary, faces
    convert_checkpoint(save_original(tmp_path / "ckpt", sd, config=uniter_json(vocab_size=30522)),
                       tmp_path / "memo.pt")
    c = pretrain_corpus
    cfg = {"init_checkpoint": str(tmp_path / "memo.pt"),
           "data": {"corpora": [{"txt_db": c["train"], "img_db": c["img"],
                                 "tasks": {"mlm": 1, "mrfr": 1, "itm": 1}}],
                    "max_text_len": 20, "max_faces": 10, "batch_size": 4},
           "optim": {"lr": 1e-4, "warmup_steps": 1}, "steps": 2, "seed": 0, "log_every": 1,
           "val_every": 0, "save_every": 2, "output_dir": str(tmp_path / "run")}
    pretrain(cfg)
    heads = load_checkpoint(tmp_path / "run" / "ckpt" / "model_step_2.pt")["heads"]
    assert sorted(k.split(".")[0] for k in heads) == ["itm_head"] * 2 + ["mrfr_head"] * 5
    # two AdamW updates of lr 1e-4 move a weight by about 2e-4; a fresh head differs by ~0.2
    for theirs, ours in (("itm_output.weight", "itm_head.weight"),
                         ("feat_regress.net.0.weight", "mrfr_head.transform.0.weight")):
        assert (heads[ours] - sd[theirs]).abs().max() < 1e-3
    # memo's own checkpoint exports with the heads its run trained
    r = export_original(tmp_path / "run" / "ckpt" / "model_step_2.pt", tmp_path / "o.pt",
                        to="uniter")
    back = torch.load(r.out, weights_only=True)
    assert r.heads == ["feat_regress", "itm_output"] and "region_classifier.net.3.bias" not in back
    assert torch.equal(back["feat_regress.weight"], back["uniter.img_embeddings.img_linear.weight"])
    assert sorted(k for k in back if not k.startswith(("feat_regress", "itm_output"))) == sorted(
        k for k in sd if not k.startswith(("feat_regress", "itm_output", "region_classifier")))


def test_converted_finetuned_model_extracts(pretrain_corpus, tmp_path):
    from memotrain.recipes.extract import extract

    sd = original(MODEL, EMOCLS, seed=11, V=30522, D=342)
    convert_checkpoint(save_original(tmp_path / "ckpt", sd, config=uniter_json(vocab_size=30522)),
                       tmp_path / "best.pt")
    c = pretrain_corpus
    r = extract(tmp_path / "best.pt", c["val"], tmp_path / "feats.parquet", img_db=c["img"],
                fmt="parquet", dtype="float32", device="cpu")
    assert r.extracted == 4 and r.modalities == ["pooled", "text", "faces"]
