"""Playout: a jitter buffer between the vocoder (pushes per frame) and the speaker (pulls per callback),
and an in-memory sink for offline runs.

Shapes: every array here is ``(N,)`` float32 mono at the buffer's ``sample_rate``.
"""
from __future__ import annotations

import threading

import numpy as np


def _mono(samples: np.ndarray, who: str) -> np.ndarray:
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"{who} takes mono (N,) samples, got shape {x.shape}.")
    return x


class PlayoutBuffer:
    """A bounded FIFO of samples, safe to push from asyncio and pull from an audio callback thread.

    - ``push`` beyond ``max_seconds`` drops the OLDEST samples (latency stays bounded; counted in
      ``overrun_samples``).
    - ``pull(n)`` always returns n samples; missing ones are zeros (each short pull counts one
      ``underruns`` and its zeros in ``underrun_samples``).
    - Playout starts once ``prebuffer_seconds`` of audio is buffered: at the start, and again after
      ``flush``/``reset`` (the agent's next utterance builds its cushion again). Zeros returned while
      prebuffering are not underruns.
    """

    def __init__(self, sample_rate: int, max_seconds: float = 2.0, prebuffer_seconds: float = 0.0) -> None:
        if not sample_rate > 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate!r}.")
        if not max_seconds > 0:
            raise ValueError(f"max_seconds must be positive, got {max_seconds!r}.")
        if not 0 <= prebuffer_seconds <= max_seconds:
            raise ValueError(f"prebuffer_seconds must be in [0, max_seconds={max_seconds}], got {prebuffer_seconds!r}.")
        self.sample_rate = int(sample_rate)
        self.capacity = max(1, int(round(max_seconds * sample_rate)))
        self.prebuffer_samples = int(round(prebuffer_seconds * sample_rate))
        self._lock = threading.Lock()
        self._ring = np.zeros(self.capacity, dtype=np.float32)
        self._start = 0  # ring index of the oldest buffered sample
        self._size = 0
        self._playing = self.prebuffer_samples == 0
        self.underruns = 0
        self.underrun_samples = 0
        self.overrun_samples = 0

    # -- state ---------------------------------------------------------------------------------
    @property
    def buffered_samples(self) -> int:
        with self._lock:
            return self._size

    @property
    def buffered_seconds(self) -> float:
        return self.buffered_samples / self.sample_rate

    @property
    def playing(self) -> bool:
        """False while waiting for the prebuffer to fill."""
        with self._lock:
            return self._playing

    # -- producer side -------------------------------------------------------------------------
    def push(self, samples: np.ndarray) -> None:
        """Append ``(N,)`` samples, dropping the oldest if the buffer would exceed ``max_seconds``."""
        x = _mono(samples, "PlayoutBuffer.push")
        n = len(x)
        if n == 0:
            return
        with self._lock:
            cap = self.capacity
            if n >= cap:
                self.overrun_samples += self._size + n - cap
                self._ring[:] = x[n - cap :]
                self._start, self._size = 0, cap
            else:
                excess = self._size + n - cap
                if excess > 0:
                    self._start = (self._start + excess) % cap
                    self._size -= excess
                    self.overrun_samples += excess
                end = (self._start + self._size) % cap
                first = min(n, cap - end)
                self._ring[end : end + first] = x[:first]
                self._ring[: n - first] = x[first:]
                self._size += n
            if not self._playing and self._size >= self.prebuffer_samples:
                self._playing = True

    # -- consumer side -------------------------------------------------------------------------
    def pull(self, n: int) -> np.ndarray:
        """Take the next ``n`` samples ``(n,)``; zero-filled where the buffer runs short."""
        if n < 0:
            raise ValueError(f"pull needs n >= 0, got {n}.")
        out = np.zeros(n, dtype=np.float32)
        if n == 0:
            return out
        with self._lock:
            if not self._playing:
                return out
            take = min(n, self._size)
            first = min(take, self.capacity - self._start)
            out[:first] = self._ring[self._start : self._start + first]
            out[first:take] = self._ring[: take - first]
            self._start = (self._start + take) % self.capacity
            self._size -= take
            if take < n:
                self.underruns += 1
                self.underrun_samples += n - take
        return out

    def flush(self) -> int:
        """Drop everything buffered at once (the agent was cut off); returns the samples dropped."""
        with self._lock:
            dropped = self._size
            self._start = self._size = 0
            self._playing = self.prebuffer_samples == 0
            return dropped

    def reset(self) -> None:
        """Empty the buffer and zero the counters."""
        self.flush()
        with self._lock:
            self.underruns = self.underrun_samples = self.overrun_samples = 0


class ArraySink:
    """Collects played samples in memory (offline ``duplex chat``, tests). Thread-safe."""

    def __init__(self, sample_rate: int) -> None:
        if not sample_rate > 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate!r}.")
        self.sample_rate = int(sample_rate)
        self._lock = threading.Lock()
        self._chunks: list[np.ndarray] = []
        self._samples = 0

    def write(self, samples: np.ndarray) -> None:
        """Append ``(N,)`` samples (copied, so the caller may reuse its array)."""
        x = _mono(samples, "ArraySink.write")
        if len(x):
            with self._lock:
                self._chunks.append(x.copy())
                self._samples += len(x)

    def played(self) -> np.ndarray:
        """Everything written so far, ``(total,)`` float32."""
        with self._lock:
            if len(self._chunks) > 1:
                # Merge once so the list of pieces does not grow with every frame.
                self._chunks = [np.concatenate(self._chunks)]
            return self._chunks[0].copy() if self._chunks else np.zeros(0, dtype=np.float32)

    @property
    def samples(self) -> int:
        return self._samples

    @property
    def seconds(self) -> float:
        return self._samples / self.sample_rate

    def reset(self) -> None:
        with self._lock:
            self._chunks = []
            self._samples = 0
