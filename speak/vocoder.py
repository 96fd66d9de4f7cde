"""The agent's streaming vocoder: codec ids per frame -> PCM, with the decoder's state kept between
calls so consecutive frames join without seams."""
from __future__ import annotations

import numpy as np

from streaming.codecs.base import Codec


class Vocoder:
    """Wraps one ``codec.decoder()`` (one per session).

    ``decode`` takes ``(Q_out,)`` (one frame) or ``(n, Q_out)`` ids and returns ``(m,)`` float32 at
    ``codec.spec.sample_rate``: ``m = n * frame_samples`` for causal codecs; a codec with look-ahead
    returns audio late and ``flush`` gives the tail. Whether ``Q_out < Q`` is allowed is the decoder's call.
    Output is cleaned for the speaker: NaN/Inf -> 0, clipped to [-1, 1].
    """

    def __init__(self, codec: Codec) -> None:
        self.codec = codec
        self.spec = codec.spec
        self._decoder = codec.decoder()
        self.frames_decoded = 0
        self.samples_out = 0

    @property
    def sample_rate(self) -> int:
        return self.spec.sample_rate

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """``(Q_out,)`` or ``(n, Q_out)`` integer ids -> ``(m,)`` float32 PCM."""
        c = np.asarray(codes)
        if c.ndim == 1:
            c = c[None, :]
        if c.ndim != 2:
            raise ValueError(f"Vocoder takes codes of shape (Q,) or (frames, Q), got shape {np.shape(codes)}.")
        if c.dtype.kind not in "iu":
            raise ValueError(f"Vocoder takes integer codec ids, got dtype {c.dtype}.")
        if c.shape[0] == 0:
            return np.zeros(0, dtype=np.float32)
        out = self._clean(self._decoder.decode(c.astype(np.int64, copy=False)))
        self.frames_decoded += c.shape[0]
        self.samples_out += len(out)
        return out

    def flush(self) -> np.ndarray:
        """Audio the decoder still holds for look-ahead ``(m,)`` (empty for causal codecs)."""
        out = self._clean(self._decoder.flush())
        self.samples_out += len(out)
        return out

    def reset(self) -> None:
        """Start a new stream (e.g. after the agent was cut off)."""
        self._decoder.reset()
        self.frames_decoded = 0
        self.samples_out = 0

    @staticmethod
    def _clean(pcm: np.ndarray) -> np.ndarray:
        y = np.asarray(pcm, dtype=np.float32).reshape(-1)
        if not np.all(np.isfinite(y)):
            y = np.nan_to_num(y, nan=0.0, posinf=0.0, neginf=0.0)
        return np.clip(y, -1.0, 1.0)
