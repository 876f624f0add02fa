"""Speech feature extraction (``memo extract-speech --features compare``) against the per-file
openSMILE call it replaces.

Generates ``--segments`` wavs (16 kHz, 16-bit mono, 1 to 3 s: tones with noise, fixed seed),
then measures, round robin, ``--repeat`` rounds, best kept:

- baseline: the per-file openSMILE call, as the original pipeline ran the SMILExtract command
  once per segment: a fresh ``opensmile.Smile(ComParE_2016, LowLevelDescriptors)`` per file
  and ``process_file``, one file after the other, the features left in memory;
- memo ``extract_speech(features="compare")`` with 1 worker and with ``--workers``: one whole
  call (listing, decoding, openSMILE, float16 database written and published), fixed costs
  included.

Segments/s and the ratio against the baseline; the stored features are checked equal to the
baseline's after memo's stored transform (``sign(x) * log1p(|x|)``, float16).
"""
from __future__ import annotations

import shutil
import sys
import time

import numpy as np

from memodb.feature.speech import OPENSMILE_SETS, TRANSFORM, extract_speech
from memodb.store.reader import FeatureDB

from .common import parser, ratio, report, scratch

SR = 16000


def make_wavs(root, segments: int, seed: int) -> float:
    """The corpus; returns its seconds of audio."""
    import soundfile

    rng = np.random.default_rng(seed)
    total = 0.0
    for i in range(segments):
        n = int(rng.uniform(1.0, 3.0) * SR)
        t = np.arange(n) / SR
        x = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 400) * t) + rng.normal(0, 0.05, n)
        path = root / f"m{i % 10}" / f"m{i % 10}_{i}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(str(path), x.astype(np.float32), SR, subtype="PCM_16")
        total += n / SR
    return total


def baseline(files) -> tuple[float, dict]:
    """Segments/s of a fresh Smile + process_file per file; the features by file stem."""
    import opensmile

    out = {}
    t = time.perf_counter()
    for f in files:
        smile = opensmile.Smile(feature_set=OPENSMILE_SETS["compare"][0],
                                feature_level=opensmile.FeatureLevel.LowLevelDescriptors)
        out[f.stem] = smile.process_file(str(f)).to_numpy(np.float32)
    return len(files) / (time.perf_counter() - t), out


def memo_rate(src, out, workers: int, max_bb: int) -> tuple[float, object]:
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    r = extract_speech(src, out, features="compare", max_bb=max_bb, workers=workers)
    return r.counts["segments"] / (time.perf_counter() - t), r


def main(argv=None) -> str:
    ap = parser(__doc__, segments=120)
    ap.add_argument("--repeat", type=int, default=2, help="rounds (best reported)")
    args = ap.parse_args(argv)
    command = " ".join(["python -m bench.speech_extract",
                        *(sys.argv[1:] if argv is None else argv)])
    import opensmile

    with scratch(args, "speech") as d:
        seconds = make_wavs(d / "wavs", args.segments, args.seed)
        files = sorted((d / "wavs").rglob("*.wav"))
        best = {"base": 0.0, 1: 0.0, args.workers: 0.0}
        for _ in range(args.repeat):
            rate, feats = baseline(files)
            best["base"] = max(best["base"], rate)
            for w in dict.fromkeys((1, args.workers)):
                rate, r = memo_rate(d / "wavs", d / f"out{w}", w, max_bb=400)
                best[w] = max(best[w], rate)
        db = FeatureDB(r.path)
        same = all(np.array_equal(db[f"{k}.npz"]["features"],
                                  (np.sign(v) * np.log1p(np.abs(v))).astype(np.float16))
                   for k, v in feats.items())
    rows = [["per-file openSMILE (baseline): fresh Smile + process_file, 1 process",
             f"{best['base']:,.1f}", "1.00x"]]
    rows += [[f"memo extract_speech, {w} worker(s)", f"{best[w]:,.1f}",
              ratio(best[w] / best["base"])] for w in dict.fromkeys((1, args.workers))]
    notes = [f"{args.segments} wavs, {seconds:,.0f} s of audio (16 kHz, 16-bit mono, 1-3 s "
             "each); ComParE_2016 low-level descriptors (65 per 10 ms); memo = one whole call "
             "(listing, decoding, openSMILE, float16 database written and published), fixed "
             "costs included",
             f"stored features equal the baseline's after {TRANSFORM} and float16: "
             f"{'yes' if same else '**NO**'}",
             f"{args.repeat} rounds, round robin, best of each; opensmile "
             f"{opensmile.__version__}; command: {command}"]
    return report("speech_extract", "Speech features (openSMILE ComParE_2016) vs per-file "
                  "openSMILE", ["extractor", "segments/s", "vs baseline"], rows, notes)


if __name__ == "__main__":
    main()
