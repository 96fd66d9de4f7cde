"""``duplex bench step``: per-frame step time of the whole loop (listen + think + speak), as JSON.

It drives a real :class:`Session` (offline clock, so it measures compute, not waiting) with synthetic
speech-like audio (a voiced buzz with syllable-rate gating) and reports the step-time percentiles and
the real-time factor (p95 step / frame length). No timed assertions live in the tests; this is where
speed is measured.
"""
from __future__ import annotations

import asyncio
import json
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from agent.config import SessionConfig
from agent.models import codec_for_layout, init_model
from agent.session import Session
from streaming.clock import FrameClock
from think.device import resolve_device
from think.transformers_backend import TransformersBackend


def synthetic_speech(seconds: float, rate: int = 16000, seed: int = 0) -> np.ndarray:
    """A buzz at a wandering pitch, gated at ~4 syllables per second: exercises VAD and codec like speech."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    f0 = 120 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
    gate = (np.sin(2 * np.pi * 4 * t) > -0.3).astype(np.float32)
    x = 0.2 * voiced * gate + 0.005 * rng.standard_normal(len(t))
    return x.astype(np.float32)


async def _run(backend: TransformersBackend, frames: int, warmup: int) -> dict:
    codec = codec_for_layout(backend.layout)
    config = SessionConfig()
    # Every frame must run the model: a barge-in would force silent slots, which cost no forward pass.
    config.policy.barge_in = False
    session = Session(backend.open_session(config.sampling), codec, backend.tokenizer, config, input_rate=16000)
    seconds = (frames + warmup + 2) * codec.spec.frame_ms / 1000.0
    audio = synthetic_speech(seconds)

    async def feed() -> None:
        for i in range(0, len(audio), 1600):
            await session.push_audio(audio[i:i + 1600])
        await session.end_input()

    feeder = asyncio.create_task(feed())
    clock = FrameClock(codec.spec.frame_ms / 1000.0, realtime=False)
    totals, thinks, speaks, listens = [], [], [], []
    forced = 0
    async for out in session.run(clock, max_frames=frames + warmup):
        forced += int(out.forced)
        if out.index >= warmup:
            totals.append(out.mark.total_ms)
            thinks.append(out.mark.think_ms)
            speaks.append(out.mark.speak_ms)
            listens.append(out.mark.listen_ms)
    feeder.cancel()
    await session.close()

    def pct(v: list[float]) -> dict:
        a = np.asarray(v)
        return {q: round(float(np.percentile(a, int(q[1:]))), 3) for q in ("p50", "p95", "p99")} | {
            "mean": round(float(a.mean()), 3)}

    frame_ms = codec.spec.frame_ms
    total = pct(totals)
    return {
        "frame_ms": frame_ms, "frames": len(totals), "slot_ids": backend.layout.slot_size,
        "forwards_per_frame": 1 + backend.layout.q_out, "forced_frames": forced,
        "step_ms": total, "think_ms": pct(thinks), "speak_ms": pct(speaks), "listen_ms": pct(listens),
        "real_time_factor_p95": round(total["p95"] / frame_ms, 4),
        "real_time_factor_mean": round(total["mean"] / frame_ms, 4),
        "meets_rtf_0_3": bool(total["p95"] <= 0.3 * frame_ms),
    }


def bench_step(model: str | None = None, preset: str = "tiny", codec: str = "codec2", frames: int = 300,
               warmup: int = 20, engine: str = "auto", threads: int | None = None, device: str = "cpu") -> dict:
    """Benchmark one session's frame step; builds a random model of ``preset`` unless ``model`` is given.

    ``device``: where the model runs ("cpu", "cuda", "cuda:N" or "auto"). Each frame's sampling reads the
    logits back to the host, so the per-frame times include the GPU's work."""
    device = str(resolve_device(device))  # a bad or absent device fails here, before any model is built
    if frames < 1 or warmup < 0:  # no timed frame: the percentiles of nothing were an IndexError
        raise ValueError(f"--frames must be >= 1 (got {frames}) and --warmup >= 0 (got {warmup}).")
    if threads is not None and threads < 0:
        raise ValueError(f"--threads must be a positive number of torch threads, got {threads}.")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(model) if model else init_model(Path(tmp) / "model", preset=preset, codec=codec)
        t0 = time.perf_counter()
        backend = TransformersBackend.from_dir(path, device=device, threads=threads, engine=engine)
        load_s = time.perf_counter() - t0
        params = sum(p.numel() for p in backend.model.parameters())
        result = asyncio.run(_run(backend, frames, warmup))
    import torch

    result.update({
        "benchmark": "step", "model": model or f"random:{preset}", "codec": backend.layout.codec.name,
        "codec_options": backend.layout.codec.options, "parameters_m": round(params / 1e6, 3),
        "engine": backend.engine, "device": device, "gpu": torch.cuda.get_device_name(backend.device)
        if backend.device.type == "cuda" else None,
        "torch_threads": torch.get_num_threads(), "load_seconds": round(load_s, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "cpus": _cpus(),
    })
    return result


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


if __name__ == "__main__":
    print(json.dumps(bench_step(), indent=2))
