"""The daemon's MQTT bridge (aiomqtt 2.x): per-device topics, JSON schemas, retained state with a last
will, QoS 1 for control and state, QoS 0 for streams, reconnect with backoff, and an error topic that
answers every malformed payload (the daemon never crashes on one). Topics and schemas: docs/daemon.md.

``<prefix>/<device_id>/``:

- ``state`` (retained, QoS 1): the daemon's state object; the broker publishes ``{"state": "offline",
  "reason": "connection_lost"}`` (the last will) if the daemon vanishes; a clean shutdown publishes
  ``offline`` with ``reason: "shutdown"`` itself.
- ``transcript``, ``metrics``, ``events`` (QoS 0): streams, dropped (and counted) while disconnected.
- ``error`` (QoS 1): ``{"code", "message", "topic", "request_id", "payload_excerpt", "ts"}``.
- ``control`` (subscribed, QoS 1): ``{"command": NAME, "request_id"?: str|int, ...args}``; or
  ``control/<NAME>`` with an optional JSON object of args. Answered on ``ack`` (QoS 1). Retained control
  messages are refused (``retained_control``): the broker would replay them on every reconnect.
- ``audio/in`` (subscribed when ``mqtt.audio_in``, QoS 0): a remote microphone, WAV or raw PCM16 LE
  mono payloads; ``audio/out`` (published when ``mqtt.audio_out``): the agent's PCM16 at the process rate.

Control messages are parsed and validated here, then queued (``control_queue``): a message received
before a broker outage is still carried out after it. The client id is stable and the session is not
clean, so QoS 1 control messages the broker queued during a short disconnect are delivered on
reconnect.
"""
from __future__ import annotations

import asyncio
import collections
import io
import json
import logging
import ssl
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from agent.config import is_finite_number
from agent.daemon.config import MqttConfig

log = logging.getLogger(__name__)
STABLE_S = 10  # a connection that lasted this long resets the reconnect backoff

# Acks and errors that may wait for the broker while connected (the control queue holds 1000 commands).
RELIABLE_BACKLOG = 2000

COMMANDS = {
    # command: {arg: (checker, description)}; request_id is allowed everywhere.
    "ping": {},
    "mute": {},
    "unmute": {},
    "volume": {"volume": "a number from 0.0 to 2.0"},
    "stop_speaking": {},
    "adapter": {"adapter": "a string or null"},
    "sampling": {"sampling": "an object of sampling settings"},
    "restart": {},
    "state": {},
}
OPTIONAL_ARGS = {"adapter"}  # adapter: null = none; still required as a key (explicit)


class ControlError(Exception):
    def __init__(self, code: str, message: str, request_id: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def parse_json(payload: bytes, max_bytes: int) -> Any:
    if len(payload) > max_bytes:
        raise ControlError("payload_too_large", f"The payload is {len(payload)} bytes; at most {max_bytes} are read.")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise ControlError("invalid_payload", "The payload is not UTF-8 text.") from None
    if not text.strip():
        raise ControlError("invalid_json", "The payload is empty; send a JSON object such as {\"command\": \"ping\"}.")
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise ControlError("invalid_json", "The JSON is nested too deeply.") from None
    except ValueError as e:
        raise ControlError("invalid_json", f"The payload is not valid JSON ({e}).") from None


def validate_control(obj: Any, command_from_topic: str | None = None) -> dict:
    """Check a control object against the schema; returns it (with ``command`` filled in)."""
    if command_from_topic is not None and obj is None:
        obj = {}
    if not isinstance(obj, dict):
        kind = {list: "an array", str: "a string", type(None): "null", bool: "a boolean"}.get(type(obj), "a number")
        raise ControlError("invalid_control", f"A control message must be a JSON object, got {kind}.")
    rid = obj.get("request_id")
    if rid is not None and (isinstance(rid, bool) or not isinstance(rid, (str, int)) or
                            (isinstance(rid, str) and len(rid) > 128)):
        raise ControlError("invalid_field", "request_id must be a string (up to 128 characters) or an integer.")
    if command_from_topic is not None:
        if "command" in obj and obj["command"] != command_from_topic:
            raise ControlError("invalid_field", f"command {json.dumps(obj['command'])[:64]} disagrees with the "
                               f"topic ({command_from_topic[:64]!r}).", rid)
        obj = {**obj, "command": command_from_topic}
    if "command" not in obj:
        raise ControlError("missing_field", f"A control message needs a \"command\": one of {', '.join(COMMANDS)}.", rid)
    cmd = obj["command"]
    if not isinstance(cmd, str):
        raise ControlError("invalid_field", "command must be a string.", rid)
    if cmd not in COMMANDS:
        raise ControlError("unknown_command", f"Unknown command {cmd[:64]!r}; known: {', '.join(COMMANDS)}.", rid)
    args = COMMANDS[cmd]
    extra = sorted(set(obj) - set(args) - {"command", "request_id"})
    if extra:
        raise ControlError("invalid_field", f"{cmd} takes no field(s) {', '.join(extra)[:200]}"
                           f"{'; it takes ' + ', '.join(args) if args else ''}.", rid)
    for name, what in args.items():
        if name not in obj:
            raise ControlError("missing_field", f"{cmd} needs \"{name}\": {what}.", rid)
    if cmd == "volume":
        v = obj["volume"]
        if not is_finite_number(v) or not (0.0 <= v <= 2.0):
            raise ControlError("invalid_field", f"volume must be a number from 0.0 to 2.0, got {json.dumps(v)[:40]}.", rid)
    elif cmd == "adapter":
        a = obj["adapter"]
        if a is not None and (not isinstance(a, str) or not 0 < len(a) <= 128):
            raise ControlError("invalid_field", "adapter must be a non-empty string (up to 128 characters) or null.", rid)
    elif cmd == "sampling":
        s = obj["sampling"]
        if not isinstance(s, dict) or not s:
            raise ControlError("invalid_field", "sampling must be a non-empty object, e.g. {\"text_temperature\": 0.5}.", rid)
        from agent.daemon.brain import validate_sampling
        from think.sampling import SamplingConfig

        try:
            validate_sampling(SamplingConfig(), s)
        except (ValueError, TypeError) as e:
            raise ControlError("invalid_field", str(e), rid) from None
    return obj


def parse_audio(payload: bytes, default_rate: int, max_bytes: int = 1 << 20) -> tuple[np.ndarray, int]:
    """A remote microphone chunk: a WAV file (any rate/channels, PCM) or raw PCM16 LE mono at
    ``default_rate`` -> (float32 mono, rate)."""
    if len(payload) > max_bytes:
        raise ControlError("payload_too_large", f"The audio chunk is {len(payload)} bytes; at most {max_bytes}.")
    if payload[:4] == b"RIFF":
        import soundfile as sf

        try:
            data, rate = sf.read(io.BytesIO(payload), dtype="float32", always_2d=True)
        except Exception as e:
            raise ControlError("invalid_audio", f"The WAV payload cannot be read ({e}).") from None
        if not 4000 <= rate <= 384000:
            # A header claiming 1 Hz asked the resampler for 16000 samples per sample (a 1 MiB chunk: 32 GB).
            raise ControlError("invalid_audio", f"The WAV payload's rate is {rate} Hz; 4000 to 384000 Hz are taken.")
        # A float WAV may hold NaN/Inf: zeroed here, before they reach the echo canceller's PCM16 conversion.
        return np.nan_to_num(data.mean(axis=1), nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32), int(rate)
    if len(payload) % 2:
        raise ControlError("invalid_audio", f"Raw PCM16 needs an even number of bytes, got {len(payload)}.")
    return np.frombuffer(payload, dtype="<i2").astype(np.float32) / 32768.0, default_rate


@dataclass
class _Out:
    topic: str
    payload: bytes
    qos: int
    retain: bool


class MqttBridge:
    """Owns the broker connection. ``run()`` until ``stop()``; publish from anywhere in the loop.

    Args:
        config: broker, credentials, TLS, prefix.
        device_id: the topic level after the prefix.
        on_audio: ``(pcm float32, rate)`` for each ``audio/in`` chunk (remote microphone).
    """

    def __init__(self, config: MqttConfig, device_id: str, on_audio: Callable[[np.ndarray, int], Any] | None = None) -> None:
        self.config = config
        self.device_id = device_id
        self.base = f"{config.prefix}/{device_id}"
        self.on_audio = on_audio
        self.control_queue: asyncio.Queue[dict] = asyncio.Queue(maxsize=1000)
        self.state: dict = {"state": "starting"}
        self._state_dirty = True
        # Bounded by mqtt.outbox only while the broker is away: connected, every ack goes out (the control
        # queue, 1000 deep, bounds how many can wait).
        self._reliable: collections.deque[_Out] = collections.deque()
        self._streams: collections.deque[_Out] = collections.deque(maxlen=500)
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._client = None
        self._tls = self._tls_context() if config.tls else None
        self.connected = False
        self.connects = 0
        self.dropped_stream_messages = 0
        self.dropped_reliable_messages = 0
        self.errors_published = 0
        self.controls_received = 0
        self.last_error: str | None = None
        # Topics whose retained command was refused: the empty message that clears it (as the refusal says)
        # reaches the daemon too, once, and is not a command.
        self._refused_retained: set[str] = set()

    # ---- topics --------------------------------------------------------------------------------
    def topic(self, name: str) -> str:
        return f"{self.base}/{name}"

    # ---- publishing (non-blocking, from the event loop) ------------------------------------------
    def set_state(self, **fields: Any) -> None:
        """Merge ``fields`` into the retained state and publish it (now, or on the next connect)."""
        self.state.update(fields)
        self._state_dirty = True
        self._wake.set()

    def _state_payload(self) -> bytes:
        return json.dumps({**self.state, "device_id": self.device_id, "ts": round(time.time(), 3)}).encode()

    def publish_stream(self, name: str, obj: Any) -> None:
        """QoS 0, not retained; dropped (counted) while disconnected."""
        if not self.connected:
            self.dropped_stream_messages += 1
            return
        payload = obj if isinstance(obj, (bytes, bytearray)) else json.dumps(obj).encode()
        if len(self._streams) == self._streams.maxlen:
            self.dropped_stream_messages += 1
        self._streams.append(_Out(self.topic(name), bytes(payload), 0, False))
        self._wake.set()

    def publish_reliable(self, name: str, obj: Any) -> None:
        """QoS 1; kept in a bounded outbox while disconnected (the oldest goes first, counted)."""
        limit = self.config.outbox if not self.connected else max(self.config.outbox, RELIABLE_BACKLOG)
        while len(self._reliable) >= limit:
            self._reliable.popleft()
            self.dropped_reliable_messages += 1
        self._reliable.append(_Out(self.topic(name), json.dumps(obj).encode(), 1, False))
        self._wake.set()

    def error(self, code: str, message: str, topic: str | None = None, request_id: Any = None,
              payload: bytes | None = None) -> None:
        """Publish on the error topic (and log)."""
        obj = {"code": code, "message": message, "ts": round(time.time(), 3)}
        if topic is not None:
            obj["topic"] = topic
        if request_id is not None:
            obj["request_id"] = request_id
        if payload is not None:
            obj["payload_excerpt"] = payload[:120].decode("utf-8", "replace")
        self.errors_published += 1
        self.last_error = code
        log.warning("error %s: %s", code, message, extra={"code": code, "topic": topic})
        self.publish_reliable("error", obj)

    def ack(self, cmd: dict, ok: bool = True, **fields: Any) -> None:
        obj = {"command": cmd.get("command"), "ok": ok, "ts": round(time.time(), 3), **fields}
        if cmd.get("request_id") is not None:
            obj["request_id"] = cmd["request_id"]
        self.publish_reliable("ack", obj)

    # ---- the connection --------------------------------------------------------------------------
    def _client_kwargs(self) -> dict:
        import aiomqtt

        c = self.config
        offline = json.dumps({"state": "offline", "reason": "connection_lost", "device_id": self.device_id}).encode()
        kw: dict = dict(port=c.port, username=c.username, password=c.password, keepalive=c.keepalive,
                        identifier=c.client_id or f"duplex-{self.device_id}", clean_session=False,
                        will=aiomqtt.Will(self.topic("state"), offline, qos=1, retain=True), timeout=5)
        if self._tls is not None:
            kw["tls_context"] = self._tls
        return kw

    def _tls_context(self) -> ssl.SSLContext:
        """Built once, at start: a missing or unreadable PEM file is a setting to fix (ValueError), not a
        traceback logged on every reconnect attempt."""
        c = self.config
        try:
            ctx = ssl.create_default_context(cafile=c.ca_certs)
            if c.certfile:
                ctx.load_cert_chain(c.certfile, c.keyfile)
        except OSError as e:  # FileNotFoundError, ssl.SSLError (not PEM)
            files = ", ".join(f"mqtt.{k}={v}" for k, v in (("ca_certs", c.ca_certs), ("certfile", c.certfile),
                                                          ("keyfile", c.keyfile)) if v)
            raise ValueError(f"The MQTT TLS files cannot be used ({files or 'system CA store'}): "
                             f"{getattr(e, 'strerror', None) or e}.") from None
        if c.tls_insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    async def run(self) -> None:
        import aiomqtt

        c = self.config
        delay = c.reconnect_initial_s
        fresh = False  # the broker's session from an earlier run of this process is gone
        connected_at, short_lived = 0.0, 0  # connections the broker closed within STABLE_S, in a row
        while not self._stop.is_set():
            try:
                if not fresh:
                    # Commands queued for the persistent session while this daemon was not running are stale
                    # (a mute sent an hour ago): a clean session drops them. Within this run, reconnects keep
                    # the session, so commands sent during a broker hiccup are still carried out.
                    async with aiomqtt.Client(c.host, **{**self._client_kwargs(), "clean_session": True}):
                        pass
                    fresh = True
                async with aiomqtt.Client(c.host, **self._client_kwargs()) as client:
                    self._client = client
                    # A clear sent while offline was never seen: whatever is still retained is replayed now.
                    self._refused_retained.clear()
                    await client.subscribe(self.topic("control"), qos=1)
                    await client.subscribe(self.topic("control/+"), qos=1)
                    if c.audio_in:
                        await client.subscribe(self.topic("audio/in"), qos=0)
                    self.connected = True
                    self.connects += 1
                    self.state["mqtt_connects"] = self.connects
                    self._state_dirty = True
                    connected_at = time.monotonic()
                    log.info("connected to mqtt://%s:%s as %s", c.host, c.port, self.base)
                    tasks = [asyncio.create_task(self._reader(client)), asyncio.create_task(self._writer(client)),
                             asyncio.create_task(self._stop.wait())]
                    try:
                        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        for t in tasks:
                            t.cancel()
                        await asyncio.gather(*tasks, return_exceptions=True)
                    for t in done:
                        if not t.cancelled() and t.exception() is not None:
                            raise t.exception()
                    if self._stop.is_set():
                        await self._final(client)
                        return
            except aiomqtt.MqttError as e:
                if self.connected or self.connects == 0:
                    log.warning("mqtt broker %s:%s: %s; reconnecting", c.host, c.port, e)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("mqtt bridge failed; reconnecting")
            finally:
                if self.connected:
                    # The backoff starts over only after a connection that held: two daemons with one client id
                    # push each other off the broker the moment they connect, and would otherwise reconnect
                    # five times a second, forever.
                    if time.monotonic() - connected_at >= STABLE_S:
                        delay, short_lived = c.reconnect_initial_s, 0
                    else:
                        short_lived += 1
                        if short_lived == 3:
                            log.error("the mqtt broker closed this connection %d times in a row within %d s of "
                                      "connecting: is another daemon running with client id %r (device_id %r)? "
                                      "Two clients with one id push each other off; give each its own "
                                      "--device-id.", short_lived, STABLE_S, self._client_kwargs()["identifier"],
                                      self.device_id)
                    self.state["mqtt_short_connections"] = short_lived
                self.connected = False
                self._client = None
            if self._stop.is_set():
                return
            try:
                await asyncio.wait_for(self._stop.wait(), timeout=delay)
            except asyncio.TimeoutError:
                pass
            delay = min(c.reconnect_max_s, delay * 2)

    async def _final(self, client) -> None:
        """Flush what is queued and publish the offline state (clean shutdown)."""
        try:
            await asyncio.wait_for(self._flush(client), timeout=2.0)
            self.state.update({"state": "offline", "reason": "shutdown"})
            await asyncio.wait_for(client.publish(self.topic("state"), self._state_payload(), qos=1, retain=True),
                                   timeout=2.0)
        except Exception as e:
            log.warning("could not publish the offline state: %s", e)

    async def _flush(self, client) -> None:
        if self._state_dirty:
            self._state_dirty = False
            await client.publish(self.topic("state"), self._state_payload(), qos=1, retain=True)
        while self._reliable:
            m = self._reliable[0]
            await client.publish(m.topic, m.payload, qos=m.qos, retain=m.retain)
            self._reliable.popleft()
        while self._streams:
            m = self._streams.popleft()
            await client.publish(m.topic, m.payload, qos=0, retain=False)

    async def _writer(self, client) -> None:
        while True:
            self._wake.clear()
            await self._flush(client)
            await self._wake.wait()

    async def _reader(self, client) -> None:
        control = self.topic("control")
        audio_in = self.topic("audio/in")
        async for msg in client.messages:
            topic = str(msg.topic)
            payload = msg.payload if isinstance(msg.payload, (bytes, bytearray)) else str(msg.payload or "").encode()
            payload = bytes(payload)
            try:
                if not payload.strip() and not msg.retain and topic in self._refused_retained:
                    self._refused_retained.discard(topic)
                    log.info("retained control on %s cleared", topic)
                    continue
                if msg.retain and topic != audio_in:
                    self._refused_retained.add(topic)
                    # A retained command is replayed on every (re)connect and would undo later ones (a
                    # retained volume 0.2 comes back after each broker restart): refuse it, say how to clear.
                    raise ControlError("retained_control", "Control messages must not be retained (the broker "
                                       "replays them on every reconnect); this one was ignored. Clear it with "
                                       f"an empty retained message: mosquitto_pub -r -n -t {topic}")
                if topic == audio_in:
                    pcm, rate = parse_audio(payload, self.config.audio_in_rate)
                    if self.on_audio is not None:
                        r = self.on_audio(pcm, rate)
                        if asyncio.iscoroutine(r):
                            await r
                    continue
                if topic == control:
                    obj = validate_control(parse_json(payload, self.config.max_payload_bytes))
                elif topic.startswith(control + "/"):
                    name = topic[len(control) + 1:]
                    obj = None if not payload.strip() else parse_json(payload, self.config.max_payload_bytes)
                    obj = validate_control(obj, command_from_topic=name)
                else:
                    continue
                self.controls_received += 1
                try:
                    self.control_queue.put_nowait(obj)
                except asyncio.QueueFull:
                    raise ControlError("busy", "Too many control messages are waiting; this one was dropped.",
                                       obj.get("request_id")) from None
            except ControlError as e:
                self.error(e.code, e.message, topic=topic, request_id=e.request_id, payload=payload)
            except Exception as e:  # never let a payload take the bridge down
                log.exception("handling %s", topic)
                self.error("internal_error", f"Could not handle the message ({type(e).__name__}).", topic=topic,
                           payload=payload)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
