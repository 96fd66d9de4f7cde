"""``duplex turn train|eval`` at smoke scale, and the labels the detector learns from."""
from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from agent.turn_train import IGNORE, step_labels, summarize
from listen.turn_detector import load_detector
from listen.wavio import read_wav
from tests.conftest import espeak

RATE = 16000


def _say(text: str, path) -> np.ndarray:
    import soxr

    x, rate = read_wav(espeak(text, path, voice="en-us+m3"))
    return soxr.resample(x[:, 0], rate, RATE).astype(np.float32)


def make_paused_dialogue(dir_, name, head, tail, split, tmp) -> dict:
    """The user says ``head``, pauses 0.8 s, says ``tail`` (a turn end), and the agent answers 0.4 s later."""
    h, t, a = _say(head + ",", tmp / f"{name}-h.wav"), _say(tail, tmp / f"{name}-t.wav"), _say("okay.", tmp / f"{name}-a.wav")
    h0 = 0.3
    h1 = h0 + len(h) / RATE
    t0 = h1 + 0.8
    t1 = t0 + len(t) / RATE
    a0 = t1 + 0.4
    total = a0 + len(a) / RATE + 0.5
    audio = np.zeros((int(total * RATE) + 1, 2), np.float32)
    for x, start, ch in ((h, h0, 0), (t, t0, 0), (a, a0, 1)):
        audio[int(start * RATE): int(start * RATE) + len(x), ch] = x
    turns = [{"speaker": "user", "start": h0, "end": h1, "text": head, "kind": "request_start", "cut_at": None},
             {"speaker": "user", "start": t0, "end": t1, "text": tail, "kind": "request_end", "cut_at": None},
             {"speaker": "agent", "start": a0, "end": a0 + len(a) / RATE, "text": "okay.", "kind": "answer",
              "cut_at": None, "words": []}]
    events = [{"type": "pause", "time": h1, "end": t0, "duration": t0 - h1, "user_turn": 0},
              {"type": "turn_end", "time": t1, "agent_start": a0, "latency": 0.4, "user_turn": 1, "agent_turn": 2}]
    record = {"id": name, "split": split, "sample_rate": RATE, "duration": total, "turns": turns, "events": events,
              "qa": []}
    sf.write(dir_ / f"{name}.wav", audio, RATE, subtype="PCM_16")
    (dir_ / f"{name}.json").write_text(json.dumps(record))
    return record


@pytest.fixture(scope="module")
def paused(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("turn")
    out = tmp / "data"
    out.mkdir()
    make_paused_dialogue(out, "p0", "what is the capital", "of france", "train", tmp)
    make_paused_dialogue(out, "p1", "how many legs", "does a cat have", "train", tmp)
    make_paused_dialogue(out, "p2", "so, um", "what colour is the sky", "val", tmp)
    return out


def test_steps_after_a_turn_end_are_finished_and_steps_in_a_pause_still_going(paused):
    record = json.loads((paused / "p0.json").read_text())
    pause, end = record["events"]
    labels = step_labels(record, int(record["duration"] / 0.04), 0.04, window_s=0.64)
    ends = (np.arange(len(labels)) + 1) * 0.04
    in_pause = (ends > pause["time"]) & (ends <= pause["time"] + 0.64)
    assert (labels[in_pause] == 0).all() and in_pause.sum() == 16
    after = (ends > end["time"]) & (ends <= end["time"] + 0.64)
    assert (labels[after] == 1).all()
    assert (labels[~in_pause & ~after] == IGNORE).all()  # speech and the agent's turn are not labelled
    # A pause shorter than the window is labelled only until the user goes on.
    short = {**record, "events": [{**pause, "end": pause["time"] + 0.2}]}
    assert (step_labels(short, len(labels), 0.04, 0.64) == 0).sum() == 5


def test_summary_tunes_the_threshold_that_keeps_turn_ends_free():
    nan = float("nan")
    scores = {"turn_end": [np.array([0.9] * 7)] * 19 + [np.array([0.1] * 7)],
              "pause": [np.array([0.2] * 7), np.array([0.2, 0.2, 0.95, nan, nan, nan, nan])]}
    s = summarize(scores)
    assert s["turn_ends_free_at_240ms"] == 0.95 and 0.2 < s["threshold"] <= 0.9
    assert s["pauses_held"] == 0.5  # the second pause is called finished at 240 ms: the agent may start
    assert s["auc"]["80"] == pytest.approx((19 * 2 + 0 * 2) / 40)


def test_turn_detector_trains_and_evaluates_from_the_cli(paused, run_cli, tmp_path):
    out = tmp_path / "turn"
    r = run_cli("turn", "train", "--data", paused, "--out", out, "--steps", "3", "--set", "eval_every=2",
                "--set", "model.dim=16", "--set", "mic_paths=soxr-lq", "--set", "workers=1", "--set", "crop_steps=64",
                "-q")
    assert r.rc == 0, r.err
    final = json.loads((out / "final_metrics.json").read_text())
    assert final["steps"] == 3 and final["train_dialogues"] == 2
    assert final["labelled_steps"]["still_going"] == 32 and final["labelled_steps"]["finished"] > 0
    assert json.loads((out / "train_config.json").read_text())["model"] == {"dim": 16}
    det = load_detector(out / "best")
    assert det.cfg.dim == 16 and 0 < det.meta["threshold"] < 1 and det.meta["val"]["pauses"] == 1
    r = run_cli("turn", "eval", "--model", out / "last", "--data", paused, "--split", "val", "--mic-paths", "soxr-lq",
                "-q")
    assert r.rc == 0, r.err
    result = json.loads(r.out)
    assert result["turn_ends"] == 1 and result["pauses"] == 1 and result["dialogues"] == 1
    r = run_cli("turn", "eval", "--model", tmp_path / "none", "--data", paused, "-q")
    assert r.rc == 2 and "No turn detector found" in r.err
