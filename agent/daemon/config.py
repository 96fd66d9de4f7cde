"""Daemon configuration: one dataclass per component, read from YAML (``agent/presets/daemon.yaml``),
overridden by ``--set section.key=value`` and the ``duplex daemon`` flags."""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.config import SessionConfig, apply_overrides, check_types, from_dict, load_yaml

AEC_RATES = (8000, 16000, 32000, 48000)


@dataclass
class AudioConfig:
    """Microphone and speaker (PortAudio through sounddevice).

    Attributes:
        backend: ``sounddevice`` (real devices), ``mqtt`` (remote microphone over MQTT, speaker
            audio published on MQTT) or ``none`` (no audio; for tests of the control plane).
        input_device / output_device: PortAudio device name (substring, case-insensitive) or index;
            None = the system default.
        input_rate / output_rate: device rate in Hz; None = the device's default rate. The daemon
            resamples at the edge, so any rate the device offers works.
        process_rate: the rate echo cancellation and the brain work at (8000, 16000, 32000 or 48000).
        block_ms: device block size in milliseconds (small = low latency).
        latency: PortAudio suggested latency: "low", "high" or seconds.
        playout_max_seconds: the speaker's jitter buffer bound (oldest audio dropped beyond it).
        retry_initial_s / retry_max_s: backoff between attempts to (re)open a device that failed.
        stall_timeout_s: a stream whose callbacks stop for this long is considered lost and reopened.
    """

    backend: str = "sounddevice"
    input_device: str | int | None = None
    output_device: str | int | None = None
    input_rate: int | None = None
    output_rate: int | None = None
    process_rate: int = 16000
    block_ms: float = 20.0
    latency: str | float = "low"
    playout_max_seconds: float = 4.0
    retry_initial_s: float = 0.5
    retry_max_s: float = 10.0
    stall_timeout_s: float = 1.5

    def __post_init__(self) -> None:
        if self.backend not in ("sounddevice", "mqtt", "none"):
            raise ValueError(f"audio.backend must be sounddevice, mqtt or none, got {self.backend!r}.")
        if self.process_rate not in AEC_RATES:
            raise ValueError(f"audio.process_rate must be one of {AEC_RATES}, got {self.process_rate!r}.")
        if not (isinstance(self.block_ms, (int, float)) and 2 <= self.block_ms <= 200):
            raise ValueError(f"audio.block_ms must be between 2 and 200, got {self.block_ms!r}.")
        for name in ("input_rate", "output_rate"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, int) and 4000 <= v <= 384000):
                raise ValueError(f"audio.{name} must be a rate in Hz (4000-384000) or null, got {v!r}.")
        if not (0 < self.retry_initial_s <= self.retry_max_s <= 3600):
            raise ValueError("audio.retry_initial_s must be > 0 and <= audio.retry_max_s (at most 3600).")
        if not (0 < self.playout_max_seconds <= 600):
            raise ValueError(f"audio.playout_max_seconds must be > 0 and <= 600, got {self.playout_max_seconds!r}.")
        if not (0 < self.stall_timeout_s <= 600):
            raise ValueError(f"audio.stall_timeout_s must be > 0 and <= 600, got {self.stall_timeout_s!r}.")
        if isinstance(self.latency, str) and self.latency not in ("low", "high"):
            raise ValueError(f"audio.latency must be low, high or seconds, got {self.latency!r}.")
        if not isinstance(self.latency, str) and not (0 <= self.latency <= 10):
            raise ValueError(f"audio.latency in seconds must be between 0 and 10, got {self.latency!r}.")


@dataclass
class EchoConfig:
    """Acoustic echo cancellation (WebRTC audio processing module via PyPI ``livekit``).

    Attributes:
        aec: cancel the agent's own voice from the microphone, with what is actually written to the
            speaker as the reference.
        noise_suppression / high_pass_filter / auto_gain_control: the module's other stages.
        stream_delay_ms: playback + capture latency hint; None = measured from the streams.
        warmup_seconds: grace while the canceller converges: during the first ``warmup_seconds`` of
            agent playback the microphone is gated while the agent is audible (no self barge-in).
        half_duplex: the documented fallback for a setup where AEC does not work (or ``livekit`` is
            missing): the brain hears silence while the agent talks, plus ``half_duplex_tail_ms``.
            Kills barge-in (the user cannot interrupt).
        half_duplex_tail_ms: how long the mic stays gated after the agent falls silent (room reverb).
        reference_threshold: speaker RMS (full scale 1) above which the agent counts as audible.
        transparent_without_echo: when the microphone carries no measurable echo of the speaker (a headset, a
            speaker the microphone does not hear), pass it through noise suppression and the high-pass only.
            WebRTC's canceller otherwise mutes the user's first 300-700 ms whenever the agent plays, echo or
            not, and a barge-in comes too late (``agent/daemon/echo_presence.py``). Back to cancelling as soon
            as an echo shows.
    """

    aec: bool = True
    noise_suppression: bool = True
    high_pass_filter: bool = True
    auto_gain_control: bool = False
    stream_delay_ms: float | None = None
    warmup_seconds: float = 3.0
    half_duplex: bool = False
    half_duplex_tail_ms: float = 300.0
    reference_threshold: float = 0.003
    transparent_without_echo: bool = True

    def __post_init__(self) -> None:
        if self.stream_delay_ms is not None and not (0 <= self.stream_delay_ms <= 1000):
            raise ValueError("echo.stream_delay_ms must be between 0 and 1000 or null.")
        if not (0 <= self.warmup_seconds <= 60):
            raise ValueError("echo.warmup_seconds must be between 0 and 60.")
        if not (0 <= self.half_duplex_tail_ms <= 10000):
            raise ValueError(f"echo.half_duplex_tail_ms must be between 0 and 10000, got {self.half_duplex_tail_ms!r}.")
        if not (0 <= self.reference_threshold <= 1):
            raise ValueError(f"echo.reference_threshold must be between 0 and 1, got {self.reference_threshold!r}.")


@dataclass
class MqttConfig:
    """The MQTT bridge (aiomqtt < 3). Topics: ``<prefix>/<device_id>/...`` (docs/daemon.md).

    Attributes:
        enabled: connect to a broker at all.
        host / port: the broker. username / password: optional credentials.
        tls: use TLS; ca_certs / certfile / keyfile: PEM files; tls_insecure: skip hostname checks.
        prefix: first topic level.
        client_id: MQTT client id (None = ``duplex-<device_id>``); stable so the broker keeps our
            subscriptions and queued QoS 1 control messages across short disconnects.
        keepalive: seconds.
        reconnect_initial_s / reconnect_max_s: backoff after the broker goes away.
        metrics_interval_s: how often latency metrics are published.
        state_interval_s: how often the retained state is refreshed (0 = only on changes).
        audio_in: subscribe to ``audio/in`` (a remote microphone: WAV or raw PCM16 payloads).
        audio_in_rate: rate of raw (non-WAV) PCM16 payloads on ``audio/in``.
        audio_out: publish the agent's audio (PCM16 at process_rate) on ``audio/out``.
        max_payload_bytes: larger control payloads are refused (error topic).
        outbox: messages kept while the broker is away (state, errors, acks; streams are dropped).
    """

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_certs: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    tls_insecure: bool = False
    prefix: str = "duplex"
    client_id: str | None = None
    keepalive: int = 10
    reconnect_initial_s: float = 0.2
    reconnect_max_s: float = 5.0
    metrics_interval_s: float = 1.0
    state_interval_s: float = 10.0
    audio_in: bool = False
    audio_in_rate: int = 16000
    audio_out: bool = False
    max_payload_bytes: int = 65536
    outbox: int = 200

    def __post_init__(self) -> None:
        if not (isinstance(self.port, int) and 0 < self.port < 65536):
            raise ValueError(f"mqtt.port must be 1-65535, got {self.port!r}.")
        # An empty host was a traceback logged on every reconnect attempt, forever.
        if not isinstance(self.host, str) or not self.host.strip():
            raise ValueError(f"mqtt.host must be the broker's host name or address, got {self.host!r}.")
        # "$" topics ($SYS/...) are the broker's own: it silently drops what clients publish there.
        if not self.prefix or any(c in self.prefix for c in "#+\x00") or self.prefix.startswith(("/", "$")):
            raise ValueError(f"mqtt.prefix {self.prefix!r} must be a topic path without wildcards, not starting "
                             f"with '/' or '$'.")
        if not (0 < self.reconnect_initial_s <= self.reconnect_max_s <= 3600):
            raise ValueError("mqtt.reconnect_initial_s must be > 0 and <= mqtt.reconnect_max_s (at most 3600).")
        # 0 would make the metrics loop spin, publishing as fast as the CPU allows.
        if not (0.05 <= self.metrics_interval_s <= 3600):
            raise ValueError(f"mqtt.metrics_interval_s must be between 0.05 and 3600, got {self.metrics_interval_s!r}.")
        if not (0 <= self.state_interval_s <= 86400):
            raise ValueError(f"mqtt.state_interval_s must be between 0 (only on changes) and 86400, "
                             f"got {self.state_interval_s!r}.")
        if not (0 <= self.keepalive <= 65535):
            raise ValueError(f"mqtt.keepalive must be 0-65535 seconds, got {self.keepalive!r}.")
        if not (1 <= self.max_payload_bytes <= 1 << 28):
            raise ValueError(f"mqtt.max_payload_bytes must be 1 to {1 << 28}, got {self.max_payload_bytes!r}.")
        if not (1 <= self.outbox <= 100000):
            raise ValueError(f"mqtt.outbox must be 1 to 100000 messages, got {self.outbox!r}.")
        if not (4000 <= self.audio_in_rate <= 384000):
            raise ValueError(f"mqtt.audio_in_rate must be a rate in Hz (4000-384000), got {self.audio_in_rate!r}.")


@dataclass
class BrainConfig:
    """Where the model runs.

    Attributes:
        mode: ``local`` (in this process) or ``remote`` (a ``duplex serve`` Realtime WebSocket).
        model: checkpoint directory for ``local`` (None = the embedded default).
        codec_weights: local weights for neural codecs. engine / threads: the transformers backend.
        url: ``ws://host:port/v1/realtime`` for ``remote``; token: its shared secret.
        remote_model: ``?model=`` name on the server (None = its default).
        adapter: LoRA adapter to start with (None = none).
        adapters_dir: directory of LoRA adapters the local brain may switch to (``adapter`` names one of them).
        reconnect_initial_s / reconnect_max_s: backoff after the server goes away.
    """

    mode: str = "local"
    model: str | None = None
    codec_weights: str | None = None
    engine: str = "auto"
    threads: int | None = None
    url: str = "ws://127.0.0.1:8765/v1/realtime"
    token: str | None = None
    remote_model: str | None = None
    adapter: str | None = None
    adapters_dir: str | None = None
    reconnect_initial_s: float = 0.5
    reconnect_max_s: float = 10.0

    def __post_init__(self) -> None:
        if self.mode not in ("local", "remote"):
            raise ValueError(f"brain.mode must be local or remote, got {self.mode!r}.")
        if self.mode == "remote" and not re.match(r"^wss?://", str(self.url)):
            raise ValueError(f"brain.url must start with ws:// or wss://, got {self.url!r}.")
        if self.engine not in ("auto", "lean", "hf"):
            raise ValueError(f"brain.engine must be auto, lean or hf, got {self.engine!r}.")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"brain.threads must be >= 1 or null, got {self.threads!r}.")
        # 0 or less made a tight reconnect loop (thousands of log lines a second with the server down).
        if not (0 < self.reconnect_initial_s <= self.reconnect_max_s <= 3600):
            raise ValueError("brain.reconnect_initial_s must be > 0 and <= brain.reconnect_max_s (at most 3600), "
                             f"got {self.reconnect_initial_s!r} and {self.reconnect_max_s!r}.")


@dataclass
class DaemonConfig:
    """``duplex daemon``.

    Attributes:
        device_id: this box's id in MQTT topics (letters, digits, ``-_.``).
        log_format: ``json`` (one object per line, for journald/Loki) or ``text``.
        log_level: DEBUG, INFO, WARNING, ERROR.
        max_seconds: stop after this long (None = run until SIGTERM/SIGINT or a ``restart`` with exit).
        audio / echo / mqtt / brain / session: the components.
    """

    device_id: str = "box1"
    log_format: str = "json"
    log_level: str = "INFO"
    max_seconds: float | None = None
    audio: AudioConfig = field(default_factory=AudioConfig)
    echo: EchoConfig = field(default_factory=EchoConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    brain: BrainConfig = field(default_factory=BrainConfig)
    session: SessionConfig = field(default_factory=SessionConfig)

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.\-]{1,64}", str(self.device_id)):
            raise ValueError(f"device_id {self.device_id!r} must be 1-64 letters, digits, '-', '_' or '.'.")
        if self.log_format not in ("json", "text"):
            raise ValueError("log_format must be json or text.")
        if str(self.log_level).upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError(f"log_level must be DEBUG, INFO, WARNING or ERROR, got {self.log_level!r}.")
        if self.max_seconds is not None and not (math.isfinite(self.max_seconds) and self.max_seconds > 0):
            raise ValueError("max_seconds must be > 0 or null.")
        if (dataclasses.is_dataclass(self.audio) and dataclasses.is_dataclass(self.mqtt)
                and self.audio.backend == "mqtt" and not self.mqtt.enabled):
            # Was accepted: a daemon with no microphone and no speaker at all, silently.
            raise ValueError("audio.backend mqtt takes its microphone from MQTT (audio/in) and plays on MQTT "
                             "(audio/out): it needs mqtt.enabled (drop --no-mqtt, or pick another --audio).")


def resolve_daemon_config(config: str | Path | None = None, overrides: list[str] | None = None) -> DaemonConfig:
    """YAML file or preset (default: the ``daemon`` preset) + ``key.sub=value`` overrides."""
    data = load_yaml(config or "daemon", kind="daemon")
    data = apply_overrides(data, overrides or [])
    # Types first, by name: a YAML ``password: 1234`` (an int) or ``outbox: many`` would otherwise be
    # accepted here and fail later, inside the MQTT client or the event loop.
    check_types(DaemonConfig, data)
    try:
        cfg = from_dict(DaemonConfig, data)
    except TypeError as e:
        raise ValueError(f"A daemon setting has the wrong type ({e}).") from e
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if f.name in ("audio", "echo", "mqtt", "brain", "session") and not dataclasses.is_dataclass(v):
            raise ValueError(f"{f.name} must be a section of settings (a mapping), got {v!r}.")
    return cfg


def to_jsonable(cfg: Any) -> dict:
    """The resolved config, with secrets masked (for logs and the state topic)."""
    d = dataclasses.asdict(cfg)
    for sec, key in (("mqtt", "password"), ("brain", "token")):
        if d.get(sec, {}).get(key):
            d[sec][key] = "***"
    return d
