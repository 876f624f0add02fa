"""Shared helpers of the benchmarks: options, scratch folders, synthetic corpora, timing,
database statistics, process-tree memory and the markdown report."""
from __future__ import annotations

import argparse
import cProfile
import io
import math
import os
import platform
import pstats
import resource
import shutil
import subprocess
import tempfile
import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import lmdb
import numpy as np

from memodb import synth
from memodb.ids import KEYS_KEY
from memodb.manifest import Checksum
from memodb.parallel import chunked, ordered_map

OUT = Path(__file__).resolve().parent / "out"
MB = 1e6
MIB = 1 << 20


def cores() -> int:
    return len(os.sched_getaffinity(0))


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


def timed(fn, *args, **kwargs):
    """(seconds, result) of one call."""
    t = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - t, result


def cpu_seconds() -> float:
    """User + system CPU time of this process and of its reaped children (pool workers)."""
    return sum(getattr(resource.getrusage(who), f) for who in
               (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN) for f in ("ru_utime", "ru_stime"))


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
    the summed RSS and summed PSS of the tree, and each process's own VmHWM."""
    peak = {"rss_sum": 0, "pss_sum": 0}
    hwm: dict[int, int] = {}
    while proc.poll() is None:
        tree = _proc_tree(proc.pid)
        peak["rss_sum"] = max(peak["rss_sum"], sum(_kib(p, "status", "VmRSS") for p in tree))
        peak["pss_sum"] = max(peak["pss_sum"], sum(_kib(p, "smaps_rollup", "Pss") for p in tree))
        for p in tree:
            hwm[p] = max(hwm.get(p, 0), _kib(p, "status", "VmHWM"))
        time.sleep(every)
    peak["hwm"] = hwm
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
    """The measured code: git commit, and whether memodb/ differs from it."""
    git = ["git", "-C", str(OUT.parent.parent)]
    try:
        sha = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run([*git, "status", "--porcelain", "memodb"], capture_output=True,
                               text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown revision"
    return sha + (" + uncommitted changes in memodb/" if dirty else "")


REVISION = revision()  # at import, when memodb was imported


def report(name: str, title: str, header: list, rows: list, notes=()) -> str:
    """Print a markdown table with notes, write it to bench/out/<name>.md, return it."""
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    lines += [""] + [f"- {n}" for n in (*notes, machine())]
    md = "\n".join(lines) + "\n"
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}.md").write_text(md)
    print(md)
    return md
