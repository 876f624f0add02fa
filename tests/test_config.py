"""The one config mechanism (memodb.config): strict types, named keys, overrides, the
reference table in docs/CONFIG.md, and --print-config."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from pydantic import Field
from pydantic.dataclasses import dataclass

from memo.cli import main
from memodb.config import STRICT, ConfigError, changes, describe, read_config, to_json
from memodb.errors import MemoError
from memotrain.config import ModelConfig
from memotrain.finetuneconfig import FinetuneConfig
from memotrain.trainconfig import TrainConfig

DOC = Path(__file__).resolve().parents[1] / "docs" / "CONFIG.md"


@dataclass(config=STRICT)
class Inner:
    rate: float = Field(0.5, description="a rate")
    pair: tuple[int, int] = (1, 2)


@dataclass(config=STRICT)
class Outer:
    name: str = Field(description="required")
    count: int = 3
    inner: Inner = Field(default_factory=Inner)
    items: list[Inner] = Field(default_factory=list)


def test_strict_types_and_named_keys():
    cfg = read_config(Outer, {"name": "a", "inner": {"rate": 1, "pair": [3, 4]}})
    assert cfg.inner.rate == 1.0 and cfg.inner.pair == (3, 4) and cfg.count == 3
    bad = [({"name": "a", "count": 36.7}, "count: expected int, got 36.7"),
           ({"name": "a", "count": True}, "count: expected int, got True"),
           ({"name": "a", "inner": {"rate": "0.5"}}, "inner.rate: expected float, got '0.5'"),
           ({"name": "a", "inner": {"pair": [1]}}, "inner.pair: expected a list of 2"),
           ({"name": "a", "items": [{"rat": 1}]}, "unknown config key 'items.0.rat' "
                                                  r"\(known in items.0: rate, pair\)"),
           ({"count": 1}, "config: missing name"),
           ({"name": "a", "inner": 3}, "inner: expected an object, got 3")]
    for d, match in bad:
        with pytest.raises(ConfigError, match=match):
            read_config(Outer, d)
    assert issubclass(ConfigError, MemoError)


def test_overrides_files_and_the_callers_error_class(tmp_path):
    class MyError(MemoError):
        pass

    path = tmp_path / "c.json"
    path.write_text(json.dumps({"name": "a"}))
    cfg = read_config(Outer, path, ["--inner.rate", "2", "--count=4", "--name", "b c"])
    assert (cfg.inner.rate, cfg.count, cfg.name) == (2.0, 4, "b c")
    assert read_config(Outer, cfg) == cfg  # an instance goes through unchanged
    with pytest.raises(MyError, match="'inner.x'"):
        read_config(Outer, path, [("inner.x", 1)], error=MyError)
    with pytest.raises(MyError, match="cannot read a JSON config"):
        read_config(Outer, tmp_path / "missing.json", error=MyError)
    with pytest.raises(MyError, match="has no value"):
        read_config(Outer, path, ["--count"], error=MyError)


def test_changes_names_dotted_keys():
    a = {"optim": {"lr": 1e-4, "betas": [0.9, 0.98]}, "steps": 5, "gone": 1}
    b = {"optim": {"lr": 1e-4, "betas": [0.9, 0.99]}, "steps": 5, "new": None}
    assert changes(a, b) == ["gone", "optim.betas"]
    assert changes(to_json(Inner()), to_json(Inner())) == []


def render_reference() -> str:
    from memodb.dataset.config import DatasetConfig

    parts = ["# Configuration reference\n",
             "Every key of memo's JSON configs, its default and what it does, generated from "
             "the config classes themselves (`memodb.config.describe`; regenerate with "
             "`MEMO_WRITE_DOCS=1 python -m pytest tests/test_config.py`). Unknown keys and "
             "values of the wrong type are refused with the key named; in a dataset config, "
             "values out of the ranges below too, and an error a build meets about an "
             "option names the config file and key, not a command-line flag. `memo train pretrain "
             "--print-config` and `memo train finetune --print-config` print a resolved "
             "config.\n"]
    for title, cls in (("Dataset config (`memo db build`)", DatasetConfig),
                       ("Pre-training config (`memo train pretrain --config`)", TrainConfig),
                       ("Fine-tuning config (`memo train finetune --config`)", FinetuneConfig),
                       ("Model config (`model` in both, checkpoints' `config`)", ModelConfig)):
        parts += [f"\n## {title}\n", "\n| key | default | meaning |\n|---|---|---|\n"]
        parts += [f"| `{k}` | {f'`{d}`' if d else ''} | {m.replace('|', '/')} |\n"
                  for k, d, m in describe(cls)]
    return "".join(parts)


def test_docs_config_reference_is_current():
    text = render_reference()
    if os.environ.get("MEMO_WRITE_DOCS"):
        DOC.write_text(text, encoding="utf-8")
    assert DOC.read_text(encoding="utf-8") == text, \
        "docs/CONFIG.md is stale: MEMO_WRITE_DOCS=1 python -m pytest tests/test_config.py"


def test_print_config_shows_defaults_and_overrides_and_runs_nothing(tmp_path):
    out = tmp_path / "run"
    cfg = tmp_path / "pre.json"
    cfg.write_text(json.dumps({"model": "tiny", "output_dir": str(out),
                               "data": {"corpora": [{"txt_db": "t"}]}}))
    r = CliRunner().invoke(main, ["train", "pretrain", "--config", str(cfg), "--print-config",
                                  "--optim.lr", "1e-4"])
    assert r.exit_code == 0, r.output
    shown = json.loads(r.output)
    assert shown["optim"] == {"lr": 1e-4, "betas": [0.9, 0.98], "weight_decay": 0.01,
                              "warmup_steps": None, "warmup_ratio": 0.1, "grad_clip": 5.0,
                              "grad_accum": 1}
    assert shown["data"]["corpora"][0]["tasks"] == {"mlm": 1.0} and not out.exists()
    ft = tmp_path / "ft.json"
    ft.write_text(json.dumps({"model": "tiny", "output_dir": str(out),
                              "data": {"train": "t{fold}", "val": "v{fold}",
                                       "test": "s{fold}"}}))
    r = CliRunner().invoke(main, ["train", "finetune", "--config", str(ft), "--print-config",
                                  "--folds", "1-3", "--select.metric", "WF1"])
    assert r.exit_code == 0, r.output
    shown = json.loads(r.output)
    assert shown["folds"] == [1, 2, 3] and shown["select"]["metric"] == "WF1"
    assert shown["epochs"] == 10 and not out.exists()
    r = CliRunner().invoke(main, ["train", "pretrain", "--config", str(cfg), "--print-config",
                                  "--stepz", "3"])
    assert r.exit_code == 1 and "unknown config key 'stepz'" in r.output
