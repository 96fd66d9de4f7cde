"""``duplex chat`` end to end through ``agent.cli.main``: a real nano model, real codec2, espeak-ng
speech, and the bad inputs a user can hand it. No timing upper bounds (benchmarks measure speed);
``pytest.mark.timeout`` only turns a hang into a failure."""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from listen.wavio import wav_info
from tests.agent.conftest import best_correlation, espeak, read_stereo

FRAME_S = 0.08  # codec2 preset: 80 ms frames
CODEC_RATE = 8000

pytestmark = pytest.mark.timeout(120)


def _side(out: Path, suffix: str) -> Path:
    return out.with_name(out.stem + suffix)


def _chat(run_cli, model: Path, inp: Path, out: Path, *extra: str | Path):
    """``duplex chat`` with no tail unless ``extra`` asks for one: these tests count the input's frames."""
    tail = () if "--tail" in extra else ("--tail", "0")
    return run_cli("chat", "--in", inp, "--out", out, "--model", model, "-q", *tail, *extra)


def _mono(path: Path) -> tuple[np.ndarray, int]:
    x, rate = sf.read(str(path), dtype="float32", always_2d=True)
    return x.mean(axis=1), rate


def _assert_clean_error(res, *words: str) -> str:
    """Exit 2, one 'duplex: error:' line naming the problem, no traceback."""
    assert res.rc == 2, (res.rc, res.err)
    assert "Traceback" not in res.err
    assert len(res.error_lines) == 1, res.err
    line = res.error_lines[0]
    for w in words:
        assert w.lower() in line.lower(), line
    return line


def _latency(out: Path) -> dict:
    return json.loads(_side(out, ".latency.json").read_text())


# ---- the happy path ----------------------------------------------------------------------------

def test_chat_on_espeak_question_writes_time_aligned_stereo_wav(run_cli, nano_model, question_wav, tmp_path):
    out = tmp_path / "dialogue.wav"
    res = _chat(run_cli, nano_model, question_wav, out, "--seed", "3")
    assert res.rc == 0, res.err
    assert "wrote" in res.out

    info = sf.info(str(out))
    assert info.channels == 2 and info.samplerate == CODEC_RATE
    x, in_rate = _mono(question_wav)
    assert abs(info.duration - len(x) / in_rate) <= FRAME_S

    # Left channel: what the model heard, i.e. the input resampled to the output rate, time-aligned.
    y, _ = read_stereo(out)
    ref = soxr.resample(x, in_rate, CODEC_RATE)
    corr, lag = best_correlation(y[:, 0], ref)
    assert corr > 0.95 and abs(lag) <= 2, (corr, lag)

    assert _side(out, ".txt").is_file()
    transcript = json.loads(_side(out, ".transcript.json").read_text())
    assert isinstance(transcript, list)

    report = _latency(out)
    summary = report["summary"]
    frames = report["frames"]
    n_frames = len(y) // int(FRAME_S * CODEC_RATE)
    assert len(frames) == summary["frames"] == n_frames == math.ceil(len(x) / in_rate / FRAME_S)
    assert [f["frame"] for f in frames] == list(range(n_frames))
    for f in frames:
        for key in ("listen_ms", "think_ms", "speak_ms", "total_ms"):
            assert isinstance(f[key], (int, float)) and f[key] >= 0
    assert isinstance(summary["real_time_factor_p95"], float) and summary["real_time_factor_p95"] > 0
    assert summary["nonfinite_input_samples"] == 0
    assert summary["output_seconds"] == pytest.approx(info.duration, abs=1e-3)

    config = json.loads(_side(out, ".config.json").read_text())
    assert config["session"]["sampling"]["seed"] == 3
    assert config["layout"]["codec"]["name"] == "codec2"
    assert Path(config["chat"]["input"]) == question_wav


@pytest.fixture(scope="module")
def thirty_second_speech(tmp_path_factory) -> Path:
    """Exactly 30 s: espeak-ng sentences separated by silences (22050 Hz)."""
    d = tmp_path_factory.mktemp("long")
    parts = []
    for i, text in enumerate(["Good morning, could you help me plan a trip?",
                              "I would like to visit the mountains next week.",
                              "Thank you, that sounds wonderful."]):
        x, rate = _mono(espeak(d / f"s{i}.wav", text))
        parts.append(x)
    gap = np.zeros(int(1.5 * rate), np.float32)
    seq = []
    while sum(len(p) for p in seq) < 30 * rate:
        for p in parts:
            seq += [p, gap]
    audio = np.concatenate(seq)[: 30 * rate]
    path = d / "thirty.wav"
    sf.write(str(path), audio, rate, subtype="PCM_16")
    return path


def test_chat_30_second_input_gives_30_second_output_and_every_frame_timed(run_cli, nano_model,
                                                                          thirty_second_speech, tmp_path):
    assert wav_info(thirty_second_speech).duration == pytest.approx(30.0)
    out = tmp_path / "long.wav"
    res = _chat(run_cli, nano_model, thirty_second_speech, out)
    assert res.rc == 0, res.err
    info = sf.info(str(out))
    assert abs(info.duration - 30.0) <= FRAME_S
    report = _latency(out)
    n_frames = info.frames // int(FRAME_S * CODEC_RATE)
    assert len(report["frames"]) == report["summary"]["frames"] == n_frames == 375
    assert all(f["total_ms"] > 0 for f in report["frames"])
    assert report["summary"]["frame_total_ms"]["count"] == n_frames
    # The VAD heard the speech and the silences between sentences.
    speech = [f["user_speech"] for f in report["frames"]]
    assert any(speech) and not all(speech)


def test_tail_extends_output_by_requested_seconds(run_cli, nano_model, question_wav, tmp_path):
    plain, tailed = tmp_path / "plain.wav", tmp_path / "tailed.wav"
    assert _chat(run_cli, nano_model, question_wav, plain).rc == 0
    res = _chat(run_cli, nano_model, question_wav, tailed, "--tail", "2")
    assert res.rc == 0, res.err
    a, b = sf.info(str(plain)), sf.info(str(tailed))
    assert b.frames - a.frames == 2 * CODEC_RATE  # 25 frames of 80 ms, exactly
    assert _latency(tailed)["summary"]["frames"] == _latency(plain)["summary"]["frames"] + 25
    y, _ = read_stereo(tailed)
    assert np.all(y[a.frames:, 0] == 0.0)  # the user is silent in the tail
    assert _latency(tailed)["summary"]["input_seconds"] == _latency(plain)["summary"]["input_seconds"]


def test_default_tail_lets_the_agent_answer_after_the_input_ends(run_cli, nano_model, question_wav, tmp_path):
    """No --tail: the run goes on after the file until the agent has been quiet 1.5 s (at most 10 s)."""
    from agent.chat import AUTO_TAIL_MAX_SECONDS, AUTO_TAIL_QUIET_SECONDS

    out = tmp_path / "auto.wav"
    res = run_cli("chat", "--in", question_wav, "--out", out, "--model", nano_model, "-q")
    assert res.rc == 0, res.err
    summary = _latency(out)["summary"]
    extra = summary["output_seconds"] - summary["input_seconds"]
    assert AUTO_TAIL_QUIET_SECONDS - 0.1 <= extra <= AUTO_TAIL_MAX_SECONDS + 0.1, summary
    assert json.loads(_side(out, ".config.json").read_text())["chat"]["tail_seconds"] is None


def test_out_rate_resamples_both_channels(run_cli, nano_model, question_wav, tmp_path):
    out = tmp_path / "hi.wav"
    res = _chat(run_cli, nano_model, question_wav, out, "--out-rate", "16000")
    assert res.rc == 0, res.err
    info = sf.info(str(out))
    x, rate = _mono(question_wav)
    assert info.samplerate == 16000 and info.channels == 2
    assert abs(info.duration - len(x) / rate) <= FRAME_S
    y, _ = read_stereo(out)
    heard = soxr.resample(soxr.resample(x, rate, CODEC_RATE), CODEC_RATE, 16000)
    corr, _ = best_correlation(y[:, 0], heard)
    assert corr > 0.9


@pytest.mark.timeout(60)
def test_realtime_chat_paces_input_in_real_time(run_cli, nano_model, question_wav, tmp_path):
    x, rate = _mono(question_wav)
    x = np.concatenate([x, np.zeros(2 * rate, np.float32)])[: 2 * rate]  # exactly 2 s
    inp = tmp_path / "two.wav"
    sf.write(str(inp), x, rate, subtype="PCM_16")
    out = tmp_path / "rt.wav"
    t0 = time.perf_counter()
    res = _chat(run_cli, nano_model, inp, out, "--realtime")
    wall = time.perf_counter() - t0
    assert res.rc == 0, res.err
    summary = _latency(out)["summary"]
    assert summary["realtime"] is True
    assert summary["wall_seconds"] >= 1.8 and wall >= 1.8
    # Each underrun (the feeder late for a tick, e.g. on a loaded machine) inserts one silent frame.
    underruns = summary["user_underruns"]
    assert underruns <= 3
    assert abs(sf.info(str(out)).duration - 2.0 - underruns * FRAME_S) <= FRAME_S


# ---- bad and unusual inputs --------------------------------------------------------------------

def test_nan_and_inf_samples_are_silenced_and_counted(run_cli, nano_model, tmp_path):
    rate = 16000
    x = (0.3 * np.sin(2 * np.pi * 220 * np.arange(rate) / rate)).astype(np.float32)
    x[1000:1100] = np.nan
    x[5000] = np.inf
    x[6000] = -np.inf
    inp = tmp_path / "nan.wav"
    sf.write(str(inp), x, rate, subtype="FLOAT")
    out = tmp_path / "out.wav"
    res = _chat(run_cli, nano_model, inp, out)
    assert res.rc == 0, res.err
    assert abs(sf.info(str(out)).duration - 1.0) <= FRAME_S
    assert _latency(out)["summary"]["nonfinite_input_samples"] == 102
    assert "102 input samples were NaN or infinite" in res.out
    y, _ = read_stereo(out)
    assert np.isfinite(y).all() and np.abs(y[:, 0]).max() > 0.1


def test_empty_wav_gives_empty_conversation_and_says_so(run_cli, nano_model, tmp_path):
    inp = tmp_path / "empty.wav"
    sf.write(str(inp), np.zeros(0, np.float32), 16000, subtype="PCM_16")
    assert inp.stat().st_size > 0 and wav_info(inp).frames == 0
    out = tmp_path / "out.wav"
    res = _chat(run_cli, nano_model, inp, out)
    assert res.rc == 0, res.err
    assert "holds no audio" in res.err
    info = sf.info(str(out))
    assert info.frames == 0 and info.channels == 2
    report = _latency(out)
    assert report["frames"] == [] and report["summary"]["frames"] == 0
    assert report["summary"]["real_time_factor_p95"] is None


def test_wav_shorter_than_one_frame_gives_one_frame(run_cli, nano_model, tmp_path):
    inp = tmp_path / "short.wav"
    sf.write(str(inp), np.full(200, 0.2, np.float32), 16000, subtype="PCM_16")  # 12.5 ms
    out = tmp_path / "out.wav"
    res = _chat(run_cli, nano_model, inp, out)
    assert res.rc == 0, res.err
    assert sf.info(str(out)).frames == int(FRAME_S * CODEC_RATE)
    assert _latency(out)["summary"]["frames"] == 1


@pytest.fixture(scope="module")
def hour_wav(tmp_path_factory) -> Path:
    """A 1-hour 8 kHz int16 file (57.6 MB), silence and a tone alternating each minute, written in blocks."""
    path = tmp_path_factory.mktemp("hour") / "hour.wav"
    rate = 8000
    minute_tone = (3000 * np.sin(2 * np.pi * 300 * np.arange(60 * rate) / rate)).astype(np.int16)
    minute_silence = np.zeros(60 * rate, np.int16)
    with sf.SoundFile(str(path), "w", samplerate=rate, channels=1, subtype="PCM_16") as f:
        for minute in range(60):
            f.write(minute_tone if minute % 2 else minute_silence)
    return path


def test_wav_info_on_one_hour_file_reads_only_the_header(hour_wav, monkeypatch):
    def no_reading(*args, **kwargs):
        raise AssertionError("wav_info read samples")

    monkeypatch.setattr(sf.SoundFile, "read", no_reading)
    t0 = time.perf_counter()
    info = wav_info(hour_wav)
    assert time.perf_counter() - t0 < 2.0  # loose: reading 57.6 MB of samples is what this guards against
    assert info == (8000, 1, 3600 * 8000, 3600.0)


@pytest.mark.timeout(60)
def test_one_hour_file_with_max_seconds_reads_only_what_it_needs(run_cli, nano_model, hour_wav, tmp_path,
                                                                 monkeypatch):
    import agent.chat

    read = []
    original = agent.chat.iter_wav_blocks

    def counting(*args, **kwargs):
        for block in original(*args, **kwargs):
            read.append(len(block))
            yield block

    monkeypatch.setattr(agent.chat, "iter_wav_blocks", counting)
    out = tmp_path / "out.wav"
    res = _chat(run_cli, nano_model, hour_wav, out, "--max-seconds", "3")
    assert res.rc == 0, res.err
    assert abs(sf.info(str(out)).duration - 3.0) <= FRAME_S
    assert sum(read) <= 5 * 8000  # a few seconds read, not an hour
    summary = _latency(out)["summary"]
    assert summary["input_seconds"] == 3.0 and summary["frames"] == math.ceil(3.0 / FRAME_S)


@pytest.mark.parametrize("rate", [8000, 11025, 44100, 48000, 96000])
def test_unusual_input_rates_work(run_cli, nano_model, tmp_path, rate):
    t = np.arange(int(1.3 * rate)) / rate
    x = (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2).astype(np.float32)
    inp = tmp_path / f"in{rate}.wav"
    sf.write(str(inp), x, rate, subtype="PCM_16")
    out = tmp_path / "out.wav"
    res = _chat(run_cli, nano_model, inp, out)
    assert res.rc == 0, res.err
    assert abs(sf.info(str(out)).duration - 1.3) <= FRAME_S
    y, _ = read_stereo(out)
    corr, lag = best_correlation(y[:, 0], soxr.resample(x, rate, CODEC_RATE))
    assert corr > 0.95 and abs(lag) <= 2, (corr, lag)


def test_six_channel_int32_wav_is_downmixed(run_cli, nano_model, tmp_path):
    rate = 16000
    t = np.arange(rate) / rate
    chans = np.stack([0.1 * (k + 1) / 6 * np.sin(2 * np.pi * (150 + 40 * k) * t) for k in range(6)], axis=1)
    inp = tmp_path / "six.wav"
    sf.write(str(inp), (chans * 2**31).astype(np.int32), rate, subtype="PCM_32")
    assert wav_info(inp).channels == 6
    out = tmp_path / "out.wav"
    res = _chat(run_cli, nano_model, inp, out)
    assert res.rc == 0, res.err
    assert abs(sf.info(str(out)).duration - 1.0) <= FRAME_S
    y, _ = read_stereo(out)
    corr, _ = best_correlation(y[:, 0], soxr.resample(chans.mean(axis=1).astype(np.float32), rate, CODEC_RATE))
    assert corr > 0.95


def _random_bytes(p: Path, question: Path) -> None:
    p.write_bytes(np.random.default_rng(0).bytes(5000))


def _truncated_header(p: Path, question: Path) -> None:
    p.write_bytes(question.read_bytes()[:30])


def _zero_bytes(p: Path, question: Path) -> None:
    p.write_bytes(b"")


@pytest.mark.parametrize("make, words", [
    (_random_bytes, ["not a readable audio file", "bad.wav"]),
    (_truncated_header, ["not a readable audio file", "bad.wav"]),
    (_zero_bytes, ["empty", "bad.wav"]),
], ids=["random-bytes", "truncated-header", "zero-bytes"])
def test_corrupt_wav_is_a_clear_error(run_cli, nano_model, question_wav, tmp_path, make, words):
    inp = tmp_path / "bad.wav"
    make(inp, question_wav)
    out = tmp_path / "out.wav"
    _assert_clean_error(_chat(run_cli, nano_model, inp, out), *words)
    assert not out.exists()


def test_truncated_data_plays_what_is_there(run_cli, nano_model, question_wav, tmp_path):
    inp = tmp_path / "cut.wav"
    inp.write_bytes(question_wav.read_bytes()[:20000])  # header intact, data cut short
    out = tmp_path / "out.wav"
    res = _chat(run_cli, nano_model, inp, out)
    assert res.rc == 0, res.err
    assert abs(sf.info(str(out)).duration - wav_info(inp).duration) <= FRAME_S


def test_missing_input_file_is_a_clear_error(run_cli, nano_model, tmp_path):
    _assert_clean_error(_chat(run_cli, nano_model, tmp_path / "nowhere.wav", tmp_path / "out.wav"),
                        "not found", "nowhere.wav")


def test_missing_model_dir_says_what_to_pass(run_cli, question_wav, tmp_path):
    res = run_cli("chat", "--in", question_wav, "--out", tmp_path / "o.wav", "--model", "/nonexistent", "-q")
    _assert_clean_error(res, "/nonexistent", "does not exist", "--model", "duplex model init")


def _copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_layout_that_does_not_match_the_weights_is_a_clear_error(run_cli, nano_model, question_wav, tmp_path):
    model = _copy_model(nano_model, tmp_path / "model")
    layout_path = model / "duplex_layout.json"
    layout = json.loads(layout_path.read_text())
    layout["text_vocab_size"] += 1000
    layout.pop("vocab_size")  # a consistent file, just not the one these weights were made with
    layout_path.write_text(json.dumps(layout))
    res = _chat(run_cli, model, question_wav, tmp_path / "o.wav")
    _assert_clean_error(res, "embedding rows", "layout", "do not belong together")


def test_hand_edited_layout_file_is_a_clear_error(run_cli, nano_model, question_wav, tmp_path):
    model = _copy_model(nano_model, tmp_path / "model")
    layout_path = model / "duplex_layout.json"
    layout = json.loads(layout_path.read_text())
    layout["text_vocab_size"] += 1000  # vocab_size left stale
    layout_path.write_text(json.dumps(layout))
    _assert_clean_error(_chat(run_cli, model, question_wav, tmp_path / "o.wav"), "inconsistent")


def test_layout_file_missing_an_entry_names_the_entry(run_cli, nano_model, question_wav, tmp_path):
    """Was "... is not a valid duplex layout: 'codec'" (a bare KeyError's text)."""
    model = _copy_model(nano_model, tmp_path / "model")
    layout_path = model / "duplex_layout.json"
    layout = json.loads(layout_path.read_text())
    del layout["codec"]
    layout_path.write_text(json.dumps(layout))
    _assert_clean_error(_chat(run_cli, model, question_wav, tmp_path / "o.wav"), "not a valid duplex layout",
                        "it has no 'codec' entry")


def test_unknown_model_type_in_config_json_is_one_line(run_cli, nano_model, question_wav, tmp_path):
    """transformers' message for an unknown model_type is three paragraphs (how to upgrade transformers)."""
    model = _copy_model(nano_model, tmp_path / "model")
    config = json.loads((model / "config.json").read_text())
    config["model_type"] = "nonsense"
    (model / "config.json").write_text(json.dumps(config))
    res = _chat(run_cli, model, question_wav, tmp_path / "o.wav")
    line = _assert_clean_error(res, f"Cannot load {model}", "nonsense")
    assert res.err.strip() == line and "pip install" not in line


def test_model_dir_without_layout_is_a_clear_error(run_cli, nano_model, question_wav, tmp_path):
    model = _copy_model(nano_model, tmp_path / "model")
    (model / "duplex_layout.json").unlink()
    _assert_clean_error(_chat(run_cli, model, question_wav, tmp_path / "o.wav"), "duplex_layout.json",
                        "duplex model init")


def test_damaged_weights_are_a_clear_error(run_cli, nano_model, question_wav, tmp_path):
    model = _copy_model(nano_model, tmp_path / "model")
    (model / "model.safetensors").write_bytes(np.random.default_rng(1).bytes(1000))
    _assert_clean_error(_chat(run_cli, model, question_wav, tmp_path / "o.wav"), "cannot load the weights",
                        "duplex model init")


def test_a_damaged_tokenizer_is_a_clear_error(run_cli, nano_model, question_wav, tmp_path):
    model = _copy_model(nano_model, tmp_path / "model")
    (model / "tokenizer.json").write_text('{"x": 1}')  # was a bare "Exception: expected ..." traceback
    _assert_clean_error(_chat(run_cli, model, question_wav, tmp_path / "o.wav"), "not a valid tokenizer file",
                        "duplex model init")


@pytest.mark.parametrize("override, words", [
    ("nosuch=1", ["unknown setting", "nosuch"]),
    ("sampling.nosuch=1", ["unknown setting", "sampling.nosuch"]),
    ("sampling.text_temperature=-1", ["text_temperature", "between 0 and 10"]),
    ("sampling.text_temperature=abc", ["sampling.text_temperature", "must be a number"]),
    ("sampling.text_top_k=2.5", ["sampling.text_top_k", "integer"]),
    ("policy.barge_in=maybe", ["policy.barge_in", "true/false"]),
    ("sampling=3", ["sampling", "is a section"]),
    ("vad_aggressiveness=7", ["vad_aggressiveness"]),
    ("no-equals-sign", ["key.sub=value"]),
    ("sampling.seed=99999999999999999999999", ["sampling.seed", "integer"]),  # was torch's "Overflow ... long long"
])
def test_bad_set_override_is_a_clear_error(run_cli, nano_model, question_wav, tmp_path, override, words):
    out = tmp_path / "o.wav"
    _assert_clean_error(_chat(run_cli, nano_model, question_wav, out, "--set", override), *words)
    assert not out.exists()


def test_text_setting_takes_any_value_as_text(run_cli, nano_model, question_wav, tmp_path):
    out = tmp_path / "o.wav"
    res = _chat(run_cli, nano_model, question_wav, out, "--set", "system_prompt=42", "--max-seconds", "0.5")
    assert res.rc == 0, res.err
    assert json.loads(_side(out, ".config.json").read_text())["session"]["system_prompt"] == "42"


@pytest.mark.parametrize("flags, words", [
    (["--tail", "-1"], ["--tail"]),
    (["--tail", "nan"], ["--tail"]),
    (["--tail", "inf"], ["--tail"]),
    (["--tail", "soon"], ["--tail"]),
    (["--tail", "1e308"], ["--tail"]),  # was an OverflowError traceback after the model loaded
    (["--max-seconds", "0"], ["--max-seconds"]),
    (["--max-seconds", "nan"], ["--max-seconds"]),
    (["--out-rate", "-5"], ["--out-rate"]),
    (["--out-rate", "0"], ["--out-rate"]),
    (["--out-rate", "7"], ["--out-rate", "1000 to 768000"]),  # was accepted, and the output's length was wrong
    (["--set", "context.max_frames=-1"], ["context.max_frames"]),  # was silently "the whole context"
    (["--threads", "-1"], ["--threads"]),
])
def test_bad_numeric_flags_are_clear_errors(run_cli, nano_model, question_wav, tmp_path, flags, words):
    _assert_clean_error(_chat(run_cli, nano_model, question_wav, tmp_path / "o.wav", *flags), *words)


def test_output_onto_the_input_is_refused_and_input_kept(run_cli, nano_model, question_wav, tmp_path):
    inp = tmp_path / "same.wav"
    shutil.copy(question_wav, inp)
    before = inp.read_bytes()
    _assert_clean_error(_chat(run_cli, nano_model, inp, inp), "is the input file")
    assert inp.read_bytes() == before


@pytest.mark.parametrize("name, words", [("adir", ["is a directory"]), ("dialogue.xyz", ["must name a .wav"]),
                                         ("dialogue", ["must name a .wav"]),
                                         ("dialogue.raw", ["must name a .wav"]),  # was a headerless file
                                         ("afile/o.wav", ["afile is a file, not a directory"]),
                                         ("afile/sub/o.wav", ["afile is a file, not a directory"])])
def test_unwritable_output_name_is_a_clear_error(run_cli, nano_model, question_wav, tmp_path, name, words):
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("in the way")
    _assert_clean_error(_chat(run_cli, nano_model, question_wav, tmp_path / name), *words)


def test_read_only_output_directory_is_a_clear_error_before_the_model_loads(run_cli, nano_model, question_wav,
                                                                             tmp_path, monkeypatch):
    """Was a libsndfile RuntimeError traceback when the WAV was opened, after the model had loaded."""
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.geteuid() == 0:  # root may write anyway; answer as the mode bits say, as for any other user
        monkeypatch.setattr("agent.chat.os.access", lambda p, mode: bool(os.stat(p).st_mode & 0o222))
    try:
        _assert_clean_error(_chat(run_cli, nano_model, question_wav, ro / "o.wav"), "not writable", str(ro))
    finally:
        ro.chmod(0o755)
    assert not any(ro.iterdir())


@pytest.mark.parametrize("suffix", [".txt", ".latency.json"])
def test_a_directory_where_a_side_file_goes_is_a_clear_error_before_the_model_loads(run_cli, question_wav, tmp_path,
                                                                                    suffix):
    """Was "Is a directory: o.txt" only after the whole conversation had run (and with no latency report)."""
    (tmp_path / f"o{suffix}").mkdir()
    res = _chat(run_cli, tmp_path / "no-model-needed", question_wav, tmp_path / "o.wav")
    _assert_clean_error(res, f"o{suffix} is a directory", "pass another name")
    assert not (tmp_path / "o.wav").exists()


def test_an_output_file_that_cannot_be_written_is_a_clear_error_before_the_model_loads(run_cli, nano_model,
                                                                                        question_wav):
    """/proc takes no new files, even from root: this was a libsndfile traceback after the model loaded."""
    _assert_clean_error(_chat(run_cli, nano_model, question_wav, Path("/proc/duplex-out.wav")), "cannot be written")


def test_interrupted_chat_keeps_the_audio_and_transcript_so_far(nano_model, question_wav, tmp_path):
    """Ctrl-C after 10 frames: the WAV was kept but the transcript files were never written."""
    import asyncio

    from agent.chat import ChatConfig, run_chat

    def progress(done: int, total: int) -> None:
        if done == 10:
            raise KeyboardInterrupt

    out = tmp_path / "o.wav"
    with pytest.raises(KeyboardInterrupt):
        asyncio.run(run_chat(ChatConfig(input=question_wav, output=out, model=nano_model, tail_seconds=0.0),
                             progress=progress))
    assert abs(sf.info(str(out)).duration - 10 * FRAME_S) <= FRAME_S
    assert _side(out, ".txt").is_file()
    assert isinstance(json.loads(_side(out, ".transcript.json").read_text()), list)


def test_output_in_a_new_directory_is_created(run_cli, nano_model, question_wav, tmp_path):
    out = tmp_path / "new" / "deeper" / "o.wav"
    res = _chat(run_cli, nano_model, question_wav, out, "--max-seconds", "0.5")
    assert res.rc == 0, res.err
    assert out.is_file() and _side(out, ".latency.json").is_file()


def test_huge_max_seconds_plays_the_whole_input(run_cli, nano_model, question_wav, tmp_path):
    """--max-seconds 1e308 was an OverflowError traceback (1e308 s x the rate is inf); it means 'all of it'."""
    out = tmp_path / "o.wav"
    res = _chat(run_cli, nano_model, question_wav, out, "--max-seconds", "1e308")
    assert res.rc == 0, res.err
    assert abs(sf.info(str(out)).duration - wav_info(question_wav).duration) <= FRAME_S


@pytest.mark.parametrize("name, subtype", [("u8.wav", "PCM_U8"), ("f64.wav", "DOUBLE"), ("in.flac", None),
                                           ("in.ogg", None)])
def test_other_sample_types_and_containers_work(run_cli, nano_model, tmp_path, name, subtype):
    rate = 16000
    t = np.arange(rate) / rate
    x = 0.4 * np.sin(2 * np.pi * 220 * t)
    if subtype == "DOUBLE":
        x = x * 4  # beyond full scale: clipped, not wrapped
    inp = tmp_path / name
    sf.write(str(inp), x, rate, **({"subtype": subtype} if subtype else {}))
    out = tmp_path / "out.wav"
    res = _chat(run_cli, nano_model, inp, out)
    assert res.rc == 0, res.err
    assert abs(sf.info(str(out)).duration - 1.0) <= FRAME_S
    y, _ = read_stereo(out)
    corr, _ = best_correlation(y[:, 0], soxr.resample(np.clip(x, -1, 1).astype(np.float32), rate, CODEC_RATE))
    assert corr > 0.9


def test_more_channels_than_supported_is_a_clear_error(run_cli, nano_model, tmp_path):
    inp = tmp_path / "array.wav"
    sf.write(str(inp), np.zeros((800, 65), np.int16), 8000, subtype="PCM_16")
    _assert_clean_error(_chat(run_cli, nano_model, inp, tmp_path / "o.wav"), "65 channels", "at most 64")


@pytest.mark.timeout(60)
def test_file_corrupt_in_the_middle_is_a_clear_error_not_a_hang(run_cli, nano_model, tmp_path):
    rate = 16000
    good = tmp_path / "good.flac"
    sf.write(str(good), 0.3 * np.sin(np.arange(5 * rate) * 0.05), rate)
    data = bytearray(good.read_bytes())
    third = len(data) // 3
    data[third:third + 4000] = np.random.default_rng(0).bytes(4000)
    inp = tmp_path / "bad.flac"
    inp.write_bytes(bytes(data))
    _assert_clean_error(_chat(run_cli, nano_model, inp, tmp_path / "o.wav"), "bad.flac", "corrupt")


@pytest.mark.parametrize("yaml_text, words", [
    ("sampling: 3\n", ["sampling", "must be a section"]),
    ("sampling:\n  text_temperature: abc\n", ["sampling.text_temperature", "must be a number"]),
    ("nosuch: 1\n", ["unknown setting", "nosuch"]),
    ("- a list\n", ["must hold a mapping"]),
    # These were tracebacks: the YAML parser's report, torch's manual_seed, the tokenizer.
    ("sampling: [1,\n", ["bad.yaml", "not valid YAML"]),
    ("sampling:\n  seed: 1.5\n", ["sampling.seed", "integer or null"]),
    ("system_prompt: 42\n", ["system_prompt", "must be text", "quote"]),
    ("policy:\n  barge_in: sometimes\n", ["policy.barge_in", "true/false"]),
    (b"\xff\xfe\x00sampling: 1\n", ["bad.yaml", "UTF-8"]),
    # YAML reads these as a date, bytes, a set and a self-referencing list: they failed inside the config
    # copy (json.dumps) with a Python traceback.
    ("system_prompt: 2024-01-01\n", ["system_prompt", "bad.yaml", "date", "quote it"]),
    ("sampling:\n  seed: !!binary aGVsbG8=\n", ["sampling.seed", "bytes", "quote it"]),
    ("sampling:\n  seed: !!set {a}\n", ["sampling.seed", "set"]),
    ("a: &x [*x]\n", ["a[0]", "refers to itself"]),
], ids=["scalar-section", "wrong-type", "unknown-key", "not-a-mapping", "broken-yaml", "float-seed", "int-text",
        "word-bool", "not-utf8", "unquoted-date", "binary", "set", "self-reference"])
def test_bad_config_file_is_a_clear_error(run_cli, nano_model, question_wav, tmp_path, yaml_text, words):
    config = tmp_path / "bad.yaml"
    config.write_bytes(yaml_text if isinstance(yaml_text, bytes) else yaml_text.encode())
    _assert_clean_error(_chat(run_cli, nano_model, question_wav, tmp_path / "o.wav", "--config", config), *words)


def test_unknown_config_preset_lists_the_presets(run_cli, nano_model, question_wav, tmp_path):
    _assert_clean_error(_chat(run_cli, nano_model, question_wav, tmp_path / "o.wav", "--config", "nosuch"),
                        "nosuch", "default")


def test_a_preset_of_another_kind_is_named_as_such(run_cli, nano_model, question_wav, tmp_path):
    result = _chat(run_cli, nano_model, question_wav, tmp_path / "o.wav", "--config", "train-tiny")
    _assert_clean_error(result, "train-tiny is a training preset", "session presets: default, greedy, half-duplex")
