"""A connection's state stays true to what it runs when a client changes settings at awkward moments:
the output rate mid-response, a model switch the backend refuses, a seed set before the first audio;
and the model list sits behind the server's token."""
from __future__ import annotations

import base64

import numpy as np
import pytest

from agent.server import BackgroundServer, RealtimeServer, ServerConfig, create_app
from tests.agent.test_server import Client, ScriptedBackend, make_registry

pytestmark = pytest.mark.timeout(60)


class BusyBackend(ScriptedBackend):
    """A backend that cannot take another session (what a full vLLM engine answers)."""

    def open_session(self, sampling=None, system_prompt="", adapter=None):
        raise RuntimeError("busy: the inference engine is restarting; try again shortly.")


@pytest.fixture(scope="module")
def server(nano_model):
    registry = make_registry(nano_model)
    busy = BusyBackend()
    registry.add_backend("busy", busy, busy.codec)
    cfg = ServerConfig(port=0, max_connections=4, token="s3cret")
    rt = RealtimeServer(registry, cfg)
    with BackgroundServer(create_app(rt), cfg) as srv:
        srv.realtime = rt
        yield srv


def _url(server, query: str = "") -> str:
    return f"{server.ws_url}?token=s3cret{query}"


def _conn(server, created: dict):
    return next(c for c in server.realtime.connections if c.id == created["session"]["id"])


async def test_output_rate_change_mid_response_counts_audio_at_the_rate_it_was_sent(server):
    c = await Client.connect(_url(server, "&model=talker"))
    try:
        await c.until("session.created")
        await c.send("response.create")  # the talker speaks at once
        rid = (await c.until("response.created"))["response"]["id"]
        for _ in range(4):
            await c.until("response.output_audio.delta")
        await c.send("session.update", session={"audio": {"output": {"format": {"type": "audio/pcm", "rate": 8000}}}})
        await c.until("session.updated")
        for _ in range(4):
            await c.until("response.output_audio.delta")
        await c.send("response.cancel")
        done = await c.until("response.done")
        assert done["response"]["id"] == rid
        sent_ms, rate = 0.0, 24000
        for e in c.events:
            if e["type"] == "session.updated":
                rate = 8000
            elif e["type"] == "response.output_audio.delta" and e["response_id"] == rid:
                sent_ms += len(base64.b64decode(e["delta"])) // 2 * 1000 / rate
        assert abs(done["response"]["x_duplex"]["audio_ms"] - sent_ms) <= 1, (done["response"]["x_duplex"], sent_ms)
    finally:
        await c.close()


async def test_a_model_switch_the_backend_refuses_keeps_the_session_that_is_open(server):
    c = await Client.connect(_url(server))
    try:
        created = await c.until("session.created")
        await c.send("session.update", event_id="switch", session={"x_duplex": {"model": "busy"}})
        err = (await c.error())["error"]
        conn = _conn(server, created)
        assert conn.settings.model == "nano" and conn.entry.name == "nano"
        await c.send("session.update", session={})
        assert (await c.until("session.updated"))["session"]["model"] == "nano"  # it says what it runs
        assert err["event_id"] == "switch" and err["message"]  # the error names the event it answers
    finally:
        await c.close()


async def test_a_seed_set_before_the_first_audio_seeds_the_conversation(server):
    c = await Client.connect(_url(server))
    try:
        created = await c.until("session.created")
        await c.send("session.update", session={"x_duplex": {"sampling": {"seed": 1234}}})
        await c.until("session.updated")
        live = _conn(server, created).model_session
        assert live.sampling.seed == 1234 and live.generator.initial_seed() == 1234
    finally:
        await c.close()


async def test_the_model_list_needs_the_token_when_the_server_has_one(server):
    import httpx

    async with httpx.AsyncClient() as http:
        anon = await http.get(server.http_url + "/v1/models")
        wrong = await http.get(server.http_url + "/v1/models", headers={"Authorization": "Bearer nope"})
        ok = await http.get(server.http_url + "/v1/models", headers={"Authorization": "Bearer s3cret"})
        by_query = await http.get(server.http_url + "/v1/models?token=s3cret")
        health = await http.get(server.http_url + "/healthz")
    assert anon.status_code == 401 and anon.json()["error"]["code"] == "invalid_api_key"
    assert wrong.status_code == 401
    assert ok.status_code == 200 and [m["id"] for m in ok.json()["data"]] == ["nano", "talker", "busy"]
    assert by_query.status_code == 200
    assert health.status_code == 200  # liveness probes stay open
