"""Does the model know, teacher-forced, where the script's agent falls silent for an interruption and talks on
through a backchannel? Or does it not hear the user's onset at all?

For each user interruption and user backchannel of the first N held-out test dialogues (tokenized as training
saw them, the user channel through ``MIC``, default ``browser-apm``), one window of the dialogue (the trained
window's length) ending ``AFTER`` frames (default 8) after the event: one teacher-forced forward over the
script's ids. At every frame from 3 frames before the user's onset on, the probability that the agent's first
codebook is its silence code (``layout.silence_codes``), predicted from everything before that id:

- ``interruption``: the frames relative to the onset, and at the script's own first silent frame (its
  ``agent_stop``): what the model gives silence there, where the script's agent has been talking until
  the frame before.
- ``user_backchannel``: the same curve, where the script talks on.

If the model's P(silence) at the script's stop frame is high for interruptions and stays low through the
backchannels, it has learned the decision and the free-running session loses it elsewhere; if the two curves
look alike, it does not tell an interruption from a backchannel at the frames that matter.

    THREADS=2 python docs/diagnostics/stop_onset.py MODEL_DIR DATA_DIR N_DIALOGUES

Prints JSON. Not part of the package.
"""
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch

from agent.evaluate import held_out_records
from agent.training.tokenize import tokenize_dialogue
from streaming.codecs.base import load_codec
from think.transformers_backend import TransformersBackend

model_dir, data, limit = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
mic = os.environ.get("MIC", "browser-apm")
after = int(os.environ.get("AFTER", "8"))
backend = TransformersBackend.from_dir(model_dir, threads=int(os.environ.get("THREADS", "2")))
lay, tok = backend.layout, backend.tokenizer
codec = load_codec(lay.codec.name, **lay.codec.options)
S, A0 = lay.slot_size, lay.q_in + 1  # ids per frame; the agent's first codebook's place in a frame
lo, hi = lay.agent_offsets[0], lay.agent_offsets[0] + lay.codec.codebook_sizes[0]
silence = lay.agent_offsets[0] + lay.silence_codes[0]
prefix = lay.session_prefix([])
window = min(backend.trained_frames or 78, 78)
frame_s = lay.frame_ms / 1000.0
BEFORE = 3  # frames of the curve before the onset

torch.set_grad_enabled(False)
curves: dict[str, list[list[float]]] = {"interruption": [], "user_backchannel": []}
at_stop, rows = [], []
for n, (wav, rec) in enumerate(held_out_records(data, "test", limit)):
    events = [e for e in rec["events"] if e["type"] in curves]
    if not events:
        continue
    d = tokenize_dialogue(wav, rec, lay, codec, tok, mic_paths=(mic,))
    body = d.ids[1: 1 + d.frames * S].reshape(d.frames, S)
    for e in events:
        onset = math.floor(round(e["time"] / frame_s, 6))
        stop = math.ceil(round(e["agent_stop"] / frame_s, 6)) if e["type"] == "interruption" else None
        end = min(d.frames, (stop if stop is not None else math.ceil(e["end"] / frame_s)) + after)
        s = max(0, end - window)
        if onset - BEFORE < s:
            continue
        seq = prefix + body[s:end].reshape(-1).tolist()
        logits = backend.model(torch.tensor([seq])).logits[0].float()
        # the logits that predict frame f's first agent codebook sit at the id before it
        pos = lambda f: len(prefix) + (f - s) * S + A0 - 1  # noqa: E731
        p_sil = [float(torch.softmax(logits[pos(f), lo:hi], -1)[silence - lo]) for f in range(onset - BEFORE, end)]
        curves[e["type"]].append(p_sil)
        talking_before = int(body[onset - 1, A0]) != silence
        row = {"id": rec["id"], "type": e["type"], "onset_frame": onset, "talking_at_onset": talking_before,
               "p_silence_from_onset_minus_3": [round(p, 3) for p in p_sil]}
        if stop is not None:
            row["stop_frame_offset"] = stop - onset
            row["p_silence_at_script_stop"] = round(p_sil[stop - onset + BEFORE], 3)
            if talking_before:
                at_stop.append(row["p_silence_at_script_stop"])
        rows.append(row)
    print(f"{n + 1} dialogues, {len(rows)} events", file=sys.stderr, flush=True)


def mean_curve(cs: list[list[float]], talking: list[bool]) -> list[float]:
    """Mean P(silence) per frame from onset - 3, over the events where the agent talked at the onset."""
    kept = [c for c, t in zip(cs, talking) if t]
    width = min((len(c) for c in kept), default=0)
    return [round(float(np.mean([c[i] for c in kept])), 3) for i in range(width)]


summary = {kind: {"events": len(cs),
                  "agent_talking_at_onset": sum(r["talking_at_onset"] for r in rows if r["type"] == kind),
                  "mean_p_silence_from_onset_minus_3": mean_curve(
                      cs, [r["talking_at_onset"] for r in rows if r["type"] == kind])}
           for kind, cs in curves.items()}
summary["interruption"]["p_silence_at_script_stop_mean"] = round(float(np.mean(at_stop)), 3) if at_stop else None
summary["interruption"]["p_silence_at_script_stop_over_0.5"] = (
    round(float(np.mean([p > 0.5 for p in at_stop])), 3) if at_stop else None)
print(json.dumps({"model": model_dir, "mic_path": mic, "window_frames": window, "summary": summary, "rows": rows},
                 indent=1))
