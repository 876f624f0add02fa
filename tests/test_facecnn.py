"""The DenseNet-BC face CNN: architecture, freezing, activation checkpointing, checkpoints,
and its FER-style training entry point (memotrain.facecnn, memotrain.recipes.face_cnn)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image

from memo.cli import main
from memodb.errors import BadInputError, OutputExistsError
from memotrain.checkpoint import CheckpointError, load_face_cnn, load_face_features, save_face_cnn
from memotrain.config import ConfigError
from memotrain.facecnn import FERPLUS_CLASSES, DenseNetBC
from memotrain.facedata import augment, ferplus_labels, read_face_data, read_fer_csv
from memotrain.model import InputError
from memotrain.recipes.face_cnn import FaceTrainError, train_face_cnn

TINY = {"growth": 4, "blocks": [2, 2, 2], "init_features": 8}


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    return DenseNetBC(**{**TINY, **kw})


def batch(n=8, size=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, size, size, generator=g), torch.randint(0, 8, (n,), generator=g)


# ----------------------------------------------------------------------------- architecture

def test_channel_arithmetic_and_original_key_names():
    m = DenseNetBC().eval()
    assert m.block_channels == (216, 300, 342) and m.feature_dim == 342
    x = torch.randn(2, 64, 64)
    assert [tuple(m.features_of(x, b).shape) for b in (1, 2, 3)] == [(2, 216), (2, 300),
                                                                     (2, 342)]
    assert tuple(m(x.unsqueeze(1)).shape) == (2, 8)
    assert torch.equal(m.encode(x), m.features_of(x))
    keys = m.state_dict()
    assert all(k.startswith(("features.", "classifier.")) for k in keys)
    # the layout of the original Denseface model, so its state dicts load unchanged
    assert tuple(keys["features.conv0.weight"].shape) == (24, 1, 3, 3)
    assert tuple(keys["features.denseblock1.denselayer16.conv2.weight"].shape) == (12, 48, 3, 3)
    assert tuple(keys["features.transition1.conv.weight"].shape) == (108, 216, 1, 1)
    assert tuple(keys["features.transition2.conv.weight"].shape) == (150, 300, 1, 1)
    assert tuple(keys["features.norm3.running_var"].shape) == (342,)
    assert tuple(keys["classifier.weight"].shape) == (8, 342)


def test_pooled_features_are_the_mean_of_the_normalised_maps():
    m = tiny().eval()
    x = torch.randn(3, 64, 64)
    f = m.features
    with torch.no_grad():
        b1 = f.denseblock1(f.conv0(x.unsqueeze(1)))
        t1 = f.transition1.relu(f.transition1.norm(b1))
        last = f.relu3(f.norm3(f.denseblock3(f.transition2(f.denseblock2(f.transition1(b1))))))
    torch.testing.assert_close(m.features_of(x, 1), t1.mean((2, 3)))
    torch.testing.assert_close(m.features_of(x), last.mean((2, 3)))


def test_encoder_without_classifier():
    m = tiny(n_classes=0).eval()
    assert m.classifier is None and tuple(m.encode(torch.randn(2, 64, 64)).shape) == (2, 16)
    with pytest.raises(InputError, match="no classifier"):
        m(torch.randn(2, 64, 64))


@pytest.mark.parametrize("shape", [(2, 48, 48), (2, 3, 64, 64), (64, 64)])
def test_wrong_input_shape_is_a_clear_error(shape):
    with pytest.raises(InputError, match=r"64x64 crops.*--size 64"):
        tiny()(torch.randn(*shape))


@pytest.mark.parametrize("kw, match", [
    ({"frozen_blocks": 4}, "frozen_blocks must be 0 to 3"),
    ({"frozen_blocks": -1}, "frozen_blocks"),
    ({"blocks": []}, "blocks"),
    ({"blocks": [2, 0, 2]}, "blocks"),
    ({"image_size": 60}, "multiple of 8"),
    ({"compression": 0.0}, "compression"),
    ({"growth": 0}, "growth"),
    ({"n_classes": -1}, "n_classes"),
    ({"drop_rate": 1.0}, "drop_rate"),
])
def test_bad_architecture_is_refused(kw, match):
    with pytest.raises(ConfigError, match=match):
        tiny(**kw)


# ----------------------------------------------------------------------------- freezing

FROZEN_PREFIXES = {  # frozen_blocks k -> modules frozen
    1: ("features.conv0.", "features.denseblock1.", "features.transition1."),
    2: ("features.conv0.", "features.denseblock1.", "features.transition1.",
        "features.denseblock2.", "features.transition2."),
    3: ("features.",),
}


@pytest.mark.parametrize("k", [1, 2, 3])
def test_frozen_blocks_stay_unchanged_after_training_steps(k):
    m = tiny(frozen_blocks=k, drop_rate=0.1)
    before = {n: t.clone() for n, t in m.state_dict().items()}
    frozen = FROZEN_PREFIXES[k]
    trainable = {id(p) for p in m.trainable_parameters()}
    for name, p in m.named_parameters():
        assert p.requires_grad == (not name.startswith(frozen))
        assert (id(p) in trainable) == (not name.startswith(frozen))
    opt = torch.optim.AdamW(m.trainable_parameters(), lr=1e-2)
    m.eval()
    m.train()  # frozen modules must stay in eval mode anyway
    assert m.training and all(not mod.training for mod in m.frozen_modules())
    for step in range(3):
        x, y = batch(seed=step)
        opt.zero_grad()
        F.cross_entropy(m(x), y).backward()
        opt.step()
    after = m.state_dict()
    for name, t in after.items():
        if name.startswith(frozen):  # weights AND batch-norm buffers, bit for bit
            assert torch.equal(t, before[name]), name
    for name in ("classifier.weight",) + (("features.norm3.running_mean",
                                           "features.denseblock3.denselayer1.conv1.weight")
                                          if k < 3 else ()):
        assert not torch.equal(after[name], before[name]), name
    assert all(p.grad is None for n, p in m.named_parameters() if n.startswith(frozen))


def test_unfreezing_makes_everything_trainable_again():
    m = tiny(frozen_blocks=2)
    m.set_frozen_blocks(0)
    assert len(m.trainable_parameters()) == len(list(m.parameters()))
    assert all(mod.training for mod in m.modules())


# ----------------------------------------------------------------------------- checkpointing

def _saved_bytes(m, x, y):
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(m(x), y)
    return loss, total[0]


@pytest.mark.parametrize("frozen", [0, 1])
def test_activation_checkpointing_gives_the_same_loss_gradients_and_statistics(frozen):
    plain = tiny(seed=3, drop_rate=0.2, frozen_blocks=frozen)
    ckpt = tiny(seed=4, drop_rate=0.2, frozen_blocks=frozen, checkpoint_activations=True)
    ckpt.load_state_dict(plain.state_dict())
    x, y = batch(n=6)
    torch.manual_seed(7)
    loss_a, bytes_a = _saved_bytes(plain, x, y)
    torch.manual_seed(7)
    loss_b, bytes_b = _saved_bytes(ckpt, x, y)
    loss_a.backward()
    loss_b.backward()
    torch.testing.assert_close(loss_a, loss_b)
    for (name, pa), pb in zip(plain.named_parameters(), ckpt.parameters()):
        assert (pa.grad is None) == (pb.grad is None), name
        if pa.grad is not None:
            torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-4, atol=1e-6, msg=name)
    # the recomputation does not update the batch-norm statistics a second time
    for (name, ba), bb in zip(plain.named_buffers(), ckpt.buffers()):
        assert torch.equal(ba, bb), name
    assert bytes_b < bytes_a / 2  # what it is for: far fewer activations kept


# ----------------------------------------------------------------------------- checkpoints

def test_save_and_load_rebuild_the_model_alone(tmp_path):
    m = tiny(seed=5, n_classes=3)
    m.normalization, m.classes = {"mean": 120.0, "std": 40.0}, ["a", "b", "c"]
    path = save_face_cnn(tmp_path / "cnn.pt", m, note="x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cnn.pt"]  # no temp file left
    back = load_face_cnn(path, frozen_blocks=1)
    assert back.config == m.config and back.frozen_blocks == 1
    assert back.normalization == m.normalization and back.classes == ["a", "b", "c"]
    for (k, a), b in zip(m.state_dict().items(), back.state_dict().values()):
        assert torch.equal(a, b), k
    x = torch.randn(2, 64, 64)
    torch.testing.assert_close(m.eval()(x), back.eval()(x))


def _source_formats(sd):
    return {
        "bare": sd,
        "state_dict": {"state_dict": sd, "epoch": 3},
        "model": {"model": sd, "optimizer": {}},
        "module": {"module." + k: v for k, v in sd.items()},
    }


@pytest.mark.parametrize("fmt", ["memo", "bare", "state_dict", "model", "module"])
def test_face_features_load_without_the_classifier(tmp_path, fmt):
    src = tiny(seed=1)
    for mod in src.modules():  # non-trivial batch-norm statistics
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-1, 1)
    if fmt == "memo":
        path = save_face_cnn(tmp_path / "src.pt", src)
    else:
        path = tmp_path / "src.pt"
        torch.save(_source_formats(src.state_dict())[fmt], path)
    dst = tiny(seed=2, n_classes=4, frozen_blocks=1)
    classifier = dst.classifier.weight.clone()
    rep = load_face_features(dst, path)
    assert rep.source == str(path)
    assert sorted(rep.loaded) == sorted(k for k in src.state_dict() if k.startswith("features."))
    assert [k.removeprefix("module.") for k in rep.dropped] == ["classifier.weight",
                                                                "classifier.bias"]
    theirs = src.state_dict()
    for k, v in dst.state_dict().items():
        if k.startswith("features."):
            assert torch.equal(v, theirs[k]), k
    assert torch.equal(dst.classifier.weight, classifier)  # not touched (other shape anyway)
    assert dst.frozen_blocks == 1 and not dst.features.conv0.weight.requires_grad


def test_face_features_from_a_joint_model_by_prefix():
    src = tiny(seed=1)
    joint = {"encoder.layer.0.weight": torch.zeros(2),
             **{"face_cnn." + k: v for k, v in src.state_dict().items()}}
    dst = tiny(seed=2)
    rep = load_face_features(dst, joint, prefix="face_cnn.")
    assert rep.source == "checkpoint" and "encoder.layer.0.weight" in rep.dropped
    assert torch.equal(dst.features.conv0.weight, src.features.conv0.weight)
    with pytest.raises(CheckpointError, match=r"no 'features\.\*' key.*prefix"):
        load_face_features(dst, joint)


def test_old_checkpoints_without_batch_counters_load():
    sd = {k: v for k, v in tiny(seed=1).state_dict().items()
          if not k.endswith("num_batches_tracked")}
    rep = load_face_features(tiny(seed=2), sd)
    assert not any(k.endswith("num_batches_tracked") for k in rep.loaded)


def test_face_feature_loading_errors(tmp_path):
    dst = tiny()
    wide = tmp_path / "wide.pt"
    torch.save(tiny(growth=6).state_dict(), wide)
    with pytest.raises(CheckpointError, match=r"wide\.pt: features\.denseblock1\.denselayer1"
                       r"\.conv1\.weight has shape \(24, 8, 1, 1\) in the checkpoint but "
                       r"\(16, 8, 1, 1\) in the face CNN \(model: growth 4"):
        load_face_features(dst, wide)
    deeper = tiny(blocks=[2, 2, 3]).state_dict()
    with pytest.raises(CheckpointError, match=r"denseblock3\.denselayer3\..* has no place"):
        load_face_features(dst, deeper)
    sd = tiny().state_dict()
    del sd["features.transition1.conv.weight"]
    with pytest.raises(CheckpointError, match=r"1 face CNN key\(s\) missing: "
                       r"features\.transition1\.conv\.weight"):
        load_face_features(dst, sd)
    with pytest.raises(CheckpointError, match=r"no 'features\.\*' key"):
        load_face_features(dst, {"embeddings.word_embeddings.weight": torch.zeros(3, 2)})
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_face_features(dst, tmp_path / "missing.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="not a state dict"):
        load_face_features(dst, tmp_path / "list.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_face_features(dst, tmp_path / "junk.pt")


def test_load_face_cnn_refuses_other_checkpoints(tmp_path):
    torch.save(tiny().state_dict(), tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match="not a memo face CNN checkpoint"):
        load_face_cnn(tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_face_cnn(tmp_path / "none.pt")
    m = tiny()
    path = save_face_cnn(tmp_path / "cnn.pt", m)
    ckpt = torch.load(path, weights_only=True)
    ckpt["config"]["blocks"] = [2, 2, 3]
    torch.save(ckpt, tmp_path / "edited.pt")
    with pytest.raises(CheckpointError, match="do not fit the checkpoint's own config"):
        load_face_cnn(tmp_path / "edited.pt")
    ckpt["config"]["depth"] = 100
    torch.save(ckpt, tmp_path / "edited.pt")
    with pytest.raises(CheckpointError, match="config does not describe a face CNN"):
        load_face_cnn(tmp_path / "edited.pt")


# ----------------------------------------------------------------------------- training

def planted(y, side, rng):
    """A crop whose class is a bright region: top half, left half or centre."""
    img = rng.normal(110, 30, size=(side, side))
    q = side // 4
    region = [np.s_[: side // 2], np.s_[:, : side // 2], np.s_[q:3 * q, q:3 * q]][y]
    img[region] += 70
    return np.clip(img, 0, 255).astype(np.uint8)


def fer_csv(path, n=(120, 30, 30), side=48, seed=0, k=3):
    rng = np.random.default_rng(seed)
    lines = ["emotion,pixels,Usage"]
    for usage, count in zip(("Training", "PublicTest", "PrivateTest"), n):
        for i in range(count):
            lines.append(f"{i % k},{' '.join(map(str, planted(i % k, side, rng).ravel()))},"
                         f"{usage}")
    path.write_text("\n".join(lines) + "\n")
    return path


FAST = {"model_args": TINY, "epochs": 6, "batch_size": 16, "lr": 3e-3, "device": "cpu"}


def test_training_on_planted_classes_beats_chance_and_writes_the_checkpoint(tmp_path):
    src = fer_csv(tmp_path / "fer.csv")
    lines = []
    s = train_face_cnn(src, tmp_path / "cnn.pt", classes=["top", "left", "centre"],
                       log=lines.append, **FAST)
    assert s["val_accuracy"] >= 0.9 and s["test_accuracy"] >= 0.9  # chance: 1/3
    assert s["counts"] == {"train": 120, "val": 30, "test": 30} and s["epochs"] == 6
    assert sum(line.startswith("epoch ") for line in lines) == 6
    assert max(h["val_accuracy"] for h in s["history"]) == s["val_accuracy"]
    model = load_face_cnn(tmp_path / "cnn.pt").eval()
    assert model.classes == ["top", "left", "centre"]
    train = read_fer_csv(src, classes=["top", "left", "centre"]).splits
    pix = train["train"][0].astype(np.float64)
    assert model.normalization["mean"] == pytest.approx(pix.mean())
    assert model.normalization["std"] == pytest.approx(pix.std())
    # the saved model is the selected one: it reproduces the reported validation accuracy
    val_x, val_y = train["val"]
    x = (torch.from_numpy(val_x).float() - pix.mean()) / pix.std()
    acc = float((model(x).argmax(1) == torch.from_numpy(val_y)).float().mean())
    assert acc == pytest.approx(s["val_accuracy"])
    ckpt = torch.load(tmp_path / "cnn.pt", weights_only=True)
    assert ckpt["training"]["best_epoch"] == s["best_epoch"]
    assert ckpt["training"]["source"]["type"] == "fer-csv"


def test_training_is_reproducible_and_patience_stops_early(tmp_path):
    src = fer_csv(tmp_path / "fer.csv", n=(30, 9, 0))
    kw = {**FAST, "epochs": 8, "lr": 1e-9, "patience": 2}
    a = train_face_cnn(src, tmp_path / "a.pt", classes=list("abc"), **kw)
    b = train_face_cnn(src, tmp_path / "b.pt", classes=list("abc"), **kw)
    assert a["history"] == b["history"] and a["test_accuracy"] is None
    # lr 1e-9: the validation accuracy never improves after epoch 1
    assert a["best_epoch"] == 1 and a["epochs"] == 3


def ferplus_csv(path, rows):
    head = "Usage,Image name," + ",".join(FERPLUS_CLASSES) + ",unknown,NF"
    path.write_text("\n".join([head] + [",".join(map(str, r)) for r in rows]) + "\n")
    return path


def test_ferplus_majority_labels(tmp_path):
    rows = [
        ["Training", "fer0.png", 0, 0, 0, 0, 8, 1, 1, 0, 0, 0],   # anger
        ["Training", "fer1.png", 5, 5, 0, 0, 0, 0, 0, 0, 0, 0],   # tie: dropped
        ["Training", "fer2.png", 2, 0, 0, 0, 0, 0, 0, 0, 6, 2],   # unknown wins: dropped
        ["Training", "fer3.png", 0, 3, 0, 0, 0, 0, 0, 0, 0, 7],   # not a face: dropped
        ["Training", "", 0, 10, 0, 0, 0, 0, 0, 0, 0, 0],          # removed by FER+: dropped
        ["Training", "fer5.png", 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],   # no vote: dropped
        ["PublicTest", "fer6.png", 1, 0, 0, 0, 0, 0, 0, 9, 0, 0],  # contempt
    ]
    path = ferplus_csv(tmp_path / "fer2013new.csv", rows)
    assert ferplus_labels(path, 7).tolist() == [4, -1, -1, -1, -1, -1, 7]
    with pytest.raises(BadInputError, match="7 label rows for 8 FER2013 rows"):
        ferplus_labels(path, 8)
    src = fer_csv(tmp_path / "fer.csv", n=(6, 1, 0))
    data = read_fer_csv(src, ferplus=path)
    assert data.classes == list(FERPLUS_CLASSES) and data.dropped == 5
    assert data.counts() == {"train": 1, "val": 1}
    assert data.splits["train"][1].tolist() == [4] and data.splits["val"][1].tolist() == [7]
    assert data.splits["train"][0].shape == (1, 64, 64)
    with pytest.raises(BadInputError, match="--classes does not apply"):
        read_fer_csv(src, ferplus=path, classes=["a"])
    bad = tmp_path / "bad.csv"
    bad.write_text("Usage,Image name,neutral\nTraining,x,1\n")
    with pytest.raises(BadInputError, match="not a FER\\+ label file"):
        ferplus_labels(bad, 1)


def image_folders(root, classes=("calm", "joy"), n=(12, 4, 4), seed=0):
    rng = np.random.default_rng(seed)
    for split, count in zip(("train", "val", "test"), n):
        for y, name in enumerate(classes):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.fromarray(planted(y, 40, rng)).convert("RGB").save(
                    root / split / name / f"{i}.png")
    return root


def test_training_from_image_folders(tmp_path):
    root = image_folders(tmp_path / "imgs")
    data = read_face_data(root)
    assert data.classes == ["calm", "joy"] and data.counts() == {"train": 24, "val": 8,
                                                                 "test": 8}
    assert data.splits["train"][0].shape == (24, 64, 64)
    swapped = read_face_data(root, classes=["joy", "calm"])
    (xs, ys), (xd, yd) = swapped.splits["train"], data.splits["train"]
    assert np.array_equal(xs[ys == 1], xd[yd == 0])  # "calm" is now class 1
    s = train_face_cnn(root, tmp_path / "cnn.pt", **{**FAST, "epochs": 2})
    assert s["classes"] == ["calm", "joy"] and load_face_cnn(tmp_path / "cnn.pt").classes == [
        "calm", "joy"]
    with pytest.raises(BadInputError, match=r"class folder\(s\) \['joy'\] not among"):
        read_face_data(root, classes=["calm"])
    (root / "train" / "joy" / "broken.png").write_bytes(b"nope")
    with pytest.raises(BadInputError, match="broken.png: unreadable image"):
        read_face_data(root)


def test_augment_flips_and_shifts_each_crop():
    x = torch.arange(2 * 16 * 16, dtype=torch.float32).reshape(2, 1, 16, 16)
    a = augment(x, torch.Generator().manual_seed(0))
    assert torch.equal(a, augment(x, torch.Generator().manual_seed(0)))
    assert a.shape == x.shape and not torch.equal(a, x)
    padded = {f: F.pad(x.flip(-1) if f else x, (1, 1, 1, 1), mode="replicate") for f in (0, 1)}
    for i in range(2):  # each crop is its (maybe flipped) original shifted by <= 1 pixel
        assert any(torch.equal(a[i], padded[f][i, :, dy:dy + 16, dx:dx + 16])
                   for f in (0, 1) for dy in range(3) for dx in range(3))


def _mutate_csv(path, line, new):
    lines = path.read_text().splitlines()
    lines[line] = new
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("edit, match", [
    (lambda p: p.write_text("label,image\n1,2 3\n"), "not a FER2013 CSV"),
    (lambda p: _mutate_csv(p, 2, "1,1 2 3,Training"), r"line 3: 3 pixels, not a square"),
    (lambda p: _mutate_csv(p, 2, "1," + " ".join(["300"] * 2304) + ",Training"),
     r"line 3: pixel values must be 0\.\.255"),
    (lambda p: _mutate_csv(p, 2, "1," + " ".join(["3"] * 2304) + ",Holdout"),
     r"line 3: Usage 'Holdout'"),
    (lambda p: _mutate_csv(p, 2, "x," + " ".join(["3"] * 2304) + ",Training"),
     r"line 3: unreadable row"),
    (lambda p: _mutate_csv(p, 2, "9," + " ".join(["3"] * 2304) + ",Training"),
     r"line 3: emotion 9 is not a class index 0\.\.6"),
    (lambda p: p.write_text(p.read_text().replace("PublicTest", "PrivateTest")),
     "no val faces"),
    (lambda p: p.write_text("emotion,pixels,Usage\n"), "holds no face rows"),
])
def test_bad_training_input_is_named(tmp_path, edit, match):
    src = fer_csv(tmp_path / "fer.csv", n=(6, 2, 2))
    edit(src)
    with pytest.raises(BadInputError, match=match) as err:
        train_face_cnn(src, tmp_path / "cnn.pt", **FAST)
    assert "fer.csv" in str(err.value)
    assert not (tmp_path / "cnn.pt").exists()


def test_training_refusals(tmp_path):
    src = fer_csv(tmp_path / "fer.csv", n=(6, 2, 0))
    (tmp_path / "cnn.pt").write_text("keep me")
    with pytest.raises(OutputExistsError, match="already exists"):
        train_face_cnn(src, tmp_path / "cnn.pt", **FAST)
    assert (tmp_path / "cnn.pt").read_text() == "keep me"
    with pytest.raises(BadInputError, match="needs train/<class>/ and val/<class>/"):
        train_face_cnn(tmp_path, tmp_path / "x.pt", **FAST)
    with pytest.raises(BadInputError, match="no such file or folder"):
        train_face_cnn(tmp_path / "none.csv", tmp_path / "x.pt", **FAST)
    with pytest.raises(FaceTrainError, match="training diverged"):
        train_face_cnn(src, tmp_path / "x.pt", **{**FAST, "lr": 1e30, "epochs": 3})
    assert not (tmp_path / "x.pt").exists()


def test_train_face_cnn_through_the_cli(tmp_path):
    src = fer_csv(tmp_path / "fer.csv", n=(24, 6, 6))
    res = CliRunner().invoke(main, ["train", "face-cnn", str(src), str(tmp_path / "cnn.pt"),
                                    "--classes", "top,left,centre", "--blocks", "1,1,1",
                                    "--epochs", "2", "--batch-size", "8", "--device", "cpu",
                                    "--no-augment"])
    assert res.exit_code == 0, res.output
    assert "epoch 2/2" in res.output and "best validation accuracy" in res.output
    m = load_face_cnn(tmp_path / "cnn.pt")
    assert m.config["blocks"] == [1, 1, 1] and m.classes == ["top", "left", "centre"]
    again = CliRunner().invoke(main, ["train", "face-cnn", str(src), str(tmp_path / "cnn.pt")])
    assert again.exit_code == 1 and again.output.startswith("Error: ") and "--force" in again.output
