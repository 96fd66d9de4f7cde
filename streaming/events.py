"""Wire events: the OpenAI Realtime (GA) event names, plus project events under one prefix.

The Realtime interface is JSON text frames over a WebSocket, audio as base64 PCM16 little-endian
mono. This module names the events, builds server events (each with a unique ``event_id``) and
parses/validates client events, raising :class:`EventError` whose ``code`` goes back to the client
in an ``error`` event. It does not act on events; the server does.

Event matrix (the implemented subset; "no" rows are GA events this project does not speak yet):

| event | direction | fields | implemented |
|---|---|---|---|
| `session.update` | client → server | `session`: {`instructions`?, `audio`?: {`input`?: {`format`?: {`type`: "audio/pcm", `rate`}, `turn_detection`?}, `output`?: {`format`?, `voice`?}}, `output_modalities`?} | yes (PCM16 at 8000–48000 Hz, or G.711 `audio/pcmu`/`audio/pcma` at 8 kHz; beta `"pcm16"` read as 24 kHz, `"g711_ulaw"`/`"g711_alaw"`) |
| `input_audio_buffer.append` | client → server | `audio`: base64, in the session's input format (PCM16 or G.711) | yes |
| `input_audio_buffer.commit` | client → server | — | yes |
| `input_audio_buffer.clear` | client → server | — | yes |
| `conversation.item.truncate` | client → server | `item_id`, `content_index`, `audio_end_ms` | yes |
| `response.create` | client → server | `response`? (object) | yes |
| `response.cancel` | client → server | `response_id`? | yes |
| `conversation.item.create` | client → server | `item` | no |
| `output_audio_buffer.clear` | client → server | — (WebRTC only) | no |
| `session.created` | server → client | `session` | yes |
| `session.updated` | server → client | `session` | yes |
| `input_audio_buffer.committed` | server → client | `item_id`, `previous_item_id` | yes (ack of commit) |
| `input_audio_buffer.cleared` | server → client | — | yes (ack of clear) |
| `input_audio_buffer.speech_started` | server → client | `audio_start_ms`, `item_id` | yes |
| `input_audio_buffer.speech_stopped` | server → client | `audio_end_ms`, `item_id` | yes |
| `response.created` | server → client | `response`: {`id`, `status`} | yes |
| `response.output_audio.delta` | server → client | `response_id`, `item_id`, `output_index`, `content_index`, `delta` (base64 PCM16) | yes |
| `response.output_audio.done` | server → client | `response_id`, `item_id`, `output_index`, `content_index` | yes |
| `response.output_audio_transcript.delta` | server → client | `response_id`, `item_id`, `output_index`, `content_index`, `delta` (text) | yes |
| `response.output_audio_transcript.done` | server → client | same, `transcript` | yes |
| `response.done` | server → client | `response`: {`id`, `status`: completed/cancelled/failed/incomplete, `status_details`: {`type`, `reason`: turn_detected/client_cancelled}} | yes |
| `conversation.item.truncated` | server → client | `item_id`, `content_index`, `audio_end_ms` | yes |
| `error` | server → client | `error`: {`type`, `code`, `message`, `param`, `event_id` (of the offending client event)} | yes |
| `conversation.item.input_audio_transcription.delta` | server → client | `item_id`, `content_index`, `delta` | yes (heard-text models: the model's own transcript of the user) |
| `conversation.item.input_audio_transcription.completed` | server → client | `item_id`, `content_index`, `transcript` | yes (heard-text models) |
| `response.function_call_arguments.done` | server → client | `call_id`, `arguments` | no |
| `x_duplex.latency` | server → client | `frame`, `step_ms`, `marks` {name: ms} | yes (project) |
| `x_duplex.frame` | server → client | `frame`, `token_id`, `token`, `speaking` | yes (project) |
| `x_duplex.barge_in` | server → client | `frame`, `reason`, `response_id`, `audio_end_ms` | yes (project) |

Error codes raised here: `binary_not_supported`, `message_too_large`, `invalid_json`, `invalid_event`
(JSON that is not an object, or has no string `type`), `unknown_event`, `invalid_field`,
`invalid_audio`, `audio_too_large`, `unsupported_audio_format`.
"""
from __future__ import annotations

import base64
import binascii
import json
import uuid
from dataclasses import dataclass
from typing import Any

from streaming.wire_audio import BETA_NAMES, G711_RATE, TYPES, WireFormat

__all__ = [
    "PREFIX",
    # client -> server
    "SESSION_UPDATE", "INPUT_AUDIO_BUFFER_APPEND", "INPUT_AUDIO_BUFFER_COMMIT",
    "INPUT_AUDIO_BUFFER_CLEAR", "CONVERSATION_ITEM_TRUNCATE", "RESPONSE_CREATE", "RESPONSE_CANCEL",
    # server -> client
    "SESSION_CREATED", "SESSION_UPDATED", "INPUT_AUDIO_BUFFER_COMMITTED", "INPUT_AUDIO_BUFFER_CLEARED",
    "INPUT_AUDIO_BUFFER_SPEECH_STARTED", "INPUT_AUDIO_BUFFER_SPEECH_STOPPED", "RESPONSE_CREATED",
    "RESPONSE_OUTPUT_AUDIO_DELTA", "RESPONSE_OUTPUT_AUDIO_DONE",
    "RESPONSE_OUTPUT_AUDIO_TRANSCRIPT_DELTA", "RESPONSE_OUTPUT_AUDIO_TRANSCRIPT_DONE",
    "RESPONSE_DONE", "CONVERSATION_ITEM_TRUNCATED", "ERROR",
    "INPUT_AUDIO_TRANSCRIPTION_DELTA", "INPUT_AUDIO_TRANSCRIPTION_COMPLETED",
    # project
    "X_LATENCY", "X_FRAME", "X_BARGE_IN",
    # sets
    "CLIENT_EVENTS", "SERVER_EVENTS", "PROJECT_EVENTS",
    "RESPONSE_STATUSES", "CANCEL_REASONS", "MIN_RATE", "MAX_RATE", "DEFAULT_RATE", "MAX_EVENT_ID_CHARS",
    # api
    "EventError", "SessionAudio", "new_id", "new_event_id", "server_event", "error_event",
    "response_done", "output_audio_delta", "output_audio_transcript_delta",
    "latency_event", "frame_event", "barge_in_event",
    "parse_client_event", "parse_audio_format", "parse_session_audio",
    "encode_audio_b64", "decode_audio_b64",
]

# Project events: one prefix, so a stock Realtime client can ignore them wholesale.
PREFIX = "x_duplex."

# -- client -> server ----------------------------------------------------------------------------
SESSION_UPDATE = "session.update"
INPUT_AUDIO_BUFFER_APPEND = "input_audio_buffer.append"
INPUT_AUDIO_BUFFER_COMMIT = "input_audio_buffer.commit"
INPUT_AUDIO_BUFFER_CLEAR = "input_audio_buffer.clear"
CONVERSATION_ITEM_TRUNCATE = "conversation.item.truncate"
RESPONSE_CREATE = "response.create"
RESPONSE_CANCEL = "response.cancel"

# -- server -> client ----------------------------------------------------------------------------
SESSION_CREATED = "session.created"
SESSION_UPDATED = "session.updated"
INPUT_AUDIO_BUFFER_COMMITTED = "input_audio_buffer.committed"
INPUT_AUDIO_BUFFER_CLEARED = "input_audio_buffer.cleared"
INPUT_AUDIO_BUFFER_SPEECH_STARTED = "input_audio_buffer.speech_started"
INPUT_AUDIO_BUFFER_SPEECH_STOPPED = "input_audio_buffer.speech_stopped"
RESPONSE_CREATED = "response.created"
RESPONSE_OUTPUT_AUDIO_DELTA = "response.output_audio.delta"
RESPONSE_OUTPUT_AUDIO_DONE = "response.output_audio.done"
RESPONSE_OUTPUT_AUDIO_TRANSCRIPT_DELTA = "response.output_audio_transcript.delta"
RESPONSE_OUTPUT_AUDIO_TRANSCRIPT_DONE = "response.output_audio_transcript.done"
RESPONSE_DONE = "response.done"
CONVERSATION_ITEM_TRUNCATED = "conversation.item.truncated"
ERROR = "error"
# A heard-text model's own transcript of the user (think/layout.py), attached to the user's item.
INPUT_AUDIO_TRANSCRIPTION_DELTA = "conversation.item.input_audio_transcription.delta"
INPUT_AUDIO_TRANSCRIPTION_COMPLETED = "conversation.item.input_audio_transcription.completed"

# -- project (server -> client) ------------------------------------------------------------------
X_LATENCY = PREFIX + "latency"
X_FRAME = PREFIX + "frame"
X_BARGE_IN = PREFIX + "barge_in"

CLIENT_EVENTS = frozenset({
    SESSION_UPDATE, INPUT_AUDIO_BUFFER_APPEND, INPUT_AUDIO_BUFFER_COMMIT, INPUT_AUDIO_BUFFER_CLEAR,
    CONVERSATION_ITEM_TRUNCATE, RESPONSE_CREATE, RESPONSE_CANCEL,
})
SERVER_EVENTS = frozenset({
    SESSION_CREATED, SESSION_UPDATED, INPUT_AUDIO_BUFFER_COMMITTED, INPUT_AUDIO_BUFFER_CLEARED,
    INPUT_AUDIO_BUFFER_SPEECH_STARTED, INPUT_AUDIO_BUFFER_SPEECH_STOPPED, RESPONSE_CREATED,
    RESPONSE_OUTPUT_AUDIO_DELTA, RESPONSE_OUTPUT_AUDIO_DONE, RESPONSE_OUTPUT_AUDIO_TRANSCRIPT_DELTA,
    RESPONSE_OUTPUT_AUDIO_TRANSCRIPT_DONE, RESPONSE_DONE, CONVERSATION_ITEM_TRUNCATED, ERROR,
    INPUT_AUDIO_TRANSCRIPTION_DELTA, INPUT_AUDIO_TRANSCRIPTION_COMPLETED,
})
PROJECT_EVENTS = frozenset({X_LATENCY, X_FRAME, X_BARGE_IN})

RESPONSE_STATUSES = frozenset({"completed", "cancelled", "failed", "incomplete"})
# Why a response was cancelled: the user spoke over it, or the client sent response.cancel.
CANCEL_REASONS = frozenset({"turn_detected", "client_cancelled"})

# A client's event_id comes back in the error it causes: a long one would let a client that does not read make
# the server hold (and send) megabytes per error. Realtime SDKs use ids of about 30 characters.
MAX_EVENT_ID_CHARS = 512

MIN_RATE = 8000
MAX_RATE = 48000
DEFAULT_RATE = 24000  # the Realtime API's PCM rate


def short_repr(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters: an error message names the client's value, never copies it."""
    r = repr(value)
    return r if len(r) <= limit else r[: limit - 3] + "..."


class EventError(Exception):
    """A client event the server rejects; becomes an ``error`` event via :meth:`to_event`.

    Attributes:
        code: machine-readable reason, e.g. ``"unknown_event"``.
        message: one sentence for a person.
        event_id: the offending client event's ``event_id``, when it had one.
        param: the offending field (dotted path), when there is one.
    """

    def __init__(self, code: str, message: str, event_id: str | None = None, param: str | None = None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.event_id = event_id
        self.param = param

    def to_event(self) -> dict[str, Any]:
        """The ``error`` server event reporting this error."""
        return error_event(self.code, self.message, event_id=self.event_id, param=self.param)


# -- ids and server events -----------------------------------------------------------------------

def new_id(prefix: str) -> str:
    """A short unique id such as ``resp_3f2a...`` (80 random bits)."""
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


def new_event_id() -> str:
    """A unique server ``event_id`` (``event_`` + short uuid)."""
    return new_id("event")


def server_event(type: str, **fields: Any) -> dict[str, Any]:
    """A server -> client event ``{"type": type, "event_id": <new>, **fields}``.

    Raises ValueError for a type that is neither a known server event nor under :data:`PREFIX`
    (catches typos such as the beta name ``response.audio.delta``), or if ``fields`` holds
    ``event_id`` (every server event gets a fresh one).
    """
    if type not in SERVER_EVENTS and not (type.startswith(PREFIX) and len(type) > len(PREFIX)):
        raise ValueError(f"{type!r} is not a server event; known: {sorted(SERVER_EVENTS)} or {PREFIX}*")
    if "event_id" in fields:
        raise ValueError("server_event assigns event_id itself; do not pass one.")
    return {"type": type, "event_id": new_event_id(), **fields}


# An error's message and param may name what a client sent (an unknown field, a model name): bounded, so a client
# cannot make the server copy megabytes back into every error it earns.
MAX_ERROR_MESSAGE_CHARS = 500
MAX_ERROR_PARAM_CHARS = 200


def error_event(code: str, message: str, event_id: str | None = None, param: str | None = None,
                error_type: str = "invalid_request_error") -> dict[str, Any]:
    """An ``error`` event; ``event_id`` names the client event that caused it. ``message`` and ``param``
    are cut to :data:`MAX_ERROR_MESSAGE_CHARS` / :data:`MAX_ERROR_PARAM_CHARS` characters."""
    return server_event(ERROR, error={
        "type": error_type, "code": code, "message": _clip(message, MAX_ERROR_MESSAGE_CHARS),
        "param": None if param is None else _clip(param, MAX_ERROR_PARAM_CHARS), "event_id": event_id,
    })


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def response_done(response_id: str, status: str, reason: str | None = None,
                  output: list[Any] | None = None, **response_fields: Any) -> dict[str, Any]:
    """A ``response.done`` event. ``reason`` (turn_detected / client_cancelled) is required for
    ``status="cancelled"`` and goes to ``status_details.reason``."""
    if status not in RESPONSE_STATUSES:
        raise ValueError(f"response status must be one of {sorted(RESPONSE_STATUSES)}, got {status!r}.")
    if status == "cancelled" and reason not in CANCEL_REASONS:
        raise ValueError(f"a cancelled response needs reason in {sorted(CANCEL_REASONS)}, got {reason!r}.")
    details = None
    if status != "completed":
        details = {"type": status} if reason is None else {"type": status, "reason": reason}
    response = {"object": "realtime.response", "id": response_id, "status": status,
                "status_details": details, "output": output or [], **response_fields}
    return server_event(RESPONSE_DONE, response=response)


def output_audio_delta(response_id: str, item_id: str, audio: bytes,
                       output_index: int = 0, content_index: int = 0) -> dict[str, Any]:
    """A ``response.output_audio.delta`` carrying the session's output format's bytes as base64."""
    return server_event(RESPONSE_OUTPUT_AUDIO_DELTA, response_id=response_id, item_id=item_id,
                        output_index=output_index, content_index=content_index,
                        delta=encode_audio_b64(audio))


def output_audio_transcript_delta(response_id: str, item_id: str, text: str,
                                  output_index: int = 0, content_index: int = 0) -> dict[str, Any]:
    """A ``response.output_audio_transcript.delta`` with the next piece of the agent's text."""
    return server_event(RESPONSE_OUTPUT_AUDIO_TRANSCRIPT_DELTA, response_id=response_id,
                        item_id=item_id, output_index=output_index, content_index=content_index,
                        delta=text)


def latency_event(frame: int, step_ms: float, marks: dict[str, float] | None = None) -> dict[str, Any]:
    """``x_duplex.latency``: one frame's step time and named marks (ms, e.g. ``first_audio``)."""
    return server_event(X_LATENCY, frame=frame, step_ms=float(step_ms),
                        marks={k: float(v) for k, v in (marks or {}).items()})


def frame_event(frame: int, token_id: int | None, token: str, speaking: bool) -> dict[str, Any]:
    """``x_duplex.frame``: the agent's text token for this frame (``token`` is "" for PAD) and
    whether the agent is speaking."""
    return server_event(X_FRAME, frame=frame, token_id=token_id, token=token, speaking=bool(speaking))


def barge_in_event(frame: int, reason: str = "turn_detected", response_id: str | None = None,
                   audio_end_ms: int | None = None) -> dict[str, Any]:
    """``x_duplex.barge_in``: the agent stopped for the user at ``frame``; ``audio_end_ms`` is how
    much of the response had been played."""
    return server_event(X_BARGE_IN, frame=frame, reason=reason, response_id=response_id,
                        audio_end_ms=audio_end_ms)


# -- audio ---------------------------------------------------------------------------------------

def encode_audio_b64(audio: bytes) -> str:
    """Base64 text for audio bytes (no line breaks)."""
    return base64.b64encode(audio).decode("ascii")


def decode_audio_b64(s: str, max_bytes: int, sample_bytes: int = 2) -> bytes:
    """Decode base64 audio (PCM16: ``sample_bytes`` 2; G.711: 1), at most ``max_bytes`` decoded bytes.

    Raises EventError ``invalid_audio`` (not a string, not strict base64, PCM16 with an odd byte count) or
    ``audio_too_large``. The size is checked on the encoded length first, so an oversize chunk is
    never decoded.
    """
    if not isinstance(s, str):
        raise EventError("invalid_audio", f"audio must be a base64 string, got {_kind(s)}.")
    # 4 base64 chars carry 3 bytes; anything longer than this cannot fit in max_bytes.
    if len(s) > 4 * ((max_bytes + 2) // 3):
        raise EventError("audio_too_large", f"audio chunk exceeds {max_bytes} bytes.")
    try:
        data = base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        raise EventError("invalid_audio", "audio is not valid base64.") from None
    if len(data) > max_bytes:
        raise EventError("audio_too_large", f"audio chunk of {len(data)} bytes exceeds {max_bytes}.")
    if len(data) % sample_bytes:
        raise EventError("invalid_audio", f"PCM16 audio needs an even byte count, got {len(data)}.")
    return data


@dataclass(frozen=True)
class SessionAudio:
    """Audio formats asked for in a ``session.update``.

    Attributes:
        input: the client's input format (encoding and rate), None if the update leaves it alone.
        output: the format the client wants back, None if the update leaves it alone.
    """

    input: WireFormat | None = None
    output: WireFormat | None = None


def parse_audio_format(fmt: Any, param: str = "format") -> WireFormat:
    """The wire format of a Realtime audio format such as ``{"type": "audio/pcm", "rate": 24000}``.

    PCM16 (``audio/pcm``) at :data:`MIN_RATE`..:data:`MAX_RATE` Hz (a missing rate means 24000), or G.711
    ``audio/pcmu`` / ``audio/pcma`` at 8 kHz; the beta strings ``"pcm16"`` (24 kHz), ``"g711_ulaw"`` and
    ``"g711_alaw"``. Raises EventError ``unsupported_audio_format`` otherwise.
    """
    if isinstance(fmt, str) and fmt in BETA_NAMES:
        enc = BETA_NAMES[fmt]
        return WireFormat(enc, DEFAULT_RATE if enc == "pcm16" else G711_RATE)
    if not isinstance(fmt, dict):
        raise EventError("unsupported_audio_format",
                         f'{param} must be an object like {{"type": "audio/pcm", "rate": 24000}}, '
                         f"got {_kind(fmt)}.", param=param)
    kind = fmt.get("type")
    enc = next((e for e, t in TYPES.items() if t == kind), None)
    if enc is None:
        raise EventError("unsupported_audio_format", f'{param}.type must be one of {", ".join(TYPES.values())}, '
                         f"got {short_repr(kind)}.", param=f"{param}.type")
    rate = fmt.get("rate", DEFAULT_RATE if enc == "pcm16" else G711_RATE)
    if isinstance(rate, float) and rate.is_integer():
        rate = int(rate)
    if enc != "pcm16":
        if rate != G711_RATE:
            raise EventError("unsupported_audio_format", f"{kind} is {G711_RATE} Hz, got rate {short_repr(rate)}.",
                             param=f"{param}.rate")
        return WireFormat(enc, G711_RATE)
    if not _is_int(rate) or not MIN_RATE <= rate <= MAX_RATE:
        raise EventError("unsupported_audio_format",
                         f"rate must be an integer from {MIN_RATE} to {MAX_RATE} Hz, got {short_repr(rate)}.",
                         param=f"{param}.rate")
    return WireFormat("pcm16", rate)


def parse_session_audio(session: dict[str, Any]) -> SessionAudio:
    """Read the input/output audio formats from a ``session.update``'s ``session`` object.

    GA layout ``session.audio.{input,output}.format``; beta ``session.{input,output}_audio_format``
    is read when the GA field is absent.
    """
    audio = session.get("audio")
    if audio is not None and not isinstance(audio, dict):
        raise EventError("invalid_field", f"session.audio must be an object, got {_kind(audio)}.",
                         param="session.audio")
    formats: dict[str, WireFormat | None] = {}
    for side in ("input", "output"):
        block = (audio or {}).get(side)
        if block is not None and not isinstance(block, dict):
            raise EventError("invalid_field", f"session.audio.{side} must be an object, got {_kind(block)}.",
                             param=f"session.audio.{side}")
        if block is not None and "format" in block:
            formats[side] = parse_audio_format(block["format"], param=f"session.audio.{side}.format")
        elif f"{side}_audio_format" in session:
            formats[side] = parse_audio_format(session[f"{side}_audio_format"],
                                               param=f"session.{side}_audio_format")
        else:
            formats[side] = None
    return SessionAudio(input=formats["input"], output=formats["output"])


# -- client events -------------------------------------------------------------------------------

def parse_client_event(raw: str | bytes, max_bytes: int) -> dict[str, Any]:
    """Parse and validate one client -> server WebSocket message; return the event object.

    Checks, in order: text frame (``binary_not_supported``), size in UTF-8 bytes before any parsing
    (``message_too_large``), JSON (``invalid_json``), an object with a string ``type``
    (``invalid_event``), a known client type (``unknown_event``), field types of that event
    (``invalid_field``; for ``session.update`` also ``unsupported_audio_format``). Base64 audio is
    only type-checked here; decode it with :func:`decode_audio_b64`.
    """
    if not isinstance(raw, str):
        raise EventError("binary_not_supported",
                         "send events as JSON text frames; audio goes base64 in input_audio_buffer.append.")
    # A char is at least one UTF-8 byte and at most four: encode only when the bound is unclear.
    if len(raw) > max_bytes or (len(raw) * 4 > max_bytes
                                and len(raw.encode("utf-8", "surrogatepass")) > max_bytes):
        raise EventError("message_too_large", f"message exceeds {max_bytes} bytes.")
    try:
        event = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise EventError("invalid_json", "message is not valid JSON.") from None
    if not isinstance(event, dict):
        raise EventError("invalid_event", f"an event must be a JSON object, got {_kind(event)}.")
    event_id = event.get("event_id")
    if event_id is not None and not isinstance(event_id, str):
        raise EventError("invalid_field", "event_id must be a string.", param="event_id")
    if event_id is not None and len(event_id) > MAX_EVENT_ID_CHARS:
        raise EventError("invalid_field", f"event_id is {len(event_id)} characters; at most {MAX_EVENT_ID_CHARS}.",
                         param="event_id")
    etype = event.get("type")
    if not isinstance(etype, str):
        raise EventError("invalid_event", 'an event needs a string "type".', event_id, param="type")
    validator = _VALIDATORS.get(etype)
    if validator is None:
        raise EventError("unknown_event", f"unknown client event type {short_repr(etype)}; "
                         f"supported: {', '.join(sorted(CLIENT_EVENTS))}.", event_id, param="type")
    try:
        validator(event)
    except EventError as e:
        e.event_id = event_id  # so the error event names the client event it answers
        raise
    return event


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _require(event: dict, key: str, check, expected: str, optional: bool = False) -> None:
    if key not in event:
        if optional:
            return
        raise EventError("invalid_field", f"{event['type']} needs {key!r} ({expected}).", param=key)
    if not check(event[key]):
        raise EventError("invalid_field",
                         f"{event['type']}.{key} must be {expected}, got {_kind(event[key])}.", param=key)


def _is_str(v: Any) -> bool:
    return isinstance(v, str)


def _is_obj(v: Any) -> bool:
    return isinstance(v, dict)


def _is_count(v: Any) -> bool:
    return _is_int(v) and v >= 0


def _check_session_update(event: dict) -> None:
    _require(event, "session", _is_obj, "an object")
    session = event["session"]
    for key in ("instructions", "type", "voice"):
        if key in session and not isinstance(session[key], str):
            raise EventError("invalid_field", f"session.{key} must be a string.", param=f"session.{key}")
    if session.get("type", "realtime") != "realtime":  # a transcription session would be answered, not transcribed
        raise EventError("invalid_field", f"session.type {short_repr(session['type'])} is not supported; this server "
                         f'only runs "realtime" (speech-to-speech) sessions.', param="session.type")
    mods = session.get("output_modalities")
    if mods is not None and not (isinstance(mods, list) and all(isinstance(m, str) for m in mods)):
        raise EventError("invalid_field", "session.output_modalities must be a list of strings.",
                         param="session.output_modalities")
    parse_session_audio(session)


def _check_append(event: dict) -> None:
    _require(event, "audio", _is_str, "a base64 string")


def _check_nothing(event: dict) -> None:
    pass


def _check_truncate(event: dict) -> None:
    _require(event, "item_id", _is_str, "a string")
    _require(event, "content_index", _is_count, "a non-negative integer")
    _require(event, "audio_end_ms", _is_count, "a non-negative integer")


def _check_response_create(event: dict) -> None:
    _require(event, "response", _is_obj, "an object", optional=True)


def _check_response_cancel(event: dict) -> None:
    _require(event, "response_id", _is_str, "a string", optional=True)


_VALIDATORS = {
    SESSION_UPDATE: _check_session_update,
    INPUT_AUDIO_BUFFER_APPEND: _check_append,
    INPUT_AUDIO_BUFFER_COMMIT: _check_nothing,
    INPUT_AUDIO_BUFFER_CLEAR: _check_nothing,
    CONVERSATION_ITEM_TRUNCATE: _check_truncate,
    RESPONSE_CREATE: _check_response_create,
    RESPONSE_CANCEL: _check_response_cancel,
}
