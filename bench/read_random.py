"""Random single-segment reads from a feature db: raw LMDB limit, the original training reader
(msgpack-numpy + float32 conversion) and memo's FeatureDB, on the same keys.

    python -m bench.read_random [--segments 5000] [--reads 20000] [--rounds 5] [--profile]
"""
from __future__ import annotations

import random

import msgpack
import msgpack_numpy
import numpy as np

from memodb.imgdb import create_imgdb
from memodb.reader import FeatureDB, open_env

from .common import OUT, cprofile, make_h5, met, parser, ratio, report, scratch, timed, warm


def raw_limit(env, keys):
    """One read transaction per read, get, one memcpy of the value bytes."""
    for k in keys:
        with env.begin(buffers=True) as txn:
            np.frombuffer(txn.get(k), np.uint8).copy()


def baseline(env, keys):
    """The original reader: msgpack-numpy decode, then every array to float32 (the training
    code makes float32 tensors; torch is not installed, so a float32 numpy array stands in)."""
    for k in keys:
        with env.begin(buffers=True) as txn:
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
        runs = {"raw": [], "base": [], "memo": []}
        for _ in range(args.rounds):  # round robin; the first round also warms the mmap
            runs["raw"].append(timed(raw_limit, env, bkeys)[0])
            runs["base"].append(timed(baseline, env, bkeys)[0])
            runs["memo"].append(timed(memo, db, keys)[0])
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
        row("(a) raw limit: txn.get + memcpy", "raw", f"raw/memo {ratio(raw_vs_memo)}", "<= 3x",
            raw_vs_memo <= 3),
        row("(b) baseline: msgpack-numpy loads + astype(float32)", "base", "1.00x"),
        row("(c) memo: FeatureDB[key]", "memo", f"memo/baseline {ratio(memo_vs_base)}", ">= 3x",
            memo_vs_base >= 3),
    ]
    notes = [
        f"{len(db):,} segments built by memo from h5 ({args.movies} movies, ~30 faces, 342-d); "
        f"{args.reads:,} reads of random keys (seed {args.seed}), the same keys for each "
        f"reader; best of {args.rounds} rounds, run round robin, after the data file was read "
        "once (page cache warm)",
        "each read opens and closes its own read transaction, for all three readers, on the "
        "same LMDB environment (memo's, read-only, lock=False)",
        "torch is not installed: the baseline makes a float32 numpy array in place of a "
        "float32 tensor (every array, features included)",
        f"memo returns read-only float16 views (e.g. features {one['features'].dtype} "
        f"{one['features'].shape}); the baseline returns float32 copies; values read average "
        f"{value_kb:.1f} kB",
    ]
    return report("read_random", "Random single-segment reads",
                  ["reader", "reads/s", "us/read", "ratio", "goal", "met"], rows, notes)


if __name__ == "__main__":
    main()
