import math

import numpy as np
import pytest
import soxr

from listen.listener import Listener, UserFrame
from listen.pcm import AudioInputError
from streaming.frame import AudioFrame
from tests.listen.fakes import FakeCodec

RATES = [8000, 11025, 16000, 22050, 24000, 44100, 48000]
DTYPES = [np.int16, np.int32, np.float32, np.float64, np.uint8]


def _tone(rate: int, seconds: float, channels: int, dtype) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    x = 0.5 * np.sin(2 * np.pi * 300 * t)[:, None] * np.linspace(0.5, 1.0, channels)[None, :]
    if dtype == np.int16:
        return (x * 32767).astype(np.int16)
    if dtype == np.int32:
        return (x * 2**31).astype(np.int32)
    if dtype == np.uint8:
        return (x * 127 + 128).astype(np.uint8)
    return x.astype(dtype)


def _push_in_chunks(listener: Listener, x: np.ndarray, sizes=(160, 1, 733, 0, 2048)) -> list[UserFrame]:
    out, i, k = [], 0, 0
    while i < len(x):
        n = sizes[k % len(sizes)]
        out += listener.push(x[i : i + n])
        i, k = i + n, k + 1
    return out + listener.flush()


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("channels", [1, 2, 6])
@pytest.mark.parametrize("rate", RATES)
def test_listener_accepts_any_rate_and_channel_count(rate, channels, dtype, fake_codec):
    seconds = 0.3
    x = _tone(rate, seconds, channels, dtype)
    if channels == 1:
        x = x[:, 0]
    listener = Listener(fake_codec, rate)
    frames = _push_in_chunks(listener, x)
    spec = fake_codec.spec
    expected = math.ceil(round(len(x) * spec.sample_rate / rate) / spec.frame_samples)
    assert len(frames) == expected == listener.frames_emitted
    assert abs(len(frames) - seconds / (spec.frame_ms / 1000)) <= 1
    assert listener.samples_in == len(x) and listener.nonfinite_samples == 0
    for i, f in enumerate(frames):
        assert f.index == i == f.audio.index
        assert isinstance(f.audio, AudioFrame) and f.audio.sample_rate == spec.sample_rate
        assert f.audio.samples.shape == (spec.frame_samples,) and f.audio.samples.dtype == np.float32
        assert f.audio.timestamp == pytest.approx(i * spec.frame_ms / 1000)
        assert f.codes.shape == (2,) and f.codes.dtype == np.int64
        assert isinstance(f.speech, bool) and 0.0 <= f.voiced_fraction <= 1.0
    assert frames[1].codes[0] > 10  # the tone reached the encoder at its level


@pytest.mark.parametrize("rate", [8000, 44100])
def test_listener_audio_equals_one_shot_resampling(rate, fake_codec):
    """Audio is resampled once, statefully: chunked frames equal one-shot soxr, framed and padded."""
    x = _tone(rate, 0.5, 1, np.float32)[:, 0]
    frames = _push_in_chunks(Listener(fake_codec, rate), x)
    y = soxr.resample(x, rate, 8000, quality="HQ") if rate != 8000 else x
    got = np.concatenate([f.audio.samples for f in frames])
    np.testing.assert_allclose(got[: len(y)], y, atol=1e-6)
    assert not got[len(y) :].any()


def test_listener_counts_and_silences_nonfinite_samples(fake_codec):
    x = np.zeros((640, 2), np.float32)
    x[::7, 0] = np.nan
    x[::11, 1] = np.inf
    listener = Listener(fake_codec, 8000)
    frames = listener.push(x)
    assert listener.nonfinite_samples == len(range(0, 640, 7)) + len(range(0, 640, 11))
    assert len(frames) == 2 and all(np.isfinite(f.audio.samples).all() for f in frames)


def test_listener_flags_speech_frames_and_silence(espeak_speech, fake_codec):
    speech, rate = espeak_speech
    x = np.concatenate([np.zeros(rate // 2, np.float32), speech, np.zeros(rate // 2, np.float32)])
    frames = _push_in_chunks(Listener(fake_codec, rate), x, sizes=(rate // 50,))
    flags = [f.speech for f in frames]
    lead = int(0.5 / 0.04) - 1
    assert not any(flags[:lead]) and not any(flags[-lead:])
    assert sum(flags) >= 0.7 * (len(speech) / rate / 0.04)


def test_listener_with_24k_codec_uses_internal_vad_resampling(espeak_speech):
    speech, rate = espeak_speech
    codec = FakeCodec(sample_rate=24000, frame_ms=80)
    frames = _push_in_chunks(Listener(codec, rate), speech)
    assert frames[0].audio.samples.shape == (1920,)
    assert sum(f.speech for f in frames) >= 0.7 * len(frames)


def test_one_encoder_per_listener_and_reset_restarts_the_clock(fake_codec):
    listener = Listener(fake_codec, 16000)
    first = listener.push(np.zeros(16000, np.int16))
    assert len(fake_codec.encoders) == 1
    assert [int(f.codes[1]) for f in first[-3:]] == [i % 16 for i in range(len(first) - 3, len(first))]
    listener.reset()
    assert listener.frames_emitted == listener.samples_in == 0
    again = listener.push(np.zeros(16000, np.int16))
    assert [f.index for f in again] == [f.index for f in first]
    assert [int(f.codes[1]) for f in again] == [int(f.codes[1]) for f in first]


def test_set_input_rate_keeps_the_timeline_continuous(fake_codec):
    listener = Listener(fake_codec, 16000)
    frames = listener.push(_tone(16000, 0.5, 1, np.float32))
    listener.set_input_rate(48000)
    assert listener.input_rate == 48000
    frames += listener.push(_tone(48000, 0.5, 2, np.int16))
    frames += listener.flush()
    assert [f.index for f in frames] == list(range(len(frames)))
    assert len(frames) == 25  # 1.0 s of 40 ms frames: nothing lost at the switch
    with pytest.raises(AudioInputError):
        listener.set_input_rate(0)


def test_listener_continues_the_clock_after_flush(fake_codec):
    listener = Listener(fake_codec, 8000)
    a = listener.push(np.zeros(500, np.float32)) + listener.flush()
    b = listener.push(np.zeros(320, np.float32))
    assert [f.index for f in a + b] == [0, 1, 2]
    assert listener.buffered_seconds == pytest.approx(0.0)


def test_drop_pending_forgets_the_partial_frame_and_keeps_the_clock(fake_codec):
    listener = Listener(fake_codec, 16000)
    first = listener.push(_tone(16000, 0.3, 1, np.float32))
    assert first and listener.buffered_seconds > 0.01  # the resampler's delay and a partial frame are held
    listener.drop_pending()  # a client's input_audio_buffer.clear
    assert listener.buffered_seconds == pytest.approx(0.0)
    after = listener.push(np.zeros(16000 * 3 // 10, np.float32)) + listener.flush()
    assert [f.index for f in after] == list(range(len(first), len(first) + len(after)))
    assert len(after) == 8  # 0.3 s of 40 ms frames, the last one padded: only what came after the clear
    assert all(float(np.abs(f.audio.samples).max()) < 1e-3 for f in after)  # none of the held tone


def test_listener_accepts_pcm16_bytes(fake_codec):
    frames = Listener(fake_codec, 8000).push(np.full(640, 1000, "<i2").tobytes())
    assert len(frames) == 2
    np.testing.assert_allclose(frames[0].audio.samples, 1000 / 32768)


def test_bad_input_raises_and_leaves_state_untouched(fake_codec):
    listener = Listener(fake_codec, 8000)
    listener.push(np.zeros(100, np.float32))
    for bad in (np.zeros(10, np.complex64), np.zeros((2, 2, 2)), b"\x00"):
        with pytest.raises(AudioInputError):
            listener.push(bad)
    assert listener.samples_in == 100 and len(listener.push(np.zeros(220, np.float32))) == 1
    with pytest.raises(AudioInputError):
        Listener(fake_codec, -1)


@pytest.mark.parametrize("rate", [1, 7, 999, 1e9])
def test_absurd_input_rates_get_a_clear_error(fake_codec, rate):
    # 1 Hz -> 8 kHz would turn a one-million-sample block into 32 GB of float32.
    with pytest.raises(AudioInputError, match="between 1000 and 768000 Hz"):
        Listener(fake_codec, rate)
    listener = Listener(fake_codec, 8000)
    with pytest.raises(AudioInputError, match="between 1000 and 768000 Hz"):
        listener.set_input_rate(rate)
    assert listener.input_rate == 8000


def test_listener_with_codec2():
    from streaming.codecs import load_codec

    codec = load_codec("codec2")
    listener = Listener(codec, 16000)
    x = _tone(16000, 1.0, 2, np.int16)
    frames = _push_in_chunks(listener, x)
    spec = codec.spec
    assert len(frames) == math.ceil(8000 / spec.frame_samples)
    for f in frames:
        assert f.codes.shape == (spec.num_codebooks,) and f.codes.dtype == np.int64
        assert ((0 <= f.codes) & (f.codes < np.array(spec.codebook_sizes))).all()
