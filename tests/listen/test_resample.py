import numpy as np
import pytest
import soxr

from listen.pcm import AudioInputError
from listen.resample import InputDecimator, OutputResampler, StreamingResampler

RATE_PAIRS = [(48000, 8000), (44100, 24000), (24000, 16000), (8000, 24000), (11025, 8000), (22050, 48000), (12345, 16000)]
CHUNK_SIZES = [1, 2, 7, 64, 160, 441, 1000, 4096]


def _signal(rate: int, seconds: float = 0.5, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    return (0.4 * np.sin(2 * np.pi * 440 * t) + 0.1 * rng.standard_normal(len(t))).astype(np.float32)


def _run_chunked(r: StreamingResampler, x: np.ndarray, sizes) -> np.ndarray:
    out, i, k = [], 0, 0
    while i < len(x):
        n = sizes[k % len(sizes)]
        out.append(r.process(x[i : i + n]))
        i, k = i + n, k + 1
    out.append(r.flush())
    return np.concatenate(out)


@pytest.mark.parametrize("in_rate, out_rate", RATE_PAIRS)
def test_resampler_chunked_output_matches_one_shot(in_rate, out_rate):
    x = _signal(in_rate)
    expected = soxr.resample(x, in_rate, out_rate, quality="HQ")
    for sizes in ([n] for n in CHUNK_SIZES[2:]):
        got = _run_chunked(StreamingResampler(in_rate, out_rate), x, sizes)
        assert got.shape == expected.shape and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, atol=1e-6)
    # Irregular chunk sizes, including zero-length ones, on one reused resampler.
    r = StreamingResampler(in_rate, out_rate)
    np.testing.assert_allclose(_run_chunked(r, x, [0, 1, 7, 0, 333, 2, 1000]), expected, atol=1e-6)
    # flush() ended the stream; the same object resamples a new stream from scratch.
    np.testing.assert_allclose(_run_chunked(r, x, [160]), expected, atol=1e-6)


def test_equal_rates_take_identity_path():
    r = StreamingResampler(16000, 16000)
    x = _signal(16000)
    y = r.process(x)
    assert r.identity and y is not x
    np.testing.assert_array_equal(y, x)
    assert r.flush().shape == (0,)


def test_output_length_tracks_the_rate_ratio():
    r = StreamingResampler(44100, 8000)
    x = _signal(44100, seconds=2.0)
    assert len(_run_chunked(r, x, [441])) == round(len(x) * 8000 / 44100)


def test_reset_drops_held_audio_and_restarts():
    x = _signal(48000)
    r = StreamingResampler(48000, 16000)
    r.process(_signal(48000, seed=5)[:12345])
    r.reset()
    np.testing.assert_allclose(_run_chunked(r, x, [480]), soxr.resample(x, 48000, 16000), atol=1e-6)


@pytest.mark.parametrize("bad", [0, -8000, float("nan"), float("inf"), "16k", None, True])
def test_nonpositive_or_invalid_rate_raises_clear_error(bad):
    with pytest.raises(AudioInputError, match="positive number of Hz"):
        StreamingResampler(bad, 16000)
    with pytest.raises(AudioInputError, match="positive number of Hz"):
        StreamingResampler(16000, bad)


def test_unknown_quality_and_stereo_input_raise():
    with pytest.raises(ValueError, match="quality"):
        StreamingResampler(16000, 8000, quality="best")
    with pytest.raises(AudioInputError, match="mono"):
        StreamingResampler(16000, 8000).process(np.zeros((10, 2), np.float32))


# ---- exact integer-ratio resamplers (the Realtime server's live path) ----------------------------------

def test_output_resampler_gives_steady_frames_and_clean_audio():
    r = OutputResampler(8000, 24000)
    t = np.arange(8000 * 2) / 8000
    x = (0.5 * np.sin(2 * np.pi * 3000 * t)).astype(np.float32)
    parts = [r.process(x[i:i + 640]) for i in range(0, len(x), 640)]
    assert {len(p) for p in parts} == {1920}  # every 80 ms frame -> exactly 80 ms at 24 kHz
    y = np.concatenate(parts)
    spec = np.abs(np.fft.rfft(y[6000:30000] * np.hanning(24000)))
    f = np.fft.rfftfreq(24000, 1 / 24000)
    main, image = spec[np.argmin(abs(f - 3000))], spec[np.argmin(abs(f - 5000))]
    assert 20 * np.log10(image / main) < -70
    impulse = np.zeros(640, np.float32)
    impulse[100] = 1
    r.reset()
    assert abs(int(np.argmax(r.process(impulse))) - 300) <= 40  # ~1.5 ms of delay
    assert OutputResampler(8000, 44100).process(np.zeros(640, np.float32)).dtype == np.float32  # soxr fallback


def test_input_decimator_is_chunk_invariant_and_rejects_aliases():
    assert InputDecimator.for_rates(24000, 8000).factor == 3
    assert InputDecimator.for_rates(22050, 8000) is None and InputDecimator.for_rates(8000, 8000) is None
    rng = np.random.default_rng(0)
    x = rng.standard_normal(7001).astype(np.float32) * 0.1
    d = InputDecimator(3)
    whole = d.process(x)
    d.reset()
    pieces, i = [], 0
    while i < len(x):
        n = int(rng.integers(1, 900))
        pieces.append(d.process(x[i:i + n]))
        i += n
    assert np.allclose(np.concatenate(pieces), whole, atol=1e-6) and len(whole) == -(-len(x) // 3)
    t = np.arange(24000) / 24000
    d.reset()
    alias = d.process((0.5 * np.sin(2 * np.pi * 7000 * t)).astype(np.float32))  # would fold to 1 kHz
    assert np.sqrt(np.mean(alias[200:] ** 2)) < 1e-3
