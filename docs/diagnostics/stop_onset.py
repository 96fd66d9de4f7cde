"""Does the model know, teacher-forced, where to end its turn at an interruption, and to talk on through a
backchannel? Or does it not hear the user's onset at all?

The decision is the text slot's: the agent's audio follows its text (δ frames behind), and it falls silent
after an end-of-turn (EOT) id. Since 2026-11-28 ``duplex data tokenize`` puts an interrupted turn's EOT where
the script's audio stops (``text_track``), 200-400 ms after the user's onset; before, it came right after the
cut word's pieces, at or before the onset in 61 % of interruptions.

For each user interruption and user backchannel of the first N held-out test dialogues (tokenized as training
now sees them, the user channel through ``MIC``, default ``browser-apm``), one window of the dialogue (the
trained window's length) ending ``AFTER`` frames (default 8) after the event: one teacher-forced forward over
the script's ids. At every frame from 3 frames before the user's onset on, the probability of EOT in the text
slot (over the text slot's own ids, as the session draws them):

- ``interruption``: the curve, and P(EOT) at the frame where the script puts it.
- ``user_backchannel``: the curve where the script talks on; its highest P(EOT) from the onset to the end.

If P(EOT) at the script's EOT frame is high for interruptions and stays low through the backchannels, the
model has learned the decision; if the two look alike, it does not tell an interruption from a backchannel.

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
from agent.training.decisions import frame_at
from agent.training.tokenize import tokenize_dialogue
from streaming.codecs.base import load_codec
from think.transformers_backend import TransformersBackend

model_dir, data, limit = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
mic = os.environ.get("MIC", "browser-apm")
after = int(os.environ.get("AFTER", "8"))
backend = TransformersBackend.from_dir(model_dir, threads=int(os.environ.get("THREADS", "2")))
lay, tok = backend.layout, backend.tokenizer
codec = load_codec(lay.codec.name, **lay.codec.options)
S, T = lay.slot_size, lay.q_in  # ids per frame; the text id's place in a frame
text_lo, text_hi = backend.masks.rows[0]
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
    text = body[:, T]
    for e in events:
        onset = frame_at(e["time"], frame_s)
        eot = None
        if e["type"] == "interruption":
            eot = next((f for f in range(onset, d.frames) if int(text[f]) == lay.eot_id), None)
            if eot is None:
                continue
        end = min(d.frames, (eot if eot is not None else math.ceil(e["end"] / frame_s)) + after)
        s = max(0, end - window)
        if onset - BEFORE < s:
            continue
        seq = prefix + body[s:end].reshape(-1).tolist()
        logits = backend.model(torch.tensor([seq])).logits[0].float()
        # the logits that predict frame f's text id sit at the id before it
        pos = lambda f: len(prefix) + (f - s) * S + T - 1  # noqa: E731
        lp = torch.log_softmax(logits[:, text_lo:text_hi] + backend.masks.text_mask(0.0, heard=False), -1)
        p_eot = [float(lp[pos(f)][lay.eot_id - text_lo].exp()) for f in range(onset - BEFORE, end)]
        curves[e["type"]].append(p_eot)
        talking = any(int(text[f]) not in (lay.pad_id, lay.eot_id) for f in range(max(s, onset - 8), onset))
        row = {"id": rec["id"], "type": e["type"], "onset_frame": onset, "talking_at_onset": talking,
               "p_eot_from_onset_minus_3": [round(p, 3) for p in p_eot]}
        if eot is not None:
            row["eot_frame_offset"] = eot - onset
            row["p_eot_at_script_eot"] = round(p_eot[eot - onset + BEFORE], 3)
            if talking:
                at_stop.append(row["p_eot_at_script_eot"])
        else:
            row["p_eot_max_during"] = round(max(p_eot[BEFORE:BEFORE + math.ceil(e["end"] / frame_s) - onset + 1]), 3)
        rows.append(row)
    print(f"{n + 1} dialogues, {len(rows)} events", file=sys.stderr, flush=True)


def mean_curve(cs: list[list[float]], talking: list[bool]) -> list[float]:
    """Mean P(EOT) per frame from onset - 3, over the events where the agent had words in the 8 frames before."""
    kept = [c for c, t in zip(cs, talking) if t]
    width = min((len(c) for c in kept), default=0)
    return [round(float(np.mean([c[i] for c in kept])), 3) for i in range(width)]


def share_over(values: list[float], level: float = 0.5) -> float | None:
    return round(float(np.mean([v > level for v in values])), 3) if values else None


bc_max = [r["p_eot_max_during"] for r in rows if r["type"] == "user_backchannel" and r["talking_at_onset"]]
summary = {kind: {"events": len(cs),
                  "agent_talking_at_onset": sum(r["talking_at_onset"] for r in rows if r["type"] == kind),
                  "mean_p_eot_from_onset_minus_3": mean_curve(
                      cs, [r["talking_at_onset"] for r in rows if r["type"] == kind])}
           for kind, cs in curves.items()}
summary["interruption"]["p_eot_at_script_eot_mean"] = round(float(np.mean(at_stop)), 3) if at_stop else None
summary["interruption"]["p_eot_at_script_eot_over_0.5"] = share_over(at_stop)
summary["user_backchannel"]["p_eot_max_during_mean"] = round(float(np.mean(bc_max)), 3) if bc_max else None
summary["user_backchannel"]["p_eot_max_during_over_0.5"] = share_over(bc_max)
print(json.dumps({"model": model_dir, "mic_path": mic, "window_frames": window, "summary": summary, "rows": rows},
                 indent=1))
