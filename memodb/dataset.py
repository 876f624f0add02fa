"""``memo db build``: one dataset config -> a dataset folder with every database, checked.

A config (JSON; paths relative to the config file) names the feature databases to build and
the text databases aligned with one of them::

    {
      "name": "movies",
      "vocab": "bert-base-uncased",            (optional: the bundled bert-base-uncased vocab)
      "lexicon": "emo_lexicon.tsv",            (optional)
      "features": {
        "face":   {"source": "h5", "conf_th": 0.5, "max_bb": 36},
        "speech": {"source": "wav2vec_npz", "modality": "speech"},
        "rawimg": {"type": "rawimg", "source": "openface", "size": 64}
      },
      "text": {
        "source": "captions.json", "faces_from": "face", "min_faces": 1,
        "max_len": 100, "long": "truncate",
        "splits": ["val=3000", "trn3k=3000@train"], "seed": 0
      }
    }

For downstream corpora, ``text`` gives per-split files instead of ``source`` / ``splits``,
optionally per fold (``{fold}`` in the paths): ``"sources": {"train": "refs/{fold}/trn.json",
"val": "refs/{fold}/val.json", "test": "refs/{fold}/tst.json"}, "folds": [1, 2, 3],
"labels": ["anger", "happy", "neutral", "sad"]``.

The folder gets ``<feature name>/feat_th.../`` (+ nbb json), ``txt/`` (one db per split and
``splits.json``; with folds ``txt/fold<f>/...``), ``dataset.json`` (what was built from what)
and ``check.json`` (the check report, paths relative to the folder). Every database is built
only when its inputs or options changed (fingerprints in its manifest); a killed build resumes
where it stopped. ``check.json`` is removed before the first database changes (see
:func:`check_goes_stale`), so a report in the folder is always about the databases there.

With ``shard`` only shard I of N of every feature database is built, into a shard folder;
``memo db merge`` (:mod:`memodb.merge`) joins the shards and runs the rest (text, dataset.json,
check) through the same functions as here: :func:`build_texts`, :func:`write_dataset_file`,
:func:`check_folder`. See :mod:`memodb.shard`.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__
from .check import CheckReport, check
from .errors import BadInputError
from .imgdb import create_imgdb
from .manifest import DATASET_FILE, MANIFEST, write_json_atomic
from .rawimg import rawimg_db
from .shard import parse_shard, prepare_folder, write_shard_file
from .splits import TRAIN, write_splits_file
from .txtdb import create_txtdb
from .writer import before_first_publish, fsync_dir

CHECK_FILE = "check.json"
TEXT_DIR = "txt"

_TOP = {"name", "vocab", "lexicon", "features", "text"}
_FEATURE = {"type", "source", "modality", "feature", "conf_th", "max_bb", "min_bb"}
_RAWIMG = {"type", "source", "size", "mean", "std", "conf_th", "max_bb", "min_bb"}
_TEXT = {"source", "sources", "folds", "faces_from", "min_faces", "max_len", "long", "labels",
         "splits", "seed", "dataset"}
_SPLIT_ROLES = {"train": "train", "val": "heldout", "test": "heldout"}


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

    def record(self, stage, name, path, status, summary, t0, log=None) -> None:
        """One database done (built, merged or up to date): a step and a dataset.json entry."""
        step = Step(stage, name, str(path), status, summary, round(time.perf_counter() - t0, 2))
        self.steps.append(step)
        self.databases[name] = {"path": str(Path(path).relative_to(self.out_dir)),
                                "kind": stage}
        if log:
            log(step)


def load_config(path) -> dict:
    """Read and validate a dataset config; paths become absolute (relative to its folder)."""
    path = Path(path)
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInputError(f"cannot read the config ({exc})", file=path) from None
    except json.JSONDecodeError as exc:
        raise BadInputError(f"not valid JSON: {exc.msg} at line {exc.lineno} column "
                            f"{exc.colno}", file=path, fix="repair the JSON") from None
    if not isinstance(cfg, dict):
        raise BadInputError("the config must be a JSON object", file=path)
    base = path.resolve().parent

    def where(*keys):
        return "config key " + ".".join(str(k) for k in keys)

    def unknown(obj, allowed, *keys):
        if not isinstance(obj, dict):
            raise BadInputError(f"{where(*keys)} must be an object", file=path)
        extra = sorted(set(obj) - allowed)
        if extra:
            raise BadInputError(f"{where(*keys)}: unknown key(s) {extra}", file=path,
                                fix=f"use only {sorted(allowed)}")

    def absolute(value, *keys):
        if not isinstance(value, str) or not value:
            raise BadInputError(f"{where(*keys)} must be a path string", file=path)
        return str((base / value).resolve()) if "{fold}" not in value else str(base / value)

    unknown(cfg, _TOP)
    out = {"name": cfg.get("name") or path.stem, "vocab": None, "lexicon": None,
           "features": {}, "text": None}
    for key in ("vocab", "lexicon"):
        if cfg.get(key) is not None:
            out[key] = absolute(cfg[key], key)
    features = cfg.get("features") or {}
    unknown(features, set(features), "features")
    for name, spec in features.items():
        kind = spec.get("type", "feature") if isinstance(spec, dict) else None
        if kind not in ("feature", "rawimg"):
            raise BadInputError(f"{where('features', name, 'type')} is {kind!r}", file=path,
                                fix="use \"feature\" (default) or \"rawimg\"")
        unknown(spec, _FEATURE if kind == "feature" else _RAWIMG, "features", name)
        if name == TEXT_DIR or not name.replace("_", "").replace("-", "").isalnum():
            raise BadInputError(f"{where('features', name)}: the name must be letters, digits, "
                                f"'_' or '-', and not {TEXT_DIR!r}", file=path)
        if "source" not in spec:
            raise BadInputError(f"{where('features', name)} has no source", file=path)
        out["features"][name] = {**spec, "type": kind,
                                 "source": absolute(spec["source"], "features", name)}
    text = cfg.get("text")
    if text is not None:
        unknown(text, _TEXT, "text")
        t = dict(text)
        if ("source" in t) == ("sources" in t):
            raise BadInputError(f"{where('text')} needs either source (one file, optional "
                                "splits) or sources (one file per split)", file=path)
        if "source" in t:
            t["source"] = absolute(t["source"], "text", "source")
            if "folds" in t:
                raise BadInputError(f"{where('text', 'folds')} needs per-split sources",
                                    file=path, fix="use \"sources\": {\"train\": ..., ...}")
        else:
            unknown(t["sources"], set(_SPLIT_ROLES), "text", "sources")
            if TRAIN not in t["sources"]:
                raise BadInputError(f"{where('text', 'sources')} has no train file", file=path)
            if "splits" in t:
                raise BadInputError(f"{where('text', 'splits')} cannot be combined with "
                                    "per-split sources", file=path)
            t["sources"] = {k: absolute(v, "text", "sources", k) for k, v in t["sources"].items()}
            folds = t.get("folds")
            has_placeholder = any("{fold}" in v for v in t["sources"].values())
            if folds is not None and (not isinstance(folds, list) or not folds):
                raise BadInputError(f"{where('text', 'folds')} must be a non-empty list",
                                    file=path)
            if bool(folds) != has_placeholder:
                raise BadInputError(f"{where('text')}: folds and a {{fold}} placeholder in "
                                    "the source paths go together", file=path)
        faces_from = t.get("faces_from")
        if faces_from is not None and out["features"].get(faces_from, {}).get("type") != \
                "feature":
            raise BadInputError(f"{where('text', 'faces_from')} is {faces_from!r}, not a "
                                "feature database of this config", file=path,
                                fix=f"use one of {sorted(out['features'])}")
        out["text"] = t
    if not out["features"] and out["text"] is None:
        raise BadInputError("the config builds nothing (no features, no text)", file=path)
    return out


def build_dataset(config, out_dir, *, workers: int | None = None, progress: bool = False,
                  log=None, shard=None) -> DatasetResult:
    """Build (or bring up to date) every database of a dataset config in ``out_dir``, then
    check the folder. ``config`` is a path or a dict from :func:`load_config`.

    ``shard`` (``"I/N"`` or a :class:`~memodb.shard.Shard`): build only shard I of N of the
    feature databases, and ``shard.json`` instead of text databases and ``dataset.json``.
    """
    cfg = load_config(config) if not isinstance(config, dict) else config
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
            opts = {k: v for k, v in spec.items() if k not in ("type", "source")}
            build = rawimg_db if spec["type"] == "rawimg" else create_imgdb
            r = build(spec["source"], out_dir / name, workers=workers, progress=progress,
                      replace=True, shard=shard, **opts)
            feature_paths[name] = r.path
            res.warnings += stale_databases(out_dir / name, r.path)
            res.record(spec["type"], name, r.path, "up to date" if r.skipped else "built",
                       feature_summary(r.manifest), t0, log)
        if shard is not None:
            write_shard_file(out_dir, cfg, shard, res.databases)
        else:
            build_texts(cfg, res, feature_paths, workers=workers, progress=progress, log=log)
            write_dataset_file(cfg, res)
    return check_folder(res, workers=workers, progress=progress)


def check_goes_stale(out_dir: Path):
    """A ``with`` block in which the folder's ``check.json`` is removed just before the first
    database changes under its final name (:func:`memodb.writer.before_first_publish`): a
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
                progress=False, log=None) -> None:
    """The text databases of a config (``cfg["text"]``), aligned with the feature databases
    at ``feature_paths`` (name -> database directory)."""
    out_dir, text = res.out_dir, cfg["text"]
    if text is None:
        return
    common = {"vocab": cfg["vocab"], "lexicon": cfg["lexicon"],
              "img_db": feature_paths.get(text.get("faces_from")),
              "min_faces": text.get("min_faces", 1), "max_len": text.get("max_len", 100),
              "long": text.get("long", "truncate"), "labels": text.get("labels"),
              "dataset": text.get("dataset") or cfg["name"], "workers": workers,
              "progress": progress, "replace": True}
    if "source" in text:
        t0 = time.perf_counter()
        r = create_txtdb(text["source"], out_dir / TEXT_DIR, splits=text.get("splits", ()),
                         seed=text.get("seed", 0), **common)
        res.warnings += r.warnings
        for split, path in r.dbs.items():
            res.record("text", f"{TEXT_DIR}/{split}" if split else TEXT_DIR, path,
                       "up to date" if r.skipped else "built",
                       f"{r.manifests[split]['counts']['texts']} texts", t0, log)
        return
    for fold in text.get("folds") or [None]:
        group = out_dir / TEXT_DIR / (f"fold{fold}" if fold is not None else "")
        assigned = {}
        for split, src in text["sources"].items():
            t0 = time.perf_counter()
            src = src.replace("{fold}", str(fold)) if fold is not None else src
            r = create_txtdb(src, group / split, **common)
            res.warnings += [f"{group.name}/{split}: {w}" for w in r.warnings]
            assigned[split] = r.manifests[""]["counts"]["texts"]
            res.record("text", str((group / split).relative_to(out_dir)), group / split,
                       "up to date" if r.skipped else "built", f"{assigned[split]} texts", t0,
                       log)
        write_splits_file(group, assigned, _SPLIT_ROLES, None,
                          {"dataset": common["dataset"]})


def write_dataset_file(cfg: dict, res: DatasetResult) -> None:
    write_json_atomic(res.out_dir / DATASET_FILE, {
        "kind": "dataset", "name": cfg["name"], "memo_version": __version__, "config": cfg,
        "databases": res.databases}, indent=1)


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
