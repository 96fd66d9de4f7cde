"""The user channel as the model hears it: speed, pitch, noise, gain and the agent's own voice as echo.

Per dialogue one set of parameters is drawn (:func:`draw`) and recorded in the dialogue's ``augment`` field:

- ``speed``        resampling factor applied to every user utterance before it is placed (tempo and pitch move
                   together, like sox ``speed``); 1.0 = unchanged.
- ``pitch_cents``  pitch shift with tempo kept (sox ``pitch``), applied per user utterance; 0 when sox is absent.
- ``echo``         the agent channel delayed ``delay_ms`` (20–120 ms), passed through a short synthetic room
                   (exponentially decaying noise tail, ``rt60`` s), attenuated by ``gain_db`` and added to the user
                   channel — what a laptop microphone picks up from its own speaker. ``null`` when off.
- ``noise``        white or pink noise at ``snr_db`` relative to the user's speech level. ``null`` when off.
- ``gain_db``      overall gain of the user channel (lowered if it would clip; the applied value is recorded).

The agent channel is never augmented.
"""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

import numpy as np
import soxr

from agent.dialogue.tts import SAMPLE_RATE


@dataclass
class AugmentConfig:
    speed_prob: float = 0.5
    speed: tuple = (0.9, 1.1)
    pitch_prob: float = 0.4
    pitch_cents: tuple = (-300.0, 300.0)
    noise_prob: float = 0.7
    snr_db: tuple = (5.0, 35.0)
    pink_share: float = 0.5
    echo_prob: float = 0.6
    echo_delay_ms: tuple = (20.0, 120.0)
    echo_gain_db: tuple = (-30.0, -12.0)
    echo_rt60: tuple = (0.1, 0.4)
    gain_prob: float = 0.8
    gain_db: tuple = (-10.0, 4.0)


def have_sox() -> bool:
    return shutil.which("sox") is not None


def draw(cfg: AugmentConfig, rng: np.random.Generator) -> dict:
    """One dialogue's augmentation parameters (every draw is made, so the stream stays aligned)."""
    r = rng.random(6)
    u = rng.random(9)

    def span(lo_hi, x):
        return float(lo_hi[0] + (lo_hi[1] - lo_hi[0]) * x)

    speed = round(span(cfg.speed, u[0]), 3) if r[0] < cfg.speed_prob else 1.0
    pitch = round(span(cfg.pitch_cents, u[1]), 1) if r[1] < cfg.pitch_prob and have_sox() else 0.0
    noise = ({"kind": "pink" if u[2] < cfg.pink_share else "white", "snr_db": round(span(cfg.snr_db, u[3]), 2)}
             if r[2] < cfg.noise_prob else None)
    echo = ({"delay_ms": round(span(cfg.echo_delay_ms, u[4]), 1), "gain_db": round(span(cfg.echo_gain_db, u[5]), 2),
             "rt60": round(span(cfg.echo_rt60, u[6]), 3)} if r[3] < cfg.echo_prob else None)
    gain = round(span(cfg.gain_db, u[7]), 2) if r[4] < cfg.gain_prob else 0.0
    return {"speed": speed, "pitch_cents": pitch, "noise": noise, "echo": echo, "gain_db": gain,
            "seed": int(rng.integers(2 ** 31))}


def speed_pitch(x: np.ndarray, speed: float, cents: float) -> np.ndarray:
    """Apply the per-utterance speed (resampling) and pitch (sox, tempo kept) changes."""
    y = np.asarray(x, np.float32)
    if cents and have_sox() and len(y):
        proc = subprocess.run(["sox", "-t", "f32", "-r", str(SAMPLE_RATE), "-c", "1", "-", "-t", "f32", "-",
                               "pitch", f"{cents:.1f}"], input=y.tobytes(), capture_output=True, timeout=60)
        if proc.returncode == 0 and proc.stdout:
            y = np.frombuffer(proc.stdout, dtype=np.float32).copy()
    if speed != 1.0 and len(y):
        y = soxr.resample(y, SAMPLE_RATE * speed, SAMPLE_RATE, quality="HQ").astype(np.float32)
    return y


def _pink(n: int, rng: np.random.Generator) -> np.ndarray:
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(len(spec), dtype=float)
    f[0] = 1.0
    y = np.fft.irfft(spec / np.sqrt(f), n)
    return (y / (np.std(y) + 1e-12)).astype(np.float32)


def room_ir(rt60: float, rng: np.random.Generator) -> np.ndarray:
    """A light synthetic room: direct path plus an exponentially decaying noise tail (-60 dB at rt60)."""
    n = max(1, int(rt60 * SAMPLE_RATE))
    t = np.arange(n) / SAMPLE_RATE
    tail = rng.standard_normal(n) * np.exp(-6.9 * t / rt60) * 0.25
    tail[: int(0.002 * SAMPLE_RATE)] = 0.0
    tail[0] = 1.0
    return (tail / np.sqrt(np.sum(tail ** 2))).astype(np.float32)


def apply(user: np.ndarray, agent: np.ndarray, params: dict) -> tuple[np.ndarray, dict]:
    """The user channel as heard: clean user speech + echo of the agent + noise, then gain. Returns the channel
    and the params with the applied gain."""
    rng = np.random.default_rng(params["seed"])
    x = user.astype(np.float32).copy()
    speech = user[np.abs(user) > 1e-4]
    level = float(np.sqrt(np.mean(speech ** 2))) if len(speech) else 0.05
    echo = params.get("echo")
    if echo:
        d = int(echo["delay_ms"] / 1000 * SAMPLE_RATE)
        ir = room_ir(echo["rt60"], rng)
        from scipy.signal import fftconvolve

        wet = fftconvolve(agent.astype(np.float32), ir)[: len(agent)].astype(np.float32)
        delayed = np.zeros_like(x)
        delayed[d:] = wet[: len(x) - d]
        x += delayed * 10 ** (echo["gain_db"] / 20)
    noise = params.get("noise")
    if noise:
        n = _pink(len(x), rng) if noise["kind"] == "pink" else rng.standard_normal(len(x)).astype(np.float32)
        x += n * level * 10 ** (-noise["snr_db"] / 20)
    g = 10 ** (params["gain_db"] / 20)
    peak = float(np.abs(x).max()) * g if len(x) else 0.0
    if peak > 0.99:
        g *= 0.99 / peak
    out = dict(params)
    out["gain_db"] = round(20 * np.log10(g), 2)
    return (x * g).astype(np.float32), out
