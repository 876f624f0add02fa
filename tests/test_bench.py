"""The benchmark suite at small scale (a smoke run: every benchmark, baselines included, on
tiny generated corpora), and the suite's handling of bad arguments and failing benchmarks.
Figures are never asserted: only that every table is written with its ratio column."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench import common
from bench.__main__ import NAMES, SCALES, main
from conftest import SUBPROCESS_ENV

ROOT = Path(__file__).resolve().parents[1]
RATIO = re.compile(r"\d+\.\d\dx")  # bench.common.ratio's format
# Tables that state their comparison with the baseline another way, named so the gap stays
# visible; each is checked to still lack a ratio column (drop the entry when it gains one).
NO_RATIO = {"train_memory": "a difference, large index - small index (baseline row), in MiB",
            "joint_memory": "no baseline: frozen blocks and checkpointing compared side by side"}


def tables(md: str) -> list[list[list[str]]]:
    """The markdown tables of a text: rows of cells (header first, separator left out)."""
    found, cur = [], None
    for line in md.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if cur is None:
                cur = []
                found.append(cur)
            if not all(set(c) <= {"-"} and c for c in cells):
                cur.append(cells)
        else:
            cur = None
    return found


def ratio_columns(table: list[list[str]]) -> list[str]:
    """Headers of the columns holding a ratio (``1.23x``) in at least one row."""
    header, rows = table[0], table[1:]
    return [h for i, h in enumerate(header)
            if any(i < len(r) and RATIO.search(r[i]) for r in rows)]


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """``python -m bench --scale small`` once (a few minutes on 2 cores): the ALL.md path."""
    tmp = tmp_path_factory.mktemp("bench")
    out = tmp / "out" / "ALL.md"
    proc = subprocess.run([sys.executable, "-m", "bench", "--scale", "small", "--out",
                           str(out), "--tmp", str(tmp)], cwd=ROOT, env=SUBPROCESS_ENV,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not list(tmp.glob("memo-bench-*"))  # every scratch folder removed
    return out


@pytest.mark.slow
def test_small_scale_writes_every_table_with_its_ratio(small_run):
    doc = small_run.read_text()
    assert doc.startswith("# memo benchmarks, scale small")
    assert "`python -m bench --scale small --out " in doc and "FAILED" not in doc
    assert re.search(r"memo at (\w+|unknown revision)", doc)
    contents = tables(doc)[0]
    assert [r[0] for r in contents[1:]] == NAMES  # every benchmark, in order, with its time
    for name in NAMES:
        md = (small_run.parent / f"{name}.md").read_text()  # beside ALL.md, not bench/out
        assert md in doc
        (table,) = tables(md)
        assert len(table) >= 2, name  # a header and at least one row
        assert "machine:" in md
        if name in NO_RATIO:
            assert ratio_columns(table) == [], f"{name} has a ratio now: drop it from NO_RATIO"
        else:
            assert ratio_columns(table), f"{name}: no ratio column in {table[0]}"


@pytest.mark.slow
def test_end_to_end_table(small_run):
    """The end-to-end rows: the baseline pipeline, memo's build with its steps, the step rate
    and the input pipeline, each build or loader row a ratio against its baseline."""
    md = (small_run.parent / "end_to_end.md").read_text()
    (table,) = tables(md)
    rows = {r[0].strip("*"): r for r in table[1:]}
    assert rows["baseline pipeline: the three above"][-1] == "1.00x"
    total = rows["memo db build: raw h5 + captions -> built, checked folder"]
    assert RATIO.fullmatch(total[-1]) and "segments/s" in total[3]
    assert re.fullmatch(r"[\d,]+ / [\d,]+", total[4])  # peak RSS / anon of the tree
    assert any(k.startswith("memo db build: text dbs (txt/train, txt/val, txt/trn3k)")
               for k in rows)
    step = next(r for k, r in rows.items() if k.startswith("tiny model step"))
    assert step[-1] == "1.00x"
    loader = next(r for k, r in rows.items() if k.startswith("input pipeline"))
    assert "examples/s" in loader[3] and RATIO.fullmatch(loader[-1])
    assert "check: ok" in md and "1,000 segments over 10 movies" in md


@pytest.mark.parametrize("argv, message", [
    ([], "give --scale small"),
    (["--scale", "small", "--only", "nope,read_random"], "unknown benchmark(s) nope"),
    (["--scale", "small", "--only", ","], "(none given)"),
    (["--scale", "full", "--quick"], "--quick is --scale small"),
    (["--scale", "huge"], "invalid choice: 'huge'"),
])
def test_bad_arguments_are_refused(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(argv + ["--out", str(tmp_path / "ALL.md")])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "ALL.md").exists()


def test_a_failing_benchmark_is_named_and_the_others_still_run(tmp_path, monkeypatch,
                                                               capsys):
    monkeypatch.setattr(common, "OUT", common.OUT)  # main() moves it; restored after
    monkeypatch.setitem(SCALES["small"], "read_random", ["--no-such-option"])
    out = tmp_path / "ALL.md"
    with pytest.raises(SystemExit) as exc:
        main(["--scale", "small", "--only", "read_random,build_memory", "--out", str(out),
              "--tmp", str(tmp_path)])
    assert exc.value.code == 1
    doc = out.read_text()
    assert "**FAILED** (no table): `read_random`: SystemExit: 2" in doc
    assert "### Peak memory of a 1,000-segment build" in doc  # the other one ran
    assert (tmp_path / "build_memory.md").exists()
    assert not (tmp_path / "read_random.md").exists()
    assert "FAILED: read_random" in capsys.readouterr().out


def test_quick_is_the_small_scale(monkeypatch, tmp_path):
    monkeypatch.setattr(common, "OUT", common.OUT)
    seen = []

    def run(modules, scale, tmp):
        seen.append((list(modules), scale, tmp))
        return [], {}

    monkeypatch.setattr("bench.__main__.run", run)
    main(["--quick", "--only", "train_model", "--out", str(tmp_path / "ALL.md")])
    assert seen == [(["train_model"], "small", None)]
    assert (tmp_path / "ALL.md").read_text().startswith("# memo benchmarks, scale small")


def test_every_benchmark_has_both_scales():
    assert set(SCALES["small"]) == set(SCALES["full"]) == set(NAMES)
    found = {p.stem for p in (ROOT / "bench").glob("*.py")
             if "def main(" in p.read_text() and p.stem != "__main__"}
    assert found == set(NAMES), "a bench/ script is missing from the suite (bench.__main__)"


def test_parallel_h5_corpus_does_not_depend_on_workers(tmp_path):
    """bench.common.make_h5_parallel seeds each movie on its own: the same files whatever
    the number of workers, in make_h5's layout (every 9th segment without a face)."""
    import h5py
    import numpy as np

    ids = {w: common.make_h5_parallel(tmp_path / str(w), 20, 2, seed=3, faces=6, workers=w)
           for w in (1, 2)}
    assert ids[1] == ids[2] and len(ids[1]) == 20 and ids[1][0] == "No0000.Movie_0_1"
    for m in range(2):
        movie = f"No{m:04d}.Movie_{m}"
        files = [h5py.File(tmp_path / str(w) / movie / common.synth.MOVIE_H5, "r")
                 for w in (1, 2)]
        with files[0] as a, files[1] as b:
            for s in range(1, 11):
                seg_a, seg_b = a[f"{movie}/{s}"], b[f"{movie}/{s}"]
                assert sorted(seg_a) == ["confidence", "feat", "frame_idx", "pred"]
                for k in seg_a:
                    np.testing.assert_array_equal(seg_a[k][()], seg_b[k][()])
                assert (len(seg_a["feat"]) == 0) == (s % 9 == 0)
                assert seg_a["feat"].shape[1:] == (342,)


@pytest.mark.slow
def test_gpu_script_runs_every_case_on_the_cpu(tmp_path):
    """``python -m bench.gpu --tiny``, the run a machine without CUDA gets: the CUDA tests
    (skipped here), every case with its ratio, DDP over gloo, one table in the --out file."""
    out = tmp_path / "gpu_tiny.md"
    proc = subprocess.run([sys.executable, "-m", "bench.gpu", "--tiny", "--out", str(out),
                           "--tmp", str(tmp_path)], cwd=ROOT, env=SUBPROCESS_ENV,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    md = out.read_text()
    assert md in proc.stdout and not list(tmp_path.glob("memo-bench-*"))
    (table,) = tables(md)
    rows = {r[0]: r for r in table[1:]}
    assert list(rows) == [
        "transformers BertModel, input_ids (baseline)",
        "memo MemoBert (text ids + float16 faces)", "memo pre-training update, task mlm",
        "memo pre-training update, task mrfr", "joint CNN update (vnce), 0 frozen blocks",
        "joint CNN update (vnce), 2 frozen blocks", "DDP, 2 processes (gloo), task mlm"]
    assert rows["transformers BertModel, input_ids (baseline)"][3] == "1.00x"
    assert all(RATIO.fullmatch(r[3]) and r[1] == "10" for k, r in rows.items()
               if not k.startswith("DDP"))
    assert rows["DDP, 2 processes (gloo), task mlm"][1] == "20"
    assert "batch 10 = token budget 680 // 68" in md and "not measurements" in md
    assert re.search(r"CUDA tests: `pytest -m cuda` over \d+ files: \d+ skipped", md)


def test_gpu_script_refuses_a_budget_without_an_example():
    from bench import gpu

    with pytest.raises(SystemExit, match="holds no example of 68 positions"):
        gpu.main(["--tiny", "--max-tokens", "60"])
