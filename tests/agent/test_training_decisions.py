"""``decision_weights``: the frames where the script takes the turn, waits, talks on or stops weigh more."""
from __future__ import annotations

import json

import numpy as np
import pytest

from agent.cli import main
from agent.training.decisions import DECISION_EVENTS, DECISION_TAIL_S, decision_frames
from agent.training.samplers import WindowSampler
from agent.training.tokenize import load_decisions, load_split, read_index, shard_layout
from agent.training.train import TrainConfig
from tests.agent.test_training import make_dialogue


def test_decision_frames_run_from_each_events_onset_until_the_script_resolves_it():
    record = {"events": [
        {"type": "turn_end", "time": 1.0, "agent_start": 1.3},
        {"type": "interruption", "time": 4.0, "agent_stop": 4.3},
        {"type": "user_backchannel", "time": 6.0, "end": 6.4},
        {"type": "pause", "time": 8.0, "end": 8.8},
        {"type": "silence", "time": 10.0, "end": 11.0},  # nobody speaks: no decision to make
        {"type": "turn_end", "time": 12.0},  # older data without the field: skipped, not guessed
    ]}
    marked = decision_frames(record, 80.0, 200, text_lead=1)
    assert DECISION_TAIL_S == 0.48  # the frames below are worked out by hand for it
    # turn end: 1.0 s is frame 12.5, less the text lead -> 11, to 1.78 s = 22.25 -> up to frame 22;
    # interruption 49 .. 59 (4.78 s = 59.75); backchannel 74 .. 85 (6.88 s is exactly frame 86's start);
    # pause 99 .. 109 (8.8 s, no tail)
    expected = [*range(11, 23), *range(49, 60), *range(74, 86), *range(99, 110)]
    assert np.nonzero(marked)[0].tolist() == expected
    kind = list(DECISION_EVENTS)
    assert [kind[c - 1] for c in marked[[11, 59, 74, 109]]] == ["turn_end", "interruption", "user_backchannel", "pause"]
    assert not marked[int(10.5 / 0.08)] and not marked[int(12.2 / 0.08)]
    # A window past the dialogue's end is cut to it; no events, no marks.
    late = decision_frames({"events": [{"type": "interruption", "time": 15.9, "agent_stop": 16.5}]}, 80.0, 200)
    assert np.nonzero(late)[0].tolist() == [197, 198, 199]  # 15.9 s = frame 198.75
    assert not decision_frames({"events": []}, 80.0, 50).any()


class _Layout:
    """The slot geometry a ``WindowSampler`` reads (2 user ids, text, 2 agent codebooks)."""
    slot_size, q_in, pad_id = 5, 2, 0

    def special(self, name):
        return 99


def test_decision_weights_multiply_the_agent_targets_of_their_kind_of_frame_only():
    lay = _Layout()
    frames = 40
    seqs = [np.arange(1, 2 + frames * lay.slot_size, dtype=np.int32)]  # no PAD anywhere
    marks = np.zeros(frames, dtype=np.uint8)
    marks[10:14] = 1 + list(DECISION_EVENTS).index("interruption")
    marks[20:22] = 1 + list(DECISION_EVENTS).index("turn_end")
    cfg = TrainConfig(window_frames=frames, decision_weights={"interruption": 3.0})
    ids, plain, roles = WindowSampler(seqs, lay, cfg).window(np.random.default_rng(0))
    ids2, weighted, roles2 = WindowSampler(seqs, lay, cfg, [marks]).window(np.random.default_rng(0))
    assert (ids == ids2).all() and (roles == roles2).all()  # the same window: only its weights differ
    plain, weighted = plain.reshape(frames, lay.slot_size), weighted.reshape(frames, lay.slot_size)
    assert plain[10:14, lay.q_in:].min() > 0
    assert (weighted[10:14] == 3.0 * plain[10:14]).all()
    assert (weighted[14:] == plain[14:]).all() and (weighted[:10] == plain[:10]).all(), "turn ends left at 1"
    assert (weighted[:, :lay.q_in] == 0).all(), "user ids stay context only"
    with pytest.raises(ValueError, match="2 decision tracks for 1 dialogues"):
        WindowSampler(seqs, lay, cfg, [marks, marks])


@pytest.mark.parametrize("weights, named", [({"interuption": 2}, "Unknown decision kind(s) interuption"),
                                             ({"pause": -1}, "numbers >= 0"), ({"pause": "x"}, "numbers >= 0")])
def test_decision_weights_of_an_unknown_kind_or_value_are_one_clear_error(weights, named):
    with pytest.raises(ValueError, match=named.replace("(", r"\(").replace(")", r"\)")):
        TrainConfig(decision_weights=weights)


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """Two dialogues whose records carry a turn end event (the synthesized data's kind)."""
    tmp = tmp_path_factory.mktemp("decisions")
    out = tmp / "data"
    out.mkdir()
    for name, split in (("d0", "train"), ("d1", "val")):
        record = make_dialogue(out, name, "what colour is the sky", "the sky is blue", split, tmp)
        user, agent = record["turns"]
        record["events"] = [{"type": "turn_end", "time": user["end"], "agent_start": agent["start"],
                             "latency": agent["start"] - user["end"], "user_turn": 0, "agent_turn": 1}]
        (out / f"{name}.json").write_text(json.dumps(record))
    return out


def test_tokenize_stores_the_decision_frames_and_training_weights_them(interrupted, nano_model_dir, tmp_path):
    shards = tmp_path / "shards"
    assert main(["data", "tokenize", "--data", str(interrupted), "--out", str(shards), "--model", str(nano_model_dir),
                 "--mic-paths", "soxr-hq", "-q"]) == 0
    layout = shard_layout(shards)
    record = json.loads((interrupted / "d0.json").read_text())
    [track] = load_decisions(shards, "train")
    [seq] = load_split(shards, "train")
    assert len(track) == (len(seq) - 1) // layout.slot_size
    assert (track == decision_frames(record, layout.frame_ms, len(track), layout.text_lead)).all() and track.any()
    out = tmp_path / "run"
    assert main(["train", "--preset", "smoke", "--shards", str(shards), "--out", str(out), "--init",
                 str(nano_model_dir), "--set", "decision_weights.turn_end=4", "-q"]) == 0
    assert json.loads((out / "train_config.json").read_text())["decision_weights"] == {"turn_end": 4}


def test_shards_from_before_the_decision_frames_are_one_clear_error(interrupted, nano_model_dir, tmp_path, capsys):
    shards = tmp_path / "shards"
    assert main(["data", "tokenize", "--data", str(interrupted), "--out", str(shards), "--model", str(nano_model_dir),
                 "--mic-paths", "soxr-hq", "-q"]) == 0
    for entry in read_index(shards)["shards"]:  # rewrite each shard as older versions wrote it
        path = shards / entry["file"]
        with np.load(path) as z:
            kept = {k: z[k] for k in z.files if k != "decisions"}
        np.savez(path, **kept)
    # Without decision_weight they still train as before.
    assert main(["train", "--preset", "smoke", "--shards", str(shards), "--out", str(tmp_path / "a"), "--init",
                 str(nano_model_dir), "--steps", "2", "-q"]) == 0
    capsys.readouterr()
    assert main(["train", "--preset", "smoke", "--shards", str(shards), "--out", str(tmp_path / "b"), "--init",
                 str(nano_model_dir), "--set", "decision_weights.turn_end=4", "-q"]) != 0
    err = capsys.readouterr().err
    assert "before shards stored the decision frames" in err and "duplex data tokenize" in err
