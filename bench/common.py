"""Shared helpers of the benchmarks: options, scratch folders, synthetic corpora, timing,
database statistics, process-tree memory and the markdown report."""
from __future__ import annotations

import argparse
import cProfile
import importlib
import io
import json
import math
import os
import platform
import pstats
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import lmdb
import numpy as np

from memodb import synth
from memodb.parallel import chunked, ordered_map
from memodb.store.ids import KEYS_KEY
from memodb.store.manifest import Checksum, write_json_atomic

ROOT = Path(__file__).resolve().parent.parent  # the repository: children run from here
OUT = ROOT / "bench" / "out"  # where report() writes (set_out moves it)
MB = 1e6
MIB = 1 << 20


def cores() -> int:
    return len(os.sched_getaffinity(0))


def set_out(folder) -> Path:
    """Send the tables of :func:`report` to ``folder`` (default ``bench/out``); the suite
    (``python -m bench --out FILE``) writes them beside its ALL.md."""
    global OUT
    OUT = Path(folder).resolve()
    return OUT


def parser(doc: str, segments: int, movies: int = 10) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    p.add_argument("--segments", type=int, default=segments, help="total segments generated")
    p.add_argument("--movies", type=int, default=movies, help="movies they are spread over")
    p.add_argument("--workers", type=int, default=cores(), help="worker processes (= cores)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tmp", default=None, help="parent of the scratch folder (default: $TMPDIR)")
    p.add_argument("--keep", action="store_true", help="keep the generated data")
    return p


@contextmanager
def scratch(args, name: str):
    """A fresh folder for generated inputs and built databases, removed unless --keep."""
    path = Path(tempfile.mkdtemp(prefix=f"memo-bench-{name}-", dir=args.tmp))
    try:
        yield path
    finally:
        if args.keep:
            print(f"kept {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def make_h5(root, segments: int, movies: int, seed: int = 0, faces: int = 30) -> list[str]:
    """Denseface h5 files (342-d ``feat``, no trans1/trans2), ``segments`` spread over
    ``movies``; every 9th segment has no face. Returns the segment ids."""
    per_movie = -(-segments // movies)
    return synth.make_h5_corpus(root, movies=movies, segments=per_movie, faces=faces, seed=seed,
                                with_trans=False)


def _h5_movie(root: str, per_movie: int, seed: int, faces: int, m: int) -> list[str]:
    import h5py

    rng = np.random.default_rng([seed, m, 5])
    rows = rng.standard_normal((4096, 342), dtype=np.float32)
    pred = rng.dirichlet(np.ones(8), 4096).astype(np.float32)
    movie = f"No{m:04d}.Movie_{m}"
    (Path(root) / movie).mkdir(parents=True, exist_ok=True)
    ids = []
    with h5py.File(Path(root) / movie / synth.MOVIE_H5, "w") as f:
        g = f.create_group(movie)
        for s in range(1, per_movie + 1):
            n = 0 if s % 9 == 0 else int(rng.integers(max(1, faces // 3), faces * 2))
            at = int(rng.integers(0, len(rows) - n))
            seg = g.create_group(str(s))
            seg.create_dataset("feat", data=rows[at:at + n])
            seg.create_dataset("pred", data=pred[at:at + n])
            seg.create_dataset("confidence",
                               data=rng.uniform(0.2, 1.0, n).astype(np.float32))
            seg.create_dataset("frame_idx", data=np.sort(
                rng.choice(5000, n, replace=False)).astype(np.int64))
            ids.append(f"{movie}_{s}")
    return ids


def make_h5_parallel(root, segments: int, movies: int, seed: int = 0, faces: int = 30,
                     workers: int | None = None) -> list[str]:
    """:func:`make_h5`'s layout and face counts (one h5 file per movie, ``feat`` 342-d float32,
    ``pred``, ``confidence``, ``frame_idx``; every 9th segment without a face, others
    ``faces // 3`` to ``2 * faces - 1`` faces), written a movie per task by ``workers``
    processes, for corpora of 100k segments and more (make_h5 writes 200k in ~8 minutes on
    one core). Faster per segment too: each movie's feature rows are slices of one block of
    4096 random rows (stored values are as large, and as incompressible, as distinct ones).
    Seeded per movie, so the files do not depend on ``workers``. Returns the segment ids."""
    per_movie = -(-segments // movies)
    work = partial(_h5_movie, str(root), per_movie, seed, faces)
    return [i for ids in ordered_map(work, list(range(movies)), workers) for i in ids]


def _npz_chunk(out: str, movies: int, seed: int, faces: int, dim: int, chunk: list[int]) -> int:
    rng = np.random.default_rng([seed, chunk[0]])
    rows = rng.standard_normal((4096, dim), dtype=np.float32).astype(np.float16)
    soft = rng.dirichlet(np.ones(8), 4096).astype(np.float16)
    nbytes = 0
    for i in chunk:
        n = int(rng.integers(0, 2 * faces + 1))  # mean = faces
        at = int(rng.integers(0, len(rows) - n))
        m = i % movies
        path = os.path.join(out, f"No{m:04d}.Movie_{m}_{i // movies + 1}.npz")
        np.savez(path, features=rows[at:at + n], soft_labels=soft[at:at + n],
                 confidence=rng.uniform(0.2, 1.0, n).astype(np.float16),
                 frame_idxs=np.sort(rng.choice(5000, n, replace=False)).astype(np.int32))
        nbytes += os.path.getsize(path)
    return nbytes


def make_npz(out, segments: int, movies: int, seed: int = 0, faces: int = 30, dim: int = 342,
             workers: int | None = None) -> int:
    """``segments`` trans2npz-style npz files written directly (features (n, dim) float16,
    soft_labels (n, 8) float16, confidence (n,) float16, frame_idxs (n,) int32, n uniform in
    0..2*faces). Returns the bytes written."""
    Path(out).mkdir(parents=True, exist_ok=True)
    work = partial(_npz_chunk, str(out), movies, seed, faces, dim)
    return sum(ordered_map(work, chunked(list(range(segments)), 1000), workers))


def npz_ids(segments: int, movies: int) -> list[str]:
    """The segment ids (file stems, = feature-db keys without ``.npz``) :func:`make_npz`
    writes for ``segments`` over ``movies``, movie by movie, segment 1, 2, ..."""
    return [f"No{m:04d}.Movie_{m}_{s}" for m in range(movies)
            for s in range(1, len(range(m, segments, movies)) + 1)]


# --- captions: subtitle-like sentences over a Zipf vocabulary of generated words -----------
_ONSETS = ("", "", "b", "bl", "br", "c", "ch", "cl", "cr", "d", "dr", "f", "fl", "fr", "g",
           "gl", "gr", "h", "j", "k", "l", "m", "n", "p", "pl", "pr", "qu", "r", "s", "sh",
           "sk", "sl", "sm", "sp", "st", "str", "t", "th", "tr", "v", "w", "wh", "y", "z")
_NUCLEI = ("a", "a", "e", "e", "i", "o", "o", "u", "ai", "ea", "ee", "oo", "ou", "y")
_CODAS = ("", "", "", "", "n", "r", "s", "t", "l", "m", "nd", "ng", "st", "ck", "rt", "ll")
_ACCENTS = {"a": "àáâä", "e": "éèêë", "i": "íï", "o": "óôö", "u": "úüù", "c": "ç", "n": "ñ"}
_SUFFIXES = ("'s", "'s", "n't", "'re", "'ll", "'m", "'ve", "'d")
EMOTIONS = ("anger", "anticipation", "disgust", "fear", "joy", "sadness", "surprise", "trust")


def caption_vocab(size: int = 5000, seed: int = 0) -> list[str]:
    """``size`` distinct generated words (1-3 syllables) in Zipf rank order: shorter words
    rank higher, with noise. Past the 50 most frequent, about 3% are names (always
    capitalised) and 4% carry an accent (é, ñ, ç, ...)."""
    rng = np.random.default_rng([seed, 1])
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choice(_ONSETS) + rng.choice(_NUCLEI) + rng.choice(_CODAS)
                          for _ in range(rng.choice([1, 2, 3], p=[0.3, 0.45, 0.25]))))
    words = sorted(words)  # a set's order is not reproducible
    noise = rng.normal(0, 2, len(words))
    ranked = [words[i] for i in np.argsort([len(w) + x for w, x in zip(words, noise)],
                                           kind="stable")]
    for rank, w in enumerate(ranked[50:], 50):
        if rng.random() < 0.04:
            spots = [i for i, ch in enumerate(w) if ch in _ACCENTS]
            if spots:
                i = int(rng.choice(spots))
                w = w[:i] + str(rng.choice(list(_ACCENTS[w[i]]))) + w[i + 1:]
        if rng.random() < 0.03:
            w = w.capitalize()
        ranked[rank] = w
    return ranked


def make_captions(path, segments: int, movies: int = 100, seed: int = 0,
                  vocab_size: int = 5000, ids: list[str] | None = None) -> dict:
    """A MEmoBERT captions file ``{"No0003.Movie_3_17": ["sentence", ...]}`` of ``segments``
    segments over ``movies`` (file order: movie by movie, segment 1, 2, ...). Subtitle-like:
    1-3 sentences per segment (mostly 1), 3-30 words each (mean ~9), words drawn from
    :func:`caption_vocab` with Zipf-Mandelbrot frequencies, the first word capitalised, now and
    then a comma, a contraction, a number, a quoted word, SHOUTING, a dialogue dash, and
    ``.``, ``?``, ``!``, ``...`` or ``?!`` at the end. ``ids``: the segment ids to use
    instead, in file order (e.g. :func:`npz_ids`, to match a feature corpus; ``segments`` is
    then ``len(ids)``). Returns counts and the vocabulary."""
    segments = len(ids) if ids is not None else segments
    rng = np.random.default_rng([seed, 2])
    vocab = caption_vocab(vocab_size, seed)
    ranks = np.arange(1, len(vocab) + 1)
    p = 1 / (ranks + 2.7) ** 1.07
    n_sent = rng.choice([1, 2, 3], size=segments, p=[0.6, 0.3, 0.1])
    total = int(n_sent.sum())
    lengths = np.minimum(2 + rng.geometric(1 / 7, size=total), 30)
    n_words = int(lengths.sum())
    toks = np.array(vocab, dtype=object)[rng.choice(len(vocab), size=n_words, p=p / p.sum())]
    u = rng.random((5, n_words))
    for mask, fn in ((u[0] < 0.04, lambda t: t + str(rng.choice(_SUFFIXES))),
                     (u[1] < 0.01, lambda t: str(int(rng.integers(0, 2000)))),
                     (u[2] < 0.008, lambda t: f'"{t}"'),
                     (u[3] < 0.006, str.upper),
                     (u[4] < 0.07, lambda t: t + ",")):
        at = np.flatnonzero(mask)
        toks[at] = [fn(t) for t in toks[at]]
    ends = np.cumsum(lengths)
    starts = ends - lengths
    toks[starts] = [t[:1].upper() + t[1:] for t in toks[starts]]
    last = ends - 1
    toks[last] = [t.rstrip(",") + e for t, e in
                  zip(toks[last], rng.choice([".", "?", "!", "...", "?!"], size=total,
                                             p=[0.62, 0.2, 0.1, 0.06, 0.02]))]
    dash = rng.random(total) < 0.05
    sentences = [("- " if d else "") + " ".join(toks[a:b]) for a, b, d in zip(starts, ends, dash)]
    caps, at = {}, 0
    per_movie = -(-segments // movies)
    for i, n in enumerate(n_sent):
        key = ids[i] if ids is not None else \
            f"No{i // per_movie:04d}.Movie_{i // per_movie}_{i % per_movie + 1}"
        caps[key] = sentences[at:at + n]
        at += n
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(caps, f, ensure_ascii=False)
    return {"segments": segments, "sentences": total, "words": n_words,
            "bytes": os.path.getsize(path), "vocab": vocab}


def make_lexicon(path, vocab: list[str], words: int = 300, seed: int = 0) -> int:
    """An emotion lexicon (``word<TAB>category`` lines) of ``words`` words sampled from
    ``vocab`` past its 10 most frequent, one category each (a fifth get a second one).
    Returns the number of lines."""
    rng = np.random.default_rng([seed, 3])
    chosen = rng.choice(np.arange(10, len(vocab)), size=words, replace=False)
    lines = []
    for i in chosen:
        for cat in rng.choice(EMOTIONS, size=1 + (rng.random() < 0.2), replace=False):
            lines.append(f"{vocab[i]}\t{cat}\n")
    Path(path).write_text("".join(lines), encoding="utf-8")
    return len(lines)


def timed(fn, *args, **kwargs):
    """(seconds, result) of one call."""
    t = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - t, result


# Runs in a child process: import a function, call it, report its time and resources.
_CHILD = """
import importlib, json, resource, sys, time
fn = getattr(importlib.import_module(sys.argv[1]), sys.argv[2])
args = json.loads(sys.argv[3])
def kib(field):
    with open("/proc/self/status") as f:
        return next(int(x.split()[1]) for x in f if x.startswith(field + ":"))
def cpu(who):
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime
rss0 = kib("VmRSS")
c, w, t = cpu(resource.RUSAGE_SELF), cpu(resource.RUSAGE_CHILDREN), time.perf_counter()
result = fn(*args)
seconds = time.perf_counter() - t
c, w = cpu(resource.RUSAGE_SELF) - c, cpu(resource.RUSAGE_CHILDREN) - w
print(json.dumps({"seconds": seconds, "cpu": c + w, "result": result, "rss_start_kib": rss0,
                  "peak_rss_kib": kib("VmHWM"),  # ru_maxrss starts at the parent's peak
                  "workers_peak_rss_kib": w and resource.getrusage(
                      resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


def summarize(runs: dict) -> tuple:
    """Of ``{build: [in_child results]}``: the best run and its seconds, the least CPU seconds,
    the largest peak RSS of the process and of its workers (MiB) per build, and the largest
    RSS once imported (MiB): ``(best, seconds, cpu, rss, workers_rss, rss_start)``."""
    best = {k: min(v, key=lambda x: x["seconds"]) for k, v in runs.items()}
    return (best, {k: b["seconds"] for k, b in best.items()},
            {k: min(x["cpu"] for x in v) for k, v in runs.items()},
            {k: max(x["peak_rss_kib"] for x in v) / 1024 for k, v in runs.items()},
            {k: max(x["workers_peak_rss_kib"] for x in v) / 1024 for k, v in runs.items()},
            max(x["rss_start_kib"] for v in runs.values() for x in v) / 1024)


def in_child(fn, *args, env: dict | None = None, watch: bool = False) -> dict:
    """Call module-level ``fn(*args)`` (JSON-able arguments and result) in a fresh Python
    process, so that each run has its own peak RSS. Returns ``seconds`` (wall time of the call
    alone, not the interpreter start or imports), ``cpu`` (user + system seconds of the call:
    all threads, and the worker processes it waited for), ``peak_rss_kib`` (VmHWM of the
    process), ``workers_peak_rss_kib`` (the largest VmHWM of its waited-for children, pages
    inherited at fork included; 0 when no child ran), ``rss_start_kib`` (VmRSS once the
    module is imported, before the call) and ``result``. ``watch``: also poll the process
    tree while it runs (:func:`watch_tree`) and add its peaks as ``tree`` (KiB: ``rss_sum``,
    ``pss_sum``, ``anon_sum``), the memory of a pipeline whose stages fork workers."""
    module = fn.__module__
    if module == "__main__":  # run as python -m bench.xxx
        module = sys.modules["__main__"].__spec__.name
    importlib.import_module(module)  # fail here, not in the child
    with tempfile.TemporaryFile("w+") as stdout:  # a file: a chatty child cannot block
        proc = subprocess.Popen([sys.executable, "-c", _CHILD, module, fn.__name__,
                                 json.dumps([str(a) if isinstance(a, Path) else a
                                             for a in args])],
                                stdout=stdout, text=True, cwd=ROOT,
                                env={**os.environ, **(env or {})})
        if watch:
            peaks = watch_tree(proc)
            del peaks["hwm"]
        proc.wait()
        stdout.seek(0)
        out = stdout.read()
    if proc.returncode:
        raise SystemExit(f"{module}.{fn.__name__} failed in a child process "
                         f"(exit {proc.returncode})")
    res = json.loads(out.strip().splitlines()[-1])
    if watch:
        res["tree"] = peaks
    return res


def cpu_seconds() -> float:
    """User + system CPU time of this process and of its reaped children (pool workers)."""
    return sum(getattr(resource.getrusage(who), f) for who in
               (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN) for f in ("ru_utime", "ru_stime"))


def busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot, every process of every user
    (``/proc/stat``: user + nice + system + irq + softirq + steal). Its growth over a
    measurement, less this process's and its children's (:func:`cpu_seconds`), is the other
    work that shared the machine meanwhile."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = (
            int(x) for x in f.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def cprofile(fn, *args, sorts=("tottime",), limit: int = 18, **kwargs) -> str:
    """cProfile one call; the stats text, once per sort key."""
    prof = cProfile.Profile()
    prof.runcall(fn, *args, **kwargs)
    text = io.StringIO()
    for key in sorts:
        pstats.Stats(prof, stream=text).sort_stats(key).print_stats(limit)
    return text.getvalue()


def warm(*paths) -> int:
    """Read every file under ``paths`` once, so a timed run finds its inputs in the page cache,
    and flush dirty pages (``sync``), so it does not pay for earlier steps' writes."""
    n = 0
    for p in map(Path, paths):
        for f in [p] if p.is_file() else sorted(x for x in p.rglob("*") if x.is_file()):
            with open(f, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    n += len(chunk)
    os.sync()
    return n


def db_stats(path) -> tuple[int, int, str]:
    """(segments, stored value bytes, checksum) of a feature db, ``__keys__`` left out. The
    checksum is memo's manifest checksum, so databases holding the same values compare equal
    whichever tool wrote them and in whatever order."""
    ck, n, size = Checksum(), 0, 0
    with lmdb.open(str(path), readonly=True, lock=False) as env, env.begin() as txn:
        for key, value in txn.cursor():
            if key != KEYS_KEY:
                ck.update(key, value)
                n += 1
                size += len(value)
    return n, size, ck.hexdigest()


def _proc_tree(root: int) -> list[int]:
    parent = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    parent[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += [c for c, p in parent.items() if p == pid]
    return tree


def _kib(pid: int, file: str, field: str) -> int:
    try:
        with open(f"/proc/{pid}/{file}") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def watch_tree(proc, every: float = 0.05) -> dict:
    """Poll a running subprocess and its descendants until it exits. Returns the peaks (KiB) of
    the summed RSS, summed PSS and summed RssAnon (heap and private pages: RSS without mapped
    files such as data.mdb) of the tree, and each process's own VmHWM."""
    peak = {"rss_sum": 0, "pss_sum": 0, "anon_sum": 0}
    hwm: dict[int, int] = {}
    while proc.poll() is None:
        tree = _proc_tree(proc.pid)
        peak["rss_sum"] = max(peak["rss_sum"], sum(_kib(p, "status", "VmRSS") for p in tree))
        peak["pss_sum"] = max(peak["pss_sum"], sum(_kib(p, "smaps_rollup", "Pss") for p in tree))
        peak["anon_sum"] = max(peak["anon_sum"], sum(_kib(p, "status", "RssAnon") for p in tree))
        for p in tree:
            hwm[p] = max(hwm.get(p, 0), _kib(p, "status", "VmHWM"))
        time.sleep(every)
    peak["hwm"] = hwm
    return peak


def watch_anon(proc, every: float = 0.05) -> dict:
    """Poll a running subprocess and its descendants until it exits. Returns the peaks (KiB)
    of anonymous resident memory (RssAnon: heap and private pages, not mapped files such as an
    LMDB data.mdb, which VmRSS / VmHWM count once touched): of the process itself
    (``main``), of its largest descendant (``worker``) and of the tree summed (``sum``; pages a
    forked worker still shares with its parent count in both)."""
    peak = {"main": 0, "worker": 0, "sum": 0}
    while proc.poll() is None:
        anon = {p: _kib(p, "status", "RssAnon") for p in _proc_tree(proc.pid)}
        peak["main"] = max(peak["main"], anon.get(proc.pid, 0))
        peak["worker"] = max([peak["worker"]] + [v for p, v in anon.items() if p != proc.pid])
        peak["sum"] = max(peak["sum"], sum(anon.values()))
        time.sleep(every)
    return peak


def ratio(x: float, up: bool = False) -> str:
    """``x`` with two decimals, rounded away from the goal (down, or up for "at most" goals),
    so a figure that misses its goal never displays as meeting it."""
    return f"{(math.ceil if up else math.floor)(x * 100) / 100:.2f}x"


def met(ok: bool) -> str:
    return "yes" if ok else "**NO**"


def machine() -> str:
    model = platform.machine()
    with open("/proc/cpuinfo") as f:
        model = next((x.split(":", 1)[1].strip() for x in f if x.startswith("model name")), model)
    ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"machine: {cores()} cores ({model}), {ram:.0f} GiB RAM, load average {load} at the "
            f"end, Python {platform.python_version()}, numpy {np.__version__}, lmdb "
            f"{lmdb.__version__}; memo at {REVISION}")


def revision() -> str:
    """The measured code: git commit, and which of memodb/, memotrain/ and bench/ differ
    from it."""
    git = ["git", "-C", str(ROOT)]
    try:
        sha = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = [d for d in ("memodb", "memotrain", "bench") if subprocess.run(
            [*git, "status", "--porcelain", d], capture_output=True, text=True).stdout.strip()]
    except (OSError, subprocess.CalledProcessError):
        return "unknown revision"
    return sha + (f" + uncommitted changes in {', '.join(d + '/' for d in dirty)}"
                  if dirty else "")


REVISION = revision()  # at import, when memodb was imported


def report(name: str, title: str, header: list, rows: list, notes=()) -> str:
    """Print a markdown table with notes, write it to bench/out/<name>.md, return it."""
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    lines += [""] + [f"- {n}" for n in (*notes, machine())]
    md = "\n".join(lines) + "\n"
    OUT.mkdir(parents=True, exist_ok=True)
    write_json_atomic(OUT / f"{name}.md", md)  # a str: written as is, through a rename
    print(md)
    return md


def make_train_dbs(root, segments: int, movies: int, seed: int = 0, faces: int = 30,
                   workers: int | None = None) -> tuple[Path, Path]:
    """A face feature db (:func:`make_npz` -> ``create_imgdb``, conf_th 0.5, max_bb 36) and a
    text db over the same segment ids (:func:`make_captions` -> ``create_txtdb`` with that
    img_db, min_faces 0, max_len 100) under ``root``, for the trainer benchmarks. Returns
    (txt_db, img_db)."""
    from memodb.feature.imgdb import create_imgdb
    from memodb.text.txtdb import create_txtdb

    root = Path(root)
    make_npz(root / "npz", segments, movies, seed, faces, workers=workers)
    img = create_imgdb(root / "npz", root / "img", conf_th=0.5, max_bb=36,
                       workers=workers).path
    make_captions(root / "captions.json", segments, movies, seed, ids=npz_ids(segments, movies))
    create_txtdb(root / "captions.json", root / "txt", img_db=img, min_faces=0, max_len=100,
                 workers=workers)
    shutil.rmtree(root / "npz", ignore_errors=True)
    return root / "txt", Path(img)
