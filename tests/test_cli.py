import json
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


def test_quickstart_runs_and_reruns(tmp_path):
    res = CliRunner().invoke(main, ["quickstart", str(tmp_path / "qs"), "--workers", "2"])
    assert res.exit_code == 0, res.output
    for stage in ("trans2npz", "build face", "build rawimg", "build txt/train", "build txt/val",
                  "check", "stats"):
        assert stage in res.output
    assert "clean" in res.output
    again = CliRunner().invoke(main, ["quickstart", str(tmp_path / "qs"), "--workers", "1"])
    assert again.exit_code == 0 and "up to date" in again.output
