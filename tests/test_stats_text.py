"""``memo db stats`` on text databases and split folders: exact numbers on a tiny corpus."""
import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from memo.cli import main
from memodb.describe import stats, text_stats
from memodb.feature.imgdb import create_imgdb
from memodb.text.txtdb import create_txtdb

LABELS = ["anger", "happy", "neutral", "sad"]
# id -> (text, label); the npz_dir fixture gives movieA_1..6 4, 5, 6, 0, 8, 9 faces
TEXTS = {
    "movieA_1": ("i am angry", 0),                               # 3 pieces, anger x1
    "movieA_2": ("happy happy" + " the" * 4, 1),                 # 6 pieces, joy x2
    "movieA_3": ("heartbroken" + " the" * 9, 1),                 # 11 pieces: heart ##broken
    "movieA_4": ("the" + " the" * 24, 3),                        # 25 pieces, 0 faces
    "movieA_5": ("sad alone" + " the" * 48, 0),                  # 50 pieces, sadness x2
    "movieA_6": ("the" + " the" * 119, 3),                       # 120 pieces
}
LENGTHS = {"movieA_1": 3, "movieA_2": 6, "movieA_3": 11, "movieA_4": 25, "movieA_5": 50,
           "movieA_6": 120}
FACES = {"movieA_1": 4, "movieA_2": 5, "movieA_3": 6, "movieA_4": 0, "movieA_5": 8,
         "movieA_6": 9}
# categories sort to anger (1), joy (2), sadness (3); "sad" is sadness first, then anger
LEXICON = "angry\tanger\nhappy\tjoy\nheartbroken\tsadness\nsad\tsadness\nsad\tanger\n" \
          "alone\tsadness\n"


@pytest.fixture
def corpus(npz_dir, tmp_path):
    img = create_imgdb(npz_dir, tmp_path / "img", workers=1).path
    refs = tmp_path / "refs.json"
    refs.write_text(json.dumps({i: {"txt": [t], "label": lab} for i, (t, lab) in TEXTS.items()}))
    lex = tmp_path / "lex.tsv"
    lex.write_text(LEXICON)
    return {"img": img, "refs": refs, "lex": lex}


def _build(corpus, out, **kw):
    return create_txtdb(corpus["refs"], out, img_db=corpus["img"], min_faces=0, max_len=200,
                        lexicon=corpus["lex"], labels=LABELS, **kw)


def test_text_db_numbers_and_parquet(corpus, tmp_path):
    db = _build(corpus, tmp_path / "txt").out_dir
    s = stats(db, parquet=tmp_path / "rows.parquet")  # the dispatcher sees a text db
    assert s["kind"] == "text" and s["texts"] == 6 and s["split"] is None
    ln = s["length"]
    assert [(b["bin"], b["count"]) for b in ln["histogram"]] == [
        ("1-5", 1), ("6-10", 1), ("11-20", 1), ("21-30", 1), ("31-50", 1), ("51-100", 0),
        (">100", 1)]
    assert ln["total"] == 215 and ln["max"] == 120 and ln["min"] == 3 and ln["empty"] == 0
    assert ln["median"] == 18.0 and abs(ln["mean"] - 215 / 6) < 1e-9
    assert s["labels"]["names"] == LABELS and s["labels"]["unlabelled"] == 0
    assert [(c["label"], c["name"], c["count"]) for c in s["labels"]["counts"]] == [
        (0, "anger", 2), (1, "happy", 2), (2, "neutral", 0), (3, "sad", 2)]
    lex = s["lexicon"]
    assert lex["texts_with_emotion"] == 4 and lex["emotion_pieces"] == 7
    assert abs(lex["pieces_fraction"] - 7 / 215) < 1e-9
    assert [(c["type_id"], c["name"], c["words"], c["pieces"]) for c in lex["categories"]] == [
        (1, "anger", 1, 1), (2, "joy", 2, 2), (3, "sadness", 3, 4)]
    f = s["faces"]
    assert f["available"] and f["checksum_ok"] is True and f["missing"] == 0
    assert (f["total"], f["min"], f["max"], f["median"]) == (32, 0, 9, 5.5)

    table = pq.read_table(tmp_path / "rows.parquet")
    assert table.schema.field("text_len").type == pa.int32()
    assert table.schema.field("faces").type == pa.int32()
    assert table.schema.field("label").type == pa.int32()
    rows = table.to_pylist()
    assert rows == [{"id": i, "split": None, "text_len": LENGTHS[i], "faces": FACES[i],
                     "label": TEXTS[i][1]} for i in sorted(TEXTS)]


def test_plain_text_db_and_missing_feature_db(corpus, tmp_path):
    plain = create_txtdb(corpus["refs"], tmp_path / "plain", max_len=200).out_dir
    s = text_stats(plain)
    assert s["texts"] == 6 and s["faces"] is None and s["lexicon"] is None
    # labels are in the values even without --labels: counted by index, no names
    assert s["labels"]["names"] is None
    assert [(c["label"], c["count"]) for c in s["labels"]["counts"]] == [(0, 2), (1, 2), (3, 2)]

    db = _build(corpus, tmp_path / "txt").out_dir
    shutil.rmtree(corpus["img"])
    s = stats(db, parquet=tmp_path / "rows.parquet")
    assert s["faces"]["available"] is False
    assert pq.read_table(tmp_path / "rows.parquet").column("faces").null_count == 6


def test_split_folder(corpus, tmp_path):
    out = _build(corpus, tmp_path / "txt", splits=["val=2", "mon=1@train"]).out_dir
    s = stats(out, parquet=tmp_path / "rows.parquet")
    assert s["kind"] == "splits" and s["roles"] == {"train": "train", "val": "heldout",
                                                     "mon": "monitor"}
    per = s["splits"]
    assert (per["train"]["texts"], per["val"]["texts"], per["mon"]["texts"]) == (4, 2, 1)
    assert per["val"]["split"] == {"name": "val", "role": "heldout"}
    assert per["train"]["length"]["total"] + per["val"]["length"]["total"] == 215
    assert sum(c["count"] for sp in ("train", "val")
               for c in per[sp]["labels"]["counts"]) == 6
    rows = pq.read_table(tmp_path / "rows.parquet").to_pylist()
    assert len(rows) == 7 and {r["split"] for r in rows} == {"train", "val", "mon"}
    assert {r["id"] for r in rows if r["split"] != "mon"} == set(TEXTS)
    for r in rows:
        assert (r["text_len"], r["faces"], r["label"]) == (LENGTHS[r["id"]], FACES[r["id"]],
                                                           TEXTS[r["id"]][1])
    # one database of the folder on its own still knows its split
    assert text_stats(out / "val")["split"] == {"name": "val", "role": "heldout"}


def test_cli_stats_text_db(corpus, tmp_path):
    db = _build(corpus, tmp_path / "txt").out_dir
    run = CliRunner().invoke
    res = run(main, ["db", "stats", str(db), "--parquet", str(tmp_path / "r.parquet")])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert "  texts      6" in lines
    assert any(line.split()[:3] == [">100", "1", "16.7%"] for line in lines)
    assert any(line.split()[:4] == ["2", "neutral", "0", "0.0%"] for line in lines)
    assert any(line.split()[:2] == ["sadness", "3"] for line in lines)
    assert "4 of 6 texts with an emotion word" in res.output
    assert "faces      mean 5.33  median 5.5  min 0  max 9  total 32" in res.output
    assert (tmp_path / "r.parquet").exists()

    res = run(main, ["db", "stats", "--json", str(db)])
    assert res.exit_code == 0
    s = json.loads(res.output)
    assert s["texts"] == 6 and s["length"]["histogram"][-1]["count"] == 1


def test_cli_stats_split_folder(corpus, tmp_path):
    out = _build(corpus, tmp_path / "txt", splits=["val=2"]).out_dir
    res = CliRunner().invoke(main, ["db", "stats", str(out)])
    assert res.exit_code == 0, res.output
    assert "text splits" in res.output and "train (train), val (heldout)" in res.output
    assert res.output.count("texts      ") == 2
    res = CliRunner().invoke(main, ["db", "stats", "--json", str(out)])
    assert json.loads(res.output)["splits"]["val"]["texts"] == 2
