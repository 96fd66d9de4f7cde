"""A connection's state stays true to what it runs when a client changes settings at awkward moments:
the output rate mid-response, a model switch the backend refuses, a seed set before the first audio;
and the model list sits behind the server's token."""
from __future__ import annotations

import asyncio
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


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> np.ndarray:
    from tests.agent.test_server import speech_clip

    return speech_clip(tmp_path_factory.mktemp("speech"), "Wait, stop. I have a different question for you.")


async def test_turn_detection_null_sends_no_vad_events_and_never_cuts_the_agent(server, speech):
    from tests.agent.test_server import stream_and_collect

    c = await Client.connect(_url(server, "&model=talker"))
    try:
        created = await c.until("session.created")
        await c.send("session.update", session={"audio": {"input": {"turn_detection": None}}})
        assert (await c.until("session.updated"))["session"]["audio"]["input"]["turn_detection"] is None
        await stream_and_collect(c, speech, 24000, extra_s=0.8)
        assert any(f["user_speech"] for f in c.of("x_duplex.frame"))  # the user did speak over the talker
        assert not [e for e in c.events if e["type"].startswith("input_audio_buffer.")]
        assert not c.of("x_duplex.barge_in") and _conn(server, created).session.policy.barge_ins == 0
        # Turning it back on restores the events and the cut, for this session only.
        await c.send("session.update", session={"audio": {"input": {"turn_detection": {"type": "server_vad"}}}})
        turn = (await c.until("session.updated"))["session"]["audio"]["input"]["turn_detection"]
        assert turn["interrupt_response"] is True
        assert _conn(server, created).session.policy.config.barge_in
        assert server.realtime.registry.session_config.policy.barge_in
    finally:
        await c.close()


def test_turn_detection_null_also_turns_off_the_answer_prompt_and_the_wait_in_a_pause():
    import dataclasses

    from agent.policy import PolicyConfig
    from agent.realtime_settings import SessionSettings
    from think.sampling import SamplingConfig

    base = PolicyConfig(answer_after_ms=1600)
    vad = SessionSettings(model="m", adapter=None, instructions="", sampling=SamplingConfig())
    assert vad.policy(base) == base
    assert dataclasses.replace(vad, barge_in=False).policy(base) == dataclasses.replace(base, barge_in=False)
    alone = dataclasses.replace(vad, turn_type=None).policy(base)  # the model alone decides its turns
    assert (alone.barge_in, alone.answer_after_ms, alone.wait_unfinished) == (False, 0.0, False)


async def test_beta_clients_turn_detection_and_modalities_are_read(server):
    c = await Client.connect(_url(server))
    try:
        created = await c.until("session.created")
        await c.send("session.update", session={"modalities": ["text", "audio"], "input_audio_format": "pcm16",
                                                "turn_detection": None})
        assert (await c.until("session.updated"))["session"]["audio"]["input"]["turn_detection"] is None
        await c.send("session.update", session={"turn_detection": {"type": "server_vad", "silence_duration_ms": 300,
                                                                   "interrupt_response": False}})
        turn = (await c.until("session.updated"))["session"]["audio"]["input"]["turn_detection"]
        assert turn["silence_duration_ms"] == 300 and turn["interrupt_response"] is False
        assert not _conn(server, created).settings.cuts
    finally:
        await c.close()


async def test_interrupt_response_false_turns_the_cut_off_for_that_session_only(server, speech):
    from tests.agent.test_server import stream_and_collect

    quiet, other = await Client.connect(_url(server, "&model=talker")), await Client.connect(_url(server))
    try:
        created = await quiet.until("session.created")
        await other.until("session.created")
        await quiet.send("session.update", session={"audio": {"input": {"turn_detection": {
            "type": "server_vad", "interrupt_response": False, "create_response": True}}}})
        turn = (await quiet.until("session.updated"))["session"]["audio"]["input"]["turn_detection"]
        assert turn["interrupt_response"] is False and turn["create_response"] is True
        await stream_and_collect(quiet, speech, 24000, extra_s=0.8)
        assert quiet.of("input_audio_buffer.speech_started")  # VAD events still flow
        assert not quiet.of("x_duplex.barge_in") and _conn(server, created).session.policy.barge_ins == 0
        await other.send("session.update", session={})
        assert (await other.until("session.updated"))["session"]["audio"]["input"]["turn_detection"][
            "interrupt_response"] is True
    finally:
        await quiet.close()
        await other.close()


@pytest.mark.parametrize("session, param", [
    ({"audio": {"input": {"turn_detection": {"create_response": False}}}},
     "session.audio.input.turn_detection.create_response"),
    ({"audio": {"input": {"turn_detection": {"interrupt_response": "no"}}}},
     "session.audio.input.turn_detection.interrupt_response"),
    ({"output_modalities": ["text"]}, "session.output_modalities"),
    ({"output_modalities": ["audio", "text"]}, "session.output_modalities"),
    ({"modalities": ["text"]}, "session.modalities"),
    ({"turn_detection": {"type": "semantic_vad"}}, "session.turn_detection.type"),
])
async def test_settings_the_model_cannot_honour_are_refused_not_ignored(server, session, param):
    c = await Client.connect(_url(server))
    try:
        await c.until("session.created")
        await c.send("session.update", session=session)
        err = (await c.error())["error"]
        assert err["code"] == "invalid_field" and err["param"] == param and err["message"], err
        await c.send("session.update", session={"output_modalities": ["audio"], "audio": {"output": {"voice": "alloy"}}})
        s = (await c.until("session.updated"))["session"]
        assert s["output_modalities"] == ["audio"] and s["audio"]["output"]["voice"] == "default"
        assert s["audio"]["input"]["turn_detection"]["interrupt_response"] is True
    finally:
        await c.close()


async def test_a_text_only_response_is_refused_and_an_audio_one_starts(server):
    c = await Client.connect(_url(server, "&model=talker"))
    try:
        await c.until("session.created")
        await c.send("response.create", event_id="r1", response={"output_modalities": ["text"]})
        err = (await c.error())["error"]
        assert err["code"] == "invalid_field" and err["param"] == "response.output_modalities", err
        assert err["event_id"] == "r1"
        await c.send("response.create", response={"modalities": ["audio", "text"], "instructions": "ignored"})
        assert (await c.until("response.created"))["response"]["status"] == "in_progress"
    finally:
        await c.close()


def _quiet_b64(ms: int = 40) -> str:
    return base64.b64encode(bytes(2 * 24 * ms)).decode()  # PCM16 silence at 24 kHz


async def test_commit_on_an_empty_buffer_is_an_error_and_each_commit_is_a_new_item(server):
    """As the OpenAI API: committing nothing is ``input_audio_buffer_commit_empty``, not a phantom item."""
    c = await Client.connect(_url(server))
    try:
        await c.until("session.created")
        await c.send("input_audio_buffer.commit", event_id="c0")
        err = (await c.error())["error"]
        assert err["code"] == "input_audio_buffer_commit_empty" and err["event_id"] == "c0" and err["message"]
        await c.send("input_audio_buffer.append", audio=_quiet_b64())
        await c.send("input_audio_buffer.commit")
        first = await c.until("input_audio_buffer.committed")
        assert first["previous_item_id"] is None and first["item_id"].startswith("item_")
        await c.send("input_audio_buffer.commit")  # nothing appended since
        assert (await c.error())["error"]["code"] == "input_audio_buffer_commit_empty"
        await c.send("input_audio_buffer.append", audio=_quiet_b64())
        await c.send("input_audio_buffer.clear")
        await c.until("input_audio_buffer.cleared")
        await c.send("input_audio_buffer.commit")  # what was appended was cleared
        assert (await c.error())["error"]["code"] == "input_audio_buffer_commit_empty"
        await c.send("input_audio_buffer.append", audio=_quiet_b64())
        await c.send("input_audio_buffer.commit")
        second = await c.until("input_audio_buffer.committed")
        assert second["previous_item_id"] == first["item_id"] != second["item_id"]
    finally:
        await c.close()


async def test_clear_drops_the_partial_frame_too_so_nothing_appended_before_it_is_heard(server):
    c = await Client.connect(_url(server))
    try:
        created = await c.until("session.created")
        tone = (0.5 * np.sin(2 * np.pi * 300 * np.arange(2400) / 24000) * 32767).astype("<i2")  # 100 ms
        await c.send("input_audio_buffer.append", audio=base64.b64encode(tone.tobytes()).decode())
        conn = _conn(server, created)
        for _ in range(500):  # until the append has reached the session's listener
            if conn.session is not None and conn.session.listener.samples_in:
                break
            await asyncio.sleep(0.01)
        listener = conn.session.listener
        assert listener.buffered_seconds > 0  # 100 ms is not a whole number of 80 ms frames: some is held
        await c.send("input_audio_buffer.clear")
        await c.until("input_audio_buffer.cleared")
        assert listener.buffered_seconds == pytest.approx(0.0)
    finally:
        await c.close()


async def test_a_commit_while_the_user_speaks_commits_that_item_once(server, speech):
    """The server VAD's own commit at the end of the utterance does not commit the same item a second time, and
    the committed items chain through ``previous_item_id``."""
    import asyncio

    import websockets

    c = await Client.connect(_url(server))
    try:
        await c.until("session.created")
        committed_by_client = []

        async def reader():
            try:
                while True:
                    e = await c.recv(30)
                    if e["type"] == "input_audio_buffer.speech_started" and not committed_by_client:
                        committed_by_client.append(e["item_id"])
                        await c.send("input_audio_buffer.commit")
            except (asyncio.TimeoutError, websockets.ConnectionClosed):
                pass

        task = asyncio.create_task(reader())
        await c.stream(speech, 24000)
        await asyncio.sleep(1.0)
        task.cancel()
        assert committed_by_client, "the VAD never heard the speech"
        commits = c.of("input_audio_buffer.committed")
        ids = [e["item_id"] for e in commits]
        assert ids.count(committed_by_client[0]) == 1, ids
        assert len(set(ids)) == len(ids)
        assert [e["previous_item_id"] for e in commits] == [None] + ids[:-1]
        assert c.of("input_audio_buffer.speech_stopped"), "the utterance still ends with speech_stopped"
    finally:
        await c.close()


async def test_a_response_cancel_is_not_reported_as_a_barge_in(server):
    """The cut a client's cancel asks for is no ``x_duplex.barge_in`` (the user did not talk over the agent)."""
    c = await Client.connect(_url(server, "&model=talker"))
    try:
        await c.until("session.created")
        await c.send("response.create")  # the talker speaks at once
        await c.until("response.created")
        await c.until("response.output_audio.delta")
        await c.send("response.cancel")
        assert (await c.until("response.done"))["response"]["status_details"]["reason"] == "client_cancelled"
        await c.drain(0.8)
        assert [f for f in c.of("x_duplex.frame") if f["cut"]], "the cancel did cut the agent"
        assert not c.of("x_duplex.barge_in"), c.of("x_duplex.barge_in")
    finally:
        await c.close()


class FailingBackend(ScriptedBackend):
    """Sessions that talk, then fail at their sixth frame (a backend that loses its engine mid-response)."""

    def open_session(self, sampling=None, system_prompt="", adapter=None):
        s = super().open_session(sampling, system_prompt, adapter)
        step = s.step

        async def failing_step(*args, **kwargs):
            if s.frame >= 5:
                raise RuntimeError("engine lost")
            return await step(*args, **kwargs)

        s.step = failing_step
        return s


async def test_a_model_failure_mid_response_ends_the_response_as_failed_before_closing(nano_model):
    import websockets

    registry = make_registry(nano_model)
    failing = FailingBackend()
    registry.add_backend("failing", failing, failing.codec)
    cfg = ServerConfig(port=0)
    with BackgroundServer(create_app(RealtimeServer(registry, cfg)), cfg) as srv:
        c = await Client.connect(srv.ws_url + "?model=failing")
        await c.until("session.created")
        await c.send("response.create")
        rid = (await c.until("response.created"))["response"]["id"]
        done = await c.until("response.done")
        assert done["response"]["id"] == rid and done["response"]["status"] == "failed"
        assert (await c.until("error"))["error"]["code"] == "server_error"
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                await c.recv(10)
        assert closed.value.rcvd.code == 1011
