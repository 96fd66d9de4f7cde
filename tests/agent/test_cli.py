"""The ``duplex`` CLI's other subcommands (model init, doctor, bench step) and its error contract:
a user-fixable problem is one ``duplex: error:`` line on stderr and exit code 2, never a traceback."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from think.checkpoint import load_checkpoint

pytestmark = pytest.mark.timeout(120)


def test_cli_model_init_writes_loadable_checkpoint(run_cli, tmp_path):
    out = tmp_path / "model"
    res = run_cli("model", "init", out, "--preset", "nano")
    assert res.rc == 0, res.err
    assert f"wrote {out}" in res.out and "M parameters" in res.out
    for name in ("config.json", "model.safetensors", "tokenizer.json", "duplex_layout.json", "duplex_init.json"):
        assert (out / name).is_file(), name

    loaded = load_checkpoint(out)  # checks model, layout and tokenizer agree
    layout = json.loads((out / "duplex_layout.json").read_text())
    assert loaded.layout.vocab_size == layout["vocab_size"]
    assert loaded.model.get_input_embeddings().num_embeddings >= layout["vocab_size"]
    assert json.loads((out / "duplex_init.json").read_text())["model"]["layers"] == 2  # the nano shape
    mtime = (out / "model.safetensors").stat().st_mtime_ns

    again = run_cli("model", "init", out, "--preset", "nano")
    assert again.rc == 2 and "Traceback" not in again.err
    assert again.error_lines == [f"duplex: error: {out} is not empty; pass --force to overwrite it."]
    assert (out / "model.safetensors").stat().st_mtime_ns == mtime  # untouched

    forced = run_cli("model", "init", out, "--preset", "nano", "--force", "--seed", "1")
    assert forced.rc == 0, forced.err
    load_checkpoint(out)


@pytest.mark.parametrize("argv, words", [
    (["--preset", "huge"], ["unknown model preset", "huge", "nano"]),
    (["--preset", "nano", "--codec", "mp3"], ["unknown codec preset", "mp3", "codec2"]),
    (["--preset", "nano", "--model-json", "{layers: 2"], ["--model-json is not valid json"]),
    (["--preset", "nano", "--model-json", '{"bogus": 1}'], ["unknown model shape key", "bogus", "layers"]),
    (["--preset", "nano", "--model-json", '{"layers": "x"}'], ["layers must be a positive integer"]),
    (["--preset", "nano", "--model-json", "[1]"], ["json object"]),
    (["--preset", "nano", "--model-json", '{"hidden": 65}'], ["multiple of heads"]),
    (["--preset", "nano", "--q-in", "0"], ["--q-in must be >= 1"]),
    (["--preset", "nano", "--q-out", "99"], ["q_out", "1..6"]),
    (["--base", "/nonexistent-base"], ["/nonexistent-base", "is not a model", "--base"]),
], ids=["preset", "codec", "json-syntax", "json-key", "json-type", "json-list", "json-shape", "q-in-0", "q-out-99",
        "base"])
def test_cli_model_init_bad_arguments_are_clear_errors(run_cli, tmp_path, argv, words):
    res = run_cli("model", "init", tmp_path / "m", *argv)
    assert res.rc == 2 and "Traceback" not in res.err
    assert len(res.error_lines) == 1, res.err
    for w in words:
        assert w.lower() in res.error_lines[0].lower(), res.error_lines[0]
    assert not (tmp_path / "m").exists() or not any((tmp_path / "m").iterdir())


def test_doctor_lists_core_components(run_cli):
    res = run_cli("doctor")
    assert res.rc == 0, res.out
    lines = res.out.splitlines()
    for name in ("python", "torch", "transformers", "soxr", "soundfile", "pycodec2", "webrtcvad-wheels", "fsq"):
        line = next((ln for ln in lines if ln.split()[1:2] == [name]), None)
        assert line is not None, f"no line for {name}"
        assert line.startswith("ok"), line
    assert "core complete" in lines[-1]
    assert any("espeak-ng" in ln for ln in lines)


def test_bench_step_prints_json_with_rtf(run_cli):
    res = run_cli("bench", "step", "--frames", "30", "--warmup", "5", "--preset", "nano")
    assert res.rc == 0, res.err
    result = json.loads(res.out)
    assert result["benchmark"] == "step" and result["model"] == "random:nano"
    assert result["frames"] == 30 and isinstance(result["frame_ms"], float)
    for key in ("step_ms", "think_ms", "speak_ms", "listen_ms"):
        assert set(result[key]) >= {"p50", "p95", "p99", "mean"}
        assert all(isinstance(v, float) for v in result[key].values())
    for key in ("real_time_factor_p95", "real_time_factor_mean", "parameters_m", "load_seconds"):
        assert isinstance(result[key], float) and result[key] >= 0, key
    assert isinstance(result["meets_rtf_0_3"], bool)
    assert isinstance(result["slot_ids"], int) and result["forwards_per_frame"] >= 2
    assert result["codec"] == "codec2" and result["engine"] in ("lean", "hf")
    assert result["device"] == "cpu" and result["gpu"] is None


def test_bench_detector_prints_both_ways_per_session_count(run_cli):
    res = run_cli("bench", "detector", "--sessions", "1,3", "--frames", "4")
    assert res.rc == 0, res.err
    result = json.loads(res.out)
    assert result["benchmark"] == "detector" and [r["sessions"] for r in result["results"]] == [1, 3]
    for r in result["results"]:
        for way in ("one_at_a_time", "batched"):
            assert r[way]["cpu_ms_per_frame"] > 0 and 0 <= r[way]["late_frames"] <= 4 * r["sessions"]
        assert 1.0 <= r["batched"]["mean_batch"] <= r["sessions"]
    bad = run_cli("bench", "detector", "--sessions", "0")
    assert bad.rc != 0 and "positive" in bad.err


def test_bench_step_names_a_device_it_cannot_use_before_building_a_model(run_cli):
    res = run_cli("bench", "step", "--frames", "2", "--preset", "nano", "--device", "tpu0")
    assert res.rc == 2 and res.out == ""
    assert "Unknown device 'tpu0'" in res.err and "Traceback" not in res.err


def test_missing_subcommand_and_flags_are_usage_errors(run_cli):
    with pytest.raises(SystemExit) as e:
        run_cli("chat", "--out", "x.wav")  # no --in
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        run_cli()
    assert e.value.code == 2


def test_installed_entry_point_prints_one_line_error_without_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "agent.cli", "chat", "--in", str(tmp_path / "nowhere.wav"), "--out",
         str(tmp_path / "o.wav"), "--model", "/nonexistent", "-q"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"duplex: error: Audio file not found: {tmp_path / 'nowhere.wav'}."]
    assert proc.stdout == ""


@pytest.mark.parametrize("argv", [["model", "init", "{afile}", "--preset", "nano"],
                                  ["model", "export", "{model}", "{afile}"],
                                  ["data", "synth", "--out", "{afile}", "--count", "1"]],
                         ids=["model-init", "model-export", "data-synth"])
def test_output_directory_that_is_a_file_is_one_sentence(run_cli, nano_model, tmp_path, argv):
    """Was "[Errno 20] Not a directory: '...'" / "[Errno 17] File exists: '...'" (synth: the same for a file)."""
    afile = tmp_path / "afile"
    afile.write_text("in the way")
    res = run_cli(*[a.format(afile=afile, model=nano_model) for a in argv])
    assert res.rc == 2 and "Traceback" not in res.err
    assert res.error_lines == [f"duplex: error: {afile} is a file, but a directory is needed there; pass another path."]
    assert afile.read_text() == "in the way"


def test_a_set_number_written_with_an_exponent_is_a_number_not_text(run_cli, nano_model, tmp_path):
    from agent.config import apply_overrides
    from agent.cli import _typed_override

    # YAML 1.1 reads 5e-4 as text; a user means the number (lr=5e-4 failed with "lr must be a number").
    assert apply_overrides({}, ["lr=5e-4", "x.y=1E3", "name=e5"]) == {"lr": 0.0005, "x": {"y": 1000.0}, "name": "e5"}
    assert _typed_override("sampling.pad_bias=-1.5e0") == "sampling.pad_bias=-1.5e0"
    assert _typed_override("system_prompt=5e-4") == 'system_prompt="5e-4"'  # a text setting keeps its text
    r = run_cli("recognizer", "train", "--data", tmp_path, "--set", "lr=abc", "-q")
    assert r.rc == 2 and "lr must be a number" in r.err


def test_eval_set_overrides_are_checked_like_chat_and_a_text_setting_takes_a_number_as_text(run_cli, tmp_path,
                                                                                             monkeypatch):
    """`duplex eval --set` skipped chat's checks: system_prompt=42 reached the tokenizer as an int and
    sampling=3 reached the backend as the section, both as tracebacks after the model had loaded."""
    import agent.evaluate

    seen = {}

    def fake_run_eval(cfg, model, out, session_config, progress=True):
        seen["config"] = session_config
        return {"summary": {}}

    monkeypatch.setattr(agent.evaluate, "run_eval", fake_run_eval)
    base = ["eval", "--data", tmp_path, "--out", tmp_path / "ev", "-q"]
    res = run_cli(*base, "--set", "system_prompt=42", "--set", "sampling.seed=7")
    assert res.rc == 0, res.err
    assert seen["config"].system_prompt == "42" and seen["config"].sampling.seed == 7
    for override, words in [("sampling=3", ["sampling is a section"]),
                            ("sampling.seed=abc", ["sampling.seed must be an integer"])]:
        bad = run_cli(*base, "--set", override)
        assert bad.rc == 2 and "Traceback" not in bad.err, bad.err
        assert len(bad.error_lines) == 1 and all(w in bad.error_lines[0] for w in words), bad.err


@pytest.mark.parametrize("argv, words", [
    (["bench", "serve", "--engine-args", "{bad"], ["--engine-args is not valid JSON", "enforce_eager"]),
    (["bench", "serve", "--max-late", "2"], ["--max-late", "from 0 to 1", "2.0"]),
    (["bench", "detector", "--sessions", "one,two"], ["--sessions must be session counts", "'one,two'"]),
], ids=["engine-args-json", "max-late-above-one", "sessions-words"])
def test_bench_bad_flag_values_are_one_sentence_before_any_work(run_cli, argv, words):
    """Were the JSON parser's bare message, an accepted share of 200 %, and int()'s "invalid literal"."""
    res = run_cli(*argv)
    assert res.rc == 2 and res.out == "" and "Traceback" not in res.err
    assert len(res.error_lines) == 1 and all(w in res.error_lines[0] for w in words), res.err


def test_model_init_with_an_odd_head_size_is_one_sentence_and_writes_nothing(run_cli, tmp_path):
    """hidden 100 over 4 heads is a head size of 25: transformers' rotary check raised a validation traceback."""
    res = run_cli("model", "init", tmp_path / "m", "--preset", "nano", "--model-json", '{"hidden": 100, "heads": 4}')
    assert res.rc == 2 and "Traceback" not in res.err
    assert res.error_lines == ["duplex: error: hidden / heads (the head size) must be even for rotary embeddings, "
                               "got 100 / 4 = 25."]
    assert not (tmp_path / "m").exists() or not any((tmp_path / "m").iterdir())
