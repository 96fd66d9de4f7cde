"""mimi: streamed encode/decode equal one-shot, bounded transformer state, clear errors (tiny random model)."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from streaming.codecs import load_codec  # noqa: E402

# Same rates as kyutai/mimi (24 kHz, 1920-sample frames) but tiny widths; a 4-step sliding window
# (2 frames) so a short test already runs past it.
TINY = dict(
    hidden_size=32, num_filters=4, num_hidden_layers=2, intermediate_size=64, num_attention_heads=2,
    num_key_value_heads=2, codebook_size=64, codebook_dim=16, vector_quantization_hidden_dimension=16,
    num_quantizers=8, sliding_window=4,
)
Q = 4
N = 10  # frames


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    # Tiny per-frame calls: intra-op threads only add sync overhead (100x on a busy 2-core box).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def codec(one_torch_thread):
    return load_codec("mimi", num_quantizers=Q, config=TINY)


@pytest.fixture(scope="module")
def signal(codec):
    sr, n = codec.spec.sample_rate, N * codec.spec.frame_samples
    t = np.arange(n) / sr
    rng = np.random.default_rng(0)
    tone = 0.3 * np.sin(2 * np.pi * (150 * t + 600 * t**2))
    bursts = (np.sin(2 * np.pi * 2 * t) > 0.5) * 0.1 * rng.standard_normal(n)
    return (tone + bursts).astype(np.float32)


def one_shot_encode(codec, x):
    with torch.no_grad():
        return codec.model.encode(torch.from_numpy(x)[None, None], num_quantizers=Q).audio_codes[0].T.numpy()


def one_shot_decode(codec, codes):
    with torch.no_grad():
        return codec.model.decode(torch.from_numpy(codes.T.copy())[None]).audio_values[0, 0].numpy()


def chunked(fn, arr, sizes, unit):
    out, pos = [], 0
    for n in sizes:
        out.append(fn(arr[pos : pos + n * unit]))
        pos += n * unit
    return np.concatenate(out)


def test_mimi_spec_is_80ms_frames_at_24khz(codec):
    spec = codec.spec
    assert (spec.sample_rate, spec.frame_samples, spec.lookahead_frames) == (24000, 1920, 0)
    assert spec.codebook_sizes == (64,) * Q


def test_mimi_streamed_encode_gives_one_shot_codes_frame_by_frame(codec, signal):
    ref = one_shot_encode(codec, signal)
    assert ref.shape == (N, Q)
    f = codec.spec.frame_samples
    for sizes in ([1] * N, [3, 1, 4, 2]):
        enc = codec.encoder()
        assert np.array_equal(chunked(enc.encode, signal, sizes, f), ref)
    assert np.array_equal(codec.encode_all(signal), ref)


def test_mimi_streamed_decode_matches_one_shot(codec, signal):
    codes = codec.encode_all(signal)
    ref = one_shot_decode(codec, codes)
    for sizes in ([1] * N, [2, 3, 1, 4]):
        dec = codec.decoder()
        out = chunked(dec.decode, codes, sizes, 1)
        assert out.shape == ref.shape == (N * codec.spec.frame_samples,)
        assert np.abs(out - ref).max() < 1e-4


@pytest.mark.parametrize("q", [1, 2])
def test_mimi_decoder_accepts_fewer_codebooks(codec, signal, q):
    codes = codec.encode_all(signal)[:, :q]
    dec = codec.decoder()
    out = chunked(dec.decode, codes, [1] * N, 1)
    assert np.abs(out - one_shot_decode(codec, codes)).max() < 1e-4


def test_mimi_transformer_state_stays_bounded_by_the_sliding_window(codec, signal):
    enc, dec = codec.encoder(), codec.decoder()
    f, window = codec.spec.frame_samples, TINY["sliding_window"]
    sizes = None
    for _ in range(3):  # 30 frames = 60 transformer steps, far past the 4-step window
        for i in range(N):
            dec.decode(enc.encode(signal[i * f : (i + 1) * f]))
        now = [t.shape for t in dec.state.conv_tails.values()] + [t.shape for t in dec.state.convtr_tails.values()]
        assert sizes is None or now == sizes  # conv state is fixed-size
        sizes = now
    for kv in (enc.state.kv, dec.state.kv):
        assert kv.get_seq_length() == 60
        assert all(layer.keys.shape[-2] <= window - 1 for layer in kv.layers)


def test_mimi_reset_starts_a_fresh_stream(codec, signal):
    f = codec.spec.frame_samples
    enc, dec = codec.encoder(), codec.decoder()
    a = enc.encode(signal[: 2 * f])
    y = dec.decode(a)
    enc.encode(signal[2 * f : 4 * f])
    dec.decode(a)
    enc.reset()
    dec.reset()
    assert np.array_equal(enc.encode(signal[: 2 * f]), a)
    assert np.array_equal(dec.decode(a), y)


def test_mimi_spec_options_rebuild_the_same_codec(codec, signal):
    again = load_codec(codec.spec.name, **codec.spec.options)
    assert again.spec == codec.spec
    assert np.array_equal(again.encode_all(signal), codec.encode_all(signal))


def test_mimi_loads_weights_from_a_local_directory(codec, signal, tmp_path):
    codec.model.save_pretrained(tmp_path)
    loaded = load_codec("mimi", num_quantizers=Q, weights_dir=str(tmp_path))
    assert loaded.spec.options == {"num_quantizers": Q}
    assert np.array_equal(loaded.encode_all(signal), codec.encode_all(signal))


def test_mimi_without_weights_says_what_to_pass(tmp_path):
    with pytest.raises(ValueError, match=r"--codec-weights DIR\) containing config.json and model.safetensors"):
        load_codec("mimi")
    with pytest.raises(ValueError, match=str(tmp_path)):
        load_codec("mimi", weights_dir=str(tmp_path))
    with pytest.raises(ValueError, match="num_quantizers must be in 1..8"):
        load_codec("mimi", num_quantizers=9, config=TINY)


def test_mimi_rejects_bad_input(codec):
    enc, dec = codec.encoder(), codec.decoder()
    with pytest.raises(ValueError, match="whole number of 1920-sample frames"):
        enc.encode(np.zeros(1000, dtype=np.float32))
    with pytest.raises(ValueError, match=r"shape \(samples,\)"):
        enc.encode(np.zeros((1, 1920), dtype=np.float32))
    with pytest.raises(ValueError, match="outside"):
        dec.decode(np.full((1, Q), 64))
    with pytest.raises(ValueError, match=r"shape \(frames, 1..4\)"):
        dec.decode(np.zeros((1, Q + 1), dtype=np.int64))
    with pytest.raises(ValueError, match=r"shape \(frames, 1..4\)"):
        dec.decode(np.zeros((1, 0), dtype=np.int64))


def test_mimi_silence_codes_are_one_valid_frame(codec):
    s = codec.silence_codes()
    assert s.shape == (Q,) and s.dtype == np.int64 and ((s >= 0) & (s < 64)).all()
