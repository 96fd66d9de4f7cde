"""The turn detector: from the user's audio alone, has the user finished their turn, or only paused?

Why it exists: the duplex model decides when to take the turn from the codec ids it hears, and a small one
takes it in a mid-turn pause ("what is the capital of ... france") about as often as at a real turn end.
People tell the two apart by how the words before the silence were said: a finished question ends on a
final fall, a held phrase on a level or rising pitch, often lengthened. This is a small causal classifier of
exactly that, run on the same audio the codec gets; the turn policy (``agent/policy.py``) keeps the agent
from starting while it says the user has not finished (Pipecat's Smart Turn and LiveKit's turn detector
play this part in their pipelines, from audio and from text).

Architecture: the recogniser's streaming encoder (``listen/recognizer.py``: causal log-mel 0-3.5 kHz at the
codec rate, 40 ms steps, causal conv blocks, a GRU) with two classes, "still going" and "finished", trained
on the silent steps after the user stops: turn ends against mid-turn pauses (``agent/turn_train.py``). It
hears every frame, so its state carries the whole utterance's prosody; its output means something only while
the user is silent after speaking, and the policy asks it only then.

A detector directory holds ``config.json`` (a :class:`~listen.recognizer.RecognizerConfig`),
``model.safetensors`` and ``turn.json`` (what it was trained on, and the threshold tuned on val data).
"""
from __future__ import annotations

import functools
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from listen.recognizer import RecognizerConfig, build_model

ASSETS_DIR = Path(__file__).resolve().parent / "assets" / "turn_detector"
CLASSES = 2  # 0: the user is still going (a pause), 1: the user has finished the turn
META_FILE = "turn.json"


def build_detector(cfg: RecognizerConfig):
    """The torch module: the recogniser's encoder with two classes; ``forward`` returns log-probabilities
    ``(B, steps, 2)`` and the new state."""
    return build_model(cfg, classes=CLASSES)


def save_detector(model, out_dir: str | os.PathLike, meta: dict | None = None) -> None:
    """``config.json`` + ``model.safetensors`` + ``turn.json`` (``meta``: threshold, training data, metrics)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(asdict(model.cfg), indent=2) + "\n")
    (out / META_FILE).write_text(json.dumps(meta or {}, indent=2) + "\n")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"))


def shipped_detector_dir() -> Path | None:
    return ASSETS_DIR if (ASSETS_DIR / "model.safetensors").is_file() else None


def load_detector(path: str | os.PathLike | None = None):
    """The detector in ``path``, or the shipped one when ``path`` is None; float32, eval mode, with
    ``model.meta`` (``turn.json``)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    d = Path(path) if path is not None else ASSETS_DIR
    if not (d / "config.json").is_file() or not (d / "model.safetensors").is_file():
        where = "no turn detector ships with this copy" if path is None else f"{d} has no config.json + model.safetensors"
        raise FileNotFoundError(f"No turn detector found: {where}; train one with `duplex turn train`.")
    try:
        cfg = RecognizerConfig.from_dict(json.loads((d / "config.json").read_text()))
        model = build_detector(cfg)
        model.load_state_dict(load_file(str(d / "model.safetensors")))
        meta = json.loads((d / META_FILE).read_text()) if (d / META_FILE).is_file() else {}
    except (ValueError, TypeError, RuntimeError, OSError, SafetensorError) as e:  # json, a field, the file, a shape
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"The turn detector in {d} could not be loaded ({first[:200]}).") from e
    model.meta = meta
    return model.eval()


@dataclass
class TurnDetectorState:
    """One stream's state: the encoder's (front-end context, conv and GRU states), the samples not yet a whole
    step (at the detector's rate), and the last step's P(finished) (None before the first step)."""

    model: dict = field(default_factory=dict)
    pending: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    finished: float | None = None


class TurnDetector:
    """Feeds one stream's PCM ``(n,)`` float32 at ``input_rate`` (the codec rate a session's frames have) and
    says how likely it is that the user has finished their turn. Stateful per session: :meth:`reset` starts a
    new stream. Costs one small forward per 80 ms frame (two 40 ms steps)."""

    def __init__(self, model, input_rate: int) -> None:
        import torch

        self.model = model
        self.cfg: RecognizerConfig = model.cfg
        self._torch = torch
        self._resampler = None
        if input_rate != self.cfg.sample_rate:
            from listen.resample import StreamingResampler

            self._resampler = StreamingResampler(input_rate, self.cfg.sample_rate, "LQ")
        self.input_rate = input_rate
        self.state = TurnDetectorState()

    def reset(self) -> None:
        self.state = TurnDetectorState()
        if self._resampler is not None:
            self._resampler.reset()

    def push(self, pcm: np.ndarray) -> float | None:
        """P(the user has finished) after this audio (any length; samples short of a step wait for the next)."""
        x = np.asarray(pcm, np.float32).reshape(-1)
        if self._resampler is not None:
            x = self._resampler.process(x)
        st = self.state
        x = np.nan_to_num(np.concatenate([st.pending, x]), nan=0.0, posinf=1.0, neginf=-1.0)
        n = len(x) // self.cfg.step_samples * self.cfg.step_samples
        st.pending = x[n:]
        if n == 0:
            return st.finished
        torch = self._torch
        with torch.inference_mode():
            logp, st.model = self.model(torch.from_numpy(np.ascontiguousarray(x[:n]))[None], st.model)
        st.finished = float(logp[0, -1, 1].exp())
        return st.finished


@functools.lru_cache(maxsize=8)
def _shared_detector(path: str):
    """One loaded model per directory per process: sessions share its (read-only) weights, not its state."""
    return load_detector(path)


def load_session_detector(path: str, input_rate: int) -> TurnDetector | None:
    """What a session uses: ``path`` "" -> the shipped detector (None when none ships), "off" -> None, else
    the detector in that directory (a clear error when it is missing)."""
    if path == "off":
        return None
    if path == "":
        d = shipped_detector_dir()
        return None if d is None else TurnDetector(_shared_detector(str(d)), input_rate)
    return TurnDetector(_shared_detector(str(Path(path).resolve())), input_rate)
