"""``memo extract-speech`` without torch: a folder of wavs (or a ``memo prep`` output) -> a
speech feature database laid out as ``create-imgdb --modality speech`` lays it out. Reading and
converting the audio (soundfile, soxr), openSMILE's frame-level descriptors, pooling to a
stated rate, and :func:`build_speech_db`, the driver the torch extractor
(memotrain/recipes/extract_speech.py) shares. Inputs and outputs: docs/DATABASES.md, "Speech
from audio"."""
from __future__ import annotations

import importlib
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from ..config import is_number
from ..errors import BadInputError
from ..parallel import default_workers
from ..store.build import BuildResult
from ..store.ids import id_to_key
from ..store.manifest import fingerprint_files
from .frames import select_frames
from .imgdb import build_db, feature_options
from .sources import Segment, checked_segments, find_files

SAMPLE_RATE = 16000  # what every extractor is fed
PREP_RECORD = "prep.json"  # a memo prep output: its wavs are under audio/
# --features name -> (openSMILE feature set, values per frame); low-level descriptors, 10 ms hop
OPENSMILE_SETS = {"compare": ("ComParE_2016", 65), "egemaps": ("eGeMAPSv02", 25)}
OPENSMILE_RATE = 100
TRANSFORM = "sign(x) * log1p(abs(x))"
# segments per task: openSMILE takes ~0.1 s a segment, so small tasks keep every worker busy;
# a model batches a whole task's segments by length
CHUNK_PROCESSES, CHUNK_IN_PROCESS = 8, 64


@dataclass
class WavSource:
    """The ``<segment>.wav`` files under a folder (any depth); the id is the file name."""

    root: Path
    files: list = field(default_factory=list)
    kind: str = "wav"

    def fingerprint(self) -> dict:
        return {"path": str(self.root), "type": self.kind,
                **fingerprint_files(self.files, self.root)}

    def list_segments(self) -> list[Segment]:
        return checked_segments([Segment(id_to_key(os.path.basename(p)[:-4]), p)
                                 for p in self.files])


def open_wavs(path) -> WavSource:
    """The wavs of a folder at any depth, or of a ``memo prep`` output's ``audio/`` folder."""
    root = Path(path)
    if not root.is_dir():
        raise BadInputError("not a directory", file=root,
                            fix="give the folder of <segment>.wav files or a memo prep output")
    if (root / PREP_RECORD).is_file() and (root / "audio").is_dir():
        root = root / "audio"
    files = find_files(root, (".wav",))[".wav"]
    if not files:
        raise BadInputError("holds no .wav files", file=root,
                            fix="point at the folder of <segment>.wav files (any depth) or at "
                                "a memo prep output (its audio/ folder)")
    return WavSource(root, files)


def speech_module(name: str):
    """``soundfile`` / ``soxr`` / ``opensmile``, or an error saying which extra installs it."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise BadInputError(f"memo extract-speech needs the package {name}, which is not "
                            "installed", fix="pip install 'memo-emotion[speech]'") from None


def read_audio(path, segment=None) -> tuple[np.ndarray, dict]:
    """A wav as mono float32 at 16 kHz, and what was converted: ``rate_<Hz>``,
    ``channels_<n>``, ``subtype_<soundfile subtype>``, ``resampled``, ``mixed_down`` and the
    ``samples`` fed on (counts, summed into the manifest's ``sums``). Any sample rate, channel
    count and sample width soundfile reads (8/16/24/32-bit PCM, float)."""
    soundfile, soxr = speech_module("soundfile"), speech_module("soxr")
    try:
        with soundfile.SoundFile(str(path)) as f:
            rate, channels, subtype = f.samplerate, f.channels, f.subtype
            data = f.read(dtype="float32", always_2d=True)
    except Exception as exc:  # libsndfile's errors on damaged or foreign files
        raise BadInputError(f"unreadable audio ({type(exc).__name__}: {exc})", file=path,
                            segment=segment, fix="re-export it as a wav (e.g. ffmpeg -i IN -ac "
                            "1 -ar 16000 OUT.wav) or remove it") from None
    if not len(data):
        raise BadInputError("the wav holds no samples", file=path, segment=segment,
                            fix="re-cut the segment's audio or remove the file")
    if not np.isfinite(data).all():
        raise BadInputError("the wav holds NaN or infinite samples", file=path, segment=segment,
                            fix="re-export the audio or remove the file")
    wave = data.mean(axis=1, dtype=np.float32) if channels > 1 else data[:, 0]
    if rate != SAMPLE_RATE:
        wave = soxr.resample(wave, rate, SAMPLE_RATE, quality="HQ").astype(np.float32)
    tally = {f"rate_{rate}": 1, f"channels_{channels}": 1, f"subtype_{subtype}": 1,
             "resampled": int(rate != SAMPLE_RATE), "mixed_down": int(channels > 1),
             "samples": len(wave)}
    return np.ascontiguousarray(wave, dtype=np.float32), tally


def check_rate(rate, native: float):
    """``rate`` (frames per second stored): None (the extractor's own) or a number from
    above 0 to the extractor's own rate."""
    if rate is None:
        return None
    if not is_number(rate) or not 0 < float(rate) <= native:
        raise BadInputError(f"{{rate}} must be a number above 0 and at most {native:g}, the "
                            f"extractor's own frame rate (got {rate!r})", options=("rate",),
                            fix="use e.g. 10 (the face rate), or leave it out")
    return float(rate)


def pool_frames(feats: np.ndarray, native: float, rate: float | None) -> np.ndarray:
    """Mean of the frames in each window of ``1 / rate`` s: output frame j averages the native
    frames ``floor(j * native / rate)`` up to ``floor((j + 1) * native / rate)`` (the last
    window may be shorter). ``rate`` None or equal to ``native`` keeps the frames."""
    if rate is None or rate == native or not len(feats):
        return feats
    step = Fraction(native).limit_denominator(1000) / Fraction(rate).limit_denominator(1000)
    n_out = math.ceil(len(feats) / step)
    starts = np.array([math.floor(j * step) for j in range(n_out)], dtype=np.int64)
    sums = np.add.reduceat(feats.astype(np.float64), starts, axis=0)
    sizes = np.diff(np.append(starts, len(feats)))
    return (sums / sizes[:, None]).astype(np.float32)


class OpenSmileExtractor:
    """openSMILE low-level descriptors (ComParE_2016: 65, eGeMAPSv02: 25 per 10 ms frame),
    stored as ``sign(x) * log1p(|x|)``: ComParE's raw values reach 10^7, beyond float16."""

    def __init__(self, name: str):
        if name not in OPENSMILE_SETS:
            raise BadInputError(f"unknown openSMILE features {name!r}", options=("features",),
                                fix=f"set {{features}} to one of {', '.join(OPENSMILE_SETS)}")
        self.name = name
        self.rate = OPENSMILE_RATE
        self.dim = OPENSMILE_SETS[name][1]
        self._smile = None

    def __getstate__(self):  # each worker makes its own Smile
        return {**self.__dict__, "_smile": None}

    def record(self) -> dict:
        """What the manifest's ``options.extractor`` says about this extractor."""
        return {"name": self.name, "package": "opensmile",
                "version": speech_module("opensmile").__version__,
                "feature_set": OPENSMILE_SETS[self.name][0], "feature_level":
                "LowLevelDescriptors", "hop_ms": 10, "dim": self.dim, "transform": TRANSFORM}

    def smile(self):
        if self._smile is None:
            opensmile = speech_module("opensmile")
            self._smile = opensmile.Smile(
                feature_set=OPENSMILE_SETS[self.name][0],
                feature_level=opensmile.FeatureLevel.LowLevelDescriptors)
        return self._smile

    def features(self, waves: list[np.ndarray]) -> list[np.ndarray]:
        """(frames, dim) float32 per wave; a wave shorter than one analysis window gives 0
        frames (openSMILE fills such a segment with NaN)."""
        import warnings

        out = []
        for wave in waves:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "Segment too short"
                x = self.smile().process_signal(wave, SAMPLE_RATE).to_numpy(np.float32)
            if len(x) == 1 and not np.isfinite(x).all():
                x = x[:0]
            out.append(np.sign(x) * np.log1p(np.abs(x)))
        return out


@dataclass
class SpeechLoader:
    """build_db's loader: decode and convert a chunk's wavs (``threads`` at once), run the
    extractor over them together, pool to ``rate`` and select the frames."""

    extractor: object
    rate: float | None
    max_bb: int
    threads: int = 1

    def __call__(self, seg: Segment):
        got = self.load_chunk([seg])[0]
        if isinstance(got, BadInputError):
            raise got
        return got

    def load_chunk(self, segs: list[Segment]) -> list:
        def decode(seg):
            try:
                return read_audio(seg.file, seg.key)
            except BadInputError as exc:
                return exc

        if self.threads > 1 and len(segs) > 1:
            with ThreadPoolExecutor(self.threads) as pool:  # libsndfile / soxr free the GIL
                decoded = list(pool.map(decode, segs))
        else:
            decoded = [decode(s) for s in segs]
        ok = [i for i, d in enumerate(decoded) if not isinstance(d, BadInputError)]
        feats = dict(zip(ok, self.extractor.features([decoded[i][0] for i in ok])))
        out = []
        for i, seg in enumerate(segs):
            if i not in feats:
                out.append(decoded[i])
                continue
            x = pool_frames(feats[i], self.extractor.rate, self.rate)
            arrays = {"features": x, "frame_idxs": np.arange(len(x), dtype=np.int32)}
            try:
                kept = select_frames(arrays, 1.0, self.max_bb, file=seg.file, segment=seg.key)
            except BadInputError as exc:
                out.append(exc)
                continue
            out.append((kept, len(x), decoded[i][1]))
        return out


def build_speech_db(src, out_dir, extractor, *, rate=None, max_bb: int | None = None,
                    min_bb: int = 0, workers: int | None = None, in_process: bool = False,
                    progress: bool = False, replace: bool = False, shard=None) -> BuildResult:
    """Build ``OUT_DIR/feat_th1.0_max{max_bb}_min{min_bb}`` (and its nbb json) from the wavs
    of ``src`` with ``extractor`` (``features(waves)``, ``rate``, ``record()``). With
    ``in_process`` the extractor runs in this process (a model on a GPU) and ``workers``
    threads decode the audio; otherwise ``workers`` processes do both."""
    conf_th, max_bb, min_bb = feature_options("speech", None, max_bb, min_bb)
    rate = check_rate(rate, extractor.rate)
    source = open_wavs(src)
    options = {"conf_th": conf_th, "max_bb": max_bb, "min_bb": min_bb, "modality": "speech",
               "feature": None, "extractor": {
                   **extractor.record(), "sample_rate": SAMPLE_RATE,
                   "native_rate": extractor.rate, "rate": rate or extractor.rate,
                   "pooling": "mean" if rate not in (None, extractor.rate) else None}}
    threads = (workers or default_workers()) if in_process else 1
    loader = SpeechLoader(extractor, rate, max_bb, threads=threads)
    return build_db(source, out_dir, "feature", options, 1 if in_process else workers,
                    progress, lambda segs: loader, replace=replace, shard=shard,
                    chunk=CHUNK_IN_PROCESS if in_process else CHUNK_PROCESSES)


def extract_speech(src, out_dir, *, features: str = "compare", rate=None,
                   max_bb: int | None = None, min_bb: int = 0, workers: int | None = None,
                   progress: bool = False, replace: bool = False, shard=None) -> BuildResult:
    """openSMILE frame features (``compare`` or ``egemaps``) of every wav under ``src`` as a
    speech feature database in ``out_dir`` (wav2vec2 needs torch: memotrain's
    ``extract_speech_features``)."""
    if features == "wav2vec2":
        raise BadInputError("wav2vec2 features need torch: use memo extract-speech (or "
                            "memotrain.recipes.extract_speech) with --model", options=(
                                "features",), fix="set {features} to compare or egemaps here")
    return build_speech_db(src, out_dir, OpenSmileExtractor(features), rate=rate,
                           max_bb=max_bb, min_bb=min_bb, workers=workers, progress=progress,
                           replace=replace, shard=shard)
