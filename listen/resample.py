"""Stateful streaming resampling (soxr), so audio chunks join with no seams.

Shapes: ``process`` takes ``(N,)`` float32 and returns ``(M,)`` float32, M ≈ N * out_rate / in_rate
over time. soxr holds a little audio back internally (filter delay plus block buffering): at HQ up to
~40 ms for 48 -> 24 kHz and up to ~160 ms for 48 -> 8 kHz; ``flush`` returns it at the end of a stream.
Concatenating every ``process`` output plus ``flush()`` equals ``soxr.resample`` of the whole signal.

Integer ratios on a live path (the Realtime server: 24 kHz client, 8 kHz codec2 or 24 kHz mimi) use
:class:`OutputResampler` / :class:`InputDecimator` instead: soxr releases audio in uneven blocks
(measured on 32 ms client batches, 24 -> 8 kHz LQ holds back 3..37 ms, a sawtooth of ~20 ms; 8 -> 24
kHz gives 1800, 1800, ..., 2700 samples for frames of 1920), latency and jitter the frame clock and
the client's playback buffer would have to absorb. These are polyphase Kaiser-windowed sincs with a
fixed 1.5 ms delay and an exact number of samples per call.
"""
from __future__ import annotations

import math

import numpy as np
import soxr

from listen.pcm import AudioInputError

QUALITIES = ("QQ", "LQ", "MQ", "HQ", "VHQ")


def check_rate(rate: float, what: str = "sample rate") -> float:
    """Return ``rate`` if it is a finite positive number, else raise AudioInputError saying so."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float, np.integer, np.floating)):
        raise AudioInputError(f"The {what} must be a positive number of Hz, got {rate!r}.")
    if not (math.isfinite(rate) and rate > 0):
        raise AudioInputError(f"The {what} must be a positive number of Hz, got {rate!r}.")
    return rate


class StreamingResampler:
    """One mono stream from ``in_rate`` to ``out_rate``; state lives inside soxr's stream object.

    Equal rates take an identity fast path (a copy, no filtering, no delay).
    """

    def __init__(self, in_rate: float, out_rate: float, quality: str = "HQ") -> None:
        self.in_rate = check_rate(in_rate, "input sample rate")
        self.out_rate = check_rate(out_rate, "output sample rate")
        if quality not in QUALITIES:
            raise ValueError(f"Unknown resampling quality {quality!r}; use one of {', '.join(QUALITIES)}.")
        self.quality = quality
        self._stream: soxr.ResampleStream | None = None
        if in_rate != out_rate:
            self._stream = soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality=quality)

    @property
    def identity(self) -> bool:
        """True when rates are equal and samples pass through untouched."""
        return self._stream is None

    def process(self, x: np.ndarray) -> np.ndarray:
        """``(N,)`` float32 at in_rate -> ``(M,)`` float32 at out_rate (M may be 0 while soxr buffers)."""
        x = np.asarray(x)
        if x.ndim != 1:
            raise AudioInputError(f"StreamingResampler takes mono (N,) samples, got shape {x.shape}.")
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self._stream is None:
            return x.copy()
        if len(x) == 0:
            return np.zeros(0, dtype=np.float32)
        return self._stream.resample_chunk(x)

    def flush(self) -> np.ndarray:
        """End the stream: return the audio soxr still holds ``(M,)``; the next ``process`` starts afresh."""
        if self._stream is None:
            return np.zeros(0, dtype=np.float32)
        tail = self._stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
        # soxr refuses input after `last`; clearing makes the object reusable for a new stream.
        self._stream.clear()
        return tail

    def reset(self) -> None:
        """Drop all held audio and start a new stream (same rates and quality)."""
        if self._stream is not None:
            self._stream.clear()


def _kaiser_sinc(taps_per_phase: int, factor: int, beta: float = 8.0, cutoff: float = 0.9) -> np.ndarray:
    """Low-pass prototype ``(taps_per_phase * factor,)`` with cutoff ``cutoff / factor`` of Nyquist, DC gain 1."""
    n_taps = taps_per_phase * factor
    n = np.arange(n_taps) - (n_taps - 1) / 2
    h = np.sinc(cutoff * n / factor) * np.kaiser(n_taps, beta)
    return h / h.sum()


class OutputResampler:
    """Agent audio from the codec rate to the client's rate, ``(N,)`` float32 -> ``(M,)`` float32.

    Integer ratios: exactly ``N * ratio`` samples per call (every 80 ms frame becomes one steady
    80 ms delta), 1.5 ms delay, images below -77 dB, flat to 0.75 of the codec's Nyquist.
    """

    def __init__(self, in_rate: int, out_rate: int, taps: int = 24) -> None:
        self.in_rate, self.out_rate = int(in_rate), int(out_rate)
        self.factor = out_rate // in_rate if out_rate % in_rate == 0 else 0
        self._soxr = None if self.factor else StreamingResampler(in_rate, out_rate, "LQ")
        if self.factor > 1:
            h = _kaiser_sinc(taps, self.factor) * self.factor
            self._h = h.reshape(taps, self.factor).astype(np.float32)  # [k, p] = h[k * L + p]
            self._hist = np.zeros(taps - 1, np.float32)

    def process(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if self._soxr is not None:
            return self._soxr.process(x)
        if self.factor == 1 or len(x) == 0:
            return x.copy()
        buf = np.concatenate([self._hist, x])
        windows = np.lib.stride_tricks.sliding_window_view(buf, self._h.shape[0])[:, ::-1]  # [m, k] = x[m - k]
        self._hist = buf[len(buf) - len(self._hist):].copy()
        return np.clip((windows @ self._h).reshape(-1), -1.0, 1.0)

    def reset(self) -> None:
        if self._soxr is not None:
            self._soxr.reset()
        elif self.factor > 1:
            self._hist[:] = 0.0


class InputDecimator:
    """The client's PCM down to the codec rate by an integer factor (24 -> 8 kHz), ``(N,)`` -> ``(~N/L,)``.

    Chunks of any length; the output is released as soon as each output sample's input is in
    (1.5 ms delay). Use :meth:`for_rates` to get None when the ratio is not an integer > 1.
    """

    def __init__(self, factor: int, taps: int = 24) -> None:
        self.factor = int(factor)
        self._h = _kaiser_sinc(taps, self.factor)[::-1].astype(np.float32).copy()
        self._n = len(self._h)
        self._hist = np.zeros(self._n - 1, np.float32)
        self._phase = 0  # where the next output's window ends, relative to the new input

    @classmethod
    def for_rates(cls, in_rate: int, out_rate: int) -> "InputDecimator | None":
        if in_rate > out_rate and in_rate % out_rate == 0:
            return cls(in_rate // out_rate)
        return None

    def process(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        buf = np.concatenate([self._hist, x])
        first = self._n - 1 + self._phase
        ends = np.arange(first, len(buf), self.factor)
        if len(ends):
            windows = np.lib.stride_tricks.sliding_window_view(buf, self._n)[ends - (self._n - 1)]
            y = windows @ self._h
            nxt = int(ends[-1]) + self.factor
        else:
            y = np.zeros(0, np.float32)
            nxt = first
        self._phase = nxt - len(buf)
        self._hist = buf[len(buf) - (self._n - 1):].copy()
        return y.astype(np.float32, copy=False)

    def reset(self) -> None:
        self._hist[:] = 0.0
        self._phase = 0
