"""Does the turn detector hear a real speaker's pauses? Scored on the few real recordings that install offline.

Every recording here is one speaker's one turn: each silence inside it is a mid-turn pause (the speaker goes
on), and its end is a turn end. `A Tale of Two Cities`' opening (moonshine-voice's `two_cities.wav`, 44 s) is a
single sentence read aloud with ~30 pauses at its commas; pocketsphinx-testdata gives finished utterances
(five LibriVox sentences, five card names, three commands). Silences come from WebRTC's VAD (mode 3, 10 ms,
gaps under 200 ms bridged); a pause is a silence of at least 250 ms. After each file 1.5 s of noise at the
file's own floor is appended, so its end is heard as a turn end is. The detector hears the audio at 8 kHz
as a session's does, and is scored as `duplex turn eval` scores it: a pause is *held* when P(finished) stays
below the threshold from 80 ms to 560 ms (or until the speaker goes on), a turn end is *free* when P is at or
above it 240 ms after the speaker stops. With ``--session`` each recording also goes through `duplex chat` (the
default model and session, the file's own path): how often the agent starts inside the speaker's turn (its
audio begins in a pause, or over the speaker), and whether it answers within 2 s of the end. Prints JSON. Not
part of the package.

    apt-get install pocketsphinx-testdata; pip download --no-deps moonshine-voice -d /tmp/mv
    (cd /tmp/mv && unzip -o -q moonshine_voice-*.whl 'moonshine_voice/assets/*.wav')
    python docs/diagnostics/real_speech_turns.py [DETECTOR_DIR] [--assets DIR] [--session --out DIR [--set K=V]]
"""
import argparse
import json
import math
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import webrtcvad

from agent.data.tts_engines import resample
from agent.turn_train import EVAL_OFFSETS_MS, scores_after, summarize
from listen.turn_detector import load_detector

PS = Path("/usr/share/pocketsphinx/test/data")


def recordings(assets: Path) -> list[tuple[str, np.ndarray]]:
    """(name, 16 kHz mono float32) of every recording found."""
    out = []
    files = [assets / "two_cities.wav", *sorted((PS / "librivox").glob("*.wav")), *sorted((PS / "cards").glob("*.wav"))]
    for f in files:
        if f.is_file():
            x, sr = sf.read(f, dtype="float32", always_2d=True)
            out.append((f.stem, resample(x.mean(axis=1), sr, 16000)))
    for raw in ("goforward.raw", "numbers.raw", "something.raw"):
        if (PS / raw).is_file():
            out.append((Path(raw).stem, np.fromfile(PS / raw, dtype="<i2").astype(np.float32) / 32768.0))
    return out


def silences(x16: np.ndarray) -> tuple[list[tuple[float, float]], float]:
    """Silences (start, end) in seconds between voiced stretches, and the time the last voiced stretch ends."""
    vad, win = webrtcvad.Vad(3), 160
    pcm = (np.clip(x16, -1, 1) * 32767).astype(np.int16)
    voiced = np.array([vad.is_speech(pcm[i:i + win].tobytes(), 16000) for i in range(0, len(pcm) - win + 1, win)])
    idx = np.flatnonzero(voiced)
    if not len(idx):
        return [], 0.0
    gaps = [(a, b) for a, b in zip(idx[:-1], idx[1:]) if b - a > 20]  # bridge gaps under 200 ms
    return [((a + 1) * 0.01, b * 0.01) for a, b in gaps], (idx[-1] + 1) * 0.01


def with_tail(x16: np.ndarray, seconds: float = 1.5, seed: int = 0) -> np.ndarray:
    env = np.sqrt(np.mean(x16[: len(x16) // 160 * 160].reshape(-1, 160) ** 2, axis=1))
    floor = float(np.percentile(env, 5))
    tail = np.random.default_rng(seed).normal(0.0, floor, int(seconds * 16000)).astype(np.float32)
    return np.concatenate([x16, tail])


def p_finished(model, x16: np.ndarray) -> tuple[np.ndarray, float]:
    cfg = model.cfg
    x = resample(x16, 16000, cfg.sample_rate)
    x = x[: len(x) // cfg.step_samples * cfg.step_samples]
    with torch.inference_mode():
        feats, _ = model.features(torch.from_numpy(np.ascontiguousarray(x))[None])
        logp, _ = model(None, feats=feats)
    return logp[0, :, 1].exp().numpy(), cfg.step_samples / cfg.sample_rate


def session_starts(name: str, x16: np.ndarray, out: Path, detector: str | None, sets: list[str]) -> dict:
    """`duplex chat` on one recording: agent onsets inside the speaker's turn, and an answer after its end."""
    wav = out / f"{name}.in.wav"
    sf.write(wav, x16, 16000)
    cmd = ["duplex", "chat", "--in", str(wav), "--out", str(out / f"{name}.wav"), "-q", "--threads", "1"]
    if detector:
        cmd += ["--set", f"turn_detector={detector}"]
    for item in sets:
        cmd += ["--set", item]
    subprocess.run(cmd, check=True, capture_output=True)
    frames = json.loads((out / f"{name}.latency.json").read_text())["frames"]
    frame_s = 0.08
    _, last = silences(x16)
    audible = np.array([f["agent_rms"] > 0.01 for f in frames])
    onsets = [i * frame_s for i in range(1, len(audible)) if audible[i] and not audible[i - 1]]
    inside = [t for t in onsets if t < last]
    return {"agent_starts_inside_the_turn": len(inside),
            "answered_within_2s": any(last <= t <= last + 2.0 for t in onsets) or bool(
                audible[int(last / frame_s):int((last + 2.0) / frame_s)].any())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("detector", nargs="?", default=None, help="detector directory (default: the shipped one)")
    ap.add_argument("--assets", default="/tmp/mv/moonshine_voice/assets", help="moonshine-voice's assets folder")
    ap.add_argument("--threshold", type=float, default=None, help="default: the detector's")
    ap.add_argument("--session", action="store_true", help="also run each recording through `duplex chat`")
    ap.add_argument("--out", default=None, help="where --session writes its conversations (default: a temp dir)")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="a session setting for --session's `duplex chat` (repeatable)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = load_detector(args.detector)
    thr = args.threshold if args.threshold is not None else float(model.meta.get("threshold", 0.5))
    scores = {"turn_end": [], "pause": []}
    per_file = {}
    for name, x in recordings(Path(args.assets)):
        gaps, last = silences(x)
        p, step_s = p_finished(model, with_tail(x))
        pauses = [(a, b) for a, b in gaps if b - a >= 0.25]
        for a, b in pauses:
            scores["pause"].append(scores_after(p, step_s, a, b))
        scores["turn_end"].append(scores_after(p, step_s, last, math.inf))
        k240 = EVAL_OFFSETS_MS.index(240)
        per_file[name] = {"pauses": len(pauses),
                          "p_at_240ms_in_pauses": [round(float(r[k240]), 3) for r in scores["pause"][-len(pauses):]]
                          if pauses else [], "p_at_240ms_at_end": round(float(scores["turn_end"][-1][k240]), 3)}
        if args.session:
            out = Path(args.out or tempfile.mkdtemp(prefix="real-speech-"))
            out.mkdir(parents=True, exist_ok=True)
            per_file[name] |= session_starts(name, x, out, args.detector, args.sets)
    if not per_file:
        raise SystemExit("No recordings found: see this script's docstring for where they come from.")
    result = {"detector": args.detector or "shipped", "threshold": thr, "summary": summarize(scores, thr)}
    if args.session:
        result["session"] = {"pauses": sum(f["pauses"] for f in per_file.values()),
                             "agent_starts_inside_the_turn": sum(f["agent_starts_inside_the_turn"] for f in per_file.values()),
                             "turns_answered_within_2s": sum(f["answered_within_2s"] for f in per_file.values()),
                             "turns": len(per_file)}
    print(json.dumps(result | {"files": per_file}, indent=1))


if __name__ == "__main__":
    main()
