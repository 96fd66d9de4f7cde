"""When does a question's last word reach the text slot? The heard writer (``agent/heard.py``) runs on each
test dialogue's user channel (the file path: soxr LQ to 8 kHz) with the agent kept silent, the best case for
the transcript. For each question: the frame, after the user's turn end, by which its last word has been
written (or never), and the WER of everything written for it up to 8 frames after the end.

    python docs/diagnostics/last_word_timing.py MODEL RECOGNIZER DATA_DIR N_DIALOGUES [END_SILENT_FRAMES]

``END_SILENT_FRAMES`` overrides ``END_UTTERANCE_AFTER_SILENT_FRAMES`` (3): how many VAD-silent frames close
the recogniser's utterance. Prints JSON.
"""
import json
import sys
from pathlib import Path

import numpy as np
import soxr

import agent.heard as heard
from agent.codec_eval import word_errors
from agent.evaluate import _norm_words as words
from agent.training.tokenize import iter_dialogues
from listen.recognizer import load_recognizer
from listen.wavio import read_wav
from think.checkpoint import load_checkpoint

model, rec_dir, data, n = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
if len(sys.argv) > 5:
    heard.END_UTTERANCE_AFTER_SILENT_FRAMES = int(sys.argv[5])
loaded, rec = load_checkpoint(model), load_recognizer(rec_dir)
lay, tok = loaded.layout, loaded.tokenizer
arrive, never, total, err, ref_words = [], 0, 0, 0, 0
tests = [(wav, r) for wav, r in iter_dialogues(data) if r.get("split") == "test"][:n]
for wav, record in tests:
    audio, rate = read_wav(wav)
    user = soxr.resample(audio[:, 0], rate, 8000, "LQ").astype(np.float32)
    text = np.full(len(user) // 640, lay.pad_id, np.int64)
    out = heard.recognized_heard(text, user, 8000, 640, lay, tok, rec)
    pieces = [(f, int(t) - lay.heard_offset) for f, t in enumerate(out) if lay.is_heard_id(int(t))]
    for qa in record.get("qa", []):
        if qa.get("completed") is False or qa.get("turn_index") is None:
            continue
        turn = record["turns"][qa["turn_index"]]
        start, end = int(float(turn["start"]) / 0.08), int(float(turn["end"]) / 0.08)
        last, total = words(qa["question"])[-1], total + 1
        hit = next((k for k in range(-3, 15)
                    if last in words(tok.decode([p for f, p in pieces if start <= f <= end + k]))), None)
        e, w = word_errors(qa["question"], tok.decode([p for f, p in pieces if start <= f <= end + 8]))
        err, ref_words = err + e, ref_words + w
        if hit is None:
            never += 1
        else:
            arrive.append(hit)
a = np.asarray(arrive)
print(json.dumps({"questions": total, "last_word_never_written": never,
                  "end_silent_frames": heard.END_UTTERANCE_AFTER_SILENT_FRAMES,
                  "median_frames_after_end": float(np.median(a)) if len(a) else None,
                  "written_by": {k: round(float(np.sum(a <= k)) / total, 3) for k in (2, 3, 4, 6, 8)},
                  "wer_within_8_frames": round(err / max(1, ref_words), 3)}))
