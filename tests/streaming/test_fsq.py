"""fsq: the project's learned codec: spec, FSQ ids, exact streaming, no seams, weights round trip."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from streaming.codecs import load_codec  # noqa: E402
from streaming.codecs.fsq import FSQCodec, FSQConfig, save_weights, shipped_weights_dir, weights_digest  # noqa: E402

SR = 16000
TINY = {"enc_dim": 32, "enc_blocks": 1, "dec_dim": 48, "dec_blocks": 2}


@pytest.fixture(autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def codec():
    return load_codec("fsq", config=TINY, seed=3)


def speechish(seconds: float, seed: int = 0) -> np.ndarray:
    """Glottal-pulse-like harmonics with a moving pitch and formant-ish envelope, plus noise bursts."""
    t = np.arange(int(seconds * SR)) / SR
    rng = np.random.default_rng(seed)
    f0 = 120 + 40 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SR
    x = sum((0.5 / k) * np.sin(k * phase) * (1 + np.sin(2 * np.pi * (0.3 + 0.1 * k) * t)) for k in range(1, 12))
    x = 0.15 * x * (0.5 + 0.5 * np.sin(2 * np.pi * 2.5 * t) ** 2)
    x += (np.sin(2 * np.pi * 1.1 * t) > 0.8) * 0.05 * rng.standard_normal(len(t))
    return x.astype(np.float32)


def chunks(n_frames: int, seed: int) -> list[int]:
    rng, out = np.random.default_rng(seed), []
    while sum(out) < n_frames:
        out.append(int(min(rng.integers(1, 5), n_frames - sum(out))))
    return out


def test_fsq_default_spec_is_80ms_frames_of_four_4096_ids():
    c = FSQCodec(config={}, seed=0)
    s = c.spec
    assert (s.name, s.sample_rate, s.frame_samples, s.lookahead_frames) == ("fsq", 16000, 1280, 0)
    assert s.codebook_sizes == (4096,) * 4 and s.frame_ms == 80.0
    assert s.bits_per_second == pytest.approx(600.0)
    assert c.delay_samples == 320  # n_fft - hop: the decoder's output trails its input by 20 ms
    assert s.num_codebooks <= 28 // 4  # <= 1/4 of codec2 3200's 28 ids per 80 ms


def test_fsq_spec_options_rebuild_the_same_codec(codec):
    again = load_codec("fsq", **codec.spec.options)
    assert again.spec == codec.spec
    x = speechish(0.64)
    assert np.array_equal(again.encode_all(x), codec.encode_all(x))
    d = codec.spec.to_dict()
    assert type(codec.spec).from_dict(json.loads(json.dumps(d))) == codec.spec


def test_fsq_config_options_shape_the_spec():
    c = FSQCodec(config={**TINY, "latent_hops": 8, "groups": 1, "levels": [8, 5, 5, 5]})
    assert c.spec.codebook_sizes == (1000,)  # one id per 80 ms frame
    c = FSQCodec(config={**TINY, "frame_hops": 4, "latent_hops": 4, "groups": 1})
    assert c.spec.frame_samples == 640 and c.spec.num_codebooks == 1
    with pytest.raises(ValueError, match="multiple of latent_hops"):
        FSQConfig(frame_hops=8, latent_hops=3)
    with pytest.raises(ValueError, match="Unknown fsq config keys"):
        FSQCodec(config={"dim": 3})


def test_fsq_ids_are_in_range_and_quantizer_round_trips(codec):
    x = speechish(1.28)
    codes = codec.encode_all(x)
    assert codes.shape == (16, 4) and codes.dtype == np.int64
    assert (codes >= 0).all() and (codes < 4096).all()
    m = codec.model
    with torch.no_grad():
        z, _ = m.encode_latent(torch.from_numpy(x)[None])
        zq, digits = m.fsq(z)
        ids = m.digits_to_ids(digits)
        assert torch.allclose(m.ids_to_zq(ids), zq, atol=1e-6)
    # every id decodes (the full grid is valid; FSQ has no unused codebook entries)
    all_ids = torch.arange(4096).reshape(-1, 2)[None]
    back = m.digits_to_ids(((m.ids_to_zq(all_ids) * 4).round() + 4).long())
    assert torch.equal(back, all_ids)


def test_fsq_streamed_encode_gives_identical_codes(codec):
    x = speechish(2.56, seed=1)
    F = codec.spec.frame_samples
    ref = codec.encode_all(x)
    enc, parts, pos = codec.encoder(), [], 0
    for n in chunks(len(x) // F, seed=2):
        parts.append(enc.encode(x[pos : pos + n * F]))
        pos += n * F
    assert np.array_equal(np.concatenate(parts), ref)
    enc.reset()
    assert np.array_equal(enc.encode(x), ref)  # reset = a fresh stream


def test_fsq_streamed_decode_equals_one_shot(codec):
    codes = codec.encode_all(speechish(2.56, seed=4))
    ref = codec.decode_all(codes)
    assert ref.shape == (len(codes) * codec.spec.frame_samples,) and ref.dtype == np.float32
    dec, parts, pos = codec.decoder(), [], 0
    for n in chunks(len(codes), seed=5):
        parts.append(dec.decode(codes[pos : pos + n]))
        assert len(parts[-1]) == n * codec.spec.frame_samples  # causal: all of each frame at once
        pos += n
    parts.append(dec.flush())
    assert np.abs(np.concatenate(parts) - ref).max() < 1e-4
    # one frame at a time too
    dec.reset()
    one = np.concatenate([dec.decode(codes[i : i + 1]) for i in range(len(codes))])
    assert np.abs(one - ref).max() < 1e-4


def _boundary_vs_interior(y: np.ndarray, frame: int) -> float:
    d = np.abs(np.diff(y))
    at = d[frame - 1 :: frame]  # y[k*frame] - y[k*frame - 1]
    return float(at.mean() / (d.mean() + 1e-12))


@pytest.mark.parametrize("weights", ["random", "shipped"])
def test_fsq_no_clicks_at_frame_boundaries(codec, weights):
    if weights == "shipped":
        if shipped_weights_dir() is None:
            pytest.skip("no trained fsq weights ship in streaming/codecs/assets/fsq")
        codec = load_codec("fsq")
    F = codec.spec.frame_samples
    x = speechish(3.2, seed=6)
    codes = codec.encode_all(x)
    dec = codec.decoder()
    y = np.concatenate([dec.decode(codes[i : i + 1]) for i in range(len(codes))])
    assert np.isfinite(y).all()
    # a sample step across a frame (call) boundary is like any other step: no seam, no click
    assert _boundary_vs_interior(y, F) < 1.5
    # a decoded steady sine: no spikes at the boundaries either
    t = np.arange(int(2.56 * SR)) / SR
    s = (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32)
    dec.reset()
    ys = np.concatenate([dec.decode(c[None]) for c in codec.encode_all(s)])
    assert _boundary_vs_interior(ys[F:], F) < 1.5


def test_fsq_weights_dir_round_trip(codec, tmp_path):
    save_weights(codec.model, tmp_path / "w")
    loaded = load_codec("fsq", weights_dir=str(tmp_path / "w"))
    assert loaded.spec.codebook_sizes == codec.spec.codebook_sizes
    assert loaded.spec.options == {"weights_dir": str(tmp_path / "w"), "weights_sha256": weights_digest(tmp_path / "w")}
    x = speechish(0.96)
    codes = codec.encode_all(x)
    assert np.array_equal(loaded.encode_all(x), codes)
    assert np.abs(loaded.decode_all(codes) - codec.decode_all(codes)).max() < 1e-6
    with pytest.raises(ValueError, match="differs from its config.json"):
        load_codec("fsq", weights_dir=str(tmp_path / "w"), config={**TINY, "dec_blocks": 3})


def test_fsq_bad_inputs_say_what_is_wrong(codec, tmp_path):
    F = codec.spec.frame_samples
    enc, dec = codec.encoder(), codec.decoder()
    with pytest.raises(ValueError, match="mono PCM"):
        enc.encode(np.zeros((2, F), np.float32))
    with pytest.raises(ValueError, match="whole number"):
        enc.encode(np.zeros(F + 1, np.float32))
    with pytest.raises(ValueError, match="NaN"):
        enc.encode(np.full(F, np.nan, np.float32))
    with pytest.raises(ValueError, match="outside"):
        dec.decode(np.array([[0, 1, 2, 4096]]))
    with pytest.raises(ValueError, match="shape"):
        dec.decode(np.zeros((3, 2), np.int64))
    with pytest.raises(ValueError, match="integer"):
        dec.decode(np.zeros((1, 4), np.float32))
    with pytest.raises(ValueError, match="lacks config.json"):
        load_codec("fsq", weights_dir=str(tmp_path))
    assert enc.encode(np.zeros(0, np.float32)).shape == (0, 4)
    assert dec.decode(np.zeros((0, 4), np.int64)).shape == (0,)
    if shipped_weights_dir() is None:
        with pytest.raises(ValueError, match="No trained fsq weights"):
            load_codec("fsq")


def test_fsq_silence_codes_and_registry(codec):
    from streaming.codecs import available_codecs

    assert "fsq" in available_codecs()
    sil = codec.silence_codes()
    assert sil.shape == (4,) and np.array_equal(sil, codec.encode_all(np.zeros(4 * 1280, np.float32))[-1])


def test_shipped_fsq_weights_give_a_six_id_layout_that_a_model_can_step(tmp_path):
    """The shipped weights are the `fsq` codec preset: 6 ids per 80 ms at 16 kHz, ready for `model init`."""
    from agent.models import init_model
    from think.transformers_backend import TransformersBackend

    assert shipped_weights_dir() is not None, "streaming/codecs/assets/fsq must hold the trained weights"
    path = init_model(tmp_path / "m", preset="nano", codec="fsq")
    backend = TransformersBackend.from_dir(path)
    lay = backend.layout
    assert (lay.codec.name, lay.codec.sample_rate, lay.q_in, lay.q_out, lay.slot_size) == ("fsq", 16000, 6, 6, 13)
    assert list(lay.codec.codebook_sizes) == [4096] * 6
    codec = load_codec("fsq")
    assert np.array_equal(lay.agent_silence_codes(), codec.silence_codes())
    r = backend.open_session().step_sync(codec.silence_codes())
    assert lay.is_text_slot_id(r.text_id)


def test_a_layout_names_its_fsq_weights_and_refuses_others(tmp_path):
    """A model built on one set of fsq weights must not silently hear another (e.g. newer shipped weights)."""
    from agent.models import codec_for_layout, init_model
    from think.checkpoint import load_checkpoint

    path = init_model(tmp_path / "m", preset="nano", codec="fsq")
    lay = load_checkpoint(path).layout
    assert lay.codec.options == {"weights_sha256": weights_digest(shipped_weights_dir())}
    assert codec_for_layout(lay).spec == load_codec("fsq").spec
    other = tmp_path / "other"
    save_weights(FSQCodec(config=load_codec("fsq").cfg.to_dict(), seed=3).model, other)
    with pytest.raises(ValueError, match="made with fsq weights"):
        codec_for_layout(lay, codec_weights=other)
