"""The ways a live user's audio reaches the codec rate, reproduced offline for tokenization.

A session never hears the microphone the way an offline encoder reads a WAV: the Realtime server
decimates the browser's 24 kHz PCM by 3 with its own polyphase filter (``listen.resample.InputDecimator``),
``duplex chat`` / the daemon / ``duplex eval`` resample 16 or 48 kHz with soxr at the session's
``resample_quality`` (LQ by default). codec2's ids are brittle to that filter: the same 16 kHz dialogue
encoded through soxr LQ instead of HQ agrees on only 9-38 % of the ids per codebook (measured on
``data-tiny``), and a model trained on HQ ids alone took 41 % of turn ends through the LQ path vs 80 %
through HQ. So ``duplex data tokenize`` draws one path per dialogue for the user channel (the agent's own
channel, the targets, stays on the clean HQ path): the model then hears every serving path's ids. A page in
a browser puts WebRTC's audio processing (echo cancellation, noise suppression, high-pass) in front of the
server's path, and that too moves the ids (``browser-apm``, measured in ``webrtc_processing``); the daemon runs
the same processing at its 16 kHz process rate before the session's resampler (``daemon-apm``).

Each path name says what it emulates; all return ``(M,)`` float32 at ``out_rate`` for the whole signal.
"""
from __future__ import annotations

import zlib

import numpy as np

from listen.pcm import float32_to_pcm16_bytes, pcm16_bytes_to_float32
from listen.resample import InputDecimator, StreamingResampler

#: path -> what live input it stands for
MIC_PATHS = {
    "soxr-hq": "offline quality (and sessions set to resample_quality=HQ)",
    "soxr-lq": "duplex chat / daemon / eval at the default resample_quality=LQ, 16 kHz input",
    "soxr-lq-48k": "the same from a 48 kHz microphone",
    "decimate-24k": "the Realtime server (page, SDK clients): 24 kHz PCM16, decimated by an integer factor "
                    "(8 kHz codecs) or resampled by the session's soxr LQ (16 kHz codecs)",
    "browser-apm": "the page in a browser: WebRTC audio processing at 48 kHz (echo cancellation with the agent as "
                   "far end, noise suppression, high-pass; what Chromium applies with echoCancellation on; bypassed "
                   "while the page measures no echo), then the server's 24 kHz path",
    "daemon-apm": "the microphone daemon: WebRTC audio processing at its 16 kHz process rate (echo cancellation "
                  "with the agent as far end, bypassed while the microphone carries no echo; noise suppression, "
                  "high-pass), then the session's soxr LQ",
    "browser-headphones": "the page with 'I use headphones' ticked: WebRTC's noise suppression and high-pass at "
                          "48 kHz without the echo canceller, then the server's 24 kHz path (for audio without "
                          "an echo of the agent)",
}
# Not browser-headphones: it passes an echo in the user channel (a training augmentation) on uncancelled.
DEFAULT_MIC_PATHS = ("soxr-hq", "soxr-lq", "soxr-lq-48k", "decimate-24k", "browser-apm", "daemon-apm")
OFFLINE_PATHS = ("soxr-hq",)  # what shards made before the paths existed used
SERVER_INPUT_RATE = 24000  # agent.server.ServerConfig.default_input_rate (the page and the OpenAI SDK send 24 kHz)
SESSION_RESAMPLE_QUALITY = "LQ"  # agent.config.SessionConfig.resample_quality


def check_paths(paths: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The paths, validated (one sentence naming the choices when one is unknown)."""
    paths = tuple(paths)
    bad = [p for p in paths if p not in MIC_PATHS]
    if not paths or bad:
        raise ValueError(f"Unknown microphone path(s) {', '.join(bad) or '(none given)'}; choose from "
                         f"{', '.join(MIC_PATHS)}.")
    return paths


def _soxr(x: np.ndarray, in_rate: int, out_rate: int, quality: str) -> np.ndarray:
    rs = StreamingResampler(in_rate, out_rate, quality)
    return np.concatenate([rs.process(x), rs.flush()])


APM_RATE = 48000  # Chromium runs WebRTC's processing at 48 kHz
DAEMON_PROCESS_RATE = 16000  # agent.daemon.config.AudioConfig.process_rate


def webrtc_processing(x: np.ndarray, far: np.ndarray | None = None, rate: int = APM_RATE,
                      transparent_without_echo: bool = False, aec: bool = True) -> np.ndarray:
    """``(N,)`` float32 at ``rate`` (48 kHz in a browser, the daemon's 16 kHz) through WebRTC's audio
    processing as a browser page runs it (``far``: what the speaker played, the echo canceller's reference,
    at the same rate) -> ``(N // (rate / 100) * (rate / 100),)`` float32.

    The daemon's :class:`agent.daemon.echo.EchoCanceller` runs the module (livekit's), here with what Chromium
    turns on with ``echoCancellation`` (echo cancellation, noise suppression, high-pass), no warm-up gate,
    and the far end fed one 10 ms frame ahead of each microphone frame. ``transparent_without_echo``: the
    bypass of the canceller while the microphone carries no echo (``agent/daemon/echo_presence.py``; the page
    does the same with a second, uncancelled microphone stream, ``demo/static/echo_presence.js``). ``aec=False``: noise suppression and high-pass only (a page whose user has
    headphones).

    Why a path of its own: measured on the stage-3 default and the page's own recordings, Chromium's
    processing (mostly its band-split filters and high-pass, not the level: -0.4 dB) changes codec2 700C's
    ids enough that the model waited a median 491 ms after the user's end instead of 340 ms on the same
    audio unprocessed; this module reproduces it offline."""
    from agent.daemon.config import EchoConfig
    from agent.daemon.echo import EchoCanceller, EchoUnavailable

    config = EchoConfig(aec=aec, noise_suppression=True, high_pass_filter=True, auto_gain_control=False,
                        warmup_seconds=0.0, half_duplex=False, stream_delay_ms=0.0,
                        transparent_without_echo=transparent_without_echo)
    try:
        apm = EchoCanceller(config, rate=rate)
    except EchoUnavailable:
        apm = None
    if apm is None or not apm.active:
        raise ValueError("The browser-apm, browser-headphones and daemon-apm microphone paths need WebRTC's audio "
                         "processing from the livekit package: pip install livekit (or pass --mic-paths without "
                         "them).")
    n = rate // 100
    out = []
    for i in range(0, len(x) // n * n, n):
        if far is not None:
            apm.add_reference(np.pad(far[i:i + n], (0, max(0, i + n - len(far)))))
        out.append(apm.process(x[i:i + n]))
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def _processed(x: np.ndarray, far: np.ndarray | None, rate: int, apm_rate: int, quality: str,
               transparent_without_echo: bool = False, aec: bool = True) -> np.ndarray:
    """``x`` (and the far end) resampled to ``apm_rate`` at ``quality``, then through :func:`webrtc_processing`;
    the last < 10 ms passes unprocessed, so the length is kept."""
    xa = _soxr(x, rate, apm_rate, quality)
    fa = None if far is None else _soxr(np.asarray(far, np.float32), rate, apm_rate, quality)
    y = webrtc_processing(xa, fa, apm_rate, transparent_without_echo, aec)
    return np.concatenate([y, xa[len(y):]])


def _server(x: np.ndarray, rate: int, out_rate: int) -> np.ndarray:
    """The client's PCM16 wire at the server's default rate, then what the server does with it: its integer
    decimator where the ratio allows (24 -> 8 kHz), otherwise the listener's soxr at the session default."""
    wire = SERVER_INPUT_RATE
    up = pcm16_bytes_to_float32(float32_to_pcm16_bytes(_soxr(x, rate, wire, "HQ")))
    dec = InputDecimator.for_rates(wire, out_rate)
    if dec is None:
        return _soxr(up, wire, out_rate, SESSION_RESAMPLE_QUALITY)
    return dec.process(up)


def to_codec_rate(pcm: np.ndarray, rate: int, out_rate: int, path: str, far: np.ndarray | None = None) -> np.ndarray:
    """``pcm`` ``(N,)`` float32 at ``rate`` -> ``(M,)`` float32 at ``out_rate`` the way ``path`` does it
    (``far``: the agent's channel at ``rate``, the echo canceller's reference on ``browser-apm``)."""
    x = np.asarray(pcm, dtype=np.float32)
    if path == "soxr-hq":
        return _soxr(x, rate, out_rate, "HQ")
    if path == "soxr-lq":
        return _soxr(x, rate, out_rate, "LQ")
    if path == "soxr-lq-48k":
        return _soxr(_soxr(x, rate, 48000, "HQ"), 48000, out_rate, "LQ")
    if path == "decimate-24k":
        return _server(x, rate, out_rate)
    if path == "browser-apm":  # the page sends its uncancelled stream while it measures no echo (worklet.js)
        return _server(_processed(x, far, rate, APM_RATE, "HQ", transparent_without_echo=True), APM_RATE, out_rate)
    if path == "browser-headphones":
        return _server(_processed(x, None, rate, APM_RATE, "HQ", aec=False), APM_RATE, out_rate)
    if path == "daemon-apm":  # the daemon's edge resampler is soxr LQ (a no-op from 16 kHz)
        y = _processed(x, far, rate, DAEMON_PROCESS_RATE, "LQ", transparent_without_echo=True)
        return _soxr(y, DAEMON_PROCESS_RATE, out_rate, SESSION_RESAMPLE_QUALITY)
    raise ValueError(f"Unknown microphone path {path!r}; choose from {', '.join(MIC_PATHS)}.")


def path_for(dialogue_id: str, paths: tuple[str, ...]) -> str:
    """The path of one dialogue: stable across runs and machines (a hash of its id, not a random state)."""
    return paths[zlib.crc32(dialogue_id.encode()) % len(paths)]
