"""A tiny fake codec for speak/ tests: code 0 sets a tone's amplitude, the phase runs on across calls
(so a seam between calls would show), and an optional look-ahead holds audio back like SNAC."""
from __future__ import annotations

import numpy as np

from streaming.codecs.base import Codec, CodecSpec, StreamingDecoder, StreamingEncoder


class ToneDecoder(StreamingDecoder):
    def __init__(self, spec: CodecSpec, raw_output: float | None = None):
        self.spec = spec
        self.raw_output = raw_output  # if set, emit this constant (to test output cleaning)
        self.reset()

    def reset(self) -> None:
        self.phase = 0
        self.held = np.zeros(0, dtype=np.float32)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        assert codes.ndim == 2 and codes.dtype == np.int64, (codes.shape, codes.dtype)
        if codes.shape[1] != self.spec.num_codebooks:
            raise ValueError(f"expected {self.spec.num_codebooks} codebooks, got {codes.shape[1]}")
        fs = self.spec.frame_samples
        n = np.arange(self.phase, self.phase + len(codes) * fs)
        amp = np.repeat(codes[:, 0] / 100.0, fs)
        self.phase += len(codes) * fs
        pcm = (amp * np.sin(2 * np.pi * 200 * n / self.spec.sample_rate)).astype(np.float32)
        if self.raw_output is not None:
            pcm[:] = self.raw_output
        pcm = np.concatenate([self.held, pcm])
        keep = self.spec.lookahead_frames * fs
        self.held = pcm[len(pcm) - keep :] if keep else np.zeros(0, np.float32)
        return pcm[: len(pcm) - keep]

    def flush(self) -> np.ndarray:
        out, self.held = self.held, np.zeros(0, dtype=np.float32)
        return out


class _NoEncoder(StreamingEncoder):
    def encode(self, pcm: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def reset(self) -> None:
        pass


class ToneCodec(Codec):
    def __init__(self, lookahead_frames: int = 0, raw_output: float | None = None):
        self.spec = CodecSpec("tone", 8000, 320, (101, 7), lookahead_frames=lookahead_frames)
        self.raw_output = raw_output

    def encoder(self) -> StreamingEncoder:
        return _NoEncoder()

    def decoder(self) -> ToneDecoder:
        return ToneDecoder(self.spec, self.raw_output)
