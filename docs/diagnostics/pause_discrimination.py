"""How well a model tells a mid-turn pause from a turn end, before free-running sampling blurs it.

Teacher-forced on `duplex data synth` dialogues: P(text != PAD) one frame after the user's last word, at every
real turn end vs every mid-turn pause (turn ends where the agent's text already started are skipped), per
user-voice engine, summarised as the area under the ROC curve (0.5: cannot tell them apart). Prints JSON.
Used for the default model's card (stage 4). Not part of the package.

    python docs/diagnostics/pause_discrimination.py MODEL_DIR DATA_DIR SPLIT N_DIALOGUES
"""
import collections
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM

from agent.training.tokenize import iter_dialogues, tokenize_dialogue
from streaming.codecs.base import load_codec
from think.layout import DuplexLayout
from think.tokenizer import default_tokenizer

torch.set_num_threads(2)
model_dir, data, split, n_dlg = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
lay = DuplexLayout.from_dict(json.loads((model_dir / "duplex_layout.json").read_text()))
codec, tok = load_codec(lay.codec.name, **lay.codec.options), default_tokenizer()
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
slot = lay.slot_size
rows = collections.defaultdict(list)  # (engine, type) -> scores
done = 0
for wav, rec in iter_dialogues(data):
    if rec.get("split") != split:
        continue
    eng = rec["user_voice"].split(":")[0]
    d = tokenize_dialogue(wav, rec, lay, codec, tok)
    for ev in rec["events"]:
        if ev["type"] not in ("turn_end", "pause"):
            continue
        f_end = int(math.floor(ev["time"] * 1000 / lay.frame_ms))
        start = max(0, f_end - 60)
        n = min(78, d.frames - start)  # one context window of the tiny model
        if f_end - start + 2 >= n: continue
        body = d.ids[1 + start * slot: 1 + (start + n) * slot]
        ids = torch.tensor(np.concatenate([[lay.special("session_start")], body]), dtype=torch.long)[None]
        with torch.no_grad():
            logits = model(ids).logits[0]
        t0 = f_end - start
        if body[t0 * slot + lay.q_in] != lay.pad_id:
            continue  # the agent's text already started in the context: not a clean decision point
        pos = 1 + (t0 + 1) * slot + lay.q_in
        p = torch.softmax(logits[pos - 1, : lay.text_vocab_size + 5].float(), -1)
        rows[(eng, ev["type"])].append(float(1 - p[lay.pad_id]))
    done += 1
    if done >= n_dlg:
        break


def auc(pos, neg):
    pos, neg = np.asarray(pos), np.asarray(neg)
    return float(((pos[:, None] > neg[None]).mean() + 0.5 * (pos[:, None] == neg[None]).mean()))

out = {}
for eng in sorted({e for e, _ in rows} | {"all"}):
    te = rows[(eng, "turn_end")] if eng != "all" else sum((v for (e, t), v in rows.items() if t == "turn_end"), [])
    pa = rows[(eng, "pause")] if eng != "all" else sum((v for (e, t), v in rows.items() if t == "pause"), [])
    if te and pa:
        out[eng] = {"turn_ends": len(te), "pauses": len(pa), "auc": round(auc(te, pa), 3),
                    "mean_p_turn_end": round(float(np.mean(te)), 3), "mean_p_pause": round(float(np.mean(pa)), 3)}
print(json.dumps({"model": str(model_dir), "data": str(data), "split": split, **out}))
