"""Interrupt the model while it is surely talking: does it stop within 400 ms, and does it talk on through a
"mm-hmm"?

Usage: ``python docs/diagnostics/interruption_probe.py DATA [MODEL] [LIMIT] [KEY=VALUE ...]``

``duplex eval`` streams each dialogue's fixed user channel, so its interruptions land where the *script's*
agent talks; a model whose answers are shorter is often already quiet there, and only the onsets where it
talks are scored. This probe makes every event land on the model's own speech. Per held-out test dialogue:
the first completed question is played (from 0.5 s before it, then silence); the session runs until the
agent has been audible for ``LEAD`` frames (env, default 3 = 240 ms); then the same session prefix is replayed
with a user utterance of the same dialogue spliced in at that frame: another request (an interruption) or
the dialogue's user backchannel, then silence. Only probes where the agent, unheard, would have talked
past the window scored (400 ms; a backchannel's end) count. Sessions are deterministic (fixed sampling seed), so the
replay's frames before the splice are the first run's. A stop is ``duplex eval``'s: 400 ms of silence. Runs
with the session's settings plus KEY=VALUE overrides (e.g. ``policy.barge_in=false``: the model alone).
The user's audio is the dialogue's channel as heard (file path); the echo canceller's part is not included.
Prints JSON. Not part of the package.
"""
from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import numpy as np

from agent.config import resolve_session_config
from agent.evaluate import EvalConfig, held_out_records, run_user_audio
from agent.models import codec_for_layout, resolve_model
from listen.wavio import read_wav
from think.transformers_backend import TransformersBackend

data = Path(sys.argv[1])
model = sys.argv[2] if len(sys.argv) > 2 and sys.argv[2] != "-" else None
limit = int(sys.argv[3]) if len(sys.argv) > 3 else 0
cfg = resolve_session_config(None, sys.argv[4:])
lead = int(os.environ.get("LEAD", "3"))
quiet = EvalConfig().stop_quiet_frames
active_rms = EvalConfig().active_rms
backend = TransformersBackend.from_dir(resolve_model(model))
codec = codec_for_layout(backend.layout)
frame_s = codec.spec.frame_ms / 1000.0


def run(user: np.ndarray, rate: int) -> np.ndarray:
    """The agent's level per frame for one fresh session fed ``user``."""
    outs = asyncio.run(run_user_audio(backend, codec, cfg, user, rate))
    return np.array([o.mark.agent_rms for o in outs])


def stop_after(rms: np.ndarray, start: int, last: int) -> int | None:
    """Frames from ``start`` until a silence of ``quiet`` frames begins (at the latest at ``last``)."""
    for f in range(start, min(last, len(rms) - quiet) + 1):
        if (rms[f:f + quiet] <= active_rms).all():
            return f - start
    return None


probes = {"interruption": [], "user_backchannel": []}
skipped = {"no_completed_question": 0, "never_spoke": 0, "replay_differed": 0}
for wav, rec in held_out_records(data, "test", limit):
    audio, rate = read_wav(wav)
    user = audio[:, 0]
    turns = rec["turns"]
    qa = next((q for q in rec.get("qa", []) if q.get("completed") is not False and q.get("turn_index") is not None), None)
    if qa is None:
        skipped["no_completed_question"] += 1
        continue
    q = turns[qa["turn_index"]]
    start = max(0, int((q["start"] - 0.5) * rate))
    head = np.concatenate([user[start:int(q["end"] * rate)], np.zeros(int(2.5 * rate), np.float32)])
    rms = run(head, rate)
    q_end = int((q["end"] - start / rate) / frame_s)
    spoke = next((f for f in range(q_end, len(rms) - lead) if (rms[f:f + lead] > active_rms).all()), None)
    if spoke is None:
        skipped["never_spoke"] += 1
        continue
    splice = spoke + lead  # the agent has been audible for `lead` frames
    utterances = {
        "interruption": next((t for t in turns if t["speaker"] == "user" and t is not q and
                              t.get("kind") in ("interruption", "request") and len(t["text"].split()) >= 3), None),
        "user_backchannel": next((t for t in turns if t["speaker"] == "user" and t.get("kind") == "backchannel"), None),
    }
    for kind, t in utterances.items():
        if t is None:
            continue
        said = user[int(t["start"] * rate):int(t["end"] * rate)]
        fed = np.concatenate([head[: int(splice * frame_s * rate)], said, np.zeros(int(2.0 * rate), np.float32)])
        rms2 = run(fed, rate)
        if not np.allclose(rms2[:splice], rms[:splice], atol=1e-4):  # determinism, checked
            skipped["replay_differed"] += 1
            continue
        span = int(round(len(said) / rate / frame_s))
        last = splice + (span if kind == "user_backchannel" else 25)
        stop, alone = stop_after(rms2, splice, last), stop_after(rms, splice, last)
        # after a stop, does it speak again within 1.5 s of the utterance's end (its answer, or going on)?
        after = splice + span
        again = None if stop is None else next(
            (f for f in range(max(after, splice + stop + quiet), min(len(rms2) - 1, after + 19))
             if rms2[f] > active_rms and rms2[f + 1] > active_rms), None)
        probes[kind].append({"id": rec["id"], "said": t["text"], "ms": None if stop is None else stop * 80,
                             "speaks_again_ms": None if again is None else (again - after) * 80,
                             # when the agent falls silent with nobody talking over it: a probe only says
                             # something where that is later than the window scored
                             "unheard_ms": None if alone is None else alone * 80,
                             "utterance_ms": round(1000 * len(said) / rate)})
    print(rec["id"], {k: len(v) for k, v in probes.items()}, file=sys.stderr, flush=True)

# informative probes: without the utterance the agent would have talked past 400 ms (interruptions) or
# past the backchannel's end
inter = [p for p in probes["interruption"] if p["unheard_ms"] is None or p["unheard_ms"] > 400]
backs = [p for p in probes["user_backchannel"] if p["unheard_ms"] is None]
print(json.dumps({
    "model": str(backend.loaded.path), "overrides": sys.argv[4:], "lead_frames": lead, "skipped": skipped,
    "probes_made": {k: len(v) for k, v in probes.items()},
    "interruptions": len(inter),
    "interruption_stop_within_400ms": round(float(np.mean([p["ms"] is not None and p["ms"] <= 400 for p in inter])), 3) if inter else None,
    "interruption_stop_ms_median": float(np.median([p["ms"] for p in inter if p["ms"] is not None])) if any(p["ms"] is not None for p in inter) else None,
    "backchannels": len(backs),
    "backchannel_stop_rate": round(float(np.mean([p["ms"] is not None for p in backs])), 3) if backs else None,
    "stopped_then_spoke_again": {k: f"{sum(p['speaks_again_ms'] is not None for p in v if p['ms'] is not None)}/"
                                    f"{sum(p['ms'] is not None for p in v)}"
                                 for k, v in (("interruption", inter), ("user_backchannel", backs))},
    "probes": probes}, indent=1))
