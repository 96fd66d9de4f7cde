"""The Realtime WebSocket server with real sockets: protocol round trips, audio in and out, barge-in,
cancel/truncate, auth, the connection limit, isolation between sessions, and the official ``openai``
SDK's realtime client (a client nobody here wrote) talking to it.

The server runs in-process (uvicorn in a background thread on a free loopback port) with a random
"nano" model, plus a scripted "talker" model that always speaks (so barge-in is deterministic)."""
from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path

import numpy as np
import pytest

import websockets

from agent.server import BackgroundServer, ModelRegistry, RealtimeServer, ServerConfig, check_bind, create_app
from listen.wavio import read_wav
from think.layout import DuplexLayout
from think.tokenizer import default_tokenizer

pytestmark = pytest.mark.timeout(90)


# ---- helpers (also used by test_server_bad_input.py) ------------------------------------------------

class ScriptedBackend:
    """A backend whose sessions always talk (loud codec2 codes + a text id) unless forced silent."""

    name = "scripted"

    def __init__(self) -> None:
        from streaming.codecs import load_codec

        self.codec = load_codec("codec2")
        self.tokenizer = default_tokenizer()
        self.layout = DuplexLayout.for_codec(self.codec, self.tokenizer.get_vocab_size())
        spec = self.codec.spec
        t = np.arange(spec.frame_samples * 6) / spec.sample_rate
        buzz = 0.5 * np.sign(np.sin(2 * np.pi * 140 * t)).astype(np.float32)
        self.loud = self.codec.encode_all(buzz)[-1]
        self.sessions: list = []

    def open_session(self, sampling=None, system_prompt="", adapter=None):
        from tests.agent.fakes import TalkingModel

        if adapter:
            raise ValueError("the scripted backend has no adapters")
        s = TalkingModel(self.layout, self.loud, talk_from=0, text_id=300)
        s.sampling = sampling
        self.sessions.append(s)
        return s


def make_registry(model_dir: Path) -> ModelRegistry:
    registry = ModelRegistry()
    registry.add_dir("nano", model_dir)
    backend = ScriptedBackend()
    registry.add_backend("talker", backend, backend.codec)
    registry.get("nano")
    return registry


def pcm16_b64(x: np.ndarray) -> str:
    return base64.b64encode((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()).decode()


def speech_clip(tmp_path: Path, text: str, rate: int = 24000, lead_s: float = 0.4, tail_s: float = 1.2) -> np.ndarray:
    """espeak-ng speech at ``rate`` with silence around it, float32 mono."""
    import shutil
    import subprocess

    import soxr

    assert shutil.which("espeak-ng"), "espeak-ng is required for the speech fixtures (apt-get install espeak-ng)"
    path = tmp_path / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True, timeout=60)
    x, sr = read_wav(path)
    x = soxr.resample(x[:, 0], sr, rate).astype(np.float32)
    return np.concatenate([np.zeros(int(lead_s * rate), np.float32), x, np.zeros(int(tail_s * rate), np.float32)])


class Client:
    """A thin Realtime client over ``websockets`` that records every event it receives."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.events: list[dict] = []

    @classmethod
    async def connect(cls, url: str, **kwargs) -> "Client":
        ws = await websockets.connect(url, max_size=None, **kwargs)
        return cls(ws)

    async def send(self, type: str, **fields) -> None:
        await self.ws.send(json.dumps({"type": type, **fields}))

    async def recv(self, timeout: float = 10.0) -> dict:
        e = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
        self.events.append(e)
        return e

    async def until(self, type: str, timeout: float = 10.0, where=None) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {type} within {timeout} s; got {[e['type'] for e in self.events[-20:]]}")
            e = await self.recv(left)
            if e["type"] == type and (where is None or where(e)):
                return e

    async def error(self, timeout: float = 10.0) -> dict:
        """The next error event, skipping audio rate-limit notices (a loaded machine can delay the
        server's reads enough that paced audio arrives in a burst)."""
        return await self.until("error", timeout, where=lambda e: e["error"].get("param") != "audio")

    async def drain(self, seconds: float) -> list[dict]:
        out, deadline = [], time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                out.append(await self.recv(left))
            except asyncio.TimeoutError:
                break
        return out

    async def stream(self, audio: np.ndarray, rate: int, chunk_ms: int = 40, realtime: bool = True,
                     encode=pcm16_b64) -> None:
        """Send ``audio`` as appends of ``chunk_ms`` (``encode``: float32 -> base64 wire audio), paced in real time."""
        n = rate * chunk_ms // 1000
        start = time.monotonic()
        for k, i in enumerate(range(0, len(audio), n)):
            await self.send("input_audio_buffer.append", audio=encode(audio[i:i + n]))
            if realtime:
                await asyncio.sleep(max(0.0, start + (k + 1) * chunk_ms / 1000 - time.monotonic()))

    def of(self, type: str) -> list[dict]:
        return [e for e in self.events if e["type"] == type]

    async def close(self) -> None:
        await self.ws.close()


async def stream_and_collect(client: Client, audio: np.ndarray, rate: int, extra_s: float = 1.0) -> None:
    """Stream audio in real time while recording events; then keep listening ``extra_s``."""
    async def reader():
        try:
            while True:
                await client.recv(30)
        except (asyncio.TimeoutError, websockets.ConnectionClosed):
            pass

    task = asyncio.create_task(reader())
    await client.stream(audio, rate)
    await asyncio.sleep(extra_s)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass


# ---- fixtures -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def registry(nano_model) -> ModelRegistry:
    return make_registry(nano_model)


@pytest.fixture(scope="module")
def server(registry):
    cfg = ServerConfig(port=0, max_connections=6)
    rt = RealtimeServer(registry, cfg)
    with BackgroundServer(create_app(rt), cfg) as srv:
        srv.realtime = rt
        yield srv


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> np.ndarray:
    return speech_clip(tmp_path_factory.mktemp("speech"), "Wait, stop. I have a different question for you.")


def wait_for(cond, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


# ---- protocol -------------------------------------------------------------------------------------------

async def test_session_created_then_update_round_trip(server):
    c = await Client.connect(server.ws_url)
    created = await c.recv()
    assert created["type"] == "session.created" and created["event_id"].startswith("event_")
    s = created["session"]
    assert s["type"] == "realtime" and s["model"] == "nano"
    assert s["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert s["x_duplex"]["frame_ms"] == 80 and s["x_duplex"]["models"] == ["nano", "talker"]

    await c.send("session.update", event_id="evt_1", session={
        "instructions": "Be brief.",
        "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000},
                            "turn_detection": {"type": "server_vad", "silence_duration_ms": 400}},
                  "output": {"format": {"type": "audio/pcm", "rate": 48000}}},
        "x_duplex": {"sampling": {"text_temperature": 0.3, "audio_top_k": 10}, "events": {"frame": False}}})
    updated = await c.until("session.updated")
    u = updated["session"]
    assert u["instructions"] == "Be brief."
    assert u["audio"]["input"]["format"]["rate"] == 16000 and u["audio"]["output"]["format"]["rate"] == 48000
    assert u["audio"]["input"]["turn_detection"]["silence_duration_ms"] == 400
    assert u["x_duplex"]["sampling"]["text_temperature"] == 0.3 and u["x_duplex"]["sampling"]["audio_top_k"] == 10
    assert u["x_duplex"]["events"] == {"frame": False, "latency": True}

    # A bad update changes nothing and names the client's event.
    await c.send("session.update", event_id="evt_2", session={"x_duplex": {"sampling": {"text_temperature": -1}}})
    err = await c.error()
    assert err["error"]["code"] == "invalid_field" and err["error"]["event_id"] == "evt_2"
    assert err["error"]["param"] == "session.x_duplex.sampling"
    await c.send("session.update", session={})
    assert (await c.until("session.updated"))["session"]["x_duplex"]["sampling"]["text_temperature"] == 0.3
    await c.close()


async def test_audio_in_gives_agent_audio_transcript_vad_and_latency_marks(server, speech):
    c = await Client.connect(server.ws_url)
    await c.until("session.created")
    await stream_and_collect(c, speech, 24000, extra_s=1.0)
    await c.close()

    created = c.of("response.created")
    deltas = c.of("response.output_audio.delta")
    assert created and deltas, [e["type"] for e in c.events[:30]]
    rid = created[0]["response"]["id"]
    assert created[0]["response"]["status"] == "in_progress"
    first = [d for d in deltas if d["response_id"] == rid]
    assert first and all(d["item_id"] == first[0]["item_id"] for d in first)
    pcm = np.frombuffer(base64.b64decode(first[1]["delta"]), "<i2")
    assert len(pcm) == 1920  # one 80 ms frame at 24 kHz
    total = sum(len(base64.b64decode(d["delta"])) // 2 for d in deltas)
    assert total > 24000 * 0.5

    # The random nano model writes text most frames: transcript deltas belong to open responses.
    words = c.of("response.output_audio_transcript.delta")
    assert words and {w["response_id"] for w in words} <= {e["response"]["id"] for e in created}

    # The user's speech is framed by VAD events with a hangover, on the session timeline.
    started, stopped = c.of("input_audio_buffer.speech_started"), c.of("input_audio_buffer.speech_stopped")
    assert started and stopped
    assert 200 <= started[0]["audio_start_ms"] <= 1200  # 0.4 s of lead-in silence (+ late frames under load)
    assert stopped[-1]["audio_end_ms"] > started[0]["audio_start_ms"] + 1000
    assert stopped[0]["item_id"] == started[0]["item_id"]
    assert c.of("input_audio_buffer.committed")[0]["item_id"] == started[0]["item_id"]

    lat = c.of("x_duplex.latency")
    frames = c.of("x_duplex.frame")
    assert len(lat) >= 30 and len(frames) == len(lat)
    assert [e["frame"] for e in lat] == list(range(len(lat)))
    m = lat[5]["marks"]
    assert lat[5]["step_ms"] > 0 and {"listen_ms", "think_ms", "speak_ms", "late_by_ms"} <= set(m)
    assert any(f["user_speech"] for f in frames) and any(f["speaking"] for f in frames)


async def test_barge_in_cancels_the_response_and_truncate_is_acknowledged(server, speech):
    c = await Client.connect(server.ws_url + "?model=talker")
    created = await c.until("session.created")
    assert created["session"]["model"] == "talker"
    await stream_and_collect(c, speech, 24000, extra_s=0.8)

    barge = c.of("x_duplex.barge_in")
    assert barge, "the user spoke over the agent but it was not cut"
    cancelled = [e for e in c.of("response.done") if e["response"]["status"] == "cancelled"]
    assert cancelled and cancelled[0]["response"]["status_details"]["reason"] == "turn_detected"
    assert barge[0]["response_id"] == cancelled[0]["response"]["id"]
    assert barge[0]["audio_end_ms"] > 0
    # Nothing of the cut response is sent after its response.done; the agent resumes in a new response.
    i_done = c.events.index(cancelled[0])
    rid = cancelled[0]["response"]["id"]
    assert not [e for e in c.events[i_done:] if e.get("response_id") == rid]
    later = [e for e in c.events[i_done:] if e["type"] == "response.created"]
    assert later, "the agent never spoke again after the user stopped"
    # The cut happened while the user was speaking, after the barge-in threshold (240 ms = 3 frames).
    started = c.of("input_audio_buffer.speech_started")[0]
    assert c.events.index(started) < c.events.index(barge[0])

    item = cancelled[0]["response"]["output"][0]["id"]
    await c.send("conversation.item.truncate", item_id=item, content_index=0, audio_end_ms=barge[0]["audio_end_ms"] // 2)
    t = await c.until("conversation.item.truncated")
    assert t["item_id"] == item and t["audio_end_ms"] == barge[0]["audio_end_ms"] // 2
    await c.send("conversation.item.truncate", item_id=item, content_index=0, audio_end_ms=10**7)
    assert (await c.error())["error"]["param"] == "audio_end_ms"
    await c.send("conversation.item.truncate", item_id="item_nope", content_index=0, audio_end_ms=0)
    assert (await c.error())["error"]["code"] == "item_not_found"
    await c.close()


async def test_response_cancel_stops_agent_audio_until_the_user_speaks(server):
    c = await Client.connect(server.ws_url + "?model=talker")
    await c.until("session.created")
    await c.send("response.create")  # starts the clock with no audio; the talker speaks at once
    created = await c.until("response.created")
    await c.until("response.output_audio.delta")
    await c.send("response.create")
    assert (await c.error())["error"]["code"] == "conversation_already_has_active_response"
    await c.send("response.cancel", response_id=created["response"]["id"])
    done = await c.until("response.done")
    assert done["response"]["status"] == "cancelled"
    assert done["response"]["status_details"]["reason"] == "client_cancelled"
    quiet = await c.drain(0.6)
    assert not [e for e in quiet if e["type"] in ("response.output_audio.delta", "response.created")]
    assert [e for e in quiet if e["type"] == "x_duplex.frame" and e["muted"]]
    await c.send("response.cancel")
    assert (await c.error())["error"]["code"] == "response_cancel_not_active"
    await c.send("response.create")  # lifts the mute: the talker is heard again
    await c.until("response.created", timeout=3)
    await c.close()


async def test_input_rate_change_mid_session_and_live_sampling(server, speech):
    c = await Client.connect(server.ws_url)
    await c.until("session.created")
    await c.stream(speech[:24000 // 2], 24000)  # 0.5 s at 24 kHz starts the clock
    import soxr

    s16 = soxr.resample(speech, 24000, 16000).astype(np.float32)
    await c.send("session.update", session={"audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}},
                                            "x_duplex": {"sampling": {"audio_temperature": 0.5}}})
    await c.until("session.updated")
    conn = next(x for x in server.realtime.connections if x.settings.input_rate == 16000)
    # 16 kHz is twice the codec's 8 kHz: an exact decimator feeds the listener at the codec rate.
    assert conn.decimator is not None and conn.decimator.factor == 2
    assert conn.session.listener.input_rate == 8000
    assert conn.session.model.sampling.audio_temperature == 0.5
    await c.stream(s16[:16000], 16000)
    await c.until("input_audio_buffer.speech_started", timeout=15)
    # The model cannot change once the conversation has started.
    await c.send("session.update", session={"x_duplex": {"model": "talker"}})
    assert (await c.error())["error"]["code"] == "session_already_started"
    await c.close()


async def test_a_telephone_client_talks_g711_mu_law_both_ways(server, speech):
    """A phone bridge's 8 kHz mu-law, one byte a sample: the session hears the caller (speech_started), answers
    in mu-law (640 bytes per 80 ms frame, audible once decoded) and reports the formats it uses."""
    import soxr

    from streaming.wire_audio import WireFormat

    ulaw = WireFormat("pcmu", 8000)
    c = await Client.connect(server.ws_url)
    await c.until("session.created")
    await c.send("session.update", session={"audio": {"input": {"format": {"type": "audio/pcmu"}},
                                                      "output": {"format": {"type": "audio/pcmu"}}},
                                            "x_duplex": {"model": "talker"}})
    updated = await c.until("session.updated")
    audio = updated["session"]["audio"]
    assert audio["input"]["format"] == {"type": "audio/pcmu"} and audio["output"]["format"] == {"type": "audio/pcmu"}
    from openai.types.realtime import RealtimeServerEvent
    from pydantic import TypeAdapter

    assert TypeAdapter(RealtimeServerEvent).validate_python(updated).session.audio.input.format.type == "audio/pcmu"
    s8 = soxr.resample(speech, 24000, 8000).astype(np.float32)
    reader = asyncio.create_task(c.drain(len(s8) / 8000 + 1.5))
    await c.stream(s8, 8000, encode=lambda x: base64.b64encode(ulaw.encode(x)).decode())
    await reader
    await c.close()
    assert c.of("input_audio_buffer.speech_started"), [e["type"] for e in c.events[:30]]
    deltas = [base64.b64decode(e["delta"]) for e in c.of("response.output_audio.delta")]
    assert deltas and {len(d) for d in deltas} == {640}
    heard = ulaw.decode(b"".join(deltas))
    assert float(np.sqrt(np.mean(heard ** 2))) > 0.01


async def test_unknown_model_in_the_url_falls_back_with_a_clear_error(server):
    c = await Client.connect(server.ws_url + "?model=gpt-realtime")
    assert (await c.recv())["session"]["model"] == "nano"
    err = await c.recv()
    assert err["type"] == "error" and err["error"]["code"] == "model_not_found"
    await c.send("session.update", session={"x_duplex": {"model": "talker"}})  # before audio: allowed
    assert (await c.until("session.updated"))["session"]["model"] == "talker"
    await c.send("session.update", session={"x_duplex": {"adapter": "pirate"}})
    assert (await c.error())["error"]["code"] == "invalid_session"
    await c.close()


async def test_sessions_are_isolated_and_survive_a_neighbour_dying(server, speech):
    a = await Client.connect(server.ws_url)
    b = await Client.connect(server.ws_url + "?model=talker")
    ca, cb = await a.until("session.created"), await b.until("session.created")
    assert ca["session"]["id"] != cb["session"]["id"]
    await a.send("session.update", session={"audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}})
    await a.until("session.updated")
    import soxr

    s16 = soxr.resample(speech, 24000, 16000).astype(np.float32)
    await asyncio.gather(stream_and_collect(a, s16[:16000 * 2], 16000, 0.2),
                         stream_and_collect(b, speech[:24000 * 2], 24000, 0.2))
    ra = {e["response"]["id"] for e in a.of("response.created")}
    rb = {e["response"]["id"] for e in b.of("response.created")}
    assert ra and rb and not ra & rb
    assert not {e.get("response_id") for e in a.of("response.output_audio.delta")} & rb
    # Kill a without a close handshake; b keeps getting frames.
    a.ws.transport.abort()
    n = len(b.of("x_duplex.frame"))
    await b.stream(speech[:24000], 24000)
    await b.drain(0.3)
    assert len(b.of("x_duplex.frame")) >= n + 8
    await b.close()
    assert wait_for(lambda: len(server.realtime.connections) == 0)


async def test_health_and_models_endpoints(server):
    import httpx

    async with httpx.AsyncClient() as http:
        h = (await http.get(server.http_url + "/healthz")).json()
        m = (await http.get(server.http_url + "/v1/models")).json()
    assert h["status"] == "ok" and h["models"] == ["nano", "talker"] and h["auth"] is False
    assert [d["id"] for d in m["data"]] == ["nano", "talker"]


# ---- auth and limits -------------------------------------------------------------------------------------

async def test_token_auth_header_query_and_subprotocol(registry):
    cfg = ServerConfig(port=0, token="s3cret")
    rt = RealtimeServer(registry, cfg)
    with BackgroundServer(create_app(rt), cfg) as srv:
        for kwargs, url in [({}, srv.ws_url), ({"additional_headers": {"Authorization": "Bearer wrong"}}, srv.ws_url)]:
            c = await Client.connect(url, **kwargs)
            err = await c.recv()
            assert err["type"] == "error" and err["error"]["code"] == "invalid_api_key"
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await c.recv()
            assert closed.value.rcvd.code == 1008
        ok = [await Client.connect(srv.ws_url, additional_headers={"Authorization": "Bearer s3cret"}),
              await Client.connect(srv.ws_url + "?token=s3cret"),
              await Client.connect(srv.ws_url, subprotocols=["realtime", "openai-insecure-api-key.s3cret"])]
        for c in ok:
            assert (await c.recv())["type"] == "session.created"
            await c.close()
        assert ok[2].ws.subprotocol == "realtime"
        assert rt.refused == 2


def test_binding_beyond_loopback_needs_a_token(run_cli):
    check_bind("127.0.0.1", None)
    check_bind("::1", None)
    check_bind("0.0.0.0", "tok")
    with pytest.raises(ValueError, match="--token"):
        check_bind("0.0.0.0", None)
    res = run_cli("serve", "--host", "0.0.0.0", "--port", "0")
    assert res.rc == 2 and len(res.error_lines) == 1 and "without a token" in res.error_lines[0]


async def test_connection_limit_refuses_cleanly_and_frees_up(registry):
    cfg = ServerConfig(port=0, max_connections=2)
    rt = RealtimeServer(registry, cfg)
    with BackgroundServer(create_app(rt), cfg) as srv:
        a, b = await Client.connect(srv.ws_url), await Client.connect(srv.ws_url)
        await a.until("session.created")
        await b.until("session.created")
        c = await Client.connect(srv.ws_url)
        err = await c.recv()
        assert err["error"]["code"] == "server_busy"
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await c.recv()
        assert closed.value.rcvd.code == 1013
        await a.close()
        assert wait_for(lambda: len(rt.connections) == 1)
        d = await Client.connect(srv.ws_url)
        assert (await d.recv())["type"] == "session.created"
        await b.close()
        await d.close()


# ---- the official OpenAI SDK as the client ------------------------------------------------------------------

async def test_official_openai_sdk_realtime_client(server, speech):
    import openai
    from openai.types.realtime import RealtimeServerEvent
    from pydantic import TypeAdapter

    strict = TypeAdapter(RealtimeServerEvent)
    client = openai.AsyncOpenAI(api_key="unused-locally", websocket_base_url=server.ws_url.rsplit("/", 1)[0])
    seen: dict[str, int] = {}
    audio = bytearray()
    async with client.realtime.connect(model="nano") as conn:
        first = await conn.recv()
        assert first.type == "session.created" and first.session.model == "nano"
        await conn.session.update(session={"type": "realtime", "instructions": "Hi.", "output_modalities": ["audio"],
                                           "audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000}}}})
        n = 24000 * 40 // 1000
        start = time.monotonic()
        sent = 0
        async def send_audio():
            nonlocal sent
            for k, i in enumerate(range(0, len(speech), n)):
                await conn.input_audio_buffer.append(audio=pcm16_b64(speech[i:i + n]))
                sent += 1
                await asyncio.sleep(max(0.0, start + (k + 1) * 0.04 - time.monotonic()))

        sender = asyncio.create_task(send_audio())
        deadline = time.monotonic() + len(speech) / 24000 + 1.0
        while time.monotonic() < deadline:
            raw = await asyncio.wait_for(conn.recv_bytes(), 10)
            data = json.loads(raw)
            seen[data["type"]] = seen.get(data["type"], 0) + 1
            if data["type"].startswith("x_duplex."):
                continue  # project events: a stock client may ignore them
            strict.validate_python(data)  # every standard event matches the SDK's own models, strictly
            event = conn.parse_event(raw)
            if event.type == "response.output_audio.delta":
                audio += base64.b64decode(event.delta)
        await sender
    for t in ("session.updated", "response.created", "response.output_audio.delta",
              "response.output_audio_transcript.delta", "input_audio_buffer.speech_started", "x_duplex.latency"):
        assert seen.get(t), (t, seen)
    assert len(audio) > 24000  # > 0.5 s of agent audio parsed through the SDK's typed events
