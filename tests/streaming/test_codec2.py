"""codec2: token layout along codec2's bit fields, bit-exact streaming, per-stream decoder state."""
from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest

import pycodec2  # noqa: F401  (core dependency: never skipped)

from streaming.codecs import load_codec  # noqa: E402
from streaming.codecs.codec2 import _MODES, _PYCODEC2_MODE, _Codec2Rand, token_widths  # noqa: E402

SR = 8000


def sweep_with_bursts(seconds: float, seed: int = 0) -> np.ndarray:
    """A 100 Hz -> 1.7 kHz sine sweep with amplitude swells and noise bursts (speech-like-ish)."""
    t = np.arange(int(seconds * SR)) / SR
    rng = np.random.default_rng(seed)
    tone = 0.3 * np.sin(2 * np.pi * (100 * t + 400 * t**2)) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    bursts = (np.sin(2 * np.pi * 1.3 * t) > 0.7) * 0.1 * rng.standard_normal(len(t))
    return (tone + bursts).astype(np.float32)


def whole_frames(x: np.ndarray, frame: int) -> np.ndarray:
    return x[: len(x) // frame * frame]


def odd_chunks(n_frames: int, seed: int) -> list[int]:
    """Chunk sizes (in frames) like 1, 3, 2, 5, ... summing to n_frames."""
    rng, out = np.random.default_rng(seed), []
    while sum(out) < n_frames:
        out.append(int(min(rng.integers(1, 6), n_frames - sum(out))))
    return out


@pytest.mark.parametrize("mode", list(_MODES))
def test_codec2_token_widths_cover_exactly_the_codec2_frame_bits(mode):
    c2 = pycodec2.Codec2(_PYCODEC2_MODE[mode])
    assert sum(token_widths(mode)) == c2.bits_per_frame()
    assert max(token_widths(mode)) <= 11


def test_codec2_default_is_700c_at_80ms_with_six_small_codebooks():
    spec = load_codec("codec2").spec
    assert spec.options == {"mode": "700C", "frame_ms": 80}
    assert spec.sample_rate == SR and spec.frame_samples == 640 and spec.lookahead_frames == 0
    assert spec.codebook_sizes == (512, 512, 1024, 512, 512, 1024)


@pytest.mark.parametrize("mode,q", [("3200", 28), ("2400", 24), ("1600", 18), ("1400", 14), ("1300", 14), ("1200", 10)])
def test_codec2_codebooks_per_80ms_frame(mode, q):
    assert load_codec("codec2", mode=mode).spec.num_codebooks == q


@pytest.mark.parametrize("mode", list(_MODES))
def test_codec2_tokens_map_one_to_one_onto_the_codec2_bitstream(mode):
    codec = load_codec("codec2", mode=mode)
    x = whole_frames(sweep_with_bursts(1.0), codec.spec.frame_samples)
    codes = codec.encode_all(x)
    assert codes.dtype == np.int64 and (codes >= 0).all() and (codes < np.array(codec.spec.codebook_sizes)).all()
    # Same bytes as libcodec2's own encoder ...
    ref = pycodec2.Codec2(_PYCODEC2_MODE[mode])
    ints = np.round(x * 32767).astype(np.int16)
    sub = ref.samples_per_frame()
    raw = [ref.encode(ints[i : i + sub]) for i in range(0, len(ints), sub)]
    per = len(token_widths(mode))
    assert [codec.packer.to_bytes(r) for r in codes.reshape(-1, per)] == raw
    # ... and any bit pattern survives bytes -> tokens -> bytes.
    rng = np.random.default_rng(1)
    for _ in range(50):
        word = int(rng.integers(0, 2**62)) & ((1 << codec.packer.nbits) - 1)
        frame = (word << (8 * codec.packer.nbytes - codec.packer.nbits)).to_bytes(codec.packer.nbytes, "big")
        assert codec.packer.to_bytes(np.array(codec.packer.to_tokens(frame))) == frame


@pytest.mark.parametrize("mode", ["700C", "1300", "3200"])
def test_codec2_streamed_encode_is_bit_exact_with_one_shot(mode):
    codec = load_codec("codec2", mode=mode)
    f = codec.spec.frame_samples
    x = whole_frames(sweep_with_bursts(2.0), f)
    one_shot = codec.encode_all(x)
    for seed in range(3):
        enc, pos, parts = codec.encoder(), 0, []
        for n in odd_chunks(len(x) // f, seed):
            parts.append(enc.encode(x[pos : pos + n * f]))
            pos += n * f
        assert np.array_equal(np.concatenate(parts), one_shot)


def _rng_controlled() -> bool:
    return _Codec2Rand.get().cell is not None


@pytest.mark.parametrize("mode", ["700C", "1300", "3200"])
def test_codec2_streamed_decode_is_bit_exact_with_one_shot(mode):
    codec = load_codec("codec2", mode=mode)
    codes = codec.encode_all(whole_frames(sweep_with_bursts(2.0), codec.spec.frame_samples))
    one_shot = codec.decode_all(codes)
    assert len(one_shot) == len(codes) * codec.spec.frame_samples
    for seed in range(3):
        dec, pos, parts = codec.decoder(), 0, []
        for n in odd_chunks(len(codes), seed):
            parts.append(dec.decode(codes[pos : pos + n]))
            pos += n
        assert np.array_equal(np.concatenate(parts), one_shot)


def test_codec2_decoder_output_does_not_depend_on_other_streams():
    # codec2's phase RNG is process-global; each decoder must carry its own seed.
    codec = load_codec("codec2")
    codes = codec.encode_all(sweep_with_bursts(1.0))
    solo = codec.decode_all(codes)
    a, b = codec.decoder(), codec.decoder()
    out_a = []
    for i in range(len(codes)):
        out_a.append(a.decode(codes[i : i + 1]))
        b.decode(codes[::-1][i : i + 1])  # another session decoding in between
    assert np.array_equal(np.concatenate(out_a), solo)


def test_codec2_reset_starts_a_fresh_stream():
    codec = load_codec("codec2")
    x = sweep_with_bursts(0.64)
    enc, dec = codec.encoder(), codec.decoder()
    first = enc.encode(x)
    first_audio = dec.decode(first)
    enc.reset()
    dec.reset()
    assert np.array_equal(enc.encode(x), first)
    if _rng_controlled():
        assert np.array_equal(dec.decode(first), first_audio)


def test_codec2_3200_keeps_the_speech_envelope(tmp_path):
    import soundfile as sf
    import soxr

    wav = os.path.join(tmp_path, "s.wav")
    subprocess.run(["espeak-ng", "-w", wav, "the quick brown fox jumps over the lazy dog"], check=True)
    x, sr = sf.read(wav, dtype="float32")
    codec = load_codec("codec2", mode=3200)
    x = whole_frames(soxr.resample(x, sr, SR).astype(np.float32), codec.spec.frame_samples)
    y = codec.decode_all(codec.encode_all(x))

    def envelope(v):
        return np.sqrt((v.reshape(-1, 160) ** 2).mean(axis=1))

    ex, ey = envelope(x), envelope(y)
    # codec2 delays by about one 20 ms frame; take the best small lag.
    corr = max(np.corrcoef(ex[: len(ex) - k], ey[k:])[0, 1] for k in range(4))
    assert corr > 0.9
    assert 0.5 < np.sqrt((y**2).mean()) / np.sqrt((x**2).mean()) < 2.0


def test_codec2_silence_codes_decode_to_near_silence():
    codec = load_codec("codec2")
    silence = codec.silence_codes()
    assert silence.shape == (codec.spec.num_codebooks,)
    y = codec.decode_all(np.tile(silence, (10, 1)))
    assert np.sqrt((y**2).mean()) < 0.01


def test_codec2_clips_out_of_range_pcm():
    codec = load_codec("codec2")
    x = sweep_with_bursts(0.64) * 10
    assert np.array_equal(codec.encode_all(x), codec.encode_all(np.clip(x, -1, 1)))


def test_codec2_spec_options_rebuild_the_same_codec():
    for kwargs in ({}, {"mode": 3200, "frame_ms": 40}, {"mode": "1200", "frame_ms": 120}):
        spec = load_codec("codec2", **kwargs).spec
        assert load_codec(spec.name, **spec.options).spec == spec


def test_codec2_mode_aliases_and_frame_ms():
    assert load_codec("codec2", mode=700).spec == load_codec("codec2", mode="700c").spec
    assert load_codec("codec2", mode=3200, frame_ms=20).spec.num_codebooks == 7
    with pytest.raises(ValueError, match="multiple of 40 ms"):
        load_codec("codec2", mode="700C", frame_ms=60)
    with pytest.raises(ValueError, match="Unknown codec2 mode"):
        load_codec("codec2", mode=4800)


def test_codec2_encode_rejects_partial_frames_and_non_mono_input():
    enc = load_codec("codec2").encoder()
    with pytest.raises(ValueError, match="whole number of 640-sample frames"):
        enc.encode(np.zeros(641, dtype=np.float32))
    with pytest.raises(ValueError, match=r"shape \(samples,\)"):
        enc.encode(np.zeros((2, 640), dtype=np.float32))
    assert enc.encode(np.zeros(0, dtype=np.float32)).shape == (0, 6)


def test_codec2_decode_rejects_out_of_range_codes_and_wrong_codebook_count():
    codec = load_codec("codec2")
    dec = codec.decoder()
    good = codec.silence_codes()[None]
    bad = good.copy()
    bad[0, 2] = 1024
    with pytest.raises(ValueError, match="codebook 2 is outside"):
        dec.decode(bad)
    bad[0, 2] = -1
    with pytest.raises(ValueError, match="outside"):
        dec.decode(bad)
    with pytest.raises(ValueError, match=r"shape \(frames, 6\)"):
        dec.decode(good[:, :5])
    assert dec.decode(np.zeros((0, 6), dtype=np.int64)).shape == (0,)
