"""The user channel is tokenized through the same input paths a live session uses (agent/training/mic_paths.py)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import soxr

from agent.training.mic_paths import DEFAULT_MIC_PATHS, MIC_PATHS, path_for, to_codec_rate
from agent.training.tokenize import _encode_channel
from listen.listener import Listener
from listen.pcm import float32_to_pcm16_bytes, pcm16_bytes_to_float32
from listen.resample import InputDecimator
from listen.wavio import read_wav
from streaming.codecs.base import load_codec
from tests.agent.test_training import dialogues, make_dialogue  # noqa: F401  (module fixture)
from tests.conftest import espeak

RATE = 16000


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> np.ndarray:
    """4 s of espeak-ng speech at 16 kHz with quiet noise, as a dialogue's user channel holds it."""
    tmp = tmp_path_factory.mktemp("mic")
    x, rate = read_wav(espeak("so I was wondering, how far away is the moon from here?", tmp / "s.wav"))
    x = soxr.resample(x[:, 0], rate, RATE).astype(np.float32)
    x = np.concatenate([np.zeros(RATE // 3, np.float32), x, np.zeros(RATE // 2, np.float32)])
    return x + np.random.default_rng(0).normal(0, 0.003, len(x)).astype(np.float32)


@pytest.fixture(scope="module")
def codec():
    return load_codec("codec2", mode="700C", frame_ms=80)


def _frames(x: np.ndarray) -> int:
    return int(np.ceil(len(x) / RATE * 1000 / 80))


def test_soxr_lq_path_gives_the_ids_a_default_session_hears(speech, codec):
    frames = _frames(speech)
    offline = _encode_channel(codec, speech, RATE, frames, "soxr-lq")
    listener = Listener(codec, RATE, resample_quality="LQ")  # the SessionConfig default
    live = []
    for i in range(0, len(speech), 1234):  # uneven microphone chunks
        live += listener.push(speech[i:i + 1234])
    live += listener.flush()
    codes = np.array([f.codes for f in live])[:frames]
    assert len(codes) == frames and (codes == offline).all()


def test_decimate_path_gives_the_ids_the_realtime_server_hears(speech, codec):
    frames = _frames(speech)
    offline = _encode_channel(codec, speech, RATE, frames, "decimate-24k")
    # The server: a client's 24 kHz PCM16 in 32 ms batches -> InputDecimator -> a listener at the codec rate.
    wire = float32_to_pcm16_bytes(soxr.resample(speech, RATE, 24000, "HQ"))
    dec, listener, live = InputDecimator.for_rates(24000, 8000), Listener(codec, 8000), []
    for i in range(0, len(wire), 1536):  # 768 samples of 2 bytes
        live += listener.push(dec.process(pcm16_bytes_to_float32(wire[i:i + 1536])))
    codes = np.array([f.codes for f in live])
    assert len(codes) >= frames - 1 and (codes == offline[:len(codes)]).all()


def test_decimate_path_gives_a_16khz_codec_the_ids_the_realtime_server_hears(speech):
    """24 -> 16 kHz is no integer ratio: the server leaves it to the listener's soxr (session default LQ)."""
    from agent.config import SessionConfig
    from agent.server import ServerConfig
    from agent.training.mic_paths import SERVER_INPUT_RATE, SESSION_RESAMPLE_QUALITY

    assert SERVER_INPUT_RATE == ServerConfig().default_input_rate
    assert SESSION_RESAMPLE_QUALITY == SessionConfig().resample_quality
    fsq = load_codec("fsq")  # the shipped 16 kHz codec
    frames = _frames(speech)
    offline = _encode_channel(fsq, speech, RATE, frames, "decimate-24k")
    wire = float32_to_pcm16_bytes(soxr.resample(speech, RATE, 24000, "HQ"))
    assert InputDecimator.for_rates(24000, 16000) is None
    listener, live = Listener(fsq, 24000, resample_quality="LQ"), []
    for i in range(0, len(wire), 1536):
        live += listener.push(pcm16_bytes_to_float32(wire[i:i + 1536]))
    live += listener.flush()
    codes = np.array([f.codes for f in live])
    assert len(codes) >= frames - 1 and (codes[:frames] == offline[:len(codes)]).all()


def test_browser_path_runs_webrtc_processing_before_the_server_path(speech, codec):
    """What a page in a browser sends: WebRTC's processing (with the agent as the echo canceller's far end),
    then the server's path. Deterministic, and it moves codec2's ids away from the plain server path."""
    frames = _frames(speech)
    far = np.roll(speech, RATE) * 0.5  # the agent's channel: other speech at other times
    a = to_codec_rate(speech, RATE, 8000, "browser-apm", far=far)
    assert np.array_equal(a, to_codec_rate(speech, RATE, 8000, "browser-apm", far=far))
    assert abs(len(a) - len(speech) // 2) <= 8 and np.isfinite(a).all()
    assert not np.array_equal(a, to_codec_rate(speech, RATE, 8000, "browser-apm"))  # the far end is used
    server = _encode_channel(codec, speech, RATE, frames, "decimate-24k")
    browser = _encode_channel(codec, speech, RATE, frames, "browser-apm", far=far)
    assert browser.shape == server.shape and (browser == server).mean() < 0.8


def test_daemon_path_is_the_daemons_echo_canceller_then_the_sessions_resampler(speech, codec):
    """What the microphone daemon hands the brain: WebRTC's processing at its 16 kHz process rate (the agent's
    voice as the far end), then the session's soxr LQ. Rebuilt here from the daemon's own parts."""
    from agent.config import SessionConfig
    from agent.daemon.config import AudioConfig, EchoConfig
    from agent.daemon.echo import EchoCanceller

    far = np.roll(speech, RATE) * 0.5
    path = to_codec_rate(speech, RATE, 8000, "daemon-apm", far=far)
    assert AudioConfig().process_rate == RATE
    apm = EchoCanceller(EchoConfig(warmup_seconds=0.0, stream_delay_ms=0.0), rate=RATE)
    n = RATE // 100
    heard = []
    for i in range(0, len(speech) // n * n, n):
        apm.add_reference(far[i:i + n])
        heard.append(apm.process(speech[i:i + n]))
    heard = np.concatenate(heard + [speech[len(speech) // n * n:]])
    assert abs(len(path) - len(speech) // 2) <= 8 and np.isfinite(path).all()
    frames = _frames(speech)
    daemon = _encode_channel(codec, speech, RATE, frames, "daemon-apm", far=far)
    listener = Listener(codec, RATE, resample_quality=SessionConfig().resample_quality)  # as a session does
    live = listener.push(heard) + listener.flush()
    codes = np.array([f.codes for f in live])
    assert len(codes) >= frames - 1 and (codes[:frames] == daemon[:len(codes)]).all()
    plain = _encode_channel(codec, speech, RATE, frames, "soxr-lq")
    assert daemon.shape == plain.shape and (daemon == plain).mean() < 0.8


def test_the_paths_give_codec2_different_ids_for_the_same_speech(speech, codec):
    """Why the paths are drawn at all: codec2 700C's ids depend on the resampler's filter."""
    frames = _frames(speech)
    enc = {p: _encode_channel(codec, speech, RATE, frames, p) for p in ("soxr-hq", "soxr-lq", "decimate-24k")}
    assert (enc["soxr-hq"] == enc["soxr-lq"]).mean() < 0.6
    assert (enc["soxr-hq"] == enc["decimate-24k"]).mean() < 0.8
    for x in (to_codec_rate(speech, RATE, 8000, p) for p in MIC_PATHS):
        assert abs(len(x) - len(speech) // 2) <= 8 and np.isfinite(x).all()


def test_each_dialogue_keeps_its_path_and_all_paths_are_drawn():
    ids = [f"d{i:06d}" for i in range(400)]
    drawn = [path_for(i, DEFAULT_MIC_PATHS) for i in ids]
    assert drawn == [path_for(i, DEFAULT_MIC_PATHS) for i in ids]  # stable, no hidden random state
    counts = {p: drawn.count(p) for p in DEFAULT_MIC_PATHS}
    assert min(counts.values()) > 400 / len(DEFAULT_MIC_PATHS) / 2, counts
    assert {path_for(i, ("soxr-hq",)) for i in ids} == {"soxr-hq"}


def test_tokenize_records_its_paths_and_refuses_to_mix_them(dialogues, nano_model_dir, tmp_path, run_cli):  # noqa: F811
    shards = tmp_path / "shards"
    assert run_cli("data", "tokenize", "--data", dialogues, "--out", shards, "--model", nano_model_dir,
                   "--mic-paths", "soxr-lq,decimate-24k", "-q").rc == 0
    assert json.loads((shards / "shards.json").read_text())["mic_paths"] == ["soxr-lq", "decimate-24k"]
    again = run_cli("data", "tokenize", "--data", dialogues, "--out", shards, "--model", nano_model_dir, "-q")
    assert again.rc != 0 and "other microphone paths" in again.err
    bad = run_cli("data", "tokenize", "--data", dialogues, "--out", tmp_path / "s2", "--model", nano_model_dir,
                  "--mic-paths", "telephone", "-q")
    assert bad.rc != 0 and "telephone" in bad.err and "soxr-lq" in bad.err


def test_headphones_path_is_the_browsers_processing_without_its_canceller(speech, codec):
    """The page with "I use headphones": noise suppression and the high-pass still run (its ids differ from the
    bare server path), and what the agent plays is not a reference any more (no far end changes it)."""
    far = np.roll(speech, RATE) * 0.5
    frames = _frames(speech)
    alone = _encode_channel(codec, speech, RATE, frames, "browser-headphones")
    with_far = _encode_channel(codec, speech, RATE, frames, "browser-headphones", far=far)
    assert (alone == with_far).all()
    bare = _encode_channel(codec, speech, RATE, frames, "decimate-24k")
    assert (alone == bare).mean() < 0.8
    assert "browser-headphones" not in DEFAULT_MIC_PATHS  # it would pass the data's echo augmentation on
