"""``memo extract-speech``: wavs -> speech feature database, with openSMILE (memodb, no torch)
or the hidden states of a local wav2vec2 / HuBERT / WavLM folder (transformers; nothing is
downloaded).

    r = extract_speech_features("wavs", "speech", features="wav2vec2", model="w2v2", rate=10)

The database is laid out as ``create-imgdb --modality speech`` lays it out; the extractors,
batching and what the manifest records: docs/DATABASES.md, "Speech from audio".
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from memodb.errors import BadInputError
from memodb.feature.speech import SAMPLE_RATE, build_speech_db, extract_speech
from memodb.store.build import BuildResult
from memodb.store.files import file_sha256
from memotrain.engine import resolve_device

WEIGHTS = ("model.safetensors", "pytorch_model.bin")
BATCH_SECONDS = 160.0  # padded audio per forward pass


class Wav2Vec2Extractor:
    """Hidden states of one layer of a local Hugging Face speech encoder (wav2vec2, HuBERT,
    WavLM), 16 kHz in, one frame per ``prod(conv_stride)`` samples (50 per second)."""

    def __init__(self, model_dir, layer=None, device="auto", batch_seconds=BATCH_SECONDS):
        self.dir = Path(model_dir)
        config_file = self.dir / "config.json"
        try:
            self.config = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise BadInputError(f"no readable config.json ({exc})", file=self.dir,
                                options=("model",), fix="give {model} a Hugging Face model "
                                "folder (config.json + model.safetensors), saved with "
                                "save_pretrained") from None
        if not any((self.dir / w).is_file() for w in WEIGHTS):
            raise BadInputError(f"no weights ({' or '.join(WEIGHTS)})", file=self.dir,
                                options=("model",), fix="save the model into {model} with "
                                "save_pretrained")
        self.layers = int(self.config.get("num_hidden_layers", 0))
        if layer is None:
            layer = self.layers
        if isinstance(layer, bool) or not isinstance(layer, int) \
                or not -(self.layers + 1) <= layer <= self.layers:
            raise BadInputError(f"{{layer}} {layer!r} is out of range: the model has "
                                f"{self.layers} layers", options=("layer",),
                                fix=f"use 0 (the input of the first layer) to {self.layers}, "
                                    "or -1 for the last")
        self.layer = layer if layer >= 0 else self.layers + 1 + layer
        self.stride = int(np.prod(self.config.get("conv_stride", [5, 2, 2, 2, 2, 2, 2])))
        self.rate = SAMPLE_RATE / self.stride
        # a feature encoder normalising over time (GroupNorm) sees padding: batch equal lengths
        self.pad_free = self.config.get("feat_extract_norm", "group") == "layer"
        prep = self.dir / "preprocessor_config.json"
        self.normalize = json.loads(prep.read_text(encoding="utf-8")).get(
            "do_normalize", True) if prep.is_file() else True
        self.device_name, self.batch_seconds = device, float(batch_seconds)
        self._model = None

    def record(self) -> dict:
        import transformers

        files = {p.name: file_sha256(p) for p in sorted(self.dir.iterdir())
                 if p.is_file() and not p.name.startswith(".")}
        return {"name": "wav2vec2", "package": "transformers",
                "version": transformers.__version__, "torch": torch.__version__,
                "model": {"type": self.config.get("model_type"),
                          "hidden_size": self.config.get("hidden_size"),
                          "layers": self.layers, "files": files},
                "layer": self.layer, "dim": self.config.get("hidden_size"),
                "input_normalization": "zero mean, unit variance per segment"
                if self.normalize else None, "dtype": "float16"}

    def model(self):
        if self._model is None:
            from transformers import AutoModel

            self.device = resolve_device(self.device_name, error=BadInputError)
            try:
                m = AutoModel.from_pretrained(self.dir, local_files_only=True)
            except Exception as exc:  # transformers raises many kinds on a foreign folder
                raise BadInputError(f"transformers cannot load it ({type(exc).__name__}: "
                                    f"{exc})", file=self.dir, options=("model",),
                                    fix="give {model} a wav2vec2, HuBERT or WavLM folder") \
                    from None
            self._model = m.to(self.device).eval()
            self._lengths = m._get_feat_extract_output_lengths
        return self._model

    def frames(self, n_samples: int) -> int:
        self.model()
        return int(self._lengths(torch.tensor(n_samples)))

    def features(self, waves: list[np.ndarray]) -> list[np.ndarray]:
        """(frames, hidden) float32 per wave, batched by length; a wave shorter than the
        feature encoder's window gives 0 frames."""
        model = self.model()
        out: list = [None] * len(waves)
        n_frames = [self.frames(len(w)) if len(w) >= self.stride else 0 for w in waves]
        order = sorted((i for i in range(len(waves)) if n_frames[i] > 0),
                       key=lambda i: (len(waves[i]), i))
        for i in range(len(waves)):
            if n_frames[i] <= 0:
                out[i] = np.zeros((0, self.config["hidden_size"]), np.float32)
        budget = self.batch_seconds * SAMPLE_RATE
        batch: list[int] = []
        for i in order:
            longest = len(waves[i])
            fits = (len(batch) + 1) * longest <= budget and (
                self.pad_free or not batch or len(waves[batch[0]]) == longest)
            if batch and not fits:
                self._run(model, waves, batch, n_frames, out)
                batch = []
            batch.append(i)
        if batch:
            self._run(model, waves, batch, n_frames, out)
        return out

    def _run(self, model, waves, batch, n_frames, out) -> None:
        longest = max(len(waves[i]) for i in batch)
        x = np.zeros((len(batch), longest), np.float32)
        mask = np.zeros((len(batch), longest), np.int64)
        for row, i in enumerate(batch):
            w = waves[i].astype(np.float64)
            if self.normalize:
                w = (w - w.mean()) / np.sqrt(w.var() + 1e-7)
            x[row, :len(w)] = w
            mask[row, :len(w)] = 1
        with torch.no_grad():
            kw = {"attention_mask": torch.from_numpy(mask).to(self.device)} \
                if self.pad_free else {}
            h = model(torch.from_numpy(x).to(self.device), output_hidden_states=True,
                      **kw).hidden_states[self.layer].float().cpu().numpy()
        for row, i in enumerate(batch):
            out[i] = h[row, :n_frames[i]]


def extract_speech_features(src, out_dir, *, features: str = "compare", model=None,
                            layer: int | None = None, rate=None, max_bb: int | None = None,
                            min_bb: int = 0, batch_seconds: float = BATCH_SECONDS,
                            device="auto", workers: int | None = None,
                            progress: bool = False, replace: bool = False) -> BuildResult:
    """The speech feature database of the wavs under ``src`` (a folder or a memo prep output)
    in ``out_dir``: openSMILE ``compare`` / ``egemaps``, or ``wav2vec2`` with the local model
    folder ``model`` (its ``layer``; default the last)."""
    if features != "wav2vec2":
        if model is not None or layer is not None:
            raise BadInputError(f"{{model}} and {{layer}} are for wav2vec2, not {features}",
                                options=("model", "layer"),
                                fix="leave them out, or set --features wav2vec2")
        return extract_speech(src, out_dir, features=features, rate=rate, max_bb=max_bb,
                              min_bb=min_bb, workers=workers, progress=progress,
                              replace=replace)
    if model is None:
        raise BadInputError("wav2vec2 features need a local model folder", options=("model",),
                            fix="give {model} a folder saved with save_pretrained (wav2vec2, "
                                "HuBERT or WavLM); nothing is downloaded")
    if not batch_seconds > 0:
        raise BadInputError(f"batch_seconds must be positive (got {batch_seconds})")
    extractor = Wav2Vec2Extractor(model, layer, device, batch_seconds)
    return build_speech_db(src, out_dir, extractor, rate=rate, max_bb=max_bb, min_bb=min_bb,
                           workers=workers, in_process=True, progress=progress,
                           replace=replace)
