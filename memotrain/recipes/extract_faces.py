"""``memo extract-faces``: raw face-crop database + face CNN -> face feature database.

    r = extract_face_features("face_cnn.pt", "raw/feat_th0.5_max36_min0", "faces")

Normalisation modes, batching and the manifest: docs/TRAINER.md "memo extract-faces"; the
output format: docs/FORMAT.md sections 3 and 10.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from memodb.errors import BadInputError, DatabaseError
from memodb.progress import progress_bar
from memodb.store.build import Build, BuildResult, Written
from memodb.store.codec import canonical_arrays, encode_value
from memodb.store.files import file_sha256
from memodb.store.naming import db_name, nbb_name
from memodb.store.reader import FeatureDB
from memotrain.checkpoint import load_face_cnn
from memotrain.engine import resolve_device
from memotrain.facecnn import feature_block

NORMALIZATIONS = ("corpus", "cnn")


def open_rawimg_db(path) -> tuple[FeatureDB, dict]:
    """A raw-crop database and its manifest; BadInputError when it is not one."""
    path = Path(path)
    try:
        db = FeatureDB(path)
        manifest = db.manifest
    except DatabaseError as exc:
        raise BadInputError(f"not a readable database ({exc})", file=path,
                            fix="give a database built by memo db rawimg-db") from None
    if manifest is None or manifest.get("kind") != "rawimg":
        what = "has no memo manifest" if manifest is None else \
            f"is a {manifest.get('kind')} database"
        raise BadInputError(f"{what}, not a raw face-crop database", file=path,
                            fix="build one with memo db rawimg-db (its manifest records the "
                                "crop size and normalisation)")
    norm = manifest.get("normalization") or {}
    if not isinstance(norm.get("mean"), (int, float)) or not norm.get("std"):
        raise BadInputError("the manifest records no mean / std (normalization)", file=path,
                            fix="rebuild it with memo db rawimg-db")
    return db, manifest


def extract_face_features(cnn_checkpoint, rawimg_db, out_dir, *, feature: str = "feat",
                          normalization: str = "corpus", batch_size: int = 256, device="auto",
                          progress: bool = False, replace: bool = False) -> BuildResult:
    """Build the face feature database of ``rawimg_db`` with the CNN of ``cnn_checkpoint``
    (a ``memo train face-cnn`` checkpoint) in ``out_dir``; docs/TRAINER.md
    "memo extract-faces"."""
    if normalization not in NORMALIZATIONS:
        raise BadInputError(f"unknown normalization {normalization!r}",
                            fix=f"use one of {', '.join(NORMALIZATIONS)}")
    if batch_size < 1:
        raise BadInputError(f"batch_size must be >= 1 (got {batch_size})")
    raw_path = Path(rawimg_db)
    db, raw_manifest = open_rawimg_db(raw_path)
    model = load_face_cnn(cnn_checkpoint)
    block = feature_block(feature, model.n_blocks)
    opts = raw_manifest.get("options", {})
    size = opts.get("size")
    if size != model.image_size:
        raise BadInputError(f"crops are {size}x{size} but the face CNN of {cnn_checkpoint} "
                            f"takes {model.image_size}x{model.image_size}", file=raw_path,
                            fix=f"rebuild the raw-crop database with --size {model.image_size}")
    db_norm = raw_manifest["normalization"]
    if normalization == "cnn":
        cnn_norm = model.normalization or {}
        if not isinstance(cnn_norm.get("mean"), (int, float)) or not cnn_norm.get("std"):
            raise BadInputError("the checkpoint records no training mean / std, so crops "
                                "cannot be re-normalised to them", file=cnn_checkpoint,
                                fix="use normalization corpus")
        scale = db_norm["std"] / cnn_norm["std"]
        shift = (db_norm["mean"] - cnn_norm["mean"]) / cnn_norm["std"]
    else:
        scale, shift = 1.0, 0.0

    options = {"conf_th": float(opts["conf_th"]), "max_bb": int(opts["max_bb"]),
               "min_bb": int(opts["min_bb"]), "modality": "face", "feature": feature,
               "normalization": normalization}
    out_dir = Path(out_dir)
    name = db_name(options["conf_th"], options["max_bb"], options["min_bb"])
    nbb_file = nbb_name(options["conf_th"], options["max_bb"], options["min_bb"])
    if (out_dir / name).resolve() == raw_path.resolve():
        raise BadInputError("the features would replace the raw-crop database itself",
                            file=raw_path, fix="choose another OUT_DIR")
    ckpt_sha = file_sha256(cnn_checkpoint)
    fp = hashlib.sha256(f"{raw_manifest['checksum']}\0{ckpt_sha}".encode()).hexdigest()
    source = {"path": str(raw_path), "type": "rawimg-db", "fingerprint": "sha256:" + fp,
              "rawimg_checksum": raw_manifest["checksum"]}
    build = Build(out_dir / name, "feature", options, source, replace=replace, nbb_file=nbb_file)
    done = build.up_to_date()
    if done is not None:
        return done

    device = resolve_device(device, error=BadInputError)
    model.to(device).eval()
    soft = feature == "feat" and model.classifier is not None
    dim = model.block_channels[block - 1]
    keys = sorted(db.keys(), key=lambda k: k.encode("utf-8"))
    counts = {"source_segments": len(keys), "segments": 0, "empty": 0, "dropped_below_min_bb": 0,
              "frames_seen": 0, "frames_kept": 0}
    nbb: dict[str, int] = {}
    layout: dict = {}

    def run(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        feats, probs = [], []
        with torch.no_grad():
            for b in range(0, len(frames), batch_size):
                x = torch.from_numpy(frames[b:b + batch_size]).to(device)
                x = x * scale + shift if normalization == "cnn" else x
                f = model.features_of(x, block)
                feats.append(f.float().cpu().numpy())
                if soft:
                    probs.append(torch.softmax(model.classifier(f), -1).float().cpu().numpy())
        return (np.concatenate(feats) if feats else np.zeros((0, dim), np.float32),
                np.concatenate(probs) if probs else None)

    with build.stage() as staged, progress_bar(progress, len(keys), name) as bar:
        pending, n_pending = [], 0  # segments whose frames go into the next forward passes

        def flush():
            frames = [a["features"] for _, a in pending if len(a["features"])]
            feats, probs = run(np.concatenate(frames).astype(np.float32) if frames
                               else np.zeros((0, size, size), np.float32))
            at = 0
            for key, arrays in pending:
                n = len(arrays["features"])
                out = {"features": feats[at:at + n]}
                if soft:
                    out["soft_labels"] = probs[at:at + n] if probs is not None \
                        else np.zeros((0, model.classifier.out_features), np.float32)
                out.update({k: v for k, v in arrays.items() if k != "features"})
                at += n
                out = canonical_arrays(out)
                value = encode_value(out)
                staged.put(key.encode("utf-8"), value)
                if not layout:
                    layout.update({k: {"dtype": a.dtype.str, "shape": [None, *a.shape[1:]]}
                                   for k, a in out.items()})
                nbb[key] = n
                counts["segments"] += 1
                counts["empty"] += n == 0
                counts["frames_seen"] += n
                counts["frames_kept"] += n
                bar(1)
            pending.clear()

        for key in keys:
            arrays = db[key]
            crops = arrays["features"]
            if crops.ndim != 3 or crops.shape[1:] != (size, size):
                raise BadInputError(f"crops of shape {crops.shape[1:]}, not ({size}, {size})",
                                    file=raw_path, segment=key,
                                    fix="rebuild the raw-crop database with memo db rawimg-db")
            pending.append((key, arrays))
            n_pending += len(crops)
            if n_pending >= batch_size:
                flush()
                n_pending = 0
        flush()
        cnn = {"path": str(Path(cnn_checkpoint).resolve()), "sha256": ckpt_sha,
               "config": model.config, "classes": model.classes,
               "normalization": model.normalization}
        manifest = {
            "arrays": layout, "counts": counts,
            "nbb_file": nbb_file, "cnn": json.loads(json.dumps(cnn)),
            "input_normalization": {
                "mode": normalization, "rawimg": {k: db_norm[k] for k in ("mean", "std")},
                "formula": "crop as stored" if normalization == "corpus" else
                "(crop * std_db + mean_db - mean_cnn) / std_cnn"},
        }
        return build.publish(staged, Written(manifest, {nbb_file: nbb}))
