"""Fine-tuning for emotion recognition (``memo train finetune``): one file, read top to bottom.

    summary = finetune("ft.json", overrides=["--folds", "[1,2,3]", "--seeds", "[0,1]"])

One run per (fold, seed) of the config, model selection on validation only, the test split
read last; the folders and the rules: docs/TRAINER.md "Fine-tuning".
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from memodb.config import changes
from memodb.dataset.protocols import protocol_of
from memodb.store.manifest import write_json_atomic
from memodb.store.textdb import TextDB
from memotrain import metrics as M
from memotrain import results as R
from memotrain.checkpoint import load_model, save_checkpoint
from memotrain.classifier import Batcher, Classifier, FinetuneError, Prompt, load_classifier
from memotrain.data import IGNORE_TARGET, MemoDataset, default_frame_limit, to_device
from memotrain.engine import (NonFiniteError, Optim, Stepper, append_jsonl, autocast, grad_scaler,
                              param_groups, resolve_device, resolve_precision, seed_for)
from memotrain.events import EventLog
from memotrain.finetuneconfig import (MODALITIES, FinetuneConfig, load_finetune_config, run_name,
                                      same_database)
from memotrain.model import MemoBert
from memotrain.sampler import BucketBatchSampler
from memotrain.trainconfig import TrainConfigError

log = logging.getLogger(__name__)

RESULT_FILE = "result.json"
BEST_FILE = "best.pt"
# config keys a re-run may change in an output_dir that already holds runs
RERUN_CHANGES = ("folds", "seeds", "eval_modalities", "device", "log_every", "data.num_workers",
                 "output_dir")


# ----------------------------------------------------------------------------- the runs

def finetune(config, overrides=(), console=None) -> dict:
    """Run every (fold, seed) of ``config`` (a FinetuneConfig, a dict or a JSON file, plus
    ``--key value`` overrides) that is not finished yet; aggregate. Returns
    ``{"runs": [result per run], "summary": ..., "output_dir": ...}``."""
    cfg = load_finetune_config(config, overrides)
    out = Path(cfg.output_dir)
    _claim(out, cfg)
    show = console or R.Console()
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    runs = []
    for fold in cfg.fold_names():
        for seed in cfg.seeds:
            run_dir = out / run_name(fold, seed)
            done = run_dir / RESULT_FILE
            if done.exists():
                runs.append(_reused(json.loads(done.read_text(encoding="utf-8")), cfg, fold,
                                    run_dir))
                show.skip(runs[-1])
                continue
            if run_dir.exists():  # an unfinished run: start it again
                shutil.rmtree(run_dir)
            runs.append(run_one(cfg, fold, seed, run_dir, device, precision, show))
    summary = R.aggregate(runs)
    R.write(out, runs, summary)
    show.table(summary, cfg.select.metric)
    return {"runs": runs, "summary": summary, "output_dir": str(out)}


def _reused(result: dict, cfg: FinetuneConfig, fold, run_dir: Path) -> dict:
    """A finished run, reused only while its text databases are under the protocol it was run
    under (same hash): a summary never mixes two assignments of the corpus."""
    paths = cfg.paths(fold)
    now = protocol_of(paths["test"] or paths["val"])
    then = result.get("protocol")
    if (then or {}).get("hash") != (now or {}).get("hash"):
        def tag(p):
            return f"{p['name']}@{p['hash']}" if p else "no protocol"
        raise FinetuneError(f"{run_dir} was run under {tag(then)}, but its text databases are "
                            f"now under {tag(now)} (rebuilt since); fine-tune into another "
                            "output_dir, or delete this one")
    return result


def _claim(out: Path, cfg: FinetuneConfig) -> None:
    """Write ``config.json``; an output folder of another config is refused."""
    path = out / "config.json"
    if path.exists():
        saved = json.loads(path.read_text(encoding="utf-8"))
        changed = changes(saved, cfg.to_dict(), ignore=RERUN_CHANGES)
        if changed:
            raise FinetuneError(f"{out} holds fine-tuning runs of another config (differs in "
                                f"{', '.join(changed)}); choose another output_dir or delete "
                                "it")
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, cfg.to_dict(), indent=2)


def class_names(cfg: FinetuneConfig, train_db) -> list[str]:
    if cfg.labels:
        return list(cfg.labels)
    labels = (TextDB(train_db).manifest or {}).get("labels")
    if not labels:
        raise FinetuneError(f"{train_db}: the text database has no labels; build it from "
                            "labelled refs ({id: {txt, label}}) with --labels NAMES, or give "
                            "labels in the config")
    return list(labels.get("names") or [str(k) for k in range(max(labels["set"]) + 1)])


def _dataset(cfg, paths, split, mods, mc, prompt_len, strict, n_classes):
    """The split's dataset and its labels (every text must have one, within the classes);
    ``strict``: an example that would be dropped is an error (val / test)."""
    d = cfg.data
    faces = "faces" in mods and paths["img_db"] is not None
    speech = "speech" in mods and paths["speech_db"] is not None
    room = mc.max_text_positions - 2 - prompt_len
    max_text = d.max_text_len if d.max_text_len is not None else room
    if max_text > room:
        raise TrainConfigError(f"data.max_text_len {max_text} + [CLS]/[SEP] + the prompt's "
                               f"{prompt_len} tokens > the model's max_text_positions "
                               f"{mc.max_text_positions}; lower data.max_text_len")
    ds = MemoDataset(paths[split], paths["img_db"] if faces else None,
                     paths["speech_db"] if speech else None, max_text_len=max_text,
                     max_faces=_frames(d.max_faces, paths["img_db"], mc.max_face_positions)
                     if faces else None,
                     max_speech=_frames(d.max_speech, paths["speech_db"],
                                        mc.max_speech_positions) if speech else None,
                     name=f"{split}")
    lost = {k: v for k, v in ds.counts.items() if k in ("too_long", "empty", "no_features",
                                                        "no_speech", "too_few_faces") and v}
    if strict and lost:
        raise FinetuneError(f"{paths[split]}: {split} examples would be dropped ({ds.report()}); "
                            f"every {split} example must be evaluated: raise "
                            "data.max_text_len (or use a model with more positions) or fix the "
                            "feature databases")
    txt = TextDB(ds.txt_path)
    labels = [txt[i].get("target") for i in ds.ids]
    if any(t is None for t in labels):
        raise FinetuneError(f"{paths[split]}: texts without a label; fine-tuning needs a "
                            "label on every text (refs {id: {txt, label}})")
    labels = np.asarray(labels, dtype=np.int64)
    bad = sorted(set(labels[(labels < 0) | (labels >= n_classes)].tolist()))
    if bad:
        raise FinetuneError(f"{paths[split]}: label(s) {bad} outside the {n_classes} classes; "
                            "give the class names (labels) the texts were built with")
    return ds, labels


def _frames(given, db, positions):
    return min(given, positions) if given is not None else default_frame_limit(db, positions)


def run_one(cfg: FinetuneConfig, fold, seed: int, run_dir: Path, device, precision,
            show) -> dict:
    """One fine-tuning run; returns (and writes) its result."""
    paths = cfg.paths(fold)
    for a in ("train", "val"):
        if paths["test"] and same_database(paths[a], paths["test"]):
            raise FinetuneError(f"data.{a} {paths[a]} and data.test {paths['test']} hold the "
                                "same texts (same checksum); model selection must never read "
                                "the test split: give a separate validation db")
    run_dir.mkdir(parents=True, exist_ok=True)
    names = class_names(cfg, paths["train"])
    C = len(names)
    torch.manual_seed(seed)
    model = load_model(cfg.init_checkpoint) if cfg.init_checkpoint else MemoBert(
        cfg.model_config())
    mc = model.config
    prompt = None
    if cfg.head == "prompt":
        words = cfg.prompt.label_words or names
        if len(words) != C:
            raise TrainConfigError(f"prompt.label_words has {len(words)} words for {C} classes")
        prompt = Prompt(cfg.prompt.template, words, paths["train"], cfg.prompt.vocab)
    plen = len(prompt) if prompt else 0
    mods = _modalities(cfg, paths, mc)
    every_mod = sorted({m for ms in [mods, *cfg.eval_modalities] for m in ms},
                       key=MODALITIES.index)
    train, train_labels = _dataset(cfg, paths, "train", mods, mc, plen, False, C)
    val, _ = _dataset(cfg, paths, "val", every_mod, mc, plen, True, C)
    clf = Classifier(model, cfg.head, C, prompt.label_ids if prompt else None).to(device)
    weights = _class_weights(cfg.class_weights, train_labels, C, device)

    batcher = Batcher(mods, prompt)
    d, o = cfg.data, cfg.optim
    sampler = BucketBatchSampler(batcher.lengths(train), batch_size=d.batch_size,
                                 max_tokens=d.max_tokens, seed=seed_for(seed, 1))
    loader = torch.utils.data.DataLoader(
        train, batch_sampler=sampler, collate_fn=batcher, num_workers=d.num_workers,
        pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(seed))
    per_epoch = -(-len(sampler) // o.grad_accum)
    total = cfg.epochs * per_epoch
    warmup = o.warmup_steps if o.warmup_steps is not None else round(o.warmup_ratio * total)
    every = cfg.select.every or per_epoch
    optim = Optim("classifier", torch.optim.AdamW(
        param_groups(clf, o.weight_decay), lr=o.lr, betas=o.betas,
        fused=device.type == "cuda" or None), o.lr, warmup, o.grad_clip).start(total)
    stepper = Stepper([optim], grad_scaler(device, precision), o.grad_accum)
    metric = cfg.select.metric
    show.start_run(fold, seed, len(train), len(val), total, mods, cfg.head, device, precision)

    metrics_file = run_dir / "metrics.jsonl"
    events = EventLog(run_dir)  # the run folder is new: nothing to purge
    best, best_step, since_best, step, skipped, nonfinite = -1.0, 0, 0, 0, 0, 0
    t0, window = time.perf_counter(), []
    stop = False
    clf.train()
    for epoch in range(cfg.epochs):
        sampler.set_epoch(epoch)
        batches = iter(loader)
        for _ in range(per_epoch):
            for _micro in range(o.grad_accum):
                batch = next(batches, None)
                if batch is None:
                    break
                clf.model.check_ids(batch["input_ids"])  # on the host: no read-back
                batch = to_device(batch, device)
                with autocast(device, precision):
                    logits = clf(batch)
                stepper.backward(F.cross_entropy(logits.float(), batch["targets"],
                                                 weight=weights, ignore_index=IGNORE_TARGET))
            update = stepper.step()
            if update.finite:
                nonfinite = 0
            else:
                skipped += 1
                nonfinite += 1
            step += 1
            window.append(update.loss)
            if nonfinite >= cfg.max_nonfinite:
                raise NonFiniteError(f"{run_dir}: {nonfinite} updates in a row had a "
                                     f"non-finite loss or gradients at update {step}; lower "
                                     "optim.lr or use precision fp32/bf16")
            if cfg.log_every and step % cfg.log_every == 0:
                rec = {"step": step, "epoch": epoch, "lr": update.lrs["classifier"],
                       "loss": float(np.mean(window)), "skipped": skipped,
                       "seconds": time.perf_counter() - t0}
                window = []
                append_jsonl(metrics_file, rec)
                events.add(rec)
                show.log(rec, total)
            if step % every == 0 or step == total:
                res = evaluate(clf, val, Batcher(mods, prompt), cfg, device, precision, C)
                improved = res[metric] > best
                rec = {"step": step, "epoch": epoch, "val": _brief(res), "best": improved}
                append_jsonl(metrics_file, rec)
                events.add(rec)
                show.val(step, res, metric, improved)
                if improved:
                    best, best_step, since_best = res[metric], step, 0
                    _save_best(run_dir / BEST_FILE, clf, cfg, names, prompt, step, res)
                else:
                    since_best += 1
                    if cfg.select.patience and since_best >= cfg.select.patience:
                        stop = True
                        break
        if stop:
            break

    # -- the selected model: val, then (only now) test ------------------------------------------
    clf, _ = load_classifier(run_dir / BEST_FILE, device)
    result = {"fold": fold, "seed": seed, "step": best_step, "steps": step,
              "early_stopped": stop, "metric": metric, "labels": names, "head": cfg.head,
              "modalities": mods, "skipped": skipped,
              "protocol": protocol_of(paths["test"] or paths["val"]), "splits": {},
              "ablations": {}}
    evals = {"val": val}
    if paths["test"]:
        evals["test"], _ = _dataset(cfg, paths, "test", every_mod, mc, plen, True, C)
    for split, ds in evals.items():
        res = evaluate(clf, ds, Batcher(mods, prompt), cfg, device, precision, C, keep=True)
        _predictions(run_dir / f"predictions_{split}.tsv", res, names)
        result["splits"][split] = _brief(res)
        for sub in cfg.eval_modalities:
            key = "+".join(sub)
            r = evaluate(clf, ds, Batcher(sub, prompt), cfg, device, precision, C)
            result["ablations"].setdefault(key, {})[split] = _brief(r)
    result["report"] = "test" if "test" in evals else "val"
    rec = {"step": best_step, "selected": result["splits"]}
    append_jsonl(metrics_file, rec)
    events.add(rec)
    events.close()
    write_json_atomic(run_dir / RESULT_FILE, result, indent=1)  # last: the run is finished
    show.done_run(result)
    return result


def _modalities(cfg, paths, mc) -> list[str]:
    have = {"text": True, "faces": paths["img_db"] is not None,
            "speech": paths["speech_db"] is not None}
    model_has = {"text": True, "faces": bool(mc.face_dim), "speech": bool(mc.speech_dim)}
    if cfg.modalities:
        for m in cfg.modalities:
            if not model_has[m]:
                raise TrainConfigError(f"modalities has {m} but the model has no {m} "
                                       f"({'face_dim' if m == 'faces' else 'speech_dim'} 0)")
        return list(cfg.modalities)
    return [m for m in MODALITIES if have[m] and model_has[m]]


def _class_weights(spec, targets, C, device):
    if spec is None:
        return None
    if spec == "balanced":
        counts = np.bincount(np.asarray(targets, dtype=np.int64), minlength=C).astype(float)
        w = np.divide(counts.sum(), C * counts, out=np.zeros(C), where=counts > 0)
    else:
        if len(spec) != C:
            raise TrainConfigError(f"class_weights has {len(spec)} weights for {C} classes")
        w = np.asarray(spec, dtype=float)
    return torch.tensor(w, dtype=torch.float32, device=device)


@torch.no_grad()
def evaluate(clf: Classifier, ds: MemoDataset, batcher: Batcher, cfg, device, precision, C,
             keep: bool = False) -> dict:
    """WA, UA, F1, WF1, per-class scores and the confusion matrix of ``clf`` on ``ds`` (every
    example, fixed batches); with ``keep``, also ids, labels and predictions."""
    was_training = clf.training
    clf.eval()
    sampler = BucketBatchSampler(batcher.lengths(ds), batch_size=cfg.data.batch_size,
                                 max_tokens=cfg.data.max_tokens, shuffle=False)
    ids, labels, preds = [], [], []
    for idx in sampler:
        batch = batcher([ds[i] for i in idx])
        clf.model.check_ids(batch["input_ids"])  # on the host: no read-back
        batch = to_device(batch, device)
        with autocast(device, precision):
            logits = clf(batch)
        preds.append(logits.float().argmax(-1).cpu())
        labels.append(batch["targets"].cpu())
        ids.extend(batch["ids"])
    clf.train(was_training)
    labels, preds = torch.cat(labels).numpy(), torch.cat(preds).numpy()
    res = M.evaluate(labels, preds, C)
    if keep:
        res.update(ids=ids, labels=labels.tolist(), preds=preds.tolist())
    return res


def _brief(res: dict) -> dict:
    return {k: v for k, v in res.items() if k not in ("ids", "labels", "preds")}


def _save_best(path: Path, clf: Classifier, cfg, names, prompt, step, res) -> None:
    save_checkpoint(path, clf.model, step=step, finetune={
        "head": clf.kind, "labels": names,
        "head_state": None if clf.head is None else clf.head.state_dict(),
        "label_ids": prompt.label_ids if prompt else None,
        "prompt": None if prompt is None else {"template": cfg.prompt.template,
                                               "label_words": cfg.prompt.label_words or names},
        "step": step, "metric": cfg.select.metric, "val": _brief(res)})


def _predictions(path: Path, res: dict, names) -> None:
    lines = ["id\tlabel\tprediction\n"] + [f"{i}\t{names[a]}\t{names[b]}\n" for i, a, b in
                                           zip(res["ids"], res["labels"], res["preds"])]
    write_json_atomic(path, "".join(lines))
