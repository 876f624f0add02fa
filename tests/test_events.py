"""TensorBoard event files of pre-training, fine-tuning and face CNN training, read back with
TensorBoard's own reader: the tags and steps of metrics.jsonl, a resumed run without
duplicated steps, and metrics.jsonl alone where tensorboard is missing."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from conftest import pretrain_config
from memotrain.events import EventLog, scalars
from memotrain.recipes.face_cnn import events_dir, train_face_cnn
from memotrain.recipes.finetune import finetune
from memotrain.recipes.pretrain import pretrain
from memotrain.results import Console

pytest.importorskip("tensorboard", reason="the report extra (tensorboard) is not installed")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def curves(folder) -> dict[str, list[tuple[int, float]]]:
    """Every scalar curve of the event files in ``folder``: tag -> [(step, value)]."""
    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def records(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_scalars_flatten_a_record_by_its_paths():
    rec = {"step": 4, "loss": 1.5, "tasks": {"mlm": 2.0, "itm": None}, "best": True,
           "val": {"mrfr": {"mse": 0.5, "targets": 12}, "recall": [0.1, 0.2]}}
    assert scalars(rec) == {"loss": 1.5, "tasks/mlm": 2.0, "best": 1.0, "val/mrfr/mse": 0.5,
                            "val/mrfr/targets": 12.0}


def test_a_restarted_writer_sorts_after_the_files_it_purges(tmp_path):
    """TensorBoard applies a restart mark to the files read before it, in name order: the new
    file must sort last even when an older one was created in the same second."""
    import time

    old = tmp_path / f"events.out.tfevents.{int(time.time())}.zzzz.1.0"  # sorts after ours
    old.write_bytes(b"")
    log = EventLog(tmp_path, purge_step=1)
    log.add({"step": 1, "loss": 1.0})
    log.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len(names) == 2 and names[0] == old.name


def test_pretrain_events_hold_every_scalar_of_metrics_jsonl(pretrain_corpus, tmp_path):
    out = tmp_path / "run"
    pretrain(pretrain_config(pretrain_corpus, out))
    got = curves(out)
    want: dict = {}
    for rec in records(out / "metrics.jsonl"):
        for tag, value in scalars(rec).items():
            want.setdefault(tag, []).append((rec["step"], pytest.approx(value, rel=1e-6)))
    assert {"loss", "lr", "grad_norm", "skipped", "val/mlm/loss", "val/itm/acc",
            "val/mrfr/mse"} <= set(got)
    assert any(t.startswith("tasks/") for t in got)
    assert got == want
    assert [s for s, _ in got["loss"]] == [1, 2, 3, 4, 5, 6]
    assert [s for s, _ in got["val/mlm/loss"]] == [3, 6]


def test_a_resumed_pretraining_continues_the_curves_without_duplicates(pretrain_corpus,
                                                                      tmp_path):
    whole = tmp_path / "whole"
    pretrain(pretrain_config(pretrain_corpus, whole))
    out = tmp_path / "run"
    pretrain(pretrain_config(pretrain_corpus, out), stop_after=3)
    # what a run killed after its state at step 3 logged: steps 4 and 5, later re-run
    killed = EventLog(out)
    for step in (4, 5):
        killed.add({"step": step, "loss": 99.0, "val": {"mlm": {"loss": 99.0}}})
    killed.close()
    pretrain(pretrain_config(pretrain_corpus, out), resume=True)
    got, ref = curves(out), curves(whole)
    assert [s for s, _ in got["loss"]] == [1, 2, 3, 4, 5, 6]
    assert set(got) == set(ref)
    for tag in ref:
        if tag != "examples_per_s":  # wall clock
            assert [s for s, _ in got[tag]] == [s for s, _ in ref[tag]], tag
            assert [v for _, v in got[tag]] == pytest.approx([v for _, v in ref[tag]],
                                                              rel=1e-5), tag


def test_finetune_events_per_run(emotion_dataset, tmp_path_factory):
    txt, face = emotion_dataset["txt"], emotion_dataset["face"]
    out = tmp_path_factory.mktemp("ft") / "run"
    finetune({"model": "tiny", "head": "emocls", "folds": [1], "seeds": [0], "epochs": 2,
              "log_every": 1, "optim": {"lr": 2e-3},
              "data": {"train": f"{txt}/fold{{fold}}/train", "val": f"{txt}/fold{{fold}}/val",
                       "test": f"{txt}/fold{{fold}}/test", "img_db": str(face),
                       "batch_size": 8, "max_text_len": 20},
              "output_dir": str(out)}, console=Console(enabled=False))
    run = out / "fold1" / "seed0"
    got = curves(run)
    recs = records(run / "metrics.jsonl")
    train_steps = [r["step"] for r in recs if "loss" in r]
    val_steps = [r["step"] for r in recs if "val" in r]
    assert [s for s, _ in got["loss"]] == train_steps and len(train_steps) > 2
    assert [s for s, _ in got["val/UA"]] == val_steps
    assert {"lr", "epoch", "val/WA", "val/WF1", "best", "selected/val/UA",
            "selected/test/UA"} <= set(got)
    (selected,) = [r for r in recs if "selected" in r]
    assert got["selected/test/UA"] == [(selected["step"],
                                        pytest.approx(selected["selected"]["test"]["UA"]))]


def test_face_cnn_events_per_epoch(tmp_path):
    rng = np.random.default_rng(0)
    lines = ["emotion,pixels,Usage"] + [
        f"{i % 2},{' '.join(map(str, rng.integers(0, 256, 16 * 16)))},{usage}"
        for usage, n in (("Training", 16), ("PublicTest", 6), ("PrivateTest", 6))
        for i in range(n)]
    (tmp_path / "fer.csv").write_text("\n".join(lines) + "\n")
    kw = dict(classes=["a", "b"], image_size=16, epochs=3, batch_size=8, device="cpu",
              model_args={"growth": 4, "blocks": [1, 1, 1], "init_features": 8})
    s = train_face_cnn(tmp_path / "fer.csv", tmp_path / "cnn.pt", **kw)
    got = curves(events_dir(tmp_path / "cnn.pt"))
    assert events_dir(tmp_path / "cnn.pt") == tmp_path / "cnn.tb"
    for key in ("loss", "train_accuracy", "val_accuracy", "lr"):
        assert got[key] == [(h["epoch"], pytest.approx(h[key])) for h in s["history"]]
    assert got["test_accuracy"] == [(s["best_epoch"], pytest.approx(s["test_accuracy"]))]
    # --force: the re-run's curves replace the first run's (no duplicated epochs)
    train_face_cnn(tmp_path / "fer.csv", tmp_path / "cnn.pt", overwrite=True,
                   **{**kw, "epochs": 2})
    assert [s for s, _ in curves(tmp_path / "cnn.tb")["loss"]] == [1, 2]


def test_without_tensorboard_one_notice_and_metrics_jsonl(pretrain_corpus, tmp_path,
                                                          monkeypatch, caplog):
    import memotrain.events as ev

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    monkeypatch.setattr(ev, "_told", False)
    out = tmp_path / "run"
    pretrain(pretrain_config(pretrain_corpus, out, steps=2, val_every=0, save_every=0))
    EventLog(tmp_path / "other").add({"step": 1, "loss": 1.0})
    notices = [r for r in caplog.records if "tensorboard is not installed" in r.message]
    assert len(notices) == 1
    assert [r["step"] for r in records(out / "metrics.jsonl")] == [1, 2]
    assert not list(out.glob("events.out.tfevents.*"))
    assert not (tmp_path / "other").exists()
