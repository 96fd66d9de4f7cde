"""``duplex daemon`` flags (added to the main parser by ``agent/cli.py``)."""
from __future__ import annotations

import argparse
import json
import os
import sys


def add_daemon_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("daemon", help="headless mic + speaker agent with echo cancellation, controlled over MQTT "
                                      "(docs/daemon.md)")
    p.add_argument("--config", help="YAML config file or preset name (default: the 'daemon' preset)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting, e.g. --set audio.block_ms=10 or --set session.policy.barge_in=false")
    p.add_argument("--device-id", help="this box's id in MQTT topics")
    p.add_argument("--input-device", help="microphone: PortAudio name substring or index")
    p.add_argument("--output-device", help="speaker: PortAudio name substring or index")
    p.add_argument("--list-devices", action="store_true", help="print the audio devices and exit")
    p.add_argument("--audio", choices=["sounddevice", "mqtt", "none"], help="audio backend")
    p.add_argument("--no-aec", action="store_true", help="turn acoustic echo cancellation off")
    p.add_argument("--half-duplex", action="store_true",
                   help="fallback without AEC: the brain hears silence while the agent talks (no barge-in)")
    p.add_argument("--mqtt-host", help="broker host"), p.add_argument("--mqtt-port", type=int, help="broker port")
    p.add_argument("--mqtt-username", help="broker user (password: $DUPLEX_MQTT_PASSWORD or --set mqtt.password=)")
    p.add_argument("--mqtt-tls", action="store_true", help="connect with TLS")
    p.add_argument("--mqtt-ca", help="CA certificate (PEM) for TLS")
    p.add_argument("--no-mqtt", action="store_true", help="run without a broker")
    p.add_argument("--brain", choices=["local", "remote"], help="run the model here or use a duplex serve server")
    p.add_argument("--model", help="checkpoint directory (local brain)")
    p.add_argument("--url", help="ws://HOST:PORT/v1/realtime of a duplex serve server (remote brain)")
    p.add_argument("--max-seconds", type=float, help="stop after this long")
    p.add_argument("--log-format", choices=["json", "text"], help="log lines as JSON (default) or text")
    p.set_defaults(func=cmd_daemon)


def daemon_overrides(args: argparse.Namespace) -> list[str]:
    from agent.cli import _typed_override
    from agent.daemon.config import DaemonConfig

    # --set mqtt.password=123456 means the text "123456" (YAML would read an int); wrong types are named.
    o = [_typed_override(item, DaemonConfig) for item in args.overrides]
    flags = [("device_id", args.device_id), ("audio.input_device", args.input_device),
             ("audio.output_device", args.output_device), ("audio.backend", args.audio),
             ("mqtt.host", args.mqtt_host), ("mqtt.port", args.mqtt_port), ("mqtt.username", args.mqtt_username),
             ("mqtt.ca_certs", args.mqtt_ca), ("brain.mode", args.brain), ("brain.model", args.model),
             ("brain.url", args.url), ("max_seconds", args.max_seconds), ("log_format", args.log_format)]
    for key, value in flags:
        if value is not None:
            o.append(f"{key}={json.dumps(value) if isinstance(value, str) else value}")
    if args.no_aec:
        o.append("echo.aec=false")
    if args.half_duplex:
        o.append("echo.half_duplex=true")
    if args.mqtt_tls:
        o.append("mqtt.tls=true")
    if args.no_mqtt:
        o.append("mqtt.enabled=false")
    if args.url and not args.brain:
        o.append("brain.mode=remote")
    return o


def cmd_daemon(args: argparse.Namespace) -> int:
    from agent.daemon.config import resolve_daemon_config

    if args.list_devices:
        from agent.daemon.audio_io import list_devices

        try:
            devices = list_devices()
        except RuntimeError as e:  # AudioDeviceError: PortAudio or sounddevice missing
            print(f"duplex: error: {e}", file=sys.stderr)
            return 2
        if not devices:  # say so, rather than print nothing
            print("duplex: PortAudio sees no audio devices (no sound card or sound server reachable).",
                  file=sys.stderr)
        for d in devices:
            print(f"{d['index']:3d}  {d['name']:40s} in {d['max_input_channels']:2d}  out {d['max_output_channels']:2d}  "
                  f"{d['default_samplerate']:.0f} Hz")
        return 0
    config = resolve_daemon_config(args.config, daemon_overrides(args))
    if config.mqtt.password is None and os.environ.get("DUPLEX_MQTT_PASSWORD"):
        config.mqtt.password = os.environ["DUPLEX_MQTT_PASSWORD"]
    if config.brain.token is None and os.environ.get("DUPLEX_TOKEN"):
        config.brain.token = os.environ["DUPLEX_TOKEN"]
    if args.verbose:
        config.log_level = "DEBUG"
    from agent.daemon.daemon import run_daemon

    try:
        return run_daemon(config)
    except RuntimeError as e:  # AudioDeviceError, EchoUnavailable
        print(f"duplex: error: {e}", file=sys.stderr)
        return 2
