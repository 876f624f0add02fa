"""Tiny corpora built in code (fixed seeds) for every test."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from memodb.store.reader import close_all

SUBPROCESS_ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
from memodb.synth import make_h5_corpus, make_openface


@pytest.fixture(autouse=True)
def _close_envs():
    yield
    close_all()  # tests rewrite databases they have read


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op torch thread for a test module (and the processes it forks): tiny models
    run several times faster on a busy 2-core machine, and sums are the same bit for bit.
    Modules with torch models use it with ``pytestmark = pytest.mark.usefixtures(...)``."""
    import torch  # here, not at the top: memodb's tests never import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def pretrain_corpus(tmp_path_factory):
    """24 segments x 10 faces: a face database and text databases train (20) / val (4), for
    the pre-training tests."""
    from memodb.feature.imgdb import create_imgdb
    from memodb.synth import make_captions
    from memodb.text.txtdb import create_txtdb

    root = tmp_path_factory.mktemp("pretrain")
    ids = make_h5_corpus(root / "h5", movies=2, segments=12, faces=10, seed=3)
    img = create_imgdb(root / "h5", root / "img", workers=1).path
    make_captions(ids, root / "caps.json", seed=3)
    create_txtdb(root / "caps.json", root / "txt", img_db=img, splits=["val=4"], workers=1)
    close_all()
    return {"img": str(img), "train": str(root / "txt" / "train"),
            "val": str(root / "txt" / "val"), "root": root}


@pytest.fixture
def h5_root(tmp_path):
    """Two movies x 10 segments (every 9th without faces) with has_active_spk lists."""
    root = tmp_path / "h5"
    make_h5_corpus(root, movies=2, segments=10, faces=12, seed=1, meta_dir=tmp_path / "meta")
    return root


@pytest.fixture
def h5_ids(h5_root):
    return [f"No{m:04d}.Movie_{m}_{s}" for m in range(2) for s in range(1, 11)]


def write_npz(path, n=5, dim=342, seed=0, conf=None, **override):
    """One trans2npz-style npz of ``n`` frames; ``override`` replaces or adds arrays."""
    rng = np.random.default_rng(seed)
    arrays = {
        "features": rng.normal(size=(n, dim)).astype(np.float16),
        "soft_labels": rng.dirichlet(np.ones(8), size=n).astype(np.float16),
        "confidence": (rng.uniform(0.6, 1.0, size=n) if conf is None else conf).astype(np.float16),
        "frame_idxs": np.arange(n, dtype=np.int32),
    }
    arrays.update(override)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return arrays


@pytest.fixture
def npz_dir(tmp_path):
    """Six npz segments, one of them with no frame."""
    d = tmp_path / "npz"
    for i in range(6):
        write_npz(d / f"movieA_{i + 1}.npz", n=0 if i == 3 else 4 + i, seed=i)
    return d


@pytest.fixture
def openface_dir(tmp_path):
    make_openface(tmp_path / "openface", clips=3, frames=8, size=48, seed=2)
    return tmp_path / "openface"


@pytest.fixture
def feature_db(tmp_path, h5_root):
    """The feature database of ``h5_root`` (conf_th 0.5, max_bb 36, min_bb 0): its 20
    segments, the two 9th segments without a face."""
    from memodb.feature.imgdb import create_imgdb

    return create_imgdb(h5_root, tmp_path / "img", workers=1).path


def rewrite_csv(openface_dir, clip: str, confs) -> Path:
    """Rewrite an OpenFace clip's csv with one successful face per frame at ``confs``."""
    csv_path = openface_dir / f"{clip}.csv"
    rows = ["frame, face_id, timestamp, confidence, success"]
    rows += [f"{fr}, 0, {fr / 10:.1f}, {c}, 1" for fr, c in enumerate(confs, start=1)]
    csv_path.write_text("\n".join(rows) + "\n")
    return csv_path


def run_and_kill(code: str, args, ready, timeout=30.0) -> None:
    """Run ``python -c code args`` in its own process group; SIGKILL the group once
    ``ready()`` is true. Fails if the process ended before that."""
    proc = subprocess.Popen([sys.executable, "-c", code, *map(str, args)],
                            start_new_session=True, env=SUBPROCESS_ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            if proc.poll() is not None:
                pytest.fail(f"process ended (rc {proc.returncode}) before it could be killed: "
                            f"{proc.stderr.read().decode()[-2000:]}")
            assert time.monotonic() < deadline, "build never started"
            time.sleep(0.002)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL


@pytest.fixture(scope="module")
def emotion_dataset(tmp_path_factory):
    """A labelled dataset folder (memo db build): 2 sessions x 16 segments in 4 classes,
    fold 1's train / val / test texts (with emotion words) and the face database."""
    import json

    from memodb.dataset.build import build_dataset
    from memodb.synth import make_emotion_corpus, make_lexicon

    root = tmp_path_factory.mktemp("emotion")
    info = make_emotion_corpus(root / "corpus", folds=2, per_fold=16, faces=4, seed=0)
    make_lexicon(root / "lexicon.tsv")
    cfg = {"name": "emo", "lexicon": "lexicon.tsv", "features": {"face": {"source": "corpus/h5", "max_bb": 8}},
           "text": {"sources": {"train": "corpus/refs/{fold}/trn.json",
                                "val": "corpus/refs/{fold}/val.json",
                                "test": "corpus/refs/{fold}/tst.json"},
                    "folds": [1], "labels": info["labels"], "faces_from": "face",
                    "min_faces": 0}}
    (root / "emo.json").write_text(json.dumps(cfg))
    res = build_dataset(root / "emo.json", root / "ds", workers=1)
    assert res.report.ok
    close_all()
    face = next(s.path for s in res.steps if s.name == "face")
    return {"dir": root / "ds", "face": str(face), "txt": root / "ds" / "txt",
            "labels": info["labels"]}


CHROMIUM = "/usr/bin/chromium"  # Debian's chromium package


def chromium_screenshot(page: Path, png: Path, profile: Path) -> None:
    """Render the HTML file ``page`` in headless Chromium (no network, a fresh profile) and
    save a screenshot; skips the test where Chromium is not installed."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium package to render the "
                    "report in a browser")
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={profile}", "--window-size=1200,3000",
                    f"--screenshot={png}", page.resolve().as_uri()],
                   check=True, capture_output=True, timeout=120)


def pretrain_config(corpus, out, **changes) -> dict:
    """The tiny 6-update pre-training config the training tests share (mlm, mrfr, itm over the
    ``pretrain_corpus`` fixture), with top-level ``changes``."""
    cfg = {"model": "tiny",
           "data": {"corpora": [{"txt_db": corpus["train"], "img_db": corpus["img"],
                                 "val_txt_db": corpus["val"],
                                 "tasks": {"mlm": 2, "mrfr": 1, "itm": 1}}],
                    "max_text_len": 20, "max_faces": 10, "batch_size": 4},
           "optim": {"lr": 1e-3, "warmup_steps": 2},
           "steps": 6, "seed": 0, "log_every": 1, "val_every": 3, "save_every": 3,
           "output_dir": str(out)}
    return {**cfg, **changes}
