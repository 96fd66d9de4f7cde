"""What a Realtime client may set with ``session.update``, validated in one place.

:func:`parse_session_update` turns a client's ``session`` object into new :class:`SessionSettings`
(or raises :class:`~streaming.events.EventError` naming the field); nothing is applied until the
whole update is valid. :func:`session_view` is what ``session.created`` / ``session.updated`` report.
See ``docs/realtime-events.md`` for the fields.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from agent.policy import PolicyConfig
from streaming import events as ev
from streaming.events import EventError
from streaming.wire_audio import WireFormat
from think.sampling import SamplingConfig

X_FIELDS = ("model", "adapter", "sampling", "events")
# Tokenizing the instructions runs on the event loop every conversation shares (~1 s per MB): bound it.
MAX_INSTRUCTIONS_CHARS = 32768


@dataclass(frozen=True)
class SessionSettings:
    """One connection's client-settable state.

    Attributes:
        model: registry name of the model.
        adapter: LoRA adapter name, or None.
        instructions: system prompt.
        sampling: sampling settings (may change mid-session).
        events: which per-frame ``x_duplex`` events are sent ({"frame": bool, "latency": bool}).
        silence_ms: server VAD silence before ``speech_stopped``.
        turn_type: "server_vad", or None when the client turned turn detection off (no VAD events, no
            barge-in cut, no answer prompt; the model alone decides when it speaks and when it stops).
        barge_in: ``interrupt_response``: the policy cuts the agent when the user talks over it (while turn
            detection is on; see ``cuts``).
        input_format / output_format: the client's audio on the wire (PCM16 at a rate, or G.711 at 8 kHz).
    """

    model: str
    adapter: str | None
    instructions: str
    sampling: SamplingConfig
    events: dict[str, bool] = field(default_factory=dict)
    silence_ms: float = 500.0
    turn_type: str | None = "server_vad"
    barge_in: bool = True
    input_format: WireFormat = WireFormat()
    output_format: WireFormat = WireFormat()

    @property
    def input_rate(self) -> int:
        return self.input_format.rate

    @property
    def output_rate(self) -> int:
        return self.output_format.rate

    @property
    def cuts(self) -> bool:
        """Whether this session's policy cuts the agent at a barge-in."""
        return self.barge_in and self.turn_type is not None

    def policy(self, base: PolicyConfig) -> PolicyConfig:
        """This session's turn policy: the server's, with the cut as the client set it, and without the answer
        prompt or the wait in a mid-turn pause when the client turned turn detection off."""
        off = {} if self.turn_type is not None else {"answer_after_ms": 0.0, "wait_unfinished": False}
        return dataclasses.replace(base, barge_in=self.cuts, **off)

    @property
    def identity(self) -> tuple[str, str | None, str]:
        """What picks the backend session: it can only change before the conversation starts."""
        return self.model, self.adapter, self.instructions


def parse_session_update(s: dict, current: SessionSettings, models: list[str]) -> SessionSettings:
    """The settings after applying the client's ``session`` object ``s`` to ``current``."""
    audio = ev.parse_session_audio(s)
    x = s.get("x_duplex")
    x = {} if x is None else x
    if not isinstance(x, dict):
        raise EventError("invalid_field", "session.x_duplex must be an object.", param="session.x_duplex")
    unknown = sorted(set(x) - set(X_FIELDS))
    if unknown:
        raise EventError("invalid_field", f"Unknown session.x_duplex field(s) {_some(unknown)}; known: "
                         f"{', '.join(X_FIELDS)}.", param=f"session.x_duplex.{unknown[0]}")
    model = x.get("model", current.model)
    if not isinstance(model, str) or model not in models:
        raise EventError("model_not_found", f"No model named {ev.short_repr(model)}; models: {', '.join(models)}.",
                         param="session.x_duplex.model")
    adapter = x.get("adapter", current.adapter)
    if adapter is not None and not isinstance(adapter, str):
        raise EventError("invalid_field", "session.x_duplex.adapter must be a string or null.",
                         param="session.x_duplex.adapter")
    sampling = current.sampling
    if "sampling" in x:
        sampling = _parse_sampling(x["sampling"], current.sampling)
    events = dict(current.events)
    if "events" in x:
        if not isinstance(x["events"], dict) or not all(k in events and isinstance(v, bool)
                                                        for k, v in x["events"].items()):
            raise EventError("invalid_field", 'session.x_duplex.events must look like {"frame": true, '
                             '"latency": true}.', param="session.x_duplex.events")
        events.update(x["events"])
    check_output_modalities(s)
    turn_type, silence_ms, barge_in = _parse_turn_detection(s, current)
    instructions = s.get("instructions", current.instructions)
    if not isinstance(instructions, str):
        raise EventError("invalid_field", "session.instructions must be a string.", param="session.instructions")
    if len(instructions) > MAX_INSTRUCTIONS_CHARS:
        raise EventError("invalid_field", f"session.instructions is {len(instructions)} characters; at most "
                         f"{MAX_INSTRUCTIONS_CHARS} are accepted.", param="session.instructions")
    return dataclasses.replace(
        current, model=model, adapter=adapter or None, instructions=instructions,
        sampling=sampling, events=events, silence_ms=silence_ms, turn_type=turn_type, barge_in=barge_in,
        input_format=audio.input or current.input_format, output_format=audio.output or current.output_format)


def _parse_sampling(value: Any, current: SamplingConfig) -> SamplingConfig:
    if not isinstance(value, dict):
        raise EventError("invalid_field", "session.x_duplex.sampling must be an object.",
                         param="session.x_duplex.sampling")
    known = [f.name for f in dataclasses.fields(SamplingConfig)]
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise EventError("invalid_field", f"Unknown session.x_duplex.sampling field(s) {_some(unknown)}; known: "
                         f"{', '.join(known)}.", param=f"session.x_duplex.sampling.{unknown[0]}")
    try:
        sampling = SamplingConfig(**{**dataclasses.asdict(current), **value})  # checks every value
    except (TypeError, ValueError) as e:
        raise EventError("invalid_field", f"session.x_duplex.sampling: {e}", param="session.x_duplex.sampling") from None
    return sampling


def check_output_modalities(s: dict, where: str = "session") -> None:
    """GA ``output_modalities`` must be ["audio"]; beta ``modalities`` may also name "text" (the transcript).
    ``s`` is a ``session`` (or a ``response.create``'s ``response``) object."""
    mods = s.get("output_modalities")
    if mods is not None and mods != ["audio"]:
        raise EventError("invalid_field", f"output_modalities {ev.short_repr(mods)} is not supported: the model answers in audio, "
                         f"and its text comes as the audio's transcript; use [\"audio\"].",
                         param=f"{where}.output_modalities")
    beta = s.get("modalities")
    if beta is not None and not (isinstance(beta, list) and all(isinstance(m, str) for m in beta)
                                 and "audio" in beta and set(beta) <= {"audio", "text"}):
        raise EventError("invalid_field", f"modalities {ev.short_repr(beta)} is not supported: the model answers in audio with "
                         f"a transcript; use [\"text\", \"audio\"].", param=f"{where}.modalities")


def _parse_turn_detection(s: dict, current: SessionSettings) -> tuple[str | None, float, bool]:
    """(type, silence_ms, barge_in); null turns the VAD events and the barge-in cut off."""
    param = "session.audio.input.turn_detection"
    td = ((s.get("audio") or {}).get("input") or {}).get("turn_detection", "absent")
    if td == "absent" and "turn_detection" in s:  # the beta layout, read as the audio formats are
        param, td = "session.turn_detection", s["turn_detection"]
    if td == "absent":
        return current.turn_type, current.silence_ms, current.barge_in
    if td is None:
        return None, current.silence_ms, current.barge_in
    if not isinstance(td, dict):
        raise EventError("invalid_field", "turn_detection must be an object or null.", param=param)
    silence_ms = current.silence_ms
    if "silence_duration_ms" in td:
        v = td["silence_duration_ms"]
        if not (isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 10000):
            raise EventError("invalid_field", "silence_duration_ms must be an integer from 0 to 10000.",
                             param=f"{param}.silence_duration_ms")
        silence_ms = float(v)
    kind = td.get("type", current.turn_type or "server_vad")
    if kind != "server_vad":  # session.updated echoes it: an unknown type would break clients' schemas
        raise EventError("invalid_field", f"turn_detection.type {kind!r} is not supported; use \"server_vad\" or "
                         f"turn_detection null.", param=f"{param}.type")
    for key in ("create_response", "interrupt_response"):
        if key in td and not isinstance(td[key], bool):
            raise EventError("invalid_field", f"turn_detection.{key} must be true or false.", param=f"{param}.{key}")
    if td.get("create_response") is False:
        raise EventError("invalid_field", "turn_detection.create_response false is not supported: in full duplex "
                         "the model itself decides when to answer.", param=f"{param}.create_response")
    return kind, silence_ms, td.get("interrupt_response", current.barge_in)


def session_view(settings: SessionSettings, session_id: str, models: list[str], adapters: list[str],
                 spec: Any, started: bool) -> dict:
    """The ``session`` object of ``session.created`` / ``session.updated``."""
    turn = None if settings.turn_type is None else {
        "type": settings.turn_type, "silence_duration_ms": int(settings.silence_ms), "create_response": True,
        "interrupt_response": settings.barge_in}
    return {
        "type": "realtime", "object": "realtime.session", "id": session_id, "model": settings.model,
        "instructions": settings.instructions, "output_modalities": ["audio"],
        "audio": {"input": {"format": settings.input_format.view(), "turn_detection": turn},
                  # The model's own voice, or its voice/persona adapter: a client's voice name selects nothing.
                  "output": {"format": settings.output_format.view(),
                             "voice": settings.adapter or "default"}},
        "x_duplex": {
            "model": settings.model, "models": models, "adapter": settings.adapter, "adapters": adapters,
            "sampling": dataclasses.asdict(settings.sampling), "events": dict(settings.events),
            "frame_ms": spec.frame_ms if spec else None, "codec": spec.name if spec else None,
            "codec_rate": spec.sample_rate if spec else None, "started": started,
        },
    }


def _some(names: list[str], at_most: int = 5) -> str:
    """The first few of a client's unknown field names, each cut short: an error names them, it does not copy
    thousands of them back."""
    shown = ", ".join(ev.short_repr(n, 40) for n in names[:at_most])
    return shown + (f" and {len(names) - at_most} more" if len(names) > at_most else "")
