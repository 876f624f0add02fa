"""Voice activity per 10 ms of 16 kHz mono audio: WebRTC's VAD (webrtcvad-wheels), Silero's
VAD (the ONNX model inside the silero-vad wheel, run with onnxruntime; robust in noise), or the
original pipeline's log-energy threshold (``energy``, kept for comparison)."""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from .components import INSTALL, MissingComponent, silero_model_file

HOP = 160  # 10 ms at 16 kHz
WINDOW = 400  # 25 ms
VADS = ("webrtc", "silero", "energy")
SILERO_CHUNK, SILERO_CONTEXT = 512, 64  # samples the model takes at 16 kHz, and its context
SILERO_ON, SILERO_OFF = 0.5, 0.35  # speech starts above, ends below (its own defaults)


def voice_activity(samples: np.ndarray, method: str = "webrtc", mode: int = 2) -> np.ndarray:
    """Boolean speech label per 10 ms frame of int16 samples at 16 kHz."""
    if method == "webrtc":
        return _webrtc(samples, mode)
    if method == "silero":
        return silero_vad(samples)
    if method == "energy":
        return energy_vad(samples)
    raise ValueError(f"unknown VAD {method!r} (one of {', '.join(VADS)})")


def _webrtc(samples: np.ndarray, mode: int) -> np.ndarray:
    try:
        import webrtcvad
    except ImportError:
        raise MissingComponent(f"webrtcvad-wheels is not installed: {INSTALL}") from None
    vad = webrtcvad.Vad(mode)
    pcm = samples.astype("<i2")
    n = len(pcm) // HOP
    return np.array([vad.is_speech(pcm[i * HOP:(i + 1) * HOP].tobytes(), 16000)
                     for i in range(n)], dtype=bool)


def energy_vad(samples: np.ndarray, threshold: float = 5.5, mean_scale: float = 0.5
               ) -> np.ndarray:
    """The original pipeline's rule: log energy of 25 ms windows every 10 ms (DC removed) above
    ``threshold + mean_scale * mean``. Its context loop tested the frame itself instead of its
    neighbours, so the rule it applied is this plain threshold."""
    x = samples.astype(np.float64)
    n = max(0, (len(x) - WINDOW) // HOP + 1)
    if n == 0:
        return np.zeros(len(x) // HOP, dtype=bool)
    idx = np.arange(WINDOW)[None, :] + HOP * np.arange(n)[:, None]
    win = x[idx]
    win = win - win.mean(axis=1, keepdims=True)
    energy = np.log(np.maximum((win ** 2).sum(axis=1), np.finfo(float).eps))
    out = np.zeros(len(x) // HOP, dtype=bool)
    out[:n] = energy > threshold + mean_scale * energy.mean()
    return out


@lru_cache(maxsize=1)
def _silero_session():
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(silero_model_file()), opts,
                                providers=["CPUExecutionProvider"])


def silero_vad(samples: np.ndarray) -> np.ndarray:
    """Silero's speech probability per 32 ms chunk (with its 64-sample context and recurrent
    state), made speech / silence with its hysteresis, spread over the 10 ms frames."""
    session = _silero_session()
    x = samples.astype(np.float32) / 32768.0
    n_chunks = -(-len(x) // SILERO_CHUNK)
    x = np.pad(x, (0, n_chunks * SILERO_CHUNK - len(x)))
    state = np.zeros((2, 1, 128), np.float32)
    context = np.zeros(SILERO_CONTEXT, np.float32)
    sr = np.array(16000, dtype=np.int64)
    speech, on = np.zeros(n_chunks, dtype=bool), False
    for i in range(n_chunks):
        chunk = x[i * SILERO_CHUNK:(i + 1) * SILERO_CHUNK]
        prob, state = session.run(None, {"input": np.concatenate([context, chunk])[None],
                                         "state": state, "sr": sr})
        context = chunk[-SILERO_CONTEXT:]
        p = float(prob.reshape(-1)[0])
        on = p > SILERO_ON or (on and p >= SILERO_OFF)
        speech[i] = on
    centres = (np.arange(len(samples) // HOP) * HOP + HOP // 2) // SILERO_CHUNK
    return speech[np.minimum(centres, n_chunks - 1)] if n_chunks else np.zeros(0, bool)

