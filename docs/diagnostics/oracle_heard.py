"""How far would a heard-text model get if its transcript of the user were right? Free-running, frame by
frame through a real backend session, on held-out dialogues tokenized the way training saw them:

- ``free``: the model samples every text id itself, its heard ids included (what a live session does);
- ``oracle``: at every frame where the dialogue's own heard text has a word piece (``place_heard``), that id
  is written into the text slot instead of a sample, and the model may not draw heard ids itself. Everything
  else (when to speak, what to answer, the audio) is still the model's.
- ``answers``: as ``oracle``, and outside the scored answer windows the whole text slot is the script's (the
  agent's earlier turns, its PADs): only each answer is the model's own, from a context that is right.

Scored like ``duplex eval`` (``answer_score`` over ``answer_windows``: from the question's end to the user's next
turn that is not a backchannel): the answer rate with an oracle transcript is the ceiling a better recogniser in front of this model could
reach, without the model learning anything new. Prints JSON. Not part of the package.

    THREADS=2 python docs/diagnostics/oracle_heard.py MODEL_DIR DATA_DIR SPLIT N_DIALOGUES [free,oracle,answers]

``SAMPLING='{"text_temperature": 0}'`` (JSON) overrides the session's sampling defaults (``SamplingConfig``),
``CONTEXT_FRAMES=N`` the session's ``context.max_frames``. ``AGENT_AUDIO=silent`` lets the agent's codebooks
draw only their silence code (the text is still the model's): does the model's own audio derail its words?
"""
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

from agent.evaluate import answer_score, answer_windows, held_out_records
from agent.training.tokenize import tokenize_dialogue
from streaming.codecs.base import load_codec
from think.context import ContextConfig
from think.sampling import SamplingConfig
from think.transformers_backend import TransformersBackend

model_dir, data, split, limit = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
modes = (sys.argv[5] if len(sys.argv) > 5 else "free,oracle").split(",")
backend = TransformersBackend.from_dir(model_dir, threads=int(os.environ.get("THREADS", "2")),
                                      context=ContextConfig(max_frames=int(os.environ.get("CONTEXT_FRAMES", "0"))))
lay = backend.layout
assert lay.heard_text, "this diagnostic needs a heard-text model (duplex model init --heard-text)"
codec, tok = load_codec(lay.codec.name, **lay.codec.options), backend.tokenizer
user_offsets = np.asarray(lay.user_offsets[: lay.q_in])
if os.environ.get("AGENT_AUDIO") == "silent":
    silence = lay.agent_audio_ids(lay.agent_silence_codes()).tolist()
    for j, masks in enumerate(backend.masks.masks[1:], start=1):
        masks.fill_(float("-inf"))
        masks[silence[j - 1] - backend.masks.rows[j][0]] = 0.0


def run(ids: np.ndarray, frames: int, oracle: bool, seed: int, free: np.ndarray | None = None) -> list[int]:
    """The text id the session put in each frame's slot (the oracle's heard ids are given to the step, as a
    session's recogniser gives its words, and the model draws no heard ids itself). ``free`` ``(frames,)``:
    where given, the script's text id is forced wherever it is False."""
    sess = backend.open_session(SamplingConfig(**{"seed": seed, **json.loads(os.environ.get("SAMPLING", "{}"))}), "")
    sess.listener_heard = oracle
    body = ids[1: 1 + frames * lay.slot_size].reshape(frames, lay.slot_size)
    out_text = []
    for t in range(frames):
        gt = int(body[t, lay.q_in])
        given = gt if (oracle and lay.is_heard_id(gt)) or (free is not None and not free[t]) else None
        out_text.append(sess.step_sync(body[t, : lay.q_in] - user_offsets, text_id=given).text_id)
    return out_text


def said(text_ids: list[int]) -> str:
    return tok.decode([i for i in text_ids if i < lay.text_vocab_size and i != lay.pad_id])


torch.set_grad_enabled(False)
rows = {m: [] for m in modes}
for n, (wav, rec) in enumerate(held_out_records(data, split, limit)):
    d = tokenize_dialogue(wav, rec, lay, codec, tok)
    frame_s = lay.frame_ms / 1000.0
    spans = answer_windows(rec, frame_s, d.frames)  # (first frame, end frame, qa), as duplex eval scores
    free = np.zeros(d.frames, dtype=bool)
    for a, b, _ in spans:
        free[a:b] = True
    for mode in modes:
        text = run(d.ids, d.frames, mode in ("oracle", "answers"), seed=n, free=free if mode == "answers" else None)
        for a, b, qa in spans:
            got = said(text[a:b])
            rows[mode].append({"question": qa["question"], "expected": qa["answer"], "said": got.strip(),
                               **answer_score(got, qa["answer"])})
    print(f"{n + 1} dialogues: " + ", ".join(
        f"{m} {sum(r['contains'] for r in rows[m])}/{len(rows[m])}" for m in modes), file=sys.stderr, flush=True)

summary = {m: {"answers_correct": sum(r["contains"] for r in v), "questions": len(v),
               "answer_f1_mean": round(float(np.mean([r["f1"] for r in v])), 4) if v else None} for m, v in rows.items()}
print(json.dumps({"model": model_dir, "split": split, "summary": summary,
                  "examples": {m: v[:12] for m, v in rows.items()}}, indent=1))
