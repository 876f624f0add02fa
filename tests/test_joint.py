"""Pre-training with the face CNN trained jointly (issue 6): the model runs the CNN on the real
crops only, frozen blocks stay frozen, two disjoint optimizers, exact resume without the face
checkpoint, the visual NCE task, the configuration's refusals. Tiny CNN (growth 4, blocks
2/2/2: 16-d features), tiny transformer, a raw-crop corpus of 10 clips built in code."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch

from memodb.dataset.shard import Shard
from memodb.errors import DatabaseError
from memodb.feature.rawimg import rawimg_db
from memodb.synth import make_captions, make_openface
from memodb.text.txtdb import create_txtdb
from memotrain.checkpoint import (CheckpointError, load_face_features, load_model, save_checkpoint,
                                  save_face_cnn)
from memotrain.config import ConfigError, preset
from memotrain.data import DataError, MemoDataset, collate
from memotrain.engine import Optim, TrainError
from memotrain.facecnn import DenseNetBC
from memotrain.model import InputError, MemoBert
from memotrain.recipes.pretrain import build_optimizers, check_optimizer_split, pretrain
from memotrain.tasks import Pretrainer, TaskError
from memotrain.trainconfig import TrainConfigError, check_model, load_train_config

TINY_CNN = {"growth": 4, "blocks": [2, 2, 2], "init_features": 8}
WIDTH = 16  # the tiny CNN's feature width: 8 + 2*4 -> 8 -> 16 -> 8 -> 16
MASK_ID, V_RANGE = 103, (999, 30522)


pytestmark = pytest.mark.usefixtures("one_thread")


def joint_config(**changes):
    return preset("tiny", face_backbone=TINY_CNN, face_dim=WIDTH, **changes)


def face_checkpoint(path, seed=0):
    """A face CNN checkpoint with a classifier and non-trivial batch-norm statistics."""
    torch.manual_seed(seed)
    m = DenseNetBC(**TINY_CNN)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
    return save_face_cnn(path, m)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """10 OpenFace clips of 8 frames (about 5 crops kept each) -> raw 64x64 crops; captions
    -> text db, 8 train / 2 val; a face CNN checkpoint."""
    root = tmp_path_factory.mktemp("joint")
    ids = make_openface(root / "openface", clips=10, frames=8, size=32, seed=5)
    raw = rawimg_db(root / "openface", root / "raw", size=64, workers=1).path
    make_captions(ids, root / "caps.json", seed=5)
    create_txtdb(root / "caps.json", root / "txt", splits=["val=2"], workers=1)
    return {"raw": str(raw), "train": str(root / "txt" / "train"),
            "val": str(root / "txt" / "val"), "face": str(face_checkpoint(root / "face.pt")),
            "root": root}


def config(corpus, out, backbone=None, tasks=None, **changes) -> dict:
    cfg = {"model": "tiny",
           "data": {"corpora": [{"txt_db": corpus["train"], "rawimg_db": corpus["raw"],
                                 "val_txt_db": corpus["val"],
                                 "tasks": tasks or {"mlm": 1, "vnce": 2, "itm": 1}}],
                    "max_text_len": 20, "max_faces": 8, "batch_size": 4},
           "optim": {"lr": 1e-3, "warmup_steps": 2},
           "steps": 4, "seed": 0, "log_every": 1, "val_every": 0, "save_every": 2,
           "output_dir": str(out),
           "face_backbone": {"checkpoint": corpus["face"], "warmup_steps": 1,
                             **(backbone or {})}}
    cfg.update(changes)
    return cfg


def crops_batch(face_lens=(5, 2, 0), seed=0, pad=0.0):
    g = torch.Generator().manual_seed(seed)
    B, F = len(face_lens), max(face_lens)
    crops = torch.randn(B, F, 64, 64, generator=g).half()
    for b, n in enumerate(face_lens):
        crops[b, n:] = pad
    return {"input_ids": torch.randint(1000, 2000, (B, 6), generator=g),
            "text_lens": torch.full((B,), 6), "faces": crops,
            "face_lens": torch.tensor(face_lens)}


def state(path):
    return torch.load(path, weights_only=True)["model"]


# ----------------------------------------------------------------------------- the model

def test_padding_never_reaches_the_cnn():
    torch.manual_seed(0)
    model = MemoBert(joint_config()).eval()
    seen = []
    model.face_cnn.features.conv0.register_forward_pre_hook(
        lambda mod, args: seen.append(args[0].shape[0]))
    b = crops_batch((5, 2, 0), pad=float("nan"))  # NaN padding would poison every output
    out = model(b["input_ids"], b["text_lens"], b["faces"], b["face_lens"])
    assert seen == [7]  # one CNN call on the 7 real crops, not on the 3 x 5 padded slots
    assert torch.isfinite(out.hidden).all() and torch.isfinite(out.pooled).all()
    feats = out.face_feats
    assert feats.shape == (3, 5, WIDTH) and feats.dtype == torch.float32
    assert (feats[1, 2:] == 0).all() and (feats[2] == 0).all()
    with torch.no_grad():  # eval mode: each crop's encoding is the CNN on that crop alone
        alone = model.face_cnn.encode(b["faces"][0, :5].float())
    torch.testing.assert_close(feats[0], alone, rtol=1e-4, atol=1e-5)
    seen.clear()
    b = crops_batch((0, 0))
    model(b["input_ids"], b["text_lens"], b["faces"], b["face_lens"])
    assert seen == []  # no face in the batch: no CNN call at all


def test_the_transformer_is_initialised_as_without_a_backbone():
    torch.manual_seed(3)
    plain = MemoBert(preset("tiny", face_dim=WIDTH)).state_dict()
    torch.manual_seed(3)
    joint = MemoBert(joint_config()).state_dict()
    assert set(joint) - set(plain) == {k for k in joint if k.startswith("face_cnn.")}
    assert not any(k.startswith("face_cnn.classifier") for k in joint)  # no classifier
    assert all(torch.equal(plain[k], joint[k]) for k in plain)


def test_model_refuses_features_and_bad_backbone_configs():
    torch.manual_seed(0)
    model = MemoBert(joint_config())
    b = crops_batch((2, 1))
    with pytest.raises(InputError, match="raw crops .* rawimg_db"):
        model(b["input_ids"], b["text_lens"], torch.randn(2, 2, WIDTH), b["face_lens"])
    with pytest.raises(InputError, match="raw crops"):
        model(b["input_ids"], b["text_lens"], torch.randn(2, 2, 32, 32), b["face_lens"])
    with pytest.raises(ConfigError, match="face_dim 342 is not the width .* set face_dim 16"):
        MemoBert(preset("tiny", face_backbone=TINY_CNN))
    with pytest.raises(ConfigError, match="face_backbone: unknown key.*n_classes"):
        preset("tiny", face_backbone={**TINY_CNN, "n_classes": 8})
    with pytest.raises(ConfigError, match="needs faces"):
        preset("tiny", face_backbone=TINY_CNN, face_dim=0)


# ----------------------------------------------------------------------------- data

def test_dataset_reads_float16_crops_and_collate_pads_them(corpus):
    ds = MemoDataset(corpus["train"], rawimg_db=corpus["raw"], max_text_len=20, max_faces=4)
    assert ds.crops and ds.crop_size == 64 and ds.face_dim is None
    items = [ds[i] for i in range(4)]
    assert all(it["faces"].dtype == np.float16 and it["faces"].shape[1:] == (64, 64)
               and "soft_labels" not in it for it in items)
    b = collate(items)
    n = [len(it["faces"]) for it in items]
    assert b["faces"].dtype == torch.float16 and b["faces"].shape == (4, max(n), 64, 64)
    assert b["face_lens"].tolist() == n and (ds.face_lens <= 4).all()
    for k, it in enumerate(items):
        np.testing.assert_array_equal(b["faces"][k, :n[k]].numpy(), it["faces"])
        assert (b["faces"][k, n[k]:] == 0).all()


def test_dataset_refuses_the_wrong_kind_of_face_database(corpus, feature_db, tmp_path):
    with pytest.raises(DataError, match="raw face-crop database, not face features .* "
                                        "rawimg_db"):
        MemoDataset(corpus["train"], corpus["raw"], max_text_len=20)
    with pytest.raises(DataError, match="is a feature database, not a raw face-crop"):
        MemoDataset(corpus["train"], rawimg_db=feature_db, max_text_len=20)
    with pytest.raises(DataError, match="not both"):
        MemoDataset(corpus["train"], feature_db, rawimg_db=corpus["raw"], max_text_len=20)
    shard = rawimg_db(corpus["root"] / "openface", tmp_path / "shard", size=64, workers=1,
                      shard=Shard(0, 2)).path
    with pytest.raises(DataError, match="one shard .* memo db merge"):
        MemoDataset(corpus["train"], rawimg_db=shard, max_text_len=20)
    with pytest.raises(DataError, match="min_faces 1 needs a face database"):
        MemoDataset(corpus["train"], max_text_len=20, min_faces=1)
    # a manifest that lies about the crop size: the segment is named when it is read
    copy = tmp_path / "lying" / "raw"
    shutil.copytree(corpus["raw"], copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["options"]["size"] = 32
    (copy / "manifest.json").write_text(json.dumps(manifest))
    ds = MemoDataset(corpus["train"], rawimg_db=copy, max_text_len=20)
    with pytest.raises(DatabaseError, match=r"segment '.*\.npz' holds crops of shape "
                                            r"\(64, 64\), its manifest says 32x32"):
        ds[0]


# ----------------------------------------------------------------------------- optimizers

def pretrainer(frozen=0, tasks=("mlm", "vnce", "itm")):
    torch.manual_seed(0)
    model = MemoBert(joint_config())
    model.face_cnn.set_frozen_blocks(frozen)
    return Pretrainer(model, list(tasks), MASK_ID, V_RANGE)


def test_two_optimizers_with_disjoint_parameter_sets(corpus, tmp_path):
    cfg = load_train_config(config(corpus, tmp_path, {"frozen_dense_blocks": 1}))
    pre = pretrainer(frozen=1)
    optims = build_optimizers(pre, cfg, torch.device("cpu"))
    assert [op.name for op in optims] == ["transformer", "cnn"]
    t, c = ({id(p) for p in op.params} for op in optims)
    cnn = pre.model.face_cnn
    assert not t & c
    assert c == {id(p) for p in cnn.trainable_parameters()}
    assert t | c == {id(p) for p in pre.parameters() if p.requires_grad}
    frozen = {id(p) for m in cnn.frozen_modules() for p in m.parameters()}
    assert frozen and not frozen & (t | c)
    groups = [(g["lr"], g["weight_decay"]) for op in optims for g in op.optimizer.param_groups]
    assert groups == [(1e-3, 0.01), (1e-3, 0.0), (1e-3, 5e-4), (1e-3, 0.0)]
    assert (optims[0].warmup, optims[1].warmup) == (2, 1)
    assert optims[1].optimizer.defaults["betas"] == (0.9, 0.999)
    # every block frozen: the CNN has nothing to train and gets no optimizer
    assert [op.name for op in build_optimizers(pretrainer(frozen=3), cfg,
                                               torch.device("cpu"))] == ["transformer"]


def test_a_bad_parameter_split_is_refused_at_start_up():
    pre = pretrainer(frozen=1)
    cnn = pre.model.face_cnn
    everything = [p for p in pre.parameters() if p.requires_grad]

    def opt(name, params):
        return Optim(name, torch.optim.AdamW(params), 1e-3, 0, 1.0)

    # the original's defect: the CNN in the transformer's optimizer as well
    with pytest.raises(TrainError, match="face_cnn.* is in two optimizers"):
        check_optimizer_split(pre, [opt("transformer", everything),
                                    opt("cnn", cnn.trainable_parameters())])
    with pytest.raises(TrainError, match="in the transformer optimizer .* belong to the cnn"):
        check_optimizer_split(pre, [opt("transformer", everything)])
    rest = [p for p in everything if all(p is not q for q in cnn.parameters())]
    with pytest.raises(TrainError, match=r"\d+ trainable parameter\(s\) in no optimizer: "
                                         "model.face_cnn"):
        check_optimizer_split(pre, [opt("transformer", rest)])
    with pytest.raises(TrainError, match="conv0.weight is frozen but in the cnn optimizer"):
        check_optimizer_split(pre, [opt("transformer", rest),
                                    opt("cnn", list(cnn.parameters()))])


# ----------------------------------------------------------------------------- the run

@pytest.fixture(scope="module")
def frozen_run(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("frozen") / "run"
    return out, pretrain(config(corpus, out, {"frozen_dense_blocks": 1}, steps=3, val_every=3))


def test_frozen_blocks_keep_weights_and_statistics_after_steps(corpus, frozen_run):
    out, s = frozen_run
    assert s["steps"] == 3 and all(math.isfinite(x) for _, _, x in s["losses"])
    face = torch.load(corpus["face"], weights_only=True)["model"]
    joint = state(out / "ckpt" / "model_step_3.pt")
    cnn = {k[len("face_cnn."):]: v for k, v in joint.items() if k.startswith("face_cnn.")}
    assert set(cnn) == {k for k in face if k.startswith("features.")}  # no classifier
    frozen = [k for k in cnn if k.startswith(("features.conv0", "features.denseblock1",
                                              "features.transition1"))]
    moving = [k for k in cnn if k.startswith(("features.denseblock2", "features.denseblock3"))
              and not k.endswith("num_batches_tracked")]
    assert frozen and moving
    assert all(torch.equal(cnn[k], face[k]) for k in frozen)  # weights AND running stats
    assert all(not torch.equal(cnn[k], face[k]) for k in moving)  # trained, stats updated
    stats = [k for k in moving if k.endswith("running_mean")]
    assert stats and all(not torch.equal(cnn[k], face[k]) for k in stats)
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    val = [r["val"] for r in recs if "val" in r]  # validation on the val texts' crops
    assert len(val) == 1 and val[0]["vnce"]["targets"] > 0 and "acc" in val[0]["vnce"]
    recs = [r for r in recs if "loss" in r]
    assert all("cnn_grad_norm" in r and "cnn_lr" in r for r in recs)
    # own schedules: the CNN warms up over 1 update, the transformer over 2
    assert [r["cnn_lr"] for r in recs] == pytest.approx([1e-3, 1e-3, 5e-4])
    assert [r["lr"] for r in recs] == pytest.approx([5e-4, 1e-3, 1e-3])


def test_the_joint_checkpoint_rebuilds_both_networks(frozen_run, corpus):
    out, _ = frozen_run
    model = load_model(out / "ckpt" / "model_step_3.pt")
    assert model.face_cnn is not None and model.config.face_dim == WIDTH
    assert model.face_cnn.frozen_blocks == 0  # freezing is a training setting
    # only the feature keys of the joint checkpoint load into a face CNN of its own
    cnn = DenseNetBC(**TINY_CNN)
    res = load_face_features(cnn, out / "ckpt" / "model_step_3.pt", prefix="face_cnn.")
    assert res.loaded and all(k.startswith("features.") for k in res.loaded)
    assert not any(k.startswith("face_cnn.") for k in res.dropped)
    assert torch.equal(cnn.features.denseblock2.denselayer1.conv1.weight,
                       model.face_cnn.features.denseblock2.denselayer1.conv1.weight)


def test_activation_checkpointing_gives_the_same_run(corpus, frozen_run, tmp_path):
    _, plain = frozen_run
    ckpt = pretrain(config(corpus, tmp_path / "ckpt", {"frozen_dense_blocks": 1,
                                                        "checkpoint_activations": True},
                           steps=3, save_every=0))
    assert [x[:2] for x in ckpt["losses"]] == [x[:2] for x in plain["losses"]]
    for (_, _, a), (_, _, b) in zip(ckpt["losses"], plain["losses"]):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-6)


def test_resume_equals_uninterrupted_training_without_the_face_checkpoint(corpus, tmp_path):
    whole = pretrain(config(corpus, tmp_path / "whole", steps=4))
    face = tmp_path / "face_copy.pt"
    shutil.copy(corpus["face"], face)
    cfg = config(corpus, tmp_path / "run", steps=4)
    cfg["face_backbone"]["checkpoint"] = str(face)
    first = pretrain(cfg, stop_after=2)
    assert first["losses"] == whole["losses"][:2]
    face.unlink()  # a resumed run never reads it again
    ckpt = tmp_path / "run" / "ckpt" / "model_step_2.pt"
    ckpt.rename(ckpt.with_suffix(".away"))  # the run's own checkpoint gives the model config
    with pytest.raises(TrainError, match="model_step_2.pt: cannot read the run's model "
                                         "checkpoint"):
        pretrain(cfg, resume=True)
    ckpt.with_suffix(".away").rename(ckpt)
    rest = pretrain(cfg, resume=True)
    assert rest["losses"] == whole["losses"][2:]
    a = state(tmp_path / "run" / "ckpt" / "model_step_4.pt")
    b = state(tmp_path / "whole" / "ckpt" / "model_step_4.pt")
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    saved = torch.load(tmp_path / "run" / "ckpt" / "state_step_4.pt", weights_only=False)
    assert saved["cnn_optimizer"]["state"] and saved["optimizer"]["state"]
    # a fresh start with the face checkpoint gone is an error that names it
    with pytest.raises(CheckpointError, match="face_copy.pt: no such checkpoint"):
        pretrain(config(corpus, tmp_path / "new", steps=4,
                        face_backbone={"checkpoint": str(face)}))


def test_bf16_autocast_covers_both_networks(corpus, tmp_path):
    s = pretrain(config(corpus, tmp_path / "bf16", steps=2, precision="bf16", save_every=0,
                        tasks={"vnce": 1}))
    assert s["precision"] == "bf16" and s["skipped"] == 0
    assert all(math.isfinite(x) for _, _, x in s["losses"])


def test_fp16_one_scaler_steps_both_optimizers(corpus, tmp_path, monkeypatch):
    # fp16 autocast + GradScaler run on CPU too; the trainer allows them on CUDA only, so the
    # precision check is bypassed to exercise the loop's scaler path here
    monkeypatch.setattr("memotrain.recipes.pretrain.resolve_precision", lambda p, d: p)
    s = pretrain(config(corpus, tmp_path / "fp16", steps=12, precision="fp16", save_every=12,
                        tasks={"vnce": 1}))
    saved = torch.load(tmp_path / "fp16" / "ckpt" / "state_step_12.pt", weights_only=False)
    applied = 12 - s["skipped"]
    # the first updates overflow at the initial scale of 2**16: skipped for BOTH networks
    # (one verdict per update), the scale lowered, then both optimizers step together
    assert 1 <= s["skipped"] < 12 and saved["scaler"]["scale"] < 2.0 ** 16
    for name in ("optimizer", "cnn_optimizer"):
        steps = {int(v["step"]) for v in saved[name]["state"].values()}
        assert steps == {applied}, (name, steps)


def test_init_checkpoint_without_a_cnn_gets_one(corpus, tmp_path):
    torch.manual_seed(1)
    plain = MemoBert(preset("tiny", face_dim=WIDTH))
    save_checkpoint(tmp_path / "plain.pt", plain)
    cfg = config(corpus, tmp_path / "init", steps=1, save_every=0, model=None,
                 init_checkpoint=str(tmp_path / "plain.pt"))
    cfg["optim"]["warmup_steps"] = 0
    cfg["optim"]["lr"] = 1e-12  # a negligible step: the weights stay those loaded
    cfg["face_backbone"]["lr"] = 1e-12
    pretrain(cfg)
    got = state(tmp_path / "init" / "ckpt" / "model_step_1.pt")
    want = plain.state_dict()
    assert torch.allclose(got["encoder.layer.0.attention.self.query.weight"],
                          want["encoder.layer.0.attention.self.query.weight"], atol=1e-9)
    face = torch.load(corpus["face"], weights_only=True)["model"]
    assert torch.allclose(got["face_cnn.features.conv0.weight"], face["features.conv0.weight"],
                          atol=1e-9)
    # a 342-d face projection does not fit the CNN's 16-d features
    torch.manual_seed(1)
    save_checkpoint(tmp_path / "wide.pt", MemoBert(preset("tiny")))
    with pytest.raises(TrainError, match=r"face_embeddings.mask_embedding has shape \(342,\), "
                                         r"the model \(16,\) .* feature width 16"):
        pretrain(config(corpus, tmp_path / "wide", model=None,
                        init_checkpoint=str(tmp_path / "wide.pt")))


# ----------------------------------------------------------------------------- vnce

def planted_batch(g, identities=6, frames=6, noise=0.3):
    """Each example: ``frames`` noisy crops of one of ``identities`` planted faces (stripes of
    their own frequency and brightness), so a masked crop is predictable from its neighbours
    and tells the other examples' crops apart."""
    y = torch.arange(64.0)[:, None].expand(64, 64)
    k = torch.arange(identities, dtype=torch.float)[:, None, None]
    faces = torch.sin(2 * torch.pi * (k + 1) * y / 64) + (k - (identities - 1) / 2) * 0.5
    crops = faces[:, None] + noise * torch.randn(identities, frames, 64, 64, generator=g)
    return {"input_ids": torch.randint(1000, 2000, (identities, 5), generator=g),
            "text_lens": torch.full((identities,), 5), "faces": crops.half(),
            "face_lens": torch.full((identities,), frames)}


def test_vnce_loss_decreases_on_a_planted_corpus():
    torch.manual_seed(0)
    model = MemoBert(joint_config(dropout=0.0, attention_dropout=0.0))
    pre = Pretrainer(model, ["vnce"], MASK_ID, V_RANGE)
    cnn_ids = {id(p) for p in model.face_cnn.parameters()}
    opt = torch.optim.AdamW([{"params": [p for p in pre.parameters() if id(p) not in cnn_ids],
                              "lr": 3e-3},
                             {"params": list(model.face_cnn.parameters()), "lr": 1e-3}])
    g = torch.Generator().manual_seed(0)
    losses, accs = [], []
    for step in range(40):
        out = pre("vnce", planted_batch(g), torch.Generator().manual_seed(step))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(float(out.loss.detach()))
        accs.append(out.metrics["acc"])
        assert out.n_targets >= 6  # at least one masked face per example
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    # chance: uniform scores over the 36 crops of the batch, loss log 36 = 3.58; the crops of
    # one face are near copies, so the floor is about log 6 = 1.79
    assert last < first - 0.5 and last < math.log(36) - 0.5, (first, last)
    assert np.mean(accs[-10:]) > 1 / 36


def test_vnce_targets_are_detached_encodings_of_the_true_crops():
    pre = pretrainer(tasks=["vnce"]).eval()  # eval: batch-norm does not couple the crops
    b = crops_batch((4, 3, 1))
    b["faces"] = b["faces"].float().requires_grad_()
    res = pre("vnce", b, torch.Generator().manual_seed(0))
    res.loss.backward()
    assert res.n_targets >= 3 and math.isfinite(float(res.loss.detach()))
    grad = b["faces"].grad.abs().sum((2, 3))
    # the lone face of example 2 is always masked: it is only a target, and targets carry no
    # gradient; unmasked crops feed the context, so the CNN learns through them
    assert grad[2, 0] == 0 and grad[0].sum() > 0
    assert pre.model.face_cnn.features.conv0.weight.grad.abs().sum() > 0
    assert pre.vnce_head.key.weight.grad.abs().sum() > 0
    with pytest.raises(TaskError, match="1 face.* nothing to contrast"):
        pre("vnce", crops_batch((1, 0)), torch.Generator().manual_seed(0))
    # without a face CNN vnce contrasts the stored features
    plain = Pretrainer(MemoBert(preset("tiny")), ["vnce"], MASK_ID, V_RANGE)
    feats = {**b, "faces": torch.randn(3, 4, 342)}
    loss = plain("vnce", feats, torch.Generator().manual_seed(0)).loss
    assert math.isfinite(float(loss.detach()))
    with pytest.raises(TaskError, match="vnce_temperature must be > 0"):
        Pretrainer(MemoBert(preset("tiny")), ["vnce"], MASK_ID, V_RANGE, vnce_temperature=0)
    with pytest.raises(TaskError, match="'mrfr' predicts stored face features .* vnce"):
        pretrainer(tasks=["mrfr"])


# ----------------------------------------------------------------------------- config

@pytest.mark.parametrize("edit, match", [
    (lambda c: c.pop("face_backbone"), "rawimg_db: raw crops need a face CNN"),
    (lambda c: c["data"]["corpora"][0].update(img_db="x"), "img_db .* or rawimg_db .* not both"),
    (lambda c: c["data"]["corpora"][0].update(img_db="x", rawimg_db=None),
     "img_db: with face_backbone the faces are raw crops"),
    (lambda c: c["data"]["corpora"][0]["tasks"].update(mrfr=1), "mrfr regress.* use vnce"),
    (lambda c: c["data"]["corpora"][0].update(rawimg_db=None, tasks={"mlm": 1}),
     "no corpus has a rawimg_db"),
    (lambda c: c["data"]["corpora"][0].update(rawimg_db=None),
     "tasks.vnce masks faces, but the corpus has no img_db"),
    (lambda c: c["face_backbone"].update(arch={"growht": 4}), "arch: unknown key.*growht"),
    (lambda c: c["face_backbone"].update(arch=TINY_CNN), "checkpoint .* or arch, not both"),
    (lambda c: c["face_backbone"].update(frozen_dense_blocks=-1), "frozen_dense_blocks must"),
    (lambda c: c["face_backbone"].update(lr=0), "face_backbone.lr must be > 0"),
    (lambda c: c["face_backbone"].update(warmup_steps=9), "face_backbone warmup 9 is longer"),
    (lambda c: c.update(vnce_temperature=0), "vnce_temperature must be > 0"),
    (lambda c: c["face_backbone"].update(frozen=1), "unknown config key 'face_backbone.frozen'"),
])
def test_config_refusals(corpus, tmp_path, edit, match):
    cfg = config(corpus, tmp_path)
    edit(cfg)
    with pytest.raises(TrainConfigError, match=match):
        load_train_config(cfg)


def test_config_resolution_and_model_level_refusals(corpus, tmp_path):
    cfg = load_train_config(config(corpus, tmp_path), ["--face_backbone.frozen_dense_blocks",
                                                        "2", "--vnce_temperature", "0.1"])
    assert cfg.face_backbone.frozen_dense_blocks == 2 and cfg.vnce_temperature == 0.1
    mc = cfg.model_config()  # the architecture and width of the face checkpoint's CNN
    assert mc.face_dim == WIDTH and mc.face_backbone["blocks"] == [2, 2, 2]
    assert "n_classes" not in mc.face_backbone
    check_model(cfg, mc)
    none = config(corpus, tmp_path, {"checkpoint": None})
    assert load_train_config(none).model_config().face_dim == 342  # Denseface defaults
    bad = load_train_config(config(corpus, tmp_path, {"frozen_dense_blocks": 4}))
    with pytest.raises(TrainConfigError, match="frozen_dense_blocks 4 > the face CNN's 3"):
        check_model(bad, bad.model_config())
    arch = load_train_config(config(corpus, tmp_path, {"checkpoint": None,
                                                       "arch": {"growth": 0}}))
    with pytest.raises(TrainConfigError, match="face_backbone.arch: not a face CNN .*growth"):
        arch.model_config()
    small = config(corpus, tmp_path / "small", {"checkpoint": None,
                                                "arch": {**TINY_CNN, "image_size": 32}})
    with pytest.raises(TrainConfigError, match="crops of 64x64, but the face CNN takes 32x32"):
        pretrain(small)
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "joint.pt", MemoBert(joint_config()))
    joint = config(corpus, tmp_path, model=None, init_checkpoint=str(tmp_path / "joint.pt"))
    with pytest.raises(TrainConfigError, match="already holds a face CNN"):
        load_train_config(joint).model_config()
    joint["face_backbone"].pop("checkpoint")
    assert load_train_config(joint).model_config().face_backbone["growth"] == 4
    joint.pop("face_backbone")
    joint["data"]["corpora"][0].update(rawimg_db=None, tasks={"mlm": 1})
    with pytest.raises(TrainConfigError, match="has a face CNN .* no face_backbone section"):
        load_train_config(joint).model_config()
