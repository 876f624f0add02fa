"""Text-db build throughput: memo create_txtdb (a word cache filled by one batched tokenizer
call, values in sorted key order, big transactions) against the original MEmoBERT builder (a
tokenizer call per sentence, a commit every 1000 puts), on the same generated captions.

    python -m bench.txtdb_build [--segments 200000] [--repeat 3] [--lexicon-words 300] [--profile]
"""
from __future__ import annotations

import gc
import inspect
import json
import os
import shutil
import statistics
from pathlib import Path

import lmdb
import lz4.frame
import msgpack
from tokenizers.implementations import BertWordPieceTokenizer

from memodb.store.textcodec import decode_example
from memodb.text.txtdb import create_txtdb
from memodb.text.wordpiece import WordPieceTokenizer, bundled_vocab_dir, load_vocab

from .common import (MIB, OUT, cores, cprofile, db_stats, in_child, make_captions, make_lexicon,
                     met, parser, ratio, report, scratch, summarize, timed, warm)

MAX_LEN = 100_000  # memo's max_len: far above any generated text, so nothing is truncated
GOAL = 3


# --- baseline: the original tool (MEmoBERT's caption -> txt_db builder) ---------------------
def baseline_build(captions, out_dir, vocab_file) -> dict:
    """json.load, one tokenizer call per sentence, the example dict, lz4(msgpack) values put in
    file order, a commit every 1000 puts, 1 TiB map, then id2len / txt2img / img2txts."""
    tok = BertWordPieceTokenizer(vocab_file, lowercase=True, strip_accents=None,
                                 clean_text=True, handle_chinese_chars=True,
                                 wordpieces_prefix="##")
    dataset = Path(captions).stem
    with open(captions, encoding="utf-8") as f:
        data = json.load(f)
    os.makedirs(out_dir, exist_ok=True)
    env = lmdb.open(str(out_dir), map_size=1024 ** 4)
    txn = env.begin(write=True)
    id2len, txt2img, img2txts = {}, {}, {}
    for i, (seg_id, sentences) in enumerate(data.items()):
        input_ids, toked, word_ids, n = [], [], [], 0
        for sentence in sentences:
            words = sentence.split()
            enc = tok.encode(words, is_pretokenized=True, add_special_tokens=False)
            input_ids.extend(enc.ids)
            toked.extend(enc.tokens)
            word_ids.extend(n + w for w in enc.word_ids)
            n += len(words)
        img_fname = seg_id + ".npz"
        example = {"id": seg_id, "dataset": dataset, "file_path": img_fname,
                   "img_fname": img_fname, "toked_caption": toked, "input_ids": input_ids,
                   "word_ids": word_ids}
        txn.put(seg_id.encode("utf-8"),
                lz4.frame.compress(msgpack.packb(example, use_bin_type=True)))
        if (i + 1) % 1000 == 0:
            txn.commit()
            txn = env.begin(write=True)
        id2len[seg_id] = len(input_ids)
        txt2img[seg_id] = img_fname
        img2txts[img_fname] = [seg_id]
    txn.commit()
    env.close()
    for name, obj in (("id2len", id2len), ("txt2img", txt2img), ("img2txts", img2txts)):
        with open(Path(out_dir) / f"{name}.json", "w") as f:
            json.dump(obj, f)
    return {"texts": len(id2len)}


# --- memo -------------------------------------------------------------------------------------
def memo_workers() -> bool:
    """Whether this memo's create_txtdb takes ``workers`` (encodes values in processes)."""
    return "workers" in inspect.signature(create_txtdb).parameters


def memo_build(captions, out_dir, lexicon=None, workers=None) -> dict:
    kw = {"workers": workers} if memo_workers() else {}
    return create_txtdb(captions, out_dir, max_len=MAX_LEN, lexicon=lexicon, **kw).counts


# --- checks -----------------------------------------------------------------------------------
def compare(base, other) -> tuple[int, int, int, int]:
    """(texts in the baseline db, texts in ``other``, baseline ids whose input_ids are equal in
    ``other``, baseline ids whose every baseline field is equal there; fields only ``other``
    has, the emotion ones, are not compared)."""
    same_ids = same_all = 0
    with lmdb.open(str(base), readonly=True, lock=False) as e1, \
            lmdb.open(str(other), readonly=True, lock=False) as e2, \
            e1.begin() as t1, e2.begin() as t2:
        for key, value in t1.cursor():
            buf = t2.get(key)
            if buf is None:
                continue
            a, b = decode_example(value), decode_example(buf)
            same_ids += a["input_ids"] == b["input_ids"]
            same_all += all(b.get(k) == v for k, v in a.items())
        return e1.stat()["entries"], e2.stat()["entries"], same_ids, same_all


# --- profile of memo's build ------------------------------------------------------------------
def _example(text_id, dataset, ids, pieces, word_ids) -> bytes:
    ex = {"id": text_id, "dataset": dataset, "file_path": text_id + ".npz",
          "img_fname": text_id + ".npz", "toked_caption": pieces, "input_ids": ids,
          "word_ids": word_ids}
    return lz4.frame.compress(msgpack.packb(ex, use_bin_type=True))


def _load_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _stages_baseline(captions: Path, gc_state: str) -> str:
    tok = BertWordPieceTokenizer(str(load_vocab(bundled_vocab_dir()).file), lowercase=True,
                                 strip_accents=None, clean_text=True,
                                 handle_chinese_chars=True, wordpieces_prefix="##")
    t_json, data = timed(_load_json, captions)
    t_enc, _ = timed(lambda: [[tok.encode(s.split(), is_pretokenized=True,
                                          add_special_tokens=False) for s in v]
                              for v in data.values()])
    us = 1e6 / len(data)
    return (f"gc {gc_state}: baseline per text: json.load {t_json * us:.1f} us, per-sentence "
            f"encode {t_enc * us:.1f} us")


def _stages_memo(captions: Path, lexicon: Path | None, gc_state: str) -> str:
    from memodb.text.lexicon import read_lexicon
    from memodb.text.transcripts import read_transcripts

    tok = WordPieceTokenizer(load_vocab(bundled_vocab_dir()))
    if lexicon is not None:
        tok.lexicon = read_lexicon(lexicon, tok.normalize)
    t_read, (records, _) = timed(read_transcripts, captions)
    texts = [r.text for r in records]
    t_first, _ = timed(tok.encode_many, texts)  # the distinct words, then assembly
    t_again, encoded = timed(tok.encode_many, texts)  # every word cached: assembly alone
    t_val, _ = timed(lambda: [_example(r.id, "captions", e.ids, e.pieces, e.word_ids)
                              for r, e in zip(records, encoded)])
    us = 1e6 / len(records)
    return (f"gc {gc_state}: memo{' with lexicon' if lexicon else ''} per text: "
            f"read_transcripts {t_read * us:.1f} us, encode_many {t_first * us:.1f} us (again, "
            f"every word cached: {t_again * us:.1f} us), msgpack + lz4 of the value (no emotion "
            f"fields) {t_val * us:.1f} us")


def stages(captions: Path, lexicon: Path) -> str:
    """Single-process cost per text of the baseline's steps and of memo's (public API only):
    reading the transcripts, tokenising (the distinct words, then assembling from the cache),
    and one value's msgpack + lz4; with the cyclic garbage collector on (as in the builds) and
    off."""
    lines = []
    for gc_state in ("on", "off"):
        gc.collect()
        (gc.enable if gc_state == "on" else gc.disable)()
        try:
            lines.append(_stages_baseline(captions, gc_state))
            lines += [_stages_memo(captions, lex, gc_state) for lex in (None, lexicon)]
        finally:
            gc.enable()
    return "\n".join(lines) + "\n"


def profile(captions: Path, lexicon: Path, out: Path, workers: int) -> str:
    """Stage timings, then cProfile of memo's builds: workers=1 (all the work in one process)
    and, when create_txtdb has workers, the main process at ``workers``."""
    text = stages(captions, lexicon)
    runs = [(None, 1), (lexicon, 1)] + ([(None, workers)] if memo_workers() and workers > 1
                                        else [])
    for lex, w in runs:
        text += (f"\n===== memo create_txtdb{' with lexicon' if lex else ''}, workers={w}"
                 f"{' (main process only)' if w > 1 else ''} =====\n")
        text += cprofile(memo_build, captions, out / f"prof{'_lex' if lex else ''}_{w}", lex,
                         w, sorts=("tottime", "cumulative"), limit=25)
    return text


def main(argv=None) -> str:
    ap = parser(__doc__, segments=200_000, movies=100)
    ap.add_argument("--repeat", type=int, default=3, help="runs of each build (best reported)")
    ap.add_argument("--lexicon-words", type=int, default=300,
                    help="words of the generated emotion lexicon (second memo row)")
    ap.add_argument("--vocab-words", type=int, default=5000, help="generated vocabulary size")
    ap.add_argument("--profile", action="store_true",
                    help="also cProfile memo's builds into bench/out/txtdb_build_profile.txt")
    args = ap.parse_args(argv)
    vocab_file = str(load_vocab(bundled_vocab_dir()).file)
    env = {"RAYON_NUM_THREADS": str(args.workers)}  # tokenizers' batch calls
    with scratch(args, "txtdb") as d:
        captions, lexicon = d / "captions.json", d / "lexicon.tsv"
        builds = {"base": (baseline_build, (vocab_file,)),
                  "memo": (memo_build, (None, args.workers)),
                  "lex": (memo_build, (str(lexicon), args.workers))}
        runs = {k: [] for k in builds}
        gen = make_captions(captions, args.segments, args.movies, args.seed, args.vocab_words)
        lex_lines = make_lexicon(lexicon, gen["vocab"], args.lexicon_words, args.seed)
        for r in range(args.repeat):  # round robin, so drift of the machine hits every build
            shutil.rmtree(d / f"run{r - 1}", ignore_errors=True)  # keep only the last run
            run = d / f"run{r}"
            for k, (fn, more) in builds.items():
                warm(captions, lexicon)
                runs[k].append(in_child(fn, captions, run / k, *more, env=env))
        dbs = {k: run / k for k in builds}
        n, nbytes, ck_base = db_stats(dbs["base"])
        _, _, ck_memo = db_stats(dbs["memo"])
        checks = {k: compare(dbs["base"], dbs[k]) for k in ("memo", "lex")}
        with lmdb.open(str(dbs["base"]), readonly=True, lock=False) as e, e.begin() as txn:
            pieces = sum(len(decode_example(v)["input_ids"]) for _, v in txn.cursor())
        if args.profile:
            (OUT / "txtdb_build_profile.txt").write_text(
                profile(captions, lexicon, d / "prof", args.workers))
            print(f"profile written to {OUT / 'txtdb_build_profile.txt'}")
    best, t, cpu, rss, wrss, rss0 = summarize(runs)

    def row(what, k, goal=None):
        r = t["base"] / t[k]
        return [what, f"{t[k]:.2f}", f"{statistics.median(x['seconds'] for x in runs[k]):.2f}",
                f"{cpu[k]:.2f}", f"{n / t[k]:,.0f}", ratio(r), ratio(cpu["base"] / cpu[k]),
                f"{rss[k]:,.0f}" + (f" / {wrss[k]:,.0f}" if wrss[k] else ""),
                f">= {goal:g}x" if goal else "",
                met(r >= goal) if goal else ""]

    rows = [row("baseline (MEmoBERT-style: encode per sentence, commit per 1000)", "base"),
            row("memo create_txtdb", "memo", GOAL),
            row(f"memo create_txtdb + emotion lexicon ({args.lexicon_words} words)", "lex")]
    ok = all(c == (n, n, n, n) for c in checks.values())
    notes = [
        f"{n:,} texts (segments; {gen['sentences']:,} sentences, {gen['words']:,} words, "
        f"{pieces:,} WordPiece tokens = {pieces / gen['words']:.2f} per whitespace word, "
        f"captions json {gen['bytes'] / MIB:.1f} MiB) generated with bench.common.make_captions "
        f"(seed {args.seed}): {args.vocab_words:,} generated pseudo-words with Zipf "
        "frequencies, 1-3 sentences per segment, 3-30 words per sentence, capitals, accents, "
        "punctuation, contractions; pseudo-words split into more pieces than English does; "
        f"{nbytes / MIB:.1f} MiB of stored values; bert-base-uncased vocab.txt, tokenizers "
        "BertWordPieceTokenizer in every build",
        "texts/s = texts / build seconds; ratio = baseline seconds / seconds; CPU s = user + "
        "system seconds of the build (all threads and worker processes; least of the runs); "
        "peak RSS = VmHWM of the build's process, then of its largest worker process if it "
        f"has any (largest of the runs; ~{rss0:.0f} MiB of the first is the interpreter with "
        "its imports, before the build starts); goal judged on wall time",
        "baseline: json.load, tokenizer.encode(sentence.split(), is_pretokenized=True, "
        "add_special_tokens=False) per sentence, example dict (id, dataset, file_path, "
        "img_fname, toked_caption, input_ids, word_ids), lz4.frame(msgpack) value, txn.put in "
        "file order, commit every 1000 puts, map_size 1 TiB (sync on commit, lmdb default), "
        "then id2len / txt2img / img2txts json; memo: create_txtdb(max_len "
        f"{MAX_LEN:,}, no img_db), the second memo row adds a {lex_lines}-line lexicon "
        f"(emo_input_ids / emo_labels / emo_type_ids per text); lexicon cost: "
        f"{t['lex'] / t['memo']:.2f}x memo's time",
        "each build runs in a fresh Python process, timed from the call (imports excluded), "
        "the baseline in that process alone, memo with "
        + (f"workers={args.workers}" if memo_workers() else "no workers (this create_txtdb "
           "takes none)")
        + f" ({cores()} cores), RAYON_NUM_THREADS={args.workers} (tokenizers' batch calls) "
        "everywhere; the captions and lexicon "
        f"were read once (and dirty pages synced) right before each build; {args.repeat} runs "
        "of each (round robin, fresh output folders); rates and ratios use the best run",
        f"memo and the baseline hold identical values (same checksum): "
        f"{met(ck_memo == ck_base)}; input_ids identical for every id: memo "
        f"{checks['memo'][2]:,}/{n:,}, memo with lexicon {checks['lex'][2]:,}/{n:,}; every "
        f"baseline field identical: memo {checks['memo'][3]:,}/{n:,}, with lexicon "
        f"{checks['lex'][3]:,}/{n:,}; texts in each db: baseline {n:,}, memo "
        f"{checks['memo'][1]:,}, with lexicon {checks['lex'][1]:,}: {met(ok)}",
    ]
    return report("txtdb_build", "Text-db build throughput (create-txtdb)",
                  ["build", "best s", "median s", "CPU s", "texts/s", "vs baseline",
                   "CPU vs baseline", "peak RSS MiB (main / worker)", "goal", "met"], rows, notes)


if __name__ == "__main__":
    main()
