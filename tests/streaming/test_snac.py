"""snac: Orpheus flattening, windowed streaming within the stated seam bound, clear errors (tiny random model)."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("snac")

from streaming.codecs import load_codec  # noqa: E402
from streaming.codecs.snac import _tree_order  # noqa: E402

# snac_24khz's rates, strides and codebooks (2048-sample frames, 7 ids) with tiny widths.
TINY = dict(encoder_dim=8, decoder_dim=64)
N = 12  # frames
# The bound stated in streaming/codecs/snac.py for the default windows (C=2, L=2, no crossfade).
SEAM_MAX_OF_PEAK = 0.01
SEAM_REL_RMS = 1e-3


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    # Tiny per-frame calls: intra-op threads only add sync overhead (100x on a busy 2-core box).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def codec(one_torch_thread):
    return load_codec("snac", config=TINY)


@pytest.fixture(scope="module")
def signal(codec):
    sr, n = codec.spec.sample_rate, N * codec.spec.frame_samples
    t = np.arange(n) / sr
    rng = np.random.default_rng(0)
    sweep = 0.4 * np.sin(2 * np.pi * (100 * t + 800 * t**2))
    bursts = (np.sin(2 * np.pi * 1.5 * t) > 0.6) * 0.2 * rng.standard_normal(n)
    return (sweep + bursts).astype(np.float32)


@pytest.fixture(scope="module")
def codes(codec, signal):
    return codec.encode_all(signal)


def stream(dec, codes, sizes):
    out, pos = [], 0
    for n in sizes:
        out.append(dec.decode(codes[pos : pos + n]))
        pos += n
    return out + [dec.flush()]


def test_snac_spec_is_one_coarse_frame_of_seven_ids(codec):
    spec = codec.spec
    assert (spec.sample_rate, spec.frame_samples, spec.lookahead_frames) == (24000, 2048, 2)
    assert spec.codebook_sizes == (4096,) * 7


def test_snac_flattening_is_orpheus_order(codec):
    assert _tree_order([4, 2, 1]) == [(0, 0), (1, 0), (2, 0), (2, 1), (1, 1), (2, 2), (2, 3)]
    c, m, f = np.arange(2), np.arange(4) + 10, np.arange(8) + 20
    flat = codec.flatten([c, m, f])
    assert flat.tolist() == [[0, 10, 20, 21, 11, 22, 23], [1, 12, 24, 25, 13, 26, 27]]
    assert all(np.array_equal(a, b) for a, b in zip(codec.unflatten(flat), [c, m, f]))


def test_snac_streamed_decode_stays_within_seam_bound_of_one_shot(codec, codes):
    ref = codec.decode_one_shot(codes)
    peak, rms = np.abs(ref).max(), np.sqrt((ref**2).mean())
    assert peak > 0.05  # the bound must be measured on real signal, not near-silence
    for sizes in ([1] * N, [3, 1, 5, 2, 1]):
        out = np.concatenate(stream(codec.decoder(), codes, sizes))
        assert out.shape == ref.shape == (N * codec.spec.frame_samples,)
        err = out - ref
        assert np.abs(err).max() < SEAM_MAX_OF_PEAK * peak
        assert np.sqrt((err**2).mean()) < SEAM_REL_RMS * rms


def test_snac_decoder_returns_audio_lookahead_frames_late_and_flush_returns_the_rest(codec, codes):
    f, la = codec.spec.frame_samples, codec.spec.lookahead_frames
    parts = stream(codec.decoder(), codes, [1] * N)
    assert [len(p) for p in parts] == [0] * la + [f] * (N - la) + [la * f]


def test_snac_crossfade_keeps_lengths_and_stays_close(codec, codes):
    fade = load_codec("snac", config=TINY, lookahead_frames=1, crossfade_samples=256)
    ref = fade.decode_one_shot(codes)
    out = np.concatenate(stream(fade.decoder(), codes, [1] * N))
    assert out.shape == ref.shape
    assert np.sqrt(((out - ref) ** 2).mean()) < 0.05 * np.sqrt((ref**2).mean())


def test_snac_decode_is_reproducible(codec, codes):
    # SNAC's decoder noise is drawn by absolute position, not fresh per call.
    assert np.array_equal(codec.decode_one_shot(codes), codec.decode_one_shot(codes))
    assert np.array_equal(codec.decode_all(codes), codec.decode_all(codes))


def test_snac_streamed_encode_equals_encode_all_under_any_chunking(codec, signal, codes):
    f = codec.spec.frame_samples
    assert codes.shape == (N, 7) and codes.dtype == np.int64
    for sizes in ([1] * N, [5, 2, 4, 1]):
        enc, pos, parts = codec.encoder(), 0, []
        for n in sizes:
            parts.append(enc.encode(signal[pos : pos + n * f]))
            pos += n * f
        assert np.array_equal(np.concatenate(parts), codes)


def test_snac_reset_starts_a_fresh_stream(codec, signal, codes):
    f = codec.spec.frame_samples
    enc, dec = codec.encoder(), codec.decoder()
    enc.encode(signal[: 3 * f])
    dec.decode(codes[:4])
    enc.reset()
    dec.reset()
    assert np.array_equal(enc.encode(signal[: 3 * f]), codes[:3])
    assert dec.decode(codes[:2]).shape == (0,) and dec.state.emitted == 0


def test_snac_spec_options_rebuild_the_same_codec(codec, signal, codes):
    again = load_codec(codec.spec.name, **codec.spec.options)
    assert again.spec == codec.spec
    assert np.array_equal(again.encode_all(signal[: 3 * codec.spec.frame_samples]), codes[:3])


def test_snac_loads_weights_from_a_local_directory(codec, signal, codes, tmp_path):
    import json

    from streaming.codecs.snac import SNAC_24KHZ

    (tmp_path / "config.json").write_text(json.dumps({**SNAC_24KHZ, **TINY}))
    # The noise tables are buffers we add; a snac checkpoint has only the model's own parameters.
    state = {k: v for k, v in codec.model.state_dict().items()}
    torch.save(state, tmp_path / "pytorch_model.bin")
    loaded = load_codec("snac", weights_dir=str(tmp_path))
    assert "config" not in loaded.spec.options
    assert np.array_equal(loaded.encode_all(signal[: 3 * codec.spec.frame_samples]), codes[:3])


def test_snac_without_weights_says_what_to_pass(tmp_path):
    with pytest.raises(ValueError, match=r"--codec-weights DIR\) containing config.json"):
        load_codec("snac")
    with pytest.raises(ValueError, match=str(tmp_path)):
        load_codec("snac", weights_dir=str(tmp_path))
    with pytest.raises(ValueError, match="attention-free"):
        load_codec("snac", config={**TINY, "attn_window_size": 4})


def test_snac_rejects_bad_input(codec):
    enc, dec = codec.encoder(), codec.decoder()
    with pytest.raises(ValueError, match="whole number of 2048-sample frames"):
        enc.encode(np.zeros(2047, dtype=np.float32))
    with pytest.raises(ValueError, match=r"shape \(samples,\)"):
        enc.encode(np.zeros((1, 2048), dtype=np.float32))
    with pytest.raises(ValueError, match="outside"):
        dec.decode(np.full((1, 7), 4096))
    with pytest.raises(ValueError, match=r"shape \(frames, 7\)"):
        dec.decode(np.zeros((1, 6), dtype=np.int64))


def test_snac_silence_codes_are_one_valid_frame(codec):
    s = codec.silence_codes()
    assert s.shape == (7,) and ((s >= 0) & (s < 4096)).all()
