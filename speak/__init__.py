"""Output side: codec ids -> streaming vocoder -> PCM -> playout (jitter buffer or in-memory sink).
Imports only ``streaming`` (plus numpy)."""
from speak.playout import ArraySink, PlayoutBuffer
from speak.vocoder import Vocoder

__all__ = ["ArraySink", "PlayoutBuffer", "Vocoder"]
