"""Latency marks: per-frame step times and per-turn response latency, summarised as JSON.

Frame marks (milliseconds of wall time): ``listen`` (resample, VAD, encode), ``think`` (the model's
slot), ``speak`` (decode) and ``total``; ``late_by`` is how late the clock issued the frame.
Turn latency is measured on the session timeline: from the end of the user's speech (the first silent
frame after speech) to the start of the first audible agent frame after it, plus that frame's compute.
"""
from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class FrameMark:
    frame: int
    listen_ms: float
    think_ms: float
    speak_ms: float
    total_ms: float
    late_by_ms: float
    forced: bool
    rebased: bool
    text_id: int
    agent_rms: float
    user_speech: bool
    speak_now: bool = False  # the policy's answer prompt was on (the agent had to start its answer)
    wait: bool = False  # the turn detector heard a mid-turn pause: the agent was kept from starting


def _percentiles(values) -> dict[str, float]:
    if not values:
        return {"count": 0}
    a = np.asarray(values, dtype=np.float64)
    return {"count": int(a.size), "mean": round(float(a.mean()), 3), "p50": round(float(np.percentile(a, 50)), 3),
            "p95": round(float(np.percentile(a, 95)), 3), "p99": round(float(np.percentile(a, 99)), 3),
            "max": round(float(a.max()), 3)}


class LatencyRecorder:
    """Collects frame marks and turn latencies for one session.

    ``keep_frames`` bounds the kept per-frame marks for endless sessions (0 = keep every frame, as
    ``duplex chat`` does for its report); the summary statistics cover the last ``STATS_WINDOW`` frames
    (one hour), so a live session's memory stays bounded too. Bounded sessions (a daemon runs for days) also
    keep only the last ``EVENT_WINDOW`` turn latencies and barge-in frames; ``turns_measured`` and
    ``barge_ins`` count all of them.
    """

    STATS_WINDOW = 45_000
    EVENT_WINDOW = 1_000

    def __init__(self, frame_ms: float, keep_frames: int = 0) -> None:
        self.frame_ms = frame_ms
        self.keep_frames = keep_frames
        self.frames: deque[FrameMark] | list[FrameMark] = deque(maxlen=keep_frames) if keep_frames else []
        self._totals: deque[float] = deque(maxlen=self.STATS_WINDOW)
        self._thinks: deque[float] = deque(maxlen=self.STATS_WINDOW)
        self.frames_late = 0
        self.frames_seen = 0
        events = {"maxlen": self.EVENT_WINDOW} if keep_frames else {}
        self.turn_latencies_ms: deque[float] = deque(**events)
        self.barge_in_frames: deque[int] = deque(**events)
        self.turns_measured = 0
        self.barge_ins = 0
        self.answer_prompt_frames = 0  # frames in which the policy made the agent start its answer
        self.wait_frames = 0  # frames in which the policy kept the agent from starting (a mid-turn pause heard)
        self._user_was_speaking = False
        self._speech_end_frame: int | None = None

    def add(self, mark: FrameMark) -> None:
        self.frames.append(mark)  # a deque with maxlen keep_frames when bounded
        self.frames_seen += 1
        self._totals.append(mark.total_ms)
        self._thinks.append(mark.think_ms)
        if mark.late_by_ms > self.frame_ms / 2:
            self.frames_late += 1
        self.answer_prompt_frames += mark.speak_now
        self.wait_frames += mark.wait
        self._track_turn(mark)

    def _track_turn(self, mark: FrameMark) -> None:
        if mark.user_speech:
            self._user_was_speaking = True
            self._speech_end_frame = None
        elif self._user_was_speaking:
            self._user_was_speaking = False
            self._speech_end_frame = mark.frame
        audible = mark.agent_rms > 0.01 and not mark.forced
        if audible and self._speech_end_frame is not None:
            gap_ms = (mark.frame - self._speech_end_frame) * self.frame_ms + mark.total_ms
            self.turn_latencies_ms.append(round(gap_ms, 3))
            self.turns_measured += 1
            self._speech_end_frame = None

    def add_barge_in(self, frame: int) -> None:
        self.barge_in_frames.append(frame)
        self.barge_ins += 1

    def summary(self) -> dict:
        n = self.frames_seen
        total = _percentiles(self._totals)
        return {
            "frame_ms": self.frame_ms,
            "frames": n,
            "frame_total_ms": total,
            "think_ms": _percentiles(self._thinks),
            "real_time_factor_p95": round(total.get("p95", 0.0) / self.frame_ms, 4) if n else None,
            "real_time_factor_mean": round(total.get("mean", 0.0) / self.frame_ms, 4) if n else None,
            "frames_late": self.frames_late,
            "turns_measured": self.turns_measured,
            "turn_latency_ms": _percentiles(self.turn_latencies_ms),
            "turn_latencies_ms": list(self.turn_latencies_ms),
            "barge_ins": self.barge_ins,
            "barge_in_frames": list(self.barge_in_frames),
            "answer_prompt_frames": self.answer_prompt_frames,
            "wait_frames": self.wait_frames,
        }

    def report(self) -> dict:
        """Summary plus every kept frame's marks."""
        return {"summary": self.summary(), "frames": [asdict(m) for m in self.frames]}
