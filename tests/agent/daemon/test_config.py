"""Daemon configuration: the preset, flags -> overrides, refusals with clear messages."""
from __future__ import annotations

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
])
def test_bad_settings_are_refused_with_a_clear_message(override, words):
    with pytest.raises(ValueError, match=words):
        resolve_daemon_config(None, [override])


def test_cli_reports_a_bad_setting_in_one_line(run_cli):
    r = run_cli("daemon", "--set", "audio.process_rate=11025")
    assert r.rc == 2 and r.error_lines and "process_rate" in r.error_lines[0]
