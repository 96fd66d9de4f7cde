"""When could anything hear an interruption? For each user interruption in an eval's dialogues, the first
moment the session's VAD finds 3 frames of the user's speech (what the barge-in policy waits for) on a
microphone path, next to when each evaluated model's audio stopped (``stop_ms`` from ``duplex eval``).

On ``browser-apm`` the echo canceller suppresses the user while the agent's reference is loud, so the speech
can be inaudible for hundreds of ms; an interruption audible only after 400 ms cannot be stopped in time by
listening. Prints one JSON line per interruption, then a summary.

    python docs/diagnostics/interruption_onsets.py DATA_DIR MIC_PATH EVAL_JSON [EVAL_JSON ...]
"""
import json
import sys
from pathlib import Path

from agent.training.mic_paths import to_codec_rate
from listen.vad import VoiceActivityDetector
from listen.wavio import read_wav

RATE, FRAME = 8000, 640  # codec2 700C sessions: 8 kHz, 80 ms frames
RUN = 3  # frames of speech in a row (the policy's barge_in_min_speech_ms = 240 ms)

data, path, evals = Path(sys.argv[1]), sys.argv[2], [json.loads(Path(p).read_text()) for p in sys.argv[3:]]
stops = [{(d["id"], i["time"]): i["stop_ms"] for d in e["dialogues"] for i in d["interruptions"]} for e in evals]
late_onsets, rows = 0, 0
for d in evals[0]["dialogues"]:
    if not d["interruptions"]:
        continue
    audio, rate = read_wav(data / f"{d['id']}.wav")
    user = to_codec_rate(audio[:, 0], rate, RATE, path, far=audio[:, 1]) if path != "file" else audio[:, 0]
    vad = VoiceActivityDetector(RATE if path != "file" else rate, 2)
    hop = FRAME if path != "file" else rate * 80 // 1000
    flags = [vad.is_speech(user[i:i + hop])[0] for i in range(0, len(user) - hop + 1, hop)]
    for inter in d["interruptions"]:
        f0, run, onset = int(inter["time"] / 0.08), 0, None
        for k in range(f0, min(len(flags), f0 + 20)):
            run = run + 1 if flags[k] else 0
            if run >= RUN:
                onset = round((k - RUN + 1) * 80 - inter["time"] * 1000)
                break
        rows += 1
        late_onsets += onset is None or onset > 400 - 160
        print(json.dumps({"dialogue": d["id"], "time": inter["time"], "audible_ms": onset,
                          "stop_ms": [s.get((d["id"], inter["time"])) for s in stops]}))
print(json.dumps({"interruptions": rows, "audible_only_after_240ms": late_onsets}))
