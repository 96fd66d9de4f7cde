import numpy as np
import pytest
import soxr

from listen.vad import VoiceActivityDetector


def _frames(x: np.ndarray, n: int) -> list[np.ndarray]:
    return [x[i : i + n] for i in range(0, len(x) - n + 1, n)]


@pytest.mark.parametrize("rate", [8000, 16000, 24000, 44100])
def test_vad_flags_espeak_speech_and_not_silence(espeak_speech, rate):
    speech, speech_rate = espeak_speech
    x = soxr.resample(speech, speech_rate, rate).astype(np.float32)
    frame = rate * 80 // 1000
    silence = np.zeros(rate, np.float32)
    vad = VoiceActivityDetector(rate)
    flags_silence = [vad.is_speech(f)[0] for f in _frames(silence, frame)]
    results = [vad.is_speech(f) for f in _frames(x, frame)]
    assert not any(flags_silence)
    loud = [r for r, f in zip(results, _frames(x, frame)) if np.sqrt(np.mean(f**2)) > 0.05]
    # Most clearly voiced frames are flagged, with substantial voiced fractions.
    assert sum(flag for flag, _ in loud) >= 0.7 * len(loud)
    assert np.mean([frac for _, frac in loud]) > 0.6
    vad.reset()
    assert not any(vad.is_speech(f)[0] for f in _frames(silence, frame))


def test_quiet_frames_are_never_speech(espeak_speech):
    speech, rate = espeak_speech
    x = soxr.resample(speech, rate, 16000).astype(np.float32)
    vad = VoiceActivityDetector(16000, aggressiveness=0, min_rms=1.0)
    assert not any(vad.is_speech(f)[0] for f in _frames(x, 640))


def test_low_noise_is_not_speech():
    noise = (np.random.default_rng(0).standard_normal(16000) * 3e-4).astype(np.float32)
    vad = VoiceActivityDetector(16000)
    assert not any(vad.is_speech(f)[0] for f in _frames(noise, 1280))


def test_frames_not_a_multiple_of_10ms_carry_over(espeak_speech):
    speech, rate = espeak_speech
    vad = VoiceActivityDetector(rate)  # 22050 Hz: resampled internally to 16 kHz
    fracs = [vad.is_speech(f)[1] for f in _frames(speech, 1000)]  # 45.35 ms frames
    assert all(0.0 <= f <= 1.0 for f in fracs) and max(fracs) == 1.0
    assert vad.is_speech(np.zeros(0, np.float32)) == (False, 0.0)


def test_reset_makes_detection_repeatable(espeak_speech):
    speech, rate = espeak_speech
    vad = VoiceActivityDetector(rate)
    first = [vad.is_speech(f) for f in _frames(speech, 1764)]
    vad.reset()
    assert [vad.is_speech(f) for f in _frames(speech, 1764)] == first


@pytest.mark.parametrize("kwargs", [{"aggressiveness": 4}, {"min_voiced_fraction": 1.5}, {"sample_rate": 0}])
def test_bad_settings_raise(kwargs):
    with pytest.raises(ValueError):
        VoiceActivityDetector(**{"sample_rate": 16000, **kwargs})
