"""The ``memo`` command line: thin wrappers over memodb (and, later, memotrain)."""
from __future__ import annotations

import functools
import json
import sys

import click

from memodb.errors import MemoError


def _errors(func):
    """Turn memo's named errors into ``Error: ...`` and exit code 1."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except MemoError as exc:
            raise click.ClickException(str(exc)) from None
    return wrapper


def _progress() -> bool:
    return sys.stderr.isatty()


workers_option = click.option("--workers", type=click.IntRange(min=1), default=None,
                              help="Worker processes (default: all cores).")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="memo-emotion")
def main():
    """memo: LMDB databases and a thin trainer for MEmoBERT-style emotion models."""


@main.group()
def db():
    """Build, check and describe feature databases."""


@db.command("trans2npz")
@click.argument("h5_root", type=click.Path(exists=True, file_okay=False))
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--feature", type=click.Choice(["feat", "trans1", "trans2"]), default="feat",
              show_default=True, help="h5 dataset stored as 'features'.")
@click.option("--meta-dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="Folder of <movie>/has_active_spk.txt lists to compare with the h5 files.")
@workers_option
@_errors
def trans2npz_cmd(h5_root, out_dir, feature, meta_dir, workers):
    """Convert Denseface h5 files to one npz per segment (skips those already converted)."""
    from memodb.trans2npz import trans2npz

    r = trans2npz(h5_root, out_dir, feature=feature, meta_dir=meta_dir, workers=workers,
                  progress=_progress())
    click.echo(f"{r.out_dir}: {r.written} npz written, {r.skipped} already there")
    for what, ids in (("listed in has_active_spk.txt but not in the h5", r.missing_in_h5),
                      ("in the h5 but not listed in has_active_spk.txt", r.missing_in_list)):
        if ids:
            click.echo(f"warning: {len(ids)} segment(s) {what}: {', '.join(ids[:10])}"
                       + (" ..." if len(ids) > 10 else ""), err=True)


@db.command("create-imgdb")
@click.argument("src", type=click.Path(exists=True, file_okay=False))
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--conf-th", type=float, default=None,
              help="Keep frames with confidence > this. [default: 0.5 face, 1.0 speech]")
@click.option("--max-bb", type=click.IntRange(min=1), default=None,
              help="Keep at most this many frames. [default: 36 face, 64 speech]")
@click.option("--min-bb", type=click.IntRange(min=0), default=0, show_default=True,
              help="Leave out segments with fewer kept frames (0 keeps segments without faces).")
@click.option("--modality", type=click.Choice(["face", "speech"]), default="face",
              show_default=True)
@click.option("--feature", type=click.Choice(["feat", "trans1", "trans2"]), default="feat",
              show_default=True, help="h5 dataset to store (h5 input only).")
@workers_option
@_errors
def create_imgdb_cmd(src, out_dir, conf_th, max_bb, min_bb, modality, feature, workers):
    """Build a feature database from an npz folder or a Denseface h5 root."""
    from memodb.imgdb import create_imgdb

    r = create_imgdb(src, out_dir, conf_th=conf_th, max_bb=max_bb, min_bb=min_bb,
                     modality=modality, feature=feature, workers=workers, progress=_progress())
    _report_build(r)


@db.command("rawimg-db")
@click.argument("src", type=click.Path(exists=True, file_okay=False))
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--size", type=click.IntRange(min=8), default=64, show_default=True,
              help="Crops are resized to SIZE x SIZE.")
@click.option("--mean", type=float, default=None, help="Pixel mean (default: computed).")
@click.option("--std", type=float, default=None, help="Pixel std (default: computed).")
@click.option("--conf-th", type=float, default=0.5, show_default=True)
@click.option("--max-bb", type=click.IntRange(min=1), default=36, show_default=True)
@click.option("--min-bb", type=click.IntRange(min=0), default=0, show_default=True)
@workers_option
@_errors
def rawimg_db_cmd(src, out_dir, size, mean, std, conf_th, max_bb, min_bb, workers):
    """Build a raw face-crop database from OpenFace output."""
    from memodb.rawimg import rawimg_db

    r = rawimg_db(src, out_dir, size=size, mean=mean, std=std, conf_th=conf_th, max_bb=max_bb,
                  min_bb=min_bb, workers=workers, progress=_progress())
    _report_build(r)
    n = r.manifest["normalization"]
    click.echo(f"normalisation: mean {n['mean']:.5f} std {n['std']:.5f}"
               + (" (computed over the corpus)" if n["computed"] else ""))


def _report_build(r) -> None:
    c = r.counts
    if r.skipped:
        click.echo(f"{r.path}: up to date ({c['segments']} segments); nothing to do")
        return
    click.echo(f"{r.path}: {c['segments']} segments, {c['empty']} without frames, "
               f"{c['frames_kept']} of {c['frames_seen']} frames kept"
               + (f", {c['dropped_below_min_bb']} left out (below --min-bb)"
                  if c["dropped_below_min_bb"] else ""))


@db.command("check")
@click.argument("dbs", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@workers_option
@_errors
def check_cmd(dbs, as_json, workers):
    """Verify databases; exit code 0 when clean, 1 with every problem listed."""
    from memodb.check import check

    report = check(dbs, workers=workers, progress=_progress() and not as_json)
    if as_json:
        click.echo(report.to_json())
    else:
        for d in report.databases:
            click.echo(f"{'OK  ' if d.ok else 'FAIL'} {d.path} ({d.kind}, "
                       f"{d.counts.get('segments', 0)} segments, "
                       f"{d.counts.get('empty', 0)} empty)")
            for p in d.problems:
                click.echo(f"  error {p}")
            for p in d.warnings:
                click.echo(f"  warning {p}")
    sys.exit(report.exit_code)


@db.command("stats")
@click.argument("db_path", metavar="DB", type=click.Path(exists=True, file_okay=False))
@click.option("--parquet", type=click.Path(dir_okay=False), default=None,
              help="Also write one row per segment (key, segment_id, faces) to this file.")
@click.option("--json", "as_json", is_flag=True, help="Print the statistics as JSON.")
@_errors
def stats_cmd(db_path, parquet, as_json):
    """Segment count, faces per segment (mean, median, p80, max) and array dims."""
    from memodb.stats import feature_stats

    s = feature_stats(db_path, parquet=parquet)
    if as_json:
        click.echo(json.dumps(s, indent=1))
        return
    n = s["nbb"]
    click.echo(f"{s['path']} ({s['kind']})")
    click.echo(f"  segments   {s['segments']} ({s['empty']} without frames)")
    click.echo(f"  frames     mean {n['mean']:.2f}  median {n['median']:.1f}  p80 {n['p80']:.1f}"
               f"  max {n['max']}  total {n['total']}")
    for name, a in s["arrays"].items():
        click.echo(f"  {name:<12}{a['dtype']} {a['dims']}")
    if parquet:
        click.echo(f"  rows written to {parquet}")


@main.command()
@click.argument("workdir", type=click.Path(file_okay=False), default="memo-quickstart")
@workers_option
@_errors
def quickstart(workdir, workers):
    """Run the whole chain on a small built-in corpus (in WORKDIR)."""
    from memo.quickstart import quickstart as run

    res = run(workdir, workers=workers, progress=_progress(), log=click.echo)
    for d in res.report.databases:
        for p in d.problems:
            click.echo(f"  error {d.path}: {p}", err=True)
    sys.exit(res.report.exit_code)


if __name__ == "__main__":  # pragma: no cover
    main()
