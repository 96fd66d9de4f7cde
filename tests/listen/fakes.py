"""A tiny fake codec for listen/ tests (the real codecs are tested in tests/streaming)."""
from __future__ import annotations

import numpy as np

from streaming.codecs.base import Codec, CodecSpec, StreamingDecoder, StreamingEncoder


class FakeEncoder(StreamingEncoder):
    """Codes per frame: [frame level 0..255, running frame counter mod 16] (the counter is its state)."""

    def __init__(self, spec: CodecSpec):
        self.spec = spec
        self.count = 0

    def encode(self, pcm: np.ndarray) -> np.ndarray:
        fs = self.spec.frame_samples
        assert pcm.ndim == 1 and len(pcm) % fs == 0, pcm.shape
        frames = pcm.reshape(-1, fs)
        level = np.clip(np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1)) * 255, 0, 255)
        counter = (self.count + np.arange(len(frames))) % 16
        self.count += len(frames)
        return np.stack([level.astype(np.int64), counter.astype(np.int64)], axis=1)

    def reset(self) -> None:
        self.count = 0


class FakeDecoder(StreamingDecoder):
    def __init__(self, spec: CodecSpec):
        self.spec = spec

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return np.zeros(len(codes) * self.spec.frame_samples, dtype=np.float32)

    def reset(self) -> None:
        pass


class FakeCodec(Codec):
    def __init__(self, sample_rate: int = 8000, frame_ms: int = 40):
        self.spec = CodecSpec("fake", sample_rate, sample_rate * frame_ms // 1000, (256, 16))
        self.encoders: list[FakeEncoder] = []

    def encoder(self) -> FakeEncoder:
        enc = FakeEncoder(self.spec)
        self.encoders.append(enc)
        return enc

    def decoder(self) -> FakeDecoder:
        return FakeDecoder(self.spec)
