"""The frames of a dialogue where the script makes a duplex decision, for ``TrainConfig.decision_weights``.

Most frames of a dialogue are easy to predict: the agent goes on with a sentence it has begun, or stays
quiet while nobody speaks. What the eval scores (``agent/evaluate.py``) happens in a few frames: taking the
turn at a real turn end, waiting through a pause, talking on through a user's "mm-hmm", falling silent
when the user interrupts. Those frames are marked here, from the record's ``events``, so training can weight
the agent's targets in them more. Each window runs from the event's onset until the script has resolved it
plus ``DECISION_TAIL_S``, so both the last frames of the old behaviour and the first of the new are in it.

| event (``duplex data synth``) | from    | to                          | the script's agent            |
|-------------------------------|---------|-----------------------------|-------------------------------|
| ``turn_end``                  | ``time``| ``agent_start`` + tail      | starts to answer              |
| ``pause``                     | ``time``| ``end``                     | stays quiet                   |
| ``user_backchannel``          | ``time``| ``end`` + tail              | talks on                      |
| ``interruption``              | ``time``| ``agent_stop`` + tail       | stops                         |
| ``agent_backchannel``         | ``time``| ``end``                     | says "mm-hmm" and waits       |
"""
from __future__ import annotations

import math

import numpy as np

DECISION_TAIL_S = 0.48
# event type -> (the field where its window ends, whether the tail is added)
DECISION_EVENTS = {"turn_end": ("agent_start", True), "pause": ("end", False), "user_backchannel": ("end", True),
                   "interruption": ("agent_stop", True), "agent_backchannel": ("end", False)}


def frame_at(seconds: float, frame_s: float) -> int:
    """The frame a time falls in. Rounded first: 6.88 s / 0.08 s is 86.00000000000001 in floating point, and
    frame 86 begins at 6.88 s."""
    return math.floor(round(seconds / frame_s, 6))


def frames_until(seconds: float, frame_s: float) -> int:
    """How many frames it takes to reach a time (the first frame that begins at or after it)."""
    return math.ceil(round(seconds / frame_s, 6))


def decision_weight_table(weights: dict[str, float]) -> np.ndarray:
    """``(1 + len(DECISION_EVENTS),)`` float32: the loss multiplier of each code :func:`decision_frames` writes
    (0 = no decision: 1.0; kinds missing from ``weights``: 1.0)."""
    unknown = sorted(set(weights) - set(DECISION_EVENTS))
    if unknown:
        raise ValueError(f"Unknown decision kind(s) {', '.join(map(str, unknown))}; choose from "
                         f"{', '.join(DECISION_EVENTS)}.")
    return np.asarray([1.0, *(float(weights.get(k, 1.0)) for k in DECISION_EVENTS)], dtype=np.float32)


def decision_frames(record: dict, frame_ms: float, frames: int, text_lead: int = 1) -> np.ndarray:
    """``(frames,)`` uint8: 0 outside decisions, else ``1 +`` the index in ``DECISION_EVENTS`` of the event
    the script's agent resolves there (table above; where two windows overlap, the later event's).

    ``text_lead``: the text slot runs that many frames ahead of the audio, so each window starts that much
    earlier, to include the text slot's part of the decision. Events without the fields the table names
    (older data) are skipped.
    """
    marked = np.zeros(frames, dtype=np.uint8)
    frame_s = frame_ms / 1000.0
    kinds = list(DECISION_EVENTS)
    events = [e for e in record.get("events") or [] if isinstance(e, dict)]
    for event in sorted(events, key=lambda e: e["time"] if isinstance(e.get("time"), (int, float)) else 0.0):
        rule = DECISION_EVENTS.get(event.get("type"))
        if rule is None:
            continue
        field, tail = rule
        start, end = event.get("time"), event.get(field)
        if not isinstance(start, (int, float)) or not isinstance(end, (int, float)):
            continue
        first = max(0, frame_at(start, frame_s) - text_lead)
        last = min(frames, frames_until(end + (DECISION_TAIL_S if tail else 0.0), frame_s))
        marked[first:last] = 1 + kinds.index(event["type"])
    return marked
