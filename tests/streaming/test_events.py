"""Wire events: names, server event ids, client event parsing and validation, audio decoding."""
import base64
import json

import numpy as np
import pytest

from streaming import events as ev
from streaming.events import EventError, decode_audio_b64, parse_client_event, server_event
from streaming.wire_audio import WireFormat

MAX = 64 * 1024


def raw(obj) -> str:
    return json.dumps(obj)


def code_of(raw_msg, max_bytes=MAX) -> str:
    with pytest.raises(EventError) as info:
        parse_client_event(raw_msg, max_bytes)
    return info.value.code


# -- names ---------------------------------------------------------------------------------------

def test_event_names_are_the_realtime_ga_names():
    assert ev.RESPONSE_OUTPUT_AUDIO_DELTA == "response.output_audio.delta"  # not beta response.audio.delta
    assert ev.RESPONSE_OUTPUT_AUDIO_TRANSCRIPT_DONE == "response.output_audio_transcript.done"
    assert ev.CONVERSATION_ITEM_TRUNCATE == "conversation.item.truncate"
    assert ev.CLIENT_EVENTS.isdisjoint(ev.SERVER_EVENTS)


def test_project_events_share_one_prefix():
    assert ev.PREFIX == "x_duplex."
    assert all(name.startswith(ev.PREFIX) for name in ev.PROJECT_EVENTS)
    assert {ev.X_LATENCY, ev.X_FRAME, ev.X_BARGE_IN} == ev.PROJECT_EVENTS


def test_every_client_event_has_a_validator():
    assert set(ev._VALIDATORS) == ev.CLIENT_EVENTS


def test_event_matrix_lists_every_event():
    for name in ev.CLIENT_EVENTS | ev.SERVER_EVENTS | ev.PROJECT_EVENTS:
        assert f"`{name}`" in ev.__doc__


# -- server events -------------------------------------------------------------------------------

def test_every_server_event_gets_a_unique_event_id():
    ids = {server_event(ev.SESSION_CREATED, session={})["event_id"] for _ in range(1000)}
    assert len(ids) == 1000
    assert all(i.startswith("event_") for i in ids)


def test_server_event_carries_type_and_fields():
    e = server_event(ev.INPUT_AUDIO_BUFFER_SPEECH_STARTED, audio_start_ms=120, item_id="item_1")
    assert e["type"] == "input_audio_buffer.speech_started"
    assert e["audio_start_ms"] == 120 and e["item_id"] == "item_1"
    json.dumps(e)


def test_server_event_rejects_unknown_names_but_allows_project_prefix():
    with pytest.raises(ValueError):
        server_event("response.audio.delta")
    with pytest.raises(ValueError):
        server_event(ev.PREFIX)
    assert server_event(ev.PREFIX + "anything_new")["type"] == "x_duplex.anything_new"


def test_server_event_refuses_caller_event_id():
    with pytest.raises(ValueError):
        server_event(ev.SESSION_UPDATED, event_id="event_mine")


def test_error_event_names_the_offending_client_event():
    err = EventError("unknown_event", "nope", event_id="evt_client_1", param="type")
    e = err.to_event()
    assert e["type"] == "error"
    assert e["error"] == {"type": "invalid_request_error", "code": "unknown_event", "message": "nope",
                          "param": "type", "event_id": "evt_client_1"}


def test_response_done_cancelled_carries_reason():
    e = ev.response_done("resp_1", "cancelled", reason="turn_detected")
    assert e["type"] == "response.done"
    assert e["response"]["status"] == "cancelled"
    assert e["response"]["status_details"] == {"type": "cancelled", "reason": "turn_detected"}
    done = ev.response_done("resp_2", "completed")
    assert done["response"]["status_details"] is None


def test_response_done_rejects_bad_status_or_missing_cancel_reason():
    with pytest.raises(ValueError):
        ev.response_done("resp_1", "finished")
    with pytest.raises(ValueError):
        ev.response_done("resp_1", "cancelled")


def test_output_audio_delta_round_trips_pcm():
    pcm = bytes(range(200))
    e = ev.output_audio_delta("resp_1", "item_1", pcm)
    assert e["type"] == "response.output_audio.delta"
    assert decode_audio_b64(e["delta"], 1000) == pcm
    assert e["output_index"] == 0 and e["content_index"] == 0


def test_project_event_builders():
    lat = ev.latency_event(7, 12.5, {"encode": 1.0, "step": 9})
    assert lat["type"] == "x_duplex.latency" and lat["frame"] == 7
    assert lat["marks"] == {"encode": 1.0, "step": 9.0}
    fr = ev.frame_event(3, 42, "hel", speaking=True)
    assert (fr["type"], fr["token_id"], fr["token"], fr["speaking"]) == ("x_duplex.frame", 42, "hel", True)
    b = ev.barge_in_event(9, response_id="resp_1", audio_end_ms=640)
    assert b["type"] == "x_duplex.barge_in" and b["reason"] == "turn_detected"
    json.dumps([lat, fr, b])


# -- client events -------------------------------------------------------------------------------

def test_valid_client_events_parse():
    audio = base64.b64encode(b"\x00\x01" * 10).decode()
    msgs = [
        {"type": "session.update", "session": {"type": "realtime", "instructions": "be brief",
                                               "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}}},
        {"type": "input_audio_buffer.append", "audio": audio, "event_id": "evt_1"},
        {"type": "input_audio_buffer.commit"},
        {"type": "input_audio_buffer.clear"},
        {"type": "conversation.item.truncate", "item_id": "item_1", "content_index": 0, "audio_end_ms": 1500},
        {"type": "response.create"},
        {"type": "response.create", "response": {"instructions": "hi"}},
        {"type": "response.cancel"},
        {"type": "response.cancel", "response_id": "resp_1"},
    ]
    for m in msgs:
        assert parse_client_event(raw(m), MAX) == m


def test_unknown_event_type_raises_unknown_event():
    with pytest.raises(EventError) as info:
        parse_client_event(raw({"type": "response.audio.delta", "event_id": "evt_9"}), MAX)
    assert info.value.code == "unknown_event"
    assert info.value.event_id == "evt_9"


def test_missing_or_non_string_type_is_invalid_event():
    assert code_of(raw({"audio": "AAAA"})) == "invalid_event"
    assert code_of(raw({"type": 5})) == "invalid_event"


def test_non_json_raises_invalid_json():
    assert code_of("{not json") == "invalid_json"
    assert code_of("") == "invalid_json"
    assert code_of('{"type": NaN}') == "invalid_json"
    assert code_of("[" * 100_000 + "]" * 100_000, max_bytes=10**6) == "invalid_json"  # too deep


def test_non_object_json_raises_invalid_event():
    for m in ("[]", "3", '"session.update"', "null"):
        assert code_of(m) == "invalid_event"


def test_oversize_message_rejected_before_parsing(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("json.loads must not run on an oversize message")

    monkeypatch.setattr(ev.json, "loads", boom)
    assert code_of("x" * 101, max_bytes=100) == "message_too_large"


def test_size_limit_counts_utf8_bytes_not_characters():
    msg = json.dumps({"type": "response.create", "response": {"instructions": "é" * 40}}, ensure_ascii=False)
    n_bytes = len(msg.encode("utf-8"))
    assert n_bytes == len(msg) + 40  # each é is two bytes
    assert code_of(msg, max_bytes=n_bytes - 1) == "message_too_large"
    assert parse_client_event(msg, max_bytes=n_bytes)["type"] == "response.create"


def test_binary_frame_raises_binary_not_supported():
    assert code_of(b'{"type": "response.create"}') == "binary_not_supported"


def test_append_needs_string_audio():
    assert code_of(raw({"type": "input_audio_buffer.append"})) == "invalid_field"
    with pytest.raises(EventError) as info:
        parse_client_event(raw({"type": "input_audio_buffer.append", "audio": [1, 2], "event_id": "e1"}), MAX)
    assert (info.value.code, info.value.param, info.value.event_id) == ("invalid_field", "audio", "e1")


def test_truncate_needs_item_and_non_negative_integers():
    good = {"type": "conversation.item.truncate", "item_id": "i", "content_index": 0, "audio_end_ms": 10}
    for key, bad in [("item_id", 3), ("content_index", -1), ("audio_end_ms", 1.5), ("audio_end_ms", True)]:
        assert code_of(raw({**good, key: bad})) == "invalid_field", (key, bad)
    assert code_of(raw({k: v for k, v in good.items() if k != "audio_end_ms"})) == "invalid_field"


def test_wrong_optional_field_types_are_invalid_field():
    assert code_of(raw({"type": "response.cancel", "response_id": 1})) == "invalid_field"
    assert code_of(raw({"type": "response.create", "response": "now"})) == "invalid_field"
    assert code_of(raw({"type": "session.update"})) == "invalid_field"
    assert code_of(raw({"type": "session.update", "session": {"instructions": 1}})) == "invalid_field"
    assert code_of(raw({"type": "session.update", "session": {"audio": []}})) == "invalid_field"
    assert code_of(raw({"type": "response.create", "event_id": 7})) == "invalid_field"


def test_session_update_with_unsupported_rate_is_rejected_with_event_id():
    m = {"type": "session.update", "event_id": "evt_s",
         "session": {"audio": {"output": {"format": {"type": "audio/pcm", "rate": 96000}}}}}
    with pytest.raises(EventError) as info:
        parse_client_event(raw(m), MAX)
    assert info.value.code == "unsupported_audio_format"
    assert info.value.event_id == "evt_s"
    assert info.value.param == "session.audio.output.format.rate"


# -- audio formats -------------------------------------------------------------------------------

def test_audio_format_returns_encoding_and_rate():
    assert ev.parse_audio_format({"type": "audio/pcm", "rate": 24000}) == WireFormat("pcm16", 24000)
    assert ev.parse_audio_format({"type": "audio/pcm", "rate": 8000}).rate == 8000
    assert ev.parse_audio_format({"type": "audio/pcm", "rate": 48000.0}).rate == 48000
    assert ev.parse_audio_format({"type": "audio/pcm"}).rate == 24000
    assert ev.parse_audio_format("pcm16") == WireFormat("pcm16", 24000)  # beta spelling
    assert ev.parse_audio_format({"type": "audio/pcmu"}) == WireFormat("pcmu", 8000)
    assert ev.parse_audio_format({"type": "audio/pcma", "rate": 8000}) == WireFormat("pcma", 8000)
    assert ev.parse_audio_format("g711_ulaw") == WireFormat("pcmu", 8000)
    assert ev.parse_audio_format("g711_alaw") == WireFormat("pcma", 8000)


@pytest.mark.parametrize("fmt", [
    {"type": "audio/opus"}, {"type": "audio/pcm", "rate": 7999}, {"type": "audio/pcm", "rate": 48001},
    {"type": "audio/pcm", "rate": "24000"}, {"type": "audio/pcm", "rate": True}, {"type": "audio/pcmu", "rate": 16000},
    "g722", "g711", None,
])
def test_unsupported_audio_format_raises(fmt):
    with pytest.raises(EventError) as info:
        ev.parse_audio_format(fmt)
    assert info.value.code == "unsupported_audio_format"


def test_session_audio_reads_ga_and_beta_layouts():
    ga = {"audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}, "output": {"voice": "x"}}}
    assert ev.parse_session_audio(ga) == ev.SessionAudio(input=WireFormat("pcm16", 16000), output=None)
    beta = {"input_audio_format": "pcm16", "output_audio_format": "g711_alaw"}
    assert ev.parse_session_audio(beta) == ev.SessionAudio(WireFormat("pcm16", 24000), WireFormat("pcma", 8000))
    assert ev.parse_session_audio({"instructions": "x"}) == ev.SessionAudio(None, None)


def test_g711_bytes_decode_to_the_samples_they_encode():
    """mu-law and A-law round trips stay within G.711's quantisation (~3 % of the amplitude at speech levels),
    one byte per sample, and odd byte counts are whole samples."""
    t = np.arange(800) / 8000
    x = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    for enc in ("pcmu", "pcma"):
        wire = WireFormat(enc, 8000)
        data = wire.encode(x)
        assert len(data) == len(x)
        y = wire.decode(data)
        assert np.max(np.abs(y - x)) < 0.03 * 0.3 + 2e-3, enc
        assert len(wire.decode(data[:7])) == 7
    assert ev.decode_audio_b64(ev.encode_audio_b64(b"\x01\x02\x03"), 100, sample_bytes=1) == b"\x01\x02\x03"
    with pytest.raises(EventError, match="even byte count"):
        ev.decode_audio_b64(ev.encode_audio_b64(b"\x01\x02\x03"), 100)
    with pytest.raises(ValueError, match="8000"):
        WireFormat("pcmu", 16000)


# -- audio payloads ------------------------------------------------------------------------------

def test_bad_base64_audio_raises_invalid_audio():
    for bad in ("not base64!", "AAA", "AA==AA==", "ÄÄÄÄ", "AA\nAA==", 123):
        with pytest.raises(EventError) as info:
            decode_audio_b64(bad, MAX)
        assert info.value.code == "invalid_audio", bad


def test_odd_length_audio_raises_invalid_audio():
    with pytest.raises(EventError) as info:
        decode_audio_b64(base64.b64encode(b"\x00\x01\x02").decode(), MAX)
    assert info.value.code == "invalid_audio"


def test_audio_decodes_to_pcm_bytes():
    pcm = b"\x01\x00\xff\x7f" * 100
    assert decode_audio_b64(base64.b64encode(pcm).decode(), len(pcm)) == pcm
    assert decode_audio_b64("", MAX) == b""


def test_oversize_audio_rejected_without_decoding():
    pcm = b"\x00\x00" * 100
    s = base64.b64encode(pcm).decode()
    with pytest.raises(EventError) as info:
        decode_audio_b64(s, 198)
    assert info.value.code == "audio_too_large"
    with pytest.raises(EventError) as info:
        decode_audio_b64("A" * 10_000, 100)  # not even valid base64: the length check comes first
    assert info.value.code == "audio_too_large"


def test_a_transcription_session_type_is_refused_not_silently_run_as_realtime():
    with pytest.raises(EventError) as info:
        parse_client_event(raw({"type": "session.update", "event_id": "s1", "session": {"type": "transcription"}}), MAX)
    err = info.value.to_event()["error"]
    assert err["code"] == "invalid_field" and err["param"] == "session.type" and err["event_id"] == "s1"
    assert "transcription" in err["message"]
    parse_client_event(raw({"type": "session.update", "session": {"type": "realtime"}}), MAX)  # the GA value
    parse_client_event(raw({"type": "session.update", "session": {}}), MAX)  # beta clients send no type


def test_an_overlong_event_id_is_refused_and_not_echoed_back():
    long_id = "e" * (ev.MAX_EVENT_ID_CHARS + 1)
    with pytest.raises(EventError) as info:
        parse_client_event(raw({"type": "response.cancel", "event_id": long_id}), MAX)
    err = info.value.to_event()["error"]
    assert err["code"] == "invalid_field" and err["param"] == "event_id"
    assert err["event_id"] is None and len(json.dumps(err)) < 500
    ok = "e" * ev.MAX_EVENT_ID_CHARS
    assert parse_client_event(raw({"type": "response.cancel", "event_id": ok}), MAX)["event_id"] == ok


def test_error_messages_and_params_stay_bounded_whatever_the_client_sent():
    e = ev.error_event("invalid_field", "Unknown field(s) " + ", ".join(f"k{i}" for i in range(50_000)) + ".",
                       param="session.x_duplex." + "k" * 100_000)
    assert len(e["error"]["message"]) <= ev.MAX_ERROR_MESSAGE_CHARS and e["error"]["message"].endswith("...")
    assert len(e["error"]["param"]) <= ev.MAX_ERROR_PARAM_CHARS
    assert ev.error_event("x", "short.", param=None)["error"] == {
        "type": "invalid_request_error", "code": "x", "message": "short.", "param": None, "event_id": None}
    for fmt in ({"type": "y" * 100_000}, {"type": "audio/pcm", "rate": "9" * 100_000}):
        with pytest.raises(EventError) as info:
            ev.parse_audio_format(fmt)
        assert len(info.value.message) < 300, fmt.keys()
