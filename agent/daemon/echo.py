"""Acoustic echo cancellation: WebRTC's audio processing module (PyPI ``livekit``,
``rtc.AudioProcessingModule``), with what is actually written to the speaker as the far-end reference.

- The module takes exactly 10 ms frames at 8/16/32/48 kHz: :class:`EchoCanceller` cuts both streams
  into 10 ms frames and keeps the remainders for the next call.
- ``add_reference`` is called with the samples handed to the speaker (after volume and mute), from
  the audio output callback thread; ``process`` (the microphone side, one asyncio task) first feeds
  all reference frames queued so far to ``process_reverse_stream``, then each mic frame to
  ``process_stream``. ``set_stream_delay_ms`` gets the playback + capture latency.
- Warm-up grace: until the agent has been audible for ``warmup_seconds`` in total (the canceller is
  still converging), the microphone is gated (zeros) while the agent is audible and for a short tail
  after, so the agent cannot barge in on itself; the user can interrupt once the canceller has
  converged.
- Transparent without echo (``transparent_without_echo``): a second module instance runs the same noise
  suppression and high-pass without the canceller, and :class:`agent.daemon.echo_presence.EchoPresence`
  scores whether the microphone follows the speaker at all. While it says "clear" (a headset), the output is
  that second instance's: the canceller would only mute the user's barge-in. It turns back at the first echo.
- Half-duplex fallback (``half_duplex``): the gate always applies. Works without ``livekit``; kills
  barge-in.

Shapes: float32 mono ``(N,)`` at ``rate`` everywhere.
"""
from __future__ import annotations

import collections
import logging
import math
import threading

import numpy as np

from agent.daemon.config import AEC_RATES, EchoConfig
from agent.daemon.echo_presence import EchoPresence, frame_db, power_db

log = logging.getLogger(__name__)


class EchoUnavailable(RuntimeError):
    pass


def _pcm16(x: np.ndarray) -> bytes:
    return (np.clip(x, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


class EchoCanceller:
    """One microphone / one speaker echo canceller (plus the warm-up and half-duplex gates)."""

    def __init__(self, config: EchoConfig, rate: int = 16000, stream_delay_ms: float = 40.0) -> None:
        if rate not in AEC_RATES:
            raise ValueError(f"Echo cancellation runs at {AEC_RATES} Hz, not {rate}.")
        self.config = config
        self.rate = rate
        self.frame = rate // 100
        self._apm = None
        if config.aec or config.noise_suppression or config.high_pass_filter:
            try:
                from livekit import rtc
            except ImportError as e:  # pragma: no cover - depends on the install
                if config.aec:
                    raise EchoUnavailable("Echo cancellation needs the livekit package: pip install "
                                          "'duplex-agent[daemon]' (or run with --half-duplex).") from e
            else:
                self._rtc = rtc
                self._apm = rtc.AudioProcessingModule(echo_cancellation=config.aec,
                                                      noise_suppression=config.noise_suppression,
                                                      high_pass_filter=config.high_pass_filter,
                                                      auto_gain_control=config.auto_gain_control)
        self._plain_apm = None  # the same processing without the canceller, for when there is no echo
        self.presence: EchoPresence | None = None
        if self._apm is not None and config.aec and config.transparent_without_echo and not config.half_duplex:
            self._plain_apm = self._rtc.AudioProcessingModule(echo_cancellation=False,
                                                              noise_suppression=config.noise_suppression,
                                                              high_pass_filter=config.high_pass_filter,
                                                              auto_gain_control=config.auto_gain_control)
            self.presence = EchoPresence()
        self.stream_delay_ms = float(config.stream_delay_ms if config.stream_delay_ms is not None else stream_delay_ms)
        if self._apm is not None:
            self._apm.set_stream_delay_ms(int(round(self.stream_delay_ms)))
        self._lock = threading.Lock()
        self._ref_pending = np.zeros(0, np.float32)
        self._ref_frames: collections.deque[np.ndarray] = collections.deque(maxlen=200)  # 2 s
        self._mic_pending = np.zeros(0, np.float32)
        self._threshold = config.reference_threshold
        tail_ms = config.half_duplex_tail_ms + self.stream_delay_ms
        self._tail_frames = int(math.ceil(tail_ms / 10.0))
        self._hot = 0  # mic frames still gated because the agent was audible
        self.reference_audible_s = 0.0
        self.gated_frames = 0
        self.processed_frames = 0
        self.transparent_frames = 0
        self.dropped_reference_frames = 0

    # ---- far end (speaker callback thread) ------------------------------------------------------
    def add_reference(self, played: np.ndarray) -> None:
        """The samples just handed to the speaker ``(N,)`` at ``rate``."""
        x = np.asarray(played, np.float32)
        with self._lock:
            buf = np.concatenate([self._ref_pending, x]) if len(self._ref_pending) else x
            n = len(buf) // self.frame
            for i in range(n):
                if len(self._ref_frames) == self._ref_frames.maxlen:
                    self.dropped_reference_frames += 1
                self._ref_frames.append(buf[i * self.frame:(i + 1) * self.frame].copy())
            self._ref_pending = buf[n * self.frame:].copy()

    @property
    def warming_up(self) -> bool:
        return self.config.aec and self.reference_audible_s < self.config.warmup_seconds

    @property
    def active(self) -> bool:
        return self._apm is not None

    def _feed_reference(self) -> list[float]:
        """Feed the queued speaker frames to the canceller; returns their levels (dBFS), oldest first."""
        with self._lock:
            frames = list(self._ref_frames)
            self._ref_frames.clear()
        levels = []
        for f in frames:
            power = float(np.mean(np.square(f, dtype=np.float64)))
            levels.append(power_db(power))
            if np.sqrt(power) >= self._threshold:
                self._hot = self._tail_frames
                self.reference_audible_s += 0.01
            if self._apm is not None:
                rf = self._rtc.AudioFrame(_pcm16(f), self.rate, 1, self.frame)
                self._apm.process_reverse_stream(rf)
        return levels

    # ---- near end (microphone) -------------------------------------------------------------------
    def process(self, mic: np.ndarray) -> np.ndarray:
        """Clean microphone samples ``(N,)``; returns the whole 10 ms frames processed so far ``(M,)``."""
        x = np.asarray(mic, np.float32)
        buf = np.concatenate([self._mic_pending, x]) if len(self._mic_pending) else x
        n = len(buf) // self.frame
        self._mic_pending = buf[n * self.frame:].copy()
        if n == 0:
            return np.zeros(0, np.float32)
        out = np.empty(n * self.frame, np.float32)
        levels = self._feed_reference()
        for i in range(n):
            f = buf[i * self.frame:(i + 1) * self.frame]
            y = self._run(self._apm, f) if self._apm is not None else f
            if self.presence is not None:
                plain = self._run(self._plain_apm, f)
                # the speaker frames queued since the last call, spread over this call's microphone frames
                played = levels[i * len(levels) // n:(i + 1) * len(levels) // n]
                speaker_db = -np.inf if not played else 10.0 * np.log10(
                    np.mean(np.power(10.0, np.asarray(played) / 10.0)))
                if self.presence.update(speaker_db, frame_db(plain)):
                    y = plain
                    self.transparent_frames += 1
            gate = self._hot > 0 and (self.config.half_duplex or self.warming_up)
            if self._hot > 0:
                self._hot -= 1
            if gate:
                y = np.zeros(self.frame, np.float32)
                self.gated_frames += 1
            out[i * self.frame:(i + 1) * self.frame] = y
            self.processed_frames += 1
        return out

    def _run(self, apm, f: np.ndarray) -> np.ndarray:
        af = self._rtc.AudioFrame(_pcm16(f), self.rate, 1, self.frame)
        apm.process_stream(af)
        return np.frombuffer(bytes(af.data), dtype="<i2").astype(np.float32) / 32768.0

    @property
    def transparent(self) -> bool:
        """True while no echo is measured and the microphone bypasses the canceller."""
        return self.presence is not None and self.presence.clear

    def stats(self) -> dict:
        return {"aec": bool(self.config.aec and self._apm is not None), "half_duplex": self.config.half_duplex,
                "warming_up": self.warming_up, "stream_delay_ms": self.stream_delay_ms,
                "reference_audible_s": round(self.reference_audible_s, 2), "gated_frames": self.gated_frames,
                "processed_frames": self.processed_frames, "transparent": self.transparent,
                "transparent_frames": self.transparent_frames,
                "echo_score": None if self.presence is None else round(self.presence.score, 3)}
