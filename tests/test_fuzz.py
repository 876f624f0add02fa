"""Fuzzing the readers and the check (issue 7, item 4).

Damage comes in three kinds: random bytes (and random, well-formed msgpack / lz4 of the wrong
shape) as LMDB values, copies of ``data.mdb`` cut at random lengths, and random JSON (or garbage,
or a cut-off copy, or one field replaced) in every side file of a dataset folder. For each, the
readers (``FeatureDB``, ``TextDB``, the value decoders) either return values of the documented
types or raise one of memo's named errors (:class:`memodb.errors.MemoError`), and
``memodb.check`` lists a problem (the report is not ok) instead of crashing.

Every hypothesis run is derandomized (fixed seeds) with few examples, and reads one tiny dataset
folder built once per module. Cut ``data.mdb`` copies are read in a child process, so that a
crash (SIGBUS on a page past the end of the file) fails the test instead of killing pytest.
"""
from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import lmdb
import lz4.frame
import msgpack
import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from conftest import SUBPROCESS_ENV
from memo.cli import main
from memodb.checks.run import check
from memodb.dataset.build import build_dataset
from memodb.errors import DatabaseError, MemoError
from memodb.store.codec import FastDecoder, decode_value
from memodb.store.reader import FeatureDB, close_all, open_env
from memodb.store.textcodec import decode_example
from memodb.store.textdb import TextDB
from memodb.synth import make_captions, make_h5_corpus, make_lexicon

FACE = "face/feat_th0.5_max36_min0"
NBB = "face/nbb_th0.5_max36_min0.json"
TRAIN = "txt/train"

FUZZ = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A dataset folder (``memo db build``): face db of 10 segments, text dbs train / val,
    splits.json, dataset.json, check.json. Tests may change a file but must put it back."""
    base = tmp_path_factory.mktemp("fuzz")
    c = base / "corpus"
    ids = make_h5_corpus(c / "h5", movies=1, segments=10, faces=6, seed=11)
    make_captions(ids, c / "captions.json", seed=11)
    make_lexicon(c / "lexicon.tsv")
    (c / "config.json").write_text(json.dumps({
        "name": "fuzz", "lexicon": "lexicon.tsv",
        "features": {"face": {"source": "h5", "conf_th": 0.5, "max_bb": 36}},
        "text": {"source": "captions.json", "faces_from": "face", "max_len": 20,
                 "splits": ["val=2"], "seed": 1}}))
    res = build_dataset(c / "config.json", base / "ds", workers=1)
    assert res.report.ok, res.report.to_json()
    close_all()
    return base / "ds"


@pytest.fixture(scope="module")
def scratch(dataset, tmp_path_factory):
    """A copy of the dataset folder whose values the value fuzzers overwrite (and restore)."""
    out = tmp_path_factory.mktemp("scratch") / "ds"
    shutil.copytree(dataset, out)
    return out


# --------------------------------------------------------------------------------------------
# strategies


JSON_SCALARS = (st.none() | st.booleans() | st.integers(-2**40, 2**40)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=10))
JSON_VALUES = st.recursive(
    JSON_SCALARS, lambda kids: st.lists(kids, max_size=4)
    | st.dictionaries(st.text(max_size=8), kids, max_size=4), max_leaves=10)

MSGPACK_SCALARS = JSON_SCALARS | st.binary(max_size=24)
ND_LIKE = st.fixed_dictionaries({
    b"nd": st.just(True) | MSGPACK_SCALARS,
    b"type": st.sampled_from(["<f2", "<f4", "<i4", "|u1", "|b1", "O", "<U3", "V4", "|S2", "<M8",
                              "float64", b"<f2", "", "xyz"]) | MSGPACK_SCALARS,
    b"kind": st.just(b"") | MSGPACK_SCALARS,
    b"shape": st.lists(st.integers(-2, 2**40) | MSGPACK_SCALARS, max_size=3) | MSGPACK_SCALARS,
    b"data": st.binary(max_size=64) | MSGPACK_SCALARS,
})
ND_VALID = st.tuples(st.sampled_from(["<f2", "<i4", "|u1"]), st.integers(0, 3)).map(
    lambda t: {b"nd": True, b"type": t[0], b"kind": b"", b"shape": [t[1], 2],
               b"data": bytes(2 * t[1] * int(t[0][-1]))})
MSGPACK_VALUES = st.recursive(
    MSGPACK_SCALARS | ND_LIKE, lambda kids: st.lists(kids, max_size=4)
    | st.dictionaries(st.text(max_size=8) | st.binary(max_size=8) | st.integers(-5, 5), kids,
                      max_size=4), max_leaves=8)


# maps of arrays, well-formed or nearly: names of several types, valid and damaged arrays
NAMED_ARRAYS = st.dictionaries(
    st.sampled_from(["features", "soft_labels", "confidence", "frame_idxs"])
    | st.binary(max_size=4), ND_VALID | ND_LIKE, min_size=1, max_size=4).map(
    lambda v: msgpack.packb(v, use_bin_type=True))


def feature_value_strategy(original: bytes):
    """Bytes that are not (or not quite) the original feature value."""
    packed = MSGPACK_VALUES.map(lambda v: msgpack.packb(v, use_bin_type=True))
    return st.binary(max_size=300) | packed | NAMED_ARRAYS | mutated(original)


def text_value_strategy(original: bytes):
    """Bytes that are not (or not quite) the original text example."""
    compressed = MSGPACK_VALUES.map(lambda v: lz4.frame.compress(msgpack.packb(
        v, use_bin_type=True)))
    example = msgpack.unpackb(lz4.frame.decompress(original), raw=False)
    one_field = st.tuples(st.sampled_from(sorted(example)), MSGPACK_VALUES).map(
        lambda kv: lz4.frame.compress(msgpack.packb({**example, kv[0]: kv[1]},
                                                    use_bin_type=True)))
    return st.binary(max_size=300) | compressed | one_field | mutated(original)


def mutated(original: bytes):
    """The original bytes cut, extended, or with a few bytes overwritten."""
    def apply(args):
        kind, pos, data = args
        pos %= len(original) + 1
        if kind == "cut":
            return original[:pos]
        if kind == "extend":
            return original + data
        return original[:pos] + data + original[pos + len(data):]
    return st.tuples(st.sampled_from(["cut", "extend", "overwrite"]),
                     st.integers(0, 1 << 20), st.binary(min_size=1, max_size=8)).map(apply)


# --------------------------------------------------------------------------------------------
# helpers


def attempt(func, missing_ok: bool = False):
    """``func()``, or None when it raised one of memo's named errors (anything else fails);
    ``missing_ok``: a KeyError too (a mapping's answer for a key it does not hold)."""
    try:
        return func()
    except MemoError:
        return None
    except KeyError:
        if not missing_ok:
            raise
        return None


def assert_arrays(arrays) -> None:
    assert isinstance(arrays, dict)
    assert all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in arrays.items()), \
        {k: type(v) for k, v in arrays.items()}


def read_everything(ds: Path) -> None:
    """Every memodb reader over the dataset folder. Each accessor returns what its docstring
    promises or raises a MemoError; any other exception fails the test."""
    close_all()
    face = attempt(lambda: FeatureDB(ds / FACE))
    if face is not None:
        nbb = attempt(face.nbb)
        if nbb is not None:
            assert isinstance(nbb, dict)
            assert all(isinstance(k, str) and type(v) is int for k, v in nbb.items())
        manifest = attempt(lambda: face.manifest)
        assert manifest is None or isinstance(manifest, dict)
        keys = attempt(face.keys) or []
        assert isinstance(keys, list)
        for key in keys:
            arrays = attempt(lambda: face[key], missing_ok=True)  # __keys__ may be stale
            if arrays is not None:
                assert_arrays(arrays)
    txt = attempt(lambda: TextDB(ds / TRAIN))
    if txt is not None:
        for name, kind, value_type in (("meta", dict, None), ("id2len", dict, int),
                                       ("txt2img", dict, str)):
            got = attempt(lambda: getattr(txt, name))
            if got is not None:
                assert isinstance(got, kind), (name, type(got))
                if value_type is not None:
                    assert all(isinstance(k, str) and type(v) is value_type
                               for k, v in got.items()), name
        manifest = attempt(lambda: txt.manifest)
        assert manifest is None or isinstance(manifest, dict)
        ids = attempt(txt.ids) or []
        assert all(isinstance(i, str) for i in ids)
        for text_id in ids:
            ex = attempt(lambda: txt[text_id], missing_ok=True)  # id2len may be stale
            assert ex is None or isinstance(ex, dict)
    close_all()


def codes(report) -> set:
    return {p.code for d in report.databases for p in d.problems}


def put_value(db_path: Path, key: bytes, value: bytes) -> None:
    close_all()
    env = lmdb.open(str(db_path), map_size=1 << 26)
    try:
        with env.begin(write=True) as txn:
            txn.put(key, value)
    finally:
        env.close()


def stored_value(db_path: Path, key: bytes) -> bytes:
    with open_env(db_path).begin() as txn:
        return bytes(txn.get(key))


# --------------------------------------------------------------------------------------------
# 1. the value decoders


@FUZZ
@given(st.binary(max_size=400) | NAMED_ARRAYS
       | MSGPACK_VALUES.map(lambda v: msgpack.packb(v, use_bin_type=True)))
@example(msgpack.packb({b"features": {b"nd": True, b"type": "<f2", b"kind": b"", b"shape": [0],
                                      b"data": b""}}, use_bin_type=True))  # a bytes name
def test_feature_decoder_on_random_bytes(buf):
    for decode in (decode_value, FastDecoder()):
        try:
            arrays = decode(buf)
        except DatabaseError as exc:
            assert "value does not decode" in str(exc)
        else:
            assert_arrays(arrays)


@FUZZ
@given(st.data())
def test_fast_decoder_on_damaged_values_of_a_learned_length(dataset, data):
    """FastDecoder takes a value of a length it has seen by its remembered layout: a damaged
    value of that length must come out as arrays (its data bytes changed) or a named error."""
    key = FeatureDB(dataset / FACE).keys()[1]
    original = stored_value(dataset / FACE, key.encode())
    decoder = FastDecoder()
    want = decoder(original)
    pos = data.draw(st.integers(0, len(original) - 1))
    patch = data.draw(st.binary(min_size=1, max_size=6))
    damaged = (original[:pos] + patch + original[pos + len(patch):])[:len(original)]
    try:
        got = decoder(damaged)
    except DatabaseError:
        return
    assert_arrays(got)
    if damaged == original:
        assert all(np.array_equal(got[k], want[k]) for k in want)


@FUZZ
@given(st.binary(max_size=400)
       | MSGPACK_VALUES.map(lambda v: lz4.frame.compress(msgpack.packb(v, use_bin_type=True))))
def test_text_decoder_on_random_bytes(buf):
    try:
        decode_example(buf)  # any msgpack object: the check reports a non-map as bad_field
    except DatabaseError as exc:
        assert "not an lz4-compressed msgpack text example" in str(exc)


# --------------------------------------------------------------------------------------------
# 2. random values stored in the databases


@FUZZ
@given(st.data())
def test_random_feature_value_is_a_named_error_and_a_check_problem(scratch, data):
    db = scratch / FACE
    keys = FeatureDB(db).keys()
    key = data.draw(st.sampled_from(keys))
    original = stored_value(db, key.encode())
    value = data.draw(feature_value_strategy(original))
    assume(value != original)
    put_value(db, key.encode(), value)
    try:
        close_all()
        reader = FeatureDB(db)
        try:
            arrays = reader[key]
        except DatabaseError as exc:
            assert str(db) in str(exc) and key in str(exc)
        else:
            assert_arrays(arrays)
        for other in keys:  # the other segments still read
            if other != key:
                assert_arrays(reader[other])
        close_all()
        report = check([db], workers=1)
        assert not report.ok and "checksum_mismatch" in codes(report), report.to_json()
        read_everything(scratch)
    finally:
        put_value(db, key.encode(), original)
        close_all()


@FUZZ
@given(st.data())
def test_random_text_value_is_a_named_error_and_a_check_problem(scratch, data):
    db = scratch / TRAIN
    ids = TextDB(db).ids()
    text_id = data.draw(st.sampled_from(ids))
    original = stored_value(db, text_id.encode())
    value = data.draw(text_value_strategy(original))
    assume(value != original)
    put_value(db, text_id.encode(), value)
    try:
        close_all()
        reader = TextDB(db)
        try:
            ex = reader[text_id]
        except DatabaseError as exc:
            assert str(db) in str(exc) and text_id in str(exc)
        else:
            assert isinstance(ex, dict)
        for other in ids:
            if other != text_id:
                assert isinstance(reader[other], dict)
        close_all()
        report = check([db], workers=1)
        assert not report.ok and "checksum_mismatch" in codes(report), report.to_json()
    finally:
        put_value(db, text_id.encode(), original)
        close_all()


# --------------------------------------------------------------------------------------------
# 3. data.mdb copies cut at random lengths (in a child: a crash must not kill pytest)


CUT_CODE = r"""
import json, shutil, sys
from pathlib import Path
from memodb.checks.run import check
from memodb.errors import DatabaseError
from memodb.store.reader import FeatureDB, close_all, open_env
from memodb.store.textdb import TextDB

src, work, kind = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
for n in map(int, sys.argv[4:]):
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(src.parent, work, ignore=shutil.ignore_patterns("lock.mdb"))
    db = work / src.name
    with open(db / "data.mdb", "r+b") as f:
        f.truncate(n)
    print(json.dumps({"cut": n}), flush=True)  # the last line names the case if we crash
    close_all()
    try:
        reader = FeatureDB(db) if kind == "feature" else TextDB(db)
        for k in (reader.keys() if kind == "feature" else reader.ids()):
            reader[k]
        error = None
    except DatabaseError as exc:
        error = str(exc)
    close_all()
    report = check([db], workers=1)
    print(json.dumps({"cut": n, "error": error, "ok": report.ok,
                      "codes": sorted({p.code for d in report.databases for p in d.problems})}),
          flush=True)
"""


@pytest.mark.parametrize("which, kind", [(FACE, "feature"), (TRAIN, "text")])
def test_cut_data_mdb_copies(dataset, tmp_path, which, kind):
    src = dataset / which
    size = (src / "data.mdb").stat().st_size
    rng = random.Random(7)
    cuts = sorted({0, 1, 4095, 4096, 4097, 8191, 8192, 8193, size - 4096, size - 1,
                   *(rng.randrange(size) for _ in range(10))})
    p = subprocess.run([sys.executable, "-c", CUT_CODE, src, tmp_path / "work" / src.parent.name,
                        kind, *map(str, cuts)], capture_output=True, text=True,
                       env=SUBPROCESS_ENV, timeout=120)
    lines = [json.loads(line) for line in p.stdout.splitlines()]
    assert p.returncode == 0, f"crashed (rc {p.returncode}) at {lines[-1:]}: {p.stderr[-2000:]}"
    results = [r for r in lines if "ok" in r]
    assert [r["cut"] for r in results] == cuts
    for r in results:
        assert r["error"] is not None and src.name in r["error"], r
        assert not r["ok"] and "unreadable" in r["codes"], r


# --------------------------------------------------------------------------------------------
# 4. random JSON in the side files


SIDE_FILES = [NBB, f"{FACE}/manifest.json", f"{TRAIN}/id2len.json", f"{TRAIN}/txt2img.json",
              f"{TRAIN}/img2txts.json", f"{TRAIN}/meta.json", f"{TRAIN}/manifest.json",
              "txt/splits.json", "dataset.json"]


def side_content(original: str):
    """(text, wholesale): random JSON, garbage or a cut-off copy (wholesale: the damage must
    be reported), or the original with one top-level value replaced (must not crash)."""
    body = original.rstrip()
    whole = (JSON_VALUES.map(json.dumps)
             | st.binary(max_size=80).map(lambda b: b.decode("latin-1"))
             | st.integers(0, len(body) - 1).map(lambda n: body[:n]))
    doc = json.loads(original)
    field = st.tuples(st.sampled_from(sorted(doc)), JSON_VALUES).map(
        lambda kv: json.dumps({**doc, kv[0]: kv[1]}))
    return st.tuples(whole, st.just(True)) | st.tuples(field, st.just(False))


@pytest.mark.parametrize("name", SIDE_FILES)
@FUZZ
@given(data=st.data())
def test_random_json_in_a_side_file(dataset, name, data):
    path = dataset / name
    original = path.read_text(encoding="utf-8")
    text, wholesale = data.draw(side_content(original))
    assume(text.strip() and json.loads(original) != _loads(text))
    path.write_text(text, encoding="utf-8")
    try:
        read_everything(dataset)
        report = check([dataset], workers=1)
        if wholesale:
            assert not report.ok, f"{name} = {text!r} not reported"
    finally:
        path.write_text(original, encoding="utf-8")
        close_all()


def _loads(text):
    try:
        return json.loads(text)
    except ValueError:
        return ValueError


def test_check_cli_reports_a_damaged_manifest_without_a_traceback(dataset):
    path = dataset / FACE / "manifest.json"
    original = path.read_text()
    path.write_text(json.dumps({**json.loads(original), "counts": [1, 2], "arrays": "none"}))
    try:
        r = CliRunner().invoke(main, ["db", "check", "--json", "--workers", "1", str(dataset)])
        assert r.exit_code == 1, r.output
        assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
        doc = json.loads(r.stdout)
        face = next(d for d in doc["databases"] if d["path"].endswith(FACE))
        assert not face["ok"] and face["problems"], face
    finally:
        path.write_text(original)
        close_all()


# --------------------------------------------------------------------------------------------
# 5. the cases the fuzzers found, kept as plain regression tests


def _set(doc, path, value):
    """A copy of ``doc`` with ``doc[path[0]][path[1]]... = value``."""
    doc = json.loads(json.dumps(doc))
    inner = doc
    for k in path[:-1]:
        inner = inner[k]
    inner[path[-1]] = value
    return doc


@pytest.mark.parametrize("name, change, reader_error, code", [
    (NBB, lambda d: [], "not an nbb json", "nbb_unreadable"),
    (NBB, lambda d: _set(d, [sorted(d)[0]], None), "not an nbb json", "nbb_unreadable"),
    (f"{TRAIN}/id2len.json", lambda d: [], "not a JSON object", "side_unreadable"),
    (f"{TRAIN}/id2len.json", lambda d: _set(d, [sorted(d)[0]], "3"),
     "not a JSON object of int values", "id2len_mismatch"),
    (f"{TRAIN}/txt2img.json", lambda d: _set(d, [sorted(d)[0]], 7),
     "not a JSON object of str values", "txt2img_mismatch"),
    (f"{TRAIN}/meta.json", lambda d: [], "not a JSON object", "side_unreadable"),
    (f"{TRAIN}/img2txts.json", lambda d: _set(d, [sorted(d)[0]], [[]]), None,
     "img2txts_mismatch"),
    (f"{FACE}/manifest.json", lambda d: _set(d, ["counts"], [1, 2]), None, "manifest_invalid"),
    (f"{FACE}/manifest.json", lambda d: _set(d, ["arrays"], None), None, "manifest_arrays"),
    (f"{FACE}/manifest.json", lambda d: _set(d, ["arrays", "features"], None), None,
     "manifest_invalid"),
    (f"{TRAIN}/manifest.json", lambda d: _set(d, ["options"], True), None, "manifest_invalid"),
    (f"{TRAIN}/manifest.json", lambda d: _set(d, ["counts"], True), None, "manifest_invalid"),
    (f"{TRAIN}/manifest.json", lambda d: _set(d, ["vocab", "file"], 3), None,
     "manifest_invalid"),
    (f"{TRAIN}/manifest.json", lambda d: _set(d, ["labels"], {"set": [[0]]}), None,
     "manifest_invalid"),
    (f"{TRAIN}/manifest.json", lambda d: _set(d, ["img_db", "min_faces"], "1"), None,
     "manifest_invalid"),
], ids=["nbb-list", "nbb-null-count", "id2len-list", "id2len-str-length", "txt2img-int",
        "meta-list", "img2txts-nested-list", "manifest-counts-list", "manifest-arrays-null",
        "manifest-array-null", "text-options-bool", "text-counts-bool", "vocab-file-int",
        "labels-set-of-lists", "min-faces-str"])
def test_damaged_side_file_is_a_named_error_and_a_check_problem(dataset, name, change,
                                                                reader_error, code):
    path = dataset / name
    original = path.read_text(encoding="utf-8")
    path.write_text(json.dumps(change(json.loads(original))), encoding="utf-8")
    try:
        if reader_error is not None:
            close_all()
            reader = FeatureDB(dataset / FACE) if name == NBB else TextDB(dataset / TRAIN)
            read = {NBB: "nbb", "id2len.json": "id2len", "txt2img.json": "txt2img",
                    "meta.json": "meta"}[name if name == NBB else Path(name).name]
            with pytest.raises(DatabaseError) as ei:
                attr = getattr(reader, read)
                attr() if callable(attr) else attr
            assert str(path) in str(ei.value) and reader_error in str(ei.value)
            assert "rebuild" in str(ei.value)
        report = check([dataset], workers=1)
        assert code in codes(report), report.to_json()
    finally:
        path.write_text(original, encoding="utf-8")
        close_all()


def test_text_value_that_is_not_a_map(scratch):
    db = scratch / TRAIN
    text_id = TextDB(db).ids()[0]
    original = stored_value(db, text_id.encode())
    put_value(db, text_id.encode(), lz4.frame.compress(msgpack.packb([1, 2])))
    try:
        close_all()
        with pytest.raises(DatabaseError) as ei:
            TextDB(db)[text_id]
        assert str(db) in str(ei.value) and text_id in str(ei.value) and "list" in str(ei.value)
        close_all()
        report = check([db], workers=1)
        assert "bad_field" in codes(report)
    finally:
        put_value(db, text_id.encode(), original)
        close_all()
