"""The barge-in policy alone, against the data's own agent: does it cut at user backchannels, and in time at
interruptions?

Usage: ``python docs/diagnostics/barge_in_vs_script.py DATA [MIC_PATH|-] [MS,MS,...]``

For each held-out test dialogue, the user channel goes through a session's listener (the same resampler and
VAD; through ``MIC_PATH`` first if given, e.g. ``browser-apm``), and "the agent talks" is the dialogue's own
agent channel (the script), so no model is involved. :class:`agent.policy.TurnPolicy` then runs frame by
frame at each ``barge_in_min_speech_ms``. Per setting: the share of user backchannels where it holds the
talking script silent, and the share of interruptions where it does so within 400 ms of the onset (the
script's agent stops on its own 200-400 ms after the onset, so a later cut cannot happen: a lower bound). Also how
often the VAD hears "the user" outside every user turn while the agent talks: the agent's echo in the user
channel, which a barge-in takes for the user. Prints JSON. Not part of the package.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from agent.config import SessionConfig
from agent.evaluate import held_out_records
from agent.policy import PolicyConfig, TurnPolicy
from agent.training.mic_paths import to_codec_rate
from listen.listener import Listener
from listen.wavio import read_wav
from streaming.codecs.base import load_codec

data = Path(sys.argv[1])
mic = sys.argv[2] if len(sys.argv) > 2 and sys.argv[2] != "-" else ""
settings = [float(x) for x in (sys.argv[3] if len(sys.argv) > 3 else "160,240,320,400,480").split(",")]
codec = load_codec("codec2")
frame_s = codec.spec.frame_ms / 1000.0
session = SessionConfig()

dialogues = []  # (record, user speech per frame, script agent talking per frame)
for wav, rec in held_out_records(data, "test"):
    audio, rate = read_wav(wav)
    user = audio[:, 0]
    if mic:
        user = to_codec_rate(user, rate, codec.spec.sample_rate, mic, far=audio[:, 1])
        rate = codec.spec.sample_rate
    listener = Listener(codec, rate, vad_aggressiveness=session.vad_aggressiveness,
                        resample_quality=session.resample_quality)
    speech = np.array([f.speech for f in listener.push(user) + listener.flush()])
    hop = int(round(16000 * frame_s))
    n = min(len(speech), audio.shape[0] // hop)
    agent = audio[: n * hop, 1].astype(np.float64).reshape(n, hop)
    dialogues.append((rec, speech[:n], np.sqrt((agent ** 2).mean(axis=1)) >= session.policy.agent_talking_rms))


def cuts_at(min_speech_ms: float) -> dict:
    found: dict[str, list] = {"user_backchannel": [], "interruption": []}
    for rec, speech, talking in dialogues:
        policy = TurnPolicy(PolicyConfig(barge_in_min_speech_ms=min_speech_ms), codec.spec.frame_ms)
        silenced = []  # frames where the policy holds the agent silent (a cut, or the hold after one)
        for i, heard in enumerate(speech):
            decision = policy.before_step(bool(heard))
            if decision.force_silence:
                silenced.append(i)
            policy.after_step(0.1 if talking[i] and not decision.force_silence else 0.0)
        for ev in rec["events"]:
            if ev["type"] not in found:
                continue
            f = int(ev["time"] / frame_s)
            if not talking[max(0, f - 2):f].any():
                continue
            last = int(ev["end"] / frame_s) + 3 if ev["type"] == "user_backchannel" else f + 25
            c = [x for x in silenced if f <= x <= last]
            found[ev["type"]].append(None if not c else round(1000 * (c[0] * frame_s - ev["time"])))
    bc, it = found["user_backchannel"], found["interruption"]
    ms = [x for x in it if x is not None]
    return {"backchannels_script_talking": len(bc), "silenced_at_backchannel": round(np.mean([x is not None for x in bc]), 3),
            "interruptions_script_talking": len(it),
            "silenced_within_400ms": round(np.mean([x is not None and x <= 400 for x in it]), 3),
            "silenced_ms_median": float(np.median(ms)) if ms else None}


heard_outside = heard_while_talking = talking_outside = 0
for rec, speech, talking in dialogues:
    inside = np.zeros(len(speech), bool)
    for t in rec["turns"]:
        if t["speaker"] == "user":
            inside[max(0, int(t["start"] / frame_s) - 1): int(t["end"] / frame_s) + 2] = True
    heard_outside += int((speech & ~inside).sum())
    heard_while_talking += int((speech & ~inside & talking).sum())
    talking_outside += int((talking & ~inside).sum())
print(json.dumps({"data": str(data), "mic_path": mic or "file (the session resamples)", "dialogues": len(dialogues),
                  "barge_in_min_speech_ms": {str(int(ms)): cuts_at(ms) for ms in settings},
                  "script_talking_frames_outside_user_turns": talking_outside,
                  "of_them_heard_as_user_speech": heard_while_talking,
                  "user_speech_frames_outside_user_turns": heard_outside}, indent=1))
