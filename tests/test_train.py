"""The pre-training loop on CPU with a tiny corpus built in code: recorded (golden) losses,
exact resume, config errors, AdamW groups, the LR schedule, non-finite steps, the CLI and a
2-process DDP run (gloo)."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from conftest import pretrain_config as config
from memo.cli import main
from memotrain.checkpoint import load_model
from memotrain.config import preset
from memotrain.engine import NonFiniteError, TrainError, lr_at, param_groups
from memotrain.model import MemoBert
from memotrain.recipes.pretrain import pretrain
from memotrain.sampler import BatchLimitError
from memotrain.tasks import Pretrainer
from memotrain.trainconfig import TrainConfigError, check_model, load_train_config, parse_overrides

# 6 updates of mlm 2 : mrfr 1 : itm 1, tiny model, seed 0, lr 1e-3, warmup 2, batch 4 (CPU fp32)
GOLDEN = [(1, "mrfr", 1.03952956199646), (2, "itm", 0.6939603686332703),
          (3, "mrfr", 0.9958205819129944), (4, "mlm", 10.305152893066406),
          (5, "itm", 0.6922951936721802), (6, "itm", 0.6926456093788147)]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def corpus(pretrain_corpus):
    return pretrain_corpus


@pytest.fixture(scope="module")
def golden_run(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("golden") / "run"
    return out, pretrain(config(corpus, out))


def test_golden_losses(golden_run):
    out, s = golden_run
    assert s["steps"] == 6 and s["skipped"] == 0 and s["precision"] == "fp32"
    assert all(math.isfinite(loss) for _, _, loss in s["losses"])
    assert [(st, t) for st, t, _ in s["losses"]] == [(st, t) for st, t, _ in GOLDEN]
    for (_, _, got), (_, _, want) in zip(s["losses"], GOLDEN):
        assert got == pytest.approx(want, abs=1e-4)
    # the run folder: resolved config, metrics, checkpoints, the latest pointer
    assert json.loads((out / "config.json").read_text())["optim"]["betas"] == [0.9, 0.98]
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if "loss" in r] == [1, 2, 3, 4, 5, 6]
    val = [r["val"] for r in recs if "val" in r]
    assert len(val) == 2 and set(val[0]) == {"mlm", "mrfr", "itm"}
    assert "acc" in val[0]["mlm"] and "mse" in val[0]["mrfr"] and "acc" in val[0]["itm"]
    assert (out / "ckpt" / "latest").read_text().strip() == "6"
    model = load_model(out / "ckpt" / "model_step_6.pt")  # the checkpoint alone rebuilds it
    assert model.config == preset("tiny")


def test_same_config_gives_the_same_losses(golden_run, corpus, tmp_path):
    _, s = golden_run
    again = pretrain(config(corpus, tmp_path / "again", val_every=0, save_every=0))
    assert again["losses"] == s["losses"]


def test_resume_repeats_the_uninterrupted_run(golden_run, corpus, tmp_path):
    _, full = golden_run
    out = tmp_path / "run"
    first = pretrain(config(corpus, out), stop_after=3)
    assert first["steps"] == 3 and first["losses"] == full["losses"][:3]
    # a torn state (killed while saving) is never picked: `latest` is written last
    (out / "ckpt" / "state_step_5.pt").write_bytes(b"torn")
    (out / "ckpt" / ".state_step_5.pt.tmp-1").write_bytes(b"torn")
    with open(out / "metrics.jsonl", "a") as f:  # what a killed run logged after the state
        f.write(json.dumps({"step": 4, "loss": 1.0}) + "\n")
    with pytest.raises(TrainError, match="--resume"):
        pretrain(config(corpus, out))
    rest = pretrain(config(corpus, out), resume=True)
    assert rest["losses"] == full["losses"][3:]
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text()
             .splitlines() if "loss" in json.loads(line)]
    assert steps == [1, 2, 3, 4, 5, 6]
    a = torch.load(out / "ckpt" / "model_step_6.pt", weights_only=True)["model"]
    b = torch.load(golden_run[0] / "ckpt" / "model_step_6.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def _metrics(run: Path) -> list:
    """metrics.jsonl without its one wall-clock field (examples_per_s)."""
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for r in recs:
        r.pop("examples_per_s", None)
    return recs


@pytest.mark.parametrize("stop", [3, 5])
def test_resumed_metrics_equal_the_uninterrupted_runs(corpus, tmp_path, stop):
    """save_every 3, log_every 2: the state saved mid-window holds the window's updates, so
    the resumed run's log lines average the same updates (issue 16, item 5)."""
    changes = dict(steps=7, log_every=2, save_every=3, val_every=3)
    whole = pretrain(config(corpus, tmp_path / "whole", **changes))
    out = tmp_path / "run"
    pretrain(config(corpus, out, **changes), stop_after=stop)
    assert [r["step"] for r in _metrics(out) if "loss" in r] == [2, 4][:stop // 2]
    rest = pretrain(config(corpus, out, **changes), resume=True)
    assert rest["losses"] == whole["losses"][stop:]  # stop_after saves a state at stop
    assert [r["step"] for r in _metrics(out) if "loss" in r] == [2, 4, 6, 7]
    assert _metrics(out) == _metrics(tmp_path / "whole")


def test_a_version_1_state_still_resumes(corpus, tmp_path):
    """States saved before the logging window was kept (version 1) resume; the window
    restarts at the resume point."""
    changes = dict(steps=5, log_every=2, save_every=3, val_every=0)
    out = tmp_path / "run"
    pretrain(config(corpus, out, **changes), stop_after=3)
    path = out / "ckpt" / "state_step_3.pt"
    state = torch.load(path, weights_only=False)
    assert state["version"] == 2 and len(state["log_window"]) == 1
    del state["log_window"]
    torch.save({**state, "version": 1}, path)
    whole = pretrain(config(corpus, tmp_path / "whole", **changes))
    rest = pretrain(config(corpus, out, **changes), resume=True)
    assert rest["losses"] == whole["losses"][3:]
    lines = {r["step"]: r for r in _metrics(out) if "loss" in r}
    assert sorted(lines) == [2, 4, 5]
    assert lines[4]["loss"] == whole["losses"][3][2]  # update 4 alone


def test_resume_with_another_config_is_refused(corpus, tmp_path):
    out = tmp_path / "run"
    pretrain(config(corpus, out, val_every=0), stop_after=3)
    changed = config(corpus, out, val_every=0)
    changed["optim"]["lr"] = 5e-4
    with pytest.raises(TrainError, match="optim.lr"):
        pretrain(changed, resume=True)
    longer = pretrain(config(corpus, out, val_every=0, steps=7), resume=True)  # may change
    assert longer["steps"] == 7


def test_resume_without_a_state_is_an_error(corpus, tmp_path):
    with pytest.raises(TrainError, match="no complete state"):
        pretrain(config(corpus, tmp_path / "none"), resume=True)


def test_grad_accum_and_max_tokens_run(corpus, tmp_path):
    cfg = config(corpus, tmp_path / "acc", steps=2, val_every=0, save_every=0)
    cfg["optim"]["grad_accum"] = 2
    cfg["data"].update(batch_size=None, max_tokens=80)
    s = pretrain(cfg)
    assert s["steps"] == 2 and all(math.isfinite(x) for _, _, x in s["losses"])


# ----------------------------------------------------------------------------- config errors

def test_unknown_keys_are_rejected_with_their_name(corpus, tmp_path):
    with pytest.raises(TrainConfigError, match="'optim.lrr'"):
        load_train_config(config(corpus, tmp_path), ["--optim.lrr", "1e-4"])
    with pytest.raises(TrainConfigError, match="'stepz'"):
        load_train_config({**config(corpus, tmp_path), "stepz": 3})
    with pytest.raises(TrainConfigError, match="'data.corpora.0.img'"):
        load_train_config(config(corpus, tmp_path), ["--data.corpora.0.img", "x"])


def test_values_are_type_checked(corpus, tmp_path):
    with pytest.raises(TrainConfigError, match="data.batch_size: expected int or null"):
        load_train_config(config(corpus, tmp_path), ["--data.batch_size", "eight"])
    with pytest.raises(TrainConfigError, match="optim.betas"):
        load_train_config(config(corpus, tmp_path), ["--optim.betas", "[0.9]"])
    with pytest.raises(TrainConfigError, match="steps: expected int"):
        load_train_config(config(corpus, tmp_path), ["--steps", "2.5"])
    with pytest.raises(TrainConfigError, match="unknown task 'mlmm'"):
        load_train_config(config(corpus, tmp_path), ['--data.corpora.0.tasks', '{"mlmm": 1}'])
    with pytest.raises(TrainConfigError, match="exactly one"):
        load_train_config(config(corpus, tmp_path), ["--init_checkpoint", "x.pt"])


def test_overrides_use_dotted_keys_and_json_values(corpus, tmp_path):
    assert parse_overrides(["--optim.lr", "1e-4", "--seed=3", "--model", "small"]) == \
        [("optim.lr", 1e-4), ("seed", 3), ("model", "small")]
    cfg = load_train_config(config(corpus, tmp_path),
                            ["--optim.lr", "1e-4", "--data.batch_size", "null",
                             "--data.max_tokens", "64", "--data.corpora.0.tasks.itm", "3",
                             "--optim.betas", "[0.8, 0.9]", "--precision", "fp32"])
    assert cfg.optim.lr == 1e-4 and cfg.optim.betas == (0.8, 0.9)
    assert cfg.data.batch_size is None and cfg.data.max_tokens == 64
    assert cfg.task_ratios() == {"mlm": 2.0, "mrfr": 1.0, "itm": 3.0}
    assert cfg.warmup == 2
    defaults = load_train_config({"model": "base", "data": {"corpora": [{"txt_db": "t"}]}})
    assert (defaults.optim.lr, defaults.optim.weight_decay, defaults.optim.grad_clip) == \
        (5e-5, 0.01, 5.0)
    assert defaults.warmup == 100 and defaults.precision == "auto"


def test_limits_that_do_not_fit_the_model_or_the_data(corpus, tmp_path):
    cfg = load_train_config(config(corpus, tmp_path, model={"preset": "tiny",
                                                            "max_text_positions": 16}))
    with pytest.raises(TrainConfigError, match="max_text_len 20 .* max_text_positions 16"):
        check_model(cfg, cfg.model_config())
    with pytest.raises(TrainConfigError, match="max_faces 100 > the model's max_face_posit"):
        pretrain(config(corpus, tmp_path / "a"), overrides=["--data.max_faces", "100"])
    with pytest.raises(TrainConfigError, match="batch_size .* must be >= 1"):
        load_train_config(config(corpus, tmp_path), ["--data.batch_size", "0"])
    with pytest.raises(TrainConfigError, match="give batch_size .* max_tokens"):
        load_train_config(config(corpus, tmp_path), ["--data.batch_size", "null"])
    with pytest.raises(BatchLimitError, match="max_tokens .* 8 is smaller than example"):
        pretrain(config(corpus, tmp_path / "b"), overrides=["--data.max_tokens", "8"])


# ----------------------------------------------------------------------------- optimisation

def test_adamw_groups_exclude_every_bias_and_norm_weight():
    model = MemoBert(preset("tiny"))
    pre = Pretrainer(model, ["mlm", "mrfr", "mrckl", "itm"], 103, (999, 30522))
    decay, no_decay = param_groups(pre, 0.01)
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    ids_decay = {id(p) for p in decay["params"]}
    ids_no = {id(p) for p in no_decay["params"]}
    assert not ids_decay & ids_no
    trainable = {id(p) for p in pre.parameters() if p.requires_grad}  # tied ones once
    assert ids_decay | ids_no == trainable
    assert len(decay["params"]) + len(no_decay["params"]) == len(trainable)
    norms = {id(p) for m in pre.modules() if isinstance(m, torch.nn.LayerNorm)
             for p in m.parameters()}
    biases = {id(p) for n, p in pre.named_parameters() if n.endswith("bias")}
    assert norms and norms <= ids_no and biases <= ids_no
    # norms not named "LayerNorm" (the original's bug) are found by their type
    assert id(model.face_embeddings.projection_norm.weight) in ids_no
    assert id(model.embeddings.word_embeddings.weight) in ids_decay


def test_lr_schedule_warms_up_then_decays_to_zero():
    assert lr_at(0, 1.0, 10, 100) == pytest.approx(0.1)
    assert lr_at(4, 1.0, 10, 100) == pytest.approx(0.5)
    assert lr_at(10, 1.0, 10, 100) == pytest.approx(1.0)
    assert lr_at(55, 1.0, 10, 100) == pytest.approx(0.5)
    assert lr_at(100, 1.0, 10, 100) == 0.0
    assert lr_at(0, 1.0, 0, 100) == 1.0
    values = [lr_at(s, 1.0, 10, 100) for s in range(101)]
    assert values.index(max(values)) == 9 and values[-1] == 0.0


def test_persistent_non_finite_losses_stop_the_run(corpus, tmp_path, monkeypatch):
    real = Pretrainer.forward

    def nan_forward(self, task, batch, gen):
        res = real(self, task, batch, gen)
        res.loss = res.loss * float("nan")
        return res

    monkeypatch.setattr(Pretrainer, "forward", nan_forward)
    with pytest.raises(NonFiniteError, match="3 updates in a row had a non-finite"):
        pretrain(config(corpus, tmp_path / "nan", max_nonfinite=3, save_every=0))


# ----------------------------------------------------------------------------- CLI, DDP

def test_cli_pretrains_two_steps(corpus, tmp_path):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(config(corpus, tmp_path / "cli")))
    res = CliRunner().invoke(main, ["train", "pretrain", "--config", str(cfg), "--steps", "2",
                                    "--val_every", "0", "--optim.warmup_steps", "1"])
    assert res.exit_code == 0, res.output
    assert "2 updates (0 skipped), last loss" in res.output
    assert (tmp_path / "cli" / "ckpt" / "model_step_2.pt").exists()
    res = CliRunner().invoke(main, ["train", "pretrain", "--config", str(cfg),
                                    "--optim.lrr", "1"])
    assert res.exit_code == 1 and "unknown config key 'optim.lrr'" in res.output


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None,
                    reason="torchrun not installed")
def test_ddp_two_processes_gloo(corpus, tmp_path):
    cfg = tmp_path / "cfg.json"
    out = tmp_path / "ddp"
    cfg.write_text(json.dumps(config(corpus, out, steps=3, val_every=2, save_every=2)))
    torchrun = str(Path(sys.executable).parent / "torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m",
                          "memo.cli", "train", "pretrain", "--config", str(cfg)],
                         check=False, capture_output=True, text=True, timeout=120,
                         env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "3 updates (0 skipped)" in res.stdout and res.stdout.count("updates (") == 1
    assert (out / "ckpt" / "latest").read_text().strip() == "3"
    assert (out / "ckpt" / "model_step_2.pt").exists()
    state = torch.load(out / "ckpt" / "state_step_3.pt", weights_only=False)
    assert all(s["world_size"] == 2 for s in state["samplers"].values())
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if "loss" in r] == [1, 2, 3]  # rank 0 only

    def losses(run_dir):
        return [(r["step"], sorted(r["tasks"]), r["loss"]) for r in map(
            json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in r]

    # resume under DDP to step 5 == an uninterrupted 5-step DDP run
    res = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m",
                          "memo.cli", "train", "pretrain", "--config", str(cfg), "--resume",
                          "--steps", "5"], check=False, capture_output=True, text=True,
                         timeout=120, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    whole = tmp_path / "whole"
    res = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m",
                          "memo.cli", "train", "pretrain", "--config", str(cfg), "--steps", "5",
                          "--output_dir", str(whole)], check=False, capture_output=True,
                         text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert [x[:2] for x in losses(out)] == [x[:2] for x in losses(whole)]
    for (_, _, a), (_, _, b) in zip(losses(out), losses(whole)):
        assert a == pytest.approx(b, abs=1e-6)
