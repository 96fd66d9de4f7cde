"""Tokenize + train at smoke scale on hand-made dialogues (independent of `duplex data synth`)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from agent.cli import main
from agent.training.tokenize import load_split, shard_layout, text_track
from listen.wavio import read_wav
from tests.conftest import espeak
from think.layout import DuplexLayout
from think.tokenizer import default_tokenizer

RATE = 16000


def _resample(x, rate):
    import soxr

    return soxr.resample(x, rate, RATE).astype(np.float32)


def make_dialogue(dir_, name, question, answer, split, tmp):
    """User asks at 0.3 s; the agent answers 0.5 s after the user ends; words timed by character share."""
    q, qr = read_wav(espeak(question, tmp / f"{name}-q.wav", voice="en-us+m3"))
    a, ar = read_wav(espeak(answer, tmp / f"{name}-a.wav", voice="en-gb"))
    q, a = _resample(q[:, 0], qr), _resample(a[:, 0], ar)
    q_start = 0.3
    a_start = q_start + len(q) / RATE + 0.5
    total = a_start + len(a) / RATE + 0.5
    audio = np.zeros((int(total * RATE), 2), np.float32)
    audio[int(q_start * RATE): int(q_start * RATE) + len(q), 0] = q
    audio[int(a_start * RATE): int(a_start * RATE) + len(a), 1] = a
    words, t = [], a_start
    dur = len(a) / RATE
    chars = sum(len(w) + 1 for w in answer.split())
    for w in answer.split():
        d = dur * (len(w) + 1) / chars
        words.append({"word": w, "start": round(t, 3), "end": round(t + d, 3)})
        t += d
    record = {"id": name, "split": split, "sample_rate": RATE, "duration": total,
              "turns": [{"speaker": "user", "start": q_start, "end": q_start + len(q) / RATE, "text": question,
                         "kind": "question", "words": [], "cut_at": None},
                        {"speaker": "agent", "start": a_start, "end": a_start + dur, "text": answer,
                         "kind": "answer", "words": words, "cut_at": None}],
              "events": [], "qa": [{"question": question, "answer": answer, "intent": "test", "turn_index": 0}]}
    sf.write(dir_ / f"{name}.wav", audio, RATE, subtype="PCM_16")
    (dir_ / f"{name}.json").write_text(json.dumps(record))
    return record


@pytest.fixture(scope="module")
def dialogues(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dlg")
    out = tmp / "data"
    out.mkdir()
    make_dialogue(out, "d0", "what is the capital of france", "the capital of france is paris", "train", tmp)
    make_dialogue(out, "d1", "how many legs does a cat have", "a cat has four legs", "train", tmp)
    make_dialogue(out, "d2", "what colour is the sky", "the sky is blue", "val", tmp)
    return out


def test_text_slot_leads_the_agent_audio_by_delta_frames(dialogues, nano_model_dir):
    from think.layout import DuplexLayout

    layout = DuplexLayout.load(nano_model_dir)
    record = json.loads((dialogues / "d0.json").read_text())
    tok = default_tokenizer()
    frames = int(np.ceil(record["duration"] / 0.08))
    text = text_track(record, layout, tok, frames)
    first_word = record["turns"][1]["words"][0]
    first_slot = int(np.nonzero(text != layout.pad_id)[0][0])
    assert first_slot == int(first_word["start"] // 0.08) - layout.text_lead
    pieces = [t for t in text.tolist() if t != layout.pad_id]
    assert pieces[-1] == layout.eot_id
    assert tok.decode(pieces[:-1]).strip() == "the capital of france is paris"


def test_an_interrupted_turn_ends_its_text_after_the_user_begins_not_before(nano_model_dir):
    """The cut word began before the user did; an EOT right after its pieces would make the model end the turn
    before anything in its input says so. The EOT waits for the frame where the script's audio stops."""
    layout = DuplexLayout.load(nano_model_dir)
    tok = default_tokenizer()
    words = [{"word": "my", "start": 1.0, "end": 1.2}, {"word": "name", "start": 1.2, "end": 1.6},
             {"word": "is", "start": 1.6, "end": 1.9}]
    turn = {"speaker": "agent", "start": 1.0, "end": 1.9, "text": "my name is", "kind": "answer", "words": words,
            "cut_at": 1.9, "planned_text": "my name is duplex."}
    user = {"speaker": "user", "start": 1.62, "end": 2.4, "text": "stop", "kind": "interruption", "words": [],
            "cut_at": None}
    text = text_track({"turns": [turn, user]}, layout, tok, 60)
    eot = int(np.nonzero(text == layout.eot_id)[0][0])
    assert eot == int(1.9 // 0.08) - layout.text_lead  # the frame before the script's audio stops (23 - 1)
    assert eot > int(1.62 // 0.08), "after the frame where the user begins"
    pieces = [t for t in text[:eot].tolist() if t != layout.pad_id]
    assert tok.decode(pieces).strip() == "my name is"  # only the words said; PAD between them and the EOT
    # An uninterrupted turn still ends right after its last word's pieces.
    done = text_track({"turns": [{**turn, "cut_at": None}]}, layout, tok, 60)
    last_piece = max(i for i, t in enumerate(done.tolist()) if t not in (layout.pad_id, layout.eot_id))
    assert done[last_piece + 1] == layout.eot_id


def test_shards_with_no_train_split_fail_before_a_model_is_made(dialogues, nano_model_dir, tmp_path, capsys):
    import shutil

    only_val = tmp_path / "val_only"
    only_val.mkdir()
    for f in dialogues.glob("d2.*"):
        shutil.copy(f, only_val / f.name)
    shards = tmp_path / "shards"
    assert main(["data", "tokenize", "--data", str(only_val), "--out", str(shards), "--model", str(nano_model_dir),
                 "-q"]) == 0
    capsys.readouterr()
    out = tmp_path / "run"
    assert main(["train", "--preset", "smoke", "--shards", str(shards), "--out", str(out), "-q"]) == 2
    assert "train split" in capsys.readouterr().err
    assert not (out / "init").exists()  # no random model made for nothing and left behind


def test_tokenize_then_train_smoke_writes_a_loadable_checkpoint(dialogues, nano_model_dir, tmp_path):
    shards = tmp_path / "shards"
    assert main(["data", "tokenize", "--data", str(dialogues), "--out", str(shards), "--model", str(nano_model_dir),
                 "-q"]) == 0
    layout = shard_layout(shards)
    train_seqs = load_split(shards, "train")
    assert len(train_seqs) == 2 and len(load_split(shards, "val")) == 1
    for seq in train_seqs:
        assert (len(seq) - 1) % layout.slot_size == 0
        layout.validate(seq[1:], start_position=0)
    # Resuming the tokenizer keeps the shards as they are.
    before = {p.name: p.stat().st_mtime_ns for p in shards.glob("*.npz")}
    assert main(["data", "tokenize", "--data", str(dialogues), "--out", str(shards), "--model", str(nano_model_dir),
                 "-q"]) == 0
    assert before == {p.name: p.stat().st_mtime_ns for p in shards.glob("*.npz")}

    out = tmp_path / "run"
    assert main(["train", "--preset", "smoke", "--shards", str(shards), "--out", str(out), "--init",
                 str(nano_model_dir), "-q"]) == 0
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 6 and all(np.isfinite(m["loss"]) for m in metrics)
    assert "val_loss" in metrics[-1] and "text" in metrics[0] and "audio0" in metrics[0]
    assert (out / "duplex_layout.json").is_file() and (out / "train_config.json").is_file()
    # The trained directory is a checkpoint the CLI accepts.
    from think.transformers_backend import TransformersBackend

    session = TransformersBackend.from_dir(out).open_session()
    r = session.step_sync(np.zeros(layout.q_in, dtype=np.int64))
    assert layout.is_text_slot_id(r.text_id)
    # And training resumes from last/.
    assert main(["train", "--preset", "smoke", "--shards", str(shards), "--out", str(out), "--init",
                 str(nano_model_dir), "--steps", "8", "--resume", "-q"]) == 0
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics][-2:] == [7, 8]


def _smoke_train(dialogues, model_dir, tmp_path, *args: str):
    """Tokenize the fixture dialogues for ``model_dir`` and run the smoke preset with ``args``; returns the run dir."""
    shards, out = tmp_path / "shards", tmp_path / "run"
    main(["data", "tokenize", "--data", str(dialogues), "--out", str(shards), "--model", str(model_dir), "-q"])
    assert main(["train", "--preset", "smoke", "--shards", str(shards), "--out", str(out), "--init", str(model_dir),
                 *args, "-q"]) == 0
    return out


def test_training_overfits_one_dialogue(dialogues, nano_model_dir, tmp_path):
    """The loss really goes down: 40 steps on the same windows cut the agent loss substantially."""
    out = _smoke_train(dialogues, nano_model_dir, tmp_path, "--steps", "40", "--set", "lr=0.01", "--set", "warmup=5",
                       "--set", "eval_every=0")
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])


def test_training_stops_at_its_wall_clock_budget_and_keeps_the_best_val_weights(dialogues, nano_model_dir, tmp_path):
    from safetensors.torch import load_file

    out = _smoke_train(dialogues, nano_model_dir, tmp_path, "--steps", "100000", "--set", "max_seconds=3",
                       "--set", "eval_every=2", "--set", "keep_best=true", "--set", "save_every=100000")
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    final = json.loads((out / "final_metrics.json").read_text())
    assert 1 <= len(metrics) < 100000 and final["wall_seconds"] < 60
    assert metrics[-1]["lr"] < 0.2 * max(m["lr"] for m in metrics)  # the schedule decayed with the clock
    vals = {m["step"]: m["val_loss"] for m in metrics if "val_loss" in m}
    assert final["best_step"] == min(vals, key=vals.get) and final["best_val_loss"] == min(vals.values())
    assert (out / "last" / "trainer_state.pt").is_file()
    saved = load_file(str(out / "model.safetensors"))
    assert saved and all(np.isfinite(v.float().numpy()).all() for v in saved.values())


def test_lora_preset_refuses_targets_vllm_cannot_serve(dialogues, nano_model_dir, tmp_path, capsys):
    code = main(["train", "--preset", "lora", "--shards", str(tmp_path), "--out", str(tmp_path / "o"),
                 "--init", str(nano_model_dir), "--set", "lora_targets=[embed_tokens]", "-q"])
    assert code == 2
    assert "vLLM cannot serve" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["5", "[]", "[q_proj, 5]", "{a: 1}"])
def test_lora_targets_that_are_not_a_list_of_names_are_one_sentence(tmp_path, capsys, value):
    """lora_targets=5 iterated an int (TypeError traceback); [q_proj, 5] joined an int into the message."""
    code = main(["train", "--preset", "lora", "--shards", str(tmp_path), "--out", str(tmp_path / "o"),
                 "--set", f"lora_targets={value}", "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "lora_targets must be a list of module names" in err or "vLLM cannot serve adapters on 5" in err
    assert not (tmp_path / "o").exists()


def test_eval_scores_held_out_dialogues_through_the_loop(dialogues, nano_model_dir, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("d0", "d2"):
        record = json.loads((dialogues / f"{name}.json").read_text())
        record["split"] = "test"
        agent = record["turns"][1]
        record["events"] = [{"type": "turn_end", "time": record["turns"][0]["end"]},
                            {"type": "interruption", "time": agent["start"] + 0.3}]
        (data / f"{name}.json").write_text(json.dumps(record))
        (data / f"{name}.wav").write_bytes((dialogues / f"{name}.wav").read_bytes())
    out = tmp_path / "eval"
    assert main(["eval", "--data", str(data), "--out", str(out), "--model", str(nano_model_dir), "-q",
                 "--set", "sampling.seed=3", "--set", "system_prompt=42"]) == 0
    result = json.loads((out / "eval.json").read_text())
    # the resolved session settings the scores were made with are saved beside them (the prompt as text)
    assert result["session"]["sampling"]["seed"] == 3 and result["session"]["system_prompt"] == "42"
    s = result["summary"]
    assert s["dialogues"] == 2 and s["questions"] == 2 and s["interruptions"] == 2
    assert 0.0 <= s["turn_take_over_rate"] <= 1.0 and 0.0 <= s["answer_accuracy"] <= 1.0
    assert all(len(d["answers"]) == 1 for d in result["dialogues"])
    # Intelligibility through the offline recogniser: the clean TTS channel is understood far better
    # than the untrained model's codec noise.
    assert main(["eval", "--data", str(data), "--out", str(out), "--model", str(nano_model_dir), "--asr", "-q"]) == 0
    s = json.loads((out / "eval.json").read_text())["summary"]
    assert s["clean_tts_wer"] is not None and s["clean_tts_wer"] < 0.5
    assert s["agent_speech_wer"] is None or s["agent_speech_wer"] > s["clean_tts_wer"]


def test_ctrl_c_during_eval_keeps_the_dialogues_already_scored(dialogues, nano_model_dir, tmp_path, monkeypatch,
                                                              capsys):
    import agent.evaluate as evaluate

    data = tmp_path / "data"
    data.mkdir()
    for name in ("d0", "d2"):
        record = json.loads((dialogues / f"{name}.json").read_text())
        record["split"] = "test"
        (data / f"{name}.json").write_text(json.dumps(record))
        (data / f"{name}.wav").write_bytes((dialogues / f"{name}.wav").read_bytes())
    real, calls = evaluate._run_dialogue, []

    async def stop_at_the_second(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return await real(*args, **kw)

    monkeypatch.setattr(evaluate, "_run_dialogue", stop_at_the_second)
    out = tmp_path / "eval"
    with pytest.raises(KeyboardInterrupt):
        evaluate.run_eval(evaluate.EvalConfig(data=str(data)), str(nano_model_dir), out, progress=False)
    result = json.loads((out / "eval.json").read_text())
    assert result["complete"] is False and result["summary"]["dialogues"] == 1
    assert "stopped after 1 of 2 dialogues" in capsys.readouterr().err


def test_eval_can_hear_the_user_through_a_live_input_path(dialogues, nano_model_dir, tmp_path, capsys):
    """`--mic-path browser-apm` scores the model on what the page's WebRTC processing passes on; an unknown
    path is refused in one sentence that names the choices."""
    data = tmp_path / "data"
    data.mkdir()
    record = json.loads((dialogues / "d0.json").read_text())
    record["split"] = "test"
    record["events"] = [{"type": "turn_end", "time": record["turns"][0]["end"]}]
    (data / "d0.json").write_text(json.dumps(record))
    (data / "d0.wav").write_bytes((dialogues / "d0.wav").read_bytes())
    out = tmp_path / "eval"
    assert main(["eval", "--data", str(data), "--out", str(out), "--model", str(nano_model_dir), "-q",
                 "--mic-path", "browser-apm"]) == 0
    result = json.loads((out / "eval.json").read_text())
    assert result["config"]["mic_path"] == "browser-apm"
    assert result["summary"]["dialogues"] == 1 and len(result["dialogues"][0]["turn_ends"]) == 1
    capsys.readouterr()
    assert main(["eval", "--data", str(data), "--out", str(out), "--model", str(nano_model_dir), "-q",
                 "--mic-path", "telephone"]) == 2
    err = capsys.readouterr().err
    assert "telephone" in err and "browser-apm" in err


def test_eval_mic_path_changes_what_the_model_hears(monkeypatch, dialogues, nano_model_dir):
    """The path's audio, at the codec rate, is what the session is given (not the WAV resampled again)."""
    import asyncio

    from agent import evaluate
    from agent.config import SessionConfig
    from agent.models import codec_for_layout
    from think.transformers_backend import TransformersBackend

    backend = TransformersBackend.from_dir(nano_model_dir)
    codec = codec_for_layout(backend.layout)
    rates = []
    real = evaluate.Session

    def spy(*args, input_rate, **kw):
        rates.append(input_rate)
        return real(*args, input_rate=input_rate, **kw)

    monkeypatch.setattr(evaluate, "Session", spy)
    wav = dialogues / "d0.wav"
    plain, _ = asyncio.run(evaluate._run_dialogue(backend, codec, SessionConfig(), wav))
    apm, _ = asyncio.run(evaluate._run_dialogue(backend, codec, SessionConfig(), wav, "browser-apm"))
    assert rates[0] != codec.spec.sample_rate and rates[1] == codec.spec.sample_rate
    assert abs(len(plain) - len(apm)) <= 1  # same conversation length, frame for frame
    assert any((a.user.codes != b.user.codes).any() for a, b in zip(plain, apm))


def test_answer_score_rewards_the_expected_words():
    from agent.evaluate import answer_score

    assert answer_score("well, the capital of France is Paris!", "the capital of france is paris")["contains"]
    assert not answer_score("the capital is rome", "the capital of france is paris")["contains"]
    assert answer_score("", "paris")["f1"] == 0.0


def _answered_sky():
    """A scored-dialogue fixture: the agent says "the sky is blue" over frames 12-21, and a user backchannel
    starts at frame 15, inside the answer."""
    from types import SimpleNamespace

    words = {12: 7, 13: 8, 20: 9}
    outs = [SimpleNamespace(mark=SimpleNamespace(agent_rms=0.1 if f in range(12, 22) else 0.0), text_id=words.get(f, 150),
                            text_delta={7: " the", 8: " sky", 9: " is blue"}.get(words.get(f), ""), heard_delta="")
            for f in range(40)]
    record = {"id": "d1", "events": [], "turns": [
        {"speaker": "user", "start": 0.1, "end": 0.8, "kind": "request"},
        {"speaker": "agent", "start": 0.96, "end": 1.8, "kind": "answer"},
        {"speaker": "user", "start": 1.2, "end": 1.5, "kind": "backchannel"},
        {"speaker": "user", "start": 2.6, "end": 3.0, "kind": "request"}],
        "qa": [{"question": "what colour is the sky", "answer": "the sky is blue", "intent": "colour", "turn_index": 0}]}
    return record, outs


def _score(record, outs):
    from agent.evaluate import EvalConfig, score_dialogue

    return score_dialogue(record, outs, 0.08, EvalConfig(), pad_id=150, text_vocab=100)


def test_a_user_backchannel_inside_the_answer_does_not_end_it():
    score = _score(*_answered_sky())
    assert score.answers[0]["said"] == "the sky is blue" and score.answers[0]["contains"]


def test_answer_windows_end_at_the_next_request_and_skip_interrupted_answers():
    from agent.evaluate import answer_windows

    record, _ = _answered_sky()
    record["qa"].append({"question": "tell me a story", "answer": "once", "turn_index": 3, "completed": False})
    # frames of 80 ms: the question ends at 0.8 s (frame 10), the next request starts at 2.6 s (frame 32);
    # the backchannel at 1.2 s does not end the window, the interrupted answer has none
    assert [(a, b) for a, b, _ in answer_windows(record, 0.08, 40)] == [(10, 32)]
    assert [(a, b) for a, b, _ in answer_windows(record, 0.08, 20)] == [(10, 20)]  # clamped to the frames run


def test_a_cut_with_no_user_speech_in_the_second_before_it_is_counted_as_set_off_by_echo():
    from agent.evaluate import summarize

    record, outs = _answered_sky()
    # cuts at 1.44 s (the backchannel 1.2-1.5 s is under way), at 2.24 s (0.74 s after it ended: the
    # canceller may have hidden it that long), at 3.92 s (0.92 s after the last request ended), and at
    # 4.96 s, with nobody speaking for almost 2 s: the agent's echo or noise set that one off
    outs.extend(type(outs[0])(mark=type(outs[0].mark)(agent_rms=0.0), text_id=150, text_delta="", heard_delta="")
                for _ in range(30))
    for f in (18, 28, 49, 62):
        outs[f].cut = True
    score = _score(record, outs)
    assert [c["user_speaking"] for c in score.cuts] == [True, True, True, False]
    summary = summarize([score])
    assert summary["barge_in_cuts"] == 4 and summary["barge_in_cuts_without_user_speech"] == 1


def _talking(quiet_from: int, quiet_to: int):
    """The agent talks over frames 10-39 except ``quiet_from``-``quiet_to``; a user backchannel at frames 15-19."""
    from types import SimpleNamespace

    outs = [SimpleNamespace(mark=SimpleNamespace(agent_rms=0.1 if 10 <= f < 40 and not quiet_from <= f < quiet_to
                                                 else 0.0), text_id=150, text_delta="", heard_delta="")
            for f in range(60)]
    record = {"id": "d1", "turns": [], "qa": [],
              "events": [{"type": "user_backchannel", "time": 15 * 0.08 + 0.01, "end": 19 * 0.08 + 0.01}]}
    return _score(record, outs).backchannels[0]


def test_a_gap_between_words_at_a_user_backchannel_is_not_a_stop():
    assert not _talking(16, 19)["agent_stopped"]  # 240 ms between two words, then it talks on
    assert _talking(17, 60)["agent_stopped"]  # silent from inside the backchannel on: it stopped
    assert not _talking(24, 60)["agent_stopped"]  # its answer ended on its own, after the backchannel


def test_eval_reference_scores_the_dialogues_own_agent_perfectly(dialogues, nano_model_dir, tmp_path, capsys):
    """`--reference` scores the data's own agent channel: the script answers every question and takes every turn."""
    data = tmp_path / "data"
    data.mkdir()
    for name in ("d0", "d2"):
        record = json.loads((dialogues / f"{name}.json").read_text())
        record["split"] = "test"
        record["events"] = [{"type": "turn_end", "time": record["turns"][0]["end"]}]
        (data / f"{name}.json").write_text(json.dumps(record))
        (data / f"{name}.wav").write_bytes((dialogues / f"{name}.wav").read_bytes())
    out = tmp_path / "eval"
    assert main(["eval", "--data", str(data), "--out", str(out), "--model", str(nano_model_dir), "--reference",
                 "-q"]) == 0
    result = json.loads((out / "eval.json").read_text())
    assert result["model"].startswith("reference")
    s = result["summary"]
    assert s["turn_take_over_rate"] == 1.0 and s["answer_accuracy"] == 1.0 and s["questions"] == 2
    capsys.readouterr()
    assert main(["eval", "--data", str(data), "--out", str(out), "--reference", "--mic-path", "browser-apm",
                 "-q"]) == 2
    assert "--reference scores the data's own agent" in capsys.readouterr().err


def test_eval_counts_the_right_answers_per_intent():
    from agent.evaluate import summarize

    record, outs = _answered_sky()
    missed = _score({**record, "qa": [{**record["qa"][0], "answer": "the sea is green"}]}, outs)
    assert summarize([_score(record, outs), missed])["answers_by_intent"] == {"colour": "1/2"}


def test_lora_adapter_trained_by_the_cli_changes_the_persona_and_serves_by_name(dialogues, nano_model_dir, tmp_path):
    """A persona adapter (the agent answers as a pirate) trained with `duplex train --preset lora`: vLLM-servable
    files, loads by name in the transformers backend, and makes the persona's answers more likely than the base."""
    persona = tmp_path / "persona"
    persona.mkdir()
    tmp = tmp_path / "tts"
    tmp.mkdir()
    make_dialogue(persona, "p0", "what colour is the sky", "ahoy matey the sky be blue", "train", tmp)
    make_dialogue(persona, "p1", "how are you today", "ahoy matey i be grand", "val", tmp)
    # LoRA needs a trained base: a random model's tied embeddings are too small for any adapter on the
    # attention/MLP projections to sharpen its predictions. A quick scratch run gives one.
    base_shards, base = tmp_path / "base-shards", tmp_path / "base"
    main(["data", "tokenize", "--data", str(dialogues), "--out", str(base_shards), "--model", str(nano_model_dir), "-q"])
    assert main(["train", "--preset", "smoke", "--shards", str(base_shards), "--out", str(base), "--init",
                 str(nano_model_dir), "--steps", "40", "--set", "lr=0.01", "--set", "warmup=3", "--set",
                 "eval_every=0", "-q"]) == 0
    shards = tmp_path / "shards"
    assert main(["data", "tokenize", "--data", str(persona), "--out", str(shards), "--model", str(base), "-q"]) == 0
    out = tmp_path / "lora"
    assert main(["train", "--preset", "lora", "--shards", str(shards), "--out", str(out), "--init", str(base),
                 "--steps", "30", "--set", "batch_size=2", "--set", "window_frames=40", "--set", "lr=0.02",
                 "--set", "warmup=3", "--set", "eval_every=0", "--set", "lora_r=8", "-q"]) == 0
    adapter_cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert not adapter_cfg.get("modules_to_save")
    assert set(adapter_cfg["target_modules"]) <= {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                   "down_proj"}
    assert not list((out / "adapter").glob("*embed*")) and not (out / "model.safetensors").exists()

    import torch

    from think.transformers_backend import TransformersBackend

    layout = shard_layout(shards)
    seq = load_split(shards, "train")[0].astype(int).tolist()
    text_positions = [i for i in range(1, len(seq)) if (i - 1) % layout.slot_size == layout.q_in
                      and seq[i] < layout.text_vocab_size]
    backend = TransformersBackend.from_dir(base, adapters_dir=out)

    def persona_logprob(session) -> float:
        lp = session.teacher_forced_logprobs(seq)
        return float(sum(lp[i - 1, seq[i]] for i in text_positions))

    base = persona_logprob(backend.open_session())
    tuned = persona_logprob(backend.open_session(adapter="adapter"))
    assert tuned > base + 5.0, (base, tuned)
    with pytest.raises(ValueError):
        backend.open_session(adapter="../lora")


def _tokenize(dialogues, model_dir, shards, *args: str) -> int:
    return main(["data", "tokenize", "--data", str(dialogues), "--out", str(shards), "--model", str(model_dir),
                 "--mic-paths", "soxr-hq", *args, "-q"])


def _train(shards, out, model_dir, *args: str) -> int:
    return main(["train", "--preset", "smoke", "--shards", str(shards), "--out", str(out), "--init", str(model_dir),
                 *args, "-q"])


@pytest.mark.parametrize("setting, named", [
    ("steps=abc", "steps must be an integer"), ("window_frames=1.5", "window_frames must be an integer"),
    ("save_every=0", "save_every must be >= 1"), ("lr=-1", "lr must be > 0"), ("threads=-2", "threads must be >= 0"),
    ("warmup=-5", "warmup must be >= 0"), ("eval_every=-1", "eval_every must be >= 0"),
])
def test_train_settings_of_the_wrong_type_or_range_are_one_clear_error(tmp_path, capsys, setting, named):
    code = main(["train", "--preset", "smoke", "--shards", str(tmp_path), "--out", str(tmp_path / "o"),
                 "--set", setting, "-q"])
    err = capsys.readouterr().err
    assert code == 2 and named in err and "Traceback" not in err, err
    assert not (tmp_path / "o").exists()  # refused before anything was made


def test_a_finished_run_is_neither_restarted_nor_resumed_by_accident(dialogues, nano_model_dir, tmp_path, capsys):
    shards, out = tmp_path / "shards", tmp_path / "run"
    assert _tokenize(dialogues, nano_model_dir, shards) == 0
    assert _train(shards, out, nano_model_dir, "--steps", "2") == 0
    kept = {p: p.read_bytes() for p in (out / "final_metrics.json", out / "metrics.jsonl", out / "model.safetensors",
                                        out / "last" / "trainer_state.pt")}
    capsys.readouterr()
    # Without --resume: refused (it used to start over and replace the run's state and weights).
    assert _train(shards, out, nano_model_dir, "--steps", "2") == 2
    assert "already holds a training run; pass --resume" in capsys.readouterr().err
    # --resume with nothing left to train: refused (it used to overwrite final_metrics.json with an empty row).
    assert _train(shards, out, nano_model_dir, "--steps", "2", "--resume") == 2
    assert "already finished (2 of 2 steps); raise --steps" in capsys.readouterr().err
    # --resume as another kind of run: named before the model is built (it used to be a torch traceback).
    assert main(["train", "--preset", "lora", "--shards", str(shards), "--out", str(out), "--init",
                 str(nano_model_dir), "--steps", "4", "--resume", "-q"]) == 2
    assert "changes mode (the run's: 'scratch')" in capsys.readouterr().err
    assert all(p.read_bytes() == data for p, data in kept.items())
    # A damaged state (a kill or a copy cut short) is one sentence, not a torch traceback.
    state = out / "last" / "trainer_state.pt"
    state.write_bytes(kept[state][:1000])
    assert _train(shards, out, nano_model_dir, "--steps", "4", "--resume") == 2
    err = capsys.readouterr().err
    assert "trainer_state.pt is corrupt or incomplete" in err and "Traceback" not in err
    # --force starts over on purpose.
    assert _train(shards, out, nano_model_dir, "--steps", "2", "--force") == 0


def _ctrl_c_on_call(real, n: int):
    """``real``, but its ``n``-th call raises KeyboardInterrupt (Ctrl-C) instead of running."""
    calls = []

    def wrapped(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    return wrapped


def test_ctrl_c_during_training_keeps_the_steps_done_for_resume(dialogues, nano_model_dir, tmp_path, capsys,
                                                               monkeypatch):
    import torch

    from agent.training import train as train_mod

    shards, out = tmp_path / "shards", tmp_path / "run"
    assert _tokenize(dialogues, nano_model_dir, shards) == 0
    real = train_mod.forward_loss
    monkeypatch.setattr(train_mod, "forward_loss", _ctrl_c_on_call(real, 4))
    assert _train(shards, out, nano_model_dir, "--steps", "6", "--set", "eval_every=0", "--set",
                  "save_every=100") == 130
    assert "stopped at step 3 of 6" in capsys.readouterr().err
    assert torch.load(out / "last" / "trainer_state.pt", weights_only=False)["step"] == 3
    monkeypatch.setattr(train_mod, "forward_loss", real)
    assert _train(shards, out, nano_model_dir, "--steps", "6", "--set", "eval_every=0", "--set", "save_every=100",
                  "--resume") == 0
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_damaged_shards_are_named_and_a_rerun_of_tokenize_repairs_them(dialogues, nano_model_dir, tmp_path, capsys):
    shards = tmp_path / "shards"
    assert _tokenize(dialogues, nano_model_dir, shards) == 0
    shard = shards / "train-0000.npz"
    good = shard.read_bytes()
    shard.write_bytes(good[:500])  # an interrupted copy
    capsys.readouterr()
    assert _train(shards, tmp_path / "run", nano_model_dir, "--steps", "1") == 2
    err = capsys.readouterr().err
    assert "train-0000.npz is corrupt or incomplete" in err and "Traceback" not in err
    assert _tokenize(dialogues, nano_model_dir, shards) == 0  # resuming writes the damaged shard again
    assert len(load_split(shards, "train")) == 2
    (shards / "shards.json").write_text('{"layout": ')
    assert _train(shards, tmp_path / "run2", nano_model_dir, "--steps", "1") == 2
    assert "shards.json is corrupt" in capsys.readouterr().err


def test_a_tokenize_stopped_half_way_is_not_trained_on_nor_resumed_with_another_layout(
        dialogues, nano_model_dir, tmp_path, capsys, monkeypatch):
    from agent.training import tokenize as tok

    shards = tmp_path / "shards"
    real = tok.tokenize_dialogue_and_turns
    monkeypatch.setattr(tok, "tokenize_dialogue_and_turns", _ctrl_c_on_call(real, 2))
    assert _tokenize(dialogues, nano_model_dir, shards, "--shard-size", "1") == 130
    monkeypatch.setattr(tok, "tokenize_dialogue_and_turns", real)
    capsys.readouterr()
    assert _train(shards, tmp_path / "run", nano_model_dir, "--steps", "1") == 2
    assert "unfinished `duplex data tokenize` run" in capsys.readouterr().err
    # Another layout (its shard files would have been reused as they are): refused.
    assert main(["data", "tokenize", "--data", str(dialogues), "--out", str(shards), "--codec", "codec2-3200",
                 "--mic-paths", "soxr-hq", "-q"]) == 2
    assert "shards of another layout" in capsys.readouterr().err
    assert _tokenize(dialogues, nano_model_dir, shards, "--shard-size", "1") == 0  # the same arguments finish it
    assert len(load_split(shards, "train")) == 2 and shard_layout(shards) == DuplexLayout.load(nano_model_dir)


@pytest.mark.parametrize("content, named", [
    ('{"id": "x", ', "is not a valid dialogue JSON file"),
    ('[1, 2]', "does not hold a JSON object"),
    ('{"id": "x", "split": "test"}', "has no list of turns"),
    ('{"id": "x", "split": "test", "turns": [{"speaker": "agent"}]}', "a turn lacks its speaker, start or end"),
    ('{"id": "x", "split": "test", "turns": [{"speaker": "user", "start": "0", "end": 1}]}',
     "a turn's start or end is not a number"),
    ('{"id": "x", "split": "test", "turns": [], "events": [{"type": "turn_end"}]}',
     "an event lacks its type or a numeric time"),
    ('{"id": "x", "split": "test", "turns": [], "events": [{"type": "pause", "time": 1, "end": null}]}',
     "an event's end or duration is not a number"),
    ('{"id": "x", "split": "test", "turns": [], "qa": [{"question": "hi"}]}',
     "a question lacks its question or answer text"),
    ('{"id": "x", "split": "test", "turns": [], "qa": [{"question": "q", "answer": "a", "turn_index": 3}]}',
     "a question's turn_index 3 is not one of its 0 turns"),
])
def test_a_malformed_dialogue_file_is_named_by_tokenize_and_eval(dialogues, nano_model_dir, tmp_path, capsys,
                                                                 content, named):
    data = tmp_path / "data"
    data.mkdir()
    for f in dialogues.glob("d0.*"):
        (data / f.name).write_bytes(f.read_bytes())
    (data / "x.json").write_text(content)
    (data / "x.wav").write_bytes((dialogues / "d0.wav").read_bytes())
    assert _tokenize(data, nano_model_dir, tmp_path / "shards") == 2
    err = capsys.readouterr().err
    assert f"x.json {named}" in err or ("x.json is not a dialogue" in err and named in err), err
    assert main(["eval", "--data", str(data), "--out", str(tmp_path / "e"), "--model", str(nano_model_dir), "-q"]) == 2
    err = capsys.readouterr().err
    assert "x.json" in err and named in err and "Traceback" not in err, err


@pytest.mark.parametrize("damage, named", [
    (lambda wav: wav.write_bytes(wav.read_bytes()[:100]), "is truncated"),  # 14 samples of a 3 s dialogue
    (lambda wav: sf.write(wav, sf.read(wav)[0][:, 0], sf.info(wav).samplerate), "must have 2 channels"),
])
def test_a_dialogue_whose_audio_is_truncated_or_mono_is_named_by_tokenize_and_eval(dialogues, nano_model_dir,
                                                                                  tmp_path, capsys, damage, named):
    """A truncated WAV was scored as a conversation in which nobody spoke; a mono one was an IndexError."""
    data = tmp_path / "data"
    data.mkdir()
    for f in dialogues.glob("d2.*"):
        (data / f.name).write_bytes(f.read_bytes())
    record = json.loads((data / "d2.json").read_text())
    (data / "d2.json").write_text(json.dumps({**record, "split": "test"}))
    damage(data / "d2.wav")
    assert main(["eval", "--data", str(data), "--out", str(tmp_path / "e"), "--model", str(nano_model_dir), "-q",
                 "--mic-path", "soxr-hq"]) == 2
    err = capsys.readouterr().err
    assert "d2.wav" in err and named in err and "Traceback" not in err, err
    assert _tokenize(data, nano_model_dir, tmp_path / "shards") == 2
    err = capsys.readouterr().err
    assert "d2.wav" in err and named in err, err


def test_eval_and_tokenize_refuse_counts_that_mean_nothing(dialogues, nano_model_dir, tmp_path, capsys):
    assert main(["eval", "--data", str(dialogues), "--out", str(tmp_path / "e"), "--model", str(nano_model_dir),
                 "--split", "val", "--limit", "-1", "-q"]) == 2  # it used to score exactly one dialogue
    assert "--limit must be >= 0" in capsys.readouterr().err
    assert _tokenize(dialogues, nano_model_dir, tmp_path / "s", "--shard-size", "-1") == 2  # it wrote no shard
    assert "--shard-size must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "s" / "shards.json").exists()


def test_eval_tells_the_turns_the_answer_prompt_began_from_those_the_model_took():
    from types import SimpleNamespace

    from agent.evaluate import summarize

    def answered(start: int, prompt_at: int | None, talk: int):
        """The user's turn ends at frame 10; the agent talks from ``start`` for ``talk`` frames."""
        outs = [SimpleNamespace(mark=SimpleNamespace(agent_rms=0.1 if start <= f < start + talk else 0.0,
                                                     speak_now=f == prompt_at),
                                text_id=150, text_delta="", heard_delta="") for f in range(60)]
        record = {"id": "d", "turns": [], "qa": [], "events": [{"type": "turn_end", "time": 10 * 0.08}]}
        return _score(record, outs)

    took, prompted, missed = answered(13, None, 10), answered(30, 29, 2), answered(50, None, 5)
    assert [s.turn_ends[0]["prompted"] for s in (took, prompted, missed)] == [False, True, False]
    s = summarize([took, prompted, missed])
    assert s["turn_take_over_rate"] == round(2 / 3, 4) and s["turn_take_over_rate_unprompted"] == round(1 / 3, 4)
    assert s["turns_prompted"] == 1 and s["prompted_answer_active_ms_median"] == 160.0
    assert s["answer_active_ms_median"] == 800.0


def test_eval_counts_the_pauses_and_turn_ends_where_the_policy_made_the_agent_wait():
    from types import SimpleNamespace

    from agent.evaluate import summarize

    def run(wait_frames: set[int], start: int | None):
        """A pause from frame 10 to 20, then a turn end at frame 30; the agent talks from ``start``."""
        outs = [SimpleNamespace(mark=SimpleNamespace(agent_rms=0.1 if start is not None and f >= start else 0.0,
                                                     speak_now=False, wait=f in wait_frames),
                                text_id=150, text_delta="", heard_delta="") for f in range(60)]
        record = {"id": "d", "turns": [], "qa": [], "events": [
            {"type": "pause", "time": 10 * 0.08, "end": 20 * 0.08}, {"type": "turn_end", "time": 30 * 0.08},
            {"type": "agent_backchannel", "time": 45 * 0.08, "end": 48 * 0.08}]}
        return _score(record, outs)

    held, late = run({11, 12, 13}, 33), run({31, 32}, 34)
    assert [s.pauses[0]["waited"] for s in (held, late)] == [True, False]
    assert [s.turn_ends[0]["waited"] for s in (held, late)] == [False, True]
    s = summarize([held, late])
    assert (s["pauses_waited"], s["turns_waited"]) == (1, 1)
    # the breath where the script says "uh-huh": the agent talking from frame 33 on is heard there; held, not
    quiet = run({44, 45, 46, 47}, None)
    assert [x.agent_backchannels[0]["spoke"] for x in (held, quiet)] == [True, False]
    s = summarize([held, quiet])
    assert (s["agent_backchannel_points"], s["agent_heard_at_backchannel_points"]) == (2, 0.5)
    assert s["agent_backchannel_points_waited"] == 1
