"""The turn detector's streaming wrapper: any chunking gives the one-shot answer; loading fails clearly."""
from __future__ import annotations

import numpy as np
import pytest

from listen.recognizer import RecognizerConfig
from listen.turn_detector import (TurnDetector, build_detector, load_detector, load_session_detector,
                                  save_detector)

SMALL = {"sample_rate": 8000, "hop": 80, "win": 200, "n_fft": 256, "n_mels": 16, "fmax": 3500.0, "stack": 4,
         "dim": 24, "conv_layers": 1, "rnn_layers": 1}


@pytest.fixture
def detector_dir(tmp_path):
    import torch

    torch.manual_seed(0)
    model = build_detector(RecognizerConfig.from_dict(SMALL))
    save_detector(model, tmp_path / "det", {"threshold": 0.4, "window_s": 0.64})
    return tmp_path / "det"


def test_streamed_frames_give_the_same_verdict_as_one_pass(detector_dir):
    import torch

    model = load_detector(detector_dir)
    assert model.meta["threshold"] == 0.4
    rng = np.random.default_rng(0)
    pcm = (0.1 * rng.standard_normal(8000 * 2)).astype(np.float32)
    with torch.inference_mode():
        whole, _ = model(torch.from_numpy(pcm)[None])
    expected = float(whole[0, -1, 1].exp())
    det = TurnDetector(model, 8000)
    assert det.push(pcm[:100]) is None  # not a whole 40 ms step yet
    got = None
    for i in range(100, len(pcm), 640):  # 80 ms frames, offset by the first odd chunk
        got = det.push(pcm[i:i + 640])
    assert got == pytest.approx(expected, abs=1e-5)
    det.reset()
    assert det.state.finished is None and det.push(pcm) == pytest.approx(expected, abs=1e-5)


def test_sessions_batched_together_hear_what_each_hears_alone(detector_dir):
    """Five concurrent streams (one starts late, one pushes chunks of another length) through the shared
    batcher give each stream's own one-at-a-time answers, and the batcher did run them together."""
    import asyncio

    from listen.turn_detector import DetectorBatcher

    model = load_detector(detector_dir)
    rng = np.random.default_rng(1)
    streams = [(0.1 * rng.standard_normal(8000 * 2)).astype(np.float32) for _ in range(5)]
    chunk = [640, 640, 640, 640, 960]
    start = [0, 0, 0, 4, 0]  # the fourth stream joins at the fifth frame: a fresh state beside grown ones

    def alone(k):
        det = TurnDetector(model, 8000)
        return [det.push(streams[k][i:i + chunk[k]]) for i in range(0, len(streams[k]), chunk[k])]

    async def together():
        dets = [TurnDetector(model, 8000) for _ in streams]
        got: list[list] = [[] for _ in streams]

        async def one(k, frame):
            i = (frame - start[k]) * chunk[k]
            if 0 <= i < len(streams[k]):
                got[k].append(await dets[k].push_async(streams[k][i:i + chunk[k]]))

        for frame in range(40):
            await asyncio.gather(*(one(k, frame) for k in range(len(streams))))
        batcher = DetectorBatcher.for_model(model)
        return got, batcher.frames, batcher.batches

    got, frames, batches = asyncio.run(together())
    for k in range(len(streams)):
        np.testing.assert_allclose(np.array(got[k], float), np.array(alone(k), float), atol=1e-5, err_msg=str(k))
    assert frames == sum(len(g) for g in got) and batches < frames / 2  # several sessions per forward


def test_another_codec_rate_is_resampled_and_bad_samples_do_not_poison_the_state(detector_dir):
    det = TurnDetector(load_detector(detector_dir), 16000)
    x = np.zeros(16000, np.float32)
    x[100:200] = np.nan
    p = det.push(x)
    assert p is not None and 0.0 <= p <= 1.0
    assert 0.0 <= det.push(np.zeros(1280, np.float32)) <= 1.0


def test_a_missing_or_broken_detector_is_one_clear_error(tmp_path, detector_dir):
    with pytest.raises(FileNotFoundError, match="No turn detector found"):
        load_session_detector(str(tmp_path / "nowhere"), 8000)
    (detector_dir / "config.json").write_text('{"dim": "wide"}')
    with pytest.raises(ValueError, match="could not be loaded"):
        load_detector(detector_dir)
    assert load_session_detector("off", 8000) is None


@pytest.mark.parametrize("voice", ["en-us+m3", "en-gb+f2"])
def test_the_shipped_detector_hears_held_words_as_less_finished_than_a_finished_question(voice, tmp_path):
    """Words said as held (a comma's level pitch) before a silence, against a finished question: the cue the
    policy's wait stands on. A filler ("so, um") is below the tuned threshold."""
    import soxr

    from listen.turn_detector import load_detector, shipped_detector_dir
    from listen.wavio import read_wav
    from tests.conftest import espeak

    assert shipped_detector_dir() is not None, "listen/assets/turn_detector is missing from this checkout"
    model = load_detector()

    def finished_after_silence(text: str) -> float:
        x, rate = read_wav(espeak(text, tmp_path / "t.wav", voice=voice))
        pcm = np.concatenate([np.zeros(4000, np.float32), soxr.resample(x[:, 0], rate, 8000).astype(np.float32),
                              np.zeros(3200, np.float32)])  # 0.4 s of silence after the words
        det = TurnDetector(model, 8000)
        for i in range(0, len(pcm) - 639, 640):
            p = det.push(pcm[i:i + 640])
        return p

    for held, done in (("so, um,", "how many legs does a cat have"), ("can you tell me,", "what colour is the sky")):
        assert finished_after_silence(held) < finished_after_silence(done), (held, done)
    assert finished_after_silence("so, um,") < model.meta["threshold"]
