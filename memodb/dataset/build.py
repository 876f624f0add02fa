"""``memo db build``: one dataset config -> a dataset folder with every database, checked.
Each database is rebuilt only when its inputs or options changed, a killed build resumes, and
``check.json`` never describes databases the folder no longer holds. With a shard, only shard I
of N of the feature databases (docs/DATABASES.md, "Sharded builds"); ``memo db merge`` runs
the rest through :func:`build_texts`, :func:`write_dataset_file` and :func:`check_folder`."""
from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import __version__
from ..checks.report import CheckReport
from ..checks.run import check
from ..errors import BadInputError, named_options
from ..feature.imgdb import create_imgdb, feature_warnings
from ..feature.rawimg import rawimg_db
from ..feature.speech import extract_speech
from ..store.files import fsync_dir
from ..store.manifest import DATASET_FILE, MANIFEST, write_json_atomic
from ..store.writer import before_first_publish
from ..text.splits import write_splits_file
from ..text.transcripts import Transcript
from ..text.txtdb import create_txtdb
from .config import (SPLIT_ROLES, TEXT_DIR, TEXT_KEYS, config_file, feature_keys, load_config,
                     text_spec)
from .protocols import PROTOCOL_FILE, assign, protocol_of
from .shard import parse_shard, prepare_folder, write_shard_file

CHECK_FILE = "check.json"


@dataclass
class Step:
    stage: str  # "feature", "rawimg", "text"
    name: str  # database name inside the dataset folder
    path: str
    status: str  # "built", "up to date", "merged"
    summary: str
    seconds: float


@dataclass
class DatasetResult:
    out_dir: Path
    steps: list = field(default_factory=list)
    report: CheckReport | None = None
    warnings: list = field(default_factory=list)
    databases: dict = field(default_factory=dict)  # dataset.json's "databases"
    protocol: dict | None = None  # dataset.json's "protocol" (text built by a protocol)

    def record(self, stage, name, path, status, summary, t0, log=None) -> None:
        """One database done (built, merged or up to date): a step and a dataset.json entry."""
        step = Step(stage, name, str(path), status, summary, round(time.perf_counter() - t0, 2))
        self.steps.append(step)
        self.databases[name] = {"path": str(Path(path).relative_to(self.out_dir)),
                                "kind": stage}
        if log:
            log(step)


def build_dataset(config, out_dir, *, workers: int | None = None, progress: bool = False,
                  log=None, shard=None) -> DatasetResult:
    """Build (or bring up to date) every database of a dataset config in ``out_dir``, then
    check the folder. ``config`` is a path or a dict from :func:`load_config`.

    ``shard`` (``"I/N"`` or a :class:`~memodb.dataset.shard.Shard`): build only shard I of N of
    the feature databases, and ``shard.json`` instead of text databases and ``dataset.json``.
    """
    cfg = load_config(config) if not isinstance(config, dict) else config
    cfg_file = config_file(config)
    shard = parse_shard(shard) if shard is not None else None
    if shard is not None and not cfg["features"]:
        raise BadInputError(f"--shard {shard}: the config builds no feature database, so "
                            "there is nothing to share out (shards build only features)",
                            fix="build it on one machine, without --shard")
    out_dir = Path(out_dir)
    prepare_folder(out_dir, shard)
    out_dir.mkdir(parents=True, exist_ok=True)
    res = DatasetResult(out_dir)
    feature_paths = {}
    with check_goes_stale(out_dir):
        for name, spec in cfg["features"].items():
            t0 = time.perf_counter()
            opts = {k: v for k, v in spec.items() if k not in ("type", "source", "extractor")}
            if spec["type"] == "speech":
                opts["features"] = spec["extractor"]
            build = {"feature": create_imgdb, "rawimg": rawimg_db,
                     "speech": extract_speech}[spec["type"]]
            with named_options(feature_keys(name), cfg_file):
                r = build(spec["source"], out_dir / name, workers=workers, progress=progress,
                          replace=True, shard=shard, **opts)
            feature_paths[name] = r.path
            res.warnings += [f"{name}: {w}" for w in feature_warnings(r.manifest)]
            res.warnings += stale_databases(out_dir / name, r.path)
            res.record(spec["type"], name, r.path, "up to date" if r.skipped else "built",
                       feature_summary(r.manifest), t0, log)
        if shard is not None:
            write_shard_file(out_dir, cfg, shard, res.databases)
        else:
            build_texts(cfg, res, feature_paths, workers=workers, progress=progress, log=log,
                        config=cfg_file)
            write_dataset_file(cfg, res)
    return check_folder(res, workers=workers, progress=progress)


def check_goes_stale(out_dir: Path):
    """A ``with`` block in which the folder's ``check.json`` is removed just before the first
    database changes under its final name (:func:`memodb.store.writer.before_first_publish`): a
    build killed after that point leaves no report rather than one about databases the folder
    no longer holds, and a build that changes nothing, or fails before publishing, leaves the
    report alone."""
    def remove():
        (out_dir / CHECK_FILE).unlink(missing_ok=True)
        fsync_dir(out_dir)
    return before_first_publish(remove)


def feature_summary(manifest: dict) -> str:
    c = manifest["counts"]
    text = f"{c['segments']} segments, {c['empty']} without frames"
    s = manifest.get("shard")
    if s:
        text += f" (shard {s['index']}/{s['count']}: {c['source_segments']} of " \
                f"{s['corpus_segments']} listed)"
    return text


def build_texts(cfg: dict, res: DatasetResult, feature_paths: dict, *, workers=None,
                progress=False, log=None, config=None) -> None:
    """The text databases of a config (``cfg["text"]``), aligned with the feature databases
    at ``feature_paths`` (name -> database directory). Errors about an option name its config
    key (and ``config``, the config file, when known)."""
    with named_options(TEXT_KEYS, config):
        _build_texts(cfg, res, feature_paths, workers=workers, progress=progress, log=log)


def _build_texts(cfg: dict, res: DatasetResult, feature_paths: dict, *, workers, progress,
                 log) -> None:
    out_dir = res.out_dir
    if cfg["text"] is None:
        return
    text = text_spec(cfg["text"])
    common = {"vocab": cfg["vocab"], "lexicon": cfg["lexicon"],
              "img_db": feature_paths.get(text.faces_from),
              "min_faces": text.min_faces, "max_len": text.max_len, "long": text.long,
              "labels": text.labels, "dataset": text.dataset or cfg["name"], "layout": text.layout,
              "workers": workers, "progress": progress, "replace": True}
    if text.protocol is not None:
        _build_protocol(text, common, res, log)
        return
    if text.source is not None:
        t0 = time.perf_counter()
        r = create_txtdb(text.source, out_dir / TEXT_DIR, splits=text.splits, seed=text.seed,
                         **common)
        res.warnings += r.warnings
        for split, path in r.dbs.items():
            res.record("text", f"{TEXT_DIR}/{split}" if split else TEXT_DIR, path,
                       "up to date" if r.skipped else "built",
                       f"{r.manifests[split]['counts']['texts']} texts", t0, log)
        return
    for fold in text.folds or [None]:
        group = out_dir / TEXT_DIR / (f"fold{fold}" if fold is not None else "")
        assigned = {}
        for split, src in text.sources.items():
            t0 = time.perf_counter()
            src = src.replace("{fold}", str(fold)) if fold is not None else src
            r = create_txtdb(src, group / split, **common)
            res.warnings += [f"{group.name}/{split}: {w}" for w in r.warnings]
            assigned[split] = r.manifests[""]["counts"]["texts"]
            res.record("text", str((group / split).relative_to(out_dir)), group / split,
                       "up to date" if r.skipped else "built", f"{assigned[split]} texts", t0,
                       log)
        write_splits_file(group, assigned, SPLIT_ROLES, None,
                          {"dataset": common["dataset"]})


def _build_protocol(text, common: dict, res: DatasetResult, log) -> None:
    """The text databases of a protocol: its assignment of the utterances (checked),
    ``txt/fold<f>/{train,val,test}`` built from the utterance file (each split's texts given
    to the builder, fingerprinted by the file, the protocol's hash, the fold and the split),
    a ``splits.json`` per fold naming the protocol, and ``txt/protocol.json`` for the check."""
    a = assign(text.protocol, text.source, label_map_spec=text.label_map)
    txt = res.out_dir / TEXT_DIR
    common = {**common, "labels": a.classes}
    texts = {u.id: u.text for u in a.utterances}
    for fold in a.folds:
        group = txt / f"fold{fold}"
        assigned = {}
        for split, ids in a.fold_ids(fold).items():
            t0 = time.perf_counter()
            given = [Transcript(i, texts[i], a.labels[i]) for i in ids]
            r = create_txtdb(text.source, group / split, **common,
                             records=(given, f"{a.name} {a.hash} fold {fold} {split}"))
            res.warnings += [f"{group.name}/{split}: {w}" for w in r.warnings]
            assigned[split] = r.manifests[""]["counts"]["texts"]
            res.record("text", str((group / split).relative_to(res.out_dir)), group / split,
                       "up to date" if r.skipped else "built", f"{assigned[split]} texts", t0,
                       log)
        write_splits_file(group, assigned, SPLIT_ROLES, None,
                          {"dataset": common["dataset"], "protocol": {**a.record(),
                                                                      "fold": fold}})
    write_json_atomic(txt / PROTOCOL_FILE, a.to_json())
    _remove_stale_folds(txt, a.folds)
    res.protocol = {**a.record(), "dropped": a.dropped, "utterances": len(a.utterances),
                    "file": f"{TEXT_DIR}/{PROTOCOL_FILE}"}
    if a.dropped:
        res.warnings.append(f"protocol {a.name}: {sum(a.dropped.values())} utterance(s) with "
                            f"a label outside the map left out ("
                            + ", ".join(f"{k} {v}" for k, v in sorted(a.dropped.items())) + ")")


def _remove_stale_folds(txt: Path, folds) -> None:
    """Fold groups an earlier protocol built (their ``splits.json`` names a protocol) that the
    current one does not have: left, they would be fine-tuned on under a protocol the folder
    no longer holds."""
    keep = {f"fold{f}" for f in folds}
    for group in sorted(txt.glob("fold*")):
        if group.name not in keep and protocol_of(group / "train") is not None:
            shutil.rmtree(group)


def write_dataset_file(cfg: dict, res: DatasetResult) -> None:
    write_json_atomic(res.out_dir / DATASET_FILE, {
        "kind": "dataset", "name": cfg["name"], "memo_version": __version__, "config": cfg,
        "databases": res.databases, **({"protocol": res.protocol} if res.protocol else {})},
        indent=1)


def check_folder(res: DatasetResult, *, workers=None, progress=False) -> DatasetResult:
    """Check the folder; write ``check.json`` with paths relative to it (so the same content
    gives the same file wherever the folder is)."""
    res.report = check([res.out_dir], workers=workers, progress=progress)
    body = res.report.to_dict()
    for d in body["databases"]:
        d["path"] = os.path.relpath(d["path"], res.out_dir)
    write_json_atomic(res.out_dir / CHECK_FILE, body, indent=1)
    return res


def stale_databases(folder: Path, current: Path) -> list[str]:
    """Databases in a feature folder other than the one this config builds (options changed)."""
    return sorted(f"{p}: built with other options; delete it if unused"
                  for p in folder.iterdir()
                  if p.is_dir() and p != current and (p / MANIFEST).exists())
