import json
import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from memo.cli import main


def all_commands(group=main, prefix=()):
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            yield from all_commands(cmd, prefix + (name,))
        else:
            yield prefix + (name,)


@pytest.mark.parametrize("path", list(all_commands()), ids=" ".join)
def test_every_command_has_help_and_is_in_the_readme(path):
    res = CliRunner().invoke(main, [*path, "--help"])
    assert res.exit_code == 0 and "Usage:" in res.output
    cmd = main
    for p in path:
        cmd = cmd.commands[p]
    assert cmd.help, path
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert f"memo {' '.join(path)}" in readme, f"README lacks 'memo {' '.join(path)}'"


def test_db_pipeline_through_the_cli(h5_root, tmp_path, openface_dir):
    run = CliRunner().invoke
    res = run(main, ["db", "trans2npz", str(h5_root), str(tmp_path / "npz"),
                     "--meta-dir", str(tmp_path / "meta"), "--workers", "1"])
    assert res.exit_code == 0, res.output
    assert "20 npz written" in res.output
    res = run(main, ["db", "create-imgdb", str(tmp_path / "npz"), str(tmp_path / "img"),
                     "--conf-th", "0.5", "--max-bb", "36", "--workers", "2"])
    assert res.exit_code == 0, res.output
    assert "20 segments" in res.output
    res = run(main, ["db", "create-imgdb", str(tmp_path / "npz"), str(tmp_path / "img")])
    assert "up to date" in res.output
    res = run(main, ["db", "rawimg-db", str(openface_dir), str(tmp_path / "raw"), "--size", "16"])
    assert res.exit_code == 0 and "computed over the corpus" in res.output
    db = tmp_path / "img" / "feat_th0.5_max36_min0"
    res = run(main, ["db", "check", str(db), str(tmp_path / "raw")])
    assert res.exit_code == 0 and res.output.count("OK") == 2
    res = run(main, ["db", "check", "--json", str(db)])
    assert json.loads(res.output)["ok"] is True
    res = run(main, ["db", "stats", str(db), "--parquet", str(tmp_path / "s.parquet")])
    assert res.exit_code == 0 and "segments   20" in res.output
    assert (tmp_path / "s.parquet").exists()
    res = run(main, ["db", "stats", "--json", str(db)])
    assert json.loads(res.output)["segments"] == 20


def test_errors_are_one_line_with_exit_code_1(tmp_path):
    (tmp_path / "empty").mkdir()
    res = CliRunner().invoke(main, ["db", "create-imgdb", str(tmp_path / "empty"), str(tmp_path / "o")])
    assert res.exit_code == 1 and res.output.startswith("Error: ")
    assert "holds no .npz files" in res.output and "Traceback" not in res.output


@pytest.mark.slow
def test_quickstart_runs_and_reruns(tmp_path):
    res = CliRunner().invoke(main, ["quickstart", str(tmp_path / "qs"), "--workers", "2"])
    assert res.exit_code == 0, res.output
    for stage in ("trans2npz", "build face", "build rawimg", "build txt/train", "build txt/val",
                  "check", "stats", "pretrain"):
        assert stage in res.output
    # every pre-training task learns on the hidden-state corpus (tests/test_gain.py: golden)
    for task in ("mrfr", "itm"):
        m = re.search(task + r" (\d+\.\d+) -> (\d+\.\d+)", res.output)
        assert m and float(m.group(2)) < float(m.group(1)), task
    itm = re.search(r"val ITM accuracy (\d+\.\d+) %", res.output)
    assert itm and float(itm.group(1)) > 55.0  # chance 50
    assert "clean" in res.output
    ua = re.search(r"2 folds, test UA (\d+\.\d+)", res.output)
    assert ua and 35.0 < float(ua.group(1)) < 100.0  # a weak signal: above chance (25), not all
    assert re.search(r"pre-training gains [+-]\d+\.\d UA points, 95 % CI \[", res.output)
    assert (tmp_path / "qs" / "finetune" / "results.tsv").exists()
    assert "80 segments: pooled, text, faces" in res.output  # memo extract of fold 1 test
    # the report of the run: every stage's section (tests/test_report.py checks its HTML)
    html = (tmp_path / "qs" / "report.html").read_text()
    assert "report.html" in res.output and html.count("<h2>") == 4
    assert html.count('src="data:image/png;base64,') >= 12
    again = CliRunner().invoke(main, ["quickstart", str(tmp_path / "qs"), "--workers", "1"])
    assert again.exit_code == 0 and "up to date" in again.output


def test_create_txtdb_through_the_cli(h5_root, h5_ids, tmp_path):
    run = CliRunner().invoke
    img = tmp_path / "img"
    assert run(main, ["db", "create-imgdb", str(h5_root), str(img), "--workers", "1"]).exit_code == 0
    caps = {i: [f"i am so happy {n}"] for n, i in enumerate(h5_ids)}
    caps["ghost_1"] = ["nobody here"]
    (tmp_path / "caps.json").write_text(json.dumps(caps))
    (tmp_path / "lex.tsv").write_text("happy\tjoy\n")
    args = ["db", "create-txtdb", str(tmp_path / "caps.json"), str(tmp_path / "txt"),
            "--img-db", str(img / "feat_th0.5_max36_min0"), "--lexicon", str(tmp_path / "lex.tsv"),
            "--split", "val=3", "--split", "mon=2@train", "--seed", "7", "--max-len", "8",
            "--workers", "2"]
    res = run(main, args)
    assert res.exit_code == 0, res.output
    assert "val/: 3 texts" not in res.output and "3 texts (val)" in res.output
    assert "ghost_1" in res.output  # the transcript without a segment is named
    assert "no_features 1" in res.output and "no_faces 2" in res.output
    assert "up to date" in run(main, args).output
    res = run(main, ["db", "check", str(tmp_path / "txt")])
    assert res.exit_code == 0 and "(splits, 3 splits" in res.output, res.output
    res = run(main, ["db", "stats", "--json", str(tmp_path / "txt" / "val")])
    assert json.loads(res.output)["texts"] == 3
    res = run(main, ["db", "create-txtdb", str(tmp_path / "caps.json"), str(tmp_path / "t2"),
                     "--split", "val=500"])
    assert res.exit_code == 1 and res.output.startswith("Error: ") and "lower the count" in res.output
    assert not (tmp_path / "t2").exists() or not any((tmp_path / "t2").iterdir())
