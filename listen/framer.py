"""Cut a stream of samples into fixed-length frames (one codec frame = one session clock tick)."""
from __future__ import annotations

import numpy as np

from listen.pcm import AudioInputError


class Framer:
    """Stateful frame cutter.

    ``push`` returns every whole frame available as ``(k, frame_samples)`` float32 (k >= 0) and holds
    the remainder (``pending < frame_samples`` samples) for the next push.
    """

    def __init__(self, frame_samples: int) -> None:
        if isinstance(frame_samples, bool) or not isinstance(frame_samples, (int, np.integer)) or frame_samples <= 0:
            raise AudioInputError(f"frame_samples must be a positive integer, got {frame_samples!r}.")
        self.frame_samples = int(frame_samples)
        self._rest = np.zeros(0, dtype=np.float32)

    @property
    def pending(self) -> int:
        """Samples held back, waiting to complete a frame."""
        return len(self._rest)

    def push(self, x: np.ndarray) -> np.ndarray:
        """``(N,)`` samples -> ``(k, frame_samples)`` whole frames (a fresh array; k may be 0)."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 1:
            raise AudioInputError(f"Framer takes mono (N,) samples, got shape {x.shape}.")
        buf = np.concatenate([self._rest, x]) if len(self._rest) else x
        k = len(buf) // self.frame_samples
        used = k * self.frame_samples
        # Copies, so neither the frames nor the held rest alias the caller's array.
        frames = buf[:used].reshape(k, self.frame_samples).copy()
        self._rest = buf[used:].copy()
        return frames

    def flush(self) -> np.ndarray:
        """The held remainder zero-padded to one frame: ``(1, frame_samples)``, or ``(0, frame_samples)``."""
        if not len(self._rest):
            return np.zeros((0, self.frame_samples), dtype=np.float32)
        frame = np.zeros((1, self.frame_samples), dtype=np.float32)
        frame[0, : len(self._rest)] = self._rest
        self._rest = np.zeros(0, dtype=np.float32)
        return frame

    def reset(self) -> None:
        """Drop the held remainder."""
        self._rest = np.zeros(0, dtype=np.float32)
