"""Edge audio for the Realtime server: integer-ratio resamplers and a clock that follows the client.

Why not soxr here: soxr's streaming resampler releases audio in uneven blocks. Measured on 32 ms
client batches at 24 kHz -> 8 kHz (LQ) it holds back 3..37 ms (a sawtooth, ~20 ms on average), and
8 -> 24 kHz gives 1800, 1800, ..., 2700 samples for frames of 1920. Both are latency and jitter that
the frame clock and the client's playback buffer would have to absorb. The Realtime rates are
integer multiples of the codec rate in the common cases (24 kHz client, 8 kHz codec2; 24 kHz mimi),
so those paths use a polyphase Kaiser-windowed sinc with a fixed 1.5 ms delay and an exact number of
samples per call; other ratios fall back to soxr (:class:`listen.resample.StreamingResampler`).
"""
from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator, Callable

import numpy as np

from listen.resample import StreamingResampler
from streaming.clock import FrameClock, Tick


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


class FollowingClock(FrameClock):
    """A real-time :class:`FrameClock` whose phase follows the arrival of the client's audio.

    A plain clock ticks on a fixed grid; when a frame's audio arrives a few ms after its tick, the
    session substitutes silence (an underrun) and from then on runs one whole frame behind: every
    such hiccup adds a frame of latency for the rest of the conversation. This clock instead

    - waits up to ``max_wait`` for a frame that is due but not yet in (moving its grid later by the
      wait), as long as audio has been streaming (``active``);
    - moves its grid earlier by up to ``step`` per tick while the queued frame has been waiting
      longer than ``target_slack`` (or a whole extra frame is queued),

    so a frame is consumed ``target_slack`` after it arrives, whatever the client's batching.

    Args:
        frame_seconds: the codec frame.
        queued: number of user frames waiting for the model.
        last_arrival: ``time.monotonic()`` of the latest complete frame.
        arrived: set whenever a complete frame arrives.
    """

    def __init__(self, frame_seconds: float, queued: Callable[[], int], last_arrival: Callable[[], float],
                 arrived: asyncio.Event, target_slack: float = 0.010, max_wait: float = 0.040,
                 step: float = 0.004, idle_after: float = 0.5) -> None:
        super().__init__(frame_seconds, realtime=True)
        self.queued, self.last_arrival, self.arrived = queued, last_arrival, arrived
        self.target_slack, self.max_wait, self.step, self.idle_after = target_slack, max_wait, step, idle_after
        self.waits = 0
        self.advances = 0
        self.shift = 0.0  # total grid movement, seconds (+ later, - earlier)

    async def ticks(self, max_frames: int | None = None) -> AsyncIterator[Tick]:
        self._start = self._time()
        self.frames_late = self.frames_issued = 0
        index = 0
        while not self._stopped and (max_frames is None or index < max_frames):
            scheduled = index * self.frame_seconds
            wait = scheduled - self.elapsed
            if wait > 0:
                await self._sleep(wait)
                if self._stopped:
                    break
            await self._follow(scheduled)
            if self._stopped:
                break
            now = self.elapsed
            late_by = max(0.0, now - scheduled)
            if late_by > self.frame_seconds / 2:
                self.frames_late += 1
            self.frames_issued += 1
            yield Tick(index=index, scheduled=scheduled, now=now, late_by=late_by)
            index += 1

    async def _follow(self, scheduled: float) -> None:
        now = time.monotonic()
        if now - self.last_arrival() > self.idle_after or self.elapsed - scheduled > self.frame_seconds / 2:
            return  # the client is not streaming, or we are catching up after a stall
        q = self.queued()
        if q == 0:
            self.arrived.clear()
            t0 = self._time()
            try:
                await asyncio.wait_for(self.arrived.wait(), self.max_wait)
            except asyncio.TimeoutError:
                return  # a real underrun: the session will use silence
            waited = self._time() - t0
            self._start += waited
            self.shift += waited
            self.waits += 1
        else:
            slack = now - self.last_arrival() if q == 1 else self.frame_seconds
            if slack > self.target_slack + 0.002:
                d = min(self.step, slack - self.target_slack)
                self._start -= d
                self.shift -= d
                self.advances += 1
