"""``memo quickstart``: the whole chain on a small corpus generated in code.

Stages that exist so far: generate the corpus, trans2npz, create-imgdb (from the h5 files
directly), rawimg-db, check, stats. Re-running in the same folder reuses what is built.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from memodb.check import CheckReport, check
from memodb.imgdb import create_imgdb
from memodb.rawimg import rawimg_db
from memodb.stats import feature_stats
from memodb.synth import make_captions, make_h5_corpus, make_openface
from memodb.trans2npz import trans2npz

MOVIES, SEGMENTS, CLIPS = 4, 25, 6


@dataclass
class QuickstartResult:
    workdir: Path
    steps: list = field(default_factory=list)  # (stage, output path, one-line summary)
    report: CheckReport | None = None
    stats: dict | None = None


def generate_corpus(corpus: Path) -> None:
    """The built-in corpus: Denseface h5 for a few movies, their segment lists, captions and
    OpenFace-style crops. Written once; the marker file makes re-runs reuse it."""
    marker = corpus / ".complete"
    if marker.exists():
        return
    ids = make_h5_corpus(corpus / "h5", movies=MOVIES, segments=SEGMENTS, seed=0,
                         meta_dir=corpus / "meta")
    make_captions(ids, corpus / "captions.json", seed=0)
    make_openface(corpus / "openface", clips=CLIPS, frames=16, seed=0)
    marker.write_text("")


def quickstart(workdir="memo-quickstart", workers: int | None = None,
               progress: bool = False, log=print) -> QuickstartResult:
    workdir = Path(workdir)
    corpus = workdir / "corpus"
    res = QuickstartResult(workdir)

    def step(stage, path, summary):
        res.steps.append((stage, str(path), summary))
        log(f"[{len(res.steps)}] {stage:<13} {summary}  ->  {path}")

    generate_corpus(corpus)
    step("corpus", corpus, f"{MOVIES} movies x {SEGMENTS} segments (h5), captions, "
         f"{CLIPS} OpenFace clips")
    t = trans2npz(corpus / "h5", workdir / "npz", meta_dir=corpus / "meta", workers=workers,
                  progress=progress)
    step("trans2npz", t.out_dir, f"{t.written} written, {t.skipped} already there")
    img = create_imgdb(corpus / "h5", workdir / "img_db", conf_th=0.5, max_bb=36,
                       workers=workers, progress=progress)
    c = img.counts
    step("create-imgdb", img.path, f"{c['segments']} segments, {c['empty']} without faces, "
         f"{c['frames_kept']}/{c['frames_seen']} frames kept" + (" (up to date)" * img.skipped))
    raw = rawimg_db(corpus / "openface", workdir / "rawimg_db", size=64, workers=workers,
                    progress=progress)
    n = raw.manifest["normalization"]
    step("rawimg-db", raw.path, f"{raw.counts['segments']} clips, mean {n['mean']:.2f} "
         f"std {n['std']:.2f}" + (" (up to date)" * raw.skipped))
    res.report = check([img.path, raw.path], workers=workers)
    step("check", workdir, "clean" if res.report.ok else
         f"{sum(len(d.problems) for d in res.report.databases)} problem(s)")
    res.stats = feature_stats(img.path)
    s = res.stats["nbb"]
    step("stats", img.path, f"faces per segment mean {s['mean']:.1f} median {s['median']:.0f} "
         f"p80 {s['p80']:.0f} max {s['max']}")
    return res
