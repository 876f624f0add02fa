"""Peak memory of a large feature-db build: memo create_imgdb from npz files, run in a child
process; peak RSS of its main process and of its workers against the size of the data.mdb
it writes and against a 1 GiB goal.

    python -m bench.build_memory [--segments 20000]     # the docs figure: --segments 200000
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

from .common import MIB, make_npz, met, parser, ratio, report, scratch, timed, warm, watch_tree

GOAL_MIB = 1024

# Runs in the child: the build, then its own and its (waited-for) children's peak RSS.
CHILD = """
import json, resource, sys, time
from memodb.feature.imgdb import create_imgdb
t = time.perf_counter()
r = create_imgdb(sys.argv[1], sys.argv[2], conf_th=0.5, max_bb=36, workers=int(sys.argv[3]))
print(json.dumps({"seconds": time.perf_counter() - t, "path": str(r.path),
                  "segments": r.counts["segments"],
                  "self_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "children_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


def main(argv=None) -> str:
    args = parser(__doc__, segments=20000, movies=100).parse_args(argv)
    with scratch(args, "memory") as d:
        t_gen, npz_bytes = timed(make_npz, d / "npz", args.segments, args.movies, args.seed,
                                 workers=args.workers)
        warm(d / "npz")  # also syncs the freshly written files
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(d / "npz"), str(d / "out"),
                                 str(args.workers)], stdout=subprocess.PIPE, text=True)
        peaks = watch_tree(proc)
        out, _ = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"build failed (exit {proc.returncode})")
        res = json.loads(out.strip().splitlines()[-1])
        mdb = os.path.getsize(os.path.join(res["path"], "data.mdb")) / MIB
        worker_hwm = max([v for p, v in peaks["hwm"].items() if p != proc.pid] or [0])

    def row(what, mib, goal=True):
        return [what, f"{mib:,.0f}", ratio(mib / mdb), f"{mib / GOAL_MIB:.2f}",
                met(mib <= GOAL_MIB) if goal else ""]

    rows = [
        ["data.mdb written (baseline)", f"{mdb:,.0f}", "1.00x", f"{mdb / GOAL_MIB:.2f}", ""],
        row("main process peak RSS (getrusage SELF)", res["self_kib"] / 1024),
        row("largest worker peak RSS (getrusage CHILDREN)", res["children_kib"] / 1024),
        row("largest worker peak RSS (VmHWM, polled)", worker_hwm / 1024),
        row("whole tree, peak of summed RSS (polled)", peaks["rss_sum"] / 1024),
        row("whole tree, peak of summed PSS (polled)", peaks["pss_sum"] / 1024),
    ]
    notes = [
        f"{res['segments']:,} segments written as npz ({npz_bytes / MIB:,.0f} MiB, features "
        "(n, 342) float16, soft_labels (n, 8) float16, confidence (n,) float16, frame_idxs (n,) "
        f"int32, n uniform 0..60, mean 30) in {t_gen:.0f} s; built by memo create_imgdb "
        f"(conf_th 0.5, max_bb 36, {args.workers} workers) in a child process in "
        f"{res['seconds']:.0f} s",
        "polled: /proc/<pid>/status VmRSS / VmHWM and smaps_rollup Pss of the child and all its "
        "descendants every 50 ms; summed RSS counts pages shared between the forked workers "
        "and the main process once per process (an upper bound), PSS splits them",
        f"goal: every figure <= {GOAL_MIB} MiB whatever the corpus size; 'vs goal' = MiB / "
        f"{GOAL_MIB}; the whole-tree summed RSS is the figure to quote",
    ]
    return report("build_memory", f"Peak memory of a {res['segments']:,}-segment build",
                  ["measure", "MiB", "vs data.mdb", "vs goal", "<= 1 GiB"], rows, notes)


if __name__ == "__main__":
    main()
