"""``memo report``: the data of each plot (pure functions, on records written here), then the
HTML of real tiny outputs (a dataset folder, a pre-training run, a fine-tuning output):
valid, self-contained, one image per plot; the CLI, bad input, no torch, and a render in
headless Chromium."""
from __future__ import annotations

import base64
import json
import subprocess
import sys
from html.parser import HTMLParser

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import SUBPROCESS_ENV, chromium_screenshot
from memo.cli import main
from memodb.errors import BadInputError
from memoreport import data as D
from memoreport.report import report_kind

pytest.importorskip("matplotlib", reason="the report extra (matplotlib) is not installed")
pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- plot data

def test_pretrain_curves_per_task_optimizer_and_metric():
    recs = [{"step": 2, "lr": 1e-3, "loss": 3.0, "tasks": {"mlm": 4.0, "itm": 0.7},
             "grad_norm": 2.0, "skipped": 0, "cnn_lr": 1e-4, "cnn_grad_norm": 1.0},
            {"step": 4, "lr": 5e-4, "loss": None, "tasks": {"mlm": None}, "grad_norm": 9.0,
             "skipped": 2},
            {"step": 4, "val": {"mlm": {"loss": 3.5, "acc": 0.1, "targets": 40},
                                "itm": {"loss": 0.69, "acc": 0.5, "targets": 8}}}]
    c = D.pretrain_curves(recs)
    assert c["loss"] == {"all": [(2, 3.0)], "mlm": [(2, 4.0)], "itm": [(2, 0.7)]}
    assert c["lr"] == {"transformer": [(2, 1e-3), (4, 5e-4)], "cnn": [(2, 1e-4)]}
    assert c["grad_norm"]["transformer"] == [(2, 2.0), (4, 9.0)]
    assert c["skipped"] == [(2, 0), (4, 2)]
    assert c["val"] == {"loss": {"mlm": [(4, 3.5)], "itm": [(4, 0.69)]},
                        "acc": {"mlm": [(4, 0.1)], "itm": [(4, 0.5)]}}  # no "targets" curve
    assert D.task_colors(c) == {"all": "black", "itm": "C0", "mlm": "C1"}


def test_broken_metrics_line_is_named(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n\n{"step": 2, "lo\n')
    with pytest.raises(BadInputError, match=r"metrics.jsonl: line 3 is not a metrics record"):
        D.read_records(path)
    assert D.read_records(tmp_path / "absent.jsonl") == []


def _text_stats(counts, lengths, lexicon=None):
    return {"labels": None if counts is None else {
                "names": ["a", "b"], "unlabelled": 0,
                "counts": [{"label": k, "name": "ab"[k], "count": c} for k, c in enumerate(counts)]},
            "length": {"histogram": [{"bin": "1-5", "count": lengths[0]},
                                     {"bin": "6-10", "count": lengths[1]}]},
            "lexicon": lexicon}


def test_dataset_plot_data():
    texts = [{"name": "txt/fold1/train", "stats": _text_stats([3, 1], [2, 2], {
                 "texts_with_emotion": 2, "texts_fraction": 0.5, "pieces_fraction": 0.1,
                 "categories": [{"type_id": 1, "name": "joy", "pieces": 3},
                                {"type_id": 2, "name": "anger", "pieces": 0}]})},
             {"name": "txt/fold1/test", "stats": _text_stats([0, 2], [0, 2])},
             {"name": "txt/unlabelled", "stats": _text_stats(None, [1, 0])}]
    assert D.length_histograms(texts) == (["1-5", "6-10"], {
        "txt/fold1/train": [2, 2], "txt/fold1/test": [0, 2], "txt/unlabelled": [1, 0]})
    assert D.label_counts(texts) == (["a", "b"], {"fold1/train": [3, 1], "fold1/test": [0, 2]})
    assert D.lexicon_rows(texts) == [["txt/fold1/train", 2, "50.0%", "10.0%", "joy 3"]]
    stats = {"nbb": {"histogram": [{"faces": 0, "segments": 2}, {"faces": 5, "segments": 7}]}}
    assert D.face_histogram(stats) == ([0, 5], [2, 7])
    check = {"ok": False, "databases": [
        {"path": "face/x", "kind": "feature", "ok": True, "problems": [], "warnings": [{}]},
        {"path": "txt/a", "kind": "text", "ok": False, "problems": [{}, {}], "warnings": []}]}
    assert D.check_rows(check) == [["face/x", "feature", "OK", 0, 1],
                                   ["txt/a", "text", "FAIL", 2, 0]]


def _run(fold, seed, cm, step=3):
    return {"fold": fold, "seed": seed, "report": "test", "step": step,
            "splits": {"test": {"confusion": cm}}}


def test_finetune_plot_data():
    runs = [_run(1, 0, [[2, 1], [0, 3]]), _run(1, 1, [[3, 0], [1, 2]]),
            _run(2, 0, [[1, 0], [0, 1]])]
    cms = D.confusions(runs)
    assert list(cms) == ["fold 1", "fold 2", "all folds"]
    assert cms["fold 1"].tolist() == [[5, 1], [1, 5]]
    assert cms["all folds"].tolist() == [[6, 1], [1, 6]]
    assert list(D.confusions(runs[:1])) == ["fold 1"]  # one fold: no separate sum
    m = {"WA": 0.5, "UA": 0.25, "WF1": 0.4, "F1": 0.3, "recall": [0.5, 0.0]}
    summary = {"labels": ["x", "y"], "n_runs": 3, "mean": m, "std": {**m, "UA": 0.05},
               "folds": [{"fold": 1, "runs": 2, "mean": m}, {"fold": 2, "runs": 1, "mean": m}],
               "ci": {"WA": {"t": [0.4, 0.6], "bootstrap": [0.45, 0.55]},
                      "UA": {"t": [0.2, 0.3], "bootstrap": None}},
               "ablations": {"text": {"runs": 3, "mean": m}}}
    assert D.recalls(summary) == {"fold 1": [0.5, 0.0], "fold 2": [0.5, 0.0], "mean": [0.5, 0.0]}
    assert D.intervals(summary, ("WA", "UA", "WF1", "F1")) == {
        "95 % CI (t)": {"WA": [0.4, 0.6], "UA": [0.2, 0.3]},
        "95 % CI (fold bootstrap)": {"WA": [0.45, 0.55]}}
    head, rows = D.results_rows(summary, ("WA", "UA"))
    assert head == ["", "runs", "WA", "UA", "recall x", "recall y"]
    assert rows == [["fold 1", "2", "50.00", "25.00", "50.00", "0.00"],
                    ["fold 2", "1", "50.00", "25.00", "50.00", "0.00"],
                    ["mean", "3", "50.00", "25.00", "50.00", "0.00"],
                    ["std", "3", "50.00", "5.00", "50.00", "0.00"],
                    ["95 % CI (t)", "3", "40.00 - 60.00", "20.00 - 30.00", "", ""],
                    ["95 % CI (fold bootstrap)", "3", "45.00 - 55.00", "", "", ""],
                    ["text only", "3", "50.00", "25.00", "50.00", "0.00"]]
    records = [[{"step": 1, "loss": 2.0}, {"step": 2, "val": {"UA": 0.3}, "best": True},
                {"step": 2, "selected": {}}], []]
    curves = D.val_curves({"runs": runs[:2], "records": records}, "UA")
    assert curves == {"fold 1 seed 0": {"val": [(2, 0.3)], "loss": [(1, 2.0)], "selected": 3},
                      "fold 1 seed 1": {"val": [], "loss": [], "selected": 3}}


# ----------------------------------------------------------------------------- real outputs

@pytest.fixture(scope="module")
def pretrain_run(pretrain_corpus, tmp_path_factory):
    from memotrain.recipes.pretrain import pretrain

    out = tmp_path_factory.mktemp("pt") / "run"
    pretrain({"model": "tiny", "steps": 4, "seed": 0, "log_every": 1, "val_every": 2,
              "save_every": 4, "optim": {"lr": 1e-3, "warmup_steps": 1},
              "data": {"corpora": [{"txt_db": pretrain_corpus["train"],
                                    "img_db": pretrain_corpus["img"],
                                    "val_txt_db": pretrain_corpus["val"],
                                    "tasks": {"mlm": 1, "itm": 1}}],
                       "max_text_len": 20, "max_faces": 10, "batch_size": 4},
              "output_dir": str(out)}, console=None)
    return out


@pytest.fixture(scope="module")
def finetune_run(emotion_dataset, tmp_path_factory):
    from memotrain.recipes.finetune import finetune
    from memotrain.results import Console

    txt = emotion_dataset["txt"]
    out = tmp_path_factory.mktemp("ftr") / "run"
    finetune({"model": "tiny", "head": "emocls", "folds": [1], "seeds": [0, 1], "epochs": 2,
              "log_every": 2, "optim": {"lr": 2e-3},
              "data": {"train": f"{txt}/fold{{fold}}/train", "val": f"{txt}/fold{{fold}}/val",
                       "test": f"{txt}/fold{{fold}}/test", "img_db": emotion_dataset["face"],
                       "batch_size": 8, "max_text_len": 20},
              "output_dir": str(out)}, console=Console(enabled=False))
    return out


class Html(HTMLParser):
    """Parses a page, checking that every element is closed in order; collects the headings,
    the images and anything that would reach outside the file."""

    VOID = {"img", "meta", "br", "hr", "link", "input"}

    def __init__(self, text: str):
        super().__init__()
        self.stack, self.headings, self.images, self.outside, self.errors = [], [], [], [], []
        self._heading = None
        self.feed(text)
        self.close()
        assert not self.stack, f"unclosed elements: {self.stack}"
        assert not self.errors, self.errors

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "script":
            self.outside.append("<script>")
        for key in ("src", "href"):
            if key in attrs and not attrs[key].startswith("data:"):
                self.outside.append(attrs[key])
        if tag == "img":
            self.images.append(attrs)
        if tag in ("h1", "h2", "h3"):
            self._heading = [tag, ""]
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()
        if self._heading and tag == self._heading[0]:
            self.headings.append(tuple(self._heading))
            self._heading = None

    def handle_data(self, data):
        if self._heading:
            self._heading[1] += data


def parse(path) -> Html:
    page = Html(path.read_text(encoding="utf-8"))
    assert not page.outside, f"the page reaches outside the file: {page.outside}"
    for img in page.images:
        assert img["src"].startswith("data:image/png;base64,") and img["alt"]
        assert base64.b64decode(img["src"].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    return page


def h3(page: Html) -> list[str]:
    return [text for tag, text in page.headings if tag == "h3"]


def test_dataset_report(emotion_dataset, tmp_path):
    folder = emotion_dataset["dir"]
    assert report_kind(folder) == "dataset folder"
    res = CliRunner().invoke(main, ["report", str(folder), "-o", str(tmp_path / "ds.html")])
    assert res.exit_code == 0, res.output
    assert "dataset folder" in res.output and str(tmp_path / "ds.html") in res.output
    page = parse(tmp_path / "ds.html")
    assert ("h2", f"Dataset emo: {folder}") in page.headings
    assert h3(page) == ["Check", "Faces per segment", "Text lengths", "Labels per split and fold",
                        "Lexicon coverage"]
    d = D.dataset_data(folder)
    # one faces histogram per feature database, the length histograms, the label counts
    assert len(page.images) == len(d["features"]) + 2
    text = (tmp_path / "ds.html").read_text()
    assert "memo db check: clean" in text and "fold1/train" in text
    assert "anger " in text  # emotion pieces per lexicon category


def test_pretrain_report(pretrain_run, tmp_path):
    assert report_kind(pretrain_run) == "pre-training run"
    res = CliRunner().invoke(main, ["report", str(pretrain_run), "-o", str(tmp_path / "p.html")])
    assert res.exit_code == 0, res.output
    page = parse(tmp_path / "p.html")
    assert ("h2", f"Pre-training run: {pretrain_run}") in page.headings
    assert h3(page) == ["Training loss per task", "Learning rate", "Gradient norm",
                        "Skipped updates", "Validation"]
    c = D.pretrain_curves(D.read_records(pretrain_run / "metrics.jsonl"))
    assert {"loss", "acc"} <= set(c["val"])
    assert len(page.images) == 4 + len(c["val"])  # loss, lr, grad norm, skipped + val metrics


def test_finetune_report(finetune_run, tmp_path):
    assert report_kind(finetune_run) == "fine-tuning output"
    res = CliRunner().invoke(main, ["report", str(finetune_run), "-o", str(tmp_path / "f.html")])
    assert res.exit_code == 0, res.output
    page = parse(tmp_path / "f.html")
    assert h3(page) == ["Results (%)", "Per-class recall",
                        "Confusion matrices of the selected models", "Validation curves"]
    # recall, fold 1's confusion matrix (2 seeds summed), validation UA, training loss
    assert len(page.images) == 4
    assert [i["alt"] for i in page.images][1] == "confusion matrix fold 1"
    text = (tmp_path / "f.html").read_text()
    assert "fold 1 seed 1" not in text  # the legends are in the images
    assert "<td>mean</td><td>2</td>" in text
    assert "<td>95 % CI (t)</td><td>2</td>" in text  # the intervals of memotrain.results
    assert "(95 % CI, 1 fold x 2 seeds, no protocol recorded)" in text  # the paper line


def test_several_paths_in_one_report_and_no_torch(emotion_dataset, pretrain_run, finetune_run,
                                                  tmp_path):
    """What quickstart writes: every kind in one page; drawing it loads no torch."""
    out = tmp_path / "all.html"
    code = ("import sys; from memoreport.report import write_report; "
            "write_report(sys.argv[1:-1], sys.argv[-1], title='memo quickstart'); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code, str(emotion_dataset["dir"]), str(pretrain_run),
                    str(finetune_run), str(out)], check=True, env=SUBPROCESS_ENV)
    page = parse(out)
    assert [t for tag, t in page.headings if tag == "h2"] == [
        f"Dataset emo: {emotion_dataset['dir']}", f"Pre-training run: {pretrain_run}",
        f"Fine-tuning output: {finetune_run}"]
    chromium_screenshot(out, tmp_path / "shot.png", tmp_path / "profile")
    from PIL import Image

    shot = np.asarray(Image.open(tmp_path / "shot.png").convert("L"))
    assert shot.shape == (3000, 1200)
    assert (shot < 128).mean() > 0.01  # text and plots drawn, not a blank page


def test_a_folder_of_no_known_kind_is_named(tmp_path):
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "notes.txt").write_text("x")
    res = CliRunner().invoke(main, ["report", str(tmp_path / "stuff"), "-o",
                                    str(tmp_path / "r.html")])
    assert res.exit_code == 1
    assert res.output.startswith(f"Error: {tmp_path / 'stuff'}: not a folder memo report knows")
    assert "results.json" in res.output and not (tmp_path / "r.html").exists()


def test_bad_input_publishes_nothing(pretrain_run, tmp_path, monkeypatch):
    # a damaged metrics line: named, and the earlier report stays as it was
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(
        (pretrain_run / "metrics.jsonl").read_text() + '{"step": 9, "loss"\n')
    (tmp_path / "r.html").write_text("earlier")
    res = CliRunner().invoke(main, ["report", str(run), "-o", str(tmp_path / "r.html")])
    assert res.exit_code == 1 and "metrics.jsonl: line" in res.output
    assert (tmp_path / "r.html").read_text() == "earlier"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    # the second path is none of the kinds: the first is not reported alone
    res = CliRunner().invoke(main, ["report", str(pretrain_run), str(tmp_path / "run" / ".."),
                                    "-o", str(tmp_path / "r.html")])
    assert res.exit_code == 1 and "not a folder memo report knows" in res.output
    assert (tmp_path / "r.html").read_text() == "earlier"
    # without matplotlib: a clear error
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    res = CliRunner().invoke(main, ["report", str(pretrain_run), "-o", str(tmp_path / "r.html")])
    assert res.exit_code == 1 and "matplotlib is not installed" in res.output


def test_report_help():
    res = CliRunner().invoke(main, ["report", "--help"])
    assert res.exit_code == 0 and "self-contained HTML" in res.output


def test_feature_stats_give_the_faces_histogram(emotion_dataset):
    from memodb.describe import feature_stats

    s = feature_stats(emotion_dataset["face"])
    hist = s["nbb"]["histogram"]
    assert sum(h["segments"] for h in hist) == s["segments"]
    assert sum(h["faces"] * h["segments"] for h in hist) == s["nbb"]["total"]
    assert [h["faces"] for h in hist] == sorted(h["faces"] for h in hist)
    assert json.loads(json.dumps(s)) == s


def test_quickstart_report_of_the_stages_that_ran(emotion_dataset, tmp_path, monkeypatch):
    from memo.quickstart import write_html

    work = tmp_path / "qs"
    work.mkdir()
    (work / "dataset").symlink_to(emotion_dataset["dir"])  # pre-training never ran
    steps, lines = [], []
    out = write_html(work, lambda *a: steps.append(a), lines.append)
    assert out == work / "report.html" and steps[0][0] == "report" and "(dataset)" in steps[0][2]
    assert [t for tag, t in parse(out).headings if tag == "h2"] == [
        f"Dataset emo: {work / 'dataset'}"]
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert write_html(work, lambda *a: steps.append(a), lines.append) is None
    assert lines == ["report: not written, matplotlib is not installed (pip install "
                     "'memo-emotion[report]')"] and len(steps) == 1
