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

import asyncio
import functools
import json
import os
import weakref
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
    new stream. Costs one small forward per 80 ms frame (two 40 ms steps): :meth:`push` runs it at once,
    :meth:`push_async` runs it with every other session's waiting frame in one batch (:class:`DetectorBatcher`)."""

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

    def _whole_steps(self, pcm: np.ndarray) -> np.ndarray | None:
        """The samples that make whole steps, at the detector's rate (the rest waits in the state); None if none."""
        x = np.asarray(pcm, np.float32).reshape(-1)
        if self._resampler is not None:
            x = self._resampler.process(x)
        st = self.state
        x = np.nan_to_num(np.concatenate([st.pending, x]), nan=0.0, posinf=1.0, neginf=-1.0)
        n = len(x) // self.cfg.step_samples * self.cfg.step_samples
        st.pending = x[n:]
        return np.ascontiguousarray(x[:n]) if n else None

    def push(self, pcm: np.ndarray) -> float | None:
        """P(the user has finished) after this audio (any length; samples short of a step wait for the next)."""
        x = self._whole_steps(pcm)
        if x is not None:
            with self._torch.inference_mode():
                self.state.finished, self.state.model = _forward_one(self.model, x, self.state.model)
        return self.state.finished

    async def push_async(self, pcm: np.ndarray) -> float | None:
        """:meth:`push`, batched with the other sessions of this event loop, in a worker thread."""
        x = self._whole_steps(pcm)
        if x is not None:
            batcher = DetectorBatcher.for_model(self.model)
            batcher.streams.add(self)
            self.state.finished, self.state.model = await batcher.run(x, self.state.model)
        return self.state.finished


class DetectorBatcher:
    """One forward for every session's detector frame that is waiting (continuous batching, as the vLLM
    backend batches the model's steps). A session awaits :meth:`run`; while a batch runs in a worker thread
    the event loop goes on and the next frames queue up for the next batch. So N sessions cost about one
    small forward per round instead of N (measured by ``duplex bench detector``), and none of it blocks
    the loop. With a single stream on the loop (``duplex chat``, the daemon, ``duplex eval``) there is nothing to
    batch, and its forward runs at once, as :meth:`TurnDetector.push` does (a thread hop per frame would cost
    more than it saves). One batcher per model and event loop (futures belong to their loop)."""

    _by_loop: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()

    def __init__(self, model) -> None:
        import torch

        self.model = model
        self._torch = torch
        self._queue: list[tuple[np.ndarray, dict, asyncio.Future]] = []
        self._draining = False
        self.streams: "weakref.WeakSet" = weakref.WeakSet()  # the detectors that use it (alive)
        self.batches = 0  # forwards run, and frames they carried (mean batch = frames / batches)
        self.frames = 0

    @classmethod
    def for_model(cls, model) -> "DetectorBatcher":
        per_loop = cls._by_loop.setdefault(asyncio.get_running_loop(), {})
        if id(model) not in per_loop:
            per_loop[id(model)] = cls(model)
        return per_loop[id(model)]

    async def run(self, x: np.ndarray, state: dict) -> tuple[float, dict]:
        """P(finished) after the whole steps ``x`` ``(n,)`` from ``state``, and the new state."""
        if len(self.streams) <= 1 and not self._draining:
            return self._forward([(x, state, None)])[0]
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        self._queue.append((x, state, done))
        if not self._draining:
            self._draining = True
            loop.create_task(self._drain())
        return await done

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                try:
                    results = await asyncio.to_thread(self._forward, batch)
                except Exception as e:  # every waiting session hears it, none hangs
                    for *_, done in batch:
                        if not done.done():
                            done.set_exception(e)
                    continue
                for (*_, done), result in zip(batch, results):
                    if not done.done():  # a session closed while its frame was in flight
                        done.set_result(result)
        finally:
            self._draining = False

    def _forward(self, batch: list) -> list[tuple[float, dict]]:
        torch, cfg = self._torch, self.model.cfg
        groups: dict[int, list[int]] = {}
        for i, (x, _, _) in enumerate(batch):
            groups.setdefault(len(x), []).append(i)  # only equal lengths stack (80 ms frames: always one group)
        out: list = [None] * len(batch)
        with torch.inference_mode():
            for idx in groups.values():
                if len(idx) == 1:  # nothing to stack: the stream's own state, as push runs it
                    x, state, _ = batch[idx[0]]
                    out[idx[0]] = _forward_one(self.model, x, state)
                    continue
                pcm = torch.from_numpy(np.stack([batch[i][0] for i in idx]))
                states = [batch[i][1] or _zero_state(cfg, torch) for i in idx]
                state = {k: torch.cat([s[k] for s in states], dim=1 if k == "rnn" else 0) for k in states[0]}
                logp, new = self.model(pcm, state)
                finished = logp[:, -1, 1].exp().tolist()
                for j, i in enumerate(idx):
                    out[i] = (finished[j], {k: (v[:, j:j + 1] if k == "rnn" else v[j:j + 1]).clone()
                                            for k, v in new.items()})
            self.batches += len(groups)
            self.frames += len(batch)
        return out


def _forward_one(model, x: np.ndarray, state: dict) -> tuple[float, dict]:
    """One stream's whole steps ``x`` ``(n,)`` from ``state`` -> P(finished) after them, and the new state."""
    import torch

    logp, new = model(torch.from_numpy(x)[None], state)
    return float(logp[0, -1, 1].exp()), new


def _zero_state(cfg: RecognizerConfig, torch) -> dict:
    """The state a stream starts from (what the modules assume for None): silence before it, zeros inside."""
    state = {"mel": torch.zeros(1, cfg.win - cfg.hop),
             "rnn": torch.zeros(cfg.rnn_layers, 1, cfg.dim)}
    for i in range(cfg.conv_layers):
        state[f"conv{i}"] = torch.zeros(1, cfg.kernel - 1, cfg.dim)
    return state


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
