"""memo extract-speech over a generated wav corpus (tones, noise, espeak-ng speech when
installed) in every sample width, rate and channel count: each extractor's database (openSMILE
compare / egemaps, a tiny random wav2vec2), independent of workers and batching, the
conversions recorded, bad input named with nothing published, memo db check, the trainer's
speech_db, memo db build with a wav-source entry (sharded and merged), a prep output and the
CLI."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("opensmile")
soundfile = pytest.importorskip("soundfile")

from conftest import SUBPROCESS_ENV  # noqa: E402
from memo.cli import main  # noqa: E402
from memodb.checks.run import check  # noqa: E402
from memodb.dataset.build import build_dataset  # noqa: E402
from memodb.dataset.merge import merge_shards  # noqa: E402
from memodb.errors import BadInputError, BadInputsError  # noqa: E402
from memodb.feature.speech import extract_speech, pool_frames, read_audio  # noqa: E402
from memodb.store.reader import FeatureDB  # noqa: E402

DB = "feat_th1.0_max64_min0"
SR = 16000


def tone(seconds, hz, rate=SR, amp=0.3):
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def write_corpus(root, speech=True) -> dict:
    """Wavs at several depths: {segment id: (rate, channels, soundfile subtype)}."""
    rng = np.random.default_rng(0)
    made = {}

    def put(rel, data, rate, subtype):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(str(path), data, rate, subtype=subtype)
        made[path.stem] = (rate, 1 if data.ndim == 1 else data.shape[1], subtype)

    put("m1/m1_1.wav", tone(1.0, 220), SR, "PCM_16")
    put("m1/m1_2.wav", tone(0.73, 440), SR, "PCM_16")
    put("m1/deep/m1_3.wav", np.stack([tone(1.2, 300, 22050), tone(1.2, 500, 22050)], 1),
        22050, "PCM_24")
    put("m2/m2_1.wav", rng.uniform(-0.5, 0.5, 8000).astype(np.float32), 8000, "PCM_U8")
    put("m2/m2_2.wav", tone(0.9, 350, 44100) + rng.normal(0, 0.05, 39690).astype(np.float32),
        44100, "FLOAT")
    put("m2/m2_3.wav", rng.normal(0, 0.2, (int(0.6 * 48000), 2)).astype(np.float32), 48000,
        "PCM_16")
    if speech and shutil.which("espeak-ng"):
        path = root / "m3" / "m3_1.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["espeak-ng", "-w", str(path), "what a wonderful day"], check=True,
                       capture_output=True)
        info = soundfile.info(str(path))
        made["m3_1"] = (info.samplerate, info.channels, info.subtype)
    return made


@pytest.fixture(scope="module")
def wavs(tmp_path_factory):
    root = tmp_path_factory.mktemp("wavs")
    return root, write_corpus(root)


@pytest.fixture(scope="module")
def built(wavs, tmp_path_factory):
    """compare at 10 frames/s with 1 and 2 workers, egemaps at its own rate."""
    root, _ = wavs
    out = tmp_path_factory.mktemp("built")
    return {"compare": extract_speech(root, out / "c1", features="compare", rate=10,
                                      workers=1),
            "compare2": extract_speech(root, out / "c2", features="compare", rate=10,
                                       workers=2),
            "egemaps": extract_speech(root, out / "e", features="egemaps", workers=1),
            "out": out}


def test_opensmile_databases(wavs, built):
    _, made = wavs
    c, e = built["compare"], built["egemaps"]
    assert c.path.name == DB and (c.path.parent / f"nbb_{DB[5:]}.json").exists()
    assert c.counts["segments"] == len(made) and c.counts["empty"] == 0
    ext = c.manifest["options"]["extractor"]
    assert (ext["feature_set"], ext["dim"], ext["rate"], ext["native_rate"], ext["pooling"]) == \
        ("ComParE_2016", 65, 10.0, 100, "mean")
    assert e.manifest["options"]["extractor"]["feature_set"] == "eGeMAPSv02"
    assert e.manifest["options"]["modality"] == "speech"
    db_c, db_e = FeatureDB(c.path), FeatureDB(e.path)
    for key in db_c.keys():
        fc, fe = db_c[key], db_e[key]
        assert fc["features"].dtype == np.float16 and fc["features"].shape[1] == 65
        assert fe["features"].shape[1] == 25
        assert set(fc) == {"features", "frame_idxs"}
        # 10 frames/s: 0.5 to 3 s of audio give 5 to 30 pooled frames
        assert 5 <= len(fc["features"]) <= 30
        assert np.array_equal(fc["frame_idxs"], np.arange(len(fc["features"])))
    # egemaps keeps the first max_bb frames of a 10 ms sequence; a 1 s tone has ~98
    assert e.counts["frames_kept"] < e.counts["frames_seen"]
    for r in (c, e):
        assert check([r.path]).ok


def test_features_do_not_depend_on_workers(built):
    a, b = built["compare"].path, built["compare2"].path
    assert (a / "data.mdb").read_bytes() == (b / "data.mdb").read_bytes()
    assert built["compare"].manifest["checksum"] == built["compare2"].manifest["checksum"]


def test_conversions_recorded(wavs, built):
    _, made = wavs
    sums = built["compare"].manifest["sums"]
    for rate, channels, subtype in made.values():
        assert sums[f"rate_{rate}"] >= 1 and sums[f"channels_{channels}"] >= 1
        assert sums[f"subtype_{subtype}"] >= 1
    assert sums["resampled"] == sum(r != SR for r, _, _ in made.values())
    assert sums["mixed_down"] == sum(ch > 1 for _, ch, _ in made.values())
    for width in ("PCM_U8", "PCM_16", "PCM_24", "FLOAT"):
        assert f"subtype_{width}" in sums


def test_read_audio_converts(tmp_path):
    """Stereo is the mean of its channels, rates become 16 kHz, widths read alike."""
    left, right = tone(0.5, 440, 32000), tone(0.5, 660, 32000)
    soundfile.write(tmp_path / "s.wav", np.stack([left, right], 1), 32000, subtype="FLOAT")
    wave, tally = read_audio(tmp_path / "s.wav")
    assert len(wave) == 8000 and tally["mixed_down"] == 1 and tally["resampled"] == 1
    ref = tone(0.5, 440) / 2 + tone(0.5, 660) / 2
    assert np.abs(wave[200:-200] - ref[200:-200]).max() < 1e-3
    for subtype, tol in (("PCM_U8", 2e-2), ("PCM_16", 1e-4), ("PCM_24", 1e-6)):
        soundfile.write(tmp_path / f"{subtype}.wav", tone(0.2, 300), SR, subtype=subtype)
        wave, tally = read_audio(tmp_path / f"{subtype}.wav")
        assert tally["resampled"] == 0 and np.abs(wave - tone(0.2, 300)).max() < tol


def test_pool_frames():
    x = np.arange(25, dtype=np.float32)[:, None]
    assert pool_frames(x, 100, 10)[:, 0].tolist() == [4.5, 14.5, 22.0]
    # 50 -> 20 frames/s: windows of 2.5 frames, floor bounds 0, 2, 5, 7, 10
    assert pool_frames(x[:10], 50, 20)[:, 0].tolist() == [0.5, 3.0, 5.5, 8.0]
    assert pool_frames(x, 100, None) is x


@pytest.mark.parametrize("fault", ["unreadable", "empty", "nan", "no_wavs", "duplicate"])
def test_bad_input_named_nothing_published(tmp_path, fault):
    src = tmp_path / "src"
    write_corpus(src, speech=False)
    if fault == "unreadable":
        (src / "m1" / "m1_2.wav").write_bytes(b"RIFF\x00\x00not really a wav at all")
        expect = ["m1_2.wav", "unreadable audio", "m1_2.npz"]
    elif fault == "empty":
        soundfile.write(str(src / "m2" / "m2_1.wav"), np.zeros(0, np.float32), SR)
        expect = ["m2_1.wav", "holds no samples", "m2_1.npz"]
    elif fault == "nan":
        x = tone(0.5, 300)
        x[100] = np.nan
        soundfile.write(str(src / "m1" / "deep" / "m1_3.wav"), x, SR, subtype="FLOAT")
        expect = ["m1_3.wav", "NaN or infinite samples", "m1_3.npz"]
    elif fault == "no_wavs":
        shutil.rmtree(src)
        (src / "sub").mkdir(parents=True)
        (src / "sub" / "notes.txt").write_text("x")
        expect = [str(src), "holds no .wav files"]
    else:
        (src / "m2" / "m1_1.wav").write_bytes((src / "m1" / "m1_1.wav").read_bytes())
        expect = ["duplicate id", "m1_1.npz", "m1/m1_1.wav", "m2/m1_1.wav"]
    with pytest.raises((BadInputError, BadInputsError)) as exc:
        extract_speech(src, tmp_path / "out", features="egemaps", workers=1)
    for text in expect:
        assert text in str(exc.value)
    assert not (tmp_path / "out" / DB).exists()
    assert not list((tmp_path / "out").glob("nbb_*")) if (tmp_path / "out").exists() else True


def test_prep_output_reads_audio_folder(tmp_path):
    prep = tmp_path / "prep"
    write_corpus(prep / "audio", speech=False)
    (prep / "prep.json").write_text("{}")
    soundfile.write(str(prep / "other.wav"), tone(0.3, 200), SR)  # outside audio/: not read
    r = extract_speech(prep, tmp_path / "out", features="egemaps", workers=1)
    assert r.counts["segments"] == 6 and "other.npz" not in FeatureDB(r.path).keys()
    assert r.manifest["source"]["path"] == str(prep / "audio")


def test_options_refused(wavs, tmp_path):
    root, _ = wavs
    with pytest.raises(BadInputError, match="--rate must be a number above 0 and at most 100"):
        extract_speech(root, tmp_path / "o", features="compare", rate=200)
    with pytest.raises(BadInputError, match="unknown openSMILE features"):
        extract_speech(root, tmp_path / "o", features="mfcc")
    with pytest.raises(BadInputError, match="need torch"):
        extract_speech(root, tmp_path / "o", features="wav2vec2")
    assert not (tmp_path / "o").exists()


def test_missing_extra_named(wavs, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "opensmile", None)  # as if not installed
    with pytest.raises(BadInputError, match=r"needs the package opensmile.*memo-emotion\[speech\]"):
        extract_speech(wavs[0], tmp_path / "o", features="compare")
    assert not (tmp_path / "o").exists()


def test_opensmile_path_imports_no_torch(wavs, tmp_path):
    """The CLI's openSMILE path (memodb) runs without torch."""
    code = ("import sys; from memo.cli import main; "
            f"sys.argv = ['memo', 'extract-speech', {str(wavs[0])!r}, {str(tmp_path / 'o')!r}, "
            "'--features', 'egemaps', '--workers', '1']\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, env=SUBPROCESS_ENV)
    assert (tmp_path / "o" / DB / "manifest.json").exists()


# ------------------------------------------------------------------------------ wav2vec2


@pytest.fixture(scope="module")
def w2v_models(tmp_path_factory):
    """Tiny random models saved with save_pretrained: wav2vec2 with a LayerNorm feature
    encoder (padding-free batches) and with GroupNorm (batches of equal lengths), HuBERT and
    WavLM."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("w2v")
    out = {}
    for name, norm, kind in (("layer", "layer", "Wav2Vec2"), ("group", "group", "Wav2Vec2"),
                             ("hubert", "layer", "Hubert"), ("wavlm", "layer", "WavLM")):
        torch.manual_seed(0)
        cfg = getattr(transformers, f"{kind}Config")(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48,
            conv_dim=(16,) * 7, feat_extract_norm=norm, num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=2, vocab_size=8)
        getattr(transformers, f"{kind}Model")(cfg).save_pretrained(root / name)
        out[name] = root / name
    return out


@pytest.mark.parametrize("norm", ["layer", "group", "hubert", "wavlm"])
def test_wav2vec2_database(wavs, w2v_models, tmp_path, norm):
    from memotrain.recipes.extract_speech import extract_speech_features

    root, made = wavs
    runs = [extract_speech_features(root, tmp_path / f"o{b}", features="wav2vec2",
                                    model=w2v_models[norm], rate=10, batch_seconds=b,
                                    workers=w, device="cpu")
            for b, w in ((0.5, 1), (100.0, 2))]
    a, b = (FeatureDB(r.path) for r in runs)
    assert runs[0].counts["segments"] == len(made)
    ext = runs[0].manifest["options"]["extractor"]
    assert (ext["native_rate"], ext["rate"], ext["layer"], ext["dim"]) == (50.0, 10.0, 2, 32)
    assert set(ext["model"]["files"]) == {"config.json", "model.safetensors"}
    for key in a.keys():
        fa, fb = a[key]["features"], b[key]["features"]
        assert fa.dtype == np.float16 and fa.shape[1] == 32 and fa.shape == fb.shape
        # batching changes float rounding only (then float16)
        np.testing.assert_allclose(fa.astype(np.float32), fb.astype(np.float32), atol=2e-3)
    assert check([runs[0].path]).ok


def test_wav2vec2_layers_and_errors(wavs, w2v_models, tmp_path):
    from memotrain.recipes.extract_speech import extract_speech_features

    root, _ = wavs
    r0 = extract_speech_features(root, tmp_path / "l0", features="wav2vec2",
                                 model=w2v_models["layer"], layer=0, device="cpu", workers=1)
    assert r0.manifest["options"]["extractor"]["layer"] == 0
    assert r0.manifest["options"]["extractor"]["rate"] == 50.0
    with pytest.raises(BadInputError, match="--layer 5 is out of range: the model has 2"):
        extract_speech_features(root, tmp_path / "x", features="wav2vec2",
                                model=w2v_models["layer"], layer=5)
    with pytest.raises(BadInputError, match="--model"):
        extract_speech_features(root, tmp_path / "x", features="wav2vec2")
    with pytest.raises(BadInputError, match="no readable config.json"):
        extract_speech_features(root, tmp_path / "x", features="wav2vec2", model=tmp_path)
    with pytest.raises(BadInputError, match="are for wav2vec2"):
        extract_speech_features(root, tmp_path / "x", features="compare",
                                model=w2v_models["layer"])
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------- trainer, build


def test_speech_db_trains(wavs, built, tmp_path):
    """The compare database as the trainer's speech_db: loads, and a few pre-training steps
    with speech run."""
    pytest.importorskip("torch")
    from memodb.synth import make_captions
    from memodb.text.txtdb import create_txtdb
    from memotrain.data import MemoDataset
    from memotrain.recipes.pretrain import pretrain

    _, made = wavs
    speech = built["compare"].path
    make_captions(sorted(made), tmp_path / "caps.json", seed=1)
    create_txtdb(tmp_path / "caps.json", tmp_path / "txt", splits=["val=2"], workers=1)
    ds = MemoDataset(tmp_path / "txt" / "train", speech_db=speech, max_text_len=20)
    assert ds.speech_dim == 65 and ds.counts["kept"] == len(made) - 2
    assert (ds.speech_lens > 0).all()
    cfg = {"model": {"preset": "tiny", "speech_dim": 65, "face_dim": 0},
           "data": {"corpora": [{"txt_db": str(tmp_path / "txt" / "train"),
                                 "speech_db": str(speech),
                                 "tasks": {"mlm": 1, "msrfr": 1}}],
                    "max_text_len": 20, "max_speech": 16, "batch_size": 2},
           "optim": {"lr": 1e-3, "warmup_steps": 1}, "steps": 4, "seed": 0, "log_every": 1,
           "val_every": 0, "save_every": 0, "output_dir": str(tmp_path / "run")}
    losses = pretrain(cfg)["losses"]
    assert {task for _, task, _ in losses} == {"mlm", "msrfr"}
    assert all(np.isfinite(loss) for _, _, loss in losses)


SPEECH_CONFIG = {"name": "sp", "features": {
    "speech": {"type": "speech", "source": "wavs", "extractor": "egemaps", "rate": 10,
               "max_bb": 32}}}


def test_dataset_build_speech_entry_sharded(wavs, tmp_path):
    root, made = wavs
    shutil.copytree(root, tmp_path / "wavs")
    cfg = tmp_path / "speech.json"
    cfg.write_text(json.dumps(SPEECH_CONFIG))
    whole = build_dataset(cfg, tmp_path / "whole", workers=1)
    assert whole.report.ok and whole.steps[0].stage == "speech"
    db = tmp_path / "whole" / "speech" / "feat_th1.0_max32_min0"
    assert FeatureDB(db).manifest["counts"]["segments"] == len(made)
    shards = [tmp_path / f"s{i}" for i in range(2)]
    for i, d in enumerate(shards):
        build_dataset(cfg, d, workers=1, shard=f"{i}/2")
    merged = merge_shards(shards, tmp_path / "merged", workers=1)
    assert merged.report.ok
    for name in ("data.mdb", "manifest.json", "nbb_th1.0_max32_min0.json"):
        assert (db / name).read_bytes() == \
            (tmp_path / "merged" / "speech" / db.name / name).read_bytes()
    bad = json.loads(json.dumps(SPEECH_CONFIG))
    bad["features"]["speech"]["rate"] = 500
    cfg.write_text(json.dumps(bad))
    with pytest.raises(BadInputError, match="features.speech.rate must be a number above 0"):
        build_dataset(cfg, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_cli(wavs, tmp_path):
    root, made = wavs
    r = CliRunner().invoke(main, ["extract-speech", str(root), str(tmp_path / "o"),
                                  "--features", "egemaps", "--rate", "10", "--workers", "1"])
    assert r.exit_code == 0, r.output
    assert f"{len(made)} segments" in r.output and "resampled to 16 kHz" in r.output
    again = CliRunner().invoke(main, ["extract-speech", str(root), str(tmp_path / "o"),
                                      "--features", "egemaps", "--rate", "10"])
    assert again.exit_code == 0 and "up to date" in again.output
    bad = CliRunner().invoke(main, ["extract-speech", str(root), str(tmp_path / "b"),
                                    "--features", "wav2vec2"])
    assert bad.exit_code == 1 and "Error: wav2vec2 features need a local model folder" in \
        bad.output
    wrong = CliRunner().invoke(main, ["extract-speech", str(root), str(tmp_path / "b"),
                                      "--features", "compare", "--layer", "2"])
    assert wrong.exit_code == 2 and "--model and --layer are for --features wav2vec2" in \
        wrong.output
    assert not (tmp_path / "b").exists()
    assert "--features" in CliRunner().invoke(main, ["extract-speech", "--help"]).output
