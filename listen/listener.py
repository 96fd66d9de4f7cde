"""The input pipeline of one session: PCM at any rate/channel count -> user token frames.

Pipeline (audio is resampled exactly once, straight to the codec rate)::

    pcm (N,) / (N, C), any dtype   -> to_float32_mono       (N,)  float32 at input_rate
                                   -> StreamingResampler    (M,)  float32 at codec rate
                                   -> Framer                (k, frame_samples)
                                   -> VAD flag per frame    + codec encoder -> (k, Q) int64
                                   -> k UserFrames
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from listen.framer import Framer
from listen.pcm import AudioInputError, pcm16_bytes_to_float32, to_float32_mono_counted
from listen.resample import StreamingResampler, check_rate
from listen.vad import VoiceActivityDetector
from streaming.codecs.base import Codec
from streaming.frame import AudioFrame


# Microphone and telephony rates span 8..384 kHz; far outside that a "rate" is a mistake (channels or
# samples passed as the rate), and resampling 1 Hz to the codec's rate would multiply every block
# thousands of times over in memory.
MIN_INPUT_RATE = 1000
MAX_INPUT_RATE = 768000


def _check_input_rate(rate: float) -> float:
    check_rate(rate, "input sample rate")
    if not MIN_INPUT_RATE <= rate <= MAX_INPUT_RATE:
        raise AudioInputError(f"The input sample rate must be between {MIN_INPUT_RATE} and {MAX_INPUT_RATE} Hz, "
                              f"got {rate!r}.")
    return rate


@dataclass(frozen=True)
class UserFrame:
    """One clock tick of the user's side.

    Attributes:
        index: frame number on the session clock (0, 1, 2, ...).
        audio: the frame's samples ``(frame_samples,)`` at the codec rate, ``timestamp = index * frame seconds``.
        codes: ``(Q,)`` int64, the codec ids of this frame.
        speech: the VAD's decision for this frame.
        voiced_fraction: fraction of the frame's 10 ms sub-frames webrtcvad called voiced.
    """

    index: int
    audio: AudioFrame
    codes: np.ndarray
    speech: bool
    voiced_fraction: float


class Listener:
    """Turns a session's incoming PCM into :class:`UserFrame`\\ s, one per codec frame.

    Args:
        codec: the session's codec; one encoder is created per Listener.
        input_rate: sample rate of the PCM passed to ``push`` (changeable with ``set_input_rate``).
        vad_aggressiveness: webrtcvad mode 0..3.
        resample_quality: soxr quality; "HQ" by default, "LQ" trades some fidelity for less buffering.

    Counters: ``frames_emitted``, ``samples_in`` (input samples per channel), ``nonfinite_samples``
    (NaN/Inf values replaced by silence).
    """

    def __init__(
        self,
        codec: Codec,
        input_rate: int,
        vad_aggressiveness: int = 2,
        *,
        resample_quality: str = "HQ",
    ) -> None:
        self.codec = codec
        self.spec = codec.spec
        self.resample_quality = resample_quality
        self._input_rate = _check_input_rate(input_rate)
        self._resampler = StreamingResampler(input_rate, self.spec.sample_rate, resample_quality)
        self._framer = Framer(self.spec.frame_samples)
        self._vad = VoiceActivityDetector(self.spec.sample_rate, vad_aggressiveness)
        self._encoder = codec.encoder()
        self._carry = np.zeros(0, dtype=np.float32)  # resampled audio left over by a rate change
        self._seconds_in = 0.0
        self.frames_emitted = 0
        self.samples_in = 0
        self.nonfinite_samples = 0

    @property
    def input_rate(self) -> int:
        return self._input_rate

    @property
    def frame_seconds(self) -> float:
        """Length of one frame (one clock tick) in seconds."""
        return self.spec.frame_samples / self.spec.sample_rate

    @property
    def buffered_seconds(self) -> float:
        """Audio received but not yet emitted in a frame (resampler buffering plus a partial frame)."""
        return max(0.0, self._seconds_in - self.frames_emitted * self.frame_seconds)

    def push(self, pcm: np.ndarray | bytes) -> list[UserFrame]:
        """Feed PCM ``(N,)`` or ``(N, C)`` (any dtype :func:`to_float32_mono` takes, or PCM16 mono bytes)
        at ``input_rate``; return the frames it completes (possibly none)."""
        if isinstance(pcm, (bytes, bytearray, memoryview)):
            x, bad = pcm16_bytes_to_float32(pcm), 0
        else:
            x, bad = to_float32_mono_counted(pcm)
        self.samples_in += len(x)
        self.nonfinite_samples += bad
        self._seconds_in += len(x) / self._input_rate
        y = self._resampler.process(x)
        if len(self._carry):
            y, self._carry = np.concatenate([self._carry, y]), np.zeros(0, dtype=np.float32)
        return self._emit(self._framer.push(y))

    def flush(self) -> list[UserFrame]:
        """End of input: emit the resampler's tail and the last partial frame, zero-padded.

        The listener stays usable: a later ``push`` continues the same clock (the next index).
        """
        y = np.concatenate([self._carry, self._resampler.flush()])
        self._carry = np.zeros(0, dtype=np.float32)
        frames = np.concatenate([self._framer.push(y), self._framer.flush()])
        out = self._emit(frames)
        # Padding made the emitted audio longer than the input; restart the lag accounting from here.
        self._seconds_in = self.frames_emitted * self.frame_seconds
        return out

    def set_input_rate(self, rate: int) -> None:
        """Switch the incoming rate (e.g. a new device); audio already received is kept, not lost."""
        _check_input_rate(rate)
        if rate == self._input_rate:
            return
        # The old resampler's held-back audio joins the next push, so the timeline stays continuous.
        self._carry = np.concatenate([self._carry, self._resampler.flush()])
        self._resampler = StreamingResampler(rate, self.spec.sample_rate, self.resample_quality)
        self._input_rate = rate

    def drop_pending(self) -> None:
        """Forget audio received but not yet framed (the resampler's held-back samples and the partial frame):
        a client's ``input_audio_buffer.clear``. The clock, the VAD and the encoder go on as they were."""
        self._resampler.reset()
        self._framer.reset()
        self._carry = np.zeros(0, dtype=np.float32)
        self._seconds_in = self.frames_emitted * self.frame_seconds

    def reset(self) -> None:
        """Start a new stream: clear all state, the clock (index 0) and the counters."""
        self._resampler.reset()
        self._framer.reset()
        self._vad.reset()
        self._encoder.reset()
        self._carry = np.zeros(0, dtype=np.float32)
        self._seconds_in = 0.0
        self.frames_emitted = 0
        self.samples_in = 0
        self.nonfinite_samples = 0

    def _emit(self, frames: np.ndarray) -> list[UserFrame]:
        """``(k, frame_samples)`` -> k UserFrames (one encoder call for all k)."""
        k = len(frames)
        if k == 0:
            return []
        codes = np.asarray(self._encoder.encode(frames.reshape(-1)))
        if codes.ndim != 2 or codes.shape[0] != k:
            raise RuntimeError(
                f"Codec {self.spec.name!r} encoder returned codes of shape {codes.shape} for {k} frames; "
                f"expected ({k}, {self.spec.num_codebooks})."
            )
        codes = codes.astype(np.int64, copy=False)
        rate, fs = self.spec.sample_rate, self.spec.frame_samples
        out = []
        for i in range(k):
            index = self.frames_emitted + i
            speech, fraction = self._vad.is_speech(frames[i])
            audio = AudioFrame(samples=frames[i], sample_rate=rate, timestamp=index * fs / rate, index=index)
            out.append(UserFrame(index, audio, codes[i].copy(), speech, fraction))
        self.frames_emitted += k
        return out
