"""The ``memo`` command line: thin wrappers over memodb (and, later, memotrain)."""
from __future__ import annotations

import functools
import json
import os
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
    from memodb import trans2npz

    r = trans2npz(h5_root, out_dir, feature=feature, meta_dir=meta_dir, workers=workers,
                  progress=_progress())
    click.echo(f"{r.out_dir}: {r.written} npz written, {r.skipped} already there")
    for w in r.warnings:
        click.echo(f"warning: {w}", err=True)
    for what, ids in (("listed in has_active_spk.txt but not in the h5", r.missing_in_h5),
                      ("in the h5 but not listed in has_active_spk.txt", r.missing_in_list)):
        if ids:
            click.echo(f"warning: {len(ids)} segment(s) {what}: {', '.join(ids[:10])}"
                       + (" ..." if len(ids) > 10 else ""), err=True)


@db.command("create-imgdb")
@click.argument("src", type=click.Path(exists=True, file_okay=False))
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--conf-th", type=float, default=None,
              help="Keep frames with confidence > this (0 to 1). [default: 0.5 face, 1.0 "
                   "speech]")
@click.option("--max-bb", type=click.IntRange(min=1), default=None,
              help="Keep at most this many frames. [default: 36 face, 64 speech]")
@click.option("--min-bb", type=click.IntRange(min=0), default=0, show_default=True,
              help="Leave out segments with fewer kept frames (0 keeps segments without faces).")
@click.option("--modality", type=click.Choice(["face", "speech"]), default="face",
              show_default=True)
@click.option("--feature", type=click.Choice(["feat", "trans1", "trans2"]), default="feat",
              show_default=True, help="h5 dataset to store (h5 input only).")
@click.option("--compress", is_flag=True,
              help="Write the original tools' _compressed variant (np.savez_compressed "
                   "values, folder feat_..._compressed), which their readers open by default.")
@click.option("--name-min", type=click.IntRange(min=0), default=None,
              help="The N of the name's min{N} part, a name only as in the original tools "
                   "(no segment dropped); e.g. 10 for the original configs. [default: "
                   "--min-bb]")
@workers_option
@_errors
def create_imgdb_cmd(src, out_dir, conf_th, max_bb, min_bb, modality, feature, compress,
                     name_min, workers):
    """Build a feature database from an npz folder or a Denseface h5 root."""
    from memodb import create_imgdb

    r = create_imgdb(src, out_dir, conf_th=conf_th, max_bb=max_bb, min_bb=min_bb,
                     modality=modality, feature=feature, compress=compress, name_min=name_min,
                     workers=workers, progress=_progress())
    _report_build(r)


@db.command("rawimg-db")
@click.argument("src", type=click.Path(exists=True, file_okay=False))
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--size", type=click.IntRange(min=8), default=64, show_default=True,
              help="Crops are resized to SIZE x SIZE.")
@click.option("--mean", type=float, default=None, help="Pixel mean (default: computed).")
@click.option("--std", type=float, default=None, help="Pixel std (default: computed).")
@click.option("--conf-th", type=float, default=0.5, show_default=True,
              help="Keep frames with confidence > this (0 to 1).")
@click.option("--max-bb", type=click.IntRange(min=1), default=36, show_default=True)
@click.option("--min-bb", type=click.IntRange(min=0), default=0, show_default=True)
@workers_option
@_errors
def rawimg_db_cmd(src, out_dir, size, mean, std, conf_th, max_bb, min_bb, workers):
    """Build a raw face-crop database from OpenFace output."""
    from memodb import rawimg_db

    r = rawimg_db(src, out_dir, size=size, mean=mean, std=std, conf_th=conf_th, max_bb=max_bb,
                  min_bb=min_bb, workers=workers, progress=_progress())
    _report_build(r)
    n = r.manifest["normalization"]
    click.echo(f"normalisation: mean {n['mean']:.5f} std {n['std']:.5f}"
               + (" (computed over the corpus)" if n["computed"] else ""))


def _report_build(r) -> None:
    from memodb import feature_warnings

    for w in feature_warnings(r.manifest):
        click.echo(f"warning: {w}", err=True)
    c = r.counts
    if r.skipped:
        click.echo(f"{r.path}: up to date ({c['segments']} segments); nothing to do")
        return
    click.echo(f"{r.path}: {c['segments']} segments, {c['empty']} without frames, "
               f"{c['frames_kept']} of {c['frames_seen']} frames kept"
               + (f", {c['dropped_below_min_bb']} left out (below --min-bb)"
                  if c["dropped_below_min_bb"] else ""))


@db.command("create-txtdb")
@click.argument("src", type=click.Path(exists=True, dir_okay=False))
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--vocab", type=click.Path(exists=True), default=None,
              help="BERT vocabulary folder (vocab.txt). [default: bundled bert-base-uncased]")
@click.option("--img-db", type=click.Path(exists=True, file_okay=False), default=None,
              help="Feature database: keep only texts of segments stored there.")
@click.option("--min-faces", type=click.IntRange(min=0), default=1, show_default=True,
              help="With --img-db: leave out segments with fewer kept faces (0 keeps them).")
@click.option("--max-len", type=click.IntRange(min=1), default=100, show_default=True,
              help="Longest text in word pieces (without [CLS] / [SEP]).")
@click.option("--long", "long_policy", type=click.Choice(["truncate", "drop"]),
              default="truncate", show_default=True, help="What happens to longer texts.")
@click.option("--lexicon", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Emotion lexicon (word<TAB>category, or NRC word<TAB>emotion<TAB>0|1).")
@click.option("--labels", default=None,
              help="Comma-separated class names; labels must index them (e.g. "
                   "anger,happy,neutral,sad).")
@click.option("--split", "splits", multiple=True, metavar="NAME=COUNT|FILE[@train]",
              help="A held-out split (val=3000), an id list (test=ids.txt), or a monitor set "
                   "drawn from train (trn3k=3000@train). Repeatable; the rest is train.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the splits.")
@click.option("--dataset", default=None, help="Dataset name stored in every example "
              "[default: the SRC file name].")
@click.option("--layout", type=click.Choice(["flat", "wwm"]), default="flat", show_default=True,
              help="flat: input_ids + word_ids; wwm: the original whole-word-masking layout "
                   "(input_ids and toked_caption nested per word).")
@workers_option
@_errors
def create_txtdb_cmd(src, out_dir, vocab, img_db, min_faces, max_len, long_policy, lexicon,
                     labels, splits, seed, dataset, layout, workers):
    """Tokenise transcripts into text database(s) aligned with a feature database.

    SRC: captions {id: [sentence]}, downstream refs {id: {"txt": [..], "label": int}}, or
    JSON lines {"id", "text", "label"?}. Without --split OUT_DIR is the database; with splits
    OUT_DIR/<split>/ per split and OUT_DIR/splits.json.
    """
    from memodb import create_txtdb

    r = create_txtdb(src, out_dir, vocab=vocab, img_db=img_db, min_faces=min_faces,
                     max_len=max_len, long=long_policy, lexicon=lexicon,
                     labels=labels.split(",") if labels else None, splits=splits, seed=seed,
                     dataset=dataset, layout=layout, workers=workers, progress=_progress())
    for w in r.warnings:
        click.echo(f"warning: {w}", err=True)
    c = r.counts
    for split, path in r.dbs.items():
        m = r.manifests[split]
        click.echo(f"{path}: {m['counts']['texts']} texts"
                   + (f" ({split})" if split else "") + (" up to date" if r.skipped else ""))
    if not r.skipped:
        dropped = {k: v for k, v in c.items() if v and k not in ("source_texts", "texts")}
        click.echo(f"{c['texts']} of {c['source_texts']} transcripts kept"
                   + (": " + ", ".join(f"{k} {v}" for k, v in dropped.items()) if dropped
                      else ""))


@db.command("build")
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--shard", default=None, metavar="I/N",
              help="Build only shard I (from 0) of N of the feature databases, into a shard "
                   "folder for memo db merge.")
@workers_option
@_errors
def build_cmd(config, out_dir, shard, workers):
    """Build every database of a dataset config into OUT_DIR, then check it.

    Re-running rebuilds only what changed; after a kill it resumes. Exit code 1 when the
    check finds problems (report in OUT_DIR/check.json).
    """
    from memodb import build_dataset

    progress = _progress()
    res = build_dataset(config, out_dir, workers=workers, progress=progress, shard=shard,
                        log=None if progress else _log_step)
    _report_dataset(res, f"shard {shard} {out_dir}" if shard else f"dataset {out_dir}")


@db.command("merge")
@click.argument("shard_dirs", nargs=-1, required=True,
                type=click.Path(exists=True, file_okay=False))
@click.argument("out_dir", type=click.Path(file_okay=False))
@workers_option
@_errors
def merge_cmd(shard_dirs, out_dir, workers):
    """Join the shard folders of memo db build --shard I/N into OUT_DIR, then check it.

    OUT_DIR becomes the folder memo db build would have made on one machine, byte for byte
    (the text databases are built here, from the merged features). Shards that do not belong
    together are refused.
    """
    from memodb import merge_shards

    progress = _progress()
    res = merge_shards(shard_dirs, out_dir, workers=workers, progress=progress,
                       log=None if progress else _log_step)
    _report_dataset(res, f"dataset {out_dir}")


def _log_step(s) -> None:
    click.echo(f"{s.status:<10} {s.name}: {s.summary}", err=True)


def _report_dataset(res, title: str) -> None:
    """Summary table, warnings and check problems of a build or merge; exits with the
    check's code."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in ("database", "kind", "status", "contents", "seconds"):
        table.add_column(col, justify="right" if col == "seconds" else "left")
    for s in res.steps:
        table.add_row(s.name, s.stage, s.status, s.summary, f"{s.seconds:.1f}")
    Console(soft_wrap=True).print(table)
    for w in res.warnings:
        click.echo(f"warning: {w}", err=True)
    bad = [d for d in res.report.databases if not d.ok]
    for d in bad:
        for p in d.problems:
            click.echo(f"error {d.path}: {p}", err=True)
    click.echo(f"check: {'clean' if not bad else f'{len(bad)} database(s) with problems'} "
               f"({len(res.report.databases)} checked; report in {res.out_dir}/check.json)")
    sys.exit(res.report.exit_code)


@db.command("check")
@click.argument("dbs", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@workers_option
@_errors
def check_cmd(dbs, as_json, workers):
    """Verify databases; exit code 0 when clean, 1 with every problem listed."""
    from memodb import check

    report = check(dbs, workers=workers, progress=_progress() and not as_json)
    if as_json:
        click.echo(report.to_json())
    else:
        for d in report.databases:
            summary = d.summary()
            click.echo(f"{'OK  ' if d.ok else 'FAIL'} {d.path} ({d.kind}"
                       + (f", {summary})" if summary else ")"))
            for p in d.problems:
                click.echo(f"  error {p}")
            for p in d.warnings:
                click.echo(f"  warning {p}")
    sys.exit(report.exit_code)


@db.command("stats")
@click.argument("db_path", metavar="DB", type=click.Path(exists=True, file_okay=False))
@click.option("--parquet", type=click.Path(dir_okay=False), default=None,
              help="Also write one row per segment (key, segment_id, faces) or, for text "
                   "databases, per text (id, split, text_len, faces, label) to this file.")
@click.option("--json", "as_json", is_flag=True, help="Print the statistics as JSON.")
@_errors
def stats_cmd(db_path, parquet, as_json):
    """Describe a database: feature dbs (segments, faces per segment, array dims) or text dbs
    and split folders (length histogram, labels, lexicon coverage, faces per text)."""
    from memodb import stats

    s = stats(db_path, parquet=parquet)
    if as_json:
        click.echo(json.dumps(s, indent=1))
        return
    if s["kind"] == "splits":
        roles = ", ".join(f"{n} ({r})" for n, r in s["roles"].items())
        click.echo(f"{s['path']} (text splits, seed {s['seed']}): {roles}")
        for name, sub in s["splits"].items():
            _echo_text_stats(sub, "  ")
    elif "length" in s:
        _echo_text_stats(s, "")
    else:
        n = s["nbb"]
        click.echo(f"{s['path']} ({s['kind']})")
        click.echo(f"  segments   {s['segments']} ({s['empty']} without frames)")
        click.echo(f"  frames     mean {n['mean']:.2f}  median {n['median']:.1f}  "
                   f"p80 {n['p80']:.1f}  max {n['max']}  total {n['total']}")
        for name, a in s["arrays"].items():
            click.echo(f"  {name:<12}{a['dtype']} {a['dims']}")
    if parquet:
        click.echo(f"  rows written to {parquet}")


def _pct(part, whole) -> str:
    return f"{100 * part / whole:5.1f}%" if whole else "    -"


def _echo_text_stats(s: dict, ind: str) -> None:
    split = s["split"]
    where = f"; split {split['name']}" + (f", {split['role']}" if split["role"] else "") \
        if split else ""
    click.echo(f"{ind}{s['path']} ({s['kind']}{where})")
    n, ln = s["texts"], s["length"]
    click.echo(f"{ind}  texts      {n}")
    click.echo(f"{ind}  length     mean {ln['mean']:.2f}  median {ln['median']:.1f}  "
               f"p95 {ln['p95']:.1f}  max {ln['max']}  total {ln['total']} pieces"
               + (f"  ({ln['empty']} empty)" if ln["empty"] else ""))
    top = max((b["count"] for b in ln["histogram"]), default=0)
    width = len(str(top))
    for b in ln["histogram"]:
        bar = "#" * (round(30 * b["count"] / top) if top else 0)
        click.echo(f"{ind}    {b['bin']:>7}  {b['count']:>{width}}  {_pct(b['count'], n)}  "
                   f"{bar}".rstrip())
    lab = s["labels"]
    if lab is not None:
        click.echo(f"{ind}  labels" + (f"     ({lab['unlabelled']} unlabelled)"
                                       if lab["unlabelled"] else ""))
        names = [str(c["label"]) + (f" {c['name']}" if c["name"] else "") for c in lab["counts"]]
        w = max(map(len, names), default=0)
        cw = max((len(str(c["count"])) for c in lab["counts"]), default=0)
        for name, c in zip(names, lab["counts"]):
            click.echo(f"{ind}    {name:<{w}}  {c['count']:>{cw}}  {_pct(c['count'], n)}")
    lex = s["lexicon"]
    if lex is not None:
        click.echo(f"{ind}  lexicon    {lex['texts_with_emotion']} of {n} texts with an emotion "
                   f"word ({100 * lex['texts_fraction']:.1f}%); {lex['emotion_pieces']} of "
                   f"{ln['total']} pieces ({100 * lex['pieces_fraction']:.1f}%)")
        cats = [c["name"] or f"type {c['type_id']}" for c in lex["categories"]]
        w = max(map(len, cats), default=0)
        for name, c in zip(cats, lex["categories"]):
            click.echo(f"{ind}    {name:<{w}}  {c['words']} word(s), {c['pieces']} piece(s)")
    f = s["faces"]
    if f is not None:
        if not f["available"]:
            click.echo(f"{ind}  faces      feature db {f['db']} not found")
        else:
            click.echo(f"{ind}  faces      mean {f['mean']:.2f}  median {f['median']:.1f}  "
                       f"min {f['min']}  max {f['max']}  total {f['total']}"
                       + (f"  ({f['missing']} text(s) without a segment)" if f["missing"]
                          else "")
                       + ("  (feature db changed since the build)"
                          if f.get("checksum_ok") is False else ""))


@main.command("report")
@click.argument("paths", nargs=-1, required=True, metavar="PATH...",
                type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), default="report.html",
              show_default=True, help="The HTML file to write.")
@_errors
def report_cmd(paths, output):
    """Write one self-contained HTML report (plots embedded, opens offline) of each PATH: a
    dataset folder (memo db build), a pre-training run, a fine-tuning output or a memo prep
    output (contact sheets of the speaker choice)."""
    from memoreport.report import report_kind, write_report

    out = write_report(paths, output)
    for p in paths:
        click.echo(f"{p}: {report_kind(p)}")
    click.echo(f"wrote {out}")


@main.command("prep")
@click.argument("src", type=click.Path(exists=True))
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--shard", default=None, metavar="I/N",
              help="Prepare only shard I (from 0) of N of the movies (sorted by name).")
@click.option("--speaker-rule", type=click.Choice(["scaled", "original"]), default="scaled",
              show_default=True, help="Active-speaker rule: scale-free, or the original "
              "pipeline's pixel rule (bugs included, for comparison).")
@click.option("--vad", type=click.Choice(["webrtc", "silero", "energy"]), default="webrtc",
              show_default=True, help="Voice activity: WebRTC's VAD, Silero's (robust in "
              "noise, slower) or the original log-energy threshold.")
@click.option("--det-width", type=click.IntRange(min=32), default=640, show_default=True,
              help="Detect faces on frames scaled down to at most this width.")
@click.option("--score-th", type=float, default=0.9, show_default=True,
              help="Face detection score threshold (0 to 1).")
@click.option("--sub-encoding", default=None,
              help="Encoding of the subtitle files (default: UTF-8, else detected).")
@click.option("--all-tracks", is_flag=True, help="Also write every face track of every "
              "segment with faces to OUT_DIR/tracks.")
@click.option("--frames", is_flag=True, help="Also write the 10 fps frames (OUT_DIR/frames).")
@workers_option
@_errors
def prep_cmd(src, out_dir, shard, speaker_rule, vad, det_width, score_th, sub_encoding,
             all_tracks, frames, workers):
    """Movies + subtitles -> segments, the speaker's face track, audio and captions.

    SRC is a movie or a folder of movies; subtitles come from <movie>.srt / .ass beside it
    or its longest embedded subtitle stream. OUT_DIR gets faces/ (OpenFace layout, read by
    memo db rawimg-db), audio/, meta/, transcripts/, captions.json and prep.json. Re-running
    skips finished movies; bad movies are reported by name while the others are finished.
    """
    from memoprep import prep

    r = prep(src, out_dir, workers=workers, shard=shard, progress=_progress(),
             speaker_rule=speaker_rule, vad=vad, det_width=det_width, score_th=score_th,
             sub_encoding=sub_encoding, all_tracks=all_tracks, frames=frames)
    c = r.counts
    click.echo(f"{out_dir}: {len(r.prepared)} movie(s) prepared, {len(r.skipped)} already "
               f"done; segments: " + ", ".join(f"{k} {c.get(k, 0)}" for k in
                                               ("base", "has_face", "longest_spk_0.2",
                                                "has_active_spk")))
    for movie, message in r.bad.items():
        click.echo(f"error: {movie}: {message}", err=True)
    if r.bad:
        raise click.ClickException(f"{len(r.bad)} movie(s) could not be prepared: "
                                   + ", ".join(r.bad))


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


@main.group()
def train():
    """Prepare checkpoints for and train MEmoBERT-style models (memotrain)."""


@train.command("convert-ckpt")
@click.argument("src", type=click.Path(exists=True))
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--config", "config", default=None, metavar="base|small|tiny|FILE",
              help="Model config: a preset or a JSON file (memo's, a Hugging Face config.json "
                   "or an original UniterConfig). [default: the config JSON beside SRC; for "
                   "an original checkpoint without one, the shapes]")
@click.option("--labels", default=None, metavar="A,B,...",
              help="Class names of a fine-tuned original checkpoint's head, in its output "
                   "order. [default: 0,1,...]")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the parts SRC lacks (face / speech embeddings, MLM head).")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@_errors
def convert_ckpt_cmd(src, out, config, labels, seed, force):
    """Convert a Hugging Face BERT checkpoint (folder or weights file) or an original
    MEmoBERT / UNITER checkpoint (model_step_N.pt) into a memo checkpoint."""
    from memotrain.interop import convert_checkpoint

    r = convert_checkpoint(src, out, config=config, seed=seed, overwrite=force,
                           labels=labels.split(",") if labels else None)
    c, s = r.config, r.source
    click.echo(f"{r.out}: {c.layers} layers, hidden {c.hidden}, {c.heads} heads, vocab "
               f"{c.vocab_size}; {len(r.loaded)} tensors from {s['path']} "
               f"(sha256 {s['sha256'][:12]})")
    if s["format"] in ("uniter", "uniter3m"):
        heads = s["heads"] + ([s["head"]] if "head" in s else [])
        click.echo(f"original {s['format']} checkpoint (config: {s['config']}); heads: "
                   f"{', '.join(heads) or 'none'}; empty_face_frame on")
    click.echo(f"random (seed {seed}): {', '.join(s['fresh']) or 'nothing'}")
    if r.unexpected:
        click.echo(f"warning: {len(r.unexpected)} key(s) of SRC not used: "
                   + ", ".join(r.unexpected[:10]) + (" ..." if len(r.unexpected) > 10 else ""),
                   err=True)


@train.command("export-ckpt")
@click.argument("src", type=click.Path(exists=True, dir_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--to", "to", type=click.Choice(["uniter", "uniter3m"]), required=True,
              help="The original model: uniter (text + faces) or uniter3m (+ speech).")
@click.option("--force", is_flag=True, help="Replace OUT (and its .json) if they exist.")
@_errors
def export_ckpt_cmd(src, out, to, force):
    """Write a memo checkpoint as an original MEmoBERT / UNITER state dict (OUT) and its model
    config JSON beside it (OUT with .json)."""
    from memotrain.interop import export_original

    r = export_original(src, out, to=to, overwrite=force)
    click.echo(f"{r.out}: {r.keys} tensors ({r.format}; heads: {', '.join(r.heads) or 'none'})"
               f"; config {r.config_file}")
    for note in r.notes:
        click.echo(f"note: {note}", err=True)


@train.command("pretrain", context_settings={"ignore_unknown_options": True,
                                             "allow_extra_args": True})
@click.option("--config", "config", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The training config (JSON; every key: docs/CONFIG.md).")
@click.option("--resume", is_flag=True,
              help="Continue the run in output_dir from its latest complete state.")
@click.option("--print-config", is_flag=True,
              help="Print the resolved config (defaults and overrides applied) and exit.")
@click.pass_context
@_errors
def pretrain_cmd(ctx, config, resume, print_config):
    """Pre-train on memo databases; extra --key value pairs override the config
    (dotted keys: --optim.lr 1e-4 --data.batch_size 8). Under torchrun: one process per
    GPU (DistributedDataParallel)."""
    if print_config:
        from memotrain.trainconfig import load_train_config
        return _print_config(load_train_config(config, ctx.args))
    from memotrain.recipes.pretrain import pretrain

    s = pretrain(config, resume=resume, overrides=ctx.args)
    if s["world_size"] == 1 or int(os.environ.get("RANK", "0")) == 0:
        last = s["losses"][-1] if s["losses"] else None
        click.echo(f"{s['steps']} updates ({s['skipped']} skipped)"
                   + (f", last loss {last[2]:.4f} ({last[1]})" if last else "")
                   + f"; checkpoint {s['checkpoint']}")


@train.command("face-cnn")
@click.argument("src", type=click.Path(exists=True))
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--ferplus", type=click.Path(exists=True, dir_okay=False), default=None,
              help="FER+ votes (fer2013new.csv): train on FER+'s 8 classes (majority vote).")
@click.option("--classes", default=None,
              help="Comma-separated class names in label order [default: FER2013's 7, FER+'s "
                   "8 with --ferplus, or the sorted class folders].")
@click.option("--image-size", type=click.IntRange(min=8), default=64, show_default=True,
              help="Crops are resized to SIZE x SIZE.")
@click.option("--blocks", default="16,16,16", show_default=True,
              help="Dense layers per block (growth 12, 24 initial features).")
@click.option("--epochs", type=click.IntRange(min=1), default=30, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--weight-decay", type=float, default=5e-4, show_default=True)
@click.option("--warmup-epochs", type=click.FloatRange(min=0), default=1.0, show_default=True)
@click.option("--patience", type=click.IntRange(min=1), default=None,
              help="Stop after this many epochs without a better validation accuracy.")
@click.option("--no-augment", is_flag=True, help="No random flips and shifts in training.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@_errors
def face_cnn_cmd(src, out, ferplus, classes, image_size, blocks, epochs, batch_size, lr,
                 weight_decay, warmup_epochs, patience, no_augment, seed, device, force):
    """Train the DenseNet-BC face CNN on labelled face crops (a FER2013 CSV, or
    train/ val/ [test/] folders of <class>/ images); OUT: the best-validation checkpoint
    (TensorBoard event files in OUT with the suffix .tb)."""
    from memotrain.recipes.face_cnn import train_face_cnn

    try:
        layers = [int(b) for b in blocks.split(",")]
    except ValueError:
        raise click.BadParameter(f"{blocks!r}: give layer counts like 16,16,16",
                                 param_hint="--blocks") from None
    train_face_cnn(src, out, ferplus=ferplus, classes=classes.split(",") if classes else None,
                   image_size=image_size, model_args={"blocks": layers}, epochs=epochs,
                   batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                   warmup_epochs=warmup_epochs, patience=patience, augment_crops=not no_augment,
                   seed=seed, device=device, overwrite=force, log=click.echo)


def _id_list(value: str | None, what: str):
    """``"1,2,5"`` / ``"1-5"`` / ``"a,b"`` -> a list (integers stay integers)."""
    if value is None:
        return None
    out = []
    for part in value.split(","):
        part = part.strip()
        lo, dash, hi = part.partition("-")
        if dash and lo.isdigit() and hi.isdigit() and int(lo) <= int(hi):
            out.extend(range(int(lo), int(hi) + 1))
        elif part:
            out.append(int(part) if part.lstrip("-").isdigit() else part)
    if not out:
        raise click.BadParameter(f"{value!r}: give a list like 1,2,3 or a range like 1-10",
                                 param_hint=what)
    return out


@train.command("finetune", context_settings={"ignore_unknown_options": True,
                                             "allow_extra_args": True})
@click.option("--config", "config", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The fine-tuning config (JSON; every key: docs/CONFIG.md).")
@click.option("--folds", help="Folds to run, e.g. 1-10 or 1,3,5 (fills {fold} in the paths).")
@click.option("--seeds", help="Seeds to run for every fold, e.g. 0,1,2 or 0-4.")
@click.option("--print-config", is_flag=True,
              help="Print the resolved config (defaults and overrides applied) and exit.")
@click.pass_context
@_errors
def finetune_cmd(ctx, config, folds, seeds, print_config):
    """Fine-tune for emotion recognition on every fold x seed, select each run on validation,
    evaluate the selected model on test, print and save the results table
    (output_dir/results.json, results.tsv). Extra --key value pairs override the config.
    Finished runs are reused when the command is run again."""
    overrides = [(k, v) for k, v in (("folds", _id_list(folds, "--folds")),
                                     ("seeds", _id_list(seeds, "--seeds"))) if v is not None]
    if ctx.args:
        from memodb.config import parse_overrides
        overrides += parse_overrides(ctx.args)
    if print_config:
        from memotrain.finetuneconfig import load_finetune_config
        return _print_config(load_finetune_config(config, overrides))
    from memotrain.recipes.finetune import finetune

    from memotrain.results import summary_lines

    s = finetune(config, overrides=overrides)
    click.echo("\n".join(summary_lines(s["summary"])))
    click.echo(f"results in {s['output_dir']}/results.json and results.tsv")


def _print_config(cfg) -> None:
    from memodb.config import to_json
    click.echo(json.dumps(to_json(cfg), indent=2))


@main.group()
def results():
    """Read and compare fine-tuning results (memo train finetune output folders)."""


@results.command("show")
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--metric", type=click.Choice(["UA", "WA", "WF1", "F1"]), default=None,
              help="The metric of the paper line. [default: the selection metric]")
@_errors
def results_show_cmd(folder, metric):
    """Print a finished folder's summary: runs, protocol, each metric's mean with its 95 %
    confidence intervals, and the line to put in a paper."""
    from memotrain.results import load_results, report_line, summary_lines

    summary = load_results(folder)["summary"]
    lines = summary_lines(summary)
    click.echo("\n".join(lines[:-1] + [report_line(summary, metric or
                                                    summary["selection_metric"])]))


@results.command("compare")
@click.argument("a", type=click.Path(exists=True, file_okay=False))
@click.argument("b", type=click.Path(exists=True, file_okay=False))
@click.option("--metric", type=click.Choice(["UA", "WA", "WF1", "F1"]), default="UA",
              show_default=True, help="The metric compared.")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
@_errors
def results_compare_cmd(a, b, metric, as_json):
    """Pair two fine-tuning folders run by run (same fold, same seed, same protocol hash) and
    print the mean difference A - B, its 95 % confidence intervals and paired tests."""
    from memotrain.results import compare, format_comparison

    c = compare(a, b, metric)
    click.echo(json.dumps(c, indent=1) if as_json else "\n".join(format_comparison(c)))


@main.command("extract")
@click.option("--checkpoint", required=True, type=click.Path(exists=True, dir_okay=False),
              help="A memo checkpoint (convert-ckpt, pretrain or fine-tuning output); it "
                   "alone rebuilds the model.")
@click.option("--txt-db", required=True, type=click.Path(exists=True, file_okay=False),
              help="Text database of the segments to extract.")
@click.option("--img-db", type=click.Path(exists=True, file_okay=False), default=None,
              help="Face feature database (the model must take faces).")
@click.option("--speech-db", type=click.Path(exists=True, file_okay=False), default=None,
              help="Speech feature database (the model must take speech).")
@click.argument("out", type=click.Path())
@click.option("--layer", type=int, default=None,
              help="Hidden state of the text / face / speech states: 0 = embeddings, 1..L the "
                   "layer outputs, negatives from the end. [default: the last] The pooled "
                   "vector always comes from the last layer.")
@click.option("--format", "fmt", type=click.Choice(["lmdb", "parquet"]), default="lmdb",
              show_default=True, help="lmdb: OUT is a folder of feature databases; parquet: "
                                      "OUT is one file.")
@click.option("--dtype", type=click.Choice(["float16", "float32"]), default="float16",
              show_default=True, help="Stored precision (computed in fp32).")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="Examples per batch (the features do not depend on it).")
@click.option("--max-tokens", type=click.IntRange(min=1), default=None,
              help="Token budget per batch: rows x longest example (text + 2 + faces + speech).")
@click.option("--device", default="auto", show_default=True,
              help="auto (CUDA when available), cpu, cuda or cuda:N.")
@click.option("--max-text-len", type=click.IntRange(min=1), default=None,
              help="Drop longer texts (word pieces). [default: the most the model takes]")
@click.option("--max-faces", type=click.IntRange(min=0), default=None,
              help="Keep at most this many faces. [default: the db's max_bb, at most what the "
                   "model takes]")
@click.option("--max-speech", type=click.IntRange(min=0), default=None,
              help="Keep at most this many speech frames. [default: as --max-faces]")
@_errors
def extract_cmd(checkpoint, txt_db, img_db, speech_db, out, layer, fmt, dtype, batch_size,
                max_tokens, device, max_text_len, max_faces, max_speech):
    """Run a checkpoint over a corpus and save, per segment id, the pooled [CLS] vector and the
    text / face / speech states (sliced by real lengths), with the labels."""
    from memotrain.recipes.extract import extract

    r = extract(checkpoint, txt_db, out, img_db=img_db, speech_db=speech_db, layer=layer,
                fmt=fmt, dtype=dtype, batch_size=batch_size, max_tokens=max_tokens,
                device=device, max_text_len=max_text_len, max_faces=max_faces,
                max_speech=max_speech, progress=_progress())
    click.echo(f"{r.out}: {r.extracted} segments ({', '.join(r.modalities)}; layer {r.layer} "
               f"of {r.layers}, {dtype}), {r.labelled} labelled")
    click.echo(r.report)


@main.command("extract-faces")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False))
@click.argument("rawimg_db", type=click.Path(exists=True, file_okay=False))
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--feature", type=click.Choice(["feat", "trans1", "trans2"]), default="feat",
              show_default=True, help="Pooled output stored as 'features': after the last "
              "block (feat, with soft_labels), block 1 (trans1) or block 2 (trans2).")
@click.option("--normalization", type=click.Choice(["corpus", "cnn"]), default="corpus",
              show_default=True, help="Feed the crops as stored (corpus mean/std), or "
              "re-normalised to the CNN's training mean/std.")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True,
              help="Frames per forward pass.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@_errors
def extract_faces_cmd(checkpoint, rawimg_db, out_dir, feature, normalization, batch_size,
                      device):
    """Run a face CNN checkpoint (memo train face-cnn) over a raw-crop database
    (memo db rawimg-db) and build a face feature database like create-imgdb's."""
    from memotrain.recipes.extract_faces import extract_face_features

    r = extract_face_features(checkpoint, rawimg_db, out_dir, feature=feature,
                              normalization=normalization, batch_size=batch_size,
                              device=device, progress=_progress())
    _report_build(r)


@main.command("extract-speech")
@click.argument("src", type=click.Path(exists=True, file_okay=False))
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--features", type=click.Choice(["compare", "egemaps", "wav2vec2"]),
              required=True, help="openSMILE ComParE_2016 (65) or eGeMAPSv02 (25) descriptors "
              "per 10 ms, or the hidden states of a wav2vec2 / HuBERT / WavLM folder.")
@click.option("--model", type=click.Path(exists=True, file_okay=False), default=None,
              help="Local Hugging Face model folder (wav2vec2 only; nothing is downloaded).")
@click.option("--layer", type=int, default=None,
              help="wav2vec2 hidden state: 0 = input of the first layer, 1..L, negatives "
                   "from the end. [default: the last]")
@click.option("--rate", type=float, default=None,
              help="Frames per second stored, each the mean of its window (e.g. 10, the face "
                   "rate). [default: the extractor's own: 100 openSMILE, 50 wav2vec2]")
@click.option("--max-bb", type=click.IntRange(min=1), default=None,
              help="Keep at most this many frames (the first). [default: 64]")
@click.option("--min-bb", type=click.IntRange(min=0), default=0, show_default=True,
              help="Leave out segments with fewer frames.")
@click.option("--batch-seconds", type=click.FloatRange(min=0, min_open=True), default=160.0,
              show_default=True, help="wav2vec2: padded audio per forward pass (the features "
              "do not depend on it).")
@click.option("--device", default="auto", show_default=True,
              help="wav2vec2: auto (CUDA when available), cpu, cuda or cuda:N.")
@workers_option
@_errors
def extract_speech_cmd(src, out_dir, features, model, layer, rate, max_bb, min_bb,
                       batch_seconds, device, workers):
    """Build a speech feature database (laid out as create-imgdb --modality speech's) from a
    folder of <segment>.wav files (any depth, any rate, width or channel count) or a memo
    prep output."""
    if features == "wav2vec2":
        from memotrain.recipes.extract_speech import extract_speech_features as run
        extra = {"model": model, "layer": layer, "batch_seconds": batch_seconds,
                 "device": device}
    else:  # openSMILE: no torch
        from memodb import extract_speech as run
        if model is not None or layer is not None:
            raise click.UsageError("--model and --layer are for --features wav2vec2")
        extra = {}
    r = run(src, out_dir, features=features, rate=rate, max_bb=max_bb, min_bb=min_bb,
            workers=workers, progress=_progress(), **extra)
    _report_build(r)
    s = r.manifest.get("sums") or {}
    if s and not r.skipped:
        click.echo(f"audio: {s.get('resampled', 0)} resampled to 16 kHz, "
                   f"{s.get('mixed_down', 0)} mixed down to mono")


if __name__ == "__main__":  # pragma: no cover
    main()
