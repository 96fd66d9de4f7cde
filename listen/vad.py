"""Voice activity flags per codec frame, from WebRTC's VAD on 10 ms sub-frames.

webrtcvad accepts only 8/16/32/48 kHz and 10/20/30 ms int16 buffers, so a frame at another rate is
resampled (statefully) to 16 kHz first, and a frame is judged by the fraction of its 10 ms
sub-frames that webrtcvad calls voiced. Sub-frames that straddle frames carry over to the next call.
"""
from __future__ import annotations

import numpy as np
import webrtcvad

from listen.pcm import AudioInputError, float32_to_pcm16
from listen.resample import StreamingResampler, check_rate

VAD_RATES = (8000, 16000, 32000, 48000)
_FALLBACK_RATE = 16000


class VoiceActivityDetector:
    """``is_speech(frame)`` -> (decision, voiced fraction) for consecutive frames of one stream.

    Args:
        sample_rate: rate of the frames passed in (any positive rate).
        aggressiveness: webrtcvad mode 0 (lenient) .. 3 (strict).
        min_voiced_fraction: a frame is speech when at least this fraction of its 10 ms sub-frames is voiced.
        min_rms: a frame quieter than this RMS is never speech (webrtcvad reacts to faint noise).
    """

    def __init__(
        self,
        sample_rate: int,
        aggressiveness: int = 2,
        min_voiced_fraction: float = 0.5,
        min_rms: float = 1e-3,
    ) -> None:
        check_rate(sample_rate)
        if aggressiveness not in (0, 1, 2, 3):
            raise ValueError(f"VAD aggressiveness must be 0, 1, 2 or 3, got {aggressiveness!r}.")
        if not 0.0 <= min_voiced_fraction <= 1.0:
            raise ValueError(f"min_voiced_fraction must be in [0, 1], got {min_voiced_fraction!r}.")
        self.sample_rate = sample_rate
        self.aggressiveness = aggressiveness
        self.min_voiced_fraction = float(min_voiced_fraction)
        self.min_rms = float(min_rms)
        self.vad_rate = int(sample_rate) if sample_rate in VAD_RATES else _FALLBACK_RATE
        self._sub = self.vad_rate // 100  # samples per 10 ms sub-frame
        # QQ: the VAD only looks below 4 kHz, and QQ adds ~0.1 ms delay against HQ's tens of ms,
        # which keeps the flag aligned with the frame it describes.
        self._resampler = (
            None if self.vad_rate == sample_rate else StreamingResampler(sample_rate, self.vad_rate, quality="QQ")
        )
        self._vad = webrtcvad.Vad(aggressiveness)
        self._rest = np.zeros(0, dtype=np.int16)
        self._last_fraction = 0.0

    def is_speech(self, frame: np.ndarray) -> tuple[bool, float]:
        """``(N,)`` float32 frame -> (is speech, fraction of its 10 ms sub-frames that are voiced)."""
        frame = np.asarray(frame, dtype=np.float32)
        if frame.ndim != 1:
            raise AudioInputError(f"VAD takes mono (N,) frames, got shape {frame.shape}.")
        if len(frame) == 0:
            return False, 0.0
        x = frame if self._resampler is None else self._resampler.process(frame)
        pcm = float32_to_pcm16(x)
        if len(self._rest):
            pcm = np.concatenate([self._rest, pcm])
        n = len(pcm) // self._sub
        self._rest = pcm[n * self._sub :].copy()
        if n:
            voiced = sum(
                self._vad.is_speech(pcm[i * self._sub : (i + 1) * self._sub].tobytes(), self.vad_rate)
                for i in range(n)
            )
            self._last_fraction = voiced / n
        # else: a frame shorter than 10 ms; keep the previous judgement rather than guess.
        rms = float(np.sqrt(np.mean(np.square(frame, dtype=np.float64))))
        speech = rms >= self.min_rms and self._last_fraction >= self.min_voiced_fraction and self._last_fraction > 0
        return bool(speech), float(self._last_fraction)

    def reset(self) -> None:
        """Forget carried sub-frame samples, resampler state and webrtcvad's history."""
        if self._resampler is not None:
            self._resampler.reset()
        self._vad = webrtcvad.Vad(self.aggressiveness)
        self._rest = np.zeros(0, dtype=np.int16)
        self._last_fraction = 0.0
