"""Stateful streaming resampling (soxr), so audio chunks join with no seams.

Shapes: ``process`` takes ``(N,)`` float32 and returns ``(M,)`` float32, M ≈ N * out_rate / in_rate
over time. soxr holds a little audio back internally (filter delay plus block buffering): at HQ up to
~40 ms for 48 -> 24 kHz and up to ~160 ms for 48 -> 8 kHz; ``flush`` returns it at the end of a stream.
Concatenating every ``process`` output plus ``flush()`` equals ``soxr.resample`` of the whole signal.
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
