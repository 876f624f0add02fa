"""Random single-segment reads from a feature db: raw LMDB limit, the original training reader
(msgpack-numpy + float32 conversion) and memo's FeatureDB, on the same keys.

    python -m bench.read_random [--segments 5000] [--reads 20000] [--rounds 5] [--profile]
"""
from __future__ import annotations

import random

import msgpack
import msgpack_numpy
import numpy as np

from memodb.feature.imgdb import create_imgdb
from memodb.store.reader import FeatureDB, open_env

from .common import OUT, cprofile, make_h5, met, parser, ratio, report, scratch, timed, warm


def raw_limit(env, keys):
    """One read transaction per read, get, one memcpy of the value bytes."""
    for k in keys:
        with env.begin(buffers=True) as txn:
            np.frombuffer(txn.get(k), np.uint8).copy()


def raw_one_txn(env, keys):
    """The same with one read transaction for all reads (as memo's reader and UNITER's)."""
    with env.begin(buffers=True) as txn:
        for k in keys:
            np.frombuffer(txn.get(k), np.uint8).copy()


def baseline(env, keys):
    """The original reader (UNITER's DetectFeatLmdb: one long-lived read transaction):
    msgpack-numpy decode, then every array to float32 (the training code makes float32
    tensors; torch is not installed, so a float32 numpy array stands in)."""
    with env.begin(buffers=True) as txn:
        for k in keys:
            dump = msgpack.loads(txn.get(k), raw=False, object_hook=msgpack_numpy.decode)
            {name: arr.astype(np.float32) for name, arr in dump.items()}


def memo(db, keys):
    for k in keys:
        db[k]


def main(argv=None) -> str:
    ap = parser(__doc__, segments=5000)
    ap.add_argument("--reads", type=int, default=20000, help="random reads per round")
    ap.add_argument("--rounds", type=int, default=5, help="rounds of each reader (best kept)")
    ap.add_argument("--profile", action="store_true",
                    help="also cProfile memo's reads into bench/out/read_random_profile.txt")
    args = ap.parse_args(argv)
    with scratch(args, "read") as d:
        make_h5(d / "h5", args.segments, args.movies, args.seed)
        path = create_imgdb(d / "h5", d / "db", workers=args.workers).path
        db = FeatureDB(path)
        rng = random.Random(args.seed)
        keys = [rng.choice(db.keys()) for _ in range(args.reads)]
        bkeys = [k.encode("utf-8") for k in keys]
        env = open_env(path)  # the environment FeatureDB uses: one mmap for all three readers
        warm(path)
        readers = {"raw": (raw_limit, env, bkeys), "raw1": (raw_one_txn, env, bkeys),
                   "base": (baseline, env, bkeys), "memo": (memo, db, keys)}
        runs = {k: [] for k in readers}
        for _ in range(args.rounds):  # round robin; the first round also warms the mmap
            for k, (fn, *a) in readers.items():
                runs[k].append(timed(fn, *a)[0])
        one = db[keys[0]]
        if args.profile:
            (OUT / "read_random_profile.txt").write_text(cprofile(memo, db, keys))
        value_kb = sum(len(db.raw(k)) for k in keys) / len(keys) / 1e3
    rate = {k: args.reads / min(v) for k, v in runs.items()}

    def row(what, k, vs, goal_txt="", ok=None):
        return [what, f"{rate[k]:,.0f}", f"{1e6 / rate[k]:.1f}", vs, goal_txt,
                "" if ok is None else met(ok)]

    memo_vs_base = rate["memo"] / rate["base"]
    raw_vs_memo = rate["raw"] / rate["memo"]
    rows = [
        row("(a) raw limit: txn.get + memcpy, a transaction per read", "raw",
            f"raw/memo {ratio(raw_vs_memo, up=True)}", "<= 3x", raw_vs_memo <= 3),
        row("(a') the same, one transaction for all reads (information)", "raw1",
            f"raw/memo {ratio(rate['raw1'] / rate['memo'], up=True)}"),
        row("(b) baseline: msgpack-numpy loads + astype(float32)", "base", "1.00x"),
        row("(c) memo: FeatureDB[key]", "memo", f"memo/baseline {ratio(memo_vs_base)}", ">= 3x",
            memo_vs_base >= 3),
    ]
    notes = [
        f"{len(db):,} segments built by memo from h5 ({args.movies} movies, ~30 faces, 342-d); "
        f"{args.reads:,} reads of random keys (seed {args.seed}), the same keys for each "
        f"reader; best of {args.rounds} rounds, run round robin, after the data file was read "
        "once (page cache warm)",
        "all readers use the same LMDB environment (memo's: read-only, lock=False); (a) opens "
        "a read transaction per read, as asked; (a'), the baseline (as UNITER's reader does) "
        "and memo (one per process) keep one read transaction for all reads",
        "torch is not installed: the baseline makes a float32 numpy array in place of a "
        "float32 tensor (every array, features included)",
        f"memo returns read-only float16 arrays (e.g. features {one['features'].dtype} "
        f"{one['features'].shape}); the baseline returns float32 copies; values read average "
        f"{value_kb:.1f} kB",
    ]
    return report("read_random", "Random single-segment reads",
                  ["reader", "reads/s", "us/read", "ratio", "goal", "met"], rows, notes)


if __name__ == "__main__":
    main()
