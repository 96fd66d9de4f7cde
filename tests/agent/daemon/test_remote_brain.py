"""Remote brain: the daemon as a client of ``duplex serve`` (the Realtime WebSocket protocol of the
web page), with a scripted talking model on the server. The server is killed mid-conversation and
started again on the same port: the daemon reports the loss (state ``degraded``, error topic),
reconnects with backoff, and the conversation goes on."""
from __future__ import annotations

import asyncio
import signal
import time

import numpy as np
import pytest

pytest.importorskip("aiomqtt")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("websockets")

from agent.daemon.config import AudioConfig, BrainConfig, DaemonConfig, EchoConfig, MqttConfig  # noqa: E402
from agent.daemon.daemon import Daemon  # noqa: E402
from agent.server import BackgroundServer, ModelRegistry, RealtimeServer, ServerConfig, create_app  # noqa: E402
from tests.agent.test_server import ScriptedBackend  # noqa: E402

pytestmark = pytest.mark.timeout(90)


def start_server(port: int = 0) -> BackgroundServer:
    registry = ModelRegistry()
    backend = ScriptedBackend()
    registry.add_backend("talker", backend, backend.codec)
    cfg = ServerConfig(port=port)
    return BackgroundServer(create_app(RealtimeServer(registry, cfg)), cfg, port=port).start()


async def test_remote_brain_streams_and_survives_a_server_restart(mosquitto, watcher_factory):
    srv = start_server()
    port = srv.port
    cfg = DaemonConfig(device_id="rb1", audio=AudioConfig(backend="none"), echo=EchoConfig(aec=False),
                       mqtt=MqttConfig(port=mosquitto.port, reconnect_initial_s=0.1, metrics_interval_s=0.5),
                       brain=BrainConfig(mode="remote", url=srv.ws_url, reconnect_initial_s=0.2, reconnect_max_s=1.0))
    daemon = Daemon(cfg, audio=None)

    async def feed():
        t0 = time.monotonic()
        i = 0
        while True:
            i += 1
            await daemon.mic(np.zeros(320, np.float32))
            await asyncio.sleep(max(0.0, t0 + i * 0.02 - time.monotonic()))

    async with watcher_factory(mosquitto.port, "duplex/rb1/#") as w:
        task = asyncio.create_task(daemon.run())
        feeder = asyncio.create_task(feed())
        try:
            st = await w.wait_for("state", lambda m: m.get("brain", {}).get("connected") is True, timeout=30)
            assert st["brain"]["mode"] == "remote" and st["state"] == "online"
            await w.wait_for("transcript", lambda m: m.get("role") == "agent", timeout=15)
            await w.wait_for("metrics", lambda m: m.get("frames", 0) > 0, timeout=10)
            assert daemon.frames > 0  # agent audio arrived (response.output_audio.delta)
            # the server dies mid-conversation
            await asyncio.to_thread(srv.stop)
            t0 = time.monotonic()
            down = await w.wait_for("state", lambda m: m.get("brain", {}).get("connected") is False, timeout=15)
            assert down["state"] == "degraded"
            await w.wait_for("error", lambda m: m.get("code") == "brain_disconnected", timeout=15)
            await asyncio.sleep(1.0)
            srv = await asyncio.to_thread(start_server, port)
            n = len(w.on("state"))
            up = await w.wait_for("state", lambda m: m.get("brain", {}).get("connected") is True, start=n, timeout=20)
            assert up["brain"]["connects"] >= 2
            n = len(w.on("transcript"))
            await w.wait_for("transcript", lambda m: True, start=n, timeout=15)  # the conversation goes on
            print(f"remote brain back {time.monotonic() - t0:.2f} s after the server died (1 s of it down)")
            # controls reach the server: sampling is sent as session.update, stop_speaking as response.cancel
            await w.publish("duplex/rb1/control", b'{"command": "sampling", "sampling": {"text_temperature": 0.2}, "request_id": 1}')
            await w.wait_for("ack", lambda m: m.get("request_id") == 1 and m["ok"])
        finally:
            feeder.cancel()
            daemon.stop()
            await asyncio.wait_for(task, 20)
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            srv.stop()


async def test_a_malformed_server_event_is_skipped_and_the_connection_goes_on():
    """Bad base64, an odd PCM16 byte count or a non-object field in one server event ended the connection
    (the reader raised), so the daemon reconnected and the conversation started over."""
    import base64
    import json

    from agent.config import SessionConfig
    from agent.daemon.brain import RemoteBrain

    brain = RemoteBrain(BrainConfig(mode="remote"), SessionConfig())
    outs, errors = [], []
    brain.on_output = outs.append
    brain.on_error = lambda code, message: errors.append((code, message))
    good = base64.b64encode(np.array([1000, -1000], "<i2").tobytes()).decode()
    events = [{"type": "response.output_audio.delta", "delta": "!!notbase64"},
              {"type": "response.output_audio.delta", "delta": base64.b64encode(b"\x01\x02\x03").decode()},
              {"type": "x_duplex.latency", "marks": [1, 2]},
              {"type": "error", "error": "boom"},
              {"type": "response.output_audio.delta", "delta": good}]

    class FakeSocket:
        async def _gen(self):
            for e in events:
                yield json.dumps(e)

        def __aiter__(self):
            return self._gen()

    await brain._read(FakeSocket())  # returns normally: the connection was not given up
    assert len(outs) == 1 and np.allclose(outs[0].audio, [1000 / 32768, -1000 / 32768])
    assert errors == [("brain_error", "boom")]
    assert brain.bad_events == 3
