"""Bad client input: every kind yields an ``error`` event with a code, or a clean close, and the server
keeps serving: a bystander conversation streams audio through all of them and must keep receiving
frames, and a fresh connection must be accepted after each.

Limits here are small (64 KiB messages, 32 KiB audio chunks) so the oversize cases stay cheap."""
from __future__ import annotations

import asyncio
import base64
import json
import os
import threading
import time

import numpy as np
import pytest

import websockets

from agent.server import BackgroundServer, RealtimeServer, ServerConfig, create_app
from tests.agent.test_server import Client, make_registry, pcm16_b64, wait_for

pytestmark = pytest.mark.timeout(60)
KIB = 1024
TONE = (0.3 * np.sin(2 * np.pi * 200 * np.arange(24000 * 0.04) / 24000)).astype(np.float32)


class Bystander(threading.Thread):
    """An innocent conversation in its own thread and event loop: streams 40 ms appends (a little
    slower than real time) and counts the frames the server sends back."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.frames, self.errors, self.closed = url, 0, [], None
        self.stop = threading.Event()

    def run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        async with websockets.connect(self.url) as ws:
            async def reader():
                async for raw in ws:
                    e = json.loads(raw)
                    if e["type"] == "x_duplex.frame":
                        self.frames += 1
                    elif e["type"] == "error":
                        self.errors.append(e)

            task = asyncio.create_task(reader())
            msg = json.dumps({"type": "input_audio_buffer.append", "audio": pcm16_b64(TONE)})
            try:
                while not self.stop.is_set():
                    await ws.send(msg)
                    # Never catch up after a stall (a burst could legitimately be rate limited).
                    await asyncio.sleep(0.04)
            except websockets.ConnectionClosed as e:
                self.closed = e
            task.cancel()


@pytest.fixture(scope="module")
def server(nano_model):
    cfg = ServerConfig(port=0, max_connections=4, max_message_bytes=64 * KIB, max_audio_bytes=32 * KIB,
                       max_events_per_second=200)
    rt = RealtimeServer(make_registry(nano_model), cfg)
    with BackgroundServer(create_app(rt), cfg) as srv:
        srv.realtime = rt
        yield srv


@pytest.fixture(scope="module")
def bystander(server):
    b = Bystander(server.ws_url)
    b.start()
    assert wait_for(lambda: b.frames > 5, 15), "the bystander never got frames"
    yield b
    b.stop.set()
    b.join(10)
    assert b.closed is None and not b.errors, (b.closed, b.errors)


def _append(audio: str) -> str:
    return json.dumps({"type": "input_audio_buffer.append", "audio": audio})


async def _raw_text_frame(c: Client, payload: bytes) -> None:
    await c.ws.send(payload, text=True)  # bytes sent as a text frame, unchecked


async def _flood_appends(c: Client) -> None:
    """1000 append events within about a second (25 s of audio): far beyond real time and 200 events/s."""
    msg = _append(pcm16_b64(TONE[:600]))
    for i in range(1000):
        await c.ws.send(msg)
        if i % 100 == 99:
            await asyncio.sleep(0.1)


async def _flood_unknown(c: Client) -> None:
    for i in range(1000):
        await c.ws.send(json.dumps({"type": "no.such.event", "event_id": f"e{i}"}))


async def _flood_then_list_type(c: Client) -> None:
    """A flood spends the event budget; then an event whose "type" is a list (unhashable) is sniffed
    for a control type."""
    msg = _append(pcm16_b64(TONE[:600]))
    for _ in range(600):  # well over the 400-event burst, sent at once
        await c.ws.send(msg)
    await c.ws.send('{"type": []}')


async def _audio_burst(c: Client) -> None:
    """10 s of audio sent at once: more than 2 s ahead of real time."""
    chunk = _append(pcm16_b64(np.tile(TONE, 10)))  # 0.4 s each
    for _ in range(25):
        await c.ws.send(chunk)


async def _disconnect_mid_response(c: Client) -> None:
    msg = _append(pcm16_b64(TONE))
    for _ in range(40):
        await c.ws.send(msg)
        await asyncio.sleep(0.04)
    await c.until("response.output_audio.delta", timeout=10)
    c.ws.transport.abort()  # no close handshake, mid-response


async def _long_append(c: Client) -> None:
    """2.5 s of 8 kHz audio in one event (40 KB: under every size limit, over the 2 s rate budget)."""
    await c.send("session.update", session={"audio": {"input": {"format": {"type": "audio/pcm", "rate": 8000}}}})
    await c.until("session.updated")
    await c.ws.send(_append(pcm16_b64(np.zeros(20000, np.float32))))


async def _truncate_unknown(c: Client) -> None:
    await c.send("conversation.item.truncate", item_id="item_ghost", content_index=0, audio_end_ms=100)


async def _over_connection_limit(c: Client) -> None:
    pass  # the fixture opens the extra connections; see test_over_the_connection_limit


# kind -> (what the client does, the error code expected, or the close code expected)
CASES = {
    "oversize_message": (lambda c: c.ws.send(_append("A" * (100 * KIB))), "message_too_large", None),
    "giant_frame_beyond_ws_limit": (lambda c: c.ws.send("x" * (300 * KIB)), None, 1009),
    "bad_base64": (lambda c: c.ws.send(_append("not base64 at all!!")), "invalid_audio", None),
    "odd_byte_count_pcm": (lambda c: c.ws.send(_append(base64.b64encode(b"\x01\x02\x03").decode())),
                           "invalid_audio", None),
    "audio_chunk_too_large": (lambda c: c.ws.send(_append(base64.b64encode(bytes(40 * KIB)).decode())),
                              "audio_too_large", None),
    "wrong_rate_in_session_update": (lambda c: c.send("session.update", session={
        "audio": {"input": {"format": {"type": "audio/pcm", "rate": 7}}}}), "unsupported_audio_format", None),
    "unsupported_format_type": (lambda c: c.send("session.update", session={
        "audio": {"output": {"format": {"type": "audio/opus"}}}}), "unsupported_audio_format", None),
    "g711_at_another_rate": (lambda c: c.send("session.update", session={
        "audio": {"input": {"format": {"type": "audio/pcma", "rate": 16000}}}}), "unsupported_audio_format", None),
    "unknown_event": (lambda c: c.send("conversation.item.delete", item_id="x"), "unknown_event", None),
    "invalid_json": (lambda c: c.ws.send('{"type": "session.update", '), "invalid_json", None),
    "json_not_an_object": (lambda c: c.ws.send("[1, 2, 3]"), "invalid_event", None),
    "missing_type": (lambda c: c.ws.send('{"audio": "AAAA"}'), "invalid_event", None),
    "wrong_field_type": (lambda c: c.send("input_audio_buffer.append", audio=12345), "invalid_field", None),
    "binary_garbage": (lambda c: c.ws.send(os.urandom(4096)), "binary_not_supported", None),
    "invalid_utf8_text_frame": (lambda c: _raw_text_frame(c, b'{"type": "\xff\xfe"}'), None, 1007),
    "deeply_nested_json": (lambda c: c.ws.send("[" * 20000 + "]" * 20000), "invalid_json", None),
    "nan_in_json": (lambda c: c.ws.send('{"type": "conversation.item.truncate", "audio_end_ms": NaN}'),
                    "invalid_json", None),
    "flood_1000_events_per_second": (_flood_appends, "rate_limited", None),
    "error_storm_of_unknown_events": (_flood_unknown, "rate_limited", None),
    "audio_far_ahead_of_real_time": (_audio_burst, "rate_limited", None),
    "bad_sampling_value": (lambda c: c.send("session.update", session={"x_duplex": {"sampling": {
        "text_temperature": "hot"}}}), "invalid_field", None),
    "truncate_unknown_item": (_truncate_unknown, "item_not_found", None),
    "negative_audio_end_ms": (lambda c: c.send("conversation.item.truncate", item_id="i", content_index=0,
                                               audio_end_ms=-5), "invalid_field", None),
    "cancel_without_response": (lambda c: c.send("response.cancel"), "response_cancel_not_active", None),
    "disconnect_mid_response": (_disconnect_mid_response, None, "abort"),
    "flood_then_list_as_type": (_flood_then_list_type, "rate_limited", None),
    "temperature_that_overflows_the_sampler": (lambda c: c.send("session.update", session={"x_duplex": {"sampling": {
        "text_temperature": 1e-300}}}), "invalid_field", None),
    "seed_beyond_64_bits": (lambda c: c.send("session.update", session={"x_duplex": {"sampling": {"seed": 2 ** 80}}}),
                            "invalid_field", None),
    "x_duplex_false_not_an_object": (lambda c: c.send("session.update", session={"x_duplex": False}),
                                     "invalid_field", None),
    "unsupported_turn_detection_type": (lambda c: c.send("session.update", session={"audio": {"input": {
        "turn_detection": {"type": 5}}}}), "invalid_field", None),
    "instructions_beyond_the_limit": (lambda c: c.send("session.update", session={"instructions": "hi " * 12000}),
                                      "invalid_field", None),
    "instructions_not_a_string": (lambda c: c.send("session.update", session={"instructions": 5}),
                                  "invalid_field", None),
    "instructions_longer_than_the_models_context": (lambda c: c.send("session.update", session={
        "x_duplex": {"model": "nano"}, "instructions": "hello " * 5000}), "invalid_field", None),
    "a_modality_that_is_not_a_string": (lambda c: c.send("session.update", session={"modalities": ["audio", {}]}),
                                        "invalid_field", None),
    "one_append_longer_than_the_rate_limit_accepts": (_long_append, "audio_too_large", None),
    "a_huge_unknown_event_type": (lambda c: c.send("y" * 60_000), "unknown_event", None),
    # The error names what was wrong without copying it back: no 40 KB list of unknown fields, no echoed 40 KB id.
    "thousands_of_unknown_session_fields": (lambda c: c.send("session.update", session={"x_duplex": {
        f"field_{i:05d}": 1 for i in range(3000)}}), "invalid_field", None),
    "event_id_longer_than_any_sdk_sends": (lambda c: c.send("response.cancel", event_id="e" * 40_000),
                                           "invalid_field", None),
    "a_transcription_session": (lambda c: c.send("session.update", session={"type": "transcription"}),
                                "invalid_field", None),
    "commit_on_an_empty_buffer": (lambda c: c.send("input_audio_buffer.commit"), "input_audio_buffer_commit_empty",
                                  None),
}
FLOODS = ("flood_1000_events_per_second", "error_storm_of_unknown_events", "audio_far_ahead_of_real_time",
          "flood_then_list_as_type")


async def _until_answered(c: Client, retry_every: float, timeout: float = 10.0) -> None:
    """Send an empty ``session.update`` every ``retry_every`` s until ``session.updated`` comes back."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        await c.send("session.update", session={})
        try:
            await c.until("session.updated", timeout=min(retry_every, left))
            return
        except (AssertionError, TimeoutError):
            continue
    raise AssertionError(f"no session.updated within {timeout} s; got {[e['type'] for e in c.events[-20:]]}")


async def test_a_cancel_sent_behind_a_flood_is_still_handled(server):
    """Control events have their own budget: a flood of appends spends the event budget, not the cancel's."""
    c = await Client.connect(server.ws_url)
    try:
        await c.until("session.created")
        msg = _append(pcm16_b64(TONE[:600]))
        for _ in range(600):  # well over the 400-event burst, sent at once
            await c.ws.send(msg)
        await c.send("response.cancel")  # no response is active: the answer is a specific error
        err = await c.until("error", timeout=10, where=lambda e: e["error"]["code"] == "response_cancel_not_active")
        assert err["error"]["message"]
        assert any(e["error"]["code"] == "rate_limited" for e in c.of("error"))  # the flood itself was limited
    finally:
        await c.close()


def test_control_events_are_recognised_cheaply_and_strictly():
    from agent.realtime_session import is_control_event

    assert is_control_event(json.dumps({"type": "response.cancel"}))
    assert is_control_event(json.dumps({"type": "session.update", "session": {}}))
    assert not is_control_event(json.dumps({"type": "input_audio_buffer.append", "audio": ""}))
    assert not is_control_event(json.dumps({"type": "session.update", "pad": "x" * 5000}))  # too big to sniff
    assert not is_control_event(b'{"type": "response.cancel"}')  # binary frames are not events
    assert not is_control_event("[1, 2]") and not is_control_event("{not json")
    assert not is_control_event('{"type": []}') and not is_control_event('{"type": {"a": 1}}')  # unhashable
    assert not is_control_event("[" * 2000 + "]" * 2000)  # small, but deeper than the JSON parser recurses


async def test_tiny_temperature_is_refused_and_the_conversation_keeps_running(server):
    """A temperature near 0 but not 0 turns float32 logits into inf; it used to end the session (1011)."""
    c = await Client.connect(server.ws_url)
    try:
        await c.until("session.created")
        await c.send("session.update", session={"x_duplex": {"sampling": {"text_temperature": 1e-300,
                                                                          "audio_temperature": 1e-300}}})
        err = await c.error()
        assert err["error"]["code"] == "invalid_field" and "greedy" in err["error"]["message"]
        await c.stream(np.tile(TONE, 15), 24000)  # 0.6 s of audio: the clock runs on the old sampling
        await c.until("x_duplex.frame", timeout=10)
        await c.drain(0.5)
        assert not [e for e in c.of("error") if e["error"]["code"] == "server_error"]
        assert c.ws.close_code is None
    finally:
        await c.close()


async def test_unknown_sampling_field_is_named_in_one_sentence(server):
    c = await Client.connect(server.ws_url)
    try:
        await c.until("session.created")
        await c.send("session.update", event_id="ev1", session={"x_duplex": {"sampling": {"temprature": 0.5}}})
        err = (await c.error())["error"]
        assert err["code"] == "invalid_field" and err["event_id"] == "ev1"
        assert err["param"] == "session.x_duplex.sampling.temprature"
        assert "temprature" in err["message"] and "text_temperature" in err["message"]
        assert "__init__" not in err["message"]  # no Python internals
    finally:
        await c.close()


@pytest.mark.parametrize("kind", list(CASES))
async def test_bad_input_gets_an_error_or_a_clean_close_and_the_server_keeps_serving(server, bystander, kind):
    action, code, close = CASES[kind]
    frames_before = bystander.frames
    c = await Client.connect(server.ws_url)
    try:
        await c.until("session.created")
        started = time.monotonic()
        await action(c)
        if code is not None:
            flood = kind in FLOODS
            err = await c.until("error", timeout=10, where=(lambda e: e["error"]["code"] == code) if flood else None)
            assert err["error"]["code"] == code, err
            assert err["error"]["message"] and err["error"]["type"]
            assert len(err["error"]["message"]) < 1000, "the message names the client's value, never copies it"
            if kind == "instructions_longer_than_the_models_context":
                assert err["error"]["param"] == "session.instructions"
            # The offender's own conversation goes on: it still answers a valid event. After a flood the
            # server may still be reading (and dropping) the excess, so the client backs off and retries,
            # as a client told ``rate_limited`` should.
            await _until_answered(c, retry_every=1.0 if flood else 10.0)
            if kind == "error_storm_of_unknown_events":
                # The event rate limit bounds the replies too: at most the burst plus the sustained rate over
                # the time the server took to read the storm, plus one ``rate_limited`` warning a second.
                # (The bound grows with that time, so a slow machine sending slowly stays within it.)
                elapsed = time.monotonic() - started
                rate = server.realtime.config.max_events_per_second
                replies = [e["error"]["code"] for e in c.of("error")]
                assert replies.count("unknown_event") <= 2 * rate + rate * elapsed, (len(replies), elapsed)
                assert replies.count("rate_limited") <= 1 + elapsed, (replies.count("rate_limited"), elapsed)
        elif close == "abort":
            pass
        else:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                while True:
                    await c.recv(10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == close
    finally:
        if close != "abort":
            await c.close()  # a failed case must not leave its connection to the next one
    # The server is still serving: the bystander keeps getting frames, a new client is welcome,
    # and the offender's connection is gone from the books.
    assert wait_for(lambda: bystander.frames >= frames_before + 10, 10), "the bystander stalled"
    fresh = await Client.connect(server.ws_url)
    assert (await fresh.recv())["type"] == "session.created"
    await fresh.close()
    assert wait_for(lambda: len(server.realtime.connections) == 1, 10), len(server.realtime.connections)


async def test_over_the_connection_limit_is_refused_cleanly(server, bystander):
    extra = [await Client.connect(server.ws_url) for _ in range(3)]  # bystander + 3 = the limit of 4
    for c in extra:
        assert (await c.recv())["type"] == "session.created"
    over = await Client.connect(server.ws_url)
    assert (await over.recv())["error"]["code"] == "server_busy"
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await over.recv()
    assert closed.value.rcvd.code == 1013
    for c in extra:
        await c.close()
    assert wait_for(lambda: len(server.realtime.connections) == 1, 10)


async def test_wrong_token_is_refused_cleanly(nano_model):
    cfg = ServerConfig(port=0, token="right")
    rt = RealtimeServer(make_registry(nano_model), cfg)
    with BackgroundServer(create_app(rt), cfg) as srv:
        c = await Client.connect(srv.ws_url + "?token=wrong")
        assert (await c.recv())["error"]["code"] == "invalid_api_key"
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await c.recv()
        assert closed.value.rcvd.code == 1008
        ok = await Client.connect(srv.ws_url + "?token=right")
        assert (await ok.recv())["type"] == "session.created"
        await ok.close()
