"""Feature-db build throughput: memo create_imgdb (from npz, and from h5 in one pass) against
the original UNITER / MEmoBERT builder (npz -> db), on the same generated corpus.

    python -m bench.imgdb_build [--segments 3000] [--movies 10] [--profile]
"""
from __future__ import annotations

import cProfile
import glob
import io
import json
import multiprocessing as mp
import os
import pstats
from functools import partial
from pathlib import Path

import lmdb
import msgpack
import msgpack_numpy
import numpy as np

from memodb.imgdb import create_imgdb
from memodb.trans2npz import trans2npz

from .common import MB, OUT, db_stats, make_h5, met, parser, ratio, report, scratch, timed, warm

CONF_TH, MAX_BB = 0.5, 36


# --- baseline: the original tool (UNITER convert_imgdir.py as used by MEmoBERT) -------------
def _baseline_load(conf_th, max_bb, fname):
    with np.load(fname, allow_pickle=True) as npz:
        keep = np.flatnonzero(npz["confidence"] > conf_th)[:max_bb]
        dump = {}
        for key, arr in npz.items():
            if arr.dtype == np.float32:
                arr = arr.astype(np.float16)
            dump[key] = arr[keep]
    value = msgpack.dumps(dump, default=msgpack_numpy.encode, use_bin_type=True)
    return os.path.basename(fname), value, len(keep)


def baseline_build(npz_dir, out_dir, conf_th=CONF_TH, max_bb=MAX_BB, workers=2) -> Path:
    name = f"th{conf_th}_max{max_bb}_min0"
    db = Path(out_dir) / f"feat_{name}"
    os.makedirs(out_dir, exist_ok=True)
    env = lmdb.open(str(db), map_size=1024 ** 4)
    txn = env.begin(write=True)
    files = glob.glob(f"{npz_dir}/*.npz")
    name2nbb = {}
    load = partial(_baseline_load, conf_th, max_bb)
    with mp.get_context("fork").Pool(workers) as pool:
        for i, (fname, value, nbb) in enumerate(pool.imap_unordered(load, files, chunksize=128)):
            txn.put(key=fname.encode("utf-8"), value=value)
            if i % 1000 == 0:
                txn.commit()
                txn = env.begin(write=True)
            name2nbb[fname] = nbb
    txn.put(key=b"__keys__", value=json.dumps(list(name2nbb.keys())).encode("utf-8"))
    txn.commit()
    env.close()
    with open(Path(out_dir) / f"nbb_{name}.json", "w") as f:
        json.dump(name2nbb, f)
    return db


# --- profile of memo's build ----------------------------------------------------------------
def profile(d: Path, workers: int) -> str:
    """cProfile of memo's builds: workers=1 (all work in one process: where the CPU goes) and
    the main process at ``workers`` (is the consumer the bottleneck?)."""
    out = io.StringIO()
    for src, w in (("npz", 1), ("h5", 1), ("npz", workers), ("h5", workers)):
        prof = cProfile.Profile()
        prof.runcall(create_imgdb, d / src, d / f"prof_{src}_{w}", conf_th=CONF_TH,
                     max_bb=MAX_BB, workers=w)
        out.write(f"\n===== memo create_imgdb from {src}, workers={w}"
                  f"{' (main process only)' if w > 1 else ''} =====\n")
        for key in ("tottime", "cumulative"):
            pstats.Stats(prof, stream=out).sort_stats(key).print_stats(18)
    return out.getvalue()


def main(argv=None) -> str:
    ap = parser(__doc__, segments=3000)
    ap.add_argument("--profile", action="store_true",
                    help="also cProfile memo's builds into bench/out/imgdb_build_profile.txt")
    args = ap.parse_args(argv)
    w = args.workers
    with scratch(args, "imgdb") as d:
        make_h5(d / "h5", args.segments, args.movies, args.seed)
        warm(d / "h5")
        t_t2n, _ = timed(trans2npz, d / "h5", d / "npz", workers=w)
        warm(d / "npz")
        t_base, base = timed(baseline_build, d / "npz", d / "base", workers=w)
        warm(d / "npz")
        t_npz, r_npz = timed(create_imgdb, d / "npz", d / "memo_npz", conf_th=CONF_TH,
                             max_bb=MAX_BB, workers=w)
        warm(d / "h5")
        t_h5, r_h5 = timed(create_imgdb, d / "h5", d / "memo_h5", conf_th=CONF_TH,
                           max_bb=MAX_BB, workers=w)
        stats = [db_stats(p) for p in (base, r_npz.path, r_h5.path)]
        if args.profile:
            text = profile(d, w)
            (OUT / "imgdb_build_profile.txt").write_text(text)
            print(f"profile written to {OUT / 'imgdb_build_profile.txt'}")
    n, nbytes, _ = stats[0]
    same = len(set(stats)) == 1
    two_pass = t_t2n + t_base

    def row(what, t, ref, goal=None):
        r = ref / t
        return [what, f"{t:.2f}", f"{n / t:,.0f}", f"{nbytes / MB / t:.1f}", ratio(r),
                f">= {goal:g}x" if goal else "", met(r >= goal) if goal else ""]

    rows = [
        row("baseline npz->db (UNITER-style Pool)", t_base, t_base),
        row("memo create_imgdb npz->db", t_npz, t_base, 2),
        ["trans2npz h5->npz (memo)", f"{t_t2n:.2f}", f"{n / t_t2n:,.0f}", "", "", "", ""],
        row("two-pass h5->db: trans2npz + baseline", two_pass, two_pass),
        row("memo create_imgdb h5->db (one pass)", t_h5, two_pass, 3),
    ]
    notes = [
        f"{n:,} segments ({args.movies} movies, ~30 faces each, 342-d feat; h5 generated without "
        f"trans1/trans2), conf_th {CONF_TH}, max_bb {MAX_BB}; {nbytes / MB:.1f} MB of stored "
        f"values; MB/s = stored value MB / build seconds; ratio = reference seconds / seconds "
        "(reference: baseline for npz->db, trans2npz + baseline for h5->db)",
        f"{w} worker processes everywhere ({w} cores); baseline: fork Pool, per-file np.load, "
        "selection conf > th then first max_bb, msgpack-numpy dumps in the worker, "
        "imap_unordered(chunksize=128), txn.put in completion order, commit every 1000 puts, "
        "map_size 1 TiB, __keys__ and nbb json at the end",
        "page cache warm: every input file was read once right before each timed build; "
        "each build was run once, into a fresh output folder",
        f"the three databases hold identical values (same checksum): {met(same)}",
    ]
    return report("imgdb_build", "Feature-db build throughput (create-imgdb)",
                  ["build", "s", "segments/s", "MB/s", "vs reference", "goal", "met"], rows, notes)


if __name__ == "__main__":
    main()
