"""A registry of offline TTS voices, and ``synthesize(text, voice) -> (float32 pcm, rate)``.

The engines themselves (how each is run, which are installed) live in :mod:`agent.data.tts_engines`; this
module names their voices for the codec's training and evaluation speech:

- ``espeak-ng``: 8 English accents x variants (``+m1..m8``, ``+f1..f5``, ``+klatt..``, named ones), with rate
  and pitch. Formant synthesis: least intelligible to ASR.
- ``flite``: ``slt`` (F), ``rms`` (M), ``awb`` (M, Scottish), ``kal16`` (M).
- ``festival``: ``cmu_us_slt_arctic_hts`` (F), ``kal_diphone`` (M), ``ked_diphone`` (M).
- ``piper``: ``en_US-joe-medium`` (M, neural), with length/noise scales for variety.
- ``kokoro``: 5 Japanese-trained styles (``jf_alpha``, ``jf_gongitsune``, ``jf_nezumi``, ``jf_tebukuro``,
  ``jm_kumo``) speaking English (accented but intelligible: Whisper tiny.en WER 7-12 %), 24 kHz; ``speed``.

See /work/shared/research/offline-assets.md section 1 for where each comes from.

Voice names are ``engine:voice[@key=value,...]``, e.g. ``espeak-ng:en-gb-scotland+f2@s=150,p=60``,
``flite:rms``, ``festival:kal_diphone``, ``piper:joe@length=1.1``. :func:`available_voices` lists
the voices whose engine is installed; :func:`voice_set` builds a diverse set, with named held-out
voices kept apart (:data:`HELD_OUT`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from agent.data import tts_engines as eng

# also imported from here by callers (resample: speech.py, codec_eval.py)
from agent.data.tts_engines import (
    INSTALL_HINT,
    MissingTTS,
    engine_available,
    festival_voice_installed,
    resample,
)

ESPEAK_ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029", "en-us-nyc")
ESPEAK_VARIANTS = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5",
    "klatt", "klatt2", "klatt3", "klatt4", "klatt5", "klatt6",
    "adam", "Alex", "Alicia", "Andrea", "Andy", "Annie", "aunty", "belinda", "benjamin", "caleb", "david",
    "ed", "edward", "Gene", "gustave", "Hugo", "iven", "john", "Lee", "linda", "max", "Michael",
    "Mike", "norbert", "paul", "quincy", "rob", "robert", "steph", "travis", "victor", "zac", "shelby",
)
FLITE_VOICES = ("slt", "rms", "awb", "kal16")
FESTIVAL_VOICES = ("cmu_us_slt_arctic_hts", "kal_diphone", "ked_diphone")
PIPER_VOICES = ("joe",)
KOKORO_VOICES = ("jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo")

#: Voices never used for training the codec: evaluation speakers (unseen by the codec).
HELD_OUT = (
    "flite:rms",
    "festival:ked_diphone",
    "kokoro:jm_kumo",
    "espeak-ng:en-us+klatt4@s=150",
)


@dataclass(frozen=True)
class Voice:
    engine: str
    voice: str
    params: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    @property
    def name(self) -> str:
        p = ",".join(f"{k}={v}" for k, v in self.params)
        return f"{self.engine}:{self.voice}" + (f"@{p}" if p else "")

    @classmethod
    def parse(cls, name: str) -> Voice:
        if ":" not in name:
            raise ValueError(f"Voice names look like 'engine:voice[@k=v,...]' (e.g. 'flite:rms'), got {name!r}.")
        engine, rest = name.split(":", 1)
        voice, _, ps = rest.partition("@")
        params = tuple(tuple(p.split("=", 1)) for p in ps.split(",") if p)
        if engine not in ENGINES:
            raise ValueError(f"Unknown TTS engine {engine!r}; engines: {', '.join(ENGINES)}.")
        return cls(engine, voice, params)  # type: ignore[arg-type]

    def param(self, key: str, default: str | None = None) -> str | None:
        return dict(self.params).get(key, default)


# Voice -> engine call: a voice's ``@key=value`` params are the engine's options (kept as given: strings).
ENGINES = {
    "espeak-ng": lambda text, v: eng.espeak(text, v.voice, speed=v.param("s") or None, pitch=v.param("p") or None),
    "flite": lambda text, v: eng.flite(text, v.voice, stretch=v.param("stretch") or None),
    "festival": lambda text, v: eng.festival(text, v.voice),
    "piper": lambda text, v: eng.piper(text, v.voice, length=float(v.param("length", "1.0")),
                                       noise=float(v.param("noise", "0.667")),
                                       noise_w=float(v.param("noise_w", "0.8"))),
    "kokoro": lambda text, v: eng.kokoro(text, v.voice, speed=float(v.param("speed", "1.0"))),
}


def synthesize(text: str, voice: str | Voice, rate: int | None = 16000) -> tuple[np.ndarray, int]:
    """Speak ``text`` with ``voice``; returns (float32 mono PCM, sample rate) at ``rate`` (None: native)."""
    v = Voice.parse(voice) if isinstance(voice, str) else voice
    if not engine_available(v.engine):
        raise MissingTTS(f"TTS engine {v.engine} is not installed: {INSTALL_HINT[v.engine]}.")
    pcm, native = ENGINES[v.engine](text, v)
    if rate is None:
        return pcm, native
    return resample(pcm, native, rate), rate


def available_voices() -> list[str]:
    """Every registered voice whose engine is installed (espeak-ng accent x variant, flite, festival,
    piper, kokoro)."""
    out: list[str] = []
    if engine_available("espeak-ng"):
        out += [f"espeak-ng:{a}+{var}" for a in ESPEAK_ACCENTS for var in ESPEAK_VARIANTS]
    if engine_available("flite"):
        out += [f"flite:{v}" for v in FLITE_VOICES]
    if engine_available("festival"):
        out += [f"festival:{v}" for v in FESTIVAL_VOICES if festival_voice_installed(v)]
    if engine_available("piper"):
        out += [f"piper:{v}" for v in PIPER_VOICES]
    if engine_available("kokoro"):
        out += [f"kokoro:{v}" for v in KOKORO_VOICES]
    return out


def voice_set(n_espeak: int = 120, seed: int = 0, held_out: tuple[str, ...] = HELD_OUT) -> dict[str, list[str]]:
    """A diverse training set of voices and the held-out ones: ``{"train": [...], "held_out": [...]}``.

    Training: every installed flite/festival/piper voice (piper and flite also with speed variants),
    plus ``n_espeak`` random espeak-ng accent x variant voices with random rate (130-190 wpm) and
    pitch (30-70). Held-out voices (and every espeak voice sharing a held-out accent+variant) are
    never in training.
    """
    rng = np.random.default_rng(seed)
    held = [h for h in held_out if engine_available(Voice.parse(h).engine)]
    held_base = {Voice.parse(h).engine + ":" + Voice.parse(h).voice for h in held}
    train: list[str] = []
    for name in available_voices():
        v = Voice.parse(name)
        if f"{v.engine}:{v.voice}" in held_base or v.engine == "espeak-ng":
            continue
        train.append(name)
        if v.engine == "piper":
            train += [f"{name}@length=0.85", f"{name}@length=1.2,noise=0.8"]
        if v.engine == "kokoro":
            train += [f"{name}@speed=0.85", f"{name}@speed=1.15"]
        if v.engine == "flite":
            train += [f"{name}@stretch=1.15", f"{name}@stretch=0.9"]
    esp = [n for n in available_voices() if n.startswith("espeak-ng:") and n not in held_base]
    for i in rng.choice(len(esp), size=min(n_espeak, len(esp)), replace=False):
        train.append(f"{esp[i]}@s={int(rng.integers(130, 191))},p={int(rng.integers(30, 71))}")
    return {"train": train, "held_out": held}
