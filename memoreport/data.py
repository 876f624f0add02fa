"""What each plot and table of a report shows, computed from the files memo writes (no
drawing, no torch): a dataset folder through :mod:`memodb.describe` and its ``check.json``,
a pre-training run's ``metrics.jsonl``, a fine-tuning output's ``results.json`` and each run's
``result.json`` / ``metrics.jsonl``, a ``memo prep`` output's ``prep.json``, records, csvs,
crops, frames and wavs (through memoprep's own lip-gap and voice-activity functions). Curves
are lists of ``(step, value)``."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from memodb.dataset.build import CHECK_FILE
from memodb.errors import BadInputError
from memodb.store.manifest import DATASET_FILE
from memotrain.finetuneconfig import run_name

METRICS_FILE = "metrics.jsonl"
RESULTS_FILE = "results.json"  # memotrain.results.write


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BadInputError(f"not readable JSON ({exc})", file=path,
                            fix="re-run the command that wrote it") from None


def read_records(path: Path) -> list[dict]:
    """The records of a ``metrics.jsonl`` (none when the file is absent)."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            assert isinstance(rec, dict) and "step" in rec
        except (ValueError, AssertionError):
            raise BadInputError(f"line {n} is not a metrics record (a JSON object with a "
                                "step)", file=path,
                                fix="delete the damaged line or re-run the training") from None
        out.append(rec)
    return out


# ----------------------------------------------------------------------------- dataset folders

def dataset_data(folder) -> dict:
    """A dataset folder: its name, every database's statistics (feature databases: faces per
    segment; text databases: lengths, labels, lexicon, faces) and the check's verdict
    (``check.json``; the folder is checked now where it has none)."""
    from memodb.describe import feature_stats, text_stats

    folder = Path(folder)
    body = read_json(folder / DATASET_FILE)
    features, texts = [], []
    for name, entry in sorted((body.get("databases") or {}).items()):
        path = folder / entry["path"]
        if entry.get("kind") == "text":
            texts.append({"name": name, "stats": text_stats(path)})
        else:
            features.append({"name": name, "kind": entry.get("kind"),
                             "stats": feature_stats(path)})
    if (folder / CHECK_FILE).is_file():
        check = read_json(folder / CHECK_FILE)
    else:
        from memodb import check as run_check

        check = run_check([folder]).to_dict()
    return {"name": body.get("name", folder.name), "features": features, "texts": texts,
            "check": check}


def face_histogram(stats: dict) -> tuple[list[int], list[int]]:
    """(faces per segment, segments) of a feature database's statistics."""
    hist = stats["nbb"].get("histogram") or []
    return [h["faces"] for h in hist], [h["segments"] for h in hist]


def length_histograms(texts: list[dict]) -> tuple[list[str], dict[str, list[int]]]:
    """The length bins and, per text database, its texts per bin."""
    if not texts:
        return [], {}
    bins = [b["bin"] for b in texts[0]["stats"]["length"]["histogram"]]
    return bins, {t["name"]: [b["count"] for b in t["stats"]["length"]["histogram"]]
                  for t in texts}


def label_counts(texts: list[dict]) -> tuple[list[str], dict[str, list[int]]]:
    """The label names and, per labelled text database (``fold1/train``...), its texts per
    label; unnamed labels show as their number."""
    names: dict = {}
    per: dict = {}
    for t in texts:
        labels = t["stats"]["labels"]
        if not labels:
            continue
        row = {}
        for c in labels["counts"]:
            key = c["name"] if c["name"] is not None else str(c["label"])
            names.setdefault(key, c["label"])
            row[key] = c["count"]
        per[t["name"].removeprefix("txt/")] = row
    order = sorted(names, key=names.get)
    return order, {db: [row.get(k, 0) for k in order] for db, row in per.items()}


def lexicon_rows(texts: list[dict]) -> list[list]:
    """Per text database with emotion words: texts with one, their share, the emotion
    pieces' share of all pieces, the pieces per category."""
    rows = []
    for t in texts:
        lex = t["stats"]["lexicon"]
        if lex is None:
            continue
        cats = ", ".join(f"{c['name'] or c['type_id']} {c['pieces']}" for c in lex["categories"]
                         if c["pieces"])
        rows.append([t["name"], lex["texts_with_emotion"], f"{100 * lex['texts_fraction']:.1f}%",
                     f"{100 * lex['pieces_fraction']:.1f}%", cats or "-"])
    return rows


def check_rows(check: dict) -> list[list]:
    """One row per checked database or folder: path, kind, verdict, problems, warnings."""
    return [[d["path"], d["kind"], "OK" if d["ok"] else "FAIL", len(d["problems"]),
             len(d["warnings"])] for d in check.get("databases", [])]


# ----------------------------------------------------------------------------- pre-training runs

def pretrain_curves(records: list[dict]) -> dict:
    """The curves of a pre-training ``metrics.jsonl``: ``loss`` (``all`` and per task),
    ``lr`` and ``grad_norm`` (per optimizer: transformer, cnn), ``skipped`` (updates skipped
    so far) and ``val`` (metric -> task -> curve)."""
    out: dict = {"loss": {}, "lr": {}, "grad_norm": {}, "skipped": [], "val": {}}

    def add(group: dict, name: str, step, value):
        if value is not None:
            group.setdefault(name, []).append((step, value))

    for r in records:
        s = r["step"]
        if "loss" in r:
            add(out["loss"], "all", s, r["loss"])
            for task, v in (r.get("tasks") or {}).items():
                add(out["loss"], task, s, v)
            add(out["lr"], "transformer", s, r.get("lr"))
            add(out["lr"], "cnn", s, r.get("cnn_lr"))
            add(out["grad_norm"], "transformer", s, r.get("grad_norm"))
            add(out["grad_norm"], "cnn", s, r.get("cnn_grad_norm"))
            if r.get("skipped") is not None:
                out["skipped"].append((s, r["skipped"]))
        for task, metrics in (r.get("val") or {}).items():
            for k, v in metrics.items():
                if k != "targets":
                    add(out["val"].setdefault(k, {}), task, s, v)
    return out


def task_colors(curves: dict) -> dict[str, str]:
    """One colour per task for every plot of a run (tasks sorted by name; ``all`` black)."""
    tasks = sorted({t for t in curves["loss"] if t != "all"}
                   | {t for per in curves["val"].values() for t in per})
    return {"all": "black", **{t: f"C{i % 10}" for i, t in enumerate(tasks)}}


# ----------------------------------------------------------------------------- fine-tuning

def finetune_data(folder) -> dict:
    """A fine-tuning output: ``results.json`` (runs and summary) and, per run, its
    ``metrics.jsonl`` records (keyed like the runs, by position)."""
    folder = Path(folder)
    body = read_json(folder / RESULTS_FILE)
    runs = body.get("runs") or []
    records = []
    for r in runs:
        records.append(read_records(folder / run_name(r["fold"], r["seed"]) / METRICS_FILE))
    return {"runs": runs, "summary": body.get("summary") or {}, "records": records}


def run_label(run: dict) -> str:
    return (f"fold {run['fold']} " if run["fold"] is not None else "") + f"seed {run['seed']}"


def confusions(runs: list[dict]) -> dict[str, np.ndarray]:
    """The confusion matrices of the selected models on the reported split: per fold (summed
    over its seeds), then ``all`` (summed over every run)."""
    out: dict = {}
    for r in runs:
        cm = np.asarray(r["splits"][r["report"]]["confusion"], dtype=np.int64)
        key = "all folds" if r["fold"] is None else f"fold {r['fold']}"
        out[key] = out.get(key, 0) + cm
    total = sum(out.values())
    if len(out) > 1:
        out["all folds"] = total
    return out


def recalls(summary: dict) -> dict[str, list[float]]:
    """Per-class recall of the reported split: per fold (mean over seeds) and the mean."""
    out = {("all runs" if f["fold"] is None else f"fold {f['fold']}"): f["mean"]["recall"]
           for f in summary.get("folds", [])}
    if len(out) != 1 or "all runs" not in out:
        out["mean"] = summary["mean"]["recall"]
    return out


CI_ROWS = (("t", "95 % CI (t)"), ("bootstrap", "95 % CI (fold bootstrap)"))


def intervals(summary: dict, metrics) -> dict[str, dict]:
    """The summary's 95 % intervals (``summary["ci"][metric][kind]``, memotrain.results) as
    table rows: ``{row name: {metric: [lo, hi]}}``; kinds without any interval (one run) are
    left out."""
    ci = summary.get("ci") or {}
    out = {}
    for kind, name in CI_ROWS:
        row = {m: ci[m][kind] for m in metrics if ci.get(m, {}).get(kind) is not None}
        if row:
            out[name] = row
    return out


def results_rows(summary: dict, metrics) -> tuple[list[str], list[list[str]]]:
    """The results table (percentages): a row per fold, the mean, the std, the intervals the
    summary holds, a row per modality ablation."""
    labels = summary["labels"]
    ivs = intervals(summary, metrics)
    head = ["", "runs", *metrics, *(f"recall {n}" for n in labels)]

    def pct(x):
        return f"{100 * x:.2f}"

    def cells(m):
        return [pct(m[k]) for k in metrics] + [pct(x) for x in m["recall"]]

    rows = [[f"fold {f['fold']}" if f["fold"] is not None else "-", str(f["runs"]), *cells(f["mean"])]
            for f in summary["folds"]]
    n = str(summary["n_runs"])
    rows.append(["mean", n, *cells(summary["mean"])])
    rows.append(["std", n, *cells(summary["std"])])
    for name, iv in ivs.items():
        rows.append([name, n, *(f"{pct(iv[k][0])} - {pct(iv[k][1])}" if k in iv else ""
                                for k in metrics), *([""] * len(labels))])
    for key, ab in summary.get("ablations", {}).items():
        rows.append([f"{key} only", str(ab["runs"]), *cells(ab["mean"])])
    return head, rows


def val_curves(data: dict, metric: str) -> dict[str, dict]:
    """Per run (``fold 1 seed 0``): the validation curve of ``metric``, the training loss
    curve and the selected step."""
    out = {}
    for run, records in zip(data["runs"], data["records"]):
        out[run_label(run)] = {
            "val": [(r["step"], r["val"][metric]) for r in records if metric in r.get("val", {})],
            "loss": [(r["step"], r["loss"]) for r in records if "loss" in r],
            "selected": run["step"]}
    return out


# ----------------------------------------------------------------------------- prep outputs

PREP_FILE = "prep.json"  # memoprep.stage writes it
SHEET_FRAMES = 5  # frames per contact sheet
MAX_SHEETS = 30  # contact sheets per movie (~250 kB each), evenly spread over its segments


def prep_data(folder) -> dict:
    """A ``memo prep`` output: per movie (those ``prep.json`` lists) its record
    (``.prep/<movie>.json``: options, filter counts, each segment's speaker decision) and its
    transcript; the movies that could not be prepared."""
    from memoprep.stage import RECORDS

    folder = Path(folder)
    body = read_json(folder / PREP_FILE)
    movies = []
    for name in sorted(body.get("movies") or {}):
        rec = read_json(folder / RECORDS / f"{name}.json")
        tr = folder / "transcripts" / f"{name}.json"
        movies.append({"name": name, "movie": rec["movie"], "subtitles": rec["subtitles"],
                       "options": rec["options"], "counts": rec["counts"],
                       "segments": rec["segments"],
                       "transcript": read_json(tr) if tr.is_file() else {}})
    return {"movies": movies, "bad": body.get("bad") or {}}


def filter_rows(movies: list[dict]) -> tuple[list[str], list[list]]:
    """The filter counts: per movie (then over all, with several) its subtitle lines, the
    lines dropped per reason, and the segments left after each filter (``base``,
    ``has_face``, ``longest_spk_0.2``, ``has_active_spk``)."""
    from memoprep.stage import LISTS

    reasons: list = []
    for m in movies:
        reasons += [r for r in m["counts"]["dropped"] if r not in reasons]
    head = ["movie", "lines", *(f"dropped: {r.replace('_', ' ')}" for r in reasons), *LISTS]
    rows = [[m["name"], m["counts"]["lines"], *(m["counts"]["dropped"].get(r, 0)
                                                for r in reasons),
             *(m["counts"][k] for k in LISTS)] for m in movies]
    if len(rows) > 1:
        rows.append(["all", *(sum(col) for col in zip(*(r[1:] for r in rows)))])
    return head, rows


def prep_notes(options: dict) -> list[str]:
    """What a movie's contact sheets cannot show, given the options it was prepared with, and
    the ``memo prep`` option that records it."""
    notes = []
    if not options.get("frames"):
        notes.append("Full frames were not kept (memo prep --frames keeps them): the sheets "
                     "show the aligned 112x112 face crops instead.")
    if not options.get("all_tracks"):
        notes.append("Only the speaker's face track was kept (memo prep --all-tracks keeps "
                     "every face): the other faces are neither boxed nor traced, and a segment "
                     "without a speaker shows no face.")
    return notes


def segment_rows(movie: dict) -> list[list]:
    """Per segment of a movie: its id, time span, text, faces found, the speaker's track (or
    nobody) and each kept track's counts under the speaker rule."""
    rows = []
    for seg in movie["segments"]:
        line = movie["transcript"].get(str(seg["n"]), {})
        span = f"{line['start']:.2f}-{line['end']:.2f}" if line else ""
        counts = "; ".join(f"track {t}: " + ", ".join(f"{k.replace('_', ' ')} {v}"
                                                      for k, v in c.items())
                           for t, c in seg["tracks"].items())
        rows.append([seg["segment"], span, line.get("content", ""), seg["faces"],
                     "nobody" if seg["speaker"] is None else f"track {seg['speaker']}",
                     counts or "-"])
    return rows


def pick(n: int, k: int) -> list[int]:
    """At most ``k`` of the indices ``0..n-1``, evenly spread, first and last included."""
    if n <= k:
        return list(range(n))
    return sorted({int(i) for i in np.linspace(0, n - 1, k).round()})


def read_tracks(path: Path, segment: str | None = None) -> dict[int, dict]:
    """The faces of a ``memo prep`` csv (OpenFace's columns) per ``face_id``: frame numbers
    (from 1) and landmarks (n, 68, 2) in frame pixels; none when the file is absent."""
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f, skipinitialspace=True)
            col = {h.strip(): i for i, h in enumerate(next(reader))}
            rows = np.array([[float(v) for v in row] for row in reader if row],
                            dtype=np.float64).reshape(-1, len(col))
        xy = [[col[f"{a}_{i}"] for i in range(68)] for a in "xy"]
        frame, face = rows[:, col["frame"]].astype(int), rows[:, col["face_id"]].astype(int)
    except (OSError, UnicodeDecodeError, StopIteration, ValueError, KeyError) as exc:
        raise BadInputError(f"unreadable face csv ({type(exc).__name__}: {exc})", file=path,
                            segment=segment, fix="re-run memo prep for this movie") from None
    lm = np.stack([rows[:, xy[0]], rows[:, xy[1]]], axis=-1)
    return {int(t): {"frames": frame[face == t], "landmarks": lm[face == t]}
            for t in np.unique(face)}


def face_boxes(landmarks: np.ndarray) -> np.ndarray:
    """Per frame, the box ``(x0, y0, x1, y1)`` around a face's 68 landmarks (the detector's
    own box is not recorded)."""
    return np.concatenate([landmarks.min(axis=1), landmarks.max(axis=1)], axis=1)


def mouth_trace(frames: np.ndarray, landmarks: np.ndarray) -> list[tuple[float, float]]:
    """``(seconds from the line's start, mouth opening)`` per frame of a face track; the
    opening is the speaker rule's own measure (memoprep.speaker.lip_gap: the inner-lip gap
    over the inter-ocular distance)."""
    from memoprep.media import FPS
    from memoprep.speaker import lip_gap

    gap = lip_gap(landmarks) if len(frames) else []
    return [((int(f) - 1) / FPS, float(g)) for f, g in zip(frames, gap)]


def read_wav(path: Path) -> np.ndarray:
    """The int16 samples of a ``memo prep`` wav (16 kHz mono 16-bit)."""
    import wave

    try:
        with wave.open(str(path)) as w:
            return np.frombuffer(w.readframes(w.getnframes()), "<i2")
    except (OSError, EOFError, wave.Error) as exc:
        raise BadInputError(f"unreadable wav ({exc})", file=path,
                            fix="re-run memo prep for this movie") from None


def vad_trace(samples: np.ndarray, method: str, mode: int) -> list[tuple[float, int]]:
    """``(seconds from the line's start, 1 voiced / 0)`` per 10 ms, by the VAD the stage used
    (memoprep.vad.voice_activity; MissingComponent where its package is not installed)."""
    from memoprep.media import SAMPLE_RATE
    from memoprep.vad import HOP, voice_activity

    return [(i * HOP / SAMPLE_RATE, int(v))
            for i, v in enumerate(voice_activity(samples, method, mode))]


def _panel(folder: Path, movie: str, seg: str, fr: int, tracks: dict, opts: dict) -> dict:
    """One frame of a contact sheet: the image (the full frame, else the crops of the kept
    tracks side by side, else none) and each face's box on it, by track."""
    from PIL import Image

    from memoprep.media import FPS

    seen = {t: int(np.flatnonzero(tr["frames"] == fr)[0]) for t, tr in sorted(tracks.items())
            if fr in tr["frames"]}
    if opts.get("frames"):
        path = folder / "frames" / movie / seg / f"{fr:04d}.jpg"
        image = np.asarray(Image.open(path).convert("RGB")) if path.is_file() else None
        faces = [(t, tuple(face_boxes(tracks[t]["landmarks"][i:i + 1])[0].tolist()))
                 for t, i in seen.items()]
        return {"frame": fr, "time": (fr - 1) / FPS, "image": image, "faces": faces,
                "empty": "frame file missing"}
    root = folder / ("tracks" if opts.get("all_tracks") else "faces") / movie / f"{seg}_aligned"
    tiles, faces = [], []
    for t in seen:
        crop_id = t if opts.get("all_tracks") else 0  # faces/ holds the speaker as face 0
        path = root / f"frame_det_{crop_id:02d}_{fr:06d}.bmp"
        if path.is_file():
            tile = np.asarray(Image.open(path).convert("RGB"))
            x = sum(a.shape[1] for a in tiles)
            faces.append((t, (x, 0, x + tile.shape[1] - 1, tile.shape[0] - 1)))
            tiles.append(tile)
    image = np.concatenate(tiles, axis=1) if tiles else None
    return {"frame": fr, "time": (fr - 1) / FPS, "image": image, "faces": faces,
            "empty": "no face" if opts.get("all_tracks") else "no speaker's face\n(--all-tracks "
                     "keeps\nevery face)"}


def segment_sheet(folder, movie: dict, seg: dict) -> dict:
    """What one segment's contact sheet shows: a few frames (``panels``: image, every kept
    face's box by track, what an empty panel says), the speaker's track (None: nobody), the
    tracks the rule judged, the mouth opening of each kept track (``no_track``: what an empty
    trace says), the voice activity (None, with ``notes`` saying why, where the VAD's package
    is missing), the line's duration and text."""
    from memoprep.components import INSTALL, MissingComponent
    from memoprep.media import FPS

    folder = Path(folder)
    name, opts, sid = movie["name"], movie["options"], seg["segment"]
    speaker = seg["speaker"]
    tracks = read_tracks(folder / ("tracks" if opts.get("all_tracks") else "faces") / name
                         / f"{sid}.csv", sid)
    if not opts.get("all_tracks"):  # faces/ holds the speaker's track alone, as face 0
        tracks = {speaker: tracks[0]} if speaker is not None and 0 in tracks else {}
    line = movie["transcript"].get(str(seg["n"]), {})
    notes = []
    try:
        vad = vad_trace(read_wav(folder / "audio" / name / f"{sid}.wav"), opts["vad"],
                        opts["vad_mode"])
    except MissingComponent as exc:
        vad = None
        notes.append(f"voice activity not drawn: {exc}")
    except ImportError as exc:  # onnxruntime, for --vad silero
        vad = None
        notes.append(f"voice activity not drawn: {exc.name} is not installed: {INSTALL}")
    shown = [i + 1 for i in pick(seg["frames"], SHEET_FRAMES)]
    return {"segment": sid, "text": line.get("content", ""),
            "duration": seg["frames"] / FPS if not line else line["end"] - line["start"],
            "speaker": speaker, "decided": sorted(int(t) for t in seg["tracks"]),
            "panels": [_panel(folder, name, sid, fr, tracks, opts) for fr in shown],
            "mouth": {t: mouth_trace(tr["frames"], tr["landmarks"])
                      for t, tr in sorted(tracks.items())},
            "vad": vad, "notes": notes,
            "no_track": "no face track kept" + ("" if opts.get("all_tracks") else
                                                " (memo prep --all-tracks keeps every face)")}


def sheet_segments(movie: dict) -> list[dict]:
    """The segments of a movie that get a contact sheet: all, or :data:`MAX_SHEETS` evenly
    spread."""
    segs = movie["segments"]
    return [segs[i] for i in pick(len(segs), MAX_SHEETS)]
