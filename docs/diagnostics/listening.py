"""Does a model use what the user says? Teacher-forced, each measure twice: with the user's real audio and with
another turn's audio in its place (everything else unchanged). The gap is what the model takes from the words
it hears; with no gap it answers from the conversation's shape alone.

1. Answers (duplex layout, `duplex data synth` dialogues): cross-entropy and argmax accuracy of the agent's text
   ids at every real turn end, from the user's end to the agent's end, split into the answer's first text id
   (mostly *when* to speak) and the rest (mostly *what*: the intent, the slot values).
   With a heard-text model (``think/layout.py``), also its heard ids (its transcript of the user, before the
   answer), and each answer once more with the heard ids blanked to PAD ("noheard"): real/other x heard/noheard
   shows whether the answer comes from the audio, from the transcript, or from neither.
2. Transcripts (the listening alignment sequences `duplex data tokenize` writes, ``align-<split>-*.npz``): the
   cross-entropy and accuracy of the transcript given the turn's audio. Without a gap this is a language model
   of transcripts, not a recogniser.

Prints JSON. Used for the default model's card (the listening experiment). Not part of the package.

    python docs/diagnostics/listening.py MODEL_DIR DATA_DIR SHARDS_DIR SPLIT N_DIALOGUES N_TRANSCRIPTS
"""
import collections
import json
import sys
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM

from agent.training.align import LISTEN, load_align
from agent.training.tokenize import iter_dialogues, tokenize_dialogue
from streaming.codecs.base import load_codec
from think.layout import SPECIALS, DuplexLayout
from think.tokenizer import default_tokenizer

torch.set_num_threads(int(__import__("os").environ.get("THREADS", "2")))
model_dir, data, shards, split = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
n_dialogues, n_transcripts = int(sys.argv[5]), int(sys.argv[6])
lay = DuplexLayout.from_dict(json.loads((model_dir / "duplex_layout.json").read_text()))
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
slot, text_vocab = lay.slot_size, lay.text_vocab_size
TEXT_MASK = torch.where(torch.from_numpy(lay.allowed_mask(lay.q_in)), 0.0, float("-inf"))


def scored(ids: np.ndarray, positions: list[int]) -> tuple[list[float], list[float]]:
    """(CE, correct) of the text-slot range's prediction of ``ids[p]`` for each ``p`` in ``positions``."""
    with torch.no_grad():
        logits = model(torch.from_numpy(ids.astype(np.int64))[None]).logits[0, :, : lay.vocab_size]
    at = torch.tensor(positions)
    target = torch.from_numpy(ids[positions].astype(np.int64))
    lg = logits[at - 1].float() + TEXT_MASK
    ce = torch.nn.functional.cross_entropy(lg, target, reduction="none")
    return ce.tolist(), (lg.argmax(-1) == target).float().tolist()


def answers() -> dict:
    codec, tok = load_codec(lay.codec.name, **lay.codec.options), default_tokenizer()
    dialogues = []
    for wav, rec in iter_dialogues(data):
        if rec.get("split") == split:
            dialogues.append((rec, tokenize_dialogue(wav, rec, lay, codec, tok)))
        if len(dialogues) >= n_dialogues:
            break
    rows = collections.defaultdict(list)  # (audio, part, measure) -> values
    for i, (rec, d) in enumerate(dialogues):
        other = dialogues[(i + 1) % len(dialogues)][1]
        for ev in rec["events"]:
            if ev["type"] != "turn_end":
                continue
            end = int(ev["time"] * 1000 / lay.frame_ms)
            f0 = max(0, end - 50)
            f1 = min(d.frames, int(rec["turns"][ev["agent_turn"]]["end"] * 1000 / lay.frame_ms) + 2, f0 + 78)
            body = d.ids[1 + f0 * slot: 1 + f1 * slot].reshape(-1, slot)
            text_at = [1 + t * slot + lay.q_in for t in range(end - f0, f1 - f0)
                       if body[t, lay.q_in] != lay.pad_id and body[t, lay.q_in] < text_vocab]
            if not text_at:
                continue
            heard = lay.heard_text and np.asarray([lay.is_heard_id(int(x)) for x in body[:, lay.q_in]])
            first_answer = (text_at[0] - 1) // slot
            heard_at = [1 + t * slot + lay.q_in for t in range(max(0, end - f0 - 30), first_answer) if lay.heard_text and heard[t]]
            swapped = body.copy()
            n = min(len(swapped), other.frames)
            swapped[:n, : lay.q_in] = other.ids[1: 1 + n * slot].reshape(n, slot)[:, : lay.q_in]
            variants = [("real", body), ("other", swapped)]
            if lay.heard_text:
                for name, b in list(variants):
                    blank = b.copy()
                    blank[heard, lay.q_in] = lay.pad_id
                    variants.append((name + "_noheard", blank))
            for audio, b in variants:
                ids = np.concatenate([[lay.special("session_start")], b.reshape(-1)])
                ce, ok = scored(ids, text_at + heard_at)
                parts = [("first", slice(0, 1)), ("rest", slice(1, len(text_at)))]
                if heard_at and not audio.endswith("noheard"):
                    parts.append(("heard", slice(len(text_at), None)))
                for part, sl in parts:
                    rows[(audio, part, "ce")] += ce[sl]
                    rows[(audio, part, "acc")] += ok[sl]
    return {f"{audio}_{part}_{m}": round(float(np.mean(v)), 3) for (audio, part, m), v in sorted(rows.items())} | {
        "dialogues": len(dialogues), "answer_ids": len(rows[("real", "first", "ce")]) + len(rows[("real", "rest", "ce")])}


def transcripts() -> dict:
    seqs = [np.asarray(s, dtype=np.int64) for s in load_align(shards, split).get(LISTEN, [])[:n_transcripts]]
    if not seqs:
        return {"transcripts": 0}
    sys_id = lay.special("system_start")
    rows = collections.defaultdict(list)
    for i, s in enumerate(seqs):
        k = int(np.flatnonzero(s == sys_id)[0])
        o = seqs[(i + 7) % len(seqs)]
        for audio, a in (("real", s[1:k]), ("other", o[1: int(np.flatnonzero(o == sys_id)[0])])):
            ids = np.concatenate([s[:1], a, s[k:]])
            ce, ok = scored(ids, list(range(len(a) + 2, len(ids))))
            rows[(audio, "ce")] += ce
            rows[(audio, "acc")] += ok
    return {f"{audio}_{m}": round(float(np.mean(v)), 3) for (audio, m), v in sorted(rows.items())} | {
        "transcripts": len(seqs)}


print(json.dumps({"model": str(model_dir), "split": split, "answers": answers(), "transcripts": transcripts()},
                 indent=1))
