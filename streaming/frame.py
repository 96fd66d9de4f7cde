"""The audio frame: the unit that moves between listen/, think/ and speak/."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class AudioFrame:
    """A block of mono float32 audio with its place on the session timeline.

    Attributes:
        samples: shape ``(N,)``, float32 in [-1, 1], mono.
        sample_rate: samples per second of ``samples``.
        timestamp: seconds from the session start to the first sample.
        index: the frame number on the session clock (one per codec frame), -1 if not clocked.
    """

    samples: np.ndarray
    sample_rate: int
    timestamp: float = 0.0
    index: int = -1
    meta: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.samples.ndim != 1:
            raise ValueError(f"AudioFrame samples must be mono (N,), got shape {self.samples.shape}.")
        if self.samples.dtype != np.float32:
            object.__setattr__(self, "samples", self.samples.astype(np.float32))
        if self.sample_rate <= 0:
            raise ValueError(f"AudioFrame sample_rate must be positive, got {self.sample_rate}.")

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return len(self.samples) / self.sample_rate

    @property
    def end(self) -> float:
        """Timestamp just after the last sample."""
        return self.timestamp + self.duration

    def rms(self) -> float:
        """Root-mean-square level (0 for an empty frame)."""
        if len(self.samples) == 0:
            return 0.0
        return float(np.sqrt(np.mean(np.square(self.samples, dtype=np.float64))))
