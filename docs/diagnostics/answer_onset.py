"""Where does a heard-text model lose an answer it "knows" teacher-forced? At the answer's first piece, or after?

For each completed question of the first N held-out dialogues (tokenized as training saw them, the script's
heard ids in the text slot), one window of the dialogue that ends where ``duplex eval``'s answer window ends
(``answer_windows``) and starts up to ``BEFORE`` frames before the answer's first piece:

- teacher-forced (one forward over the script's ids): at the answer's first text frame, the probability and
  rank of the script's piece and of PAD; at the frames between the question's end and that frame (script:
  PAD), the mean probability of speaking early; over the answer's pieces, argmax accuracy.
- free-running from the same context: the session is given the script's ids up to the question's end
  (exactly the teacher-forced context there), then draws its text and audio frame by frame as a live
  session does (the script's heard ids still given, as ``oracle_heard.py`` does). Its first piece, the frame
  it drew it at, and the answer it said, scored as ``duplex eval`` scores it.

If teacher-forced the first piece is right and free-running from the same context it is not, sampling or the
session path differs from training; if both miss it, the model has not learned the answer's start.

    THREADS=2 python docs/diagnostics/answer_onset.py MODEL_DIR DATA_DIR N_DIALOGUES

``HEARD=DIR`` writes the heard ids with that recogniser, live, as ``duplex data tokenize --heard-recognizer
DIR --heard-during-agent-turn`` does (the heard text the speech base and v16 trained on), instead of the script's.
``SAMPLING`` (JSON) overrides the session's sampling as in ``oracle_heard.py``; ``BEFORE`` (default 80) the
frames of context before the answer (fewer where the trained window needs room for the answer). Prints JSON. Not part of the package.
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
from think.sampling import SamplingConfig
from think.transformers_backend import TransformersBackend

model_dir, data, limit = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
before = int(os.environ.get("BEFORE", "80"))
backend = TransformersBackend.from_dir(model_dir, threads=int(os.environ.get("THREADS", "2")))
lay, tok = backend.layout, backend.tokenizer
codec = load_codec(lay.codec.name, **lay.codec.options)
user_offsets = np.asarray(lay.user_offsets[: lay.q_in])
S, T = lay.slot_size, lay.q_in  # ids per frame; the text id's place in a frame
prefix = lay.session_prefix([])
recognizer = None
if os.environ.get("HEARD"):
    from listen.recognizer import load_recognizer

    recognizer = load_recognizer(os.environ["HEARD"])
sampling = json.loads(os.environ.get("SAMPLING", "{}"))
text_lo, text_hi = backend.masks.rows[0]
trained = backend.trained_frames or 10 ** 6  # a window never runs past the frames the model trained on
heard_rows = [t - text_lo for t in range(text_lo, text_hi) if lay.is_heard_id(t)]


def is_word(t: int) -> bool:
    return t < lay.text_vocab_size and t != lay.pad_id


def label(t: int) -> str:
    """A text-slot id as a reader wants it: a word piece, ``heard:piece``, PAD or EOT."""
    if is_word(t):
        return tok.decode([t])
    if lay.is_heard_id(t):
        return "heard:" + tok.decode([t - lay.heard_offset])
    return "PAD" if t == lay.pad_id else "EOT" if t == lay.eot_id else str(t)


def decode(ids: list[int]) -> str:
    return tok.decode([i for i in ids if is_word(i)]).strip()


torch.set_grad_enabled(False)
rows = []
for n, (wav, rec) in enumerate(held_out_records(data, "test", limit)):
    d = tokenize_dialogue(wav, rec, lay, codec, tok, heard_recognizer=recognizer, heard_during_agent_turn=True)
    body = d.ids[1: 1 + d.frames * S].reshape(d.frames, S)
    text = body[:, T]
    for a, b, qa in answer_windows(rec, lay.frame_ms / 1000.0, d.frames):  # as duplex eval scores
        first = next((f for f in range(a, b) if is_word(int(text[f]))), None)
        if first is None:
            continue
        # at most `before` frames of context, and room for ~2 s of answer inside the trained window
        s = max(0, first - min(before, trained - 24))
        b = min(b, s + trained)
        seq = prefix + body[s:b].reshape(-1).tolist()
        logits = backend.model(torch.tensor([seq])).logits[0].float()
        # the logits that predict frame f's text id sit at the id before it
        pos = lambda f: len(prefix) + (f - s) * S + T - 1  # noqa: E731
        # over the text slot's own ids, as training scored it (heard ids included), and as a session whose
        # listener writes the heard ids draws (heard ids excluded)
        lp_all = torch.log_softmax(logits[:, text_lo:text_hi] + backend.masks.text_mask(0.0, heard=True), -1)
        lp = torch.log_softmax(logits[:, text_lo:text_hi] + backend.masks.text_mask(0.0, heard=False), -1)
        gold = int(text[first])
        at = lp[pos(first)]
        rank = int((at > at[gold - text_lo]).sum())
        early = [float(1 - lp[pos(f)][lay.pad_id - text_lo].exp()) for f in range(max(a, s), first)]
        words = [f for f in range(first, b) if is_word(int(text[f]))]
        hits = [int(lp[pos(f)].argmax()) + text_lo == int(text[f]) for f in words]
        # free-running from the script's context at the question's end
        sess = backend.open_session(SamplingConfig(**{"seed": n, **sampling}), "")
        sess.listener_heard = True
        start = max(a, s)
        sess.pending = prefix + body[s:start].reshape(-1).tolist()
        for f in range(s, start):
            sess.window.append(body[f].tolist())
        drawn, first_drawn = [], None
        for f in range(start, b):
            g = int(text[f])
            out = sess.step_sync(body[f, :T] - user_offsets, text_id=g if lay.is_heard_id(g) else None).text_id
            drawn.append(out)
            if first_drawn is None and is_word(out):
                first_drawn = (f - first, tok.decode([out]))
        said = decode(drawn)
        rows.append({"question": qa["question"], "expected": qa["answer"], "said": said,
                     "tf_first_piece": tok.decode([gold]), "tf_first_p": round(float(at[gold - text_lo].exp()), 3),
                     "tf_first_rank": rank, "tf_first_p_pad": round(float(at[lay.pad_id - text_lo].exp()), 3),
                     "tf_first_argmax": label(int(at.argmax()) + text_lo),
                     "tf_first_p_heard": round(float(lp_all[pos(first)][heard_rows].exp().sum()), 3),
                     "tf_early_speak_mean": round(float(np.mean(early)), 3) if early else None,
                     "tf_piece_acc": round(float(np.mean(hits)), 3),
                     "fr_first_piece": first_drawn[1] if first_drawn else None,
                     "fr_first_offset_frames": first_drawn[0] if first_drawn else None,
                     **answer_score(said, qa["answer"])})
    print(f"{n + 1} dialogues, {len(rows)} answers", file=sys.stderr, flush=True)

summary = {
    "answers": len(rows),
    "tf_first_top1": round(float(np.mean([r["tf_first_rank"] == 0 for r in rows])), 3),
    "tf_first_p_mean": round(float(np.mean([r["tf_first_p"] for r in rows])), 3),
    "tf_first_p_pad_mean": round(float(np.mean([r["tf_first_p_pad"] for r in rows])), 3),
    "tf_first_p_heard_mean": round(float(np.mean([r["tf_first_p_heard"] for r in rows])), 3),
    "tf_piece_acc_mean": round(float(np.mean([r["tf_piece_acc"] for r in rows])), 3),
    "fr_first_piece_right": round(float(np.mean([r["fr_first_piece"] == r["tf_first_piece"] for r in rows])), 3),
    "fr_answers_correct": int(sum(r["contains"] for r in rows)),
    "fr_f1_mean": round(float(np.mean([r["f1"] for r in rows])), 3),
}
print(json.dumps({"model": model_dir, "heard": os.environ.get("HEARD") or "script", "sampling": sampling,
                  "before": before, "summary": summary, "rows": rows}, indent=1))
