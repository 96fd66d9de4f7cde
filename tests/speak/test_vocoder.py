import numpy as np
import pytest

from speak.vocoder import Vocoder
from tests.speak.fakes import ToneCodec


def _codes(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, 101, n), rng.integers(0, 7, n)], axis=1)


def test_vocoder_decodes_one_frame_or_a_batch():
    voc = Vocoder(ToneCodec())
    assert voc.decode(np.array([50, 3])).shape == (320,)
    out = voc.decode(_codes(4))
    assert out.shape == (4 * 320,) and out.dtype == np.float32
    assert voc.frames_decoded == 5 and voc.samples_out == 5 * 320
    assert voc.sample_rate == 8000


def test_vocoder_frame_by_frame_equals_one_shot_with_no_seams():
    codec, codes = ToneCodec(), _codes(20)
    voc = Vocoder(codec)
    streamed = np.concatenate([voc.decode(c) for c in codes] + [voc.flush()])
    np.testing.assert_array_equal(streamed, codec.decode_all(codes))


def test_vocoder_lookahead_codec_returns_its_tail_on_flush():
    codec, codes = ToneCodec(lookahead_frames=2), _codes(10)
    voc = Vocoder(codec)
    parts = [voc.decode(c) for c in codes]
    assert len(parts[0]) == 0 and len(parts[1]) == 0 and len(parts[2]) == 320
    tail = voc.flush()
    assert len(tail) == 2 * 320
    np.testing.assert_array_equal(np.concatenate(parts + [tail]), codec.decode_all(codes))


def test_vocoder_reset_restarts_the_stream():
    codes = _codes(5)
    voc = Vocoder(ToneCodec())
    first = voc.decode(codes)
    voc.decode(codes)
    voc.reset()
    assert voc.frames_decoded == 0
    np.testing.assert_array_equal(voc.decode(codes), first)


def test_vocoder_leaves_codebook_count_checks_to_the_decoder():
    with pytest.raises(ValueError, match="codebooks"):
        Vocoder(ToneCodec()).decode(np.array([[1, 2, 3]]))


@pytest.mark.parametrize(
    "bad, match",
    [(np.zeros((1, 2), np.float32), "integer"), (np.zeros((1, 1, 2), np.int64), "shape"), (["a", "b"], "integer")],
)
def test_vocoder_rejects_malformed_codes(bad, match):
    with pytest.raises(ValueError, match=match):
        Vocoder(ToneCodec()).decode(bad)


def test_vocoder_empty_batch_gives_empty_audio():
    voc = Vocoder(ToneCodec())
    assert voc.decode(np.zeros((0, 2), np.int64)).shape == (0,)
    assert voc.frames_decoded == 0


@pytest.mark.parametrize("raw, expected", [(3.0, 1.0), (-3.0, -1.0), (np.nan, 0.0), (np.inf, 0.0)])
def test_vocoder_output_is_clipped_and_nonfinite_silenced(raw, expected):
    out = Vocoder(ToneCodec(raw_output=raw)).decode(_codes(2))
    assert (out == expected).all()


def test_vocoder_with_codec2():
    from streaming.codecs import load_codec

    codec = load_codec("codec2")
    t = np.arange(8000) / 8000
    codes = codec.encode_all((0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32))
    voc = Vocoder(codec)
    streamed = np.concatenate([voc.decode(c) for c in codes] + [voc.flush()])
    assert streamed.shape == (len(codes) * codec.spec.frame_samples,)
    np.testing.assert_allclose(streamed, np.clip(codec.decode_all(codes), -1, 1), atol=1e-6)
    assert np.sqrt(np.mean(streamed**2)) > 0.01
