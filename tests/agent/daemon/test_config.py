"""Daemon configuration: the preset, flags -> overrides, refusals with clear messages."""
from __future__ import annotations

import subprocess
import sys

import pytest

from agent.cli import build_parser
from agent.daemon.cli import daemon_overrides
from agent.daemon.config import resolve_daemon_config, to_jsonable


def test_preset_loads_and_flags_override(tmp_path):
    args = build_parser().parse_args(["daemon", "--mqtt-port", "1999", "--input-device", "USB Mic", "--no-aec",
                                      "--half-duplex", "--url", "ws://h:1/v1/realtime", "--set", "audio.block_ms=10"])
    cfg = resolve_daemon_config(args.config, daemon_overrides(args))
    assert cfg.mqtt.port == 1999 and cfg.audio.input_device == "USB Mic" and cfg.audio.block_ms == 10
    assert cfg.echo.aec is False and cfg.echo.half_duplex is True
    assert cfg.brain.mode == "remote" and cfg.brain.url == "ws://h:1/v1/realtime"
    assert cfg.session.policy.barge_in is True
    y = tmp_path / "d.yaml"
    y.write_text("device_id: kitchen\nmqtt:\n  password: pw\n")
    cfg = resolve_daemon_config(y)
    assert cfg.device_id == "kitchen" and to_jsonable(cfg)["mqtt"]["password"] == "***"


@pytest.mark.parametrize("override, words", [
    ("audio.process_rate=22050", "process_rate"), ("audio.backend=alsa", "audio.backend"),
    ("device_id=a/b", "device_id"), ("mqtt.prefix=a/#", "mqtt.prefix"), ("brain.mode=cloud", "brain.mode"),
    ("mqtt.colour=1", "Unknown setting"), ("audio=3", "section"),
    # Were accepted, then failed at run time: a spinning metrics loop, a deque(maxlen=-1), an int password
    # inside the MQTT client, "maybe" taken as true, a 0-thread torch.
    ("mqtt.metrics_interval_s=0", "mqtt.metrics_interval_s"), ("mqtt.outbox=-1", "mqtt.outbox"),
    ("mqtt.outbox=many", "mqtt.outbox must be an integer"), ("mqtt.keepalive=-3", "mqtt.keepalive"),
    ("mqtt.max_payload_bytes=big", "mqtt.max_payload_bytes must be an integer"),
    ("echo.aec=maybe", "echo.aec must be true/false"), ("mqtt.enabled=sometimes", "mqtt.enabled must be true/false"),
    ("audio.playout_max_seconds=-1", "audio.playout_max_seconds"), ("audio.latency=fast", "audio.latency"),
    ("brain.threads=0", "brain.threads"), ("brain.engine=turbo", "brain.engine"), ("log_level=LOUD", "log_level"),
    ("mqtt.audio_in_rate=0", "mqtt.audio_in_rate"), ("session.sampling.seed=1.5", "session.sampling.seed"),
    ("session.sampling.seed=99999999999999999999999", "session.sampling.seed"),
    # Were accepted: 0 or less made the remote brain reconnect in a tight loop (8000 log lines in 2 s);
    # an empty host a traceback on every MQTT reconnect; a "$" prefix topics the broker drops silently;
    # an infinite backoff a device or broker never retried again.
    ("brain.reconnect_initial_s=0", "brain.reconnect_initial_s"), ("brain.reconnect_initial_s=-1", "brain.reconnect"),
    ("brain.reconnect_max_s=.nan", "brain.reconnect"), ("mqtt.host=''", "mqtt.host"),
    ("mqtt.prefix=$SYS", "mqtt.prefix"), ("audio.retry_max_s=.inf", "audio.retry"),
    ("mqtt.reconnect_max_s=.inf", "mqtt.reconnect"),
    ("--no-mqtt --audio mqtt", "audio.backend mqtt .* needs mqtt.enabled"),
])
def test_bad_settings_are_refused_with_a_clear_message(override, words):
    overrides = [override]
    if override.startswith("--"):  # flags
        overrides = daemon_overrides(build_parser().parse_args(["daemon", *override.split()]))
    with pytest.raises(ValueError, match=words):
        resolve_daemon_config(None, overrides)


def test_cli_reports_a_bad_setting_in_one_line(run_cli):
    r = run_cli("daemon", "--set", "audio.process_rate=11025")
    assert r.rc == 2 and r.error_lines and "process_rate" in r.error_lines[0]


def test_set_of_a_text_setting_is_text_and_numbers_stay_numbers():
    args = build_parser().parse_args(["daemon", "--set", "mqtt.password=123456", "--set", "device_id=007",
                                      "--set", "audio.latency=0.05", "--set", "audio.input_device=2"])
    cfg = resolve_daemon_config(args.config, daemon_overrides(args))
    assert cfg.mqtt.password == "123456" and cfg.device_id == "007"  # YAML alone would give int 123456 and 7
    assert cfg.audio.latency == 0.05 and cfg.audio.input_device == 2


@pytest.mark.parametrize("yaml_text, words", [
    ("mqtt:\n  password: 123456\n", ["mqtt.password", "must be text", "quote"]),
    ("mqtt:\n  port: [1883]\n", ["mqtt.port", "integer"]),
    ("mqtt: [1\n", ["d.yaml", "not valid YAML"]),
])
def test_bad_yaml_file_is_refused_with_the_setting_named(tmp_path, yaml_text, words):
    y = tmp_path / "d.yaml"
    y.write_text(yaml_text)
    with pytest.raises(ValueError) as e:
        resolve_daemon_config(y)
    for w in words:
        assert w in str(e.value), e.value


def test_missing_model_is_one_error_line_and_exit_2(tmp_path):
    """Was exit 1 plus asyncio's "Task exception was never retrieved" traceback after the error line."""
    proc = subprocess.run([sys.executable, "-m", "agent.cli", "daemon", "--no-mqtt", "--audio", "none", "--no-aec",
                           "--model", str(tmp_path / "nowhere"), "--max-seconds", "20", "--log-format", "text"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "cannot load the model" in errors[0] and "nowhere" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr and "never retrieved" not in proc.stderr


def test_list_devices_without_portaudio_is_one_line(run_cli, monkeypatch):
    """Was an AudioDeviceError traceback: --list-devices ran outside the command's error handling."""
    from agent.daemon import audio_io

    def no_portaudio():
        raise audio_io.AudioDeviceError("PortAudio is not installed (libportaudio2 not found); on Debian/Ubuntu: "
                                        "apt-get install libportaudio2.")

    monkeypatch.setattr(audio_io, "_sd", no_portaudio)
    r = run_cli("daemon", "--list-devices")
    assert r.rc == 2 and "Traceback" not in r.err
    assert len(r.error_lines) == 1 and "libportaudio2" in r.error_lines[0]


def test_list_devices_says_when_there_are_none(run_cli, monkeypatch):
    from agent.daemon import audio_io

    monkeypatch.setattr(audio_io, "list_devices", lambda: [])
    r = run_cli("daemon", "--list-devices")
    assert r.rc == 0 and "no audio devices" in r.err


def test_a_session_preset_given_to_the_daemon_is_named_as_such():
    with pytest.raises(ValueError, match="default is a session preset, not daemon settings; daemon presets: daemon"):
        resolve_daemon_config("default")
