"""The Realtime API's audio wire formats: PCM16 at a chosen rate, and G.711 mu-law / A-law at 8 kHz.

A client names one per direction in ``session.update`` (GA ``{"type": "audio/pcm", "rate": 24000}``,
``{"type": "audio/pcmu"}``, ``{"type": "audio/pcma"}``; beta ``"pcm16"``, ``"g711_ulaw"``, ``"g711_alaw"``).
G.711 is what telephone bridges carry (a phone call's media stream is 8 kHz mu-law or A-law, one byte a
sample), so a phone gateway can talk to the agent without transcoding. The codec is the standard library's
``audioop`` (the ``audioop-lts`` backport from Python 3.13, where it left the standard library).
"""
from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass

import numpy as np

from listen.pcm import float32_to_pcm16_bytes, pcm16_bytes_to_float32

G711_RATE = 8000
TYPES = {"pcm16": "audio/pcm", "pcmu": "audio/pcmu", "pcma": "audio/pcma"}  # encoding -> GA type
BETA_NAMES = {"pcm16": "pcm16", "g711_ulaw": "pcmu", "g711_alaw": "pcma"}    # beta string -> encoding


@dataclass(frozen=True)
class WireFormat:
    """One direction's audio on the wire.

    Attributes:
        encoding: ``pcm16`` (little-endian 16-bit), ``pcmu`` (G.711 mu-law) or ``pcma`` (G.711 A-law).
        rate: samples per second (G.711: always 8000).
    """

    encoding: str = "pcm16"
    rate: int = 24000

    def __post_init__(self) -> None:
        if self.encoding not in TYPES:
            raise ValueError(f"Unknown audio encoding {self.encoding!r}; known: {', '.join(TYPES)}.")
        if self.encoding != "pcm16" and self.rate != G711_RATE:
            raise ValueError(f"G.711 audio is {G711_RATE} Hz, got {self.rate}.")

    @property
    def sample_bytes(self) -> int:
        return 2 if self.encoding == "pcm16" else 1

    def view(self) -> dict:
        """The GA ``format`` object, as ``session.updated`` reports it (G.711's rate is implied)."""
        return {"type": TYPES[self.encoding], "rate": self.rate} if self.encoding == "pcm16" \
            else {"type": TYPES[self.encoding]}

    def decode(self, data: bytes) -> np.ndarray:
        """Wire bytes (a whole number of samples) -> float32 ``(n,)`` in [-1, 1]."""
        if self.encoding == "pcm16":
            return pcm16_bytes_to_float32(data)
        codec = _audioop()
        lin = codec.ulaw2lin(data, 2) if self.encoding == "pcmu" else codec.alaw2lin(data, 2)
        return pcm16_bytes_to_float32(lin)

    def encode(self, pcm: np.ndarray) -> bytes:
        """float32 ``(n,)`` -> wire bytes (clipped to full scale)."""
        lin = float32_to_pcm16_bytes(pcm)
        if self.encoding == "pcm16":
            return lin
        codec = _audioop()
        return codec.lin2ulaw(lin, 2) if self.encoding == "pcmu" else codec.lin2alaw(lin, 2)


@functools.cache
def _audioop():
    """Imported once (it runs per frame of a G.711 session), quietly: Python 3.11-3.12 warn that it leaves in
    3.13, where the audioop-lts backport provides it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop
    return audioop
