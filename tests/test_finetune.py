"""Fine-tuning on a planted-signal corpus built in code: learning, honest model selection (the
test split is opened only after it), folds x seeds tables, the prompt head, modality removal,
config refusals and the CLI."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from memo.cli import main
from memodb.dataset.build import build_dataset
from memodb.synth import make_emotion_corpus
from memotrain.classifier import Batcher, Classifier, FinetuneError, Prompt
from memotrain.config import preset
from memotrain.data import MemoDataset, collate
from memotrain.finetuneconfig import load_finetune_config
from memotrain.model import MemoBert
from memotrain.recipes import finetune as ft
from memotrain.recipes.finetune import finetune
from memotrain.results import Console
from memotrain.trainconfig import TrainConfigError

QUIET = Console(enabled=False)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def emo(tmp_path_factory):
    """Two folds (sessions) x 80 labelled segments in 4 classes, labels planted in the faces
    and the text, built into a dataset folder by ``memo db build``."""
    root = tmp_path_factory.mktemp("emo")
    info = make_emotion_corpus(root / "corpus", folds=2, per_fold=80, faces=8, seed=0)
    cfg = {"name": "emo", "features": {"face": {"source": "corpus/h5", "conf_th": 0.5,
                                                "max_bb": 16}},
           "text": {"sources": {"train": "corpus/refs/{fold}/trn.json",
                                "val": "corpus/refs/{fold}/val.json",
                                "test": "corpus/refs/{fold}/tst.json"},
                    "folds": [1, 2], "labels": info["labels"], "faces_from": "face",
                    "min_faces": 0}}
    (root / "emo.json").write_text(json.dumps(cfg))
    res = build_dataset(root / "emo.json", root / "ds", workers=1)
    assert res.report.ok
    face = next(s.path for s in res.steps if s.name == "face")
    return {"root": root, "face": str(face), "txt": str(root / "ds" / "txt"),
            "labels": info["labels"]}


def config(emo, out, **changes) -> dict:
    cfg = {"model": "tiny", "head": "emocls",
           "data": {"train": emo["txt"] + "/fold{fold}/train",
                    "val": emo["txt"] + "/fold{fold}/val",
                    "test": emo["txt"] + "/fold{fold}/test",
                    "img_db": emo["face"], "batch_size": 8, "max_text_len": 20},
           "folds": [1], "seeds": [0], "epochs": 2, "log_every": 0,
           "optim": {"lr": 2e-3, "warmup_ratio": 0.05},
           "select": {"patience": 6}, "output_dir": str(out)}
    for k, v in changes.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k] = {**cfg[k], **v}
        else:
            cfg[k] = v
    return cfg


@pytest.fixture(scope="module")
def trained(emo, tmp_path_factory):
    """One fold, emocls, 15 epochs: the planted labels are learnt."""
    out = tmp_path_factory.mktemp("ft") / "run"
    return out, finetune(config(emo, out, epochs=15, eval_modalities=[["text"], ["faces"]]),
                         console=QUIET)


def test_planted_signal_is_learnt_far_above_chance(trained):
    out, s = trained
    (run,) = s["runs"]
    assert run["report"] == "test"
    assert run["splits"]["test"]["UA"] >= 0.75  # chance: 0.25
    assert run["splits"]["val"]["UA"] >= 0.75
    # the faces alone carry the signal too; the result table has the ablations
    assert s["summary"]["ablations"]["faces"]["mean"]["UA"] >= 0.75
    assert set(s["summary"]["ablations"]) == {"text", "faces"}
    d = out / "fold1" / "seed0"
    for name in ("best.pt", "result.json", "metrics.jsonl", "predictions_test.tsv",
                 "predictions_val.tsv"):
        assert (d / name).exists(), name
    assert (out / "results.tsv").exists() and (out / "results.json").exists()


def test_selected_step_is_the_best_validation_and_best_pt_reproduces_it(trained, emo):
    out, s = trained
    (run,) = s["runs"]
    d = out / "fold1" / "seed0"
    vals = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    vals = [r for r in vals if "val" in r]
    ua = [r["val"]["UA"] for r in vals]
    best = max(ua)
    assert run["step"] == vals[ua.index(best)]["step"]  # the FIRST best
    assert run["splits"]["val"]["UA"] == pytest.approx(best)
    # the kept checkpoint predicts what the predictions file says
    clf, info = ft.load_classifier(d / "best.pt")
    assert info["step"] == run["step"] and info["labels"] == emo["labels"]
    rows = [line.split("\t") for line in (d / "predictions_test.tsv").read_text().splitlines()[1:]]
    ds = MemoDataset(emo["txt"] + "/fold1/test", emo["face"], max_text_len=20, max_faces=16)
    clf.eval()
    with torch.no_grad():
        batch = Batcher(["text", "faces"])([ds[i] for i in range(len(ds))])
        pred = clf(batch).argmax(-1).tolist()
    by_id = dict(zip(batch["ids"], pred))
    assert {i: emo["labels"].index(p) for i, _, p in rows} == by_id


def test_model_selection_never_reads_test(emo, tmp_path, monkeypatch):
    """The test db is opened only after the last validation of the training loop."""
    events = []

    class Recording(MemoDataset):
        def __init__(self, txt_db, *a, **k):
            events.append(("open", str(txt_db).rsplit("/", 1)[-1]))
            super().__init__(txt_db, *a, **k)

    real_eval = ft.evaluate

    def evaluate(clf, ds, *a, **k):
        events.append(("eval", str(ds.txt_path).rsplit("/", 1)[-1], bool(k.get("keep"))))
        return real_eval(clf, ds, *a, **k)

    real_load = ft.load_classifier

    def load_classifier(*a, **k):
        events.append(("selected",))
        return real_load(*a, **k)

    monkeypatch.setattr(ft, "MemoDataset", Recording)
    monkeypatch.setattr(ft, "evaluate", evaluate)
    monkeypatch.setattr(ft, "load_classifier", load_classifier)
    finetune(config(emo, tmp_path / "run", epochs=2), console=QUIET)
    selected = events.index(("selected",))
    assert ("open", "test") in events
    assert events.index(("open", "test")) > selected
    assert all(e[1] == "val" for e in events[:selected] if e[0] == "eval")
    assert sum(1 for e in events[:selected] if e[0] == "eval") >= 2


def test_validation_equal_to_test_is_refused(emo, tmp_path):
    cfg = config(emo, tmp_path / "a")
    cfg["data"]["val"] = cfg["data"]["test"]
    with pytest.raises(TrainConfigError, match="never read the test split"):
        load_finetune_config(cfg)
    # a copy of the test db under another name: the same content checksum
    copy = tmp_path / "copy_of_test"
    shutil.copytree(emo["txt"] + "/fold1/test", copy)
    cfg = config(emo, tmp_path / "b")
    cfg["data"]["val"] = str(copy)
    with pytest.raises(FinetuneError, match="same texts"):
        finetune(cfg, console=QUIET)


def test_folds_and_seeds_table_and_rerun_reuses_finished_runs(emo, tmp_path):
    out = tmp_path / "grid"
    cfg = config(emo, out, folds=[1, 2], seeds=[0, 1], epochs=1)
    s = finetune(cfg, console=QUIET)
    runs = s["runs"]
    assert [(r["fold"], r["seed"]) for r in runs] == [(1, 0), (1, 1), (2, 0), (2, 1)]
    ua = np.array([r["splits"]["test"]["UA"] for r in runs])
    assert s["summary"]["mean"]["UA"] == pytest.approx(ua.mean())
    assert s["summary"]["std"]["UA"] == pytest.approx(ua.std(ddof=1))
    assert [f["fold"] for f in s["summary"]["folds"]] == [1, 2]
    assert s["summary"]["folds"][0]["mean"]["UA"] == pytest.approx(ua[:2].mean())
    tsv = (out / "results.tsv").read_text().splitlines()
    assert tsv[0].split("\t")[:8] == ["fold", "seed", "split", "step", "WA", "UA", "WF1", "F1"]
    assert tsv[0].split("\t")[8:] == [f"recall_{n}" for n in emo["labels"]]
    assert len(tsv) == 1 + 4 + 2 + 2  # runs, per-fold means, mean, std
    assert tsv[-2].startswith("all\tmean") and tsv[-1].startswith("all\tstd")
    # a re-run reuses every finished run; a removed one is run again, identically
    marker = out / "fold2" / "seed1" / "result.json"
    before = {p: p.stat().st_mtime_ns for p in out.glob("fold*/seed*/result.json")}
    redo = json.loads(marker.read_text())
    marker.unlink()
    s2 = finetune(cfg, console=QUIET)
    after = {p: p.stat().st_mtime_ns for p in out.glob("fold*/seed*/result.json")}
    assert all(after[p] == before[p] for p in before if p != marker)
    assert json.loads(marker.read_text()) == redo  # same seed, same result
    assert s2["summary"] == s["summary"]


def test_output_dir_of_another_config_is_refused(emo, tmp_path):
    out = tmp_path / "run"
    finetune(config(emo, out, epochs=1), console=QUIET)
    with pytest.raises(FinetuneError, match="another config.*optim.lr"):
        finetune(config(emo, out, epochs=1, optim={"lr": 1e-4}), console=QUIET)
    # more seeds in the same folder is fine
    s = finetune(config(emo, out, epochs=1, seeds=[0, 1]), console=QUIET)
    assert len(s["runs"]) == 2


def test_prompt_head_learns_and_predicts_only_label_words(emo, tmp_path):
    s = finetune(config(emo, tmp_path / "p", head="prompt", epochs=15), console=QUIET)
    assert s["runs"][0]["splits"]["test"]["UA"] >= 0.75


def test_prompt_scores_are_the_mlm_logits_of_the_label_words(emo):
    txt = emo["txt"] + "/fold1/train"
    prompt = Prompt("{text} i am [MASK] .", emo["labels"], txt)
    assert len(prompt) == 4 and prompt.after[2] == 103  # i am [MASK] .
    torch.manual_seed(0)
    model = MemoBert(preset("tiny"))
    clf = Classifier(model, "prompt", 4, prompt.label_ids).eval()
    ds = MemoDataset(txt, emo["face"], max_text_len=20, max_faces=16)
    items = [ds[i] for i in range(6)]
    batch = Batcher(["text", "faces"], prompt)(items)
    for b, it in enumerate(items):  # [CLS] text i am [MASK] . [SEP]
        n = len(it["input_ids"])
        row = batch["input_ids"][b, :n + 4].tolist()
        assert row[:n - 1] == it["input_ids"][:-1].tolist()
        assert row[n - 1:n + 4] == [*prompt.after, 102]
        assert batch["prompt_pos"][b] == n + 1 and row[n + 1] == 103
        assert batch["word_ids"][b, n - 1:n + 3].tolist() == list(
            range(it["word_ids"].max() + 1, it["word_ids"].max() + 5))
    with torch.no_grad():
        scores = clf(batch)
        out = model(batch["input_ids"], batch["text_lens"], batch["faces"], batch["face_lens"])
        full = model.mlm(out.hidden[torch.arange(6), batch["prompt_pos"]])
    assert scores.shape == (6, 4)
    torch.testing.assert_close(scores, full[:, prompt.label_ids])
    # an untrained model's favourite word is not a label word: the restriction matters
    assert not set(full.argmax(-1).tolist()) <= set(prompt.label_ids)


def test_prompt_label_words_must_be_single_tokens(emo):
    with pytest.raises(FinetuneError, match="'elated' is 2 word pieces \\(el ##ated\\)"):
        Prompt("{text} i am [MASK] .", ["anger", "elated", "neutral", "sad"],
               emo["txt"] + "/fold1/train")


def test_batcher_removes_modalities(emo):
    ds = MemoDataset(emo["txt"] + "/fold1/val", emo["face"], max_text_len=20, max_faces=16)
    items = [ds[i] for i in range(3)]
    no_faces = Batcher(["text"])(items)
    assert "faces" not in no_faces and "face_lens" not in no_faces
    no_text = Batcher(["faces"])(items)
    assert no_text["input_ids"].tolist() == [[101, 102]] * 3
    assert no_text["faces"].shape[0] == 3
    full = collate(items)
    assert torch.equal(Batcher(["text", "faces"])(items)["input_ids"], full["input_ids"])
    assert list(Batcher(["faces"]).lengths(ds)) == list(2 + ds.face_lens)


def test_balanced_class_weights():
    w = ft._class_weights("balanced", np.array([0, 0, 0, 1, 2, 2]), 4, "cpu")
    assert w.tolist() == pytest.approx([6 / 12, 6 / 4, 6 / 8, 0.0])
    with pytest.raises(TrainConfigError, match="3 weights for 4 classes"):
        ft._class_weights([1, 1, 1], np.array([0]), 4, "cpu")


@pytest.mark.parametrize("change, match", [
    ({"head": "mlp"}, "head 'mlp'"),
    ({"folds": None}, "placeholder but folds is null"),
    ({"data": {"test": ["a", "b", "c"]}}, "3 paths for 1 folds"),
    ({"modalities": ["text"], "eval_modalities": [["faces"]]}, "not among the modalities"),
    ({"select": {"metric": "acc"}}, "select.metric 'acc'"),
    ({"class_weights": "inverse"}, "class_weights"),
    ({"head": "prompt", "prompt": {"template": "i am ."}}, r"\[MASK\] exactly once"),
    ({"seeds": [1, 1]}, "repeat a seed"),
    ({"init_checkpoint": "x.pt"}, "exactly one"),
    ({"optim": {"betas": [1.5, 0.9]}}, r"optim.betas must be in \[0, 1\)"),
    ({"optim": {"weight_decay": -1}}, "optim.weight_decay must be >= 0"),
])
def test_config_errors(emo, tmp_path, change, match):
    with pytest.raises(TrainConfigError, match=match):
        load_finetune_config(config(emo, tmp_path / "x", **change))


def test_unlabelled_text_db_is_refused(tmp_path, emo):
    from memodb.synth import make_captions
    from memodb.text.txtdb import create_txtdb
    caps = tmp_path / "caps.json"
    make_captions([f"Ses01_{i}" for i in range(1, 30)], caps)
    create_txtdb(caps, tmp_path / "txt", img_db=emo["face"], splits=["val=5", "test=5"],
                 workers=1)
    cfg = config(emo, tmp_path / "run", folds=None)
    cfg["data"].update(train=str(tmp_path / "txt/train"), val=str(tmp_path / "txt/val"),
                       test=str(tmp_path / "txt/test"))
    with pytest.raises(FinetuneError, match="has no labels"):
        finetune(cfg, console=QUIET)


def test_evaluation_examples_are_never_dropped(emo, tmp_path):
    cfg = config(emo, tmp_path / "run")
    cfg["data"]["max_text_len"] = 5
    with pytest.raises(FinetuneError, match="val examples would be dropped.*max_text_len"):
        finetune(cfg, console=QUIET)


def test_cli_finetune(emo, tmp_path):
    cfg = config(emo, tmp_path / "cli", epochs=1, folds=[1, 2])
    path = tmp_path / "ft.json"
    path.write_text(json.dumps(cfg))
    r = CliRunner().invoke(main, ["train", "finetune", "--config", str(path), "--folds", "2",
                                  "--seeds", "3-4", "--optim.lr", "1e-3"])
    assert r.exit_code == 0, r.output
    assert "2 run(s) (1 fold x 2 seeds), test split, selected on val UA" in r.output
    assert "(95 % CI, 1 fold x 2 seeds, no protocol recorded)" in r.output
    assert sorted(p.parent.name + "/" + p.name for p in (tmp_path / "cli").glob("fold*/*")) \
        == ["fold2/seed3", "fold2/seed4"]
    saved = json.loads((tmp_path / "cli" / "config.json").read_text())
    assert saved["optim"]["lr"] == 1e-3 and saved["seeds"] == [3, 4]
    bad = CliRunner().invoke(main, ["train", "finetune", "--config", str(path), "--head", "x"])
    assert bad.exit_code == 1 and "Error: head 'x'" in bad.output


def test_protocol_dataset_carries_its_hash_into_every_result(tmp_path):
    from memodb.synth import make_utterances
    from memotrain.results import report_line

    make_utterances("meld", tmp_path / "meld.jsonl", per_speaker=6)
    (tmp_path / "meld.json").write_text(json.dumps(
        {"text": {"source": "meld.jsonl", "protocol": "meld"}}))
    ds = build_dataset(tmp_path / "meld.json", tmp_path / "ds", workers=1)
    assert ds.report.ok
    txt = str(tmp_path / "ds" / "txt" / "fold{fold}")
    cfg = {"model": "tiny", "data": {"train": txt + "/train", "val": txt + "/val",
                                     "test": txt + "/test", "batch_size": 4},
           "folds": [1], "seeds": [0, 1], "epochs": 1, "log_every": 0,
           "select": {"metric": "WF1"}, "output_dir": str(tmp_path / "run")}
    s = finetune(cfg, console=QUIET)
    digest = ds.protocol["hash"]
    assert [r["protocol"]["hash"] for r in s["runs"]] == [digest, digest]
    assert s["summary"]["protocol"]["name"] == "meld"
    assert s["summary"]["selection_metric"] == "WF1" and s["summary"]["labels"][0] == "neutral"
    assert report_line(s["summary"], "WF1").endswith(f"(95 % CI, 1 fold x 2 seeds, "
                                                     f"meld@{digest})")
    # the dataset rebuilt under another label map: the finished runs are not reused
    (tmp_path / "meld.json").write_text(json.dumps(
        {"text": {"source": "meld.jsonl", "protocol": "meld", "label_map": {
            "neutral": "neutral", "joy": "positive", "surprise": "positive",
            "anger": "negative", "sadness": "negative", "disgust": "negative",
            "fear": "negative"}}}))
    again = build_dataset(tmp_path / "meld.json", tmp_path / "ds", workers=1)
    assert again.protocol["hash"] != digest
    with pytest.raises(FinetuneError, match=f"was run under meld@{digest}, but its text "
                                            f"databases are now under meld@"):
        finetune(cfg, console=QUIET)
