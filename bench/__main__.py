"""Run every benchmark in sequence and concatenate their tables into bench/out/ALL.md.

    python -m bench [--quick]
"""
from __future__ import annotations

import argparse

from . import (build_memory, check_dataset, imgdb_build, read_random, train_loader,
               train_memory, train_model, txtdb_build)
from .common import OUT

QUICK = {imgdb_build: ["--segments", "600", "--repeat", "2"],
         read_random: ["--segments", "1000", "--reads", "5000", "--rounds", "2"],
         build_memory: ["--segments", "2000"],
         txtdb_build: ["--segments", "20000", "--repeat", "2"],
         check_dataset: ["--segments", "20000", "--repeat", "2"],
         train_loader: ["--segments", "1000", "--movies", "10", "--batches", "40",
                        "--warmup", "3", "--repeat", "2"],
         train_model: ["--preset", "small", "--iters", "2", "--warmup", "1"],
         train_memory: ["--segments", "500", "--movies", "10", "--index", "100000",
                        "--batches", "10"]}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    args = ap.parse_args(argv)
    tables = [mod.main(QUICK[mod] if args.quick else []) for mod in QUICK]
    (OUT / "ALL.md").write_text("\n".join(tables))
    print(f"written {OUT / 'ALL.md'}")


if __name__ == "__main__":
    main()
